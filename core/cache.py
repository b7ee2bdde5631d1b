"""Where verticals keeps what it derives once and reuses: converted weights, pretrained stand-in backbones,
extracted features. One root for every domain, so a user moves or clears it in one place."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$VERTICALS_CACHE`` if set, else ``~/.cache/verticals``; domains use sub-folders named after themselves."""
    return Path(os.environ.get("VERTICALS_CACHE") or Path.home() / ".cache" / "verticals")
