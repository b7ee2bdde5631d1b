"""Time-series classification benchmark: PEFT methods vs classical baselines, and training-loop overhead.

What it measures (see benchmarks/README.md):

1. Accuracy. For each UCR/UEA dataset that ships with sktime and each packaged
   ``timeseries/gunpoint_<method>`` config, ``verticals run`` (fit within the config's budget — held-out
   validation, early stopping, a step cap — then test the checkpoint the config's monitor selects) runs in
   this process through :func:`verticals.core.cli.run_cli`, exactly as a user runs it, with only the
   dataset (and optionally epochs, encoder and seed) overridden; seeds through
   :func:`verticals.core.seeds.sweep_seeds`. Recorded: test accuracy (mean ± std over seeds), trainable
   parameters, trainable % of the backbone, epochs and steps run, wall time.
2. Classical baselines on the same official TRAIN/TEST split and the same z-normalised arrays (the
   datamodule's ``arrays``): 1-NN DTW (full window) and MiniRocket, from sktime.
3. Training-loop overhead: training samples/s of ``verticals fit`` (gunpoint_lora, validation off) vs a
   plain PyTorch loop over the same model, adapter, data loader, optimizer, schedule and epochs, measured
   in the same process after a warm-up, alternating repeats; medians and their ratio.

Usage (from the repository root)::

    python benchmarks/timeseries.py                      # everything, configs' epochs (slow on CPU)
    python benchmarks/timeseries.py --datasets GunPoint --methods lora full --epochs 20
    python benchmarks/timeseries.py --encoder tiny-bert --epochs 1 --skip-classical   # smoke test

Writes ``benchmarks/results/timeseries.md`` (or ``--output``) and the raw numbers to the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from _common import (
    TrainWindow,
    alternate,
    callback_class_path,
    find_callback,
    machine,
    machine_line,
    quiet_run,
    runs_root,
    write_reports,
)
from charts import chart_report

from verticals.core import AdapterSpec, adapt, build_model
from verticals.core.callbacks import Timing
from verticals.core.cli import packaged_configs, run_cli
from verticals.core.report import stopped_before_budget
from verticals.core.seeds import seed_statistics, sweep_seeds
from verticals.domains.timeseries.data import UCRDataModule

DATASETS = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions")
METHODS = ("linear_probe", "gpt4ts", "lora", "bottleneck", "full")
ENCODERS = ("minilm", "tiny-bert")
CLASSICAL = {"dtw": "1-NN DTW", "minirocket": "MiniRocket"}
OVERHEAD_CONFIG = "timeseries/gunpoint_lora"
SCRIPT = "benchmarks/timeseries.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "timeseries.md"

VERTICALS_WINDOW = (
    "from Lightning's `on_train_start` to `on_train_end` (a callback added with `--trainer.callbacks`): "
    "every training epoch of `verticals fit` (`trainer.limit_val_batches=0`, so no validation or sanity "
    "check), i.e. "
    "data loading, `training_step` (forward, cross-entropy, train-metric updates and `self.log`), backward, "
    "AdamW step, zero-grad, per-step LR scheduler, CSV logging, epoch-end metric computation and Lightning's "
    "loop and hook bookkeeping. Time spent in `trainer.save_checkpoint` inside the window is measured and "
    "subtracted (with validation off the config's `last.ckpt` is written at `on_train_end`, after the window "
    "closes, so this is normally 0). Outside the window: CLI parsing, data loading, model build (reading the "
    "encoder from disk), the adapter export and teardown."
)
PLAIN_WINDOW = (
    "from the first epoch's first batch to the last optimizer step: for each epoch, iterate the same "
    "`UCRDataModule.train_dataloader()`, forward, cross-entropy, backward, AdamW step, zero-grad and the "
    "same warm-up + cosine LR schedule, on the same model (registry builder + `adapt(AdapterSpec)` from "
    "the same config) in train mode. No metrics, logging or checkpoints."
)

log = logging.getLogger("benchmarks.timeseries")

_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*could not find the monitored key.*",
    ".*LeafSpec.*",
    ".*will override existing callbacks.*",
    ".*limit_val_batches=0.*",
    ".*You defined a `validation_step` but have no `val_dataloader`.*",
    ".*Unsupported layer type.*",  # peft on LN tuning's LayerNorm targets
)


# -- helpers ---------------------------------------------------------------------------------------------
def load_config(name: str) -> dict[str, Any]:
    """The parsed YAML of a packaged config (``timeseries/gunpoint_lora``)."""
    return yaml.safe_load(packaged_configs()[name].read_text())


def config_name(method: str) -> str:
    return f"timeseries/gunpoint_{method}"


def encoder_arguments(config: dict[str, Any], encoder: str | None) -> list[str]:
    """CLI arguments replacing the config's encoder (the rest of ``model_args`` kept), or none."""
    if encoder is None:
        return []
    model_args = dict(config["model"]["init_args"].get("model_args") or {})
    if model_args.get("encoder", "minilm") == encoder:
        return []
    model_args["encoder"] = encoder
    return ["--model.init_args.model_args", json.dumps(model_args)]


def common_arguments(root: Path) -> list[str]:
    """Benchmark-specific run directory, no progress bar or model summary, and the ``TrainWindow`` timer."""
    return [
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


# -- 1. PEFT methods through the packaged configs ----------------------------------------------------------
def train_method(
    dataset: str,
    method: str,
    seed: int,
    epochs: int | None,
    encoder: str | None,
    root: Path,
    verbose: bool,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """``verticals run timeseries/gunpoint_<method>`` on ``dataset``; tests the checkpoint the run selects."""
    name = config_name(method)
    config = load_config(name)
    run_root = root / dataset / method / f"seed{seed}"
    args = [
        "run",
        name,
        "--data.init_args.dataset",
        dataset,
        "--seed_everything",
        str(seed),
        *common_arguments(run_root),
        *encoder_arguments(config, encoder),
    ]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    args += list(extra)
    start = time.perf_counter()
    with quiet_run(
        None if verbose else run_root / "stdout.log",
        _NOISY_WARNINGS,
        loggers={"verticals.core.data": logging.ERROR},
    ):
        cli = run_cli(args)
    wall = time.perf_counter() - start
    trainer, task = cli.trainer, cli.model
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if "test_accuracy" not in metrics:
        raise RuntimeError(
            f"{name} on {dataset}: the run logged no test_accuracy (metrics: {sorted(metrics)})."
        )
    summary = task.parameter_summary()
    window = find_callback(trainer, TrainWindow)
    checkpoint = trainer.checkpoint_callback
    best_score = getattr(checkpoint, "best_model_score", None)
    data = cli.datamodule
    return {
        "dataset": dataset,
        "method": method,
        "config": name,
        "seed": seed,
        "encoder": (task.hparams.get("model_args") or {}).get("encoder", "minilm"),
        "epochs": int(trainer.max_epochs),
        "epochs_run": int(trainer.current_epoch),
        "max_steps": int(trainer.max_steps),
        "steps_run": int(trainer.global_step),
        "stopped_early": stopped_before_budget(trainer),
        "test_accuracy": metrics["test_accuracy"],
        "test_metrics": {key: value for key, value in metrics.items() if key.startswith("test_")},
        "selection": {
            "monitor": getattr(checkpoint, "monitor", None),
            "mode": getattr(checkpoint, "mode", None),
            "best_value": float(best_score) if best_score is not None else None,
            "val_fraction": getattr(data, "val_fraction", None),
            "checkpoint": Path(str(getattr(checkpoint, "best_model_path", "") or "")).name,
        },
        "trainable_parameters": summary.trainable,
        "backbone_parameters": summary.backbone,
        "total_parameters": summary.total,
        "trainable_percent": summary.trainable_percent,
        "wall_seconds": wall,
        "fit_seconds": window.elapsed,
        "train_samples": window.samples,
        "train_samples_per_second": window.samples / window.elapsed if window.elapsed else None,
        "config_epochs": config["trainer"].get("max_epochs"),
    }


# -- 2. classical baselines -------------------------------------------------------------------------------
def _classical_models() -> dict[str, Any]:
    """Factories of the classical baselines that import; a string where one doesn't (the reason)."""
    models: dict[str, Any] = {}
    try:
        from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

        models["dtw"] = lambda: KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw")
    except ImportError as error:
        models["dtw"] = f"not available: {error}"
    try:
        from sktime.classification.kernel_based import RocketClassifier

        models["minirocket"] = lambda: RocketClassifier(rocket_transform="minirocket", random_state=0)
    except ImportError as error:
        models["minirocket"] = f"not available: {error}"
    return models


def classical_baselines(dataset: str) -> dict[str, dict[str, Any]]:
    """1-NN DTW (full window) and MiniRocket on the datamodule's z-normalised official TRAIN/TEST arrays."""
    arrays = UCRDataModule(dataset=dataset).arrays
    x_train, y_train, x_test, y_test = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    # A few series of two classes: compiles the numba kernels outside the timed fit/predict.
    warm = np.concatenate([np.flatnonzero(y_train == label)[:2] for label in np.unique(y_train)[:2]])
    results: dict[str, dict[str, Any]] = {}
    for key, factory in _classical_models().items():
        if isinstance(factory, str):
            results[key] = {"name": CLASSICAL[key], "skipped": factory}
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):
                factory().fit(x_train[warm], y_train[warm]).predict(x_test[:2])
            start = time.perf_counter()
            predictions = factory().fit(x_train, y_train).predict(x_test)
            seconds = time.perf_counter() - start
        results[key] = {
            "name": CLASSICAL[key],
            "accuracy": float(np.mean(np.asarray(predictions) == y_test)),
            "wall_seconds": seconds,
            "train_size": len(x_train),
            "test_size": len(x_test),
        }
    return results


# -- 3. training-loop overhead ----------------------------------------------------------------------------
def _overhead_setup(encoder: str | None) -> dict[str, Any]:
    config = load_config(OVERHEAD_CONFIG)
    model = config["model"]["init_args"]
    model_args = dict(model.get("model_args") or {})
    if encoder is not None:
        model_args["encoder"] = encoder
    return {
        "config": config,
        "model": model.get("model", "timeseries.patch_transformer"),
        "model_args": model_args,
        "adapter": model["adapter"],
        "learning_rate": float(model.get("learning_rate", 1e-3)),
        "weight_decay": float(model.get("weight_decay", 0.01)),
        "warmup_fraction": float(model.get("warmup_fraction", 0.05)),
        "scheduler": model.get("scheduler", "cosine"),
        "label_smoothing": float(model.get("label_smoothing", 0.0)),
        "data": dict(config["data"]["init_args"]),
        "seed": int(config.get("seed_everything", 0) or 0),
    }


def verticals_fit(
    setup: dict[str, Any], epochs: int, encoder: str | None, root: Path, verbose: bool
) -> dict[str, Any]:
    """One ``verticals fit`` of the overhead config with validation off; throughput over ``TrainWindow``.

    The config's early stopping checks after each validation, so with validation off it never stops a run:
    every timed run trains the same ``epochs``.
    """
    args = [
        "fit",
        "--config",
        OVERHEAD_CONFIG,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        *common_arguments(root),
        *encoder_arguments(setup["config"], encoder),
    ]
    with quiet_run(
        None if verbose else root / "stdout.log",
        _NOISY_WARNINGS,
        loggers={"verticals.core.data": logging.ERROR},
    ):
        cli = run_cli(args)
    window = find_callback(cli.trainer, TrainWindow)
    timing = find_callback(cli.trainer, Timing)
    samples = window.samples
    return {
        "loop": "verticals",
        "seconds": window.seconds,
        "samples": samples,
        "steps": int(cli.trainer.global_step),
        "samples_per_second": samples / window.seconds,
        "checkpoint_saves_in_window": window.checkpoint_saves,
        "checkpoint_seconds_subtracted": window.checkpoint_seconds,
        "timing_callback_samples_per_second": timing.samples_per_second,
    }


def _lr_factor(total: int, warmup_fraction: float) -> Callable[[int], float]:
    """The task's warm-up + cosine LR factor (``AdapterTask.configure_optimizers``)."""
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def plain_fit(setup: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The same training as a plain PyTorch loop: same builder, adapter, loader, optimizer, schedule, epochs.

    Returns the timed window's seconds, samples and steps; model build and loader creation are outside it.
    """
    torch.manual_seed(setup["seed"])
    data = UCRDataModule(**setup["data"])
    loader = data.train_dataloader()
    network = build_model(
        setup["model"],
        input_shape=tuple(data.input_shape),
        num_outputs=data.num_classes,
        task="classification",
        **setup["model_args"],
    )
    model = adapt(network, AdapterSpec(**copy.deepcopy(setup["adapter"])))
    model.train()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=setup["learning_rate"], weight_decay=setup["weight_decay"])
    scheduler = None
    if setup["scheduler"] == "cosine":
        factor = _lr_factor(max(epochs * len(loader), 1), setup["warmup_fraction"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    samples = steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            logits = model(batch["x"])
            loss = F.cross_entropy(logits, batch["y"], label_smoothing=setup["label_smoothing"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            samples += len(batch["y"])
            steps += 1
    seconds = time.perf_counter() - start
    return {
        "loop": "plain",
        "seconds": seconds,
        "samples": samples,
        "steps": steps,
        "samples_per_second": samples / seconds,
    }


def measure_overhead(
    epochs: int, repeats: int, encoder: str | None, root: Path, verbose: bool
) -> dict[str, Any]:
    """Warm up both loops, then alternate them (ABBA order) ``repeats`` times; medians and their ratio."""
    setup = _overhead_setup(encoder)
    verticals_fit(setup, 1, encoder, root / "warmup", verbose)
    plain_fit(setup, 1)
    runs: list[dict[str, Any]] = []  # in the order they ran

    def record(loop: str, repeat: int, result: dict[str, Any]) -> None:
        runs.append({"repeat": repeat, **result})
        log.info("overhead repeat %d %-9s %.1f samples/s", repeat, loop, result["samples_per_second"])

    alternate(
        {
            "verticals": lambda repeat: verticals_fit(
                setup, epochs, encoder, root / f"repeat{repeat}", verbose
            ),
            "plain": lambda repeat: plain_fit(setup, epochs),
        },
        repeats,
        on_result=record,
    )
    medians = {
        loop: {
            "samples_per_second": statistics.median(
                r["samples_per_second"] for r in runs if r["loop"] == loop
            ),
            "seconds": statistics.median(r["seconds"] for r in runs if r["loop"] == loop),
        }
        for loop in ("verticals", "plain")
    }
    samples = {r["samples"] for r in runs}
    return {
        "config": OVERHEAD_CONFIG,
        "dataset": setup["data"].get("dataset"),
        "encoder": setup["model_args"].get("encoder", "minilm"),
        "batch_size": setup["data"].get("batch_size"),
        "epochs": epochs,
        "repeats": repeats,
        "samples_per_run": sorted(samples),
        "runs": runs,
        "median": medians,
        "ratio_verticals_over_plain": medians["verticals"]["samples_per_second"]
        / medians["plain"]["samples_per_second"],
        "torch_threads": torch.get_num_threads(),
        "verticals_window": VERTICALS_WINDOW,
        "plain_window": PLAIN_WINDOW,
    }


# -- environment and report ------------------------------------------------------------------------------
def _accuracy_cell(values: Sequence[float]) -> str:
    if not values:
        return "—"
    over_seeds = seed_statistics(values)
    return f"{over_seeds.mean:.3f} ± {over_seeds.std:.3f}" if len(values) > 1 else f"{over_seeds.mean:.3f}"


def summarise(results: dict[str, Any]) -> None:
    """Per dataset × method mean accuracy over seeds, and the LoRA vs 1-NN DTW comparison."""
    accuracy: dict[str, dict[str, Any]] = {}
    for dataset in results["settings"]["datasets"]:
        row: dict[str, Any] = {}
        for method in results["settings"]["methods"]:
            values = [
                r["test_accuracy"]
                for r in results["runs"]
                if r["dataset"] == dataset and r["method"] == method
            ]
            row[method] = seed_statistics(values).mean if values else None
        for key, baseline in results["classical"].get(dataset, {}).items():
            row[key] = baseline.get("accuracy")
        accuracy[dataset] = row
    results["accuracy"] = accuracy
    comparison = {}
    for dataset, row in accuracy.items():
        lora, dtw = row.get("lora"), row.get("dtw")
        if lora is not None and dtw is not None:
            comparison[dataset] = {"lora": lora, "dtw": dtw, "lora_at_least_dtw": lora >= dtw}
    results["lora_vs_dtw"] = {
        "per_dataset": comparison,
        "count": sum(item["lora_at_least_dtw"] for item in comparison.values()),
        "of": len(comparison),
    }


def accuracy_table(results: dict[str, Any]) -> list[str]:
    methods = list(results["settings"]["methods"])
    classical = [key for key in CLASSICAL if any(key in b for b in results["classical"].values())]
    header = ["dataset", *methods, *(CLASSICAL[key] for key in classical)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset in results["settings"]["datasets"]:
        cells = [dataset]
        for method in methods:
            values = [
                r["test_accuracy"]
                for r in results["runs"]
                if r["dataset"] == dataset and r["method"] == method
            ]
            failed = any(e["dataset"] == dataset and e.get("method") == method for e in results["errors"])
            cells.append("error" if failed and not values else _accuracy_cell(values))
        for key in classical:
            baseline = results["classical"].get(dataset, {}).get(key, {})
            cells.append(
                f"{baseline['accuracy']:.3f}" if "accuracy" in baseline else baseline.get("skipped", "—")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cost_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| dataset | method | trainable params | backbone params | trainable % | epochs run | wall time (s) "
        "| fit time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in results["settings"]["datasets"]:
        for method in results["settings"]["methods"]:
            runs = [r for r in results["runs"] if r["dataset"] == dataset and r["method"] == method]
            if not runs:
                continue
            first = runs[0]
            wall = seed_statistics([r["wall_seconds"] for r in runs]).mean
            fit = seed_statistics([r["fit_seconds"] for r in runs if r["fit_seconds"] is not None]).mean
            epochs = seed_statistics([r.get("epochs_run", r["epochs"]) for r in runs]).mean
            lines.append(
                f"| {dataset} | {method} | {first['trainable_parameters']:,} "
                f"| {first['backbone_parameters']:,} | "
                f"{first['trainable_percent']:.3f} | {epochs:.0f} | {wall:.1f} | {fit:.1f} |"
            )
        for key, baseline in results["classical"].get(dataset, {}).items():
            if "wall_seconds" in baseline:
                lines.append(
                    f"| {dataset} | {CLASSICAL[key]} | — | — | — | — | {baseline['wall_seconds']:.1f} | — |"
                )
    return lines


def lora_line(results: dict[str, Any]) -> str:
    comparison = results["lora_vs_dtw"]
    if not comparison["of"]:
        return "LoRA vs 1-NN DTW: not compared (needs `lora` in --methods and the classical baselines)."
    parts = [
        f"{dataset} {'yes' if item['lora_at_least_dtw'] else 'no'} ({item['lora']:.3f} vs {item['dtw']:.3f})"
        for dataset, item in comparison["per_dataset"].items()
    ]
    return (
        f"LoRA ≥ 1-NN DTW: {'; '.join(parts)}. "
        f"LoRA ≥ 1-NN DTW on {comparison['count']} of {comparison['of']} datasets."
    )


def overhead_lines(overhead: dict[str, Any]) -> list[str]:
    median = overhead["median"]
    per_run = {
        loop: ", ".join(f"{r['samples_per_second']:.1f}" for r in overhead["runs"] if r["loop"] == loop)
        for loop in ("verticals", "plain")
    }
    ratio = overhead["ratio_verticals_over_plain"]
    return [
        f"Config `{overhead['config']}` ({overhead['dataset']}, encoder `{overhead['encoder']}`, batch size "
        f"{overhead['batch_size']}), {overhead['epochs']} epochs per run, "
        f"{'/'.join(map(str, overhead['samples_per_run']))} training samples per run, {overhead['repeats']} alternating repeats "
        "after one warm-up run of each, "
        f"{overhead['torch_threads']} torch threads.",
        "",
        "| loop | median samples/s | median timed window (s) | samples/s of each repeat |",
        "|---|---|---|---|",
        f"| `verticals fit` | {median['verticals']['samples_per_second']:.1f} "
        f"| {median['verticals']['seconds']:.2f} "
        f"| {per_run['verticals']} |",
        f"| plain PyTorch | {median['plain']['samples_per_second']:.1f} | {median['plain']['seconds']:.2f} "
        f"| {per_run['plain']} |",
        "",
        f"**Throughput ratio verticals/plain: {ratio:.3f}** (1.0 = no overhead; below 1 = `verticals fit` is "
        f"slower, by {100 * (1 - ratio):.1f}% here).",
        "",
        f"- `verticals fit` timed window: {overhead['verticals_window']}",
        f"- plain PyTorch timed window: {overhead['plain_window']}",
    ]


def selection_text(results: dict[str, Any]) -> str:
    """How the runs picked their checkpoint, from what they did (the configs decide, not this script)."""
    by_rule: dict[str, list[str]] = {}
    for run in results["runs"]:
        selection = run["selection"]
        fraction = selection["val_fraction"]
        if fraction is None:
            where = "the validation set"
        elif fraction == 0:
            where = "validation on all of TRAIN (`val_fraction: 0`)"
        else:
            where = f"validation on a stratified {fraction:.0%} of TRAIN held out"
        best = "lowest" if selection["mode"] == "min" else "highest"
        rule = f"{best} `{selection['monitor']}`, {where}"
        methods = by_rule.setdefault(rule, [])
        if run["method"] not in methods:
            methods.append(run["method"])
    if not by_rule:
        return "none ran"
    if len(by_rule) == 1:
        return next(iter(by_rule))
    return "; ".join(f"{', '.join(methods)}: {rule}" for rule, methods in by_rule.items())


def render_markdown(results: dict[str, Any]) -> str:
    settings, env = results["settings"], results["machine"]
    epochs = (
        settings["epochs"]
        if settings["epochs"] is not None
        else "each config's budget (`trainer.max_steps`, early stopping on validation)"
    )
    lines = [
        "# Time-series classification benchmark",
        "",
        f"- command: `{results['command']}`",
        *(
            [
                f"- resumed from a run started {results['resumed_from']['date']} "
                f"(`{results['resumed_from']['command']}`); its finished runs are kept, the rest ran here"
            ]
            if results.get("resumed_from")
            else []
        ),
        *(
            []
            if results.get("complete", True)
            else ["- **partial**: written while the benchmark was running; later runs are missing."]
        ),
        f"- date: {results['date']}",
        f"- machine: {machine_line(env)}",
        f"- encoder: `{settings['encoder'] or 'minilm (from the configs)'}`; epochs: {epochs}; "
        f"seeds: {', '.join(map(str, settings['seeds']))}",
        "- runs: `verticals run timeseries/gunpoint_<method> --data.init_args.dataset <dataset>`; "
        "test accuracy on the official TEST split of the checkpoint each run selects: "
        f"{selection_text(results)}.",
    ]
    if results["runs"] or results["classical"]:
        lines += ["", "## Test accuracy", ""]
        if len(settings["seeds"]) > 1:
            lines += ["Mean ± standard deviation over seeds.", ""]
        lines += accuracy_table(results)
        lines += ["", lora_line(results), ""]
        lines += [
            '1-NN DTW: sktime `KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw")` (full window); '
            'MiniRocket: sktime `RocketClassifier(rocket_transform="minirocket", random_state=0)`; '
            "both on the datamodule's z-normalised official TRAIN/TEST arrays (the arrays the PEFT runs see), "
            "trained on all of TRAIN.",
            "",
            "## Trainable parameters and time",
            "",
            "Trainable % is relative to the backbone (the pretrained encoder without its unused "
            "word-embedding table). Wall time: the whole `verticals run` (CLI, data, model build, fit with "
            "validation, test, export, report); fit time: Lightning's training window (`on_train_start` → "
            "`on_train_end`: training epochs with validation and checkpoint saves). Classical baselines: "
            "fit + predict (numba compiled beforehand). Means over seeds.",
            "",
        ]
        lines += cost_table(results)
    if results.get("overhead"):
        lines += ["", "## Training-loop overhead", ""]
        lines += overhead_lines(results["overhead"])
    if results["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['what']}: `{e['error']}`" for e in results["errors"]]
    return "\n".join(lines) + "\n"


# -- CLI ------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=SCRIPT,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        metavar="NAME",
        help="UCR/UEA datasets shipped with sktime",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="packaged configs timeseries/gunpoint_<method> to run",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override trainer.max_epochs (the config's max_steps cap and early stopping still apply); None: the "
        "config's budget",
    )
    parser.add_argument(
        "--encoder", choices=ENCODERS, default=None, help="override the encoder; None: the config's (minilm)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="seed_everything values; accuracy is averaged"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report; the JSON goes beside it"
    )
    parser.add_argument(
        "--skip-overhead", action="store_true", help="skip the training-loop overhead measurement"
    )
    parser.add_argument("--skip-classical", action="store_true", help="skip 1-NN DTW and MiniRocket")
    parser.add_argument(
        "--overhead-epochs", type=int, default=10, help="epochs per timed run in the overhead test"
    )
    parser.add_argument(
        "--overhead-repeats",
        type=int,
        default=5,
        help="alternating timed repeats of each loop (>= 3 advised)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where runs write checkpoints and logs (default: a temporary directory, deleted)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a JSON report of an interrupted run with the same --epochs/--encoder: its finished runs and "
        "baselines are kept and not run again",
    )
    parser.add_argument("--verbose", action="store_true", help="show Lightning's output of every run")
    args = parser.parse_args(argv)
    unknown = [d for d in args.datasets if d.lower() not in {name.lower() for name in DATASETS}]
    if unknown:
        log.warning(
            "Datasets %s are not among the benchmark's %s; UCRDataModule decides if they load.",
            unknown,
            DATASETS,
        )
    for name in ("epochs", "overhead_epochs", "overhead_repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def _resume(args: argparse.Namespace, results: dict[str, Any]) -> set[tuple[str, str, int]]:
    """Take the finished runs and baselines of ``args.resume`` that this benchmark asks for again."""
    if args.resume is None:
        return set()
    previous = json.loads(args.resume.read_text())
    before = previous["settings"]
    for key in ("epochs", "encoder"):
        if before.get(key) != getattr(args, key):
            raise ValueError(
                f"--resume {args.resume} was made with {key}={before.get(key)!r}, this run asks for "
                f"{getattr(args, key)!r}; resume with the same --{key} or start afresh."
            )
    wanted = {(d, m, s) for d in args.datasets for m in args.methods for s in args.seeds}
    results["runs"] = [r for r in previous["runs"] if (r["dataset"], r["method"], r["seed"]) in wanted]
    results["classical"] = {d: v for d, v in previous["classical"].items() if d in args.datasets}
    results["resumed_from"] = {
        "file": str(args.resume),
        "date": previous.get("date"),
        "command": previous.get("command"),
    }
    log.info(
        "Resumed %d runs and %d baselines from %s.",
        len(results["runs"]),
        len(results["classical"]),
        args.resume,
    )
    return {(r["dataset"], r["method"], r["seed"]) for r in results["runs"]}


def run_benchmark(
    args: argparse.Namespace,
    argv: Sequence[str],
    root: Path,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every measurement; the raw numbers that the reports are made from.

    ``progress`` receives the results after every run (marked ``complete: False``), so an interrupted
    benchmark still leaves its finished measurements on disk.
    """
    results: dict[str, Any] = {
        "complete": False,
        "command": shlex.join(["python", SCRIPT, *argv]),
        "argv": list(argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(("torch", "lightning", "peft", "transformers", "sktime", "numba", "verticals")),
        "settings": {
            "datasets": list(args.datasets),
            "methods": list(args.methods),
            "epochs": args.epochs,
            "encoder": args.encoder,
            "seeds": list(args.seeds),
            "classical": not args.skip_classical,
            "overhead": not args.skip_overhead,
            "overhead_epochs": args.overhead_epochs,
            "overhead_repeats": args.overhead_repeats,
        },
        "runs": [],
        "classical": {},
        "overhead": None,
        "errors": [],
    }

    def record_error(what: str, error: BaseException, **where: Any) -> None:
        log.error("%s failed: %s", what, error)
        results["errors"].append(
            {
                "what": what,
                "error": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
                **where,
            }
        )

    if args.datasets and args.methods:
        # One-off costs (lazy imports, first data read, allocator and thread-pool start-up) land here,
        # not in the first timed run.
        with contextlib.suppress(Exception):
            train_method(
                args.datasets[0],
                args.methods[0],
                args.seeds[0],
                1,
                args.encoder,
                root / "warmup",
                args.verbose,
                extra=[f"--trainer.limit_{split}_batches=1" for split in ("train", "val", "test")],
            )
    finished = _resume(args, results)
    # Classical baselines first (seconds), then method by method over all datasets, so that a benchmark cut
    # short still compares its first methods on every dataset.
    if not args.skip_classical:
        for dataset in args.datasets:
            if dataset in results["classical"]:
                continue
            try:
                results["classical"][dataset] = classical_baselines(dataset)
            except Exception as error:
                record_error(f"classical baselines on {dataset}", error, dataset=dataset)
                continue
            for baseline in results["classical"][dataset].values():
                if "accuracy" in baseline:
                    print(
                        f"{dataset:18s} {baseline['name']:13s}: test accuracy {baseline['accuracy']:.3f}, "
                        f"{baseline['wall_seconds']:.1f} s",
                        flush=True,
                    )
    for method in args.methods:
        for dataset in args.datasets:

            def run(seed: int, dataset: str = dataset, method: str = method) -> dict[str, Any]:
                return train_method(dataset, method, seed, args.epochs, args.encoder, root, args.verbose)

            def done(seed: int, run: dict[str, Any]) -> None:
                results["runs"].append(run)
                if progress is not None:
                    summarise(results)
                    progress(results)
                print(
                    f"{run['dataset']:18s} {run['method']:13s} seed {seed}: test accuracy "
                    f"{run['test_accuracy']:.3f}, {run['trainable_percent']:.3f}% trainable, "
                    f"{run['wall_seconds']:.1f} s",
                    flush=True,
                )

            def failed(seed: int, error: BaseException, dataset: str = dataset, method: str = method) -> None:
                # keep going: one failed run should not cost the whole benchmark
                what = f"{config_name(method)} on {dataset}, seed {seed}"
                record_error(what, error, dataset=dataset, method=method, seed=seed)

            sweep_seeds(
                args.seeds,
                run,
                skip=lambda seed, dataset=dataset, method=method: (dataset, method, seed) in finished,
                on_result=done,
                on_error=failed,
            )
    if not args.skip_overhead:
        try:
            results["overhead"] = measure_overhead(
                args.overhead_epochs, args.overhead_repeats, args.encoder, root / "overhead", args.verbose
            )
        except Exception as error:
            record_error("training-loop overhead", error)
    results["complete"] = True
    summarise(results)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the markdown and JSON reports, print the tables; returns the results."""
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    with runs_root(args.runs_dir, prefix="verticals-bench-ts-") as root:
        results = run_benchmark(
            args, argv, root, progress=lambda partial: write_reports(partial, args.output, render_markdown)
        )
    markdown, json_path = write_reports(results, args.output, render_markdown)
    chart_report(args.output, results)
    print()
    print(markdown)
    print(f"Wrote {args.output} and {json_path}.")
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["errors"] else 0)
