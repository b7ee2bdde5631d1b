"""Domain-agnostic data plumbing: in-memory array datasets and a classification datamodule base.

A domain datamodule (time series, images, speech features) only says how to read its files into
arrays, by implementing ``_load_arrays``; this base owns label encoding, the seeded stratified
train/val split, the dataloaders, and lazy loading so that shape properties (``num_classes``,
``input_shape``) exist right after ``__init__`` for LightningCLI's ``link_arguments``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

__all__ = [
    "ArrayClassificationDataModule",
    "ArrayDataset",
    "ClassificationArrays",
    "encode_labels",
    "few_shot_rows",
    "stratified_split",
]


class ArrayDataset(Dataset):
    """Items ``{"x": FloatTensor, "y": tensor}`` over in-memory numpy arrays (no copy per item).

    ``y`` keeps its kind: integer labels become ``torch.long`` (classification), floats become
    ``torch.float32`` (regression, forecasting targets). ``y=None`` gives items with ``x`` only.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        x = np.asarray(x)
        if y is not None and len(y) != len(x):
            raise ValueError(f"`x` has {len(x)} items but `y` has {len(y)}; they must be paired one to one.")
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y: torch.Tensor | None
        if y is None:
            self.y = None
        else:
            y = np.asarray(y)
            if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
                self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
            elif np.issubdtype(y.dtype, np.floating):
                self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
            else:
                raise TypeError(
                    f"`y` must be integer labels or float targets, got dtype {y.dtype}; encode string labels "
                    "first (verticals.core.data.encode_labels)."
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"x": self.x[index]}
        if self.y is not None:
            item["y"] = self.y[index]
        return item


def _sorted_labels(labels: Sequence[str]) -> list[str]:
    """Numeric labels ('1', '2', '10') sort as numbers, anything else as strings."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def encode_labels(
    train_labels: Sequence[Any] | np.ndarray, *other_labels: Sequence[Any] | np.ndarray
) -> tuple[list[np.ndarray], list[str]]:
    """Map labels to ints ``0..K-1`` in sorted order of the training labels; returns (encoded, names).

    Labels are compared as strings (so ``1`` and ``'1'`` are the same class). Numeric labels sort
    numerically ('2' before '10'). A label in ``other_labels`` (validation/test) that the training
    set lacks is an error, since a classifier cannot be trained or scored on it.
    """
    train = np.asarray(train_labels).astype(str)
    class_names = _sorted_labels([str(v) for v in np.unique(train)])
    index = {name: i for i, name in enumerate(class_names)}
    encoded = [np.array([index[v] for v in train], dtype=np.int64)]
    for labels in other_labels:
        labels = np.asarray(labels).astype(str)
        unseen = sorted({str(v) for v in labels} - set(index))
        if unseen:
            raise ValueError(
                f"Labels {unseen} occur in the evaluation data but not in the training data (classes: "
                f"{class_names}); a classifier cannot learn them. Drop those series or move some to training."
            )
        encoded.append(np.array([index[v] for v in labels], dtype=np.int64))
    return encoded, class_names


def stratified_split(
    labels: Sequence[Any] | np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(len(labels))`` into (keep, held_out) index arrays, sorted.

    ``held_out`` has ``ceil(fraction * n)`` items, stratified by label with scikit-learn's
    ``train_test_split`` so that small classes appear on both sides. Stratifying is impossible when
    a class has a single member or there are fewer held-out (or kept) items than classes; then the
    split falls back to a plain seeded random split and logs a warning saying why.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}.")
    indices = np.arange(n)
    if fraction == 0.0:
        return indices, np.empty(0, dtype=np.int64)
    n_held = math.ceil(fraction * n)
    if n < 2 or n_held >= n:
        raise ValueError(
            f"Cannot hold out a fraction {fraction} of {n} items and keep any for training; "
            "lower the fraction or add data."
        )
    classes, counts = np.unique(labels.astype(str), return_counts=True)
    reasons = []
    if counts.min() < 2:
        reasons.append(f"classes {classes[counts < 2].tolist()} have a single member")
    if n_held < len(classes) or n - n_held < len(classes):
        reasons.append(f"{n_held} held-out / {n - n_held} kept items cannot cover {len(classes)} classes")
    if reasons:
        log.warning("Split is not stratified (%s); using a seeded random split instead.", "; ".join(reasons))
        stratify = None
    else:
        stratify = labels
    keep, held = train_test_split(
        indices, test_size=n_held, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(keep), np.sort(held)


def few_shot_rows(labels: np.ndarray, shots: int, seed: int, class_names: Sequence[str]) -> np.ndarray:
    """Sorted indices of ``shots`` randomly chosen rows of every class (seeded; each class sampled apart)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for code, name in enumerate(class_names):
        rows = np.flatnonzero(labels == code)
        if len(rows) < shots:
            raise ValueError(
                f"`shots_per_class`={shots} but the training split has only {len(rows)} image(s) of class "
                f"{name!r}; lower `shots_per_class` or use a larger training set."
            )
        chosen.append(rng.choice(rows, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class ClassificationArrays:
    """Train/test inputs and int labels ``0..K-1`` as loaded by an ``ArrayClassificationDataModule``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


class ArrayClassificationDataModule(L.LightningDataModule):
    """Base datamodule for classification data that fits in memory as arrays.

    Subclasses implement ``_load_arrays() -> (x_train, y_train, x_test, y_test, class_names)``:
    ``x`` float arrays ``[N, *input_shape]``; either raw labels of any type with ``class_names=None``
    (encoded here, see ``encode_labels``), or ints ``0..K-1`` with their ``class_names``.
    Loading runs once, on first use, so ``num_classes``/``input_shape`` work before ``setup()``.

    The validation set is a seeded, stratified ``val_fraction`` of the training split; the test
    split is never used for model selection. With ``val_fraction=0`` validation runs on the
    training set, with a warning (there is no held-out estimate then).

    Batches: ``{"x": FloatTensor[B, *input_shape], "y": LongTensor[B]}``.
    """

    def __init__(
        self, batch_size: int = 16, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.save_hyperparameters()
        self._cached: ClassificationArrays | None = None
        self._split: tuple[np.ndarray, np.ndarray] | None = None
        self.train_dataset: ArrayDataset | None = None
        self.val_dataset: ArrayDataset | None = None
        self.test_dataset: ArrayDataset | None = None

    # -- to implement -------------------------------------------------------------------
    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement _load_arrays().")

    # -- lazy, cached loading -----------------------------------------------------------
    @property
    def arrays(self) -> ClassificationArrays:
        """The loaded and label-encoded train/test arrays (loaded on first access, then cached)."""
        if self._cached is None:
            self._cached = self._checked(*self._load_arrays())
        return self._cached

    def _checked(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        class_names: list[str] | None,
    ) -> ClassificationArrays:
        name = type(self).__name__
        x_train, x_test = np.asarray(x_train, dtype=np.float32), np.asarray(x_test, dtype=np.float32)
        if len(x_train) == 0:
            raise ValueError(f"{name}: the training split is empty.")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(
                f"{name}: train items have shape {x_train.shape[1:]} but test items {x_test.shape[1:]}; "
                "both splits must share one input shape."
            )
        if len(y_train) != len(x_train) or len(y_test) != len(x_test):
            raise ValueError(
                f"{name}: {len(x_train)} train / {len(x_test)} test inputs but {len(y_train)} / "
                f"{len(y_test)} labels."
            )
        if class_names is None:
            (y_train, y_test), class_names = encode_labels(y_train, y_test)
        else:
            class_names = [str(c) for c in class_names]
            y_train, y_test = np.asarray(y_train), np.asarray(y_test)
            for split, y in (("train", y_train), ("test", y_test)):
                if len(y) and (
                    not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(class_names)
                ):
                    raise ValueError(
                        f"{name}: {split} labels must be ints in 0..{len(class_names) - 1} when "
                        f"`class_names` is given; got dtype {y.dtype}, range [{y.min()}, {y.max()}]."
                    )
            y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
        return ClassificationArrays(x_train, y_train, x_test, y_test, list(class_names))

    @property
    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) indices into the training split; seeded and stratified."""
        if self._split is None:
            self._split = stratified_split(self.arrays.y_train, self.val_fraction, self.seed)
        return self._split

    # -- shapes, for link_arguments(apply_on="instantiate") -----------------------------
    @property
    def class_names(self) -> list[str]:
        """Original label of each class index, in index order."""
        return list(self.arrays.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.arrays.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input ``x`` (without the batch axis), e.g. ``(channels, length)``."""
        return tuple(int(s) for s in self.arrays.x_train.shape[1:])

    @property
    def num_channels(self) -> int:
        return self.input_shape[0]

    @property
    def series_length(self) -> int:
        """Time steps per series, for inputs shaped ``(channels, length)``."""
        if len(self.input_shape) != 2:
            raise AttributeError(
                f"`series_length` needs inputs shaped (channels, length); these are {self.input_shape}. "
                "Use `input_shape`."
            )
        return self.input_shape[1]

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        data = self.arrays
        train_idx, val_idx = self.split_indices
        if self.train_dataset is None:
            self.train_dataset = ArrayDataset(data.x_train[train_idx], data.y_train[train_idx])
        if self.val_dataset is None:
            if len(val_idx):
                self.val_dataset = ArrayDataset(data.x_train[val_idx], data.y_train[val_idx])
            else:
                self.val_dataset = self.train_dataset
        if self.test_dataset is None:
            self.test_dataset = ArrayDataset(data.x_test, data.y_test)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(
            dataset, self.batch_size, shuffle=shuffle, seed=self.seed, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        if self.val_fraction == 0:
            log.warning(
                "%s: val_fraction=0, so validation runs on the training set; validation metrics are "
                "not a held-out estimate. Set val_fraction > 0 to hold out part of the training split.",
                type(self).__name__,
            )
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Predicts over the test split, in file order."""
        self.setup()
        return self._loader(self.test_dataset, shuffle=False)


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose loaders differ only by split: subclasses implement ``_loader(split, shuffle)``.

    Training shuffles; validation, test and prediction (on the test split) keep their order.
    """

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError(f"{type(self).__name__} must implement _loader(split, shuffle).")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the same
    batches as one that never stopped (a plain seeded generator would restart its sequence).
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """The DataLoader every verticals datamodule uses: epoch-seeded shuffling, persistent workers.

    A shuffled (training) loader drops a last batch of exactly one sample: BatchNorm cannot normalise a
    batch of one in training mode and stops the run; with shuffling it is a different sample each epoch.
    """
    size = len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(size, seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=shuffle and size > 1 and size % batch_size == 1,
    )
