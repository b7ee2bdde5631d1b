"""Report figures render to PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest

from verticals.core.metrics import (
    fairness_report,
    plot_group_metric,
    plot_reliability_diagram,
    reliability_curve,
)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_group_bars_with_ci_and_reliability_diagram_render():
    rng = np.random.default_rng(0)
    scores, target = rng.random(200), rng.integers(0, 2, 200)
    sex = rng.choice(["F", "M"], 200)
    report = fairness_report(scores, target, {"sex": sex}, n_bootstrap=20)
    figure = plot_group_metric(report.table, "auroc", grouping="sex")
    assert _png(figure).startswith(b"\x89PNG")
    assert len(figure.axes[0].patches) == 2
    curves = {name: reliability_curve(scores[sex == name], target[sex == name]) for name in ("F", "M")}
    diagram = plot_reliability_diagram(curves)
    assert _png(diagram).startswith(b"\x89PNG") and len(diagram.axes[0].lines) == 3
    with pytest.raises(KeyError, match="not in the table"):
        plot_group_metric(report.table, "nope", grouping="sex")
