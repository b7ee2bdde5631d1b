"""The short reports runs leave behind, ``.json`` for machines and ``.md`` for people: ``report.*`` for one
run, ``seeds.*`` for a sweep over seeds (``verticals run CONFIG --seeds 0 1 2``)."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from verticals.core.seeds import CONFIDENCE, INTERVAL


def stopped_before_budget(trainer: Any) -> bool:
    """Whether fit ended before ``max_steps`` / ``max_epochs`` (early stopping, or another callback's stop).

    Read from the loop counters, which testing the best checkpoint leaves alone, unlike callback state:
    ``trainer.test(ckpt_path="best")`` reloads ``EarlyStopping``'s state as it was at the best epoch.
    """
    steps_left = trainer.max_steps is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps
    epochs_left = (
        trainer.max_epochs is None or trainer.max_epochs < 0 or trainer.current_epoch < trainer.max_epochs
    )
    return bool(steps_left and epochs_left)


def adapter_size_bytes(directory: Path) -> int:
    """Bytes of the weight files in an exported adapter directory."""
    return sum(path.stat().st_size for path in directory.glob("*.safetensors")) if directory.is_dir() else 0


def split_size(loaders: Any) -> int | None:
    """Samples behind a split's loader(s): the length of each loader's dataset, summed; None when a dataset
    has no length (a stream) or there is no loader.

    Args:
        loaders: a ``DataLoader``, a list or dict of them, or None.
    """
    if loaders is None:
        return None
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    sizes = [_length(getattr(loader, "dataset", None)) for loader in loaders]
    return None if not sizes or None in sizes else sum(sizes)


def describe_data(
    trainer: Any, *, splits: Mapping[str, int | None] | None = None, tested: int | None = None
) -> dict[str, Any] | None:
    """What a run trained and tested on: the datamodule's class path, the dataset's name
    (:func:`verticals.core.data.dataset_name_of`), the samples of each split and the run's seed.

    Nothing is loaded for the report: a split's size is the one given in ``splits`` (the run report notes
    them while fit runs: Lightning drops a fit's loaders before the test), else that of the loader the
    trainer holds, else that of the datamodule's ``<split>_dataset`` attribute when set, else None. ``seed``
    is the global seed (``seed_everything``, ``PL_GLOBAL_SEED``); ``datamodule_seed`` the datamodule's own
    (its split and shuffling) when it has one; ``tested`` the samples the test scored (fewer than the split
    with ``limit_test_batches``). None without a datamodule.

    Args:
        trainer: the trainer of the run (its ``datamodule`` and loaders).
        splits: sizes already known, by split.
        tested: the samples the test scored.
    """
    from verticals.core.data import SPLITS, dataset_name_of

    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return None
    cls = type(datamodule)
    held = {
        "train": getattr(trainer, "train_dataloader", None),
        "val": getattr(trainer, "val_dataloaders", None),
        "test": getattr(trainer, "test_dataloaders", None),
    }
    sizes: dict[str, int | None] = {}
    for split in SPLITS:
        size = (splits or {}).get(split)
        if size is None:
            size = split_size(held.get(split))
        if size is None:
            dataset = getattr(datamodule, f"{split}_dataset", None)
            size = _length(dataset)
        sizes[split] = size
    seed = os.environ.get("PL_GLOBAL_SEED")
    own_seed = getattr(datamodule, "seed", None)
    data: dict[str, Any] = {
        "datamodule": f"{cls.__module__}.{cls.__qualname__}",
        "dataset": dataset_name_of(datamodule),
        "splits": sizes,
        "seed": int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
    }
    if isinstance(own_seed, int) and not isinstance(own_seed, bool):
        data["datamodule_seed"] = own_seed
    if tested is not None:
        data["tested"] = int(tested)
    return data


def _length(dataset: Any) -> int | None:
    if dataset is None or callable(dataset):
        return None
    try:
        return len(dataset)
    except (TypeError, NotImplementedError):
        return None


def write_report(
    run_dir: Path,
    *,
    task: Any,
    test_metrics: dict[str, float],
    best_validation: dict[str, Any] | None,
    checkpoint: str,
    timing: dict[str, float] | None,
    data: dict[str, Any] | None = None,
    figures: list[str] | None = None,
    figures_skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``run_dir`` and return the report.

    Both are written afresh (a later step, the baseline, adds its own key and section after this).

    Args:
        run_dir: the run directory.
        task: the tested task (model, adapter, backbone and parameter counts come from it).
        test_metrics: the ``test_*`` metrics of the test.
        best_validation: ``{"monitor", "value"}`` of the tested checkpoint, when one was selected.
        checkpoint: the tested checkpoint's path ("" for the weights in memory).
        timing: the ``Timing`` callback's figures.
        data: what the run trained and tested on (:func:`describe_data`).
        figures: the figures in ``run_dir`` (paths relative to it), shown in ``report.md``.
        figures_skipped: figure -> why it was not drawn.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = task.parameter_summary()
    adapter_bytes = adapter_size_bytes(run_dir / "adapter")
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": type(task).__name__,
        "model": task.hparams.get("model"),
        "model_args": task.hparams.get("model_args"),
        "adapter": task.hparams.get("adapter"),
        "backbone": task.backbone_reference,
        "parameters": summary.as_dict(),
        "adapter_file_bytes": adapter_bytes,
        "adapter_file_vs_trainable_bytes": adapter_bytes / summary.trainable_bytes
        if summary.trainable_bytes
        else None,
        "test": test_metrics,
        "best_validation": best_validation,
        "checkpoint": checkpoint,
        "timing": timing,
        "prefix_cache": getattr(task, "prefix_cache_summary", {"used": False}),
        "data": data,
        "figures": list(figures or []),
        "figures_skipped": dict(figures_skipped or {}),
        "environment": _environment(),
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    parameters = report["parameters"]
    adapter = report["adapter"] or {}
    lines = [
        f"# {report['task']} — {report['model']}",
        "",
        f"- adapter: `{adapter.get('method')}` on `{adapter.get('targets')}`, options `{adapter.get('options')}`",
        f"- backbone: `{report['backbone'].get('source')}` (fingerprint `{str(report['backbone'].get('fingerprint'))[:12]}`)",
        f"- trainable parameters: {parameters['trainable']:,} of {parameters['backbone']:,} backbone parameters "
        f"({parameters['trainable_percent']:.3f}%)",
        f"- adapter file: {report['adapter_file_bytes']:,} bytes",
    ]
    if report["best_validation"]:
        lines.append(
            f"- best {report['best_validation']['monitor']}: {report['best_validation']['value']:.4f}"
        )
    if report["timing"]:
        timing = report["timing"]
        lines.append(
            f"- training: {timing['fit_seconds']:.1f} s, {timing['samples_per_second']:.1f} samples/s"
        )
    lines.append(_prefix_cache_line(report.get("prefix_cache") or {"used": False}))
    lines += _data_markdown(report.get("data"))
    lines += ["", "| test metric | value |", "|---|---|"]
    lines += [
        f"| {name.removeprefix('test_')} | {value:.4f} |" for name, value in sorted(report["test"].items())
    ]
    lines += _figures_markdown(report.get("figures") or [], report.get("figures_skipped") or {})
    return "\n".join(lines) + "\n"


def _prefix_cache_line(cache: dict[str, Any]) -> str:
    """One line: whether the fit replayed a frozen prefix, what it cached and how often it replayed."""
    if not cache.get("used"):
        return "- frozen-prefix cache: not used"
    line = (
        f"- frozen-prefix cache: replayed `{', '.join(cache['cached_modules'])}` (keyed on the "
        f"{cache['keyed_on']}, {cache['dtype']}), {cache['samples']:,} samples, {cache['bytes'] / 1e6:,.1f} MB"
    )
    if cache.get("hit_rate") is not None:
        line += f", hit rate {cache['hit_rate']:.2f}"
    if cache.get("uncached_samples"):
        line += f", {cache['uncached_samples']:,} samples over its ceiling (computed every step)"
    return line


def _data_markdown(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return []
    splits = data.get("splits") or {}
    sizes = ", ".join(f"{split} {'—' if size is None else f'{size:,}'}" for split, size in splits.items())
    line = f"- data: {data.get('dataset')} (`{data.get('datamodule')}`); samples: {sizes}"
    if data.get("tested") is not None and data["tested"] != splits.get("test"):
        line += f" ({data['tested']:,} tested)"
    seeds = f"- seed: {data.get('seed')}"
    if data.get("datamodule_seed") is not None:
        seeds += f" (datamodule seed {data['datamodule_seed']})"
    return [line, seeds]


def _figures_markdown(figures: list[str], skipped: dict[str, str]) -> list[str]:
    if not figures and not skipped:
        return []
    lines = ["", "## Figures", ""]
    for figure in figures:
        lines += [f"![{Path(figure).stem.replace('_', ' ')}]({figure})", ""]
    lines += [f"- not drawn: `{name}`: {reason}" for name, reason in skipped.items()]
    return lines


def write_seed_report(
    directory: Path,
    *,
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    command: str,
    configs: list[str],
    seeds: list[int],
    complete: bool,
) -> dict[str, Any]:
    """Write ``seeds.json`` and ``seeds.md`` (one sweep's runs and their summary) and return the report.

    ``runs`` are the finished seeds' records (``seed``, ``run_dir``, ``test`` metrics, …), ``summary`` the
    ``SeedStatistics.as_dict()`` of each metric; ``complete`` is false while seeds are still to come.
    """
    directory.mkdir(parents=True, exist_ok=True)
    confidence = next(iter(summary.values()))["confidence"] if summary else CONFIDENCE
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "configs": configs,
        "seeds": seeds,
        "complete": complete,
        "confidence": confidence,
        "interval": INTERVAL,
        "runs": runs,
        "summary": summary,
        "environment": _environment(),
    }
    (directory / "seeds.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (directory / "seeds.md").write_text(_seed_markdown(report))
    return report


def _number(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _seed_markdown(report: dict[str, Any]) -> str:
    done = [run["seed"] for run in report["runs"]]
    level = f"{report['confidence']:.0%}"
    lines = [
        f"# {', '.join(Path(config).stem for config in report['configs']) or 'Run'} over seeds "
        f"{', '.join(map(str, done)) or '(none finished yet)'}"
        + ("" if report["complete"] else f" (PARTIAL: {len(done)} of {len(report['seeds'])} seeds)"),
        "",
        f"- command: `{report['command']}`",
        f"- config: {', '.join(f'`{config}`' for config in report['configs']) or '—'}",
        f"- {level} interval: {report['interval']}; one seed gives no spread (n/a); not clipped to the "
        "metric's range",
        "",
        f"| test metric | mean ± std | {level} CI | per seed |",
        "|---|---|---|---|",
    ]
    for name, entry in report["summary"].items():
        spread = "" if math.isnan(entry["std"]) else f" ± {entry['std']:.4f}"
        lines.append(
            f"| {name.removeprefix('test_')} | {_number(entry['mean'])}{spread} | "
            f"[{_number(entry['low'])}, {_number(entry['high'])}] | "
            f"{', '.join(_number(value) for value in entry['values'])} |"
        )
    lines += [
        "",
        "| seed | run | epochs | steps | stopped early | best validation |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        best = run.get("best_validation")
        lines.append(
            f"| {run['seed']} | [{run['run_dir']}]({run['run_dir']}) | {run.get('epochs', '')} | "
            f"{run.get('steps', '')} | {'yes' if run.get('stopped_early') else 'no'} | "
            + (f"{best['monitor']} {best['value']:.4f}" if best else "—")
            + " |"
        )
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, str]:
    """Python, torch and machine type, recorded in every report so numbers can be traced to a setup."""
    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()}
