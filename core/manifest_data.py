"""Datasets listed in a CSV manifest: a file per row, its label or mask, its groups, a group-aware split.

A manifest names one file per row (``path_column``) and either a class label (``label_column``) or a
label-mask file (``mask_column``, for segmentation), plus group columns (site, scanner, sex, ...) and,
optionally, the column whose values must never straddle two splits (``split_by``: ``patient_id``,
``site``, ``tile_id``). Paths are relative to ``root`` (default: the manifest's folder) or absolute.

Splits: a ``split`` column (train / val / test) fixes them; otherwise a seeded ``test_fraction`` of the
``split_by`` units is held out for testing, then ``val_fraction`` of the remaining units for validation.
``shots_per_class`` k keeps a seeded k training rows per class (few-shot protocols); validation and
test stay whole.

Batches: ``{"x": FloatTensor[B, C, *spatial], "y": LongTensor[B] (labels) or LongTensor[B, *spatial]
(masks), "group": LongTensor[B, A]}`` (``group`` only when there are group columns). Masks take the
same spatial transforms as their image (torchvision ``v2`` resizes masks with nearest neighbours).
Files are read by suffix (:mod:`verticals.core.image_io`); a suffix no reader decodes is refused when
the manifest is read, and a file that fails to decode is named with its manifest line, as is a file whose
channel count differs from the files read before it (``channels=None``). A label column with fewer
than two classes is refused. Every such problem is a :class:`~verticals.core.file_errors.VerticalsFileError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from verticals.core.data import (
    BaseDataModule,
    encode_group_matrix,
    encode_labels,
    few_shot_rows,
    sorted_labels,
)
from verticals.core.file_errors import VerticalsFileError
from verticals.core.image_io import (
    ImageDecodeError,
    UnsupportedSuffixError,
    check_suffix,
    read_image,
    read_mask,
)

try:
    from torchvision import tv_tensors
    from torchvision.transforms import v2
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "verticals.core.manifest_data needs torchvision for its image transforms: `pip install torchvision`."
    ) from error

log = logging.getLogger(__name__)

__all__ = [
    "ManifestDataModule",
    "ManifestDataset",
    "ManifestError",
    "group_split",
    "image_transforms",
]

#: Values a ``split`` column may hold.
SPLIT_VALUES = ("train", "val", "test")


class ManifestError(VerticalsFileError):
    """A manifest that cannot be used as it is; the message names the line or column and the fix."""


def group_split(
    units: Sequence[str], fraction: float, seed: int, *, unit: str = "group"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held_out) row indices with about ``fraction`` of the distinct ``units`` held out.

    Rows sharing a unit (a patient, a site) land on one side; at least one unit stays on each side.
    ``unit`` only names the units in the error message.
    """
    units = np.asarray(units, dtype=str)
    unique = np.unique(units)
    if fraction <= 0:
        return np.arange(len(units)), np.empty(0, dtype=np.int64)
    if len(unique) < 2:
        raise ValueError(
            f"Cannot split {len(unique)} {unit}(s); need at least 2 to hold out a fraction {fraction}."
        )
    rng = np.random.default_rng(seed)
    held_count = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    held = set(rng.permutation(unique)[:held_count])
    mask = np.array([u in held for u in units])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def image_transforms(
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    *,
    train: bool,
    flips: bool = True,
) -> v2.Compose:
    """Resize (short side) + centre crop to ``image_size``, random flips when training, then normalise.

    ``image_size=None`` keeps the stored size; ``mean=None`` skips normalisation (8-bit pixels still
    scale to [0, 1]). Applied to an image and its mask together, both get the same geometry.
    """
    steps: list[v2.Transform] = []
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train and flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        steps.append(v2.Normalize(list(mean), list(std if std is not None else [1.0] * len(mean))))
    return v2.Compose(steps)


class ManifestDataset(Dataset):
    """Files read from disk with their label (``targets``) or mask (``masks``) and group codes.

    ``cache=True`` keeps each decoded image (and mask), resized to ``cache_size`` when given, in memory
    after its first read: worth it for small sets trained for many epochs. ``lines`` (the manifest
    line of each row) and ``source`` (the manifest) name a file that fails to decode.
    ``num_classes``/``ignore_index`` bound a mask's values: a value outside is an error naming the file.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray | None,
        groups: np.ndarray,
        transform: v2.Compose,
        *,
        masks: Sequence[str] | None = None,
        channels: int | None = 3,
        cache: bool = False,
        cache_size: int | None = None,
        lines: Sequence[int] | None = None,
        source: str = "manifest",
        num_classes: int | None = None,
        ignore_index: int | None = None,
    ) -> None:
        if (targets is None) == (masks is None):
            raise ValueError("Give exactly one of `targets` (class labels) and `masks` (mask files).")
        counts = {"paths": len(paths), "targets or masks": len(targets if masks is None else masks)}
        counts["group rows"] = len(groups)
        if len(set(counts.values())) > 1:
            raise ValueError(f"One row per sample is needed; got {counts}.")
        self.paths, self.transform, self.channels = list(paths), transform, channels
        self.masks = None if masks is None else list(masks)
        self.targets = None if targets is None else torch.tensor(np.asarray(targets, dtype=np.int64))
        self.groups = torch.tensor(np.asarray(groups, dtype=np.int64).reshape(len(self.paths), -1))
        self.lines = list(lines) if lines is not None else [i + 2 for i in range(len(self.paths))]
        self.source, self.num_classes, self.ignore_index = source, num_classes, ignore_index
        self.cache = cache
        self._resize = v2.Resize(cache_size, antialias=True) if cache_size else None
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._first: dict[str, tuple[int, tuple[int, ...]]] = {}  # what the first file read gave, by check

    def __len__(self) -> int:
        return len(self.paths)

    def _file_error(self, index: int, error: Exception) -> ImageDecodeError:
        return ImageDecodeError(
            f"{self.source}, line {self.lines[index]}: {error} Fix or replace the file, or drop the row.",
            self.paths[index],
        )

    def _same_as_first(self, index: int, what: str, value: tuple[int, ...], fix: str) -> None:
        """Every file must give the ``what`` (its channel count) of the first one read: one model takes them all."""
        first = self._first.setdefault(what, (index, value))
        if first[1] != value:
            raise ImageDecodeError(
                f"{self.source}, line {self.lines[index]}: {self.paths[index]} gives {what} {value}, but "
                f"{self.paths[first[0]]} (line {self.lines[first[0]]}) gives {first[1]}; {fix}",
                self.paths[index],
            )

    def _checked_mask(self, index: int, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        assert self.masks is not None
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise ImageDecodeError(
                f"{self.source}, line {self.lines[index]}: mask {self.masks[index]} has shape "
                f"{tuple(mask.shape)} but image {self.paths[index]} has spatial shape {tuple(image.shape[1:])}; "
                "they must match pixel for pixel."
            )
        if self.num_classes is not None:
            bad = (mask < 0) | (mask >= self.num_classes)
            if self.ignore_index is not None:
                bad &= mask != self.ignore_index
            if bool(bad.any()):
                values = torch.unique(mask[bad]).tolist()[:10]
                raise ImageDecodeError(
                    f"{self.source}, line {self.lines[index]}: mask {self.masks[index]} has class values "
                    f"{values} outside 0..{self.num_classes - 1}"
                    + (f" (ignore_index {self.ignore_index})" if self.ignore_index is not None else "")
                    + "; fix the mask or declare the classes (`mask_classes`)."
                )
        return mask

    def read(self, index: int) -> torch.Tensor:
        """The decoded image of item ``index`` (``[C, *spatial]``, before the transform)."""
        return self._read(index)[0]

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if index in self._cached:
            return self._cached[index]
        try:
            image = read_image(self.paths[index], self.channels)
            mask = None if self.masks is None else read_mask(self.masks[index])
        except (ImageDecodeError, UnsupportedSuffixError) as error:
            raise self._file_error(index, error) from error
        if self.channels is None:
            self._same_as_first(
                index,
                "channels",
                (int(image.shape[0]),),
                "set `channels` (1, 3 or 4) to convert every file, or convert the files.",
            )
        if mask is not None:
            mask = self._checked_mask(index, mask, image)
        if self._resize is not None:
            if mask is None:
                image = self._resize(image)
            else:
                image, mask = self._resize(tv_tensors.Image(image), tv_tensors.Mask(mask))
                image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        if self.cache:
            self._cached[index] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._read(index)
        if mask is None:
            item = {"x": self.transform(image), "y": self.targets[index]}
        else:
            x, y = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            item = {"x": x.as_subclass(torch.Tensor), "y": y.as_subclass(torch.Tensor).long()}
        if self.groups.shape[1]:
            item["group"] = self.groups[index]
        return item


class ManifestDataModule(BaseDataModule):
    """Images, arrays or volumes listed in a CSV manifest, with labels or masks and groups (see module doc).

    Args:
        manifest: the CSV file.
        root: folder that relative paths start from (default: the manifest's folder).
        path_column: column of the input files.
        label_column: column of class labels (default ``"label"`` unless ``mask_column`` is given).
        mask_column: column of label-mask files (segmentation); exclusive with ``label_column``.
        group_columns: columns whose categories become the batch's ``group`` codes.
        split_by: column whose values never straddle two splits (``patient_id``, ``site``); each row is
            its own unit when ``None`` or when the cell is empty.
        split_column: column that fixes the split (train / val / test) when the manifest has it.
        mask_classes: names of the mask classes (index order); ``None`` reads every mask once to find
            the largest class index.
        ignore_index: a mask value that is not a class (e.g. 255 for "unlabelled").
        missing_groups: ``"error"`` or ``"drop"`` rows with an empty group cell.
        channels: 3 (RGB, grey repeated), 1, 4, or ``None`` for the files' own channels.
        image_size: short side resized to this, then centre-cropped square; ``None`` keeps the size.
        mean: per-channel mean subtracted after scaling 8-bit pixels to [0, 1] (the backbone's pretraining
            statistics, e.g. ImageNet's); ``None`` skips the normalisation.
        std: per-channel standard deviation to divide by after subtracting ``mean`` (``None``: 1 per channel;
            unused without ``mean``).
        flips: random horizontal and vertical flips for training.
        cache_images: keep decoded (resized) files in memory after their first read.
        val_fraction: share of the ``split_by`` units left after the test split held out for validation
            (seeded), in [0, 1); unused when the manifest has a ``split_column``.
        test_fraction: share of the ``split_by`` units held out for testing (seeded), in [0, 1); unused
            when the manifest has a ``split_column``.
        shots_per_class: keep a seeded k training rows per class (labels only).

    The manifest is read on first use, so ``num_classes``, ``input_shape``, ``group_attributes`` and
    ``group_names`` exist right after construction. Subclasses may override ``read_table`` (to read
    another layout into the standard table: ``path``, ``label`` or ``mask``, ``line``, the group and
    ``split_by`` columns, optionally ``split``) and ``group_categories`` (the order of a group's
    categories).
    """

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        path_column: str = "path",
        label_column: str | None = None,
        mask_column: str | None = None,
        group_columns: list[str] | None = None,
        split_by: str | None = None,
        split_column: str = "split",
        mask_classes: list[str] | None = None,
        ignore_index: int | None = None,
        missing_groups: Literal["error", "drop"] = "error",
        channels: int | None = 3,
        image_size: int | None = 224,
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
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if shots_per_class is not None and shots_per_class < 1:
            raise ValueError(
                f"`shots_per_class` must be >= 1 (or None for the whole set), got {shots_per_class}."
            )
        if mask_column is not None and label_column is not None:
            raise ValueError(
                f"Give `label_column` ({label_column!r}, classification) or `mask_column` ({mask_column!r}, "
                "segmentation), not both."
            )
        if mask_column is not None and shots_per_class is not None:
            raise ValueError("`shots_per_class` samples k rows per class label; it does not apply to masks.")
        if missing_groups not in ("error", "drop"):
            raise ValueError(f"`missing_groups` must be 'error' or 'drop', got {missing_groups!r}.")
        if channels is not None and channels < 1:
            raise ValueError(f"`channels` must be a positive channel count or None, got {channels}.")
        if image_size is not None and image_size < 1:
            raise ValueError(f"`image_size` must be >= 1 or None, got {image_size}.")
        if mean is not None and std is not None and len(mean) != len(std):
            raise ValueError(f"`mean` has {len(mean)} values but `std` has {len(std)}; give one per channel.")
        groups = list(group_columns or [])
        if len(set(groups)) != len(groups):
            raise ValueError(f"`group_columns` repeats a column: {groups}.")
        if type(self).__init__ is ManifestDataModule.__init__:
            # A subclass with its own __init__ records its own arguments (BaseDataModule's contract);
            # saving here too would add this class's arguments to the subclass's hyperparameters.
            self.save_hyperparameters()
        self.manifest, self.file_root = manifest, root
        self.path_column, self.split_column = path_column, split_column
        self.label_column = None if mask_column is not None else (label_column or "label")
        self.mask_column, self.group_columns, self.split_by = mask_column, groups, split_by
        self.mask_classes = None if mask_classes is None else [str(c) for c in mask_classes]
        self.ignore_index, self.missing_groups = ignore_index, missing_groups
        self.channels, self.image_size, self.flips, self.cache_images = (
            channels,
            image_size,
            flips,
            cache_images,
        )
        self.mean = None if mean is None else tuple(mean)
        self.std = None if std is None else tuple(std)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.shots_per_class = shots_per_class
        self._table: pd.DataFrame | None = None
        self._class_names: list[str] = []
        self._categories: dict[str, list[str]] = {}
        self.datasets: dict[str, ManifestDataset] = {}

    # -- reading the manifest -------------------------------------------------------------
    def manifest_path(self) -> str:
        """The CSV to read (a subclass may create it first)."""
        return self.manifest

    @property
    def segmentation(self) -> bool:
        """True when targets are mask files rather than class labels."""
        return self.mask_column is not None

    def read_table(self) -> pd.DataFrame:
        """The standard table of the manifest: ``line``, ``path``, ``label`` or ``mask``, groups, split."""
        manifest = Path(self.manifest_path())
        if not manifest.is_file():
            raise FileNotFoundError(f"Manifest {str(manifest)!r} does not exist.")
        try:
            raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
            reason = (
                "it is empty"
                if isinstance(error, pd.errors.EmptyDataError)
                else (f"it is not a readable CSV table ({type(error).__name__}: {str(error).strip()[:200]})")
            )
            raise ManifestError(
                f"{manifest}: {reason}. A manifest is a UTF-8 CSV file with a header row "
                f"(`{self.path_column}`, the label or mask column, group columns).",
                manifest,
            ) from None
        if raw.empty:
            raise ManifestError(f"{manifest}: it has a header but no rows; list one file per row.", manifest)
        target = self.mask_column or self.label_column
        required = [
            self.path_column,
            target,
            *self.group_columns,
            *([self.split_by] if self.split_by else []),
        ]
        absent = [column for column in dict.fromkeys(required) if column not in raw.columns]
        if absent:
            raise ManifestError(
                f"{manifest.name}: column(s) {absent} not found; the manifest has columns {list(raw.columns)}. "
                "Check `path_column`, `label_column`/`mask_column`, `group_columns` and `split_by`."
            )
        root = Path(self.file_root).expanduser() if self.file_root is not None else manifest.parent
        if not root.is_dir():
            raise FileNotFoundError(f"Root {str(root)!r} of manifest {manifest.name} is not a directory.")
        table = pd.DataFrame({"line": raw.index + 2})
        table["path"] = self._resolved(raw[self.path_column], root, manifest, self.path_column)
        if self.segmentation:
            table["mask"] = self._resolved(raw[self.mask_column], root, manifest, self.mask_column)
        else:
            labels = raw[self.label_column].str.strip()
            if (labels == "").any():
                line = int(raw.index[(labels == "").to_numpy()][0]) + 2
                raise ManifestError(
                    f"{manifest.name}: line {line} has an empty label in column {self.label_column!r}; "
                    "label it or drop the row."
                )
            table["label"] = labels
        for column in dict.fromkeys([*self.group_columns, *([self.split_by] if self.split_by else [])]):
            table[column] = raw[column].str.strip()
        if self.split_column in raw.columns:
            split = raw[self.split_column].str.strip().str.lower()
            bad = sorted(set(split) - set(SPLIT_VALUES))
            if bad:
                raise ManifestError(
                    f"{manifest.name}: column {self.split_column!r} has values {bad}; use {', '.join(SPLIT_VALUES)}."
                )
            table["split"] = split
        return self._without_missing_groups(table, manifest.name)

    def _resolved(self, values: pd.Series, root: Path, manifest: Path, column: str) -> list[str]:
        paths = []
        for row, value in values.str.strip().items():
            line = int(row) + 2
            if not value:
                raise ManifestError(
                    f"{manifest.name}: line {line}: column {column!r} is empty; give a file path."
                )
            path = Path(value).expanduser()
            path = path if path.is_absolute() else root / path
            try:
                check_suffix(path)
            except UnsupportedSuffixError as error:
                raise UnsupportedSuffixError(
                    f"{manifest.name}, line {line} ({column}): {error}", path
                ) from error
            try:
                found = path.is_file()
            except (OSError, ValueError) as error:  # a NUL byte, a name too long for the filesystem
                raise ManifestError(
                    f"{manifest.name}: line {line} ({column}): {value[:80]!r} is not a usable file path "
                    f"({error}). Fix the path or drop the row.",
                    manifest,
                ) from None
            if not found:
                raise ManifestError(
                    f"{manifest.name}: line {line} ({column}={value!r}): file {path} not found. "
                    "Fix `root` or the path, or drop the row."
                )
            paths.append(str(path.resolve()))
        return paths

    def _without_missing_groups(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        if not self.group_columns:
            return table
        missing = (table[self.group_columns] == "").any(axis=1)
        if missing.any():
            if self.missing_groups == "error":
                first = int(np.flatnonzero(missing.to_numpy())[0])
                column = next(c for c in self.group_columns if table[c].iloc[first] == "")
                raise ManifestError(
                    f"{name}: line {int(table['line'].iloc[first])} has no value in group column {column!r} "
                    f"({int(missing.sum())} rows in all). Fill them, or pass missing_groups='drop'."
                )
            log.info("%s: dropped %d row(s) with an empty group cell.", name, int(missing.sum()))
            table = table[~missing.to_numpy()]
        if table.empty:
            raise ManifestError(f"{name}: no rows left after dropping those with empty group cells.")
        return table.reset_index(drop=True)

    def group_categories(self, table: pd.DataFrame, attribute: str) -> list[str]:
        """Categories of group ``attribute`` in code order: numbers numerically, other values sorted."""
        return sorted_labels([str(v) for v in pd.unique(table[attribute].dropna())])

    @property
    def table(self) -> pd.DataFrame:
        """The standard table plus ``y`` (class index; labels only) and ``stage`` (train/val/test/unused)."""
        if self._table is None:
            table = self.read_table()
            if "line" not in table.columns:
                table = table.assign(line=np.arange(len(table)) + 2)
            self._check_standard(table)
            if self.segmentation:
                self._class_names = self.mask_classes or self._scan_mask_classes(table)
            else:
                (codes,), self._class_names = encode_labels(table["label"].to_numpy())
                if len(self._class_names) < 2:
                    found = f"the label {self._class_names[0]!r}" if self._class_names else "no label"
                    raise ManifestError(
                        f"{self.manifest_path()}: every row has {found} (column {self.label_column!r}); a "
                        "classifier needs at least 2 classes. Add rows of the other classes, or check "
                        "`label_column`.",
                        self.manifest_path(),
                    )
                table["y"] = codes
            self._categories = {a: self.group_categories(table, a) for a in self.group_columns}
            table["stage"] = self._stages(table)
            self._table = table
        return self._table

    def _check_standard(self, table: pd.DataFrame) -> None:
        target = "mask" if self.segmentation else "label"
        needed = ["path", target, *self.group_columns, *([self.split_by] if self.split_by else [])]
        absent = [column for column in needed if column not in table.columns]
        if absent:
            raise ManifestError(
                f"{type(self).__name__}.read_table() gave no column(s) {absent} (it gave {list(table.columns)})."
            )
        for column in ("path", "mask"):
            if column in table.columns:
                for line, path in zip(table["line"], table[column]):
                    try:
                        check_suffix(path)
                    except UnsupportedSuffixError as error:
                        raise UnsupportedSuffixError(
                            f"{self.manifest_path()}, line {line}: {error}"
                        ) from error

    def _scan_mask_classes(self, table: pd.DataFrame) -> list[str]:
        log.info("Reading %d masks once to count the classes; pass `mask_classes` to skip this.", len(table))
        largest = -1
        for line, path in zip(table["line"], table["mask"]):
            try:
                values = read_mask(path).unique()
            except ImageDecodeError as error:
                raise ImageDecodeError(f"{self.manifest_path()}, line {line}: {error}") from error
            if self.ignore_index is not None:
                values = values[values != self.ignore_index]
            if len(values) and int(values.min()) < 0:
                raise ManifestError(
                    f"{self.manifest_path()}, line {line}: mask {path} has negative values "
                    f"{values[values < 0].tolist()[:5]}; set `ignore_index` if one marks unlabelled pixels."
                )
            largest = max(largest, int(values.max()) if len(values) else -1)
        if largest < 0:
            raise ManifestError(
                f"{self.manifest_path()}: every mask is empty or ignored; no classes to learn."
            )
        return [str(i) for i in range(largest + 1)]

    def _stages(self, table: pd.DataFrame) -> np.ndarray:
        units = self._units(table)
        stage = np.full(len(table), "train", dtype=object)
        unit = self.split_by or "row"
        try:
            if "split" in table.columns:
                stage[:] = table["split"].to_numpy()
            else:
                _, test = group_split(units, self.test_fraction, self.seed, unit=unit)
                stage[test] = "test"
            if not (stage == "val").any():
                train = np.flatnonzero(stage == "train")
                _, val = group_split(units[train], self.val_fraction, self.seed + 1, unit=unit)
                stage[train[val]] = "val"
        except ValueError as error:
            raise ManifestError(
                f"{self.manifest_path()}: {error} Add rows, or set `test_fraction`/`val_fraction` to 0 or a "
                f"{self.split_column!r} column.",
                self.manifest_path(),
            ) from None
        for name in ("train", "test"):
            if not (stage == name).any():
                raise ManifestError(
                    f"The {name} split of {self.manifest_path()} is empty; adjust `test_fraction` or the "
                    f"{self.split_column!r} column."
                )
        if self.shots_per_class is not None:  # the rest of the training split is left unused
            train = np.flatnonzero(stage == "train")
            kept = few_shot_rows(
                table["y"].to_numpy()[train], self.shots_per_class, self.seed + 2, self._class_names
            )
            unused = np.ones(len(train), dtype=bool)
            unused[kept] = False
            stage[train[unused]] = "unused"
        return stage

    def _units(self, table: pd.DataFrame) -> np.ndarray:
        """The split unit of each row: its ``split_by`` value, or the row's own line when that is empty."""
        lines = table["line"].astype(str).to_numpy()
        if self.split_by is None:
            return lines
        values = table[self.split_by].astype(str).to_numpy()
        return np.where(values == "", lines, values)

    # -- what tasks and the CLI read ------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class of each index: sorted labels, or the mask classes."""
        _ = self.table
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one ``x``; read from the first training item when channels or size are left open."""
        if self.channels is not None and self.image_size is not None:
            return (self.channels, self.image_size, self.image_size)
        return tuple(int(s) for s in self.split_dataset("train")[0]["x"].shape)

    @property
    def group_attributes(self) -> list[str]:
        return list(self.group_columns)

    @property
    def group_names(self) -> dict[str, list[str]]:
        _ = self.table
        return {attribute: list(names) for attribute, names in self._categories.items()}

    def group_codes(self, table: pd.DataFrame) -> np.ndarray:
        """``[N, A]`` category codes of ``table``'s rows (columns in ``group_attributes`` order)."""
        if not self.group_columns:
            return np.zeros((len(table), 0), dtype=np.int64)
        return encode_group_matrix({a: table[a].tolist() for a in self.group_columns}, self.group_names)

    # -- datasets -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        table = self.table
        for name in ("train", "val", "test"):
            if name in self.datasets:
                continue
            rows = table[table["stage"] == name]
            if name == "val" and rows.empty:
                log.warning("No validation rows: validating on the training set (not a held-out estimate).")
                rows = table[table["stage"] == "train"]
            transform = image_transforms(
                self.image_size, self.mean, self.std, train=name == "train", flips=self.flips
            )
            self.datasets[name] = ManifestDataset(
                rows["path"].tolist(),
                None if self.segmentation else rows["y"].to_numpy(),
                self.group_codes(rows),
                transform,
                masks=rows["mask"].tolist() if self.segmentation else None,
                channels=self.channels,
                cache=self.cache_images,
                cache_size=self.image_size if self.cache_images else None,
                lines=rows["line"].tolist(),
                source=str(self.manifest_path()),
                num_classes=self.num_classes if self.segmentation else None,
                ignore_index=self.ignore_index,
            )

    def split_dataset(self, split: str) -> ManifestDataset:
        self.setup()
        return self.datasets[split]
