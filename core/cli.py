"""The ``verticals`` command: Lightning's CLI (fit, validate, test, predict) plus ``run`` and ``configs``.

``verticals run CONFIG`` fits, tests the best checkpoint and writes the run's report; ``CONFIG`` is a
YAML path or a packaged name such as ``timeseries/gunpoint_lora`` (``verticals configs`` lists them).
``--ckpt_path last`` resumes the newest run under the config's ``trainer.default_root_dir``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

DOMAINS_PACKAGE = "verticals.domains"


class VerticalsTrainer(Trainer):
    """Lightning's Trainer, logging to ``<default_root_dir>/version_N`` and able to ``run``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(save_dir=kwargs.get("default_root_dir") or "runs", name="")
        super().__init__(*args, **kwargs)

    def run(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
    ) -> list[dict[str, float]]:
        """Fit, then test the best checkpoint and write the run's adapter and report."""
        self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        best = getattr(self.checkpoint_callback, "best_model_path", "")
        return self.test(model, datamodule=datamodule, ckpt_path="best" if best else None)


def packaged_configs() -> dict[str, Path]:
    """Packaged config names (``<domain>/<name>``) and their files."""
    root = resources.files(DOMAINS_PACKAGE)
    found: dict[str, Path] = {}
    for domain in sorted(root.iterdir(), key=lambda path: path.name):
        configs = domain / "configs"
        if not configs.is_dir():
            continue
        for config in sorted(configs.iterdir(), key=lambda path: path.name):
            if config.name.endswith(".yaml"):
                found[f"{domain.name}/{config.name.removesuffix('.yaml')}"] = Path(str(config))
    return found


def resolve_config(value: str) -> str:
    """A config file path, or the file of a packaged config name; an error lists the packaged names."""
    if Path(value).is_file():
        return value
    packaged = packaged_configs()
    name = value.removesuffix(".yaml")
    if name in packaged:
        return str(packaged[name])
    raise SystemExit(
        f"verticals: config {value!r} is neither a file nor a packaged config.\n"
        f"Packaged configs: {', '.join(packaged)}.\nRun `verticals configs` to list them with descriptions."
    )


def _rewrite_arguments(argv: Sequence[str]) -> list[str]:
    """Resolve packaged config names, and turn ``run CONFIG`` into ``run --config FILE``."""
    args = list(argv)
    if len(args) >= 2 and args[0] == "run" and not args[1].startswith("-"):
        args = ["run", "--config", args[1], *args[2:]]
    rewritten: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-c", "--config") and index + 1 < len(args):
            rewritten += [arg, resolve_config(args[index + 1])]
            index += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        rewritten.append(arg)
        index += 1
    return rewritten


def _describe(path: Path) -> str:
    first = path.read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


class VerticalsCLI(LightningCLI):
    """LightningCLI with the ``run`` subcommand and resume-by-``last``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["run"] = {"model", "datamodule"}
        return commands

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand))
        if config is None or config.get("ckpt_path") != "last":
            return
        root = Path(config.trainer.default_root_dir or "runs")
        config.ckpt_path, version = find_last_checkpoint(root)
        config.trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger",
            init_args=Namespace(save_dir=str(root), name="", version=version),
        )


def find_last_checkpoint(root: Path) -> tuple[str, int]:
    """The newest ``version_N/checkpoints/last.ckpt`` under ``root`` and its version number N."""
    candidates = []
    for path in root.glob("version_*/checkpoints/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        if match:
            candidates.append((int(match.group(1)), path))
    if not candidates:
        raise SystemExit(
            f"verticals: --ckpt_path last found no version_*/checkpoints/last.ckpt under {root}. "
            "Start a new run without --ckpt_path, or pass the checkpoint file."
        )
    version, path = max(candidates)
    return str(path), version


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``verticals`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["configs"]:
        for name, path in packaged_configs().items():
            print(f"{name:40s} {_describe(path)}")
        return
    run_cli(args)


def run_cli(args: Sequence[str]) -> VerticalsCLI:
    """Run a ``verticals`` subcommand in this process and return the CLI (its ``trainer``, ``model``)."""
    # Lightning's DDP launcher re-runs sys.argv in each process, so the resolved arguments go there.
    sys.argv = [sys.argv[0], *_rewrite_arguments(args)]
    return VerticalsCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=VerticalsTrainer,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
