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


def test_cached_state_dict_computes_once_and_writes_atomically(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from verticals.core.cache import cached_state_dict

    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"w": torch.arange(3.0)}

    path = tmp_path / "sub" / "weights.safetensors"
    assert cached_state_dict(path, compute, what="toy weights", metadata={"k": "v"}) == path
    assert cached_state_dict(path, compute, what="toy weights") == path
    assert len(calls) == 1 and not list(path.parent.glob("*.partial"))
    assert torch.equal(load_file(str(path))["w"], torch.arange(3.0))


def test_recipe_digest_follows_the_recipe_the_version_and_the_source(tmp_path: Path) -> None:
    from verticals.core.cache import recipe_digest

    source = tmp_path / "generator.py"
    source.write_text("a = 1\n")
    digest = recipe_digest({"steps": 3}, 1, source)
    assert len(digest) == 12 and digest == recipe_digest({"steps": 3}, 1, source)
    assert digest != recipe_digest({"steps": 4}, 1, source) != recipe_digest({"steps": 3}, 2, source)
    source.write_text("a = 2\n")
    assert digest != recipe_digest({"steps": 3}, 1, source)
