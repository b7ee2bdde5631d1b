"""Backbone families: how to recognise a backbone and what each target preset means in its module names.

A family is registered once, at import of the package that knows the backbone, with one keyword-only call::

    register_family(
        name="timm_vit",
        detect=is_timm_vit,                      # True for the module that *is* such a backbone (its root)
        presets={"attention": r"blocks\\.\\d+\\.attn\\.(?:qkv|proj)", ...},
        unsupported={"qv": "timm fuses q, k and v into one `qkv` Linear ..."},
    )

``detect(module)`` must check the whole structure the presets rely on (every block, every projection and
its type), not one module name: a model that shares one name with a family but differs elsewhere is not of
that family, and its presets would otherwise pick the wrong modules.  Preset regexes are matched (full
match) against module names *relative to each detected root*, so a family's names never leak into another
part of the model.  The core registers only generic families (HF BERT-like encoders, timm ViT, open_clip);
a domain registers its own from ``domains/<name>/models.py``.  A model of no registered family gets the
generic presets of :mod:`verticals.core.adapters.targets`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "STANDARD_PRESETS",
    "BackboneFamily",
    "detect_families",
    "detect_family",
    "every_block_has",
    "family_roots",
    "has_modules",
    "is_hf_bert_encoder",
    "is_open_clip_transformer",
    "is_timm_vit",
    "register_family",
    "registered_families",
]

#: Presets every family may define; ``layernorm`` is resolved model-wide, so no family defines it.
STANDARD_PRESETS = ("attention", "qv", "mlp", "all-linear", "blocks")
_MODEL_WIDE_PRESETS = ("layernorm",)
_FAMILY_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PRESET_NAME = re.compile(r"[a-z][a-z0-9_-]*")

Kinds = type[nn.Module] | tuple[type[nn.Module], ...]


@dataclass(frozen=True)
class BackboneFamily:
    """A registered backbone family (see the module docstring).

    Attributes:
        name: lower-case identifier, unique in the registry (``timm_vit``).
        detect: ``detect(module) -> bool``, True for the root module of a backbone of this family.
        presets: preset name -> regex over module names relative to the root (full match).
        unsupported: standard preset name -> why it cannot apply here (named in the error).
    """

    name: str
    detect: Callable[[nn.Module], bool]
    presets: Mapping[str, str]
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def matches(self, preset: str, relative_name: str) -> bool:
        """Whether ``relative_name`` (a module name relative to a root of this family) is in ``preset``."""
        return re.fullmatch(self.presets[preset], relative_name) is not None


_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(
    *,
    name: str,
    detect: Callable[[nn.Module], bool],
    presets: Mapping[str, str],
    unsupported: Mapping[str, str] | None = None,
) -> BackboneFamily:
    """Register a backbone family; call it once at import of the package that knows the backbone.

    Registering the same definition again is a no-op (re-importing a module is safe); a different
    definition under a taken name is an error, as in peft's and timm's registries.

    Args:
        name: lower-case identifier, unique in the registry (``timm_vit``).
        detect: ``detect(module) -> bool``, True for the root module of a backbone of this family; it
            should check the whole structure the presets rely on.
        presets: preset name -> regex over module names relative to the root (full match); standard names
            (``attention``, ``qv``, ``mlp``, ``all-linear``, ``blocks``) or the family's own.
        unsupported: standard preset name -> why it cannot apply to this backbone (the error a user gets).
    """
    family = BackboneFamily(
        name=name, detect=detect, presets=dict(presets), unsupported=dict(unsupported or {})
    )
    _check_family(family)
    existing = _FAMILIES.get(name)
    if existing is not None:
        if not _same_definition(existing, family):
            raise ValueError(
                f"Backbone family {name!r} is already registered (detect={_qualname(existing.detect)}, "
                f"presets={sorted(existing.presets)}); got a different definition (detect="
                f"{_qualname(family.detect)}, presets={sorted(family.presets)}). Choose a different `name`."
            )
        if existing == family:
            return existing
    _FAMILIES[name] = family  # a new family, or the same one re-created by a module reload
    return family


def registered_families() -> dict[str, BackboneFamily]:
    """Every registered family by name, in registration order (the core's first)."""
    return dict(_FAMILIES)


def _unregister_family(name: str) -> None:
    """Undo :func:`register_family` (for tests that register throwaway families)."""
    if _FAMILIES.pop(name, None) is None:
        raise KeyError(f"{name!r} is not a registered backbone family; registered: {sorted(_FAMILIES)}.")


def family_roots(model: nn.Module) -> list[tuple[BackboneFamily, str]]:
    """``(family, root name)`` for every backbone of a registered family inside ``model``, in model order.

    A root nested inside another root of the same family is left out (its names are already covered).

    Args:
        model: any module; searched through all its submodules.
    """
    found: list[tuple[BackboneFamily, str]] = []
    for name, module in model.named_modules():
        for family in _FAMILIES.values():
            if any(f is family and _is_within(name, root) for f, root in found):
                continue
            if family.detect(module):
                found.append((family, name))
    return found


def detect_families(model: nn.Module) -> list[BackboneFamily]:
    """Every family with a backbone inside ``model``, in registration order (empty means generic).

    A model can hold several: a CLIP may be a timm ViT image tower beside an HF BERT text tower, and a
    standard preset then means its modules in both.

    Args:
        model: any module; searched through all its submodules.
    """
    present = {family.name for family, _ in family_roots(model)}
    return [family for name, family in _FAMILIES.items() if name in present]


def detect_family(model: nn.Module) -> BackboneFamily | None:
    """The first family of :func:`detect_families`; ``None`` means generic.

    Args:
        model: any module; searched through all its submodules.
    """
    families = detect_families(model)
    return families[0] if families else None


# -- structure checks for detectors -------------------------------------------------------------------


def has_modules(module: nn.Module, required: Mapping[str, Kinds]) -> bool:
    """Whether every dotted path in ``required`` names a submodule of ``module`` of the given type(s).

    Args:
        module: the module to inspect (a candidate backbone root, or one of its blocks).
        required: dotted submodule path -> the type (or tuple of types) it must have.
    """
    for path, kinds in required.items():
        try:
            child = module.get_submodule(path)
        except AttributeError:
            return False
        if not isinstance(child, kinds):
            return False
    return True


def every_block_has(module: nn.Module, container: str, required: Mapping[str, Kinds]) -> bool:
    """Whether ``module.<container>`` is a non-empty list of numbered blocks that all hold ``required``.

    Args:
        module: the candidate backbone root.
        container: dotted path of its block list (``blocks``, ``layer``, ``resblocks``).
        required: path inside each block -> the type (or tuple of types) it must have.
    """
    try:
        blocks = module.get_submodule(container)
    except AttributeError:
        return False
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        return False
    return all(has_modules(block, required) for block in blocks)


def is_hf_bert_encoder(module: nn.Module) -> bool:
    """An HF BERT-like encoder (BERT, RoBERTa, MiniLM …): ``layer.N`` with separate q/k/v and dense MLP.

    Args:
        module: a candidate backbone root (any submodule of a model, when detecting).
    """
    return every_block_has(
        module,
        "layer",
        {
            "attention.self.query": nn.Linear,
            "attention.self.key": nn.Linear,
            "attention.self.value": nn.Linear,
            "attention.output.dense": nn.Linear,
            "intermediate.dense": nn.Linear,
            "output.dense": nn.Linear,
        },
    )


def is_timm_vit(module: nn.Module) -> bool:
    """A timm ViT: every ``blocks.N`` has Linear ``attn.qkv`` (fused), ``attn.proj``, ``mlp.fc1/fc2``.

    Args:
        module: a candidate backbone root (any submodule of a model, when detecting).
    """
    return every_block_has(
        module,
        "blocks",
        {"attn.qkv": nn.Linear, "attn.proj": nn.Linear, "mlp.fc1": nn.Linear, "mlp.fc2": nn.Linear},
    )


def is_open_clip_transformer(module: nn.Module) -> bool:
    """open_clip's ``Transformer``: every ``resblocks.N`` has an ``nn.MultiheadAttention`` and a c_fc/c_proj MLP.

    Args:
        module: a candidate backbone root (any submodule of a model, when detecting).
    """
    return every_block_has(
        module,
        "resblocks",
        {"attn": nn.MultiheadAttention, "mlp.c_fc": nn.Linear, "mlp.c_proj": nn.Linear},
    )


# -- internals ----------------------------------------------------------------------------------------


def _is_within(name: str, root: str) -> bool:
    return root == "" or name == root or name.startswith(root + ".")


def _check_family(family: BackboneFamily) -> None:
    if not isinstance(family.name, str) or not _FAMILY_NAME.fullmatch(family.name):
        raise ValueError(f"`name` must be a lower-case identifier such as 'timm_vit', got {family.name!r}.")
    if not callable(family.detect):
        raise TypeError(
            f"`detect` of family {family.name!r} must be a callable module -> bool, got {family.detect!r}."
        )
    if not family.presets:
        raise ValueError(f"Family {family.name!r} needs at least one preset in `presets`.")
    for preset, pattern in family.presets.items():
        if not isinstance(preset, str) or not _PRESET_NAME.fullmatch(preset):
            raise ValueError(
                f"Preset name {preset!r} of family {family.name!r} must be lower case (letters, digits, "
                "'_' or '-'), e.g. 'attention' or 'pointwise_convs'."
            )
        if preset in _MODEL_WIDE_PRESETS:
            raise ValueError(
                f"Family {family.name!r} defines preset {preset!r}, which is resolved model-wide; remove it."
            )
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"Preset {preset!r} of family {family.name!r} must be a regex string, got {pattern!r} ({error})."
            ) from None
    for preset, reason in family.unsupported.items():
        if preset not in STANDARD_PRESETS:
            raise ValueError(
                f"`unsupported` of family {family.name!r} names {preset!r}; only standard presets "
                f"{STANDARD_PRESETS} can be declared unsupported (a missing custom preset is simply absent)."
            )
        if preset in family.presets:
            raise ValueError(
                f"Family {family.name!r} both defines and declares unsupported preset {preset!r}."
            )
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(
                f"`unsupported[{preset!r}]` of family {family.name!r} must say why, got {reason!r}."
            )


def _same_definition(a: BackboneFamily, b: BackboneFamily) -> bool:
    same_detect = a.detect is b.detect or _qualname(a.detect) == _qualname(b.detect)
    return same_detect and dict(a.presets) == dict(b.presets) and dict(a.unsupported) == dict(b.unsupported)


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)


# -- the generic families of the core ------------------------------------------------------------------

register_family(
    name="hf_bert",
    detect=is_hf_bert_encoder,
    presets={
        "attention": r"layer\.\d+\.attention\.(?:self\.(?:query|key|value)|output\.dense)",
        "qv": r"layer\.\d+\.attention\.self\.(?:query|value)",
        "mlp": r"layer\.\d+\.(?:intermediate|output)\.dense",
        "all-linear": r"layer\.\d+\..*",
        "blocks": r"layer\.\d+",
    },
)
register_family(
    name="timm_vit",
    detect=is_timm_vit,
    presets={
        "attention": r"blocks\.\d+\.attn\.(?:qkv|proj)",
        "mlp": r"blocks\.\d+\.mlp\.(?:fc1|fc2)",
        "all-linear": r"blocks\.\d+\..*",
        "blocks": r"blocks\.\d+",
    },
    unsupported={
        "qv": "timm fuses q, k and v into one `attn.qkv` Linear, so q and v cannot be adapted alone; use "
        "`attention` (qkv and proj) or a regex such as 'blocks\\.\\d+\\.attn\\.qkv'",
    },
)
register_family(
    name="open_clip",
    detect=is_open_clip_transformer,
    presets={
        # nn.MultiheadAttention: peft wraps its in_proj/out_proj together.
        "attention": r"resblocks\.\d+\.attn",
        "mlp": r"resblocks\.\d+\.mlp\.(?:c_fc|c_proj)",
        "all-linear": r"resblocks\.\d+\.(?:attn|mlp\.\w+)",
        "blocks": r"resblocks\.\d+",
    },
    unsupported={
        "qv": "open_clip's attention is an nn.MultiheadAttention whose q, k and v share one "
        "`in_proj_weight`, so q and v cannot be adapted alone; use `attention` (peft wraps the whole module)",
    },
)
