"""The descriptor random forest: deterministic by seed, well above chance on a few generated shapes, accuracy per
group of a datamodule's test split, and clear errors on bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from verticals.domains.pointcloud.baseline import DescriptorForest
from verticals.domains.pointcloud.data import ShapeDataModule
from verticals.domains.pointcloud.descriptors import descriptor_names
from verticals.domains.pointcloud.shapes import generate_shapes


@pytest.fixture(scope="module")
def shapes() -> ShapeDataModule:
    """Scans of the eight families: 64 to train, 16 test shapes clean and scanned (256 points)."""
    datamodule = ShapeDataModule(num_train=64, num_val=8, num_test=16, num_points=256, seed=0)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def clouds() -> tuple[np.ndarray, np.ndarray]:
    xyz, labels, _ = generate_shapes(
        24, seed=3, domain="clean", points=128, families=["table", "mug", "lamp"]
    )
    return xyz, labels


def test_deterministic_by_seed(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, labels = clouds
    first = DescriptorForest(n_estimators=20, seed=4).fit(xyz, labels)
    again = DescriptorForest(n_estimators=20, seed=4).fit(xyz, labels)
    other = DescriptorForest(n_estimators=20, seed=5).fit(xyz, labels)
    test, _, _ = generate_shapes(12, seed=9, domain="scan", points=128, families=["table", "mug", "lamp"])
    np.testing.assert_array_equal(first.predict_proba(test), again.predict_proba(test))
    np.testing.assert_array_equal(first.predict(test), again.predict(test))
    assert not np.array_equal(first.predict_proba(test), other.predict_proba(test))


def test_fit_predict_score_on_numpy_and_torch(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, labels = clouds
    forest = DescriptorForest(n_estimators=20, seed=0).fit(torch.from_numpy(xyz), torch.from_numpy(labels))
    predicted = forest.predict(xyz)
    assert predicted.dtype == np.int64 and predicted.shape == (24,)
    np.testing.assert_array_equal(forest.predict(torch.from_numpy(xyz)), predicted)
    assert forest.score(xyz, labels) == pytest.approx((predicted == labels).mean())
    assert forest.score(xyz, labels) > 0.9  # its own training clouds
    np.testing.assert_array_equal(forest.classes, [0, 1, 2])
    probabilities = forest.predict_proba(xyz)
    assert probabilities.shape == (24, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(forest.classes[probabilities.argmax(axis=1)], predicted)
    # float labels that are whole numbers are class labels too
    forest.fit(xyz, labels.astype(np.float32))
    assert "fitted=True" in repr(forest)


def test_features_and_importances(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, labels = clouds
    forest = DescriptorForest(n_estimators=10, d2_bins=8, radial_bins=6)
    assert forest.feature_names == descriptor_names(8, 6)
    features = forest.features(xyz)
    assert features.shape == (24, 8 + 6 + 8) and features.dtype == np.float32
    importances = forest.fit(xyz, labels).feature_importances
    assert list(importances) == forest.feature_names
    assert sum(importances.values()) == pytest.approx(1.0)


def test_beats_chance_with_accuracy_per_group(shapes: ShapeDataModule) -> None:
    result = DescriptorForest(n_estimators=50, seed=0).evaluate_on(shapes)
    assert result["num_train"] == 64 and result["num_val"] == 8 and result["num_test"] == 32
    chance = 1 / 8
    assert result["accuracy"] >= 2.5 * chance  # 0.47 measured (10 of 32 or more: p < 0.01 by chance)
    assert 0.0 <= result["balanced_accuracy"] <= 1.0 and 0.0 <= result["val_accuracy"] <= 1.0
    assert set(result["groups"]) == {"domain", "novelty"}
    assert set(result["groups"]["domain"]) == {"clean", "scan"}
    assert set(result["groups"]["novelty"]) == {"seen", "novel"}

    # the same numbers by hand from the fitted forest and the test split
    test = shapes.split_arrays("test")
    correct = (
        DescriptorForest(n_estimators=50, seed=0)
        .fit(shapes.split_arrays("train")["xyz"], shapes.split_arrays("train")["labels"])
        .predict(test["xyz"])
        == test["labels"]
    )
    assert result["accuracy"] == pytest.approx(correct.mean())
    for domain in ("clean", "scan"):
        row = result["groups"]["domain"][domain]
        assert row["count"] == 16 and row["accuracy"] == pytest.approx(
            correct[test["domain"] == domain].mean()
        )
    novel = np.isin(np.array(shapes.families)[test["labels"]], shapes.novel_families)
    assert result["groups"]["novelty"]["novel"]["accuracy"] == pytest.approx(correct[novel].mean())
    assert result["groups"]["novelty"]["seen"]["count"] == int((~novel).sum())


def test_evaluate_on_seed(shapes: ShapeDataModule) -> None:
    forest = DescriptorForest(n_estimators=10, seed=0)
    first = forest.evaluate_on(shapes, seed=3)
    assert first["seed"] == 3 and forest.seed == 0  # this fit's seed; the forest keeps its own
    same = DescriptorForest(n_estimators=10, seed=3).evaluate_on(shapes)
    for key in ("accuracy", "balanced_accuracy", "val_accuracy", "groups"):
        assert first[key] == same[key], key
    assert forest.evaluate_on(shapes)["seed"] == 0


class _ListDataModule:
    """Any datamodule whose split datasets yield ``{"x", "y", "group"}`` items (not PointCloudItems)."""

    task = "classification"
    group_attributes = ["site"]
    group_names = {"site": ["a", "b"]}

    def __init__(self, xyz: np.ndarray, labels: np.ndarray) -> None:
        self.items = [
            {"x": torch.from_numpy(c), "y": torch.tensor(int(y)), "group": torch.tensor([k % 2])}
            for k, (c, y) in enumerate(zip(xyz, labels))
        ]

    def split_dataset(self, split: str) -> list[dict[str, Any]]:
        return self.items


def test_evaluate_on_reads_items_of_any_datamodule(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    result = DescriptorForest(n_estimators=10).evaluate_on(_ListDataModule(*clouds))
    assert result["num_test"] == 24 and set(result["groups"]["site"]) == {"a", "b"}
    assert result["groups"]["site"]["a"]["count"] == 12


def test_evaluate_on_a_datamodule_without_groups(tmp_path: Any) -> None:
    pytest.importorskip("h5py")
    from verticals.domains.pointcloud.data import ModelNet40DataModule
    from verticals.domains.pointcloud.formats import write_tiny_modelnet40_h5

    write_tiny_modelnet40_h5(tmp_path, num_train=12, num_test=6, points=128)
    datamodule = ModelNet40DataModule(tmp_path, num_points=64, val_fraction=0.25)
    result = DescriptorForest(n_estimators=10).evaluate_on(datamodule)
    assert (
        result["groups"] == {} and result["num_test"] == 6 and result["num_train"] + result["num_val"] == 12
    )


def test_errors_name_the_bad_value(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    xyz, labels = clouds
    forest = DescriptorForest(n_estimators=5)
    with pytest.raises(RuntimeError, match="not fitted yet: call `fit"):
        forest.predict(xyz)
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = forest.classes
    with pytest.raises(ValueError, match=r"\[n, P, 3\].*shape \(24, 128, 4\)"):
        forest.fit(np.concatenate([xyz, xyz[..., :1]], -1), labels)
    with pytest.raises(ValueError, match="no clouds"):
        forest.fit(xyz[:0], labels[:0])
    broken = xyz.copy()
    broken[5, 17, 1] = np.nan
    with pytest.raises(ValueError, match="Cloud 5 has a non-finite coordinate at point 17"):
        forest.fit(broken, labels)
    with pytest.raises(ValueError, match=r"one class label per cloud: \[24\], got shape \(23,\)"):
        forest.fit(xyz, labels[:-1])
    with pytest.raises(ValueError, match="integer class labels, got 0.5 at index 2"):
        forest.fit(xyz, np.array([0.0, 1.0, 0.5] + [1.0] * 21))
    with pytest.raises(ValueError, match="integer class labels, got dtype <U1"):
        forest.fit(xyz, np.array(["a"] * 24))
    with pytest.raises(ValueError, match="got -1 at index 3 .an ignore value"):
        forest.fit(xyz, np.where(np.arange(24) == 3, -1, labels))
    with pytest.raises(ValueError, match="single class"):
        forest.fit(xyz, np.zeros(24, dtype=np.int64))
    for name, value in (("n_estimators", 0), ("seed", -1), ("min_samples_leaf", True), ("pairs", 1.5)):
        with pytest.raises(ValueError, match=f"`{name}` must be an integer"):
            DescriptorForest(**{name: value})
    with pytest.raises(ValueError, match="`seed` must be an integer >= 0"):
        forest.evaluate_on(ShapeDataModule(num_train=8, num_val=8, num_test=1, num_points=64), seed=-2)


def test_evaluate_on_refuses_what_it_cannot_classify() -> None:
    forest = DescriptorForest(n_estimators=5)
    segmentation = ShapeDataModule(task="segmentation", num_train=8, num_val=8, num_test=1, num_points=64)
    with pytest.raises(ValueError, match="serves task 'segmentation'.*classifies whole clouds"):
        forest.evaluate_on(segmentation)
    with pytest.raises(TypeError, match="needs a verticals point-cloud datamodule .*got dict"):
        forest.evaluate_on({})


# -- beside a run ----------------------------------------------------------------------------------------------
def test_forest_predictions_are_the_forest_fit_on_the_runs_training_split(shapes: ShapeDataModule) -> None:
    """What ``verticals run`` puts beside a point-cloud classifier: the default forest, seeded by the run, fit on
    the training split, on the first test clouds it scored."""
    from types import SimpleNamespace

    from verticals.domains.pointcloud.baseline import forest_predictions

    context = SimpleNamespace(datamodule=shapes, test_count=20, seed=2)
    predicted = forest_predictions(context)
    train, test = shapes.split_arrays("train"), shapes.split_arrays("test")
    expected = DescriptorForest(seed=2).fit(train["xyz"], train["labels"]).predict(test["xyz"][:20])
    np.testing.assert_array_equal(predicted, expected)


def test_the_forest_stands_beside_classifiers_and_a_probe_beside_part_segmenters() -> None:
    from verticals.core.baseline import baselines_for
    from verticals.core.tasks import ClassificationTask, SegmentationTask

    classifier = ClassificationTask(model="pointcloud.point_transformer", adapter={"method": "lora"})
    segmenter = SegmentationTask(model="pointcloud.point_transformer", adapter={"method": "lora"})
    classes = ShapeDataModule(num_train=8, num_val=8, num_test=1, num_points=64)
    parts = ShapeDataModule(task="segmentation", num_train=8, num_val=8, num_test=1, num_points=64)
    assert [entry.name for entry in baselines_for(classifier, classes)] == ["descriptor forest"]
    assert [entry.name for entry in baselines_for(segmenter, parts)] == [
        "linear probe"
    ]  # the core's, per point
