"""Array plumbing shared by the metric modules: torch or numpy in, float64 numpy out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(values: Any, *, name: str = "values") -> np.ndarray:
    """A numpy copy of a tensor, array or sequence (float tensors become float64)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()
        return values.numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise TypeError(f"`{name}` must be numeric or string, got an object array: {array[:3]!r}…")
    return array


def as_scores(scores: Any) -> np.ndarray:
    """Scores as float64: ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.

    A two-column ``[N, 2]`` input is reduced to its positive-class column, so binary tasks score the same
    whether a model hands over softmax outputs or the positive probability.
    """
    array = to_numpy(scores, name="scores").astype(np.float64)
    if array.ndim == 2 and array.shape[1] == 2:
        array = array[:, 1]
    if array.ndim not in (1, 2):
        raise ValueError(f"`scores` must be [N] or [N, C], got shape {array.shape}.")
    return array


def as_labels(target: Any, length: int, *, name: str = "target") -> np.ndarray:
    """Integer class labels of the given length."""
    array = to_numpy(target, name=name)
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"`{name}` must be a vector of {length} labels, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"`{name}` must hold integer class labels, got values such as {array[:3]}.")
        array = array.astype(np.int64)
    return array.astype(np.int64)


def probabilities_2d(scores: np.ndarray) -> np.ndarray:
    """``[N, C]`` probabilities from ``[N]`` positive-class probabilities or ``[N, C]``."""
    return np.stack([1.0 - scores, scores], axis=1) if scores.ndim == 1 else scores
