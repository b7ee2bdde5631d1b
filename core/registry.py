"""Models a config can name: a registered builder (``timeseries.patch_transformer``) or any importable
``nn.Module`` class or factory given as ``{class_path: ..., init_args: {...}}`` (bring your own backbone
from YAML, as with LightningCLI).

Builders register at import with one keyword-only call.  A registered name ``<domain>.<model>`` imports
``verticals.domains.<domain>`` on first use, so the CLI needs no list of domains; when no such domain
package exists, the part before the last dot is imported as a top-level package instead, so a package
outside verticals (``mylab.unet``, registered in ``mylab/__init__.py``) plugs in the same way.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["ModelBuilder", "build_model", "import_object", "register_model", "registered_models"]

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
_SPEC_KEYS = ("class_path", "init_args")


def register_model(*, name: str, builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder(input_shape=..., num_outputs=..., **model_args) -> nn.Module`` under ``name``."""
    existing = _BUILDERS.get(name)
    if existing is not None and existing is not builder:
        raise KeyError(
            f"A model called {name!r} is already registered ({existing.__module__}.{existing.__name__})."
        )
    _BUILDERS[name] = builder
    return builder


def build_model(
    spec: str | Mapping[str, Any], /, *, model_args: Mapping[str, Any] | None = None, **task_kwargs: Any
) -> nn.Module:
    """Build the model a config names.

    ``spec`` is a registered name, or ``{"class_path": "pkg.module.ClassOrFactory", "init_args": {...}}``.
    ``task_kwargs`` are what the task provides (``input_shape``, ``num_outputs`` …): a registered builder
    receives them all (it is written for verticals), while a ``class_path`` factory receives only those its
    signature accepts (all of them if it takes ``**kwargs``), so any ``nn.Module`` can be named;
    ``init_args`` override a task-provided value of the same name.  ``model_args`` (a task's
    ``model_args``) are always passed, so a misspelt one is an error rather than silently dropped.
    """
    model_args = dict(model_args or {})
    if isinstance(spec, Mapping):
        return _build_from_class_path(spec, model_args, task_kwargs)
    if not isinstance(spec, str):
        raise TypeError(
            f"A model is a registered name or a {{class_path, init_args}} mapping, got {type(spec).__name__} "
            f"{spec!r}."
        )
    builder = _registered_builder(spec)
    _reject_duplicates(spec, task_kwargs, model_args, "model_args")
    return builder(**task_kwargs, **model_args)


def registered_models() -> list[str]:
    """Names of every registered model (only of the domains imported so far)."""
    return sorted(_BUILDERS)


def _unregister_model(name: str) -> None:
    """Undo :func:`register_model` (for tests that register throwaway models)."""
    if _BUILDERS.pop(name, None) is None:
        raise KeyError(f"{name!r} is not a registered model; registered: {sorted(_BUILDERS)}.")


def import_object(path: str) -> Any:
    """The object at dotted ``path`` (``package.module.Name``, or ``package.module.Class.factory``)."""
    parts = path.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(f"`class_path` must be a dotted path such as 'mypackage.models.Net', got {path!r}.")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if _is_prefix(error.name, module_name):
                continue  # this prefix is no module: try a shorter one
            raise
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                raise ImportError(
                    f"`class_path` {path!r}: {obj.__name__ if inspect.ismodule(obj) else obj!r} has no "
                    f"attribute {attribute!r}."
                )
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"`class_path` {path!r}: no importable module in it (is its package installed?).")


def _registered_builder(name: str) -> ModelBuilder:
    if name not in _BUILDERS and "." in name:
        _import_owner(name)
    if name not in _BUILDERS:
        raise KeyError(
            f"Unknown model {name!r}. Registered models: {', '.join(sorted(_BUILDERS)) or 'none'}; or give "
            "{class_path: package.module.ClassOrFactory, init_args: {...}}."
        )
    return _BUILDERS[name]


def _import_owner(name: str) -> None:
    """Import the package that registers ``name``: ``verticals.domains.<first part>``, else the top-level one."""
    domain = name.split(".", 1)[0]
    try:
        importlib.import_module(f"verticals.domains.{domain}")
        return
    except ModuleNotFoundError as error:
        if error.name not in (f"verticals.domains.{domain}", "verticals.domains"):
            raise ModuleNotFoundError(
                f"Model {name!r} needs the '{domain}' extra: pip install 'verticals[{domain}]' ({error})."
            ) from error
    package = name.rpartition(".")[0]
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as error:
        if not _is_prefix(error.name, package):
            raise  # the package exists but one of its imports is missing: show that
        # neither a domain nor a package of that name: the "unknown model" error follows


def _build_from_class_path(
    spec: Mapping[str, Any], model_args: dict[str, Any], task_kwargs: dict[str, Any]
) -> nn.Module:
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown or "class_path" not in spec:
        raise ValueError(
            f"A model mapping takes `class_path` (required) and `init_args`; got keys {sorted(spec)}. "
            "Example: {class_path: torchvision.models.resnet18, init_args: {num_classes: 2}}."
        )
    path = spec["class_path"]
    if not isinstance(path, str):
        raise ValueError(f"`class_path` must be a dotted path string, got {path!r}.")
    init_args = dict(spec.get("init_args") or {})
    _reject_duplicates(path, init_args, model_args, "model_args")
    factory = import_object(path)
    if inspect.isclass(factory) and not issubclass(factory, nn.Module):
        raise TypeError(f"`class_path` {path!r} is a class but not an nn.Module subclass ({factory!r}).")
    if not callable(factory):
        raise TypeError(f"`class_path` {path!r} names {factory!r}, which is neither a class nor a factory.")
    accepted = _accepted_keywords(factory)
    provided = {
        key: value
        for key, value in task_kwargs.items()
        if (accepted is None or key in accepted) and key not in init_args and key not in model_args
    }
    model = factory(**provided, **init_args, **model_args)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`class_path` {path!r} returned {type(model).__name__}, not an nn.Module.")
    return model


def _accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts; ``None`` when it takes ``**kwargs`` (everything)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: give them only init_args
        return set()
    parameters = signature.parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {parameter.name for parameter in parameters if parameter.kind in keyword_kinds}


def _is_prefix(missing: str | None, module_name: str) -> bool:
    """Whether the module Python could not find is ``module_name`` or one of its parent packages."""
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def _reject_duplicates(what: str, first: Mapping[str, Any], second: Mapping[str, Any], label: str) -> None:
    both = sorted(set(first) & set(second))
    if both:
        raise ValueError(
            f"Model {what!r}: {both} given twice (by the task or `init_args`, and in `{label}`); keep one."
        )
