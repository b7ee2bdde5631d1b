"""``fairness_report``: per-group metrics with bootstrap CIs for each attribute and their intersection.

``write_fairness_files`` adds calibration per group and writes the report a classifier's test leaves
behind (``fairness.json``, ``fairness.md``, ``fairness_<metric>_<grouping>.png``, ``reliability.png``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from verticals.core.metrics._arrays import as_labels, as_scores
from verticals.core.metrics.bootstrap import bootstrap_indices, percentile_interval
from verticals.core.metrics.fairness import (
    auroc,
    group_table_arrays,
    operating_thresholds,
    summary_from_table,
)
from verticals.core.metrics.groups import INTERSECTION_SEPARATOR, encode_groups, intersect
from verticals.core.metrics.plots import plot_group_metric, plot_reliability_diagram
from verticals.core.metrics.uncertainty import (
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    uncertainty_metrics,
)

_NO_INTERVAL = ("count", "positives")
_MARKDOWN_COLUMNS = ("count", "prevalence", "auroc", "accuracy", "tpr", "fpr", "fnr", "ece", "brier")
_MARKDOWN_SUMMARY = (
    "worst_group_auroc",
    "auroc_gap",
    "auroc_best_minus_worst",
    "worst_group_accuracy",
    "worst_group_ece",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "equalized_odds_difference@sens80",
    "equalized_odds_difference@spec80",
)


@dataclasses.dataclass
class FairnessResults:
    """What ``fairness_report`` found.

    ``table``: one row per (grouping, group) with each metric and its ``_low`` / ``_high`` CI columns.
    ``summary``: grouping -> metric -> ``{"value", "low", "high"}`` (worst-group values, gaps, parity
    differences at 0.5 and at the ``sens80`` / ``spec80`` operating points). ``overall``: the same shape for
    the whole set. ``thresholds``: the operating points found on the whole set. ``extremes``: grouping ->
    metric -> the ``worst`` and ``best`` group on the whole set.

    A between-group gap (max - min) is never negative and is biased upwards by noise, so its CI never
    contains zero. To test whether a gap is real, read ``<metric>_best_minus_worst``: the difference between
    the groups that are best and worst on the whole set, re-measured in each resample, which can turn
    negative; a CI above zero says the gap is not a resampling artefact.

    Attributes:
        table: one row per (grouping, group), each metric with its ``_low`` / ``_high`` CI columns.
        summary: grouping -> metric -> ``{"value", "low", "high"}``.
        overall: metric -> ``{"value", "low", "high"}`` on the whole set.
        thresholds: the operating points found on the whole set (``default``, ``sens80``, ``spec80``).
        n_bootstrap: bootstrap resamples behind the CIs (0: no CIs).
        confidence: the CIs' level.
        extremes: grouping -> metric -> the ``worst`` and ``best`` group's name.
    """

    table: pd.DataFrame
    summary: dict[str, dict[str, dict[str, float]]]
    overall: dict[str, dict[str, float]]
    thresholds: dict[str, float]
    n_bootstrap: int
    confidence: float
    extremes: dict[str, dict[str, dict[str, str]]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes ``None``."""
        rows = self.table.reset_index().to_dict(orient="records")
        return _json_safe(
            {
                "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence,
                "thresholds": self.thresholds,
                "extremes": self.extremes,
                "overall": self.overall,
                "summary": self.summary,
                "groups": rows,
            }
        )

    def to_markdown(self) -> str:
        """Tables a person reads: overall metrics, each grouping's summary and per-group rows, with CIs."""
        level = f"{round(self.confidence * 100)}%"
        lines = [
            f"## Overall (bootstrap {level} CI, {self.n_bootstrap} resamples)",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {name} | {_format_ci(entry)} |" for name, entry in self.overall.items()]
        for grouping, summary in self.summary.items():
            lines += ["", f"## {grouping}", ""]
            auroc_extremes = self.extremes.get(grouping, {}).get("auroc")
            if auroc_extremes:
                lines += [f"Worst AUROC: {auroc_extremes['worst']}; best: {auroc_extremes['best']}.", ""]
            lines += ["| summary | value |", "|---|---|"]
            lines += [
                f"| {name} | {_format_ci(summary[name])} |" for name in _MARKDOWN_SUMMARY if name in summary
            ]
            rows = self.table.xs(grouping, level="grouping")
            columns = [name for name in _MARKDOWN_COLUMNS if name in rows.columns]
            lines += ["", "| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
            for group, row in rows.iterrows():
                cells = [
                    f"{int(row[name])}"
                    if name in _NO_INTERVAL
                    else _format_ci(
                        {"value": row[name], "low": row.get(f"{name}_low"), "high": row.get(f"{name}_high")}
                    )
                    for name in columns
                ]
                lines.append(f"| {group} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _format_ci(entry: Mapping[str, Any]) -> str:
    value, low, high = (entry.get(key) for key in ("value", "low", "high"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if low is None or high is None or math.isnan(float(low)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    return value


def _overall(
    scores: np.ndarray, target: np.ndarray, thresholds: Mapping[str, float], n_bins: int
) -> dict[str, float]:
    values = {
        "auroc": auroc(scores, target),
        "ece": expected_calibration_error(scores, target, n_bins=n_bins),
        "brier": brier_score(scores, target),
        "nll": negative_log_likelihood(scores, target),
    }
    if scores.ndim == 1:
        predicted = scores >= thresholds[""]
        values["accuracy"] = float((predicted == (target == 1)).mean())
        for point, threshold in thresholds.items():
            if point:
                values[f"threshold@{point}"] = threshold
    else:
        values["accuracy"] = float((scores.argmax(axis=1) == target).mean())
    return values


def fairness_report(
    scores: Any,
    target: Any,
    groups: Mapping[str, Any],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    intersectional: bool = True,
    threshold: float = 0.5,
    n_bins: int = 15,
    seed: int = 0,
    group_names: Mapping[str, Sequence[str]] | None = None,
) -> FairnessResults:
    """Per-group metrics, worst-group values, gaps and parity differences, each with a bootstrap CI.

    ``groups`` maps attribute names to per-sample values (``{"sex": [...], "age_band": [...]}``). Each
    attribute is a grouping; with ``intersectional`` and two or more attributes, their intersection
    (``"sex=F & age_band=60+"``) is one more. Resamples are drawn within the intersectional cells, so
    every group keeps its size; the operating-point thresholds are re-found in each resample.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        groups: attribute -> its ``[N]`` per-sample values (``{"sex": [...], "age_band": [...]}``).
        n_bootstrap: resamples behind the CIs (0: point values only, NaN bounds).
        confidence: the CIs' level, in (0, 1).
        intersectional: with two or more attributes, also report their intersection.
        threshold: the fixed decision threshold of binary scores.
        n_bins: bins of the ECE.
        seed: seed of the resamples.
        group_names: attribute -> its categories in table order; default: sorted values.
    """
    probs = as_scores(scores)
    labels = as_labels(target, len(probs))
    if not groups:
        raise ValueError("`groups` is empty: pass at least one attribute, e.g. {'sex': sex_values}.")
    groupings: dict[str, tuple[np.ndarray, list[str]]] = {}
    for attribute, values in groups.items():
        codes, names = encode_groups(values, (group_names or {}).get(attribute))
        if len(codes) != len(labels):
            raise ValueError(
                f"Attribute {attribute!r} has {len(codes)} values but there are {len(labels)} samples."
            )
        groupings[attribute] = (codes, names)
    cells = intersect(groups)
    if intersectional and len(groups) > 1:
        groupings[INTERSECTION_SEPARATOR.join(groups)] = encode_groups(cells)

    def evaluate(
        rows: np.ndarray | None,
    ) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
        s, y = (probs, labels) if rows is None else (probs[rows], labels[rows])
        thresholds = operating_thresholds(s, y, threshold) if s.ndim == 1 else {}
        tables, summaries = {}, {}
        for name, (codes, names) in groupings.items():
            c = codes if rows is None else codes[rows]
            tables[name] = group_table_arrays(s, y, c, len(names), thresholds, n_bins)
            summaries[name] = summary_from_table(tables[name])
        return _overall(s, y, thresholds, n_bins), tables, summaries

    overall, tables, summaries = evaluate(None)
    extremes = {name: _extremes(tables[name]) for name in groupings}

    def paired(table: Mapping[str, np.ndarray], grouping: str) -> dict[str, float]:
        return {
            f"{metric}_best_minus_worst": _signed(metric, table[metric][best] - table[metric][worst])
            for metric, (worst, best) in extremes[grouping].items()
        }

    for name in groupings:
        summaries[name].update(paired(tables[name], name))
    resamples = (
        [evaluate(rows) for rows in bootstrap_indices(len(labels), n_bootstrap, seed=seed, strata=cells)]
        if n_bootstrap > 0
        else []
    )
    for _, sample_tables, sample_summaries in resamples:
        for name in groupings:
            sample_summaries[name].update(paired(sample_tables[name], name))

    def interval(values: list[float]) -> tuple[float, float]:
        return percentile_interval(np.asarray(values), confidence) if values else (float("nan"), float("nan"))

    def with_ci(point: Mapping[str, float], pick: Any) -> dict[str, dict[str, float]]:
        result = {}
        for key, value in point.items():
            low, high = interval([pick(sample)[key] for sample in resamples])
            result[key] = {"value": float(value), "low": low, "high": high}
        return result

    overall_ci = with_ci(overall, lambda sample: sample[0])
    summary_ci = {name: with_ci(summaries[name], lambda sample, n=name: sample[2][n]) for name in groupings}
    rows = []
    for name, (_, names) in groupings.items():
        table = tables[name]
        for index, group in enumerate(names):
            row: dict[str, Any] = {"grouping": name, "group": group}
            for column, values in table.items():
                row[column] = values[index]
                if column not in _NO_INTERVAL:
                    low, high = interval([sample[1][name][column][index] for sample in resamples])
                    row[f"{column}_low"], row[f"{column}_high"] = low, high
            rows.append(row)
    frame = pd.DataFrame(rows).set_index(["grouping", "group"])
    for column in _NO_INTERVAL:
        if column in frame:
            frame[column] = frame[column].astype(int)
    thresholds = operating_thresholds(probs, labels, threshold) if probs.ndim == 1 else {}
    return FairnessResults(
        table=frame,
        summary=summary_ci,
        overall=overall_ci,
        thresholds={(name or "default"): value for name, value in thresholds.items()},
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        extremes={
            grouping: {
                metric: {"worst": groupings[grouping][1][worst], "best": groupings[grouping][1][best]}
                for metric, (worst, best) in found.items()
            }
            for grouping, found in extremes.items()
        },
    )


_HIGHER_IS_BETTER = {"auroc": True, "accuracy": True, "ece": False}


def _signed(metric: str, difference: float) -> float:
    """Best minus worst, oriented so that a positive value means the best group really is better."""
    return float(difference if _HIGHER_IS_BETTER[metric] else -difference)


def _extremes(table: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """Metric -> (worst, best) group index on the whole set, for metrics defined in two or more groups."""
    found = {}
    for metric, higher_is_better in _HIGHER_IS_BETTER.items():
        values = table[metric]
        if np.sum(~np.isnan(values)) < 2:
            continue
        low, high = int(np.nanargmin(values)), int(np.nanargmax(values))
        found[metric] = (low, high) if higher_is_better else (high, low)
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace(" & ", "_x_")).strip("_")


def uncertainty_by_group(
    scores: np.ndarray, target: np.ndarray, groups: Mapping[str, np.ndarray], *, n_bins: int = 15
) -> dict[str, Any]:
    """Calibration and selective-prediction metrics overall and per group of every attribute.

    Args:
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        groups: attribute -> its ``[N]`` per-sample values (``{"sex": [...], "age_band": [...]}``).
        n_bins: bins of the calibration errors.
    """
    result: dict[str, Any] = {"overall": uncertainty_metrics(scores, target, n_bins=n_bins)}
    for attribute, values in groups.items():
        codes, names = encode_groups(values)
        result[attribute] = {
            name: uncertainty_metrics(scores[codes == index], target[codes == index], n_bins=n_bins)
            for index, name in enumerate(names)
        }
    return result


def write_fairness_files(
    directory: Path,
    scores: np.ndarray,
    target: np.ndarray,
    groups: Mapping[str, np.ndarray],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    group_names: Mapping[str, Sequence[str]] | None = None,
) -> FairnessResults:
    """Compute the fairness report and uncertainty metrics and write the JSON, markdown and PNG files.

    Args:
        directory: the folder to write (created if missing): ``fairness.json``, ``fairness.md``,
            ``fairness_<metric>_<grouping>.png`` and ``reliability.png``.
        scores: binary ``[N]`` positive-class probabilities, or ``[N, C]`` class probabilities.
        target: ``[N]`` labels.
        groups: attribute -> its ``[N]`` per-sample values (``{"sex": [...], "age_band": [...]}``).
        n_bootstrap: resamples behind the CIs (0: none).
        seed: seed of the resamples.
        n_bins: bins of the calibration errors and the reliability diagram.
        group_names: attribute -> its categories in table order; default: sorted values.
    """
    directory.mkdir(parents=True, exist_ok=True)
    results = fairness_report(
        scores, target, groups, n_bootstrap=n_bootstrap, seed=seed, group_names=group_names
    )
    uncertainty = uncertainty_by_group(scores, target, groups, n_bins=n_bins)
    payload = {"fairness": results.to_dict(), "uncertainty": uncertainty}
    (directory / "fairness.json").write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    lines = ["# Fairness and calibration report", "", results.to_markdown(), "## Calibration per group", ""]
    columns = list(uncertainty["overall"])
    lines += ["| attribute | group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    lines.append("| all | all | " + " | ".join(f"{uncertainty['overall'][c]:.4f}" for c in columns) + " |")
    for attribute in groups:
        for group, values in uncertainty[attribute].items():
            lines.append(
                f"| {attribute} | {group} | " + " | ".join(f"{values[c]:.4f}" for c in columns) + " |"
            )
    (directory / "fairness.md").write_text("\n".join(lines) + "\n")
    for grouping in results.summary:
        for metric in ("auroc", "ece"):
            figure = plot_group_metric(results.table, metric, grouping=grouping)
            figure.savefig(directory / f"fairness_{metric}_{_slug(grouping)}.png", dpi=110)
    first, values = next(iter(groups.items()))
    codes, names = encode_groups(values, (group_names or {}).get(first))
    curves = {"all": reliability_curve(scores, target, n_bins=n_bins)}
    curves.update(
        {
            f"{first}={name}": reliability_curve(scores[codes == i], target[codes == i], n_bins=n_bins)
            for i, name in enumerate(names)
            if (codes == i).any()
        }
    )
    plot_reliability_diagram(curves, title=f"Reliability by {first}").savefig(
        directory / "reliability.png", dpi=110
    )
    return results
