"""The figures of a run report, drawn from plain arrays: learning curve, confusion matrix, bars with CIs,
segmentation overlays and forecasts.

Each function builds a ``matplotlib.figure.Figure`` directly (no pyplot state, the Agg canvas), so a
callback can save it from any process and a notebook can display it as it is. What to draw for which task,
and the numbers behind the bars, are chosen in :mod:`verticals.core.report_figures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

#: Figures are saved at this resolution: sharp on a screen, small on disk.
DPI = 100


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def plot_learning_curve(
    steps: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    metric: str | None = None,
    monitor: str | None = None,
    best_epoch: int | None = None,
) -> Figure:
    """Losses against the step (left) and ``metric`` against the epoch (right, when given).

    Args:
        steps: one row per optimizer step (index ``step``), columns such as ``train_loss_step``.
        epochs: one row per epoch (index ``epoch``), with a ``step`` column (the step each epoch's values were
            logged at) and columns such as ``train_loss_epoch``, ``val_loss``, ``val_accuracy``.
        metric: the epoch-level metric of the right panel (``val_accuracy``); its ``train_`` twin is drawn
            beside it when logged. None draws the losses alone.
        monitor: the metric the tested checkpoint was picked on, named in the title when it is not ``metric``.
        best_epoch: the epoch whose checkpoint was tested, marked on the right panel.
    """
    panels = 2 if metric is not None else 1
    width = 5.2 * panels
    figure = Figure(figsize=(width, 3.6))
    # Fixed margins: the labels are known and short, and a layout engine would double the drawing time.
    figure.subplots_adjust(
        left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / 3.6, top=1 - 0.35 / 3.6, wspace=0.28
    )
    axes = figure.subplots(1, panels, squeeze=False)[0]
    loss_ax = axes[0]
    if "train_loss_step" in steps:
        series = steps["train_loss_step"].dropna()
        loss_ax.plot(
            series.index, series.to_numpy(), color="tab:blue", alpha=0.35, linewidth=1, label="train (step)"
        )
    at = epochs["step"] if "step" in epochs else pd.Series(epochs.index, index=epochs.index)
    for column, color, label in (
        ("train_loss_epoch", "tab:blue", "train (epoch mean)"),
        ("train_loss", "tab:blue", "train (epoch mean)"),
        ("val_loss", "tab:orange", "validation"),
    ):
        if column in epochs:
            values = epochs[column]
            kept = values.notna()
            loss_ax.plot(at[kept], values[kept], marker="o", markersize=3, color=color, label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(fontsize="small")
    if metric is not None:
        ax = axes[1]
        name = metric.removeprefix("val_")
        for column, color, label in (
            (f"train_{name}", "tab:blue", "train"),
            (metric, "tab:orange", "validation"),
        ):
            if column in epochs:
                values = epochs[column]
                kept = values.notna()
                ax.plot(values.index[kept], values[kept], marker="o", markersize=3, color=color, label=label)
        if best_epoch is not None:
            ax.axvline(
                best_epoch, color="grey", linestyle=":", linewidth=1, label=f"tested (epoch {best_epoch})"
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(
            name if monitor in (None, metric) else f"{name} (the checkpoint was picked on {monitor})"
        )
        ax.legend(fontsize="small")
        if len(epochs.index) and len(epochs.index) <= 12:
            ax.set_xticks(list(epochs.index))
    return figure


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts (left) and the row-normalised matrix (right: each true class's share of predictions, its
    diagonal the per-class recall), true classes in rows.

    Args:
        matrix: ``[K, K]`` counts, ``matrix[true, predicted]``.
        class_names: one name per class, in index order.
    """
    matrix = np.asarray(matrix, dtype=float)
    count = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    side = min(max(3.6, 0.34 * count + 2.2), 14.0)
    figure = Figure(figsize=(2 * side + 0.8, side), layout="constrained")
    axes = figure.subplots(1, 2)
    annotate = count <= 12
    for ax, values, title, number in (
        (axes[0], matrix, "Counts", "{:.0f}"),
        (axes[1], normalised, "Share of each true class", "{:.2f}"),
    ):
        top = max(values.max(), 1e-12) if title == "Counts" else 1.0
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        if not annotate:  # the numbers in the cells say it otherwise
            figure.colorbar(image, ax=ax, shrink=0.8)
        ticks = np.arange(count)
        size = "small" if count <= 12 else "xx-small"
        ax.set_xticks(ticks, [str(name) for name in class_names], rotation=45, ha="right", fontsize=size)
        ax.set_yticks(ticks, [str(name) for name in class_names], fontsize=size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if annotate:
            limit = top / 2  # white numbers on the darker half of the colour scale
            for row in range(count):
                for column in range(count):
                    ax.text(
                        column,
                        row,
                        number.format(values[row, column]),
                        ha="center",
                        va="center",
                        fontsize="small",
                        color="white" if values[row, column] > limit else "black",
                    )
    return figure


def plot_intervals(
    names: Sequence[str],
    values: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    *,
    ylabel: str,
    title: str,
    counts: Sequence[int] | None = None,
    unit_interval: bool = False,
    reference: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars with CI whiskers, one per name (a class, a group); an undefined value (NaN) gets no bar.

    Args:
        names: the bars' labels.
        values: each bar's value.
        low: the lower end of each bar's interval (NaN: no whisker).
        high: the upper end of each bar's interval (NaN: no whisker).
        ylabel: the value axis' label.
        title: the panel's title.
        counts: samples behind each bar, shown under its label (``n=…``).
        unit_interval: the values lie in [0, 1] (accuracy, Dice): the axis shows all of it.
        reference: a value drawn as a dashed line across (the overall value).
        ax: draw into these axes instead of a new figure.
    """
    values, low, high = (np.asarray(array, dtype=float) for array in (values, low, high))
    if ax is None:
        figure = Figure(figsize=(min(max(4.0, 0.45 * len(values) + 2.0), 16.0), 3.6), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    positions = np.arange(len(values))
    error = np.nan_to_num(np.stack([values - low, high - values]).clip(min=0.0))
    ax.bar(positions, np.nan_to_num(values), yerr=error, capsize=3, color="tab:blue", alpha=0.8)
    labels = [str(name) for name in names]
    if counts is not None:
        labels = [f"{name}\nn={int(count)}" for name, count in zip(labels, counts)]
    size = "small" if len(values) <= 12 else "x-small"
    ax.set_xticks(
        positions,
        labels,
        rotation=30 if len(values) > 4 else 0,
        ha="right" if len(values) > 4 else "center",
        fontsize=size,
    )
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="all samples")
        ax.legend(fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if unit_interval:
        ax.set_ylim(0.0, 1.05)
    return figure


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An input as something ``imshow`` shows: three channels as RGB, else the first as grey, each
    stretched between its 1st and 99th percentiles (inputs are normalised, not in [0, 1])."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3:
        image = np.moveaxis(image[:3], 0, -1) if image.shape[0] >= 3 else image[0]
    finite = _finite(image)
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    stretched = np.clip((np.nan_to_num(image) - low) / (high - low if high > low else 1.0), 0.0, 1.0)
    return stretched, None if stretched.ndim == 3 else "gray"


def _label_colors(count: int) -> np.ndarray:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return np.array([palette(index % palette.N) for index in range(count)])


def _overlay(mask: np.ndarray, labels: Sequence[int], colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGBA of a label map: each of ``labels`` in its colour, every other value (background, ignored) clear."""
    rgba = np.zeros((*mask.shape, 4))
    for label, color in zip(labels, colors):
        rgba[mask == label] = (*color[:3], alpha)
    return rgba


def plot_overlays(
    images: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    *,
    labels: Sequence[int],
    class_names: Sequence[str],
) -> Figure:
    """One row per example: the input, the true mask over it and the predicted mask over it.

    Args:
        images: ``[E, C, H, W]`` or ``[E, H, W]`` inputs (the middle slice of a volume).
        truth: ``[E, H, W]`` true label maps.
        predicted: ``[E, H, W]`` predicted label maps.
        labels: the label values to colour (the classes the metrics score); others stay clear.
        class_names: one name per label in ``labels``, for the legend.
    """
    count = len(images)
    height = 2.4 * count + 0.6
    figure = Figure(figsize=(7.2, height))
    figure.subplots_adjust(
        left=0.02, right=0.98, top=1 - 0.3 / height, bottom=0.5 / height, wspace=0.05, hspace=0.08
    )
    axes = figure.subplots(count, 3, squeeze=False)
    colors = _label_colors(len(labels))
    for row in range(count):
        shown, cmap = _display_image(images[row])
        grey = shown.mean(axis=-1) if shown.ndim == 3 else shown  # under a mask, colours would compete
        # A mask at another resolution than its input is stretched over it.
        extent = (-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5)
        masks = (("input", None), ("truth", truth[row]), ("prediction", predicted[row]))
        for column, (title, mask) in enumerate(masks):
            ax = axes[row, column]
            if mask is None:
                ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.imshow(_overlay(np.asarray(mask), labels, colors), interpolation="nearest", extent=extent)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
    handles = [Patch(color=color[:3], label=str(name)) for color, name in zip(colors, class_names)]
    figure.legend(
        handles=handles, loc="lower center", ncols=min(len(handles), 5), fontsize="small", frameon=False
    )
    return figure


def plot_forecasts(context: np.ndarray, truth: np.ndarray, forecast: np.ndarray) -> Figure:
    """One panel per window: the context, then the true and forecast values over the horizon (channel 0 of
    multichannel series).

    Args:
        context: ``[E, C, L]`` inputs (or ``[E, L]``).
        truth: ``[E, C, H]`` targets over the horizon (or ``[E, H]``).
        forecast: ``[E, C, H]`` forecasts over the horizon (or ``[E, H]``).
    """
    context, truth, forecast = (np.asarray(array, dtype=float) for array in (context, truth, forecast))
    if context.ndim == 3:
        channels = context.shape[1]
        context, truth, forecast = context[:, 0], truth[:, 0], forecast[:, 0]
    else:
        channels = 1
    count = len(context)
    columns = min(count, 2 if count <= 4 else 3)
    rows = -(-count // columns)
    width, height = 4.0 * columns, 2.8 * rows
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.1 / width,
        bottom=0.4 / height,
        top=1 - 0.3 / height,
        wspace=0.2,
        hspace=0.35,
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    length, horizon = context.shape[-1], truth.shape[-1]
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.set_visible(False)
            continue
        ax.plot(np.arange(-length, 0), context[index], color="black", linewidth=1, label="context")
        ahead = np.arange(horizon)
        ax.plot(ahead, truth[index], color="tab:blue", marker="o", markersize=2, label="truth")
        ax.plot(ahead, forecast[index], color="tab:orange", marker="o", markersize=2, label="forecast")
        ax.axvline(-0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(
            f"test window {index}" + (f" (channel 0 of {channels})" if channels > 1 else ""), fontsize="small"
        )
        if index == 0:
            ax.legend(fontsize="x-small")
    return figure
