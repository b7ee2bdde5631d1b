"""A generated dermatology-like dataset with a planted, documented subgroup gap (see its dataset card).

Each image is a pigmented lesion on skin.  Malignant lesions have irregular borders and variegated
colour (blue-grey / dark-brown patches); benign ones are rounder and evenly brown.  The two classes
overlap (irregularity and variegation are drawn from overlapping distributions), so the task is not
trivially separable.  Sensitive attributes and what is planted (every strength is a ``DermatologySpec``
field):

- ``skin_tone``: dark skin is **under-represented** (``dark_fraction``) and has a **lower malignancy
  prevalence** (``prevalence_dark``), so the training set holds few dark malignant lesions.  Dark-skin
  images also come from a different **acquisition** (global contrast ``dark_contrast``, a warm cast, a
  Gaussian blur of ``dark_blur`` px), and the malignant colour variegation shows in **another palette**
  (pale and near-black patches instead of blue-grey and dark-brown, ``dark_palette``): cues learned on
  the many light-skin images do not carry across, and the few dark-skin ones must teach them.
  Some information is **genuinely lost**: the pigment contrasts less with dark skin
  (``dark_lesion_opacity``), part of its colour variegation is hidden (``dark_variegation``), the
  acquisition lowers contrast and blurs, and the under-exposed images carry more per-image sensor noise
  (``dark_noise`` vs ``light_noise``, each image's sigma drawn around it).
  Finally a **shortcut whose meaning differs by group**: a purple surgical-ink mark beside the lesion.
  In the light-skin images (the main clinic) lesions booked for excision are marked, so a mark goes
  with malignancy (``marker_light_malignant`` vs ``marker_light_benign``); in the dark-skin images (the
  other clinic) benign lesions photographed for follow-up are marked instead (``marker_dark_malignant``
  vs ``marker_dark_benign``).  Skin markings really do raise CNN melanoma scores (Winkler et al., JAMA
  Dermatol. 2019).  A model trained on the pooled data learns "mark = malignant" from the majority and
  misranks marked benign dark-skin lesions; a fairness-aware method that weighs the groups (group-DRO)
  or penalises what the score says about skin tone within a class can unlearn it.  Together: a real
  AUROC gap in favour of light skin that an adapted pretrained model shows, part irreducible (the lost
  information) and part closable (the shortcut, the shift and the under-representation).
- ``sex``: no effect at all (a negative control: its gap's CI should include zero).
- ``age``: older patients (60+) have a higher prevalence (+10 points) but images look the same.

Generation is deterministic in ``seed`` (numpy ``default_rng``); images are written as PNGs with a
``manifest.csv`` (``image, label, patient, skin_tone, sex, age, marker, split``) read by the generic loader;
``marker`` (0/1) is there for analysis, not as a model input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

GENERATOR_VERSION = 3


@dataclass(frozen=True)
class DermatologySpec:
    """Everything that defines one generated set (its cache key).

    Attributes:
        num_images: how many images (lesions) the set holds.
        image_size: square side of each image in px.
        seed: seeds every random draw of the generator (same spec, same set).
        test_fraction: share of patients (all their lesions) put in the test split.
        dark_fraction: share of dark-skin patients (under-representation).
        prevalence_light: malignancy prevalence on light skin (before the age effect).
        prevalence_dark: malignancy prevalence on dark skin (before the age effect).
        dark_lesion_opacity: pigment opacity on dark skin (light skin: 0.9); lower = less lesion contrast.
        dark_variegation: share of the malignant colour variegation visible on dark skin (1 = all).
        dark_palette: how far the variegation's colours move, on dark skin, from blue-grey / dark-brown to
            pale (depigmented) / near-black patches (0 = same colours as on light skin, 1 = the other palette).
        dark_contrast: global contrast factor of the dark-skin acquisition (1 = none).
        dark_blur: Gaussian blur sigma in pixels (at 64 px; scaled with ``image_size``) of that acquisition.
        light_noise: mean per-image sensor-noise sigma on light skin (pixel values in [0, 1]).
        dark_noise: mean per-image sensor-noise sigma on dark skin (pixel values in [0, 1]).
        marker_light_malignant: chance of a surgical-ink mark beside a malignant lesion on light skin (the
            four ``marker_*`` chances make the group-dependent shortcut).
        marker_light_benign: chance of a surgical-ink mark beside a benign lesion on light skin.
        marker_dark_malignant: chance of a surgical-ink mark beside a malignant lesion on dark skin.
        marker_dark_benign: chance of a surgical-ink mark beside a benign lesion on dark skin.
        version: the generator's version (``GENERATOR_VERSION``); a new generator gets new cache keys.
    """

    num_images: int = 2000
    image_size: int = 64
    seed: int = 0
    dark_fraction: float = 0.3
    prevalence_light: float = 0.4
    prevalence_dark: float = 0.25
    dark_lesion_opacity: float = 0.5
    dark_variegation: float = 0.85
    dark_palette: float = 1.0
    dark_contrast: float = 0.6
    dark_blur: float = 0.8
    light_noise: float = 0.02
    dark_noise: float = 0.025
    marker_light_malignant: float = 0.7
    marker_light_benign: float = 0.05
    marker_dark_malignant: float = 0.05
    marker_dark_benign: float = 0.5
    test_fraction: float = 0.3
    version: int = GENERATOR_VERSION

    def key(self) -> str:
        """Directory name: readable size/seed plus a digest of every field (any change regenerates)."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"derm_v{self.version}_n{self.num_images}_s{self.image_size}_seed{self.seed}_{digest}"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        fractions = ("dark_fraction", "test_fraction")
        unit = (
            "dark_palette",
            "prevalence_light",
            "prevalence_dark",
            "dark_lesion_opacity",
            "dark_variegation",
            "dark_contrast",
            "marker_light_malignant",
            "marker_light_benign",
            "marker_dark_malignant",
            "marker_dark_benign",
        )
        for name in fractions:
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in (0, 1), got {getattr(self, name)}.")
        for name in unit:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        for name in ("dark_blur", "light_noise", "dark_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.num_images < 8:
            raise ValueError(f"`num_images` must be >= 8, got {self.num_images}.")


def planted_overrides(planted: dict[str, float] | None) -> dict[str, float]:
    """Check ``planted`` names only ``DermatologySpec`` strengths (not size, seed or version) and return it."""
    planted = dict(planted or {})
    reserved = {"num_images", "image_size", "seed", "test_fraction", "version"}
    allowed = {field.name for field in fields(DermatologySpec)} - reserved
    unknown = sorted(set(planted) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown `planted` field(s) {unknown}; expected some of {sorted(allowed)} (size, seed and test share "
            "have their own arguments: num_images, generated_size, generation_seed, test_fraction)."
        )
    return planted


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((scale + 1, scale + 1)).astype(np.float32)
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255.0


def render_lesion(
    rng: np.random.Generator, size: int, malignant: bool, dark: bool, spec: DermatologySpec, marker: bool = False
) -> np.ndarray:
    """One ``[size, size, 3]`` float image in [0, 1]; ``marker`` adds a surgical-ink mark beside the lesion."""
    skin = np.array([0.86, 0.70, 0.60]) if not dark else np.array([0.46, 0.31, 0.23])
    skin = skin * rng.uniform(0.93, 1.07, size=3)
    texture = _smooth_noise(rng, size, 6)[..., None] - 0.5
    image = np.clip(skin[None, None, :] * (1 + 0.12 * texture), 0, 1)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, size * 0.06, size=2)
    dy, dx = yy - centre[0], xx - centre[1]
    radius_px, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    base = size * rng.uniform(0.15, 0.24)
    irregularity = abs(rng.normal(0.17, 0.06)) if malignant else abs(rng.normal(0.06, 0.04))
    border = np.ones_like(theta)
    for k in range(2, 7):
        border += (
            irregularity * rng.normal(0, 1) / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    inside = np.clip((base * border - radius_px) / 1.5 + 0.5, 0, 1)  # soft edge

    brown = np.array([0.42, 0.25, 0.16]) * rng.uniform(0.85, 1.15)
    variegation = rng.uniform(0.35, 1.0) if malignant else rng.uniform(0.0, 0.45)
    if dark:  # blue-grey / dark-brown patches hardly stand out from dark skin: part of the cue is lost
        variegation *= spec.dark_variegation
    patches = _smooth_noise(rng, size, 4)
    blue_grey, dark_brown = np.array([0.30, 0.30, 0.40]), np.array([0.18, 0.10, 0.07])
    if dark:  # on dark skin the variegation shows as pale (depigmented) and near-black patches instead
        blue_grey = (1 - spec.dark_palette) * blue_grey + spec.dark_palette * np.array([0.66, 0.56, 0.56])
        dark_brown = (1 - spec.dark_palette) * dark_brown + spec.dark_palette * np.array([0.07, 0.04, 0.04])
    mix = np.clip((patches - 0.5) * 3 * variegation + 0.5, 0, 1)[..., None]
    pigment = brown * (1 - variegation) + variegation * (mix * blue_grey + (1 - mix) * dark_brown)
    opacity = spec.dark_lesion_opacity if dark else 0.9  # pigment contrasts less with dark skin
    alpha = (inside * opacity)[..., None]
    image = image * (1 - alpha) + pigment * alpha
    if marker:  # a short purple ink arc outside the lesion, at a random angle
        angle, distance = rng.uniform(0, 2 * np.pi), base * rng.uniform(1.5, 1.9)
        arc = np.abs(np.angle(np.exp(1j * (theta - angle)))) < rng.uniform(0.35, 0.6)
        ring = np.abs(radius_px - distance) < size * 0.025
        ink = np.array([0.42, 0.16, 0.55]) * rng.uniform(0.9, 1.1)
        stroke = (arc & ring).astype(np.float32)[..., None] * 0.85
        image = image * (1 - stroke) + ink * stroke

    if dark:  # acquisition shift: lower contrast, warm colour cast, blur
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = mean + spec.dark_contrast * (image - mean)
        image = image * np.array([1.06, 1.0, 0.88]) + np.array([0.02, 0.01, 0.0])
        if spec.dark_blur > 0:
            image = _blur(image, spec.dark_blur * size / 64)
    sigma = (spec.dark_noise if dark else spec.light_noise) * rng.uniform(0.5, 1.5)  # per-image sensor noise
    image = image + rng.normal(0, sigma, size=image.shape)
    return np.clip(image, 0, 1)


def generate_dermatology(root: str | Path, spec: DermatologySpec = DermatologySpec()) -> Path:
    """Write (or reuse) the set for ``spec`` under ``root/<spec.key()>``; returns its ``manifest.csv``.

    A finished set is recognised by its ``generation.json``; a partly written one is regenerated.
    """
    directory = Path(root).expanduser() / spec.key()
    manifest = directory / "manifest.csv"
    done = directory / "generation.json"
    if manifest.is_file() and done.is_file() and json.loads(done.read_text()) == asdict(spec):
        return manifest
    spec.validate()
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    rows = []
    patient = 0
    while len(rows) < spec.num_images:
        dark = rng.random() < spec.dark_fraction
        sex = "female" if rng.random() < 0.5 else "male"
        age = int(rng.integers(20, 86))
        prevalence = (spec.prevalence_dark if dark else spec.prevalence_light) + (0.1 if age >= 60 else 0.0)
        split = "test" if rng.random() < spec.test_fraction else "train"
        for _ in range(int(rng.integers(1, 3))):  # one or two lesions per patient
            if len(rows) == spec.num_images:
                break
            malignant = bool(rng.random() < prevalence)
            marked = {
                (False, True): spec.marker_light_malignant,
                (False, False): spec.marker_light_benign,
                (True, True): spec.marker_dark_malignant,
                (True, False): spec.marker_dark_benign,
            }[(dark, malignant)]
            marker = bool(rng.random() < marked)
            image = render_lesion(rng, spec.image_size, malignant, dark, spec, marker)
            name = f"images/lesion_{len(rows):05d}.png"
            Image.fromarray((image * 255).round().astype(np.uint8)).save(directory / name)
            rows.append(
                {
                    "image": name,
                    "label": "malignant" if malignant else "benign",
                    "patient": f"P{patient:05d}",
                    "skin_tone": "dark" if dark else "light",
                    "sex": sex,
                    "age": age,
                    "marker": int(marker),
                    "split": split,
                }
            )
        patient += 1
    pd.DataFrame(rows).to_csv(manifest, index=False)
    done.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return manifest
