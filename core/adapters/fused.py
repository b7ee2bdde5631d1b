"""The ``fused_lora: true`` option of a task: the adapted model's LoRA/DoRA layers run verticals' fused kernels.

Why here and not in the kernels package: the option belongs to a task's config, and what it does to a model
that has no peft LoRA layer (S2-LoRA, bottleneck, a regime) is a run-level message, not a kernel's concern.
The kernels decide per call (:mod:`verticals.kernels.dispatch`): Triton on CUDA tensors, peft's own forward
otherwise, so on CPU the option changes no number.
"""

from __future__ import annotations

import logging

from torch import nn

__all__ = ["use_fused_lora"]

log = logging.getLogger(__name__)


def use_fused_lora(model: nn.Module, method: str) -> int:
    """Switch ``model``'s peft LoRA/DoRA ``Linear`` layers to the fused kernels; returns how many were switched.

    A model with none (another method, or LoRA only on convolutions) is left as it is, with one warning line
    saying so, since the option then does nothing.

    Args:
        model: the adapted model (a ``PeftModel``), changed in place (each layer's ``forward`` only).
        method: the adapter method's name, for the message.
    """
    from verticals.kernels.peft_integration import enable_fused_lora

    count = enable_fused_lora(model)
    if count:
        log.info(
            "fused_lora: %d LoRA layer(s) run the fused kernels (Triton on CUDA, peft's forward on CPU).",
            count,
        )
    else:
        log.warning(
            "fused_lora: true does nothing for adapter method %r: the model has no peft LoRA/DoRA nn.Linear "
            "layer (the kernels cover only those). Drop the option, or use method lora.",
            method,
        )
    return count
