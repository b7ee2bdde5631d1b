"""What every benchmark script shares: the machine record, quiet in-process runs, the report files and the
runs directory. Not a benchmark itself (the leading underscore); scripts import it from this folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


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
