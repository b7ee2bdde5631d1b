"""Percentile bootstrap CIs, plain and stratified."""

from __future__ import annotations

import numpy as np
import pytest

from verticals.core.metrics import auroc, bootstrap_ci, bootstrap_indices


def test_ci_of_a_mean_matches_the_normal_approximation():
    values = np.random.default_rng(0).normal(3.0, 2.0, 2000)
    point, low, high = bootstrap_ci(np.mean, values, n_resamples=2000, seed=1)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert point == pytest.approx(values.mean())
    assert low == pytest.approx(point - half_width, abs=0.02) and high == pytest.approx(
        point + half_width, abs=0.02
    )


def test_same_seed_same_interval_and_wider_at_higher_confidence():
    rng = np.random.default_rng(1)
    scores, target = rng.random(300), rng.integers(0, 2, 300)
    first = bootstrap_ci(auroc, scores, target, n_resamples=200, seed=5)
    assert first == bootstrap_ci(auroc, scores, target, n_resamples=200, seed=5)
    wide = bootstrap_ci(auroc, scores, target, n_resamples=200, seed=5, confidence=0.99)
    assert wide[1] <= first[1] and wide[2] >= first[2]


def test_strata_keep_their_sizes_in_every_resample():
    strata = np.array(["a"] * 7 + ["b"] * 3)
    for rows in bootstrap_indices(10, 50, seed=0, strata=strata):
        assert (strata[rows] == "a").sum() == 7 and (strata[rows] == "b").sum() == 3
    counts = []
    bootstrap_ci(lambda s: counts.append((s == "b").sum()) or 0.0, strata, n_resamples=20, strata=strata)
    assert set(counts) == {3}


def test_undefined_resamples_are_dropped_and_mismatched_lengths_rejected():
    point, low, high = bootstrap_ci(lambda x: np.nan, np.arange(5), n_resamples=10)
    assert np.isnan(point) and np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(auroc, np.arange(5), np.arange(4))
