"""The remote-sensing benchmark end to end at tiny scale (a random tiny tile ViT, a few 32-px tiles, 1 epoch)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("remote_sensing") as module:
        yield module


def test_tiny_run_writes_markdown_json_and_figures(benchmark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    output = tmp_path / "results" / "remote_sensing.md"
    argv = [
        "--methods", "mofa", "mofa_nosplit", "lora",
        "--learning-rates", "0.001", "0.01",
        "--seeds", "0", "1",
        "--epochs", "1",
        "--tile-size", "32",
        "--num-train", "4",
        "--num-val", "2",
        "--num-test", "2",
        "--batch-size", "4",
        "--backbone", "tile_vit_tiny",
        "--no-pretrained",
        "--bootstrap", "10",
        "--output", str(output),
    ]  # fmt: skip
    results = benchmark.main(argv)
    methods = ("mofa", "mofa_nosplit", "lora")
    evaluated = [run for run in results["runs"] if run["phase"] == "eval"]
    tuned = [run for run in results["runs"] if run["phase"] == "tune"]
    assert {(run["method"], run["seed"]) for run in evaluated} == {
        (m, seed) for m in methods for seed in (0, 1)
    }
    assert {(run["method"], run["seed"], run["learning_rate"]) for run in tuned} == {
        (m, 100, rate) for m in methods for rate in (0.001, 0.01)
    }
    tuning = results["summary"]["tuning"]
    for method in methods:  # every evaluation seed runs at the rate with the best tuning-seed validation mIoU
        best = max(tuning[method], key=tuning[method].get)
        assert {run["learning_rate"] for run in evaluated if run["method"] == method} == {float(best)}
        assert "router" not in next(run for run in tuned if run["method"] == method)
    for run in evaluated:
        assert 0.0 <= run["miou"] <= 1.0
        assert set(run["miou_per_artefact"]) == {"clean", "stripes", "haze", "noise", "jpeg", "colour"}
        assert 0 < run["adapter_parameters"] < run["trainable"] and run["steps"] >= 1
    mofa = next(run for run in evaluated if run["method"] == "mofa")
    for layers in mofa["router"].values():  # a mean weight per expert, summing to 1
        for weights in layers.values():
            assert len(weights) == 3 and math.isclose(sum(weights), 1.0, rel_tol=1e-4)
    summary = results["summary"]
    assert set(summary["mofa_minus"]) == {"mofa_nosplit", "lora"}
    difference = summary["mofa_minus"]["lora"]["overall"]
    assert difference["n"] == 2 and difference["low"] <= difference["mean"] <= difference["high"]
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["summary"]["methods"]["mofa"]["seeds"] == [0, 1]
    markdown = output.read_text()
    assert "| mofa | 2 |" in markdown and "MoFA minus each control" in markdown and "router" in markdown
    assert "Learning rates (tuned on seed 100" in markdown
    for figure in ("miou_by_artefact.png", "mofa_minus.png"):
        assert (output.with_suffix("") / figure).stat().st_size > 0
        assert f"remote_sensing/{figure}" in markdown


def test_verdict_reads_the_paired_interval(benchmark) -> None:
    assert benchmark.verdict({"mean": 0.02, "low": 0.01, "high": 0.03}) == "MoFA better"
    assert benchmark.verdict({"mean": -0.02, "low": -0.03, "high": -0.01}) == "control better"
    assert benchmark.verdict({"mean": 0.0, "low": -0.01, "high": 0.01}) == "no difference shown"
    assert benchmark.verdict({"mean": 0.0, "low": math.nan, "high": math.nan}) == "too few seeds"
