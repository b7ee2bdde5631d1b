"""Medical fairness benchmark: the planted skin-tone AUROC gap, fairness-aware LoRA, per-group calibration.

What it measures (see benchmarks/README.md), on the generated dermatology set
(``GeneratedDermatologyDataModule``: planted skin-tone acquisition shift and prevalence; ``sex`` has no
effect and is the negative control):

(a) the AUROC gap between skin-tone groups of LoRA on the real EfficientNet-Lite0 ImageNet weights
    (``medical/efficientnet_lora``), as ``auroc_best_minus_worst`` of :func:`fairness_report` with its
    bootstrap CI, and the same statistic for ``sex``;
(b) fairness-aware LoRA (``medical/efficientnet_fair_lora``: CLUB bound of I(logits; skin tone | label)
    with its own q optimiser and a λ warm-up, one run per ``--fair-weights`` value; ``--fair-penalties
    adversarial`` adds the gradient-reversal estimator on the same logits) and group-DRO (the same
    config with the penalty off and ``group_dro: true``) vs LoRA: the reduction of the skin-tone gap and
    the change of overall AUROC, each with a paired bootstrap CI;
(c) temperature scaling fitted on the validation logits, overall or one temperature per skin-tone group
    (shrunk toward the overall one; also unshrunk, and with a per-group logit offset), vs none: test ECE
    per group and the worst-group ECE with CIs;
(d) the same network from scratch (``medical/efficientnet_scratch``) vs LoRA: test AUROC / accuracy;
plus the zero-shot tiny random CLIP (``medical/biomedclip_zero_shot``): chance level, a pipeline check only.

Every run is ``verticals run <config>`` through :func:`verticals.core.cli.run_cli` (fit, then test the
checkpoint the config's monitor selects), with only the data size, image size, epochs and seed overridden.
The selected model's validation and test logits are then read back and analysed here.

Usage (from the repository root)::

    python benchmarks/medical_fairness.py                                   # configs' scale (CPU: ~30 min)
    python benchmarks/medical_fairness.py --methods lora fair_lora --fair-weights 1 3 --epochs 8
    python benchmarks/medical_fairness.py --num-images 96 --image-size 32 --epochs 1 --bootstrap 50  # smoke

Writes ``benchmarks/results/medical_fairness.md`` (or ``--output``) and the raw numbers to the ``.json``
beside it, after every run (an interrupted benchmark leaves the runs it finished).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, machine_line, quiet_run, runs_root, write_reports
from charts import chart_report

from verticals.core.callbacks import Timing
from verticals.core.cli import run_cli
from verticals.core.metrics import (
    TemperatureScaler,
    auroc,
    calibrated_ece_floor,
    fairness_report,
)
from verticals.core.metrics.calibration import GROUP_PRIOR_PRECISION
from verticals.core.metrics.groups import intersect
from verticals.core.seeds import paired_bootstrap
from verticals.domains.medical.synthetic import planted_overrides

METHODS = ("lora", "fair_lora", "group_dro", "scratch", "zero_shot")
CONFIGS = {
    "lora": "medical/efficientnet_lora",
    "fair_lora": "medical/efficientnet_fair_lora",
    "group_dro": "medical/efficientnet_fair_lora",
    "scratch": "medical/efficientnet_scratch",
    "zero_shot": "medical/biomedclip_zero_shot",
}
SENSITIVE = "skin_tone"
CONTROL = "sex"
ATTRIBUTES = (SENSITIVE, CONTROL)
SCALINGS = ("none", "global", "per_group", "per_group_mle", "per_group_bias")
SCRIPT = "benchmarks/medical_fairness.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "medical_fairness.md"
TARGET_GAP_REDUCTION = 0.5
TARGET_AUROC_DROP = 0.02
TARGET_ECE_REDUCTION = 0.3

log = logging.getLogger("benchmarks.medical_fairness")

_NOISY_WARNINGS = (
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*will override existing callbacks.*",
    ".*Unsupported layer type.*",
    ".*No validation patients.*",
)


# -- running one packaged config ---------------------------------------------------------------------------
def variants(
    methods: Sequence[str],
    fair_weights: Sequence[float],
    dro_step_sizes: Sequence[float | None] = (None,),
    fair_penalties: Sequence[str] = ("club",),
) -> list[tuple[str, str, list[str]]]:
    """``(label, method, method-specific CLI overrides)`` of every run, in order; LoRA first.

    ``dro_step_sizes`` of ``(None,)`` is one group-DRO run with the config's step size, labelled ``group_dro``.
    ``fair_penalties``: the MI estimators of the fair_lora runs, each with every weight; the config's CLUB runs
    are labelled ``fair_lora λ=w``, the adversarial ones ``fair_lora adversarial λ=w``.
    """
    runs: list[tuple[str, str, list[str]]] = []
    for method in methods:
        if method == "fair_lora":
            for penalty in fair_penalties:
                name = "fair_lora" if penalty == "club" else f"fair_lora {penalty}"
                for weight in fair_weights:
                    overrides = ["--model.init_args.fairness_weight", f"{weight:g}"]
                    if penalty != "club":
                        overrides += ["--model.init_args.fairness_penalty", penalty]
                    runs.append((f"{name} λ={weight:g}", method, overrides))
        elif method == "group_dro":
            overrides = [
                "--model.init_args.fairness_penalty", "none",
                "--model.init_args.group_dro", "true",
                "--model.init_args.dro_groups", "sensitive_label",
            ]  # fmt: skip
            for step in dro_step_sizes:
                if step is None:
                    runs.append(("group_dro", method, overrides))
                else:
                    step_override = ["--model.init_args.dro_step_size", f"{step:g}"]
                    runs.append((f"group_dro η={step:g}", method, overrides + step_override))
        else:
            runs.append((method, method, []))
    return runs


def run_arguments(method: str, args: argparse.Namespace, root: Path) -> list[str]:
    """``verticals run`` arguments: the config, the benchmark's data scale, epochs and seed, a run directory."""
    data = [
        "--data.init_args.num_images", str(args.num_images),
        "--data.init_args.generated_size", str(args.generated_size or args.image_size),
        "--data.init_args.generation_seed", str(args.generation_seed),
        "--data.init_args.test_fraction", f"{args.test_fraction:g}",
        "--data.init_args.val_fraction", f"{args.val_fraction:g}",
    ]  # fmt: skip
    if args.data_root is not None:
        data += ["--data.init_args.root", str(args.data_root)]
    if args.planted:
        data += ["--data.init_args.planted", json.dumps(args.planted, sort_keys=True)]
    if method != "zero_shot":  # the CLIP reads its own input size (the config's image_size)
        data += ["--data.init_args.image_size", str(args.image_size)]
        if args.epochs is not None:
            data += ["--trainer.max_epochs", str(args.epochs)]
    data += ["--model.init_args.report_bootstrap", "0"]  # analysed here, with --bootstrap resamples
    return [
        "run",
        CONFIGS[method],
        "--seed_everything", str(args.seed),
        *data,
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def shown_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` without the display-only pairs (progress bar, model summary) and the temporary run directory."""
    hidden = {"--trainer.enable_progress_bar", "--trainer.enable_model_summary", "--trainer.default_root_dir"}
    shown: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument in hidden:
            skip = True
        else:
            shown.append(argument)
    return shown


@torch.no_grad()
def collect(task: torch.nn.Module, loader: Any, attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """Logits, labels and the group codes of ``attributes`` of every item of ``loader`` (eval mode)."""
    was_training = task.training
    task.eval()
    logits, target, groups = [], [], []
    for batch in loader:
        logits.append(task(batch["x"]).float())
        target.append(batch["y"])
        groups.append(batch["group"].reshape(len(batch["y"]), -1))
    task.train(was_training)
    codes = torch.cat(groups).numpy()
    return {
        "logits": torch.cat(logits).numpy().astype(np.float64),
        "target": torch.cat(target).numpy(),
        **{attribute: codes[:, index] for index, attribute in enumerate(attributes)},
    }


def run_directory(root: Path, label: str) -> Path:
    """Where run ``label`` keeps its checkpoints, log and ``outputs.safetensors``."""
    return root / label.replace(" ", "_").replace("=", "").replace("λ", "w").replace("η", "eta")


def load_outputs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """What :func:`save_outputs` wrote: ``{split: {name: array}}``."""
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"No saved outputs at {path}; was the benchmark run with this --runs-dir?")
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(path)).items():
        split, name = key.split(".", 1)
        outputs.setdefault(split, {})[name] = value
    return outputs


def save_outputs(outputs: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """The selected model's val/test logits, labels and group codes (``<split>.<name>``), for re-analysis."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{split}.{name}": np.ascontiguousarray(v)
            for split, values in outputs.items()
            for name, v in values.items()
        },
        str(path),
    )


def train_and_collect(
    label: str, method: str, extra: Sequence[str], args: argparse.Namespace, root: Path
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """One ``verticals run``; returns its record, the selected model's val/test outputs, the group names."""
    run_root = run_directory(root, label)
    argv = run_arguments(method, args, run_root) + list(extra)
    start = time.perf_counter()
    with quiet_run(None if args.verbose else run_root / "stdout.log", _NOISY_WARNINGS):
        cli = run_cli(argv)
    trainer, task, data = cli.trainer, cli.model, cli.datamodule
    wall = time.perf_counter() - start
    attributes = list(data.group_attributes)
    missing = [a for a in ATTRIBUTES if a not in attributes]
    if missing:
        raise RuntimeError(f"The datamodule has no attribute(s) {missing}; it has {attributes}.")
    outputs = {
        split: collect(task, loader, attributes)
        for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader()))
    }
    save_outputs(outputs, run_root / "outputs.safetensors")
    summary = task.parameter_summary()
    timing = next((c for c in trainer.callbacks if isinstance(c, Timing)), None)
    checkpoint = trainer.checkpoint_callback
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")}
    record = {
        "label": label,
        "method": method,
        "config": CONFIGS[method],
        "overrides": list(extra),
        "command": "verticals " + shlex.join(shown_arguments(argv)),
        "epochs": int(trainer.max_epochs),
        "epochs_run": int(trainer.current_epoch),
        "monitor": getattr(checkpoint, "monitor", None),
        "best_checkpoint": Path(str(getattr(checkpoint, "best_model_path", "") or "")).name or None,
        "trainable_parameters": summary.trainable,
        "backbone_parameters": summary.backbone,
        "total_parameters": summary.total,
        "trainable_percent": summary.trainable_percent,
        "wall_seconds": wall,
        "fit_seconds": timing.fit_seconds if timing is not None else None,
        "lightning_test_metrics": metrics,
        "split_sizes": {split: int(len(values["target"])) for split, values in outputs.items()},
    }
    names = {a: list(n) for a, n in data.group_names.items()}
    return record, outputs, names


# -- analysis ----------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def positive_scores(logits: np.ndarray) -> np.ndarray:
    """P(class 1) from ``[N, 2]`` logits (class 1 is ``malignant``: labels are encoded in sorted order)."""
    return softmax(logits)[:, 1]


def ci(entry: dict[str, float] | None) -> dict[str, float]:
    """``{"value", "low", "high"}`` as floats; NaN where the statistic is undefined (a group lacks a class)."""
    return {key: float(entry[key]) if entry else math.nan for key in ("value", "low", "high")}


def analyse(
    outputs: dict[str, np.ndarray], names: dict[str, list[str]], n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Overall and per-group AUROC / accuracy / ECE with CIs, and each attribute's paired AUROC gap."""
    groups = {a: np.asarray(names[a], dtype=str)[outputs[a]] for a in ATTRIBUTES}
    report = fairness_report(
        positive_scores(outputs["logits"]), outputs["target"], groups, n_bootstrap=n_bootstrap,
        seed=seed, intersectional=False, group_names={a: names[a] for a in ATTRIBUTES},
    )  # fmt: skip
    result: dict[str, Any] = {
        "overall": {k: ci(report.overall[k]) for k in ("auroc", "accuracy", "ece", "brier")},
        "attributes": {},
    }
    for attribute in ATTRIBUTES:
        summary = report.summary[attribute]
        rows = report.table.xs(attribute, level="grouping")
        result["attributes"][attribute] = {
            "auroc_best_minus_worst": ci(summary.get("auroc_best_minus_worst")),
            "auroc_gap": ci(summary["auroc_gap"]),
            "worst_group_auroc": ci(summary["worst_group_auroc"]),
            "worst_group_ece": ci(summary["worst_group_ece"]),
            "extremes": report.extremes.get(attribute, {}).get("auroc"),
            "groups": {
                str(group): {
                    "count": int(row["count"]),
                    "positives": int(row["positives"]),
                    **{
                        metric: {
                            "value": float(row[metric]),
                            "low": float(row[f"{metric}_low"]),
                            "high": float(row[f"{metric}_high"]),
                        }
                        for metric in ("auroc", "accuracy", "ece")
                    },
                }
                for group, row in rows.iterrows()
            },
        }
    return result


def group_aurocs(scores: np.ndarray, target: np.ndarray, codes: np.ndarray, count: int) -> list[float]:
    """AUROC of each group code ``0..count-1`` (NaN where a group lacks a class)."""
    return [auroc(scores[codes == g], target[codes == g]) for g in range(count)]


def validation_summary(val: dict[str, np.ndarray], names: dict[str, list[str]]) -> dict[str, float]:
    """Overall and worst-skin-tone-group AUROC and the gap on the validation split (point values): what a
    user may select a λ or η on without looking at the test set."""
    scores, target, codes = positive_scores(val["logits"]), val["target"], val[SENSITIVE]
    per_group = group_aurocs(scores, target, codes, len(names[SENSITIVE]))
    return {
        "auroc": float(auroc(scores, target)),
        "worst_group_auroc": float(np.nanmin(per_group)),
        "gap": float(np.nanmax(per_group) - np.nanmin(per_group)),
    }


def calibration(
    val: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    names: dict[str, list[str]],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Test ECE per skin-tone group without scaling, with one temperature, with one per group (fit on val).

    ``per_group`` shrinks each group's log T toward the overall one (``GROUP_PRIOR_PRECISION``);
    ``per_group_mle`` fits each group alone (prior precision 0), to show what the shrinkage buys;
    ``per_group_bias`` adds a shrunk per-group logit offset (``TemperatureScaler(group_bias=True)``), which
    corrects a group whose mean prediction is off, something no temperature can do.
    """
    val_logits, val_target = torch.from_numpy(val["logits"]), torch.from_numpy(val["target"])
    val_groups = torch.from_numpy(val[SENSITIVE])
    scaler = TemperatureScaler().fit(
        val_logits, val_target, val_groups, prior_precision=GROUP_PRIOR_PRECISION
    )
    unshrunk = TemperatureScaler().fit(val_logits, val_target, val_groups, prior_precision=0.0)
    offsets = TemperatureScaler(group_bias=True).fit(
        val_logits, val_target, val_groups, prior_precision=GROUP_PRIOR_PRECISION
    )
    logits, test_groups = torch.from_numpy(test["logits"]), torch.from_numpy(test[SENSITIVE])
    scaled = {
        "none": logits,
        "global": scaler.transform(logits),
        "per_group": scaler.transform(logits, test_groups),
        "per_group_mle": unshrunk.transform(logits, test_groups),
        "per_group_bias": offsets.transform(logits, test_groups),
    }
    tone = np.asarray(names[SENSITIVE], dtype=str)[test[SENSITIVE]]

    def per_tone(values: torch.Tensor) -> dict[str, float]:
        return dict(zip(names[SENSITIVE], values.tolist(), strict=False))

    result: dict[str, Any] = {
        "temperature": float(scaler.temperature),
        "prior_precision": GROUP_PRIOR_PRECISION,
        "group_temperatures": per_tone(scaler.group_temperatures),
        "group_temperatures_mle": per_tone(unshrunk.group_temperatures),
        "group_temperatures_bias": per_tone(offsets.group_temperatures),
        # Offset of the malignant-vs-benign logit difference per group (b_1 - b_0).
        "group_logit_offsets": per_tone(offsets.group_biases[:, 1] - offsets.group_biases[:, 0]),
    }
    for kind, values in scaled.items():
        report = fairness_report(
            positive_scores(values.numpy()), test["target"], {SENSITIVE: tone}, n_bootstrap=n_bootstrap,
            seed=seed, group_names={SENSITIVE: names[SENSITIVE]},
        )  # fmt: skip
        rows = report.table.xs(SENSITIVE, level="grouping")
        scores = positive_scores(values.numpy())
        groups = {
            str(group): {
                "value": float(row["ece"]),
                "low": float(row["ece_low"]),
                "high": float(row["ece_high"]),
                # What a perfectly calibrated model with these scores would show on this group's size.
                "floor": calibrated_ece_floor(scores[tone == str(group)], seed=seed),
            }
            for group, row in rows.iterrows()
        }
        worst = max(groups, key=lambda g: groups[g]["value"])
        result[kind] = {
            "ece": ci(report.overall["ece"]),
            "nll": ci(report.overall["nll"]),
            "worst_group_ece": ci(report.summary[SENSITIVE]["worst_group_ece"]),
            "worst_group_floor": groups[worst]["floor"],
            "groups": groups,
        }
    base = result["none"]["worst_group_ece"]["value"]
    for kind in SCALINGS[1:]:
        value = result[kind]["worst_group_ece"]["value"]
        result[kind]["worst_group_ece_reduction"] = 1.0 - value / base if base > 0 else math.nan
    return result


def signed_gap(scores: np.ndarray, target: np.ndarray, codes: np.ndarray, best: int, worst: int) -> float:
    """AUROC of group ``best`` minus AUROC of group ``worst`` (the direction found on the reference model)."""
    return auroc(scores[codes == best], target[codes == best]) - auroc(
        scores[codes == worst], target[codes == worst]
    )


def paired_comparison(
    reference: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    names: dict[str, list[str]],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """``other`` vs ``reference`` on the same test items: overall AUROC change and skin-tone gap change.

    The gap of both models is AUROC(best group) - AUROC(worst group) with best/worst fixed by the reference
    model on the whole test set, so it keeps its sign; resamples are drawn within skin tone x label cells and
    shared by both models (``verticals.core.seeds.paired_bootstrap``).
    """
    target, codes = reference["target"], reference[SENSITIVE]
    a, b = positive_scores(reference["logits"]), positive_scores(other["logits"])
    per_group = group_aurocs(a, target, codes, len(names[SENSITIVE]))
    best, worst = int(np.nanargmax(per_group)), int(np.nanargmin(per_group))

    def statistics(rows: dict[str, np.ndarray]) -> tuple[float, float]:
        y, c, s = rows["target"], rows["group"], rows["scores"]
        return auroc(s, y), signed_gap(s, y, c, best, worst)

    paired = paired_bootstrap(
        statistics,
        {"scores": a, "target": target, "group": codes},
        {"scores": b, "target": other["target"], "group": other[SENSITIVE]},
        n_bootstrap=n_bootstrap,
        seed=seed,
        strata=intersect({"g": codes, "y": target}),
        same=("target", "group"),
    )
    return {
        "best_group": names[SENSITIVE][best],
        "worst_group": names[SENSITIVE][worst],
        "reference_auroc": float(paired.reference[0]),
        "auroc": float(paired.other[0]),
        "auroc_change": paired.difference(0),
        "reference_gap": float(paired.reference[1]),
        "gap": float(paired.other[1]),
        "gap_change": paired.difference(1),
        "gap_reduction": paired.reduction(1),
    }


def analyse_run(
    record: dict[str, Any],
    run_outputs: dict[str, dict[str, np.ndarray]],
    lora_outputs: dict[str, dict[str, np.ndarray]] | None,
    n_bootstrap: int,
    seed: int,
) -> None:
    """Fill ``record``'s ``test``, ``calibration`` and ``vs_lora`` analyses from the run's val/test outputs."""
    names = record["group_names"]
    record["test"] = analyse(run_outputs["test"], names, n_bootstrap, seed)
    record["validation"] = validation_summary(run_outputs["val"], names)
    if record["method"] != "zero_shot":
        record["calibration"] = calibration(run_outputs["val"], run_outputs["test"], names, n_bootstrap, seed)
    if record["label"] != "lora" and lora_outputs is not None:
        record["vs_lora"] = paired_comparison(
            lora_outputs["test"], run_outputs["test"], names, n_bootstrap, seed
        )


def previous_report(args: argparse.Namespace) -> dict[str, Any] | None:
    """The JSON report at ``--output`` (what ``--reanalyse`` and ``--resume`` start from), or None."""
    path = args.output.with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def reanalyse(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Recompute every analysis of a finished report (``--output``'s JSON) from the outputs its runs saved
    under ``--runs-dir``, without training: for a changed analysis on the same models."""
    results = previous_report(args)
    if results is None:
        raise FileNotFoundError(
            f"--reanalyse needs the report to re-analyse; {args.output.with_suffix('.json')} does not exist."
        )
    settings = results["settings"]
    outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for record in results["runs"]:
        outputs[record["label"]] = load_outputs(
            run_directory(args.runs_dir, record["label"]) / "outputs.safetensors"
        )
        analyse_run(
            record, outputs[record["label"]], outputs.get("lora"), settings["bootstrap"], settings["seed"]
        )
    results["reanalysed"] = {
        "command": "python " + shlex.join([SCRIPT, *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return results


# Settings that change what a run trains on or how; a resumed report must share them.
RUN_SETTINGS = (
    "epochs", "num_images", "test_fraction", "val_fraction", "image_size", "generated_size", "generation_seed",
    "planted", "seed",
)  # fmt: skip
RUN_SETTING_DEFAULTS = {"planted": {}}  # settings added after some reports were written


def finished_runs(
    args: argparse.Namespace, settings: dict[str, Any], root: Path
) -> dict[str, tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]]:
    """``--resume``: the runs of ``--output``'s report whose outputs are saved under ``root``, by label.

    Raises ``ValueError`` if that report was made with other data, epochs or seed (its runs would not be
    comparable with new ones).
    """
    previous = previous_report(args)
    if previous is None:
        return {}
    theirs = {k: previous["settings"].get(k, RUN_SETTING_DEFAULTS.get(k)) for k in RUN_SETTINGS}
    differ = {k: (theirs[k], settings[k]) for k in RUN_SETTINGS if theirs[k] != settings[k]}
    if differ:
        raise ValueError(
            f"--resume: {args.output.with_suffix('.json')} was made with other settings {differ} (theirs, "
            "these); drop --resume or write to another --output."
        )
    reused = {}
    for record in previous["runs"]:
        saved = run_directory(root, record["label"]) / "outputs.safetensors"
        if saved.is_file():
            reused[record["label"]] = (record, load_outputs(saved))
    return reused


# -- the benchmark -----------------------------------------------------------------------------------------
def step_size(text: str) -> float | None:
    """``--dro-step-sizes`` value: a positive float, or ``config`` (None: the config's own η)."""
    if text == "config":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a group-DRO step size must be > 0 or 'config', got {text!r}")
    return value


def planted_text(planted: dict[str, float]) -> str:
    """``dark_fraction=0.5, ...`` in a stable order."""
    return ", ".join(f"{name}={value:g}" for name, value in sorted(planted.items()))


def planted_field(text: str) -> tuple[str, float]:
    """``--planted`` item: ``FIELD=VALUE`` with a numeric value."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE with a number, e.g. dark_fraction=0.5; got {text!r}"
        ) from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--fair-weights",
        nargs="+",
        type=float,
        default=[1.0],
        help="fairness_weight λ of each fair_lora run (default: the config's 1.0)",
    )
    parser.add_argument(
        "--fair-penalties",
        nargs="+",
        choices=("club", "adversarial"),
        default=["club"],
        help="MI estimator of the fair_lora runs, each run with every --fair-weights value (default: the "
        "config's CLUB; adversarial: a gradient-reversal classifier on the same logits, given the label)",
    )
    parser.add_argument(
        "--dro-step-sizes",
        nargs="+",
        type=step_size,
        default=None,
        help="dro_step_size η of each group_dro run; 'config' is the config's own η, labelled plain "
        "group_dro (default: that one run)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: each config's trainer.max_epochs")
    parser.add_argument("--num-images", type=int, default=4000, help="size of the generated set (all splits)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.5,
        help="per-patient test share of the generated set (large: the dark group's ECE needs hundreds of items)",
    )  # fmt: skip
    parser.add_argument(
        "--val-fraction", type=float, default=0.4,
        help="validation share of the remaining patients (fits the temperatures and selects checkpoints)",
    )  # fmt: skip
    parser.add_argument("--image-size", type=int, default=64, help="model input size (not zero_shot's CLIP)")
    parser.add_argument(
        "--generated-size", type=int, default=None, help="generated PNG size (default: image size)"
    )
    parser.add_argument("--generation-seed", type=int, default=0)
    parser.add_argument(
        "--planted", nargs="+", type=planted_field, default=[], metavar="FIELD=VALUE",
        help="change the generator's planted structure (DermatologySpec fields, e.g. dark_fraction=0.5)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every run")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of every CI")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="where the set is generated (default: cache)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="show Lightning's output")
    parser.add_argument(
        "--resume", action="store_true",
        help="reuse the runs of --output's report whose outputs are saved under --runs-dir; train only the rest",
    )  # fmt: skip
    parser.add_argument(
        "--reanalyse", action="store_true",
        help="no training: recompute the analyses of --output's report from the outputs saved under --runs-dir",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.planted = dict(args.planted)
    try:
        planted_overrides(args.planted)
    except ValueError as error:
        parser.error(str(error))
    for flag in ("reanalyse", "resume"):
        if getattr(args, flag) and args.runs_dir is None:
            parser.error(
                f"--{flag} reads the saved outputs of the runs: give the --runs-dir they were kept in."
            )
    if "lora" not in args.methods:
        parser.error("--methods must include lora: every comparison is against it.")
    args.methods = ["lora", *[m for m in dict.fromkeys(args.methods) if m != "lora"]]
    return args


def run_benchmark(
    args: argparse.Namespace,
    argv: Sequence[str],
    root: Path,
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Every run, its analysis and the comparisons against LoRA; ``progress`` gets the partial results."""
    results: dict[str, Any] = {
        "command": "python " + shlex.join([SCRIPT, *argv]),
        "argv": list(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(("torch", "torchvision", "timm", "lightning", "peft", "verticals")),
        "settings": {
            "methods": args.methods,
            "fair_weights": args.fair_weights,
            "fair_penalties": args.fair_penalties,
            "dro_step_sizes": args.dro_step_sizes,
            "epochs": args.epochs,
            "num_images": args.num_images,
            "test_fraction": args.test_fraction,
            "val_fraction": args.val_fraction,
            "image_size": args.image_size,
            "generated_size": args.generated_size or args.image_size,
            "generation_seed": args.generation_seed,
            "planted": args.planted,
            "seed": args.seed,
            "bootstrap": args.bootstrap,
        },  # fmt: skip
        "runs": [],
        "errors": [],
        "complete": False,
    }
    outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    finished = finished_runs(args, results["settings"], root) if args.resume else {}
    for label, method, extra in variants(
        args.methods, args.fair_weights, args.dro_step_sizes or (None,), args.fair_penalties
    ):
        try:
            if label in finished:
                record, run_outputs = finished[label]
                log.info("%s: reusing the finished run's saved outputs (--resume)", label)
            else:
                record, run_outputs, names = train_and_collect(label, method, extra, args, root)
                record["group_names"] = {a: names[a] for a in ATTRIBUTES}
            analyse_run(record, run_outputs, outputs.get("lora"), args.bootstrap, args.seed)
        except Exception as error:  # one failed run must not cost the others
            log.error("%s failed: %s", label, error)
            results["errors"].append(
                {
                    "run": label,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                }
            )
            continue
        outputs[label] = run_outputs
        results["runs"].append(record)
        test = record["test"]
        print(
            f"{label:16s} AUROC {test['overall']['auroc']['value']:.3f}, skin-tone gap "
            f"{test['attributes'][SENSITIVE]['auroc_best_minus_worst']['value']:+.3f}, "
            f"{record['trainable_percent']:.2f}% trainable, {record['wall_seconds']:.0f} s",
            flush=True,
        )
        if progress is not None:
            progress(results)
    results["complete"] = True
    return results


# -- environment and report --------------------------------------------------------------------------------
def fmt(entry: dict[str, float] | None, signed: bool = False) -> str:
    if not entry or entry.get("value") is None or math.isnan(entry["value"]):
        return "n/a"
    sign = "+" if signed else ""
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None or math.isnan(low):
        return f"{entry['value']:{sign}.3f}"
    return f"{entry['value']:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def validation(run: dict[str, Any]) -> str:
    entry = run.get("validation")
    return "n/a" if not entry else f"{entry['auroc']:.3f} / {entry['worst_group_auroc']:.3f}"


def floors(entry: dict[str, Any]) -> str:
    """``light / dark`` calibrated-ECE floors of one scaling's entry (``n/a`` in reports made before them)."""
    values = [entry["groups"].get(g, {}).get("floor") for g in ("light", "dark")]
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in values)


def excludes_zero(entry: dict[str, float]) -> str:
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None or math.isnan(low):
        return "n/a"
    return "yes" if low > 0 or high < 0 else "no"


def render_markdown(results: dict[str, Any]) -> str:
    env, settings = results["machine"], results["settings"]
    runs = {run["label"]: run for run in results["runs"]}
    lora = runs.get("lora")
    sizes = lora["split_sizes"] if lora else next(iter(runs.values()), {}).get("split_sizes", {})
    lines = [
        "# Medical fairness benchmark (generated dermatology set)",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- machine: {machine_line(env)}",
        f"- settings: {settings['num_images']} generated images of {settings['generated_size']} px, model input "
        f"{settings['image_size']} px (zero-shot CLIP: its config's size), epochs "
        f"{settings['epochs'] if settings['epochs'] is not None else 'each config'}, seed {settings['seed']} "
        f"(generation seed {settings['generation_seed']}), test share {settings.get('test_fraction', 0.3):g} of the "
        f"patients, validation share {settings.get('val_fraction', 0.2):g} of the rest, "
        f"{settings['bootstrap']} bootstrap resamples (95% percentile CIs, stratified by group and label)",
        *(
            [
                f"- planted structure changed from the generator's defaults: {planted_text(settings['planted'])}"
            ]
            if settings.get("planted")
            else []
        ),
        f"- splits (patient-level): {sizes}",
        f"- status: {'complete' if results['complete'] else 'PARTIAL (written after each finished run)'}",
        *(
            [
                f"- analyses recomputed from the runs' saved outputs (no training) on {results['reanalysed']['date']}: "
                f"`{results['reanalysed']['command']}`"
            ]
            if results.get("reanalysed")
            else []
        ),
        "",
        "Each run is `verticals run <config>` (fit, then test the checkpoint selected by the config's monitor); "
        "the table's numbers are re-measured here on the selected model's test logits. Gap = AUROC of the "
        "best minus the worst group on the whole test set, re-measured in each resample "
        "(`auroc_best_minus_worst` of `fairness_report`; can turn negative, so a CI above 0 means a real gap).",
        "",
        "## All runs",
        "",
        "| run | config | trainable % | test AUROC | accuracy | AUROC light | AUROC dark | skin-tone gap "
        "| sex gap | val AUROC / worst group | epochs | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        test = run["test"]
        skin = test["attributes"][SENSITIVE]
        lines.append(
            f"| {run['label']} | `{run['config']}` | {run['trainable_percent']:.2f} | "
            f"{fmt(test['overall']['auroc'])} | {fmt(test['overall']['accuracy'])} | "
            f"{fmt(skin['groups'].get('light', {}).get('auroc'))} | {fmt(skin['groups'].get('dark', {}).get('auroc'))} | "
            f"{fmt(skin['auroc_best_minus_worst'], True)} | "
            f"{fmt(test['attributes'][CONTROL]['auroc_best_minus_worst'], True)} | {validation(run)} | "
            f"{run['epochs']} | {run['wall_seconds']:.0f} |"
        )
    if lora:
        lines += ["", "## (a) The planted gap, found on LoRA (real EfficientNet-Lite0 weights)", ""]
        lines += [
            "| attribute | worst → best | gap (best − worst) | CI excludes 0 | per-group AUROC | per-group n (pos) |",
            "|---|---|---|---|---|---|",
        ]
        for attribute in ATTRIBUTES:
            entry = lora["test"]["attributes"][attribute]
            extremes = entry["extremes"] or {}
            per_group = "; ".join(f"{g} {fmt(v['auroc'])}" for g, v in entry["groups"].items())
            counts = "; ".join(f"{g} {v['count']} ({v['positives']})" for g, v in entry["groups"].items())
            lines.append(
                f"| {attribute}{' (negative control)' if attribute == CONTROL else ''} | "
                f"{extremes.get('worst')} → {extremes.get('best')} | {fmt(entry['auroc_best_minus_worst'], True)} | "
                f"{excludes_zero(entry['auroc_best_minus_worst'])} | {per_group} | {counts} |"
            )
        compared = [
            run for run in results["runs"] if run["method"] in ("fair_lora", "group_dro") and "vs_lora" in run
        ]
        if compared:
            lines += [
                "", "## (b) Fairness-aware LoRA vs LoRA (paired bootstrap on the same test items)", "",
                f"Targets: gap cut by ≥ {TARGET_GAP_REDUCTION:.0%}, overall AUROC drop ≤ {TARGET_AUROC_DROP * 100:.0f} "
                "points. Every variant that ran is listed.", "",
                "| run | overall AUROC | Δ AUROC vs LoRA | gap (LoRA's best − worst group) | gap change | "
                "gap reduction | targets met |",
                "|---|---|---|---|---|---|---|",
                f"| lora | {lora['test']['overall']['auroc']['value']:.3f} | — | "
                f"{compared[0]['vs_lora']['reference_gap']:+.3f} | — | — | — |",
            ]  # fmt: skip
            for run in compared:
                vs = run["vs_lora"]
                met = (
                    vs["gap_reduction"]["value"] >= TARGET_GAP_REDUCTION,
                    vs["auroc_change"]["value"] >= -TARGET_AUROC_DROP,
                )
                lines.append(
                    f"| {run['label']} | {vs['auroc']:.3f} | {fmt(vs['auroc_change'], True)} | {vs['gap']:+.3f} | "
                    f"{fmt(vs['gap_change'], True)} | {fmt(vs['gap_reduction'], True)} | gap {'yes' if met[0] else 'no'}, AUROC "
                    f"{'yes' if met[1] else 'no'} |"
                )
        lines += [
            "", "## (c) Temperature scaling (fit on validation logits, evaluated on test)", "",
            f"Target: worst skin-tone-group ECE ≥ {TARGET_ECE_REDUCTION:.0%} lower than uncalibrated. ECE: 15 "
            "equal-width bins of P(malignant) against the malignant frequency (torchmetrics' binary convention). "
            "Floor: the ECE a perfectly calibrated model with the same scores would show on the same group size "
            "(`calibrated_ece_floor`, labels drawn from the scores); ECE near its floor is sampling noise that no "
            "recalibration can remove. `per_group`: each group's log T shrunk toward "
            f"the overall one (Gaussian prior, precision {GROUP_PRIOR_PRECISION:g} in summed-NLL units; "
            "`TemperatureScaler.fit`'s default); `per_group_mle`: each group fitted alone (precision 0); "
            "`per_group_bias`: per-group T plus a logit offset b (malignant − benign shown), same prior — "
            "Platt-style, not temperature scaling, listed because a temperature cannot move a group's mean "
            "prediction. Every |log T| ≤ 3.", "",
            "| run | scaling | T (light / dark) | ECE overall | ECE light | ECE dark | floor light / dark | "
            "worst-group ECE | reduction vs none |",
            "|---|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for run in results["runs"]:
            calib = run.get("calibration")
            if not calib:
                continue
            temps, mle = calib["group_temperatures"], calib.get("group_temperatures_mle", {})
            with_bias, shift = calib.get("group_temperatures_bias", {}), calib.get("group_logit_offsets", {})
            for kind in SCALINGS:
                entry = calib.get(kind)
                if entry is None:
                    continue
                t = {
                    "none": "1",
                    "global": f"{calib['temperature']:.2f}",
                    "per_group": " / ".join(f"{temps[g]:.2f}" for g in ("light", "dark") if g in temps),
                    "per_group_mle": " / ".join(f"{mle[g]:.2f}" for g in ("light", "dark") if g in mle),
                    "per_group_bias": " / ".join(
                        f"{with_bias[g]:.2f} (b {shift[g]:+.2f})" for g in ("light", "dark") if g in with_bias
                    ),
                }[kind]
                reduction = entry.get("worst_group_ece_reduction")
                lines.append(
                    f"| {run['label']} | {kind} | {t} | {fmt(entry['ece'])} | {fmt(entry['groups'].get('light'))} | "
                    f"{fmt(entry['groups'].get('dark'))} | {floors(entry)} | {fmt(entry['worst_group_ece'])} | "
                    f"{'—' if reduction is None else f'{reduction:+.0%}'} |"
                )
        scratch = runs.get("scratch")
        if scratch and "vs_lora" in scratch:
            vs = scratch["vs_lora"]
            lines += [
                "",
                "## (d) LoRA on the real ImageNet weights vs the same network from scratch",
                "",
                "| run | trainable % | test AUROC | accuracy | wall s |",
                "|---|---|---|---|---|",
            ]
            for run in (lora, scratch):
                lines.append(
                    f"| {run['label']} | {run['trainable_percent']:.2f} | {fmt(run['test']['overall']['auroc'])} | "
                    f"{fmt(run['test']['overall']['accuracy'])} | {run['wall_seconds']:.0f} |"
                )
            lines += ["", f"Scratch − LoRA test AUROC (paired bootstrap): {fmt(vs['auroc_change'], True)}."]
        zero = runs.get("zero_shot")
        if zero:
            lines += [
                "",
                "## Zero-shot CLIP (pipeline check only)",
                "",
                f"`medical/biomedclip_zero_shot` with the offline default, a tiny *random* CLIP: test AUROC "
                f"{fmt(zero['test']['overall']['auroc'])}, accuracy {fmt(zero['test']['overall']['accuracy'])}. "
                "It has never seen an image; chance level is expected and says nothing about BiomedCLIP.",
            ]
    if results["errors"]:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {error['run']}: {error['error']}" for error in results["errors"]]
    lines += ["", "## Commands of the runs", ""]
    lines += [f"- {run['label']}: `{run['command']}`" for run in results["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the markdown and JSON reports, print the tables; returns the results."""
    argv = list(sys.argv[1:] if argv is None else argv)  # copied first: run_cli rewrites sys.argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reanalyse:
        results = reanalyse(args, argv)
    else:
        with runs_root(args.runs_dir, prefix="verticals-bench-medical-") as root:
            results = run_benchmark(
                args,
                argv,
                root,
                progress=lambda partial: write_reports(partial, args.output, render_markdown),
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
