"""The medical fairness benchmark end to end at tiny scale (160 generated images of 32 px, 1 epoch)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from verticals.core.metrics import bootstrap_indices, percentile_interval
from verticals.core.metrics.groups import intersect


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("medical_fairness") as module:
        yield module


def _outputs(scores: np.ndarray, target: np.ndarray, tone: np.ndarray) -> dict[str, np.ndarray]:
    logits = np.stack([np.zeros_like(scores), np.log(scores / (1 - scores))], axis=1)
    return {"logits": logits, "target": target, "skin_tone": tone, "sex": np.zeros_like(tone)}


def test_paired_comparison_measures_gap_reduction_and_auroc_change(benchmark) -> None:
    rng = np.random.default_rng(0)
    n = 400
    target = rng.integers(0, 2, n)
    tone = (rng.random(n) < 0.3).astype(int)  # 1 = dark
    noise = np.where(tone == 1, 1.5, 0.3)  # dark cases ranked worse: a real gap
    biased = 1 / (1 + np.exp(-(2 * target - 1 + noise * rng.normal(size=n))))
    fair = 1 / (1 + np.exp(-(2 * target - 1 + 0.3 * rng.normal(size=n))))
    names = {"skin_tone": ["light", "dark"], "sex": ["female"]}  # code 1 = dark
    reference = _outputs(biased, target, tone)

    same = benchmark.paired_comparison(reference, reference, names, n_bootstrap=50, seed=0)
    assert same["auroc_change"]["value"] == 0 and same["gap_change"]["value"] == 0
    assert same["gap_reduction"]["value"] == pytest.approx(0.0)
    assert (same["best_group"], same["worst_group"]) == ("light", "dark")

    fixed = benchmark.paired_comparison(
        reference, _outputs(fair, target, tone), names, n_bootstrap=50, seed=0
    )
    assert fixed["reference_gap"] > 0.1 and abs(fixed["gap"]) < fixed["reference_gap"]
    assert fixed["gap_reduction"]["value"] > 0.5 and fixed["auroc_change"]["value"] > 0
    low, high = fixed["gap_change"]["low"], fixed["gap_change"]["high"]
    assert low <= fixed["gap_change"]["value"] <= high

    shuffled = dict(reference, target=target[::-1])
    with pytest.raises(ValueError, match="'target' arrays differ: a paired bootstrap needs the same samples"):
        benchmark.paired_comparison(reference, shuffled, names, n_bootstrap=5, seed=0)


def _paired_comparison_before_the_core(benchmark, reference, other, names, n_bootstrap, seed):
    """``paired_comparison`` as the benchmark had it before the paired bootstrap moved to ``verticals.core.seeds``."""
    sensitive = benchmark.SENSITIVE
    target, codes = reference["target"], reference[sensitive]
    a, b = benchmark.positive_scores(reference["logits"]), benchmark.positive_scores(other["logits"])
    per_group = benchmark.group_aurocs(a, target, codes, len(names[sensitive]))
    best, worst = int(np.nanargmax(per_group)), int(np.nanargmin(per_group))
    auroc, signed_gap = benchmark.auroc, benchmark.signed_gap

    def statistics(rows):
        y, c, sa, sb = target[rows], codes[rows], a[rows], b[rows]
        return (
            auroc(sa, y),
            auroc(sb, y),
            signed_gap(sa, y, c, best, worst),
            signed_gap(sb, y, c, best, worst),
        )

    point = statistics(np.arange(len(target)))
    strata = intersect({"g": codes, "y": target})
    samples = (
        np.array(
            [
                statistics(rows)
                for rows in bootstrap_indices(len(target), n_bootstrap, seed=seed, strata=strata)
            ]
        )
        if n_bootstrap > 0
        else np.empty((0, 4))
    )

    def interval(values):
        return percentile_interval(values) if len(values) else (math.nan, math.nan)

    auroc_change = samples[:, 1] - samples[:, 0] if len(samples) else samples
    gap_change = samples[:, 3] - samples[:, 2] if len(samples) else samples
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = 1.0 - samples[:, 3] / samples[:, 2] if len(samples) else samples
    return {
        "best_group": names[sensitive][best],
        "worst_group": names[sensitive][worst],
        "reference_auroc": point[0],
        "auroc": point[1],
        "auroc_change": {"value": point[1] - point[0], **dict(zip(("low", "high"), interval(auroc_change)))},
        "reference_gap": point[2],
        "gap": point[3],
        "gap_change": {"value": point[3] - point[2], **dict(zip(("low", "high"), interval(gap_change)))},
        "gap_reduction": {
            "value": 1.0 - point[3] / point[2] if point[2] else math.nan,
            **dict(zip(("low", "high"), interval(reduction))),
        },
    }


@pytest.mark.parametrize("n_bootstrap, seed, n", [(0, 0, 300), (200, 0, 300), (200, 5, 120), (50, 2, 40)])
def test_paired_comparison_is_unchanged_by_the_move_to_the_core(benchmark, n_bootstrap, seed, n) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    tone = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    names = {"skin_tone": ["light", "medium", "dark"], "sex": ["female"]}
    scores = [
        1 / (1 + np.exp(-(2 * target - 1 + np.where(tone == 2, width, 0.4) * rng.normal(size=n))))
        for width in (1.5, 0.6)
    ]
    reference, other = _outputs(scores[0], target, tone), _outputs(scores[1], target, tone)
    new = benchmark.paired_comparison(reference, other, names, n_bootstrap=n_bootstrap, seed=seed)
    old = _paired_comparison_before_the_core(benchmark, reference, other, names, n_bootstrap, seed)
    assert json.dumps(new) == json.dumps(old)  # bit for bit, NaN bounds included


def test_planted_structure_reaches_every_run(benchmark, tmp_path: Path) -> None:
    args = benchmark.parse_args(["--planted", "dark_fraction=0.5", "marker_dark_benign=0", "--runs-dir", "r"])
    assert args.planted == {"dark_fraction": 0.5, "marker_dark_benign": 0.0}
    argv = benchmark.run_arguments("lora", args, tmp_path)
    value = argv[argv.index("--data.init_args.planted") + 1]
    assert json.loads(value) == {"dark_fraction": 0.5, "marker_dark_benign": 0.0}
    assert benchmark.planted_text(args.planted) == "dark_fraction=0.5, marker_dark_benign=0"
    assert "--data.init_args.planted" not in benchmark.run_arguments(
        "lora", benchmark.parse_args([]), tmp_path
    )
    for bad in (["--planted", "dark_fraction"], ["--planted", "dark_fraction=half"], ["--planted", "seed=1"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(bad)


def test_variants_cover_every_penalty_weight_and_step_size(benchmark) -> None:
    runs = benchmark.variants(
        ["lora", "fair_lora", "group_dro"], [1, 3], [None, 0.1], ["club", "adversarial"]
    )
    labels = [label for label, _, _ in runs]
    assert labels == [
        "lora", "fair_lora λ=1", "fair_lora λ=3", "fair_lora adversarial λ=1", "fair_lora adversarial λ=3",
        "group_dro", "group_dro η=0.1",
    ]  # fmt: skip
    overrides = dict((label, extra) for label, _, extra in runs)
    assert overrides["fair_lora λ=3"] == ["--model.init_args.fairness_weight", "3"]  # the config's CLUB
    assert overrides["fair_lora adversarial λ=1"][-2:] == [
        "--model.init_args.fairness_penalty",
        "adversarial",
    ]
    assert overrides["group_dro η=0.1"][-2:] == ["--model.init_args.dro_step_size", "0.1"]
    assert benchmark.parse_args([]).fair_penalties == ["club"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--fair-penalties", "mine"])


def test_tiny_run_writes_markdown_and_json(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "results" / "medical_fairness.md"
    argv = [
        "--methods", "lora", "fair_lora", "scratch",
        "--fair-weights", "2",
        "--num-images", "160",
        "--image-size", "32",
        "--epochs", "1",
        "--bootstrap", "20",
        "--data-root", str(tmp_path / "data"),
        "--output", str(output),
        "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    argv_before = list(sys.argv)
    results = benchmark.main(argv)
    assert sys.argv == argv_before, "the benchmark must restore sys.argv after run_cli"
    assert results["errors"] == [] and results["complete"]

    markdown = output.read_text()
    assert "- command: `python benchmarks/medical_fairness.py --methods lora fair_lora scratch" in markdown
    assert "- machine: " in markdown and "torch " in markdown
    assert "160 generated images of 32 px" in markdown
    for heading in ("## All runs", "## (a) The planted gap", "## (b) Fairness-aware LoRA", "## (c) Temperature",
                    "## (d) LoRA on the real ImageNet weights"):  # fmt: skip
        assert heading in markdown
    assert "| fair_lora λ=2 | `medical/efficientnet_fair_lora` |" in markdown
    assert "| sex (negative control) |" in markdown

    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "runs" / "lora" / "outputs.safetensors"))
    assert saved["val.logits"].shape[1] == 2 and len(saved["test.target"]) == len(saved["test.skin_tone"])
    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["argv"] == argv
    labels = [run["label"] for run in raw["runs"]]
    assert labels == ["lora", "fair_lora λ=2", "scratch"]
    lora, fair, scratch = raw["runs"]
    assert 0 < lora["trainable_percent"] < 10 and scratch["trainable_percent"] >= 100
    assert "--model.init_args.fairness_weight" in fair["overrides"] and fair["epochs"] == 1
    assert "vs_lora" not in lora and {"vs_lora"} <= set(fair) and {"vs_lora"} <= set(scratch)
    sizes = lora["split_sizes"]
    assert sizes["val"] > 0 and sizes["test"] > 0 and fair["split_sizes"] == sizes
    for run in raw["runs"]:
        assert set(run["test"]["attributes"]) == {"skin_tone", "sex"}
        assert set(run["test"]["attributes"]["skin_tone"]["groups"]) == {"dark", "light"}
        assert 0 <= run["test"]["overall"]["accuracy"]["value"] <= 1
        calibration = run["calibration"]
        assert {"none", "global", "per_group", "per_group_mle", "per_group_bias"} <= set(calibration)
        assert calibration["temperature"] > 0 and calibration["prior_precision"] > 0
        temperatures = [
            *calibration["group_temperatures"].values(),
            *calibration["group_temperatures_mle"].values(),
        ]
        assert all(np.exp(-3) * 0.999 <= t <= np.exp(3) * 1.001 for t in temperatures)  # |log T| <= 3
        assert run["wall_seconds"] > 0 and run["fit_seconds"] > 0
        # The re-measured test AUROC is Lightning's own test_auroc on the same selected model.
        assert run["test"]["overall"]["auroc"]["value"] == pytest.approx(
            run["lightning_test_metrics"]["test_auroc"], abs=1e-4
        )

    # Re-analysis from the saved outputs, without training, gives the same numbers and says so.
    before = output.with_suffix(".json").read_text()
    again = benchmark.main(["--reanalyse", "--output", str(output), "--runs-dir", str(tmp_path / "runs")])
    assert [run["test"] for run in again["runs"]] == [run["test"] for run in json.loads(before)["runs"]]
    assert "analyses recomputed from the runs' saved outputs" in output.read_text()
    floors = again["runs"][0]["calibration"]["none"]["groups"]
    assert all(0 < group["floor"] < 1 for group in floors.values())
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--reanalyse"])  # needs the runs directory

    # --resume trains only the runs the report lacks (here a group-DRO step size) and reuses the others.
    trained = []
    original = benchmark.train_and_collect

    def counting(label, *args, **kwargs):
        trained.append(label)
        return original(label, *args, **kwargs)

    benchmark.train_and_collect = counting
    try:
        resumed = benchmark.main(
            [*argv[: argv.index("--fair-weights")], "group_dro", *argv[argv.index("--fair-weights") :],
             "--dro-step-sizes", "0.1", "--fair-penalties", "club", "adversarial", "--resume"]
        )  # fmt: skip
    finally:
        benchmark.train_and_collect = original
    assert trained == ["fair_lora adversarial λ=2", "group_dro η=0.1"]
    assert [run["label"] for run in resumed["runs"]] == [
        "lora", "fair_lora λ=2", "fair_lora adversarial λ=2", "scratch", "group_dro η=0.1"
    ]  # fmt: skip
    assert resumed["runs"][0]["test"] == again["runs"][0]["test"]
    assert "adversarial" in resumed["runs"][2]["overrides"] and "vs_lora" in resumed["runs"][2]
    assert "--model.init_args.dro_step_size" in resumed["runs"][4]["overrides"]
    assert 0 <= resumed["runs"][4]["validation"]["worst_group_auroc"] <= 1
    with pytest.raises(ValueError, match="other settings"):
        benchmark.main(
            [
                *argv[: argv.index("--epochs")],
                "--epochs",
                "2",
                *argv[argv.index("--epochs") + 2 :],
                "--resume",
            ]
        )
