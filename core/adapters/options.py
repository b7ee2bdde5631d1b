"""Check a method's options against its peft config class before peft sees them.

peft checks few option values itself, and late: ``r: abc`` ends in a ``TypeError`` deep in a layer's
constructor that names no option, ``r: -1`` in a ``ValueError`` many frames down. Every peft config is a
dataclass with typed fields, so each option is checked here against its field's type (from the config
class itself, so every method, including those a domain registers, is covered), plus rules that hold for
every method: numbers are finite, sizes and counts (``r``, ``*_r``, ``*_dim``, ``*_size``, ``n_*``,
``num_*``) are non-negative integers, and dropout probabilities lie in [0, 1]. Other numbers peft annotates
as ``int`` (scales such as ``lora_alpha``) also take floats, which peft computes with. A failure is an
:class:`AdapterOptionError` naming the option, the value, and what is expected.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

__all__ = ["AdapterOptionError", "check_options", "describe_type", "option_problem"]

_SIZE_NAME = re.compile(r"^(r|.*_r|.*_dim|.*_size|n_.*|num_.*)$")
_DROPOUT_NAME = re.compile(r"dropout")
_SEED_NAME = re.compile(r"seed|prng")


class AdapterOptionError(ValueError):
    """An adapter option whose value its method cannot take; the message names the option, the value and
    what is expected."""


@cache
def _fields(config_cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (type hint, default)}`` of a config dataclass (hints ``Any`` where they can't be resolved)."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation naming something not importable here: check nothing by type
        hints = {}
    fields = {}
    for field in dataclasses.fields(config_cls):
        default = field.default if field.default is not dataclasses.MISSING else dataclasses.MISSING
        fields[field.name] = (hints.get(field.name, Any), default)
    return fields


def check_options(config_cls: type, options: Mapping[str, Any], method: str) -> None:
    """Raise :class:`AdapterOptionError` for the first option of ``options`` that ``config_cls`` (a peft config
    dataclass) can't take; names the config class doesn't have are left to the caller.

    Args:
        config_cls: the method's peft config class (``LoraConfig``).
        options: option name -> value, as a config gives them.
        method: the method's name, for the message.
    """
    problem = option_problem(config_cls, options)
    if problem:
        raise AdapterOptionError(
            f"Adapter option {problem} (method {method!r}). Fix it under the adapter's options "
            f"(see {config_cls.__name__})."
        )


def option_problem(config_cls: type, options: Mapping[str, Any]) -> str | None:
    """What is wrong with the first bad option (```r` is 'abc' (str), but it must be an integer; …``), or None.

    Args:
        config_cls: the method's peft config class.
        options: option name -> value; names the class doesn't have are skipped.
    """
    fields = _fields(config_cls)
    for name, value in options.items():
        if name not in fields:
            continue
        hint, default = fields[name]
        problem = _problem(name, value, hint, default)
        if problem:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            return (
                f"`{name}` is {shown} ({type(value).__name__}), but {problem}; its default is "
                f"{'unset' if default is dataclasses.MISSING else repr(default)}"
            )
    return None


def _problem(name: str, value: Any, hint: Any, default: Any) -> str | None:
    """What is wrong with ``value`` for a field ``name: hint = default``, or None."""
    if value is None and default is None:
        return None
    if not _matches(value, hint):
        # peft annotates some scales as int (``lora_alpha``) that work as floats; sizes, counts and seeds don't.
        scale = _is_number(value) and not _SIZE_NAME.match(name) and not _SEED_NAME.search(name)
        if not (scale and _matches(0, hint) and not _matches(0.5, hint)):
            return f"it must be {describe_type(hint)}"
    numbers = [value] if _is_number(value) else []
    if isinstance(value, (list, tuple)):
        numbers = [item for item in value if _is_number(item)]
    elif isinstance(value, dict):
        numbers = [item for item in value.values() if _is_number(item)]
    if any(not math.isfinite(number) for number in numbers):
        return "it must be a finite number (not NaN or infinity)"
    if _SIZE_NAME.match(name) and any(number < 0 for number in numbers):
        return "it is a size or a count, which can't be negative"
    if _DROPOUT_NAME.search(name) and any(not 0.0 <= number <= 1.0 for number in numbers):
        return "it is a dropout probability, which lies in [0, 1]"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from a config file or a command line) fits the type hint ``hint``.

    Lenient where peft is: a tuple for a list, an int for a float, a string or member for an enum, a mapping
    for a nested config dataclass; a hint it does not know accepts anything.
    """
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return any(type(value) is type(argument) and value == argument for argument in arguments)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(
                _matches(item, argument) for item, argument in zip(value, arguments)
            )
        item_hint = arguments[0] if arguments else Any
        return all(_matches(item, item_hint) for item in value)
    if origin is dict or hint is dict or origin is Mapping:
        if not isinstance(value, Mapping):
            return False
        if len(arguments) == 2:
            return all(_matches(k, arguments[0]) and _matches(v, arguments[1]) for k, v in value.items())
        return True
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or (
            isinstance(value, str) and any(value in (member.name, member.value) for member in hint)
        )
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, (hint, Mapping))
    return True  # a class this check doesn't know: peft decides


def describe_type(hint: Any) -> str:
    """``int`` → "an integer", ``Optional[list[str]]`` → "a list of strings or null", …

    Args:
        hint: a type hint of a config field.
    """
    if hint is None or hint is type(None):
        return "null"
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe_type(argument) for argument in arguments))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(argument) for argument in arguments)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        item = describe_type(arguments[0]) if arguments and arguments[0] is not Ellipsis else "values"
        return f"a list of {_plural(item)}"
    if origin is dict or hint is dict or origin is Mapping:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(description: str) -> str:
    for singular, plural in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
        ("true or false", "booleans"),
    ):
        description = description.replace(singular, plural)
    return description
