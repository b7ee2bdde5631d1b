"""The one cache root every domain derives its folders from."""

from __future__ import annotations

from pathlib import Path

from verticals.core.cache import cache_root


def test_cache_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path))
    assert cache_root() == tmp_path


def test_cache_root_defaults_to_the_user_cache(monkeypatch) -> None:
    monkeypatch.delenv("VERTICALS_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "verticals"
