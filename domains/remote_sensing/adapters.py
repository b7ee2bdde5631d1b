"""Earth-Adapter (a mixture of frequency adapters, "MoFA") and ConvPass, as the peft methods ``"mofa"`` and
``"convpass"``.

Importing this module registers both with peft, so ``peft.get_peft_model`` accepts a :class:`MoFAConfig` or
:class:`ConvPassConfig` and stock ``peft.PeftModel.from_pretrained`` reloads what ``save_pretrained`` wrote.

Both wrap whole blocks and update their output (sequentially, like a Houlsby adapter): a ViT block's tokens
``[B, N, D]``, whose prefix tokens (CLS, registers) pass through unchanged while the other ``N - p`` form the
patch grid, or a convolutional block's feature map ``[B, C, H, W]``, which is the grid. Up-projections start
at zero, so a fresh adapter computes exactly what the frozen model computes.

- MoFA frequency layers: the grid's low band (centred square of the orthonormal, shifted 2-D FFT, half-width
  ``floor(H * cutoff_ratio / 2)``) and high band (the rest) feed two bottleneck experts beside one on the grid
  itself; a per-token softmax router mixes them: ``x <- x + s * sum_i w_i E_i``. Plain layers (targets not in
  ``frequency_modules``) are ``x <- x + s * E_spatial(x)``. ``split="none"`` keeps the three experts and the
  router but feeds all of them ``x``: the control that isolates the FFT split.
- ConvPass: ``x <- x + s * up(act(dwconv3x3(down(x))))`` with the 3x3 depthwise convolution on the grid.

Neither can be merged into the frozen weights (they are nonlinear): ``merge_and_unload`` raises, ``unload``
returns the base model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn

from verticals.core.adapters.block_tuner import BlockAdapterConfig, BlockAdapterTuner, nonlinear_merge_error
from verticals.core.peft_methods import register_method
from verticals.domains.remote_sensing.frequency import (
    infer_channels,
    model_layout,
    split_frequencies,
    token_grid,
)

__all__ = [
    "EXPERTS",
    "ConvPassConfig",
    "ConvPassLayer",
    "ConvPassModel",
    "MoFAConfig",
    "MoFALayer",
    "MoFAModel",
    "convpass_parameter_count",
    "is_frequency_module",
    "mofa_parameter_count",
    "record_router",
    "router_weights",
]

#: The experts of a frequency layer, in the order of the router's outputs (``E1``, ``E2``, ``E3``).
EXPERTS = ("spatial", "low", "high")
SPLITS = ("fft", "none")
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


# --- configs -----------------------------------------------------------------------------------------------


@dataclass
class _GridAdapterConfig(BlockAdapterConfig):
    """Fields and checks shared by :class:`MoFAConfig` and :class:`ConvPassConfig` (documented there)."""

    bottleneck_dim: int = field(default=16, metadata={"help": "Width d of each bottleneck (D -> d -> D)."})
    num_prefix_tokens: int | None = field(
        default=None,
        metadata={
            "help": (
                "CLS/register tokens at the start of a block's output, passed through unchanged. None: read "
                "from the nearest enclosing module with `num_prefix_tokens` (timm ViT), else 0."
            )
        },
    )
    scale_init: float = field(
        default=0.1, metadata={"help": "Initial value of the learnable per-layer scale s."}
    )
    activation: str = field(default="relu", metadata={"help": "Nonlinearity inside the bottleneck."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter's inputs."})
    hidden_size: int | None = field(
        default=None,
        metadata={"help": "Feature width D the adapter reads and writes; inferred from the block if unset."},
    )

    def _check_common(self, peft_type: str) -> None:
        self._check_targets(peft_type)
        if not _is_int(self.bottleneck_dim) or self.bottleneck_dim < 1:
            raise ValueError(
                f"`bottleneck_dim` must be a positive integer (the width d of D -> d -> D), got "
                f"{self.bottleneck_dim!r}."
            )
        if self.num_prefix_tokens is not None and (
            not _is_int(self.num_prefix_tokens) or self.num_prefix_tokens < 0
        ):
            raise ValueError(
                "`num_prefix_tokens` must be None (read from the model) or an integer >= 0, got "
                f"{self.num_prefix_tokens!r}."
            )
        if not _is_number(self.scale_init) or not math.isfinite(self.scale_init):
            raise ValueError(f"`scale_init` must be a finite number, got {self.scale_init!r}.")
        self.scale_init = float(self.scale_init)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}, got {self.activation!r}.")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a probability in [0, 1), got {self.dropout!r}.")
        if self.hidden_size is not None and (not _is_int(self.hidden_size) or self.hidden_size < 1):
            raise ValueError(
                f"`hidden_size` must be None (inferred) or a positive integer, got {self.hidden_size!r}."
            )


@dataclass
class MoFAConfig(_GridAdapterConfig):
    """Configuration of a :class:`MoFAModel`: Earth-Adapter's mixture of frequency adapters after blocks.

    Args:
        target_modules (`Union[list[str], str]`):
            Blocks to wrap. A list matches exact names or name endings (``"blocks.0"`` matches
            ``"backbone.blocks.0"``); a string is a regex matched against the full module name. Required.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Modules not to wrap, with the same matching rules.
        frequency_modules (`Optional[Union[list[str], str]]`):
            Targets that get the frequency mixture (three experts and a router); the other targets get a
            plain adapter ``x + s * E1(x)``, as in the paper's configs (e.g. frequency layers in the first 3 of
            all adapted blocks). Same matching rules; every entry must name a target. None: all targets.
        bottleneck_dim (`int`):
            Width d of each expert ``Linear(D, d) -> act -> Linear(d, D)``. Defaults to 16.
        cutoff_ratio (`float`):
            rho in (0, 1): the low band is the centred square of the shifted spectrum with half-width
            ``floor(H * rho / 2)`` per axis (it always holds the zero frequency). Defaults to 0.25.
        split (`str`):
            ``"fft"`` (the method) or ``"none"``: the same experts and router, all reading the block's output,
            the control that isolates the frequency split.
        num_prefix_tokens (`Optional[int]`):
            CLS/register tokens at the start of a token output; they pass through unchanged. None: read from
            the nearest enclosing module with a ``num_prefix_tokens`` attribute (timm ViTs), else 0.
        scale_init (`float`):
            Initial value of the learnable per-layer scale s. Defaults to 0.1 (the paper's).
        activation (`str`):
            ``"relu"`` (the paper's, default) or ``"gelu"``.
        dropout (`float`):
            Dropout probability on each expert's input. Defaults to 0.
        hidden_size (`Optional[int]`):
            Feature width D. If unset, inferred from the block: its last Linear's or convolution's output
            width, else a ``hidden_size``/``embed_dim`` attribute or a norm layer inside it.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save, e.g. a freshly initialised decode head.
    """

    frequency_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "Targets (names, list; or a regex) that get the frequency mixture; the others get a plain "
                "adapter. None: every target."
            )
        },
    )
    cutoff_ratio: float = field(
        default=0.25, metadata={"help": "rho in (0, 1): half-width floor(H * rho / 2) of the low band."}
    )
    split: Literal["fft", "none"] = field(
        default="fft",
        metadata={"help": "'fft' (the method) or 'none' (the same experts and router, all reading x)."},
    )
    activation: Literal["relu", "gelu"] = field(
        default="relu", metadata={"help": "Nonlinearity inside each expert: 'relu' or 'gelu'."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_common("MOFA")
        if isinstance(self.frequency_modules, (list, tuple, set)):
            bad = [name for name in self.frequency_modules if not isinstance(name, str)]
            if bad:
                raise ValueError(f"`frequency_modules` must hold module names (strings), got {bad!r}.")
            self.frequency_modules = sorted(self.frequency_modules)
        elif isinstance(self.frequency_modules, str):
            try:
                re.compile(self.frequency_modules)
            except re.error as error:
                raise ValueError(
                    f"`frequency_modules` {self.frequency_modules!r} is not a valid regex ({error}); give a "
                    "regex or a list of module names."
                ) from None
        elif self.frequency_modules is not None:
            raise ValueError(
                "`frequency_modules` must be None (every target), a list of module names or a regex, got "
                f"{self.frequency_modules!r}."
            )
        if not _is_number(self.cutoff_ratio) or not 0.0 < self.cutoff_ratio < 1.0:
            raise ValueError(
                f"`cutoff_ratio` must lie in (0, 1) (the paper uses 0.2-0.3), got {self.cutoff_ratio!r}."
            )
        self.cutoff_ratio = float(self.cutoff_ratio)
        if self.split not in SPLITS:
            raise ValueError(
                f"`split` must be one of {list(SPLITS)} ('none' is the no-split control), got {self.split!r}."
            )


@dataclass
class ConvPassConfig(_GridAdapterConfig):
    """Configuration of a :class:`ConvPassModel`: a bottleneck with a depthwise 3x3 conv on the token grid.

    Each wrapped block's output becomes ``x + s * up(act(dwconv3x3(down(x))))``: ``down`` is
    ``Linear(D, d)``, the convolution runs over the patch grid (prefix tokens pass through), ``up`` is
    ``Linear(d, D)`` and starts at zero.

    Args:
        target_modules (`Union[list[str], str]`):
            Blocks to wrap: a list of exact names or name endings, or a regex. Required.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Modules not to wrap, with the same matching rules.
        bottleneck_dim (`int`):
            Width d of the bottleneck and the convolution's channel count. Defaults to 16.
        scale_init (`float`):
            Initial value of the learnable per-layer scale s. Defaults to 0.1.
        num_prefix_tokens (`Optional[int]`):
            CLS/register tokens that pass through; None: read from the model (timm ViTs), else 0.
        activation (`str`):
            ``"gelu"`` (default) or ``"relu"``, after the convolution.
        dropout (`float`):
            Dropout probability on the adapter's input. Defaults to 0.
        hidden_size (`Optional[int]`):
            Feature width D; inferred from the block if unset.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save.
    """

    activation: Literal["gelu", "relu"] = field(
        default="gelu", metadata={"help": "Nonlinearity after the convolution: 'gelu' or 'relu'."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_common("CONVPASS")


def is_frequency_module(config: MoFAConfig, module_name: str) -> bool:
    """Whether the target ``module_name`` gets the frequency mixture under ``config``."""
    return _matches(config.frequency_modules, module_name, default=True)


def mofa_parameter_count(hidden: int, bottleneck_dim: int, frequency: bool) -> int:
    """Trainable parameters of one MoFA layer: three experts and a router (frequency) or one expert; + s."""
    expert = 2 * hidden * bottleneck_dim + bottleneck_dim + hidden
    if frequency:
        return 3 * expert + (3 * hidden + 3) + 1
    return expert + 1


def convpass_parameter_count(hidden: int, bottleneck_dim: int) -> int:
    """Trainable parameters of one ConvPass layer: down, depthwise 3x3 conv, up, and s."""
    return 2 * hidden * bottleneck_dim + bottleneck_dim + hidden + 10 * bottleneck_dim + 1


# --- router recording --------------------------------------------------------------------------------------


class _Recording:
    depth = 0  # > 0 inside `record_router()`
    session = 0  # incremented at each outermost entry


@contextmanager
def record_router(model: nn.Module | None = None) -> Iterator[None]:
    """While active, every MoFA frequency layer keeps its router weights from its last forward.

    Outside it nothing is kept. Read them with :func:`router_weights` (also after the ``with`` block).
    ``model``: drop its earlier records first, so that afterwards it holds only what ran inside this block.
    """
    if model is not None:
        for module in model.modules():
            if isinstance(module, MoFALayer):
                module._router_records.clear()
    if _Recording.depth == 0:
        _Recording.session += 1
    _Recording.depth += 1
    try:
        yield
    finally:
        _Recording.depth -= 1


def router_weights(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{module name: router weights [tokens seen, 3]}`` of the frequency layers in ``model``.

    Columns follow :data:`EXPERTS` (spatial, low, high); rows are the grid tokens of the layer's last forward
    inside the latest :func:`record_router` block in which this model ran (batch-major), detached.
    ``adapter_name``: which adapter, when several recorded.
    """
    layers = [m for m in model.modules() if isinstance(m, MoFALayer) and m._router_records]
    if not layers:
        raise ValueError(
            f"No router weights are recorded in {type(model).__name__}: run its forward inside "
            "`with record_router():` (only MoFA frequency layers have a router; plain ones do not)."
        )
    latest = max(session for layer in layers for session, _ in layer._router_records.values())
    recorded = [
        (layer.module_name, name, weights)
        for layer in layers
        for name, (session, weights) in layer._router_records.items()
        if session == latest
    ]
    names = sorted({name for _, name, _ in recorded})
    if adapter_name is None:
        if len(names) > 1:
            raise ValueError(f"Router weights were recorded for adapters {names}; pass `adapter_name`.")
        adapter_name = names[0]
    elif adapter_name not in names:
        raise ValueError(f"No router weights recorded for adapter {adapter_name!r}; recorded: {names}.")
    return {module: weights for module, name, weights in recorded if name == adapter_name}


# --- layers ------------------------------------------------------------------------------------------------


class _GridAdapterLayer(nn.Module, BaseTunerLayer):
    """Wraps a block and adds, per active adapter, a delta computed on its patch grid (or tokens)."""

    method = ""
    config_name = ""
    nonlinear_because = ""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: _GridAdapterConfig,
        module_name: str = "",
        model_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name or type(base_layer).__name__
        self.model_prefix_tokens = model_prefix_tokens  # the model's, used where the config says None
        self.grid_size = grid_size  # the model's patch_embed.grid_size, if any
        for name in (*self.adapter_layer_names, *self.other_param_names):
            if name.endswith("_scale"):
                setattr(self, name, nn.ParameterDict())
            elif name.startswith(self.prefix):
                setattr(self, name, nn.ModuleDict())
            else:
                setattr(self, name, {})
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)
        self.train(base_layer.training)  # new modules start in training mode; follow the wrapped module

    def update_layer(self, adapter_name: str, config: _GridAdapterConfig) -> None:
        """Create (or re-create) the adapter ``adapter_name`` on this layer from ``config``."""
        base = self.get_base_layer()
        hidden = config.hidden_size or infer_channels(base)
        if hidden is None:
            raise ValueError(
                f"Cannot infer the feature width of module '{self.module_name}' ({type(base).__name__}): it has "
                "no Linear or convolution, `hidden_size`/`embed_dim` attribute or norm layer inside. Set "
                f"`hidden_size` in the {self.config_name}."
            )
        device, dtype = _device_and_dtype(base)
        self._build(adapter_name, config, hidden, device, dtype)
        scale = torch.full((), config.scale_init, device=device, dtype=dtype)
        getattr(self, self.prefix + "scale")[adapter_name] = nn.Parameter(scale)
        dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        getattr(self, self.prefix + "dropout")[adapter_name] = dropout.train(self.training)
        self.hidden_size[adapter_name] = hidden
        self.activation[adapter_name] = config.activation
        prefix = config.num_prefix_tokens
        self.num_prefix_tokens[adapter_name] = self.model_prefix_tokens if prefix is None else prefix
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _build(self, adapter_name: str, config: Any, hidden: int, device: Any, dtype: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement `_build`.")

    def _needs_grid(self, adapter_name: str) -> bool:
        return True

    def _delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's update of a channels-last grid ``[B, H, W, D]`` (or tokens ``[B, n, D]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_delta`.")

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Refuse: a nonlinear adapter has no weight-space equivalent."""
        raise ValueError(nonlinear_merge_error(self.method, self.nonlinear_because))

    def unmerge(self) -> None:
        """Nothing is ever merged, so there is nothing to undo."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.base_layer(*args, **kwargs)
        active = [name for name in self.active_adapters if name in self.hidden_size]
        if self.disable_adapters or not active:
            return output
        hidden, repack = _first_tensor(output, self.module_name, self.method)
        for name in active:
            hidden = self._adapt(name, hidden)
        return repack(hidden)

    def _adapt(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        width = self.hidden_size[name]
        if hidden.dim() == 3:  # tokens [B, N, D]: prefix tokens pass through, the rest form the grid
            self._check_width(name, hidden, hidden.shape[-1], "[B, N, D] tokens")
            batch, count, _ = hidden.shape
            prefix = self.num_prefix_tokens[name]
            if self._needs_grid(name):
                rows, cols = token_grid(count, prefix, self.grid_size, self.module_name)
                grid = hidden[:, prefix:].reshape(batch, rows, cols, width)
                delta = self._delta(name, grid).reshape(batch, rows * cols, width)
            else:
                if prefix >= count:
                    token_grid(count, prefix, None, self.module_name)  # raises: no patch tokens left
                delta = self._delta(name, hidden[:, prefix:])
            patches = hidden[:, prefix:] + delta.to(hidden.dtype)
            return torch.cat([hidden[:, :prefix], patches], dim=1) if prefix else patches
        if hidden.dim() == 4:  # a feature map [B, C, H, W] is the grid; the adapter acts on channels
            self._check_width(name, hidden, hidden.shape[1], "[B, C, H, W] map")
            delta = self._delta(name, hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return hidden + delta.to(hidden.dtype)
        raise ValueError(
            f"Module '{self.module_name}' returned a tensor of shape {tuple(hidden.shape)}; {self.method} "
            "adapters need [B, N, D] tokens or a [B, C, H, W] feature map. Target a block that returns one."
        )

    def _check_width(self, name: str, hidden: torch.Tensor, width: int, layout: str) -> None:
        if width != self.hidden_size[name]:
            raise ValueError(
                f"Adapter '{name}' on module '{self.module_name}' was built for {self.hidden_size[name]} features, "
                f"but the module returned {layout} of shape {tuple(hidden.shape)} ({width} features). Set "
                f"`hidden_size` in the {self.config_name} to the width of the block's output."
            )

    def __repr__(self) -> str:
        return f"{self.prefix[:-1]}." + super().__repr__()


class MoFALayer(_GridAdapterLayer):
    """Earth-Adapter around one block: a frequency mixture, or a plain bottleneck (see :class:`MoFAConfig`)."""

    prefix = "mofa_"
    method = "Earth-Adapter (MoFA)"
    config_name = "MoFAConfig"
    nonlinear_because = "its experts and its softmax router are nonlinear in the block's output"
    adapter_layer_names = (
        *(f"mofa_{expert}_{part}" for expert in EXPERTS for part in ("down", "up")),
        "mofa_router",
        "mofa_scale",
    )
    other_param_names = (
        "mofa_dropout",
        "frequency",
        "split",
        "cutoff_ratio",
        "activation",
        "hidden_size",
        "num_prefix_tokens",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._router_records: dict[str, tuple[int, torch.Tensor]] = {}
        super().__init__(*args, **kwargs)

    def _build(self, adapter_name: str, config: MoFAConfig, hidden: int, device: Any, dtype: Any) -> None:
        frequency = is_frequency_module(config, self.module_name)
        experts = EXPERTS if frequency else EXPERTS[:1]
        for expert in EXPERTS:
            for part in ("down", "up"):
                container = getattr(self, f"mofa_{expert}_{part}")
                if expert not in experts and adapter_name in container:
                    del container[adapter_name]
            if expert in experts:
                down, up = _bottleneck(hidden, config.bottleneck_dim, device, dtype)
                getattr(self, f"mofa_{expert}_down")[adapter_name] = down
                getattr(self, f"mofa_{expert}_up")[adapter_name] = up
        if frequency:
            self.mofa_router[adapter_name] = nn.Linear(hidden, len(EXPERTS), device=device, dtype=dtype)
        elif adapter_name in self.mofa_router:
            del self.mofa_router[adapter_name]
        self.frequency[adapter_name] = frequency
        self.split[adapter_name] = config.split
        self.cutoff_ratio[adapter_name] = config.cutoff_ratio
        self._router_records.pop(adapter_name, None)

    def _needs_grid(self, adapter_name: str) -> bool:
        return self.frequency[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name`` from this layer, with the router weights it recorded."""
        super().delete_adapter(adapter_name)
        self._router_records.pop(adapter_name, None)

    def _expert(self, name: str, expert: str, x: torch.Tensor) -> torch.Tensor:
        down = getattr(self, f"mofa_{expert}_down")[name]
        up = getattr(self, f"mofa_{expert}_up")[name]
        return up(ACTIVATIONS[self.activation[name]](down(x)))

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = self._cast_input_dtype(x, self.mofa_spatial_down[name].weight.dtype)
        dropout = self.mofa_dropout[name]
        spatial = self._expert(name, "spatial", dropout(x))
        if not self.frequency[name]:
            return self.mofa_scale[name] * spatial
        if self.split[name] == "fft":
            low, high = split_frequencies(x, self.cutoff_ratio[name])
        else:  # the no-split control: the same experts and router, all reading x
            low = high = x
        weights = torch.softmax(self.mofa_router[name](x), dim=-1)
        if _Recording.depth > 0:
            self._router_records[name] = (_Recording.session, weights.detach().reshape(-1, len(EXPERTS)))
        mixed = (
            weights[..., 0:1] * spatial
            + weights[..., 1:2] * self._expert(name, "low", dropout(low))
            + weights[..., 2:3] * self._expert(name, "high", dropout(high))
        )
        return self.mofa_scale[name] * mixed


class ConvPassLayer(_GridAdapterLayer):
    """ConvPass around one block: ``x + s * up(act(dwconv3x3(down(x))))`` on the patch grid."""

    prefix = "convpass_"
    method = "ConvPass"
    config_name = "ConvPassConfig"
    nonlinear_because = "its activation makes it nonlinear in the block's output"
    adapter_layer_names = ("convpass_down", "convpass_conv", "convpass_up", "convpass_scale")
    other_param_names = ("convpass_dropout", "activation", "hidden_size", "num_prefix_tokens")

    def _build(self, adapter_name: str, config: ConvPassConfig, hidden: int, device: Any, dtype: Any) -> None:
        width = config.bottleneck_dim
        down, up = _bottleneck(hidden, width, device, dtype)
        self.convpass_down[adapter_name] = down
        self.convpass_up[adapter_name] = up
        self.convpass_conv[adapter_name] = nn.Conv2d(
            width, width, kernel_size=3, padding=1, groups=width, device=device, dtype=dtype
        )

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        down = self.convpass_down[name]
        z = down(self.convpass_dropout[name](self._cast_input_dtype(x, down.weight.dtype)))  # [B, H, W, d]
        z = self.convpass_conv[name](z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.convpass_scale[name] * self.convpass_up[name](ACTIVATIONS[self.activation[name]](z))


# --- tuners ------------------------------------------------------------------------------------------------


class _GridAdapterTuner(BlockAdapterTuner):
    """Puts a layer of ``tuner_layer_cls`` around every block the config names."""

    tuner_layer_cls: type[_GridAdapterLayer]

    @property
    def adapter_noun(self) -> str:  # type: ignore[override]
        return f"{self.tuner_layer_cls.method} adapters"

    def merge_error(self) -> str:
        layer = self.tuner_layer_cls
        return nonlinear_merge_error(layer.method, layer.nonlinear_because)

    def _create_and_replace(
        self,
        peft_config: _GridAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config)
            return
        prefix_tokens, grid_size = model_layout(self.model, current_key)
        new_module = self.tuner_layer_cls(
            target,
            adapter_name,
            peft_config,
            module_name=current_key,
            model_prefix_tokens=prefix_tokens or 0,
            grid_size=grid_size,
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


class MoFAModel(_GridAdapterTuner):
    """Adds Earth-Adapter (mixture of frequency adapters) layers after blocks of any ``nn.Module``.

    Built with ``peft.get_peft_model(model, MoFAConfig(target_modules=[...]))``; saved and reloaded with
    peft's ``save_pretrained`` / ``PeftModel.from_pretrained``. ``merge_and_unload`` raises (nonlinear);
    ``unload()`` returns the base model.

    Example:

        ```py
        >>> import verticals.domains.remote_sensing.adapters  # registers "mofa" and "convpass"
        >>> from peft import get_peft_model
        >>> config = MoFAConfig(target_modules=[f"blocks.{i}" for i in range(6)],
        ...                     frequency_modules=["blocks.0", "blocks.1", "blocks.2"], bottleneck_dim=16)
        >>> model = get_peft_model(vit, config)
        ```
    """

    prefix: str = "mofa_"
    tuner_layer_cls = MoFALayer

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        peft_config = super()._prepare_adapter_config(peft_config, model_config)
        chosen = peft_config.frequency_modules
        if chosen is None:
            return peft_config
        targets = [
            name for name, _ in self.model.named_modules() if check_target_module_exists(peft_config, name)
        ]
        entries = [chosen] if isinstance(chosen, str) else chosen
        for entry in entries:
            if not any(
                _matches(chosen if isinstance(chosen, str) else [entry], name, True) for name in targets
            ):
                shown = targets[:12] + (["..."] if len(targets) > 12 else [])
                raise ValueError(
                    f"`frequency_modules` entry {entry!r} names none of the adapted modules {shown}. Name some "
                    "of them (exact names or name endings, or a regex), or set `frequency_modules=None` to make "
                    "every target a frequency layer."
                )
        return peft_config


class ConvPassModel(_GridAdapterTuner):
    """Adds ConvPass layers (a bottleneck with a depthwise 3x3 conv on the grid) after blocks of any model.

    The convolutional control for Earth-Adapter: same placement, spatial mixing without a frequency split.
    """

    prefix: str = "convpass_"
    tuner_layer_cls = ConvPassLayer


# --- helpers -----------------------------------------------------------------------------------------------


def _matches(chosen: list[str] | str | None, module_name: str, default: bool) -> bool:
    if chosen is None:
        return default
    if isinstance(chosen, str):
        return re.fullmatch(chosen, module_name) is not None
    return any(module_name == name or module_name.endswith("." + name) for name in chosen)


def _bottleneck(hidden: int, width: int, device: Any, dtype: Any) -> tuple[nn.Linear, nn.Linear]:
    """``Linear(hidden, width)`` and a zero ``Linear(width, hidden)``: the expert adds nothing at first."""
    down = nn.Linear(hidden, width, device=device, dtype=dtype)
    up = nn.Linear(width, hidden, device=device, dtype=dtype)
    if not up.weight.is_meta:  # under low_cpu_mem_usage, the weights come from a checkpoint instead
        with torch.no_grad():
            up.weight.zero_()
            up.bias.zero_()
    return down, up


def _device_and_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _first_tensor(output: Any, module_name: str, method: str) -> tuple[torch.Tensor, Callable[[Any], Any]]:
    """The hidden states in ``output`` and a function that puts new ones back in the same structure."""
    if isinstance(output, torch.Tensor):
        return output, lambda hidden: hidden
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        if hasattr(output, "_fields"):  # named tuple
            return output[0], lambda hidden: type(output)(hidden, *rest)
        return output[0], lambda hidden: type(output)([hidden, *rest])
    raise TypeError(
        f"Module '{module_name}' returned {type(output).__name__}; {method} adapters need a tensor, or a "
        "tuple/list whose first item is the hidden states. Target a block that returns one."
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


register_method(name="mofa", config_cls=MoFAConfig, model_cls=MoFAModel, prefix=MoFAModel.prefix)
register_method(
    name="convpass", config_cls=ConvPassConfig, model_cls=ConvPassModel, prefix=ConvPassModel.prefix
)
