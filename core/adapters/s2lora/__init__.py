"""Sparsely-Shared LoRA (S2-LoRA) as the peft method ``"s2lora"``.

Importing this package registers the method with peft, so ``peft.get_peft_model`` accepts an
:class:`S2LoRAConfig` and stock ``peft.PeftModel.from_pretrained`` loads saved S2-LoRA adapters.
"""

from verticals.core.peft_methods import register_method

from .config import S2LoRAConfig
from .layer import S2LoRALayer, shape_key
from .model import S2LoRAModel

__all__ = ["S2LoRAConfig", "S2LoRALayer", "S2LoRAModel", "shape_key"]

register_method(name="s2lora", config_cls=S2LoRAConfig, model_cls=S2LoRAModel, prefix=S2LoRAModel.prefix)
