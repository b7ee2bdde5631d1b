"""Figures for fairness and calibration reports: per-group bars with CI whiskers, reliability diagrams.

They build ``matplotlib.figure.Figure`` objects directly (no pyplot state), so callbacks can save them
from any process and notebooks display them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from verticals.core.metrics.uncertainty import ReliabilityCurve


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def plot_group_metric(
    table: pd.DataFrame, metric: str = "auroc", *, grouping: str | None = None, ax: Axes | None = None
) -> Figure:
    """Bars of ``metric`` per group with CI whiskers from the ``<metric>_low`` / ``<metric>_high`` columns.

    ``table`` is ``FairnessResults.table`` (choose a ``grouping``) or any frame indexed by group.

    Args:
        table: per-group metrics (``FairnessResults.table``, or any frame indexed by group).
        metric: the column to plot (``auroc``, ``ece``, ``tpr`` …).
        grouping: the grouping to plot (an attribute, or the intersection) of a ``FairnessResults.table``;
            None for a frame indexed by group alone.
        ax: draw into these axes; None makes a new figure.
    """
    if grouping is not None:
        table = table.xs(grouping, level="grouping")
    if metric not in table.columns:
        raise KeyError(f"Metric {metric!r} is not in the table; columns are {sorted(table.columns)}.")
    values = table[metric].to_numpy(dtype=float)
    figure, ax = _axes(ax, (max(4.0, 0.9 * len(values) + 2.0), 3.2))
    positions = np.arange(len(values))
    error = None
    if f"{metric}_low" in table.columns:
        low = table[f"{metric}_low"].to_numpy(dtype=float)
        high = table[f"{metric}_high"].to_numpy(dtype=float)
        error = np.nan_to_num(np.stack([values - low, high - values]).clip(min=0.0))
    ax.bar(positions, np.nan_to_num(values), yerr=error, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(positions, [str(name) for name in table.index], rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {grouping or 'group'}" + (" (95% CI)" if error is not None else ""))
    finite = values[~np.isnan(values)]
    if len(finite) and metric in ("auroc", "accuracy", "tpr", "fpr", "fnr", "tnr", "selection_rate"):
        ax.set_ylim(0.0, 1.05)
    return figure


def plot_reliability_diagram(
    curves: ReliabilityCurve | Mapping[str, ReliabilityCurve],
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Observed frequency against mean confidence per bin, one line per curve, with the diagonal.

    Args:
        curves: one :class:`ReliabilityCurve`, or a label -> curve mapping (e.g. one per group).
        ax: draw into these axes; None makes a new figure.
        title: the panel's title (default "Reliability diagram").
    """
    if isinstance(curves, ReliabilityCurve):
        curves = {"model": curves}
    figure, ax = _axes(ax, (4.2, 4.0))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, curve in curves.items():
        filled = curve.count > 0
        ax.plot(curve.confidence[filled], curve.accuracy[filled], marker="o", markersize=3, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (confidence)")
    ax.set_ylabel("observed frequency (accuracy)")
    ax.set_title(title or "Reliability diagram")
    ax.legend(fontsize="small", loc="upper left")
    return figure
