"""Multi-adapter gather: rows name stacked adapters (-1 = base); forward and backward against the reference."""

from __future__ import annotations

import pytest
import torch

from verticals.kernels import multi_lora_linear, multi_lora_linear_reference, stack_adapters

from .conftest import DEVICE, assert_close

CASES = [  # (rows, tokens per row, in, out, ranks, dropout)
    (6, 3, 45, 29, (1, 5, 16), 0.0),
    (9, 1, 33, 40, (8,), 0.0),
    (8, 2, 24, 19, (1, 2, 3, 4, 5, 6, 7, 64), 0.0),
    (5, 4, 30, 21, (4, 12), 0.25),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[4])}adapters-p{c[5]}")
def test_triton_gather_matches_reference(use_triton, case, dtype) -> None:
    from verticals.kernels import triton_lora

    rows, tokens, k, n, ranks, p = case
    g = torch.Generator().manual_seed(0)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(DEVICE, dtype)

    shape = (rows, tokens, k) if tokens > 1 else (rows, k)
    x = rand(*shape).requires_grad_()
    w, b = rand(n, k, scale=0.2), rand(n)
    lora_as = [rand(r, k, scale=0.3).requires_grad_() for r in ranks]
    lora_bs = [rand(n, r, scale=0.3).requires_grad_() for r in ranks]
    index = torch.randint(-1, len(ranks), (rows,), generator=g)
    index[0] = -1  # always a base-only row
    index = index.to(DEVICE)
    scalings = torch.rand(len(ranks), generator=g) + 0.5

    torch.manual_seed(3)
    y = multi_lora_linear(x, w, b, *stack_adapters(lora_as, lora_bs), scalings, index, dropout=p)
    grad = torch.randn_like(y)
    params = [x, *lora_as, *lora_bs]
    got = torch.autograd.grad(y, params, grad, allow_unused=True)

    mask = None
    if p > 0:
        torch.manual_seed(3)
        mask = triton_lora.dropout_mask(int(torch.randint(0, 2**31 - 1, ())), p, rows * tokens, k, x.device)
    ref = [t.detach().float().requires_grad_() for t in params]
    split = 1 + len(ranks)
    y_ref = multi_lora_linear_reference(
        ref[0], w.float(), b.float(), *stack_adapters(ref[1:split], ref[split:]), scalings.to(DEVICE), index,
        dropout_mask=mask,
    )  # fmt: skip
    expected = torch.autograd.grad(y_ref, ref, grad.float())
    assert_close(y, y_ref, dtype, "y")
    base_row = torch.nn.functional.linear(x[0].float(), w.float(), b.float())
    assert_close(y[0], base_row, dtype, "a -1 row gets the base output only")
    for i, (have, want) in enumerate(zip(got, expected)):
        have = torch.zeros_like(want) if have is None else have
        if want.abs().max() == 0:  # an adapter no row used: no gradient
            assert have.abs().max() == 0
        else:
            assert_close(have, want, dtype, f"grad {i}")


def test_reference_mixed_batch_equals_loop_over_adapters() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(4, 3, 10), torch.randn(6, 10)
    lora_as, lora_bs = [torch.randn(2, 10), torch.randn(5, 10)], [torch.randn(6, 2), torch.randn(6, 5)]
    index = torch.tensor([1, -1, 0, 1])
    y = multi_lora_linear_reference(
        x, w, None, *stack_adapters(lora_as, lora_bs), torch.tensor([0.5, 2.0]), index
    )
    for row, adapter in enumerate(index.tolist()):
        expected = x[row] @ w.T
        if adapter >= 0:
            expected = expected + x[row] @ lora_as[adapter].T @ lora_bs[adapter].T * (0.5, 2.0)[adapter]
        torch.testing.assert_close(y[row], expected)


def test_stack_adapters_pads_ranks_with_zeros() -> None:
    a, b = stack_adapters([torch.ones(2, 4), torch.ones(3, 4)], [torch.ones(5, 2), torch.ones(5, 3)])
    assert a.shape == (2, 3, 4) and b.shape == (2, 5, 3)
    assert a[0, 2].abs().sum() == 0 and b[0, :, 2].abs().sum() == 0
    with pytest.raises(ValueError, match=r"rank mismatch in adapter 1: A \(3, 4\)"):
        stack_adapters([torch.ones(2, 4), torch.ones(3, 4)], [torch.ones(5, 2), torch.ones(5, 2)])
