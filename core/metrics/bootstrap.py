"""Percentile bootstrap confidence intervals, optionally resampling within strata (e.g. within each group)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from verticals.core.metrics._arrays import to_numpy


def bootstrap_indices(n: int, n_resamples: int, *, seed: int = 0, strata: Any = None) -> Iterator[np.ndarray]:
    """Index arrays of ``n_resamples`` resamples with replacement; within each stratum when ``strata`` is given.

    Resampling within strata keeps every stratum's size fixed, so a small group never vanishes from a resample.

    Args:
        n: samples in the data.
        n_resamples: resamples to draw (>= 1).
        seed: seed of the draws (the same seed gives the same resamples).
        strata: one stratum label per sample (e.g. the group), or None for plain resampling.
    """
    if n_resamples < 1:
        raise ValueError(f"`n_resamples` must be at least 1, got {n_resamples}.")
    rng = np.random.default_rng(seed)
    if strata is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n, size=n)
        return
    labels = to_numpy(strata, name="strata")
    if len(labels) != n:
        raise ValueError(f"`strata` has {len(labels)} values but the arrays have {n}.")
    members = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    for _ in range(n_resamples):
        yield np.concatenate([rows[rng.integers(0, len(rows), size=len(rows))] for rows in members])


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap values, ignoring NaN resamples.

    Args:
        values: the statistic on each resample.
        confidence: the interval's level, in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return float(low), float(high)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any = None,
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``statistic(*arrays)`` and its percentile bootstrap interval.

    The arrays are resampled together (same rows); resamples where the statistic is undefined (NaN) are
    dropped from the percentiles.

    Args:
        statistic: ``statistic(*arrays) -> float`` (e.g. :func:`~verticals.core.metrics.fairness.auroc`).
        *arrays: per-sample arrays of one length, resampled by the same rows.
        n_resamples: resamples (>= 1); more gives steadier interval ends at a higher cost.
        confidence: the interval's level, in (0, 1).
        seed: seed of the resamples.
        strata: one stratum label per sample to resample within, or None.
    """
    if not arrays:
        raise ValueError("Pass at least one array to resample, e.g. bootstrap_ci(auroc, scores, target).")
    columns = [to_numpy(array) for array in arrays]
    lengths = {len(column) for column in columns}
    if len(lengths) != 1:
        raise ValueError(f"All arrays must have the same length, got lengths {[len(c) for c in columns]}.")
    n = lengths.pop()
    point = float(statistic(*columns))
    values = np.array(
        [
            float(statistic(*(column[rows] for column in columns)))
            for rows in bootstrap_indices(n, n_resamples, seed=seed, strata=strata)
        ]
    )
    low, high = percentile_interval(values, confidence)
    return point, low, high
