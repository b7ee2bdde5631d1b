"""Which implementation runs: Triton for CUDA tensors when Triton imports, the PyTorch reference otherwise.

``VERTICALS_KERNELS`` overrides it: ``reference`` always runs the reference; ``triton`` runs the kernels on
CUDA tensors and, when Triton's CPU interpreter is on (``TRITON_INTERPRET=1`` before the kernels are first
imported), on CPU tensors too; it is an error where neither holds. ``auto`` (the default) decides per call.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Literal

import torch

ENV_VAR = "VERTICALS_KERNELS"
MODES = ("auto", "triton", "reference")
Backend = Literal["triton", "reference"]


@functools.cache
def triton_available() -> bool:
    """True when ``triton`` imports (the ``kernels`` extra on Linux)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001  (a broken install is as good as none here)
        return False
    return True


def interpreter_enabled() -> bool:
    """True when the kernels run (or will run, once imported) in Triton's CPU interpreter."""
    module = sys.modules.get("verticals.kernels.triton_lora")
    if module is not None:
        return module.interpreted()
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def mode() -> str:
    """The ``VERTICALS_KERNELS`` setting, validated."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {MODES}; unset it or choose one of those.")
    return value


def select_backend(*tensors: torch.Tensor | None) -> Backend:
    """The backend for a call on ``tensors`` (``None`` entries are ignored).

    Args:
        *tensors: the call's tensors; ``auto`` picks Triton only when all are on CUDA.
    """
    chosen = mode()
    if chosen == "reference":
        return "reference"
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if chosen == "auto":
        return "triton" if on_cuda and triton_available() else "reference"
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but `import triton` fails; install `verticals[kernels]`.")
    if on_cuda or interpreter_enabled():
        return "triton"
    devices = sorted({str(t.device) for t in tensors if t is not None})
    raise RuntimeError(
        f"{ENV_VAR}=triton but the tensors are on {devices} and Triton's CPU interpreter is off; move them to "
        f"CUDA, set TRITON_INTERPRET=1 before verticals.kernels runs its first kernel, or unset {ENV_VAR}."
    )
