"""The point-transformer stand-in is pretrained once on clean and scanned generated shapes, cached by everything
that changes its weights, and loaded strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verticals.domains.pointcloud import pretrained
from verticals.domains.pointcloud.pretrained import (
    PretrainRecipe,
    pretrain_point_transformer,
    pretrained_point_transformer,
)

TINY = PretrainRecipe(size="tiny", points=128, shapes=16, steps=2, batch_size=4)


def test_pretraining_is_deterministic_and_moves_the_weights() -> None:
    first = pretrain_point_transformer(TINY)
    again = pretrain_point_transformer(TINY)
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    from verticals.domains.pointcloud.models import build_point_transformer

    with torch.random.fork_rng():
        torch.manual_seed(123)
        fresh = build_point_transformer("tiny").state_dict()
    assert first.keys() == fresh.keys()
    assert any(not torch.equal(first[name], fresh[name]) for name in first)


def test_the_cache_is_written_once_and_read_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = pretrained_point_transformer("tiny", recipe=TINY, cache_dir=tmp_path)
    files = list(tmp_path.glob("point_transformer-*.safetensors"))
    assert [path.name for path in files] == [f"point_transformer-{TINY.digest()}.safetensors"]
    assert not list(tmp_path.glob("*.partial")) and files[0].name in backbone.pretrained_source

    def refuse(recipe: PretrainRecipe) -> None:
        raise AssertionError("a cached encoder was pretrained again")

    monkeypatch.setattr(pretrained, "pretrain_point_transformer", refuse)
    cached = pretrained_point_transformer("tiny", recipe=TINY, cache_dir=tmp_path)
    for (name, a), (_, b) in zip(cached.state_dict().items(), backbone.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_cache_key_follows_the_recipe_and_sizes_must_agree(tmp_path: Path) -> None:
    assert TINY.digest() != PretrainRecipe(size="tiny", points=128, shapes=16, steps=3, batch_size=4).digest()
    assert (
        TINY.digest()
        != PretrainRecipe(
            size="tiny", points=128, shapes=16, steps=2, batch_size=4, families=("table", "chair")
        ).digest()
    )
    with pytest.raises(ValueError, match="recipe is for size 'tiny' but size 'small'"):
        pretrained_point_transformer("small", recipe=TINY, cache_dir=tmp_path)
