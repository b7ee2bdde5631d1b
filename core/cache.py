"""Where verticals keeps what it derives once and reuses: converted weights, pretrained stand-in backbones,
extracted features. One root for every domain, so a user moves or clears it in one place."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["cache_root", "cached_state_dict", "recipe_digest"]

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$VERTICALS_CACHE`` if set, else ``~/.cache/verticals``; domains use sub-folders named after themselves."""
    return Path(os.environ.get("VERTICALS_CACHE") or Path.home() / ".cache" / "verticals")


def recipe_digest(recipe: Mapping[str, Any], version: int, source: str | Path) -> str:
    """A 12-hex-digit cache key for weights derived by a recipe: its fields, its code ``version`` and the bytes
    of the ``source`` file that generates its data (other data, other weights)."""
    generator = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    text = json.dumps({"version": version, "generator": generator, **recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_state_dict(
    path: str | Path,
    compute: Callable[[], Mapping[str, torch.Tensor]],
    what: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """``path`` (a safetensors file), computed by ``compute()`` and written first if it is missing. The file is
    written beside its final name and renamed, so a killed run never leaves a half-written cache."""
    path = Path(path)
    if not path.is_file():
        logger.info("Computing %s (cached at %s) ...", what, path)
        state = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(dict(state), str(partial), metadata=dict(metadata or {}))
        partial.replace(path)
    return path
