"""The medical fairness benchmark over several seeds: each seed is a new generated set *and* new training runs.

One seed's figures move a lot: the dark-skin group is small, and two seeds of the same LoRA config have shown
skin-tone gaps of 0.118 and 0.100. This script runs ``benchmarks/medical_fairness.py`` once per seed
(``--seed s --generation-seed s``; every other argument after ``--`` is passed through), ``--jobs`` at a
time as separate processes, each writing ``results/medical_fairness/seed_<s>.md`` and ``.json``. A seed whose
JSON is complete and was made with the same arguments is not run again, so an interrupted sweep resumes.
It then writes the across-seed summary of the issue's targets: per seed and seed-averaged.

Seed-averaged means: the mean over seeds of each run's statistic; a reduction (gap, ECE) is computed from
the seed-averaged values (``1 - mean(method) / mean(LoRA)``), which is steadier than a mean of per-seed ratios
(both are shown).

Usage (from the repository root)::

    python benchmarks/medical_fairness_seeds.py --seeds 2 0 1 --jobs 3 -- --fair-weights 1 3 \
        --dro-step-sizes config 0.03 0.1 1           # the committed summary; 2-core CPU: ~70 min
    python benchmarks/medical_fairness_seeds.py --seeds 0 1 --jobs 1 -- --num-images 96 --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import medical_fairness as single  # the per-seed benchmark: its targets and names, so the two cannot disagree
from _common import machine, machine_line, write_reports
from charts import chart_report

from verticals.core.seeds import seed_statistics, sweep_seeds

SCRIPT = "benchmarks/medical_fairness_seeds.py"
BENCHMARK = Path(__file__).resolve().parent / "medical_fairness.py"

OWN_ARGUMENTS = ("--seed", "--generation-seed", "--output", "--runs-dir", "--resume", "--reanalyse")
# Arguments that do not change what a seed's report contains.
BOOKKEEPING = ("output", "runs_dir", "verbose", "resume", "reanalyse")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at the same time (one process each)")
    parser.add_argument(
        "--seed-dir",
        type=Path,
        default=Path("benchmarks/results/medical_fairness"),
        help="per-seed reports go here",
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/medical_fairness_seeds.md"))
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs/benchmarks/medical_fairness"),
        help="each seed's runs (and their saved outputs, which --resume reuses) go under <dir>/seed_<s>",
    )
    parser.add_argument(
        "--include",
        nargs="+",
        type=Path,
        default=[],
        help="other per-seed report directories whose finished seeds join the summary (not run; the summary "
        "keeps the runs every seed has)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}.")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}.")
    clash = [a for a in passthrough if a.split("=")[0] in OWN_ARGUMENTS]
    if clash:
        parser.error(f"{clash} are set per seed by this script; leave them out of the arguments after --.")
    args.passthrough = passthrough
    return args


def seed_output(args: argparse.Namespace, seed: int) -> Path:
    return args.seed_dir / f"seed_{seed}.md"


def seed_command(args: argparse.Namespace, seed: int) -> list[str]:
    """The per-seed benchmark's arguments (without the interpreter and script)."""
    return [
        "--seed", str(seed), "--generation-seed", str(seed), "--output", str(seed_output(args, seed)),
        "--runs-dir", str(args.runs_dir / f"seed_{seed}"), "--resume", *args.passthrough,
    ]  # fmt: skip


def finished(args: argparse.Namespace, seed: int) -> dict[str, Any] | None:
    """The seed's results if its JSON is complete, error-free and made with the same benchmark arguments."""
    path = seed_output(args, seed).with_suffix(".json")
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    wanted = single.parse_args(seed_command(args, seed))
    made = single.parse_args(results.get("argv", []))
    same = {k: v for k, v in vars(made).items() if k not in BOOKKEEPING} == {
        k: v for k, v in vars(wanted).items() if k not in BOOKKEEPING
    }
    return results if usable(results) and same else None


def usable(results: dict[str, Any]) -> bool:
    """A seed report that finished every run without an error."""
    return bool(results.get("complete")) and not results.get("errors")


def run_seed(args: argparse.Namespace, seed: int, threads: int) -> int:
    """One seed's benchmark as a child process (its output to ``<seed report>.log``); the exit code."""
    output = seed_output(args, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)))
    with open(output.with_suffix(".log"), "w") as log:
        return subprocess.call(
            [sys.executable, str(BENCHMARK), *seed_command(args, seed)],
            stdout=log, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip


# -- aggregation -------------------------------------------------------------------------------------------
def _value(entry: dict[str, float] | None) -> float:
    return math.nan if not entry or entry.get("value") is None else float(entry["value"])


def seed_summary(results: dict[str, Any]) -> dict[str, Any]:
    """One seed's headline numbers per run: AUROC, gaps, the paired comparison with LoRA, worst-group ECE."""
    runs: dict[str, Any] = {}
    for run in results["runs"]:
        test, skin = run["test"], run["test"]["attributes"][single.SENSITIVE]
        entry: dict[str, Any] = {
            "method": run["method"],
            "auroc": _value(test["overall"]["auroc"]),
            "gap": _value(skin["auroc_best_minus_worst"]),
            "gap_ci": skin["auroc_best_minus_worst"],
            "control_gap": _value(test["attributes"][single.CONTROL]["auroc_best_minus_worst"]),
            "groups": {g: v["count"] for g, v in skin["groups"].items()},
            "validation": run.get("validation"),
        }
        if "vs_lora" in run:
            vs = run["vs_lora"]
            entry["vs_lora"] = {
                "reference_gap": vs["reference_gap"],
                "gap": vs["gap"],
                "gap_reduction": _value(vs["gap_reduction"]),
                "auroc_change": _value(vs["auroc_change"]),
            }
        if "calibration" in run:
            entry["worst_group_ece"] = {
                kind: _value(run["calibration"][kind]["worst_group_ece"])
                for kind in single.SCALINGS
                if kind in run["calibration"]
            }
            entry["worst_group_floor"] = {
                kind: float(run["calibration"][kind].get("worst_group_floor", math.nan))
                for kind in single.SCALINGS
                if kind in run["calibration"]
            }
        runs[run["label"]] = entry
    return runs


def reduction(before: float, after: float) -> float:
    return 1.0 - after / before if before and not math.isnan(before) else math.nan


SELECTIONS = {
    "chosen on validation": None,
    "chosen on validation within the AUROC budget": single.TARGET_AUROC_DROP,
}


def select_on_validation(
    summaries: dict[int, dict[str, Any]], auroc_budget: float | None = None
) -> dict[str, dict[str, str]]:
    """Per method with several variants (λ or η values), per seed, the variant with the highest validation
    worst-skin-tone-group AUROC (the fair config's own checkpoint monitor): a choice made without the test set.

    With ``auroc_budget``, only variants whose validation AUROC is at most that far below LoRA's compete (the
    issue's constraint, applied where a user can apply it); if none is, the one with the highest validation
    AUROC is taken.
    """
    chosen: dict[str, dict[str, str]] = {}
    for seed, runs in summaries.items():
        families: dict[str, list[str]] = {}
        for label, entry in runs.items():
            if entry["method"] in ("fair_lora", "group_dro") and entry.get("validation"):
                families.setdefault(entry["method"], []).append(label)
        reference = (runs.get("lora", {}).get("validation") or {}).get("auroc")
        for method, labels in families.items():
            if len(labels) < 2:
                continue
            candidates = labels
            if auroc_budget is not None:
                if reference is None:
                    continue
                within = [x for x in labels if runs[x]["validation"]["auroc"] >= reference - auroc_budget]
                candidates = within or [max(labels, key=lambda label: runs[label]["validation"]["auroc"])]
            best = max(candidates, key=lambda label: runs[label]["validation"]["worst_group_auroc"])
            chosen.setdefault(method, {})[seed] = best
    return {method: picks for method, picks in chosen.items() if len(picks) == len(summaries)}


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Per-seed values, their mean and sample SD (NaN ignored: ``verticals.core.seeds.seed_statistics``)."""
    over_seeds = seed_statistics(values)
    return {"values": list(over_seeds.values), "mean": over_seeds.mean, "sd": over_seeds.std}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Across-seed means, spreads and target checks of every run that every seed has, plus, per method with
    several variants, the variant chosen on validation in each seed."""
    summaries = {seed: seed_summary(results) for seed, results in per_seed.items()}
    for rule, budget in SELECTIONS.items():
        for method, picks in select_on_validation(summaries, budget).items():
            for seed, label in picks.items():
                summaries[seed][f"{method} ({rule})"] = {**summaries[seed][label], "chosen": label}
    labels = [
        label for label in next(iter(summaries.values())) if all(label in s for s in summaries.values())
    ]

    seeds = sorted(summaries)
    out: dict[str, Any] = {"seeds": seeds, "runs": {}}
    for label in labels:
        rows = [summaries[s][label] for s in seeds]
        entry: dict[str, Any] = {
            "method": rows[0]["method"],
            "auroc": stats([r["auroc"] for r in rows]),
            "gap": stats([r["gap"] for r in rows]),
            "gap_ci_excludes_zero": [bool(r["gap_ci"].get("low", math.nan) > 0) for r in rows],
            "control_gap": stats([r["control_gap"] for r in rows]),
            "dark_count": stats([float(r["groups"].get("dark", math.nan)) for r in rows]),
            "chosen": [r["chosen"] for r in rows] if "chosen" in rows[0] else None,
        }
        if all("vs_lora" in r for r in rows):
            vs = [r["vs_lora"] for r in rows]
            reference, gap = stats([v["reference_gap"] for v in vs]), stats([v["gap"] for v in vs])
            change = stats([v["auroc_change"] for v in vs])
            per_seed_reduction = stats([v["gap_reduction"] for v in vs])
            averaged = reduction(reference["mean"], gap["mean"])
            entry["vs_lora"] = {
                "reference_gap": reference,
                "gap": gap,
                "gap_reduction": per_seed_reduction,
                "gap_reduction_of_means": averaged,
                "auroc_change": change,
                "seeds_meeting_both": sum(
                    v["gap_reduction"] >= single.TARGET_GAP_REDUCTION
                    and v["auroc_change"] >= -single.TARGET_AUROC_DROP
                    for v in vs
                ),
                "met_on_average": bool(
                    averaged >= single.TARGET_GAP_REDUCTION and change["mean"] >= -single.TARGET_AUROC_DROP
                ),
            }
        if all("worst_group_ece" in r for r in rows):
            calibration: dict[str, Any] = {}
            base = stats([r["worst_group_ece"]["none"] for r in rows])
            base_floor = stats([r["worst_group_floor"]["none"] for r in rows])
            for kind in single.SCALINGS:
                values = stats([r["worst_group_ece"].get(kind, math.nan) for r in rows])
                floor = stats([r["worst_group_floor"].get(kind, math.nan) for r in rows])
                calibration[kind] = {
                    "worst_group_ece": values,
                    "worst_group_floor": floor,
                    "reduction_per_seed": [
                        reduction(b, a) for b, a in zip(base["values"], values["values"], strict=True)
                    ],
                    "reduction_of_means": reduction(base["mean"], values["mean"]),
                    # The part of ECE above what sampling alone gives: what calibration can act on.
                    "excess_reduction_of_means": reduction(
                        base["mean"] - base_floor["mean"], values["mean"] - floor["mean"]
                    ),
                }
            entry["calibration"] = calibration
        out["runs"][label] = entry
    return out


# -- report ------------------------------------------------------------------------------------------------
def _mean_sd(entry: dict[str, Any], signed: bool = False, percent: bool = False) -> str:
    mean, sd = entry["mean"], entry["sd"]
    if math.isnan(mean):
        return "n/a"
    if percent:
        return f"{mean:+.0%}" + ("" if math.isnan(sd) else f" ± {sd:.0%}")
    sign = "+" if signed else ""
    return f"{mean:{sign}.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f}")


def _values(values: Sequence[float], signed: bool = False, percent: bool = False) -> str:
    if percent:
        return ", ".join("n/a" if math.isnan(v) else f"{v:+.0%}" for v in values)
    sign = "+" if signed else ""
    return ", ".join("n/a" if math.isnan(v) else f"{v:{sign}.3f}" for v in values)


def render_markdown(results: dict[str, Any]) -> str:
    summary, seeds = results["summary"], results["summary"]["seeds"]
    runs = summary["runs"]
    lines = [
        "# Medical fairness benchmark over seeds (generated dermatology set)",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- machine: {machine_line(results['machine'])}",
        f"- seeds: {seeds} (seed s = generated set s and `seed_everything` s); per-seed reports: "
        + ", ".join(f"[seed {s}]({p})" for s, p in results["seed_reports"].items()),
        f"- per-seed benchmark: `{results['seed_command']}` with `--seed s --generation-seed s`"
        + (
            f"; seeds {results['included']} come from `--include` and were made by the command in their own report"
            if results.get("included")
            else ""
        ),
        f"- status: {'complete' if results['complete'] else 'PARTIAL'}",
        "",
        "Values are mean ± sample SD over seeds, then the per-seed values in seed order. Reductions marked "
        "'of means' compare seed-averaged values (1 − mean(method) / mean(reference)).",
        "",
        "## All runs",
        "",
        "| run | test AUROC | skin-tone gap | gap CI excludes 0 (per seed) | sex gap | dark test images |",
        "|---|---|---|---|---|---|",
    ]
    for label, entry in runs.items():
        lines.append(
            f"| {label} | {_mean_sd(entry['auroc'])} ({_values(entry['auroc']['values'])}) | "
            f"{_mean_sd(entry['gap'], True)} ({_values(entry['gap']['values'], True)}) | "
            f"{', '.join('yes' if x else 'no' for x in entry['gap_ci_excludes_zero'])} | "
            f"{_mean_sd(entry['control_gap'], True)} | {entry['dark_count']['mean']:.0f} |"
        )
    compared = {
        label: e for label, e in runs.items() if "vs_lora" in e and e["method"] in ("fair_lora", "group_dro")
    }
    if compared:
        lines += [
            "",
            "## (b) Fairness-aware LoRA vs LoRA",
            "",
            f"Targets: gap cut by ≥ {single.TARGET_GAP_REDUCTION:.0%} with overall AUROC down by ≤ "
            f"{single.TARGET_AUROC_DROP * 100:.0f} points. A '(chosen on validation)' row takes, in each seed, "
            "the variant (λ or η) with the highest validation worst-group AUROC — the fair config's checkpoint "
            "monitor — so the test set plays no part in the choice; the variants chosen are listed in seed order. "
            "'(chosen on validation within the AUROC budget)' lets only variants whose validation AUROC is within "
            f"{single.TARGET_AUROC_DROP * 100:.0f} points of LoRA's compete (the target's constraint, applied on "
            "validation; if none is, the variant with the best validation AUROC).",
            "",
            "| run | LoRA gap | run's gap | gap reduction of means | gap reduction per seed | Δ AUROC | "
            "seeds meeting both | met on average |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, entry in compared.items():
            vs = entry["vs_lora"]
            shown = f"{label}: {', '.join(entry['chosen'])}" if entry.get("chosen") else label
            lines.append(
                f"| {shown} | {_mean_sd(vs['reference_gap'], True)} | {_mean_sd(vs['gap'], True)} | "
                f"{vs['gap_reduction_of_means']:+.0%} | {_values(vs['gap_reduction']['values'], percent=True)} | "
                f"{_mean_sd(vs['auroc_change'], True)} ({_values(vs['auroc_change']['values'], True)}) | "
                f"{vs['seeds_meeting_both']}/{len(seeds)} | {'yes' if vs['met_on_average'] else 'no'} |"
            )
    calibrated = {label: e for label, e in runs.items() if "calibration" in e}
    if calibrated:
        lines += [
            "",
            "## (c) Worst skin-tone-group ECE after temperature scaling (fit on validation, test ECE)",
            "",
            f"Target: ≥ {single.TARGET_ECE_REDUCTION:.0%} lower than uncalibrated. Scalings as in the per-seed "
            "reports (`per_group` is `TemperatureScaler`'s shrunk default). Floor: the worst group's ECE if the "
            "model were perfectly calibrated, from sampling alone (`calibrated_ece_floor`); 'excess reduction' "
            "is the reduction of the ECE above that floor — the part any recalibration can act on.",
            "",
            "| run | scaling | worst-group ECE | floor | reduction of means | reduction per seed | excess reduction |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, entry in calibrated.items():
            for kind, values in entry["calibration"].items():
                none = kind == "none"
                lines.append(
                    f"| {label} | {kind} | {_mean_sd(values['worst_group_ece'])} "
                    f"({_values(values['worst_group_ece']['values'])}) | {_mean_sd(values['worst_group_floor'])} | "
                    + ("—" if none else f"{values['reduction_of_means']:+.0%}")
                    + " | "
                    + ("—" if none else _values(values["reduction_per_seed"], percent=True))
                    + " | "
                    + ("—" if none else _values([values["excess_reduction_of_means"]], percent=True))
                    + " |"
                )
    scratch = runs.get("scratch")
    if scratch and "vs_lora" in scratch:
        change = scratch["vs_lora"]["auroc_change"]
        lines += [
            "",
            "## (d) Scratch − LoRA test AUROC",
            "",
            f"{_mean_sd(change, True)} (per seed {_values(change['values'], True)}); LoRA beats scratch on "
            f"{sum(v < 0 for v in change['values'])}/{len(seeds)} seeds.",
        ]
    if results["failed"]:
        lines += ["", "## Seeds that failed", ""]
        lines += [
            f"- seed {seed}: exit code {code}, see its `.log`" for seed, code in results["failed"].items()
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    pending = [seed for seed in args.seeds if finished(args, seed) is None]
    threads = max(1, (os.cpu_count() or 1) // min(args.jobs, max(1, len(pending))))
    print(f"Seeds to run: {pending or 'none'} ({args.jobs} at a time, {threads} thread(s) each)", flush=True)
    codes = sweep_seeds(pending, lambda seed: run_seed(args, seed, threads), jobs=args.jobs)
    per_seed = {seed: r for seed in args.seeds if (r := finished(args, seed)) is not None}
    reports = {seed: seed_output(args, seed) for seed in per_seed}
    included: list[int] = []
    for directory in args.include:
        for path in sorted(directory.glob("seed_*.json")):
            extra = json.loads(path.read_text())
            seed = int(extra["settings"]["seed"])
            if usable(extra) and seed not in per_seed:
                per_seed[seed], reports[seed] = extra, path.with_suffix(".md")
                included.append(seed)
    failed = {seed: code for seed, code in codes.items() if seed not in per_seed}
    failed.update({seed: "incomplete" for seed in args.seeds if seed not in per_seed and seed not in failed})
    results: dict[str, Any] = {
        "command": "python " + shlex.join([SCRIPT, *argv]),
        "seed_command": "python " + shlex.join(["benchmarks/medical_fairness.py", *args.passthrough]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(("torch", "timm", "lightning", "peft", "verticals")),
        # Relative to the summary, so the links work wherever the repository is.
        "seed_reports": {
            seed: os.path.relpath(reports[seed].resolve(), args.output.parent.resolve())
            for seed in sorted(per_seed)
        },
        "failed": failed,
        "included": sorted(included),
        "complete": not failed,
        "summary": aggregate(per_seed) if per_seed else {"seeds": [], "runs": {}},
    }
    markdown, json_path = write_reports(results, args.output, render_markdown)
    chart_report(
        args.output,
        results,
        gap_reduction_target=single.TARGET_GAP_REDUCTION,
        auroc_drop_target=single.TARGET_AUROC_DROP,
    )
    print(markdown)
    print(f"Wrote {args.output} and {json_path}.")
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
