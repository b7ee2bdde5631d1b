"""The tile ViT stand-in is pretrained once on clean generated tiles, cached by everything that changes its
weights, and loaded strictly at any tile size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verticals.domains.remote_sensing import pretrained
from verticals.domains.remote_sensing.pretrained import PretrainRecipe, pretrain_tile_vit, pretrained_tile_vit

TINY = PretrainRecipe(size="tiny", tile_size=32, steps=3, batch_size=4, tiles=8)


def test_pretraining_learns_and_is_deterministic() -> None:
    first = pretrain_tile_vit(TINY)
    again = pretrain_tile_vit(TINY)
    assert first.keys() == again.keys()
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    from verticals.domains.remote_sensing.models import tile_vit

    fresh = tile_vit("tiny", img_size=32, in_chans=4).state_dict()
    assert any(not torch.equal(first[name], fresh[name]) for name in first)  # the weights moved


def test_the_cache_is_written_once_and_read_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vit = pretrained_tile_vit(img_size=32, recipe=TINY, cache_dir=tmp_path)
    files = list(tmp_path.glob("tile_vit-*.safetensors"))
    assert [path.name for path in files] == [f"tile_vit-{TINY.digest()}.safetensors"]
    assert not list(tmp_path.glob("*.partial"))  # written atomically
    assert files[0].name in vit.pretrained_source

    def refuse(recipe: PretrainRecipe) -> None:
        raise AssertionError("a cached backbone was pretrained again")

    monkeypatch.setattr(pretrained, "pretrain_tile_vit", refuse)
    cached = pretrained_tile_vit(img_size=32, recipe=TINY, cache_dir=tmp_path)
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cached.forward_features(x), vit.forward_features(x))

    larger = pretrained_tile_vit(img_size=64, recipe=TINY, cache_dir=tmp_path)  # position table resampled
    assert larger.pos_embed.shape[1] == larger.num_prefix_tokens + (64 // 8) ** 2
    with torch.no_grad():
        assert larger.forward_features(torch.rand(1, 4, 64, 64)).shape[1] == larger.pos_embed.shape[1]


def test_the_cache_key_follows_the_recipe() -> None:
    assert TINY.digest() == PretrainRecipe(size="tiny", tile_size=32, steps=3, batch_size=4, tiles=8).digest()
    assert TINY.digest() != PretrainRecipe(size="tiny", tile_size=32, steps=4, batch_size=4, tiles=8).digest()
    assert (
        TINY.digest()
        != PretrainRecipe(size="tiny", tile_size=32, steps=3, batch_size=4, tiles=8, seed=1).digest()
    )


def test_a_band_count_the_tiles_do_not_have_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4 bands but 3 were asked for"):
        pretrained_tile_vit(img_size=32, in_chans=3, recipe=TINY, cache_dir=tmp_path)


def test_a_recipe_for_other_bands_is_refused() -> None:
    with pytest.raises(ValueError, match="tiles have 4 bands.*asks for 3"):
        pretrain_tile_vit(PretrainRecipe(size="tiny", tile_size=32, steps=1, tiles=4, in_chans=3))
