"""The ``verticals`` command: Lightning's CLI (fit, validate, test, predict) plus ``run``, ``configs`` and ``export``.

``verticals run CONFIG`` fits, tests the best checkpoint and writes the run's report; ``CONFIG`` is a
YAML path or a packaged name such as ``timeseries/gunpoint_lora`` (``verticals configs`` lists them).
``--ckpt_path last`` resumes the newest run under the config's ``trainer.default_root_dir``.

``verticals export RUN_DIR`` writes a run's adapter merged into its model (``model.safetensors``) beside the
adapter (:mod:`verticals.core.export`); ``verticals predict`` merges mergeable adapters by default
(``--merge_adapter false`` predicts unmerged).

``verticals run CONFIG --seeds 0 1 2 3 4`` runs once per seed (``--seed_everything`` set to each, one after
the other, each in its own ``version_N`` under the root directory) and writes one report over the seeds,
``<root>/seeds_<UTC time>/seeds.json`` and ``seeds.md``: every seed's test metrics, their mean ± sample std
and the 95% Student-t interval over seeds (``verticals.core.seeds``). The report is rewritten after each
seed, so an interrupted sweep leaves the seeds it finished.
"""

from __future__ import annotations

import difflib
import gc
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path
from types import MethodType
from typing import Any, cast

from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, instantiate_class
from lightning.pytorch.utilities.exceptions import SIGTERMException

from verticals.core.callbacks import run_directory
from verticals.core.checkpoint_io import with_atomic_checkpoints
from verticals.core.export import EXPORT_HELP, export_main
from verticals.core.extras import missing_extras, packages_named_in
from verticals.core.quiet import quiet_lightning, without_checkpoint_dirpath_notice
from verticals.core.report import stopped_before_budget, write_seed_report
from verticals.core.resume import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    LOCK_NAME,
    LastCheckpoint,
    RunLock,
    RunLogger,
    checkpoint_position,
    describe_lock,
    launched_worker,
    live_run_lock,
    resumed_config_name,
)
from verticals.core.seeds import check_seeds, summarize_seeds, sweep_seeds
from verticals.core.tasks.base import NOT_SET, AdapterTask, adapter_differences, mark_user_checkpoint

DOMAINS_PACKAGE = "verticals.domains"
#: The subcommands that run a Trainer; each takes a config as its first argument (``verticals fit CONFIG``).
SUBCOMMANDS = ("fit", "validate", "test", "predict", "run")
CONFIGS_HELP = "List the packaged configs (`<domain>/<name>`, usable wherever a config is) with descriptions."


class VerticalsTrainer(Trainer):
    """Lightning's Trainer, logging to ``<default_root_dir>/version_N`` and able to ``run``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("logger") in (None, True):
            kwargs["logger"] = RunLogger(save_dir=kwargs.get("default_root_dir") or "runs", name="")
        kwargs["plugins"] = with_atomic_checkpoints(kwargs.get("plugins"), kwargs.get("strategy"))
        super().__init__(*args, **kwargs)

    def run(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        baseline: bool = True,
    ) -> list[dict[str, float]]:
        """Fit, test the best checkpoint, write the report and the practitioner's baseline beside it.

        ``--seeds 0 1 2``: one run per seed, then a summary. The run's lock
        (:class:`~verticals.core.resume.RunLock`) is held from fit through the baseline.

        Args:
            model: the task to train and test.
            datamodule: the data; its test split is also the baseline's.
            ckpt_path: a checkpoint to resume fit from (``last``: the newest run under the root directory).
            baseline: after testing, also score the baseline a practitioner of the task would try first
                (MiniRocket, zero-shot, a linear probe on the frozen backbone …) on the same test samples and
                add it to the report with a paired-bootstrap CI of the difference (``baseline.json``,
                ``report.json["baseline"]``, ``## Baseline`` in ``report.md``); ``--baseline false`` skips it.
        """
        from verticals.core.baseline import BuildRandomState, run_baseline_step

        self.keep_run_lock = True
        build_state = BuildRandomState()
        self.callbacks.append(build_state)
        try:
            self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            best = getattr(self.checkpoint_callback, "best_model_path", "")
            results = self.test(model, datamodule=datamodule, ckpt_path="best" if best else None)
            if baseline:
                run_baseline_step(self, model, datamodule or self.datamodule, rng_state=build_state.state)
            return results
        finally:
            self.keep_run_lock = False
            for callback in self.callbacks:
                if isinstance(callback, RunLock):
                    callback.release()

    # A run stopped by SIGINT or SIGTERM exits with 130 or 143, never 0 (Lightning's SIGTERM exit is 0).
    def fit(self, *args: Any, **kwargs: Any) -> None:
        with _exit_status_of_signals(self):
            return super().fit(*args, **kwargs)

    # jsonargparse reads these methods' options (--ckpt_path, ...) from the `super().<method>(*args, **kwargs)`
    # call itself: keep that call as it is, and change `kwargs` in place before it.
    def validate(self, *args: Any, **kwargs: Any) -> Any:
        self._name_best_checkpoint(kwargs)
        with _exit_status_of_signals(self), without_checkpoint_dirpath_notice():
            return super().validate(*args, **kwargs)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        self._name_best_checkpoint(kwargs)
        with _exit_status_of_signals(self), without_checkpoint_dirpath_notice():
            return super().test(*args, **kwargs)

    def predict(self, *args: Any, merge_adapter: bool = True, **kwargs: Any) -> Any:
        """Lightning's predict, with the adapter merged into its weights first (``--merge_adapter``).

        Args:
            merge_adapter: merge the adapter into the weights it adapts before predicting and unmerge after
                (same outputs up to floating-point rounding, no adapter cost per sample), for methods that can
                merge (LoRA, DoRA, AdaLoRA, IA3, S2-LoRA …; see ``verticals.core.adapters.merging``); ``false``
                predicts unmerged. A method that can't merge (bottleneck, Earth-Adapter, prompt tuning) always
                predicts unmerged and says why in one log line.
        """
        self._name_best_checkpoint(kwargs)
        model = kwargs.get("model", args[0] if args else None)
        if isinstance(model, AdapterTask):
            model.merge_for_predict = merge_adapter
        with _exit_status_of_signals(self), without_checkpoint_dirpath_notice():
            return super().predict(*args, **kwargs)

    def _name_best_checkpoint(self, kwargs: dict[str, Any]) -> None:
        """``ckpt_path="best"`` becomes the file of the first checkpoint callback, which is what Lightning loads
        too; given by name, Lightning warns on every run that a task has two (``best`` and ``last``)."""
        best = getattr(self.checkpoint_callback, "best_model_path", "")
        if kwargs.get("ckpt_path") == "best" and best:
            kwargs["ckpt_path"] = best


@contextmanager
def _exit_status_of_signals(trainer: Trainer) -> Iterator[None]:
    """Turn a run stopped by SIGTERM (Lightning raises ``SystemExit`` with status 0) or SIGINT (status 1)
    into exit status 143 or 130, after saying where the run can be resumed from."""
    try:
        yield
    except SIGTERMException:
        _say_stopped(trainer, "SIGTERM")
        raise SystemExit(EXIT_SIGTERM) from None
    except SystemExit as exit_:
        if isinstance(exit_.__context__, KeyboardInterrupt) and exit_.code == 1:
            _say_stopped(trainer, "SIGINT")
            raise SystemExit(EXIT_SIGINT) from None
        raise


def _say_stopped(trainer: Trainer, signal_name: str) -> None:
    if not trainer.is_global_zero:
        return
    last = next(
        (callback for callback in trainer.checkpoint_callbacks if isinstance(callback, LastCheckpoint)), None
    )
    where = f"in epoch {trainer.current_epoch} (step {trainer.global_step})"
    if last is not None and last.last_model_path and Path(last.last_model_path).is_file():
        advice = (
            f"{last.last_model_path} holds the run {checkpoint_position(last.last_model_path)}: resume with "
            "`--ckpt_path last` (an interrupted epoch is redone from its start)."
        )
    else:
        advice = "No checkpoint was written yet: start the run again."
    print(f"verticals: stopped by {signal_name} {where}. {advice}", file=sys.stderr, flush=True)


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
    close = close_config_names(name, packaged)
    hint = "No packaged config has a close name."
    if close:
        hint = f"Did you mean {close[0]!r}?" + (
            f" (also close: {', '.join(repr(other) for other in close[1:])})" if close[1:] else ""
        )
    raise SystemExit(
        f"verticals: config {value!r} is neither a file nor a packaged config. {hint}\n"
        f"Run `verticals configs` to list the {len(packaged)} packaged configs with descriptions."
    )


def close_config_names(name: str, packaged: Sequence[str], count: int = 3) -> list[str]:
    """Packaged names close to ``name`` (difflib's ratio), closest first; the ``<domain>/`` part may be
    missing or wrong."""

    def closeness(full: str) -> float:
        whole = difflib.SequenceMatcher(None, name, full).ratio()
        short = difflib.SequenceMatcher(None, name.rsplit("/", 1)[-1], full.rsplit("/", 1)[-1]).ratio()
        return max(whole, short)

    scored = sorted(((closeness(full), full) for full in packaged), key=lambda pair: -pair[0])
    return [full for score, full in scored[:count] if score >= 0.75]


def _rewrite_arguments(argv: Sequence[str]) -> list[str]:
    """Resolve packaged config names, and turn ``SUBCOMMAND CONFIG`` into ``SUBCOMMAND --config FILE``."""
    args = list(argv)
    if len(args) >= 2 and args[0] in SUBCOMMANDS and not args[1].startswith("-"):
        args = [args[0], "--config", args[1], *args[2:]]
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

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # Listed in `verticals --help`; main() answers it before any parsing (it builds no Trainer).
        parser._subcommands_action.add_subcommand(
            "configs",
            self.parser_class(description=CONFIGS_HELP),
            help=CONFIGS_HELP,
        )
        # Listed too; main() hands it to verticals.core.export's own parser (it builds no Trainer either).
        parser._subcommands_action.add_subcommand(
            "export",
            self.parser_class(description=EXPORT_HELP),
            help=EXPORT_HELP,
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning's: a ``--ckpt_path`` file's hyperparameters become the model's config. Before that, an
        adapter (method, targets, trainable modules, an option) that the config or the command line sets
        differently from the checkpoint's is an error, not silently replaced by the checkpoint's."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # `last` is resolved in before_instantiate_classes; the task's on_load_checkpoint checks it
        hparams = _checkpoint_hyperparameters(ckpt_path)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model = self.config[subcommand].get("model")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        given = init_args.get("adapter") if isinstance(init_args, Namespace) else None
        differences = adapter_differences(given, hparams.get("adapter"))
        if differences:
            raise SystemExit(_adapter_mismatch_message(ckpt_path, differences))
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """``--optimizer`` / ``--lr_scheduler``, built when Lightning asks the model for its optimizers.

        LightningCLI builds them here, from ``model.parameters()``, before the model is built (a task builds
        its network and adapter in ``configure_model``), which fails with "optimizer got an empty parameter
        list". A task gets them instead (:meth:`AdapterTask.use_optimizer`: its trainable parameters only);
        any other LightningModule gets a ``configure_optimizers`` that builds them over its trainable
        parameters at that time.
        """
        if not self.auto_configure_optimizers:
            return
        optimizer = _plain_init(self._get(self.config_init, "optimizer"))
        lr_scheduler = _plain_init(self._get(self.config_init, "lr_scheduler"))
        if optimizer is None and lr_scheduler is None:
            return
        if isinstance(self.model, AdapterTask):
            self.model.use_optimizer(optimizer, lr_scheduler)
            return
        if optimizer is None:
            raise SystemExit(
                f"verticals: --lr_scheduler needs --optimizer for {type(self.model).__name__}, which is not a "
                "verticals task (a task applies a scheduler alone to its own AdamW)."
            )
        cli_configure = self.configure_optimizers

        def configure_optimizers(module: LightningModule) -> Any:
            built = instantiate_class([p for p in module.parameters() if p.requires_grad], optimizer)
            scheduler = instantiate_class(built, lr_scheduler) if lr_scheduler is not None else None
            return cli_configure(module, built, scheduler)

        self.model.configure_optimizers = MethodType(configure_optimizers, self.model)  # type: ignore[method-assign]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A checkpoint callback the user named (even one with every default) is kept by the task's
        # configure_callbacks; Lightning's own default one (no callback named) is replaced by the task's.
        # Taken before the Trainer is built: it appends its default to this same list.
        given = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        for callback in given if isinstance(given, list) else [given]:
            if isinstance(callback, ModelCheckpoint):
                mark_user_checkpoint(callback)
        return super().instantiate_trainer(**kwargs)

    def after_run(self) -> None:
        """``verticals run`` ends with the paths it wrote."""
        trainer = self.trainer
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if trainer.is_global_zero:
            print(written_paths(trainer, directory))

    def before_instantiate_classes(self) -> None:
        """``--ckpt_path last``: resume the newest run under the root directory, in its own ``version_N``,
        unless a live process holds it (its ``run.lock``). The resumed run keeps the run's ``config.yaml``
        (its own config goes to ``config_resume_K.yaml``) and appends to its ``metrics.csv``."""
        config = self.config.get(str(self.subcommand))
        if config is None or config.get("ckpt_path") != "last":
            return
        root = Path(config.trainer.default_root_dir or "runs")
        worker = launched_worker()  # a DDP worker follows its rank 0, which holds the run's lock
        config.ckpt_path, version = find_last_checkpoint(root, check_lock=not worker)
        run_dir = root / f"version_{version}"
        config.trainer.logger = Namespace(
            class_path="verticals.core.resume.RunLogger",
            init_args=Namespace(save_dir=str(root), name="", version=version),
        )
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": resumed_config_name(run_dir)}
        if not worker:
            position = checkpoint_position(config.ckpt_path)
            print(
                f"verticals: resuming {run_dir} from {config.ckpt_path}"
                + (f" ({position})" if position else ""),
                file=sys.stderr,
                flush=True,
            )


def find_last_checkpoint(root: Path, *, check_lock: bool = True) -> tuple[str, int]:
    """The newest ``version_N/checkpoints/last.ckpt`` under ``root`` and its version number N.

    With ``check_lock``, a run that a live process still holds (its ``run.lock``) is an error.
    """
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
    run_dir = path.parent.parent
    holder = live_run_lock(run_dir) if check_lock else None
    if holder is not None:
        raise SystemExit(
            f"verticals: --ckpt_path last would resume {run_dir}, but that run is still live: "
            f"{describe_lock(run_dir, holder)}. Wait for it to end or stop it, then resume; if that process is "
            f"gone (a job on another machine), delete {run_dir / LOCK_NAME}."
        )
    return str(path), version


def _checkpoint_hyperparameters(path: str | Path) -> dict[str, Any]:
    """The ``hyper_parameters`` a Lightning checkpoint file saved (an empty dict when it has none); a file
    that is not a readable checkpoint is a ``VerticalsFileError`` naming it."""
    from verticals.core.file_errors import load_torch_file

    checkpoint = load_torch_file(path, kind="checkpoint")
    return dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}


def _adapter_mismatch_message(ckpt_path: str | Path, differences: list[tuple[str, Any, Any]]) -> str:
    """The error for a ``--ckpt_path`` trained with another adapter than the config and command line give."""
    rows = "\n".join(
        f"  --model.init_args.adapter.{field}: the checkpoint has {saved!r}, the config gives {given!r}"
        for field, given, saved in differences
    )
    fixes = " ".join(
        f"--model.init_args.adapter.{field} {_flag_value(saved)}"
        for field, given, saved in differences
        if saved is not NOT_SET
    )
    run_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    return (
        f"verticals: the checkpoint {ckpt_path} was trained with another adapter than this command asks for:\n"
        f"{rows}\nA checkpoint loads only onto the adapter it was trained with. Give the checkpoint's values"
        + (f" ({fixes})" if fixes else "")
        + (f", or use the run's own config: --config {run_config}" if run_config.is_file() else "")
        + "; to try the new values, train a new run with them."
    )


def _flag_value(value: Any) -> str:
    return shlex.quote(value if isinstance(value, str) else json.dumps(value))


def _plain_init(value: Any) -> dict[str, Any] | None:
    """A ``{class_path, init_args}`` dict from jsonargparse's Namespace; None when not given."""
    if value is None:
        return None
    plain = value.as_dict() if hasattr(value, "as_dict") else dict(value)
    return plain if plain.get("class_path") else None


def written_paths(trainer: Trainer, directory: Path | None = None) -> str:
    """What ``verticals run`` wrote: the run directory, report, adapter, checkpoints, config and metrics,
    and the figures the report lists (``report.json``'s ``figures``, relative to the run directory).

    Pass the run ``directory`` when calling on one process of several (finding it is a collective call).
    """
    directory = run_directory(trainer) if directory is None else directory
    best = str(getattr(trainer.checkpoint_callback, "best_model_path", "") or "")
    last = next(
        (callback.last_model_path for callback in trainer.checkpoint_callbacks if callback.last_model_path),
        "",
    )
    entries = [
        ("report", directory / "report.md"),
        ("adapter", directory / "adapter"),
        ("best checkpoint", Path(best) if best else None),
        ("last checkpoint", Path(last) if last else None),
        ("config", directory / "config.yaml"),
        ("metrics", directory / "metrics.csv"),
    ]
    lines = [f"Run directory: {directory}"]
    lines += [f"  {label + ':':17s}{path}" for label, path in entries if path is not None and path.exists()]
    figures = _report_figures(directory)
    if figures:
        lines.append(f"  {'figures:':17s}{', '.join(figures)}")
    return "\n".join(lines)


def _report_figures(directory: Path) -> list[str]:
    """The figures ``report.json`` lists that are in ``directory`` (relative paths); none without a report."""
    try:
        listed = json.loads((directory / "report.json").read_text()).get("figures") or []
    except (OSError, ValueError, AttributeError):  # no report, or not a JSON object
        return []
    return [str(name) for name in listed if isinstance(name, str) and (directory / name).is_file()]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``verticals`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["configs"]:
        for name, path in packaged_configs().items():
            print(f"{name:40s} {_describe(path)}")
        return
    quiet_lightning()  # no advertising tips; no warning about what verticals does on purpose
    if args[:1] == ["export"]:
        export_main(args[1:])
        return
    run_cli(args)


def missing_extras_message(args: Sequence[str]) -> str | None:
    """One line per extra that the configs or the command line need and that is not fully installed
    (``verticals: CONFIG needs the X extra: pip install 'verticals[X]' (missing: a, b)``); None if none.

    Read before the config is parsed: a config needs the extra of each ``verticals.domains.<name>`` package
    its text names, and a packaged config ``<name>/<config>`` that of its own package.

    Args:
        args: The command's arguments (``run CONFIG ...``).
    """
    args = list(args)
    configs = [args[1]] if len(args) >= 2 and args[0] in SUBCOMMANDS and not args[1].startswith("-") else []
    configs += [value for flag, value in zip(args, args[1:]) if flag in ("-c", "--config")]
    configs += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    lines: list[str] = []
    named: set[str] = set()

    def note(subject: str, packages: list[str]) -> None:
        for missing in missing_extras(packages):
            if missing.extra not in named:
                named.add(missing.extra)
                lines.append(f"verticals: {missing.message(subject)}")

    packaged: dict[str, Path] | None = None
    for value in configs:
        path, packages = Path(value), []
        if not path.is_file():
            packaged = packaged_configs() if packaged is None else packaged
            name = value.removesuffix(".yaml")
            if name not in packaged:
                continue  # not a config: resolve_config says so
            path = packaged[name]
            packages.append(f"{DOMAINS_PACKAGE}.{name.split('/', 1)[0]}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable: the parser says so
        note(value, [*packages, *packages_named_in(text)])
    note("this command", packages_named_in(" ".join(args)))
    return "\n".join(lines) or None


def version_line() -> str:
    """``verticals --version``: this package's version and those of the libraries a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {of(name)}" for name in ("lightning", "torch", "peft"))
    return f"{of('verticals')} ({libraries})"


def run_cli(args: Sequence[str]) -> VerticalsCLI | SeedSweep:
    """Run a ``verticals`` subcommand in this process and return the CLI (its ``trainer``, ``model``).

    ``run ... --seeds S [S ...]`` returns the ``SeedSweep`` instead (its report and directory).
    """
    if list(args)[:1] in (["configs"], ["export"]):
        raise SystemExit(
            f"verticals: `{args[0]}` builds no Trainer: call main({list(args)[:1]!r} + arguments) "
            f"(`verticals {args[0]} ...`)."
        )
    missing = missing_extras_message(args)
    if missing:
        raise SystemExit(missing)
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
        parser_kwargs={
            "prog": "verticals",
            "version": version_line(),
            "description": (__doc__ or "").split("\n\n")[0],
        },
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
