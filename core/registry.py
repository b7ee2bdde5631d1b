"""A registry of model builders, so configs can name a model (``timeseries.patch_transformer``).

Builders register at import with one keyword-only call; a name ``<domain>.<model>`` imports
``verticals.domains.<domain>`` on first use, so the CLI needs no list of domains.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(*, name: str, builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder(input_shape=..., num_outputs=..., **model_args) -> nn.Module`` under ``name``."""
    existing = _BUILDERS.get(name)
    if existing is not None and existing is not builder:
        raise KeyError(
            f"A model called {name!r} is already registered ({existing.__module__}.{existing.__name__})."
        )
    _BUILDERS[name] = builder
    return builder


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; imports its domain package when the name is ``<domain>.<model>``."""
    if name not in _BUILDERS and "." in name:
        domain = name.split(".", 1)[0]
        try:
            importlib.import_module(f"verticals.domains.{domain}")
        except ModuleNotFoundError as error:
            # No such domain package: fall through to the "unknown model" error below.
            if not (error.name or "").startswith("verticals.domains"):
                raise ModuleNotFoundError(
                    f"Model {name!r} needs the '{domain}' extra: pip install 'verticals[{domain}]' ({error})."
                ) from error
    if name not in _BUILDERS:
        raise KeyError(
            f"Unknown model {name!r}. Registered models: {', '.join(sorted(_BUILDERS)) or 'none'}."
        )
    return _BUILDERS[name](**kwargs)


def registered_models() -> list[str]:
    return sorted(_BUILDERS)
