"""Frozen-prefix caching benchmark (item 5 (a)-(c) of "Pay only for what changes"): training throughput with and
without ``cache_frozen_prefix`` on the packaged configs, and whether the training curves stay equal.

Workloads (``--workloads``), each ``verticals fit`` of a packaged config through
:func:`verticals.core.cli.run_cli`, once with ``--model.init_args.cache_frozen_prefix false`` and once ``true``:

- ``sam_decoder_only``: ``medical/litemedsam_decoder_only`` (real LiteMedSAM weights, MNI152 slices at
  ``--image-size``): the whole image encoder is frozen, so its output is replayed.
- ``sam_lora_late_stages``: ``medical/litemedsam_samed_lora`` with ``targets: late_stages`` (LoRA on q/v of
  TinyViT's stages 2-3): the convolutional stem and stage 1 are replayed.
- ``pointcloud_dapt``: ``pointcloud/shapes_dapt`` (DAPT on the pretrained point transformer): the frozen
  tokenizer (grouping, mini-PointNet, position embedding) is replayed.
- ``pointcloud_point_peft``: ``pointcloud/shapes_point_peft`` (Point-PEFT on the same backbone): the tokenizer
  and the point prior's query (a second, frozen pass of the whole backbone on the cloud, declared as a
  ``FrozenBranch``) are replayed.
- ``pointcloud_linear_probe``: ``pointcloud/shapes_linear_probe`` (the head alone on the same backbone): the
  whole frozen backbone is replayed.
- ``pointcloud_dapt_base`` and ``pointcloud_point_peft_base``: the two methods on Point-MAE's own layout, the
  ``base`` point transformer (384 wide, 12 blocks; random weights: the official ones are not on this machine) on
  2048-point clouds in 128 groups of 32 (Point-MAE's ScanObjectNN setting), with 64 training clouds in batches of
  16, so that each fit stays within minutes here.
- ``timeseries_linear_probe``: ``timeseries/gunpoint_linear_probe`` with ``trainable: [head]`` (the patch
  embedding stays frozen at its seeded initialisation, so the whole MiniLM encoder is the prefix; the packaged
  config trains the patch embedding, which runs first: there the cache refuses, with that reason).

Measured per run: the median training-step time in the epochs after the first (the first epoch fills the
cache: every sample is computed once), as samples/s; the whole fit's wall time; the largest difference of the
per-step training losses between the two arms (equal to float tolerance means the cache changed nothing). The
arms run in ABBA order (``--repeats``, default 2: off, on, on, off), with the same seed; the ratio is cached /
uncached per repeat pair, and its median is reported.

``--update`` keeps the other workloads' rows of the existing report (each row names the command that measured
it), so a workload can be measured again alone.

Usage (from the repository root, on a quiet machine)::

    python benchmarks/prefix_cache.py                      # every workload, 4 epochs, ABBA
    python benchmarks/prefix_cache.py --tiny --output /tmp/prefix_cache.md   # a smoke test (tiny models)

Writes ``benchmarks/results/prefix_cache.md`` (or ``--output``) and the raw numbers to the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TrainWindow,
    alternate,
    callback_class_path,
    find_callback,
    format_number,
    machine,
    machine_line,
    quiet_run,
    runs_root,
    write_reports,
)
from charts import chart_report  # noqa: E402

from verticals.core.cli import run_cli  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: The issue's targets: cached / uncached samples/s after the first epoch.
TARGETS = {
    "sam_decoder_only": 3.0,
    "sam_lora_late_stages": 1.3,
    "pointcloud_dapt": 2.0,
    "pointcloud_point_peft": 2.0,
    "pointcloud_linear_probe": None,
    "pointcloud_dapt_base": 2.0,
    "pointcloud_point_peft_base": 2.0,
    "timeseries_linear_probe": None,
}


class StepLosses(L.Callback):
    """Every training step's loss, and where each epoch's steps start."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.epoch_starts: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_starts.append(len(self.losses))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def workload_arguments(name: str, args: argparse.Namespace) -> list[str]:
    """The config and overrides of one workload."""
    size = str(args.image_size)
    if name == "sam_decoder_only":
        return [
            "medical/litemedsam_decoder_only",
            "--model.init_args.model_args", json.dumps({"image_size": args.image_size, "prompt": "none"}),
            "--data.init_args.image_size", size, "--data.init_args.slab_step", str(args.slab_step),
        ]  # fmt: skip
    if name == "sam_lora_late_stages":
        return [
            "medical/litemedsam_samed_lora",
            "--model.init_args.model_args", json.dumps({"image_size": args.image_size, "prompt": "none"}),
            "--model.init_args.adapter.targets", "late_stages",
            "--data.init_args.image_size", size, "--data.init_args.slab_step", str(args.slab_step),
        ]  # fmt: skip
    if name.startswith("pointcloud_"):
        method = name.removeprefix("pointcloud_").removesuffix("_base")
        if not name.endswith("_base"):
            model_args = {"size": "small", "pretrained": not args.tiny}
            return [f"pointcloud/shapes_{method}", "--model.init_args.model_args", json.dumps(model_args)]
        model_args = {
            "size": "tiny" if args.tiny else "base",
            "pretrained": False,
            "num_groups": 128,
            "group_size": 32,
        }
        return [
            f"pointcloud/shapes_{method}",
            "--model.init_args.model_args", json.dumps(model_args),
            "--data.init_args.num_points", "2048", "--data.init_args.num_train", "64",
            "--data.init_args.num_val", "16", "--data.init_args.batch_size", "16",
        ]  # fmt: skip
    if name == "timeseries_linear_probe":
        model_args = {"encoder": "tiny-bert" if args.tiny else "minilm", "num_layers": 2 if args.tiny else 6,
                      "patch_length": 8, "stride": 4}  # fmt: skip
        return [
            "timeseries/gunpoint_linear_probe",
            "--model.init_args.adapter.trainable", "[head]",
            "--model.init_args.model_args", json.dumps(model_args),
            "--trainer.max_steps", "-1",
        ]  # fmt: skip
    raise ValueError(f"Unknown workload {name!r}; choose from {sorted(TARGETS)}.")


def run_arm(name: str, cached: bool, repeat: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One ``verticals fit`` of a workload, with or without the cache."""
    run_root = root / name / f"{'cached' if cached else 'plain'}{repeat}"
    argv = [
        "fit",
        *workload_arguments(name, args),
        "--model.init_args.cache_frozen_prefix", "true" if cached else "false",
        "--seed_everything", str(args.seed),
        "--trainer.max_epochs", str(args.epochs),
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
        f"--trainer.callbacks+={callback_class_path(StepLosses)}",
        "--trainer.default_root_dir", str(run_root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    with quiet_run(
        None if args.verbose else run_root / "stdout.log", (), loggers={"verticals.core.data": logging.ERROR}
    ):
        cli = run_cli(argv)
    wall = time.perf_counter() - start
    window, losses = find_callback(cli.trainer, TrainWindow), find_callback(cli.trainer, StepLosses)
    starts = losses.epoch_starts
    later = [
        window.step_ends[i] - window.step_ends[i - 1]
        for i in range(starts[1] if len(starts) > 1 else len(window.step_ends), len(window.step_ends))
        if i not in starts  # the first step of an epoch also waits for validation
    ]
    step_seconds = statistics.median(later) if later else float("nan")
    batch = statistics.median(window.step_samples) if window.step_samples else float("nan")
    return {
        "workload": name,
        "cached": cached,
        "repeat": repeat,
        "steps": len(losses.losses),
        "epochs": len(starts),
        "batch": batch,
        "step_seconds_after_first_epoch": step_seconds,
        "samples_per_second_after_first_epoch": batch / step_seconds if step_seconds else float("nan"),
        "fit_seconds": window.seconds,
        "wall_seconds": wall,
        "losses": losses.losses,
        "prefix_cache": cli.model.prefix_cache_summary,
    }


def summarise(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratios cached / plain per repeat, their median, and the largest per-step loss difference."""
    pairs = list(zip(runs["plain"], runs["cached"]))
    speedups = [
        c["samples_per_second_after_first_epoch"] / p["samples_per_second_after_first_epoch"]
        for p, c in pairs
    ]
    fit_ratios = [p["fit_seconds"] / c["fit_seconds"] for p, c in pairs]
    loss_difference = max(
        max((abs(a - b) for a, b in zip(p["losses"], c["losses"])), default=float("nan")) for p, c in pairs
    )
    target = TARGETS[name]
    speedup = statistics.median(speedups)
    return {
        "workload": name,
        "plain_samples_per_second": statistics.median(
            r["samples_per_second_after_first_epoch"] for r in runs["plain"]
        ),
        "cached_samples_per_second": statistics.median(
            r["samples_per_second_after_first_epoch"] for r in runs["cached"]
        ),
        "speedup": speedup,
        "speedups": speedups,
        "fit_speedup": statistics.median(fit_ratios),
        "max_loss_difference": loss_difference,
        "target": target,
        "meets_target": None if target is None else speedup >= target,
        "prefix_cache": runs["cached"][0]["prefix_cache"],
        "steps": runs["plain"][0]["steps"],
        "batch": runs["plain"][0]["batch"],
    }


def render_markdown(results: dict[str, Any]) -> str:
    commands = list(dict.fromkeys(row.get("command", results["command"]) for row in results["rows"]))
    if len(commands) > 1:
        made = "Made in parts: " + "; ".join(
            f"`{command}` ({', '.join(row['workload'] for row in results['rows'] if row.get('command', results['command']) == command)})"
            for command in commands
        )
    else:
        made = f"Made by `{results['command']}`"
    lines = [
        "# Frozen-prefix caching: training throughput with and without `cache_frozen_prefix`",
        "",
        f"{made}, on {machine_line(results['machine'])}.",
        "",
        f"Each workload: `verticals fit` of its packaged config for {results['settings']['epochs']} epochs, seed "
        f"{results['settings']['seed']}, without and with the cache in ABBA order ({results['settings']['repeats']} "
        "runs each). Samples/s are from the median training step after the first epoch (which fills the cache); "
        "the whole-fit ratio includes the first epoch and validation. The loss difference is the largest "
        "per-step training-loss difference between the arms of a repeat.",
        "",
        "| workload | replayed | samples/s plain | samples/s cached | speed-up (per repeat) | target | whole fit | "
        "largest loss difference | cache size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        cache = row["prefix_cache"]
        target = (
            "–"
            if row["target"] is None
            else f"≥ {row['target']:.1f}× ({'met' if row['meets_target'] else 'not met'})"
        )
        lines.append(
            f"| {row['workload']} | `{', '.join(cache.get('cached_modules') or []) or '–'}` | "
            f"{format_number(row['plain_samples_per_second'], 1)} | {format_number(row['cached_samples_per_second'], 1)} | "
            f"{row['speedup']:.2f}× ({', '.join(f'{s:.2f}' for s in row['speedups'])}) | {target} | "
            f"{row['fit_speedup']:.2f}× | {row['max_loss_difference']:.1e} | "
            f"{cache.get('samples', 0):,} samples, {cache.get('bytes', 0) / 1e6:,.1f} MB |"
        )
    lines += [
        "",
        "Settings: " + ", ".join(f"{key} {value}" for key, value in results["settings"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first fills the cache)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per arm, ABBA order")
    parser.add_argument(
        "--image-size", type=int, default=128, help="SAM workloads: pixels (LiteMedSAM's native 256)"
    )
    parser.add_argument("--slab-step", type=int, default=2, help="SAM workloads: every Nth MNI152 slice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random encoders where a workload has one (smoke test)"
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "prefix_cache.md")
    parser.add_argument("--verbose", action="store_true", help="show the runs' own output")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other workloads' rows of the existing report at --output",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    command = "python benchmarks/prefix_cache.py " + shlex.join(argv)
    rows = []
    with runs_root(args.runs_dir, "prefix_cache_") as root:
        for name in args.workloads:
            runs = alternate(
                {
                    "plain": lambda repeat, name=name: run_arm(name, False, repeat, args, root),
                    "cached": lambda repeat, name=name: run_arm(name, True, repeat, args, root),
                },
                args.repeats,
                on_result=lambda arm, repeat, result: print(
                    f"{result['workload']} {arm} #{repeat}: {result['samples_per_second_after_first_epoch']:.1f} "
                    f"samples/s after the first epoch, fit {result['fit_seconds']:.1f} s",
                    flush=True,
                ),
            )
            rows.append({**summarise(name, runs), "command": command})
    if args.update and args.output.with_suffix(".json").exists():
        previous = json.loads(args.output.with_suffix(".json").read_text())
        ran = {row["workload"] for row in rows}
        kept = {row["workload"]: row for row in previous["rows"] if row["workload"] not in ran}
        for row in kept.values():
            row.setdefault("command", previous["command"])
        rows = [*kept.values(), *rows]
        rows.sort(
            key=lambda row: (
                list(TARGETS).index(row["workload"]) if row["workload"] in TARGETS else len(TARGETS)
            )
        )
    results = {
        "benchmark": "prefix_cache",
        "command": command,
        "machine": machine(["torch", "lightning", "peft", "transformers"]),
        "settings": {
            key: str(value)
            for key, value in vars(args).items()
            if key not in ("output", "runs_dir", "verbose")
        },
        "rows": rows,
    }
    markdown, json_path = write_reports(results, args.output, render_markdown)
    chart_report(args.output, results)
    print(markdown)
    print(f"Wrote {args.output} and {json_path}")
    return results


if __name__ == "__main__":
    main()
