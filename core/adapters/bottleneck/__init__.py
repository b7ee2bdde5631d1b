"""Bottleneck block adapters (Houlsby / AdaptFormer) as the peft method ``"bottleneck"``.

Importing this package registers the method with peft, so ``peft.get_peft_model`` accepts a
:class:`BottleneckConfig` and stock ``peft.PeftModel.from_pretrained`` loads saved bottleneck adapters.
"""

from verticals.core.peft_methods import register_method

from .config import BottleneckConfig
from .layer import BottleneckLayer, infer_hidden_size
from .model import BottleneckModel

__all__ = ["BottleneckConfig", "BottleneckLayer", "BottleneckModel", "infer_hidden_size"]

register_method(
    name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix=BottleneckModel.prefix
)
