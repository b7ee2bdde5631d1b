"""Subgroup metrics (MEDFAIR's set) as plain functions: per-group tables, gaps, parity differences.

Binary tasks score with the positive-class probability and predict positive when ``score >= threshold``.
Besides a fixed threshold (0.5), MEDFAIR reports fairness at two operating points chosen on the whole
set: ``sens80``, the highest threshold whose overall sensitivity is at least 80%, and ``spec80``, the
lowest threshold whose overall specificity is at least 80%. A rate with an empty denominator in a group
(e.g. TPR in a group with no positives) is NaN and left out of gaps and worst-group values.
The thresholds are exact observed scores and the parity differences are fairlearn's (max − min over groups,
equalised odds = the larger of the TPR and FPR differences), tested equal to fairlearn; MEDFAIR's own code
picks thresholds and scores equalised odds its own way, so its numbers are not reproduced digit for digit.
Multiclass scores (``[N, C]``) get one-vs-rest macro AUROC, accuracy, ECE, Brier and NLL per group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from verticals.core.metrics._arrays import as_labels, as_scores, to_numpy
from verticals.core.metrics.groups import encode_groups
from verticals.core.metrics.uncertainty import (
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)

OPERATING_POINTS = {"sens80": ("sensitivity", 0.8), "spec80": ("specificity", 0.8)}
RATE_COLUMNS = ("tpr", "fpr", "fnr", "tnr", "selection_rate")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (the Mann-Whitney convention)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_block = np.r_[True, ordered[1:] != ordered[:-1]]
    block = np.cumsum(new_block) - 1
    starts = np.flatnonzero(new_block)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + 1 + ends) / 2.0)[block]
    return ranks


def _binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative))


def auroc(scores: Any, target: Any) -> float:
    """ROC AUC: binary from ``[N]`` scores, else macro one-vs-rest over ``[N, C]`` (NaN if a class is absent).

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels (0/1, or class indices).
    """
    probs = as_scores(scores)
    labels = as_labels(target, len(probs))
    if probs.ndim == 1:
        return _binary_auroc(probs, labels == 1)
    per_class = [_binary_auroc(probs[:, k], labels == k) for k in range(probs.shape[1])]
    return float(np.mean(per_class))


def operating_threshold(
    scores: Any, target: Any, *, sensitivity: float | None = None, specificity: float | None = None
) -> float:
    """The threshold reaching a target overall sensitivity (highest such) or specificity (lowest such).

    Args:
        scores: ``[N]`` positive-class scores.
        target: ``[N]`` binary labels.
        sensitivity: the overall sensitivity to reach, in [0, 1] (give this or ``specificity``).
        specificity: the overall specificity to reach, in [0, 1].
    """
    if (sensitivity is None) == (specificity is None):
        raise ValueError("Pass exactly one of `sensitivity` or `specificity`, e.g. sensitivity=0.8.")
    probs = as_scores(scores)
    if probs.ndim != 1:
        raise ValueError(f"Operating points need binary [N] scores, got shape {probs.shape}.")
    labels = as_labels(target, len(probs))
    if sensitivity is not None:
        positives = np.sort(probs[labels == 1])[::-1]
        if not len(positives):
            return float("nan")
        # Predict positive when score >= t: the k-th highest positive score gives sensitivity >= k / P.
        k = int(np.ceil(sensitivity * len(positives) - 1e-9))
        return float(positives[max(k, 1) - 1])
    negatives = np.sort(probs[labels == 0])
    if not len(negatives):
        return float("nan")
    k = int(np.ceil(specificity * len(negatives) - 1e-9))
    # Scores below t are negative: t just above the k-th lowest negative makes >= k of them negative.
    return float(np.nextafter(negatives[max(k, 1) - 1], np.inf))


def confusion_rates(target: Any, predictions: Any) -> dict[str, float]:
    """TPR, FPR, FNR, TNR, selection rate and accuracy of binary predictions (NaN for an empty denominator).

    Args:
        target: ``[N]`` binary labels.
        predictions: ``[N]`` binary predictions (0/1).
    """
    labels = as_labels(target, len(to_numpy(predictions)))
    predicted = as_labels(predictions, len(labels), name="predictions") == 1
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    nan = float("nan")
    return {
        "tpr": tp / n_pos if n_pos else nan,
        "fpr": fp / n_neg if n_neg else nan,
        "fnr": (n_pos - tp) / n_pos if n_pos else nan,
        "tnr": (n_neg - fp) / n_neg if n_neg else nan,
        "selection_rate": float(predicted.mean()) if len(labels) else nan,
        "accuracy": float((predicted == positive).mean()) if len(labels) else nan,
    }


def operating_thresholds(scores: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """``{"": threshold, "sens80": t, "spec80": t}``: the thresholds every binary table is computed at.

    Args:
        scores: ``[N]`` positive-class scores.
        target: ``[N]`` binary labels.
        threshold: the fixed threshold (the ``""`` entry).
    """
    thresholds = {"": float(threshold)}
    for name, (kind, value) in OPERATING_POINTS.items():
        thresholds[name] = operating_threshold(scores, target, **{kind: value})
    return thresholds


def group_table_arrays(
    scores: np.ndarray,
    target: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    thresholds: Mapping[str, float],
    n_bins: int = 15,
) -> dict[str, np.ndarray]:
    """Column name -> ``[G]`` values; the fast core shared by point estimates and bootstrap resamples.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels (0/1, or class indices).
        codes: ``[N]`` integer group codes in ``0..n_groups-1``.
        n_groups: groups (a code with no sample gives a row of NaN and count 0).
        thresholds: operating point name -> threshold (binary scores; see :func:`operating_thresholds`).
        n_bins: bins of the ECE.
    """
    binary = scores.ndim == 1
    columns: dict[str, list[float]] = {}

    def put(name: str, value: float) -> None:
        columns.setdefault(name, []).append(value)

    for group in range(n_groups):
        mask = codes == group
        s, y = scores[mask], target[mask]
        put("count", float(mask.sum()))
        if binary:
            put("positives", float((y == 1).sum()))
            put("prevalence", float((y == 1).mean()) if len(y) else float("nan"))
        put("auroc", auroc(s, y) if len(y) else float("nan"))
        empty = not len(y)
        put("ece", float("nan") if empty else expected_calibration_error(s, y, n_bins=n_bins))
        put("brier", float("nan") if empty else brier_score(s, y))
        put("nll", float("nan") if empty else negative_log_likelihood(s, y))
        if not binary:
            put("accuracy", float((s.argmax(axis=1) == y).mean()) if len(y) else float("nan"))
            continue
        for point, threshold in thresholds.items():
            rates = confusion_rates(y, (s >= threshold).astype(np.int64))
            suffix = f"@{point}" if point else ""
            if not point:
                put("accuracy", rates["accuracy"])
            for name in RATE_COLUMNS:
                put(name + suffix, rates[name])
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def group_metrics(
    scores: Any,
    target: Any,
    groups: Any,
    *,
    group_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    n_bins: int = 15,
) -> pd.DataFrame:
    """Per-group AUROC, accuracy, TPR/FPR/FNR/TNR, selection rate, ECE, Brier, NLL and count.

    Binary tables also hold the rates at the ``sens80`` / ``spec80`` operating points (``tpr@sens80`` …).

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels (0/1, or class indices).
        groups: ``[N]`` group labels.
        group_names: the groups in table order (integer ``groups`` are codes into it; groups absent from
            the data are kept); default: the sorted distinct labels.
        threshold: the fixed decision threshold of binary scores.
        n_bins: bins of the ECE.
    """
    probs = as_scores(scores)
    labels = as_labels(target, len(probs))
    codes, names = encode_groups(groups, group_names)
    if len(codes) != len(labels):
        raise ValueError(f"`groups` has {len(codes)} values but there are {len(labels)} samples.")
    thresholds = operating_thresholds(probs, labels, threshold) if probs.ndim == 1 else {}
    table = group_table_arrays(probs, labels, codes, len(names), thresholds, n_bins)
    frame = pd.DataFrame(table, index=pd.Index(names, name="group"))
    frame["count"] = frame["count"].astype(int)
    return frame


def _between_groups(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.max() - finite.min()) if len(finite) else float("nan")


def _rates_by_group(target: Any, predictions: Any, groups: Any) -> dict[str, np.ndarray]:
    labels = as_labels(target, len(to_numpy(predictions)))
    predicted = as_labels(predictions, len(labels), name="predictions")
    codes, names = encode_groups(groups)
    rates = [confusion_rates(labels[codes == g], predicted[codes == g]) for g in range(len(names))]
    return {name: np.array([r[name] for r in rates]) for name in ("tpr", "fpr", "selection_rate")}


def demographic_parity_difference(target: Any, predictions: Any, groups: Any) -> float:
    """Largest minus smallest selection rate over groups (fairlearn's ``between_groups`` difference).

    Args:
        target: ``[N]`` binary labels.
        predictions: ``[N]`` binary predictions (0/1).
        groups: ``[N]`` group labels (any values; each distinct one is a group).
    """
    return _between_groups(_rates_by_group(target, predictions, groups)["selection_rate"])


def equal_opportunity_difference(target: Any, predictions: Any, groups: Any) -> float:
    """Largest minus smallest true-positive rate over groups.

    Args:
        target: ``[N]`` binary labels.
        predictions: ``[N]`` binary predictions (0/1).
        groups: ``[N]`` group labels (any values; each distinct one is a group).
    """
    return _between_groups(_rates_by_group(target, predictions, groups)["tpr"])


def equalized_odds_difference(target: Any, predictions: Any, groups: Any) -> float:
    """The larger of the TPR and FPR between-group differences (fairlearn's ``worst_case``).

    Args:
        target: ``[N]`` binary labels.
        predictions: ``[N]`` binary predictions (0/1).
        groups: ``[N]`` group labels (any values; each distinct one is a group).
    """
    rates = _rates_by_group(target, predictions, groups)
    return max(_between_groups(rates["tpr"]), _between_groups(rates["fpr"]))


def summarize_groups(per_group: Mapping[str, float], higher_is_better: bool = True) -> dict[str, Any]:
    """Worst and best group, gap (max - min) and ratio (min / max) of any per-group scalar.

    NaN groups (an undefined metric) are left out and listed under ``undefined``.

    Args:
        per_group: group name -> the metric's value.
        higher_is_better: whether a higher value is better (AUROC) or worse (ECE), which picks the worst.
    """
    defined = {name: float(value) for name, value in per_group.items() if not np.isnan(float(value))}
    undefined = sorted(set(per_group) - set(defined))
    if not defined:
        nan = float("nan")
        return {
            "worst": nan,
            "worst_group": None,
            "best": nan,
            "best_group": None,
            "gap": nan,
            "ratio": nan,
            "undefined": undefined,
        }
    pick_worst = min if higher_is_better else max
    pick_best = max if higher_is_better else min
    worst_group = pick_worst(defined, key=defined.__getitem__)
    best_group = pick_best(defined, key=defined.__getitem__)
    low, high = min(defined.values()), max(defined.values())
    return {
        "worst": defined[worst_group],
        "worst_group": worst_group,
        "best": defined[best_group],
        "best_group": best_group,
        "gap": high - low,
        "ratio": low / high if high else float("nan"),
        "undefined": undefined,
    }


def summary_from_table(table: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Worst-group values, gaps and parity differences of one grouping, from its per-group columns.

    Args:
        table: column name -> ``[G]`` values (from :func:`group_table_arrays`).
    """

    def worst(name: str, higher_is_better: bool) -> float:
        values = table[name][~np.isnan(table[name])]
        if not len(values):
            return float("nan")
        return float(values.min() if higher_is_better else values.max())

    def ratio(name: str) -> float:
        values = table[name][~np.isnan(table[name])]
        return float(values.min() / values.max()) if len(values) and values.max() else float("nan")

    summary = {
        "worst_group_auroc": worst("auroc", True),
        "auroc_gap": _between_groups(table["auroc"]),
        "auroc_ratio": ratio("auroc"),
        "worst_group_accuracy": worst("accuracy", True),
        "accuracy_gap": _between_groups(table["accuracy"]),
        "worst_group_ece": worst("ece", False),
        "ece_gap": _between_groups(table["ece"]),
        "worst_group_brier": worst("brier", False),
    }
    if "tpr" not in table:
        return summary
    for point in ("", *OPERATING_POINTS):
        suffix = f"@{point}" if point else ""
        tpr_gap = _between_groups(table["tpr" + suffix])
        fpr_gap = _between_groups(table["fpr" + suffix])
        summary["demographic_parity_difference" + suffix] = _between_groups(table["selection_rate" + suffix])
        summary["demographic_parity_ratio" + suffix] = ratio("selection_rate" + suffix)
        summary["equal_opportunity_difference" + suffix] = tpr_gap
        summary["equalized_odds_difference" + suffix] = max(tpr_gap, fpr_gap)
        summary["worst_group_fnr" + suffix] = worst("fnr" + suffix, False)
        summary["worst_group_fpr" + suffix] = worst("fpr" + suffix, False)
    return summary
