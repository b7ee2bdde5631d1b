"""Fused kernels for adapter hot paths, each with a pure-PyTorch reference and one dispatcher.

- :func:`lora_linear`: ``x Wᵀ + b + s·(dropout(x) Aᵀ) Bᵀ`` forward and backward without forming ``B A``;
- :func:`multi_lora_linear`: a mixed batch whose rows name different adapters (``-1`` = base), one pass;
- :func:`dora_linear` / :func:`dora_weight_norm`: DoRA with its column norm fused into one pass over ``W``;
- :func:`enable_fused_lora`: make a peft-adapted model's LoRA/DoRA layers use them (``adapter_names=`` too).

Triton runs for CUDA tensors when it imports; everything else runs the reference (:mod:`.reference`), which
is peft's own arithmetic. ``VERTICALS_KERNELS=reference|triton|auto`` overrides the choice (:mod:`.dispatch`).
Importing this package imports neither Triton (the first Triton call does) nor peft (the integration
functions load on first use): transformers probes an importable top-level ``kernels`` module by importing it,
and from a checkout's root that is this folder, so it must not import transformers back.
"""

from typing import Any

from verticals.kernels.dispatch import ENV_VAR, select_backend, triton_available
from verticals.kernels.ops import (
    dora_linear,
    dora_weight_norm,
    lora_linear,
    multi_lora_linear,
    stack_adapters,
)
from verticals.kernels.reference import (
    dora_linear_reference,
    dora_weight_norm_reference,
    lora_linear_reference,
    multi_lora_linear_reference,
)

__all__ = [
    "ENV_VAR",
    "disable_fused_lora",
    "dora_linear",
    "dora_linear_reference",
    "dora_weight_norm",
    "dora_weight_norm_reference",
    "enable_fused_lora",
    "fused_lora_enabled",
    "lora_linear",
    "lora_linear_reference",
    "multi_lora_linear",
    "multi_lora_linear_reference",
    "select_backend",
    "stack_adapters",
    "triton_available",
]

_INTEGRATION = ("disable_fused_lora", "enable_fused_lora", "fused_lora_enabled")


def __getattr__(name: str) -> Any:
    if name in _INTEGRATION:
        from verticals.kernels import peft_integration

        return getattr(peft_integration, name)
    raise AttributeError(f"module 'verticals.kernels' has no attribute {name!r}")
