"""Fused LoRA linear (forward and backward) against the reference, and the reference against peft's layer."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from verticals.kernels import lora_linear, lora_linear_reference

from .conftest import DEVICE, assert_close

CASES = [  # (leading shape, in, out, rank, bias, dropout): odd sizes that straddle the 32-wide tiles
    ((37,), 45, 29, 5, True, 0.0),
    ((3, 11), 33, 70, 1, False, 0.0),
    ((2, 5), 64, 17, 64, True, 0.0),
    ((19,), 40, 31, 8, True, 0.3),
    ((2, 9), 24, 50, 16, False, 0.5),
]


def _inputs(shape, k, n, r, bias, dtype):
    g = torch.Generator().manual_seed(0)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(DEVICE, dtype)

    x = rand(*shape, k).requires_grad_()
    return (
        x,
        rand(n, k, scale=0.2),
        rand(n) if bias else None,
        rand(r, k, scale=0.3).requires_grad_(),
        rand(n, r, scale=0.3).requires_grad_(),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}->{c[2]}r{c[3]}p{c[5]}")
def test_triton_matches_reference_forward_and_backward(use_triton, case, dtype) -> None:
    from verticals.kernels import triton_lora

    shape, k, n, r, bias, p = case
    x, w, b, a, bb = _inputs(shape, k, n, r, bias, dtype)
    torch.manual_seed(1)
    y = lora_linear(x, w, b, a, bb, 0.75, dropout=p)
    grad = torch.randn_like(y)
    dx, da, db = torch.autograd.grad(y, (x, a, bb), grad)

    mask = None
    if p > 0:  # the same counter-based mask the kernels drew from the seed torch gave them
        torch.manual_seed(1)
        rows = x.numel() // k
        mask = triton_lora.dropout_mask(int(torch.randint(0, 2**31 - 1, ())), p, rows, k, x.device)
        dropped = (mask == 0).float().mean().item()
        assert abs(dropped - p) < 0.12, f"dropout drew {dropped:.2f} zeros for p={p}"
    ref = [t.detach().float().requires_grad_() for t in (x, a, bb)]
    y_ref = lora_linear_reference(
        ref[0], w.float(), None if b is None else b.float(), ref[1], ref[2], 0.75, dropout_mask=mask
    )
    expected = torch.autograd.grad(y_ref, ref, grad.float())
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    for name, got, want in zip(("dx", "dA", "dB"), (dx, da, db), expected):
        assert_close(got, want, dtype, name)


def test_weight_and_bias_grads_when_they_train(use_triton) -> None:
    x, w, b, a, bb = _inputs((7,), 20, 9, 4, True, torch.float32)
    w.requires_grad_()
    b.requires_grad_()
    gw, gb = torch.autograd.grad(lora_linear(x, w, b, a, bb, 2.0).sum(), (w, b))
    rw, rb = torch.autograd.grad(lora_linear_reference(x, w, b, a, bb, 2.0).sum(), (w, b))
    assert_close(gw, rw, torch.float32, "dW")
    assert_close(gb, rb, torch.float32, "db")


def test_reference_is_bitwise_peft_lora_layer() -> None:
    torch.manual_seed(0)
    model = get_peft_model(
        nn.Sequential(nn.Linear(12, 10)), LoraConfig(r=3, lora_alpha=6, target_modules=["0"])
    )
    layer = model.base_model.model[0]
    nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(4, 5, 12)
    expected = model(x)
    base = layer.base_layer
    got = lora_linear_reference(
        x, base.weight, base.bias, layer.lora_A["default"].weight, layer.lora_B["default"].weight, 2.0
    )
    assert torch.equal(got, expected)
