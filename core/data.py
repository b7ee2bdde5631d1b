"""Domain-agnostic data plumbing: one datamodule base, one dataloader factory, one group protocol.

Every verticals datamodule derives from :class:`BaseDataModule`: a subclass says what each split
holds (``split_dataset(split)``, optionally ``collate_fn(split)``) and the base builds every loader
through :func:`make_loader` (epoch-seeded shuffling, so a resumed run sees the batches an
uninterrupted one would). Datamodules whose samples belong to groups (a site, a sensor, a sex, a recording condition)
follow :class:`GroupedDataModule`: batches carry ``group`` (``LongTensor[N, A]``, one column per
attribute of ``group_attributes``) and ``group_names[attribute][code]`` names each code.

Also here: in-memory array datasets with label encoding and a seeded stratified split
(:class:`ArrayClassificationDataModule`), and, imported on first use, the CSV-manifest datamodule
(:class:`ManifestDataModule`, in :mod:`verticals.core.manifest_data`) and its file readers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    from verticals.core.image_io import (
        ImageDecodeError,
        UnsupportedSuffixError,
        read_image,
        read_mask,
        supported_suffixes,
    )
    from verticals.core.manifest_data import (
        ManifestDataModule,
        ManifestDataset,
        ManifestError,
        group_split,
        image_transforms,
    )

log = logging.getLogger(__name__)

__all__ = [
    "ArrayClassificationDataModule",
    "ArrayDataset",
    "BaseDataModule",
    "ClassificationArrays",
    "EpochShuffleSampler",
    "LengthGroupedSampler",
    "GroupedDataModule",
    "ImageDecodeError",
    "ManifestDataModule",
    "ManifestDataset",
    "ManifestError",
    "SPLITS",
    "UnsupportedSuffixError",
    "check_groups",
    "dataset_name_of",
    "encode_group_matrix",
    "encode_labels",
    "few_shot_rows",
    "group_split",
    "image_transforms",
    "make_loader",
    "read_image",
    "read_mask",
    "sorted_labels",
    "stratified_split",
    "supported_suffixes",
]

#: The splits a datamodule serves; ``predict`` runs on ``BaseDataModule.predict_split``.
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Names served from modules that import torchvision/PIL, loaded only when asked for (PEP 562).
_LAZY = {
    "ImageDecodeError": "verticals.core.image_io",
    "UnsupportedSuffixError": "verticals.core.image_io",
    "read_image": "verticals.core.image_io",
    "read_mask": "verticals.core.image_io",
    "supported_suffixes": "verticals.core.image_io",
    "ManifestDataModule": "verticals.core.manifest_data",
    "ManifestDataset": "verticals.core.manifest_data",
    "ManifestError": "verticals.core.manifest_data",
    "group_split": "verticals.core.manifest_data",
    "image_transforms": "verticals.core.manifest_data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the one dataloader factory ---------------------------------------------------------------
class EpochShuffleSampler(DistributedSampler):
    """A random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the same
    batches as one that never stopped (a plain seeded generator would restart its sequence).

    Under DDP (``torch.distributed`` initialised) process ``r`` of ``W`` takes every ``W``-th index of that
    order from the ``r``-th (the order padded from its start to a multiple of ``W``, as ``DistributedSampler``
    pads), so the processes' ``k``-th batches together are the ``k``-th batch of one process with ``W`` times
    the batch size: a DDP run trains on the same global batches as one process. It is a
    ``DistributedSampler`` so that Lightning uses it as it is (Lightning's wrapper would shuffle it again).
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        # DistributedSampler.__init__ is not called: it asks torch.distributed for the world at construction.
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            return distributed.get_world_size(), distributed.get_rank()
        return 1, 0

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self._world()[0]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self._world()[1]

    def _order(self) -> list[int]:
        """This epoch's order of the whole dataset (before DDP takes its share)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        order = self._order()
        world, rank = self._world()
        if world > 1 and order:
            padded = len(self) * world
            order = (order * math.ceil(padded / len(order)))[:padded][rank::world]
        return iter(order)

    def __len__(self) -> int:
        return math.ceil(self.size / self._world()[0])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_single_last: bool = True,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """The DataLoader every verticals datamodule uses: epoch-seeded shuffling, persistent workers.

    With ``drop_single_last`` a shuffled (training) loader drops a last batch of exactly one sample:
    BatchNorm cannot normalise a batch of one in training mode and stops the run; with shuffling it is a
    different sample each epoch. Evaluation loaders always keep every sample.
    With ``lengths`` (one per sample) a shuffled loader groups samples of similar length into batches
    (:class:`LengthGroupedSampler`).
    """
    size = len(dataset)
    if lengths is not None and len(lengths) != size:
        raise ValueError(f"`lengths` has {len(lengths)} entries for a dataset of {size} samples.")
    sampler = None
    if shuffle:
        sampler = (
            EpochShuffleSampler(size, seed)
            if lengths is None
            else LengthGroupedSampler(lengths, batch_size, seed)
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_single_last and shuffle and size > 1 and size % batch_size == 1,
    )


# -- the group protocol -------------------------------------------------------------------------
@runtime_checkable
class GroupedDataModule(Protocol):
    """What tasks and group reports read from a datamodule whose samples belong to groups.

    Column ``a`` of a batch's ``group`` (``LongTensor[N, A]``) holds codes of attribute
    ``group_attributes[a]``; ``group_names[attribute][code]`` is the category a code stands for, in a
    fixed order (so reports and checkpoints agree across runs). A datamodule without groups exposes
    ``[]`` and ``{}``, and its batches have no ``group`` key.
    """

    @property
    def group_attributes(self) -> list[str]: ...

    @property
    def group_names(self) -> dict[str, list[str]]: ...


def encode_group_matrix(
    values: Mapping[str, Sequence[Any]], group_names: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """``int64 [N, A]`` codes of each sample's category, one column per attribute of ``values``.

    The inverse of :func:`verticals.core.metrics.groups.decode_group_matrix`: ``values[attribute]``
    holds the samples' categories (compared as strings), coded by their index in
    ``group_names[attribute]``. A category that is not listed is an error naming the attribute.
    """
    from verticals.core.metrics.groups import encode_groups

    attributes = list(values)
    sizes = {attribute: len(values[attribute]) for attribute in attributes}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Every attribute needs one value per sample; got counts {sizes}.")
    columns = []
    for attribute in attributes:
        if attribute not in group_names:
            raise ValueError(
                f"Attribute {attribute!r} has no entry in `group_names` (which has {sorted(group_names)}); "
                "list its categories there."
            )
        strings = [str(value) for value in values[attribute]]
        categories = [str(name) for name in group_names[attribute]]
        unknown = sorted(set(strings) - set(categories))
        if unknown:
            raise ValueError(
                f"Attribute {attribute!r}: value(s) {unknown[:5]} are not among its categories {categories}; "
                "add them to `group_names` or fix the values."
            )
        columns.append(encode_groups(np.asarray(strings, dtype=str), categories)[0])
    rows = next(iter(sizes.values()), 0)
    return np.stack(columns, axis=1) if columns else np.zeros((rows, 0), dtype=np.int64)


def check_groups(datamodule: Any) -> None:
    """Raise if ``datamodule`` breaks the group protocol (see :class:`GroupedDataModule`)."""
    name = type(datamodule).__name__
    if not isinstance(datamodule, GroupedDataModule):
        raise TypeError(f"{name} has no `group_attributes`/`group_names`; derive it from BaseDataModule.")
    attributes, names = list(datamodule.group_attributes), dict(datamodule.group_names)
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"{name}.group_attributes repeats a name: {attributes}.")
    if sorted(attributes) != sorted(names):
        raise ValueError(
            f"{name}: `group_names` has attributes {sorted(names)} but `group_attributes` is {attributes}; "
            "they must name the same attributes."
        )
    empty = [attribute for attribute in attributes if not names[attribute]]
    if empty:
        raise ValueError(f"{name}: attribute(s) {empty} have no categories in `group_names`.")


# -- naming the data ------------------------------------------------------------------------------
#: Constructor arguments that name the data a datamodule loads, looked up in this order.
DATASET_NAME_ARGUMENTS: tuple[str, ...] = ("dataset_name", "dataset", "name")


def dataset_name_of(datamodule: Any, *, use_attribute: bool = True) -> str:
    """The name of the data a datamodule serves, for run reports and model cards.

    The protocol, first match wins: a ``dataset_name`` attribute (``BaseDataModule`` has one a subclass
    may set), a string ``dataset`` attribute, a string among the saved hyperparameters named in
    ``DATASET_NAME_ARGUMENTS`` (a ``dataset="GunPoint"`` argument), else the class name without its
    ``DataModule`` suffix. Any datamodule has a name, so reports never say "unknown".

    Args:
        datamodule: any object; a ``LightningDataModule`` usually.
        use_attribute: read the ``dataset_name`` attribute (False inside that attribute's own getter).
    """
    if use_attribute:
        named = getattr(datamodule, "dataset_name", None)
        if isinstance(named, str) and named:
            return named
    given = getattr(datamodule, "dataset", None)
    if isinstance(given, str) and given:
        return given
    hparams = getattr(datamodule, "hparams", None) or {}
    for key in DATASET_NAME_ARGUMENTS:
        value = hparams.get(key) if isinstance(hparams, Mapping) else None
        if isinstance(value, str) and value:
            return value
    name = type(datamodule).__name__
    return name.removesuffix("DataModule") or name


class LengthGroupedSampler(EpochShuffleSampler):
    """An epoch-seeded random order in which neighbouring samples have similar lengths, so a batch pads little.

    The epoch's permutation is cut into groups of ``batch_size * group_batches`` samples and each group is sorted
    by length, longest first (the grouping Hugging Face's ``LengthGroupedSampler`` uses): which samples share a
    batch is still random, but a batch of short samples runs at a short length. Resuming and DDP behave as in
    :class:`EpochShuffleSampler`.

    Args:
        lengths: each sample's length (frames, tokens); only their order matters.
        batch_size: samples per batch.
        seed: seed of the order, with the epoch.
        group_batches: batches per sorted group; larger pads less and mixes lengths less.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 50
    ) -> None:
        super().__init__(len(lengths), seed)
        if batch_size < 1 or group_batches < 1:
            raise ValueError(
                f"`batch_size` and `group_batches` must be >= 1, got {batch_size} and {group_batches}."
            )
        self.lengths, self.batch_size, self.group_batches = list(lengths), batch_size, group_batches

    def _order(self) -> list[int]:
        order = super()._order()
        group = self.batch_size * self.group_batches
        return [
            index
            for start in range(0, len(order), group)
            for index in sorted(order[start : start + group], key=lambda i: -self.lengths[i])
        ]


# -- the one datamodule base ----------------------------------------------------------------------
class BaseDataModule(L.LightningDataModule):
    """Base of every verticals datamodule: subclasses say what a split holds, loaders are built here.

    Implement ``split_dataset(split)`` for ``split`` in ``SPLITS`` (and ``collate_fn(split)`` when items
    need more than ``default_collate``). Training shuffles with :class:`EpochShuffleSampler`; validation,
    test and prediction (on ``predict_split``) keep their order. Subclasses with groups set or compute
    ``group_attributes`` and ``group_names`` (see :class:`GroupedDataModule`); the defaults say "no
    groups". Subclasses call ``save_hyperparameters()`` in their own ``__init__``. ``dataset_name`` names the
    data in run reports and model cards: a subclass sets it (``self.dataset_name = "eurosat"``), else it is
    read from the datamodule (see :func:`dataset_name_of`).

    Args:
        batch_size: samples per batch (>= 1), in every split; lower it when a step runs out of memory.
        seed: seed of the training order (a permutation per ``(seed, epoch)``, so a resumed run sees the same
            batches) and, in subclasses, of their seeded splits and sampling; change it to repeat a run
            on other draws.
        num_workers: DataLoader worker processes (0: load in the main process); more overlaps loading with
            training when decoding items is the bottleneck.
    """

    #: Drop a last shuffled batch of one sample (BatchNorm cannot train on it); models without
    #: BatchNorm may keep it.
    drop_single_last: ClassVar[bool] = True
    #: The split ``predict_dataloader`` serves.
    predict_split: ClassVar[str] = "test"

    def __init__(self, batch_size: int = 32, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._group_attributes: list[str] = []
        self._group_names: dict[str, list[str]] = {}

    # -- to implement -------------------------------------------------------------------
    def split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (one of ``SPLITS``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement split_dataset(split).")

    def collate_fn(self, split: str) -> Callable[[list[Any]], Any] | None:
        """How items of ``split`` become a batch; ``None`` is PyTorch's ``default_collate``."""
        return None

    def sample_lengths(self, split: str) -> Sequence[int] | None:
        """Each sample's length in ``split`` when batches should group similar lengths (shuffled loaders only;
        see :class:`LengthGroupedSampler`); None (the default) shuffles without regard to length."""
        return None

    # -- groups -------------------------------------------------------------------------
    @property
    def group_attributes(self) -> list[str]:
        """Attribute of each column of a batch's ``group``; empty when samples have no groups."""
        return self._group_attributes

    @group_attributes.setter
    def group_attributes(self, attributes: Sequence[str]) -> None:
        self._group_attributes = list(attributes)

    @property
    def group_names(self) -> dict[str, list[str]]:
        """Category of each code, per attribute (``group_names[attribute][code]``)."""
        return self._group_names

    @group_names.setter
    def group_names(self, names: Mapping[str, Sequence[str]]) -> None:
        self._group_names = {attribute: list(categories) for attribute, categories in names.items()}

    # -- naming -------------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        """The data's name in run reports and model cards: the one a subclass set, else
        :func:`dataset_name_of`'s reading of the datamodule."""
        given = getattr(self, "_dataset_name", None)
        return given if given else dataset_name_of(self, use_attribute=False)

    @dataset_name.setter
    def dataset_name(self, name: str) -> None:
        self._dataset_name = str(name)

    # -- the loaders --------------------------------------------------------------------
    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """The loader of ``split``; shuffled (epoch-seeded) by default only for ``"train"``.

        Scripts that iterate a split without a Trainer call this with ``shuffle=False``.
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        return make_loader(
            self.split_dataset(split),
            self.batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(split),
            drop_single_last=self.drop_single_last,
            lengths=self.sample_lengths(split)
            if (split == "train" if shuffle is None else shuffle)
            else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader(self.predict_split, shuffle=False)


# -- in-memory arrays -----------------------------------------------------------------------------
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


def sorted_labels(labels: Iterable[str]) -> list[str]:
    """Numeric labels ('1', '2', '10') sort as numbers, anything else as strings: the one order in which
    classes and group categories are coded, so reports and checkpoints agree across runs."""
    labels = list(labels)
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
    class_names = sorted_labels([str(v) for v in np.unique(train)])
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


class ArrayClassificationDataModule(BaseDataModule):
    """Base datamodule for classification data that fits in memory as arrays.

    Subclasses implement ``_load_arrays() -> (x_train, y_train, x_test, y_test, class_names)``:
    ``x`` float arrays ``[N, *input_shape]``; either raw labels of any type with ``class_names=None``
    (encoded here, see ``encode_labels``), or ints ``0..K-1`` with their ``class_names``.
    Loading runs once, on first use, so ``num_classes``/``input_shape`` work before ``setup()``.

    The validation set is a seeded, stratified ``val_fraction`` of the training split; the test
    split is never used for model selection. With ``val_fraction=0`` validation runs on the
    training set, with a warning (there is no held-out estimate then).

    Batches: ``{"x": FloatTensor[B, *input_shape], "y": LongTensor[B]}``.

    Args:
        batch_size: samples per batch (>= 1).
        val_fraction: share of the training split, in [0, 1), held out (stratified, seeded) for validation
            and checkpoint selection; 0 validates on the training set itself.
        seed: seed of the validation split and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(
        self, batch_size: int = 16, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
        self.val_fraction = val_fraction
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

    def split_dataset(self, split: str) -> ArrayDataset:
        """The split's items; ``"val"`` is the training set itself when ``val_fraction=0``."""
        self.setup()
        return {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}[split]

    def val_dataloader(self) -> DataLoader:
        if self.val_fraction == 0:
            log.warning(
                "%s: val_fraction=0, so validation runs on the training set; validation metrics are "
                "not a held-out estimate. Set val_fraction > 0 to hold out part of the training split.",
                type(self).__name__,
            )
        return super().val_dataloader()
