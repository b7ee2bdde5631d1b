"""Point clouds: Point-PEFT against DAPT, LoRA, a bottleneck adapter, a linear probe, full fine-tuning and the
classical shape-descriptor forest, adapting a point transformer pretrained on clean and scanned shapes to
labelled scans; several seeds, paired per seed.

The backbone is the project's point transformer "small" pretrained on generated shapes of six seen families (a
stand-in for Point-MAE; cached). Each method adapts it on a few hundred labelled scans (partial view,
occluder, density gradient, jitter, background points) of eight families, two of them (stool, airplane) never
seen in pretraining, and is tested on the same held-out shapes once as clean CAD-like clouds and once scanned.
Every deep run is ``verticals run pointcloud/shapes_<method>`` through :func:`verticals.core.cli.run_cli`, as a
user runs it, with the seed (model and data) set from the command line. The forest is
:class:`~verticals.domains.pointcloud.baseline.DescriptorForest` fitted on the same datamodule's training split.
Per run: test accuracy overall, per domain (clean / scan) and per family novelty (seen / novel), from the
run's group report; trainable parameters and their % of the backbone (head included, as Point-PEFT counts);
seconds per training step. Across seeds: mean, sample std and t-interval, and Point-PEFT's paired per-seed
difference to every other method.

Usage (from the repository root)::

    python benchmarks/pointcloud.py                    # the committed table; 2-core CPU: see its header
    python benchmarks/pointcloud.py --seeds 0 --epochs 1 --size tiny --no-pretrained --num-points 128 \\
        --num-train 16 --num-val 8 --num-test 8 --no-tune --output /tmp/pointcloud.md          # smoke

Several processes can share the sweep (``--methods`` subsets, each with its own ``--runs-dir``); a last call
with every ``progress.json`` given to ``--resume`` runs nothing more and writes the joint table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    TrainWindow,
    callback_class_path,
    figure_links,
    find_callback,
    format_interval,
    machine,
    machine_line,
    median_step_seconds,
    paired_verdict,
    quiet_run,
    runs_root,
    sweep_results,
    tuning_table,
    write_reports,
)
from charts import chart_report

from verticals.core.cli import run_cli
from verticals.core.seeds import seed_statistics

SCRIPT = "benchmarks/pointcloud.py"
DEEP_METHODS = ("point_peft", "dapt", "lora", "bottleneck", "linear_probe", "full")
BASELINE = "descriptor_forest"
#: Point-PEFT with one of its parts switched off (adapter options of ``pointcloud/shapes_point_peft``), run at
#: Point-PEFT's tuned learning rate: which part costs or buys what.
ABLATIONS: dict[str, dict[str, Any]] = {
    "point_peft_no_prior": {"use_prior": False},
    "point_peft_no_geometry": {"use_geometry": False},
}
METHODS = (*DEEP_METHODS, BASELINE, *ABLATIONS)
REFERENCE = "point_peft"
#: Test-set groups every table reports, in this order: the domain of the test cloud, then the novelty of its
#: family (kept out of the stand-in's pretraining or not).
GROUPS = (("domain", "clean"), ("domain", "scan"), ("novelty", "seen"), ("novelty", "novel"))
#: The papers' figures (METHODS.md), on real data with a real Point-BERT / Point-MAE.
PAPER_CLAIM = (
    "Point-PEFT reports ScanObjectNN PB-T50-RS 83.1 → 85.0 % and ModelNet40 92.7 → 93.4 % over full "
    "fine-tuning of Point-BERT, with 0.6 M trainable parameters (about 5 %, head included) against 22.1 M; "
    "DAPT reports PB-T50-RS 85.1 % on Point-MAE with 1.1 M. Both are single-split figures on real scans; "
    "voting at test time, which neither table here uses, adds 0.5–1.5 points."
)
_HEAD = re.compile(r"(?:^|\.)(?:seg_)?head\.")
_NOISY_WARNINGS = (".*does not have many workers.*", ".*is deprecated.*", ".*LeafSpec.*")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="the packaged configs train 30; 20 keeps the sweep near an hour on 2 CPU cores",
    )
    parser.add_argument("--num-train", type=int, default=256, help="labelled scans to adapt on")
    parser.add_argument(
        "--num-val", type=int, default=64, help="held-out labelled scans (from the training pool)"
    )
    parser.add_argument(
        "--num-test", type=int, default=128, help="test shapes, each once clean and once scanned"
    )
    parser.add_argument("--num-points", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--size", default="small", help="point transformer size (small: the pretrained stand-in)"
    )
    parser.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="random backbone (smoke runs)"
    )
    parser.add_argument(
        "--learning-rates",
        nargs="+",
        type=float,
        default=[0.0003, 0.001, 0.003],
        help="grid each method's learning rate is picked from (full fine-tuning: the grid / 5)",
    )
    parser.add_argument(
        "--tune-seed",
        type=int,
        default=100,
        help="seed of the tuning runs (its own shapes and initialisation, none of the evaluation seeds)",
    )
    parser.add_argument(
        "--no-tune", dest="tune", action="store_false", help="use each packaged config's learning rate"
    )
    parser.add_argument("--trees", type=int, default=300, help="trees of the descriptor forest")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/pointcloud.md"))
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: temp dir)")
    parser.add_argument(
        "--resume",
        type=Path,
        nargs="+",
        default=None,
        help="progress.json files of unfinished or parallel sweeps",
    )
    parser.add_argument("--note", default=None, help="a paragraph for the report's header")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _data_arguments(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "num_points": args.num_points,
        "batch_size": args.batch_size,
    }


def run_method(
    method: str,
    seed: int,
    args: argparse.Namespace,
    root: Path,
    learning_rate: float | None = None,
    phase: str = "eval",
) -> dict[str, Any]:
    """One ``verticals run`` of a packaged generated-shape config (at ``learning_rate`` if given), or the
    descriptor forest on the same data; returns its figures. ``phase``: ``"tune"`` for a learning-rate tuning
    run (read for its validation score only), else ``"eval"``."""
    if method == BASELINE:
        return run_forest(seed, args, phase)
    run_root = (
        root / phase / method / f"seed{seed}" / (f"lr{learning_rate:g}" if learning_rate else "packaged")
    )
    config = REFERENCE if method in ABLATIONS else method
    argv = ["run", f"pointcloud/shapes_{config}", "--seed_everything", str(seed)]
    for option, value in ABLATIONS.get(method, {}).items():
        argv += [f"--model.init_args.adapter.options.{option}", json.dumps(value)]
    for key, value in _data_arguments(args, seed).items():
        argv += [f"--data.init_args.{key}", str(value)]
    argv += [
        "--model.init_args.report_bootstrap", str(args.bootstrap),
        "--trainer.max_epochs", str(args.epochs),
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
        "--trainer.default_root_dir", str(run_root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if args.size != "small" or not args.pretrained:  # key by key: the config's other model options stay
        argv += ["--model.init_args.model_args.size", args.size]
        argv += ["--model.init_args.model_args.pretrained", str(args.pretrained).lower()]
    if learning_rate is not None:
        argv += ["--model.init_args.learning_rate", str(learning_rate)]
    start = time.perf_counter()
    with quiet_run(None if args.verbose else run_root / "stdout.log", _NOISY_WARNINGS,
                   loggers={"verticals.core.data": logging.ERROR}):  # fmt: skip
        cli = run_cli(argv)
    wall = time.perf_counter() - start
    trainer, task = cli.trainer, cli.model
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if "test_accuracy" not in metrics:
        raise RuntimeError(f"{method}: no test_accuracy was logged (metrics: {sorted(metrics)}).")
    log_dir = Path(trainer.log_dir)
    parameters = json.loads((log_dir / "report.json").read_text())["parameters"]
    groupings = json.loads((log_dir / "groups.json").read_text())["groupings"]
    return {
        "method": method,
        "seed": seed,
        "phase": phase,
        "learning_rate": float(task.hparams["learning_rate"]),
        "best_val_accuracy": float(trainer.checkpoint_callback.best_model_score),
        "epochs_run": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "accuracy": metrics["test_accuracy"],
        "accuracy_by_group": {
            f"{attribute}={name}": groupings[attribute]["groups"][name]["accuracy"]["value"]
            for attribute, name in GROUPS
        },
        "trainable": parameters["trainable"],
        "backbone_parameters": parameters.get("backbone"),
        "trainable_percent": parameters["trainable_percent"],
        "adapter_parameters": _adapter_parameters(task),
        "seconds_per_step": median_step_seconds(find_callback(trainer, TrainWindow)),
        "wall_seconds": wall,
        "clouds": {split: len(cli.datamodule.split_dataset(split)) for split in ("train", "val", "test")},
        "log_dir": str(log_dir),
    }


def run_forest(seed: int, args: argparse.Namespace, phase: str = "eval") -> dict[str, Any]:
    """The descriptor forest fitted on the training split of the datamodule a deep run of ``seed`` uses."""
    from verticals.domains.pointcloud.baseline import DescriptorForest
    from verticals.domains.pointcloud.data import ShapeDataModule

    start = time.perf_counter()
    data = ShapeDataModule(task="classification", train_domain="scan", test_domains=["clean", "scan"],
                           **_data_arguments(args, seed))  # fmt: skip
    data.setup("fit")
    data.setup("test")
    scores = DescriptorForest(n_estimators=args.trees, seed=seed).evaluate_on(data)
    clouds = scores["num_train"] + scores["num_val"] + scores["num_test"]
    return {
        "method": BASELINE,
        "seed": seed,
        "phase": phase,
        "learning_rate": math.nan,
        "best_val_accuracy": scores["val_accuracy"],
        "epochs_run": 0,
        "steps": 0,
        "accuracy": scores["accuracy"],
        "accuracy_by_group": {
            f"{attribute}={name}": scores["groups"][attribute][name]["accuracy"] for attribute, name in GROUPS
        },
        "trainable": 0,
        "backbone_parameters": None,
        "trainable_percent": math.nan,
        "adapter_parameters": 0,
        # descriptors and trees of the whole fit, per training cloud: no optimizer steps to time
        "seconds_per_step": math.nan,
        "fit_seconds": scores["fit_seconds"],
        "wall_seconds": time.perf_counter() - start,
        "clouds": {"train": scores["num_train"], "val": scores["num_val"], "test": scores["num_test"]},
        "log_dir": None,
        "total_clouds": clouds,
    }


def learning_rate_grid(method: str, rates: Sequence[float]) -> list[float]:
    """The learning rates tried for ``method``: the grid, a fifth of it for full fine-tuning (every weight
    moves: as usual a smaller step); nothing for the forest, nor for an ablation (Point-PEFT's rate)."""
    if method == BASELINE or method in ABLATIONS:
        return []
    return [rate / 5 if method == "full" else rate for rate in rates]


def _without_note(argv: Sequence[str]) -> list[str]:
    """The command line without ``--note TEXT`` (the note is printed as its own paragraph)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            kept.append(arg)
    return kept


def _run_key(run: dict[str, Any]) -> tuple[str, str, int, str]:
    return (run.get("phase", "eval"), run["method"], run["seed"], f"{run['learning_rate']:g}")


def tuned_rate(runs: Sequence[dict[str, Any]], method: str, tune_seed: int) -> float | None:
    """The learning rate with ``method``'s best validation accuracy among the tuning runs of ``tune_seed``
    (the first on ties); None without tuning runs (then the packaged config's rate)."""
    scores: dict[float, float] = {}
    for run in runs:
        if run.get("phase") == "tune" and run["method"] == method and run["seed"] == tune_seed:
            scores.setdefault(run["learning_rate"], run["best_val_accuracy"])
    return max(scores, key=scores.get) if scores else None


def _adapter_parameters(task: Any) -> int:
    """Trainable parameters outside the classification head (what a method adds to or unfreezes in the backbone)."""
    return sum(
        parameter.numel()
        for name, parameter in task.model.named_parameters()
        if parameter.requires_grad and not _HEAD.search(name)
    )


def _columns() -> list[str]:
    return ["overall", *(f"{attribute}={name}" for attribute, name in GROUPS)]


def _value(run: dict[str, Any], column: str) -> float:
    return run["accuracy"] if column == "overall" else run["accuracy_by_group"].get(column, math.nan)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: each figure's mean, std and t-interval over seeds; Point-PEFT's paired per-seed difference
    to every other method, overall and per group."""
    tuning = [run for run in runs if run.get("phase") == "tune"]
    runs = [run for run in runs if run.get("phase", "eval") == "eval"]
    reference = {run["seed"]: run for run in runs if run["method"] == REFERENCE}
    summary: dict[str, Any] = {
        "columns": _columns(),
        "methods": {},
        "point_peft_minus": {},
        "tuning": {
            method: {
                f"{run['learning_rate']:g}": run["best_val_accuracy"]
                for run in tuning
                if run["method"] == method
            }
            for method in METHODS
            if any(run["method"] == method for run in tuning)
        },
    }
    for method in METHODS:
        chosen = [run for run in runs if run["method"] == method]
        if not chosen:
            continue
        entry: dict[str, Any] = {
            "seeds": [run["seed"] for run in chosen],
            "accuracy": {
                column: seed_statistics([_value(run, column) for run in chosen]).as_dict()
                for column in _columns()
            },
            "val_accuracy": seed_statistics([run["best_val_accuracy"] for run in chosen]).as_dict(),
            "seconds_per_step": seed_statistics([run["seconds_per_step"] for run in chosen]).as_dict(),
            "wall_seconds": seed_statistics([run["wall_seconds"] for run in chosen]).as_dict(),
        }
        for key in (
            "trainable",
            "trainable_percent",
            "adapter_parameters",
            "backbone_parameters",
            "learning_rate",
        ):
            entry[key] = chosen[0][key]
        summary["methods"][method] = entry
        if method == REFERENCE or not reference:
            continue
        paired = [run for run in chosen if run["seed"] in reference]
        if paired:
            summary["point_peft_minus"][method] = {
                column: seed_statistics(
                    [_value(reference[run["seed"]], column) - _value(run, column) for run in paired]
                ).as_dict()
                for column in _columns()
            }
    return summary


def verdict(difference: dict[str, Any]) -> str:
    """ "Point-PEFT better" / "other better" where the paired t-interval excludes 0, else "no difference
    shown"."""
    return paired_verdict(difference, "Point-PEFT better", "other better")


def _error_bars(entries: list[dict[str, Any]]) -> tuple[Any, Any]:
    import numpy as np

    means = np.array([entry["mean"] for entry in entries], dtype=float)
    low = np.array([np.nan if entry["low"] is None else entry["low"] for entry in entries], dtype=float)
    high = np.array([np.nan if entry["high"] is None else entry["high"] for entry in entries], dtype=float)
    return means, np.nan_to_num(np.vstack([means - low, high - means]))


def write_figures(results: dict[str, Any], directory: Path) -> list[Path]:
    """``accuracy_by_group.png`` (mean and t-interval per method, overall and per group) and
    ``accuracy_vs_trainable.png`` (scan accuracy against trainable % of the backbone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    summary = results["summary"]
    columns, methods = summary["columns"], list(summary["methods"])
    paths = []
    figure, axis = plt.subplots(figsize=(max(8, 1.6 * len(columns)), 4))
    width = 0.8 / max(len(methods), 1)
    for index, method in enumerate(methods):
        means, errors = _error_bars([summary["methods"][method]["accuracy"][column] for column in columns])
        positions = np.arange(len(columns)) + (index - (len(methods) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=method)
    axis.set_xticks(np.arange(len(columns)), [column.split("=")[-1] for column in columns])
    axis.set_ylabel("test accuracy (mean, 95% t-interval over seeds)")
    axis.set_ylim(0, 1)
    axis.legend(ncol=4, fontsize=8, loc="lower right")
    axis.set_title("Accuracy overall, per test domain and per family novelty")
    figure.tight_layout()
    paths.append(directory / "accuracy_by_group.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)

    deep = [method for method in methods if method != BASELINE]
    if deep:
        figure, axis = plt.subplots(figsize=(6.5, 4))
        for method in deep:
            entry = summary["methods"][method]
            means, errors = _error_bars([entry["accuracy"]["domain=scan"]])
            axis.errorbar([entry["trainable_percent"]], means, yerr=errors, fmt="o", capsize=3, label=method)
        if BASELINE in summary["methods"]:
            forest = summary["methods"][BASELINE]["accuracy"]["domain=scan"]["mean"]
            axis.axhline(forest, color="grey", linestyle="--", label=f"{BASELINE} (no backbone)")
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters, % of the backbone (head included; log scale)")
        axis.set_ylabel("accuracy on scanned test shapes")
        axis.legend(fontsize=8)
        axis.set_title("What each method trains, and what it buys on scans")
        figure.tight_layout()
        paths.append(directory / "accuracy_vs_trainable.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths


def render(results: dict[str, Any]) -> str:
    args, summary = results["arguments"], results["summary"]
    columns = summary["columns"]
    first = next((run for run in results["runs"] if run["method"] != BASELINE), results["runs"][0])
    backbone_note = (
        "pretrained by the project on clean and scanned generated shapes of six families, a stand-in for "
        "Point-MAE"
        if args["pretrained"]
        else "random weights: a smoke run, not a result"
    )
    lines = [
        "# Point clouds: Point-PEFT against other adapters, full fine-tuning and a shape-descriptor forest",
        "",
        f"Made by `python {SCRIPT} {results['command']}` on {results['date']} "
        f"({results['total_minutes']:.0f} min of this call; runs resumed from earlier calls: "
        f"{len(results['resumed_runs'])}).",
        "",
        f"Machine: {machine_line(results['machine'])}.",
        "",
        *([args["note"], ""] if args.get("note") else []),
        f"Backbone: point transformer `{args['size']}` ({backbone_note}). Each method adapts it on "
        f"{args['num_train']} labelled scans of eight generated shape families (two, stool and airplane, never seen "
        f"in pretraining) with {args['num_points']} points each, for {args['epochs']} epochs (batch "
        f"{args['batch_size']}; the best epoch by accuracy on {args['num_val']} held-out training-pool scans is "
        f"tested); the test set holds {args['num_test']} shapes, each once clean and once scanned. Seeds "
        f"{args['seeds']} choose the shapes, the training order and the adapter's initialisation. Figures: test "
        "accuracy, mean over seeds with the 95% t-interval in brackets. No voting at test time.",
        "",
        "## Methods",
        "",
        "| method | seeds | learning rate | accuracy | trainable (head included) | of which outside the head | "
        "trainable % of the backbone | s / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in summary["methods"].items():
        if method == BASELINE:
            lines.append(
                f"| {method} | {len(entry['seeds'])} | — | {format_interval(entry['accuracy']['overall'])} | "
                f"{args['trees']} trees on {len(_descriptor_names())} descriptors | — | — | "
                f"fit + predict {format_interval(entry['wall_seconds'], 2)} s in all |"
            )
            continue
        lines.append(
            f"| {method} | {len(entry['seeds'])} | {entry['learning_rate']:g} | "
            f"{format_interval(entry['accuracy']['overall'])} | {entry['trainable']:,} | "
            f"{entry['adapter_parameters']:,} | {entry['trainable_percent']:.2f} | "
            f"{format_interval(entry['seconds_per_step'], 3)} |"
        )
    lines += [
        "",
        "## Accuracy per test domain and family novelty",
        "",
        "Clean and scan hold the same shapes; seen / novel split both domains by whether the family was in "
        "the stand-in's pretraining.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method, entry in summary["methods"].items():
        lines.append(
            f"| {method} | "
            + " | ".join(format_interval(entry["accuracy"][column]) for column in columns)
            + " |"
        )
    if summary["point_peft_minus"]:
        lines += [
            "",
            "## Point-PEFT minus each other method (paired by seed)",
            "",
            "Each cell: the mean over seeds of Point-PEFT's accuracy minus the other method's on the same seed "
            "(same shapes, same order), the 95% t-interval, and the verdict (an interval that excludes 0).",
            "",
            "| other | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for other, difference in summary["point_peft_minus"].items():
            cells = [
                f"{format_interval(difference[column])} {verdict(difference[column])}" for column in columns
            ]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
    lines += tuning_table(
        summary.get("tuning") or {},
        f"## Learning rates (tuned on seed {args['tune_seed']}'s validation accuracy; no evaluation seed, no "
        "test shape)",
    )
    lines += ["", "## The papers' claims beside ours", "", PAPER_CLAIM, ""]
    lines += figure_links(results.get("figures") or [])
    lines += [f"Clouds per split (first run): {first['clouds']}", ""]
    return "\n".join(lines)


def _descriptor_names() -> list[str]:
    from verticals.domains.pointcloud.baseline import DescriptorForest

    return DescriptorForest().feature_names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    started = time.perf_counter()
    env = machine(["torch", "lightning", "peft", "scikit-learn"])
    runs: list[dict[str, Any]] = []
    for progress in args.resume or []:  # a progress file holds the runs it resumed too: each run once
        seen = {_run_key(run) for run in runs}
        runs += [run for run in json.loads(progress.read_text()) if _run_key(run) not in seen]
    done = {(run.get("phase", "eval"), run["method"], run["seed"], run["learning_rate"]) for run in runs}
    with runs_root(args.runs_dir, "pointcloud_") as root:

        def record(run: dict[str, Any]) -> None:
            runs.append(run)
            if args.runs_dir is not None:
                (root / "progress.json").write_text(json.dumps(runs, indent=1, default=str))
            groups = " ".join(
                f"{key.split('=')[1]} {value:.3f}" for key, value in run["accuracy_by_group"].items()
            )
            print(
                f"{run['phase']:5s} {run['method']:17s} seed {run['seed']} lr {run['learning_rate']:g}: val acc "
                f"{run['best_val_accuracy']:.3f}, test acc {run['accuracy']:.3f} ({groups}; "
                f"{run['wall_seconds']:.0f} s)",
                flush=True,
            )

        chosen: dict[str, float | None] = {method: None for method in args.methods}
        if args.tune:  # each method's learning rate, picked on validation accuracy of a seed not evaluated
            for method in args.methods:
                if all(any(key[:3] == ("eval", method, seed) for key in done) for seed in args.seeds):
                    continue  # every seed already evaluated (a joined or resumed sweep): nothing to tune for
                grid = learning_rate_grid(method, args.learning_rates)
                for rate in grid:
                    if ("tune", method, args.tune_seed, rate) not in done:
                        record(run_method(method, args.tune_seed, args, root, rate, phase="tune"))
                scores = {
                    run["learning_rate"]: run["best_val_accuracy"]
                    for run in runs
                    if run.get("phase") == "tune"
                    and run["method"] == method
                    and run["seed"] == args.tune_seed
                    and run["learning_rate"] in grid
                }
                chosen[method] = max(scores, key=scores.get) if scores else None
        for method in set(args.methods) & set(ABLATIONS):
            chosen[method] = tuned_rate(runs, REFERENCE, args.tune_seed)
        for seed in args.seeds:  # seeds outermost: an interrupted sweep still covers every method
            for method in args.methods:
                if any(key[:3] == ("eval", method, seed) for key in done):
                    continue
                record(run_method(method, seed, args, root, chosen[method]))
    results = sweep_results(_without_note(argv), env, args, runs, done, summarise(runs), started)
    results["figures"] = [str(path) for path in write_figures(results, args.output.with_suffix(""))]
    markdown, _ = write_reports(results, args.output, render)
    chart_report(args.output, results)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
