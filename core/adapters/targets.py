"""Target presets: turn ``attention`` / ``qv`` / ``mlp`` / ``all-linear`` / a regex into anchored module names.

peft matches ``target_modules`` entries on name *endings*, so a bare ``proj`` also catches timm's
``patch_embed.proj`` (a Conv2d) and ``dense`` catches BERT's ``pooler.dense``.  Presets are therefore
resolved here, per backbone family (:mod:`verticals.core.adapters.families`), to the full names of the
modules they mean.  A preset means the same on every family:

- ``attention``: the attention projections; ``qv``: the query and value projections only (a family that
  fuses q, k and v has no ``qv``, and says so); ``mlp``: the feed-forward layers; ``blocks``: whole blocks.
- ``all-linear``: every linear map (``nn.Linear``, 1x1 convolutions, ``nn.MultiheadAttention``) except a
  patch embedding or stem, a pooler, or a classifier head.
- No preset takes a grouped or depthwise convolution (peft refuses ranks that are not a multiple of the
  groups); ``layernorm`` is every ``nn.LayerNorm`` of the model.
- A family may add its own presets (``clip_qkv``, ``pointwise_convs``); a preset that cannot apply is an
  error that says why and lists the presets and module names there are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from verticals.core.adapters.families import (
    STANDARD_PRESETS,
    BackboneFamily,
    detect_families,
    detect_family,
    family_roots,
    registered_families,
)

__all__ = [
    "ADAPTABLE_TYPES",
    "PRESETS",
    "adaptable_module_names",
    "detect_families",
    "detect_family",
    "resolve_targets",
    "summarise_names",
]

# Layer types peft can wrap with LoRA-like methods.
ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.MultiheadAttention,
)
PRESETS = (*STANDARD_PRESETS, "layernorm")
_LEAF_PRESETS = ("attention", "qv", "mlp", "all-linear")

_GENERIC_ATTENTION = re.compile(
    r"(?:.*\.)?(?:q|k|v|o|query|key|value|qkv|q_proj|k_proj|v_proj|o_proj|out_proj|to_q|to_k|to_v|c_attn)"
    r"|.*(?:attn|attention)\.\w+"
)
_GENERIC_QV = re.compile(r"(?:.*\.)?(?:q|v|query|value|q_proj|v_proj|to_q|to_v|wq|wv)")
_FUSED_QKV = re.compile(r"(?:.*\.)?(?:qkv|in_proj|c_attn|query_key_value|wqkv|Wqkv|to_qkv)")
_GENERIC_MLP = re.compile(r".*(?:mlp|ffn|feed_forward|feedforward)\.\w+|(?:.*\.)?(?:fc1|fc2|w1|w2|w3)")
# Name parts that mark a module no standard preset adapts: patch embeddings / stems, poolers, heads.
_EMBEDDING_PARTS = {"patch_embed", "patch_embedding", "patch_embeddings", "stem", "conv_stem"}
_POOLER_PARTS = {"pooler", "pool", "attn_pool", "attnpool", "global_pool"}
_HEAD_PARTS = {
    "head",
    "heads",
    "classifier",
    "classification_head",
    "lm_head",
    "proj_out",
    "fc_out",
    "output_projection",
}


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Names of the modules a LoRA-like method can wrap (Linear, Conv, Embedding, MultiheadAttention).

    Args:
        model: any module; e.g. to list what a regex or list of ``targets`` could name.
    """
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, ADAPTABLE_TYPES) and not _inside_multihead_attention(model, name)
    ]


def summarise_names(names: Sequence[str], limit: int = 30) -> str:
    """Collapse layer indices (``layer.0``, ``layer.1`` …) into ``layer.{0..5}`` to keep errors readable.

    Args:
        names: module names.
        limit: at most this many collapsed names are shown; the rest are counted.
    """
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for name in names:
        match = re.search(r"\.(\d+)\.", "." + name + ".")
        if match is None:
            key, index = name, None
        else:
            start, end = match.span(1)
            key = name[: start - 1] + "{}" + name[end - 1 :]
            index = int(match.group(1))
        if key not in groups:
            groups[key] = []
            order.append(key)
        if index is not None:
            groups[key].append(index)
    shown = []
    for key in order[:limit]:
        indices = groups[key]
        label = (
            f"{{{min(indices)}..{max(indices)}}}" if len(indices) > 1 else str(indices[0]) if indices else ""
        )
        shown.append(key.replace("{}", label))
    more = f" … and {len(order) - limit} more" if len(order) > limit else ""
    return ", ".join(shown) + more


def resolve_targets(
    model: nn.Module, targets: str | Sequence[str], *, kinds: tuple[type, ...] | None = None
) -> list[str]:
    """Full module names for a preset, a regex (full match), or a list of names / name endings.

    ``kinds`` limits a preset to module types (default: the types peft's LoRA can wrap; a PEFT method
    declares its own, see :func:`verticals.core.peft_methods.target_kinds`); the ``blocks`` preset is never
    limited.  Raises ``ValueError`` listing the candidates when nothing matches.

    Args:
        model: the backbone whose module names are searched.
        targets: a preset (``attention``, ``qv``, ``mlp``, ``all-linear``, ``blocks``, ``layernorm`` or a
            family's own), a regex over full module names, or a list of names / name endings.
        kinds: module types a preset may pick; default: those peft's LoRA can wrap.
    """
    kinds = ADAPTABLE_TYPES if kinds is None else kinds
    all_names = [name for name, _ in model.named_modules() if name]
    roots = family_roots(model)
    families = _unique(family for family, _ in roots)
    family_name = " + ".join(family.name for family in families) or "generic"

    is_preset = isinstance(targets, str) and (
        targets in PRESETS or any(targets in family.presets for family in families)
    )
    if targets == "layernorm":
        names = [name for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)]
    elif is_preset:
        names = _resolve_preset(model, targets, roots, kinds)
    elif isinstance(targets, str):
        owners = [f.name for f in registered_families().values() if targets in f.presets]
        if owners:
            raise ValueError(
                f"Target preset {targets!r} belongs to backbone famil{'ies' if len(owners) > 1 else 'y'} "
                f"{owners}, but {type(model).__name__} is {family_name}. Presets there are: "
                f"{', '.join(_available_presets(families))}."
            )
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise ValueError(
                f"Target {targets!r} is neither a preset ({', '.join(_available_presets(families))}) nor a "
                f"valid regex: {error}."
            ) from None
        names = [name for name in all_names if pattern.fullmatch(name)]
    else:
        names = []
        for entry in targets:
            matched = [name for name in all_names if name == entry or name.endswith("." + entry)]
            if not matched:
                _raise_no_match(model, repr(entry), families)
            names.extend(matched)
        names = list(dict.fromkeys(names))

    if not names:
        _raise_no_match(model, repr(targets), families, kinds=kinds if is_preset else None)
    return names


def _resolve_preset(
    model: nn.Module, preset: str, roots: list[tuple[BackboneFamily, str]], kinds: tuple[type, ...]
) -> list[str]:
    families = _unique(family for family, _ in roots)
    if not families:
        if preset == "blocks":
            raise ValueError(
                f"Target preset 'blocks' needs a known backbone family, but {type(model).__name__} matched "
                f"none of {sorted(registered_families())}. Name the blocks with a regex instead, e.g. "
                "'encoder\\.layers\\.\\d+'."
            )
        names = _generic_preset(model, preset)
        relative = {name: name for name in names}
    else:
        blocking = [
            (family, family.unsupported[preset]) for family in families if preset in family.unsupported
        ]
        if blocking:
            reasons = "; ".join(f"{family.name}: {reason}" for family, reason in blocking)
            raise ValueError(
                f"Target preset {preset!r} cannot apply to {type(model).__name__} ({reasons}). Presets there "
                f"are: {', '.join(_available_presets(families))}. Candidate module names: "
                f"{summarise_names(adaptable_module_names(model))}."
            )
        defining = [(family, root) for family, root in roots if preset in family.presets]
        if not defining:
            raise ValueError(
                f"No backbone family of {type(model).__name__} ({' + '.join(f.name for f in families)}) "
                f"defines preset {preset!r}. Presets there are: {', '.join(_available_presets(families))}; "
                f"or name modules with a regex. Candidate module names: "
                f"{summarise_names(adaptable_module_names(model))}."
            )
        # Standard leaf presets pick among the layers peft can wrap; 'blocks' and a family's own presets may
        # name any module (a block, a whole tower), then narrowed to the method's kinds below.
        pool = (
            adaptable_module_names(model)
            if preset in _LEAF_PRESETS
            else [
                name
                for name, _ in model.named_modules()
                if name and not _inside_multihead_attention(model, name)
            ]
        )
        # name -> its name inside the family's root, so a wrapper's own names ('head.backbone') don't count
        relative = {}
        for name in pool:
            for family, root in defining:
                inner = _inside(name, root)
                if inner is not None and family.matches(preset, inner):
                    relative.setdefault(name, inner)
        names = list(relative)
    if preset == "blocks":
        return names
    names = [name for name in names if _usable(model.get_submodule(name), kinds)]
    if preset in _LEAF_PRESETS:
        names = [name for name in names if not _is_embedding_pooler_or_head(relative[name])]
    if preset == "all-linear":
        names = [name for name in names if _is_linear_map(model.get_submodule(name))]
    return names


def _inside(name: str, root: str) -> str | None:
    """``name`` relative to ``root`` (``None`` when the module is not inside it)."""
    if not root:
        return name
    return name[len(root) + 1 :] if name.startswith(root + ".") else None


def _generic_preset(model: nn.Module, preset: str) -> list[str]:
    candidates = adaptable_module_names(model)
    if preset == "attention":
        return [name for name in candidates if _GENERIC_ATTENTION.fullmatch(name)]
    if preset == "qv":
        names = [
            name
            for name in candidates
            if _GENERIC_QV.fullmatch(name)
            and not isinstance(model.get_submodule(name), nn.MultiheadAttention)
        ]
        fused = [
            name
            for name in candidates
            if _FUSED_QKV.fullmatch(name) or isinstance(model.get_submodule(name), nn.MultiheadAttention)
        ]
        if not names and fused:
            raise ValueError(
                f"Target preset 'qv' cannot apply to {type(model).__name__}: it fuses q, k and v into "
                f"{summarise_names(fused)}, so q and v cannot be adapted alone. Use 'attention' (adapts the "
                f"fused projection) or a regex. Candidate module names: {summarise_names(candidates)}."
            )
        return names
    if preset == "mlp":
        return [
            name
            for name in candidates
            if _GENERIC_MLP.fullmatch(name) and not _GENERIC_ATTENTION.fullmatch(name)
        ]
    return candidates  # all-linear: narrowed to linear maps by the caller


def _usable(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    """Of a kind the method can wrap, and not a grouped/depthwise convolution (peft refuses most ranks)."""
    if not isinstance(module, kinds):
        return False
    return not (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1)


def _is_linear_map(module: nn.Module) -> bool:
    """``nn.Linear``, ``nn.MultiheadAttention``, transformers' ``Conv1D`` or a 1x1 (pointwise) convolution."""
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)) or type(module).__name__ == "Conv1D":
        return True
    if isinstance(module, nn.modules.conv._ConvNd):
        return all(size == 1 for size in module.kernel_size) and module.groups == 1
    return False


def _is_embedding_pooler_or_head(name: str) -> bool:
    """A patch embedding / stem, a pooler or a classifier head, judged by the parts of its name.

    ``fc`` counts as a classifier only outside numbered blocks (``fc``, ``fc.1``, not ``layers.3.mlp.fc``).
    """
    parts = name.split(".")
    if any(part in _EMBEDDING_PARTS or part in _POOLER_PARTS or part in _HEAD_PARTS for part in parts):
        return True
    if "fc" in parts:
        return not any(part.isdigit() for part in parts[: parts.index("fc")])
    return False


def _available_presets(families: Sequence[BackboneFamily]) -> list[str]:
    if not families:
        return [preset for preset in PRESETS if preset != "blocks"]
    unsupported = {preset for family in families for preset in family.unsupported}
    names: list[str] = []
    for family in families:
        names.extend(preset for preset in family.presets if preset not in names and preset not in unsupported)
    return [*names, "layernorm"]


def _unique(families: Iterable[BackboneFamily]) -> list[BackboneFamily]:
    """The distinct families, in registration order (the core's first), as ``detect_families`` gives them."""
    present = {family.name for family in families}
    return [family for name, family in registered_families().items() if name in present]


def _inside_multihead_attention(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    while parent:
        if isinstance(model.get_submodule(parent), nn.MultiheadAttention):
            return True
        parent = parent.rpartition(".")[0]
    return False


def _raise_no_match(
    model: nn.Module,
    what: str,
    families: Sequence[BackboneFamily],
    kinds: tuple[type, ...] | None = None,
) -> None:
    family_name = " + ".join(family.name for family in families) or "generic"
    kind_note = (
        f" of the kinds this method adapts ({', '.join(kind.__name__ for kind in kinds)})"
        if kinds is not None and kinds != ADAPTABLE_TYPES
        else ""
    )
    raise ValueError(
        f"Target {what} matched no module{kind_note} of {type(model).__name__} (backbone family: "
        f"{family_name}). Use a preset ({', '.join(_available_presets(families))}), a regex that fully "
        f"matches module names, or a list of names. Candidate module names: "
        f"{summarise_names(adaptable_module_names(model))}."
    )
