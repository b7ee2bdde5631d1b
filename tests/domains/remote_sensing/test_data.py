"""Generated land-cover tiles, their artefacts (each checked for what the card says it does), the datamodule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from verticals.core.data import check_groups
from verticals.domains.remote_sensing.data import DEFAULT_TRAIN_ARTEFACTS, LandCoverDataModule, LandCoverTiles
from verticals.domains.remote_sensing.landcover import (
    ARTEFACTS,
    BANDS,
    COLOUR_LOG_GAIN,
    COLOUR_OFFSET,
    DEAD_PIXEL_RATE,
    HAZE_VEIL,
    LANDCOVER_CLASSES,
    NOISE_SIGMA,
    STRIPE_AMPLITUDE,
    apply_artefact,
    artefact_parts,
    band_energy,
    generate_tiles,
    jpeg_quality,
    low_band_mask,
)

SIZE = 32


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return generate_tiles(16, seed=3, size=64)[0]


def _apply(images: np.ndarray, artefact: str, seed: int = 0, **kwargs) -> np.ndarray:
    return apply_artefact(images, artefact, np.random.default_rng(seed), **kwargs)


def _low_area(height: int, width: int, ratio: float = 0.25) -> float:
    return float(low_band_mask(height, width, ratio).mean())


# -- the generator ---------------------------------------------------------------------------------
def test_tiles_have_documented_shapes_dtypes_ranges_and_every_class() -> None:
    images, masks = generate_tiles(16, seed=0, size=SIZE)
    assert images.shape == (16, len(BANDS), SIZE, SIZE) and images.dtype == np.float32
    assert masks.shape == (16, SIZE, SIZE) and masks.dtype == np.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(np.unique(masks).tolist()) == set(range(len(LANDCOVER_CLASSES)))
    # spectra as the card says: water has the lowest NIR, the vegetation (forest, cropland) the highest,
    # bare soil is the reddest
    nir = [float(images[:, 3][masks == code].mean()) for code in range(5)]
    red = [float(images[:, 2][masks == code].mean()) for code in range(5)]
    assert int(np.argmin(nir)) == LANDCOVER_CLASSES.index("water")
    assert set(np.argsort(nir)[-2:].tolist()) == {LANDCOVER_CLASSES.index(c) for c in ("forest", "cropland")}
    assert int(np.argmax(red)) == LANDCOVER_CLASSES.index("bare_soil")
    # texture: urban (blocks and streets) varies most between neighbouring pixels, water least
    step = np.abs(np.diff(images[:, 3], axis=-1))
    rough = [float(step[(masks[..., 1:] == code) & (masks[..., :-1] == code)].mean()) for code in range(5)]
    assert int(np.argmin(rough)) == LANDCOVER_CLASSES.index("water")


def test_generation_is_deterministic_by_seed_and_the_scene_does_not_depend_on_the_artefact() -> None:
    a_images, a_masks = generate_tiles(4, seed=7, size=SIZE)
    b_images, b_masks = generate_tiles(4, seed=7, size=SIZE)
    assert np.array_equal(a_images, b_images) and np.array_equal(a_masks, b_masks)
    c_images, c_masks = generate_tiles(4, seed=8, size=SIZE)
    assert not np.array_equal(a_masks, c_masks) and not np.allclose(a_images, c_images)
    noisy, noisy_masks = generate_tiles(4, seed=7, artefact="noise", size=SIZE)
    assert np.array_equal(noisy_masks, a_masks) and not np.array_equal(noisy, a_images)
    assert np.array_equal(generate_tiles(4, seed=7, artefact="noise", size=SIZE)[0], noisy)


def test_generation_is_fast() -> None:
    import time

    started = time.perf_counter()
    generate_tiles(200, seed=0, size=64)
    assert time.perf_counter() - started < 10.0  # ~0.25 s on one shared core; a loose bound for busy CI


# -- artefacts ---------------------------------------------------------------------------------------
def test_apply_returns_a_float32_copy_and_strength_zero_changes_nothing(clean: np.ndarray) -> None:
    before = clean.copy()
    for artefact in ARTEFACTS:
        out = _apply(clean, artefact)
        assert out.dtype == np.float32 and out.shape == clean.shape and out is not clean
        assert np.array_equal(_apply(clean, artefact, strength=0.0), clean)
    assert np.array_equal(clean, before)  # never in place
    assert np.array_equal(_apply(clean, "clean"), clean)
    assert np.array_equal(_apply(clean.astype(np.float64), "clean"), clean)


def _stripe_delta(clean: np.ndarray, **kwargs) -> np.ndarray:
    return _apply(clean, "stripes", **kwargs) - clean


def test_stripes_are_zero_mean_per_tile_periodic_along_one_axis_and_sized_per_band(clean: np.ndarray) -> None:
    delta = _stripe_delta(clean)
    assert np.abs(delta.mean(axis=(2, 3))).max() < 1e-6  # zero mean per tile and band
    for tile in delta:
        rows_constant = np.allclose(tile, tile[:, :1, :], atol=1e-6)  # stripes along columns
        cols_constant = np.allclose(tile, tile[:, :, :1], atol=1e-6)
        assert rows_constant != cols_constant
        profile = tile[3, 0, :] if rows_constant else tile[3, :, 0]
        # one sinusoid: the autocorrelation's first peak sits at the period, 1.5-2 patches (12-16 px)
        lags = np.arange(6, 21)  # below twice the shortest period (24 px)
        corr = np.array([np.mean(profile[:-lag] * profile[lag:]) for lag in lags])
        assert 11 <= lags[np.argmax(corr)] <= 17
        # per-band amplitude: STRIPE_AMPLITUDE x U(0.75, 1.25), the same pattern in every band
        peak = np.abs(tile).reshape(len(BANDS), -1).max(axis=1)
        ratio = peak / np.asarray(STRIPE_AMPLITUDE)
        assert np.allclose(ratio, ratio[0], rtol=1e-4) and 0.7 < ratio[0] < 2 * 1.25
    # the period follows the patch: patch 4 -> 6-8 px
    small = _stripe_delta(clean, patch_size=4)[0, 0]
    profile = small[0, :] if np.allclose(small, small[:1, :], atol=1e-6) else small[:, 0]
    lags = np.arange(3, 20)
    corr = np.array([np.mean(profile[:-lag] * profile[lag:]) for lag in lags])
    assert 5 <= lags[np.argmax(corr)] <= 9
    # linear in strength
    assert np.allclose(_stripe_delta(clean, strength=2.0), 2 * delta, atol=1e-6)


def test_stripes_are_low_in_the_tile_spectrum_but_high_on_the_token_grid(clean: np.ndarray) -> None:
    delta = _stripe_delta(clean)
    assert band_energy(delta, 0.25, "pixel")["low_share"] > 0.9
    assert band_energy(delta, 0.25, "token", patch_size=8)["low_share"] < 0.1
    assert band_energy(delta, 0.25, "pooled", patch_size=8)["low_share"] < 0.1


def test_haze_is_a_positive_low_frequency_veil_strongest_in_blue(clean: np.ndarray) -> None:
    delta = _apply(clean, "haze") - clean
    assert float(delta.min()) > 0
    per_band = delta.mean(axis=(0, 2, 3))
    assert list(np.argsort(-per_band)) == [0, 1, 2, 3]  # blue > green > red > nir
    assert float(delta[:, 0].max()) <= HAZE_VEIL[0] + 1e-6
    for grid in ("pixel", "token"):
        assert band_energy(delta, 0.25, grid)["low_share"] > 0.99
    assert np.allclose(_apply(clean, "haze", strength=0.5) - clean, delta / 2, atol=1e-6)


def test_noise_is_white_gaussian_with_documented_sigma_and_dead_pixels() -> None:
    images = generate_tiles(64, seed=1, size=64)[0]
    out = _apply(images, "noise")
    dead = (out == 0).all(axis=1)
    assert 0 < dead.mean() < 4 * DEAD_PIXEL_RATE
    delta = (out - images).transpose(1, 0, 2, 3)[:, ~dead]  # [bands, live pixels]
    assert np.allclose(delta.std(axis=1), NOISE_SIGMA, rtol=0.05)
    assert np.abs(delta.mean(axis=1)).max() < 0.002
    # white: each band's energy spreads evenly, the low band holds its share of the area
    full = out - images
    assert band_energy(full, 0.25, "pixel")["low_share"] == pytest.approx(_low_area(64, 64), abs=0.02)
    assert band_energy(full, 0.25, "token")["low_share"] == pytest.approx(_low_area(8, 8), abs=0.03)
    assert abs(float(np.corrcoef(delta[0], delta[1])[0, 1])) < 0.02  # bands independent


def _blockiness(images: np.ndarray) -> float:
    """Mean |step| across the 8-px block borders over the mean |step| inside the blocks."""
    step = np.abs(np.diff(images, axis=-1))
    border = (np.arange(step.shape[-1]) % 8) == 7
    return float(step[..., border].mean() / step[..., ~border].mean())


def test_jpeg_is_8bit_and_8x8_blocky(clean: np.ndarray) -> None:
    out = _apply(clean, "jpeg")
    assert np.allclose(out * 255, np.rint(out * 255), atol=1e-4) and out.min() >= 0 and out.max() <= 1
    assert _blockiness(out) > 1.5 * _blockiness(clean)
    assert _blockiness(_apply(clean, "jpeg", strength=0.2)) < _blockiness(out)  # higher quality, less blocky
    assert np.abs(out - clean).mean() > 0.005
    assert [jpeg_quality(s) for s in (0.0, 0.5, 1.0, 5.0)] == [100, 55, 10, 1]


def test_colour_is_a_per_tile_per_band_gain_and_offset(clean: np.ndarray) -> None:
    out = _apply(clean, "colour")
    for tile_in, tile_out in zip(clean, out, strict=True):
        for band_in, band_out in zip(tile_in, tile_out, strict=True):
            gain, offset = np.polyfit(band_in.ravel(), band_out.ravel(), 1)
            assert np.allclose(gain * band_in + offset, band_out, atol=1e-5)
            assert math.exp(-COLOUR_LOG_GAIN) - 1e-4 <= gain <= math.exp(COLOUR_LOG_GAIN) + 1e-4
            assert abs(offset) <= COLOUR_OFFSET + 1e-5
    gains = [np.polyfit(clean[0, b].ravel(), out[0, b].ravel(), 1)[0] for b in range(4)]
    assert np.ptp(gains) > 1e-3  # bands get their own gains


def test_combinations_apply_in_order_from_one_generator(clean: np.ndarray) -> None:
    combined = _apply(clean, "haze+noise", seed=5)
    rng = np.random.default_rng(5)
    manual = apply_artefact(apply_artefact(clean, "haze", rng), "noise", rng)
    assert np.array_equal(combined, manual)
    assert np.array_equal(_apply(clean, " haze + noise ", seed=5), combined)
    assert not np.array_equal(_apply(clean, "noise+haze", seed=5), combined)
    images, masks = generate_tiles(3, seed=2, artefact="stripes+jpeg", size=SIZE)
    assert masks.shape == (3, SIZE, SIZE) and _blockiness(images) > 1.2


def test_artefact_parts() -> None:
    assert artefact_parts("clean") == ()
    assert artefact_parts("noise") == ("noise",)
    assert artefact_parts("stripes + haze+jpeg") == ("stripes", "haze", "jpeg")


@pytest.mark.parametrize(
    ("artefact", "message"),
    [
        ("fog", "Unknown artefact 'fog'"),
        ("haze+fog", "'stripes', 'haze', 'noise', 'jpeg', 'colour'"),
        ("clean+noise", "leave it out"),
        ("noise+noise", "twice"),
        (3, "is a name"),
    ],
)
def test_artefact_name_errors(artefact, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        artefact_parts(artefact)


def test_generate_and_apply_errors(clean: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for kwargs, message in [
        ({"count": 0}, "`count` must be an integer >= 1"),
        ({"size": 4}, "`size` must be an integer >= 8"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
        ({"strength": -0.5}, "`strength` must be a finite number >= 0"),
        ({"strength": float("nan")}, "finite"),
        ({"strength": "strong"}, "`strength` must be a number"),
        ({"artefact": "smog"}, "Unknown artefact 'smog'"),
        ({"patch_size": 0, "artefact": "stripes"}, "`patch_size` must be an integer >= 1"),
    ]:
        options = {"count": 2, "seed": 0, "size": 16} | kwargs
        with pytest.raises(ValueError, match=message):
            generate_tiles(**options)
    with pytest.raises(ValueError, match=r"\[N, 4, S, S\].*shape \(4, 64, 64\)"):
        apply_artefact(clean[0], "noise", rng)
    with pytest.raises(ValueError, match=r"square tiles.*shape \(16, 4, 64, 32\)"):
        apply_artefact(clean[..., :32], "noise", rng)
    with pytest.raises(ValueError, match="dtype int64"):
        apply_artefact(clean.astype(np.int64), "noise", rng)
    with pytest.raises(ValueError, match="numpy Generator"):
        apply_artefact(clean, "noise", 0)
    with pytest.raises(ValueError, match="`strength`"):
        apply_artefact(clean, "noise", rng, strength=-1)


# -- spectra -----------------------------------------------------------------------------------------
def test_low_band_mask_and_band_energy() -> None:
    mask = low_band_mask(8, 8, 0.25)  # half-width floor(8 * 0.25 / 2) = 1 around the centre (4, 4)
    assert mask.sum() == 9 and mask[3:6, 3:6].all()
    assert low_band_mask(64, 32, 0.25).sum() == 17 * 9
    constant = np.ones((2, 1, 16, 16))
    assert band_energy(constant)["low_share"] == pytest.approx(1.0)
    checker = np.indices((16, 16)).sum(axis=0) % 2 * 2.0 - 1.0
    result = band_energy(checker[None, None])
    assert result["low_share"] == pytest.approx(0.0, abs=1e-12)
    assert result["low"] + result["high"] == pytest.approx(float((checker**2).sum()))
    # a stripe of period 4 px repeats in every 8-px patch: on the token grid it is a constant (low band)
    stripes = np.broadcast_to(np.sin(np.pi * np.arange(16) / 2)[None, None, None, :], (1, 1, 16, 16))
    assert band_energy(stripes, grid="token", patch_size=8)["low_share"] == pytest.approx(1.0)
    assert band_energy(stripes, grid="pixel")["low_share"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(band_energy(np.zeros((1, 1, 8, 8)))["low_share"])
    with pytest.raises(ValueError, match=r"`cutoff_ratio` must be in \(0, 1\)"):
        low_band_mask(8, 8, 1.0)
    with pytest.raises(ValueError, match="`grid` must be"):
        band_energy(constant, grid="tokens")
    with pytest.raises(ValueError, match="divisible by 6"):
        band_energy(constant, grid="token", patch_size=6)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        band_energy(constant[0])


# -- the datamodule ------------------------------------------------------------------------------------
def _module(**kwargs) -> LandCoverDataModule:
    options = {"num_train": 10, "num_val": 5, "num_test": 3, "tile_size": SIZE, "batch_size": 4} | kwargs
    return LandCoverDataModule(**options)


def test_datamodule_batches_shapes_and_groups() -> None:
    dm = _module()
    assert dm.num_classes == 5 and dm.class_names == list(LANDCOVER_CLASSES)
    assert dm.input_shape == (4, SIZE, SIZE) and dm.bands == list(BANDS)
    check_groups(dm)
    assert dm.group_attributes == ["artefact"]
    assert dm.group_names == {"artefact": ["clean", *DEFAULT_TRAIN_ARTEFACTS]}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "y", "group"}
    assert batch["x"].shape == (4, 4, SIZE, SIZE) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (4, SIZE, SIZE) and batch["y"].dtype == torch.long
    assert batch["group"].shape == (4, 1) and batch["group"].dtype == torch.long
    assert int(batch["y"].max()) < 5 and int(batch["y"].min()) >= 0
    sizes = {split: len(dm.split_dataset(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 10, "val": 5, "test": 3 * 6}
    # groups encode each tile's artefact: training tiles take the artefacts in turn
    for split in ("train", "val", "test"):
        _, _, names = dm.split_arrays(split)
        codes = dm.split_dataset(split).groups[:, 0].tolist()
        assert [dm.group_names["artefact"][code] for code in codes] == names
    assert dm.split_arrays("train")[2][:6] == [*DEFAULT_TRAIN_ARTEFACTS, "stripes"]
    assert dm.split_arrays("test")[2] == [name for name in dm.group_names["artefact"] for _ in range(3)]
    assert len(dm.test_dataloader()) == math.ceil(18 / 4) and len(dm.predict_dataloader()) == 5


def test_test_split_pairs_scenes_and_artefacts_shift_them() -> None:
    dm = _module(test_artefacts=["clean", "noise", "haze+colour"])
    images, masks, names = dm.split_arrays("test")
    blocks = images.reshape(3, 3, 4, SIZE, SIZE)
    assert np.array_equal(masks[:3], masks[3:6]) and np.array_equal(masks[:3], masks[6:])
    assert not np.allclose(blocks[0], blocks[1]) and not np.allclose(blocks[0], blocks[2])
    assert names[-1] == "haze+colour"
    assert dm.group_names["artefact"] == [
        "clean",
        "noise",
        "haze+colour",
        "stripes",
        "haze",
        "jpeg",
        "colour",
    ]
    # an artefact's tiles do not depend on which other artefacts are listed
    alone = _module(test_artefacts=["noise"]).split_arrays("test")[0]
    assert np.array_equal(alone, blocks[1])
    # canonical names
    assert _module(test_artefacts=["haze + colour"]).test_artefacts == ["haze+colour"]


def test_datamodule_is_deterministic_by_seed_and_splits_are_disjoint() -> None:
    first, second, other = _module(), _module(), _module(seed=1)
    for split in ("train", "val", "test"):
        assert np.array_equal(first.split_arrays(split)[0], second.split_arrays(split)[0])
        assert np.array_equal(first.split_arrays(split)[1], second.split_arrays(split)[1])
        assert not np.array_equal(first.split_arrays(split)[1], other.split_arrays(split)[1])
    scenes = {split: first.split_arrays(split)[1] for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        for mask in scenes[a]:
            assert not any(np.array_equal(mask, other_mask) for other_mask in scenes[b])
    # no tile equals a standalone generate_tiles tile of the same seed either
    standalone = generate_tiles(10, seed=0, size=SIZE)[1]
    assert not any(np.array_equal(mask, s) for mask in scenes["train"] for s in standalone)


def test_datamodule_strength_zero_gives_clean_tiles_and_setup_builds_all_splits() -> None:
    dm = _module(strength=0.0, train_artefacts=["noise"], test_artefacts=["clean", "noise"])
    dm.setup("fit")
    images = dm.split_arrays("test")[0]
    assert np.array_equal(images[:3], images[3:])
    assert all(isinstance(dm.split_dataset(split), LandCoverTiles) for split in ("train", "val", "test"))
    item = dm.split_dataset("train")[0]
    assert item["group"].tolist() == [dm.group_names["artefact"].index("noise")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_artefacts": ["noise", "smog"]}, "Unknown artefact 'smog'.*'haze'"),
        ({"test_artefacts": ["clean+haze"]}, "leave it out"),
        ({"train_artefacts": "noise"}, r"list of artefact names.*\['noise'\]"),
        ({"train_artefacts": []}, "`train_artefacts` is empty"),
        ({"test_artefacts": ["noise", "noise"]}, r"repeats \['noise'\]"),
        ({"strength": -1.0}, "`strength` must be a finite number >= 0"),
        ({"tile_size": 36}, "tile_size=32"),
        ({"tile_size": 4}, "`tile_size` must be an integer >= 8"),
        ({"patch_size": 0}, "`patch_size` must be an integer >= 1"),
        ({"num_train": 0}, "`num_train` must be an integer >= 1"),
        ({"num_val": 0}, "`num_val`"),
        ({"num_test": -2}, "`num_test`"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
    ],
)
def test_datamodule_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _module(**kwargs)


def test_bad_split_and_dataset_errors() -> None:
    with pytest.raises(ValueError, match="`split` must be one of"):
        _module().split_arrays("holdout")
    with pytest.raises(ValueError, match="one of each per tile"):
        LandCoverTiles(np.zeros((2, 4, 8, 8)), np.zeros((1, 8, 8)), np.zeros((2, 1)))
