"""The S2-LoRA layer: an ``nn.Linear`` plus ``s · B diag(λ) A x`` with ``A``, ``B`` shared per weight shape."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import S2LoRAConfig


def shape_key(in_features: int, out_features: int) -> str:
    """Name of the shared pair for weights mapping ``in_features`` to ``out_features`` (``in384_out1536``)."""
    return f"in{in_features}_out{out_features}"


class S2LoRALayer(nn.Module, BaseTunerLayer):
    """Wraps an ``nn.Linear``; owns only its rank coefficients ``λ`` per adapter.

    The shared pairs live on the :class:`S2LoRAModel` (``s2lora_A[adapter][shape]``,
    ``s2lora_B[adapter][shape]``) so each is stored, trained and saved once; the layer keeps a plain
    (unregistered) reference to those containers.
    """

    adapter_layer_names = ("s2lora_lambda",)
    other_param_names = ("r", "scaling", "s2lora_dropout", "shape_key")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: S2LoRAConfig,
        shared: tuple[nn.ModuleDict, nn.ModuleDict],
        module_name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(
                f"S2-LoRA adapts nn.Linear layers; module '{module_name}' is a {type(base_layer).__name__}. "
                "Narrow `target_modules` to linear projections (e.g. q_proj, v_proj, fc1, fc2)."
            )
        self.base_layer = base_layer
        self.module_name = module_name or type(base_layer).__name__
        self.s2lora_lambda = nn.ParameterDict()
        self.s2lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.shape_key: dict[str, str] = {}
        self.s2lora_shared = shared  # a tuple, so nn.Module does not register (and duplicate) the pairs
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.update_layer(adapter_name, config)
        self.train(base_layer.training)

    def update_layer(self, adapter_name: str, config: S2LoRAConfig) -> None:
        """Create the rank coefficients of ``adapter_name`` (the shared pair must exist on the model)."""
        key = shape_key(self.in_features, self.out_features)
        shared_a, _ = self.s2lora_shared
        if adapter_name not in shared_a or key not in shared_a[adapter_name]:
            raise RuntimeError(
                f"No shared S2-LoRA pair {key!r} for adapter {adapter_name!r}; layers are created by "
                "S2LoRAModel, which creates the pair first. Build the adapter with peft.get_peft_model."
            )
        pair_a = shared_a[adapter_name][key]
        self.s2lora_lambda[adapter_name] = nn.Parameter(
            torch.full((config.r,), config.lambda_init, device=pair_a.device, dtype=pair_a.dtype)
        )
        dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.s2lora_dropout[adapter_name] = dropout.train(self.training)
        self.r[adapter_name] = config.r
        self.scaling[adapter_name] = config.alpha / config.r
        self.shape_key[adapter_name] = key
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def pair(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared ``(A, B)`` this layer uses for ``adapter_name``."""
        shared_a, shared_b = self.s2lora_shared
        key = self.shape_key[adapter_name]
        return shared_a[adapter_name][key], shared_b[adapter_name][key]

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``s · B diag(λ) A``, shaped like the base weight (out, in)."""
        pair_a, pair_b = self.pair(adapter_name)
        lam = self.s2lora_lambda[adapter_name]
        return (pair_b * lam) @ pair_a * self.scaling[adapter_name]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active adapters' updates into the base weight: no extra cost at inference."""
        base = self.get_base_layer()
        names = self.active_adapters if adapter_names is None else adapter_names
        for name in names:
            if name not in self.s2lora_lambda or name in self.merged_adapters:
                continue
            delta = self.get_delta_weight(name).detach().to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(
                        f"Merging S2-LoRA adapter {name!r} into '{self.module_name}' gives non-finite weights; "
                        "the adapter is broken (check its training loss)."
                    )
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged update again, newest first."""
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data -= self.get_delta_weight(name).detach().to(base.weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.s2lora_lambda:
                continue
            pair_a, pair_b = self.pair(name)
            h = self.s2lora_dropout[name](self._cast_input_dtype(x, pair_a.dtype))
            h = F.linear(h, pair_a) * self.s2lora_lambda[name]
            result = result + (F.linear(h, pair_b) * self.scaling[name]).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "s2lora." + super().__repr__()
