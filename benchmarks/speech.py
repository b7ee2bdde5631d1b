"""Speech benchmark: what adapting Whisper tiny.en to shifted speech learns, against a clear-speech control.

What it measures, for every method and seed (``--seeds``, at least three for the table's intervals):

1. ``verticals run speech/whisper_<method>`` in this process (:func:`verticals.core.cli.run_cli`), as a user
   runs it, with the packaged config's epochs and sizes (only the model source, data sizes and seed may be
   overridden), then ``verticals test`` of its best checkpoint on the generated set's three test sets:
   ``held_out_sentences`` (new sentences, the training voices), ``in_template`` (the earlier template
   sentences, the training voices) and ``held_out_voices`` (new sentences, each condition's voices that
   were never trained on). Zero-shot is tested once (greedy decoding has no seed).
2. The **control**: LoRA q/v (the ``whisper_lora_qv`` config) trained on **clear speech only**, with as many
   training utterances as the other methods see over all conditions, so the same number of steps. What a
   method gains on a shifted condition that the control also gains is not adaptation to that condition.
3. From the per-utterance error counts (the same utterances for every method): per condition and test set
   the WER of each method (mean over seeds, Student-t interval over seeds), its change against zero-shot
   (errors averaged over seeds per utterance; paired bootstrap over utterances, ``verticals.core.seeds``),
   and the share of each method's gain the control already gets, ``(zero-shot - control) / (zero-shot -
   method)``, with a bootstrap interval from the same resamples.
4. Optionally (``--merge-batches``, ``--throughput-steps``): transcripts before/after merging LoRA, and
   training throughput against HF ``Seq2SeqTrainer`` + peft.

Runs are recorded in ``<runs-dir>/progress.json`` as they finish; ``--resume`` skips those already there.

Usage (from the repository root)::

    python benchmarks/speech.py --runs-dir /tmp/speech_runs                  # 5 methods x 3 seeds
    python benchmarks/speech.py --runs-dir /tmp/speech_runs --resume         # after an interruption
    python benchmarks/speech.py --source tiny-random --seeds 0 --train-per-condition 1 --test-per-condition 1 \
        --val-per-condition 1 --epochs 1                                     # smoke test

Writes ``benchmarks/results/speech.md`` (or ``--output``) and the raw numbers to the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from _common import (
    TrainWindow,
    alternate,
    callback_class_path,
    find_callback,
    machine,
    machine_line,
    paired_verdict,
    runs_root,
    steady_throughput,
    write_reports,
)
from charts import chart_report

from verticals.core.cli import packaged_configs, run_cli
from verticals.core.report import adapter_size_bytes
from verticals.core.seeds import check_seeds, paired_bootstrap, seed_statistics
from verticals.domains.speech.data import TEST_SETS
from verticals.domains.speech.metrics import UTTERANCE_TABLE, control_share, pooled_wer, read_utterance_table

CONTROL = "control"
METHODS = ("zero_shot", "lora_qv", "lora_all_linear", "s2lora", "adalora", "bitfit", CONTROL)
DEFAULT_METHODS = ("zero_shot", "lora_qv", "s2lora", "adalora", CONTROL)
MERGEABLE = ("lora_qv", "lora_all_linear", "s2lora")
CONTROL_CONDITION = "clear"
#: The old headline's bar: a relative WER cut of at least this much on a shifted condition.
TARGET_CUT = 0.30


def config_name(method: str) -> str:
    """The packaged config a method runs (the control runs LoRA q/v's)."""
    return "speech/whisper_lora_qv" if method == CONTROL else f"speech/whisper_{method}"


def packaged_data(method: str = "lora_qv") -> dict[str, Any]:
    """A packaged config's ``data.init_args`` and its ``trainer.max_epochs``."""
    config = yaml.safe_load(packaged_configs()[config_name(method)].read_text())
    return {**config["data"]["init_args"], "max_epochs": config["trainer"]["max_epochs"]}


def data_arguments(
    args: argparse.Namespace, method: str = "lora_qv", test_set: str | None = None
) -> list[str]:
    """The data overrides of one run: sizes, window, cache; the control trains on clear speech only, with the
    utterances every condition would have had (the same steps)."""
    train = args.train_per_condition
    extra: list[str] = []
    if method == CONTROL:
        train *= len(packaged_data()["conditions"])
        extra = ["--data.init_args.train_conditions", f"[{CONTROL_CONDITION}]"]
    return [
        "--data.init_args.utterances_per_condition",
        str(train),
        "--data.init_args.val_utterances_per_condition",
        str(args.val_per_condition),
        "--data.init_args.test_utterances_per_condition",
        str(args.test_per_condition),
        "--data.init_args.max_source_positions",
        str(args.max_source_positions),
        "--data.init_args.batch_size",
        str(args.batch_size),
        *(["--data.init_args.test_set", test_set] if test_set else []),
        *(["--data.init_args.cache_dir", args.cache_dir] if args.cache_dir else []),
        *extra,
    ]


def common_arguments(
    args: argparse.Namespace, root: Path, method: str = "lora_qv", test_set: str | None = None
) -> list[str]:
    return [
        "--model.init_args.model_args",
        json.dumps({"source": args.source}),
        "--model.init_args.generate_at_validation",
        "false",
        "--model.init_args.n_bootstrap",
        str(args.bootstrap),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *data_arguments(args, method, test_set),
    ]


def utterance_counts(directory: Path) -> dict[str, list[Any]] | None:
    """The test set's per-utterance word errors and reference words with each utterance's condition, in
    test-loader order (the same order for every method: paired comparisons), from the run's
    ``test_utterance_errors.csv``."""
    path = directory / UTTERANCE_TABLE
    rows = read_utterance_table(path) if path.is_file() else []
    if not rows:
        return None
    return {
        "condition": [row["condition"] for row in rows],
        "word_errors": [row["word_errors"] for row in rows],
        "words": [row["words"] for row in rows],
    }


def _log_dir(trainer: Any) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def run_method(method: str, seed: int, args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], Any]:
    """Fit and test one method and seed (``verticals run``), then test its best checkpoint on the other test
    sets (``verticals test``); returns the record and the run's CLI."""
    epochs = (
        [] if method == "zero_shot" or args.epochs is None else ["--trainer.max_epochs", str(args.epochs)]
    )
    first, *others = args.test_sets
    directory = root / f"{method}_seed{seed}"
    argv = [
        "run",
        config_name(method),
        *common_arguments(args, directory / first, method, first),
        "--seed_everything",
        str(seed),
        "--baseline",
        "false",  # the frozen-model baseline is the zero-shot row, measured once
        *epochs,
    ]
    started = time.perf_counter()
    cli = run_cli(argv)
    wall = time.perf_counter() - started
    trainer, task = cli.trainer, cli.model
    timing = next((c for c in trainer.callbacks if type(c).__name__ == "Timing"), None)
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    record: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "command": "verticals " + shlex.join(argv),
        "trainable": task.parameter_summary().trainable,
        "adapter_bytes": adapter_size_bytes(_log_dir(trainer) / "adapter") if method != "zero_shot" else 0,
        "steps": int(trainer.global_step),
        "fit_seconds": timing.fit_seconds if timing else None,
        "wall_seconds": wall,
        "data": cli.datamodule.summary(),
        "test_sets": {first: utterance_counts(_log_dir(trainer))},
    }
    for test_set in others:
        test_argv = [
            "test",
            "--config",
            config_name(method),
            *common_arguments(args, directory / test_set, method, test_set),
            "--seed_everything",
            str(seed),
            *(["--ckpt_path", checkpoint] if checkpoint else []),
        ]
        tested = run_cli(test_argv)
        record["test_sets"][test_set] = utterance_counts(_log_dir(tested.trainer))
    record["wall_seconds"] = time.perf_counter() - started
    return record, cli


# -- the analysis -------------------------------------------------------------------------------------------
def seed_mean_errors(records: Sequence[Mapping[str, Any]], test_set: str) -> dict[str, np.ndarray] | None:
    """Per-utterance word errors averaged over a method's seeds (with the shared condition and words)."""
    tables = [r["test_sets"].get(test_set) for r in records if r["test_sets"].get(test_set)]
    if not tables:
        return None
    first = tables[0]
    for table in tables[1:]:
        if table["condition"] != first["condition"] or table["words"] != first["words"]:
            raise ValueError(f"The seeds of one method were tested on different {test_set} utterances.")
    return {
        "condition": np.asarray(first["condition"]),
        "words": np.asarray(first["words"], dtype=np.float64),
        "word_errors": np.mean([np.asarray(t["word_errors"], dtype=np.float64) for t in tables], axis=0),
    }


def per_seed_wer(records: Sequence[Mapping[str, Any]], test_set: str, condition: str) -> list[float]:
    out = []
    for record in records:
        table = record["test_sets"].get(test_set)
        if table:
            rows = np.asarray(table["condition"]) == condition
            out.append(pooled_wer(np.asarray(table["word_errors"])[rows], np.asarray(table["words"])[rows]))
    return out


def paired_change(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], condition: str, n_bootstrap: int
) -> dict[str, float]:
    """``other``'s WER minus ``reference``'s on one condition's utterances, paired bootstrap 95% interval."""
    rows = reference["condition"] == condition

    def wer(arrays: Mapping[str, np.ndarray]) -> float:
        return pooled_wer(arrays["word_errors"], arrays["words"])

    paired = paired_bootstrap(
        wer,
        {key: value[rows] for key, value in reference.items()},
        {key: value[rows] for key, value in other.items()},
        n_bootstrap=max(n_bootstrap, 1),
        same=("condition", "words"),
    )
    return paired.difference()


def summarise(runs: Sequence[Mapping[str, Any]], methods: Sequence[str], args: argparse.Namespace) -> dict:
    """Per test set and condition: each method's WER over seeds, its change against zero-shot (paired), and
    the control's share of its gain."""
    by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
    summary: dict[str, Any] = {}
    for test_set in args.test_sets:
        means = {m: seed_mean_errors(records, test_set) for m, records in by_method.items() if records}
        means = {m: v for m, v in means.items() if v is not None}
        if not means:
            continue
        conditions = list(dict.fromkeys(next(iter(means.values()))["condition"].tolist()))
        zero, control = means.get("zero_shot"), means.get(CONTROL)
        rows: dict[str, Any] = {}
        for method, arrays in means.items():
            row: dict[str, Any] = {}
            for condition in conditions:
                seeds = seed_statistics(per_seed_wer(by_method[method], test_set, condition))
                cell: dict[str, Any] = {
                    "wer": seeds.mean,
                    "seed_low": seeds.low,
                    "seed_high": seeds.high,
                    "seeds": seeds.n,
                }
                if zero is not None and method != "zero_shot":
                    change = paired_change(zero, arrays, condition, args.bootstrap)
                    cell["change"] = change
                    cell["verdict"] = paired_verdict(change, "worse than zero-shot", "better than zero-shot")
                    zero_wer = pooled_wer(
                        *(zero[k][zero["condition"] == condition] for k in ("word_errors", "words"))
                    )
                    cell["relative_cut"] = -change["value"] / zero_wer if zero_wer else math.nan
                    if control is not None and method != CONTROL:
                        cell["control_share"] = control_share(
                            zero, control, arrays, condition, args.bootstrap
                        )
                row[condition] = cell
            rows[method] = row
        summary[test_set] = {"conditions": conditions, "methods": rows}
    return summary


def test_batches(cli: Any, limit: int) -> list[torch.Tensor]:
    loader = cli.datamodule.test_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch["input_features"])
        if len(batches) >= limit:
            break
    return batches


def _generate_seconds(model: torch.nn.Module, batches: list[torch.Tensor], new_tokens: int) -> float:
    """Greedy decoding of exactly ``new_tokens`` tokens per utterance (end-of-text suppressed until then), so
    two models that would stop at different lengths still do the same work."""
    started = time.perf_counter()
    with torch.inference_mode():
        for features in batches:
            model.generate(input_features=features, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return time.perf_counter() - started


def merge_check(cli: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Transcripts equal before/after merging; merged vs base model time to decode the same number of tokens."""
    from verticals.domains.speech.models import load_whisper

    task = cli.model
    task.eval()
    batches = test_batches(cli, args.merge_batches)
    unmerged = [text for features in batches for text in task.generate_text(features)]
    peft_model = task.model
    peft_model.merge_adapter()
    merged = [text for features in batches for text in task.generate_text(features)]
    peft_model.unmerge_adapter()
    equal = sum(a == b for a, b in zip(unmerged, merged))
    merged_model = peft_model.merge_and_unload().backbone.eval()
    base, _ = load_whisper(args.source, max_source_positions=args.max_source_positions)
    base.eval()
    tokens = task.hparams["max_new_tokens"]
    merged_times, base_times = [], []
    for _ in range(args.timing_repeats):
        merged_times.append(_generate_seconds(merged_model, batches, tokens))
        base_times.append(_generate_seconds(base, batches, tokens))
    return {
        "utterances": len(unmerged),
        "equal_transcripts": equal,
        "merged_generate_s": statistics.median(merged_times),
        "base_generate_s": statistics.median(base_times),
        "merged_vs_base_time": statistics.median(merged_times) / statistics.median(base_times),
    }


def verticals_throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """``verticals fit`` of the LoRA q/v config for ``--throughput-steps`` steps, validation off, timed by
    ``TrainWindow`` (step ends; the end-of-epoch checkpoint save is timed apart)."""
    argv = [
        "fit",
        "--config",
        "speech/whisper_lora_qv",
        *common_arguments(args, root),
        "--trainer.max_steps",
        str(args.throughput_steps),
        "--trainer.max_epochs",
        "-1",
        "--trainer.limit_val_batches",
        "0",
        f"--trainer.callbacks+={callback_class_path(TrainWindow)}",
    ]
    cli = run_cli(argv)
    window = find_callback(cli.trainer, TrainWindow)
    return {
        "command": "verticals " + shlex.join(argv),
        "steps": cli.trainer.global_step,
        "utterances": window.samples,
        "seconds": window.elapsed,
        "utterances_per_s": window.samples / window.elapsed,
        "steady_utterances_per_s": window.steady_samples_per_second,
        "checkpoint_seconds": window.checkpoint_seconds,
    }


def trainer_throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The usual route: HF Seq2SeqTrainer + peft LoRA (the config's r, alpha, dropout, targets, lr)."""
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from verticals.core.adapters.targets import resolve_targets
    from verticals.core.cli import packaged_configs
    from verticals.domains.speech.data import SpeechCollator, SyntheticSpeechDataModule
    from verticals.domains.speech.models import load_whisper

    config = yaml.safe_load(packaged_configs()["speech/whisper_lora_qv"].read_text())
    init = config["model"]["init_args"]
    torch.manual_seed(config.get("seed_everything", 0))
    data = SyntheticSpeechDataModule(
        conditions=config["data"]["init_args"]["conditions"],
        utterances_per_condition=args.train_per_condition,
        val_utterances_per_condition=args.val_per_condition,
        test_utterances_per_condition=args.test_per_condition,
        max_source_positions=args.max_source_positions,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
    )
    model, _ = load_whisper(args.source, max_source_positions=args.max_source_positions)
    options = init["adapter"]["options"]
    lora = LoraConfig(
        r=options["r"],
        lora_alpha=options["lora_alpha"],
        lora_dropout=options["lora_dropout"],
        target_modules=resolve_targets(model, init["adapter"]["targets"]),
    )
    model = get_peft_model(model, lora)
    collate = SpeechCollator(data.frames)

    batch_sizes: list[int] = []  # in loading order (the loader may run one batch ahead of the steps)

    def collator(items: Sequence[Any]) -> dict[str, torch.Tensor]:
        batch_sizes.append(len(items))
        batch = collate(items)
        return {"input_features": batch["input_features"], "labels": batch["labels"]}

    class Clock(TrainerCallback):
        """The same window as ``TrainWindow``: train begin → train end, and every step's end."""

        start = end = 0.0
        step_ends: list[float] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Clock.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            Clock.step_ends.append(time.perf_counter())

        def on_train_end(self, *a: Any, **k: Any) -> None:
            Clock.end = time.perf_counter()

    training = Seq2SeqTrainingArguments(
        output_dir=str(root),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.throughput_steps,
        learning_rate=init["learning_rate"],
        weight_decay=init["weight_decay"],
        max_grad_norm=0.0,  # no clipping, as the verticals config (HF's default 1.0 would add a norm pass)
        warmup_steps=int(0.05 * args.throughput_steps),  # the verticals task warms up over 5% of its steps
        lr_scheduler_type="cosine",
        save_strategy="no",
        report_to=[],
        logging_steps=max(args.throughput_steps, 1),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=config.get("seed_everything", 0),
        disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=training,
        train_dataset=data.dataset("train"),
        data_collator=collator,
        callbacks=[Clock()],
    )
    trainer.train()
    seconds = Clock.end - Clock.start
    samples = batch_sizes[: len(Clock.step_ends)]
    return {
        "steps": trainer.state.global_step,
        "utterances": sum(samples),
        "seconds": seconds,
        "utterances_per_s": sum(samples) / seconds if seconds else 0.0,
        "steady_utterances_per_s": steady_throughput(Clock.step_ends, samples),
    }


def compare_throughput(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """Both routes ``--throughput-repeats`` times, alternating in ABBA order (so drifting machine load hits
    both), medians.

    The headline ratio is the steady-state one (end of step 1 → end of the last step, on both routes); the
    whole-window ratio (train begin → train end, which on the verticals side includes Lightning's
    end-of-epoch checkpoint save) is reported beside it.
    """
    rows = alternate(
        {
            "verticals": lambda repeat: verticals_throughput(args, runs / f"throughput_verticals_{repeat}"),
            "hf": lambda repeat: trainer_throughput(args, runs / f"throughput_hf_{repeat}"),
        },
        args.throughput_repeats,
    )

    def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
        row = dict(rows[0])
        for key in ("seconds", "utterances_per_s", "steady_utterances_per_s"):
            row[key] = statistics.median(r[key] for r in rows)
            row[f"repeats_{key}"] = [r[key] for r in rows]
        return row

    ours_row, theirs_row = median_row(rows["verticals"]), median_row(rows["hf"])
    return {
        "verticals": ours_row,
        "seq2seq_trainer": theirs_row,
        "ratio": ours_row["steady_utterances_per_s"] / theirs_row["steady_utterances_per_s"],
        "ratio_whole_window": ours_row["utterances_per_s"] / theirs_row["utterances_per_s"],
    }


def chart_methods(runs: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], test_set: str) -> dict:
    """One test set's WER per condition per method (seed means, t-intervals), pooled WER, size and fit time:
    the ``methods`` block the chart script reads."""
    block = summary.get(test_set)
    if not block:
        return {}
    out = {}
    for method, row in block["methods"].items():
        records = [r for r in runs if r["method"] == method and r["test_sets"].get(test_set)]
        pooled = seed_statistics(
            pooled_wer(np.asarray(t["word_errors"]), np.asarray(t["words"]))
            for t in (r["test_sets"][test_set] for r in records)
        )
        fits = [r["fit_seconds"] for r in records if r.get("fit_seconds") is not None]
        out[method] = {
            "wer": {c: cell["wer"] for c, cell in row.items()},
            "wer_ci": {c: [cell["seed_low"], cell["seed_high"]] for c, cell in row.items()},
            "overall": {"wer": pooled.mean, "wer_low": pooled.low, "wer_high": pooled.high},
            "trainable": records[0]["trainable"] if records else 0,
            "fit_seconds": statistics.mean(fits) if fits else None,
        }
    return out


def before_numbers(path: Path) -> dict[str, Any] | None:
    """The key numbers of the report this run replaces (an earlier table at ``path``), to quote them."""
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    if "before" in earlier:  # a report of this script already: carry its quote on
        return earlier["before"]
    methods = earlier.get("methods") or {}
    if not methods or "summary" in earlier:
        return None
    return {
        "command": earlier.get("command"),
        "created": earlier.get("created"),
        "epochs": (earlier.get("settings") or {}).get("epochs"),
        "wer": {name: row.get("wer", {}) for name, row in methods.items() if row.get("wer")},
    }


def _cell(cell: Mapping[str, Any]) -> str:
    wer, low, high = cell["wer"], cell.get("seed_low"), cell.get("seed_high")
    if low is None or math.isnan(low):
        return f"{wer:.3f}"
    return f"{wer:.3f} [{low:.3f}, {high:.3f}]"


def _interval(entry: Mapping[str, float] | None, digits: int = 3, sign: bool = True) -> str:
    if not entry or entry.get("value") is None or math.isnan(entry["value"]):
        return "—"
    form = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    low, high = entry.get("low", math.nan), entry.get("high", math.nan)
    bounds = "" if math.isnan(low) else f" [{form.format(low)}, {form.format(high)}]"
    return form.format(entry["value"]) + bounds


def judge(summary: Mapping[str, Any], method: str = "lora_qv") -> list[str]:
    """The claim "a small adapter cuts WER on shifted speech", per shifted condition, from the table: reproduced
    when ``method`` beats zero-shot by >= 30% (paired interval excluding 0) on both held-out test sets and
    beats the clear-only control's gain there (share interval below 1); partly when it beats zero-shot on at
    least one held-out set; else not reproduced."""
    held_out = [s for s in ("held_out_sentences", "held_out_voices") if s in summary]
    if not held_out or method not in summary[held_out[0]]["methods"]:
        return []
    lines = []
    for condition in summary[held_out[0]]["conditions"]:
        if condition == CONTROL_CONDITION:
            continue
        cells = {s: summary[s]["methods"][method][condition] for s in held_out}
        better = {s: c.get("verdict") == "better than zero-shot" for s, c in cells.items()}
        large = {s: better[s] and c.get("relative_cut", 0) >= TARGET_CUT for s, c in cells.items()}
        beyond = {s: (c.get("control_share") or {}).get("high", math.nan) < 1.0 for s, c in cells.items()}
        controlled = all("control_share" in c for c in cells.values())
        if all(large.values()) and len(held_out) == 2 and not controlled:
            verdict = "reproduced against zero-shot (no control run yet)"
        elif all(large.values()) and all(beyond.values()) and len(held_out) == 2:
            verdict = "reproduced"
        elif any(better.values()):
            verdict = "partly"
        else:
            verdict = "not reproduced"
        facts = "; ".join(
            f"{s}: {100 * c.get('relative_cut', math.nan) + 0.0:.0f}% cut, change {_interval(c.get('change'))}, "
            f"control share {_interval(c.get('control_share'), 2, sign=False)}"
            for s, c in cells.items()
        )
        lines.append(f"- **{condition}: {verdict}** ({method}; {facts}).")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    summary, settings = results.get("summary") or {}, results["settings"]
    lines = [
        "# Speech benchmark: what adapting Whisper to shifted speech learns",
        "",
        f"Made by `{results['command']}` on {results['created']}"
        + (f" ({results['minutes']:.0f} min of this call)" if results.get("minutes") else "")
        + ".",
        "",
        f"Machine: {machine_line(results['machine'])}.",
        "",
        f"Model `{settings['source']}`, encoder window {settings['max_source_positions']} positions, "
        f"{settings['epochs_used']} epochs (the packaged configs'), seeds {settings['seeds']}; "
        f"{settings['train_per_condition']} training utterances per condition "
        f"({settings['control_train']} clear ones for the control: the same steps), "
        f"{settings['test_per_condition']} test utterances per condition in each test set. "
        "WER after Whisper's English normaliser (pooled errors / pooled reference words).",
        "",
        "Test sets: **held_out_sentences** (new sentences, training voices), **in_template** (the earlier ten "
        "templates' sentences, training voices), **held_out_voices** (new sentences, each condition's "
        "voices never trained on). The control is LoRA q/v trained on clear speech only.",
        "",
    ]
    data = results.get("data")
    if data:
        lines += [
            f"Data (seed 0): {data['sentences']['train']} training sentences, shared with validation/test: "
            f"{data['shared_sentences']['train_val']}/{data['shared_sentences']['train_test']}; "
            f"{100 * data['unseen_test_word_share']:.1f}% of the test words never occur in training text; "
            f"test voices on held_out_voices: "
            + ", ".join(f"{c} {v}" for c, v in (results.get("held_out_voices") or {}).items())
            + ".",
            "",
        ]
    before = results.get("before")
    if before and before.get("wer"):
        quoted = "; ".join(
            f"{name} " + ", ".join(f"{c} {w:.3f}" for c, w in row.items())
            for name, row in before["wer"].items()
            if name in ("zero_shot", "lora_qv", "s2lora", "adalora")
        )
        lines += [
            f"Before (the table this replaces: trained and tested on the ten templates, one seed, "
            f"{before.get('epochs')} epochs, `{before.get('command')}`): WER {quoted}.",
            "",
        ]
    for test_set, block in summary.items():
        conditions = block["conditions"]
        lines += [
            f"## {test_set}: WER (mean over seeds [95% t-interval])",
            "",
            "| method | " + " | ".join(conditions) + " |",
            "|---|" + "---|" * len(conditions),
        ]
        for method, row in block["methods"].items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[c]) for c in conditions) + " |")
        lines += [
            "",
            "Change against zero-shot (WER, errors averaged over seeds per utterance; paired bootstrap 95%):",
            "",
            "| method | " + " | ".join(conditions) + " |",
            "|---|" + "---|" * len(conditions),
        ]
        for method, row in block["methods"].items():
            if method == "zero_shot":
                continue
            lines.append(
                f"| {method} | " + " | ".join(_interval(row[c].get("change")) for c in conditions) + " |"
            )
        if CONTROL in block["methods"]:
            lines += [
                "",
                "Share of each method's gain over zero-shot that the clear-only control already gets "
                "(1 = all of it; — where the method gains nothing; bootstrap 95%):",
                "",
                "| method | " + " | ".join(conditions) + " |",
                "|---|" + "---|" * len(conditions),
            ]
            for method, row in block["methods"].items():
                if method in ("zero_shot", CONTROL):
                    continue
                cells = [_interval(row[c].get("control_share"), 2, sign=False) for c in conditions]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    verdicts = judge(summary)
    if verdicts:
        lines += [
            '## The claim "a small adapter cuts WER on shifted speech", per condition',
            "",
            "Reproduced: LoRA q/v beats zero-shot by at least 30% with a paired interval excluding 0 on both "
            "held-out test sets, and more than the clear-only control does (share interval below 1). Partly: "
            "it beats zero-shot on at least one held-out set. Otherwise not reproduced.",
            "",
            *verdicts,
            "",
        ]
    runs = results.get("runs") or []
    if runs:
        lines += [
            "## Runs",
            "",
            "| method | seed | trainable | steps | fit s | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for run in runs:
            fit = run.get("fit_seconds")
            lines.append(
                f"| {run['method']} | {run['seed']} | "
                f"{'0 (no training)' if run['method'] == 'zero_shot' else format(run['trainable'], ',')} | "
                f"{run['steps']} | "
                f"{'—' if fit is None else f'{fit:.0f}'} | {run['wall_seconds']:.0f} |"
            )
        lines.append("")
    if results.get("merge"):
        lines += ["## Merging", "", "| method | utterances | equal transcripts | merged / base decode time |"]
        lines.append("|---|---|---|---|")
        for name, row in results["merge"].items():
            lines.append(
                f"| {name} | {row['utterances']} | {row['equal_transcripts']} | {row['merged_vs_base_time']:.3f} |"
            )
        lines.append("")
    if results.get("throughput"):
        t = results["throughput"]
        lines += [
            "## Training throughput (LoRA q/v; verticals fit vs HF Seq2SeqTrainer + peft)",
            "",
            f"Steady-state ratio **{t['ratio']:.3f}×**, whole window {t['ratio_whole_window']:.3f}× "
            f"({t['verticals']['steady_utterances_per_s']:.2f} vs {t['seq2seq_trainer']['steady_utterances_per_s']:.2f} "
            "utterances/s).",
            "",
        ]
    lines += ["Commands of the individual runs are in the JSON (`runs[].command`)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    packaged = packaged_data()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (>= 3 for CIs)"
    )
    parser.add_argument("--test-sets", nargs="+", default=list(TEST_SETS), choices=TEST_SETS)
    parser.add_argument(
        "--source", default="tiny.en", help="Whisper: tiny.en, tiny-random, a directory or hub id"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the configs' max_epochs (smoke tests)"
    )
    parser.add_argument("--train-per-condition", type=int, default=packaged["utterances_per_condition"])
    parser.add_argument("--val-per-condition", type=int, default=packaged["val_utterances_per_condition"])
    parser.add_argument("--test-per-condition", type=int, default=packaged["test_utterances_per_condition"])
    parser.add_argument("--max-source-positions", type=int, default=packaged["max_source_positions"])
    parser.add_argument("--batch-size", type=int, default=packaged["batch_size"])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--merge-batches", type=int, default=0, help="test batches for the merge check (0: none)"
    )
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--throughput-steps", type=int, default=0, help="0 skips the throughput comparison")
    parser.add_argument("--throughput-repeats", type=int, default=3, help="alternating repeats of each route")
    parser.add_argument(
        "--cache-dir", default=None, help="speech feature cache (default: ~/.cache/verticals)"
    )
    parser.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--resume", action="store_true", help="skip the runs in <runs-dir>/progress.json")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "speech.md"))
    parser.add_argument(
        "--render", default=None, help="only re-render --output's markdown from this results JSON"
    )
    args = parser.parse_args(argv)
    args.seeds = check_seeds(args.seeds)
    if args.resume and not args.runs_dir:
        parser.error("--resume needs --runs-dir (where progress.json is).")
    return args


def results_of(
    argv: Sequence[str], args: argparse.Namespace, env: Mapping[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    methods = [m for m in args.methods if any(r["method"] == m for r in runs)]
    summary = summarise(runs, methods, args)
    data = next((r["data"] for r in runs if r["method"] != CONTROL and r.get("data")), None)
    epochs = args.epochs if args.epochs is not None else packaged_data()["max_epochs"]
    return {
        "command": shlex.join(["python", "benchmarks/speech.py", *argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": env,
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("output", "runs_dir", "render", "resume")},
            "epochs_used": epochs,
            "control_train": args.train_per_condition * len(packaged_data()["conditions"]),
        },
        "data": data,
        "held_out_voices": held_out_voices(),
        "summary": summary,
        "methods": chart_methods(runs, summary, args.test_sets[0]),
        "runs": runs,
    }


def held_out_voices() -> dict[str, list[str]]:
    from verticals.domains.speech.conditions import CONDITIONS

    return {name: [v.name for v in c.held_out_voices] for name, c in CONDITIONS.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    output = Path(args.output)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        output.write_text(render_markdown(results))
        chart_report(output, results)
        return results
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    started = time.perf_counter()
    env = machine(["transformers", "peft", "lightning", "espeakng-loader"])
    before = before_numbers(output.with_suffix(".json"))
    keep_argv = list(sys.argv)
    runs: list[dict[str, Any]] = []
    with runs_root(Path(args.runs_dir) if args.runs_dir else None, prefix="verticals-bench-speech-") as root:
        progress = root / "progress.json"
        if args.resume and progress.is_file():
            runs = [r for r in json.loads(progress.read_text()) if r["method"] in args.methods]
        merge: dict[str, Any] = {}

        def save() -> dict[str, Any]:
            progress.write_text(json.dumps(runs, indent=1, default=str))
            results = results_of(argv, args, env, runs)
            results.update(before=before, merge=merge, minutes=(time.perf_counter() - started) / 60)
            write_reports(results, output, render_markdown)  # partial results survive an interruption
            return results

        try:
            for seed in args.seeds:  # seeds outermost: an interrupted run still covers every method
                for method in args.methods:
                    if method == "zero_shot" and seed != args.seeds[0]:
                        continue  # greedy decoding of the base model has no seed
                    if any(r["method"] == method and r["seed"] == seed for r in runs):
                        continue
                    record, cli = run_method(method, seed, args, root)
                    runs.append(record)
                    print(
                        f"{method} seed {seed}: {record['steps']} steps, {record['wall_seconds']:.0f} s; WER "
                        + ", ".join(
                            f"{s} {pooled_wer(np.asarray(t['word_errors']), np.asarray(t['words'])):.3f}"
                            for s, t in record["test_sets"].items()
                            if t
                        ),
                        flush=True,
                    )
                    if args.merge_batches > 0 and method in MERGEABLE and method not in merge:
                        merge[method] = merge_check(cli, args)
                    save()
            results = save()
            if args.throughput_steps > 0:
                results["throughput"] = compare_throughput(args, root)
        finally:
            sys.argv = keep_argv
    markdown, _ = write_reports(results, output, render_markdown)
    chart_report(output, results)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
