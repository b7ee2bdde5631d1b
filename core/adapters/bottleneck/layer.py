"""The bottleneck adapter layer: wraps any module and adds ``s * up(act(down(.)))`` to its (first) output."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import LEARNABLE, LEARNABLE_SCALE_INIT, BottleneckConfig, bottleneck_width, placement_for

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}

# Keywords under which a wrapped module may get its main input when it is called without positional args.
_INPUT_KWARGS = ("hidden_states", "x", "input", "inputs_embeds")

MERGE_ERROR = (
    "Bottleneck adapters cannot be merged: `up(act(down(h)))` is nonlinear, so no change to the wrapped "
    "module's weights is equivalent to it. Keep the PeftModel for inference, or call `unload()` to get the "
    "base model back without the adapters."
)


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps ``base_layer`` (any module) and adds one bottleneck MLP per named adapter to its output.

    Each adapter is ``s * up(act(down(dropout(h))))`` with ``up`` zero-initialised, so a freshly adapted
    model computes exactly what the base model computes. ``"sequential"`` adapters read the module's output
    (Houlsby), ``"parallel"`` ones its first input (AdaptFormer); active adapters are applied in order.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up", "bottleneck_scale")
    other_param_names = ("bottleneck_dropout", "scaling", "placement", "activation", "hidden_size")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, module_name: str = ""
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name or type(base_layer).__name__
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_scale = nn.ParameterDict()  # only adapters with scaling="learnable" have an entry
        self.bottleneck_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.placement: dict[str, str] = {}
        self.activation: dict[str, str] = {}
        self.hidden_size: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)
        self.train(base_layer.training)  # new modules start in training mode; follow the wrapped module

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        """Create (or re-create) the adapter ``adapter_name`` on this layer from ``config``."""
        base = self.get_base_layer()
        hidden = config.hidden_size or infer_hidden_size(base)
        if hidden is None:
            raise ValueError(
                f"Cannot infer the feature width of module '{self.module_name}' ({type(base).__name__}): "
                "it has no nn.Linear, `hidden_size`/`embed_dim` attribute or LayerNorm inside. "
                "Set `hidden_size` in the BottleneckConfig."
            )
        placement = placement_for(config, self.module_name)
        width = bottleneck_width(config, hidden)
        if placement == "parallel" and isinstance(base, nn.Linear) and base.in_features != base.out_features:
            raise ValueError(
                f"`placement='parallel'` adds a branch on the input of '{self.module_name}' to its output, "
                f"but this nn.Linear maps {base.in_features} to {base.out_features} features. Use "
                "`placement='sequential'` or target a module whose input and output widths match."
            )

        device, dtype = _device_and_dtype(base)
        down = nn.Linear(hidden, width, device=device, dtype=dtype)
        up = nn.Linear(width, hidden, device=device, dtype=dtype)
        if not down.weight.is_meta:  # under low_cpu_mem_usage, the weights come from a checkpoint instead
            with torch.no_grad():
                down.bias.zero_()
                up.weight.zero_()  # zero up-projection: the adapted model starts as the base model
                up.bias.zero_()
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.bottleneck_dropout[adapter_name] = dropout.train(self.training)
        if config.scaling == LEARNABLE:
            self.bottleneck_scale[adapter_name] = nn.Parameter(
                torch.full((), LEARNABLE_SCALE_INIT, device=device, dtype=dtype)
            )
            self.scaling[adapter_name] = LEARNABLE_SCALE_INIT
        else:
            if adapter_name in self.bottleneck_scale:
                del self.bottleneck_scale[adapter_name]
            self.scaling[adapter_name] = float(config.scaling)
        self.placement[adapter_name] = placement
        self.activation[adapter_name] = config.activation
        self.hidden_size[adapter_name] = hidden
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Refuse: a nonlinear adapter has no weight-space equivalent."""
        raise ValueError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Nothing is ever merged, so there is nothing to undo."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        active = [name for name in self.active_adapters if name in self.bottleneck_down]
        if self.disable_adapters or not active:
            return self.base_layer(*args, **kwargs)

        output = self.base_layer(*args, **kwargs)
        hidden, repack = _split_first_output(output, self.module_name)
        module_input = None
        for name in active:
            if self.placement[name] == "parallel":
                if module_input is None:
                    module_input = self._module_input(args, kwargs)
                if module_input.shape != hidden.shape:
                    raise ValueError(
                        f"`placement='parallel'` needs module '{self.module_name}' to keep its input's "
                        f"shape, but it maps {tuple(module_input.shape)} to {tuple(hidden.shape)}. Use "
                        "`placement='sequential'` or target a module whose input and output shapes match."
                    )
                hidden = hidden + self._adapter_delta(name, module_input, hidden.dtype)
            else:
                hidden = hidden + self._adapter_delta(name, hidden, hidden.dtype)
        return repack(hidden)

    def _adapter_delta(self, name: str, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        if x.shape[-1] != self.hidden_size[name]:
            raise ValueError(
                f"Adapter '{name}' on module '{self.module_name}' was built for {self.hidden_size[name]} "
                f"features but got a tensor of shape {tuple(x.shape)}. Set `hidden_size` in the "
                "BottleneckConfig to the width of the features the adapter should read."
            )
        down = self.bottleneck_down[name]
        z = down(self.bottleneck_dropout[name](self._cast_input_dtype(x, down.weight.dtype)))
        z = self.bottleneck_up[name](_ACTIVATIONS[self.activation[name]](z))
        scale = self.bottleneck_scale[name] if name in self.bottleneck_scale else self.scaling[name]
        return (z * scale).to(out_dtype)

    def _module_input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if args:
            x = args[0]
        else:
            key = next((k for k in _INPUT_KWARGS if k in kwargs), None)
            if key is None:
                raise ValueError(
                    f"`placement='parallel'` reads the first positional input of module "
                    f"'{self.module_name}', but it was called with keyword arguments only "
                    f"({sorted(kwargs)}). Use `placement='sequential'`."
                )
            x = kwargs[key]
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"`placement='parallel'` needs the first input of module '{self.module_name}' to be a "
                f"tensor, got {type(x).__name__}. Use `placement='sequential'`."
            )
        return x

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


def infer_hidden_size(module: nn.Module) -> int | None:
    """Guess the feature width of ``module``'s output, or return None.

    Tries, in order: the last ``nn.Linear``'s ``out_features`` (the output projection of a block, MLP or
    attention), an integer ``hidden_size`` or ``embed_dim`` attribute, and a norm's ``normalized_shape``.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    for sub in module.modules():
        for attr in ("hidden_size", "embed_dim"):
            value = getattr(sub, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    for sub in reversed(list(module.modules())):
        shape = getattr(sub, "normalized_shape", None)
        if isinstance(shape, (tuple, list)) and shape:
            return int(shape[-1])
    return None


def _device_and_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _split_first_output(output: Any, module_name: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Return the hidden states in ``output`` and a function that puts new ones back in the same structure.

    Handles a tensor, a tuple or list whose first item is the hidden states (older transformers blocks), a
    named tuple, and a mapping such as transformers' ``ModelOutput`` (first value).
    """
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        if hasattr(output, "_fields"):  # named tuple
            return output[0], lambda h: type(output)(h, *rest)
        return output[0], lambda h: type(output)([h, *rest])
    if isinstance(output, Mapping) and output:
        key = next(iter(output))
        if isinstance(output[key], torch.Tensor):

            def repack(h: torch.Tensor) -> Any:
                new = copy.copy(output)
                new[key] = h
                return new

            return output[key], repack
    raise TypeError(
        f"Module '{module_name}' returned {type(output).__name__}; a bottleneck adapter needs a tensor, or a "
        "tuple/list/mapping whose first item is the hidden-state tensor. Target a submodule that returns one."
    )
