"""SubgroupMetrics streamed over batches equals the functional metrics on the whole set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.core.metrics import SubgroupMetrics, auroc, group_metrics


@pytest.mark.parametrize("classes", [2, 3])
def test_streaming_over_batches_equals_functional(classes):
    generator = torch.Generator().manual_seed(0)
    n = 240
    logits = torch.randn(n, classes, generator=generator)
    target = torch.randint(0, classes, (n,), generator=generator)
    groups = torch.randint(0, 3, (n,), generator=generator)
    probs = logits.softmax(-1)
    metric = SubgroupMetrics(["a", "b", "c"])
    for rows in torch.split(torch.arange(n), 37):
        metric.update(probs[rows], target[rows], groups[rows])
    values = metric.compute()
    scores = probs[:, 1].double() if classes == 2 else probs.double()
    table = group_metrics(scores.float().double(), target, np.array(["a", "b", "c"])[groups.numpy()])
    for name in ("a", "b", "c"):
        assert float(values[f"auroc/{name}"]) == pytest.approx(table.loc[name, "auroc"], abs=1e-6)
        assert float(values[f"ece/{name}"]) == pytest.approx(table.loc[name, "ece"], abs=1e-6)
        assert float(values[f"count/{name}"]) == table.loc[name, "count"]
    assert float(values["worst_group_auroc"]) == pytest.approx(table["auroc"].min(), abs=1e-6)
    assert float(values["auroc_gap"]) == pytest.approx(table["auroc"].max() - table["auroc"].min(), abs=1e-6)
    assert float(values["auroc"]) == pytest.approx(auroc(scores, target), abs=1e-6)
    assert ("equalized_odds_difference" in values) == (classes == 2)
    metric.reset()
    assert not metric.update_called


def test_bad_group_codes_are_rejected():
    metric = SubgroupMetrics(2)
    with pytest.raises(ValueError, match="0..1"):
        metric.update(torch.rand(3), torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="one entry per sample"):
        metric.update(torch.rand(3), torch.tensor([0, 1]), torch.tensor([0, 1, 1]))


def test_full_streaming_has_every_rate_and_operating_point_of_the_functional_table():
    from verticals.core.metrics.fairness import group_table_arrays, operating_thresholds, summary_from_table

    generator = torch.Generator().manual_seed(1)
    n = 300
    target = torch.randint(0, 2, (n,), generator=generator)
    groups = torch.randint(0, 2, (n,), generator=generator)
    scores = (0.3 * target + 0.7 * torch.rand(n, generator=generator)).clamp(0, 1)
    metric = SubgroupMetrics(["F", "M"], full=True)
    for rows in torch.split(torch.arange(n), 64):
        metric.update(scores[rows], target[rows], groups[rows])
    values = metric.compute()
    s, y, g = scores.double().numpy(), target.numpy(), groups.numpy()
    table = group_table_arrays(s, y, g, 2, operating_thresholds(s, y, 0.5), 15)
    summary = summary_from_table(table)
    for column in ("tpr", "fpr", "fnr", "selection_rate", "brier", "tpr@sens80", "fpr@spec80"):
        for index, name in enumerate(("F", "M")):
            assert float(values[f"{column}/{name}"]) == pytest.approx(table[column][index], abs=1e-6), column
    for name in ("equalized_odds_difference@sens80", "equal_opportunity_difference@spec80", "auroc_ratio"):
        assert float(values[name]) == pytest.approx(summary[name], abs=1e-6), name
    brief = SubgroupMetrics(["F", "M"])
    brief.update(scores, target, groups)
    assert "tpr/F" not in brief.compute() and set(brief.compute()) < set(values)
