"""The dispatcher: reference on CPU by default, Triton forced by VERTICALS_KERNELS, clear errors otherwise."""

from __future__ import annotations

import pytest
import torch

from verticals.kernels import dispatch, select_backend


def test_cpu_tensors_run_the_reference_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERTICALS_KERNELS", raising=False)
    assert select_backend(torch.zeros(2), None) == "reference"
    monkeypatch.setenv("VERTICALS_KERNELS", "reference")
    assert select_backend(torch.zeros(2)) == "reference"


def test_forced_triton_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERTICALS_KERNELS", "fast")
    with pytest.raises(
        ValueError, match=r"VERTICALS_KERNELS='fast' is not one of \('auto', 'triton', 'reference'\)"
    ):
        select_backend(torch.zeros(2))
    monkeypatch.setenv("VERTICALS_KERNELS", "triton")
    monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: False)
    if dispatch.triton_available():
        with pytest.raises(
            RuntimeError, match=r"tensors are on \['cpu'\] and Triton's CPU interpreter is off"
        ):
            select_backend(torch.zeros(2))
        monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: True)
        assert select_backend(torch.zeros(2)) == "triton"


def test_package_import_does_not_import_triton_or_peft() -> None:
    import subprocess
    import sys

    code = "import sys, verticals.kernels; print('triton' in sys.modules, 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
