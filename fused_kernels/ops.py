"""Public fused operations; each validates its arguments, then runs Triton or the reference (:mod:`dispatch`).

Shapes follow ``nn.Linear`` and peft: ``x: (..., K)``, ``weight: (N, K)``, ``lora_a: (r, K)``,
``lora_b: (N, r)``; the output is ``(..., N)``. ``dropout`` is LoRA's dropout probability, applied to the
low-rank branch's input only (as peft does); pass 0 in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from verticals.kernels import reference
from verticals.kernels.checks import check_lora, check_multi_lora
from verticals.kernels.dispatch import Backend, select_backend


def _triton():
    from verticals.kernels import triton_lora

    return triton_lora


def _seed(dropout: float) -> int:
    # Drawn from torch's default generator, so `torch.manual_seed` makes the Triton dropout mask repeatable.
    return int(torch.randint(0, 2**31 - 1, ())) if dropout > 0 else 0


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")


def stack_adapters(
    lora_as: Sequence[torch.Tensor], lora_bs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-adapter ``A (r_i, K)`` / ``B (N, r_i)`` into ``(adapters, R, K)`` / ``(adapters, N, R)``.

    Smaller ranks are zero-padded to ``R = max r_i``: the padded rows/columns add exact zeros, and the stack is
    differentiable, so gradients reach each adapter's own parameters.

    Args:
        lora_as: each adapter's ``A (r_i, K)``.
        lora_bs: each adapter's ``B (N, r_i)``, in the same order.
    """
    if len(lora_as) != len(lora_bs) or not lora_as:
        raise ValueError(
            f"need one B per A and at least one adapter; got {len(lora_as)} A and {len(lora_bs)} B."
        )
    for i, (a, b) in enumerate(zip(lora_as, lora_bs)):
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"rank mismatch in adapter {i}: A {tuple(a.shape)} must be (r, K) and B {tuple(b.shape)} (N, r)."
            )
    rank = max(a.shape[0] for a in lora_as)
    stacked_a = torch.stack([F.pad(a, (0, 0, 0, rank - a.shape[0])) for a in lora_as])
    stacked_b = torch.stack([F.pad(b, (0, rank - b.shape[1])) for b in lora_bs])
    return stacked_a, stacked_b


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    dropout: float = 0.0,
    backend: Backend | None = None,
) -> torch.Tensor:
    """``x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ`` without forming ``B A``; differentiable in x, A, B.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        backend: ``triton`` or ``reference`` to force one; None lets :func:`select_backend` choose.
    """
    check_lora(x, weight, bias, lora_a, lora_b)
    _check_dropout(dropout)
    if (backend or select_backend(x, weight, lora_a, lora_b)) == "reference":
        return reference.lora_linear_reference(x, weight, bias, lora_a, lora_b, scaling, dropout=dropout)
    scalings = torch.tensor([float(scaling)], device=x.device, dtype=torch.float32)
    x2 = x.reshape(-1, x.shape[-1])
    y = _triton().FusedLoRAFunction.apply(
        x2,
        weight,
        bias,
        lora_a.unsqueeze(0),
        lora_b.unsqueeze(0),
        scalings,
        None,
        float(dropout),
        _seed(dropout),
    )
    return y.reshape(*x.shape[:-1], weight.shape[0])


def multi_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scalings: torch.Tensor | Sequence[float],
    adapter_index: torch.Tensor,
    *,
    dropout: float = 0.0,
    backend: Backend | None = None,
    check_index: bool = True,
) -> torch.Tensor:
    """A mixed batch in one pass: row ``i`` of ``x`` (with all its tokens) uses stacked adapter
    ``adapter_index[i]``; ``-1`` rows get the base layer only. Differentiable in x and the stacked A, B.

    ``check_index=False`` skips the range check (a device sync) when the caller built the index itself.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: stacked down projections ``(adapters, R, K)`` (see :func:`stack_adapters`).
        lora_b: stacked up projections ``(adapters, N, R)``.
        scalings: each adapter's scale, ``(adapters,)``.
        adapter_index: the adapter of each row of ``x``, ``(x.shape[0],)`` integers; -1 = base layer only.
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        backend: ``triton`` or ``reference`` to force one; None lets :func:`select_backend` choose.
        check_index: check that every index lies in ``[-1, adapters)`` (one device sync).
    """
    scalings = torch.as_tensor(scalings, dtype=torch.float32, device=x.device)
    check_multi_lora(x, weight, bias, lora_a, lora_b, scalings, adapter_index, check_values=check_index)
    _check_dropout(dropout)
    if (backend or select_backend(x, weight, lora_a, lora_b)) == "reference":
        return reference.multi_lora_linear_reference(
            x, weight, bias, lora_a, lora_b, scalings, adapter_index, dropout=dropout
        )
    x2 = x.reshape(-1, x.shape[-1])
    index = adapter_index.to(device=x.device, dtype=torch.int32)
    if x2.shape[0] != x.shape[0]:
        index = index.repeat_interleave(x2.shape[0] // max(x.shape[0], 1))
    y = _triton().FusedLoRAFunction.apply(
        x2, weight, bias, lora_a, lora_b, scalings, index, float(dropout), _seed(dropout)
    )
    return y.reshape(*x.shape[:-1], weight.shape[0])


def dora_weight_norm(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    backend: Backend | None = None,
) -> torch.Tensor:
    """DoRA's ``||W + scaling · B A||`` per output row, detached; Triton reads ``W`` once and never forms ``B A``.

    Args:
        weight: the frozen base weight ``(N, K)``.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
        backend: ``triton`` or ``reference`` to force one; None lets :func:`select_backend` choose.
    """
    check_lora(weight[:1], weight, None, lora_a, lora_b)
    if (backend or select_backend(weight, lora_a, lora_b)) == "reference":
        return reference.dora_weight_norm_reference(weight, lora_a, lora_b, scaling)
    return _triton().dora_weight_norm(weight.detach(), lora_a.detach(), lora_b.detach(), scaling)


def dora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    magnitude: torch.Tensor,
    *,
    dropout: float = 0.0,
    backend: Backend | None = None,
) -> torch.Tensor:
    """DoRA with peft's formula and its detached norm; differentiable in x, A, B and ``magnitude``.

    Triton path: the norm is one fused pass; without dropout and without autograd the rescale happens in the
    GEMM's epilogue, so the layer is a single LoRA-sized pass; when training it is the fused LoRA function
    followed by one elementwise rescale (autograd needs the unscaled product for ``magnitude``'s gradient).
    With dropout, peft's three-product form is kept (``x Wᵀ`` and ``x_d Wᵀ`` differ), on the fused kernels.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
        magnitude: DoRA's learned magnitude ``g``, one per output feature ``(N,)``.
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        backend: ``triton`` or ``reference`` to force one; None lets :func:`select_backend` choose.
    """
    check_lora(x, weight, bias, lora_a, lora_b)
    _check_dropout(dropout)
    n = weight.shape[0]
    if tuple(magnitude.shape) != (n,):
        raise ValueError(f"`magnitude` {tuple(magnitude.shape)} must be ({n},), one per output feature.")
    if (backend or select_backend(x, weight, lora_a, lora_b, magnitude)) == "reference":
        return reference.dora_linear_reference(
            x, weight, bias, lora_a, lora_b, scaling, magnitude, dropout=dropout
        )
    kernels = _triton()
    mag_scale = magnitude / kernels.dora_weight_norm(
        weight.detach(), lora_a.detach(), lora_b.detach(), scaling
    )
    x2 = x.reshape(-1, x.shape[-1])
    scalings = torch.tensor([float(scaling)], device=x.device, dtype=torch.float32)
    a, b = lora_a.unsqueeze(0), lora_b.unsqueeze(0)
    tensors = (x, weight, bias, lora_a, lora_b, magnitude)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if dropout > 0:
        x_d = F.dropout(x2, dropout, training=True)
        z_d = kernels.FusedLoRAFunction.apply(x_d, weight, None, a, b, scalings, None, 0.0, 0)
        y = F.linear(x2, weight, bias) + mag_scale * z_d - F.linear(x_d, weight)
    elif needs_grad:
        y = kernels.FusedLoRAFunction.apply(x2, weight, None, a, b, scalings, None, 0.0, 0) * mag_scale
        y = y if bias is None else y + bias
    else:
        t = kernels.down(x2, a, None, None)
        y = kernels.gemm_lowrank(x2, weight, bias, t, b, scalings, None, col=mag_scale.detach())
    return y.reshape(*x.shape[:-1], n)
