"""Point-cloud datamodules: generated shapes (clean and scanned) and ModelNet40, ScanObjectNN, ShapeNetPart.

Every datamodule serves clouds of exactly ``num_points`` points, centred and scaled into the unit sphere,
and takes its validation split from the training split (seeded, stratified by class or category), never
from the test split. Batches::

    x [B, P, 3] float32 (xyz)
    y [B] long (classification: class)  |  [B, P] long (segmentation: part label, IGNORE_INDEX unlabelled)
    group [B, A] long (when the datamodule has groups: group_names[attribute][code])
    category [B] long (segmentation only: the object's category, for a part head's one-hot)

:class:`ShapeDataModule` draws its shapes with :mod:`verticals.domains.pointcloud.shapes` at setup (a
few seconds for a thousand scans); the others read the distributed files with
:mod:`verticals.domains.pointcloud.formats` and reduce each cloud to ``num_points`` by farthest-point
sampling (``"fps"``, seeded start), a seeded random subset (``"random"``) or the first points (``"first"``,
PointNet's use of the HDF5 files). Cards: ``datasets_cards/{generated_shapes,modelnet40,scanobjectnn,
shapenetpart}.md``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from verticals.core.data import SPLITS, BaseDataModule, encode_group_matrix, stratified_split
from verticals.domains.pointcloud.formats import (
    MODELNET40_CLASSES,
    SCANOBJECTNN_CLASSES,
    SCANOBJECTNN_VARIANTS,
    SHAPENETPART_PARTS,
    PointCloudFormatError,
    PointRecords,
    detect_modelnet40_layout,
    read_modelnet40_h5,
    read_modelnet40_off,
    read_modelnet40_resampled,
    read_scanobjectnn,
    read_shapenetpart,
    read_shapenetpart_categories,
    scanobjectnn_file,
)
from verticals.domains.pointcloud.shapes import (
    DOMAINS,
    IGNORE_INDEX,
    NOVEL_FAMILIES,
    check_families,
    family_part_labels,
    generate_shapes,
    normalize_unit_sphere,
    part_names,
)

log = logging.getLogger(__name__)

__all__ = [
    "POINT_SAMPLERS",
    "ModelNet40DataModule",
    "PointCloudItems",
    "ScanObjectNNDataModule",
    "ShapeDataModule",
    "ShapeNetPartDataModule",
    "farthest_point_indices",
    "sample_points",
]

#: How a cloud is reduced to ``num_points``.
POINT_SAMPLERS: tuple[str, ...] = ("fps", "random", "first")
_FPS_CHUNK = 32


# -- point sampling --------------------------------------------------------------------------------
def farthest_point_indices(xyz: np.ndarray, count: int, start: int | np.ndarray = 0) -> np.ndarray:
    """``int64 [B, count]`` farthest-point-sampling indices of clouds ``xyz`` ``[B, N, 3]``.

    The first index is ``start`` (one for all or one per cloud); each next one is the point farthest
    (Euclidean) from those chosen, the lowest index on ties. Vectorised over the clouds (chunks of 32, which stay in cache).
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"`xyz` must be [B, N, 3], got shape {xyz.shape}.")
    batch, size = xyz.shape[:2]
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= size:
        raise ValueError(f"`count` must be an integer in 1..{size} (the points per cloud), got {count!r}.")
    starts = np.broadcast_to(np.asarray(start, dtype=np.int64), (batch,))
    if ((starts < 0) | (starts >= size)).any():
        raise ValueError(f"`start` must index a point (0..{size - 1}), got {start!r}.")
    out = np.empty((batch, count), dtype=np.int64)
    for begin in range(0, batch, _FPS_CHUNK):
        # one contiguous array per coordinate and in-place arithmetic: ~8x faster than (p - c)**2 on [b, N, 3]
        columns = np.ascontiguousarray(xyz[begin : begin + _FPS_CHUNK].transpose(2, 0, 1))
        rows = np.arange(columns.shape[1])
        distance = np.full(columns.shape[1:], np.inf, dtype=np.float32)
        squared, total = np.empty_like(distance), np.empty_like(distance)
        current = starts[begin : begin + _FPS_CHUNK].copy()
        for step in range(count):
            out[begin + rows, step] = current
            for axis, coordinate in enumerate(columns):
                np.subtract(coordinate, coordinate[rows, current][:, None], out=squared)
                np.multiply(squared, squared, out=squared)
                if axis == 0:
                    total[...] = squared
                else:
                    total += squared
            np.minimum(distance, total, out=distance)
            current = distance.argmax(axis=1)
    return out


def sample_points(
    clouds: np.ndarray | Sequence[np.ndarray],
    count: int,
    method: str = "fps",
    seed: int | np.random.SeedSequence = 0,
    sources: Sequence[str] | None = None,
    allow_duplicates: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each cloud reduced to ``count`` points: ``(xyz float32 [n, count, 3], indices int64 [n, count])``.

    ``method``: ``"fps"`` (farthest-point sampling from a seeded random start), ``"random"`` (a seeded
    subset without replacement) or ``"first"``. A cloud of exactly ``count`` points is kept whole. A cloud
    with fewer is an error naming its ``sources`` entry, unless ``allow_duplicates``: then it is kept whole
    and topped up with seeded random repeats (as Point-MAE's ShapeNetPart loader samples with replacement).
    """
    if method not in POINT_SAMPLERS:
        raise ValueError(f"`sampling` must be one of {list(POINT_SAMPLERS)}, got {method!r}.")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"`num_points` must be an integer >= 1, got {count!r}.")
    n = len(clouds)
    sources = list(sources) if sources is not None else [f"cloud {k}" for k in range(n)]
    sizes = np.array([len(cloud) for cloud in clouds], dtype=np.int64)
    short = np.flatnonzero(sizes < count)
    if len(short) and not allow_duplicates:
        k = int(short[0])
        raise PointCloudFormatError(
            f"{sources[k]}: has {sizes[k]} points but num_points={count} needs at least {count} "
            f"({len(short)} cloud(s) are short); lower `num_points`, or pass allow_duplicates=True to repeat points."
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, np.maximum(sizes, 1))
    indices = np.empty((n, count), dtype=np.int64)
    for k in np.flatnonzero(sizes <= count):
        extra = rng.integers(0, sizes[k], count - sizes[k])
        indices[k] = np.concatenate([np.arange(sizes[k]), extra])
    large = np.flatnonzero(sizes > count)
    if len(large):
        if method == "first":
            indices[large] = np.arange(count)
        elif method == "random":
            for k in large:
                indices[k] = rng.permutation(sizes[k])[:count]
        else:
            # pad to equal size with copies of point 0: the result is unchanged (ties go to the lower index)
            width = int(sizes[large].max())
            padded = np.empty((len(large), width, 3), dtype=np.float32)
            for row, k in enumerate(large):
                padded[row, : sizes[k]] = clouds[k]
                padded[row, sizes[k] :] = clouds[k][0]
            indices[large] = farthest_point_indices(padded, count, starts[large])
    xyz = (
        np.stack([np.asarray(clouds[k], dtype=np.float32)[indices[k]] for k in range(n)])
        if n
        else np.zeros((0, count, 3), np.float32)
    )
    return xyz, indices


def _gather(values: np.ndarray | Sequence[np.ndarray], indices: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(values[k])[indices[k]] for k in range(len(indices))])


class PointCloudItems(Dataset):
    """Items ``{"x": float [P, 3], "y": long [] or [P], "group": long [A], "category": long []}`` over arrays
    (``group`` / ``category`` only when given)."""

    def __init__(
        self,
        xyz: np.ndarray,
        targets: np.ndarray,
        groups: np.ndarray | None = None,
        categories: np.ndarray | None = None,
    ) -> None:
        if len(xyz) != len(targets) or (groups is not None and len(groups) != len(xyz)):
            raise ValueError(
                f"{len(xyz)} clouds but {len(targets)} targets / {None if groups is None else len(groups)} groups."
            )
        self.xyz = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
        self.groups = (
            None if groups is None else torch.from_numpy(np.ascontiguousarray(groups, dtype=np.int64))
        )
        self.categories = (
            None if categories is None else torch.from_numpy(np.ascontiguousarray(categories, dtype=np.int64))
        )

    def __len__(self) -> int:
        return len(self.xyz)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"x": self.xyz[index], "y": self.targets[index]}
        if self.groups is not None:
            item["group"] = self.groups[index]
        if self.categories is not None:
            item["category"] = self.categories[index]
        return item


def _check_task(task: str) -> str:
    if task not in ("classification", "segmentation"):
        raise ValueError(f"`task` must be 'classification' or 'segmentation', got {task!r}.")
    return task


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return value


def _stream(seed: int, split: str, extra: str = "") -> np.random.SeedSequence:
    """Disjoint seed streams per (seed, split, extra)."""
    return np.random.SeedSequence([seed, 1 + SPLITS.index(split), 1 + zlib.crc32(extra.encode())])


# -- generated shapes ------------------------------------------------------------------------------
class ShapeDataModule(BaseDataModule):
    """Generated shapes of ``families`` in a clean and a scanned domain; groups ``domain`` and ``novelty``.

    The training pool (``num_train + num_val`` shapes in ``train_domain``) is split into training and
    validation (seeded, stratified by family); the test split holds the same ``num_test`` shapes once in
    each of ``test_domains`` (paired: a difference between domains is not a difference between shapes).
    Train and test shapes come from disjoint seed streams of ``seed``.

    Args:
        task: ``"classification"`` (``y`` = family) or ``"segmentation"`` (``y`` = part label per point,
            ``IGNORE_INDEX`` on scan background; the batch also carries ``category``).
        families: the families (classes) to draw, default all of ``shapes.SHAPE_FAMILIES``.
        novel_families: those of ``families`` to report as ``novel`` in group ``novelty`` (kept out of the
            stand-in's pretraining); default ``shapes.NOVEL_FAMILIES``.
        train_domain: ``"clean"``, ``"scan"`` or ``"mixed"`` (training shape ``i`` clean when ``i`` is even).
        test_domains: the test split's domains, in order.
        num_train: shapes in the training split (at least one per family).
        num_val: shapes in the validation split (at least one per family).
        num_test: test shapes *per* test domain.
        num_points: points per cloud.
        batch_size: clouds per batch (>= 1).
        seed: seed (>= 0) of the generated shapes (disjoint streams per split), of the validation split and
            of the training order; change it to draw other shapes.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(
        self,
        task: str = "classification",
        families: Sequence[str] | None = None,
        novel_families: Sequence[str] | None = NOVEL_FAMILIES,
        train_domain: str = "scan",
        test_domains: Sequence[str] = DOMAINS,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int = 128,
        num_points: int = 512,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.task = _check_task(task)
        self.families = list(check_families(families))
        novel = check_families(novel_families) if novel_families else ()
        self.novel_families = [name for name in self.families if name in novel]
        if train_domain not in (*DOMAINS, "mixed"):
            raise ValueError(f"`train_domain` must be one of {[*DOMAINS, 'mixed']}, got {train_domain!r}.")
        if isinstance(test_domains, str):
            raise ValueError(
                f"`test_domains` must be a list, got the string {test_domains!r}; write [{test_domains!r}]."
            )
        self.test_domains = list(test_domains)
        wrong = [d for d in self.test_domains if d not in DOMAINS]
        if wrong or not self.test_domains or len(set(self.test_domains)) != len(self.test_domains):
            raise ValueError(
                f"`test_domains` must list distinct domains of {list(DOMAINS)}, got {self.test_domains}."
            )
        self.train_domain = train_domain
        self.num_train, self.num_val = _check_count(num_train, "num_train"), _check_count(num_val, "num_val")
        self.num_test, self.num_points = (
            _check_count(num_test, "num_test"),
            _check_count(num_points, "num_points"),
        )
        _check_count(seed, "seed", 0)
        if self.num_val < len(self.families) or self.num_train < len(self.families):
            raise ValueError(
                f"`num_train` ({num_train}) and `num_val` ({num_val}) must each be >= the {len(self.families)} "
                "families, so that every family is in both splits."
            )
        self.save_hyperparameters()
        train_domains = list(DOMAINS) if train_domain == "mixed" else [train_domain]
        self.group_attributes = ["domain", "novelty"]
        self.group_names = {
            "domain": list(dict.fromkeys([*self.test_domains, *train_domains])),
            "novelty": ["seen", "novel"],
        }
        described = {"clean": "clean", "scan": "scanned"}
        domains = " and ".join(described.get(domain, domain) for domain in self.group_names["domain"])
        kind = "point-cloud shapes" if self.task == "classification" else "point-cloud shape parts"
        self.dataset_name = f"generated {kind} ({domains})"
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._datasets: dict[str, PointCloudItems] = {}

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Families (classification) or ``family.part`` names (segmentation), in label order."""
        return list(self.families) if self.task == "classification" else part_names(self.families)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.num_points, 3)

    @property
    def ignore_index(self) -> int | None:
        """The label of unlabelled (background) points in segmentation; ``None`` for classification."""
        return IGNORE_INDEX if self.task == "segmentation" else None

    @property
    def category_names(self) -> list[str]:
        """The object categories (the families), for a part head's one-hot."""
        return list(self.families)

    @property
    def num_categories(self) -> int:
        return len(self.families)

    @property
    def category_parts(self) -> dict[int, list[int]]:
        """Category index → the part labels its points take (per-category part metrics)."""
        labels = family_part_labels(self.families)
        return {k: labels[name] for k, name in enumerate(self.families)}

    # -- the shapes -----------------------------------------------------------------------------
    def split_arrays(self, split: str) -> dict[str, np.ndarray]:
        """``{"xyz" [n, P, 3], "labels" [n], "parts" [n, P], "domain" [n] str}`` of ``split``, generated once."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if not self._arrays:
            self._generate()
        return self._arrays[split]

    def _draw(self, count: int, split: str, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seed = int(_stream(self.seed, split).generate_state(1)[0])
        return generate_shapes(count, seed, domain, self.num_points, self.families)

    def _generate(self) -> None:
        total = self.num_train + self.num_val
        if self.train_domain == "mixed":
            clean, scanned = self._draw(total, "train", "clean"), self._draw(total, "train", "scan")
            domain = np.array(["clean" if i % 2 == 0 else "scan" for i in range(total)])
            pick = (domain == "scan")[:, None]
            xyz = np.where(pick[..., None], scanned[0], clean[0])
            labels, parts = clean[1], np.where(pick, scanned[2], clean[2])
        else:
            xyz, labels, parts = self._draw(total, "train", self.train_domain)
            domain = np.full(total, self.train_domain)
        # a fraction whose ceil is exactly num_val (the core's split holds out ceil(fraction × n))
        keep, held = stratified_split(labels, (self.num_val - 0.5) / total, self.seed)
        pool = {"xyz": xyz, "labels": labels, "parts": parts, "domain": domain}
        self._arrays["train"] = {key: value[keep] for key, value in pool.items()}
        self._arrays["val"] = {key: value[held] for key, value in pool.items()}
        blocks = [self._draw(self.num_test, "test", d) for d in self.test_domains]
        self._arrays["test"] = {
            "xyz": np.concatenate([b[0] for b in blocks]),
            "labels": np.concatenate([b[1] for b in blocks]),
            "parts": np.concatenate([b[2] for b in blocks]),
            "domain": np.repeat(np.array(self.test_domains), self.num_test),
        }

    def split_dataset(self, split: str) -> PointCloudItems:
        if split not in self._datasets:
            arrays = self.split_arrays(split)
            novelty = [
                "novel" if self.families[k] in self.novel_families else "seen" for k in arrays["labels"]
            ]
            groups = encode_group_matrix(
                {"domain": list(arrays["domain"]), "novelty": novelty}, self.group_names
            )
            if self.task == "classification":
                self._datasets[split] = PointCloudItems(arrays["xyz"], arrays["labels"], groups)
            else:
                self._datasets[split] = PointCloudItems(
                    arrays["xyz"], arrays["parts"], groups, arrays["labels"]
                )
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.split_dataset(split)


# -- the real datasets -----------------------------------------------------------------------------
class _FileDataModule(BaseDataModule):
    """Shared plumbing of the file-backed datamodules: read train and test once, reduce every cloud to
    ``num_points``, normalise, hold out a seeded stratified validation part of the training split."""

    task: str = "classification"

    def __init__(
        self,
        root: str | Path,
        num_points: int,
        sampling: str,
        val_fraction: float,
        normalize: bool,
        allow_duplicates: bool,
        batch_size: int,
        seed: int,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.root = Path(root)
        self.num_points = _check_count(num_points, "num_points")
        if sampling not in POINT_SAMPLERS:
            raise ValueError(f"`sampling` must be one of {list(POINT_SAMPLERS)}, got {sampling!r}.")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(
                f"`val_fraction` must be in (0, 1): validation is a part of the training split (never the test "
                f"split), got {val_fraction!r}."
            )
        _check_count(seed, "seed", 0)
        self.sampling, self.val_fraction = sampling, float(val_fraction)
        self.normalize, self.allow_duplicates = bool(normalize), bool(allow_duplicates)
        self._arrays: dict[str, dict[str, Any]] = {}
        self._datasets: dict[str, PointCloudItems] = {}

    # -- to implement ---------------------------------------------------------------------------
    def _read(self, split: str) -> PointRecords:
        raise NotImplementedError(f"{type(self).__name__} must implement `_read`.")

    def _validation_records(self, train: PointRecords) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows) of the training records: seeded, stratified by label."""
        return stratified_split(train.labels, self.val_fraction, self.seed)

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.num_points, 3)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement `class_names`.")

    # -- loading --------------------------------------------------------------------------------
    def _prepare(self, records: PointRecords, split: str, rows: np.ndarray | None = None) -> dict[str, Any]:
        select = np.arange(len(records)) if rows is None else rows
        clouds = [records.clouds[k] for k in select]
        sources = [records.sources[k] for k in select]
        xyz, index = sample_points(
            clouds,
            self.num_points,
            self.sampling,
            _stream(self.seed, split, "points"),
            sources,
            self.allow_duplicates,
        )
        if self.normalize:
            xyz = normalize_unit_sphere(xyz.astype(np.float64)).astype(np.float32)
        arrays: dict[str, Any] = {"xyz": xyz, "labels": records.labels[select], "sources": sources}
        if records.parts is not None:
            arrays["parts"] = _gather([records.parts[k] for k in select], index)
        if records.masks is not None:
            arrays["mask"] = _gather(records.masks[select], index)
        return arrays

    def _load(self) -> None:
        train, test = self._read("train"), self._read("test")
        keep, held = self._validation_records(train)
        if isinstance(keep, PointRecords):  # an official validation list (ShapeNetPart)
            self._arrays["train"], self._arrays["val"] = (
                self._prepare(keep, "train"),
                self._prepare(held, "val"),
            )
        else:
            self._arrays["train"] = self._prepare(train, "train", keep)
            self._arrays["val"] = self._prepare(train, "val", held)
        self._arrays["test"] = self._prepare(test, "test")

    def split_arrays(self, split: str) -> dict[str, Any]:
        """``{"xyz" [n, P, 3], "labels" [n], "sources" [n] (file, sample)}`` (+ ``"parts"`` / ``"mask"``
        [n, P] where the files have them) of ``split``, read once."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if not self._arrays:
            self._load()
        return self._arrays[split]

    def split_dataset(self, split: str) -> PointCloudItems:
        if split not in self._datasets:
            arrays = self.split_arrays(split)
            self._datasets[split] = PointCloudItems(arrays["xyz"], arrays["labels"])
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.split_dataset(split)


class ModelNet40DataModule(_FileDataModule):
    """ModelNet40 shape classification from its HDF5 release, its ``.off`` meshes or the resampled text files.

    Args:
        root: the ``modelnet40_ply_hdf5_2048`` folder, the ``ModelNet40`` mesh folder, the
            ``modelnet40_normal_resampled`` folder, or a folder holding one of them.
        layout: ``"auto"`` (detect), ``"hdf5"``, ``"off"`` or ``"resampled"``.
        num_points: points per cloud (Point-MAE: 1024).
        sampling: ``"fps"``, ``"random"`` or ``"first"`` (see :func:`sample_points`).
        mesh_points: area-uniform surface samples drawn from each mesh (``.off`` layout) before ``sampling``.
        val_fraction: share of the training split held out for validation (seeded, stratified).
        normalize: centre and scale every cloud into the unit sphere.
        allow_duplicates: top up clouds with fewer than ``num_points`` points by repeats instead of an error.
        batch_size: clouds per batch (>= 1).
        seed: seed of the validation split, of the sampling (and mesh samples) and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(
        self,
        root: str | Path,
        layout: str = "auto",
        num_points: int = 1024,
        sampling: str = "fps",
        mesh_points: int = 2048,
        val_fraction: float = 0.1,
        normalize: bool = True,
        allow_duplicates: bool = False,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            root,
            num_points,
            sampling,
            val_fraction,
            normalize,
            allow_duplicates,
            batch_size,
            seed,
            num_workers,
        )
        if layout not in ("auto", "hdf5", "off", "resampled"):
            raise ValueError(f"`layout` must be 'auto', 'hdf5', 'off' or 'resampled', got {layout!r}.")
        self.layout, self.mesh_points = layout, _check_count(mesh_points, "mesh_points")
        self.save_hyperparameters()
        self.dataset_name = "ModelNet40" if layout == "auto" else f"ModelNet40 ({layout})"
        self._folder: tuple[str, Path] | None = None

    def _located(self) -> tuple[str, Path]:
        if self._folder is None:
            found, folder = detect_modelnet40_layout(self.root)
            if self.layout != "auto" and found != self.layout:
                raise PointCloudFormatError(
                    f"{self.root} holds the ModelNet40 {found!r} layout, not {self.layout!r}."
                )
            self._folder = (found, folder)
        return self._folder

    @property
    def class_names(self) -> list[str]:
        layout, folder = self._located()
        if layout == "hdf5":
            names = folder / "shape_names.txt"
            return names.read_text().split() if names.exists() else list(MODELNET40_CLASSES)
        if layout == "resampled":
            return (folder / "modelnet40_shape_names.txt").read_text().split()
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())
        )

    def _read(self, split: str) -> PointRecords:
        layout, folder = self._located()
        if layout == "hdf5":
            return read_modelnet40_h5(folder, split)
        if layout == "resampled":
            return read_modelnet40_resampled(folder, split)
        return read_modelnet40_off(folder, split, self.mesh_points, self.seed)


class ScanObjectNNDataModule(_FileDataModule):
    """ScanObjectNN object classification (15 classes) from its HDF5 files.

    The split's ``mask`` (-1 on background points) is kept in ``split_arrays(split)["mask"]``.

    Args:
        root: the extracted ``h5_files`` folder (holding ``main_split/``), or the split folder itself.
        variant: one of ``formats.SCANOBJECTNN_VARIANTS`` (``PB_T50_RS``, the hardest, by default).
        split_dir: the folder under ``root`` (default the variant's: ``main_split`` or ``main_split_nobg``;
            ``split1`` … ``split4`` for the supplementary splits).
        num_points: points per cloud (the files hold 2048; Point-MAE uses all 2048).
        sampling: how each cloud is reduced to ``num_points``: ``fps`` (farthest-point sampling, which
            covers the shape evenly), ``random`` (a seeded subset) or ``first`` (the points as stored).
        val_fraction: share of the training split held out for validation (seeded, stratified), in [0, 1).
        normalize: centre and scale every cloud into the unit sphere (the pretrained encoders expect it).
        allow_duplicates: top up clouds with fewer than ``num_points`` points by repeats instead of an error.
        batch_size: clouds per batch (>= 1).
        seed: seed of the validation split, of the sampling and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(
        self,
        root: str | Path,
        variant: str = "PB_T50_RS",
        split_dir: str | None = None,
        num_points: int = 2048,
        sampling: str = "fps",
        val_fraction: float = 0.1,
        normalize: bool = True,
        allow_duplicates: bool = False,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            root,
            num_points,
            sampling,
            val_fraction,
            normalize,
            allow_duplicates,
            batch_size,
            seed,
            num_workers,
        )
        if variant not in SCANOBJECTNN_VARIANTS:
            raise ValueError(
                f"Unknown ScanObjectNN variant {variant!r}; the variants are {list(SCANOBJECTNN_VARIANTS)}."
            )
        self.variant, self.split_dir = variant, split_dir
        self.save_hyperparameters()
        self.dataset_name = f"ScanObjectNN {variant}" + (f" ({split_dir})" if split_dir else "")

    @property
    def class_names(self) -> list[str]:
        return list(SCANOBJECTNN_CLASSES)

    def _read(self, split: str) -> PointRecords:
        return read_scanobjectnn(scanobjectnn_file(self.root, self.variant, split, self.split_dir))


class ShapeNetPartDataModule(_FileDataModule):
    """ShapeNetPart part segmentation (16 categories, 50 parts) from its text files and split lists.

    ``y`` is a part label per point among the parts of the categories in use (all 50 for the whole set,
    numbered as the dataset numbers them); the batch also carries ``category`` (index into
    ``category_names``); the group attribute is ``category``. Validation is a seeded part of the official
    training list plus the official validation list (pooled, as Point-MAE trains on both), or, with
    ``official_val``, the official validation list; never the test list.

    Args:
        root: the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` folder (or its parent).
        categories: category names to keep (default every category of ``synsetoffset2category.txt``).
        official_val: validate on the official validation list instead of a part of train + val.
        num_points: points per cloud (Point-MAE: 2048).
        sampling: how each cloud is reduced to ``num_points``: ``fps`` (farthest-point sampling, which
            covers the shape evenly), ``random`` (a seeded subset) or ``first`` (the points as stored).
        val_fraction: share of the pooled official training and validation lists held out for validation
            (seeded, stratified), in [0, 1); unused with ``official_val``.
        normalize: centre and scale every cloud into the unit sphere (the pretrained encoders expect it).
        allow_duplicates: top up clouds with fewer than ``num_points`` points by repeats instead of an error.
        batch_size: clouds per batch (>= 1).
        seed: seed of the validation split, of the sampling and of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    task = "segmentation"

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        official_val: bool = False,
        num_points: int = 2048,
        sampling: str = "fps",
        val_fraction: float = 0.1,
        normalize: bool = True,
        allow_duplicates: bool = False,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            root,
            num_points,
            sampling,
            val_fraction,
            normalize,
            allow_duplicates,
            batch_size,
            seed,
            num_workers,
        )
        if isinstance(categories, str):
            raise ValueError(
                f"`categories` must be a list, got the string {categories!r}; write [{categories!r}]."
            )
        self.categories = None if categories is None else list(categories)
        self.official_val = bool(official_val)
        self.save_hyperparameters()
        chosen = self.categories or []
        subset = ", ".join(chosen) if len(chosen) <= 3 else f"{len(chosen)} categories"
        self.dataset_name = f"ShapeNetPart ({subset})" if chosen else "ShapeNetPart"
        self.group_attributes = ["category"]
        self._names: list[str] | None = None

    @property
    def _folder(self) -> Path:
        nested = self.root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
        return (
            nested
            if not (self.root / "synsetoffset2category.txt").exists() and nested.is_dir()
            else self.root
        )

    @property
    def category_names(self) -> list[str]:
        """The categories in use, in the order of ``synsetoffset2category.txt``."""
        if self._names is None:
            listed = [name for name, _ in read_shapenetpart_categories(self._folder)]
            if self.categories is not None:
                unknown = [c for c in self.categories if c not in listed]
                if unknown:
                    raise ValueError(
                        f"Category {unknown[0]!r} is not in {self._folder / 'synsetoffset2category.txt'} ({listed})."
                    )
            self._names = [name for name in listed if self.categories is None or name in self.categories]
        return self._names

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    @property
    def _global_parts(self) -> list[int]:
        return [part for name in self.category_names for part in SHAPENETPART_PARTS[name][1]]

    @property
    def class_names(self) -> list[str]:
        """``<Category>_<k>`` for the k-th part of each category in use (the dataset names no parts)."""
        return [
            f"{name}_{k}" for name in self.category_names for k in range(len(SHAPENETPART_PARTS[name][1]))
        ]

    @property
    def category_parts(self) -> dict[int, list[int]]:
        """Category index → its part labels (``y`` values), for per-category (instance) mIoU."""
        out, offset = {}, 0
        for k, name in enumerate(self.category_names):
            size = len(SHAPENETPART_PARTS[name][1])
            out[k] = list(range(offset, offset + size))
            offset += size
        return out

    @property
    def ignore_index(self) -> int | None:
        """ShapeNetPart labels every point; nothing to ignore."""
        return None

    @property
    def group_names(self) -> dict[str, list[str]]:
        return {"category": self.category_names}

    @group_names.setter
    def group_names(self, names: Any) -> None:  # fixed by the files; the base's setter is a no-op here
        pass

    def _read(self, split: str) -> PointRecords:
        records = read_shapenetpart(self._folder, split, self.category_names)
        # categories and parts in use → compact codes
        listed = records.class_names
        category = {listed.index(name): k for k, name in enumerate(self.category_names)}
        lookup = np.full(max(self._global_parts) + 1, -1, dtype=np.int64)
        lookup[self._global_parts] = np.arange(len(self._global_parts))
        records.labels = np.array([category[int(v)] for v in records.labels], dtype=np.int64)
        records.parts = [lookup[p] for p in records.parts]
        records.class_names = list(self.category_names)
        return records

    def _validation_records(self, train: PointRecords) -> tuple[Any, Any]:
        val = self._read("val")
        if self.official_val:
            return train, val
        pooled = PointRecords(
            [*train.clouds, *val.clouds],
            np.concatenate([train.labels, val.labels]),
            train.class_names,
            [*train.sources, *val.sources],
            parts=[*train.parts, *val.parts],
        )
        keep, held = stratified_split(pooled.labels, self.val_fraction, self.seed)
        return _subset(pooled, keep), _subset(pooled, held)

    def split_dataset(self, split: str) -> PointCloudItems:
        if split not in self._datasets:
            arrays = self.split_arrays(split)
            groups = arrays["labels"][:, None]
            self._datasets[split] = PointCloudItems(arrays["xyz"], arrays["parts"], groups, arrays["labels"])
        return self._datasets[split]


def _subset(records: PointRecords, rows: np.ndarray) -> PointRecords:
    return PointRecords(
        [records.clouds[k] for k in rows],
        records.labels[rows],
        records.class_names,
        [records.sources[k] for k in rows],
        parts=None if records.parts is None else [records.parts[k] for k in rows],
    )
