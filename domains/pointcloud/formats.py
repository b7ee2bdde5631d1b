"""Readers (and tiny writers, for tests) of the point-cloud datasets in the layouts they are distributed in.

- **ModelNet40, HDF5** (``modelnet40_ply_hdf5_2048/``, PointNet's release): ``ply_data_train{0..4}.h5`` and
  ``ply_data_test{0,1}.h5``, each with ``data`` float32 ``[N, 2048, 3]`` and ``label`` uint8 ``[N, 1]``
  (also ``normal`` and ``faceId``, not read); ``shape_names.txt`` (40 names, line k = label k);
  ``train_files.txt`` / ``test_files.txt`` (one path per line, read by its file name).
- **ModelNet40, meshes** (``ModelNet40/<class>/{train,test}/<class>_NNNN.off``): Object File Format, some
  files with the header glued to the counts (``OFF490 518 0``); faces are polygons (fan-triangulated).
- **ModelNet40, resampled** (``modelnet40_normal_resampled/``, PointNet++'s, read by Point-MAE):
  ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt`` (ids like ``airplane_0001``) and
  ``<class>/<id>.txt`` rows ``x,y,z,nx,ny,nz``.
- **ScanObjectNN** (``h5_files/main_split/`` etc.): ``{training,test}_objectdataset<suffix>.h5`` with
  ``data`` float32 ``[N, 2048, 3]``, ``label`` ``[N]`` and ``mask`` ``[N, 2048]`` (-1 on background
  points); the suffix picks the variant (``SCANOBJECTNN_VARIANTS``); labels index ``SCANOBJECTNN_CLASSES``
  (the dataset's ``shape_names_ext.txt``, confirmed in its FAQ).
- **ShapeNetPart** (``shapenetcore_partanno_segmentation_benchmark_v0_normal/``): ``synsetoffset2category.txt``
  (``Airplane<TAB>02691156`` per line; line order = category index), ``<synset>/<id>.txt`` rows
  ``x y z nx ny nz part`` (part labels 0–49 over all categories, ``SHAPENETPART_PARTS``) and
  ``train_test_split/shuffled_{train,val,test}_file_list.json`` (entries ``shape_data/<synset>/<id>``).

Readers check what they read and raise :class:`PointCloudFormatError` naming the file and the sample (and
point) for an empty file, a missing key, a non-finite coordinate or a label outside the class list. They
never modify the files. The writers write a few generated shapes in each layout (the tests' data); they
are not the datasets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MODELNET40_CLASSES",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "SHAPENETPART_PARTS",
    "PointCloudFormatError",
    "PointRecords",
    "detect_modelnet40_layout",
    "read_modelnet40_h5",
    "read_modelnet40_off",
    "read_modelnet40_resampled",
    "read_off",
    "read_scanobjectnn",
    "read_shapenetpart",
    "read_shapenetpart_categories",
    "sample_mesh",
    "scanobjectnn_file",
    "write_tiny_modelnet40_h5",
    "write_tiny_modelnet40_off",
    "write_tiny_modelnet40_resampled",
    "write_tiny_scanobjectnn",
    "write_tiny_shapenetpart",
]

#: ModelNet40's classes in label order (the release's ``shape_names.txt``; alphabetical).
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)  # fmt: skip
#: ScanObjectNN's 15 classes in label order (``training_data/shape_names_ext.txt`` of the dataset's repo).
SCANOBJECTNN_CLASSES: tuple[str, ...] = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow",
    "sink", "sofa", "toilet",
)  # fmt: skip
#: ScanObjectNN variant → (folder, file suffix): ``{training,test}_objectdataset<suffix>.h5`` in the folder.
SCANOBJECTNN_VARIANTS: dict[str, tuple[str, str]] = {
    "OBJ_BG": ("main_split", ""),
    "OBJ_ONLY": ("main_split_nobg", ""),
    "PB_T25": ("main_split", "_augmented25_norot"),
    "PB_T25_R": ("main_split", "_augmented25rot"),
    "PB_T50_R": ("main_split", "_augmentedrot"),
    "PB_T50_RS": ("main_split", "_augmentedrot_scale75"),
}
#: ShapeNetPart: category → (synset id, its part labels among the 50).
SHAPENETPART_PARTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "Airplane": ("02691156", (0, 1, 2, 3)),
    "Bag": ("02773838", (4, 5)),
    "Cap": ("02954340", (6, 7)),
    "Car": ("02958343", (8, 9, 10, 11)),
    "Chair": ("03001627", (12, 13, 14, 15)),
    "Earphone": ("03261776", (16, 17, 18)),
    "Guitar": ("03467517", (19, 20, 21)),
    "Knife": ("03624134", (22, 23)),
    "Lamp": ("03636649", (24, 25, 26, 27)),
    "Laptop": ("03642806", (28, 29)),
    "Motorbike": ("03790512", (30, 31, 32, 33, 34, 35)),
    "Mug": ("03797390", (36, 37)),
    "Pistol": ("03948459", (38, 39, 40)),
    "Rocket": ("04099429", (41, 42, 43)),
    "Skateboard": ("04225987", (44, 45, 46)),
    "Table": ("04379243", (47, 48, 49)),
}
SHAPENETPART_FOLDER = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
MODELNET40_H5_FOLDER = "modelnet40_ply_hdf5_2048"
MODELNET40_RESAMPLED_FOLDER = "modelnet40_normal_resampled"


class PointCloudFormatError(ValueError):
    """A dataset file that cannot be read as its layout says; the message names the file and sample."""


@dataclass
class PointRecords:
    """What a reader returns for one split: clouds, labels and where each sample came from.

    Attributes:
        clouds: ``float32 [n, N, 3]`` when every cloud has ``N`` points, else a list of ``[N_i, 3]``.
        labels: ``int64 [n]``: class (or, for ShapeNetPart, category) of each sample.
        class_names: name of each label value.
        sources: ``"<file>, sample <k>"`` (or just the file) per sample, for error messages.
        parts: per-point part labels (ShapeNetPart), same layout as ``clouds``; else ``None``.
        masks: ScanObjectNN's ``mask`` ``[n, N]`` (-1 background), when the file has one.
    """

    clouds: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    parts: np.ndarray | list[np.ndarray] | None = None
    masks: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


# -- shared checks ---------------------------------------------------------------------------------
def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py ships with the pointcloud extra
        raise ImportError(
            "Reading ModelNet40 / ScanObjectNN HDF5 files needs h5py: pip install 'verticals[pointcloud]' (or h5py)."
        ) from error
    return h5py


def _check_finite(xyz: np.ndarray, source: str) -> None:
    """Raise naming ``source`` and the first sample/point with a non-finite coordinate."""
    bad = ~np.isfinite(xyz).all(-1)
    if bad.any():
        where = np.argwhere(bad)[0]
        if xyz.ndim == 3:
            raise PointCloudFormatError(
                f"{source}: sample {where[0]} has a non-finite coordinate (NaN or inf) at point {where[1]}; "
                "repair or drop that sample."
            )
        raise PointCloudFormatError(
            f"{source}: point {where[0]} has a non-finite coordinate (NaN or inf); repair or drop it."
        )


def _integer_labels(values: np.ndarray, source: str, what: str = "label") -> np.ndarray:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        whole = finite & (values == np.round(np.where(finite, values, 0)))
        if not whole.all():
            index = int(np.flatnonzero(~whole.ravel())[0])
            raise PointCloudFormatError(
                f"{source}: {what} {float(values.ravel()[index])!r} at position {index} is not a whole number; "
                f"{what}s are integer class indices."
            )
        return values.astype(np.int64)
    raise PointCloudFormatError(
        f"{source}: {what}s have dtype {values.dtype}; expected integer class indices."
    )


def _check_labels(labels: np.ndarray, num_classes: int, source: str, names: Sequence[str]) -> None:
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise PointCloudFormatError(
            f"{source}: sample {index} has label {int(labels[index])}, outside the {num_classes} classes "
            f"(0..{num_classes - 1}: {', '.join(names[:5])}, …); fix the label or the class list."
        )


def _nonempty(path: Path) -> Path:
    if not path.is_file():
        raise PointCloudFormatError(f"{path} does not exist; check the dataset root and its layout.")
    if path.stat().st_size == 0:
        raise PointCloudFormatError(f"{path} is empty (0 bytes); download or extract it again.")
    return path


def _read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in _nonempty(path).read_text().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise PointCloudFormatError(f"{path} has no entries; download or extract it again.")
    return lines


def _read_h5(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    h5py = _h5py()
    _nonempty(path)
    try:
        with h5py.File(path, "r") as handle:
            found = sorted(handle.keys())
            missing = [key for key in keys if key not in handle]
            if missing:
                raise PointCloudFormatError(
                    f"{path} has no dataset {missing[0]!r} (it has {found}); expected {list(keys)} as in the "
                    "distributed files."
                )
            return {key: np.asarray(handle[key]) for key in (*keys, *optional) if key in handle}
    except OSError as error:
        raise PointCloudFormatError(
            f"{path} cannot be read as HDF5 ({error}); download or extract it again."
        ) from error


def _h5_clouds(path: Path, class_names: Sequence[str], with_mask: bool = False) -> PointRecords:
    """``data`` / ``label`` (and ``mask``) of one HDF5 file, checked."""
    arrays = _read_h5(path, ("data", "label"), ("mask",) if with_mask else ())
    data = arrays["data"]
    if data.ndim != 3 or data.shape[-1] < 3:
        raise PointCloudFormatError(f"{path}: `data` must be [samples, points, 3], got shape {data.shape}.")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise PointCloudFormatError(f"{path} holds no samples (`data` has shape {data.shape}); it is empty.")
    xyz = np.ascontiguousarray(data[..., :3], dtype=np.float32)
    labels = _integer_labels(arrays["label"], str(path))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (len(xyz),):
        raise PointCloudFormatError(
            f"{path}: `label` has shape {arrays['label'].shape} for {len(xyz)} samples; expected [N] or [N, 1]."
        )
    _check_finite(xyz, str(path))
    _check_labels(labels, len(class_names), str(path), list(class_names))
    masks = arrays.get("mask")
    if masks is not None:
        masks = _integer_labels(masks, str(path), "mask value")
        if masks.shape != xyz.shape[:2]:
            raise PointCloudFormatError(f"{path}: `mask` has shape {masks.shape}, expected {xyz.shape[:2]}.")
    sources = [f"{path}, sample {k}" for k in range(len(xyz))]
    return PointRecords(xyz, labels, list(class_names), sources, masks=masks)


def _concat(records: list[PointRecords]) -> PointRecords:
    first = records[0]
    sizes = {r.clouds.shape[1] if isinstance(r.clouds, np.ndarray) else -1 for r in records}
    if len(sizes) == 1 and -1 not in sizes:
        clouds: np.ndarray | list[np.ndarray] = np.concatenate([r.clouds for r in records])
    else:
        clouds = [cloud for r in records for cloud in r.clouds]
    masks = None
    if all(r.masks is not None for r in records) and isinstance(clouds, np.ndarray):
        masks = np.concatenate([r.masks for r in records])
    return PointRecords(
        clouds,
        np.concatenate([r.labels for r in records]),
        first.class_names,
        [s for r in records for s in r.sources],
        masks=masks,
    )


# -- ModelNet40 ------------------------------------------------------------------------------------
def detect_modelnet40_layout(root: str | Path) -> tuple[str, Path]:
    """``("hdf5" | "off" | "resampled", folder)`` of the ModelNet40 copy at ``root`` (the release folder or
    its parent)."""
    root = Path(root)
    for candidate in (root, root / MODELNET40_H5_FOLDER):
        if candidate.is_dir() and (
            any(candidate.glob("ply_data_*.h5")) or (candidate / "train_files.txt").is_file()
        ):
            return "hdf5", candidate
    for candidate in (root, root / MODELNET40_RESAMPLED_FOLDER):
        if (candidate / "modelnet40_shape_names.txt").is_file():
            return "resampled", candidate
    for candidate in (root, root / "ModelNet40"):
        if candidate.is_dir() and (
            any(candidate.glob("*/train/*.off")) or any(candidate.glob("*/test/*.off"))
        ):
            return "off", candidate
    raise PointCloudFormatError(
        f"No ModelNet40 copy found at {root}: expected {MODELNET40_H5_FOLDER}/ (ply_data_*.h5, shape_names.txt), "
        f"{MODELNET40_RESAMPLED_FOLDER}/ (modelnet40_shape_names.txt) or ModelNet40/<class>/{{train,test}}/*.off."
    )


def read_modelnet40_h5(folder: str | Path, split: str) -> PointRecords:
    """The ``split`` (``"train"`` / ``"test"``) clouds of the HDF5 release in ``folder``."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    names_file = folder / "shape_names.txt"
    class_names = _read_lines(names_file) if names_file.exists() else list(MODELNET40_CLASSES)
    listing = folder / f"{split}_files.txt"
    if listing.exists():
        files = [folder / Path(line).name for line in _read_lines(listing)]
    else:
        files = sorted(
            folder.glob(f"ply_data_{split}*.h5"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)
        )
    if not files:
        raise PointCloudFormatError(f"{folder} has no ply_data_{split}*.h5 files and no {split}_files.txt.")
    return _concat([_h5_clouds(path, class_names) for path in files])


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``float64 [V, 3]`` and triangles ``int64 [T, 3]`` (polygons fan-triangulated) of an OFF file."""
    path = _nonempty(Path(path))
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines or not lines[0].upper().startswith("OFF"):
        raise PointCloudFormatError(
            f"{path} does not start with 'OFF'; it is not an Object File Format mesh."
        )
    header = lines[0][3:].split()  # ModelNet has files whose counts follow 'OFF' on the same line
    body = lines[1:]
    if not header:
        if not body:
            raise PointCloudFormatError(f"{path} has a header but no counts line; the file is empty.")
        header, body = body[0].split(), body[1:]
    try:
        vertex_count, face_count = int(header[0]), int(header[1])
    except (IndexError, ValueError) as error:
        raise PointCloudFormatError(
            f"{path}: bad counts line {' '.join(header)!r}; expected 'V F E'."
        ) from error
    if vertex_count == 0 or face_count == 0:
        raise PointCloudFormatError(
            f"{path} has {vertex_count} vertices and {face_count} faces; the mesh is empty."
        )
    if len(body) < vertex_count + face_count:
        raise PointCloudFormatError(
            f"{path} declares {vertex_count} vertices and {face_count} faces but has {len(body)} data lines; "
            "the file is truncated."
        )
    try:
        vertices = np.array(" ".join(body[:vertex_count]).split(), dtype=np.float64).reshape(
            vertex_count, -1
        )[:, :3]
    except ValueError as error:
        raise PointCloudFormatError(
            f"{path}: the vertex lines are not {vertex_count} rows of numbers."
        ) from error
    bad = ~np.isfinite(vertices).all(-1)
    if bad.any():
        raise PointCloudFormatError(
            f"{path}: vertex {int(np.flatnonzero(bad)[0])} has a non-finite coordinate (NaN or inf); repair the mesh."
        )
    face_lines = body[vertex_count : vertex_count + face_count]
    tokens = " ".join(face_lines).split()
    triangles: np.ndarray
    if len(tokens) == 4 * face_count and all(line.startswith("3 ") for line in face_lines):
        triangles = np.array(tokens, dtype=np.int64).reshape(face_count, 4)[:, 1:]
    else:
        fans = []
        for index, line in enumerate(face_lines):
            values = line.split()
            size = int(values[0])
            if size < 3 or len(values) < size + 1:
                raise PointCloudFormatError(f"{path}: face {index} ({line!r}) is not a polygon 'n i1 … in'.")
            ring = [int(v) for v in values[1 : size + 1]]
            fans += [(ring[0], ring[k], ring[k + 1]) for k in range(1, size - 1)]
        triangles = np.array(fans, dtype=np.int64)
    if triangles.min() < 0 or triangles.max() >= vertex_count:
        face = int(np.flatnonzero((triangles < 0).any(1) | (triangles >= vertex_count).any(1))[0])
        raise PointCloudFormatError(
            f"{path}: triangle {face} refers to a vertex outside 0..{vertex_count - 1}."
        )
    return vertices, triangles


def sample_mesh(
    vertices: np.ndarray, triangles: np.ndarray, count: int, rng: np.random.Generator, source: str = "mesh"
) -> np.ndarray:
    """``float32 [count, 3]`` points uniform over the surface area of a triangle mesh."""
    corners = vertices[triangles]
    area = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=-1
    )
    total = area.sum()
    if not total > 0:
        raise PointCloudFormatError(f"{source}: every face has zero area; there is no surface to sample.")
    chosen = rng.choice(len(triangles), size=count, p=area / total)
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    a, b, c = corners[chosen, 0], corners[chosen, 1], corners[chosen, 2]
    return (a + u[:, None] * (b - a) + v[:, None] * (c - a)).astype(np.float32)


def read_modelnet40_off(folder: str | Path, split: str, points: int, seed: int = 0) -> PointRecords:
    """``points`` area-uniform surface samples of every ``split`` mesh under ``folder``
    (``<class>/<split>/*.off``); mesh ``k`` of the sorted list is sampled with ``default_rng([seed, k])``."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    class_names = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())
    )
    if not class_names:
        raise PointCloudFormatError(f"{folder} has no <class>/train or <class>/test folders of .off meshes.")
    files = [
        (path, code)
        for code, name in enumerate(class_names)
        for path in sorted((folder / name / split).glob("*.off"))
    ]
    if not files:
        raise PointCloudFormatError(f"{folder} has no {split} meshes (<class>/{split}/*.off).")
    clouds = np.empty((len(files), points, 3), dtype=np.float32)
    split_offset = 0 if split == "train" else 1
    for k, (path, _) in enumerate(files):
        vertices, triangles = read_off(path)
        clouds[k] = sample_mesh(
            vertices, triangles, points, np.random.default_rng([seed, split_offset, k]), str(path)
        )
    labels = np.array([code for _, code in files], dtype=np.int64)
    return PointRecords(clouds, labels, class_names, [str(path) for path, _ in files])


def read_modelnet40_resampled(folder: str | Path, split: str) -> PointRecords:
    """The ``split`` clouds of ``modelnet40_normal_resampled`` (xyz of each ``<class>/<id>.txt``)."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    class_names = _read_lines(folder / "modelnet40_shape_names.txt")
    index = {name: code for code, name in enumerate(class_names)}
    clouds, labels, sources = [], [], []
    for line in _read_lines(folder / f"modelnet40_{split}.txt"):
        name = line.rsplit("_", 1)[0]
        path = folder / name / f"{line}.txt"
        if name not in index:
            raise PointCloudFormatError(
                f"{folder / f'modelnet40_{split}.txt'}: shape {line!r} has class {name!r}, which is not in "
                "modelnet40_shape_names.txt."
            )
        rows = np.loadtxt(_nonempty(path), delimiter=",", dtype=np.float32, ndmin=2)
        if rows.shape[0] == 0 or rows.shape[1] < 3:
            raise PointCloudFormatError(f"{path}: expected rows 'x,y,z[,nx,ny,nz]', got shape {rows.shape}.")
        xyz = np.ascontiguousarray(rows[:, :3])
        _check_finite(xyz, str(path))
        clouds.append(xyz)
        labels.append(index[name])
        sources.append(str(path))
    sizes = {len(c) for c in clouds}
    stacked = np.stack(clouds) if len(sizes) == 1 else clouds
    return PointRecords(stacked, np.array(labels, dtype=np.int64), class_names, sources)


# -- ScanObjectNN ----------------------------------------------------------------------------------
def scanobjectnn_file(root: str | Path, variant: str, split: str, split_dir: str | None = None) -> Path:
    """Path of the ``split`` (``"train"`` / ``"test"``) file of ``variant`` under ``root`` (the folder
    holding ``main_split/``, e.g. ``h5_files``, or the split folder itself)."""
    if variant not in SCANOBJECTNN_VARIANTS:
        raise ValueError(
            f"Unknown ScanObjectNN variant {variant!r}; the variants are {list(SCANOBJECTNN_VARIANTS)}."
        )
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    folder, suffix = SCANOBJECTNN_VARIANTS[variant]
    name = f"{'training' if split == 'train' else 'test'}_objectdataset{suffix}.h5"
    root = Path(root)
    candidates = [root / (split_dir or folder) / name, root / name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise PointCloudFormatError(
        f"ScanObjectNN {variant} {split} file not found: looked for {candidates[0]} and {candidates[1]}. "
        "Point `root` at the extracted h5_files folder (holding main_split/)."
    )


def read_scanobjectnn(path: str | Path) -> PointRecords:
    """Clouds, labels (``SCANOBJECTNN_CLASSES``) and background masks of one ScanObjectNN HDF5 file."""
    return _h5_clouds(Path(path), SCANOBJECTNN_CLASSES, with_mask=True)


# -- ShapeNetPart ----------------------------------------------------------------------------------
def read_shapenetpart_categories(root: str | Path) -> list[tuple[str, str]]:
    """``(category, synset)`` per line of ``synsetoffset2category.txt``; line order = category index."""
    path = Path(root) / "synsetoffset2category.txt"
    categories = []
    for line in _read_lines(path):
        fields = line.split()
        if len(fields) != 2:
            raise PointCloudFormatError(f"{path}: line {line!r} is not '<Category> <synset>'.")
        if fields[0] not in SHAPENETPART_PARTS:
            raise PointCloudFormatError(
                f"{path}: category {fields[0]!r} is not one of ShapeNetPart's {list(SHAPENETPART_PARTS)}."
            )
        categories.append((fields[0], fields[1]))
    return categories


def _split_ids(root: Path, split: str) -> list[tuple[str, str]]:
    path = root / "train_test_split" / f"shuffled_{split}_file_list.json"
    try:
        entries = json.loads(_nonempty(path).read_text())
    except json.JSONDecodeError as error:
        raise PointCloudFormatError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(entries, list) or not entries:
        raise PointCloudFormatError(f"{path} holds no shapes; expected a list of 'shape_data/<synset>/<id>'.")
    out = []
    for entry in entries:
        pieces = str(entry).split("/")
        if len(pieces) < 3:
            raise PointCloudFormatError(f"{path}: entry {entry!r} is not 'shape_data/<synset>/<id>'.")
        out.append((pieces[-2], pieces[-1]))
    return out


def read_shapenetpart(root: str | Path, split: str, categories: Sequence[str] | None = None) -> PointRecords:
    """The ``split`` (``"train"``, ``"val"``, ``"test"``) shapes of ShapeNetPart at ``root``: xyz and part
    labels per shape (lists: point counts differ); ``labels`` are category indices in the file's order."""
    root = Path(root)
    if not (root / "synsetoffset2category.txt").exists() and (root / SHAPENETPART_FOLDER).is_dir():
        root = root / SHAPENETPART_FOLDER
    if split not in ("train", "val", "test"):
        raise ValueError(f"`split` must be 'train', 'val' or 'test', got {split!r}.")
    listed = read_shapenetpart_categories(root)
    names = [name for name, _ in listed]
    if categories is not None:
        unknown = [c for c in categories if c not in names]
        if unknown:
            raise ValueError(
                f"Category {unknown[0]!r} is not in {root / 'synsetoffset2category.txt'} ({names})."
            )
    code = {synset: k for k, (_, synset) in enumerate(listed)}
    clouds, parts, labels, sources = [], [], [], []
    for synset, shape in _split_ids(root, split):
        if synset not in code or (categories is not None and listed[code[synset]][0] not in categories):
            continue
        category = listed[code[synset]][0]
        path = root / synset / f"{shape}.txt"
        rows = np.loadtxt(_nonempty(path), dtype=np.float32, ndmin=2)
        if rows.shape[0] == 0 or rows.shape[1] != 7:
            raise PointCloudFormatError(
                f"{path}: expected rows 'x y z nx ny nz part' (7 columns), got shape {rows.shape}."
            )
        xyz = np.ascontiguousarray(rows[:, :3])
        _check_finite(xyz, str(path))
        label = _integer_labels(rows[:, 6], str(path), "part label")
        allowed = SHAPENETPART_PARTS[category][1]
        wrong = ~np.isin(label, allowed)
        if wrong.any():
            point = int(np.flatnonzero(wrong)[0])
            raise PointCloudFormatError(
                f"{path}: point {point} has part label {int(label[point])}, not one of {category}'s parts "
                f"{list(allowed)}; the file or synsetoffset2category.txt is wrong."
            )
        clouds.append(xyz)
        parts.append(label)
        labels.append(code[synset])
        sources.append(str(path))
    if not clouds:
        raise PointCloudFormatError(f"{root}: the {split} list names no shapes of the chosen categories.")
    return PointRecords(clouds, np.array(labels, dtype=np.int64), names, sources, parts=parts)


# -- tiny writers (test data in the real layouts) --------------------------------------------------
def _family_clouds(
    families: Sequence[str],
    count: int,
    points: int,
    seed: int,
    domain: str = "clean",
    background: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``count`` generated shapes over ``families`` in turn: xyz, normals (clean only; zeros for scans),
    family index, local part labels (``IGNORE_INDEX`` on scan background)."""
    from verticals.domains.pointcloud.shapes import DENSE_FACTOR, sample_clean, scan

    family_of = np.arange(count) % len(families)
    xyz = np.zeros((count, points, 3), dtype=np.float32)
    normals = np.zeros((count, points, 3), dtype=np.float32)
    parts = np.zeros((count, points), dtype=np.int64)
    for k, family in enumerate(families):
        rows = np.flatnonzero(family_of == k)
        if not len(rows):
            continue
        rng = [np.random.default_rng([seed, k, i]) for i in range(3)]
        dense = points * (DENSE_FACTOR if domain == "scan" else 1)
        cloud, normal, local = sample_clean(family, len(rows), dense, rng[0], rng[1])
        if domain == "scan":
            cloud, local = scan(
                cloud, rng[2], normals=normal, part_labels=local, points=points, background=background
            )
            normal = np.zeros_like(cloud)
        xyz[rows], normals[rows], parts[rows] = cloud, normal, local
    return xyz, normals, family_of, parts


_MODELNET_FAMILIES = {"airplane": "airplane", "bottle": "bottle", "chair": "chair", "cup": "mug", "lamp": "lamp", "stool": "stool", "table": "table", "bookshelf": "shelf"}  # fmt: skip


def write_tiny_modelnet40_h5(
    root: str | Path,
    num_train: int = 16,
    num_test: int = 8,
    points: int = 256,
    classes: Sequence[str] = ("airplane", "chair", "table"),
    seed: int = 0,
) -> Path:
    """``root/modelnet40_ply_hdf5_2048/`` as released (two train files, one test file, ``shape_names.txt``
    with all 40 names, ``{train,test}_files.txt``), holding generated clean shapes of ``classes``
    (keys ``data``, ``label`` uint8 ``[N, 1]``, ``normal``). Returns the folder."""
    h5py = _h5py()
    unknown = [c for c in classes if c not in _MODELNET_FAMILIES]
    if unknown:
        raise ValueError(
            f"No generated family stands in for ModelNet40 class {unknown[0]!r}; use {sorted(_MODELNET_FAMILIES)}."
        )
    folder = Path(root) / MODELNET40_H5_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    families = [_MODELNET_FAMILIES[c] for c in classes]
    for split, count, files in (("train", num_train, 2), ("test", num_test, 1)):
        xyz, normals, family, _ = _family_clouds(families, count, points, seed + (split == "test"))
        labels = np.array([MODELNET40_CLASSES.index(classes[f]) for f in family], dtype=np.uint8)[:, None]
        names = []
        for k, rows in enumerate(np.array_split(np.arange(count), files)):
            name = f"ply_data_{split}{k}.h5"
            with h5py.File(folder / name, "w") as handle:
                handle.create_dataset("data", data=xyz[rows])
                handle.create_dataset("label", data=labels[rows])
                handle.create_dataset("normal", data=normals[rows])
            names.append(f"data/{MODELNET40_H5_FOLDER}/{name}")
        (folder / f"{split}_files.txt").write_text("\n".join(names) + "\n")
    return folder


def _solid(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """A small closed mesh: ``box`` (quad faces), ``cone`` (a pyramid over an n-gon) or ``bottle`` (a hexagonal prism)."""
    if kind == "box":
        w, h, d = rng.uniform(0.3, 1.0, 3)
        vertices = np.array([[x, y, z] for x in (0, w) for y in (0, h) for z in (0, d)])
        faces = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
        return vertices, faces
    sides = 6 if kind == "bottle" else int(rng.integers(4, 9))
    angle = 2 * math.pi * np.arange(sides) / sides
    radius, height = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.5)
    ring = np.stack([radius * np.cos(angle), np.zeros(sides), radius * np.sin(angle)], -1)
    if kind == "cone":
        vertices = np.concatenate([ring, [[0, height, 0]]])
        faces = [list(range(sides))[::-1]] + [[k, (k + 1) % sides, sides] for k in range(sides)]
        return vertices, faces
    vertices = np.concatenate([ring, ring + [0, height, 0]])
    faces = [list(range(sides))[::-1], list(range(sides, 2 * sides))]
    faces += [[k, (k + 1) % sides, sides + (k + 1) % sides, sides + k] for k in range(sides)]
    return vertices, faces


def write_tiny_modelnet40_off(root: str | Path, num_train: int = 3, num_test: int = 2, seed: int = 0) -> Path:
    """``root/ModelNet40/<class>/{train,test}/<class>_NNNN.off`` for three classes of simple closed meshes
    (``bookshelf``: boxes with quad faces, ``cone``: pyramids, ``bottle``: hexagonal prisms), the first
    file of each class with ModelNet's glued header (``OFF8 6 0``). Returns the ``ModelNet40`` folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "ModelNet40"
    kinds = {"bookshelf": "box", "bottle": "bottle", "cone": "cone"}
    for name, kind in kinds.items():
        number = 1
        for split, count in (("train", num_train), ("test", num_test)):
            (folder / name / split).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                vertices, faces = _solid(kind, rng)
                counts = f"{len(vertices)} {len(faces)} 0"
                header = f"OFF{counts}" if number == 1 else f"OFF\n{counts}"
                lines = [header, *(" ".join(f"{v:.6f}" for v in row) for row in vertices)]
                lines += [" ".join(map(str, [len(face), *face])) for face in faces]
                (folder / name / split / f"{name}_{number:04d}.off").write_text("\n".join(lines) + "\n")
                number += 1
    return folder


def write_tiny_modelnet40_resampled(
    root: str | Path,
    num_train: int = 6,
    num_test: int = 3,
    points: int = 300,
    classes: Sequence[str] = ("airplane", "chair", "table"),
    seed: int = 0,
) -> Path:
    """``root/modelnet40_normal_resampled/`` (shape names, ``modelnet40_{train,test}.txt``,
    ``<class>/<class>_NNNN.txt`` rows ``x,y,z,nx,ny,nz``) with generated clean shapes. Returns the folder."""
    folder = Path(root) / MODELNET40_RESAMPLED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    families = [_MODELNET_FAMILIES[c] for c in classes]
    number = dict.fromkeys(classes, 1)
    for split, count in (("train", num_train), ("test", num_test)):
        xyz, normals, family, _ = _family_clouds(families, count, points, seed + (split == "test"))
        ids = []
        for k in range(count):
            name = classes[family[k]]
            shape = f"{name}_{number[name]:04d}"
            number[name] += 1
            (folder / name).mkdir(exist_ok=True)
            np.savetxt(
                folder / name / f"{shape}.txt",
                np.concatenate([xyz[k], normals[k]], 1),
                fmt="%.6f",
                delimiter=",",
            )
            ids.append(shape)
        (folder / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    return folder


_SCANOBJECTNN_FAMILIES = {
    "chair": "chair",
    "table": "table",
    "shelf": "shelf",
    "bin": "mug",
    "display": "lamp",
}


def write_tiny_scanobjectnn(
    root: str | Path,
    variant: str = "PB_T50_RS",
    num_train: int = 12,
    num_test: int = 6,
    points: int = 256,
    classes: Sequence[str] = ("chair", "table", "shelf"),
    seed: int = 0,
) -> Path:
    """``root/<folder>/{training,test}_objectdataset<suffix>.h5`` of ``variant`` with generated scans of
    ``classes`` (keys ``data`` float32 ``[N, P, 3]``, ``label`` int64 ``[N]``, ``mask`` int64 ``[N, P]``: -1
    background, 1 object; ``OBJ_ONLY`` has no background). Returns ``root`` (what the datamodule takes)."""
    h5py = _h5py()
    if variant not in SCANOBJECTNN_VARIANTS:
        raise ValueError(
            f"Unknown ScanObjectNN variant {variant!r}; the variants are {list(SCANOBJECTNN_VARIANTS)}."
        )
    unknown = [c for c in classes if c not in _SCANOBJECTNN_FAMILIES]
    if unknown:
        raise ValueError(
            f"No generated family stands in for ScanObjectNN class {unknown[0]!r}; use {sorted(_SCANOBJECTNN_FAMILIES)}."
        )
    folder_name, suffix = SCANOBJECTNN_VARIANTS[variant]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    families = [_SCANOBJECTNN_FAMILIES[c] for c in classes]
    from verticals.domains.pointcloud.shapes import IGNORE_INDEX

    for split, count in (("training", num_train), ("test", num_test)):
        xyz, _, family, parts = _family_clouds(
            families, count, points, seed + (split == "test"), domain="scan", background=variant != "OBJ_ONLY"
        )
        with h5py.File(folder / f"{split}_objectdataset{suffix}.h5", "w") as handle:
            handle.create_dataset("data", data=xyz)
            handle.create_dataset(
                "label",
                data=np.array([SCANOBJECTNN_CLASSES.index(classes[f]) for f in family], dtype=np.int64),
            )
            handle.create_dataset("mask", data=np.where(parts == IGNORE_INDEX, -1, 1).astype(np.int64))
    return Path(root)


_SHAPENETPART_FAMILIES = {
    "Airplane": "airplane",
    "Chair": "chair",
    "Lamp": "lamp",
    "Mug": "mug",
    "Table": "table",
}


def write_tiny_shapenetpart(
    root: str | Path,
    num_train: int = 6,
    num_val: int = 2,
    num_test: int = 3,
    points: int = 300,
    categories: Sequence[str] = ("Airplane", "Mug"),
    seed: int = 0,
) -> Path:
    """``root/shapenetcore_partanno_segmentation_benchmark_v0_normal/`` with ``synsetoffset2category.txt``
    (the written categories only), ``<synset>/<id>.txt`` rows ``x y z nx ny nz part`` (``points`` to
    1.5 × ``points`` rows per shape; generated part k of a category → its k-th ShapeNetPart label) and the
    three shuffled split lists. Returns the folder."""
    unknown = [c for c in categories if c not in _SHAPENETPART_FAMILIES]
    if unknown:
        raise ValueError(
            f"No generated family stands in for ShapeNetPart category {unknown[0]!r}; use {sorted(_SHAPENETPART_FAMILIES)}."
        )
    folder = Path(root) / SHAPENETPART_FOLDER
    (folder / "train_test_split").mkdir(parents=True, exist_ok=True)
    (folder / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{SHAPENETPART_PARTS[name][0]}\n" for name in categories)
    )
    rng = np.random.default_rng(seed)
    families = [_SHAPENETPART_FAMILIES[c] for c in categories]
    for index, (split, count) in enumerate((("train", num_train), ("val", num_val), ("test", num_test))):
        most = points + points // 2
        xyz, normals, family, parts = _family_clouds(families, count, most, seed + 10 * index)
        entries = []
        for k in range(count):
            name = categories[family[k]]
            synset, allowed = SHAPENETPART_PARTS[name]
            shape = f"{rng.integers(0, 16**12):012x}{k:04d}"
            size = int(rng.integers(points, most + 1))
            rows = np.concatenate(
                [xyz[k, :size], normals[k, :size], np.array(allowed)[parts[k, :size], None]], 1
            )
            (folder / synset).mkdir(exist_ok=True)
            np.savetxt(folder / synset / f"{shape}.txt", rows, fmt="%.6f", delimiter=" ")
            entries.append(f"shape_data/{synset}/{shape}")
        (folder / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return folder
