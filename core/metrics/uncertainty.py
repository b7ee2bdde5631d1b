"""Calibration and selective-prediction metrics: ECE (equal-width and equal-mass), Brier, NLL, AURC.

Scores are ``[N]`` positive-class probabilities (binary) or ``[N, C]`` class probabilities. Binary ECE
compares the positive-class probability with the label frequency (torchmetrics' ``BinaryCalibrationError``
convention); multiclass ECE compares the top-label confidence with accuracy. Selective prediction ranks
samples by the confidence of the predicted class in both cases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from verticals.core.metrics._arrays import as_labels, as_scores, probabilities_2d

Norm = Literal["l1", "l2", "max"]
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin data of a reliability diagram; empty bins hold NaN confidence/accuracy and count 0.

    Attributes:
        bin_lower: each bin's lower confidence edge.
        bin_upper: each bin's upper confidence edge.
        confidence: the mean confidence of each bin's samples.
        accuracy: the observed frequency (accuracy) of each bin's samples.
        count: samples per bin.
    """

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {
            field.name: [_json_float(v) for v in getattr(self, field.name)]
            for field in dataclasses.fields(self)
        }


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _confidence_and_outcome(scores: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = as_scores(scores)
    labels = as_labels(target, len(probs))
    if probs.ndim == 1:
        return probs, (labels == 1).astype(np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def _bin_ids(
    confidence: np.ndarray, n_bins: int, adaptive: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin index per sample and each bin's lower/upper edge (equal width, or equal mass when ``adaptive``)."""
    if n_bins < 1:
        raise ValueError(f"`n_bins` must be at least 1, got {n_bins}.")
    if adaptive:
        chunks = np.array_split(np.argsort(confidence, kind="mergesort"), n_bins)
        ids = np.empty(len(confidence), dtype=np.int64)
        for index, chunk in enumerate(chunks):
            ids[chunk] = index
        lower = np.array([confidence[chunk].min() if len(chunk) else np.nan for chunk in chunks])
        upper = np.array([confidence[chunk].max() if len(chunk) else np.nan for chunk in chunks])
        return ids, lower, upper
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # [lower, upper) bins, 1.0 in the last one: the binning torchmetrics uses.
    ids = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    return ids, edges[:-1], edges[1:]


def reliability_curve(
    scores: Any, target: Any, *, n_bins: int = 15, adaptive: bool = False
) -> ReliabilityCurve:
    """Mean confidence and observed frequency per bin: the data of a reliability diagram.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        n_bins: number of confidence bins (more resolves the curve, but each bin holds fewer samples).
        adaptive: equal-mass bins (each holds about ``N / n_bins`` samples) instead of equal-width ones.
    """
    confidence, outcome = _confidence_and_outcome(scores, target)
    ids, lower, upper = _bin_ids(confidence, n_bins, adaptive)
    count = np.bincount(ids, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(ids, weights=confidence, minlength=n_bins) / count
        mean_outcome = np.bincount(ids, weights=outcome, minlength=n_bins) / count
    return ReliabilityCurve(lower, upper, mean_confidence, mean_outcome, count)


def expected_calibration_error(
    scores: Any, target: Any, *, n_bins: int = 15, norm: Norm = "l1", adaptive: bool = False
) -> float:
    """ECE: the count-weighted gap between confidence and observed frequency over bins.

    ``norm="l1"`` is the usual ECE, ``"l2"`` the root-mean-square calibration error, ``"max"`` the maximum
    calibration error; ``adaptive=True`` uses equal-mass bins (adaptive ECE, Nixon et al. 2019).

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        n_bins: number of confidence bins.
        norm: ``l1`` (ECE), ``l2`` (RMS calibration error) or ``max`` (maximum calibration error).
        adaptive: equal-mass bins instead of equal-width ones.
    """
    if norm not in ("l1", "l2", "max"):
        raise ValueError(f"`norm` must be 'l1', 'l2' or 'max', got {norm!r}.")
    curve = reliability_curve(scores, target, n_bins=n_bins, adaptive=adaptive)
    filled = curve.count > 0
    if not filled.any():
        return float("nan")
    gap = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    weight = curve.count[filled] / curve.count.sum()
    if norm == "l1":
        return float(np.sum(gap * weight))
    if norm == "l2":
        return float(np.sqrt(np.sum(gap**2 * weight)))
    return float(gap.max())


def calibrated_ece_floor(
    scores: Any, *, n_draws: int = 200, n_bins: int = 15, adaptive: bool = False, seed: int = 0
) -> float:
    """The ECE a perfectly calibrated model with these scores would still show on this many samples.

    Labels are drawn from the scores themselves (consistency resampling, Bröcker & Smith 2007) and the mean
    ECE over ``n_draws`` draws is returned. ECE is biased upward on small samples, so a group's ECE close
    to its floor has nothing left for recalibration to remove; the floor of a small group is high.

    Args:
        scores: binary ``[N]`` or ``[N, C]`` probabilities (no labels: they are drawn from these).
        n_draws: label draws averaged (>= 1); more gives a steadier floor.
        n_bins: number of confidence bins (more resolves the curve, but each bin holds fewer samples).
        adaptive: equal-mass bins (each holds about ``N / n_bins`` samples) instead of equal-width ones.
        seed: seed of the draws.
    """
    if n_draws < 1:
        raise ValueError(f"`n_draws` must be at least 1, got {n_draws}.")
    probs = as_scores(scores)
    if len(probs) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_draws):
        if probs.ndim == 1:
            labels = (rng.random(len(probs)) < probs).astype(np.int64)
        else:
            cumulative = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
            labels = np.minimum((rng.random((len(probs), 1)) > cumulative).sum(axis=1), probs.shape[1] - 1)
        values.append(expected_calibration_error(probs, labels, n_bins=n_bins, adaptive=adaptive))
    return float(np.mean(values))


def adaptive_calibration_error(scores: Any, target: Any, *, n_bins: int = 15) -> float:
    """Adaptive ECE: equal-mass bins, so sparse high-confidence regions don't dominate the estimate.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        n_bins: number of equal-mass bins.
    """
    return expected_calibration_error(scores, target, n_bins=n_bins, adaptive=True)


def brier_score(scores: Any, target: Any) -> float:
    """Brier score: ``mean((p - y)^2)`` for ``[N]`` binary scores, ``mean(sum_k (p_k - 1[y=k])^2)`` for ``[N, C]``.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
    """
    probs = as_scores(scores)
    labels = as_labels(target, len(probs))
    if probs.ndim == 1:
        return float(np.mean((probs - labels) ** 2))
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(scores: Any, target: Any) -> float:
    """Mean negative log-probability of the true class (binary cross-entropy for ``[N]`` scores).

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
    """
    probs = probabilities_2d(as_scores(scores))
    labels = as_labels(target, len(probs))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))


def risk_coverage_curve(scores: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``k/N`` and the error rate of the ``k`` most confident predictions, for ``k = 1..N``.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
    """
    probs = probabilities_2d(as_scores(scores))
    labels = as_labels(target, len(probs))
    confidence = probs.max(axis=1)
    errors = (probs.argmax(axis=1) != labels).astype(np.float64)
    order = np.argsort(-confidence, kind="mergesort")
    counts = np.arange(1, len(labels) + 1)
    return counts / len(labels), np.cumsum(errors[order]) / counts


def aurc(scores: Any, target: Any) -> float:
    """Area under the risk-coverage curve (Geifman et al. 2019): lower means confidence ranks errors last.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
    """
    _, risk = risk_coverage_curve(scores, target)
    return float(np.mean(risk)) if len(risk) else float("nan")


def risk_at_coverage(scores: Any, target: Any, coverage: float = 0.8) -> float:
    """Error rate among the ``ceil(coverage · N)`` most confident predictions (selective risk).

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        coverage: share of predictions kept, in (0, 1].
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"`coverage` must be in (0, 1], got {coverage}.")
    _, risk = risk_coverage_curve(scores, target)
    if not len(risk):
        return float("nan")
    return float(risk[max(math.ceil(coverage * len(risk) - 1e-9), 1) - 1])


def uncertainty_metrics(
    scores: Any, target: Any, *, n_bins: int = 15, coverage: float = 0.8
) -> dict[str, float]:
    """Every calibration and selective-prediction metric of this module, as one dict.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        n_bins: number of bins of the calibration errors.
        coverage: the coverage of the selective risk, in (0, 1].
    """
    return {
        "ece": expected_calibration_error(scores, target, n_bins=n_bins),
        "adaptive_ece": adaptive_calibration_error(scores, target, n_bins=n_bins),
        "mce": expected_calibration_error(scores, target, n_bins=n_bins, norm="max"),
        "brier": brier_score(scores, target),
        "nll": negative_log_likelihood(scores, target),
        "aurc": aurc(scores, target),
        f"risk_at_{round(coverage * 100)}_coverage": risk_at_coverage(scores, target, coverage),
    }
