"""What every benchmark script shares: the machine record, quiet in-process runs, the timed training window,
the report files and the runs directory. Not a benchmark itself (the leading underscore); scripts import it from this folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from verticals.core.callbacks import batch_size


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """CPU model, cores, torch threads, CUDA, Python, platform, the versions of ``packages`` and the load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = round(os.getloadavg()[0], 2)
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_1min_at_start": load,
    }


def machine_line(env: Mapping[str, Any]) -> str:
    """One readable line of a :func:`machine` record, for the reports' headers."""
    versions = ", ".join(f"{name} {version}" for name, version in env.get("versions", {}).items())
    return (
        f"{env['cpu']}, {env['cpu_count']} cores ({env['usable_cores']} usable), torch {env['torch']} "
        f"({env['torch_threads']} thread(s)), CUDA {'yes' if env['cuda'] else 'no'}, Python {env['python']}, "
        f"{env['platform']}{'; ' + versions if versions else ''}; "
        f"1-min load average at start {env.get('load_average_1min_at_start')}"
    )


@contextlib.contextmanager
def quiet_run(
    log_file: Path | None, noisy_warnings: Sequence[str] = (), loggers: Mapping[str, int] | None = None
) -> Iterator[None]:
    """Run quietly: the run's stdout (result tables) goes to ``log_file``; Lightning's start-up info, the
    ``loggers`` given (name → level) and the ``noisy_warnings`` patterns are dropped. ``log_file=None``
    (``--verbose``) leaves all output alone.

    Either way restores ``sys.argv``, which ``run_cli`` rewrites for Lightning's launchers.
    """
    saved_argv = list(sys.argv)
    quieter = (
        {}
        if log_file is None
        else {"lightning.pytorch": logging.WARNING, "lightning.fabric": logging.WARNING, **(loggers or {})}
    )
    levels = {name: logging.getLogger(name).level for name in quieter}
    buffer = io.StringIO()
    with warnings.catch_warnings():
        if log_file is not None:
            for pattern in noisy_warnings:
                warnings.filterwarnings("ignore", message=pattern)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
        for name, level in quieter.items():
            logging.getLogger(name).setLevel(level)
        try:
            with contextlib.redirect_stdout(buffer) if log_file is not None else contextlib.nullcontext():
                yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            sys.argv = saved_argv
            if log_file is not None:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                log_file.write_text(buffer.getvalue())


def write_reports(
    results: dict[str, Any], output: Path, render: Callable[[dict[str, Any]], str]
) -> tuple[str, Path]:
    """Write the markdown report and the raw JSON beside it; returns the markdown and the JSON path."""
    markdown = render(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    json_path = output.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return markdown, json_path


@contextlib.contextmanager
def runs_root(runs_dir: Path | None, prefix: str) -> Iterator[Path]:
    """``runs_dir`` (created), or a temporary directory deleted afterwards."""
    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        yield runs_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        yield Path(scratch)


class TrainWindow(L.Callback):
    """Wall time of Lightning's training window (``on_train_start`` → ``on_train_end``), its samples and
    the end time of every step.

    ``elapsed`` is the whole window; ``seconds`` leaves out the time spent in ``trainer.save_checkpoint``
    inside it. ``steady_samples_per_second`` counts from the end of the first step to the end of the last
    (no warm-up step, no end-of-epoch work), the window a steady-state throughput comparison needs.
    Added to runs with ``--trainer.callbacks+=``, so they are otherwise unchanged. Unlike
    ``verticals.core.callbacks.Timing`` it keeps no checkpoint state, so ``verticals run`` restoring the
    best checkpoint for testing does not reset it.
    """

    def __init__(self) -> None:
        self.elapsed = 0.0
        self.seconds = 0.0
        self.checkpoint_seconds = 0.0
        self.checkpoint_saves = 0
        self.samples = 0
        self.step_ends: list[float] = []
        self.step_samples: list[int] = []
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        original = trainer.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.checkpoint_seconds += time.perf_counter() - start
                self.checkpoint_saves += 1

        trainer.save_checkpoint = timed_save  # instance attribute: shadows the method during the window only
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        size = batch_size(batch)
        self.samples += size
        self.step_samples.append(size)
        self.step_ends.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.elapsed = time.perf_counter() - self._start
        with contextlib.suppress(AttributeError):
            del trainer.save_checkpoint
        self.seconds = self.elapsed - self.checkpoint_seconds

    @property
    def steady_samples_per_second(self) -> float:
        return steady_throughput(self.step_ends, self.step_samples)


def steady_throughput(step_ends: Sequence[float], step_samples: Sequence[int]) -> float:
    """Samples per second from the end of the first step to the end of the last (the first, warm-up step
    and whatever runs before it are left out); NaN with fewer than two steps."""
    if len(step_ends) < 2:
        return float("nan")
    return sum(step_samples[1:]) / (step_ends[-1] - step_ends[0])


def alternate(
    runners: Mapping[str, Callable[[int], Any]],
    repeats: int,
    on_result: Callable[[str, int, Any], None] | None = None,
) -> dict[str, list[Any]]:
    """Call every runner once per repeat (with the repeat's index) in ABBA order: the given order on even
    repeats, reversed on odd ones, so drifting machine load and warm-up hit every runner alike. Returns each
    runner's results in repeat order; ``on_result(name, repeat, result)`` sees each as it comes (progress)."""
    results: dict[str, list[Any]] = {name: [] for name in runners}
    names = list(runners)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            results[name].append(runners[name](repeat))
            if on_result is not None:
                on_result(name, repeat, results[name][-1])
    return results


def find_callback(trainer: L.Trainer, kind: type) -> Any:
    """The trainer's first callback of type ``kind``, or None."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, kind)), None)


def callback_class_path(kind: type) -> str:
    """Import path of a callback class, for ``--trainer.callbacks`` (works as a script or a module)."""
    module = sys.modules.get(kind.__module__)
    if module is None or getattr(module, kind.__name__, None) is not kind:
        raise RuntimeError(
            f"{kind.__name__} must be importable as {kind.__module__}.{kind.__name__} to pass it to the CLI; "
            "import its file as a registered module (sys.modules) or run it as a script."
        )
    return f"{kind.__module__}.{kind.__qualname__}"


def format_number(value: Any, digits: int = 3) -> str:
    """A figure, or "–" where there is none (NaN, or None as JSON writes NaN: e.g. a gap between groups that
    all score 0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def format_interval(entry: Mapping[str, Any], digits: int = 3) -> str:
    """``mean [low, high]`` of a ``SeedStatistics.as_dict()`` (just the mean where one seed gives no interval)."""
    mean, low, high = entry.get("mean"), entry.get("low"), entry.get("high")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def median_step_seconds(window: TrainWindow | None) -> float:
    """Median time between consecutive training-step ends: one optimizer step with its forward and backward,
    without the validation, checkpointing and start-up between some of them."""
    if window is None or len(window.step_ends) < 2:
        return math.nan
    gaps = sorted(b - a for a, b in zip(window.step_ends, window.step_ends[1:]))
    return gaps[len(gaps) // 2]


def paired_verdict(difference: Mapping[str, Any], better: str, worse: str) -> str:
    """``better`` / ``worse`` where a paired difference's t-interval excludes 0, else "no difference shown"
    ("too few seeds" without an interval)."""
    low, high = difference.get("low"), difference.get("high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "too few seeds"
    if low > 0:
        return better
    if high < 0:
        return worse
    return "no difference shown"


def tuning_table(tuning: Mapping[str, Mapping[str, float]], heading: str) -> list[str]:
    """Markdown lines: a heading, then per method its validation score at each learning rate tried, the best
    in bold (``tuning``: method -> {rate as text: score})."""
    if not tuning:
        return []
    rates = sorted({rate for scores in tuning.values() for rate in scores}, key=float)
    lines = ["", heading, "", "| method | " + " | ".join(rates) + " |", "|---" * (len(rates) + 1) + "|"]
    for method, scores in tuning.items():
        best = max(scores, key=scores.get)
        cells = [
            ("**" + format_number(scores[rate]) + "**" if rate == best else format_number(scores[rate]))
            if rate in scores
            else ""
            for rate in rates
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def figure_links(figures: Sequence[str]) -> list[str]:
    """Markdown image links to a report's figures, relative to the report (they sit in its sibling folder)."""
    if not figures:
        return []
    folder = Path(figures[0]).parent.name
    return [*(f"![{Path(path).stem}]({folder}/{Path(path).name})" for path in figures), ""]


def sweep_results(
    command: Sequence[str],
    env: Mapping[str, Any],
    args: Any,
    runs: list[dict[str, Any]],
    resumed: Iterable[tuple[str, str, int, float]],
    summary: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """What a seed sweep's report holds: the command, date, machine, arguments (paths as text), every run,
    the runs taken from earlier calls (``(phase, method, seed, rate)``), the summary and the minutes taken."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return {
        "command": " ".join(command),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": env,
        "arguments": {key: plain(value) for key, value in vars(args).items()},
        "runs": runs,
        "resumed_runs": sorted(
            f"{phase}/{method}/seed{seed}/lr{rate:g}" for phase, method, seed, rate in resumed
        ),
        "summary": summary,
        "total_minutes": (time.perf_counter() - started) / 60,
    }
