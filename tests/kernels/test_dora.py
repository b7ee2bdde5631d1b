"""Fused DoRA: the one-pass column norm and the rescaled layer against the reference (peft's formula)."""

from __future__ import annotations

import pytest
import torch

from verticals.kernels import dora_linear, dora_linear_reference, dora_weight_norm, dora_weight_norm_reference

from .conftest import DEVICE, assert_close


def _inputs(dtype, k=45, n=29, r=6):
    g = torch.Generator().manual_seed(0)

    def rand(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=g) * scale + shift).to(DEVICE, dtype)

    return (
        rand(3, 7, k).requires_grad_(), rand(n, k, scale=0.2), rand(n),
        rand(r, k, scale=0.3).requires_grad_(), rand(n, r, scale=0.3).requires_grad_(),
        rand(n, scale=0.1, shift=1.0).requires_grad_(),
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_norm_and_inference_forward(use_triton, dtype) -> None:
    x, w, b, a, bb, m = _inputs(dtype)
    assert_close(dora_weight_norm(w, a, bb, 0.5), dora_weight_norm_reference(w.float(), a.float(), bb.float(), 0.5),
                 dtype, "norm")  # fmt: skip
    with torch.no_grad():  # the epilogue path: rescale inside the GEMM
        y = dora_linear(x, w, b, a, bb, 0.5, m)
    expected = dora_linear_reference(x.float(), w.float(), b.float(), a.float(), bb.float(), 0.5, m.float())
    assert_close(y, expected, dtype, "y")


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_training_gradients_match_reference(use_triton, dropout) -> None:
    x, w, b, a, bb, m = _inputs(torch.float32)
    params = (x, a, bb, m)
    torch.manual_seed(5)
    y = dora_linear(x, w, b, a, bb, 0.5, m, dropout=dropout)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, params, grad)
    torch.manual_seed(5)  # the dropout path draws its mask with torch, as the reference does
    y_ref = dora_linear_reference(x, w, b, a, bb, 0.5, m, dropout=dropout)
    expected = torch.autograd.grad(y_ref, params, grad)
    assert_close(y, y_ref, torch.float32, "y")
    for name, have, want in zip(("dx", "dA", "dB", "dm"), got, expected):
        assert_close(have, want, torch.float32, name)
