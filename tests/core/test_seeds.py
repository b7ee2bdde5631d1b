"""Results over seeds (``verticals.core.seeds``): the summary against numpy/scipy, the sweep, the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from verticals.core.metrics import bootstrap_indices, percentile_interval
from verticals.core.seeds import (
    check_seeds,
    paired_bootstrap,
    seed_statistics,
    summarize_seeds,
    sweep_seeds,
)

ACCURACIES = [0.827, 0.880, 0.940, 0.613, 0.853]


def test_seed_statistics_match_numpy_and_scipy_t_interval():
    result = seed_statistics(ACCURACIES)
    values = np.asarray(ACCURACIES)
    assert result.n == 5 and result.values == tuple(ACCURACIES)
    assert result.mean == pytest.approx(values.mean(), abs=1e-15)
    assert result.std == pytest.approx(values.std(ddof=1), abs=1e-15)
    low, high = stats.t.interval(0.95, df=4, loc=values.mean(), scale=stats.sem(values))
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    # the textbook value: t(0.975, 4) = 2.7764
    assert result.high - result.mean == pytest.approx(2.7764451 * values.std(ddof=1) / math.sqrt(5), rel=1e-6)
    narrower = seed_statistics(ACCURACIES, confidence=0.9)
    assert result.low < narrower.low < narrower.high < result.high and narrower.confidence == 0.9


def test_seed_statistics_ignore_nan_and_give_no_spread_for_one_seed():
    with_missing = seed_statistics([0.5, math.nan, 0.7])
    assert with_missing.n == 2 and with_missing.mean == pytest.approx(0.6)
    assert with_missing.std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    one = seed_statistics([0.8])
    assert one.n == 1 and one.mean == 0.8 and all(math.isnan(v) for v in (one.std, one.low, one.high))
    none = seed_statistics([math.nan])
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ValueError, match="`confidence` must be in \\(0, 1\\), got 95"):
        seed_statistics(ACCURACIES, confidence=95)


def test_summarize_seeds_per_metric_in_seed_order():
    summary = summarize_seeds({3: {"test_accuracy": 0.8, "test_loss": 0.4}, 1: {"test_accuracy": 0.6}})
    assert list(summary) == ["test_accuracy", "test_loss"]
    assert summary["test_accuracy"].values == (0.8, 0.6) and summary["test_accuracy"].mean == pytest.approx(
        0.7
    )
    assert summary["test_loss"].n == 1 and math.isnan(summary["test_loss"].values[1])
    assert summary["test_accuracy"].as_dict()["values"] == [0.8, 0.6]


def test_check_seeds_names_the_bad_values():
    assert check_seeds((0, 1, np.int64(2))) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"distinct, got \[1\] more than once in \[0, 1, 1\]"):
        check_seeds([0, 1, 1])
    with pytest.raises(ValueError, match=r"in 0\.\.4294967295, got \[-1\]"):
        check_seeds([-1, 2])
    with pytest.raises(ValueError, match="integers, got \\['0'\\]"):
        check_seeds(["0"])
    with pytest.raises(ValueError, match="No seeds given"):
        check_seeds([])


def test_sweep_runs_every_seed_in_order_skips_and_reports_errors():
    seen, errors = [], {}

    def run(seed: int) -> int:
        if seed == 2:
            raise RuntimeError("diverged")
        return seed * 10

    results = sweep_seeds(
        [3, 0, 2, 1],
        run,
        skip=lambda seed: seed == 1,
        on_result=lambda seed, result: seen.append((seed, result)),
        on_error=lambda seed, error: errors.update({seed: str(error)}),
    )
    assert results == {3: 30, 0: 0} and list(results) == [3, 0]
    assert seen == [(3, 30), (0, 0)] and errors == {2: "diverged"}
    # without on_error the failure is raised, after the seeds before it were handed over
    seen.clear()
    with pytest.raises(RuntimeError, match="diverged"):
        sweep_seeds([0, 2, 3], run, on_result=lambda seed, result: seen.append(seed))
    assert seen == [0]


def test_sweep_with_jobs_keeps_seed_order():
    seen = []
    results = sweep_seeds(range(6), lambda seed: seed**2, jobs=3, on_result=lambda s, r: seen.append(s))
    assert results == {s: s**2 for s in range(6)} and seen == list(range(6))
    assert sweep_seeds([], lambda seed: pytest.fail("nothing to run")) == {}
    with pytest.raises(ValueError, match="distinct"):
        sweep_seeds([1, 1], lambda seed: seed)
    with pytest.raises(ValueError, match="`jobs` must be >= 1, got 0"):
        sweep_seeds([0], lambda seed: seed, jobs=0)


def _mean_error(rows):
    return float(np.mean(rows["prediction"] != rows["target"]))


def test_paired_bootstrap_shares_resamples_between_the_two_models():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, 200)
    group = rng.integers(0, 2, 200)
    reference = {"prediction": np.where(rng.random(200) < 0.7, target, (target + 1) % 3), "target": target}
    other = {"prediction": np.where(rng.random(200) < 0.8, target, (target + 1) % 3), "target": target}
    paired = paired_bootstrap(
        _mean_error, reference, other, n_bootstrap=300, seed=7, strata=group, same=("target",)
    )
    # the same resamples, by hand
    rows = list(bootstrap_indices(200, 300, seed=7, strata=group))
    a = np.array([_mean_error({k: v[r] for k, v in reference.items()}) for r in rows])
    b = np.array([_mean_error({k: v[r] for k, v in other.items()}) for r in rows])
    np.testing.assert_array_equal(paired.reference_draws[:, 0], a)
    np.testing.assert_array_equal(paired.other_draws[:, 0], b)
    change = paired.difference()
    assert change["value"] == _mean_error(other) - _mean_error(reference)
    assert (change["low"], change["high"]) == percentile_interval(b - a)
    ratio = paired.ratio()
    assert ratio["value"] == pytest.approx(_mean_error(other) / _mean_error(reference))
    assert (ratio["low"], ratio["high"]) == percentile_interval(b / a)
    reduction = paired.reduction()
    assert reduction["value"] == pytest.approx(1 - ratio["value"]) and reduction["low"] == pytest.approx(
        1 - ratio["high"]
    )
    # paired: a model against itself has no spread at all
    same = paired_bootstrap(_mean_error, reference, reference, n_bootstrap=50)
    assert same.difference() == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_paired_bootstrap_several_statistics_no_resamples_and_errors():
    x = {"value": np.arange(10.0)}
    y = {"value": np.arange(10.0) * 2}
    paired = paired_bootstrap(lambda r: (r["value"].mean(), r["value"].max()), x, y, n_bootstrap=0)
    assert paired.reference.tolist() == [4.5, 9.0] and paired.other.tolist() == [9.0, 18.0]
    assert paired.reference_draws.shape == (0, 2)
    empty = paired.difference(1)
    assert empty["value"] == 9.0 and math.isnan(empty["low"]) and math.isnan(empty["high"])
    zero = paired_bootstrap(lambda r: 0.0, x, y, n_bootstrap=3).reduction()
    assert math.isnan(zero["value"])  # no relative change of a zero
    with pytest.raises(ValueError, match="'value' arrays differ: a paired bootstrap needs the same samples"):
        paired_bootstrap(lambda r: 0.0, x, y, n_bootstrap=3, same=("value",))
    with pytest.raises(KeyError, match="`same` names 'label'"):
        paired_bootstrap(lambda r: 0.0, x, y, n_bootstrap=3, same=("label",))
    with pytest.raises(ValueError, match=r"same length, got lengths \[9, 10\]"):
        paired_bootstrap(lambda r: 0.0, x, {"value": np.arange(9.0)}, n_bootstrap=3)
    with pytest.raises(ValueError, match="`n_bootstrap` must be >= 0, got -1"):
        paired_bootstrap(lambda r: 0.0, x, y, n_bootstrap=-1)
