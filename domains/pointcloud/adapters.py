"""Point-PEFT (point-prior prompt + geometry-aware adapter) and DAPT (dynamic adapter + internal prompts) as the
peft methods ``"point_peft"`` and ``"dapt"``, for point transformers whose blocks read and return tokens
``[B, p + G, D]``: ``p`` prefix tokens (the CLS token) and one token per point group.

Importing this module registers both with peft, so ``peft.get_peft_model`` accepts a :class:`PointPEFTConfig`
or :class:`DAPTConfig` and stock ``peft.PeftModel.from_pretrained`` reloads what ``save_pretrained`` wrote.
Both wrap whole blocks; prompt tokens are inserted into a block's input and removed from its output, so every
block still returns the backbone's sequence length and heads and later blocks see the shapes they expect.

**Point-PEFT** (Tang et al., AAAI 2024), per adapted block:

- *point-prior prompt* (the first ``prompt_blocks`` adapted blocks): ``num_prompts`` learnable tokens inserted
  after the prefix. A memory bank holds the L2-normalised global features (max over the group tokens after the
  final norm, as the paper's) of the training set from the frozen model, filled once by
  :meth:`PointPEFTModel.prepare_from_data`. Each forward, the frozen model's global feature ``q`` of the input
  retrieves the ``top_k`` most cosine-similar bank rows ``f_1..f_K``; softmax over their similarities weighs
  them into a prior ``f``; the tokens ``c = [q, f, f_1..f_K]`` (so ``num_prompts = top_k + 2``) pass through
  a residual bottleneck ``c + B(c)`` and are added to the prompts;
- *MLP adapter*: the block's MLP output ``m`` becomes ``m + 0.7 * A(m)``;
- *geometry-aware adapter* (group tokens only): FPS picks ``G // 2`` of the group centres, each gathers its
  ``geometry_neighbors`` nearest tokens, a small self-attention (width 18, shared by all blocks, as the
  official code) runs inside each group, a max-pool + BatchNorm + GELU (+ 0.3 * the centre's token) gives one
  feature per group, and inverse-distance interpolation carries it back to every token: ``x + 0.3 * interp``;
- *bottleneck adapter* on every kept token: ``x + A'(x)``.

The centres come from the backbone: the nearest module enclosing the block that has a ``last_centres``
attribute (verticals' ``PointTransformer`` sets it to ``[B, G, 3]`` in every forward). The query ``q`` is
computed by a forward pre-hook on that backbone's ``grouper`` (the first module that sees the raw cloud),
which runs the backbone once more with the adapters off: like the official code's second, frozen model. That
frozen pass runs through a :class:`~verticals.core.prefix_cache.FrozenBranch`, so frozen-prefix caching replays
it per cloud along with the tokenizer.

**DAPT** (Zhou et al., CVPR 2024), per adapted block: a *dynamic adapter* parallel to the MLP,
``A(x) = relu(w . LN(x)) * up(GELU(down(LN(x))))`` (a per-token scale), whose GELU'd output averaged over
the tokens becomes an *internal prompt* (after a learned scale and shift) that every later adapted block
attends to; and the official code's scale-and-shift factors (SSF) on the outputs of ``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1`` and ``mlp.fc2``. DAPT rather than IDPT: it is per-block (a dynamic
adapter and a prompt that each block makes itself), so it fits a block adapter; IDPT needs a DGCNN prompt
generator on the last block's input and a head that reads its prompt token.

Where these differ from the official code: the geometry adapter regroups the group tokens only (the official
code also mixes the prompts in, through learnable prompt coordinates whose indices don't line up with the
tokens); its attention has no drop path; Point-PEFT's official training also unfreezes the backbone's
biases, norms and CLS token, and DAPT's the SSF factors on the tokenizer output and final norm (both outside
the blocks: not here); DAPT's SSF factors start at exactly (1, 0) instead of N(1, 0.02), N(0, 0.02);
DAPT's PB-T50-RS head also reads the mean of the prompts (the head here does not change).

A fresh adapter computes what the frozen model computes only where the design allows: up-projections start at
zero, so Point-PEFT with ``use_prompts=False, use_geometry=False`` and DAPT with ``internal_prompts=False`` (or
one adapted block) are the identity; prompt tokens always change the attention of the other tokens, and the
geometry branch adds ``0.3 * interp(...)`` of a non-zero feature. Neither method can be merged (nonlinear).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from verticals.core.adapters.block_tuner import BlockAdapterConfig, BlockAdapterTuner, nonlinear_merge_error
from verticals.core.adapters.bottleneck import infer_hidden_size
from verticals.core.peft_methods import register_method
from verticals.core.prefix_cache import FrozenBranch
from verticals.domains.pointcloud.grouping import (
    farthest_point_sample,
    index_points,
    inverse_distance_interpolate,
    knn_group,
)

__all__ = [
    "DEFAULT_SCALE_SHIFT_MODULES",
    "DAPTConfig",
    "DAPTLayer",
    "DAPTModel",
    "PointPEFTConfig",
    "PointPEFTLayer",
    "PointPEFTModel",
    "dapt_parameter_count",
    "point_peft_parameter_count",
    "retrieve_point_prior",
]

#: Submodules of a block whose outputs DAPT scales and shifts (the official code's ``tfts`` factors).
DEFAULT_SCALE_SHIFT_MODULES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
PRIOR_FEATURES = ("max", "cls")


# --- configs -----------------------------------------------------------------------------------------------


@dataclass
class _PointBlockConfig(BlockAdapterConfig):
    """Fields and checks shared by :class:`PointPEFTConfig` and :class:`DAPTConfig` (documented there)."""

    mlp_module: str = field(
        default="mlp", metadata={"help": "Name, inside each block, of the MLP the adapter sits on."}
    )
    num_prefix_tokens: int | None = field(
        default=None,
        metadata={
            "help": (
                "CLS tokens at the start of a block's input. None: read from the nearest enclosing module "
                "with `num_prefix_tokens` (verticals' PointTransformer has 1), else 0."
            )
        },
    )
    hidden_size: int | None = field(
        default=None,
        metadata={"help": "Token width D; inferred from the block (its last Linear) if unset."},
    )

    def _check_common(self, peft_type: str) -> None:
        self._check_targets(peft_type)
        if not isinstance(self.mlp_module, str) or not _is_module_path(self.mlp_module):
            raise ValueError(
                f"`mlp_module` must name a submodule of each block, like 'mlp', got {self.mlp_module!r}."
            )
        if self.num_prefix_tokens is not None:
            _check_int("num_prefix_tokens", self.num_prefix_tokens, 0, "None (read from the model) or")
        if self.hidden_size is not None:
            _check_int("hidden_size", self.hidden_size, 1, "None (inferred) or")


@dataclass
class PointPEFTConfig(_PointBlockConfig):
    """Configuration of a :class:`PointPEFTModel`: Point-PEFT's point-prior prompt and geometry-aware adapter.

    The defaults are the paper's (Point-MAE, 12 blocks of width 384): prompts in the first 6 blocks, 10
    prompts = top-8 retrieved features + the query + the prior, bottleneck width 16 (8 for the prior's),
    scales 0.3 (geometry) and 0.7 (MLP adapter), geometry attention of width 18 in 6 heads.

    Args:
        target_modules (`Union[list[str], str]`):
            Blocks to wrap, e.g. ``[f"blocks.{i}" for i in range(12)]``: a list matches exact names or name
            endings, a string is a regex matched against the full name. Required.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Modules not to wrap, with the same matching rules.
        use_prompts (`bool`):
            Insert learnable prompt tokens in the first ``prompt_blocks`` adapted blocks. Defaults to True.
        use_prior (`bool`):
            Add the point prior retrieved from the memory bank to the prompts (needs ``use_prompts``).
            Defaults to True; the bank is filled by ``PointPEFTModel.prepare_from_data``.
        use_geometry (`bool`):
            The geometry-aware propagation on the group tokens after each block. Defaults to True.
        use_mlp_adapter (`bool`):
            The adapter on each block's MLP output (``m + mlp_adapter_scale * A(m)``). Defaults to True.
        num_prompts (`int`):
            Prompt tokens per prompted block; must be ``top_k + 2`` with the prior on. Defaults to 10.
        prompt_blocks (`int`):
            How many of the adapted blocks, first to last, get prompts. Defaults to 6.
        top_k (`int`):
            Bank rows retrieved per input. Defaults to 8.
        prior_feature (`str`):
            The global feature of the bank and the query: ``"max"`` (max over the group tokens after the
            final norm, the paper's) or ``"cls"`` (the CLS token).
        bottleneck_dim (`int`):
            Width of the block and MLP adapters (``D -> d -> D``). Defaults to 16.
        prior_bottleneck_dim (`int`):
            Width of the bottleneck on the retrieved tokens. Defaults to 8.
        geometry_groups (`Optional[int]`):
            Local groups the tokens are regrouped into; None: half the group tokens (the paper's).
        geometry_neighbors (`int`):
            Tokens per local group (at most the number of group tokens). Defaults to 16.
        interpolation_neighbors (`Optional[int]`):
            Local groups each token interpolates from; None: all of them (the official code; PointNet++ uses 3).
        geometry_dim (`int`):
            Width of the attention inside the local groups. Defaults to 18.
        geometry_heads (`int`):
            Heads of that attention (must divide ``geometry_dim``). Defaults to 6.
        geometry_scale (`float`):
            Factor on the interpolated group features added to the tokens. Defaults to 0.3.
        centre_scale (`float`):
            Factor on a group's centre token added to its pooled feature. Defaults to 0.3.
        mlp_adapter_scale (`float`):
            Factor on the MLP adapter. Defaults to 0.7.
        prompt_dropout (`float`):
            Dropout on the learnable prompts. Defaults to 0.1.
        adapter_dropout (`float`):
            Dropout inside the bottlenecks. Defaults to 0.1.
        mlp_module (`str`):
            The MLP inside each block. Defaults to ``"mlp"``.
        num_prefix_tokens (`Optional[int]`):
            CLS tokens before the group tokens; None: read from the model.
        hidden_size (`Optional[int]`):
            Token width D; inferred from the block if unset.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save (the classification head).
    """

    use_prompts: bool = field(default=True, metadata={"help": "Prompt tokens in the first blocks."})
    use_prior: bool = field(
        default=True, metadata={"help": "Add the memory-bank prior to the prompts (needs use_prompts)."}
    )
    use_geometry: bool = field(default=True, metadata={"help": "Geometry-aware propagation after blocks."})
    use_mlp_adapter: bool = field(default=True, metadata={"help": "The 0.7-scaled adapter on the MLP."})
    num_prompts: int = field(default=10, metadata={"help": "Prompt tokens per block (top_k + 2 with prior)."})
    prompt_blocks: int = field(default=6, metadata={"help": "How many adapted blocks get prompts."})
    top_k: int = field(default=8, metadata={"help": "Memory-bank rows retrieved per input."})
    prior_feature: Literal["max", "cls"] = field(
        default="max", metadata={"help": "Global feature of bank and query: 'max' (paper) or 'cls'."}
    )
    bottleneck_dim: int = field(default=16, metadata={"help": "Width of the block and MLP adapters."})
    prior_bottleneck_dim: int = field(default=8, metadata={"help": "Width of the prior's bottleneck."})
    geometry_groups: int | None = field(
        default=None, metadata={"help": "Local groups of tokens; None: half the group tokens."}
    )
    geometry_neighbors: int = field(default=16, metadata={"help": "Tokens per local group."})
    interpolation_neighbors: int | None = field(
        default=None, metadata={"help": "Local groups each token interpolates from; None: all."}
    )
    geometry_dim: int = field(default=18, metadata={"help": "Width of the attention in local groups."})
    geometry_heads: int = field(default=6, metadata={"help": "Heads of that attention."})
    geometry_scale: float = field(default=0.3, metadata={"help": "Factor on the propagated group features."})
    centre_scale: float = field(default=0.3, metadata={"help": "Factor on a group's centre token."})
    mlp_adapter_scale: float = field(default=0.7, metadata={"help": "Factor on the MLP adapter."})
    prompt_dropout: float = field(default=0.1, metadata={"help": "Dropout on the learnable prompts."})
    adapter_dropout: float = field(default=0.1, metadata={"help": "Dropout inside the bottlenecks."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_common("POINT_PEFT")
        for name in ("use_prompts", "use_prior", "use_geometry", "use_mlp_adapter"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.use_prior and not self.use_prompts:
            raise ValueError(
                "`use_prior=True` needs `use_prompts=True`: the retrieved point prior is added to the prompt "
                "tokens. Set `use_prior=False` too, or turn the prompts on."
            )
        for name in ("num_prompts", "prompt_blocks", "top_k", "bottleneck_dim", "prior_bottleneck_dim"):
            _check_int(name, getattr(self, name), 1)
        for name in ("geometry_neighbors", "geometry_dim", "geometry_heads"):
            _check_int(name, getattr(self, name), 1)
        for name in ("geometry_groups", "interpolation_neighbors"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, "None or")
        if self.use_prompts and self.use_prior and self.num_prompts != self.top_k + 2:
            raise ValueError(
                f"`num_prompts` must be `top_k` + 2 = {self.top_k + 2} with the prior on (the query, the prior "
                f"and the {self.top_k} retrieved features are added to the prompts one for one), got "
                f"num_prompts={self.num_prompts}. Set num_prompts={self.top_k + 2}, or `use_prior=False`."
            )
        if self.prior_feature not in PRIOR_FEATURES:
            raise ValueError(
                f"`prior_feature` must be one of {list(PRIOR_FEATURES)} ('max': max over the group tokens, the "
                f"paper's; 'cls': the CLS token), got {self.prior_feature!r}."
            )
        if self.geometry_dim % self.geometry_heads:
            raise ValueError(
                f"`geometry_heads` ({self.geometry_heads}) must divide `geometry_dim` ({self.geometry_dim}); the "
                "paper uses 6 heads of width 3 (geometry_dim=18)."
            )
        for name in ("geometry_scale", "centre_scale", "mlp_adapter_scale"):
            setattr(self, name, _check_finite(name, getattr(self, name)))
        for name in ("prompt_dropout", "adapter_dropout"):
            setattr(self, name, _check_probability(name, getattr(self, name)))


@dataclass
class DAPTConfig(_PointBlockConfig):
    """Configuration of a :class:`DAPTModel`: DAPT's dynamic adapter, internal prompts and scale-shift factors.

    Args:
        target_modules (`Union[list[str], str]`):
            Blocks to wrap: a list of exact names or name endings, or a regex. Required.
        exclude_modules (`Optional[Union[list[str], str]]`):
            Modules not to wrap, with the same matching rules.
        bottleneck_dim (`int`):
            Width r of the dynamic adapter (``D -> r -> D``). Defaults to 64 (the paper's ScanObjectNN
            configs; 72 for ModelNet40).
        dynamic_scale (`bool`):
            Multiply the adapter's output by a per-token ``relu(w . LN(x) + b)``; False: by 1 (the ablation).
        internal_prompts (`bool`):
            Each adapted block but the last makes a prompt token that every later adapted block attends to.
        scale_shift (`bool`):
            Learnable per-channel scale and shift on the outputs of ``scale_shift_modules`` (the official
            code's ``tfts`` factors; they are counted in the paper's 1.1M).
        scale_shift_modules (`list[str]`):
            Submodules of each block whose outputs are scaled and shifted.
        dropout (`float`):
            Dropout inside the adapter. Defaults to 0 (0.2 in the paper's PB-T50-RS config).
        mlp_module (`str`):
            The MLP the adapter runs parallel to. Defaults to ``"mlp"``.
        num_prefix_tokens (`Optional[int]`):
            CLS tokens before the group tokens; the internal prompts are inserted after them.
        hidden_size (`Optional[int]`):
            Token width D; inferred from the block if unset.
        modules_to_save (`Optional[list[str]]`):
            Modules besides the adapters to train and save.
    """

    bottleneck_dim: int = field(default=64, metadata={"help": "Width r of the dynamic adapter."})
    dynamic_scale: bool = field(default=True, metadata={"help": "Per-token scale on the adapter's output."})
    internal_prompts: bool = field(
        default=True, metadata={"help": "Prompt tokens made by each block for the later blocks."}
    )
    scale_shift: bool = field(default=True, metadata={"help": "Scale-shift factors on block submodules."})
    scale_shift_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_SCALE_SHIFT_MODULES),
        metadata={"help": "Submodules of each block whose outputs are scaled and shifted."},
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout inside the adapter."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_common("DAPT")
        _check_int("bottleneck_dim", self.bottleneck_dim, 1)
        for name in ("dynamic_scale", "internal_prompts", "scale_shift"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        modules = self.scale_shift_modules
        if isinstance(modules, str) or not all(isinstance(m, str) and _is_module_path(m) for m in modules):
            raise ValueError(
                "`scale_shift_modules` must be a list of submodule names inside each block, like "
                f"{list(DEFAULT_SCALE_SHIFT_MODULES)}, got {modules!r}."
            )
        self.scale_shift_modules = list(modules)
        keys = [_slot_key(name) for name in self.scale_shift_modules]
        if len(set(keys)) != len(keys):
            raise ValueError(f"`scale_shift_modules` names a module twice: {self.scale_shift_modules!r}.")
        self.dropout = _check_probability("dropout", self.dropout)


# --- parameter counts --------------------------------------------------------------------------------------


def point_peft_parameter_count(
    hidden: int,
    num_blocks: int = 12,
    *,
    prompt_blocks: int = 6,
    num_prompts: int = 10,
    bottleneck_dim: int = 16,
    prior_bottleneck_dim: int = 8,
    geometry_dim: int = 18,
    use_prompts: bool = True,
    use_prior: bool = True,
    use_geometry: bool = True,
    use_mlp_adapter: bool = True,
) -> int:
    """Trainable parameters of Point-PEFT on ``num_blocks`` blocks of width ``hidden``, without the head.

    Per block a bottleneck adapter, the MLP adapter and the geometry BatchNorm; per prompted block the prompts
    and the prior's bottleneck; once, the geometry attention shared by the blocks. The paper's 0.6M counts
    the classification head too (and its official training also unfreezes the backbone's biases and norms).
    """

    def bottleneck(width: int) -> int:
        return 2 * hidden * width + width + hidden

    per_block = bottleneck(bottleneck_dim)
    per_block += bottleneck(bottleneck_dim) if use_mlp_adapter else 0
    per_block += 2 * hidden if use_geometry else 0
    prompted = min(prompt_blocks, num_blocks) if use_prompts else 0
    per_prompted = num_prompts * hidden + (bottleneck(prior_bottleneck_dim) if use_prior else 0)
    shared = 2 * hidden + 3 * hidden * geometry_dim + geometry_dim * hidden + hidden if use_geometry else 0
    return num_blocks * per_block + prompted * per_prompted + shared


def dapt_parameter_count(
    hidden: int,
    num_blocks: int = 12,
    *,
    bottleneck_dim: int = 64,
    mlp_hidden: int | None = None,
    dynamic_scale: bool = True,
    internal_prompts: bool = True,
    scale_shift: bool = True,
) -> int:
    """Trainable parameters of DAPT on ``num_blocks`` blocks of width ``hidden`` (MLP width ``mlp_hidden``,
    default ``4 * hidden``) with the default ``scale_shift_modules``, without the head.

    Per block: the adapter's LayerNorm, down and up projections, the dynamic scale ``Linear(D, 1)``, the
    scale-shift pairs (norm1 D, qkv 3D, proj D, norm2 D, fc1 4D, fc2 D); the prompt's scale-shift pair on
    every block but the last (the last block's prompt would reach no later block).
    """
    mlp_hidden = 4 * hidden if mlp_hidden is None else mlp_hidden
    per_block = 2 * hidden + 2 * hidden * bottleneck_dim + bottleneck_dim + hidden
    per_block += hidden + 1 if dynamic_scale else 0
    per_block += 2 * (hidden + 3 * hidden + hidden + hidden + mlp_hidden + hidden) if scale_shift else 0
    prompts = 2 * hidden * (num_blocks - 1) if internal_prompts else 0
    return num_blocks * per_block + prompts


# --- the point prior ---------------------------------------------------------------------------------------


def retrieve_point_prior(query: torch.Tensor, bank: torch.Tensor, top_k: int) -> torch.Tensor:
    """Point-PEFT's parameter-free retrieval: tokens ``[B, 2 + top_k, D]`` = ``[q, prior, f_1..f_K]``.

    ``query [B, D]`` is the frozen model's global feature of each input, ``bank [N, D]`` the L2-normalised
    training features. The ``top_k`` rows of highest cosine similarity are weighted by the softmax of their
    similarities into the prior.
    """
    if query.ndim != 2 or bank.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"`query` must be [B, D] and `bank` [N, D] with the same D, got {tuple(query.shape)} and "
            f"{tuple(bank.shape)}."
        )
    if not 1 <= top_k <= bank.shape[0]:
        raise ValueError(
            f"`top_k` must lie in [1, {bank.shape[0]}] (the bank's rows), got {top_k}. Fill the bank with at "
            "least `top_k` training samples, or lower `top_k`."
        )
    bank = bank.to(query.dtype)
    similarity = F.normalize(query, dim=-1) @ bank.T  # [B, N]
    values, index = similarity.topk(top_k, dim=-1)
    weights = torch.softmax(values, dim=-1)
    retrieved = bank[index]  # [B, K, D]
    prior = (weights[..., None] * retrieved).sum(dim=1, keepdim=True)
    return torch.cat([query[:, None], prior, retrieved], dim=1)


class _MemoryBank(nn.Module):
    """One adapter's bank ``features [N, D]`` (a persistent buffer, so peft saves it); ``N`` is 0 until it is
    filled, and loading a saved bank resizes the buffer to the saved one."""

    def __init__(self, width: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("features", torch.zeros(0, width, device=device, dtype=dtype), persistent=True)

    def fill(self, features: torch.Tensor) -> None:
        """Replace the bank with ``features [N, D]`` (kept on the bank's device and dtype)."""
        self.features = features.detach().to(self.features.device, self.features.dtype).clone()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "features")
        resize = isinstance(saved, torch.Tensor) and saved.ndim == 2 and saved.shape[1] == self.width
        if resize and saved.shape != self.features.shape:
            self.features = torch.empty(saved.shape, device=self.features.device, dtype=self.features.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"rows={self.features.shape[0]}, width={self.width}"


# --- what the layers of one tuner share during a forward ----------------------------------------------------


class _Ref:
    """Holds a module without registering it as a child (a layer's backbone is its ancestor)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module


@dataclass
class _Subgroups:
    centres: torch.Tensor  # the token centres [B, G, 3] they were computed for
    local_centres: torch.Tensor  # [B, S, 3]
    centre_index: torch.Tensor  # [B, S]
    neighbour_index: torch.Tensor  # [B, S, k]


class _ForwardState:
    """State the layers of one tuner share: the first layer of each adapter (its model-level tensors), the
    point prior and local groups of the current forward, DAPT's carried prompts, the frozen-pass flag."""

    def __init__(self) -> None:
        self.owners: dict[str, nn.Module] = {}
        self.frozen = False
        self.prior: dict[str, torch.Tensor] = {}
        self.prior_centres: torch.Tensor | None = None
        self.subgroups: dict[tuple[int, int], _Subgroups] = {}
        self.carried: dict[str, list[torch.Tensor]] = {}
        self.warned_empty_bank: set[str] = set()

    def local_groups(self, centres: torch.Tensor, groups: int, neighbours: int) -> _Subgroups:
        """FPS over the token centres + kNN tokens per local centre, computed once per forward."""
        cached = self.subgroups.get((groups, neighbours))
        if cached is not None and cached.centres is centres:
            return cached
        centre_index = farthest_point_sample(centres, groups)
        local_centres = index_points(centres, centre_index)
        neighbour_index = knn_group(centres, local_centres, neighbours)
        result = _Subgroups(centres, local_centres, centre_index, neighbour_index)
        self.subgroups[(groups, neighbours)] = result
        return result


# --- layers ------------------------------------------------------------------------------------------------


class _PointBlockLayer(nn.Module, BaseTunerLayer):
    """Wraps one transformer block of a point transformer (tokens in, tokens out)."""

    method = ""
    config_name = ""
    nonlinear_because = ""
    #: Containers of bare parameters (the others named with the method's prefix are ModuleDicts).
    _parameter_containers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: _PointBlockConfig,
        *,
        module_name: str,
        state: _ForwardState,
        index: int,
        backbone: nn.Module | None,
        model_prefix_tokens: int,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name or type(base_layer).__name__
        self.state = state
        self.backbone_ref = _Ref(backbone)
        self.model_prefix_tokens = model_prefix_tokens
        for name in (*self.adapter_layer_names, *self.other_param_names):
            if name in self._parameter_containers:
                setattr(self, name, nn.ParameterDict())
            elif name.startswith(self.prefix):
                setattr(self, name, nn.ModuleDict())
            else:
                setattr(self, name, {})
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, index=index)
        self.train(base_layer.training)  # new modules start in training mode; follow the wrapped block

    def update_layer(self, adapter_name: str, config: Any, index: int = 0) -> None:
        """Create (or re-create) the adapter ``adapter_name`` on this block from ``config``; ``index`` is the
        block's position among the adapter's blocks (0 for the first)."""
        base = self.get_base_layer()
        hidden = config.hidden_size or infer_hidden_size(base)
        if hidden is None:
            raise ValueError(
                f"Cannot infer the token width of block '{self.module_name}' ({type(base).__name__}): it has no "
                f"Linear, `hidden_size`/`embed_dim` attribute or LayerNorm inside. Set `hidden_size` in the "
                f"{self.config_name}."
            )
        if getattr(config, "use_mlp_adapter", True):
            _submodule(base, config.mlp_module, self.module_name, "`mlp_module`")
        device, dtype = _device_and_dtype(base)
        self.hidden_size[adapter_name] = hidden
        prefix = config.num_prefix_tokens
        self.num_prefix_tokens[adapter_name] = self.model_prefix_tokens if prefix is None else prefix
        self.block_index[adapter_name] = index
        self.settings[adapter_name] = config
        if index == 0:
            self.state.owners[adapter_name] = self
        self._build(adapter_name, config, hidden, device, dtype)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _build(self, adapter_name: str, config: Any, hidden: int, device: Any, dtype: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement `_build`.")

    def _put(self, container: str, adapter_name: str, value: Any) -> None:
        """Set ``container[adapter_name]`` to ``value``, or remove the entry when ``value`` is None."""
        holder = getattr(self, container)
        if value is None:
            if adapter_name in holder:
                del holder[adapter_name]
        else:
            holder[adapter_name] = value

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete ``adapter_name`` from this block, with what the forward state keeps for it."""
        super().delete_adapter(adapter_name)
        if self.state.owners.get(adapter_name) is self:
            del self.state.owners[adapter_name]
            self.state.prior.pop(adapter_name, None)
            self.state.carried.pop(adapter_name, None)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Refuse: a nonlinear adapter has no weight-space equivalent."""
        raise ValueError(nonlinear_merge_error(self.method, self.nonlinear_because))

    def unmerge(self) -> None:
        """Nothing is ever merged, so there is nothing to undo."""

    def _adapter_to_apply(self) -> str | None:
        active = [name for name in self.active_adapters if name in self.settings]
        if self.disable_adapters or self.state.frozen or not active:
            return None
        if len(active) > 1:
            raise ValueError(
                f"{self.method} applies one adapter at a time, but {active} are active on block "
                f"'{self.module_name}'. Call `set_adapter(name)` with one of them."
            )
        return active[0]

    def _tokens(
        self, name: str, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
        """The block's input tokens and a function that calls the block with new ones."""
        if args:
            x = args[0]

            def call(tokens: torch.Tensor) -> Any:
                return self.base_layer(tokens, *args[1:], **kwargs)

        elif "x" in kwargs:
            x = kwargs["x"]

            def call(tokens: torch.Tensor) -> Any:
                return self.base_layer(**{**kwargs, "x": tokens})

        else:
            raise ValueError(
                f"{self.method} reads the tokens from the first positional argument (or `x=`) of block "
                f"'{self.module_name}', but it was called with {sorted(kwargs)}."
            )
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.method} adapters need block '{self.module_name}' to take tokens [B, N, D], got {shape}. "
                "Target the transformer blocks of a point transformer."
            )
        if x.shape[-1] != self.hidden_size[name]:
            raise ValueError(
                f"Adapter '{name}' on block '{self.module_name}' was built for {self.hidden_size[name]} features, "
                f"but the block got tokens of shape {tuple(x.shape)}. Set `hidden_size` in the {self.config_name} "
                "to the token width."
            )
        if x.shape[1] <= self.num_prefix_tokens[name]:
            raise ValueError(
                f"Block '{self.module_name}' got {x.shape[1]} tokens, no more than the "
                f"{self.num_prefix_tokens[name]} prefix (CLS) tokens; check `num_prefix_tokens`."
            )
        return x, call

    def _output(self, output: Any, expected: torch.Size) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.shape != expected:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"{self.method} adapters need block '{self.module_name}' to return tokens of its input's shape "
                f"{tuple(expected)}, got {got}."
            )
        return output

    def __repr__(self) -> str:
        return f"{self.prefix[:-1]}." + super().__repr__()


class PointPEFTLayer(_PointBlockLayer):
    """Point-PEFT around one block: prompts (+ point prior), the MLP adapter, the geometry-aware propagation and
    a bottleneck adapter (see :class:`PointPEFTConfig`). The adapter's first block also holds its memory bank
    and the geometry attention all its blocks share."""

    prefix = "pointpeft_"
    method = "Point-PEFT"
    config_name = "PointPEFTConfig"
    nonlinear_because = "its bottlenecks, attention and max-pooling are nonlinear and its prompts add tokens"
    adapter_layer_names = (
        "pointpeft_down",
        "pointpeft_up",
        "pointpeft_mlp_down",
        "pointpeft_mlp_up",
        "pointpeft_prompts",
        "pointpeft_prior_down",
        "pointpeft_prior_up",
        "pointpeft_geometry_bn",
        "pointpeft_geometry_norm",
        "pointpeft_geometry_qkv",
        "pointpeft_geometry_proj",
    )
    other_param_names = (
        "pointpeft_memory_bank",
        "pointpeft_dropout",
        "pointpeft_prompt_dropout",
        "settings",
        "hidden_size",
        "num_prefix_tokens",
        "block_index",
    )
    _parameter_containers = ("pointpeft_prompts",)

    def _build(
        self, adapter_name: str, config: PointPEFTConfig, hidden: int, device: Any, dtype: Any
    ) -> None:
        index = self.block_index[adapter_name]
        if (config.use_geometry or config.use_prior) and self.backbone_ref.module is None:
            raise ValueError(
                f"Point-PEFT's geometry adapter and point prior read the backbone's group centres "
                f"(`last_centres`, set by verticals' PointTransformer in every forward), but no module enclosing "
                f"'{self.module_name}' has a `last_centres` attribute. Wrap the blocks of a PointTransformer, or "
                "set `use_geometry=False` and `use_prior=False`."
            )
        down, up = _bottleneck(hidden, config.bottleneck_dim, device, dtype)
        self._put("pointpeft_down", adapter_name, down)
        self._put("pointpeft_up", adapter_name, up)
        mlp = _bottleneck(hidden, config.bottleneck_dim, device, dtype) if config.use_mlp_adapter else None
        self._put("pointpeft_mlp_down", adapter_name, mlp[0] if mlp else None)
        self._put("pointpeft_mlp_up", adapter_name, mlp[1] if mlp else None)

        prompted = config.use_prompts and index < config.prompt_blocks
        prompts = None
        if prompted:
            prompts = nn.Parameter(torch.empty(config.num_prompts, hidden, device=device, dtype=dtype))
            if not prompts.is_meta:
                nn.init.trunc_normal_(prompts, std=0.02)
        self._put("pointpeft_prompts", adapter_name, prompts)
        with_prior = prompted and config.use_prior
        prior = (
            _bottleneck(hidden, config.prior_bottleneck_dim, device, dtype) if with_prior else (None, None)
        )
        self._put("pointpeft_prior_down", adapter_name, prior[0])
        self._put("pointpeft_prior_up", adapter_name, prior[1])
        bank = _MemoryBank(hidden, device, dtype) if with_prior and index == 0 else None
        if bank is not None and not isinstance(getattr(self.backbone_ref.module, "grouper", None), nn.Module):
            raise ValueError(
                "Point-PEFT's point prior needs the backbone's `grouper` module (the first to see the raw cloud: "
                "the prior's query is computed there), but the backbone enclosing "
                f"'{self.module_name}' has none. Set `use_prior=False`."
            )
        self._put("pointpeft_memory_bank", adapter_name, bank)

        geometry = config.use_geometry
        norm = nn.BatchNorm1d(hidden, device=device, dtype=dtype) if geometry else None
        self._put("pointpeft_geometry_bn", adapter_name, norm)
        shared = geometry and index == 0
        width = config.geometry_dim
        layer_norm = nn.LayerNorm(hidden, device=device, dtype=dtype) if shared else None
        self._put("pointpeft_geometry_norm", adapter_name, layer_norm)
        qkv = nn.Linear(hidden, 3 * width, bias=False, device=device, dtype=dtype) if shared else None
        self._put("pointpeft_geometry_qkv", adapter_name, qkv)
        proj = nn.Linear(width, hidden, device=device, dtype=dtype) if shared else None
        self._put("pointpeft_geometry_proj", adapter_name, proj)

        dropout = nn.Dropout(config.adapter_dropout) if config.adapter_dropout else nn.Identity()
        self.pointpeft_dropout[adapter_name] = dropout.train(self.training)
        prompt_dropout = nn.Dropout(config.prompt_dropout) if config.prompt_dropout else nn.Identity()
        self.pointpeft_prompt_dropout[adapter_name] = prompt_dropout.train(self.training)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        name = self._adapter_to_apply()
        if name is None:
            return self.base_layer(*args, **kwargs)
        config: PointPEFTConfig = self.settings[name]
        x, call = self._tokens(name, args, kwargs)
        prefix = self.num_prefix_tokens[name]
        prompts = self._prompts(name, x) if name in self.pointpeft_prompts else None
        count = 0
        if prompts is not None:
            count = prompts.shape[1]
            x = torch.cat([x[:, :prefix], prompts.to(x.dtype), x[:, prefix:]], dim=1)
        hooks = {}
        if name in self.pointpeft_mlp_down:
            hooks[config.mlp_module] = lambda module, inputs, output: (
                output + config.mlp_adapter_scale * (self._bottleneck_delta(name, "pointpeft_mlp_", output))
            )
        with _output_hooks(self.base_layer, hooks, self.module_name):
            y = self._output(call(x), x.shape)
        head, tokens = y[:, :prefix], y[:, prefix + count :]
        if name in self.pointpeft_geometry_bn:
            tokens = self._geometry(name, config, tokens)
        y = torch.cat([head, tokens], dim=1) if prefix else tokens
        return y + self._bottleneck_delta(name, "pointpeft_", y)

    def _bottleneck_delta(self, name: str, part: str, x: torch.Tensor) -> torch.Tensor:
        down = getattr(self, part + "down")[name]
        z = _quick_gelu(down(self._cast_input_dtype(x, down.weight.dtype)))
        return getattr(self, part + "up")[name](self.pointpeft_dropout[name](z)).to(x.dtype)

    def _prompts(self, name: str, x: torch.Tensor) -> torch.Tensor:
        prompts = self.pointpeft_prompt_dropout[name](self.pointpeft_prompts[name])
        prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
        if name not in self.pointpeft_prior_down:
            return prompts
        prior = self._prior_tokens(name, x.shape[0])
        if prior is None:
            return prompts
        prior = prior.to(prompts.dtype)
        return prompts + prior + self._bottleneck_delta(name, "pointpeft_prior_", prior)

    def _prior_tokens(self, name: str, batch: int) -> torch.Tensor | None:
        owner = self.state.owners[name]
        bank = owner.pointpeft_memory_bank[name].features
        if bank.shape[0] == 0:
            if name not in self.state.warned_empty_bank:
                self.state.warned_empty_bank.add(name)
                warnings.warn(
                    f"Point-PEFT adapter '{name}': the memory bank is empty, so the prompts get no point prior. "
                    "Call `prepare_from_data(training inputs)` on the tuner (verticals' tasks do at fit start).",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        prior = self.state.prior.get(name)
        centres = getattr(self.backbone_ref.module, "last_centres", None)
        fresh = (
            prior is not None
            and prior.shape[0] == batch
            and isinstance(centres, torch.Tensor)
            and self.state.prior_centres is not None
            and self.state.prior_centres.shape == centres.shape
            and torch.equal(self.state.prior_centres, centres)
        )
        if not fresh:
            raise RuntimeError(
                f"Point-PEFT adapter '{name}' on block '{self.module_name}' has no point prior for this forward: "
                "the prior is computed when the backbone's `grouper` sees the cloud, and it did not in this "
                "forward (the blocks were called on cached tokens?). Run the backbone on the cloud, or set "
                "`use_prior=False`."
            )
        return prior

    def _geometry(self, name: str, config: PointPEFTConfig, tokens: torch.Tensor) -> torch.Tensor:
        centres = _current_centres(self.backbone_ref.module, tokens, self.module_name)
        count = tokens.shape[1]
        groups = config.geometry_groups or max(1, count // 2)
        if groups > count or config.geometry_neighbors > count:
            raise ValueError(
                f"Point-PEFT on block '{self.module_name}': {count} group tokens cannot form "
                f"`geometry_groups`={groups} local groups of `geometry_neighbors`={config.geometry_neighbors} "
                f"tokens; set both to at most {count}."
            )
        local = self.state.local_groups(centres, groups, config.geometry_neighbors)
        grouped = index_points(tokens, local.neighbour_index)  # [B, S, k, D]
        centre_tokens = index_points(tokens, local.centre_index)  # [B, S, D]
        grouped = grouped + self.state.owners[name]._local_attention(name, config, grouped)
        pooled = grouped.max(dim=2).values  # [B, S, D]
        pooled = self.pointpeft_geometry_bn[name](pooled.transpose(1, 2)).transpose(1, 2)
        pooled = F.gelu(pooled) + config.centre_scale * centre_tokens
        neighbours = config.interpolation_neighbors or groups
        spread = inverse_distance_interpolate(centres, local.local_centres, pooled, k=neighbours)
        return tokens + config.geometry_scale * spread.to(tokens.dtype)

    def _local_attention(self, name: str, config: PointPEFTConfig, grouped: torch.Tensor) -> torch.Tensor:
        """The attention inside each local group (on the adapter's first block: all its blocks share it)."""
        batch, groups, size, _ = grouped.shape
        heads, width = config.geometry_heads, config.geometry_dim
        h = self.pointpeft_geometry_norm[name](grouped)
        qkv = self.pointpeft_geometry_qkv[name](h).reshape(batch * groups, size, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        # The official code scales by the attention's full width, not the head width.
        mixed = F.scaled_dot_product_attention(q, k, v, scale=width**-0.5)
        mixed = mixed.transpose(1, 2).reshape(batch, groups, size, width)
        return self.pointpeft_geometry_proj[name](mixed)


class DAPTLayer(_PointBlockLayer):
    """DAPT around one block: the dynamic adapter parallel to the MLP, scale-shift factors on the block's
    submodules and an internal prompt for the later blocks (see :class:`DAPTConfig`)."""

    prefix = "dapt_"
    method = "DAPT"
    config_name = "DAPTConfig"
    nonlinear_because = "its adapter and dynamic scale are nonlinear and its internal prompts add tokens"
    adapter_layer_names = (
        "dapt_norm",
        "dapt_scale",
        "dapt_down",
        "dapt_up",
        "dapt_ssf_scale",
        "dapt_ssf_shift",
        "dapt_prompt_scale",
        "dapt_prompt_shift",
    )
    other_param_names = ("dapt_dropout", "settings", "hidden_size", "num_prefix_tokens", "block_index")
    _parameter_containers = ("dapt_prompt_scale", "dapt_prompt_shift")

    def _build(self, adapter_name: str, config: DAPTConfig, hidden: int, device: Any, dtype: Any) -> None:
        base = self.get_base_layer()
        self._put("dapt_norm", adapter_name, nn.LayerNorm(hidden, device=device, dtype=dtype))
        scale = None
        if config.dynamic_scale:
            scale = nn.Linear(hidden, 1, device=device, dtype=dtype)
            if not scale.weight.is_meta:
                nn.init.zeros_(scale.bias)
        self._put("dapt_scale", adapter_name, scale)
        down, up = _bottleneck(hidden, config.bottleneck_dim, device, dtype)
        self._put("dapt_down", adapter_name, down)
        self._put("dapt_up", adapter_name, up)
        scales = shifts = None
        if config.scale_shift:
            scales, shifts = nn.ParameterDict(), nn.ParameterDict()
            for path in config.scale_shift_modules:
                width = _output_width(_submodule(base, path, self.module_name, "`scale_shift_modules` entry"))
                if width is None:
                    raise ValueError(
                        f"DAPT cannot tell the output width of '{path}' in block '{self.module_name}' (it is not a "
                        "Linear or a LayerNorm); leave it out of `scale_shift_modules`."
                    )
                scales[_slot_key(path)] = nn.Parameter(torch.ones(width, device=device, dtype=dtype))
                shifts[_slot_key(path)] = nn.Parameter(torch.zeros(width, device=device, dtype=dtype))
        self._put("dapt_ssf_scale", adapter_name, scales)
        self._put("dapt_ssf_shift", adapter_name, shifts)
        prompt = config.internal_prompts
        self._put(
            "dapt_prompt_scale",
            adapter_name,
            nn.Parameter(torch.ones(hidden, device=device, dtype=dtype)) if prompt else None,
        )
        self._put(
            "dapt_prompt_shift",
            adapter_name,
            nn.Parameter(torch.zeros(hidden, device=device, dtype=dtype)) if prompt else None,
        )
        dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.dapt_dropout[adapter_name] = dropout.train(self.training)

    def drop_prompt(self, adapter_name: str) -> None:
        """Remove this block's prompt factors: no later adapted block would read its prompt."""
        self._put("dapt_prompt_scale", adapter_name, None)
        self._put("dapt_prompt_shift", adapter_name, None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        name = self._adapter_to_apply()
        if name is None:
            return self.base_layer(*args, **kwargs)
        config: DAPTConfig = self.settings[name]
        x, call = self._tokens(name, args, kwargs)
        prefix = self.num_prefix_tokens[name]
        if self.block_index[name] == 0:
            self.state.carried[name] = []
        carried = self.state.carried.get(name, []) if config.internal_prompts else []
        if carried and carried[0].shape[0] != x.shape[0]:
            raise RuntimeError(
                f"DAPT block '{self.module_name}' got a batch of {x.shape[0]} but the internal prompts of the "
                f"earlier blocks are for {carried[0].shape[0]}: the adapted blocks must run in order, from the "
                "first, in every forward."
            )
        if carried:
            x = torch.cat([x[:, :prefix], *[p.to(x.dtype) for p in carried], x[:, prefix:]], dim=1)
        captured: dict[str, torch.Tensor] = {}
        hooks: dict[str, Callable[..., Any]] = {}
        if name in self.dapt_ssf_scale:
            for path in config.scale_shift_modules:
                key = _slot_key(path)
                hooks[path] = self._scale_shift_hook(name, key)

        def parallel_adapter(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            delta = self._adapter(name, inputs[0])
            captured["adapter"] = delta
            return output + delta.to(output.dtype)

        previous = hooks.get(config.mlp_module)
        if previous is None:
            hooks[config.mlp_module] = parallel_adapter
        else:  # the MLP itself is scaled and shifted too: adapt its scaled output
            hooks[config.mlp_module] = lambda m, i, o: parallel_adapter(m, i, previous(m, i, o))
        with _output_hooks(self.base_layer, hooks, self.module_name):
            y = self._output(call(x), x.shape)
        if name in self.dapt_prompt_scale:
            pooled = F.gelu(captured["adapter"]).mean(dim=1, keepdim=True)  # [B, 1, D]
            prompt = pooled * self.dapt_prompt_scale[name] + self.dapt_prompt_shift[name]
            self.state.carried[name] = [prompt, *carried]
        count = len(carried)
        return torch.cat([y[:, :prefix], y[:, prefix + count :]], dim=1) if count else y

    def _scale_shift_hook(self, name: str, key: str) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output * self.dapt_ssf_scale[name][key] + self.dapt_ssf_shift[name][key]

        return hook

    def _adapter(self, name: str, x: torch.Tensor) -> torch.Tensor:
        down = self.dapt_down[name]
        h = self.dapt_norm[name](self._cast_input_dtype(x, down.weight.dtype))
        z = self.dapt_up[name](self.dapt_dropout[name](F.gelu(down(h))))
        if name in self.dapt_scale:
            z = z * F.relu(self.dapt_scale[name](h))
        return z


# --- tuners ------------------------------------------------------------------------------------------------


class _PointBlockTuner(BlockAdapterTuner):
    """Wraps the targeted blocks in order and gives their layers one shared :class:`_ForwardState`."""

    tuner_layer_cls: type[_PointBlockLayer]
    target_hint = "target_modules=[f'blocks.{i}' for i in range(12)] or a regex like r'.*blocks\\.\\d+'"

    @property
    def point_state(self) -> _ForwardState:
        state = self.__dict__.get("_point_state")
        if state is None:
            state = _ForwardState()
            self.__dict__["_point_state"] = state
        return state

    def merge_error(self) -> str:
        layer = self.tuner_layer_cls
        return nonlinear_merge_error(layer.method, layer.nonlinear_because)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("_next_index", {})[adapter_name] = 0
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _create_and_replace(
        self,
        peft_config: _PointBlockConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        counters = self.__dict__.setdefault("_next_index", {})
        index = counters.get(adapter_name, 0)
        counters[adapter_name] = index + 1
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config, index=index)
            return
        backbone = _nearest_ancestor(self.model, current_key, lambda m: hasattr(m, "last_centres"))
        holder = _nearest_ancestor(
            self.model, current_key, lambda m: _is_count(getattr(m, "num_prefix_tokens", None))
        )
        new_module = self.tuner_layer_cls(
            target,
            adapter_name,
            peft_config,
            module_name=current_key,
            state=self.point_state,
            index=index,
            backbone=backbone,
            model_prefix_tokens=holder.num_prefix_tokens if holder is not None else 0,
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _layers(self, adapter_name: str) -> list[_PointBlockLayer]:
        """The adapter's layers, first block first."""
        layers = [
            m
            for m in self.model.modules()
            if isinstance(m, self.tuner_layer_cls) and adapter_name in m.settings
        ]
        return sorted(layers, key=lambda layer: layer.block_index[adapter_name])


class PointPEFTModel(_PointBlockTuner):
    """Adds Point-PEFT (point-prior prompts, geometry-aware and bottleneck adapters) to a point transformer.

    Built with ``peft.get_peft_model(model, PointPEFTConfig(target_modules=[...]))``; the memory bank is
    filled by :meth:`prepare_from_data` (verticals' tasks call it once at fit start) and saved with the
    adapter by ``save_pretrained``. ``merge_and_unload`` raises (nonlinear); ``unload()`` returns the base
    model.

    Example:

        ```py
        >>> import verticals.domains.pointcloud.adapters  # registers "point_peft" and "dapt"
        >>> from peft import get_peft_model
        >>> model = get_peft_model(classifier, PointPEFTConfig(target_modules=r".*blocks\\.\\d+",
        ...                                                    modules_to_save=["head"]))
        >>> model.base_model.prepare_from_data(batch["x"] for batch in train_loader)
        ```
    """

    prefix: str = "pointpeft_"
    tuner_layer_cls = PointPEFTLayer
    adapter_noun = "Point-PEFT adapters"

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        if self.__dict__.get("_prior_hook") is None and adapter_name in self._prior_owners():
            grouper = self.point_state.owners[adapter_name].backbone_ref.module.grouper
            self.__dict__["_prior_hook"] = grouper.register_forward_pre_hook(self._compute_prior)
            # The frozen pass, as a module of its own: frozen-prefix caching replays it per cloud.
            self.pointpeft_prior_query = FrozenBranch(self._prior_query, "Point-PEFT's point-prior query")

    def _unload_and_optionally_merge(self, *args: Any, **kwargs: Any) -> nn.Module:
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        hook = self.__dict__.pop("_prior_hook", None)
        if hook is not None:
            hook.remove()
            del self.pointpeft_prior_query
        return model

    def _prior_owners(self) -> dict[str, PointPEFTLayer]:
        """``{adapter: its first layer}`` of the adapters with a memory bank (prompts with the prior on)."""
        return {
            name: owner
            for name, owner in self.point_state.owners.items()
            if isinstance(owner, PointPEFTLayer) and name in owner.pointpeft_memory_bank
        }

    def _prior_adapters(self) -> list[str]:
        """Active adapters whose prompts take a prior from a filled bank."""
        owners = self._prior_owners()
        return [
            name
            for name in self.active_adapters
            if name in owners
            and not owners[name].disable_adapters
            and owners[name].pointpeft_memory_bank[name].features.shape[0] > 0
        ]

    def _compute_prior(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the backbone's grouper: the point prior of this cloud, for every layer."""
        state = self.point_state
        if state.frozen:
            return
        state.prior.clear()
        state.prior_centres = None
        names = self._prior_adapters()
        if not names or not args or not isinstance(args[0], torch.Tensor):
            return
        kinds = self._query_kinds(names)
        features, state.prior_centres = self.pointpeft_prior_query(args[0])
        for name in names:
            layer = state.owners[name]
            config: PointPEFTConfig = layer.settings[name]
            query = features[:, kinds.index((config.prior_feature, layer.num_prefix_tokens[name]))]
            bank = layer.pointpeft_memory_bank[name].features
            state.prior[name] = retrieve_point_prior(query.to(bank.dtype), bank, config.top_k)

    def _query_kinds(self, names: list[str]) -> list[tuple[str, int]]:
        """The distinct (global feature, prefix tokens) pairs the adapters ``names`` query with, in a fixed order."""
        owners = self.point_state.owners
        return sorted({(owners[n].settings[n].prior_feature, owners[n].num_prefix_tokens[n]) for n in names})

    def _prior_query(
        self, cloud: torch.Tensor, names: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's global features ``[B, kinds, D]`` of ``cloud`` (one per :meth:`_query_kinds` of
        ``names``, default: the adapters taking a prior now) and its group centres ``[B, G, 3]``: what the point
        prior retrieves with, and what the memory bank holds (it depends on the cloud alone)."""
        names = self._prior_adapters() if names is None else names
        backbone = self.point_state.owners[names[0]].backbone_ref.module
        with self._frozen_pass(backbone):
            tokens = _backbone_tokens(backbone, cloud)
        features = [_global_feature(tokens, prefix, kind) for kind, prefix in self._query_kinds(names)]
        centres = getattr(backbone, "last_centres", None)
        if not isinstance(centres, torch.Tensor):
            raise RuntimeError(
                "Point-PEFT's point prior reads the backbone's group centres (`last_centres`), which its forward did "
                f"not set (got {centres!r}). Use verticals' PointTransformer, or set `use_prior=False`."
            )
        return torch.stack(features, dim=1), centres

    @contextlib.contextmanager
    def _frozen_pass(self, backbone: nn.Module) -> Iterator[None]:
        """The backbone without this tuner's adapters, in eval mode (its BatchNorm statistics untouched)."""
        state = self.point_state
        modes = [(m, m.training) for m in backbone.modules()]
        state.frozen = True
        backbone.eval()
        try:
            yield
        finally:
            state.frozen = False
            for m, training in modes:
                m.training = training

    def prepare_from_data(self, inputs: Iterable[torch.Tensor]) -> None:
        """Fill the memory bank of every active adapter that uses the point prior from ``inputs`` (batches of
        training clouds ``[B, N, 3]``): the L2-normalised global features of the frozen model, one row per
        cloud. Adapters without the prior, and inactive ones, are left as they are."""
        owners = {name: owner for name, owner in self._prior_owners().items() if name in self.active_adapters}
        names = list(owners)
        if not names:
            return
        kinds = self._query_kinds(names)
        features: list[torch.Tensor] = []
        with torch.no_grad():
            for number, cloud in enumerate(inputs):
                if not isinstance(cloud, torch.Tensor) or cloud.ndim != 3:
                    got = tuple(cloud.shape) if isinstance(cloud, torch.Tensor) else type(cloud).__name__
                    raise ValueError(
                        f"prepare_from_data needs batches of clouds [B, N, 3]; batch {number} is {got}."
                    )
                features.append(self._prior_query(cloud, names)[0])
        if not features:
            raise ValueError(
                "prepare_from_data got no training inputs: the memory bank needs the training clouds (an empty "
                "training split or loader?)."
            )
        every = torch.cat(features)
        for name in names:
            config: PointPEFTConfig = owners[name].settings[name]
            kind = kinds.index((config.prior_feature, owners[name].num_prefix_tokens[name]))
            bank = F.normalize(every[:, kind], dim=-1)
            if bank.shape[0] < config.top_k:
                raise ValueError(
                    f"Point-PEFT adapter '{name}' retrieves top_k={config.top_k} training samples per input, but "
                    f"the training data has only {bank.shape[0]}. Lower `top_k` (and `num_prompts` = top_k + 2)."
                )
            owners[name].pointpeft_memory_bank[name].fill(bank)
            self.point_state.warned_empty_bank.discard(name)


class DAPTModel(_PointBlockTuner):
    """Adds DAPT (dynamic adapters, internal prompts, scale-shift factors) to the blocks of a point transformer.

    Built with ``peft.get_peft_model(model, DAPTConfig(target_modules=[...]))``; saved and reloaded with peft's
    ``save_pretrained`` / ``PeftModel.from_pretrained``. ``merge_and_unload`` raises; ``unload()`` returns the
    base model.
    """

    prefix: str = "dapt_"
    tuner_layer_cls = DAPTLayer
    adapter_noun = "DAPT adapters"

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        layers = self._layers(adapter_name)
        if layers:
            layers[-1].drop_prompt(adapter_name)


register_method(
    name="point_peft", config_cls=PointPEFTConfig, model_cls=PointPEFTModel, prefix=PointPEFTModel.prefix
)
register_method(name="dapt", config_cls=DAPTConfig, model_cls=DAPTModel, prefix=DAPTModel.prefix)


# --- helpers -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_hooks(block: nn.Module, hooks: dict[str, Callable[..., Any]], block_name: str) -> Iterator[None]:
    """Forward hooks on submodules of ``block`` for one call only (removed after it, even on an error)."""
    handles = []
    try:
        for path, hook in hooks.items():
            handles.append(_submodule(block, path, block_name, "submodule").register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _submodule(block: nn.Module, path: str, block_name: str, what: str) -> nn.Module:
    try:
        return block.get_submodule(path)
    except AttributeError:
        children = [name for name, _ in block.named_modules() if name]
        shown = children[:16] + (["..."] if len(children) > 16 else [])
        raise ValueError(
            f"{what} '{path}' is not a submodule of block '{block_name}' ({type(block).__name__}); it has {shown}."
        ) from None


def _output_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape:
        return int(shape[-1])
    return None


def _nearest_ancestor(
    model: nn.Module, module_name: str, wanted: Callable[[nn.Module], bool]
) -> nn.Module | None:
    """The nearest module enclosing ``module_name`` in ``model`` for which ``wanted`` holds."""
    parts = module_name.split(".") if module_name else []
    for depth in range(len(parts) - 1, -1, -1):
        try:
            ancestor = model.get_submodule(".".join(parts[:depth]))
        except AttributeError:
            continue
        if wanted(ancestor):
            return ancestor
    return None


def _current_centres(backbone: nn.Module | None, tokens: torch.Tensor, block_name: str) -> torch.Tensor:
    centres = getattr(backbone, "last_centres", None)
    if not isinstance(centres, torch.Tensor):
        raise RuntimeError(
            f"Point-PEFT on block '{block_name}' reads the group centres from the backbone's `last_centres`, "
            f"which is {centres!r}: run the backbone on a cloud (not its blocks on tokens) so it sets them."
        )
    if centres.ndim != 3 or centres.shape[:2] != tokens.shape[:2]:
        raise ValueError(
            f"Point-PEFT on block '{block_name}': the backbone's `last_centres` {tuple(centres.shape)} must be "
            f"[B, G, 3] with one centre per group token, but the block returned {tuple(tokens.shape[:2])} (batch, "
            "group tokens); check `num_prefix_tokens`."
        )
    return centres.to(torch.float32) if centres.dtype in (torch.float16, torch.bfloat16) else centres


def _backbone_tokens(backbone: nn.Module, cloud: torch.Tensor) -> torch.Tensor:
    """All output tokens ``[B, p + G, D]`` of the backbone for ``cloud`` (``forward_tokens`` if it has one)."""
    forward_tokens = getattr(backbone, "forward_tokens", None)
    output = forward_tokens(cloud) if callable(forward_tokens) else backbone(cloud)
    tokens = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise ValueError(
            f"Point-PEFT's point prior needs the backbone ({type(backbone).__name__}) to return tokens [B, N, D] "
            "from `forward_tokens(cloud)` (or its forward, first output)."
        )
    return tokens


def _global_feature(tokens: torch.Tensor, prefix: int, kind: str) -> torch.Tensor:
    if kind == "cls":
        if prefix < 1:
            raise ValueError(
                "`prior_feature='cls'` needs a CLS token, but the model has no prefix tokens; use 'max'."
            )
        return tokens[:, 0]
    return tokens[:, prefix:].max(dim=1).values


def _bottleneck(hidden: int, width: int, device: Any, dtype: Any) -> tuple[nn.Linear, nn.Linear]:
    """``Linear(hidden, width)`` and a zero ``Linear(width, hidden)``: the adapter adds nothing at first."""
    down = nn.Linear(hidden, width, device=device, dtype=dtype)
    up = nn.Linear(width, hidden, device=device, dtype=dtype)
    if not up.weight.is_meta:  # under low_cpu_mem_usage the weights come from a checkpoint instead
        with torch.no_grad():
            down.bias.zero_()
            up.weight.zero_()
            up.bias.zero_()
    return down, up


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The official adapters' activation, ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def _device_and_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _slot_key(path: str) -> str:
    """A ParameterDict key for a dotted submodule path (``attn.qkv`` -> ``attn_qkv``)."""
    return path.replace(".", "_")


def _is_module_path(value: str) -> bool:
    return bool(value) and all(part.isidentifier() or part.isdigit() for part in value.split("."))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_int(name: str, value: object, minimum: int, alternatives: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        expected = f"an integer >= {minimum}" if minimum else "a non-negative integer"
        raise ValueError(
            f"`{name}` must be {alternatives + ' ' if alternatives else ''}{expected}, got {value!r}."
        )


def _check_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")
    return float(value)
