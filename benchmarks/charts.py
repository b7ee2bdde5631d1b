"""Charts of the benchmark reports, drawn from their JSON: what each report's tables are for, as a picture.

One function per kind of results (``chart_timeseries``, ``chart_speech``, ``chart_medical_fairness_seeds``,
...) reads the JSON a benchmark script wrote beside its markdown and writes ``<report>_<chart>.png`` next to
the report; :func:`chart_report` runs the right one and adds (or refreshes) a ``## Charts`` block of image
links before the report's first section, so running it twice changes nothing. Scripts call it after their last
``write_reports``; ``main`` redraws every report under ``benchmarks/results/`` and prints what it wrote:

    python benchmarks/charts.py                                   # every report
    python benchmarks/charts.py benchmarks/results/speech.md      # one

Why from the JSON: the charts of a committed report can be redrawn (a fix to a chart, a new chart) without
rerunning hours of benchmarks, and they show exactly the numbers the tables print. Reports without a JSON
(``core_parity.md``, merged by hand from two runs) are read from their markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"
DPI = 110
CONFIDENCE = 0.95
HEADING = "## Charts"
BLOCK_START = (
    "<!-- benchmark charts: drawn by benchmarks/charts.py from the report's JSON; do not edit by hand -->"
)
BLOCK_END = "<!-- /benchmark charts -->"
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


class Chart(NamedTuple):
    """One written chart: its file and what it shows (the image link's alt text)."""

    path: Path
    title: str


# -- drawing helpers ---------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """pyplot on the Agg backend (files only, no display), imported on first use: the benchmark scripts
    import this module and most of their runs never draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 9, "axes.titlesize": 9.5, "figure.titlesize": 10.5, "legend.fontsize": 8}
    )
    return plt


def _save(figure: Any, path: Path, title: str) -> Chart:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)
    return Chart(path, title)


def _wrap(text: str, figure: Any, share: float = 1.0) -> str:
    """A title broken into lines that fit the figure (about 13 characters per inch at the title size)."""
    import textwrap

    return textwrap.fill(text, width=max(30, int(figure.get_figwidth() * share * 13)))


def _legend_below(figure: Any, axes: Sequence[Any], ncol: int) -> float:
    """One legend for ``axes`` under the plots (where it hides no data); returns the figure fraction that
    ``tight_layout(rect=(0, fraction, 1, 1))`` must leave free for it."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not labels:
        return 0.0
    ncol = max(1, min(ncol, len(labels)))
    figure.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    rows = math.ceil(len(labels) / ncol)
    return min(0.45, (0.12 + 0.2 * rows) / figure.get_figheight())


def _chart_path(md_path: Path, name: str) -> Path:
    """``<report>_<name>.png`` beside the report (the agreed naming: a report links ``<stem>_*.png``)."""
    return md_path.parent / f"{md_path.stem}_{name}.png"


def _float(value: Any) -> float:
    """A JSON number as a float; None (JSON's NaN) and missing values as NaN."""
    return math.nan if value is None else float(value)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean over seeds (NaN bounds below two values), as the reports'
    ``SeedStatistics`` compute it (``verticals.core.seeds``; not imported, it would pull in torch).

    Args:
        values: one figure per seed; NaN and None are left out.
        confidence: the interval's coverage.
    """
    from scipy import stats

    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(present)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(present) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def _error(centre: Sequence[float], low: Sequence[float], high: Sequence[float]) -> list[list[float]]:
    """matplotlib's ``xerr``/``yerr`` from interval bounds (no bar where a bound is NaN)."""
    below = [0.0 if math.isnan(lo) or math.isnan(c) else max(c - lo, 0.0) for c, lo in zip(centre, low)]
    above = [0.0 if math.isnan(hi) or math.isnan(c) else max(hi - c, 0.0) for c, hi in zip(centre, high)]
    return [below, above]


def _bars(centre: Sequence[float], low: Sequence[float], high: Sequence[float]) -> list[list[float]] | None:
    """:func:`_error` for bar charts: None where no bar has an interval (matplotlib would still draw caps)."""
    error = _error(centre, low, high)
    return error if any(any(side) for side in error) else None


def _seeds_text(seeds: Sequence[Any]) -> str:
    seeds = list(seeds)
    if not seeds:
        return "no seeds"
    if len(seeds) == 1:
        return f"one seed ({seeds[0]})"
    return f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"


def _colours(names: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per name, in order (tab10, then tab20 beyond ten names)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _interval_from_stats(entry: Mapping[str, Any] | None) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a ``SeedStatistics.as_dict()`` entry, recomputed from its values when the
    entry carries none (the medical fairness summaries keep only mean and SD)."""
    if not entry:
        return math.nan, math.nan, math.nan
    if "low" in entry:
        return _float(entry.get("mean")), _float(entry.get("low")), _float(entry.get("high"))
    return t_interval(entry.get("values", []))


def _tuning_chart(
    tuning: Mapping[str, Mapping[str, float]], chosen: Mapping[str, float], path: Path, metric: str, seed: Any
) -> Chart:
    """Validation score against learning rate per method, the rate each method kept marked."""
    plt = _pyplot()
    methods = list(tuning)
    colours = _colours(methods)
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for method in methods:
        rates = sorted(tuning[method], key=float)
        axis.plot(
            [float(r) for r in rates],
            [tuning[method][r] for r in rates],
            "o-",
            color=colours[method],
            label=method,
            markersize=4,
        )
        best = chosen.get(method)
        if best is not None and any(math.isclose(float(r), best) for r in rates):
            score = next(tuning[method][r] for r in rates if math.isclose(float(r), best))
            axis.plot(
                [best],
                [score],
                marker="*",
                markersize=13,
                color=colours[method],
                markeredgecolor="black",
                linestyle="none",
            )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel(f"validation {metric}")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", ncol=2)
    title = f"Learning-rate tuning on seed {seed}, one run per rate; ★ the rate each method then used"
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return _save(figure, path, title)


# -- time series (benchmarks/timeseries.py) ----------------------------------------------------------------
def chart_timeseries(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Test accuracy against trainable % per dataset (the classical baselines as lines), and the
    training-loop overhead: samples/s of ``verticals fit`` and plain PyTorch in each alternating repeat.

    Args:
        results: ``timeseries.json`` (``runs``, ``classical``, ``overhead``, ``settings``).
        md_path: the report; the charts go beside it.
    """
    plt = _pyplot()
    charts = []
    runs = [run for run in results.get("runs", []) if run.get("test_accuracy") is not None]
    classical = results.get("classical") or {}
    datasets = list(dict.fromkeys([*(run["dataset"] for run in runs), *classical]))
    if datasets:
        methods = list(dict.fromkeys(run["method"] for run in runs))
        colours = _colours(methods)
        seeds = sorted({run.get("seed") for run in runs if run.get("seed") is not None})
        columns = min(2, len(datasets))
        rows = math.ceil(len(datasets) / columns)
        figure, grid = plt.subplots(
            rows, columns, figsize=(4.6 * columns + 0.6, 3.1 * rows + 1.3), squeeze=False
        )
        axes = [axis for row in grid for axis in row]
        for axis in axes[len(datasets) :]:
            axis.set_visible(False)
        for axis, dataset in zip(axes, datasets):
            for method in methods:
                chosen = [run for run in runs if run["dataset"] == dataset and run["method"] == method]
                if not chosen:
                    continue
                percent = 100.0 * chosen[0]["trainable_parameters"] / chosen[0]["backbone_parameters"]
                values = [run["test_accuracy"] for run in chosen]
                mean, low, high = t_interval(values)
                axis.scatter([percent] * len(values), values, s=12, color=colours[method], alpha=0.5)
                axis.errorbar(
                    [percent],
                    [mean],
                    yerr=_error([mean], [low], [high]),
                    fmt="o",
                    color=colours[method],
                    capsize=3,
                    label=method,
                )
            styles = iter(["--", ":", "-."])
            for baseline in (classical.get(dataset) or {}).values():
                axis.axhline(
                    baseline["accuracy"], color="grey", linestyle=next(styles, "--"), label=baseline["name"]
                )
            axis.set_xscale("log")
            axis.set_title(dataset)
            axis.set_xlabel("trainable % of the backbone (log scale)")
            axis.set_ylabel("test accuracy")
            axis.grid(alpha=0.3)
        bottom = _legend_below(figure, axes, 4)
        spread = (
            "dots: each seed; marker: mean with 95% t-interval" if len(seeds) > 1 else "one run per method"
        )
        title = (
            f"Time series: test accuracy (official TEST split) vs trainable parameters, {_seeds_text(seeds)}, "
            f"{spread}; lines: classical baselines"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "accuracy_vs_trainable"), title))
    overhead = results.get("overhead") or {}
    if overhead.get("runs"):
        loops = {"verticals": "verticals fit", "plain": "plain PyTorch"}
        figure, axis = plt.subplots(figsize=(6.0, 3.6))
        for index, (loop, label) in enumerate(loops.items()):
            values = [run["samples_per_second"] for run in overhead["runs"] if run["loop"] == loop]
            median = (overhead.get("median") or {}).get(loop, {}).get("samples_per_second")
            if median is not None:
                axis.bar(
                    index,
                    median,
                    color="tab:blue" if index == 0 else "tab:orange",
                    alpha=0.6,
                    label=f"{label}: median",
                )
            axis.scatter(
                [index] * len(values),
                values,
                color="black",
                s=14,
                zorder=3,
                label="each repeat" if index == 0 else None,
            )
        axis.set_xticks(range(len(loops)), list(loops.values()))
        axis.set_ylabel("training samples per second")
        axis.set_ylim(0, axis.get_ylim()[1] * 1.25)
        axis.legend(loc="upper center", ncol=3)
        ratio = overhead.get("ratio_verticals_over_plain")
        title = (
            f"Training-loop overhead on {overhead.get('config', '?')}: {overhead.get('repeats', '?')} alternating "
            f"repeats of {overhead.get('epochs', '?')} epochs each"
            + (f"; throughput ratio verticals / plain {ratio:.3f} (1.0 = no overhead)" if ratio else "")
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout()
        charts.append(_save(figure, _chart_path(md_path, "overhead"), title))
    return charts


# -- seed sweeps of `verticals run --seeds` ----------------------------------------------------------------
def chart_seeds(
    results: Mapping[str, Any],
    md_path: Path,
    before: Mapping[str, Any] | None = None,
    before_label: str = "an earlier record",
) -> list[Chart]:
    """Every test metric of a ``verticals run --seeds`` summary: each seed, the mean and its t-interval;
    beside it the same config's seeds from an earlier record (``before``, a ``core_parity.py --record``
    JSON with ``--seeds``) when there is one.

    Args:
        results: the seed summary JSON (``summary``: metric -> ``SeedStatistics``; ``configs``; ``seeds``).
        md_path: the report; the chart goes beside it.
        before: an earlier record of the same config over seeds, drawn beside it.
        before_label: where ``before`` comes from, for the title.
    """
    plt = _pyplot()
    summary = results.get("summary") or {}
    metrics = [name for name in summary if isinstance(summary[name], Mapping) and "values" in summary[name]]
    if not metrics:
        return []
    config = _config_name((results.get("configs") or ["?"])[0])
    earlier = ((before or {}).get("summary") or {}).get(config, {}).get("metrics", {})
    figure, axes = plt.subplots(1, len(metrics), figsize=(2.1 * len(metrics) + 0.6, 3.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        sides = [("before", earlier[metric]["values"])] if metric in earlier else []
        sides.append(("after" if sides else "", summary[metric]["values"]))
        for index, (_, values) in enumerate(sides):
            mean, low, high = t_interval(values)
            axis.scatter([index] * len(values), values, s=14, color="grey", alpha=0.7, zorder=3)
            axis.errorbar(
                [index + 0.18],
                [mean],
                yerr=_error([mean], [low], [high]),
                fmt="D",
                color="tab:blue",
                capsize=4,
                zorder=4,
            )
        axis.set_xticks(range(len(sides)), [label for label, _ in sides])
        axis.set_xlim(-0.5, len(sides) - 0.3)
        axis.set_title(metric.removeprefix("test_"))
        axis.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test metric")
    seeds = results.get("seeds") or [run.get("seed") for run in results.get("runs", [])]
    title = (
        f"{config} over {_seeds_text(seeds)}: grey dots each seed, blue the mean with its "
        f"{results.get('confidence', CONFIDENCE):.0%} t-interval"
        + (f"; 'before': {before_label}" if earlier else "")
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, _chart_path(md_path, "per_seed"), title)]


def _config_name(config: str) -> str:
    """A packaged config's name (``timeseries/gunpoint_lora``) from the path a seed summary records
    (``.../domains/timeseries/configs/gunpoint_lora.yaml``); anything else as it is."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.parent.name == "configs" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.stem}"
    return config


# -- core parity (benchmarks/core_parity.py) ---------------------------------------------------------------
def core_parity_from_markdown(text: str) -> dict[str, Any]:
    """The ``## Test metrics`` table of a core parity report: ``{"metrics": [{config, metric, before,
    after}]}`` (None where a side lacks the metric). ``core_parity.md`` has no JSON of its own: it joins two
    comparison runs by hand.

    Args:
        text: the report's markdown.
    """
    rows = []
    section = text.split("## Test metrics", 1)[-1] if "## Test metrics" in text else ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("`"):
            continue
        before, after = (None if cell == "" else float(cell) for cell in cells[2:4])
        rows.append({"config": cells[0], "metric": cells[1].strip("`"), "before": before, "after": after})
    return {"metrics": rows}


def core_parity_from_records(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The same rows from the two records ``core_parity.py`` compares (configs that ran on both sides).

    Args:
        before: the ``--record`` JSON.
        after: the comparison's own record.
    """
    rows = []
    for name, entry in after.get("results", {}).items():
        old = before.get("results", {}).get(name)
        if old is None or old.get("status") != "ok" or entry.get("status") != "ok":
            continue
        for metric in sorted(set(old.get("metrics", {})) | set(entry.get("metrics", {}))):
            rows.append(
                {
                    "config": name,
                    "metric": metric,
                    "before": old["metrics"].get(metric),
                    "after": entry["metrics"].get(metric),
                }
            )
    return {"metrics": rows}


def chart_core_parity(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Per packaged config: how many test metrics are equal before and after, how many differ (with the
    largest difference written beside the bar), how many exist on one side only.

    Args:
        results: ``{"metrics": [{config, metric, before, after}]}`` (:func:`core_parity_from_markdown` or
            :func:`core_parity_from_records`).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    configs: dict[str, dict[str, Any]] = {}
    for row in results.get("metrics", []):
        entry = configs.setdefault(row["config"], {"equal": 0, "differ": 0, "one side": 0, "largest": 0.0})
        before, after = row["before"], row["after"]
        if before is None or after is None:
            entry["one side"] += 1
        elif before == after or (math.isnan(before) and math.isnan(after)):
            entry["equal"] += 1
        else:
            entry["differ"] += 1
            entry["largest"] = max(entry["largest"], abs(after - before))
    if not configs:
        return []
    names = list(configs)
    figure, axis = plt.subplots(figsize=(8.0, 0.27 * len(names) + 1.6))
    left = [0] * len(names)
    legend = {"equal": "equal before and after", "differ": "different", "one side": "in one run only"}
    for key, colour in (("equal", "tab:green"), ("differ", "tab:orange"), ("one side", "lightgrey")):
        counts = [configs[name][key] for name in names]
        axis.barh(range(len(names)), counts, left=left, color=colour, label=legend[key], height=0.7)
        left = [a + b for a, b in zip(left, counts)]
    for index, name in enumerate(names):
        if configs[name]["differ"]:
            axis.text(
                left[index] + 0.3, index, f"max |Δ| {configs[name]['largest']:.3g}", va="center", fontsize=7
            )
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, max(left) * 1.3 + 1)
    axis.set_xlabel("number of test metrics")
    axis.legend(loc="lower right")
    identical = sum(1 for name in names if not configs[name]["differ"])
    title = (
        f"Core parity: test metrics of each packaged config before and after the change "
        f"({identical} of {len(names)} configs with every shared metric equal)"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, _chart_path(md_path, "metrics"), title)]


# -- adapter kernels (benchmarks/adapter_kernels.py) -------------------------------------------------------
def chart_kernels(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """The time ratio verticals / peft per layer shape and batch, for the forward, the training step and the
    mixed-adapter batch (1.0 = same speed; left of it verticals is faster).

    Args:
        results: ``kernels.json`` (``rows`` with ``ratio_forward``, ``ratio_train``, ``ratio_mixed``).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    rows = results.get("rows") or []
    if not rows:
        return []
    labels = [f"{row['shape']} ({row['in']}→{row['out']}), batch {row['batch']}" for row in rows]
    kinds = [("ratio_forward", "forward"), ("ratio_train", "training step"), ("ratio_mixed", "mixed batch")]
    figure, axis = plt.subplots(figsize=(8.0, 0.42 * len(rows) + 1.6))
    height = 0.8 / len(kinds)
    for index, (key, label) in enumerate(kinds):
        axis.barh(
            [i + (index - 1) * height for i in range(len(rows))],
            [_float(row.get(key)) for row in rows],
            height=height,
            label=label,
        )
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("time ratio verticals / peft (1.0 = same speed; < 1 faster)")
    axis.legend(loc="lower right")
    backend = results.get("backend", "?")
    where = "the Triton kernels" if backend == "triton" else f"the {backend} path (peft's own forward)"
    title = (
        f"Adapter kernels: time of verticals / peft per layer shape; {where} on "
        f"{results.get('device', '?').split(',')[0]}, {results.get('dtype', '?')}, LoRA r={results.get('rank', '?')}, "
        f"{results.get('statistic', 'median')} of {results.get('repeats', '?')} calls"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, _chart_path(md_path, "ratios"), title)]


# -- speech (benchmarks/speech.py) -------------------------------------------------------------------------
def chart_speech(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """WER per condition per method with bootstrap CIs; overall WER against trainable parameters; training
    throughput of ``verticals fit`` vs ``Seq2SeqTrainer`` per repeat and merged / base decode time.

    Args:
        results: ``speech.json`` (``methods``, ``merge``, ``throughput``, ``settings``).
        md_path: the report; the charts go beside it.
    """
    plt = _pyplot()
    charts = []
    methods = results.get("methods") or {}
    settings = results.get("settings") or {}
    if methods:
        names = list(methods)
        colours = _colours(names)
        conditions = list(next(iter(methods.values()))["wer"])
        figure, axis = plt.subplots(figsize=(8.0, 4.2))
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            wer = [methods[name]["wer"][c] for c in conditions]
            ci = methods[name].get("wer_ci") or {}
            low = [_float((ci.get(c) or [None, None])[0]) for c in conditions]
            high = [_float((ci.get(c) or [None, None])[1]) for c in conditions]
            axis.bar(
                [i + (index - (len(names) - 1) / 2) * width for i in range(len(conditions))],
                wer,
                width=width,
                yerr=_error(wer, low, high),
                capsize=2,
                color=colours[name],
                label=name,
            )
        axis.set_xticks(range(len(conditions)), conditions)
        axis.set_ylabel("WER (pooled over utterances)")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(ncol=3)
        seeds = settings.get("seeds") or []
        spread = (
            f"mean over seeds {seeds} with its 95% t-interval"
            if len(seeds) > 1
            else f"one run per method, 95% bootstrap CI ({settings.get('bootstrap', '?')} resamples)"
        )
        test_set = f" ({settings['test_sets'][0]})" if settings.get("test_sets") else ""
        title = (
            f"Whisper {settings.get('source', '')}: WER per condition{test_set}, "
            f"{settings.get('test_per_condition', '?')} test utterances per condition, {spread}"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout()
        charts.append(_save(figure, _chart_path(md_path, "wer_by_condition"), title))

        figure, axis = plt.subplots(figsize=(6.5, 4.0))
        for name in names:
            row = methods[name]
            wer, low, high = (_float(row["overall"].get(k)) for k in ("wer", "wer_low", "wer_high"))
            if not row.get("fit_seconds") and "zero_shot" in name:
                axis.axhline(wer, color=colours[name], linestyle="--", label=f"{name} (no training)")
                axis.axhspan(low, high, color=colours[name], alpha=0.12)
                continue
            axis.errorbar(
                [row["trainable"]],
                [wer],
                yerr=_error([wer], [low], [high]),
                fmt="o",
                capsize=3,
                color=colours[name],
                label=name,
            )
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters (log scale)")
        axis.set_ylabel("WER, all conditions pooled")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        title = f"Whisper: overall WER{test_set} vs trainable parameters (" + (
            f"mean over {len(seeds)} seeds, 95% t-interval)"
            if len(seeds) > 1
            else "one run each, 95% bootstrap CI)"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout()
        charts.append(_save(figure, _chart_path(md_path, "wer_vs_trainable"), title))
    throughput = results.get("throughput") or {}
    merge = results.get("merge") or {}
    if throughput or merge:
        panels = [p for p in ("throughput", "merge") if (throughput if p == "throughput" else merge)]
        figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
        for axis, panel in zip(axes[0], panels):
            if panel == "throughput":
                routes = [("verticals", "verticals fit"), ("seq2seq_trainer", "Seq2SeqTrainer + peft")]
                for index, (key, _) in enumerate(routes):
                    values = (throughput.get(key) or {}).get("repeats_steady_utterances_per_s") or []
                    median = (throughput.get(key) or {}).get("steady_utterances_per_s")
                    if median is not None:
                        axis.bar(index, median, color=("tab:blue", "tab:orange")[index], alpha=0.6)
                    axis.scatter([index] * len(values), values, color="black", s=14, zorder=3)
                axis.set_xticks(range(len(routes)), [label for _, label in routes])
                axis.set_ylabel("utterances / s (steady state)")
                ratio = throughput.get("ratio")
                repeats = len(
                    (throughput.get("verticals") or {}).get("repeats_steady_utterances_per_s") or []
                )
                axis.set_title(
                    f"Training throughput, LoRA q/v: bars median, dots {repeats} repeats"
                    + (f"\nratio verticals / Seq2SeqTrainer {ratio:.3f}" if ratio else "")
                )
            else:
                names = list(merge)
                ratios = [merge[name]["merged_vs_base_time"] for name in names]
                axis.bar(range(len(names)), ratios, color="tab:green")
                axis.axhline(1.0, color="black", linewidth=1)
                for index, name in enumerate(names):
                    axis.text(
                        index,
                        ratios[index],
                        f"{merge[name]['equal_transcripts']}/{merge[name]['utterances']} equal",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
                axis.set_xticks(range(len(names)), names)
                axis.set_ylim(0, max(ratios) * 1.18)
                axis.set_ylabel("decode time merged / base model")
                axis.set_title(
                    "Merged adapters: decode time vs the base model\n(label: transcripts equal to the unmerged model's)"
                )
        title = "Speech: training throughput and merged decoding"
        figure.tight_layout()
        charts.append(_save(figure, _chart_path(md_path, "speed"), title))
    return charts


def chart_speech_voices(
    results: Mapping[str, Any], md_path: Path, target_wer: float | None = None
) -> list[Chart]:
    """Zero-shot WER per espeak-ng voice at each speaking rate, the packaged ``clear`` voice marked.

    Args:
        results: ``speech_voices.json`` (``rows``: voice, rate, wer, packaged_clear; ``settings``).
        md_path: the report; the chart goes beside it.
        target_wer: drawn as a line when given (the issue's target for the clear condition).
    """
    plt = _pyplot()
    rows = results.get("rows") or []
    if not rows:
        return []
    voices = sorted(
        {row["voice"] for row in rows}, key=lambda v: (min(r["wer"] for r in rows if r["voice"] == v), v)
    )
    rates = sorted({row["rate"] for row in rows})
    figure, axis = plt.subplots(figsize=(7.0, 0.3 * len(voices) * max(1, len(rates) / 2) + 1.6))
    height = 0.8 / len(rates)
    for index, rate in enumerate(rates):
        for position, voice in enumerate(voices):
            row = next((r for r in rows if r["voice"] == voice and r["rate"] == rate), None)
            if row is None:
                continue
            y = position + (index - (len(rates) - 1) / 2) * height
            axis.barh(
                y,
                100 * row["wer"],
                height=height,
                color=("tab:blue", "tab:orange", "tab:green")[index % 3],
                edgecolor="black" if row.get("packaged_clear") else "none",
                linewidth=1.5,
                label=f"{rate} wpm" if position == 0 else None,
            )
            if row.get("packaged_clear"):
                axis.text(100 * row["wer"] + 0.5, y, "packaged clear", va="center", fontsize=7)
    if target_wer is not None:
        axis.axvline(
            100 * target_wer, color="red", linestyle="--", label=f"target for clear: {100 * target_wer:.0f}%"
        )
    axis.set_yticks(range(len(voices)), voices, fontsize=7.5)
    axis.invert_yaxis()
    axis.set_xlabel("WER % (zero-shot)")
    axis.legend(loc="upper right")
    settings = results.get("settings") or {}
    title = (
        f"Whisper {settings.get('model', '')} zero-shot WER per synthetic voice "
        f"({settings.get('sentences', '?')} sentences each, one run)"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, _chart_path(md_path, "wer"), title)]


# -- medical fairness, one seed (benchmarks/medical_fairness.py) -------------------------------------------
def chart_medical_fairness(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Per run: test AUROC of each skin-tone group, and the skin-tone and sex (negative control) gaps, each
    with its bootstrap CI.

    Args:
        results: one seed's ``medical_fairness`` JSON (``runs`` with ``test.attributes``; ``settings``).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    runs = [run for run in results.get("runs", []) if (run.get("test") or {}).get("attributes")]
    if not runs:
        return []
    attributes = list(runs[0]["test"]["attributes"])
    sensitive = attributes[0]
    groups = list(runs[0]["test"]["attributes"][sensitive]["groups"])
    labels = [run["label"] for run in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.0, 0.42 * len(runs) + 2.4), sharey=True)
    colours = _colours(groups)
    for index, group in enumerate(groups):
        values = [run["test"]["attributes"][sensitive]["groups"][group]["auroc"] for run in runs]
        centre = [_float(v["value"]) for v in values]
        y = [i + (index - (len(groups) - 1) / 2) * 0.25 for i in range(len(runs))]
        left.errorbar(
            centre,
            y,
            xerr=_error(centre, [_float(v["low"]) for v in values], [_float(v["high"]) for v in values]),
            fmt="o",
            capsize=2,
            color=colours[group],
            label=f"{sensitive}={group}",
        )
    left.set_xlabel("test AUROC of the group")
    left.grid(alpha=0.3, axis="x")
    for index, attribute in enumerate(attributes):
        values = [run["test"]["attributes"][attribute]["auroc_best_minus_worst"] for run in runs]
        centre = [_float(v["value"]) for v in values]
        y = [i + (index - (len(attributes) - 1) / 2) * 0.25 for i in range(len(runs))]
        right.errorbar(
            centre,
            y,
            xerr=_error(centre, [_float(v["low"]) for v in values], [_float(v["high"]) for v in values]),
            fmt="s",
            capsize=2,
            color="tab:red" if index == 0 else "grey",
            label=attribute + (" (negative control)" if index else ""),
        )
    right.axvline(0, color="black", linewidth=1)
    right.set_xlabel("AUROC gap, best − worst group")
    right.grid(alpha=0.3, axis="x")
    left.set_yticks(range(len(runs)), labels)
    left.invert_yaxis()
    bottom = _legend_below(figure, [left, right], 4)
    settings = results.get("settings") or {}
    title = (
        f"Per-group test AUROC and gaps, seed {settings.get('seed', '?')}, "
        f"{settings.get('num_images', '?')} generated images; 95% bootstrap CI ({settings.get('bootstrap', '?')} "
        "resamples)"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return [_save(figure, _chart_path(md_path, "groups"), title)]


# -- medical fairness over seeds (benchmarks/medical_fairness_seeds.py) ------------------------------------
def _seed_run(report: Mapping[str, Any] | None, label: str) -> Mapping[str, Any] | None:
    if not report:
        return None
    return next((run for run in report.get("runs", []) if run.get("label") == label), None)


def _load_seed_reports(results: Mapping[str, Any], md_path: Path) -> dict[int, Mapping[str, Any]]:
    """The per-seed JSONs the summary links (its ``seed_reports``, relative to the report), where present."""
    reports = {}
    for seed, relative in (results.get("seed_reports") or {}).items():
        path = (md_path.parent / relative).with_suffix(".json")
        if path.exists():
            reports[int(seed)] = json.loads(path.read_text())
    return reports


def chart_medical_fairness_seeds(
    results: Mapping[str, Any],
    md_path: Path,
    gap_reduction_target: float | None = None,
    auroc_drop_target: float | None = None,
) -> list[Chart]:
    """Over seeds: each run's skin-tone gap and test AUROC per seed (with that seed's bootstrap CI when its
    report is beside the summary); the gap reduction against the AUROC change vs LoRA with the target box;
    the worst-group ECE per temperature scaling.

    Args:
        results: the summary JSON (``summary.runs``, ``summary.seeds``, ``seed_reports``).
        md_path: the report; the charts go beside it (the per-seed reports are found from it).
        gap_reduction_target: the gap cut the targets ask for (e.g. 0.5), shaded when given with
            ``auroc_drop_target``.
        auroc_drop_target: the overall AUROC loss the targets allow (e.g. 0.02).
    """
    plt = _pyplot()
    summary = results.get("summary") or {}
    runs = summary.get("runs") or {}
    seeds = list(summary.get("seeds") or [])
    if not runs or not seeds:
        return []
    charts = []
    reports = _load_seed_reports(results, md_path)
    labels = list(runs)
    colours = _colours([str(s) for s in seeds])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11.0, 0.5 * len(labels) + 2.0), sharey=True)
    width = 0.7 / len(seeds)
    for index, seed in enumerate(seeds):
        gap_c, gap_lo, gap_hi, au_c, au_lo, au_hi, ys = [], [], [], [], [], [], []
        for position, label in enumerate(labels):
            entry = runs[label]
            chosen = entry.get("chosen")
            seed_label = chosen[index] if chosen else label
            run = _seed_run(reports.get(int(seed)), seed_label)
            if run is not None:
                gap = run["test"]["attributes"]["skin_tone"]["auroc_best_minus_worst"]
                auroc = run["test"]["overall"]["auroc"]
                gap_c.append(_float(gap["value"]))
                gap_lo.append(_float(gap["low"]))
                gap_hi.append(_float(gap["high"]))
                au_c.append(_float(auroc["value"]))
                au_lo.append(_float(auroc["low"]))
                au_hi.append(_float(auroc["high"]))
            else:
                gap_c.append(_float(entry["gap"]["values"][index]))
                au_c.append(_float(entry["auroc"]["values"][index]))
                gap_lo.append(math.nan)
                gap_hi.append(math.nan)
                au_lo.append(math.nan)
                au_hi.append(math.nan)
            ys.append(position + (index - (len(seeds) - 1) / 2) * width)
        kwargs = {"fmt": "o", "markersize": 3.5, "capsize": 1.5, "color": colours[str(seed)], "elinewidth": 1}
        left.errorbar(gap_c, ys, xerr=_error(gap_c, gap_lo, gap_hi), label=f"seed {seed}", **kwargs)
        right.errorbar(au_c, ys, xerr=_error(au_c, au_lo, au_hi), **kwargs)
    for position, label in enumerate(labels):
        left.plot(
            [runs[label]["gap"]["mean"]] * 2, [position - 0.4, position + 0.4], color="black", linewidth=2
        )
        right.plot(
            [runs[label]["auroc"]["mean"]] * 2, [position - 0.4, position + 0.4], color="black", linewidth=2
        )
    left.axvline(0, color="grey", linewidth=1)
    left.set_xlabel("skin-tone AUROC gap, best − worst group")
    right.set_xlabel("overall test AUROC")
    left.set_yticks(
        range(len(labels)), [label.replace(" (chosen", "\n(chosen") for label in labels], fontsize=7.5
    )
    left.invert_yaxis()
    for axis in (left, right):
        axis.grid(alpha=0.3, axis="x")
    bottom = _legend_below(figure, [left], 8)
    cis = (
        "with each seed's 95% bootstrap CI"
        if reports
        else "(per-seed CIs: the per-seed reports were not found)"
    )
    title = f"Skin-tone gap and AUROC per seed {cis}; black bar: mean over {_seeds_text(seeds)}"
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout(rect=(0, bottom, 1, 1))
    charts.append(_save(figure, _chart_path(md_path, "gap_auroc"), title))

    compared = [  # table (b) of the report: the fairness-aware methods against LoRA
        label
        for label in labels
        if runs[label].get("vs_lora") and runs[label].get("method") in ("fair_lora", "group_dro")
    ]
    if compared:
        figure, axis = plt.subplots(figsize=(8.0, 4.6 + 0.2 * math.ceil(len(compared) / 2)))
        colour = _colours(compared)
        if gap_reduction_target is not None and auroc_drop_target is not None:
            axis.fill_between(
                [-100 * auroc_drop_target, 100],
                100 * gap_reduction_target,
                1000,
                color="tab:green",
                alpha=0.12,
                label="both targets met",
            )
        for label in compared:
            versus = runs[label]["vs_lora"]
            x = [100 * v for v in versus["auroc_change"]["values"]]
            y = [100 * v for v in versus["gap_reduction"]["values"]]
            axis.scatter(x, y, s=12, color=colour[label], alpha=0.5)
            axis.scatter(
                [100 * versus["auroc_change"]["mean"]],
                [100 * versus["gap_reduction_of_means"]],
                s=28 if "budget" in label else 95 if "chosen" in label else 70,
                marker="s" if "budget" in label else "o" if "chosen" in label else "D",
                color=colour[label],
                edgecolor="black",
                label=label,
                zorder=3,
            )
        axis.axhline(0, color="grey", linewidth=1)
        axis.axvline(0, color="grey", linewidth=1)
        xs = [100 * v for label in compared for v in runs[label]["vs_lora"]["auroc_change"]["values"]]
        ys = [100 * v for label in compared for v in runs[label]["vs_lora"]["gap_reduction"]["values"]]
        finite = [v for v in xs if not math.isnan(v)] or [0.0]
        axis.set_xlim(min(min(finite), -100 * (auroc_drop_target or 0)) - 1, max(max(finite), 0) + 1)
        finite = [v for v in ys if not math.isnan(v)] or [0.0]
        axis.set_ylim(min(min(finite), 0) - 10, max(max(finite), 100 * (gap_reduction_target or 0)) + 10)
        axis.set_xlabel("overall test AUROC change vs LoRA (points)")
        axis.set_ylabel("skin-tone gap reduction vs LoRA (%)")
        axis.grid(alpha=0.3)
        bottom = _legend_below(figure, [axis], 2)
        title = (
            f"Fairness-aware runs vs LoRA over {_seeds_text(seeds)}: small dots each seed, large markers "
            "seed-averaged (the gap reduction of the mean gaps; ● and ■ the variants chosen per seed on validation)"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "targets"), title))

    calibrated = [label for label in labels if runs[label].get("calibration")]
    if calibrated:
        scalings = list(runs[calibrated[0]]["calibration"])
        colour = _colours(scalings)
        figure, axis = plt.subplots(figsize=(8.5, 0.55 * len(calibrated) + 1.8))
        height = 0.8 / len(scalings)
        for index, scaling in enumerate(scalings):
            ys, means, lows, highs, dots_x, dots_y, floors = [], [], [], [], [], [], []
            for position, label in enumerate(calibrated):
                entry = runs[label]["calibration"].get(scaling)
                if entry is None:
                    continue
                y = position + (index - (len(scalings) - 1) / 2) * height
                values = entry["worst_group_ece"]["values"]
                mean, low, high = (
                    t_interval(values)
                    if len(values) >= 3
                    else (entry["worst_group_ece"]["mean"], math.nan, math.nan)
                )
                ys.append(y)
                means.append(mean)
                lows.append(low)
                highs.append(high)
                dots_x += values
                dots_y += [y] * len(values)
                floors.append((y, entry["worst_group_floor"]["mean"]))
            axis.barh(
                ys,
                means,
                height=height,
                xerr=_bars(means, lows, highs),
                capsize=1.5,
                color=colour[scaling],
                alpha=0.8,
                label=scaling,
                error_kw={"elinewidth": 0.8},
            )
            axis.scatter(dots_x, dots_y, s=5, color="black", zorder=3)
            axis.scatter(
                [f for _, f in floors],
                [y for y, _ in floors],
                marker="|",
                s=40,
                color="red",
                zorder=4,
                label="sampling floor (mean)" if index == 0 else None,
            )
        axis.set_yticks(
            range(len(calibrated)),
            [label.replace(" (chosen", "\n(chosen") for label in calibrated],
            fontsize=7,
        )
        axis.invert_yaxis()
        axis.set_xlim(left=0)  # an ECE is never negative; a t-interval over few seeds can reach below 0
        axis.set_xlabel("worst skin-tone-group ECE on test (lower is better)")
        axis.grid(alpha=0.3, axis="x")
        bottom = _legend_below(figure, [axis], 3)
        interval = "with the 95% t-interval" if len(seeds) >= 3 else "(no interval below three seeds)"
        title = (
            f"Temperature scaling (fit on validation) over {_seeds_text(seeds)}: bars the mean {interval}, "
            "dots each seed, red ticks the sampling floor"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "calibration"), title))
    return charts


# -- medical SAM (benchmarks/medical_sam.py) ---------------------------------------------------------------
def chart_medical_sam(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Test Dice per class and method on each dataset (mean with t-interval over seeds, each seed a dot), and
    Dice per group (site, sex) with each run's bootstrap CI where the runs report groups.

    Args:
        results: ``medical_sam.json`` (``runs`` with ``dice_per_class`` and ``groups``).
        md_path: the report; the charts go beside it.
    """
    plt = _pyplot()
    runs = [run for run in results.get("runs", []) if run.get("dice_per_class")]
    charts = []
    datasets = list(dict.fromkeys(run["dataset"] for run in runs))
    methods = list(
        dict.fromkeys([*(results.get("arguments") or {}).get("methods", []), *(r["method"] for r in runs)])
    )
    methods = [method for method in methods if any(run["method"] == method for run in runs)]
    colours = _colours(methods)
    if datasets:
        figure, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets) + 0.6, 4.4), squeeze=False)
        for axis, dataset in zip(axes[0], datasets):
            chosen = [run for run in runs if run["dataset"] == dataset]
            present = [method for method in methods if any(run["method"] == method for run in chosen)]
            classes = list(chosen[0]["dice_per_class"])
            width = 0.8 / len(present)
            for index, method in enumerate(present):
                mine = [run for run in chosen if run["method"] == method]
                xs, means, lows, highs = [], [], [], []
                for position, name in enumerate(classes):
                    values = [_float(run["dice_per_class"].get(name)) for run in mine]
                    mean, low, high = t_interval(values)
                    x = position + (index - (len(present) - 1) / 2) * width
                    xs.append(x)
                    means.append(mean)
                    lows.append(low)
                    highs.append(high)
                    axis.scatter([x] * len(values), values, s=8, color="black", zorder=3)
                axis.bar(
                    xs,
                    means,
                    width=width,
                    yerr=_bars(means, lows, highs),
                    capsize=2,
                    color=colours[method],
                    label=f"{method} ({_count(runs, method)})",
                    error_kw={"elinewidth": 1},
                )
            axis.set_xticks(range(len(classes)), classes)
            axis.set_ylim(0, 1.05)
            axis.set_ylabel("test Dice")
            axis.set_title(dataset)
        bottom = _legend_below(figure, axes[0], 4)
        title = "Test Dice per class: bars the mean over seeds with its 95% t-interval (none from one seed), dots each seed"
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "dice_per_class"), title))
    grouped = [run for run in results.get("runs", []) if run.get("groups")]
    if grouped:
        groupings = list(dict.fromkeys(name for run in grouped for name in run["groups"]))
        figure, axes = plt.subplots(
            1, len(groupings), figsize=(5.6 * len(groupings), 0.6 * len(grouped) + 2.2), squeeze=False
        )
        for axis, grouping in zip(axes[0], groupings):
            entries = [run["groups"].get(grouping) or {} for run in grouped]
            names = list(dict.fromkeys(g for entry in entries for g in entry.get("dice", {})))
            group_colours = _colours(names)
            for index, name in enumerate(names):
                values = [(entry.get("dice") or {}).get(name) or {} for entry in entries]
                centre = [_float(v.get("value")) for v in values]
                ys = [i + (index - (len(names) - 1) / 2) * 0.3 for i in range(len(grouped))]
                axis.errorbar(
                    centre,
                    ys,
                    xerr=_error(
                        centre,
                        [_float(v.get("low")) for v in values],
                        [_float(v.get("high")) for v in values],
                    ),
                    fmt="o",
                    capsize=2,
                    color=group_colours[name],
                    label=f"{grouping} {name}",
                )
            labels = []
            for run, entry in zip(grouped, entries):
                gap = entry.get("best_minus_worst") or {}
                value = _float(gap.get("value"))
                scores = [_float((d or {}).get("value")) for d in (entry.get("dice") or {}).values()]
                undefined = "gap undefined" + (" (every group 0)" if scores and not any(scores) else "")
                shown = (
                    undefined
                    if math.isnan(value)
                    else (f"gap {value:.3f} [{_float(gap.get('low')):.3f}, {_float(gap.get('high')):.3f}]")
                )
                labels.append(f"{run['method']}, seed {run['seed']}\n{shown}")
            axis.set_yticks(range(len(grouped)), labels, fontsize=7)
            axis.set_ylim(len(grouped) - 0.5, -0.5)
            axis.set_xlim(0, 1.02)
            axis.set_xlabel("test Dice of the group")
            axis.set_title(f"by {grouping}")
            axis.grid(alpha=0.3, axis="x")
        bottom = _legend_below(figure, axes[0], 4)
        dataset = ", ".join(dict.fromkeys(run["dataset"] for run in grouped))
        title = (
            f"{dataset}: Dice per group with each run's 95% bootstrap CI over test slices; "
            "the label gives the best − worst gap and its CI"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "groups"), title))
    return charts


def _count(runs: Sequence[Mapping[str, Any]], method: str) -> str:
    """How many seeds a method ran per dataset: "3 seeds", or "1–3 seeds" where datasets differ."""
    counts = sorted(
        {
            sum(1 for r in runs if r["method"] == method and r["dataset"] == d)
            for d in {r["dataset"] for r in runs if r["method"] == method}
        }
    )
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{text} seed{'' if text == '1' else 's'}"


# -- point clouds (benchmarks/pointcloud.py) ---------------------------------------------------------------
def chart_pointcloud(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Point-PEFT minus each other method, paired by seed, per test column (mean and t-interval); overall
    accuracy per seed; the learning-rate tuning. (Accuracy per group and against trainable % are drawn by
    the script itself, in ``pointcloud/``.)

    Args:
        results: ``pointcloud.json`` (``summary.point_peft_minus``, ``summary.methods``, ``summary.tuning``).
        md_path: the report; the charts go beside it.
    """
    summary = results.get("summary") or {}
    charts = _paired_chart(
        summary.get("point_peft_minus") or {}, _chart_path(md_path, "paired"), "Point-PEFT", "accuracy"
    )
    charts += _per_seed_chart(
        summary.get("methods") or {}, "accuracy", "overall", _chart_path(md_path, "per_seed"), "accuracy"
    )
    tuning = summary.get("tuning") or {}
    if tuning:
        chosen = {
            m: e.get("learning_rate")
            for m, e in (summary.get("methods") or {}).items()
            if e.get("learning_rate")
        }
        seed = (results.get("arguments") or {}).get("tune_seed", "?")
        charts.append(_tuning_chart(tuning, chosen, _chart_path(md_path, "lr_tuning"), "accuracy", seed))
    return charts


def _paired_chart(
    minus: Mapping[str, Mapping[str, Any]], path: Path, reference: str, metric: str
) -> list[Chart]:
    """A forest plot: per compared method and column, the reference minus it, paired by seed, with the
    t-interval; 0 marked."""
    plt = _pyplot()
    others = list(minus)
    if not others:
        return []
    columns = list(next(iter(minus.values())))
    figure, axes = plt.subplots(
        1,
        len(columns),
        figsize=(2.3 * len(columns) + 1.6, 0.4 * len(others) + 1.9),
        squeeze=False,
        sharey=True,
    )
    for axis, column in zip(axes[0], columns):
        means, lows, highs = zip(*(_interval_from_stats(minus[other].get(column)) for other in others))
        colours = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "grey" for lo, hi in zip(lows, highs)]
        for position, (mean, low, high, colour) in enumerate(zip(means, lows, highs, colours)):
            axis.errorbar(
                [mean], [position], xerr=_error([mean], [low], [high]), fmt="o", capsize=3, color=colour
            )
        axis.axvline(0, color="black", linewidth=1)
        axis.set_title(column, fontsize=8.5)
        axis.grid(alpha=0.3, axis="x")
        axis.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(range(len(others)), others)
    axes[0][0].invert_yaxis()
    seeds = next(iter(next(iter(minus.values())).values())).get("n", "?")
    figure.supxlabel(f"{reference} {metric} minus the method's (same seed)", fontsize=8.5)
    title = (
        f"{reference} minus each method, paired by seed ({seeds} seeds): mean and 95% t-interval; "
        f"green {reference} better, red the other, grey no difference shown"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, path, title)]


def _per_seed_chart(
    methods: Mapping[str, Mapping[str, Any]], key: str, column: str | None, path: Path, what: str
) -> list[Chart]:
    """Each method's test figure per seed (dots) beside its mean and t-interval, the method's trainable %
    of the backbone under its name: the accuracy-for-parameters trade-off without overlapping points."""
    plt = _pyplot()
    names = [name for name in methods if (methods[name].get(key) or {})]
    if not names:
        return []
    figure, axis = plt.subplots(figsize=(0.85 * len(names) + 2.2, 4.3))
    colours = _colours(names)
    counts = set()
    for index, name in enumerate(names):
        entry = methods[name][key] if column is None else methods[name][key].get(column, {})
        values = [_float(v) for v in entry.get("values", [])]
        counts.add(len(values))
        mean, low, high = _interval_from_stats(entry)
        axis.scatter([index - 0.12] * len(values), values, s=12, color=colours[name], alpha=0.7)
        axis.errorbar(
            [index + 0.12],
            [mean],
            yerr=_error([mean], [low], [high]),
            fmt="D",
            capsize=3,
            color=colours[name],
        )
    labels = []
    for name in names:
        percent = methods[name].get("trainable_percent")
        trainable = "–" if math.isnan(_float(percent)) else f"{percent:.3g}%"
        labels.append(f"{name.replace('_', chr(10), 2)}\n{trainable}")
    axis.set_xticks(range(len(names)), labels, fontsize=7)
    axis.set_xlabel(
        "method, and its trainable parameters as % of the backbone (– none: no backbone)", fontsize=8
    )
    label = what if column is None else f"{what} ({column})"
    axis.set_ylabel(f"test {label}")
    axis.grid(alpha=0.3, axis="y")
    n = "/".join(str(c) for c in sorted(counts))
    title = f"Test {label} per seed ({n} seeds): dots each seed, ◆ the mean with its 95% t-interval"
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, path, title)]


# -- remote sensing (benchmarks/remote_sensing.py) ---------------------------------------------------------
def chart_remote_sensing(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """mIoU per seed beside each method's trainable %, MoFA's router weights per artefact type, and the
    learning-rate tuning. (mIoU per artefact and MoFA minus each control are drawn by the script
    itself, in ``remote_sensing/``.)

    Args:
        results: ``remote_sensing.json`` (``summary.methods``, ``summary.tuning``, ``runs`` with ``router``).
        md_path: the report; the charts go beside it.
    """
    plt = _pyplot()
    charts = []
    summary = results.get("summary") or {}
    methods = summary.get("methods") or {}
    charts += _per_seed_chart(methods, "miou", None, _chart_path(md_path, "per_seed"), "mIoU")
    router_run = next((run for run in results.get("runs", []) if run.get("router")), None)
    if router_run is not None:
        router = router_run["router"]
        artefacts = list(router)
        blocks = list(next(iter(router.values())))
        experts = ["spatial", "low band", "high band"]
        figure, axes = plt.subplots(
            1, len(blocks), figsize=(3.3 * len(blocks) + 0.8, 3.6), squeeze=False, sharey=True
        )
        colours = ["tab:grey", "tab:blue", "tab:orange"]
        for axis, block in zip(axes[0], blocks):
            left = [0.0] * len(artefacts)
            for index, expert in enumerate(experts):
                weights = [router[a][block][index] for a in artefacts]
                axis.barh(range(len(artefacts)), weights, left=left, color=colours[index], label=expert)
                left = [a + b for a, b in zip(left, weights)]
            axis.set_title(block, fontsize=8.5)
            axis.set_xlim(0, 1)
            axis.set_xlabel("mean router weight")
        axes[0][0].set_yticks(range(len(artefacts)), artefacts)
        axes[0][0].invert_yaxis()
        bottom = _legend_below(figure, axes[0][:1], 3)
        title = (
            f"MoFA's router: mean weight on each expert per artefact type of the test tiles, per adapted block "
            f"({router_run['method']}, seed {router_run['seed']})"
        )
        figure.suptitle(_wrap(title, figure))
        figure.tight_layout(rect=(0, bottom, 1, 1))
        charts.append(_save(figure, _chart_path(md_path, "router"), title))
    tuning = summary.get("tuning") or {}
    if tuning:
        chosen = {m: e.get("learning_rate") for m, e in methods.items() if e.get("learning_rate")}
        seed = (results.get("arguments") or {}).get("tune_seed", "?")
        charts.append(_tuning_chart(tuning, chosen, _chart_path(md_path, "lr_tuning"), "mIoU", seed))
    return charts


# -- speed (benchmarks/speed.py) --------------------------------------------------------------------------
def chart_speed(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Inference time of the unmerged, merged and exported adapter over the base model's, per backbone shape
    and LoRA targets, with the 95% bootstrap interval of the median ratio over repeats; the issue's 1.05 bar.

    Args:
        results: ``speed.json`` (``merged.rows`` with ``ratios`` per variant).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    rows = (results.get("merged") or {}).get("rows") or []
    if not rows:
        return []
    labels = [f"{row['shape']}, {row['targets']}, batch {row['batch']}" for row in rows]
    variants = [("unmerged", "unmerged LoRA"), ("merged", "merged (predict)"), ("exported", "exported")]
    figure, axis = plt.subplots(figsize=(8.0, 0.55 * len(rows) + 1.8))
    height = 0.8 / len(variants)
    for index, (key, label) in enumerate(variants):
        entries = [row["ratios"][key] for row in rows]
        centre = [_float(entry.get("median")) for entry in entries]
        axis.barh(
            [i + (index - 1) * height for i in range(len(rows))],
            centre,
            height=height,
            xerr=_bars(
                centre, [_float(e.get("low")) for e in entries], [_float(e.get("high")) for e in entries]
            ),
            capsize=2,
            label=label,
        )
    axis.axvline(1.0, color="black", linewidth=1)
    target = (results["merged"].get("summary") or {}).get("target_ratio")
    if target:
        axis.axvline(target, color="tab:red", linestyle="--", linewidth=1, label=f"{target}x base (the bar)")
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("inference time / base model (1.0 = same; median over repeats, 95% bootstrap CI)")
    bottom = _legend_below(figure, [axis], ncol=4)
    settings = results.get("settings") or {}
    machine = results.get("machine") or {}
    title = (
        f"Merged vs unmerged LoRA r={settings.get('rank', '?')} vs base inference, "
        f"{settings.get('repeats', '?')} ABBA repeats on {machine.get('cpu', '?')}, "
        f"{machine.get('torch_threads', '?')} thread(s)"
        + (" (tiny smoke run)" if settings.get("tiny") else "")
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return [_save(figure, _chart_path(md_path, "merged"), title)]


# -- frozen-prefix caching (benchmarks/prefix_cache.py) -------------------------------------------------------
def chart_prefix_cache(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """Training samples/s with the frozen-prefix cache over without it, per workload (each repeat a dot, the
    median a bar), with each workload's target.

    Args:
        results: ``prefix_cache.json`` (``rows`` with ``speedups`` and ``target``).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    rows = results.get("rows") or []
    if not rows:
        return []
    figure, axis = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.8))
    for index, row in enumerate(rows):
        axis.barh(index, _float(row.get("speedup")), color="tab:blue", alpha=0.7)
        axis.scatter([_float(s) for s in row.get("speedups") or []], [index] * len(row.get("speedups") or []),
                     color="black", s=12, zorder=3)  # fmt: skip
        if row.get("target"):
            axis.plot([row["target"]] * 2, [index - 0.4, index + 0.4], color="tab:red", linestyle="--")
    axis.axvline(1.0, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set_yticks(range(len(rows)), [str(row["workload"]) for row in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("samples/s cached / uncached after the first epoch (log; dots: repeats, red: target)")
    settings = results.get("settings") or {}
    machine = results.get("machine") or {}
    title = (
        f"Frozen-prefix caching: training speed-up, {settings.get('epochs', '?')} epochs, "
        f"{settings.get('repeats', '?')} ABBA repeats, seed {settings.get('seed', '?')} on {machine.get('cpu', '?')}"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout()
    return [_save(figure, _chart_path(md_path, "speedup"), title)]


# -- Whisper at the utterance's length (benchmarks/whisper_length.py) -----------------------------------------
def chart_whisper_length(results: Mapping[str, Any], md_path: Path) -> list[Chart]:
    """WER per condition for each route (30 s window, 10 s window, utterance length), zero-shot and LoRA q/v.

    Args:
        results: ``whisper_length.json`` (``runs`` with ``route``, ``method`` and ``wer`` per condition).
        md_path: the report; the chart goes beside it.
    """
    plt = _pyplot()
    runs = results.get("runs") or []
    if not runs:
        return []
    conditions = list(runs[0]["wer"])
    methods = list(dict.fromkeys(run["method"] for run in runs))
    routes = list(dict.fromkeys(run["route"] for run in runs))
    figure, axes = plt.subplots(
        1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False, sharey=True
    )
    width = 0.8 / len(routes)
    for axis, method in zip(axes[0], methods):
        for index, route in enumerate(routes):
            group = [r for r in runs if r["route"] == route and r["method"] == method]
            if not group:
                continue
            axis.bar(
                [i + (index - (len(routes) - 1) / 2) * width for i in range(len(conditions))],
                [sum(_float(r["wer"][c]) for r in group) / len(group) for c in conditions],
                width=width,
                label=route,
            )
        axis.set_xticks(range(len(conditions)), conditions, fontsize=8)
        seeds = sorted({r.get("seed", 0) for r in runs if r["method"] == method})
        axis.set_title(f"{method} (seeds {', '.join(map(str, seeds))}; mean over each route's seeds)", fontsize=9)
        axis.set_ylabel("WER (pooled)")
    bottom = _legend_below(figure, list(axes[0]), ncol=len(routes))
    settings = results.get("settings") or {}
    title = (
        f"Whisper {settings.get('source', '?')}: WER per condition by encoder length (mean over seeds), "
        f"{settings.get('test_per_condition', '?')} test utterances per condition"
    )
    figure.suptitle(_wrap(title, figure))
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return [_save(figure, _chart_path(md_path, "wer"), title)]


# -- which chart function a report needs -------------------------------------------------------------------
CHARTS: dict[str, Callable[..., list[Chart]]] = {
    "timeseries": chart_timeseries,
    "seeds": chart_seeds,
    "core_parity": chart_core_parity,
    "kernels": chart_kernels,
    "speech": chart_speech,
    "speech_voices": chart_speech_voices,
    "medical_fairness": chart_medical_fairness,
    "medical_fairness_seeds": chart_medical_fairness_seeds,
    "medical_sam": chart_medical_sam,
    "pointcloud": chart_pointcloud,
    "remote_sensing": chart_remote_sensing,
    "speed": chart_speed,
    "prefix_cache": chart_prefix_cache,
    "whisper_length": chart_whisper_length,
}


def kind_of(results: Mapping[str, Any]) -> str | None:
    """Which benchmark wrote a results JSON, from its shape (None: not a kind this module draws).

    Args:
        results: a report's JSON.
    """
    summary = results.get("summary")
    summary = summary if isinstance(summary, Mapping) else {}
    runs = results.get("runs")
    first = runs[0] if isinstance(runs, list) and runs and isinstance(runs[0], Mapping) else {}
    rows = results.get("rows")
    row = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], Mapping) else {}
    if results.get("benchmark") in ("speed", "prefix_cache", "whisper_length"):
        return str(results["benchmark"])
    if "seed_reports" in results:
        return "medical_fairness_seeds"
    if "point_peft_minus" in summary:
        return "pointcloud"
    if "mofa_minus" in summary:
        return "remote_sensing"
    if "classical" in results and "overhead" in results:
        return "timeseries"
    if "merge" in results and "methods" in results:
        return "speech"
    if "voice" in row:
        return "speech_voices"
    if "ratio_forward" in row:
        return "kernels"
    if "dice" in first and "dataset" in first:
        return "medical_sam"
    if "label" in first and "test" in first:
        return "medical_fairness"
    if "seed" in first and "test" in first and any(str(k).startswith("test_") for k in summary):
        return "seeds"
    if isinstance(results.get("metrics"), list):
        return "core_parity"
    return None


def _options_from_markdown(kind: str, text: str) -> dict[str, Any]:
    """What a chart needs that only the report's text records: the targets a table is checked against."""
    if kind == "medical_fairness_seeds":
        found = re.search(r"gap cut by ≥ (\d+)% with overall AUROC down by ≤ (\d+) points", text)
        if found:
            return {"gap_reduction_target": int(found[1]) / 100, "auroc_drop_target": int(found[2]) / 100}
    if kind == "speech_voices":
        found = re.search(r"the issue's (\d+)% target", text)
        if found:
            return {"target_wer": int(found[1]) / 100}
    return {}


def load_report(md_path: Path) -> tuple[str | None, dict[str, Any] | None, dict[str, Any], str]:
    """``(kind, results, options, note)`` of a report: its JSON (or, for a core parity report without one,
    its parsed table), the chart function's extra arguments, and why there is nothing to draw when so.

    Args:
        md_path: the markdown report.
    """
    text = md_path.read_text()
    json_path = md_path.with_suffix(".json")
    if json_path.exists():
        results = json.loads(json_path.read_text())
        kind = kind_of(results)
        if kind is None:
            return None, None, {}, f"{json_path.name}: not a results format charts.py knows"
        options = _options_from_markdown(kind, text)
        if kind == "seeds":
            earlier = md_path.parent / (md_path.stem.removesuffix("_after") + "_before.json")
            if md_path.stem.endswith("_after") and earlier.exists():
                options["before"] = json.loads(earlier.read_text())
                options["before_label"] = earlier.name
        return kind, results, options, ""
    if text.startswith("# Core parity"):
        return "core_parity", core_parity_from_markdown(text), {}, ""
    return None, None, {}, "no JSON beside it"


# -- the links block ---------------------------------------------------------------------------------------
def strip_chart_links(text: str) -> str:
    """The markdown without its ``## Charts`` block.

    Args:
        text: a report's markdown.
    """
    start = text.find(f"{HEADING}\n\n{BLOCK_START}")
    if start < 0:
        return text
    end = text.find(BLOCK_END, start)
    end = len(text) if end < 0 else end + len(BLOCK_END)
    before, after = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    return before + "\n\n" + after if after else before + "\n"


def with_chart_links(text: str, charts: Sequence[Chart], md_path: Path) -> str:
    """The markdown with one ``## Charts`` block linking ``charts`` (relative to the report), placed before
    the report's first ``##`` section so that a reader meets the pictures before the long tables (at the end
    when there is no section). An earlier block is replaced, so applying it twice gives the same text; no
    charts, no block.

    Args:
        text: a report's markdown.
        charts: the charts to link, in order.
        md_path: the report's path (the links are relative to its folder).
    """
    base = strip_chart_links(text)
    if not charts:
        return base
    links = [
        f"![{chart.title.replace('[', '(').replace(']', ')')}]({chart.path.relative_to(md_path.parent).as_posix()})"
        for chart in charts
    ]
    block = "\n\n".join([HEADING, BLOCK_START, "\n\n".join(links), BLOCK_END])
    section = re.search(r"^## ", base, flags=re.MULTILINE)
    if section is None:
        return base.rstrip("\n") + "\n\n" + block + "\n"
    before, after = base[: section.start()].rstrip("\n"), base[section.start() :]
    return before + "\n\n" + block + "\n\n" + after


def chart_report(
    md_path: Path, results: Mapping[str, Any] | None = None, kind: str | None = None, **options: Any
) -> list[Chart]:
    """Draw a report's charts beside it and link them from its ``## Charts`` block. What the benchmark
    scripts call after writing their markdown.

    Args:
        md_path: the markdown report (its JSON is read from beside it when ``results`` is None).
        results: the results as written to the JSON.
        kind: a key of :data:`CHARTS` (found from the results when None).
        **options: passed to the chart function (targets only the script knows, e.g.
            ``gap_reduction_target``).
    """
    md_path = Path(md_path)
    if results is None:
        kind, results, found, note = load_report(md_path)
        if kind is None:
            raise ValueError(f"{md_path}: nothing to draw ({note}).")
        options = {**found, **options}
    kind = kind or kind_of(results)
    if kind not in CHARTS:
        raise ValueError(f"{md_path}: no chart function for this results format ({kind}).")
    charts = CHARTS[kind](results, md_path, **options)
    md_path.write_text(with_chart_links(md_path.read_text(), charts, md_path))
    return charts


def reports(root: Path = RESULTS) -> list[Path]:
    """Every markdown report under ``root`` and its sub-folders (the per-seed reports), in order."""
    return sorted([*root.glob("*.md"), *root.glob("*/*.md")])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Redraw the charts of the given reports (default: all under ``benchmarks/results/``) and print a table
    of what was written and what was not, and why; returns the table's rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", type=Path, help="markdown reports (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for md_path in args.reports or reports():
        kind, results, options, note = load_report(md_path)
        if kind is None:
            rows.append({"report": md_path, "kind": "–", "charts": [], "note": note})
            continue
        charts = chart_report(md_path, results, kind, **options)
        sizes = [chart.path.stat().st_size for chart in charts]
        note = "" if charts else "the results hold nothing to draw"
        rows.append({"report": md_path, "kind": kind, "charts": charts, "sizes": sizes, "note": note})
    print("| report | kind | charts written (KB) | note |")
    print("|---|---|---|---|")
    for row in rows:
        written = ", ".join(
            f"{chart.path.name} ({size / 1024:.0f})"
            for chart, size in zip(row["charts"], row.get("sizes", []))
        )
        print(f"| {_display(row['report'])} | {row['kind']} | {written or '–'} | {row['note']} |")
    return rows


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(RESULTS.parent.parent).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
