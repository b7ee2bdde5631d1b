"""Which adapters can be merged into the weights they adapt, decided in one place (:func:`merge_refusal`).

Merging folds an adapter's update into the base weights, so inference costs what the bare backbone costs
and the result is a plain ``nn.Module``. It is exact (up to floating-point rounding) only when the update is
a change of weights. Per method:

- **peft's weight-delta methods merge**: LoRA and its variants (DoRA, rsLoRA, PiSSA …), AdaLoRA, IA3, LoHa,
  LoKr, OFT/BOFT, VeRA, FourierFT, LN tuning and every other peft layer that implements ``merge``.
- **S2-LoRA merges**: its update ``s · B diag(λ) A`` is a plain weight delta
  (:meth:`~verticals.core.adapters.s2lora.layer.S2LoRALayer.merge`).
- **Block adapters refuse**: the bottleneck adapter and the domains' block adapters act on a block's output
  through a nonlinearity, so no weight change equals them; their tuner's ``merge_error`` says so.
- **Prompt-style methods refuse** (prompt, prefix and p-tuning): they add virtual tokens, not weights.
- **A layer peft cannot merge refuses** (a quantized GPTQ/AWQ base, Polytropon): its class has no ``merge``.
- **The regimes have nothing to merge** (``linear_probe``, ``bitfit``, ``full``, ``frozen``): what they
  trained already is the model's own weights (:func:`has_adapter` is False).

:func:`merged_for_inference` merges for a block of inference and restores the adapter layers after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

__all__ = [
    "adapter_method",
    "has_adapter",
    "is_merged",
    "merge_for_predict",
    "merge_refusal",
    "merged_for_inference",
    "unmerge",
]

log = logging.getLogger(__name__)


def has_adapter(model: nn.Module) -> bool:
    """True when ``model`` holds peft adapter layers (a ``PeftModel``); False for the regimes.

    Args:
        model: a model returned by :func:`~verticals.core.adapters.api.adapt`.
    """
    return isinstance(model, PeftModel)


def adapter_method(model: nn.Module) -> str | None:
    """The active adapter's method name (``lora``, ``bottleneck`` …); None without an adapter.

    Args:
        model: a model returned by :func:`~verticals.core.adapters.api.adapt`.
    """
    if not isinstance(model, PeftModel):
        return None
    config = model.peft_config[model.active_adapter]
    return str(getattr(config.peft_type, "value", config.peft_type)).lower()


def merge_refusal(model: nn.Module) -> str | None:
    """Why the adapter in ``model`` can't be merged into its weights (a sentence naming the method and what to
    do instead), or None when it can. A model without an adapter (a regime) has nothing to merge: None.

    Args:
        model: a model returned by :func:`~verticals.core.adapters.api.adapt` (a ``PeftModel`` or a regime's
            plain module).
    """
    if not isinstance(model, PeftModel):
        return None
    method = adapter_method(model)
    instead = "Run it unmerged (`verticals predict ... --merge_adapter false`) and ship the adapter folder."
    if model.peft_config[model.active_adapter].is_prompt_learning:
        return (
            f"Method {method!r} cannot be merged: it adds virtual tokens, not a change of weights. {instead}"
        )
    tuner = model.base_model
    merge_error = getattr(tuner, "merge_error", None)
    if callable(merge_error):  # the block adapters (verticals.core.adapters.block_tuner)
        return f"Method {method!r}: {merge_error()}"
    try:
        tuner._check_merge_allowed()
    except (ValueError, NotImplementedError) as error:
        return f"Method {method!r} cannot be merged here: {error} {instead}"
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and type(module).merge is BaseTunerLayer.merge:
            return (
                f"Method {method!r} cannot be merged: its layer {name!r} ({type(module).__name__}) has no merge "
                f"in peft. {instead}"
            )
    return None


@contextmanager
def merged_for_inference(model: nn.Module) -> Iterator[bool]:
    """Merge the adapter into the weights for the block, then unmerge (peft's ``merge_adapter`` /
    ``unmerge_adapter``): yields whether it merged. Nothing happens, and False is yielded, for a model
    :func:`merge_refusal` refuses or one without an adapter. Unmerging subtracts the same update again, so
    the base weights come back up to floating-point rounding.

    Args:
        model: an adapted model; its adapter layers stay in place.
    """
    if not isinstance(model, PeftModel) or merge_refusal(model) is not None:
        yield False
        return
    model.merge_adapter()
    try:
        yield True
    finally:
        model.unmerge_adapter()


def merge_for_predict(model: nn.Module, *, wanted: bool = True, sharded: bool = False) -> bool:
    """Merge ``model``'s adapter into its weights before predicting, when ``wanted`` and the method can merge;
    returns whether it merged. A method that can't merge predicts unmerged, and one log line says why.

    Args:
        model: the task's adapted model; its adapter layers stay (undo with :func:`unmerge`).
        wanted: False predicts unmerged (``verticals predict --merge_adapter false``).
        sharded: the strategy shards the parameters (FSDP, DeepSpeed): merging needs whole weights, so the
            adapter runs unmerged.
    """
    if not isinstance(model, PeftModel) or is_merged(model):
        return False
    method = adapter_method(model)
    if not wanted:
        log.info("predict: the %r adapter runs unmerged, as asked (--merge_adapter false).", method)
        return False
    if sharded:
        log.warning(
            "predict runs the %r adapter unmerged: the strategy shards the parameters (FSDP / DeepSpeed), and "
            "merging needs whole weights. Predict on one device to merge.",
            method,
        )
        return False
    refusal = merge_refusal(model)
    if refusal is not None:
        log.warning("predict runs the %r adapter unmerged. %s", method, refusal)
        return False
    model.merge_adapter()
    log.info(
        "predict: merged the %r adapter into its weights; --merge_adapter false predicts unmerged.", method
    )
    return True


def is_merged(model: nn.Module) -> bool:
    """True when any adapter layer of ``model`` holds a merged adapter.

    Args:
        model: an adapted model.
    """
    return any(isinstance(module, BaseTunerLayer) and module.merged for module in model.modules())


def unmerge(model: nn.Module) -> None:
    """Undo a merge (peft's ``unmerge_adapter``: the same update subtracted again, so the base weights come back
    up to floating-point rounding); nothing for a model that holds no merged adapter.

    Args:
        model: an adapted model, changed in place.
    """
    if isinstance(model, PeftModel) and is_merged(model):
        model.unmerge_adapter()
