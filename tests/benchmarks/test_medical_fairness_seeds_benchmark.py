"""The multi-seed medical fairness benchmark: two tiny seeds end to end, resume, and the argument checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def seeds(load_script):
    with load_script("medical_fairness_seeds") as module:
        yield module


def test_selection_on_validation_with_and_without_the_auroc_budget(seeds) -> None:
    def run(method: str, auroc: float, worst: float) -> dict:
        return {"method": method, "validation": {"auroc": auroc, "worst_group_auroc": worst}}

    summaries = {
        0: {  # the fairest variant costs 3 validation points: only the budgeted rule passes it over
            "lora": run("lora", 0.98, 0.90),
            "group_dro": run("group_dro", 0.98, 0.93),
            "group_dro η=0.1": run("group_dro", 0.95, 0.95),
            "fair_lora λ=1": run("fair_lora", 0.97, 0.91),  # a family of one: nothing to choose
        },
        1: {  # every variant is over budget: the one with the best validation AUROC
            "lora": run("lora", 0.99, 0.90),
            "group_dro": run("group_dro", 0.96, 0.92),
            "group_dro η=0.1": run("group_dro", 0.95, 0.94),
        },
    }
    assert seeds.select_on_validation(summaries) == {
        "group_dro": {0: "group_dro η=0.1", 1: "group_dro η=0.1"}
    }
    assert seeds.select_on_validation(summaries, 0.02) == {"group_dro": {0: "group_dro", 1: "group_dro"}}
    del summaries[1]["lora"]  # no reference validation AUROC: the budgeted rule cannot choose in seed 1
    assert seeds.select_on_validation(summaries, 0.02) == {}


@pytest.mark.parametrize(
    "values",
    [
        [0.81, 0.77, 0.9],
        [0.5, math.nan, 0.7, 0.61],
        [0.42],
        [math.nan, math.nan],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95],
    ],
)
def test_seed_statistics_are_unchanged_by_the_move_to_the_core(seeds, values) -> None:
    array = np.asarray(values, dtype=float)  # the benchmark's own formula before the move
    before = {
        "values": [float(v) for v in array],
        "mean": float(np.nanmean(array)) if np.isfinite(array).any() else math.nan,
        "sd": float(np.nanstd(array, ddof=1)) if np.isfinite(array).sum() > 1 else math.nan,
    }
    assert json.dumps(seeds.stats(values)) == json.dumps(before)


def test_two_tiny_seeds_are_run_aggregated_and_resumed(seeds, tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "results" / "summary.md"
    argv = [
        "--seeds", "0", "1",
        "--jobs", "2",
        "--seed-dir", str(tmp_path / "results" / "per_seed"),
        "--output", str(output),
        "--runs-dir", str(tmp_path / "runs"),
        "--",
        "--methods", "lora", "group_dro", "scratch",
        "--dro-step-sizes", "config", "0.5",
        "--num-images", "160",
        "--image-size", "32",
        "--epochs", "1",
        "--bootstrap", "10",
        "--data-root", str(tmp_path / "data"),
    ]  # fmt: skip
    results = seeds.main(argv)
    assert results["complete"] and results["failed"] == {}

    # Each seed is its own generated set and its own training seed.
    per_seed = {
        s: json.loads((tmp_path / "results" / "per_seed" / f"seed_{s}.json").read_text()) for s in (0, 1)
    }
    for seed, raw in per_seed.items():
        assert raw["settings"]["seed"] == seed and raw["settings"]["generation_seed"] == seed
    assert per_seed[0]["runs"][0]["test"] != per_seed[1]["runs"][0]["test"]

    summary = results["summary"]
    assert summary["seeds"] == [0, 1]
    assert list(summary["runs"]) == [
        "lora", "group_dro", "group_dro η=0.5", "scratch", "group_dro (chosen on validation)",
        "group_dro (chosen on validation within the AUROC budget)",
    ]  # fmt: skip
    chosen = summary["runs"]["group_dro (chosen on validation)"]
    for seed, label in enumerate(chosen["chosen"]):
        runs = {run["label"]: run for run in per_seed[seed]["runs"]}
        best = max(("group_dro", "group_dro η=0.5"), key=lambda k: runs[k]["validation"]["worst_group_auroc"])
        assert label == best
        assert chosen["auroc"]["values"][seed] == runs[label]["test"]["overall"]["auroc"]["value"]
    lora_gaps = [
        r["runs"][0]["test"]["attributes"]["skin_tone"]["auroc_best_minus_worst"]["value"]
        for r in per_seed.values()
    ]
    assert summary["runs"]["lora"]["gap"]["values"] == pytest.approx(lora_gaps)
    assert summary["runs"]["lora"]["gap"]["mean"] == pytest.approx(sum(lora_gaps) / 2)
    dro = summary["runs"]["group_dro"]["vs_lora"]
    expected = seeds.reduction(dro["reference_gap"]["mean"], dro["gap"]["mean"])
    assert dro["gap_reduction_of_means"] == pytest.approx(expected, nan_ok=True)
    assert 0 <= dro["seeds_meeting_both"] <= 2 and isinstance(dro["met_on_average"], bool)
    calibration = summary["runs"]["lora"]["calibration"]
    assert set(calibration) == {"none", "global", "per_group", "per_group_mle", "per_group_bias"}
    assert all(not math.isnan(v) for v in calibration["per_group"]["worst_group_ece"]["values"])
    none, per_group = calibration["none"], calibration["per_group"]
    assert all(0 < floor < 1 for floor in none["worst_group_floor"]["values"])
    excess = seeds.reduction(
        none["worst_group_ece"]["mean"] - none["worst_group_floor"]["mean"],
        per_group["worst_group_ece"]["mean"] - per_group["worst_group_floor"]["mean"],
    )
    assert per_group["excess_reduction_of_means"] == pytest.approx(excess, nan_ok=True)

    markdown = output.read_text()
    assert "- command: `python benchmarks/medical_fairness_seeds.py --seeds 0 1" in markdown
    assert "[seed 0](per_seed/seed_0.md)" in markdown
    for heading in ("## All runs", "## (b) Fairness-aware LoRA vs LoRA", "## (c) Worst skin-tone-group ECE",
                    "## (d) Scratch − LoRA test AUROC"):  # fmt: skip
        assert heading in markdown
    assert "| group_dro |" in markdown

    # A second call finds both seeds done with the same arguments and runs nothing.
    monkeypatch.setattr(seeds, "run_seed", lambda *a: pytest.fail("a finished seed was run again"))
    again = seeds.main(argv)
    assert again["summary"]["runs"]["lora"]["gap"] == summary["runs"]["lora"]["gap"]

    # --include adds the finished seeds of another directory to the summary without running them.
    other = tmp_path / "other"
    other.mkdir()
    (other / "seed_7.json").write_text(
        (tmp_path / "results" / "per_seed" / "seed_1.json").read_text().replace('"seed": 1,', '"seed": 7,')
    )
    pooled = seeds.main(
        [*argv[: argv.index("--")], "--seeds", "0", "--include", str(other), *argv[argv.index("--") :]]
    )
    assert pooled["summary"]["seeds"] == [0, 7] and pooled["included"] == [7]
    assert "seeds [7] come from `--include`" in output.read_text()
    assert pooled["summary"]["runs"]["lora"]["gap"]["values"] == summary["runs"]["lora"]["gap"]["values"]

    # Other benchmark arguments make the stored seed stale.
    changed = [*argv[: argv.index("--epochs")], "--epochs", "2", *argv[argv.index("--epochs") + 2 :]]
    assert seeds.finished(seeds.parse_args(changed), 0) is None


def test_arguments_owned_per_seed_or_invalid_are_refused(seeds) -> None:
    with pytest.raises(SystemExit):
        seeds.parse_args(["--seeds", "0", "--", "--seed", "3"])
    with pytest.raises(SystemExit):
        seeds.parse_args(["--seeds", "0", "0"])
    with pytest.raises(SystemExit):
        seeds.parse_args(["--jobs", "0"])
    args = seeds.parse_args(["--seeds", "4", "--", "--epochs", "1"])
    command = seeds.seed_command(args, 4)
    assert command[:4] == ["--seed", "4", "--generation-seed", "4"] and command[-2:] == ["--epochs", "1"]
