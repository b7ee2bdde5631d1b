"""Before/after parity of every packaged config: same test metrics, and the same test outputs bit for bit.

A refactor of the core must not change what a packaged config computes. This script runs every config of
``verticals.core.cli.packaged_configs()`` through ``run_cli(["run", "--config", NAME, ...])`` at a small,
deterministic CPU budget (one torch thread, the config's own seed, trainer limits and each datamodule's size
options), and records every ``test_*`` metric plus the test-set outputs: what each test step returns (for
example logits) and what ``trainer.predict`` gives on the test dataloader (probabilities, forecasts or
transcripts), with a sha256 of each array's raw bytes.

    python benchmarks/core_parity.py --record benchmarks/results/core_parity_before.json
    python benchmarks/core_parity.py --compare benchmarks/results/core_parity_before.json \\
        --output benchmarks/results/core_parity.md

A config whose budget changes on purpose is compared over seeds at its packaged budget instead (``--seeds``
overrides ``seed_everything``; a comparison repeats the record's seeds and budget):

    python benchmarks/core_parity.py --record benchmarks/results/gunpoint_lora_seeds_before.json \\
        --configs timeseries/gunpoint_lora --seeds 0 1 2 3 4 --full-budget

``--record`` writes the JSON and one ``.npz`` per run in a folder named after it (``<stem>/``).
``--compare`` runs the configs again with the installed code and writes a markdown table: metric equality,
the largest metric and output differences, and whether the outputs are bit-identical; it exits with 1 when a
config's metrics or outputs differ, or a config that ran before fails now. Each config runs in
its own Python process (the same interpreter and environment), so results do not depend on which configs ran
before it. Only APIs that exist before and after the core redesign are used: ``run_cli``,
``packaged_configs`` and Lightning.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from charts import chart_report, core_parity_from_records

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "lightning", "peft", "transformers", "torchmetrics", "open_clip_torch", "timm", "monai")

# Small budgets, by domain: trainer limits plus the datamodule's own size options. The test split is kept
# whole where it is small (GunPoint's 150 series, the generated sets below), so the metrics are not those of
# one batch. Every value was chosen to keep a config under ~40 s on one CPU thread.
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TIMESERIES = ["--trainer.max_epochs", "3"]  # GunPoint: 4 batches of 16 per epoch (all of TRAIN)
MEDICAL = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1",
    "--data.init_args.num_images", "160",
    "--data.init_args.generated_size", "32",
    "--data.init_args.batch_size", "16",
]  # fmt: skip
# SAM segmentation (MNI152 slices or generated phantoms, no `root`): at the config's own image size, a few slices.
# Still ~5 min a config on this CPU: `run` also scores the zero-shot-box baseline and the per-group report.
SAM = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "2",
]  # fmt: skip
SAM_DATA = {
    "MNI152": ["--data.init_args.max_slices", "16"],
    "phantoms": ["--data.init_args.num_patients", "10", "--data.init_args.num_slices", "2"],
}
SPEECH = [
    "--trainer.max_epochs", "1",
    "--data.init_args.conditions", "[clear, noisy]",
    "--data.init_args.utterances_per_condition", "2",
    "--data.init_args.val_utterances_per_condition", "1",
    "--data.init_args.test_utterances_per_condition", "3",
    "--data.init_args.max_source_positions", "250",
    "--data.init_args.batch_size", "2",
    "--model.init_args.max_new_tokens", "24",
    "--model.init_args.n_bootstrap", "20",
]  # fmt: skip


def data_locations(name: str, workdir: Path) -> list[str]:
    """Where generated data and caches go: the run's work folder, never the repository or the home cache."""
    domain = name.split("/", 1)[0]
    if domain == "medical":
        return ["--data.init_args.root", str(workdir / "data" / "medical")]
    if domain == "speech":
        return ["--data.init_args.cache_dir", str(workdir / "data" / "speech")]
    return []


def run_key(name: str, seed: int | None) -> str:
    """A result's key: the config name, with ``@seed=S`` when the seed was overridden."""
    return name if seed is None else f"{name}@seed={seed}"


def small_budget(name: str, workdir: Path) -> tuple[list[str], str]:
    """The overrides that make config ``name`` small, and a note on what they change beyond the budget."""
    domain, config = name.split("/", 1)
    zero_shot = config.endswith("zero_shot")
    if domain == "timeseries":
        return [*TIMESERIES], "real MiniLM; 3 epochs (GunPoint: 12 steps); whole TEST split"
    if domain == "medical" and "sam" in config:
        data = "phantoms" if "phantoms" in config else "MNI152"
        args = [*SAM, *SAM_DATA[data]]
        if zero_shot:
            args[1] = "0"
        return args, f"{data} slices at the config's size, 1 epoch x 2 batches, 2 test batches"
    if domain == "medical":
        args = [*MEDICAL, *data_locations(name, workdir)]
        if zero_shot:
            args[1] = "0"
        if "few_shot" in config:  # 2 images per class: one batch per epoch, so three epochs
            args[1] = "3"
            args += ["--data.init_args.shots_per_class", "2", "--trainer.check_val_every_n_epoch", "1"]
        return args, "160 generated images (32 px), 1 epoch x 3 batches of 16, whole test split"
    if domain == "speech":
        args = [*SPEECH, *data_locations(name, workdir)]
        if zero_shot:
            args[1] = "0"
        return args, "real tiny.en; clear + noisy, 2 train / 1 val / 3 test utterances each, 5 s window"
    generic = [
        "--trainer.max_epochs",
        "1",
        *(f"--trainer.limit_{s}_batches=2" for s in ("train", "val", "test")),
    ]
    return generic, f"no small budget written for domain {domain!r}: generic 1 epoch x 2 batches"


# -- one config, in a child process ------------------------------------------------------------------------
class ParityCapture(L.Callback):
    """Keeps every per-sample tensor a test step returns, in test-loader order (added with the CLI's
    ``--trainer.callbacks+=__main__.ParityCapture``: this script is ``__main__`` in the child process)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        if isinstance(outputs, torch.Tensor):
            outputs = {"output": outputs}
        if isinstance(outputs, dict):
            kept = {k: v.detach().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.ndim}
            self.batches.append(kept)


def _concatenate(batches: Sequence[dict[str, Any]], prefix: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    keys = sorted({key for batch in batches for key in batch})
    for key in keys:
        parts = [batch[key] for batch in batches if key in batch]
        arrays[f"{prefix}{key}"] = torch.cat([p.reshape(len(p), *p.shape[1:]) for p in parts]).numpy()
    return arrays


def _predict_outputs(predictions: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """``trainer.predict``'s per-batch outputs as arrays (tensors, dicts of tensors) or transcripts."""
    if predictions and all(isinstance(p, list) and all(isinstance(t, str) for t in p) for p in predictions):
        return {}, [text for batch in predictions for text in batch]
    batches = [{"": p} if isinstance(p, torch.Tensor) else p for p in predictions if p is not None]
    batches = [{k: v.detach().cpu() for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches]
    return {key.removesuffix("/"): array for key, array in _concatenate(batches, "predict/").items()}, None


def digest(array: np.ndarray) -> str:
    """sha256 of an array's raw bytes (C order), with its dtype and shape so equal bytes mean equal arrays."""
    header = f"{array.dtype.str}{tuple(array.shape)}".encode()
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def run_one(name: str, workdir: Path, npz: Path, seed: int | None, full_budget: bool) -> dict[str, Any]:
    """Run config ``name`` (at its small budget unless ``full_budget``; with its own seed unless ``seed``) in
    this process; save its outputs to ``npz``."""
    torch.set_num_threads(1)
    import verticals.core
    from verticals.core.cli import run_cli

    overrides, note = small_budget(name, workdir)
    if full_budget:
        overrides, note = data_locations(name, workdir), "the packaged budget"
    runs = workdir / "runs" / run_key(name, seed).replace("/", "__")
    args = ["run", "--config", name, *QUIET, "--trainer.default_root_dir", str(runs), *overrides]
    args += [] if seed is None else ["--seed_everything", str(seed)]
    started = time.perf_counter()
    cli = run_cli([*args, "--trainer.callbacks+=__main__.ParityCapture"])
    run_seconds = time.perf_counter() - started
    trainer = cli.trainer
    captured = next(c for c in trainer.callbacks if type(c).__name__ == "ParityCapture")
    metrics = {
        key: float(value)
        for key, value in sorted(trainer.callback_metrics.items())
        if key.startswith("test_") and getattr(value, "numel", lambda: 1)() == 1
    }
    arrays = _concatenate(captured.batches, "test_step/")
    started = time.perf_counter()
    # Unmerged: the parity is bit-for-bit against the recorded pre-redesign outputs, which predicted unmerged
    # (merging, predict's default now, changes outputs at the 1e-7 level).
    # Code from before merged prediction has no `merge_adapter` (and predicts unmerged).
    unmerged = (
        {"merge_adapter": False} if "merge_adapter" in inspect.signature(trainer.predict).parameters else {}
    )
    predictions = trainer.predict(cli.model, dataloaders=cli.datamodule.test_dataloader(), **unmerged)
    predict_seconds = time.perf_counter() - started
    predicted, transcripts = _predict_outputs(predictions or [])
    arrays.update(predicted)
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **arrays)
    outputs = {
        key: {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": digest(array)}
        for key, array in sorted(arrays.items())
    }
    if transcripts is not None:
        blob = json.dumps(transcripts, ensure_ascii=False).encode()
        outputs["predict/transcripts"] = {
            "values": transcripts,
            "shape": [len(transcripts)],
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
    return {
        "status": "ok",
        "config": name,
        "seed": seed,
        "note": note,
        "argv": ["verticals", *args],
        "metrics": metrics,
        "outputs": outputs,
        "npz": str(npz),
        "global_step": int(trainer.global_step),
        "run_seconds": round(run_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "code": str(Path(verticals.core.__file__).resolve().parent),
    }


def _child_main(args: argparse.Namespace) -> None:
    outcome = run_one(args.child, args.workdir, args.npz, args.seed, args.full_budget)
    args.result.write_text(json.dumps(outcome, indent=1) + "\n")


# -- the parent: every config, one process each ------------------------------------------------------------
def git_state(path: Path) -> dict[str, str]:
    """Commit and dirty flag of the checkout that holds ``path`` (the code under test)."""
    state = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        run = {"cwd": path, "capture_output": True, "text": True, "check": True}
        state["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        state["dirty"] = "yes" if dirty else "no"
    return state


def environment() -> dict[str, Any]:
    """Where and with what the configs ran: the code under test, versions and the machine."""
    import verticals.core
    from verticals.core.cli import packaged_configs

    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    code = Path(verticals.core.__file__).resolve().parent
    return {
        "code": str(code),
        "git": git_state(code),
        "configs": list(packaged_configs()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": 1,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_all(
    names: Sequence[str],
    settings: dict[str, Any],
    npz_dir: Path,
    timeout: float,
    keep: Path | None,
    on_result: Callable[[dict[str, Any]], Any] = lambda results: None,
) -> dict[str, Any]:
    """Run each config (and seed) in a fresh process, one after another, calling ``on_result`` with the
    results so far after each; a failure is recorded with its error, and the others still run."""
    workdir = Path(tempfile.mkdtemp(prefix="core_parity_")) if keep is None else keep
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
        TRANSFORMERS_OFFLINE=env.get("TRANSFORMERS_OFFLINE", "1"),
        VERTICALS_CACHE=str(
            workdir / "cache"
        ),  # converted models and generated audio: fresh, outside the repo
        PYTHONHASHSEED="0",
    )
    results: dict[str, Any] = {}
    try:
        for name, seed in [(name, seed) for name in names for seed in settings["seeds"] or [None]]:
            key = run_key(name, seed)
            npz = npz_dir / f"{key.replace('/', '__').replace('@seed=', '__seed')}.npz"
            result = workdir / "results" / f"{npz.stem}.json"
            result.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, __file__, "--child", name, "--workdir", str(workdir)]
            command += ["--npz", str(npz), "--result", str(result)]
            command += [] if seed is None else ["--seed", str(seed)]
            command += ["--full-budget"] if settings["full_budget"] else []
            started = time.perf_counter()
            print(f"[core_parity] {key} ...", flush=True)
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
                failure = None if done.returncode == 0 and result.exists() else (done.stderr or done.stdout)
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout:.0f} s"
            seconds = round(time.perf_counter() - started, 2)
            if failure is None:
                record = json.loads(result.read_text())
            else:
                note = "the packaged budget" if settings["full_budget"] else small_budget(name, workdir)[1]
                record = {
                    "status": "failed",
                    "config": name,
                    "seed": seed,
                    "error": failure[-4000:],
                    "note": note,
                }
            record["wall_seconds"] = seconds
            results[key] = record
            on_result(results)
            print(f"[core_parity] {key}: {record['status']} in {seconds:.1f} s", flush=True)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def seed_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per config run over several seeds: each ``test_*`` metric's per-seed values, mean and std (ddof 1)."""
    summary: dict[str, Any] = {}
    for entry in results.values():
        if entry.get("seed") is None or entry["status"] != "ok":
            continue
        config = summary.setdefault(entry["config"], {"seeds": [], "metrics": {}})
        config["seeds"].append(entry["seed"])
        for metric, value in entry["metrics"].items():
            config["metrics"].setdefault(metric, {"values": []})["values"].append(value)
    for config in summary.values():
        for stats in config["metrics"].values():
            values = np.asarray(stats["values"], dtype=np.float64)
            stats["mean"] = float(values.mean())
            stats["std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return summary


def record(
    path: Path,
    names: Sequence[str],
    settings: dict[str, Any],
    timeout: float,
    keep: Path | None,
    command: str,
) -> dict[str, Any]:
    """Run the configs and write ``path`` (JSON) and the outputs beside it under ``<stem>/``."""
    npz_dir = path.parent / path.stem
    env = environment()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(results: dict[str, Any], complete: bool = False) -> dict[str, Any]:
        for entry in results.values():
            if "npz" in entry:
                entry["npz"] = os.path.relpath(Path(path.parent, entry["npz"]), path.parent)
        report = {"command": command, "complete": complete, "environment": env, "settings": settings}
        report["results"] = results
        if settings["seeds"]:
            report["summary"] = seed_summary(results)
        path.write_text(
            json.dumps(report, indent=1) + "\n"
        )  # after every run: a long record can be read early
        return report

    return write(run_all(names, settings, npz_dir, timeout, keep, write), complete=True)


# -- comparison --------------------------------------------------------------------------------------------
def _load_arrays(entry: dict[str, Any], base: Path) -> dict[str, np.ndarray]:
    if "npz" not in entry:
        return {}
    path = Path(entry["npz"])
    path = path if path.is_absolute() else base / path
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def compare_entry(before: dict[str, Any], after: dict[str, Any], before_base: Path, after_base: Path) -> dict:
    """Metric equality, largest metric and output differences and bit-identity of one config's two runs."""
    row: dict[str, Any] = {}
    old, new = before.get("metrics", {}), after.get("metrics", {})
    common = sorted(set(old) & set(new))
    row["metrics_only_before"] = sorted(set(old) - set(new))
    row["metrics_only_after"] = sorted(set(new) - set(old))
    row["metric_deltas"] = {key: new[key] - old[key] for key in common}
    same = [
        old[k] == new[k] or (np.isnan(old[k]) and np.isnan(new[k])) for k in common
    ]  # NaN: undefined in both
    row["metrics_equal"] = bool(common) and all(same)
    finite = [abs(d) for d in row["metric_deltas"].values() if np.isfinite(d)]
    row["max_metric_delta"] = max(finite, default=0.0)
    old_out, new_out = before.get("outputs", {}), after.get("outputs", {})
    keys = sorted(set(old_out) & set(new_out))
    row["outputs_only_before"] = sorted(set(old_out) - set(new_out))
    row["outputs_only_after"] = sorted(set(new_out) - set(old_out))
    row["outputs_identical"] = bool(keys) and all(old_out[k]["sha256"] == new_out[k]["sha256"] for k in keys)
    old_arrays, new_arrays = _load_arrays(before, before_base), _load_arrays(after, after_base)
    deltas = {}
    for key in keys:
        if key in old_arrays and key in new_arrays and old_arrays[key].shape == new_arrays[key].shape:
            a, b = old_arrays[key].astype(np.float64), new_arrays[key].astype(np.float64)
            deltas[key] = float(np.max(np.abs(a - b))) if a.size else 0.0
        elif "values" in old_out[key] and "values" in new_out[key]:
            pairs = zip(old_out[key]["values"], new_out[key]["values"])
            deltas[key] = float(
                sum(x != y for x, y in pairs) + abs(len(old_out[key]["values"]) - len(new_out[key]["values"]))
            )
        else:
            deltas[key] = float("nan")
    row["output_deltas"] = deltas
    row["max_output_delta"] = max((d for k, d in deltas.items() if "transcripts" not in k), default=0.0)
    return row


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def markdown(command: str, before: dict[str, Any], after: dict[str, Any], rows: dict[str, dict]) -> str:
    """The comparison report: the command first, then one row per config, then every metric's two values."""
    b_env, a_env = before["environment"], after["environment"]
    lines = [
        "# Core parity: packaged configs before and after",
        "",
        f"- command: `{command}`",
        f"- before: `{before['command']}` ({b_env['date']}; code {b_env['code']}, "
        f"commit {b_env['git'].get('commit', '?')[:7]}, dirty {b_env['git'].get('dirty', '?')})",
        f"- after: {a_env['date']}; code {a_env['code']}, commit {a_env['git'].get('commit', '?')[:7]}, "
        f"dirty {a_env['git'].get('dirty', '?')}",
        f"- machine: {a_env['platform']}, {a_env['cpu_count']} CPUs, torch {a_env['torch']} "
        "(1 thread, CPU); each config in its own process, seed from the config",
        "- metrics equal: every `test_*` metric present in both runs has the same float value; outputs: "
        "what each test step returns (`test_step/*`) and `trainer.predict` on the test dataloader "
        "(`predict*`), compared by the sha256 of their bytes; max |Δ| over all shared output arrays "
        "(transcripts: the number that differ).",
        "",
        "| config | status | metrics equal | max metric abs Δ | outputs bit-identical | max output abs Δ | "
        "transcripts differing | metric keys only before / after | output keys only before / after | "
        "before s | after s | budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*before["results"], *after["results"]]))
    for name in names:
        old, new = before["results"].get(name), after["results"].get(name)
        if old is None or new is None:
            packaged = (old or {}).get("config", name) in a_env["configs"]
            which = "new config: no before record" if old is None else "config removed"
            which = "not run (not in --configs)" if old is not None and packaged else which
            lines.append(f"| {name} | {which} |  |  |  |  |  |  |  |  |  |  |")
            continue
        status = (
            "ok"
            if old["status"] == new["status"] == "ok"
            else f"before {old['status']}, after {new['status']}"
        )
        seconds = f"| {old.get('wall_seconds', '')} | {new.get('wall_seconds', '')} | {new.get('note', '')} |"
        if status != "ok":
            lines.append(f"| {name} | {status} |  |  |  |  |  |  |  {seconds}")
            continue
        row = rows[name]
        transcripts = row["output_deltas"].get("predict/transcripts")
        only_metrics = f"{len(row['metrics_only_before'])} / {len(row['metrics_only_after'])}"
        only_outputs = (
            f"{', '.join(row['outputs_only_before']) or '-'} / {', '.join(row['outputs_only_after']) or '-'}"
        )
        lines.append(
            f"| {name} | ok | {'yes' if row['metrics_equal'] else 'NO'} | "
            f"{_number(row['max_metric_delta'])} | "
            f"{'yes' if row['outputs_identical'] else 'NO'} | {_number(row['max_output_delta'])} | "
            f"{'-' if transcripts is None else int(transcripts)} | {only_metrics} | {only_outputs} {seconds}"
        )
    failures = [
        (name, side, entry)
        for name in names
        for side, entry in (("before", before["results"].get(name)), ("after", after["results"].get(name)))
        if entry is not None and entry.get("status") != "ok"
    ]
    if failures:
        lines += ["", "## Failures", ""]
        for name, side, entry in failures:
            last = entry.get("error", "").strip().splitlines()[-1:] or ["?"]
            lines.append(f"- {name} ({side}): `{last[0][:300]}`")
    summaries = before.get("summary", {}), after.get("summary", {})
    if any(summaries):
        lines += [
            "",
            "## Over seeds (mean ± std, ddof 1)",
            "",
            "| config | metric | seeds | before | after |",
        ]
        lines.append("|---|---|---|---|---|")
        for config in dict.fromkeys([*summaries[0], *summaries[1]]):
            old, new = (summary.get(config, {"seeds": [], "metrics": {}}) for summary in summaries)
            seeds = f"{old['seeds']} / {new['seeds']}"
            for metric in sorted(set(old["metrics"]) | set(new["metrics"])):
                cells = [
                    f"{stats['mean']:.4f} ± {stats['std']:.4f}" if stats else ""
                    for stats in (old["metrics"].get(metric), new["metrics"].get(metric))
                ]
                lines.append(f"| {config} | `{metric}` | {seeds} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Test metrics", "", "| config | metric | before | after | Δ |", "|---|---|---|---|---|"]
    for name in rows:
        old, new = before["results"][name]["metrics"], after["results"][name]["metrics"]
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            delta = "" if a is None or b is None else _number(b - a)
            cells = ["" if value is None else repr(value) for value in (a, b)]
            lines.append(f"| {name} | `{key}` | {cells[0]} | {cells[1]} | {delta} |")
    return "\n".join(lines) + "\n"


def parity_failures(before: dict[str, Any], after: dict[str, Any], rows: dict[str, dict]) -> list[str]:
    """What breaks parity, one line per config (empty when there is none): metrics that differ, outputs that
    are not bit-identical, or a run that was ok in ``before`` and failed in ``after``. Configs new in
    ``after`` and runs that had already failed before have nothing to be compared with and are not counted."""
    failures = []
    for key, entry in after["results"].items():
        old = before["results"].get(key)
        if old is None or old["status"] != "ok":
            continue
        if entry["status"] != "ok":
            failures.append(f"{key}: ok before, {entry['status']} after")
            continue
        row = rows[key]
        if not row["metrics_equal"]:
            failures.append(f"{key}: test metrics differ (max |Δ| {_number(row['max_metric_delta'])})")
        if not row["outputs_identical"]:
            failures.append(
                f"{key}: test outputs not bit-identical (max |Δ| {_number(row['max_output_delta'])})"
            )
    return failures


def compare(
    before_path: Path,
    output: Path,
    names: Sequence[str] | None,
    timeout: float,
    keep: Path | None,
    command: str,
) -> dict:
    """Run the configs with the installed code and write the comparison with ``before_path`` to ``output``."""
    before = json.loads(before_path.read_text())
    settings = before.get("settings") or {"seeds": None, "full_budget": False}
    after_json = output.with_suffix(".json")
    recorded = [entry.get("config", key) for key, entry in before["results"].items()]
    everything = [*recorded, *([] if settings["seeds"] else environment()["configs"])]
    configs = list(names) if names else list(dict.fromkeys(everything))
    after = record(after_json, configs, settings, timeout, keep, command)
    rows = {
        name: compare_entry(before["results"][name], entry, before_path.parent, after_json.parent)
        for name, entry in after["results"].items()
        if name in before["results"] and entry["status"] == before["results"][name]["status"] == "ok"
    }
    output.write_text(markdown(command, before, after, rows))
    chart_report(output, core_parity_from_records(before, after), kind="core_parity")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--record", type=Path, metavar="FILE.json", help="run the configs and write the results"
    )
    mode.add_argument(
        "--compare", type=Path, metavar="BEFORE.json", help="run again and compare with a record"
    )
    mode.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="run each config once per seed (--seed_everything S)"
    )
    parser.add_argument(
        "--full-budget", action="store_true", help="the packaged budget instead of the small one"
    )
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/core_parity.md")
    parser.add_argument("--configs", nargs="+", help="only these packaged config names (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one config may take")
    parser.add_argument(
        "--keep-workdir", type=Path, help="keep runs, data and caches here (default: a temp dir)"
    )
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--npz", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = parser.parse_args(argv)
    if args.child:
        _child_main(args)
        return 0
    if args.compare and (args.seeds or args.full_budget):
        parser.error("--compare repeats the record's own seeds and budget; drop --seeds / --full-budget.")
    command = shlex.join(["python", os.path.relpath(__file__, Path.cwd()), *argv])
    if args.record:
        from verticals.core.cli import packaged_configs

        names = args.configs or list(packaged_configs())
        settings = {"seeds": args.seeds, "full_budget": args.full_budget}
        report = record(args.record, names, settings, args.timeout, args.keep_workdir, command)
        return int(any(entry["status"] != "ok" for entry in report["results"].values()))
    rows = compare(args.compare, args.output, args.configs, args.timeout, args.keep_workdir, command)
    before = json.loads(args.compare.read_text())
    after = json.loads(args.output.with_suffix(".json").read_text())
    failures = parity_failures(before, after, rows)
    for failure in failures:
        print(f"[core_parity] parity broken: {failure}", file=sys.stderr)
    return int(bool(failures))


if __name__ == "__main__":
    sys.exit(main())
