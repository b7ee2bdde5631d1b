"""Generated multispectral land-cover tiles and the sensor artefacts that shift them (numpy, vectorised).

A tile is four bands (``BANDS``: blue, green, red, near infrared) of surface reflectance, roughly in
[0, 1], over a map of land-cover regions: a Voronoi partition of the tile with warped borders, each region
one of ``LANDCOVER_CLASSES`` (drawn uniformly). Classes differ in spectrum *and* texture, and a model needs
both: forest and cropland share a vegetation spectrum, urban roofs and bare soil overlap.

- ``water``: smooth, dark, lowest near infrared;
- ``forest``: tree crowns 2–3 px across (a squashed Gaussian field), high and varying near infrared;
- ``cropland``: parallel field strips 4–9 px wide at a random angle, each strip crop-like or fallow;
- ``urban``: a grid (period 6–10 px) of roof blocks of varied brightness between darker streets;
- ``bare_soil``: fine grain, the reddest.

Every class but water also varies per band on its own over ~1 px; each tile has its own illumination.

``apply_artefact`` adds one of ``ARTEFACTS`` (or several, ``"a+b"`` applied in that order): periodic
detector ``stripes`` (zero-mean per tile, period 1.5–2 × the ViT patch so that they stay in the high band
of the token grid), low-frequency ``haze`` (strongest in blue), Gaussian sensor ``noise`` with a few dead
pixels, per-band ``jpeg`` compression at low quality (8×8 blocks), per-band ``colour`` gain and offset.
Every amplitude scales with ``strength`` (0 = no change). Formulas and measured spectra are in
``datasets_cards/generated_landcover.md``; :func:`band_energy` measures where an artefact puts its energy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

__all__ = [
    "ARTEFACTS",
    "BANDS",
    "CLASS_REFLECTANCE",
    "CLASS_VARIABILITY",
    "COLOUR_LOG_GAIN",
    "COLOUR_OFFSET",
    "DEAD_PIXEL_RATE",
    "GENERATOR_VERSION",
    "HAZE_VEIL",
    "ILLUMINATION",
    "LANDCOVER_CLASSES",
    "NOISE_SIGMA",
    "STRIPE_AMPLITUDE",
    "STRIPE_PERIOD",
    "apply_artefact",
    "artefact_parts",
    "band_energy",
    "generate_tiles",
    "jpeg_quality",
    "low_band_mask",
]

#: Bumped whenever the same seed would give different tiles (cache keys of models trained on them).
GENERATOR_VERSION: int = 1
#: Label value ``k`` is ``LANDCOVER_CLASSES[k]``; every value is a real class (no background, no ignore).
LANDCOVER_CLASSES: tuple[str, ...] = ("water", "forest", "cropland", "urban", "bare_soil")
#: Channel order of a tile.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
#: The artefacts ``apply_artefact`` knows; ``"a+b"`` applies ``a`` then ``b``.
ARTEFACTS: tuple[str, ...] = ("clean", "stripes", "haze", "noise", "jpeg", "colour")

#: Mean reflectance (blue, green, red, nir) of each class before its texture and the tile's illumination.
CLASS_REFLECTANCE: dict[str, tuple[float, float, float, float]] = {
    "water": (0.07, 0.06, 0.04, 0.02),
    "forest": (0.035, 0.065, 0.04, 0.31),
    "cropland": (0.04, 0.07, 0.045, 0.30),
    "urban": (0.13, 0.14, 0.16, 0.20),  # roofs (each block x U(0.7, 1.3)); streets are _STREET
    "bare_soil": (0.12, 0.145, 0.18, 0.22),
}
#: Standard deviation of each class's per-band natural variability (independent between bands, ~1 px).
CLASS_VARIABILITY: tuple[float, ...] = (0.004, 0.015, 0.015, 0.015, 0.015)
#: Each tile's overall brightness is × U(1 - i, 1 + i) (sun elevation, season).
ILLUMINATION: float = 0.05
_STREET = np.array([0.07, 0.07, 0.08, 0.09], dtype=np.float32)

#: Stripe amplitude per band at strength 1 (reflectance; each tile's ×U(0.75, 1.25)).
STRIPE_AMPLITUDE: tuple[float, ...] = (0.03, 0.025, 0.025, 0.04)
#: Stripe period range as multiples of the patch size: [1.5, 2] × p keeps the token-grid frequency p/P in
#: [0.5, 0.67] cycles per token, which folds to 0.33–0.5 (the high band); a period that divides p would
#: fold to 0 (every patch sees the same stripes: a constant, the low band).
STRIPE_PERIOD: tuple[float, float] = (1.5, 2.0)
#: Haze veil per band at strength 1 (the most a hazy pixel gains); blue scatters most.
HAZE_VEIL: tuple[float, ...] = (0.15, 0.11, 0.07, 0.03)
#: Gaussian noise standard deviation per band at strength 1.
NOISE_SIGMA: tuple[float, ...] = (0.02, 0.02, 0.02, 0.03)
#: Share of pixels that read 0 in every band (dead detector elements) at strength 1.
DEAD_PIXEL_RATE: float = 0.001
#: Colour: per tile and band, gain = exp(U(-g, g) × strength), offset = U(-o, o) × strength.
COLOUR_LOG_GAIN: float = 0.3
COLOUR_OFFSET: float = 0.04

_Grid = Literal["pixel", "token", "pooled"]


# -- checks --------------------------------------------------------------------------------------
def _check_int(value: object, name: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}; {fix}.")
    return int(value)


def _check_strength(strength: object) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.number)):
        raise ValueError(f"`strength` must be a number >= 0, got {strength!r}.")
    if not math.isfinite(float(strength)) or float(strength) < 0:
        raise ValueError(
            f"`strength` must be a finite number >= 0 (0 = no artefact, 1 = the documented default), "
            f"got {strength!r}."
        )
    return float(strength)


def artefact_parts(artefact: str) -> tuple[str, ...]:
    """The artefacts ``artefact`` applies, in order: ``"clean"`` → ``()``, ``"haze+noise"`` → both.

    Unknown names, ``"clean"`` inside a combination and repeats are errors that list the valid names.
    """
    if not isinstance(artefact, str):
        raise ValueError(f"An artefact is a name (one of {ARTEFACTS}, or 'a+b'), got {artefact!r}.")
    parts = tuple(part.strip() for part in artefact.split("+"))
    unknown = [part for part in parts if part not in ARTEFACTS]
    if unknown:
        raise ValueError(
            f"Unknown artefact {unknown[0]!r} in {artefact!r}; the artefacts are {list(ARTEFACTS)}, "
            "combined in order with '+' (e.g. 'haze+noise')."
        )
    if parts == ("clean",):
        return ()
    if "clean" in parts:
        raise ValueError(
            f"{artefact!r} combines 'clean' with artefacts; 'clean' means none, so leave it out of a "
            "combination (e.g. 'haze+noise')."
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"{artefact!r} names an artefact twice; raise `strength` instead of repeating it.")
    return parts


# -- building blocks -------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, count: int, size: int, sigma: float) -> np.ndarray:
    """``[count, size, size]`` Gaussian random fields with the spectrum of white noise blurred by a Gaussian
    of ``sigma`` px (periodic), zero mean and unit standard deviation per tile.

    Drawn in the frequency domain (complex Gaussian coefficients times the Gaussian's transfer function,
    only where it exceeds 1e-4), which skips the forward FFT of the white noise.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    kernel = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx**2 + fy**2)).astype(np.float32)
    keep = kernel > 1e-4
    keep[0, 0] = False  # no mean
    draws = rng.standard_normal((2, count, int(keep.sum())), dtype=np.float32)
    coefficients = np.zeros((count, *kernel.shape), dtype=np.complex64)
    coefficients[:, keep] = (draws[0] + 1j * draws[1]) * kernel[keep]
    field = np.fft.irfft2(coefficients, s=(size, size)).astype(np.float32, copy=False)
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return field


def _fine_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ~1 px: white noise through the binomial filter
    [1, 2, 1] / 4 along both image axes (periodic); each pass scales the variance by 6 / 16."""
    field = rng.standard_normal(shape, dtype=np.float32)
    for axis in (-2, -1):
        field = 2 * field + np.roll(field, 1, axis=axis) + np.roll(field, -1, axis=axis)
    return field * np.float32(1 / 6)  # std of sum [1, 2, 1] twice: sqrt(6) * sqrt(6)


def _region_map(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Class of each pixel: a Voronoi partition with warped borders, one uniform class per region."""
    regions = max(4, round(6 * (size / 64) ** 2))
    centres = rng.uniform(0, size, (count, regions, 2)).astype(np.float32)
    # borders wander by ~5 px over ~8 px (fixed in px, like the regions' area: the ground sampling
    # distance does not change with the tile size)
    warp = _smooth_field(rng, 2 * count, size, 8.0).reshape(2, count, size, size) * np.float32(16 / 3)
    axis = np.arange(size, dtype=np.float32)
    rows = axis[None, :, None] + warp[0]
    cols = axis[None, None, :] + warp[1]
    best = np.full((count, size, size), np.inf, dtype=np.float32)
    region = np.zeros((count, size, size), dtype=np.int64)
    closer = np.empty((count, size, size), dtype=bool)
    rows, cols = -2 * rows, -2 * cols
    for k in range(regions):
        # |p - c|^2 less the |p|^2 that every centre shares: c.c - 2 p.c
        cy, cx = centres[:, k, 0, None, None], centres[:, k, 1, None, None]
        distance = rows * cy + cols * cx + (cy * cy + cx * cx)
        np.less(distance, best, out=closer)
        np.copyto(best, distance, where=closer)
        np.copyto(region, k, where=closer)
    classes = rng.integers(0, len(LANDCOVER_CLASSES), (count, regions))
    return np.take_along_axis(classes, region.reshape(count, -1), axis=1).reshape(count, size, size)


def _texture_terms(
    rng: np.random.Generator, count: int, size: int
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Each class's texture as ``(class code, field [count, size, size], per-band weights [4])`` terms:
    the class's pixels get ``CLASS_REFLECTANCE`` (urban: the street) plus ``field × weights`` per term."""
    axis = np.arange(size, dtype=np.float32)
    rows, cols = axis[None, :, None], axis[None, None, :]
    code = {name: index for index, name in enumerate(LANDCOVER_CLASSES)}

    def band(*values: float) -> np.ndarray:
        return np.array(values, dtype=np.float32)

    terms = []
    # water: a faint, very smooth ripple
    terms.append((code["water"], _smooth_field(rng, count, size, 8.0), band(0.008, 0.008, 0.008, 0.008)))
    # forest: tree crowns 2-3 px across, a squashed Gaussian field
    crowns = np.tanh(1.5 * _smooth_field(rng, count, size, 1.2))
    terms.append((code["forest"], crowns, band(0.008, 0.015, 0.008, 0.06)))
    # cropland: strips of width w at angle theta, each crop-like (state > 0) or fallow (state < 0)
    theta = rng.uniform(0, math.pi, count).astype(np.float32)[:, None, None]
    width = rng.uniform(4.0, 9.0, count).astype(np.float32)[:, None, None]
    along = (cols * np.cos(theta) + rows * np.sin(theta)) / width
    strips = int(math.ceil(2 * size * math.sqrt(2) / 4.0)) + 2
    index = np.floor(along).astype(np.int64) + strips // 2
    state = rng.uniform(-1.0, 1.0, (count, strips)).astype(np.float32)
    field = np.take_along_axis(state, index.reshape(count, -1), axis=1).reshape(count, size, size)
    terms.append((code["cropland"], field, band(-0.012, -0.018, -0.025, 0.07)))
    # urban: roofs of side ~0.65 p on a grid of period p (6-10 px), each block its own brightness
    period = rng.integers(6, 11, count)[:, None, None]
    offset = rng.integers(0, 10, (count, 2))
    r = np.arange(size)[None, :, None] + offset[:, 0, None, None]
    c = np.arange(size)[None, None, :] + offset[:, 1, None, None]
    side = np.rint(0.65 * period)
    roof = (((r % period) < side) & ((c % period) < side)).astype(np.float32)
    cells = size // 6 + 3
    brightness = rng.uniform(0.7, 1.3, (count, cells * cells)).astype(np.float32)
    block = np.take_along_axis(brightness, ((r // period) * cells + c // period).reshape(count, -1), axis=1)
    terms.append((code["urban"], roof * block.reshape(count, size, size), band(*CLASS_REFLECTANCE["urban"])))
    terms.append((code["urban"], roof, -_STREET))
    # bare soil: fine grain plus a gentle smooth variation
    grain = rng.standard_normal((count, size, size), dtype=np.float32)
    terms.append((code["bare_soil"], grain, band(0.012, 0.016, 0.02, 0.02)))
    terms.append((code["bare_soil"], _smooth_field(rng, count, size, 3.0), band(0.015, 0.015, 0.015, 0.015)))
    return terms


def generate_tiles(
    count: int, seed: int, artefact: str = "clean", size: int = 64, strength: float = 1.0, patch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` tiles: images ``float32 [count, 4, size, size]`` (reflectance), masks ``int64 [count, size, size]``.

    Deterministic in ``seed``. The scene (regions and textures) does not depend on ``artefact``: the clean
    tiles of a seed are the same scenes the artefact tiles of that seed show (the artefact draws from its
    own stream). ``patch_size`` sets the stripes' period (see :func:`apply_artefact`).
    """
    count = _check_int(count, "count", 1, "ask for at least one tile")
    size = _check_int(size, "size", 8, "tiles are at least 8 px")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")
    parts = artefact_parts(artefact)
    strength = _check_strength(strength)
    images, masks = _scenes(np.random.default_rng([int(seed), 0]), count, size)
    if parts:
        images = apply_artefact(images, artefact, np.random.default_rng([int(seed), 1]), strength, patch_size)
    return images, masks


def _scenes(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clean images and masks of ``count`` new scenes drawn from ``rng``."""
    masks = _region_map(rng, count, size)
    base = np.array([CLASS_REFLECTANCE[name] for name in LANDCOVER_CLASSES], dtype=np.float32)
    base[LANDCOVER_CLASSES.index("urban")] = _STREET  # urban texture terms add the roofs
    images = np.ascontiguousarray(np.moveaxis(base[masks], -1, 1))
    inside = {code: masks == code for code in range(len(LANDCOVER_CLASSES))}
    for code, field, weights in _texture_terms(rng, count, size):
        field *= inside[code]
        for band, weight in enumerate(weights):
            images[:, band] += weight * field
    # natural variability: every band varies on its own over ~1 px (sub-pixel mixtures, moisture, ...)
    variability = _fine_field(rng, images.shape)
    images += variability * np.asarray(CLASS_VARIABILITY, dtype=np.float32)[masks][:, None]
    illumination = rng.uniform(1 - ILLUMINATION, 1 + ILLUMINATION, count).astype(np.float32)[
        :, None, None, None
    ]
    return np.clip(images * illumination, 0.0, 1.0).astype(np.float32), masks


# -- artefacts -----------------------------------------------------------------------------------
def _per_band(values: tuple[float, ...], strength: float) -> np.ndarray:
    return (np.asarray(values, dtype=np.float32) * strength)[None, :, None, None]


def _stripes(images: np.ndarray, rng: np.random.Generator, strength: float, patch_size: int) -> np.ndarray:
    count, _, size, _ = images.shape
    low, high = STRIPE_PERIOD
    period = rng.uniform(low * patch_size, high * patch_size, count)
    phase = rng.uniform(0.0, 2 * math.pi, count)
    along_columns = rng.random(count) < 0.5
    scale = rng.uniform(0.75, 1.25, count)
    position = np.arange(size)[None, :]
    profile = np.sin(2 * math.pi * position / period[:, None] + phase[:, None])
    profile -= profile.mean(axis=1, keepdims=True)  # zero mean per tile, whatever size / period is
    profile = profile.astype(np.float32)
    pattern = np.where(along_columns[:, None, None], profile[:, None, :], profile[:, :, None])
    amplitude = _per_band(STRIPE_AMPLITUDE, strength) * scale.astype(np.float32)[:, None, None, None]
    return images + amplitude * pattern[:, None]


def _haze(images: np.ndarray, rng: np.random.Generator, strength: float, patch_size: int) -> np.ndarray:
    count, _, size, _ = images.shape
    field = _smooth_field(rng, count, size, size / 4)
    low = field.min(axis=(1, 2), keepdims=True)
    spread = field.max(axis=(1, 2), keepdims=True) - low
    density = (field - low) / np.maximum(spread, 1e-8)  # [0, 1] per tile
    thickness = rng.uniform(0.5, 1.0, count).astype(np.float32)[:, None, None]
    veil = (thickness * (0.25 + 0.75 * density))[:, None]
    return images + _per_band(HAZE_VEIL, strength) * veil


def _noise(images: np.ndarray, rng: np.random.Generator, strength: float, patch_size: int) -> np.ndarray:
    count, bands, size, _ = images.shape
    noisy = images + _per_band(NOISE_SIGMA, strength) * rng.standard_normal(images.shape, dtype=np.float32)
    dead = rng.random((count, size, size)) < min(1.0, DEAD_PIXEL_RATE * strength)
    return np.where(dead[:, None], np.float32(0.0), noisy)


def jpeg_quality(strength: float) -> int:
    """JPEG quality of the ``jpeg`` artefact: ``max(1, round(100 - 90 × strength))`` (10 at strength 1)."""
    return max(1, round(100 - 90 * _check_strength(strength)))


def _jpeg(images: np.ndarray, rng: np.random.Generator, strength: float, patch_size: int) -> np.ndarray:
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    count, bands, size, width = images.shape
    planes = (
        np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(count * bands, 1, size, width)
    )
    encoded = encode_jpeg([torch.from_numpy(plane) for plane in planes], quality=jpeg_quality(strength))
    decoded = decode_jpeg(encoded)
    restored = torch.stack(decoded).numpy().reshape(count, bands, size, width)
    return restored.astype(np.float32) / np.float32(255.0)


def _colour(images: np.ndarray, rng: np.random.Generator, strength: float, patch_size: int) -> np.ndarray:
    count, bands = images.shape[:2]
    gain = np.exp(rng.uniform(-COLOUR_LOG_GAIN, COLOUR_LOG_GAIN, (count, bands)) * strength)
    offset = rng.uniform(-COLOUR_OFFSET, COLOUR_OFFSET, (count, bands)) * strength
    return images * gain.astype(np.float32)[:, :, None, None] + offset.astype(np.float32)[:, :, None, None]


_APPLY: dict[str, Callable[[np.ndarray, np.random.Generator, float, int], np.ndarray]] = {
    "stripes": _stripes,
    "haze": _haze,
    "noise": _noise,
    "jpeg": _jpeg,
    "colour": _colour,
}


def apply_artefact(
    images: np.ndarray, artefact: str, rng: np.random.Generator, strength: float = 1.0, patch_size: int = 8
) -> np.ndarray:
    """A copy of ``images`` (square tiles, ``[N, 4, S, S]`` reflectance) with ``artefact`` (``"a+b"``: a, then b).

    Each tile draws its own parameters from ``rng``; ``strength`` scales every amplitude (0 = unchanged;
    for ``jpeg`` the quality, :func:`jpeg_quality`). Values are not clipped (stripes stay exactly
    zero-mean, noise exactly additive), except by ``jpeg``, which encodes 8-bit reflectance × 255.
    ``patch_size``: the ViT patch, which sets the stripes' period (``STRIPE_PERIOD`` × it).
    """
    parts = artefact_parts(artefact)
    strength = _check_strength(strength)
    patch_size = _check_int(patch_size, "patch_size", 1, "pass the ViT's patch size in px (e.g. 8)")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"`rng` must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )
    array = np.asarray(images)
    if (
        array.ndim != 4
        or array.shape[1] != len(BANDS)
        or array.shape[2] != array.shape[3]
        or not np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(
            f"`images` must be float reflectance [N, {len(BANDS)}, S, S] ({', '.join(BANDS)}; square tiles), got "
            f"dtype {array.dtype} and shape {array.shape}."
        )
    out = array.astype(np.float32, copy=True)
    if strength == 0:
        return out
    for part in parts:
        out = _APPLY[part](out, rng, strength, patch_size)
    return out.astype(np.float32, copy=False)


# -- spectra -------------------------------------------------------------------------------------
def low_band_mask(height: int, width: int, cutoff_ratio: float = 0.25) -> np.ndarray:
    """Boolean ``[height, width]`` low band of an ``fftshift``-ed spectrum: the centred square of half-width
    ``floor(H × ρ / 2)`` rows and ``floor(W × ρ / 2)`` columns (the MoFA adapter's split)."""
    if not 0.0 < float(cutoff_ratio) < 1.0:
        raise ValueError(f"`cutoff_ratio` must be in (0, 1), got {cutoff_ratio!r}.")
    rows = np.abs(np.arange(height) - height // 2) <= math.floor(height * cutoff_ratio / 2)
    cols = np.abs(np.arange(width) - width // 2) <= math.floor(width * cutoff_ratio / 2)
    return rows[:, None] & cols[None, :]


def band_energy(
    images: np.ndarray, cutoff_ratio: float = 0.25, grid: _Grid = "pixel", patch_size: int = 8
) -> dict[str, float]:
    """Energy (sum of squares, orthonormal FFT) of ``images [N, C, H, W]`` in the low and high band.

    ``grid="pixel"``: the spectrum of each band over the tile. ``"token"``: the tile cut into
    ``patch_size`` patches and each of the ``C × p²`` within-patch positions seen as a channel over the
    ``H/p × W/p`` token grid (space-to-depth): what any linear patch embedding passes to the token grid,
    so a split of the tokens' spectrum sees these frequencies. ``"pooled"``: the patch means only.
    Returns ``{"low": ..., "high": ..., "low_share": low / total}``; low + high is the total energy.
    """
    array = np.asarray(images, dtype=np.float64)
    if array.ndim != 4:
        raise ValueError(f"`images` must be [N, C, H, W], got shape {array.shape}.")
    if grid not in ("pixel", "token", "pooled"):
        raise ValueError(f"`grid` must be 'pixel', 'token' or 'pooled', got {grid!r}.")
    count, channels, height, width = array.shape
    if grid != "pixel":
        patch_size = _check_int(patch_size, "patch_size", 1, "pass the ViT's patch size in px")
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"A {height}×{width} tile does not split into {patch_size}-px patches; use a size divisible "
                f"by {patch_size} (e.g. {max(1, height // patch_size) * patch_size})."
            )
        h, w = height // patch_size, width // patch_size
        blocks = array.reshape(count, channels, h, patch_size, w, patch_size)
        if grid == "pooled":
            array = blocks.mean(axis=(3, 5))
        else:
            array = blocks.transpose(0, 1, 3, 5, 2, 4).reshape(count, channels * patch_size**2, h, w)
    spectrum = np.fft.fftshift(np.fft.fft2(array, norm="ortho"), axes=(-2, -1))
    power = np.abs(spectrum) ** 2
    mask = low_band_mask(array.shape[-2], array.shape[-1], cutoff_ratio)
    low, total = float(power[..., mask].sum()), float(power.sum())
    high = max(total - low, 0.0)  # rounding can leave a tiny negative remainder
    return {"low": low, "high": high, "low_share": low / total if total > 0 else float("nan")}
