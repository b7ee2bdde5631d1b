"""Kernel tests run the Triton code itself: on a machine without CUDA, in Triton's CPU interpreter.

``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when
``verticals.kernels._triton_kernels`` is first imported, so it is set here, before any test imports it.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Max |error| / max |reference| allowed per dtype (fp32 accumulation inside the kernels).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Relative to the largest reference value, so one loose tolerance fits every output of a dtype."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.float().abs().max().clamp_min(1e-6)
    error = ((actual.float() - expected.float()).abs().max() / scale).item()
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e} ({dtype})"


@pytest.fixture
def use_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the Triton kernels (interpreted on CPU)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("VERTICALS_KERNELS", "triton")
    from verticals.kernels import triton_lora

    if DEVICE == "cpu" and not triton_lora.interpreted():
        pytest.skip("verticals.kernels was imported before TRITON_INTERPRET=1 was set in this process")
