"""Benchmark scripts are files, not modules: ``load_script(name)`` imports ``benchmarks/<name>.py``."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextmanager
def _load_script(name: str) -> Iterator[ModuleType]:
    """The script as a module, registered in ``sys.modules`` while in use (scripts pass their callbacks
    to the CLI by import path)."""
    if str(BENCHMARKS) not in sys.path:  # scripts import their shared helpers (``_common``) from this folder
        sys.path.append(str(BENCHMARKS))
    module_name = f"verticals_benchmark_{name}"
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)


@pytest.fixture(scope="session")
def load_script():
    """``with load_script("timeseries") as module: ...``"""
    return _load_script
