"""The classical baseline of every point-cloud table: a random forest on global shape descriptors.

:class:`DescriptorForest` turns each cloud into :func:`~verticals.domains.pointcloud.descriptors.shape_descriptors`
(D2 distance histogram, radial histogram, PCA eigenvalue ratios: 36 numbers, blind to point order, rotation,
position and size) and fits scikit-learn's ``RandomForestClassifier`` on them. No network, no pretraining, a
few seconds on a CPU; in an earlier measurement of ours it beat every deep method on generated scans, so a
deep method's number means little without it beside it.

:meth:`DescriptorForest.evaluate_on` runs it on a point-cloud datamodule the way the deep configs run: fit on
the training split, accuracy on validation and test, and test accuracy per group (for generated shapes: clean
/ scan domain, seen / novel family), so its row reads like theirs.

Registered at import (``verticals.domains.pointcloud`` imports this module) as the baseline beside every
point-cloud classification run (:func:`forest_predictions`: fit on the run's training split, predict its
test clouds); part segmentation gets the core's per-point linear probe on the frozen features instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from verticals.core.baseline import BaselineContext, BaselineSkipped, register_baseline
from verticals.core.tasks.classification import ClassificationTask
from verticals.domains.pointcloud.descriptors import descriptor_names, shape_descriptors

__all__ = ["DescriptorForest", "forest_predictions"]


class DescriptorForest:
    """A random forest on global shape descriptors (the classical baseline).

    Args:
        n_estimators: trees in the forest.
        seed: the forest's ``random_state`` (bootstrap samples, feature draws); the same seed and data give
            the same predictions.
        max_features: features tried per split (scikit-learn's option; ``"sqrt"`` is its default).
        min_samples_leaf: the fewest training clouds in a leaf.
        d2_bins: bins of the D2 (pairwise-distance) histogram descriptor
            (see :func:`~verticals.domains.pointcloud.descriptors.shape_descriptors`).
        radial_bins: bins of the radial (distance-to-centroid) histogram descriptor.
        pairs: how many point pairs the D2 histogram samples in each cloud.
        descriptor_seed: seeds the D2 pairs (the same pairs for every cloud and every forest seed).
        n_jobs: worker processes of the forest (1: the benchmark runs several things at once).
    """

    def __init__(
        self,
        n_estimators: int = 300,
        seed: int = 0,
        *,
        max_features: str | int | float | None = "sqrt",
        min_samples_leaf: int = 1,
        d2_bins: int = 16,
        radial_bins: int = 12,
        pairs: int = 2048,
        descriptor_seed: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = _count(n_estimators, "n_estimators", 1)
        self.seed = _count(seed, "seed", 0)
        self.min_samples_leaf = _count(min_samples_leaf, "min_samples_leaf", 1)
        self.max_features = max_features
        self.d2_bins = _count(d2_bins, "d2_bins", 1)
        self.radial_bins = _count(radial_bins, "radial_bins", 1)
        self.pairs = _count(pairs, "pairs", 1)
        self.descriptor_seed = _count(descriptor_seed, "descriptor_seed", 0)
        self.n_jobs = n_jobs
        self.forest: Any = None  # the fitted sklearn RandomForestClassifier

    # -- features ---------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Name of each descriptor column."""
        return descriptor_names(self.d2_bins, self.radial_bins)

    def features(self, xyz: np.ndarray | torch.Tensor) -> np.ndarray:
        """Descriptors ``float32 [n, F]`` of clouds ``xyz`` ``[n, P, 3]``."""
        xyz = _clouds(xyz)
        return shape_descriptors(
            xyz,
            d2_bins=self.d2_bins,
            radial_bins=self.radial_bins,
            pairs=self.pairs,
            seed=self.descriptor_seed,
        )

    # -- fit / predict ---------------------------------------------------------------------------
    def fit(
        self, xyz: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int]
    ) -> DescriptorForest:
        """Fit the forest on clouds ``xyz [n, P, 3]`` and their class ``labels [n]``; returns ``self``."""
        return self._fit(xyz, labels, self.seed)

    def _fit(self, xyz: Any, labels: Any, seed: int) -> DescriptorForest:
        from sklearn.ensemble import RandomForestClassifier

        features = self.features(xyz)
        labels = _labels(labels, len(features))
        if len(np.unique(labels)) < 2:
            raise ValueError(
                f"The training labels hold a single class ({int(labels[0])}): a classifier needs at least two. "
                "Give clouds of several classes."
            )
        self.forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf,
            random_state=seed,
            n_jobs=self.n_jobs,
        )
        self.forest.fit(features, labels)
        return self

    def _fitted(self) -> Any:
        if self.forest is None:
            raise RuntimeError("This DescriptorForest is not fitted yet: call `fit(xyz, labels)` first.")
        return self.forest

    def predict(self, xyz: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class labels ``int64 [n]`` of clouds ``xyz [n, P, 3]``."""
        forest = self._fitted()
        return forest.predict(self.features(xyz)).astype(np.int64)

    def predict_proba(self, xyz: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``[n, C]`` (columns: ``classes``, the labels seen in training)."""
        forest = self._fitted()
        return forest.predict_proba(self.features(xyz))

    @property
    def classes(self) -> np.ndarray:
        """The labels seen in training, in the order of :meth:`predict_proba`'s columns."""
        return self._fitted().classes_.astype(np.int64)

    @property
    def feature_importances(self) -> dict[str, float]:
        """Mean decrease in impurity of each descriptor column (which descriptors the forest used)."""
        return dict(zip(self.feature_names, self._fitted().feature_importances_.tolist()))

    def score(
        self, xyz: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int]
    ) -> float:
        """Accuracy on clouds ``xyz`` with true ``labels``."""
        xyz = _clouds(xyz)
        return float((self.predict(xyz) == _labels(labels, len(xyz))).mean())

    # -- on a datamodule --------------------------------------------------------------------------
    def evaluate_on(self, datamodule: Any, seed: int | None = None) -> dict[str, Any]:
        """Fit on ``datamodule``'s training split, score its validation and test splits.

        ``seed`` (default: the forest's ``seed``) seeds this fit; the datamodule's own seed chose its data.
        The forest stays fitted afterwards. Returns ``{"accuracy", "balanced_accuracy", "val_accuracy",
        "groups": {attribute: {group: {"accuracy", "count"}}}, "num_train", "num_val", "num_test", "seed",
        "fit_seconds", "predict_seconds"}`` (accuracies of the test split unless named ``val_``; ``groups``
        empty for a datamodule without groups).
        """
        seed = self.seed if seed is None else _count(seed, "seed", 0)
        task = getattr(datamodule, "task", "classification")
        if task != "classification":
            raise ValueError(
                f"{type(datamodule).__name__} serves task {task!r}, but the descriptor forest classifies whole "
                "clouds: give it a classification datamodule (e.g. ShapeDataModule(task='classification'))."
            )
        if not hasattr(datamodule, "split_dataset"):
            raise TypeError(
                f"evaluate_on needs a verticals point-cloud datamodule (with `split_dataset(split)`), got "
                f"{type(datamodule).__name__}."
            )
        train_xyz, train_y, _ = _split(datamodule, "train")
        val_xyz, val_y, _ = _split(datamodule, "val")
        test_xyz, test_y, test_groups = _split(datamodule, "test")
        started = time.perf_counter()
        self._fit(train_xyz, train_y, seed)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        predicted = self.predict(test_xyz)
        predict_seconds = time.perf_counter() - started
        correct = predicted == test_y
        groups: dict[str, dict[str, dict[str, Any]]] = {}
        attributes = list(getattr(datamodule, "group_attributes", []) or [])
        if test_groups is not None and attributes:
            names = datamodule.group_names
            for column, attribute in enumerate(attributes):
                codes = test_groups[:, column]
                groups[attribute] = {
                    names[attribute][int(code)]: {
                        "accuracy": float(correct[codes == code].mean()),
                        "count": int((codes == code).sum()),
                    }
                    for code in np.unique(codes)
                    if code >= 0
                }
        return {
            "accuracy": float(correct.mean()),
            "balanced_accuracy": _balanced_accuracy(test_y, predicted),
            "val_accuracy": self.score(val_xyz, val_y) if len(val_y) else float("nan"),
            "groups": groups,
            "num_train": len(train_y),
            "num_val": len(val_y),
            "num_test": len(test_y),
            "seed": seed,
            "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
        }

    def __repr__(self) -> str:
        return (
            f"DescriptorForest(n_estimators={self.n_estimators}, seed={self.seed}, "
            f"fitted={self.forest is not None})"
        )


def forest_predictions(context: BaselineContext) -> np.ndarray:
    """A :class:`DescriptorForest` (defaults, seeded by the run) fit on the run's training split: class indices
    of the first ``context.test_count`` test clouds.

    Args:
        context: the run's baseline context (its datamodule, test count and seed).
    """
    train_xyz, train_y, _ = _split(context.datamodule, "train")
    test_xyz, _, _ = _split(context.datamodule, "test")
    if not len(train_y):
        raise BaselineSkipped("the training split holds no clouds")
    forest = DescriptorForest(seed=context.seed).fit(train_xyz, train_y)
    return forest.predict(test_xyz[: context.test_count])


def _classifies_clouds(task: Any, datamodule: Any) -> bool:
    from verticals.domains.pointcloud.data import ShapeDataModule, _FileDataModule

    return (
        isinstance(task, ClassificationTask)
        and isinstance(datamodule, (ShapeDataModule, _FileDataModule))
        and getattr(datamodule, "task", "classification") == "classification"
    )


register_baseline(
    name="descriptor forest",
    description=(
        "scikit-learn RandomForestClassifier (300 trees) on 36 global shape descriptors per cloud (D2 and "
        "radial histograms, PCA eigenvalue ratios), fit on the training split"
    ),
    applies=_classifies_clouds,
    predict=forest_predictions,
)


# -- helpers ---------------------------------------------------------------------------------------------------
def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _clouds(xyz: Any) -> np.ndarray:
    """``float [n, P, 3]`` (from numpy or torch), at least one cloud; finite values are checked later."""
    if isinstance(xyz, torch.Tensor):
        xyz = xyz.detach().cpu().numpy()
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(
            f"`xyz` must be clouds [n, P, 3] (xyz only), got shape {xyz.shape}; drop normals or colours first."
        )
    if len(xyz) == 0:
        raise ValueError("`xyz` holds no clouds (shape [0, P, 3]): give at least one.")
    if not np.issubdtype(xyz.dtype, np.number) or np.issubdtype(xyz.dtype, np.complexfloating):
        raise ValueError(f"`xyz` must hold real numbers, got dtype {xyz.dtype}.")
    return xyz


def _labels(labels: Any, count: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"`labels` must be one class label per cloud: [{count}], got shape {labels.shape}.")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            index = int(np.flatnonzero(~whole)[0])
            raise ValueError(
                f"`labels` must be integer class labels, got {float(labels[index])} at index {index}."
            )
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"`labels` must be integer class labels, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if (labels < 0).any():
        index = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(
            f"`labels` must be class indices >= 0, got {labels[index]} at index {index} (an ignore value?)."
        )
    return labels


def _split(datamodule: Any, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(xyz [n, P, 3], labels [n], groups [n, A] or None)`` of a datamodule's split."""
    dataset = datamodule.split_dataset(split)
    if all(hasattr(dataset, name) for name in ("xyz", "targets", "groups")):  # PointCloudItems
        groups = None if dataset.groups is None else dataset.groups.numpy()
        return dataset.xyz.numpy(), dataset.targets.numpy(), groups
    items = [dataset[k] for k in range(len(dataset))]
    if not items:
        return np.zeros((0, 0, 3), np.float32), np.zeros(0, np.int64), None
    xyz = np.stack([np.asarray(item["x"]) for item in items])
    labels = np.array([int(item["y"]) for item in items], dtype=np.int64)
    groups = np.stack([np.asarray(item["group"]) for item in items]) if "group" in items[0] else None
    return xyz, labels, groups


def _balanced_accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in ``true``."""
    return float(np.mean([(predicted[true == c] == c).mean() for c in np.unique(true)]))
