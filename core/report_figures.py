"""Which figures a run report draws, from what, for which task; the numbers behind them.

Every run: ``learning_curve.png`` from the run's ``metrics.csv`` (losses, and the monitored metric per
epoch). Then by task, from the test of the best checkpoint (the outputs :mod:`verticals.core.report_outputs`
kept):

- classification (fair classification too): ``confusion_matrix.png`` (counts and row-normalised),
  ``per_class.png`` (recall of each true class with a bootstrap CI) and, for data with groups and no
  ``GroupReport`` of its own, ``per_group.png`` (accuracy per group with CIs);
- segmentation: ``per_class_dice.png`` (Dice of each class with CIs), ``overlays.png`` (a few test images
  with their true and predicted masks; a volume's middle slice) and ``per_group.png`` (Dice per group)
  likewise; point sets get no overlay (the reason is recorded);
- forecasting: ``forecasts.png`` (a few test windows, truth against forecast);
- sequence-to-sequence: its ``GroupReport`` already draws the text metric per group with CIs.

A ``GroupReport``'s own figures (``groups_<metric>.png``) are listed by the run report beside these.
Intervals are percentile bootstrap intervals over the test samples (resampled within each class or group
for per-class and per-group bars), vectorised: ``DEFAULT_RESAMPLES`` resamples cost milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from verticals.core import report_plots

log = logging.getLogger(__name__)

#: Bootstrap resamples of the report's own intervals (per class, per group).
DEFAULT_RESAMPLES = 200
CONFIDENCE = 0.95
#: Cap on resamples x samples held in memory at once (the resamples are drawn in chunks under it).
_CHUNK_CELLS = 2_000_000


@dataclasses.dataclass
class RunFigures:
    """What the figures step did: ``written`` file names (relative to the run directory) in drawing order,
    and ``skipped``: figure -> why it was not drawn."""

    written: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


# -- intervals --------------------------------------------------------------------------------------------
def bootstrap_column_means(
    values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean over the rows (NaN entries left out) and the same means in ``n_resamples``
    resamples of the rows with replacement, one set of resamples for every column.

    Vectorised: a resample is a row of multinomial counts, so its means are one matrix product.

    Args:
        values: ``[N]`` or ``[N, K]`` per-sample values (NaN where undefined, e.g. a class absent from a mask).
        n_resamples: resamples (0: none, the draws are then empty).
        seed: the resamples' random seed.

    Returns:
        ``(point [K], draws [n_resamples, K])``; a column without any finite value is NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rows, columns = values.shape
    defined = ~np.isnan(values)
    filled = np.where(defined, values, 0.0)
    point = _ratio(filled.sum(axis=0), defined.sum(axis=0))
    if rows == 0 or n_resamples <= 0:
        return point, np.empty((0, columns))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // rows)
    draws = []
    for start in range(0, n_resamples, chunk):
        counts = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=min(chunk, n_resamples - start))
        counts = counts.astype(np.float64)
        draws.append(_ratio(counts @ filled, counts @ defined.astype(np.float64)))
    return point, np.concatenate(draws)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def percentile_bounds(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The central ``confidence`` interval of each column of bootstrap ``draws`` ``[B, K]`` (NaN draws left
    out; NaN ends for a column without draws).

    Args:
        draws: ``[B]`` or ``[B, K]`` bootstrap values.
        confidence: the interval's level, in (0, 1).
    """
    draws = np.asarray(draws, dtype=float)
    if draws.ndim == 1:
        draws = draws[:, None]
    columns = draws.shape[1]
    if not len(draws):
        return np.full(columns, np.nan), np.full(columns, np.nan)
    tail = 100.0 * (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
        low, high = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


@dataclasses.dataclass(frozen=True)
class Intervals:
    """One value per name with its bootstrap interval and sample count (the bars of a figure)."""

    names: list[str]
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray


def stratified_means(
    values: np.ndarray,
    strata: np.ndarray,
    names: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    *,
    seed: int = 0,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Intervals:
    """The mean of ``values`` within each stratum (a class, a group) with a bootstrap interval from resamples
    drawn within it, so every stratum keeps its size.

    Args:
        values: ``[N]`` or ``[N, K]`` per-sample values.
        strata: ``[N]`` stratum codes ``0..len(names)-1``.
        names: one name per code; a code without samples gets NaN.
        n_resamples: resamples per stratum.
        seed: the resamples' seed.
        combine: for ``[N, K]`` values, how the ``K`` column means become one number (``[..., K] -> [...]``,
            e.g. the mean over classes); default: the first column.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    strata = np.asarray(strata).reshape(-1)
    reduce = combine or (lambda columns: columns[..., 0])
    value, low, high, count = (np.full(len(names), np.nan) for _ in range(4))
    for code in range(len(names)):
        rows = values[strata == code]
        count[code] = len(rows)
        if not len(rows):
            continue
        point, draws = bootstrap_column_means(rows, n_resamples, seed=seed + code)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class mean over all-NaN columns
            value[code] = float(reduce(point[None])[0])
            bounds = percentile_bounds(reduce(draws)[:, None]) if len(draws) else (np.array([np.nan]),) * 2
        low[code], high[code] = float(bounds[0][0]), float(bounds[1][0])
    return Intervals(list(map(str, names)), value, low, high, count.astype(int))


def nan_mean_over_columns(columns: np.ndarray) -> np.ndarray:
    """Mean over the last axis, NaN entries left out (a class mean over the classes a set has).

    Args:
        columns: ``[..., K]`` values, NaN where undefined.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(columns, axis=-1)


# -- the learning curve -----------------------------------------------------------------------------------
@dataclasses.dataclass
class LearningCurve:
    """A run's logged training and validation values: ``steps`` (index ``step``: the ``*_step`` columns) and
    ``epochs`` (index ``epoch``: ``step`` and every epoch-level ``train_`` / ``val_`` column)."""

    steps: pd.DataFrame
    epochs: pd.DataFrame


def read_learning_curve(path: Path | str) -> LearningCurve:
    """The learning curve in a run's ``metrics.csv``, each step and epoch once.

    A resumed run appends to the file (and drops the rows after its checkpoint); an epoch or step that
    still appears in several rows takes each column's last logged value. Test rows and per-class columns
    (``val_dice/<class>``) are left out.

    Args:
        path: the ``metrics.csv`` Lightning's CSV logger writes.
    """
    table = pd.read_csv(path)
    if "epoch" not in table or "step" not in table:
        raise ValueError(f"{path}: not a Lightning metrics.csv (no `epoch` and `step` columns).")
    columns = [
        column for column in table.columns if column.startswith(("train_", "val_")) and "/" not in column
    ]
    table = table[["epoch", "step", *columns]]
    step_columns = [column for column in columns if column.endswith("_step")]
    epoch_columns = [column for column in columns if column not in step_columns]
    step_rows = table.dropna(subset=step_columns, how="all") if step_columns else table.iloc[:0]
    steps = step_rows[["step", *step_columns]].groupby("step").last().sort_index()
    epoch_rows = table.dropna(subset=epoch_columns, how="all") if epoch_columns else table.iloc[:0]
    epochs = epoch_rows[["epoch", "step", *epoch_columns]].groupby("epoch").last().sort_index()
    steps.index = steps.index.astype(int)
    epochs.index = epochs.index.astype(int)
    return LearningCurve(steps=steps, epochs=epochs)


def curve_metric(epochs: pd.DataFrame, monitor: str | None) -> str | None:
    """The metric of the learning curve's right panel: the monitored one unless it is a loss (the left panel
    has it), then the first other validation metric logged; None when there is none.

    Args:
        epochs: the curve's epoch-level values (``LearningCurve.epochs``).
        monitor: the metric the checkpoint was picked on.
    """
    if monitor and "loss" not in monitor and monitor in epochs:
        return monitor
    others = [column for column in epochs.columns if column.startswith("val_") and "loss" not in column]
    return others[0] if others else None


def best_epoch(epochs: pd.DataFrame, monitor: str | None, mode: str | None) -> int | None:
    """The epoch with the best ``monitor`` value (``mode`` min or max): the checkpoint that was tested.

    Args:
        epochs: the curve's epoch-level values (``LearningCurve.epochs``).
        monitor: the metric the checkpoint was picked on.
        mode: ``min`` or ``max``; anything else gives None.
    """
    if not monitor or monitor not in epochs or mode not in ("min", "max"):
        return None
    values = epochs[monitor].dropna()
    if values.empty:
        return None
    return int(values.idxmax() if mode == "max" else values.idxmin())


# -- the figures of a run ---------------------------------------------------------------------------------
def _save(figure: Figure, directory: Path, name: str, figures: RunFigures) -> None:
    figure.savefig(directory / name, dpi=report_plots.DPI)
    figures.written.append(name)


def _draw(figures: RunFigures, name: str, draw: Callable[[], str | None]) -> None:
    """Run one figure's drawing; ``draw`` returns None once it saved the figure, or why it did not. An
    error is logged and recorded, never raised: a figure must not stop a run that trained for hours."""
    try:
        reason = draw()
    except Exception as error:  # noqa: BLE001 - recorded in the report and logged with its traceback
        log.warning("The run report could not draw %s", name, exc_info=True)
        reason = f"failed: {type(error).__name__}: {error}"
    if reason is not None:
        figures.skipped[name] = reason


def write_run_figures(
    directory: Path | str,
    *,
    task: Any,
    trainer: Any,
    arrays: Mapping[str, np.ndarray],
    examples: Mapping[str, np.ndarray],
    group_report: Any = None,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> RunFigures:
    """Draw the run's figures into ``directory`` (see the module docstring) and say what was drawn.

    Args:
        directory: the run directory (``metrics.csv`` is read from it).
        task: the tested task (its type chooses the figures; class names, labels and monitor come from it).
        trainer: the trainer that ran the test (its datamodule names classes and groups).
        arrays: the test's per-sample outputs, gathered (``probs`` / ``target``, ``dice``, ``group`` …).
        examples: the test examples the task offered (``x`` / ``truth`` / ``predicted``, ``x`` / ``y`` /
            ``forecast``), a few rows each.
        group_report: the run's ``GroupReport`` when it wrote a report of this test (its figures show the
            groups, so no ``per_group.png`` is drawn).
        n_resamples: bootstrap resamples of the per-class and per-group intervals.
    """
    directory = Path(directory)
    figures = RunFigures()
    checkpoint = getattr(trainer, "checkpoint_callback", None)
    monitor = getattr(checkpoint, "monitor", None) or getattr(task, "monitor", None)
    mode = getattr(checkpoint, "mode", None) or getattr(task, "mode", None)
    _draw(figures, "learning_curve.png", lambda: _learning_curve(directory, monitor, mode, figures))
    grouped = group_report is not None and getattr(group_report, "results", None) is not None
    kind = task_kind(task)
    if kind == "classification":
        _classification_figures(directory, task, trainer, arrays, grouped, n_resamples, figures)
    elif kind == "segmentation":
        _segmentation_figures(directory, task, trainer, arrays, examples, grouped, n_resamples, figures)
    elif kind == "forecasting":
        _draw(figures, "forecasts.png", lambda: _forecasts(directory, examples, figures))
    return figures


def task_kind(task: Any) -> str | None:
    """``classification``, ``segmentation``, ``forecasting`` or ``seq2seq`` for the core's tasks (and their
    subclasses), else the task's own ``report_kind`` attribute (None: the learning curve only).

    Args:
        task: the tested task.
    """
    from verticals.core.tasks import ClassificationTask, ForecastingTask, SegmentationTask, Seq2SeqTask

    for kind, cls in (
        ("classification", ClassificationTask),
        ("segmentation", SegmentationTask),
        ("forecasting", ForecastingTask),
        ("seq2seq", Seq2SeqTask),
    ):
        if isinstance(task, cls):
            return kind
    return getattr(task, "report_kind", None)


def _learning_curve(
    directory: Path, monitor: str | None, mode: str | None, figures: RunFigures
) -> str | None:
    path = directory / "metrics.csv"
    if not path.is_file():
        return "no metrics.csv in the run directory (the run logged to no CSV logger)"
    curve = read_learning_curve(path)
    if curve.steps.empty and curve.epochs.empty:
        return "metrics.csv holds no training or validation values (a test without a fit)"
    metric = curve_metric(curve.epochs, monitor)
    figure = report_plots.plot_learning_curve(
        curve.steps,
        curve.epochs,
        metric=metric,
        monitor=monitor,
        best_epoch=best_epoch(curve.epochs, monitor, mode),
    )
    _save(figure, directory, "learning_curve.png", figures)
    return None


def _class_names(task: Any, trainer: Any, count: int) -> list[str]:
    """Names of ``count`` classes: the task's or the datamodule's ``class_names`` when they have one per
    class, else the class indices."""
    datamodule = getattr(trainer, "datamodule", None)
    for source in (getattr(task, "hparams", {}).get("class_names"), getattr(datamodule, "class_names", None)):
        try:
            names = [str(name) for name in source] if source is not None else None
        except TypeError:
            names = None
        if names is not None and len(names) == count:
            return names
    return [str(index) for index in range(count)]


def _groups(
    trainer: Any, task: Any, arrays: Mapping[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per attribute: each sample's group code and the group names, from the test's ``group`` codes."""
    from verticals.core.group_report import groups_of_test
    from verticals.core.metrics.groups import encode_groups

    matrix = arrays.get("group")
    if matrix is None:
        return {}
    groups, names = groups_of_test(trainer, task, np.asarray(matrix))
    return {attribute: encode_groups(values, names.get(attribute)) for attribute, values in groups.items()}


def _per_group_figure(
    directory: Path,
    groups: dict[str, tuple[np.ndarray, list[str]]],
    values: np.ndarray,
    *,
    metric: str,
    overall: float,
    n_resamples: int,
    figures: RunFigures,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """``per_group.png``: ``metric`` per group of every attribute (one panel each) with CIs."""
    figure = Figure(figsize=(min(4.5 * len(groups), 16.0), 3.6), layout="constrained")
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for ax, (attribute, (codes, names)) in zip(axes, groups.items()):
        found = stratified_means(values, codes, names, n_resamples, combine=combine)
        report_plots.plot_intervals(
            found.names,
            found.value,
            found.low,
            found.high,
            counts=found.count,
            ylabel=metric,
            title=f"{metric} by {attribute} ({CONFIDENCE:.0%} CI)",
            unit_interval=True,
            reference=overall,
            ax=ax,
        )
    _save(figure, directory, "per_group.png", figures)


def _classification_figures(
    directory: Path,
    task: Any,
    trainer: Any,
    arrays: Mapping[str, np.ndarray],
    grouped: bool,
    n_resamples: int,
    figures: RunFigures,
) -> None:
    scores = arrays.get("probs", arrays.get("logits"))
    if scores is None or "target" not in arrays:
        for name in ("confusion_matrix.png", "per_class.png"):
            figures.skipped[name] = "the test step handed over no per-sample `probs` and `target`"
        return
    scores = np.asarray(scores)
    target = np.asarray(arrays["target"]).astype(int).reshape(-1)
    count = scores.shape[1]
    predicted = scores.argmax(axis=1)
    names = _class_names(task, trainer, count)
    correct = (predicted == target).astype(float)

    def confusion() -> None:
        matrix = np.bincount(target * count + predicted, minlength=count * count).reshape(count, count)
        _save(report_plots.plot_confusion_matrix(matrix, names), directory, "confusion_matrix.png", figures)

    def per_class() -> None:
        found = stratified_means(correct, target, names, n_resamples)
        figure = report_plots.plot_intervals(
            found.names,
            found.value,
            found.low,
            found.high,
            counts=found.count,
            ylabel="recall (accuracy within the class)",
            title=f"Recall per true class ({CONFIDENCE:.0%} bootstrap CI)",
            unit_interval=True,
            reference=float(correct.mean()) if len(correct) else None,
        )
        _save(figure, directory, "per_class.png", figures)

    _draw(figures, "confusion_matrix.png", confusion)
    _draw(figures, "per_class.png", per_class)
    _draw(
        figures,
        "per_group.png",
        lambda: _per_group_or_reason(
            directory, trainer, task, arrays, correct, "accuracy", grouped, n_resamples, figures
        ),
    )


def _per_group_or_reason(
    directory: Path,
    trainer: Any,
    task: Any,
    arrays: Mapping[str, np.ndarray],
    values: np.ndarray,
    metric: str,
    grouped: bool,
    n_resamples: int,
    figures: RunFigures,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> str | None:
    if grouped:
        return "the run's GroupReport draws the groups (groups_<metric>.png)"
    groups = _groups(trainer, task, arrays)
    if not groups:
        return "the test data carry no groups"
    overall = bootstrap_column_means(values, 0)[0]
    overall_value = float((combine or (lambda columns: columns[..., 0]))(overall[None])[0])
    _per_group_figure(
        directory,
        groups,
        values,
        metric=metric,
        overall=overall_value,
        n_resamples=n_resamples,
        figures=figures,
        combine=combine,
    )
    return None


def _segmentation_figures(
    directory: Path,
    task: Any,
    trainer: Any,
    arrays: Mapping[str, np.ndarray],
    examples: Mapping[str, np.ndarray],
    grouped: bool,
    n_resamples: int,
    figures: RunFigures,
) -> None:
    labels = list(task.metric_labels)
    names = [task.class_names[label] for label in labels]

    def per_class() -> str | None:
        if "dice" not in arrays:
            return "the test step handed over no per-sample `dice`"
        dice = np.asarray(arrays["dice"], dtype=float).reshape(len(arrays["dice"]), -1)
        point, draws = bootstrap_column_means(dice, n_resamples)
        low, high = percentile_bounds(draws)
        counts = (~np.isnan(dice)).sum(axis=0)
        figure = report_plots.plot_intervals(
            names,
            point,
            low,
            high,
            counts=counts,
            ylabel="Dice",
            title=f"Dice per class ({CONFIDENCE:.0%} bootstrap CI over samples)",
            unit_interval=True,
            reference=float(nan_mean_over_columns(point)),
        )
        _save(figure, directory, "per_class_dice.png", figures)
        return None

    def overlays() -> str | None:
        if getattr(task, "_mask_kind", None) == "points":
            return "point sets: no image grid to draw masks over (per_class_dice.png shows the result)"
        if not {"x", "truth", "predicted"} <= set(examples):
            return "the test kept no examples (x, truth, predicted)"
        figure = report_plots.plot_overlays(
            examples["x"], examples["truth"], examples["predicted"], labels=labels, class_names=names
        )
        _save(figure, directory, "overlays.png", figures)
        return None

    _draw(figures, "per_class_dice.png", per_class)
    _draw(figures, "overlays.png", overlays)
    if "dice" in arrays:
        dice = np.asarray(arrays["dice"], dtype=float).reshape(len(arrays["dice"]), -1)
        _draw(
            figures,
            "per_group.png",
            lambda: _per_group_or_reason(
                directory,
                trainer,
                task,
                arrays,
                dice,
                "Dice",
                grouped,
                n_resamples,
                figures,
                combine=nan_mean_over_columns,
            ),
        )


def _forecasts(directory: Path, examples: Mapping[str, np.ndarray], figures: RunFigures) -> str | None:
    if not {"x", "y", "forecast"} <= set(examples):
        return "the test kept no examples (x, y, forecast)"
    figure = report_plots.plot_forecasts(examples["x"], examples["y"], examples["forecast"])
    _save(figure, directory, "forecasts.png", figures)
    return None
