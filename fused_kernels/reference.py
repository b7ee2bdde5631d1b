"""Pure-PyTorch references: the oracle for every Triton kernel and the path that runs without a GPU.

Each follows peft's own arithmetic for the same layer (``lora.Linear.forward``, ``_mixed_batch_forward`` and
``DoraLinearLayer.forward`` in peft 0.21), so on CPU the dispatcher changes nothing a user can observe.
``dropout_mask`` (the scaled keep-mask, ``0`` or ``1/(1-p)``) replaces ``F.dropout`` when a test needs the
exact mask a Triton kernel drew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dropped(x: torch.Tensor, dropout: float, dropout_mask: torch.Tensor | None) -> torch.Tensor:
    if dropout_mask is not None:
        return x * dropout_mask.to(x.dtype).reshape(x.shape)
    return F.dropout(x, dropout, training=True) if dropout > 0 else x


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    dropout: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ`` with ``A: (r, K)``, ``B: (N, r)``, in peft's operation order.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        dropout_mask: a fixed keep-mask (already scaled by ``1 / (1 - p)``) in place of a random dropout,
            to compare with a kernel's mask exactly.
    """
    result = F.linear(x, weight, bias)
    return result + F.linear(F.linear(_dropped(x, dropout, dropout_mask), lora_a), lora_b) * scaling


def multi_lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scalings: torch.Tensor,
    adapter_index: torch.Tensor,
    *,
    dropout: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mixed batch: row ``i`` of ``x`` (and all its tokens) uses adapter ``adapter_index[i]``, -1 = base only.

    ``lora_a: (adapters, R, K)`` and ``lora_b: (adapters, N, R)`` are stacked, ranks zero-padded to ``R``.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: stacked down projections ``(adapters, R, K)`` (see :func:`stack_adapters`).
        lora_b: stacked up projections ``(adapters, N, R)``.
        scalings: each adapter's scale, ``(adapters,)``.
        adapter_index: the adapter of each row of ``x``, ``(x.shape[0],)`` integers; -1 = base layer only.
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        dropout_mask: a fixed keep-mask (already scaled by ``1 / (1 - p)``) in place of a random dropout,
            to compare with a kernel's mask exactly.
    """
    result = F.linear(x, weight, bias)
    rows = x.shape[0]
    valid = adapter_index >= 0
    safe = adapter_index.clamp(min=0).long()
    x3 = _dropped(x, dropout, dropout_mask).reshape(rows, -1, x.shape[-1])
    t = torch.bmm(x3, lora_a[safe].transpose(1, 2))
    low = torch.bmm(t, lora_b[safe].transpose(1, 2)) * scalings.to(x.dtype)[safe].view(rows, 1, 1)
    low = torch.where(valid.view(rows, 1, 1), low, torch.zeros((), dtype=low.dtype, device=low.device))
    return result + low.reshape(result.shape)


def dora_weight_norm_reference(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``||W + scaling · B A||₂`` per output row, detached (DoRA treats the norm as a constant, paper §4.3).

    Args:
        weight: the frozen base weight ``(N, K)``.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
    """
    with torch.no_grad():
        return torch.linalg.norm(weight + scaling * (lora_b @ lora_a), dim=1).to(weight.dtype)


def dora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    magnitude: torch.Tensor,
    *,
    dropout: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """DoRA as peft computes it: ``base + (g/‖W'‖ − 1)·(x_d Wᵀ) + g/‖W'‖ · s·(x_d Aᵀ)Bᵀ``, norm detached.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: LoRA's down projection ``A: (r, K)``.
        lora_b: LoRA's up projection ``B: (N, r)``.
        scaling: LoRA's scale ``lora_alpha / r`` (peft's ``scaling[adapter]``).
        magnitude: DoRA's learned magnitude ``g``, one per output feature ``(N,)``.
        dropout: LoRA's dropout probability on the low-rank branch's input, in [0, 1); 0 in evaluation.
        dropout_mask: a fixed keep-mask (already scaled by ``1 / (1 - p)``) in place of a random dropout,
            to compare with a kernel's mask exactly.
    """
    norm = dora_weight_norm_reference(weight, lora_a, lora_b, scaling)
    mag_scale = magnitude / norm
    result = F.linear(x, weight, bias)
    if dropout == 0 and dropout_mask is None:
        x_d = x
        base = result if bias is None else result - bias
    else:
        x_d = _dropped(x, dropout, dropout_mask)
        base = F.linear(x_d, weight)
    lora = F.linear(F.linear(x_d, lora_a), lora_b)
    return result + (mag_scale - 1) * base + mag_scale * lora * scaling
