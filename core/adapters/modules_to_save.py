"""Train only the ``modules_to_save`` that were named.

peft picks the modules to train in full by *name suffix*: ``modules_to_save=["head"]`` also wraps
``conv_head`` (timm's EfficientNet / MobileNet / GhostNet have both), which then trains silently and counts
as trainable. verticals resolves ``trainable`` to exact module names, so a wrapper whose name was caught
only as the suffix of another exactly-named module is unwanted: its trainable copy is frozen. The copy
stays (unchanged, equal to the original module) because stock ``PeftModel.from_pretrained`` wraps by the
same suffix rule and expects its tensors in the adapter file; outputs are the same either way. Entries
that name no module exactly keep peft's suffix meaning.
"""

from __future__ import annotations

from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from torch import nn


def restrict_modules_to_save(model: nn.Module) -> list[str]:
    """Freeze the ``modules_to_save`` copies of ``model`` (a ``PeftModel``) whose module no entry names
    exactly and that were matched only as a suffix of an exactly named module; returns their names.

    Args:
        model: an adapted model; anything but a ``PeftModel`` is left alone.
    """
    if not isinstance(model, PeftModel):
        return []
    base = model.get_base_model()
    wrappers = {name: module for name, module in base.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    if not wrappers:
        return []
    module_names = {name for name, _ in base.named_modules()}
    entries = {
        entry
        for config in model.peft_config.values()
        for entry in (getattr(config, "modules_to_save", None) or [])
    }
    exact = {entry for entry in entries if entry in module_names}
    frozen = []
    for name, wrapper in wrappers.items():
        matched_by = {entry for entry in entries if name.endswith(entry)}  # peft's own rule
        if name in exact or not matched_by or not matched_by <= exact:
            continue
        wrapper.modules_to_save.requires_grad_(False)
        frozen.append(name)
    return frozen
