"""``GroupReport``: any per-sample metric overall and per group, with bootstrap CIs, markdown and plots.

The contract with a task:

- ``test_step`` returns a dict of per-sample tensors (first dimension = samples), with ``group``
  (``LongTensor[N, A]``, codes of the datamodule's ``group_attributes``) when batches carry it;
- the task's ``group_report_metrics()`` maps metric names to functions of the per-sample arrays of a
  subset of samples (``{"auroc": lambda a: auroc(a["probs"], a["target"])}``), plain callables (higher
  is better) or :class:`GroupMetric` (which says its direction);
- optionally, ``extra_group_report(arrays, groups, directory, results)`` writes task-specific files
  (classification's fairness and calibration report) and may return what it computed.

At test end the outputs of every device are gathered; every metric is computed overall, per group of every
attribute and of their intersection, with percentile bootstrap CIs from one set of resamples drawn within
the intersectional cells (so every group keeps its size, and gaps between groups get CIs too). Files in
the run directory: ``groups.json``, ``groups.md`` and ``groups_<metric>.png`` (bars with CI whiskers).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from verticals.core.callbacks import run_directory
from verticals.core.metrics.bootstrap import bootstrap_indices, percentile_interval
from verticals.core.metrics.fairness import summarize_groups
from verticals.core.metrics.groups import (
    INTERSECTION_SEPARATOR,
    decode_group_matrix,
    encode_groups,
    intersect,
)
from verticals.core.metrics.plots import plot_group_metric
from verticals.core.metrics.report import _format_ci, _json_safe
from verticals.core.report_outputs import CollectedOutputs

__all__ = [
    "GroupMetric",
    "GroupReport",
    "GroupReportResults",
    "group_report",
    "groups_of_test",
    "write_group_report",
]


@dataclasses.dataclass(frozen=True)
class GroupMetric:
    """A per-group metric: ``function(arrays) -> float`` on the per-sample arrays of some samples.

    Attributes:
        function: ``function(arrays) -> float``; ``arrays`` maps names to the rows of the samples it scores.
        higher_is_better: whether a higher value is better (AUROC, Dice) or worse (WER, ECE); picks the worst
            group and orients ``best_minus_worst``.
    """

    function: Callable[[Mapping[str, np.ndarray]], float]
    higher_is_better: bool = True

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> float:
        return float(self.function(arrays))


def as_group_metric(value: GroupMetric | Callable[[Mapping[str, np.ndarray]], float]) -> GroupMetric:
    """A ``GroupMetric`` as it is, a plain callable as one where higher is better.

    Args:
        value: a ``GroupMetric``, or a callable on the per-sample arrays.
    """
    if isinstance(value, GroupMetric):
        return value
    if not callable(value):
        raise TypeError(f"A group-report metric must be callable on the per-sample arrays, got {value!r}.")
    return GroupMetric(value)


class _Rows(Mapping[str, np.ndarray]):
    """The arrays restricted to some rows, indexed only when a metric reads them."""

    def __init__(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray | None) -> None:
        self._arrays, self._rows, self._cache = arrays, rows, {}

    def __getitem__(self, key: str) -> np.ndarray:
        if self._rows is None:
            return self._arrays[key]
        if key not in self._cache:
            self._cache[key] = self._arrays[key][self._rows]
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


Interval = dict[str, float]  # {"value", "low", "high"}


@dataclasses.dataclass
class GroupReportResults:
    """What ``group_report`` found.

    ``overall``: metric -> ``{"value", "low", "high"}``. ``groupings``: grouping (an attribute, or the
    intersection ``"a & b"``) -> ``{"groups": {group: {"count", metric: interval}}, "summary": {metric:
    {"worst_group", "best_group", "worst", "gap", "best_minus_worst"}}}``, where ``best_minus_worst`` is the
    difference between the groups best and worst on the whole set, re-measured in each resample and signed
    so that a positive value means the best group is better (its CI can contain zero, unlike the gap's).

    Attributes:
        metrics: metric name -> higher is better.
        count: samples reported.
        overall: metric -> ``{"value", "low", "high"}`` on all samples.
        groupings: grouping -> its groups and summary (see above).
        group_names: attribute -> its groups in report order.
        n_bootstrap: resamples behind the CIs (0: none).
        confidence: the CIs' level.
        seed: seed of the resamples.
    """

    metrics: dict[str, bool]
    count: int
    overall: dict[str, Interval]
    groupings: dict[str, dict[str, Any]]
    group_names: dict[str, list[str]]
    n_bootstrap: int
    confidence: float
    seed: int

    @property
    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """grouping -> metric -> worst/best group, worst value, gap and paired best-minus-worst."""
        return {name: grouping["summary"] for name, grouping in self.groupings.items()}

    @property
    def table(self) -> pd.DataFrame:
        """One row per (grouping, group): ``count`` and each metric with ``_low`` / ``_high`` columns."""
        rows = []
        for grouping, content in self.groupings.items():
            for group, values in content["groups"].items():
                row: dict[str, Any] = {"grouping": grouping, "group": group, "count": values["count"]}
                for metric in self.metrics:
                    entry = values[metric]
                    row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = (
                        entry["value"],
                        entry["low"],
                        entry["high"],
                    )
                rows.append(row)
        columns = ["grouping", "group", "count"] + [
            f"{metric}{suffix}" for metric in self.metrics for suffix in ("", "_low", "_high")
        ]
        return pd.DataFrame(rows, columns=columns).set_index(["grouping", "group"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes ``None``."""
        return _json_safe(
            {
                "metrics": self.metrics,
                "count": self.count,
                "bootstrap": {
                    "resamples": self.n_bootstrap,
                    "confidence": self.confidence,
                    "seed": self.seed,
                },
                "group_names": self.group_names,
                "overall": self.overall,
                "groupings": self.groupings,
            }
        )

    def to_markdown(self) -> str:
        """Tables a person reads: overall, then per grouping the groups and the worst group and gaps."""
        level = f"{round(self.confidence * 100)}%"
        metrics = list(self.metrics)
        lines = [
            "# Per-group report",
            "",
            f"{self.count} samples; {level} bootstrap CIs from {self.n_bootstrap} resamples (seed {self.seed}), "
            "drawn within groups.",
            "",
            "## Overall",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {metric} | {_format_ci(self.overall[metric])} |" for metric in metrics]
        for grouping, content in self.groupings.items():
            lines += ["", f"## {grouping}", "", "| group | count | " + " | ".join(metrics) + " |"]
            lines.append("|---" * (len(metrics) + 2) + "|")
            for group, values in content["groups"].items():
                cells = [_format_ci(values[metric]) for metric in metrics]
                lines.append(f"| {group} | {values['count']} | " + " | ".join(cells) + " |")
            summary = content["summary"]
            lines += ["", "| summary | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
            lines.append(
                "| worst group | " + " | ".join(str(summary[m]["worst_group"]) for m in metrics) + " |"
            )
            for key, label in (
                ("worst", "worst value"),
                ("gap", "gap (max - min)"),
                ("best_minus_worst", "best - worst (paired)"),
            ):
                lines.append(
                    f"| {label} | " + " | ".join(_format_ci(summary[m][key]) for m in metrics) + " |"
                )
        return "\n".join(lines) + "\n"


def group_report(
    arrays: Mapping[str, Any],
    metrics: Mapping[str, GroupMetric | Callable[[Mapping[str, np.ndarray]], float]],
    groups: Mapping[str, Any] | None = None,
    *,
    group_names: Mapping[str, Sequence[str]] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    intersectional: bool = True,
) -> GroupReportResults:
    """Every metric overall and per group of every attribute (and their intersection), with bootstrap CIs.

    ``arrays``: per-sample arrays (first dimension = samples); ``groups``: attribute -> per-sample values
    (names or, with ``group_names``, codes). ``group_names`` fixes each attribute's group order and keeps
    groups without samples (reported with count 0 and no value). Resamples are drawn within the
    intersectional cells, so every group keeps its size in every resample.

    Args:
        arrays: per-sample arrays by name (``probs``, ``target`` …), one row per sample.
        metrics: metric name -> ``GroupMetric`` or a callable on the arrays of some samples (higher is better).
        groups: attribute -> per-sample group names (or codes, with ``group_names``); None: overall only.
        group_names: attribute -> its groups in report order.
        n_bootstrap: resamples behind the CIs (0: none); more gives steadier interval ends.
        confidence: the CIs' level, in (0, 1).
        seed: seed of the resamples.
        intersectional: with two or more attributes, also report their intersection.
    """
    if not metrics:
        raise ValueError("`metrics` is empty: pass at least one, e.g. {'accuracy': accuracy_of_arrays}.")
    if "count" in metrics:
        raise ValueError(
            "A group-report metric can't be called 'count' (each group's sample count); rename it."
        )
    if n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be >= 0, got {n_bootstrap}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    columns = {key: np.asarray(value) for key, value in arrays.items()}
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Every per-sample array needs one row per sample; got lengths {lengths}.")
    count = next(iter(lengths.values()))
    functions = {name: as_group_metric(metric) for name, metric in metrics.items()}
    groupings: dict[str, tuple[np.ndarray, list[str]]] = {}
    for attribute, values in (groups or {}).items():
        codes, names = encode_groups(values, (group_names or {}).get(attribute))
        if len(codes) != count:
            raise ValueError(
                f"Attribute {attribute!r} has {len(codes)} values but there are {count} samples."
            )
        groupings[attribute] = (codes, names)
    cells = intersect(groups) if groups else None
    if intersectional and groups and len(groups) > 1:
        # cells in the order of the attributes' own group orders, not alphabetically
        combined = np.stack([groupings[attribute][0] for attribute in groups], axis=1)
        _, first = np.unique(combined, axis=0, return_index=True)
        groupings[INTERSECTION_SEPARATOR.join(groups)] = encode_groups(cells, [cells[i] for i in first])

    def evaluate(rows: np.ndarray | None) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
        """Overall values, and per grouping an array of each metric's value per group (NaN if empty)."""
        overall = {name: function(_Rows(columns, rows)) for name, function in functions.items()}
        per_group = {}
        for grouping, (codes, names) in groupings.items():
            selected = codes if rows is None else codes[rows]
            indices = np.arange(count) if rows is None else rows
            values = {name: np.full(len(names), np.nan) for name in functions}
            for index in range(len(names)):
                members = indices[selected == index]
                if len(members):
                    for name, function in functions.items():
                        values[name][index] = function(_Rows(columns, members))
            per_group[grouping] = values
        return overall, per_group

    point_overall, point_groups = evaluate(None)
    resamples = (
        [evaluate(rows) for rows in bootstrap_indices(count, n_bootstrap, seed=seed, strata=cells)]
        if n_bootstrap and count
        else []
    )

    def interval(value: float, draws: list[float]) -> Interval:
        low, high = percentile_interval(np.asarray(draws), confidence) if draws else (float("nan"),) * 2
        return {"value": float(value), "low": low, "high": high}

    overall = {name: interval(point_overall[name], [s[0][name] for s in resamples]) for name in functions}
    report_groupings: dict[str, dict[str, Any]] = {}
    for grouping, (codes, names) in groupings.items():
        sizes = np.bincount(codes, minlength=len(names))
        rows: dict[str, dict[str, Any]] = {}
        for index, group in enumerate(names):
            rows[group] = {"count": int(sizes[index])}
            for name in functions:
                draws = [s[1][grouping][name][index] for s in resamples]
                rows[group][name] = interval(point_groups[grouping][name][index], draws)
        summaries = {}
        for name, function in functions.items():
            point = point_groups[grouping][name]
            summaries[name] = _summary(
                point, [s[1][grouping][name] for s in resamples], names, function.higher_is_better, interval
            )
        report_groupings[grouping] = {"groups": rows, "summary": summaries}
    return GroupReportResults(
        metrics={name: function.higher_is_better for name, function in functions.items()},
        count=count,
        overall=overall,
        groupings=report_groupings,
        group_names={attribute: list(groupings[attribute][1]) for attribute in (groups or {})},
        n_bootstrap=n_bootstrap if resamples else 0,
        confidence=confidence,
        seed=seed,
    )


def _summary(
    point: np.ndarray,
    draws: list[np.ndarray],
    names: list[str],
    higher_is_better: bool,
    interval: Callable[[float, list[float]], Interval],
) -> dict[str, Any]:
    """Worst and best group on the whole set; worst value, gap and paired best-minus-worst with CIs."""
    found = summarize_groups(dict(zip(names, point.tolist())), higher_is_better=higher_is_better)

    def worst_and_gap(values: np.ndarray) -> tuple[float, float]:
        defined = values[~np.isnan(values)]
        if not len(defined):
            return float("nan"), float("nan")
        return float(defined.min() if higher_is_better else defined.max()), float(
            defined.max() - defined.min()
        )

    worst_group, best_group = found["worst_group"], found["best_group"]
    summary: dict[str, Any] = {
        "worst_group": worst_group,
        "best_group": best_group,
        "worst": interval(found["worst"], [worst_and_gap(values)[0] for values in draws]),
        "gap": interval(found["gap"], [worst_and_gap(values)[1] for values in draws]),
    }
    sign = 1.0 if higher_is_better else -1.0
    if worst_group is not None and worst_group != best_group:
        worst, best = names.index(worst_group), names.index(best_group)
        summary["best_minus_worst"] = interval(
            sign * (point[best] - point[worst]), [sign * (values[best] - values[worst]) for values in draws]
        )
    else:
        summary["best_minus_worst"] = interval(float("nan"), [])
    return summary


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def plot_group_report(results: GroupReportResults, metric: str) -> Figure:
    """Bars of one metric per group with CI whiskers: one panel per grouping (or the overall value alone).

    Args:
        results: a :func:`group_report`'s results.
        metric: one of ``results.metrics``.
    """
    table = results.table
    groupings = list(results.groupings) or [None]
    figure = Figure(figsize=(max(4.0, 4.0 * len(groupings)), 3.4), layout="constrained")
    axes = figure.subplots(1, len(groupings), squeeze=False)[0]
    for ax, grouping in zip(axes, groupings):
        if grouping is None:
            entry = results.overall[metric]
            frame = pd.DataFrame(
                {
                    metric: [entry["value"]],
                    f"{metric}_low": [entry["low"]],
                    f"{metric}_high": [entry["high"]],
                },
                index=["all"],
            )
            plot_group_metric(frame, metric, ax=ax)
        else:
            plot_group_metric(table, metric, grouping=grouping, ax=ax)
            value = results.overall[metric]["value"]
            if np.isfinite(value):
                ax.axhline(value, color="grey", linestyle="--", linewidth=1, label="all")
    return figure


def write_group_report(results: GroupReportResults, directory: Path | str) -> list[Path]:
    """Write ``groups.json``, ``groups.md`` and one ``groups_<metric>.png`` per metric; returns the paths.

    Args:
        results: a :func:`group_report`'s results.
        directory: the folder to write (created if missing); usually the run directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "groups.json", directory / "groups.md"]
    written[0].write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    written[1].write_text(results.to_markdown())
    for metric in results.metrics:
        path = directory / f"groups_{_slug(metric)}.png"
        plot_group_report(results, metric).savefig(path, dpi=110)
        written.append(path)
    return written


class GroupReport(L.Callback):
    """At test end: the task's ``group_report_metrics()`` overall and per group with bootstrap CIs.

    Group attributes and names are read from the datamodule at test time (so a checkpoint tested on data
    with more groups reports all of them), else from the task's ``group_attributes`` / ``group_names``
    hparams. Skipped under ``fast_dev_run``, like the run report. The last result stays in ``results``, and
    what the task's ``extra_group_report`` returned in ``extra``.

    Args:
        n_bootstrap: resamples behind the CIs (0: a report without CIs); more gives steadier interval ends
            at a higher cost at test end.
        confidence: the CIs' level, in (0, 1).
        seed: seed of the resamples.
        intersectional: with two or more group attributes, also report their intersection.
    """

    def __init__(
        self, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0, intersectional: bool = True
    ) -> None:
        if n_bootstrap < 0:
            raise ValueError(f"`n_bootstrap` must be >= 0 (0: no CIs), got {n_bootstrap}.")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
        self.n_bootstrap, self.confidence, self.seed, self.intersectional = (
            n_bootstrap,
            confidence,
            seed,
            intersectional,
        )
        self.results: GroupReportResults | None = None
        self.extra: Any = None
        self._collected: CollectedOutputs | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collected = None
        self.results, self.extra = None, None  # a test that collects nothing leaves no earlier report

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        tensors = (
            {key: value for key, value in outputs.items() if isinstance(value, torch.Tensor)}
            if isinstance(outputs, Mapping)
            else {}
        )
        if not tensors:
            raise ValueError(
                f"GroupReport needs {type(pl_module).__name__}.test_step to return a dict of per-sample tensors "
                f"(and 'group' codes when batches carry them); it returned {type(outputs).__name__}."
            )
        sizes = {key: len(value) if value.ndim else 0 for key, value in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"test_step's outputs must have one row per sample; got first dimensions {sizes}."
            )
        if "group" in tensors and tensors["group"].ndim == 1:
            tensors["group"] = tensors["group"][:, None]
        if self._collected is None:
            self._collected = CollectedOutputs(sorted(tensors)).to(pl_module.device)
        elif set(tensors) != set(self._collected.keys):
            raise ValueError(
                f"test_step returned keys {sorted(tensors)} after {list(self._collected.keys)} in earlier batches; "
                "every batch must return the same per-sample outputs."
            )
        self._collected.update(tensors)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compute and write the report of the test that just ended; once per test (a second call does
        nothing). The run report calls it before its own files, so it can list this report's figures; call
        it on every process (the outputs are gathered)."""
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if self._collected is None or not self._collected.update_called:
            return
        arrays = self._collected.compute()  # every rank: the gather is collective
        self._collected = None
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        metrics_of = getattr(pl_module, "group_report_metrics", None)
        if metrics_of is None:
            raise TypeError(
                f"GroupReport needs {type(pl_module).__name__}.group_report_metrics() -> {{name: function of the "
                "per-sample arrays}}; this task has none."
            )
        groups, names = self._groups(trainer, pl_module, arrays.get("group"))
        self.results = group_report(
            arrays,
            metrics_of(),
            groups,
            group_names=names,
            n_bootstrap=self.n_bootstrap,
            confidence=self.confidence,
            seed=self.seed,
            intersectional=self.intersectional,
        )
        write_group_report(self.results, directory)
        extra = getattr(pl_module, "extra_group_report", None)
        self.extra = extra(arrays, groups, directory, self.results) if extra is not None else None

    @staticmethod
    def _groups(
        trainer: L.Trainer, pl_module: L.LightningModule, matrix: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        return groups_of_test(trainer, pl_module, matrix)


def groups_of_test(
    trainer: L.Trainer, pl_module: L.LightningModule, matrix: np.ndarray | None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """``{attribute: per-sample group names}`` and each attribute's names in order, for the ``[N, A]`` group
    codes of a test: attributes and names from the datamodule, else the task's hparams, else
    ``attribute_<column>`` with the codes as names.

    Args:
        trainer: the trainer that ran the test (its ``datamodule`` names the groups).
        pl_module: the task (its ``group_attributes`` / ``group_names`` hparams are the fallback).
        matrix: the gathered ``group`` codes, one row per sample; None gives no groups.
    """
    if matrix is None:
        return {}, {}
    matrix = matrix.reshape(len(matrix), -1)
    datamodule = getattr(trainer, "datamodule", None)
    hparams = getattr(pl_module, "hparams", {})
    attributes = getattr(datamodule, "group_attributes", None)
    names = getattr(datamodule, "group_names", None)
    if not attributes:
        attributes = hparams.get("group_attributes")
        names = hparams.get("group_names")
    if not attributes:
        attributes = [f"attribute_{column}" for column in range(matrix.shape[1])]
    if len(attributes) != matrix.shape[1]:
        raise ValueError(
            f"The test batches carry {matrix.shape[1]} group column(s) but the group attributes are "
            f"{list(attributes)}; a datamodule's `group_attributes` must name every column of 'group'."
        )
    names = (
        {str(key): [str(v) for v in value] for key, value in dict(names or {}).items()}
        if isinstance(names, Mapping)
        else {}
    )
    return decode_group_matrix(matrix, list(attributes), names), {
        a: names[a] for a in attributes if a in names
    }
