"""Route peft's LoRA/DoRA ``Linear`` layers through the fused kernels: ``enable_fused_lora(model)``.

Why a forward replacement and not peft's layer dispatch: peft's ``dispatch_*`` functions only run while
``get_peft_model`` / ``add_adapter`` creates layers, so they would miss models already adapted or loaded with
``PeftModel.from_pretrained``. Replacing the ``forward`` of each existing ``peft.tuners.lora.Linear``
instance (an instance attribute; the class, its parameters and the saved files are untouched) covers every
model and is undone by ``disable_fused_lora``.

The replaced forward takes the fused path only where it computes exactly what peft computes: an
``nn.Linear`` base, adapters neither merged nor disabled, no ``fan_in_fan_out`` / ``lora_bias`` / other LoRA
variants, one dtype, and the dispatcher choosing Triton (CUDA tensors). In every other case, and always on
CPU, it calls peft's own forward, so outputs and speed there are peft's. With ``adapter_names=`` (peft's
mixed-batch convention, ``"__base__"`` for the base model) all rows run in one gather pass over the
adapters stacked and zero-padded to the largest rank, instead of peft's loop over adapters.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from verticals.kernels import ops
from verticals.kernels.dispatch import select_backend

_FLAG = "_verticals_fused_lora"


def enable_fused_lora(model: nn.Module) -> int:
    """Make every peft LoRA/DoRA ``Linear`` in ``model`` use the fused kernels when allowed; returns how many.

    Args:
        model: a peft-adapted model; its LoRA ``Linear`` layers are patched in place (others keep peft's
            forward, as does any call the kernels don't cover).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and not getattr(module, _FLAG, False):
            module.forward = types.MethodType(_fused_forward, module)
            setattr(module, _FLAG, True)
            count += 1
    return count


def disable_fused_lora(model: nn.Module) -> int:
    """Undo :func:`enable_fused_lora`; returns how many layers were restored to peft's forward.

    Args:
        model: a model :func:`enable_fused_lora` patched.
    """
    count = 0
    for module in model.modules():
        if getattr(module, _FLAG, False):
            del module.forward
            delattr(module, _FLAG)
            count += 1
    return count


def fused_lora_enabled(module: nn.Module) -> bool:
    """True when ``module`` is a peft LoRA layer whose forward :func:`enable_fused_lora` replaced.

    Args:
        module: any module.
    """
    return bool(getattr(module, _FLAG, False))


def _dropout_p(layer: LoraLinear, adapter: str) -> float:
    dropout = layer.lora_dropout[adapter]
    return float(dropout.p) if isinstance(dropout, nn.Dropout) and layer.training else 0.0


def _plain_linear_ok(layer: LoraLinear, x: torch.Tensor, adapters: list[str]) -> bool:
    base = layer.get_base_layer()
    if type(base) is not nn.Linear or layer.fan_in_fan_out or layer.merged or layer.disable_adapters:
        return False
    dtypes = {x.dtype, base.weight.dtype}
    for name in adapters:
        if layer.lora_B[name].bias is not None:  # lora_bias=True
            return False
        dtypes |= {layer.lora_A[name].weight.dtype, layer.lora_B[name].weight.dtype}
    return len(dtypes) == 1


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    base = self.get_base_layer()
    if args or any(key != "adapter_names" for key in kwargs) or select_backend(x, base.weight) == "reference":
        return LoraLinear.forward(self, x, *args, **kwargs)
    adapter_names = kwargs.get("adapter_names")
    if adapter_names is not None:
        self._check_forward_args(x, adapter_names=adapter_names)  # peft's own errors (length, merged, DoRA)
        return _mixed_batch(self, x, list(adapter_names), base)
    active = [name for name in self.active_adapters if name in self.lora_A]
    if len(active) != 1 or not _plain_linear_ok(self, x, active):
        return LoraLinear.forward(self, x, *args, **kwargs)
    (name,) = active
    variant = self.lora_variant.get(name)
    lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
    p = _dropout_p(self, name)
    if variant is None:
        return ops.lora_linear(x, base.weight, base.bias, lora_a, lora_b, self.scaling[name], dropout=p)
    if type(variant).__name__ == "DoraLinearVariant":
        magnitude = self.lora_magnitude_vector[name].weight
        return ops.dora_linear(
            x, base.weight, base.bias, lora_a, lora_b, self.scaling[name], magnitude, dropout=p
        )
    return LoraLinear.forward(self, x, *args, **kwargs)


def _mixed_batch(
    self: LoraLinear, x: torch.Tensor, adapter_names: list[str], base: nn.Linear
) -> torch.Tensor:
    # peft skips names it does not know (they get the base output); so does the index, as -1.
    used = sorted({name for name in adapter_names if name in self.lora_A})
    dropouts = {_dropout_p(self, name) for name in used}
    if not used or not _plain_linear_ok(self, x, used) or len(dropouts) > 1 or self.lora_variant:
        return LoraLinear.forward(self, x, adapter_names=adapter_names)
    position = {name: i for i, name in enumerate(used)}
    index = torch.tensor(
        [position.get(name, -1) for name in adapter_names], dtype=torch.int32, device=x.device
    )
    lora_a, lora_b = ops.stack_adapters(
        [self.lora_A[name].weight for name in used], [self.lora_B[name].weight for name in used]
    )
    scalings = [float(self.scaling[name]) for name in used]
    return ops.multi_lora_linear(
        x, base.weight, base.bias, lora_a, lora_b, scalings, index, dropout=dropouts.pop(), check_index=False
    )
