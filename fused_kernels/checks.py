"""Argument checks run before any kernel launch, so a bad call names the shapes instead of crashing Triton."""

from __future__ import annotations

import torch


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``x: (..., K)``, ``weight: (N, K)``, ``bias: (N,)``.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
    """
    if weight.dim() != 2:
        raise ValueError(f"`weight` must be (out_features, in_features); got shape {_shape(weight)}.")
    if x.dim() < 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`x` {_shape(x)} must be (..., in_features={weight.shape[1]}) to match `weight` {_shape(weight)}; "
            f"reshape the input or pass the layer it belongs to."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"`bias` {_shape(bias)} must be ({weight.shape[0]},) for `weight` {_shape(weight)}.")


def check_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
               lora_b: torch.Tensor) -> None:  # fmt: skip
    """One adapter: ``lora_a: (r, K)``, ``lora_b: (N, r)``, all of ``x``'s dtype.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: ``A: (r, K)``.
        lora_b: ``B: (N, r)``.
    """
    check_linear(x, weight, bias)
    n, k = weight.shape
    if lora_a.dim() != 2 or lora_a.shape[1] != k:
        raise ValueError(
            f"`lora_a` {_shape(lora_a)} must be (r, in_features={k}) for `weight` {_shape(weight)}."
        )
    if lora_b.dim() != 2 or lora_b.shape[0] != n:
        raise ValueError(
            f"`lora_b` {_shape(lora_b)} must be (out_features={n}, r) for `weight` {_shape(weight)}."
        )
    if lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(
            f"rank mismatch: `lora_a` {_shape(lora_a)} has rank {lora_a.shape[0]} but `lora_b` {_shape(lora_b)} "
            f"has rank {lora_b.shape[1]}; pass the A and B of the same adapter."
        )
    check_dtypes(x, weight, bias, lora_a, lora_b)


def check_multi_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                     lora_b: torch.Tensor, scalings: torch.Tensor, adapter_index: torch.Tensor,
                     *, check_values: bool = True) -> None:  # fmt: skip
    """Stacked adapters: ``lora_a: (adapters, R, K)``, ``lora_b: (adapters, N, R)``, ``scalings: (adapters,)``,
    ``adapter_index: (x.shape[0],)`` integers in ``[-1, adapters)``.

    Args:
        x: input ``(..., K)``.
        weight: the frozen base weight ``(N, K)``, as in ``nn.Linear``.
        bias: the base bias ``(N,)``, or None.
        lora_a: stacked down projections ``(adapters, R, K)`` (see :func:`stack_adapters`).
        lora_b: stacked up projections ``(adapters, N, R)``.
        scalings: each adapter's scale, ``(adapters,)``.
        adapter_index: the adapter of each row of ``x``, ``(x.shape[0],)`` integers; -1 = base layer only.
        check_values: also check the index values (a device sync), not only shapes and dtypes.
    """
    check_linear(x, weight, bias)
    n, k = weight.shape
    if lora_a.dim() != 3 or lora_a.shape[2] != k:
        raise ValueError(
            f"`lora_a` {_shape(lora_a)} must be (adapters, rank, in_features={k}) for `weight` {_shape(weight)}."
        )
    if lora_b.dim() != 3 or lora_b.shape[1] != n:
        raise ValueError(
            f"`lora_b` {_shape(lora_b)} must be (adapters, out_features={n}, rank) for `weight` {_shape(weight)}."
        )
    if lora_a.shape[0] != lora_b.shape[0] or lora_a.shape[1] != lora_b.shape[2]:
        raise ValueError(
            f"rank mismatch: stacked `lora_a` {_shape(lora_a)} and `lora_b` {_shape(lora_b)} must agree on "
            f"(adapters, rank); zero-pad smaller ranks to the largest (see `stack_adapters`)."
        )
    adapters = lora_a.shape[0]
    if tuple(scalings.shape) != (adapters,):
        raise ValueError(f"`scalings` {_shape(scalings)} must be ({adapters},), one per stacked adapter.")
    if adapter_index.dim() != 1 or adapter_index.shape[0] != x.shape[0]:
        raise ValueError(
            f"`adapter_index` {_shape(adapter_index)} must be ({x.shape[0]},): one adapter per row of `x` "
            f"{_shape(x)} (its first dimension), -1 for the base model."
        )
    if adapter_index.dtype.is_floating_point or adapter_index.dtype == torch.bool:
        raise ValueError(f"`adapter_index` must hold integers; got dtype {adapter_index.dtype}.")
    if check_values and adapter_index.numel():
        low, high = (int(v) for v in torch.aminmax(adapter_index))
        if low < -1 or high >= adapters:
            raise IndexError(
                f"`adapter_index` holds values in [{low}, {high}] but only [-1, {adapters - 1}] are valid for "
                f"{adapters} stacked adapters (`lora_a` {_shape(lora_a)}); -1 means the base model."
            )
    check_dtypes(x, weight, bias, lora_a, lora_b)


def check_dtypes(*tensors: torch.Tensor | None) -> None:
    """The kernels take one floating dtype for the input, the weights and the adapters."""
    present = [t for t in tensors if t is not None]
    dtypes = sorted({str(t.dtype) for t in present})
    if len(dtypes) > 1:
        raise TypeError(f"inputs, weights and adapters must share one dtype; got {dtypes}. Cast them first.")
    devices = sorted({str(t.device) for t in present})
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device; got {devices}.")
