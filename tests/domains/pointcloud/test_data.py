"""Point sampling and the generated-shapes datamodule (the file-backed ones are in test_formats.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.core.data import check_groups
from verticals.domains.pointcloud.data import (
    POINT_SAMPLERS,
    PointCloudItems,
    ShapeDataModule,
    farthest_point_indices,
    sample_points,
)
from verticals.domains.pointcloud.formats import PointCloudFormatError
from verticals.domains.pointcloud.shapes import IGNORE_INDEX, SHAPE_FAMILIES, family_part_labels, part_names


def _reference_fps(cloud: np.ndarray, count: int, start: int) -> list[int]:
    """Farthest-point sampling one point at a time, in plain Python (the oracle)."""
    chosen = [start]
    distance = [float("inf")] * len(cloud)
    for _ in range(count - 1):
        last = cloud[chosen[-1]]
        for k, point in enumerate(cloud):
            distance[k] = min(distance[k], float(((point - last) ** 2).sum()))
        chosen.append(int(np.argmax(distance)))
    return chosen


# -- sampling --------------------------------------------------------------------------------------
def test_farthest_point_indices_equal_a_reference_loop() -> None:
    clouds = np.random.default_rng(0).normal(size=(37, 60, 3)).astype(np.float32)  # > one chunk of 32
    starts = np.random.default_rng(1).integers(0, 60, 37)
    indices = farthest_point_indices(clouds, 12, starts)
    assert indices.shape == (37, 12) and indices.dtype == np.int64
    for cloud, start, row in zip(clouds, starts, indices, strict=True):
        assert row.tolist() == _reference_fps(cloud, 12, int(start))
    assert farthest_point_indices(clouds[:2], 3).tolist() == [_reference_fps(c, 3, 0) for c in clouds[:2]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"xyz": np.zeros((4, 3))}, r"\[B, N, 3\]"),
        ({"count": 0}, "`count` must be an integer in 1..10"),
        ({"count": 11}, "`count` must be an integer in 1..10"),
        ({"start": 10}, "`start` must index a point"),
    ],
)
def test_farthest_point_indices_refuse_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"xyz": np.zeros((2, 10, 3)), "count": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        farthest_point_indices(**arguments)


def test_sample_points_methods_sizes_and_seeds() -> None:
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(size, 3)).astype(np.float32) for size in (50, 20, 80)]
    for method in POINT_SAMPLERS:
        xyz, index = sample_points(clouds, 20, method, seed=3)
        assert xyz.shape == (3, 20, 3) and xyz.dtype == np.float32
        for k in range(3):
            np.testing.assert_array_equal(xyz[k], clouds[k][index[k]])
            assert len(np.unique(index[k])) == 20  # no repeats when the cloud is large enough
        np.testing.assert_array_equal(index[1], np.arange(20))  # a cloud of exactly 20 is kept whole
        again = sample_points(clouds, 20, method, seed=3)[1]
        np.testing.assert_array_equal(again, index)
    np.testing.assert_array_equal(sample_points(clouds, 20, "first")[1][2], np.arange(20))
    # padded, batched FPS over clouds of different sizes = FPS of each cloud alone
    _, index = sample_points(clouds, 10, "fps", seed=5)
    starts = np.random.default_rng(5).integers(0, [50, 20, 80])
    for k in (0, 2):
        assert index[k].tolist() == _reference_fps(clouds[k], 10, int(starts[k]))


def test_short_clouds_are_errors_naming_the_source_unless_duplicates_are_allowed() -> None:
    clouds = [np.zeros((30, 3)), np.ones((12, 3))]
    with pytest.raises(
        PointCloudFormatError, match=r"b\.h5, sample 1: has 12 points but num_points=20 needs"
    ):
        sample_points(clouds, 20, sources=["a.h5, sample 0", "b.h5, sample 1"])
    xyz, index = sample_points(clouds, 20, allow_duplicates=True)
    np.testing.assert_array_equal(index[1, :12], np.arange(12))  # every point kept, then repeats
    assert index[1].max() < 12 and xyz.shape == (2, 20, 3)
    with pytest.raises(ValueError, match="`sampling` must be one of"):
        sample_points(clouds, 5, "grid")
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 1"):
        sample_points(clouds, 0)


def test_point_cloud_items() -> None:
    items = PointCloudItems(np.zeros((3, 5, 3)), np.array([0, 1, 2]), np.zeros((3, 2)), np.array([1, 1, 0]))
    item = items[2]
    assert set(item) == {"x", "y", "group", "category"} and item["x"].dtype == torch.float32
    assert set(PointCloudItems(np.zeros((3, 5, 3)), np.zeros(3))[0]) == {"x", "y"}
    with pytest.raises(ValueError, match="3 clouds but 2 targets"):
        PointCloudItems(np.zeros((3, 5, 3)), np.zeros(2))


# -- the generated shapes --------------------------------------------------------------------------
SMALL = {"num_train": 16, "num_val": 8, "num_test": 8, "num_points": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def classification() -> ShapeDataModule:
    datamodule = ShapeDataModule(**SMALL)
    datamodule.setup()
    return datamodule


def test_classification_batches_groups_and_shapes(classification: ShapeDataModule) -> None:
    dm = classification
    check_groups(dm)
    assert dm.class_names == list(SHAPE_FAMILIES) and dm.num_classes == 8 and dm.input_shape == (64, 3)
    assert dm.group_attributes == ["domain", "novelty"]
    assert dm.group_names == {"domain": ["clean", "scan"], "novelty": ["seen", "novel"]}
    assert dm.ignore_index is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 64, 3) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (4,) and batch["y"].dtype == torch.long and batch["group"].shape == (4, 2)
    assert [len(dm.split_dataset(split)) for split in ("train", "val", "test")] == [16, 8, 16]
    # novelty follows the family
    items = dm.split_dataset("test")
    novel = {SHAPE_FAMILIES.index(name) for name in ("stool", "airplane")}
    for k in range(len(items)):
        assert int(items[k]["group"][1]) == int(int(items[k]["y"]) in novel)


def test_validation_is_part_of_the_training_pool_and_the_test_split_is_paired(
    classification: ShapeDataModule,
) -> None:
    dm = classification
    train, val, test = (dm.split_arrays(split) for split in ("train", "val", "test"))
    assert sorted(np.unique(val["labels"]).tolist()) == list(range(8))  # stratified: every family
    assert set(train["domain"]) == set(val["domain"]) == {"scan"}  # the training domain
    # validation clouds come from the training pool, disjoint from training and test clouds
    pool = ShapeDataModule(**SMALL)
    pool_xyz = pool._draw(24, "train", "scan")[0]
    for cloud in val["xyz"]:
        assert any(np.array_equal(cloud, other) for other in pool_xyz)
    assert not any(np.array_equal(cloud, other) for cloud in val["xyz"] for other in train["xyz"])
    assert not any(np.allclose(cloud, other) for cloud in test["xyz"] for other in pool_xyz)
    # the same shapes in both test domains
    np.testing.assert_array_equal(test["labels"][:8], test["labels"][8:])
    assert test["domain"].tolist() == ["clean"] * 8 + ["scan"] * 8
    assert (test["parts"][:8] != IGNORE_INDEX).all() and (test["parts"][8:] == IGNORE_INDEX).any()


def test_same_seed_same_data_other_seed_other_data(classification: ShapeDataModule) -> None:
    again = ShapeDataModule(**SMALL)
    np.testing.assert_array_equal(again.split_arrays("val")["xyz"], classification.split_arrays("val")["xyz"])
    other = ShapeDataModule(**SMALL, seed=1)
    assert not np.allclose(
        other.split_arrays("train")["xyz"][:4], classification.split_arrays("train")["xyz"][:4]
    )


def test_segmentation_batches_carry_parts_category_and_ignore_index() -> None:
    dm = ShapeDataModule(task="segmentation", families=["mug", "table", "stool"], **SMALL)
    assert dm.class_names == part_names(["mug", "table", "stool"]) and dm.num_classes == 6
    assert dm.ignore_index == IGNORE_INDEX and dm.category_names == ["mug", "table", "stool"]
    assert dm.num_categories == 3 and dm.category_parts == {0: [0, 1], 1: [2, 3], 2: [4, 5]}
    assert dm.group_names["novelty"] == ["seen", "novel"]
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert batch["y"].shape == (4, 64) and batch["category"].shape == (4,)
    for parts, category in zip(batch["y"], batch["category"], strict=True):
        labelled = set(parts.unique().tolist()) - {IGNORE_INDEX}
        assert labelled <= set(dm.category_parts[int(category)])
    assert (batch["y"] == IGNORE_INDEX).any()  # scan background


def test_mixed_training_domain_alternates() -> None:
    dm = ShapeDataModule(train_domain="mixed", test_domains=["scan"], **SMALL)
    domains = np.concatenate([dm.split_arrays("train")["domain"], dm.split_arrays("val")["domain"]])
    assert (
        sorted(set(domains.tolist())) == ["clean", "scan"] and abs((domains == "clean").mean() - 0.5) < 0.15
    )
    assert dm.group_names["domain"] == ["scan", "clean"]  # test domains first
    assert len(dm.split_dataset("test")) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "detection"}, "`task` must be 'classification' or 'segmentation'"),
        ({"train_domain": "lidar"}, "`train_domain` must be one of"),
        ({"test_domains": "scan"}, "got the string 'scan'"),
        ({"test_domains": ["scan", "scan"]}, "distinct domains"),
        ({"families": ["sofa"]}, "Unknown shape family 'sofa'"),
        ({"num_val": 4}, "must each be >= the 8 families"),
        ({"num_points": 0}, "`num_points` must be an integer >= 1"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
    ],
)
def test_shape_datamodule_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapeDataModule(**{**SMALL, **kwargs})


def test_family_part_labels_match_part_names() -> None:
    labels = family_part_labels(["lamp"])
    assert [part_names(["lamp"])[k] for k in labels["lamp"]] == ["lamp.base", "lamp.pole", "lamp.shade"]
