"""The bottleneck adapter tuner: puts a :class:`BottleneckLayer` around every module the config names."""

from __future__ import annotations

import re
import warnings

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn

from .config import BottleneckConfig
from .layer import MERGE_ERROR, BottleneckLayer


class BottleneckModel(BaseTuner):
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
    # Block names differ per architecture, so there are no defaults: `target_modules` is required.
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        if peft_config.target_modules is None:
            raise ValueError(
                "`target_modules` is required for bottleneck adapters (there is no default per "
                "architecture): name the blocks, MLPs or attention outputs to wrap, e.g. "
                "target_modules=['encoder.layer.0', 'encoder.layer.1'] or a regex like "
                "r'.*blocks\\.\\d+\\.mlp'."
            )
        return peft_config

    def _check_target_module_exists(self, peft_config: PeftConfig, key: str) -> bool | re.Match[str] | None:
        matched = check_target_module_exists(peft_config, key)
        if matched and self._inside_adapter_layer(key):
            # A target inside a module wrapped moments ago: peft could not even look it up any more.
            warnings.warn(
                f"Module '{key}' matches `target_modules` but lies inside a module that was just wrapped "
                "with a bottleneck adapter; only the outermost match is adapted. Narrow `target_modules` to "
                "silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        return matched

    def _inside_adapter_layer(self, key: str) -> bool:
        module = self.model
        for part in key.split(".")[:-1]:
            module = module._modules.get(part)
            if module is None:
                return False
            if isinstance(module, BottleneckLayer):
                return True
        return False

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

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # BaseTuner's version moves the adapters to `child.weight`'s device, which a block doesn't have; the
        # layer already creates its adapters on the device and dtype of the module it wraps.
        setattr(parent, child_name, new_module)

    def _check_merge_allowed(self) -> None:
        raise ValueError(MERGE_ERROR)
