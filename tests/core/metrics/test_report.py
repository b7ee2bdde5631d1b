"""fairness_report: consistent with the functional metrics, CIs that find a planted gap, JSON/markdown output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verticals.core.metrics import fairness_report, group_metrics, intersect


def _planted(n: int = 800, gap: float = 0.35, seed: int = 0):
    """Scores separate the classes well for sex=M and poorly for sex=F; age carries no signal."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    sex = rng.choice(["F", "M"], n)
    age = rng.choice(["<40", "40-60", "60+"], n)
    separation = np.where(sex == "M", 0.4, 0.4 - gap)
    scores = np.clip(0.3 + separation * target + rng.normal(0, 0.15, n), 0, 1)
    return scores, target, {"sex": sex, "age": age}


def test_point_estimates_equal_group_metrics_for_each_grouping():
    scores, target, groups = _planted()
    report = fairness_report(scores, target, groups, n_bootstrap=0)
    assert list(report.summary) == ["sex", "age", "sex & age"]
    for grouping, labels in (("sex", groups["sex"]), ("sex & age", intersect(groups))):
        expected = group_metrics(scores, target, labels)
        got = report.table.xs(grouping, level="grouping")
        for column in ("auroc", "tpr@sens80", "ece", "selection_rate@spec80"):
            np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float))
    assert report.summary["sex"]["auroc_gap"]["value"] == pytest.approx(
        abs(report.table.loc[("sex", "F"), "auroc"] - report.table.loc[("sex", "M"), "auroc"])
    )


def test_planted_gap_has_a_ci_above_zero_and_no_gap_a_ci_around_zero():
    scores, target, groups = _planted()
    report = fairness_report(scores, target, groups, n_bootstrap=150, intersectional=False)
    planted = report.summary["sex"]["auroc_best_minus_worst"]
    assert report.extremes["sex"]["auroc"] == {"worst": "F", "best": "M"}
    assert planted["low"] > 0.1 and planted["low"] <= planted["value"] <= planted["high"]
    none = report.summary["age"]["auroc_best_minus_worst"]
    assert none["low"] < 0 < none["high"]  # age carries no signal: the best/worst split is noise
    low, high = report.table.loc[("sex", "F"), ["auroc_low", "auroc_high"]]
    assert low < report.table.loc[("sex", "F"), "auroc"] < high


def test_to_dict_is_json_safe_and_markdown_lists_groups():
    scores, target, groups = _planted(n=200)
    groups["sex"][:3] = "X"  # a tiny group: some statistics become NaN
    report = fairness_report(scores, target, groups, n_bootstrap=20)
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert "sex=X & age" in text and "equalized_odds_difference@sens80" in text
    markdown = report.to_markdown()
    assert "| F |" in markdown and "## sex & age" in markdown and "Worst AUROC" in markdown


def test_group_names_fix_the_order_and_bad_attributes_are_named():
    scores, target, groups = _planted(n=100)
    report = fairness_report(
        scores, target, {"sex": groups["sex"]}, n_bootstrap=0, group_names={"sex": ["M", "F"]}
    )
    assert report.table.xs("sex", level="grouping").index.tolist() == ["M", "F"]
    with pytest.raises(ValueError, match="Attribute 'age' has 3 values"):
        fairness_report(scores, target, {"age": ["a", "b", "c"]}, n_bootstrap=0)
