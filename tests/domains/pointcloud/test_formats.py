"""Readers and tiny writers of the distributed layouts (ModelNet40 HDF5 / OFF / resampled, ScanObjectNN,
ShapeNetPart), their errors on bad files, and the datamodules over them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from verticals.core.data import check_groups
from verticals.domains.pointcloud.data import (
    ModelNet40DataModule,
    ScanObjectNNDataModule,
    ShapeNetPartDataModule,
)
from verticals.domains.pointcloud.formats import (
    MODELNET40_CLASSES,
    SCANOBJECTNN_CLASSES,
    SCANOBJECTNN_VARIANTS,
    SHAPENETPART_PARTS,
    PointCloudFormatError,
    detect_modelnet40_layout,
    read_modelnet40_h5,
    read_modelnet40_off,
    read_modelnet40_resampled,
    read_off,
    read_scanobjectnn,
    read_shapenetpart,
    read_shapenetpart_categories,
    sample_mesh,
    scanobjectnn_file,
    write_tiny_modelnet40_h5,
    write_tiny_modelnet40_off,
    write_tiny_modelnet40_resampled,
    write_tiny_scanobjectnn,
    write_tiny_shapenetpart,
)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pointcloud")
    write_tiny_scanobjectnn(base / "scanobjectnn", variant="OBJ_ONLY", num_train=6, num_test=3)
    return {
        "h5": write_tiny_modelnet40_h5(base / "h5"),
        "off": write_tiny_modelnet40_off(base / "off"),
        "resampled": write_tiny_modelnet40_resampled(base / "resampled"),
        "scanobjectnn": write_tiny_scanobjectnn(base / "scanobjectnn"),
        "shapenetpart": write_tiny_shapenetpart(base / "shapenetpart"),
    }


def _h5(path: Path, **datasets: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, value in datasets.items():
            handle.create_dataset(key, data=value)
    return path


# -- ModelNet40 HDF5 -------------------------------------------------------------------------------
def test_modelnet40_h5_is_written_and_read_in_the_release_layout(roots: dict[str, Path]) -> None:
    folder = roots["h5"]
    assert folder.name == "modelnet40_ply_hdf5_2048"
    assert (folder / "shape_names.txt").read_text().split() == list(MODELNET40_CLASSES)
    assert (folder / "train_files.txt").read_text().split() == [
        "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5",
        "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5",
    ]
    with h5py.File(folder / "ply_data_train0.h5", "r") as handle:
        assert sorted(handle) == ["data", "label", "normal"]
        assert handle["data"].dtype == np.float32 and handle["data"].shape[1:] == (256, 3)
        assert handle["label"].dtype == np.uint8 and handle["label"].shape[1] == 1
    train = read_modelnet40_h5(folder, "train")
    assert train.clouds.shape == (16, 256, 3) and len(train) == 16
    assert set(train.labels.tolist()) == {MODELNET40_CLASSES.index(c) for c in ("airplane", "chair", "table")}
    assert train.sources[9] == f"{folder / 'ply_data_train1.h5'}, sample 1"
    assert len(read_modelnet40_h5(folder, "test")) == 8
    assert detect_modelnet40_layout(folder.parent) == ("hdf5", folder)


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ({"data": np.zeros((2, 8, 3), np.float32)}, "has no dataset 'label'"),
        ({"data": np.zeros((0, 8, 3), np.float32), "label": np.zeros((0, 1))}, "holds no samples"),
        (
            {"data": np.zeros((2, 8), np.float32), "label": np.zeros((2, 1))},
            r"`data` must be \[samples, points, 3\]",
        ),
        (
            {"data": np.zeros((2, 8, 3), np.float32), "label": np.array([[3], [40]], np.uint8)},
            "sample 1 has label 40, outside the 40 classes",
        ),
        (
            {"data": np.zeros((2, 8, 3), np.float32), "label": np.array([0.0, 1.5])},
            "label 1.5 at position 1 is not a whole number",
        ),
        ({"data": np.zeros((2, 8, 3), np.float32), "label": np.zeros(3, np.int64)}, "`label` has shape"),
    ],
)
def test_bad_h5_files_are_errors_naming_the_file(tmp_path: Path, datasets: dict, message: str) -> None:
    path = _h5(tmp_path / "modelnet40_ply_hdf5_2048" / "ply_data_train0.h5", **datasets)
    with pytest.raises(PointCloudFormatError, match=message) as error:
        read_modelnet40_h5(path.parent, "train")
    assert str(path) in str(error.value)


def test_nan_coordinates_name_file_sample_and_point(tmp_path: Path) -> None:
    data = np.zeros((3, 8, 3), np.float32)
    data[2, 5, 1] = np.nan
    _h5(tmp_path / "ply_data_train0.h5", data=data, label=np.zeros((3, 1), np.uint8))
    with pytest.raises(
        PointCloudFormatError,
        match=r"ply_data_train0\.h5: sample 2 has a non-finite coordinate .* at point 5",
    ):
        read_modelnet40_h5(tmp_path, "train")


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "ply_data_train0.h5").write_bytes(b"")
    with pytest.raises(PointCloudFormatError, match=r"ply_data_train0\.h5 is empty \(0 bytes\)"):
        read_modelnet40_h5(tmp_path, "train")
    (tmp_path / "ply_data_train0.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(PointCloudFormatError, match="cannot be read as HDF5"):
        read_modelnet40_h5(tmp_path, "train")
    with pytest.raises(PointCloudFormatError, match="has no ply_data_test"):
        read_modelnet40_h5(tmp_path, "test")
    with pytest.raises(PointCloudFormatError, match="No ModelNet40 copy found"):
        detect_modelnet40_layout(tmp_path / "nowhere")


# -- ModelNet40 meshes and resampled text ------------------------------------------------------------
def test_off_reader_handles_the_glued_header_polygons_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "box.off"
    path.write_text(
        "OFF8 6 0\n# a unit cube\n"
        + "".join(f"{x} {y} {z}\n" for x in (0, 1) for y in (0, 1) for z in (0, 1))
        + "4 0 1 3 2\n4 4 6 7 5\n4 0 4 5 1\n4 2 3 7 6\n4 0 2 6 4\n4 1 5 7 3\n"
    )
    vertices, triangles = read_off(path)
    assert vertices.shape == (8, 3) and triangles.shape == (12, 3)
    points = sample_mesh(vertices, triangles, 500, np.random.default_rng(0))
    on_face = (np.abs(points) < 1e-6) | (np.abs(points - 1) < 1e-6)
    assert on_face.any(axis=1).all() and ((points >= -1e-6) & (points <= 1 + 1e-6)).all()
    # every face gets its share of the area (1/6 each)
    faces = np.argmax(on_face, axis=1) * 2 + (
        np.abs(points[np.arange(500), np.argmax(on_face, axis=1)] - 1) < 1e-6
    )
    assert np.bincount(faces, minlength=6).min() > 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty \(0 bytes\)"),
        ("PLY\n3 1 0\n", "does not start with 'OFF'"),
        ("OFF\n0 0 0\n", "the mesh is empty"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n", "truncated"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n", "triangle 0 refers to a vertex outside 0..2"),
        ("OFF\n3 1 0\n0 0 0\nnan 0 0\n0 1 0\n3 0 1 2\n", "vertex 1 has a non-finite coordinate"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n", "face 0 .* is not a polygon"),
    ],
)
def test_bad_off_files_are_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "chair_0001.off"
    path.write_text(text)
    with pytest.raises(PointCloudFormatError, match=message) as error:
        read_off(path)
    assert "chair_0001.off" in str(error.value)


def test_zero_area_meshes_cannot_be_sampled() -> None:
    with pytest.raises(PointCloudFormatError, match="x.off: every face has zero area"):
        sample_mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, np.random.default_rng(0), "x.off")


def test_modelnet40_off_and_resampled_layouts(roots: dict[str, Path]) -> None:
    off = read_modelnet40_off(roots["off"], "train", points=64, seed=0)
    assert off.class_names == ["bookshelf", "bottle", "cone"] and off.clouds.shape == (9, 64, 3)
    assert off.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and off.sources[0].endswith(
        "bookshelf_0001.off"
    )
    np.testing.assert_array_equal(read_modelnet40_off(roots["off"], "train", 64, 0).clouds, off.clouds)
    assert detect_modelnet40_layout(roots["off"].parent) == ("off", roots["off"])
    resampled = read_modelnet40_resampled(roots["resampled"], "test")
    assert resampled.clouds.shape == (3, 300, 3) and resampled.class_names == list(MODELNET40_CLASSES)
    assert detect_modelnet40_layout(roots["resampled"]) == ("resampled", roots["resampled"])


# -- ScanObjectNN ----------------------------------------------------------------------------------
def test_scanobjectnn_variants_files_masks_and_labels(roots: dict[str, Path]) -> None:
    root = roots["scanobjectnn"]
    path = scanobjectnn_file(root, "PB_T50_RS", "train")
    assert path == root / "main_split" / "training_objectdataset_augmentedrot_scale75.h5"
    assert (
        scanobjectnn_file(root / "main_split", "PB_T50_RS", "test").name
        == "test_objectdataset_augmentedrot_scale75.h5"
    )
    assert SCANOBJECTNN_VARIANTS["OBJ_BG"] == ("main_split", "") and len(SCANOBJECTNN_CLASSES) == 15
    records = read_scanobjectnn(path)
    assert records.clouds.shape == (12, 256, 3) and records.masks.shape == (12, 256)
    assert set(np.unique(records.masks).tolist()) == {-1, 1} and (records.masks == -1).mean() > 0.05
    assert {SCANOBJECTNN_CLASSES[k] for k in records.labels} == {"chair", "table", "shelf"}
    bare = read_scanobjectnn(scanobjectnn_file(root, "OBJ_ONLY", "train"))
    assert (bare.masks != -1).all()  # OBJ_ONLY: background removed
    with pytest.raises(ValueError, match="Unknown ScanObjectNN variant 'PB_T99'"):
        scanobjectnn_file(root, "PB_T99", "train")
    with pytest.raises(PointCloudFormatError, match="ScanObjectNN PB_T25 train file not found"):
        scanobjectnn_file(root, "PB_T25", "train")


def test_scanobjectnn_label_outside_the_15_classes(tmp_path: Path) -> None:
    path = _h5(
        tmp_path / "test_objectdataset.h5",
        data=np.zeros((2, 4, 3), np.float32),
        label=np.array([14, 15]),
        mask=np.zeros((2, 4)),
    )
    with pytest.raises(
        PointCloudFormatError, match=r"test_objectdataset\.h5: sample 1 has label 15, outside the 15 classes"
    ):
        read_scanobjectnn(path)


# -- ShapeNetPart ----------------------------------------------------------------------------------
def test_shapenetpart_layout_and_reader(roots: dict[str, Path]) -> None:
    folder = roots["shapenetpart"]
    assert read_shapenetpart_categories(folder) == [("Airplane", "02691156"), ("Mug", "03797390")]
    entries = json.loads((folder / "train_test_split" / "shuffled_train_file_list.json").read_text())
    assert len(entries) == 6 and entries[0].startswith("shape_data/")
    train = read_shapenetpart(folder.parent, "train")  # the parent works too
    assert len(train) == 6 and train.class_names == ["Airplane", "Mug"]
    sizes = {len(cloud) for cloud in train.clouds}
    assert min(sizes) >= 300 and max(sizes) <= 450  # point counts differ, as in the dataset
    for parts, label in zip(train.parts, train.labels, strict=True):
        assert set(parts.tolist()) <= set(SHAPENETPART_PARTS[train.class_names[label]][1])
    assert len(read_shapenetpart(folder, "test", categories=["Mug"])) == 1


def test_shapenetpart_bad_files(roots: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(roots["shapenetpart"], tmp_path / "copy"))
    entry = json.loads((folder / "train_test_split" / "shuffled_test_file_list.json").read_text())[0]
    path = folder / entry.split("/", 1)[1]
    path = path.with_suffix(".txt")
    rows = np.loadtxt(path)
    rows[3, 6] = 12  # a chair part on an airplane or a mug
    np.savetxt(path, rows, fmt="%.6f")
    with pytest.raises(PointCloudFormatError, match=r"point 3 has part label 12, not one of"):
        read_shapenetpart(folder, "test")
    np.savetxt(path, rows[:, :6], fmt="%.6f")
    with pytest.raises(PointCloudFormatError, match="7 columns"):
        read_shapenetpart(folder, "test")
    path.write_text("")
    with pytest.raises(PointCloudFormatError, match=r"is empty \(0 bytes\)"):
        read_shapenetpart(folder, "test")
    (folder / "synsetoffset2category.txt").write_text("Sofa\t04256520\n")
    with pytest.raises(PointCloudFormatError, match="category 'Sofa' is not one of ShapeNetPart's"):
        read_shapenetpart_categories(folder)


# -- the datamodules over the files ------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["h5", "off", "resampled"])
def test_modelnet40_datamodule_on_each_layout(roots: dict[str, Path], layout: str) -> None:
    dm = ModelNet40DataModule(roots[layout].parent, num_points=64, val_fraction=0.34, batch_size=3)
    dm.setup()
    assert dm.input_shape == (64, 3) and dm.num_classes == (3 if layout == "off" else 40)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (3, 64, 3) and batch["y"].dtype == torch.long and "group" not in batch
    x = dm.split_arrays("train")["xyz"]
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1).max(axis=1), 1, atol=1e-5)  # unit sphere
    # validation is a part of the training split, never the test split
    train, val, test = (set(dm.split_arrays(s)["sources"]) for s in ("train", "val", "test"))
    assert val and not val & train and not val & test
    training_files = {s.split(",")[0] for s in train}
    if layout == "h5":
        assert {s.split(",")[0] for s in val} <= training_files | {str(roots["h5"] / "ply_data_train1.h5")}


def test_modelnet40_datamodule_errors(roots: dict[str, Path]) -> None:
    with pytest.raises(PointCloudFormatError, match="holds the ModelNet40 'hdf5' layout, not 'off'"):
        _ = ModelNet40DataModule(roots["h5"], layout="off").class_names
    too_many = ModelNet40DataModule(roots["h5"], num_points=300)
    with pytest.raises(
        PointCloudFormatError, match=r"ply_data_train\d\.h5, sample \d+: has 256 points but num_points=300"
    ):
        too_many.setup()
    topped = ModelNet40DataModule(roots["h5"], num_points=300, allow_duplicates=True, sampling="random")
    assert topped.split_arrays("test")["xyz"].shape == (8, 300, 3)
    for kwargs, message in (
        ({"val_fraction": 0.0}, "validation is a part of the training split"),
        ({"sampling": "grid"}, "`sampling` must be one of"),
        ({"layout": "ply"}, "`layout` must be"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelNet40DataModule(roots["h5"], **kwargs)


def test_scanobjectnn_datamodule_keeps_masks(roots: dict[str, Path]) -> None:
    dm = ScanObjectNNDataModule(
        roots["scanobjectnn"], num_points=128, sampling="random", val_fraction=0.25, batch_size=3
    )
    assert dm.class_names == list(SCANOBJECTNN_CLASSES) and dm.num_classes == 15
    arrays = dm.split_arrays("train")
    assert arrays["xyz"].shape == (9, 128, 3) and arrays["mask"].shape == (9, 128)
    assert len(dm.split_dataset("val")) == 3 and len(dm.split_dataset("test")) == 6
    assert next(iter(dm.val_dataloader()))["x"].shape == (3, 128, 3)
    with pytest.raises(ValueError, match="Unknown ScanObjectNN variant"):
        ScanObjectNNDataModule(roots["scanobjectnn"], variant="hardest")


def test_shapenetpart_datamodule_segmentation_batches(roots: dict[str, Path]) -> None:
    dm = ShapeNetPartDataModule(roots["shapenetpart"], num_points=256, val_fraction=0.25, batch_size=2)
    check_groups(dm)
    assert dm.category_names == ["Airplane", "Mug"] and dm.num_categories == 2
    assert dm.class_names == ["Airplane_0", "Airplane_1", "Airplane_2", "Airplane_3", "Mug_0", "Mug_1"]
    assert dm.category_parts == {0: [0, 1, 2, 3], 1: [4, 5]} and dm.ignore_index is None
    assert dm.group_attributes == ["category"] and dm.group_names == {"category": ["Airplane", "Mug"]}
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert (
        batch["x"].shape == (2, 256, 3) and batch["y"].shape == (2, 256) and batch["category"].shape == (2,)
    )
    for parts, category in zip(batch["y"], batch["category"], strict=True):
        assert set(parts.unique().tolist()) <= set(dm.category_parts[int(category)])
    # train + official val pooled (8), a quarter held out; the test list is never used for validation
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [6, 2, 3]
    test_files = set(dm.split_arrays("test")["sources"])
    assert not test_files & set(dm.split_arrays("val")["sources"])
    official = ShapeNetPartDataModule(roots["shapenetpart"], num_points=256, official_val=True)
    val_list = json.loads(
        (roots["shapenetpart"] / "train_test_split" / "shuffled_val_file_list.json").read_text()
    )
    assert {Path(s).stem for s in official.split_arrays("val")["sources"]} == {
        e.rsplit("/", 1)[1] for e in val_list
    }
    mugs = ShapeNetPartDataModule(roots["shapenetpart"], categories=["Mug"], num_points=256, val_fraction=0.3)
    assert mugs.class_names == ["Mug_0", "Mug_1"] and set(
        np.unique(mugs.split_arrays("test")["parts"]).tolist()
    ) <= {0, 1}
    with pytest.raises(ValueError, match="Category 'Car' is not in"):
        _ = ShapeNetPartDataModule(roots["shapenetpart"], categories=["Car"]).category_names
