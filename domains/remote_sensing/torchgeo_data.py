"""Real remote-sensing datasets through torchgeo's own datamodules: LoveDA, ISPRS Potsdam and Vaihingen,
EuroSAT.

The wrappers here do not re-implement torchgeo: :class:`TorchGeoSegmentationDataModule` and
:class:`TorchGeoClassificationDataModule` build torchgeo's ``LoveDADataModule`` / ``Potsdam2DDataModule`` /
``Vaihingen2DDataModule`` / ``EuroSATDataModule`` (0.8.1) and hand it ``prepare_data``, ``setup``, the
dataloaders and ``on_after_batch_transfer`` — where torchgeo normalises and crops batches on the device with
kornia, reading its ``trainer`` to tell training from evaluation. The wrapper only

- maps torchgeo's batches to the task's keys: ``{"image", "mask"}`` → ``{"x", "y"}`` (segmentation),
  ``{"image", "label"}`` → ``{"x", "y"}`` (classification), and adds ``group`` ``LongTensor[N, 1]`` to
  LoveDA batches (attribute ``scene``: urban / rural, LoveDA's domain shift);
- says what the task needs before any batch: ``num_classes``, ``class_names``, ``ignore_index``,
  ``input_shape``, ``group_attributes``, ``group_names``;
- fills what torchgeo leaves out: LoveDA's test masks are not public, so torchgeo serves no labelled test
  split — verticals tests on the official Val split (and can validate on a seeded part of Train,
  ``val_fraction``); a ``predict`` split where torchgeo has none (the test split);
- checks what torchgeo reads silently: LoveDA mask values outside 0..7, ISPRS colour-mask pixels of no class
  colour (torchgeo's ``rgb_to_mask`` turns them into class 0, clutter), listed tiles or images that are
  missing (torchgeo skips them), a training split smaller than one batch (torchgeo's training loader drops
  the last incomplete batch, so no step would run), a task whose ``ignore_index`` or input bands disagree
  with the data, a missing root (the error shows the layout expected and where to get the files).

``write_tiny_loveda``, ``write_tiny_potsdam``, ``write_tiny_vaihingen`` and ``write_tiny_eurosat`` write a few
small files in each dataset's real distributed layout (for tests and the docs); the cards in
``datasets_cards/`` (``loveda.md``, ``potsdam_vaihingen.md``, ``eurosat.md``) describe the real data.
torchgeo is imported on first use (importing ``torchgeo.datamodules`` takes seconds).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from verticals.core.data import SPLITS, BaseDataModule

log = logging.getLogger(__name__)

__all__ = [
    "EUROSAT_BANDS",
    "EUROSAT_CLASSES",
    "ISPRS_CLASSES",
    "ISPRS_COLOURS",
    "LOVEDA_CLASSES",
    "LOVEDA_SCENES",
    "TorchGeoClassificationDataModule",
    "TorchGeoItems",
    "TorchGeoSegmentationDataModule",
    "check_isprs_mask",
    "write_tiny_eurosat",
    "write_tiny_loveda",
    "write_tiny_potsdam",
    "write_tiny_vaihingen",
]

#: LoveDA's label values 0..7: 0 marks no-data (to ignore), 1..7 the land-cover classes. torchgeo's
#: ``LoveDA.classes`` lists "no-data" last although the masks use 0 for it; these names follow the values.
LOVEDA_CLASSES: tuple[str, ...] = (
    "no-data",
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agriculture",
)
#: LoveDA's two domains (folders ``Urban`` and ``Rural`` of each split); the group attribute ``scene``.
LOVEDA_SCENES: tuple[str, ...] = ("urban", "rural")
#: ISPRS Potsdam / Vaihingen classes in torchgeo's label order (its ``classes``: "Clutter/background", ...).
ISPRS_CLASSES: tuple[str, ...] = (
    "clutter",
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
)
#: The RGB colour of each ISPRS class in the label images (torchgeo's ``colormap``, the benchmark's legend).
ISPRS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
)
#: EuroSAT's classes: its folder names, sorted (torchgeo reads them as an ImageFolder).
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
#: The 13 Sentinel-2 bands of an EuroSAT GeoTIFF in file order, as torchgeo 0.8.1 reads them (B8A last; see
#: the card).
EUROSAT_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip
EUROSAT_RGB: tuple[str, ...] = ("B04", "B03", "B02")

# torchgeo's folder of EuroSAT's class folders (the archive nests them this deep).
_EUROSAT_BASE = Path("ds", "images", "remote_sensing", "otherDatasets", "sentinel_2", "tif")
_EUROSAT_SPLIT_FILES = {
    "eurosat": "eurosat-{split}.txt",
    "eurosat_spatial": "eurosat-spatial-{split}.txt",
    "eurosat100": "eurosat-100-{split}.txt",
}

SegmentationDataset = Literal["loveda", "potsdam", "vaihingen"]
ClassificationDataset = Literal["eurosat", "eurosat_spatial", "eurosat100"]

_LAYOUTS = {
    "loveda": (
        "<root>/Train/Urban/images_png/*.png, <root>/Train/Urban/masks_png/*.png (same names), the same under "
        "Train/Rural, Val/Urban and Val/Rural, and Test/{Urban,Rural}/images_png (no masks; prediction only). "
        "Get Train.zip, Val.zip and Test.zip from https://zenodo.org/records/5706578 and unzip them in <root>, "
        "or pass download=True (torchgeo downloads them)."
    ),
    "potsdam": (
        "<root>/4_Ortho_RGBIR/top_potsdam_<row>_<col>_RGBIR.tif (4-band R,G,B,IR) and the colour labels "
        "<root>/top_potsdam_<row>_<col>_label.tif, tile names from torchgeo's Potsdam2D.splits. Request "
        "4_Ortho_RGBIR.zip and 5_Labels_all.zip from ISPRS "
        "(https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx) and put them (or "
        "their extracted contents) in <root>; torchgeo cannot download them."
    ),
    "vaihingen": (
        "<root>/top/top_mosaic_09cm_area<N>.tif (3-band IR,R,G) and the colour labels "
        "<root>/top_mosaic_09cm_area<N>.tif, area numbers from torchgeo's Vaihingen2D.splits. Request "
        "ISPRS_semantic_labeling_Vaihingen.zip and ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip "
        "from ISPRS (https://www.isprs.org/education/benchmarks/UrbanSemLab/semantic-labeling.aspx) and put "
        "them (or their extracted contents) in <root>; torchgeo cannot download them."
    ),
    "eurosat": (
        f"<root>/{_EUROSAT_BASE.as_posix()}/<Class>/<Class>_<n>.tif (13-band Sentinel-2 GeoTIFFs, one folder per "
        "class) and the split lists <root>/eurosat-{train,val,test}.txt (eurosat-spatial-*.txt for "
        "eurosat_spatial, eurosat-100-*.txt for eurosat100). Get EuroSATallBands.zip and the lists from "
        "https://hf.co/datasets/torchgeo/eurosat (EuroSAT100.zip for eurosat100), or pass download=True."
    ),
}


def _torchgeo_missing(root: Path, dataset: str) -> str:
    return (
        f"No {dataset} data under root={str(root)!r}. Expected: {_LAYOUTS[dataset]} "
        f"See datasets_cards/{_CARDS[dataset]}."
    )


_CARDS = {"loveda": "loveda.md", "potsdam": "potsdam_vaihingen.md", "vaihingen": "potsdam_vaihingen.md",
          "eurosat": "eurosat.md"}  # fmt: skip


# -- per-item checks and groups (module-level functions: DataLoader workers pickle them) --------------------
class TorchGeoItems(Dataset):
    """One torchgeo dataset's items, each checked (``check(dataset, index, sample)``) and given ``group``
    (``LongTensor[A]``, from ``groups(dataset, index)``) when asked; every other attribute is the dataset's."""

    def __init__(
        self,
        base: Dataset,
        check: Callable[[Any, int, dict[str, torch.Tensor]], None] | None = None,
        groups: Callable[[Any, int], list[int]] | None = None,
    ) -> None:
        self.base, self.check, self.groups = base, check, groups

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.base[index]
        if self.check is not None:
            self.check(self.base, index, sample)
        if self.groups is not None:
            sample["group"] = torch.tensor(self.groups(self.base, index), dtype=torch.long)
        return sample

    def __getattr__(self, name: str) -> Any:  # torchgeo's plot(), files, classes ...
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def _loveda_scene(dataset: Any, index: int) -> list[int]:
    """Code of the item's scene: its image lies in ``<Split>/<Urban|Rural>/images_png/``."""
    scene = Path(dataset.files[index]["image"]).parent.parent.name.lower()
    return [LOVEDA_SCENES.index(scene)]


def _check_loveda_mask(dataset: Any, index: int, sample: dict[str, torch.Tensor]) -> None:
    mask = sample.get("mask")
    if mask is None:
        return
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high >= len(LOVEDA_CLASSES):
        values = sorted({int(v) for v in torch.unique(mask)} - set(range(len(LOVEDA_CLASSES))))
        raise ValueError(
            f"LoveDA mask {dataset.files[index]['mask']} holds value(s) {values[:8]}, outside LoveDA's labels "
            f"0..{len(LOVEDA_CLASSES) - 1} (0 no-data, 1..7 {', '.join(LOVEDA_CLASSES[1:])}). Fix or remove the "
            "file: masks_png must hold the label values of the official release, not colours."
        )


def check_isprs_mask(path: str | Path) -> None:
    """Raise if the ISPRS colour label at ``path`` has a pixel of no class colour (:data:`ISPRS_COLOURS`).

    torchgeo's ``rgb_to_mask`` gives such pixels label 0 (clutter) without a word; this names the file, the
    stray colours and how many pixels carry them.
    """
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    allowed = np.array([(r << 16) | (g << 8) | b for r, g, b in ISPRS_COLOURS], dtype=np.int32)
    stray = ~np.isin(packed, allowed)
    if stray.any():
        colours, counts = np.unique(packed[stray], return_counts=True)
        order = np.argsort(-counts)[:5]
        listed = ", ".join(
            f"{(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255)}×{int(n)}"
            for c, n in zip(colours[order], counts[order])
        )
        raise ValueError(
            f"ISPRS label {path}: {int(stray.sum())} pixel(s) have colours that are none of the six class colours "
            f"{dict(zip(ISPRS_CLASSES, ISPRS_COLOURS))} (most common: {listed}); torchgeo would read them as class "
            "0 (clutter). Fix the label image, or pass check_masks=False to accept torchgeo's reading."
        )


def _check_isprs_item(checked: set[str], dataset: Any, index: int, sample: dict[str, torch.Tensor]) -> None:
    path = str(dataset.files[index]["mask"])
    if path not in checked:  # each file once per process: the tiles are large
        check_isprs_mask(path)
        checked.add(path)


def _wrapped(dataset: Dataset | None, wrap: Callable[[Dataset], Dataset]) -> Dataset | None:
    """``dataset`` with its torchgeo dataset wrapped (inside a ``Subset`` from torchgeo's ``random_split`` too)."""
    if dataset is None or isinstance(dataset, TorchGeoItems):
        return dataset
    if isinstance(dataset, Subset):
        if not isinstance(dataset.dataset, TorchGeoItems):
            dataset.dataset = _wrapped(dataset.dataset, wrap)  # type: ignore[assignment]
        return dataset
    return wrap(dataset)


def _base_dataset(dataset: Any) -> Any:
    while isinstance(dataset, (Subset, TorchGeoItems)):
        dataset = dataset.dataset if isinstance(dataset, Subset) else dataset.base
    return dataset


# -- the shared wrapper --------------------------------------------------------------------------------------
_STAGE_OF_SPLIT = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}


class _TorchGeoDataModule(BaseDataModule):
    """A torchgeo datamodule behind verticals' datamodule protocol (see the module docstring)."""

    #: Keys of torchgeo's samples; anything else (``group``) is kept away from its kornia augmentation.
    torchgeo_keys: ClassVar[tuple[str, ...]] = ("image", "mask", "label")

    def __init__(self, name: str, root: str | Path, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.dataset_name, self.root = name, Path(root)
        self._torchgeo: Any = None

    # -- what subclasses provide ------------------------------------------------------------------------
    def _build_torchgeo(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement `_build_torchgeo`.")

    def _wrap(self, dataset: Dataset) -> Dataset:
        return TorchGeoItems(dataset)

    def _after_setup(self, stage: str) -> None:
        """Adjust torchgeo's datasets after its ``setup`` (subclasses)."""

    def _task_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement `_task_batch`.")

    # -- the torchgeo datamodule ------------------------------------------------------------------------
    @property
    def torchgeo(self) -> Any:
        """The wrapped torchgeo datamodule (built on first use)."""
        if self._torchgeo is None:
            self._torchgeo = self._build_torchgeo()
        return self._torchgeo

    def prepare_data(self) -> None:
        """torchgeo's: downloads when ``download=True`` (one process)."""
        with self._layout_errors():
            self.torchgeo.prepare_data()

    def setup(self, stage: str) -> None:
        """torchgeo's ``setup``, then this wrapper's additions (see the module docstring) and checks."""
        inner = self.torchgeo
        inner.trainer = self.trainer
        self._check_task()
        with self._layout_errors():
            inner.setup(stage)
            self._after_setup(stage)
            if stage == "predict" and inner.predict_dataset is None:
                inner.predict_dataset = inner.dataset_class(split="test", **inner.kwargs)
        for split in (*SPLITS, "predict"):
            attribute = f"{split}_dataset"
            setattr(inner, attribute, _wrapped(getattr(inner, attribute), self._wrap))
        for split in (*SPLITS, "predict"):
            dataset = getattr(inner, f"{split}_dataset")
            if dataset is not None and len(dataset) == 0:
                raise FileNotFoundError(
                    f"The {split} split of {self.dataset_name} under root={str(self.root)!r} is empty: none of the files "
                    f"torchgeo lists for it exist. Expected: {_LAYOUTS[self._layout_key]}"
                )
        train = inner.train_dataset
        if stage == "fit" and train is not None and len(train) < self.batch_size:
            raise ValueError(
                f"The {self.dataset_name} training split has {len(train)} item(s), fewer than batch_size={self.batch_size}: "
                "torchgeo's training loader drops the last incomplete batch, so no step would run. Lower "
                "`batch_size` or add data."
            )

    def teardown(self, stage: str) -> None:
        self.torchgeo.teardown(stage)

    @property
    def _layout_key(self) -> str:
        return "eurosat" if self.dataset_name.startswith("eurosat") else self.dataset_name

    @contextlib.contextmanager
    def _layout_errors(self) -> Iterator[None]:
        """Turn torchgeo's ``DatasetNotFoundError`` into an error that shows the expected layout."""
        from torchgeo.datasets import DatasetNotFoundError

        try:
            yield
        except DatasetNotFoundError as error:
            raise FileNotFoundError(
                f"{_torchgeo_missing(self.root, self._layout_key)} (torchgeo: {error})"
            ) from error
        except FileNotFoundError as error:
            if "Found no valid file for the classes" not in str(error):
                raise
            raise FileNotFoundError(
                f"EuroSAT under root={str(self.root)!r}: {error} torchgeo reads each split as an ImageFolder over "
                f"every folder in {_EUROSAT_BASE.as_posix()}, so each class folder needs an image listed in each "
                f"split list; the folders must be exactly {list(EUROSAT_CLASSES)}. Remove other folders or restore "
                "the missing images."
            ) from error

    def _check_task(self) -> None:
        """The task on the trainer must read what this data holds: its bands, and LoveDA's ignored no-data."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        hparams = getattr(module, "hparams", None)
        if hparams is None:
            return
        shape = hparams.get("input_shape")
        if shape is not None and int(shape[0]) != self.input_shape[0]:
            raise ValueError(
                f"The task's input_shape {list(shape)} has {shape[0]} band(s) but {self.dataset_name} tiles have "
                f"{self.input_shape[0]} ({', '.join(self.bands)}). Drop `input_shape` from the task (it is taken from "
                f"the data: {self.input_shape}) or choose the data's bands to match the backbone."
            )
        ignore = getattr(self, "ignore_index", None)
        if ignore is not None and "ignore_index" in hparams and hparams["ignore_index"] != ignore:
            raise ValueError(
                f"{self.dataset_name} marks unlabelled pixels with {ignore} ({self.class_names[ignore]!r}) but the task has "
                f"ignore_index={hparams['ignore_index']}: they would be trained and scored as a class. Set "
                f"`ignore_index: {ignore}` in the task (model.init_args)."
            )

    # -- loaders and batches ------------------------------------------------------------------------------
    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """torchgeo's loader of ``split`` (``setup`` runs first if needed); with ``shuffle`` given, a loader over
        the same dataset with that order (for scripts that iterate a split without a Trainer).

        Batches from a loader are torchgeo's raw items: pass them through :meth:`transform_batch` (a Trainer
        calls ``on_after_batch_transfer`` instead).
        """
        if split not in (*SPLITS, "predict"):
            raise ValueError(f"`split` must be one of {(*SPLITS, 'predict')}, got {split!r}.")
        inner = self.torchgeo
        if getattr(inner, f"{split}_dataset") is None:
            self.setup(_STAGE_OF_SPLIT[split])
        if shuffle is None:
            return getattr(inner, f"{split}_dataloader")()
        return DataLoader(
            getattr(inner, f"{split}_dataset"),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=inner.collate_fn,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("predict")

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        """torchgeo's (its kornia normalisation / crops for the trainer's current stage), then the task's keys."""
        extra = {key: batch.pop(key) for key in list(batch) if key not in self.torchgeo_keys}
        inner = self.torchgeo
        inner.trainer = self.trainer
        batch = inner.on_after_batch_transfer(batch, dataloader_idx)
        return self._task_batch(batch) | extra

    def transform_batch(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
        """What a Trainer's ``on_after_batch_transfer`` gives for a raw batch of ``split``, without a Trainer:
        torchgeo's augmentation of that split (``<split>_aug``, else ``aug``), then the task's keys."""
        if split not in (*SPLITS, "predict"):
            raise ValueError(f"`split` must be one of {(*SPLITS, 'predict')}, got {split!r}.")
        batch = dict(batch)
        extra = {key: batch.pop(key) for key in list(batch) if key not in self.torchgeo_keys}
        inner = self.torchgeo
        augment = getattr(inner, f"{split}_aug", None) or inner.aug
        return self._task_batch(augment(batch)) | extra

    # -- shapes ----------------------------------------------------------------------------------------------
    @property
    def bands(self) -> tuple[str, ...]:
        raise NotImplementedError(f"{type(self).__name__} must implement `bands`.")

    @property
    def input_shape(self) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement `input_shape`.")


# -- segmentation --------------------------------------------------------------------------------------------
class TorchGeoSegmentationDataModule(_TorchGeoDataModule):
    """LoveDA, ISPRS Potsdam or Vaihingen through torchgeo's datamodule, as batches ``{"x", "y"(, "group")}``.

    ``x`` is ``float [N, bands, S, S]`` as torchgeo normalises it (÷255), ``y`` ``long [N, S, S]``. LoveDA batches
    carry ``group`` ``[N, 1]``, attribute ``scene`` (``urban`` / ``rural``). The task must ignore LoveDA's no-data
    label 0 (``ignore_index: 0``; checked when the trainer sets up).

    Args:
        dataset: ``loveda`` (RGB, 8 labels with 0 = no-data), ``potsdam`` (R, G, B, IR; 6 classes) or
            ``vaihingen`` (IR, R, G; 6 classes).
        root: the dataset's folder, in the layout its card describes (what torchgeo reads).
        batch_size: samples per batch (torchgeo's training loader drops the last incomplete one).
        patch_size: side of the square crops. Potsdam / Vaihingen: torchgeo's own random crops in training and
            centre crops in evaluation (None: torchgeo's default, 64). LoveDA: None keeps torchgeo's whole
            1024-px tiles; a size applies the same recipe as torchgeo's ISPRS datamodules.
        val_fraction: share of the training tiles held out (seeded) for validation, so that model selection
            never sees a test tile (default 0.1). None keeps torchgeo's own split: for LoveDA that validates on
            the official Val split, which is also the test split here since LoveDA's test masks are not public
            (a warning says so); for Potsdam / Vaihingen it is torchgeo's ``val_split_pct`` default, 0.2 of
            Train with its fixed seed 0.
        scene: LoveDA only: which scenes every split reads (torchgeo's ``scene``).
        check_masks: check every mask on first read: LoveDA values within 0..7, ISPRS colours among the six
            class colours (each file once per process).
        download: LoveDA only: let torchgeo download the zips from Zenodo (ISPRS data cannot be downloaded).
        checksum: torchgeo's MD5 check of the zips (LoveDA on download; ISPRS when it extracts them).
        num_workers: loader workers.
        seed: seed of the LoveDA ``val_fraction`` hold-out. Shuffling is torchgeo's (PyTorch's global generator,
            seeded by ``seed_everything``).
    """

    def __init__(
        self,
        dataset: SegmentationDataset = "loveda",
        root: str | Path = "data/loveda",
        batch_size: int = 8,
        patch_size: int | None = None,
        val_fraction: float | None = 0.1,
        scene: Sequence[str] = LOVEDA_SCENES,
        check_masks: bool = True,
        download: bool = False,
        checksum: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, root, batch_size, num_workers, seed)
        if dataset not in ("loveda", "potsdam", "vaihingen"):
            raise ValueError(
                f"Unknown `dataset` {dataset!r}; choose 'loveda', 'potsdam' or 'vaihingen' (EuroSAT is a "
                "classification set: TorchGeoClassificationDataModule)."
            )
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"`patch_size` must be >= 1 (or None), got {patch_size}.")
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"`val_fraction` must be in (0, 1) (or None for torchgeo's split), got {val_fraction}."
            )
        scene = [str(s).lower() for s in ([scene] if isinstance(scene, str) else scene)]
        if not scene or len(set(scene)) != len(scene) or not set(scene) <= set(LOVEDA_SCENES):
            raise ValueError(f"`scene` must name 'urban' and/or 'rural' once each, got {scene}.")
        if dataset != "loveda" and sorted(scene) != sorted(LOVEDA_SCENES):
            raise ValueError(f"`scene` is LoveDA's option; {dataset} has no scenes (got scene={scene}).")
        if dataset != "loveda" and download:
            raise ValueError(
                f"torchgeo cannot download {dataset}: request it from ISPRS and put the zips or their contents in "
                f"root. Expected: {_LAYOUTS[dataset]}"
            )
        self.patch_size, self.val_fraction, self.scene = patch_size, val_fraction, scene
        self.check_masks, self.download, self.checksum = check_masks, download, checksum
        self.save_hyperparameters()
        if dataset == "loveda":
            self.group_attributes = ["scene"]
            self.group_names = {"scene": list(LOVEDA_SCENES)}
        self._checked_masks: set[str] = set()

    # -- what the task reads -----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """One name per label value (LoveDA's 0 is ``no-data``)."""
        return list(LOVEDA_CLASSES if self.dataset_name == "loveda" else ISPRS_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ignore_index(self) -> int | None:
        """LoveDA's no-data label 0; None for Potsdam / Vaihingen (clutter, 0, is a class there)."""
        return 0 if self.dataset_name == "loveda" else None

    @property
    def bands(self) -> tuple[str, ...]:
        """Band of each input channel, in order."""
        return {"loveda": ("red", "green", "blue"), "potsdam": ("red", "green", "blue", "nir"),
                "vaihingen": ("nir", "red", "green")}[self.dataset_name]  # fmt: skip

    @property
    def input_shape(self) -> list[int]:
        """``[bands, S, S]``: the patch size, else (LoveDA) the size of the first training image."""
        if self.patch_size is not None or self.dataset_name != "loveda":
            size = self.patch_size or 64
            return [len(self.bands), size, size]
        from PIL import Image

        for scene in self.scene:
            images = sorted((self.root / "Train" / scene.capitalize() / "images_png").glob("*.png"))
            if images:
                with Image.open(images[0]) as image:
                    width, height = image.size
                return [len(self.bands), height, width]
        raise FileNotFoundError(_torchgeo_missing(self.root, "loveda"))

    # -- torchgeo ------------------------------------------------------------------------------------------
    def _build_torchgeo(self) -> Any:
        common = {"batch_size": self.batch_size, "num_workers": self.num_workers, "root": str(self.root)}
        if self.dataset_name == "loveda":
            from torchgeo.datamodules import LoveDADataModule

            inner = LoveDADataModule(
                scene=list(self.scene), download=self.download, checksum=self.checksum, **common
            )
            if (
                self.patch_size is not None
            ):  # torchgeo's ISPRS recipe: random / centre crops, same normalisation
                import kornia.augmentation as K

                size = (self.patch_size, self.patch_size)
                normalise = functools.partial(K.Normalize, mean=inner.mean, std=inner.std)
                inner.train_aug = K.AugmentationSequential(
                    normalise(), K.RandomCrop(size, pad_if_needed=True), data_keys=None, keepdim=True
                )
                inner.aug = K.AugmentationSequential(
                    normalise(), K.CenterCrop(size), data_keys=None, keepdim=True, same_on_batch=True
                )
            return inner
        from torchgeo.datamodules import Potsdam2DDataModule, Vaihingen2DDataModule

        module = Potsdam2DDataModule if self.dataset_name == "potsdam" else Vaihingen2DDataModule
        options: dict[str, Any] = {"checksum": self.checksum, **common}
        if self.patch_size is not None:
            options["patch_size"] = self.patch_size
        if self.val_fraction is not None:
            options["val_split_pct"] = self.val_fraction
        return module(**options)

    def _wrap(self, dataset: Dataset) -> Dataset:
        if self.dataset_name == "loveda":
            return TorchGeoItems(dataset, _check_loveda_mask if self.check_masks else None, _loveda_scene)
        check = functools.partial(_check_isprs_item, self._checked_masks) if self.check_masks else None
        return TorchGeoItems(dataset, check)

    def _after_setup(self, stage: str) -> None:
        if self.dataset_name != "loveda":
            self._note_missing_tiles()
            return
        from torch.utils.data import random_split
        from torchgeo.datasets import LoveDA

        inner = self.torchgeo
        if self.val_fraction is not None and stage in ("fit", "validate"):
            train = inner.train_dataset or LoveDA(split="train", **inner.kwargs)
            generator = torch.Generator().manual_seed(self.seed)
            held_count = max(1, round(len(train) * self.val_fraction))  # at least one tile, even on tiny sets
            if held_count >= len(train):
                raise ValueError(
                    f"`val_fraction` {self.val_fraction} of LoveDA's {len(train)} training tiles leaves none to "
                    "train on: lower it, or add tiles."
                )
            kept, held = random_split(train, [len(train) - held_count, held_count], generator)
            if stage == "fit":
                inner.train_dataset = kept
            inner.val_dataset = held
        if stage == "test" and inner.test_dataset is None:
            inner.test_dataset = LoveDA(split="val", **inner.kwargs)
            if self.val_fraction is None:
                log.warning(
                    "LoveDA's test masks are not public: testing on the official Val split, which also served "
                    "validation (model selection). Pass val_fraction (e.g. 0.1) to validate on held-out Train "
                    "tiles instead."
                )

    def _note_missing_tiles(self) -> None:
        """torchgeo skips listed ISPRS tiles whose image or label is absent without a word: say how many."""
        inner = self.torchgeo
        for dataset in (inner.dataset, inner.test_dataset):
            if dataset is None or isinstance(dataset, (Subset, TorchGeoItems)):
                continue
            listed = dataset.splits[dataset.split]
            if len(dataset.files) < len(listed):
                found = {Path(item["mask"]).name.removesuffix("_label.tif") for item in dataset.files}
                missing = [tile for tile in listed if tile not in found]
                log.warning(
                    "%s %s split: %d of torchgeo's %d tiles found under %s (missing: %s).",
                    self.dataset_name,
                    dataset.split,
                    len(dataset.files),
                    len(listed),
                    self.root,
                    ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""),
                )

    def _task_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"x": batch["image"].float()}
        if "mask" in batch:
            mask = batch["mask"]
            if mask.ndim == 4 and mask.shape[1] == 1:
                mask = mask[:, 0]
            out["y"] = mask.long()
        return out


# -- classification ------------------------------------------------------------------------------------------
class TorchGeoClassificationDataModule(_TorchGeoDataModule):
    """EuroSAT through torchgeo's datamodule, as batches ``{"x": float [N, bands, 64, 64], "y": long [N]}``.

    torchgeo normalises each band with its EuroSAT mean and std; the splits are torchgeo's (train / val / test
    lists of Neumann et al. 2019, 16200 / 5400 / 5400 images; ``eurosat_spatial``: split by longitude;
    ``eurosat100``: 100 images for demos).

    Args:
        dataset: ``eurosat``, ``eurosat_spatial`` or ``eurosat100`` (torchgeo's three datamodules).
        root: the folder holding the split lists and the ``ds/`` tree (see the card).
        bands: ``"all"`` (13 Sentinel-2 bands), ``"rgb"`` (B04, B03, B02) or a list of band names.
        batch_size: samples per batch (torchgeo's training loader drops the last incomplete one).
        download: let torchgeo download the zip and split lists (Hugging Face mirror).
        checksum: torchgeo's MD5 check of downloaded files.
        num_workers: loader workers.
        seed: kept for the verticals protocol; shuffling is torchgeo's (PyTorch's global generator).
    """

    def __init__(
        self,
        dataset: ClassificationDataset = "eurosat",
        root: str | Path = "data/eurosat",
        bands: str | Sequence[str] = "all",
        batch_size: int = 64,
        download: bool = False,
        checksum: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, root, batch_size, num_workers, seed)
        if dataset not in _EUROSAT_SPLIT_FILES:
            raise ValueError(
                f"Unknown `dataset` {dataset!r}; choose one of {sorted(_EUROSAT_SPLIT_FILES)} (LoveDA, Potsdam and "
                "Vaihingen are segmentation sets: TorchGeoSegmentationDataModule)."
            )
        if isinstance(bands, str):
            if bands not in ("all", "rgb"):
                raise ValueError(f"`bands` must be 'all', 'rgb' or a list of band names, got {bands!r}.")
            chosen = EUROSAT_BANDS if bands == "all" else EUROSAT_RGB
        else:
            chosen = tuple(str(band) for band in bands)
            unknown = [band for band in chosen if band not in EUROSAT_BANDS]
            if not chosen or unknown:
                raise ValueError(
                    f"Unknown EuroSAT band(s) {unknown or chosen}; the bands are {list(EUROSAT_BANDS)}."
                )
        self._bands = chosen
        self.download, self.checksum = download, checksum
        self.save_hyperparameters()

    @property
    def class_names(self) -> list[str]:
        return list(EUROSAT_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(EUROSAT_CLASSES)

    @property
    def bands(self) -> tuple[str, ...]:
        return self._bands

    @property
    def input_shape(self) -> list[int]:
        """``[bands, H, W]``, H and W of the first listed training image (64 × 64 in the real data)."""
        import rasterio

        split_file = self.root / _EUROSAT_SPLIT_FILES[self.dataset_name].format(split="train")
        if split_file.is_file():
            for line in split_file.read_text().splitlines():
                name = line.strip().replace(".jpg", ".tif")
                path = self.root / _EUROSAT_BASE / name.split("_")[0] / name
                if name and path.is_file():
                    with rasterio.open(path) as source:
                        return [len(self._bands), source.height, source.width]
        raise FileNotFoundError(_torchgeo_missing(self.root, "eurosat"))

    def _build_torchgeo(self) -> Any:
        from torchgeo import datamodules

        module = {
            "eurosat": datamodules.EuroSATDataModule,
            "eurosat_spatial": datamodules.EuroSATSpatialDataModule,
            "eurosat100": datamodules.EuroSAT100DataModule,
        }[self.dataset_name]
        return module(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            root=str(self.root),
            bands=self._bands,
            download=self.download,
            checksum=self.checksum,
        )

    def _after_setup(self, stage: str) -> None:
        inner = self.torchgeo
        for split in (*SPLITS, "predict"):
            dataset = getattr(inner, f"{split}_dataset")
            if dataset is None:
                continue
            base = _base_dataset(dataset)
            classes = tuple(base.classes)
            if classes != EUROSAT_CLASSES:
                raise ValueError(
                    f"EuroSAT under {str(self.root)!r} has class folders {list(classes)}; expected exactly "
                    f"{list(EUROSAT_CLASSES)} under {_EUROSAT_BASE.as_posix()} (an extra or missing folder shifts "
                    "every label). Remove the extra folders or restore the missing ones."
                )
            listing = self.root / _EUROSAT_SPLIT_FILES[self.dataset_name].format(split=base.split)
            listed = sum(1 for line in listing.read_text().splitlines() if line.strip())
            if len(base) < listed:  # torchgeo reads what it finds of the list, silently
                log.warning(
                    "EuroSAT %s split: %d of the %d images listed in %s found.",
                    base.split,
                    len(base),
                    listed,
                    listing.name,
                )

    def _task_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"x": batch["image"].float()}
        if "label" in batch:
            out["y"] = batch["label"].long()
        return out


# -- tiny files in the real layouts --------------------------------------------------------------------------
def _label_map(rng: np.random.Generator, size: int, labels: Sequence[int], block: int = 8) -> np.ndarray:
    """A blocky label map (``block``-px cells of random labels): regions, not noise, so a model can learn."""
    cells = -(-size // block)
    grid = rng.choice(np.asarray(labels), size=(cells, cells))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:size, :size]


def _class_image(
    rng: np.random.Generator, labels: np.ndarray, colours: np.ndarray, noise: float = 12.0
) -> np.ndarray:
    """``uint8 [H, W, C]``: each pixel its class colour plus noise (classes separable by colour)."""
    image = colours[labels].astype(np.float64) + rng.normal(0.0, noise, (*labels.shape, colours.shape[1]))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_tiny_loveda(root: str | Path, images_per_folder: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A LoveDA in its release layout (``Train`` / ``Val`` / ``Test`` × ``Urban`` / ``Rural``, ``images_png`` and,
    except Test, ``masks_png``): ``images_per_folder`` RGB PNGs of ``size`` px per folder, masks of label values
    0..7 (a no-data block in the first image of each folder), numbered file names as in the release. Returns root.
    """
    from PIL import Image

    if images_per_folder < 1 or size < 1:
        raise ValueError(f"`images_per_folder` and `size` must be >= 1, got {images_per_folder} and {size}.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.integers(20, 236, size=(len(LOVEDA_CLASSES), 3))
    number = 0
    for split in ("Train", "Val", "Test"):
        for scene in ("Rural", "Urban"):
            folder = root / split / scene
            (folder / "images_png").mkdir(parents=True, exist_ok=True)
            if split != "Test":
                (folder / "masks_png").mkdir(parents=True, exist_ok=True)
            # urban tiles lean to buildings and roads, rural ones to agriculture and forest: a real shift
            labels = (1, 2, 2, 3, 4, 5) if scene == "Urban" else (1, 4, 5, 6, 7, 7)
            for index in range(images_per_folder):
                mask = _label_map(rng, size, labels)
                if index == 0:
                    mask[: size // 4, : size // 4] = 0  # no-data corner
                Image.fromarray(_class_image(rng, mask, colours)).save(
                    folder / "images_png" / f"{number}.png"
                )
                if split != "Test":
                    Image.fromarray(mask.astype(np.uint8), mode="L").save(
                        folder / "masks_png" / f"{number}.png"
                    )
                number += 1
    return root


def _isprs_tiles(split_names: Sequence[str], count: int, what: str) -> list[str]:
    if not 1 <= count <= len(split_names):
        raise ValueError(f"`{what}` must be in 1..{len(split_names)} (torchgeo's list), got {count}.")
    return list(split_names[:count])


def _write_colour_label(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(ISPRS_COLOURS, dtype=np.uint8)[labels]).save(path)


def write_tiny_potsdam(
    root: str | Path,
    train_tiles: int = 5,
    test_tiles: int = 2,
    size: int = 64,
    seed: int = 0,
    zipped: bool = False,
) -> Path:
    """ISPRS Potsdam as torchgeo reads it after extracting the two zips: ``4_Ortho_RGBIR/<tile>_RGBIR.tif``
    (4-band uint8 GeoTIFF: R, G, B, IR) and ``<tile>_label.tif`` (RGB colour labels), for the first
    ``train_tiles`` / ``test_tiles`` names of torchgeo's train / test lists, ``size`` px square. ``zipped``: the
    two downloads instead, ``4_Ortho_RGBIR.zip`` (the folder inside) and ``5_Labels_all.zip`` (labels at its top
    level), which torchgeo extracts into root. Returns root."""
    import rasterio
    from rasterio.transform import Affine
    from torchgeo.datasets import Potsdam2D

    root = Path(root)
    (root / "4_Ortho_RGBIR").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(20, 236, size=(len(ISPRS_CLASSES), 4))
    tiles = _isprs_tiles(Potsdam2D.splits["train"], train_tiles, "train_tiles")
    tiles += _isprs_tiles(Potsdam2D.splits["test"], test_tiles, "test_tiles")
    for tile in tiles:
        labels = _label_map(rng, size, range(len(ISPRS_CLASSES)))
        image = _class_image(rng, labels, colours).transpose(2, 0, 1)
        profile = {"driver": "GTiff", "height": size, "width": size, "count": 4, "dtype": "uint8",
                   "crs": "EPSG:32633", "transform": Affine(0.05, 0.0, 368000.0, 0.0, -0.05, 5808000.0)}  # fmt: skip
        with rasterio.open(root / "4_Ortho_RGBIR" / f"{tile}_RGBIR.tif", "w", **profile) as target:
            target.write(image)
        _write_colour_label(root / f"{tile}_label.tif", labels)
    if zipped:
        _zip_up(root / "4_Ortho_RGBIR.zip", root, sorted((root / "4_Ortho_RGBIR").iterdir()))
        _zip_up(root / "5_Labels_all.zip", root, [root / f"{tile}_label.tif" for tile in tiles])
        (root / "4_Ortho_RGBIR").rmdir()
    return root


def write_tiny_vaihingen(
    root: str | Path,
    train_tiles: int = 5,
    test_tiles: int = 2,
    size: int = 64,
    seed: int = 0,
    zipped: bool = False,
) -> Path:
    """ISPRS Vaihingen as torchgeo reads it after extracting the two zips: ``top/top_mosaic_09cm_area<N>.tif``
    (3-band uint8 TIFF: IR, R, G) and ``top_mosaic_09cm_area<N>.tif`` in root (RGB colour labels), for the first
    ``train_tiles`` / ``test_tiles`` names of torchgeo's lists, ``size`` px square. ``zipped``: the two downloads
    instead, ``ISPRS_semantic_labeling_Vaihingen.zip`` (``top/`` inside) and
    ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip`` (labels at its top level), which torchgeo
    extracts into root. Returns root."""
    from PIL import Image
    from torchgeo.datasets import Vaihingen2D

    root = Path(root)
    (root / "top").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(20, 236, size=(len(ISPRS_CLASSES), 3))
    tiles = _isprs_tiles(Vaihingen2D.splits["train"], train_tiles, "train_tiles")
    tiles += _isprs_tiles(Vaihingen2D.splits["test"], test_tiles, "test_tiles")
    for tile in tiles:
        labels = _label_map(rng, size, range(len(ISPRS_CLASSES)))
        Image.fromarray(_class_image(rng, labels, colours)).save(root / "top" / tile)
        _write_colour_label(root / tile, labels)
    if zipped:
        _zip_up(root / "ISPRS_semantic_labeling_Vaihingen.zip", root, sorted((root / "top").iterdir()))
        _zip_up(
            root / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
            root,
            [root / t for t in tiles],
        )
        (root / "top").rmdir()
    return root


def _zip_up(archive: Path, root: Path, files: Sequence[Path]) -> None:
    """Move ``files`` into the zip ``archive``, stored under their paths relative to ``root``."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as target:
        for path in files:
            target.write(path, path.relative_to(root).as_posix())
            path.unlink()


def write_tiny_eurosat(
    root: str | Path, per_class: Sequence[int] = (2, 1, 1), size: int = 64, seed: int = 0
) -> Path:
    """EuroSAT as torchgeo reads it: 13-band uint16 GeoTIFFs ``<Class>/<Class>_<n>.tif`` under
    ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/`` and the split lists (``eurosat-*.txt``,
    ``eurosat-spatial-*.txt``, ``eurosat-100-*.txt``, all the same here) naming ``<Class>_<n>.jpg`` as the real
    lists do. ``per_class`` images per class in train / val / test (torchgeo needs one of each class in every
    split: it reads each split as an ImageFolder). Returns root."""
    import rasterio
    from rasterio.transform import Affine

    counts = [int(count) for count in per_class]
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(
            f"`per_class` must give three counts >= 1 (train, val, test), got {list(per_class)}."
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / _EUROSAT_BASE
    # per class a spectral signature near torchgeo's EuroSAT band statistics (Sentinel-2 L1C digital numbers)
    from torchgeo.datamodules.eurosat import MEAN, STD

    mean, std = (np.array([table[band] for band in EUROSAT_BANDS]) for table in (MEAN, STD))
    signatures = np.clip(mean + std * rng.normal(0.0, 1.0, size=(len(EUROSAT_CLASSES), len(mean))), 1.0, None)
    lists: dict[str, list[str]] = {split: [] for split in ("train", "val", "test")}
    for code, name in enumerate(EUROSAT_CLASSES):
        (base / name).mkdir(parents=True, exist_ok=True)
        number = 1
        for split, count in zip(lists, counts):
            for _ in range(count):
                image = signatures[code][:, None, None] * rng.uniform(
                    0.9, 1.1, size=(len(EUROSAT_BANDS), size, size)
                )
                profile = {"driver": "GTiff", "height": size, "width": size, "count": len(EUROSAT_BANDS),
                           "dtype": "uint16", "crs": "EPSG:32632",
                           "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5500000.0)}  # fmt: skip
                with rasterio.open(base / name / f"{name}_{number}.tif", "w", **profile) as target:
                    target.write(np.rint(image).astype(np.uint16))
                lists[split].append(f"{name}_{number}.jpg")
                number += 1
    for pattern in _EUROSAT_SPLIT_FILES.values():
        for split, names in lists.items():
            (root / pattern.format(split=split)).write_text("\n".join(names) + "\n")
    return root
