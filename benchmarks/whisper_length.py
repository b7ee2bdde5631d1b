"""Whisper at the utterance's own length (item 3 and 5 (e) of "Pay only for what changes"): zero-shot and LoRA q/v
WER and training throughput when every utterance is padded to Whisper's 30 s window (Hugging Face's route), to
the speech configs' 10 s window, or only to its batch's longest utterance (``pad_to: utterance``: the encoder runs
at that length, training batches grouped by duration), beside HF ``Seq2SeqTrainer`` + peft at 30 s and 10 s.

Per route, on the generated speech set of the packaged ``speech/whisper_lora_qv`` config (its conditions, its
held-out-sentence test set):

- ``verticals run speech/whisper_zero_shot``: the frozen model's WER per condition (does the short encoder input
  hurt it?);
- ``verticals run speech/whisper_lora_qv`` (seed ``--seed``, the config's epochs): the adapted model's WER per
  condition and its training throughput (utterances/s from the end of the first step to the end of the last).

Then ``Seq2SeqTrainer`` + peft LoRA (the config's rank, targets and learning rate) for ``--throughput-steps`` steps
at 30 s and at 10 s (``benchmarks/speech.py``'s ``trainer_throughput``), for the ratio a user would see against
the usual route. WER is pooled over each condition's utterances, after Whisper's English normaliser.

Usage (from the repository root, on a quiet machine)::

    python benchmarks/whisper_length.py                   # ~25 min on a 2-core CPU
    python benchmarks/whisper_length.py --source tiny-random --train-per-condition 2 --test-per-condition 1 \\
        --val-per-condition 1 --epochs 1 --throughput-steps 2 --output /tmp/whisper_length.md   # a smoke test

Writes ``benchmarks/results/whisper_length.md`` (or ``--output``) and the raw numbers to the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speech as speech_benchmark  # noqa: E402
from _common import (  # noqa: E402
    TrainWindow,
    callback_class_path,
    find_callback,
    machine,
    machine_line,
    runs_root,
    write_reports,
)
from charts import chart_report  # noqa: E402

from verticals.core.cli import run_cli  # noqa: E402
from verticals.domains.speech.metrics import pooled_wer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: Route -> (encoder window in positions, pad_to, frames of padding kept after the longest utterance).
ROUTES: dict[str, tuple[int, str, int]] = {
    "window_30s": (1500, "window", 0),
    "window_10s": (500, "window", 0),
    "utterance": (500, "utterance", 0),
    "utterance_margin": (500, "utterance", 100),
}
ROUTE_TITLES = {
    "window_30s": "30 s window (HF's route)",
    "window_10s": "10 s window (the configs')",
    "utterance": "utterance length, no margin (`pad_margin: 0`)",
    "utterance_margin": "utterance length + 1 s (`pad_to: utterance`, its default `pad_margin: 100`)",
}
TEST_SET = "held_out_sentences"


def run_route(route: str, method: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``verticals run`` of a packaged speech config on one route; WER per condition and timings."""
    positions, pad_to, margin = ROUTES[route]
    route_args = argparse.Namespace(**{**vars(args), "max_source_positions": positions})
    directory = root / route / f"{method}_seed{seed}"
    argv = [
        "run",
        speech_benchmark.config_name(method),
        *speech_benchmark.common_arguments(route_args, directory, method, TEST_SET),
        "--data.init_args.pad_to", pad_to,
        *(["--data.init_args.pad_margin", str(margin)] if pad_to == "utterance" else []),
        "--seed_everything", str(seed),
        "--baseline", "false",
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
        *([] if method == "zero_shot" or args.epochs is None else ["--trainer.max_epochs", str(args.epochs)]),
    ]  # fmt: skip
    started = time.perf_counter()
    cli = run_cli(argv)
    wall = time.perf_counter() - started
    counts = speech_benchmark.utterance_counts(Path(cli.trainer.log_dir or directory))
    if counts is None:
        raise RuntimeError(f"{route} {method}: the run wrote no per-utterance table.")
    conditions = list(dict.fromkeys(counts["condition"]))
    wer = {
        condition: pooled_wer(
            [e for e, c in zip(counts["word_errors"], counts["condition"]) if c == condition],
            [w for w, c in zip(counts["words"], counts["condition"]) if c == condition],
        )
        for condition in conditions
    }
    window = find_callback(cli.trainer, TrainWindow)
    trained = method != "zero_shot" and window is not None and window.samples
    return {
        "route": route,
        "method": method,
        "seed": seed,
        "command": "verticals " + shlex.join(argv),
        "wer": wer,
        "wall_seconds": wall,
        "train_utterances": window.samples if trained else 0,
        "train_seconds": window.elapsed if trained else None,
        "steady_utterances_per_s": window.steady_samples_per_second if trained else None,
    }


def hf_throughput(positions: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``Seq2SeqTrainer`` + peft LoRA q/v for ``--throughput-steps`` steps at a window of ``positions``."""
    route_args = argparse.Namespace(**{**vars(args), "max_source_positions": positions})
    return speech_benchmark.trainer_throughput(route_args, root / f"hf_{positions}")


def route_means(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (route, method): WER per condition, mean over the seeds run, and the median throughput."""
    rows = []
    for key in dict.fromkeys((run["route"], run["method"]) for run in runs):
        group = [run for run in runs if (run["route"], run["method"]) == key]
        speeds = [run["steady_utterances_per_s"] for run in group if run["steady_utterances_per_s"]]
        conditions = list(group[0]["wer"])
        rows.append(
            {
                "route": key[0],
                "method": key[1],
                "seeds": [run["seed"] for run in group],
                "wer": {c: statistics.fmean(run["wer"][c] for run in group) for c in conditions},
                "steady_utterances_per_s": statistics.median(speeds) if speeds else None,
                "wall_seconds": statistics.fmean(run["wall_seconds"] for run in group),
            }
        )
    return rows


def paired_change(
    runs: list[dict[str, Any]], method: str, route: str, reference: str
) -> dict[str, Any] | None:
    """WER of ``route`` minus ``reference`` per condition, per seed both ran and its mean; None if none."""
    ours = {run["seed"]: run for run in runs if run["route"] == route and run["method"] == method}
    theirs = {run["seed"]: run for run in runs if run["route"] == reference and run["method"] == method}
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    conditions = list(ours[seeds[0]]["wer"])
    per_seed = {c: [ours[s]["wer"][c] - theirs[s]["wer"][c] for s in seeds] for c in conditions}
    return {
        "seeds": seeds,
        "change": {c: statistics.fmean(v) for c, v in per_seed.items()},
        "per_seed": per_seed,
    }


SHORT_ROUTES = ("utterance", "utterance_margin")
REFERENCES = {"window_30s": "30 s window", "window_10s": "10 s window"}


def summarise(runs: list[dict[str, Any]], hf: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """WER changes of the short routes against both windows (paired by seed) and throughput ratios."""
    changes = []
    for route in SHORT_ROUTES:
        for method in ("zero_shot", "lora_qv"):
            for reference in REFERENCES:
                change = paired_change(runs, method, route, reference)
                if change is not None:
                    changes.append({"route": route, "method": method, "reference": reference, **change})
    means = {(row["route"], row["method"]): row for row in route_means(runs)}
    ratios: dict[str, dict[str, float]] = {}
    for route in SHORT_ROUTES:
        ours = means.get((route, "lora_qv"))
        if ours and ours["steady_utterances_per_s"]:
            ratios[route] = {
                name: ours["steady_utterances_per_s"] / row["steady_utterances_per_s"]
                for name, row in hf.items()
            }
    within = {
        entry["route"]: all(abs(value) <= 0.01 for value in entry["change"].values())
        for entry in changes
        if entry["method"] == "lora_qv" and entry["reference"] == "window_30s"
    }
    return {
        "wer_changes": changes,
        "throughput_ratio": ratios,
        "within_one_point_of_30s": within,
        "at_least_2x_hf_30s": {route: ratio.get("hf_30s", 0.0) >= 2.0 for route, ratio in ratios.items()},
    }


def _change_line(entry: dict[str, Any]) -> str:
    several = len(entry["seeds"]) > 1
    parts = []
    for condition, value in entry["change"].items():
        seeds = ", ".join(f"{100 * d:+.1f}" for d in entry["per_seed"][condition])
        parts.append(f"{condition} {100 * value:+.1f}" + (f" (per seed {seeds})" if several else ""))
    return (
        f"- {entry['method']}, {ROUTE_TITLES[entry['route']]} minus {REFERENCES[entry['reference']]} (seeds "
        f"{', '.join(map(str, entry['seeds']))}), WER points: " + "; ".join(parts)
    )


def render_markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    rows = route_means(results["runs"])
    conditions = list(rows[0]["wer"]) if rows else []
    lines = [
        "# Whisper at the utterance's own length",
        "",
        f"Made by `{results['command']}` on {machine_line(results['machine'])}.",
        "",
        f"Model `{settings['source']}`; the generated speech set of `speech/whisper_lora_qv` "
        f"({settings['train_per_condition']} training and {settings['test_per_condition']} test utterances per "
        f"condition, the `{TEST_SET}` test set), LoRA q/v trained for {settings['epochs'] or 'the config'}'s "
        "epochs, greedy decoding. WER is pooled per condition after Whisper's English normaliser and averaged over "
        "the seeds a row ran (zero-shot is greedy: one run). Zero-shot WERs above 1 are loops and hallucinated "
        "text, which move a lot with any change of the input's length.",
        "",
        "## WER per condition",
        "",
        "| route | method | seeds | " + " | ".join(conditions) + " | wall s per run |",
        "|---|---|---|" + "---|" * len(conditions) + "---|",
    ]
    for row in rows:
        lines.append(
            f"| {ROUTE_TITLES[row['route']]} | {row['method']} | {', '.join(map(str, row['seeds']))} | "
            + " | ".join(f"{row['wer'][c]:.3f}" for c in conditions)
            + f" | {row['wall_seconds']:.0f} |"
        )
    summary = results["summary"]
    lines.append("")
    lines += [_change_line(entry) for entry in summary["wer_changes"]]
    lines += ["", "## Training throughput (LoRA q/v)", "", "| route | utterances/s (steady) |", "|---|---|"]
    for row in rows:
        if row["method"] == "lora_qv" and row["steady_utterances_per_s"]:
            lines.append(
                f"| verticals fit, {ROUTE_TITLES[row['route']]} | {row['steady_utterances_per_s']:.2f} |"
            )
    for name, row in results["hf"].items():
        window = "30 s window" if name == "hf_30s" else "10 s window"
        lines.append(
            f"| HF Seq2SeqTrainer + peft, {window} ({row['steps']} steps) | {row['steady_utterances_per_s']:.2f} |"
        )
    for route, ratios in summary["throughput_ratio"].items():
        within = summary["within_one_point_of_30s"].get(route)
        lines += [
            "",
            f"verticals fit, {ROUTE_TITLES[route]}, vs Seq2SeqTrainer + peft: "
            + ", ".join(f"**{ratio:.2f}×** at {name.removeprefix('hf_')}" for name, ratio in ratios.items())
            + f". Targets: ≥ 2× Seq2SeqTrainer at 30 s ({'met' if summary['at_least_2x_hf_30s'][route] else 'not met'}); "
            + "LoRA WER within 1 point of the 30 s route on every condition ("
            + ("not measured" if within is None else "met" if within else "not met")
            + ").",
        ]
    lines += ["", "The runs' commands are in the JSON (`runs[].command`)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    packaged = speech_benchmark.packaged_data()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES))
    parser.add_argument(
        "--methods", nargs="+", choices=["zero_shot", "lora_qv"], default=["zero_shot", "lora_qv"]
    )
    parser.add_argument("--source", default="tiny.en")
    parser.add_argument("--train-per-condition", type=int, default=packaged["utterances_per_condition"])
    parser.add_argument("--val-per-condition", type=int, default=packaged["val_utterances_per_condition"])
    parser.add_argument("--test-per-condition", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=packaged["batch_size"])
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every route")
    parser.add_argument(
        "--resume", type=Path, default=None, help="a previous run's JSON: its runs are kept, not rerun"
    )
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument(
        "--throughput-steps", type=int, default=16, help="Seq2SeqTrainer steps per window; 0 skips"
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "whisper_length.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    previous = json.loads(args.resume.read_text()) if args.resume else {}
    runs: list[dict[str, Any]] = [{"seed": 0, **run} for run in previous.get("runs", [])]
    hf: dict[str, dict[str, Any]] = dict(previous.get("hf", {}))
    done = {(run["route"], run["method"], run["seed"]) for run in runs}
    with runs_root(args.runs_dir, "whisper_length_") as root:
        for route in args.routes:
            for method in args.methods:
                seeds = args.seeds[:1] if method == "zero_shot" else args.seeds  # greedy: one run says it all
                for seed in seeds:
                    if (route, method, seed) in done or (
                        method == "zero_shot" and (route, method, 0) in done
                    ):
                        continue
                    runs.append(run_route(route, method, seed, args, root))
                    print(f"{route} {method} seed {seed}: WER {runs[-1]['wer']}", flush=True)
        if args.throughput_steps and not hf:
            for name, positions in (("hf_30s", 1500), ("hf_10s", 500)):
                hf[name] = hf_throughput(positions, args, root)
                print(f"{name}: {hf[name]['steady_utterances_per_s']:.2f} utterances/s", flush=True)
    command = "python benchmarks/whisper_length.py " + shlex.join(argv)
    results = {
        "benchmark": "whisper_length",
        "command": f"{previous['command']} && {command}" if previous.get("command") else command,
        "machine": machine(["torch", "transformers", "peft", "lightning"]),
        "settings": {key: value for key, value in vars(args).items() if key not in ("runs_dir", "output")},
        "runs": runs,
        "hf": hf,
        "summary": summarise(runs, hf),
    }
    markdown, json_path = write_reports(results, args.output, render_markdown)
    chart_report(args.output, results)
    print(markdown)
    print(f"Wrote {args.output} and {json_path}")
    return results


if __name__ == "__main__":
    main()
