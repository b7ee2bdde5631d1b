"""Image datamodules with sensitive attributes: CSV manifests of real datasets and the generated set.

Batches: ``{"x": FloatTensor[B, 3, H, W], "y": LongTensor[B], "group": LongTensor[B, A]}`` where column
``a`` of ``group`` is the category code of attribute ``group_attributes[a]`` (names in ``group_names``).
Splits are patient-level (no patient's images on two sides): a ``split`` column in the manifest fixes
train/test (and optionally val); otherwise a seeded split by patient with ``test_fraction``.  Validation
is a seeded ``val_fraction`` of the training patients.  ``shots_per_class`` k keeps a seeded k training
images of each class (the few-shot protocol of CLIP adaptation papers); validation and test stay whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from verticals.core.manifest_data import ManifestDataModule as CoreManifestDataModule
from verticals.core.manifest_data import ManifestDataset, group_split, image_transforms
from verticals.domains.medical.manifests import LAYOUTS, attribute_categories, read_manifest
from verticals.domains.medical.synthetic import DermatologySpec, generate_dermatology, planted_overrides

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CACHE = "~/.cache/verticals/medical"
#: The dataset each manifest layout reads, as reports and model cards name it (``generic``: the CSV's stem).
LAYOUT_DATASET_NAMES = {
    "ham10000": "HAM10000",
    "isic2020": "ISIC 2020",
    "fitzpatrick17k": "Fitzpatrick17k",
    "chexpert": "CheXpert",
}

#: The core's manifest dataset, under the name this module has always exported.
ImageManifestDataset = ManifestDataset

__all__ = [
    "GeneratedDermatologyDataModule",
    "ImageManifestDataset",
    "ManifestDataModule",
    "image_transforms",
    "patient_split",
]


def patient_split(patients: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held_out) row indices with about ``fraction`` of the *patients* held out."""
    return group_split(patients, fraction, seed, unit="patient")


class ManifestDataModule(CoreManifestDataModule):
    """Any image manifest with sensitive attributes (``layout``: ham10000, isic2020, fitzpatrick17k,
    chexpert, generic — see :mod:`verticals.domains.medical.manifests`).

    The core :class:`~verticals.core.manifest_data.ManifestDataModule` with the medical layouts: the
    table comes from ``read_manifest`` (labels, ``patient`` ids, standard attributes such as ``sex``
    and ``age_band``), splits are by patient, images are RGB, and attribute categories keep their
    natural order (age bands ascending, Fitzpatrick I-II before V-VI).
    ``mean``/``std``/``image_size`` must match the model (CLIP statistics for BiomedCLIP, 0.5/0.5 for
    EfficientNet-Lite0); the default is ImageNet's.

    Args:
        manifest: the dataset's CSV (HAM10000's metadata, CheXpert's ``train.csv`` …, or a generic one).
        layout: how the CSV's columns map onto the standard table: ``ham10000``, ``isic2020``,
            ``fitzpatrick17k``, ``chexpert`` or ``generic`` (columns ``image``, ``label``, ``patient``).
        image_root: folder that image paths start from (default: the manifest's folder).
        label_column: the column of the labels; default: the layout's (HAM10000 ``dx``, CheXpert
            ``Pleural Effusion`` …).
        label_map: raw label -> task label (e.g. HAM10000's diagnoses to ``benign`` / ``malignant``); a raw
            label it does not list is an error. None keeps the raw labels.
        attributes: the sensitive attributes that become the groups: ``sex``, ``age_band``, ``skin_type``
            (Fitzpatrick I-II / III-IV / V-VI), ``fitzpatrick`` (1-6) or, in a generic manifest, any
            column; default: the layout's.
        attribute_columns: standard attribute -> CSV column, where a manifest names them otherwise
            (``{age: age_approx}``).
        age_bands: the edges of the ``age_band`` groups in years; [40, 60] gives ``<40``, ``40-59``, ``60+``.
        missing_attributes: ``error`` (default) stops at a row without an attribute value, naming it;
            ``drop`` leaves such rows out.
        uncertain_labels: CheXpert's uncertain ``-1`` labels: ``drop``, ``positive`` (U-Ones) or
            ``negative`` (U-Zeros).
        mean: per-channel normalisation mean; default ImageNet's. Use the backbone's own statistics.
        std: per-channel normalisation standard deviation; default ImageNet's.
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
        default_attributes = LAYOUTS[layout].default_attributes if layout in LAYOUTS else ()
        super().__init__(
            manifest,
            root=image_root,
            group_columns=list(default_attributes if attributes is None else attributes),
            split_by="patient",
            channels=3,
            image_size=image_size,
            mean=list(mean or IMAGENET_MEAN),
            std=list(std or IMAGENET_STD),
            flips=flips,
            cache_images=cache_images,
            batch_size=batch_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            num_workers=num_workers,
            shots_per_class=shots_per_class,
        )
        self.save_hyperparameters()
        self.dataset_name = LAYOUT_DATASET_NAMES.get(layout) or Path(manifest).stem
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

    def read_table(self) -> pd.DataFrame:
        """The layout's table (``path, label, patient, <attributes>[, split], line``)."""
        return read_manifest(self.manifest_path(), **self.manifest_options)

    def group_categories(self, table: pd.DataFrame, attribute: str) -> list[str]:
        return attribute_categories(table, attribute, self.manifest_options["age_bands"])


class GeneratedDermatologyDataModule(ManifestDataModule):
    """The generated dermatology set (planted skin-tone gap; see ``datasets_cards/generated_dermatology.md``).

    Generated on first use under ``root`` (default ``~/.cache/verticals/medical``), then read back
    through the generic manifest loader like any real dataset.  Attributes: ``skin_tone``, ``sex``,
    ``age_band``.  ``test_fraction`` is the generator's per-patient test share (a larger test set resolves
    per-group ECE and AUROC of the small dark-skin group better); ``val_fraction`` is taken from the rest.
    ``planted`` overrides any other ``DermatologySpec`` field (e.g. ``{dark_fraction: 0.5}``), so the planted
    structure can be varied from a config or the command line.

    Args:
        num_images: images generated (one patient each, split by patient).
        generated_size: side in px the images are generated at (the cached files); ``image_size`` is what
            the model sees after resizing.
        generation_seed: seed of the generated set (images, groups, labels, test split); ``seed`` seeds only
            the validation split and the training order.
        root: folder the generated set is written to and read back from, one sub-folder per spec.
        attributes: which of ``skin_tone``, ``sex`` and ``age_band`` become the groups; default all three.
        val_fraction: share of the non-test patients held out for validation (seeded), in [0, 1).
        test_fraction: the generator's per-patient test share, in [0, 1).
        planted: overrides of ``DermatologySpec``'s planted strengths (``dark_fraction``,
            ``dark_contrast``, ``marker_dark_benign`` …).
        cache_images: keep the decoded images in memory after their first read (the set is small).
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
        self.dataset_name = "generated dermatology (planted skin-tone shift)"

    def manifest_path(self) -> str:
        return str(generate_dermatology(self.root, self.spec))
