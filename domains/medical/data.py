"""Image datamodules with sensitive attributes: CSV manifests of real datasets and the generated set.

Batches: ``{"x": FloatTensor[B, 3, H, W], "y": LongTensor[B], "group": LongTensor[B, A]}`` where column
``a`` of ``group`` is the category code of attribute ``group_attributes[a]`` (names in ``group_names``).
Splits are patient-level (no patient's images on two sides): a ``split`` column in the manifest fixes
train/test (and optionally val); otherwise a seeded split by patient with ``test_fraction``.  Validation
is a seeded ``val_fraction`` of the training patients.  ``shots_per_class`` k keeps a seeded k training
images of each class (the few-shot protocol of CLIP adaptation papers); validation and test stay whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from verticals.core.data import SplitDataModule, encode_labels, few_shot_rows, make_loader
from verticals.domains.medical.manifests import attribute_categories, read_manifest
from verticals.domains.medical.synthetic import DermatologySpec, generate_dermatology, planted_overrides

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CACHE = "~/.cache/verticals/medical"

__all__ = [
    "GeneratedDermatologyDataModule",
    "ImageManifestDataset",
    "ManifestDataModule",
    "image_transforms",
    "patient_split",
]


def image_transforms(
    image_size: int, mean: Sequence[float], std: Sequence[float], *, train: bool, flips: bool = True
) -> v2.Compose:
    """Resize (short side) + centre crop to ``image_size``, random flips when training, then normalise."""
    steps: list[v2.Transform] = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train and flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class ImageManifestDataset(Dataset):
    """Images read from disk as RGB (grey X-rays are repeated to 3 channels), with label and groups.

    ``cache=True`` keeps each decoded image (resized to ``cache_size``) in memory after its first read:
    worth it for small sets trained for many epochs, not for a full HAM10000 at 224 px.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        groups: np.ndarray,
        transform: v2.Compose,
        cache: bool = False,
        cache_size: int | None = None,
    ) -> None:
        if not len(paths) == len(labels) == len(groups):
            raise ValueError(
                f"{len(paths)} paths, {len(labels)} labels, {len(groups)} group rows: must match."
            )
        self.paths, self.transform = list(paths), transform
        self.labels = torch.tensor(np.asarray(labels, dtype=np.int64))
        self.groups = torch.tensor(np.asarray(groups, dtype=np.int64).reshape(len(paths), -1))
        self.cache = cache
        self._resize = v2.Resize(cache_size, antialias=True) if cache_size else None
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> torch.Tensor:
        """The uint8 ``[3, H, W]`` image of item ``index``."""
        if index in self._images:
            return self._images[index]
        data = torch.from_numpy(np.fromfile(self.paths[index], dtype=np.uint8))
        image = decode_image(data, mode=ImageReadMode.RGB)
        if self._resize is not None:
            image = self._resize(image)
        if self.cache:
            self._images[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.transform(self.read(index)), "y": self.labels[index], "group": self.groups[index]}


def patient_split(patients: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held_out) row indices with about ``fraction`` of the *patients* held out."""
    patients = np.asarray(patients, dtype=str)
    unique = np.unique(patients)
    if fraction <= 0:
        return np.arange(len(patients)), np.empty(0, dtype=np.int64)
    if len(unique) < 2:
        raise ValueError(
            f"Cannot split {len(unique)} patient(s); need at least 2 to hold out a fraction {fraction}."
        )
    rng = np.random.default_rng(seed)
    held_count = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    held = set(rng.permutation(unique)[:held_count])
    mask = np.array([p in held for p in patients])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


class ManifestDataModule(SplitDataModule):
    """Any image manifest with sensitive attributes (``layout``: ham10000, isic2020, fitzpatrick17k,
    chexpert, generic — see :mod:`verticals.domains.medical.manifests`).

    ``mean``/``std``/``image_size`` must match the model (CLIP statistics for BiomedCLIP, 0.5/0.5 for
    EfficientNet-Lite0).  The manifest is read on first use, so ``num_classes``, ``input_shape`` and
    ``group_names`` exist right after construction.
    """

    def __init__(
        self,
        manifest: str,
        layout: str = "generic",
        image_root: str | None = None,
        label_column: str | None = None,
        label_map: dict[str, str] | None = None,
        attributes: list[str] | None = None,
        attribute_columns: dict[str, str] | None = None,
        age_bands: list[int] | None = None,
        missing_attributes: str = "error",
        uncertain_labels: str = "drop",
        image_size: int = 224,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        flips: bool = True,
        cache_images: bool = False,
        batch_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        shots_per_class: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(f"`shots_per_class` must be >= 1 (or None for the whole set), got {shots_per_class}.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        self.save_hyperparameters()
        self.manifest_options = {
            "layout": layout,
            "image_root": image_root,
            "label_column": label_column,
            "label_map": label_map,
            "attributes": attributes,
            "attribute_columns": attribute_columns,
            "age_bands": tuple(age_bands or (40, 60)),
            "missing_attributes": missing_attributes,
            "uncertain_labels": uncertain_labels,
        }
        self.image_size, self.flips, self.cache_images = image_size, flips, cache_images
        self.mean = tuple(mean or IMAGENET_MEAN)
        self.std = tuple(std or IMAGENET_STD)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.shots_per_class = shots_per_class
        self._table: pd.DataFrame | None = None
        self.datasets: dict[str, ImageManifestDataset] = {}

    # -- the manifest -------------------------------------------------------------------
    def manifest_path(self) -> str:
        return self.hparams["manifest"]

    @property
    def table(self) -> pd.DataFrame:
        """The standard manifest table plus ``y`` (class index) and ``stage`` (train/val/test)."""
        if self._table is None:
            table = read_manifest(self.manifest_path(), **self.manifest_options)
            (codes,), names = encode_labels(table["label"].to_numpy())
            table["y"] = codes
            self._class_names = names
            self._attributes = [
                c for c in table.columns if c not in ("path", "label", "patient", "split", "y")
            ]
            self._categories = {
                a: attribute_categories(table, a, self.manifest_options["age_bands"])
                for a in self._attributes
            }
            table["stage"] = self._stages(table)
            self._table = table
        return self._table

    def _stages(self, table: pd.DataFrame) -> np.ndarray:
        stage = np.full(len(table), "train", dtype=object)
        if "split" in table.columns:
            stage[:] = table["split"].to_numpy()
        else:
            _, test = patient_split(table["patient"].to_numpy(), self.test_fraction, self.seed)
            stage[test] = "test"
        if not (stage == "val").any():
            train = np.flatnonzero(stage == "train")
            _, val = patient_split(table["patient"].to_numpy()[train], self.val_fraction, self.seed + 1)
            stage[train[val]] = "val"
        for name in ("train", "test"):
            if not (stage == name).any():
                raise ValueError(
                    f"The {name} split of {self.manifest_path()} is empty; adjust `test_fraction` or the 'split' column."
                )
        if self.shots_per_class is not None:  # the rest of the training split is left unused
            train = np.flatnonzero(stage == "train")
            kept = few_shot_rows(table["y"].to_numpy()[train], self.shots_per_class, self.seed + 2, self._class_names)
            unused = np.ones(len(train), dtype=bool)
            unused[kept] = False
            stage[train[unused]] = "unused"
        return stage

    # -- what tasks and the CLI read ------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        _ = self.table
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def group_attributes(self) -> list[str]:
        _ = self.table
        return list(self._attributes)

    @property
    def group_names(self) -> dict[str, list[str]]:
        _ = self.table
        return {attribute: list(names) for attribute, names in self._categories.items()}

    def group_codes(self, table: pd.DataFrame) -> np.ndarray:
        """``[N, A]`` category codes of ``table``'s rows."""
        columns = [
            table[a].map({name: code for code, name in enumerate(self._categories[a])}).to_numpy()
            for a in self.group_attributes
        ]
        return (
            np.stack(columns, axis=1).astype(np.int64)
            if columns
            else np.zeros((len(table), 0), dtype=np.int64)
        )

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        table = self.table
        for name in ("train", "val", "test"):
            if name in self.datasets:
                continue
            rows = table[table["stage"] == name]
            if name == "val" and rows.empty:
                log.warning(
                    "No validation patients: validating on the training set (not a held-out estimate)."
                )
                rows = table[table["stage"] == "train"]
            transform = image_transforms(
                self.image_size, self.mean, self.std, train=name == "train", flips=self.flips
            )
            self.datasets[name] = ImageManifestDataset(
                rows["path"].tolist(),
                rows["y"].to_numpy(),
                self.group_codes(rows),
                transform,
                cache=self.cache_images,
                cache_size=self.image_size if self.cache_images else None,
            )

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        self.setup()
        return make_loader(
            self.datasets[name],
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )


class GeneratedDermatologyDataModule(ManifestDataModule):
    """The generated dermatology set (planted skin-tone gap; see ``datasets_cards/generated_dermatology.md``).

    Generated on first use under ``root`` (default ``~/.cache/verticals/medical``), then read back
    through the generic manifest loader like any real dataset.  Attributes: ``skin_tone``, ``sex``,
    ``age_band``.  ``test_fraction`` is the generator's per-patient test share (a larger test set resolves
    per-group ECE and AUROC of the small dark-skin group better); ``val_fraction`` is taken from the rest.
    ``planted`` overrides any other ``DermatologySpec`` field (e.g. ``{dark_fraction: 0.5}``), so the planted
    structure can be varied from a config or the command line.
    """

    def __init__(
        self,
        num_images: int = 2000,
        generated_size: int = 64,
        generation_seed: int = 0,
        root: str = DEFAULT_CACHE,
        attributes: list[str] | None = None,
        image_size: int = 64,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        cache_images: bool = True,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        test_fraction: float = 0.3,
        planted: dict[str, float] | None = None,
        shots_per_class: int | None = None,
    ) -> None:
        self.spec = DermatologySpec(
            num_images=num_images,
            image_size=generated_size,
            seed=generation_seed,
            test_fraction=test_fraction,
            **planted_overrides(planted),
        )
        self.spec.validate()
        self.root = root
        super().__init__(
            manifest=str(Path(root).expanduser() / self.spec.key() / "manifest.csv"),
            layout="generic",
            attributes=attributes or ["skin_tone", "sex", "age_band"],
            age_bands=[60],
            image_size=image_size,
            mean=mean,
            std=std,
            cache_images=cache_images,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            num_workers=num_workers,
            shots_per_class=shots_per_class,
        )

    def manifest_path(self) -> str:
        return str(generate_dermatology(self.root, self.spec))
