"""The S2-LoRA tuner: shared low-rank pairs per weight shape on the model, rank coefficients per layer."""

from __future__ import annotations

import math

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .config import S2LoRAConfig
from .layer import S2LoRALayer, shape_key


class S2LoRAModel(BaseTuner):
    """Sparsely-Shared LoRA on any model's ``nn.Linear`` layers.

    Built through ``peft.get_peft_model(model, S2LoRAConfig(...))``. The shared pairs are model-level
    parameters (``s2lora_A[adapter][in{i}_out{o}]``, ``s2lora_B[...]``), saved once each in
    ``adapter_model.safetensors`` beside every layer's ``s2lora_lambda``, so stock
    ``PeftModel.from_pretrained`` restores them (the way peft's VeRA keeps its shared projections on the
    tuner). ``merge_and_unload`` folds ``s · B diag(λ) A`` into each weight: no inference cost.

    Example:

        ```py
        >>> import verticals.core  # registers "s2lora" with peft
        >>> from peft import get_peft_model
        >>> from verticals.core.adapters.s2lora import S2LoRAConfig
        >>> model = get_peft_model(encoder_decoder, S2LoRAConfig(target_modules=["q_proj", "v_proj"], r=8))
        >>> loss = model(**batch).loss + model.regularization_loss()
        ```
    """

    prefix: str = "s2lora_"
    tuner_layer_cls = S2LoRALayer
    uses_shared_state: bool = True
    # peft's LoRA defaults per HF model type; a domain adds its own model types to this mapping at import.
    target_module_mapping = dict(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)

    def _pre_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        self._containers(adapter_name)

    def _containers(self, adapter_name: str) -> None:
        """Create the shared-pair containers (``add_adapter`` skips ``_pre_injection_hook``, so both call this)."""
        if not hasattr(self, "s2lora_A"):
            self.s2lora_A = nn.ModuleDict()
            self.s2lora_B = nn.ModuleDict()
        if adapter_name not in self.s2lora_A:
            self.s2lora_A[adapter_name] = nn.ParameterDict()
            self.s2lora_B[adapter_name] = nn.ParameterDict()

    def _create_and_replace(
        self,
        peft_config: S2LoRAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: object,
    ) -> None:
        base = target.get_base_layer() if isinstance(target, S2LoRALayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"S2-LoRA adapts nn.Linear layers; module '{current_key}' is a {type(base).__name__}. "
                "Narrow `target_modules` to linear projections (e.g. q_proj, v_proj, fc1, fc2)."
            )
        self._ensure_pair(adapter_name, peft_config, base)
        if isinstance(target, S2LoRALayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = S2LoRALayer(
            target, adapter_name, peft_config, (self.s2lora_A, self.s2lora_B), module_name=current_key
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _ensure_pair(self, adapter_name: str, config: S2LoRAConfig, base: nn.Linear) -> None:
        """Create the shared pair for ``base``'s shape the first time a weight of that shape is adapted."""
        self._containers(adapter_name)
        key = shape_key(base.in_features, base.out_features)
        if key in self.s2lora_A[adapter_name]:
            return
        device = base.weight.device
        # Half-precision base weights get float32 adapters (as peft's LoRA autocasts them).
        dtype = base.weight.dtype if base.weight.dtype in (torch.float32, torch.float64) else torch.float32
        pair_a = torch.empty(config.r, base.in_features, device=device, dtype=dtype)
        pair_b = torch.empty(base.out_features, config.r, device=device, dtype=dtype)
        if device.type != "meta":
            nn.init.kaiming_uniform_(pair_a, a=math.sqrt(5))
            if config.init_weights:
                nn.init.zeros_(pair_b)
            else:
                nn.init.kaiming_uniform_(pair_b, a=math.sqrt(5))
        self.s2lora_A[adapter_name][key] = nn.Parameter(pair_a)
        self.s2lora_B[adapter_name][key] = nn.Parameter(pair_b)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # The layer's own parameters are created on the base weight's device already.
        setattr(parent, child_name, new_module)

    def regularization_loss(self, adapter_names: list[str] | None = None) -> torch.Tensor:
        """``β Σ_m ‖λ_m‖₁`` over the adapted layers of the active (or given) adapters: add it to the loss."""
        names = self.active_adapters if adapter_names is None else adapter_names
        total: torch.Tensor | None = None
        for name in names:
            beta = self.peft_config[name].sparsity_weight
            if not beta:
                continue
            norms = [m.s2lora_lambda[name].abs().sum() for m in self._layers() if name in m.s2lora_lambda]
            if norms:
                term = beta * torch.stack(norms).sum()
                total = term if total is None else total + term
        if total is None:
            reference = next(iter(self.model.parameters()))
            return torch.zeros((), device=reference.device, dtype=torch.float32)
        return total

    def rank_usage(self, adapter_name: str = "default", threshold: float = 1e-3) -> dict[str, int]:
        """Per adapted layer, how many rank coefficients are above ``threshold`` in magnitude (the sparsity)."""
        return {
            m.module_name: int((m.s2lora_lambda[adapter_name].detach().abs() > threshold).sum())
            for m in self._layers()
            if adapter_name in m.s2lora_lambda
        }

    def shared_pairs(self, adapter_name: str = "default") -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """The shared ``(A, B)`` per weight shape of ``adapter_name``."""
        pairs_a, pairs_b = self.s2lora_A[adapter_name], self.s2lora_B[adapter_name]
        return {key: (pairs_a[key], pairs_b[key]) for key in pairs_a}

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = {adapter_name} if isinstance(adapter_name, str) else set(adapter_name)
        for name in self.s2lora_A:
            trainable = name in active and not inference_mode
            for parameter in (*self.s2lora_A[name].values(), *self.s2lora_B[name].values()):
                parameter.requires_grad_(trainable)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.s2lora_A[adapter_name]
        del self.s2lora_B[adapter_name]

    def _layers(self) -> list[S2LoRALayer]:
        return [module for module in self.model.modules() if isinstance(module, S2LoRALayer)]
