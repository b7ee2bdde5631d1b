"""The ``verticals`` command: Lightning's CLI (fit, validate, test, predict) plus ``run`` and ``configs``.

``verticals run CONFIG`` fits, tests the best checkpoint and writes the run's report; ``CONFIG`` is a
YAML path or a packaged name such as ``timeseries/gunpoint_lora`` (``verticals configs`` lists them).
``--ckpt_path last`` resumes the newest run under the config's ``trainer.default_root_dir``.

``verticals run CONFIG --seeds 0 1 2 3 4`` runs once per seed (``--seed_everything`` set to each, one after
the other, each in its own ``version_N`` under the root directory) and writes one report over the seeds,
``<root>/seeds_<UTC time>/seeds.json`` and ``seeds.md``: every seed's test metrics, their mean ± sample std
and the 95% Student-t interval over seeds (``verticals.core.seeds``). The report is rewritten after each
seed, so an interrupted sweep leaves the seeds it finished.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path
from typing import Any, cast

from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from verticals.core.callbacks import run_directory
from verticals.core.report import stopped_before_budget, write_seed_report
from verticals.core.seeds import check_seeds, summarize_seeds, sweep_seeds

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
        """Fit, test the best checkpoint, write the report (``--seeds 0 1 2``: per seed, then a summary)."""
        self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        best = getattr(self.checkpoint_callback, "best_model_path", "")
        return self.test(model, datamodule=datamodule, ckpt_path="best" if best else None)


def packaged_configs() -> dict[str, Path]:
    """Packaged config names (``<domain>/<name>``) and their files."""
    found: dict[str, Path] = {}
    # The package's own folder, then any plugin folder that joined it (see verticals/domains/__init__.py).
    for root in import_module(DOMAINS_PACKAGE).__path__:
        for domain in sorted(Path(root).iterdir(), key=lambda path: path.name):
            configs = domain / "configs"
            if not configs.is_dir():
                continue
            for config in sorted(configs.iterdir(), key=lambda path: path.name):
                if config.name.endswith(".yaml"):
                    found.setdefault(f"{domain.name}/{config.name.removesuffix('.yaml')}", config)
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


def run_cli(args: Sequence[str]) -> VerticalsCLI | SeedSweep:
    """Run a ``verticals`` subcommand in this process and return the CLI (its ``trainer``, ``model``).

    ``run ... --seeds S [S ...]`` returns the ``SeedSweep`` instead (its report and directory).
    """
    seeds, args = _split_seeds(args)
    if seeds is not None:
        return run_seeds(args, seeds)
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


# -- seeds -------------------------------------------------------------------------------------------------
SEEDS_FLAG = "--seeds"


@dataclass(frozen=True)
class SeedSweep:
    """What ``verticals run CONFIG --seeds ...`` leaves: the report (``seeds.json``'s content) and its folder."""

    directory: Path
    report: dict[str, Any]


def _split_seeds(args: Sequence[str]) -> tuple[list[int] | None, list[str]]:
    """Take ``--seeds 0 1 2`` (or ``--seeds=0,1,2``) out of the arguments: (the seeds or None, the rest)."""
    seeds: list[int] | None = None
    rest: list[str] = []
    index = 0
    args = list(args)
    while index < len(args):
        arg = args[index]
        if arg == SEEDS_FLAG or arg.startswith(SEEDS_FLAG + "="):
            if seeds is not None:
                raise SystemExit(
                    f"verticals: {SEEDS_FLAG} is given twice; pass all seeds once: --seeds 0 1 2."
                )
            values = [arg.split("=", 1)[1]] if "=" in arg else []
            index += 1
            while "=" not in arg and index < len(args) and not args[index].startswith("-"):
                values.append(args[index])
                index += 1
            tokens = [token for value in values for token in value.split(",") if token]
            try:
                seeds = [int(token) for token in tokens]
            except ValueError:
                raise SystemExit(
                    f"verticals: {SEEDS_FLAG} takes integers, got {' '.join(values)!r}; e.g. --seeds 0 1 2 3 4."
                ) from None
            if not seeds:
                raise SystemExit(f"verticals: {SEEDS_FLAG} needs at least one seed, e.g. --seeds 0 1 2 3 4.")
            continue
        rest.append(arg)
        index += 1
    return seeds, rest


def run_seeds(args: Sequence[str], seeds: Sequence[int]) -> SeedSweep:
    """``verticals run`` once per seed, then one report over the seeds (see the module docstring).

    ``args`` are the ``run`` arguments without ``--seeds``; each seed adds ``--seed_everything <seed>``.
    """
    args = list(args)
    command = "verticals " + shlex.join([*args, SEEDS_FLAG, *map(str, seeds)])
    subcommand = args[0] if args else None
    if subcommand != "run":
        raise SystemExit(
            f"verticals: {SEEDS_FLAG} trains and tests once per seed and summarises them, which is what "
            f"`verticals run` does; `{subcommand}` does one run. Use `verticals run CONFIG {SEEDS_FLAG} 0 1 2`, "
            f"or `verticals {subcommand or 'fit'} ... --seed_everything 0` for one seed."
        )
    for flag in ("--seed_everything", "--ckpt_path"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in args):
            raise SystemExit(
                f"verticals: {flag} cannot be combined with {SEEDS_FLAG}: "
                + (
                    "each seed sets its own --seed_everything; list the seeds in --seeds."
                    if flag == "--seed_everything"
                    else "a sweep starts every seed afresh. Resume one seed with "
                    "`verticals run CONFIG --seed_everything S --ckpt_path last`, then run the remaining seeds."
                )
            )
    try:
        seeds = check_seeds(seeds)
    except ValueError as error:
        raise SystemExit(f"verticals: {error}") from None
    name = "seeds_" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    runs: list[dict[str, Any]] = []
    sweep: dict[str, Any] = {}

    def run_one(seed: int) -> dict[str, Any]:
        cli = cast(VerticalsCLI, run_cli([*args, "--seed_everything", str(seed)]))  # no --seeds: one run
        record = _seed_record(cli.trainer, seed)
        del cli
        gc.collect()  # one model at a time: the last seed's backbone goes before the next is built
        return record

    def write(seed: int, record: dict[str, Any]) -> None:
        root = Path(record.pop("root"))
        if "directory" not in sweep:
            sweep["directory"] = _new_directory(root, name)
        directory = sweep["directory"]
        record["run_dir"] = os.path.relpath(Path(record["run_dir"]).resolve(), directory.resolve())
        runs.append(record)
        sweep["report"] = write_seed_report(
            directory,
            runs=runs,
            summary={
                metric: statistics.as_dict()
                for metric, statistics in summarize_seeds({run["seed"]: run["test"] for run in runs}).items()
            },
            command=command,
            configs=_configs(args),
            seeds=seeds,
            complete=len(runs) == len(seeds),
        )

    sweep_seeds(seeds, run_one, on_result=write)
    result = SeedSweep(sweep["directory"], sweep["report"])
    print((result.directory / "seeds.md").read_text())
    print(f"Seed report: {result.directory / 'seeds.md'} and seeds.json")
    return result


def _configs(args: Sequence[str]) -> list[str]:
    """The config files the arguments name (packaged names resolved), in order."""
    rewritten = _rewrite_arguments(args)
    files = [value for flag, value in zip(rewritten, rewritten[1:]) if flag in ("-c", "--config")]
    return files + [arg.split("=", 1)[1] for arg in rewritten if arg.startswith("--config=")]


def _seed_record(trainer: Trainer, seed: int) -> dict[str, Any]:
    """One seed's row of the sweep report: its run directory, test metrics and how long it trained."""
    checkpoint = trainer.checkpoint_callback
    return {
        "seed": seed,
        "root": str(trainer.default_root_dir),
        "run_dir": str(run_directory(trainer)),
        "test": {
            name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("test_")
        },
        "best_validation": (
            {"monitor": checkpoint.monitor, "value": float(checkpoint.best_model_score)}
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_score is not None
            else None
        ),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "stopped_early": stopped_before_budget(trainer),
    }


def _new_directory(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name_2``, ``_3`` … if a sweep started in the same second already has it."""
    candidate, suffix = root / name, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = root / f"{name}_{suffix}"


if __name__ == "__main__":
    main()
