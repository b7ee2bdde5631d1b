"""Subgroup metrics against fairlearn (MetricFrame and its metric functions) and scikit-learn, to 1e-6."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as fl
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from verticals.core.metrics import (
    auroc,
    confusion_rates,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    group_metrics,
    intersect,
    operating_threshold,
    summarize_groups,
)
from verticals.core.metrics.fairness import summary_from_table


def _data(seed: int, n: int = 600):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    sex = rng.choice(["F", "M"], n)
    age = rng.choice(["<40", "40-60", "60+"], n)
    # Rounded scores create ties, which AUROC and thresholds must handle like scikit-learn.
    scores = np.round(np.clip(rng.random(n) * 0.7 + 0.25 * target * (sex == "M"), 0, 1), 2)
    return scores, target, sex, age


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intersectional_group_metrics_equal_fairlearn_metric_frame(seed):
    scores, target, sex, age = _data(seed)
    threshold = operating_threshold(scores, target, sensitivity=0.8)
    ours = group_metrics(scores, target, intersect({"sex": sex, "age": age}))
    features = pd.DataFrame({"sex": sex, "age": age})
    for suffix, cut in (("", 0.5), ("@sens80", threshold)):
        predictions = (scores >= cut).astype(int)
        frame = fl.MetricFrame(
            metrics={
                "tpr": fl.true_positive_rate,
                "fpr": fl.false_positive_rate,
                "fnr": fl.false_negative_rate,
                "tnr": fl.true_negative_rate,
                "selection_rate": fl.selection_rate,
                "accuracy": accuracy_score,
                "count": fl.count,
            },
            y_true=target,
            y_pred=predictions,
            sensitive_features=features,
        )
        for (s, a), row in frame.by_group.iterrows():
            mine = ours.loc[f"sex={s} & age={a}"]
            for name in ("tpr", "fpr", "fnr", "tnr", "selection_rate"):
                assert mine[name + suffix] == pytest.approx(row[name], abs=1e-6)
            if not suffix:
                assert mine["accuracy"] == pytest.approx(row["accuracy"], abs=1e-6)
                assert mine["count"] == row["count"]
    by_score = fl.MetricFrame(
        metrics={"auroc": roc_auc_score, "brier": brier_score_loss},
        y_true=target,
        y_pred=scores,
        sensitive_features=features,
    )
    for (s, a), row in by_score.by_group.iterrows():
        assert ours.loc[f"sex={s} & age={a}", "auroc"] == pytest.approx(row["auroc"], abs=1e-6)
        assert ours.loc[f"sex={s} & age={a}", "brier"] == pytest.approx(row["brier"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_parity_differences_equal_fairlearn_for_one_and_crossed_attributes(seed):
    scores, target, sex, age = _data(seed)
    crossed = pd.DataFrame({"sex": sex, "age": age})
    for cut in (0.5, operating_threshold(scores, target, specificity=0.8)):
        predictions = (scores >= cut).astype(int)
        for ours_groups, their_groups in ((sex, sex), (intersect({"sex": sex, "age": age}), crossed)):
            assert demographic_parity_difference(target, predictions, ours_groups) == pytest.approx(
                fl.demographic_parity_difference(target, predictions, sensitive_features=their_groups),
                abs=1e-6,
            )
            assert equal_opportunity_difference(target, predictions, ours_groups) == pytest.approx(
                fl.equal_opportunity_difference(target, predictions, sensitive_features=their_groups),
                abs=1e-6,
            )
            assert equalized_odds_difference(target, predictions, ours_groups) == pytest.approx(
                fl.equalized_odds_difference(target, predictions, sensitive_features=their_groups), abs=1e-6
            )


def test_summary_differences_match_the_functions_at_each_operating_point():
    scores, target, sex, _ = _data(4)
    table = group_metrics(scores, target, sex)
    summary = summary_from_table({name: table[name].to_numpy(float) for name in table.columns})
    for suffix, cut in (
        ("", 0.5),
        ("@sens80", operating_threshold(scores, target, sensitivity=0.8)),
        ("@spec80", operating_threshold(scores, target, specificity=0.8)),
    ):
        predictions = (scores >= cut).astype(int)
        assert summary["equalized_odds_difference" + suffix] == pytest.approx(
            fl.equalized_odds_difference(target, predictions, sensitive_features=sex), abs=1e-12
        )
        assert summary["demographic_parity_ratio" + suffix] == pytest.approx(
            fl.demographic_parity_ratio(target, predictions, sensitive_features=sex), abs=1e-12
        )
    assert summary["worst_group_auroc"] == pytest.approx(table["auroc"].min())
    assert summary["auroc_gap"] == pytest.approx(table["auroc"].max() - table["auroc"].min())


def test_operating_thresholds_reach_the_target_rates():
    scores, target, _, _ = _data(5)
    sens = operating_threshold(scores, target, sensitivity=0.8)
    assert confusion_rates(target, scores >= sens)["tpr"] >= 0.8
    assert confusion_rates(target, scores > sens)["tpr"] < 0.8  # the highest such threshold
    spec = operating_threshold(scores, target, specificity=0.8)
    assert confusion_rates(target, scores >= spec)["tnr"] >= 0.8
    with pytest.raises(ValueError, match="exactly one"):
        operating_threshold(scores, target)


def test_multiclass_auroc_is_sklearn_macro_one_vs_rest_per_group():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=400)
    target = rng.integers(0, 4, 400)
    groups = rng.choice(["a", "b"], 400)
    assert auroc(probs, target) == pytest.approx(roc_auc_score(target, probs, multi_class="ovr"), abs=1e-9)
    table = group_metrics(probs, target, groups)
    for name in ("a", "b"):
        rows = groups == name
        expected = roc_auc_score(target[rows], probs[rows], multi_class="ovr", labels=[0, 1, 2, 3])
        assert table.loc[name, "auroc"] == pytest.approx(expected, abs=1e-9)
        assert table.loc[name, "accuracy"] == pytest.approx(
            accuracy_score(target[rows], probs[rows].argmax(1))
        )
    assert "tpr" not in table


def test_two_column_probabilities_score_like_the_positive_column():
    scores, target, sex, _ = _data(6)
    two = np.stack([1 - scores, scores], axis=1)
    pd.testing.assert_frame_equal(group_metrics(two, target, sex), group_metrics(scores, target, sex))


def test_undefined_group_auroc_is_nan_and_left_out_of_summaries():
    table = group_metrics([0.2, 0.8, 0.6, 0.7], [0, 1, 1, 1], ["a", "a", "b", "b"])
    assert np.isnan(table.loc["b", "auroc"]) and table.loc["a", "auroc"] == 1.0
    summary = summarize_groups(table["auroc"].to_dict(), higher_is_better=True)
    assert summary["worst_group"] == "a" and summary["undefined"] == ["b"] and summary["gap"] == 0.0


def test_summarize_groups_orients_worst_by_direction():
    per_group = {"F": 0.10, "M": 0.04, "X": 0.07}
    lower = summarize_groups(per_group, higher_is_better=False)
    assert lower["worst_group"] == "F" and lower["best_group"] == "M"
    assert lower["gap"] == pytest.approx(0.06) and lower["ratio"] == pytest.approx(0.4)
    assert summarize_groups(per_group)["worst_group"] == "M"


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="3 values but there are 2"):
        group_metrics([0.1, 0.9], [0, 1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="integer class labels"):
        auroc([0.1, 0.9], [0.5, 1.0])
