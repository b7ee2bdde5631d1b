"""Register PEFT methods that peft lacks, through peft's own ``register_peft_method``.

Methods written in verticals (bottleneck adapters, Earth-Adapter, ...) are registered with peft so that
they share peft's API and file format: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable
with stock ``peft.PeftModel.from_pretrained`` once the method's package has been imported.

peft 0.21.2's ``register_peft_method`` only accepts a name that is already a member of
``peft.utils.PeftType`` (a ``str, enum.Enum``) and offers no public way to add one, so
:func:`register_method` adds the member to the enum's internal maps first, checks that the enum behaves as
if the member had been declared, and raises a ``RuntimeError`` naming the peft version if it does not.

What kinds of module a method wraps is declared by the method, on its config class, as
``target_kinds: ClassVar[tuple[type[nn.Module], ...]]`` (e.g. ``(nn.Linear,)``; ``(nn.Module,)`` for
methods that wrap whole blocks); target presets are then narrowed to those kinds.  peft's own config classes
cannot carry the attribute, so :func:`declare_target_kinds` records it for them (``ln_tuning`` below);
:func:`target_kinds` reads either.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass

import peft
from peft import LNTuningConfig
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType
from torch import nn

__all__ = [
    "CHECKED_PEFT_VERSION",
    "declare_target_kinds",
    "register_method",
    "registered_methods",
    "target_kinds",
]

#: The peft release whose ``PeftType`` internals the enum extension was written against.
CHECKED_PEFT_VERSION = "0.21.2"

# Class attributes of a Python Enum (checked on 3.10-3.13) that hold its members; all are needed here.
_ENUM_MAPS = {"_member_map_": dict, "_value2member_map_": dict, "_member_names_": list}


@dataclass(frozen=True)
class _Registration:
    config_cls: type
    model_cls: type
    prefix: str


_REGISTRY: dict[str, _Registration] = {}
_DECLARED_KINDS: dict[type, tuple[type[nn.Module], ...]] = {}


def register_method(*, name: str, config_cls: type, model_cls: type, prefix: str) -> None:
    """Register a verticals PEFT method with peft under ``name`` (lower case, e.g. ``"bottleneck"``).

    Call it once at import of the method's package (``domains/<d>/adapters.py`` for a domain's methods).
    Calling it again with the same classes is a no-op, so re-importing (or reloading) the package is safe;
    a different class under a registered name is an error.  The config class may declare the module kinds
    the method wraps as a ``target_kinds`` ClassVar (checked here).
    """
    _check_name_and_prefix(name, prefix, model_cls)
    if "target_kinds" in _class_attributes(config_cls):
        _check_kinds(config_cls.target_kinds, owner=_qualname(config_cls))
    new = _Registration(config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    existing = _REGISTRY.get(name)
    if existing is not None:
        _reregister(name, existing, new)
        return

    member_name = name.upper()
    if member_name in PEFT_TYPE_TO_CONFIG_MAPPING or member_name in PEFT_TYPE_TO_TUNER_MAPPING:
        owner = PEFT_TYPE_TO_CONFIG_MAPPING.get(member_name) or PEFT_TYPE_TO_TUNER_MAPPING.get(member_name)
        raise ValueError(
            f"PEFT method name {name!r} is already taken by {_qualname(owner)} (a peft built-in or another "
            "registration); choose a different `name`."
        )
    for peft_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        # peft 0.21.2 checks `prefix in PEFT_TYPE_TO_PREFIX_MAPPING`, i.e. against the keys: it never fires.
        if other_prefix == prefix:
            other = str(getattr(peft_type, "value", peft_type)).lower()
            raise ValueError(
                f"`prefix` {prefix!r} is already used by PEFT method {other!r}; adapter parameter names must "
                "be unique per method, so choose a different prefix."
            )

    added = member_name not in PeftType.__members__
    if added:
        _add_enum_member(PeftType, member_name)
    try:
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    except Exception:
        if added:
            _remove_enum_member(PeftType, member_name)
        raise
    _REGISTRY[name] = new


def registered_methods() -> dict[str, type]:
    """Return verticals' own PEFT methods as ``{name: config class}``, e.g. to list them in the CLI."""
    return {name: reg.config_cls for name, reg in sorted(_REGISTRY.items())}


def declare_target_kinds(*, config_cls: type, kinds: tuple[type[nn.Module], ...]) -> None:
    """Declare the module kinds a peft built-in method wraps (its config class is peft's, not ours).

    A verticals method declares them on its own config instead (``target_kinds`` ClassVar).
    """
    _check_kinds(kinds, owner=_qualname(config_cls))
    if "target_kinds" in _class_attributes(config_cls):
        raise ValueError(
            f"{_qualname(config_cls)} declares `target_kinds` itself ({config_cls.target_kinds}); "
            "declare_target_kinds is for peft's config classes, which cannot."
        )
    existing = _DECLARED_KINDS.get(config_cls)
    if existing is not None and existing != tuple(kinds):
        raise ValueError(
            f"Target kinds of {_qualname(config_cls)} are already declared as {existing}; got {tuple(kinds)}."
        )
    _DECLARED_KINDS[config_cls] = tuple(kinds)


def target_kinds(config_cls: type) -> tuple[type[nn.Module], ...] | None:
    """The module kinds a method's config class declares, or ``None`` for the default (LoRA's kinds)."""
    for klass in config_cls.__mro__:
        if "target_kinds" in vars(klass):
            return tuple(klass.target_kinds)
        if klass in _DECLARED_KINDS:
            return _DECLARED_KINDS[klass]
    return None


def _class_attributes(config_cls: type) -> set[str]:
    return {name for klass in config_cls.__mro__ for name in vars(klass)}


def _check_kinds(kinds: object, *, owner: str) -> None:
    valid = (
        isinstance(kinds, tuple)
        and len(kinds) > 0
        and all(isinstance(kind, type) and issubclass(kind, nn.Module) for kind in kinds)
    )
    if not valid:
        raise TypeError(
            f"`target_kinds` of {owner} must be a non-empty tuple of nn.Module subclasses, e.g. (nn.Linear,); "
            f"got {kinds!r}."
        )


def _unregister_method(name: str) -> None:
    """Undo :func:`register_method` (for tests that register throwaway methods)."""
    reg = _REGISTRY.pop(name, None)
    if reg is None:
        raise KeyError(f"{name!r} is not a verticals PEFT method; registered: {sorted(_REGISTRY)}")
    member_name = name.upper()
    for mapping in (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        mapping.pop(member_name, None)
    if member_name in PeftType.__members__:
        _remove_enum_member(PeftType, member_name)


def _check_name_and_prefix(name: str, prefix: str, model_cls: type) -> None:
    if not isinstance(name, str) or not name.isidentifier() or not name.islower() or name.endswith("_"):
        raise ValueError(
            "`name` must be a lower-case Python identifier without a trailing '_' (e.g. 'bottleneck'), "
            f"got {name!r}."
        )
    if not isinstance(prefix, str) or not prefix.endswith("_") or len(prefix) < 2:
        raise ValueError(
            f"`prefix` must be a non-empty string ending in '_' (e.g. 'bottleneck_'), got {prefix!r}."
        )
    model_prefix = getattr(model_cls, "prefix", None)
    if model_prefix != prefix:
        raise ValueError(
            f"`prefix` {prefix!r} differs from {_qualname(model_cls)}.prefix = {model_prefix!r}; peft uses "
            "the model class's prefix to find adapter weights, so the two must be equal."
        )


def _reregister(name: str, existing: _Registration, new: _Registration) -> None:
    """Accept a repeated registration of the same classes; reject a different class under a taken name."""
    same = (
        existing.prefix == new.prefix
        and _same_class(existing.config_cls, new.config_cls)
        and _same_class(existing.model_cls, new.model_cls)
    )
    if not same:
        raise ValueError(
            f"PEFT method {name!r} is already registered with config {_qualname(existing.config_cls)}, "
            f"model {_qualname(existing.model_cls)} and prefix {existing.prefix!r}; got config "
            f"{_qualname(new.config_cls)}, model {_qualname(new.model_cls)} and prefix {new.prefix!r}. "
            "Choose a different `name`."
        )
    if existing == new:
        return
    # The same classes re-created by a module reload: point peft at the new objects (isinstance must agree).
    member = PeftType[name.upper()]
    PEFT_TYPE_TO_CONFIG_MAPPING[member] = new.config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[member] = new.model_cls
    _REGISTRY[name] = new


def _same_class(a: type, b: type) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _qualname(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else repr(obj)


def _surgery_error(enum_cls: type, problem: str) -> RuntimeError:
    return RuntimeError(
        f"Cannot add a member to {enum_cls.__module__}.{enum_cls.__qualname__}: {problem}. verticals extends "
        "peft's PeftType enum so that `register_peft_method` accepts its methods; this was written for peft "
        f"{CHECKED_PEFT_VERSION} (installed: peft {peft.__version__}, Python {sys.version.split()[0]}). "
        f"Pin peft=={CHECKED_PEFT_VERSION} or update verticals/core/peft_methods.py for this release."
    )


def _add_enum_member(enum_cls: type[enum.Enum], name: str) -> enum.Enum:
    """Add ``name`` (with value ``name``) to a ``str`` enum, as if it had been declared in the class body."""
    if not (isinstance(enum_cls, enum.EnumMeta) and issubclass(enum_cls, str)):
        raise _surgery_error(enum_cls, "it is no longer a `str, enum.Enum` class")
    for attr, kind in _ENUM_MAPS.items():
        if not isinstance(vars(enum_cls).get(attr), kind):
            raise _surgery_error(enum_cls, f"its internal `{attr}` is missing or not a {kind.__name__}")
    if name in enum_cls.__members__ or name in enum_cls._value2member_map_:
        raise ValueError(f"{enum_cls.__qualname__} already has a member {name!r}.")
    if any(name in vars(klass) for klass in enum_cls.__mro__):
        raise ValueError(f"{name!r} clashes with an existing attribute of {enum_cls.__qualname__}.")

    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_names_.append(name)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    if isinstance(vars(enum_cls).get("_hashable_values_"), list):  # Python >= 3.13 keeps this list too
        enum_cls._hashable_values_.append(name)
    type.__setattr__(enum_cls, name, member)  # members are class attributes; EnumMeta.__setattr__ refuses

    checks = {
        f"{enum_cls.__name__}({name!r})": lambda: enum_cls(name) is member,
        f"{enum_cls.__name__}[{name!r}]": lambda: enum_cls[name] is member,
        f"{enum_cls.__name__}.{name}": lambda: getattr(enum_cls, name) is member,
        f"list({enum_cls.__name__})": lambda: list(enum_cls)[-1] is member,
        f"{enum_cls.__name__}.__members__[{name!r}]": lambda: enum_cls.__members__[name] is member,
        "member == value, hash(member) == hash(value)": lambda: member == name and hash(member) == hash(name),
    }
    failed = [expr for expr, check in checks.items() if not _holds(check)]
    if failed:
        _remove_enum_member(enum_cls, name)
        raise _surgery_error(enum_cls, f"after adding {name!r}, these did not give the new member: {failed}")
    return member


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # any error from the enum machinery counts as a failed check
        return False


def _remove_enum_member(enum_cls: type[enum.Enum], name: str) -> None:
    """Undo :func:`_add_enum_member`, tolerating a half-finished addition."""
    member = enum_cls._member_map_.pop(name, None)
    if name in enum_cls._member_names_:
        enum_cls._member_names_.remove(name)
    if member is not None and enum_cls._value2member_map_.get(member._value_) is member:
        del enum_cls._value2member_map_[member._value_]
    hashable = vars(enum_cls).get("_hashable_values_")
    if isinstance(hashable, list) and name in hashable:
        hashable.remove(name)
    if name in vars(enum_cls):
        type.__delattr__(enum_cls, name)


# peft built-ins whose targets are not LoRA's Linear/Conv/Embedding/MultiheadAttention layers.
declare_target_kinds(config_cls=LNTuningConfig, kinds=(nn.LayerNorm,))
