"""The bottleneck adapter tuner: puts a :class:`BottleneckLayer` around every module the config names."""

from __future__ import annotations

from torch import nn

from verticals.core.adapters.block_tuner import BlockAdapterTuner

from .config import BottleneckConfig
from .layer import MERGE_ERROR, BottleneckLayer


class BottleneckModel(BlockAdapterTuner):
    """Adds bottleneck block adapters (Houlsby / AdaptFormer) to any ``nn.Module``.

    Built through ``peft.get_peft_model(model, BottleneckConfig(target_modules=[...]))``; saved and loaded
    with peft's ``save_pretrained`` / ``PeftModel.from_pretrained``. The adapters are nonlinear, so
    ``merge_and_unload`` raises; ``unload()`` returns the base model.

    Example:

        ```py
        >>> import verticals.core.adapters.bottleneck  # registers the "bottleneck" PEFT method
        >>> from peft import get_peft_model
        >>> from verticals.core.adapters.bottleneck import BottleneckConfig
        >>> config = BottleneckConfig(target_modules=["blocks.0.mlp", "blocks.1.mlp"], bottleneck_dim=16)
        >>> model = get_peft_model(vit, config)
        ```
    """

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    adapter_noun = "bottleneck adapters"
    target_hint = (
        "target_modules=['encoder.layer.0', 'encoder.layer.1'] or a regex like r'.*blocks\\.\\d+\\.mlp' (blocks, "
        "MLPs or attention outputs)"
    )

    def merge_error(self) -> str:
        return MERGE_ERROR

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, peft_config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
