"""Configuration of bottleneck block adapters (Houlsby et al. 2019; AdaptFormer, Chen et al. 2022)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from peft.config import PeftConfig
from peft.utils import PeftType
from torch import nn

PLACEMENTS = ("sequential", "parallel")
ACTIVATIONS = ("gelu", "relu", "silu")
LEARNABLE = "learnable"
#: Initial value of a learnable scale (AdaptFormer and Earth-Adapter start from 0.1).
LEARNABLE_SCALE_INIT = 0.1


@dataclass
class BottleneckConfig(PeftConfig):
    """Configuration of a :class:`BottleneckModel`: a small residual MLP ``up(act(down(h)))`` around blocks.

    Args:
        target_modules (`Union[list[str], str]`):
            Names of the modules to wrap (a transformer block, an MLP, an attention output, ...). A list
            matches exact names or name endings (``"layer.0"`` matches ``"encoder.layer.0"``); a string is a
            regex that must match the full module name. Required: there is no default per architecture.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Names of modules not to wrap, with the same matching rules as `target_modules`.
        bottleneck_dim (`int`):
            Width of the bottleneck, i.e. the output size of the down-projection. Defaults to 64.
        bottleneck_ratio (`Optional[float]`):
            Width of the bottleneck as a fraction of each wrapped module's feature width (0.25: D -> D/4),
            for backbones whose stages differ in width; overrides `bottleneck_dim`.
        scaling (`Union[float, str]`):
            Factor on the adapter's output: a fixed number (default 1.0), or ``"learnable"`` for a trained
            scalar that starts at 0.1, as in AdaptFormer and Earth-Adapter.
        placement (`str`):
            ``"sequential"`` (Houlsby): ``h = m(x); h = h + s * up(act(down(h)))``.
            ``"parallel"`` (AdaptFormer): ``h = m(x) + s * up(act(down(x)))``, which needs the module's input
            and output shapes to match.
        parallel_modules (`Optional[Union[list[str], str]]`):
            Targets that take the ``"parallel"`` placement while the others take `placement`, with the same
            matching rules as `target_modules`: one config can put adapters after attention and beside the
            MLP.
        activation (`str`):
            Nonlinearity between the projections: ``"gelu"`` (default), ``"relu"`` or ``"silu"``.
        dropout (`float`):
            Dropout probability on the adapter's input. Defaults to 0.
        hidden_size (`Optional[int]`):
            Width of the features the adapter reads and writes. If unset, it is inferred from the wrapped
            module: the last ``nn.Linear``'s ``out_features``, else a ``hidden_size``/``embed_dim``
            attribute or a norm layer's ``normalized_shape`` inside it.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save, e.g. a freshly initialised classification head.
    """

    #: Bottleneck adapters wrap whole blocks (any module with a feature-sized output), not single layers.
    target_kinds: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "Names of the modules to wrap with a bottleneck adapter (blocks, MLPs, attention outputs). "
                "A list matches exact names or name endings; a string is a regex matched against the full "
                "module name."
            )
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Names (list) or a regex (string) of modules not to wrap."},
    )
    bottleneck_dim: int = field(
        default=64, metadata={"help": "Width of the bottleneck (output size of the down-projection)."}
    )
    bottleneck_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Bottleneck width as a fraction of each module's width (overrides bottleneck_dim)."
        },
    )
    scaling: float | str = field(
        default=1.0,
        metadata={
            "help": "Factor on the adapter's output: a number, or 'learnable' (a trained scalar, init 0.1)."
        },
    )
    placement: Literal["sequential", "parallel"] = field(
        default="sequential",
        metadata={
            "help": (
                "'sequential' (Houlsby) adapts the module's output; 'parallel' (AdaptFormer) adds an "
                "adapter branch that reads the module's input."
            )
        },
    )
    parallel_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Targets (names, list; or a regex) that take the 'parallel' placement."},
    )
    activation: Literal["gelu", "relu", "silu"] = field(
        default="gelu", metadata={"help": "Nonlinearity between the projections: 'gelu', 'relu' or 'silu'."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter's input."})
    hidden_size: int | None = field(
        default=None,
        metadata={"help": "Feature width the adapter reads and writes; inferred from the module if unset."},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "Modules besides the adapters to train and save in the checkpoint, e.g. a freshly "
                "initialised classification head."
            )
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType("BOTTLENECK")
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.parallel_modules, (list, tuple, set)):
            self.parallel_modules = sorted(self.parallel_modules)

        if not _is_int(self.bottleneck_dim) or self.bottleneck_dim < 1:
            raise ValueError(f"`bottleneck_dim` must be a positive integer, got {self.bottleneck_dim!r}.")
        if self.bottleneck_ratio is not None and (
            not _is_number(self.bottleneck_ratio) or not 0.0 < self.bottleneck_ratio <= 1.0
        ):
            raise ValueError(
                f"`bottleneck_ratio` must be a fraction in (0, 1] of the module's width, got {self.bottleneck_ratio!r}."
            )
        if isinstance(self.scaling, str):
            if self.scaling != LEARNABLE:
                raise ValueError(f"`scaling` must be a number or {LEARNABLE!r}, got {self.scaling!r}.")
        elif _is_number(self.scaling) and math.isfinite(self.scaling):
            self.scaling = float(self.scaling)
        else:
            raise ValueError(f"`scaling` must be a finite number or {LEARNABLE!r}, got {self.scaling!r}.")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"`placement` must be one of {list(PLACEMENTS)}, got {self.placement!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}, got {self.activation!r}.")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a probability in [0, 1), got {self.dropout!r}.")
        if self.hidden_size is not None and (not _is_int(self.hidden_size) or self.hidden_size < 1):
            raise ValueError(f"`hidden_size` must be a positive integer or None, got {self.hidden_size!r}.")


def placement_for(config: BottleneckConfig, module_name: str) -> str:
    """The placement of the adapter on ``module_name``: ``"parallel"`` if it is one of the config's
    ``parallel_modules`` (exact name or name ending for a list, full match for a regex), else ``placement``."""
    chosen = config.parallel_modules
    if chosen is None:
        return config.placement
    if isinstance(chosen, str):
        matched = re.fullmatch(chosen, module_name) is not None
    else:
        matched = any(module_name == name or module_name.endswith("." + name) for name in chosen)
    return "parallel" if matched else config.placement


def bottleneck_width(config: BottleneckConfig, hidden: int) -> int:
    """The down-projection's width for a module of ``hidden`` features."""
    if config.bottleneck_ratio is None:
        return config.bottleneck_dim
    return max(1, round(hidden * config.bottleneck_ratio))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
