"""The point-cloud benchmark end to end at tiny scale (a random tiny point transformer, a few 128-point shapes,
1 epoch), and its sweep split over two calls then joined by ``--resume``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

COLUMNS = ["overall", "domain=clean", "domain=scan", "novelty=seen", "novelty=novel"]


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("pointcloud") as module:
        yield module


def _tiny(output: Path, *extra: str) -> list[str]:
    return [
        "--seeds", "0", "1",
        "--epochs", "1",
        "--size", "tiny",
        "--no-pretrained",
        "--num-points", "128",
        "--num-train", "16",
        "--num-val", "8",
        "--num-test", "8",
        "--batch-size", "8",
        "--trees", "20",
        "--bootstrap", "10",
        "--output", str(output),
        *extra,
    ]  # fmt: skip


def test_tiny_sweep_in_two_parts_joins_into_one_table(benchmark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    first = benchmark.main(
        _tiny(tmp_path / "a.md", "--methods", "point_peft", "descriptor_forest", "point_peft_no_prior",
              "--learning-rates", "0.001", "0.01", "--runs-dir", str(tmp_path / "a"))
    )  # fmt: skip
    tuned = [run for run in first["runs"] if run["phase"] == "tune"]
    assert {(run["method"], run["seed"], run["learning_rate"]) for run in tuned} == {
        ("point_peft", 100, 0.001),
        ("point_peft", 100, 0.01),
    }  # the forest has no learning rate to tune
    best = max(tuned, key=lambda run: run["best_val_accuracy"])["learning_rate"]
    evaluated = [run for run in first["runs"] if run["phase"] == "eval"]
    assert {(run["method"], run["seed"]) for run in evaluated} == {
        (method, seed)
        for method in ("point_peft", "descriptor_forest", "point_peft_no_prior")
        for seed in (0, 1)
    }
    for method in ("point_peft", "point_peft_no_prior"):  # the ablation runs at Point-PEFT's tuned rate
        assert {run["learning_rate"] for run in evaluated if run["method"] == method} == {best}
    ablation = next(run for run in evaluated if run["method"] == "point_peft_no_prior")
    assert "use_prior: false" in (Path(ablation["log_dir"]) / "config.yaml").read_text()
    for run in evaluated:
        assert 0.0 <= run["accuracy"] <= 1.0
        assert set(run["accuracy_by_group"]) == set(COLUMNS[1:])
        assert all(0.0 <= value <= 1.0 for value in run["accuracy_by_group"].values())
        assert run["clouds"] == {"train": 16, "val": 8, "test": 16}  # each test shape clean and scanned
    peft = next(run for run in evaluated if run["method"] == "point_peft")
    assert 0 < peft["adapter_parameters"] < peft["trainable"] and peft["steps"] >= 1
    assert peft["seconds_per_step"] > 0 and 0 < peft["trainable_percent"] < 100

    second = benchmark.main(
        _tiny(tmp_path / "b.md", "--methods", "lora", "--no-tune", "--runs-dir", str(tmp_path / "b"))
    )
    assert {run["method"] for run in second["runs"]} == {"lora"}

    joined = benchmark.main(
        _tiny(tmp_path / "results" / "pointcloud.md", "--methods", "point_peft", "lora", "descriptor_forest",
              "--learning-rates", "0.001", "0.01", "--resume", str(tmp_path / "a" / "progress.json"),
              str(tmp_path / "b" / "progress.json"), str(tmp_path / "a" / "progress.json"))
    )  # fmt: skip
    # nothing re-run, and a progress file given twice (or held inside another's) counts its runs once
    assert len(joined["runs"]) == len(first["runs"]) + len(second["runs"])
    summary = joined["summary"]
    assert list(summary["methods"]) == ["point_peft", "lora", "descriptor_forest", "point_peft_no_prior"]
    for entry in summary["methods"].values():
        assert set(entry["accuracy"]) == set(COLUMNS) and entry["seeds"] == [0, 1]
    assert set(summary["point_peft_minus"]) == {"lora", "descriptor_forest", "point_peft_no_prior"}
    difference = summary["point_peft_minus"]["lora"]["overall"]
    lora = {run["seed"]: run["accuracy"] for run in second["runs"]}
    peft_accuracy = {run["seed"]: run["accuracy"] for run in evaluated if run["method"] == "point_peft"}
    assert math.isclose(difference["mean"], sum(peft_accuracy[s] - lora[s] for s in (0, 1)) / 2)
    output = tmp_path / "results" / "pointcloud.md"
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["summary"]["methods"]["lora"]["seeds"] == [0, 1]
    markdown = output.read_text()
    assert "| point_peft | 2 |" in markdown and "| descriptor_forest | 2 | — |" in markdown
    assert (
        "Point-PEFT minus each other method" in markdown and "Learning rates (tuned on seed 100" in markdown
    )
    assert "ScanObjectNN PB-T50-RS 83.1 → 85.0" in markdown  # the paper's claim beside ours
    for figure in ("accuracy_by_group.png", "accuracy_vs_trainable.png"):
        assert (output.with_suffix("") / figure).stat().st_size > 0
        assert f"pointcloud/{figure}" in markdown


def test_tuned_rate_is_the_best_validation_score_of_the_tuning_seed(benchmark) -> None:
    runs = [
        {
            "phase": "tune",
            "method": "point_peft",
            "seed": 100,
            "learning_rate": rate,
            "best_val_accuracy": score,
        }
        for rate, score in ((0.0003, 0.8), (0.001, 0.9), (0.003, 0.9))
    ] + [
        {"phase": "eval", "method": "point_peft", "seed": 0, "learning_rate": 0.01, "best_val_accuracy": 1.0}
    ]
    assert benchmark.tuned_rate(runs, "point_peft", 100) == 0.001  # ties: the first (smaller) rate
    assert benchmark.tuned_rate(runs, "lora", 100) is None


def test_full_fine_tuning_tries_smaller_rates_and_the_forest_none(benchmark) -> None:
    assert benchmark.learning_rate_grid("full", [0.001, 0.005]) == [0.0002, 0.001]
    assert benchmark.learning_rate_grid("lora", [0.001]) == [0.001]
    assert benchmark.learning_rate_grid("descriptor_forest", [0.001]) == []
    assert benchmark.learning_rate_grid("point_peft_no_geometry", [0.001]) == []


def test_verdict_reads_the_paired_interval(benchmark) -> None:
    assert benchmark.verdict({"mean": 0.02, "low": 0.01, "high": 0.03}) == "Point-PEFT better"
    assert benchmark.verdict({"mean": -0.02, "low": -0.03, "high": -0.01}) == "other better"
    assert benchmark.verdict({"mean": 0.0, "low": -0.01, "high": 0.01}) == "no difference shown"
    assert benchmark.verdict({"mean": 0.0, "low": math.nan, "high": math.nan}) == "too few seeds"


def test_a_smaller_backbone_keeps_the_configs_other_model_options(
    benchmark, tmp_path: Path, monkeypatch
) -> None:
    """Overriding the size for a smoke run must not drop full fine-tuning's ``freeze_batchnorm: false``."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    results = benchmark.main(
        _tiny(
            tmp_path / "full.md",
            "--seeds",
            "0",
            "--methods",
            "full",
            "--no-tune",
            "--runs-dir",
            str(tmp_path),
        )
    )
    (run,) = results["runs"]
    hparams = (Path(run["log_dir"]) / "hparams.yaml").read_text()
    assert "freeze_batchnorm: false" in hparams and "size: tiny" in hparams
