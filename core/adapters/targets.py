"""Target presets: turn ``attention`` / ``mlp`` / ``all-linear`` / a regex into anchored module names.

peft matches ``target_modules`` entries on name *endings*, so a bare ``proj`` also catches timm's
``patch_embed.proj`` (a Conv2d) and ``dense`` catches BERT's ``pooler.dense``.  Presets are therefore
resolved here, per backbone family, to the full names of the modules they mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

# Layer types peft can wrap with LoRA-like methods.
ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
    nn.MultiheadAttention,
)
_ANY_PREFIX = r"(?:.*\.)?"


@dataclass(frozen=True)
class BackboneFamily:
    """A backbone family: how to recognise it and what each preset means in its module names."""

    name: str
    detect: Callable[[list[str]], bool]
    presets: dict[str, str] = field(default_factory=dict)

    def pattern(self, preset: str) -> str:
        return _ANY_PREFIX + self.presets[preset]


def _has(suffix_regex: str) -> Callable[[list[str]], bool]:
    compiled = re.compile(_ANY_PREFIX + suffix_regex)
    return lambda names: any(compiled.fullmatch(name) for name in names)


FAMILIES: list[BackboneFamily] = [
    BackboneFamily(
        name="hf_bert",
        detect=_has(r"layer\.\d+\.attention\.self\.query"),
        presets={
            "attention": r"layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)",
            "qv": r"layer\.\d+\.attention\.self\.(?:query|value)",
            "mlp": r"layer\.\d+\.(?:intermediate|output)\.dense",
            "all-linear": r"layer\.\d+\..*",
            "blocks": r"layer\.\d+",
        },
    ),
    BackboneFamily(
        name="hf_whisper",
        detect=_has(r"layers\.\d+\.self_attn\.q_proj"),
        presets={
            "attention": r"layers\.\d+\.(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)",
            "qv": r"layers\.\d+\.(?:self_attn|encoder_attn)\.(?:q_proj|v_proj)",
            "mlp": r"layers\.\d+\.(?:fc1|fc2|mlp\.\w+)",
            "all-linear": r"layers\.\d+\..*",
            "blocks": r"layers\.\d+",
        },
    ),
    BackboneFamily(
        name="timm_vit",
        detect=_has(r"blocks\.\d+\.attn\.qkv"),
        presets={
            # timm fuses q, k, v into one Linear: "qv" adapts the fused projection.
            "attention": r"blocks\.\d+\.attn\.(?:qkv|proj)",
            "qv": r"blocks\.\d+\.attn\.qkv",
            "mlp": r"blocks\.\d+\.mlp\.(?:fc1|fc2)",
            "all-linear": r"blocks\.\d+\..*",
            "blocks": r"blocks\.\d+",
        },
    ),
    BackboneFamily(
        name="open_clip",
        detect=_has(r"resblocks\.\d+\.attn"),
        presets={
            # nn.MultiheadAttention: peft wraps its in_proj/out_proj together.
            "attention": r"resblocks\.\d+\.attn",
            "qv": r"resblocks\.\d+\.attn",
            "mlp": r"resblocks\.\d+\.mlp\.(?:c_fc|c_proj)",
            "all-linear": r"resblocks\.\d+\.(?:attn|mlp\.\w+)",
            "blocks": r"resblocks\.\d+",
        },
    ),
]

_GENERIC_ATTENTION = re.compile(
    r"(?:.*\.)?(?:q|k|v|o|query|key|value|qkv|q_proj|k_proj|v_proj|o_proj|out_proj|to_q|to_k|to_v|c_attn)"
    r"|.*(?:attn|attention)\.\w+"
)
_GENERIC_MLP = re.compile(r".*(?:mlp|ffn|feed_forward|feedforward)\.\w+|(?:.*\.)?(?:fc1|fc2|w1|w2|w3)")
_HEAD_NAMES = re.compile(r"(?:.*\.)?(?:head|heads|classifier|lm_head|proj_out|fc_out|output_projection)")
PRESETS = ("attention", "qv", "mlp", "all-linear", "blocks", "layernorm")


def detect_families(model: nn.Module) -> list[BackboneFamily]:
    """Every family whose signature module names appear in ``model`` (empty means generic).

    A model can hold several: BiomedCLIP is a timm ViT image tower beside an HF BERT text tower, and a
    preset then means its modules in both.
    """
    names = [name for name, _ in model.named_modules()]
    return [family for family in FAMILIES if family.detect(names)]


def detect_family(model: nn.Module) -> BackboneFamily | None:
    """The first family whose signature module names appear in ``model``; ``None`` means generic."""
    families = detect_families(model)
    return families[0] if families else None


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Names of the modules a LoRA-like method can wrap (Linear, Conv, Embedding, MultiheadAttention)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, ADAPTABLE_TYPES) and not _inside_multihead_attention(model, name)
    ]


def _inside_multihead_attention(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    while parent:
        if isinstance(model.get_submodule(parent), nn.MultiheadAttention):
            return True
        parent = parent.rpartition(".")[0]
    return False


def summarise_names(names: Sequence[str], limit: int = 30) -> str:
    """Collapse layer indices (``layer.0``, ``layer.1`` …) into ``layer.{0..5}`` to keep errors readable."""
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

    ``kinds`` limits the result to module types (default: the types peft's LoRA can wrap); the ``blocks``
    preset is never limited.  Raises ``ValueError`` listing the candidates when nothing matches.
    """
    kinds = ADAPTABLE_TYPES if kinds is None else kinds
    all_names = [name for name, _ in model.named_modules() if name]
    families = detect_families(model)
    family_name = " + ".join(family.name for family in families) or "generic"

    if isinstance(targets, str) and targets == "layernorm":
        names = [name for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)]
    elif isinstance(targets, str) and targets == "blocks":
        if not families:
            raise ValueError(
                f"Target preset 'blocks' needs a known backbone family, but {type(model).__name__} matched none "
                f"of {[f.name for f in FAMILIES]}. Name the blocks with a regex instead, e.g. 'encoder\\.layers\\.\\d+'."
            )
        names = _match_families(families, "blocks", all_names)
    elif isinstance(targets, str) and targets in PRESETS:
        candidates = adaptable_module_names(model)
        if families:
            names = _match_families(families, targets, candidates)
        else:
            names = _generic_preset(targets, candidates)
        names = [name for name in names if isinstance(model.get_submodule(name), kinds)]
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise ValueError(
                f"Target {targets!r} is neither a preset {PRESETS} nor a valid regex: {error}."
            ) from None
        names = [name for name in all_names if pattern.fullmatch(name)]
    else:
        names = []
        for entry in targets:
            matched = [name for name in all_names if name == entry or name.endswith("." + entry)]
            if not matched:
                _raise_no_match(model, repr(entry), family_name)
            names.extend(matched)
        names = list(dict.fromkeys(names))

    if not names:
        _raise_no_match(model, repr(targets), family_name)
    return names


def _match_families(families: Sequence[BackboneFamily], preset: str, names: Sequence[str]) -> list[str]:
    """Names matching the preset of any of ``families``, in model order."""
    compiled = [re.compile(family.pattern(preset)) for family in families]
    return [name for name in names if any(pattern.fullmatch(name) for pattern in compiled)]


def _generic_preset(preset: str, candidates: Sequence[str]) -> list[str]:
    body = [name for name in candidates if not _HEAD_NAMES.fullmatch(name)]
    if preset in ("attention", "qv"):
        return [name for name in body if _GENERIC_ATTENTION.fullmatch(name)]
    if preset == "mlp":
        return [
            name for name in body if _GENERIC_MLP.fullmatch(name) and not _GENERIC_ATTENTION.fullmatch(name)
        ]
    return body  # all-linear


def _raise_no_match(model: nn.Module, what: str, family_name: str) -> None:
    raise ValueError(
        f"Target {what} matched no module of {type(model).__name__} (backbone family: {family_name}). "
        f"Use a preset ({', '.join(PRESETS)}), a regex that fully matches module names, or a list of names. "
        f"Candidate module names: {summarise_names(adaptable_module_names(model))}."
    )
