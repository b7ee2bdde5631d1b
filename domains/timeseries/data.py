"""Time-series datasets: UCR/UEA classification archives, plain CSV series, and forecasting windows.

Readers turn files in the layouts the data is distributed in (``.ts`` of the UCR/UEA archive, the
UCR 2018 ``.tsv``, plain CSV) into ``float32 [N, C, L]`` arrays; the datamodules add the split,
normalisation and dataloaders. Real data that ships inside ``sktime`` (GunPoint, BasicMotions,
airline, ...) loads offline through the same code path as files on disk.

Batches:
    classification: ``{"x": FloatTensor[B, C, L], "y": LongTensor[B]}``
    forecasting:    ``{"x": FloatTensor[B, C, context_length], "y": FloatTensor[B, C, horizon]}``
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from verticals.core.data import ArrayClassificationDataModule, BaseDataModule

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_FORECASTING_SERIES",
    "CSVClassificationDataModule",
    "ForecastingDataModule",
    "SHIPPED_UCR_DATASETS",
    "UCRDataModule",
    "WindowDataset",
    "read_csv_series",
    "read_ts_file",
    "validate_series",
    "normalization_mode",
    "standardize_channels",
    "znormalize",
]

#: Classification problems whose ``.ts`` files ship inside the ``sktime`` package.
SHIPPED_UCR_DATASETS: tuple[str, ...] = (
    "ACSF1",
    "ArrowHead",
    "BasicMotions",
    "GunPoint",
    "ItalyPowerDemand",
    "JapaneseVowels",
    "OSULeaf",
    "PLAID",
)

_IMPUTE_HINT = (
    "verticals does not impute silently: impute the gaps first (e.g. "
    "sktime.transformations.series.impute.Imputer(method='linear')) or drop the affected series."
)


def _sktime_dir() -> Path:
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The time-series loaders need sktime: pip install 'verticals[timeseries]'.", name="sktime"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# -- validation and normalisation ------------------------------------------------------------
def validate_series(x: np.ndarray, source: str, y: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` if ``x [N, C, L]`` (or labels ``y``) cannot be trained on as it is.

    Checks for no series, empty series, NaN/inf values (the message names ``source``, the series
    index, channel and first bad time index, and how to fix it) and missing or mismatched labels.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{source}: expected series shaped [N, channels, length], got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"{source}: contains no series.")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{source}: the series are empty (shape {x.shape}); each needs at least one value.")
    bad = ~np.isfinite(x)
    if bad.any():
        series, channel, step = (int(v) for v in np.argwhere(bad)[0])
        kind = "NaN (missing)" if np.isnan(x[series, channel, step]) else "infinite"
        raise ValueError(
            f"{source}: series {series} (row {series}, 0-based), channel {channel}, "
            f"time index {step} is {kind}; "
            f"{int(bad.sum())} non-finite values in {int(bad.any(axis=(1, 2)).sum())} series in all. "
            f"{_IMPUTE_HINT}"
        )
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"{source}: {len(x)} series but {len(y)} labels; every series needs one label.")
        missing = [
            i for i, v in enumerate(y.tolist()) if v is None or str(v).strip().lower() in ("", "nan", "none")
        ]
        if missing:
            raise ValueError(
                f"{source}: series {missing[0]} has no label ({len(missing)} unlabelled series in all); "
                "label them or drop them."
            )


def znormalize(x: np.ndarray, lengths: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """Z-normalise each series per channel over its observed steps (the UCR archive convention).

    ``lengths [N, C]`` marks the observed prefix of right-padded series, so padding does not bias
    the statistics (padded steps become the normalised last value). Uses the sample std (ddof=1),
    as the archive's own z-normalised files do, so those pass through unchanged; a constant channel
    (std < ``eps``) becomes zeros instead of dividing by zero.
    """
    x = np.asarray(x, dtype=np.float64)
    if lengths is None:
        lengths = np.full(x.shape[:2], x.shape[2])
    observed = np.arange(x.shape[2]) < np.asarray(lengths)[..., None]
    count = np.maximum(observed.sum(axis=2, keepdims=True), 1)
    mean = (x * observed).sum(axis=2, keepdims=True) / count
    std = np.sqrt((((x - mean) * observed) ** 2).sum(axis=2, keepdims=True) / np.maximum(count - 1, 1))
    std[std < eps] = 1.0
    return ((x - mean) / std).astype(np.float32)


def standardize_channels(
    x_train: np.ndarray, x_test: np.ndarray, train_lengths: np.ndarray | None = None, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise each channel with the mean and std of the TRAIN split's observed steps.

    Unlike :func:`znormalize` this keeps differences in level and amplitude between series, which
    carry the class in sensor problems (standing still vs running in BasicMotions); both splits use
    TRAIN's statistics, so nothing leaks from TEST. A constant channel is centred, not scaled.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    if train_lengths is None:
        train_lengths = np.full(x_train.shape[:2], x_train.shape[2])
    observed = np.arange(x_train.shape[2]) < np.asarray(train_lengths)[..., None]  # [N, C, L]
    count = np.maximum(observed.sum(axis=(0, 2)), 1)  # [C]
    mean = (x_train * observed).sum(axis=(0, 2)) / count
    centred = (x_train - mean[None, :, None]) * observed
    std = np.sqrt((centred**2).sum(axis=(0, 2)) / np.maximum(count - 1, 1))
    std[std < eps] = 1.0

    def apply(x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - mean[None, :, None]) / std[None, :, None]).astype(
            np.float32
        )

    return apply(x_train), apply(x_test)


NORMALIZATIONS = ("series", "dataset", "none")


def normalization_mode(normalize: bool | str) -> str:
    """``True``/``False`` (older configs) → ``"series"``/``"none"``; a mode name is checked."""
    if normalize is True:
        return "series"
    if normalize is False:
        return "none"
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"`normalize` must be one of {NORMALIZATIONS} (or true/false), got {normalize!r}: 'series' "
            "z-normalises every series per channel (UCR convention), 'dataset' standardises each channel "
            "with TRAIN statistics (keeps amplitude), 'none' keeps raw values."
        )
    return normalize


# -- readers ----------------------------------------------------------------------------------
@dataclass
class _Series:
    """Series right-padded to one length, with each channel's observed length."""

    x: np.ndarray  # float32 [N, C, L]
    y: np.ndarray  # str [N]
    lengths: np.ndarray  # int64 [N, C]
    source: str
    regression: bool = False

    def padded_to(self, length: int) -> np.ndarray:
        """``x`` right-padded to ``length`` with each series' last value (same as padding the original)."""
        extra = length - self.x.shape[2]
        if extra <= 0:
            return self.x
        return np.concatenate([self.x, np.repeat(self.x[:, :, -1:], extra, axis=2)], axis=2)


def _pad(series: list[list[np.ndarray]], y: np.ndarray, source: str) -> _Series:
    """Stack ``series[i][c]`` 1-D arrays into ``[N, C, L]``, right-padding with the last value."""
    lengths = np.array([[len(ch) for ch in s] for s in series], dtype=np.int64).reshape(len(series), -1)
    if lengths.size and lengths.min() == 0:
        i, c = (int(v) for v in np.argwhere(lengths == 0)[0])
        raise ValueError(
            f"{source}: series {i} (row {i}, 0-based), channel {c} is empty; fill it or drop the series."
        )
    length = int(lengths.max()) if lengths.size else 0
    x = np.empty((len(series), lengths.shape[1] if lengths.size else 0, length), dtype=np.float32)
    for i, channels in enumerate(series):
        for c, values in enumerate(channels):
            x[i, c, : len(values)] = values
            x[i, c, len(values) :] = values[-1]
    padded = int((lengths < length).any(axis=1).sum())
    if padded:
        log.info(
            "%s: right-padded %d of %d series to length %d with each series' last value (lengths %d..%d).",
            source,
            padded,
            len(series),
            length,
            int(lengths.min()),
            length,
        )
    return _Series(x, np.asarray(y).astype(str), lengths, source)


def _ts_header(path: Path) -> dict[str, list[str]]:
    """The ``@tag value...`` lines before ``@data``, case preserved (sktime lower-cases them)."""
    header: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            tokens = line.strip().split()
            if not tokens or not tokens[0].startswith("@"):
                continue
            if tokens[0].lower() == "@data":
                break
            header[tokens[0].lower()] = tokens[1:]
    return header


def _read_ts(path: str | Path) -> _Series:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No .ts file at {path}.")
    from sktime.datasets import load_from_tsfile_to_dataframe

    try:
        loaded = load_from_tsfile_to_dataframe(str(path), return_separate_X_and_y=True)
    except OSError as error:  # sktime reports format errors as OSError
        raise ValueError(f"{path}: not a valid .ts file ({error}).") from error
    if not isinstance(loaded, tuple):
        raise ValueError(f"{path}: the file has no class labels (@classLabel false); label every series.")
    frame, labels = loaded
    header = _ts_header(path)
    # sktime lower-cases whole lines; restore the label spelling declared in @classLabel.
    declared = header.get("@classlabel", [])[1:]
    spelling = {label.lower(): label for label in declared}
    undeclared = sorted({str(v) for v in labels} - set(spelling))
    if spelling and undeclared:
        raise ValueError(
            f"{path}: labels {undeclared} are not among those declared in its @classLabel line {declared}; "
            "fix the header or the labels."
        )
    labels = np.array([spelling.get(str(v), str(v)) for v in labels])
    series = [[np.asarray(cell, dtype=np.float64) for cell in row] for row in frame.to_numpy()]
    data = _pad(series, labels, str(path))
    data.regression = header.get("@targetlabel", ["false"])[0].lower() == "true"
    validate_series(data.x, str(path), data.y)
    return data


def read_ts_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a UCR/UEA ``.ts`` file into ``(x float32 [N, C, L], y str [N])``.

    Parsing is sktime's ``load_from_tsfile_to_dataframe`` (offline, local files); label spelling
    follows the file's ``@classLabel`` line. Unequal-length series are right-padded to the longest
    with each series' last value (logged at INFO). Missing values (``?``/NaN) are an error.
    """
    data = _read_ts(path)
    return data.x, data.y


def _rows_to_series(
    values: np.ndarray, columns: list[str], describe_row: Callable[[int], str]
) -> list[np.ndarray]:
    """Rows of a wide table to 1-D series; trailing empty cells mean a shorter series, gaps are errors."""
    rows = []
    for r, row in enumerate(values):
        present = ~np.isnan(row)
        length = int(np.flatnonzero(present)[-1]) + 1 if present.any() else 0
        if length == 0:
            raise ValueError(f"{describe_row(r)} has no values; drop it.")
        gaps = np.flatnonzero(~present[:length])
        if gaps.size:
            raise ValueError(
                f"{describe_row(r)}, column {columns[gaps[0]]!r} (time index {gaps[0]}) is missing "
                f"before the series ends ({gaps.size} gaps in this row). {_IMPUTE_HINT}"
            )
        infinite = np.flatnonzero(np.isinf(row[:length]))
        if infinite.size:
            raise ValueError(
                f"{describe_row(r)}, column {columns[infinite[0]]!r} (time index {infinite[0]}) is infinite. "
                f"{_IMPUTE_HINT}"
            )
        rows.append(row[:length])
    return rows


def _read_ucr_tsv(path: str | Path) -> _Series:
    """The UCR 2018 archive's ``.tsv``: label, then values; shorter series end in empty cells."""
    path = Path(path)
    table = pd.read_csv(path, sep="\t", header=None)
    values = table.iloc[:, 1:].to_numpy(dtype=np.float64)
    columns = [str(c - 1) for c in table.columns[1:]]
    rows = _rows_to_series(values, columns, lambda r: f"{path}: line {r + 1} (series {r})")
    return _pad([[row] for row in rows], table.iloc[:, 0].to_numpy(), str(path))


def _read_csv(
    path: str | Path,
    label_column: str = "label",
    channel_column: str | None = None,
    id_column: str | None = None,
) -> _Series:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No CSV file at {path}.")
    table = pd.read_csv(path)
    for role, column in (
        ("label_column", label_column),
        ("channel_column", channel_column),
        ("id_column", id_column),
    ):
        if column is not None and column not in table.columns:
            raise ValueError(
                f"{path}: `{role}` {column!r} is not a column; columns are {list(table.columns)}."
            )
    if channel_column is not None and id_column is None:
        raise ValueError(
            f"{path}: `channel_column` needs `id_column` too, to say which rows (one per channel) "
            "form one series."
        )
    keys = [c for c in (label_column, channel_column, id_column) if c is not None]
    value_columns = [str(c) for c in table.columns if c not in keys]
    if not value_columns:
        raise ValueError(f"{path}: no time-step columns besides {keys}.")
    for column in value_columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = numeric.isna() & table[column].notna()
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: line {r + 2}, column {column!r} holds {table[column].iloc[r]!r}, not a number; "
                f"every column except {keys} must be a time step."
            )
        table[column] = numeric
    labels = table[label_column]
    if labels.isna().any():
        r = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise ValueError(
            f"{path}: line {r + 2} has no value in label column {label_column!r}; label or drop it."
        )
    labels = labels.astype(str).to_numpy()

    def describe(r: int) -> str:
        where = f"{path}: line {r + 2}"
        if id_column is not None:
            where += f" ({id_column}={table[id_column].iloc[r]!r}"
            where += f", {channel_column}={table[channel_column].iloc[r]!r})" if channel_column else ")"
        return where

    rows = _rows_to_series(table[value_columns].to_numpy(dtype=np.float64), value_columns, describe)
    if channel_column is None:
        if id_column is not None and table[id_column].duplicated().any():
            r = int(np.flatnonzero(table[id_column].duplicated().to_numpy())[0])
            raise ValueError(
                f"{describe(r)} repeats an id; without `channel_column` each id must be one row (one series)."
            )
        return _pad([[row] for row in rows], labels, str(path))

    channels = list(pd.unique(table[channel_column]))
    groups: dict[object, list[int]] = {}
    for r, series_id in enumerate(table[id_column]):
        groups.setdefault(series_id, []).append(r)
    series, series_labels = [], []
    for series_id, members in groups.items():
        found = [table[channel_column].iloc[r] for r in members]
        if sorted(map(str, found)) != sorted(map(str, channels)):
            raise ValueError(
                f"{path}: series {id_column}={series_id!r} has channels {found} (lines "
                f"{[r + 2 for r in members]}); every series needs exactly one row per channel {channels}."
            )
        member_labels = {labels[r] for r in members}
        if len(member_labels) > 1:
            raise ValueError(
                f"{path}: series {id_column}={series_id!r} has conflicting labels {sorted(member_labels)} "
                f"across its channel rows (lines {[r + 2 for r in members]})."
            )
        by_channel = {table[channel_column].iloc[r]: rows[r] for r in members}
        series.append([by_channel[c] for c in channels])
        series_labels.append(labels[members[0]])
    return _pad(series, np.array(series_labels), str(path))


def read_csv_series(
    path: str | Path,
    label_column: str = "label",
    channel_column: str | None = None,
    id_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read labelled series from a wide CSV into ``(x float32 [N, C, L], y str [N])``.

    Layout: a header row; one row per series with a ``label_column`` and one column per time step
    (every other column, in file order; names are free). A row may end in empty cells: that series
    is shorter and is right-padded with its last value; an empty cell *before* the row's last value
    is a missing value and an error. Multivariate: give ``channel_column`` and ``id_column``; the
    rows sharing an id (one per channel, channels in order of first appearance) form one series.
    """
    data = _read_csv(path, label_column, channel_column, id_column)
    return data.x, data.y


# -- classification datamodules ---------------------------------------------------------------
class _SeriesClassificationDataModule(ArrayClassificationDataModule):
    """Reads a train and a test split, pads both to one length, normalises (see ``normalization_mode``)."""

    def __init__(
        self,
        normalize: bool | str = "series",
        batch_size: int = 16,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers)
        self.normalize = normalization_mode(normalize)

    def _read_split(self, split: str) -> _Series:
        raise NotImplementedError

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, None]:
        train, test = self._read_split("train"), self._read_split("test")
        if train.x.shape[1] != test.x.shape[1]:
            raise ValueError(
                f"{train.source} has {train.x.shape[1]} channels but {test.source} has {test.x.shape[1]}."
            )
        length = max(train.x.shape[2], test.x.shape[2])
        for data in (train, test):
            if data.x.shape[2] < length:
                log.info("%s: right-padded to length %d to match the other split.", data.source, length)
        x_train, x_test = train.padded_to(length), test.padded_to(length)
        if self.normalize == "series":
            x_train, x_test = znormalize(x_train, train.lengths), znormalize(x_test, test.lengths)
        elif self.normalize == "dataset":
            x_train, x_test = standardize_channels(x_train, x_test, train.lengths)
        return x_train, train.y, x_test, test.y, None


class UCRDataModule(_SeriesClassificationDataModule):
    """A UCR (univariate) or UEA (multivariate) archive problem, on its official TRAIN/TEST split.

    ``root=None`` reads the copy shipped inside sktime (see ``SHIPPED_UCR_DATASETS``); otherwise
    ``<root>/<dataset>/<dataset>_TRAIN.ts`` and ``_TEST.ts``, the layout of the archive downloads
    from timeseriesclassification.com (the UCR 2018 ``.tsv`` files are read when no ``.ts`` exists).
    Validation is a stratified ``val_fraction`` of TRAIN. ``normalize="series"`` (default, or ``True``)
    z-normalises every series per channel, the archive's convention (many UCR problems are already
    z-normalised; most UEA ones are not); ``"dataset"`` standardises each channel with TRAIN's
    statistics, keeping amplitude (better for sensor sets such as BasicMotions); ``"none"`` keeps raw values. Unequal lengths are right-padded with each series' last value.

    Args:
        dataset: the archive problem's name (``GunPoint``, ``BasicMotions`` …); with ``root=None`` one of
            ``SHIPPED_UCR_DATASETS``, matched case-insensitively.
        root: folder holding ``<dataset>/<dataset>_TRAIN.ts`` and ``_TEST.ts`` (an archive download); None
            reads the copy shipped with sktime, offline.
        batch_size: series per batch (>= 1).
        val_fraction: share of TRAIN, in [0, 1), held out (stratified, seeded) for validation and checkpoint
            selection; 0 validates on TRAIN itself.
        seed: seed of the validation split and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        normalize: ``series`` (z-normalise each series per channel; ``true`` too), ``dataset`` (standardise
            each channel with TRAIN's statistics, keeping amplitude) or ``none`` (raw values; ``false`` too).
    """

    def __init__(
        self,
        dataset: str = "GunPoint",
        root: str | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        normalize: bool | str = "series",
    ) -> None:
        super().__init__(
            normalize=normalize,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            num_workers=num_workers,
        )
        self.dataset, self.root = dataset, root
        self.paths = self._resolve(dataset, root)

    @staticmethod
    def _resolve(dataset: str, root: str | None) -> dict[str, Path]:
        if root is None:
            matches = [name for name in SHIPPED_UCR_DATASETS if name.lower() == dataset.lower()]
            if not matches:
                raise ValueError(
                    f"UCR/UEA dataset {dataset!r} does not ship with sktime; shipped: "
                    f"{', '.join(SHIPPED_UCR_DATASETS)}. For any other archive problem, download it "
                    f"(timeseriesclassification.com) and pass "
                    f"root=<folder holding {dataset}/{dataset}_TRAIN.ts>."
                )
            name = matches[0]
            folder = _sktime_dir() / "datasets" / "data" / name
            return {split: folder / f"{name}_{split.upper()}.ts" for split in ("train", "test")}
        base = Path(root).expanduser()
        if not base.is_dir():
            stem = base / dataset / dataset
            raise FileNotFoundError(
                f"UCR/UEA root {str(base)!r} does not exist; expected {stem}_TRAIN.ts and {stem}_TEST.ts."
            )
        paths, missing = {}, []
        for split in ("train", "test"):
            stem = base / dataset / f"{dataset}_{split.upper()}"
            found = [p for p in (stem.with_suffix(".ts"), stem.with_suffix(".tsv")) if p.is_file()]
            if found:
                paths[split] = found[0]
            else:
                missing.append(f"{stem}.ts (or .tsv)")
        if missing:
            raise FileNotFoundError(
                f"UCR/UEA dataset {dataset!r} not found under {str(base)!r}: missing {', '.join(missing)}. "
                f"Expected the archive layout <root>/{dataset}/{dataset}_TRAIN.ts and _TEST.ts."
            )
        return paths

    def _read_split(self, split: str) -> _Series:
        path = self.paths[split]
        data = _read_ucr_tsv(path) if path.suffix == ".tsv" else _read_ts(path)
        if data.regression:
            raise ValueError(
                f"{path} is a regression problem (@targetLabel true); UCRDataModule is for classification."
            )
        return data


class CSVClassificationDataModule(_SeriesClassificationDataModule):
    """Labelled series from two CSV files (train, test) in the layout of ``read_csv_series``.

    Validation is a stratified ``val_fraction`` of the train file; ``normalize`` as in ``UCRDataModule``
    (``"series"``, ``"dataset"`` or ``"none"``).

    Args:
        train_path: the training CSV (one row per series, or per channel with ``channel_column``).
        test_path: the test CSV, in the same layout; never used for model selection.
        label_column: column of the class labels.
        channel_column: column naming each row's channel, for multivariate series (one row per channel);
            None: every row is a univariate series.
        id_column: column identifying the series a row belongs to (with ``channel_column``).
        batch_size: series per batch (>= 1).
        val_fraction: share of the train file, in [0, 1), held out (stratified, seeded) for validation and
            checkpoint selection; 0 validates on the training series themselves.
        seed: seed of the validation split and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        normalize: ``series`` (z-normalise each series per channel; ``true`` too), ``dataset`` (standardise
            each channel with the train file's statistics, keeping amplitude) or ``none`` (raw values;
            ``false`` too).
    """

    def __init__(
        self,
        train_path: str,
        test_path: str,
        label_column: str = "label",
        channel_column: str | None = None,
        id_column: str | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        normalize: bool | str = "series",
    ) -> None:
        super().__init__(
            normalize=normalize,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            num_workers=num_workers,
        )
        self.paths = {"train": Path(train_path), "test": Path(test_path)}
        missing = [str(p) for p in self.paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"CSV file(s) not found: {', '.join(missing)}.")
        self.label_column, self.channel_column, self.id_column = label_column, channel_column, id_column
        stem = self.paths["train"].stem
        trimmed = stem[: -len("_train")] if stem.lower().endswith(("_train", "-train")) else stem
        self.dataset_name = trimmed or stem

    def _read_split(self, split: str) -> _Series:
        return _read_csv(self.paths[split], self.label_column, self.channel_column, self.id_column)


# -- forecasting ------------------------------------------------------------------------------
def _bundled(loader: str, **kwargs: object) -> Callable[[], pd.Series]:
    def load() -> pd.Series:
        import sktime.datasets

        loaded = getattr(sktime.datasets, loader)(**kwargs)
        return loaded[0] if isinstance(loaded, tuple) else loaded

    return load


#: Univariate series that ship inside sktime and load offline, by the name ``ForecastingDataModule`` takes.
BUNDLED_FORECASTING_SERIES: dict[str, Callable[[], pd.Series]] = {
    "airline": _bundled("load_airline"),
    "lynx": _bundled("load_lynx"),
    "shampoo_sales": _bundled("load_shampoo_sales"),
    "pbs": _bundled("load_PBS_dataset"),
    "uschange": _bundled("load_uschange"),  # the "Consumption" column
    "solar": _bundled("load_solar", api_version=None),  # the stored sample; never calls the API
}


class WindowDataset(Dataset):
    """Sliding ``(context -> horizon)`` windows over one ``[C, T]`` series, by target start index."""

    def __init__(self, values: torch.Tensor, starts: np.ndarray, context_length: int, horizon: int) -> None:
        self.values, self.starts = values, np.asarray(starts, dtype=np.int64)
        self.context_length, self.horizon = context_length, horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        return {
            "x": self.values[:, start - self.context_length : start],
            "y": self.values[:, start : start + self.horizon],
        }


class ForecastingDataModule(BaseDataModule):
    """Sliding-window forecasting on one series (univariate or multivariate), split by time.

    Source: a series bundled with sktime (``series``, see ``BUNDLED_FORECASTING_SERIES``) or
    ``csv_path``: time in rows, one column per channel (``value_columns``, default every numeric
    column; name them when the time column is numeric, such as years). ``series`` is ignored then.

    Split: the last ``test_size`` points are the test period, the ``val_size`` before them the
    validation period, the rest training. A window's *targets* lie inside its split; val/test
    windows take their context from the points before them (standard practice: at forecast time
    the past is known). ``normalize=True`` standardises each channel with the training period's
    mean and std (no statistics from val/test); ``inverse_transform`` maps outputs back.

    Batches: ``{"x": FloatTensor[B, C, context_length], "y": FloatTensor[B, C, horizon]}``.

    Args:
        series: a series bundled with sktime: ``airline``, ``lynx``, ``shampoo_sales``, ``pbs``, ``uschange``
            or ``solar`` (see ``BUNDLED_FORECASTING_SERIES``); ignored when ``csv_path`` is given.
        csv_path: a CSV with time in rows and one column per channel, to forecast your own series.
        value_columns: the CSV's columns to forecast, one channel each; default: every numeric column.
        context_length: past steps the model sees per window (>= 1); longer gives more history at a higher
            cost per step.
        horizon: steps ahead each window asks for (>= 1); the task takes it as its own ``horizon``.
        test_size: last steps of the series that form the test period (>= ``horizon``).
        val_size: steps before the test period that form the validation period (0, or >= ``horizon``);
            0 validates on the training windows (no held-out estimate then).
        batch_size: windows per batch (>= 1).
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: seed of the training order.
        normalize: standardise each channel with the training period's mean and std (no statistics from
            val/test); ``inverse_transform`` maps forecasts back to the original units.
    """

    def __init__(
        self,
        series: str = "airline",
        csv_path: str | None = None,
        value_columns: list[str] | None = None,
        context_length: int = 36,
        horizon: int = 12,
        test_size: int = 36,
        val_size: int = 12,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        for name, value, low in (
            ("context_length", context_length, 1),
            ("horizon", horizon, 1),
            ("test_size", test_size, 1),
            ("val_size", val_size, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise ValueError(f"`{name}` must be >= {low}, got {value}.")
        if test_size < horizon:
            raise ValueError(
                f"`test_size` ({test_size}) must be >= `horizon` ({horizon}) to hold one test window."
            )
        if 0 < val_size < horizon:
            raise ValueError(
                f"`val_size` ({val_size}) must be 0 or >= `horizon` ({horizon}), "
                "to hold one validation window."
            )
        if csv_path is None and series not in BUNDLED_FORECASTING_SERIES:
            raise ValueError(
                f"Unknown series {series!r}; bundled: {', '.join(BUNDLED_FORECASTING_SERIES)}. "
                "Or pass csv_path=<file with one column per channel, time in rows>."
            )
        if csv_path is not None and not Path(csv_path).is_file():
            raise FileNotFoundError(f"No CSV file at {csv_path}.")
        self.series, self.csv_path, self.value_columns = series, csv_path, value_columns
        self.dataset_name = series if csv_path is None else Path(csv_path).stem
        self.context_length, self.horizon = context_length, horizon
        self.test_size, self.val_size = test_size, val_size
        self.batch_size, self.num_workers, self.seed, self.normalize = (
            batch_size,
            num_workers,
            seed,
            normalize,
        )
        self.save_hyperparameters()
        self._values: np.ndarray | None = None
        self._channel_names: list[str] = []
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    # -- loading ------------------------------------------------------------------------
    def _read(self) -> tuple[np.ndarray, list[str], list[str], str]:
        """(values [T, C], channel names, a label per row for messages, source)."""
        if self.csv_path is not None:
            source = str(self.csv_path)
            table = pd.read_csv(self.csv_path)
            if self.value_columns is None:
                columns = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
                if not columns:
                    raise ValueError(f"{source}: no numeric columns; columns are {list(table.columns)}.")
                log.info("%s: forecasting the numeric columns %s.", source, columns)
            else:
                columns = list(self.value_columns)
                unknown = [c for c in columns if c not in table.columns]
                if unknown:
                    raise ValueError(
                        f"{source}: `value_columns` {unknown} not found; columns are {list(table.columns)}."
                    )
                for c in columns:
                    if not pd.api.types.is_numeric_dtype(table[c]):
                        raise ValueError(f"{source}: column {c!r} is not numeric (dtype {table[c].dtype}).")
            values = table[columns].to_numpy(dtype=np.float64)
            rows = [f"row {r} (line {r + 2})" for r in range(len(table))]
            return values, [str(c) for c in columns], rows, source
        loaded = BUNDLED_FORECASTING_SERIES[self.series]()
        values = loaded.to_numpy(dtype=np.float64).reshape(len(loaded), -1)
        rows = [f"row {r} (time {t})" for r, t in enumerate(loaded.index)]
        return values, [str(loaded.name or self.series)], rows, f"sktime series {self.series!r}"

    @property
    def values(self) -> np.ndarray:
        """The whole series ``[C, T]`` as the model sees it (normalised when ``normalize``)."""
        return self._load()

    def _load(self) -> np.ndarray:
        """Read, check and normalise once; later calls return the cached array."""
        if self._values is None:
            values, self._channel_names, rows, source = self._read()
            bad = ~np.isfinite(values)
            if bad.any():
                r, c = (int(v) for v in np.argwhere(bad)[0])
                raise ValueError(
                    f"{source}: {rows[r]}, column {self._channel_names[c]!r} is "
                    f"{'NaN (missing)' if np.isnan(values[r, c]) else 'infinite'} "
                    f"({int(bad.sum())} bad values in all). {_IMPUTE_HINT}"
                )
            total = len(values)
            train_length = total - self.test_size - self.val_size
            needed = self.context_length + self.horizon + self.val_size + self.test_size
            if train_length < self.context_length + self.horizon:
                raise ValueError(
                    f"{source} has {total} points, too short: context_length {self.context_length} + horizon "
                    f"{self.horizon} (one training window) + val_size {self.val_size} + test_size "
                    f"{self.test_size} needs at least {needed}. Shorten the context, horizon or splits."
                )
            values = values.T
            if self.normalize:
                train = values[:, :train_length]
                self.mean = train.mean(axis=1)
                std = train.std(axis=1)
                self.std = np.where(std < 1e-8, 1.0, std)
                values = (values - self.mean[:, None]) / self.std[:, None]
            self._values = values.astype(np.float32)
        return self._values

    # -- shapes -------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def channel_names(self) -> list[str]:
        self._load()
        return list(self._channel_names)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.num_channels, self.context_length)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.num_channels, self.horizon)

    @property
    def split_bounds(self) -> tuple[int, int]:
        """(first validation index, first test index) on the time axis."""
        total = self.values.shape[1]
        return total - self.test_size - self.val_size, total - self.test_size

    def window_starts(self, split: str) -> np.ndarray:
        """Time index of each window's first target step; targets ``[s, s + horizon)`` stay in ``split``."""
        val_start, test_start = self.split_bounds
        total = self.values.shape[1]
        first, end = {
            "train": (self.context_length, val_start),
            "val": (val_start, test_start),
            "test": (test_start, total),
        }[split]
        return np.arange(first, end - self.horizon + 1)

    def inverse_transform(self, y: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation on ``[..., C, steps]`` values (identity when ``normalize=False``)."""
        self._load()  # the statistics are computed on load
        if self.mean is None or self.std is None:
            return y
        mean = torch.as_tensor(self.mean, dtype=y.dtype, device=y.device)[:, None]
        std = torch.as_tensor(self.std, dtype=y.dtype, device=y.device)[:, None]
        return y * std + mean

    # -- datasets (the loaders are the core's: BaseDataModule.dataloader) ------------------
    def split_dataset(self, split: str) -> WindowDataset:
        """Windows whose targets lie in ``split``; ``"val"`` is the training windows when ``val_size=0``."""
        if split == "val" and self.val_size == 0:
            split = "train"
        values = torch.from_numpy(self.values)
        return WindowDataset(values, self.window_starts(split), self.context_length, self.horizon)

    def setup(self, stage: str | None = None) -> None:
        self._load()  # read and check the lengths before the first loader

    def val_dataloader(self) -> DataLoader:
        if self.val_size == 0:
            log.warning(
                "ForecastingDataModule: val_size=0, so validation runs on the training windows; validation "
                "metrics are not a held-out estimate. Set val_size >= horizon to hold out a period."
            )
        return super().val_dataloader()
