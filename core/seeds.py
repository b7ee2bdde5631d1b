"""Results over seeds: the seed sweep, its summary (mean ± std and a Student-t interval) and the paired bootstrap.

One seed on a small set is a smoke test, not a result: the same config can move by ten points between seeds.
``sweep_seeds`` runs anything once per seed; ``summarize_seeds`` turns per-seed metrics into
mean ± sample standard deviation and a t-interval over seeds (the seeds are the sampling unit, so the
interval is about the training procedure, not one model). ``paired_bootstrap`` compares two models on the
same test samples with one resampling shared by both, so the sampling noise both share cancels out of the
difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from scipy import stats

from verticals.core.metrics.bootstrap import bootstrap_indices, percentile_interval

T = TypeVar("T")

CONFIDENCE = 0.95
INTERVAL = "Student t over seeds: mean ± t(1 - α/2, n - 1) · std / √n, std the sample standard deviation"


# -- the sweep ---------------------------------------------------------------------------------------------
def check_seeds(seeds: Iterable[int]) -> list[int]:
    """The seeds as a list, refusing an empty, repeated, negative or non-integer one (Lightning seeds are uint32).

    Args:
        seeds: the seeds to run, e.g. ``[0, 1, 2, 3, 4]``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("No seeds given; pass at least one, e.g. `--seeds 0 1 2 3 4`.")
    bad = [seed for seed in seeds if isinstance(seed, bool) or not isinstance(seed, (int, np.integer))]
    if bad:
        raise ValueError(f"Seeds must be integers, got {bad!r} in {seeds!r}.")
    out_of_range = [seed for seed in seeds if not 0 <= seed <= np.iinfo(np.uint32).max]
    if out_of_range:
        raise ValueError(f"Seeds must be in 0..{np.iinfo(np.uint32).max}, got {out_of_range} in {seeds}.")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(
            f"Seeds must be distinct, got {repeated} more than once in {seeds}; drop the repeats."
        )
    return [int(seed) for seed in seeds]


def sweep_seeds(
    seeds: Sequence[int],
    run: Callable[[int], T],
    *,
    jobs: int = 1,
    skip: Callable[[int], bool] | None = None,
    on_result: Callable[[int, T], None] | None = None,
    on_error: Callable[[int, BaseException], None] | None = None,
) -> dict[int, T]:
    """``run(seed)`` for every seed (``skip(seed)`` true: left out), ``jobs`` at a time; results by seed.

    An empty ``seeds`` runs nothing; otherwise the seeds must pass ``check_seeds``.
    ``jobs > 1`` runs seeds in threads, for runs that start their own process (a seed's training must not
    share a process's global random state with another). ``on_result(seed, result)`` sees each result in
    seed order as it is available (progress, partial reports). An exception in one seed is passed to
    ``on_error`` and the sweep goes on, or, without ``on_error``, raised after the earlier seeds' results
    were handed to ``on_result``.

    Args:
        seeds: distinct non-negative integers.
        run: ``run(seed) -> result``, one training (or any experiment) per seed.
        jobs: seeds run at once (>= 1); above 1 only for runs in their own processes.
        skip: ``skip(seed) -> bool``, true for seeds to leave out (e.g. already finished on disk).
        on_result: ``on_result(seed, result)``, called in seed order as results arrive.
        on_error: ``on_error(seed, exception)``; given, a failing seed is reported and the sweep goes on.
    """
    seeds = list(seeds)
    seeds = check_seeds(seeds) if seeds else []  # nothing left to run (all skipped upstream) is fine
    if jobs < 1:
        raise ValueError(f"`jobs` must be >= 1, got {jobs}.")
    pending = [seed for seed in seeds if skip is None or not skip(seed)]
    results: dict[int, T] = {}

    def attempt(seed: int) -> tuple[T | None, BaseException | None]:
        try:
            return run(seed), None
        except Exception as error:  # handed to on_error, or re-raised in seed order below
            return None, error

    def collect(seed: int, outcome: tuple[T | None, BaseException | None]) -> None:
        result, error = outcome
        if error is not None:
            if on_error is None:
                raise error
            on_error(seed, error)
            return
        results[seed] = result  # type: ignore[assignment]
        if on_result is not None:
            on_result(seed, result)  # type: ignore[arg-type]

    if jobs == 1:
        for seed in pending:
            collect(seed, attempt(seed))
        return results
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for seed, outcome in zip(pending, pool.map(attempt, pending)):
            collect(seed, outcome)
    return results


# -- the summary -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedStatistics:
    """One metric over seeds: the values in seed order (NaN where a seed lacks it) and their summary.

    ``n`` counts the seeds with a value; ``std`` is the sample standard deviation (``ddof=1``); ``low`` and
    ``high`` bound the Student-t ``confidence`` interval of the mean. With one value the spread and the
    interval are NaN: one seed says nothing about the spread.

    Attributes:
        values: the metric of every seed, in seed order (NaN where a seed lacks it).
        n: seeds with a value.
        mean: their mean.
        std: their sample standard deviation (NaN for one value).
        low: lower end of the t-interval of the mean.
        high: upper end of that interval.
        confidence: the interval's level, e.g. 0.95.
    """

    values: tuple[float, ...]
    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "values": list(self.values)}


def seed_statistics(values: Iterable[float], confidence: float = CONFIDENCE) -> SeedStatistics:
    """Mean, sample std and the t-interval of the mean of one metric's per-seed values (NaN ignored).

    Args:
        values: one value per seed.
        confidence: level of the interval, in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    values = tuple(float(value) for value in values)
    present = np.asarray([value for value in values if not math.isnan(value)], dtype=np.float64)
    n = len(present)
    mean = float(present.mean()) if n else math.nan
    if n < 2:
        return SeedStatistics(values, n, mean, math.nan, math.nan, math.nan, confidence)
    std = float(present.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
    return SeedStatistics(values, n, mean, std, mean - half, mean + half, confidence)


def summarize_seeds(
    per_seed: Mapping[int, Mapping[str, float]], confidence: float = CONFIDENCE
) -> dict[str, SeedStatistics]:
    """Per metric (every name any seed reports, sorted), its ``SeedStatistics`` over the seeds in order.

    Args:
        per_seed: seed -> that seed's metrics (name -> value), e.g. each run's test metrics.
        confidence: level of the intervals, in (0, 1).
    """
    names = sorted({name for metrics in per_seed.values() for name in metrics})
    return {
        name: seed_statistics(
            [float(metrics.get(name, math.nan)) for metrics in per_seed.values()], confidence=confidence
        )
        for name in names
    }


# -- the paired bootstrap ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedBootstrap:
    """Two models' statistics on the same samples, on the full set and on shared resamples.

    ``reference`` and ``other`` hold the statistics on all samples (shape ``[K]``); ``reference_draws`` and
    ``other_draws`` the same statistics on each resample (``[B, K]``), row ``b`` of both computed on the
    same rows. A contrast of the two (difference, ratio, relative reduction) and its percentile interval
    therefore leave out the noise both models share.

    Attributes:
        reference: the reference model's statistics on all samples, ``[K]``.
        other: the other model's statistics on all samples, ``[K]``.
        reference_draws: the reference's statistics on each resample, ``[B, K]``.
        other_draws: the other's statistics on the same resamples, ``[B, K]``.
    """

    reference: np.ndarray
    other: np.ndarray
    reference_draws: np.ndarray
    other_draws: np.ndarray

    def interval(
        self,
        contrast: Callable[[np.ndarray, np.ndarray], np.ndarray],
        index: int = 0,
        confidence: float = CONFIDENCE,
    ) -> dict[str, float]:
        """``{"value", "low", "high"}``: ``contrast(reference, other)`` of statistic ``index`` and its
        percentile interval over the resamples (NaN resamples dropped; NaN bounds without resamples)."""
        value = float(contrast(self.reference[index], self.other[index]))
        draws = contrast(self.reference_draws[:, index], self.other_draws[:, index])
        low, high = percentile_interval(draws, confidence) if len(draws) else (math.nan, math.nan)
        return {"value": value, "low": low, "high": high}

    def difference(self, index: int = 0, confidence: float = CONFIDENCE) -> dict[str, float]:
        """``other - reference``, e.g. the change of a metric."""
        return self.interval(lambda a, b: b - a, index, confidence)

    def ratio(self, index: int = 0, confidence: float = CONFIDENCE) -> dict[str, float]:
        """``other / reference``, e.g. one model's error rate as a share of another's."""
        return self.interval(_divide, index, confidence)

    def reduction(self, index: int = 0, confidence: float = CONFIDENCE) -> dict[str, float]:
        """``1 - other / reference``: how much smaller ``other`` is; NaN when the full-set reference is 0."""
        result = self.interval(lambda a, b: 1.0 - _divide(a, b), index, confidence)
        if self.reference[index] == 0:
            result["value"] = math.nan  # no relative change of a zero
        return result


def _divide(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample where the reference is 0: inf/NaN
        return np.asarray(other, dtype=np.float64) / np.asarray(reference, dtype=np.float64)


def paired_bootstrap(
    statistic: Callable[[Mapping[str, np.ndarray]], float | Sequence[float]],
    reference: Mapping[str, Any],
    other: Mapping[str, Any],
    *,
    n_bootstrap: int,
    seed: int = 0,
    strata: Any = None,
    same: Sequence[str] = (),
) -> PairedBootstrap:
    """``statistic`` of two models' per-sample arrays, on all samples and on ``n_bootstrap`` shared resamples.

    ``reference`` and ``other`` map names to per-sample arrays (first dimension = samples, in the same
    order for both); ``statistic`` receives the rows of one model's arrays and returns one value or a
    tuple. Resamples come from ``bootstrap_indices(n, n_bootstrap, seed=seed, strata=strata)`` (within
    strata when given) and are the same for both models. The arrays named in ``same`` (labels, groups,
    sample ids) must be equal in both: otherwise the models were not scored on the same samples.
    ``n_bootstrap=0`` gives the full-set statistics and no resamples.

    Args:
        statistic: ``statistic(arrays) -> value or values`` of one model's per-sample arrays (a subset of
            rows on each resample).
        reference: the reference model's per-sample arrays by name.
        other: the other model's per-sample arrays, the same samples in the same order.
        n_bootstrap: shared resamples (0: none); more gives steadier interval ends.
        seed: seed of the resamples.
        strata: per-sample stratum labels to resample within (e.g. the class), or None.
        same: names of arrays that must be equal in both (labels, groups, ids).
    """
    if n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be >= 0, got {n_bootstrap}.")
    reference = {name: np.asarray(values) for name, values in reference.items()}
    other = {name: np.asarray(values) for name, values in other.items()}
    for name in same:
        if name not in reference or name not in other:
            raise KeyError(
                f"`same` names {name!r}, but the arrays are {sorted(reference)} and {sorted(other)}."
            )
        if not np.array_equal(reference[name], other[name]):
            raise ValueError(
                f"The two models' {name!r} arrays differ: a paired bootstrap needs the same samples in the "
                "same order for both (score both on one test set, without shuffling)."
            )
    lengths = {len(values) for values in (*reference.values(), *other.values())}
    if len(lengths) != 1:
        raise ValueError(f"Every per-sample array must have the same length, got lengths {sorted(lengths)}.")
    n = lengths.pop()

    def evaluate(arrays: Mapping[str, np.ndarray], rows: np.ndarray | None) -> np.ndarray:
        subset = arrays if rows is None else {name: values[rows] for name, values in arrays.items()}
        return np.atleast_1d(np.asarray(statistic(subset), dtype=np.float64))

    point_reference, point_other = evaluate(reference, None), evaluate(other, None)
    draws_reference = np.empty((0, len(point_reference)))
    draws_other = np.empty((0, len(point_other)))
    if n_bootstrap > 0:
        draws = [
            (evaluate(reference, rows), evaluate(other, rows))
            for rows in bootstrap_indices(n, n_bootstrap, seed=seed, strata=strata)
        ]
        draws_reference = np.stack([a for a, _ in draws])
        draws_other = np.stack([b for _, b in draws])
    return PairedBootstrap(point_reference, point_other, draws_reference, draws_other)
