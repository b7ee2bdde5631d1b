"""The medical SAM benchmark end to end at tiny scale (real LiteMedSAM at 64 px, a few slices, 1 epoch)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("medical_sam") as module:
        yield module


def test_tiny_run_writes_markdown_json_and_figures(benchmark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    output = tmp_path / "results" / "medical_sam.md"
    argv = [
        "--datasets", "mni", "phantoms",
        "--methods", "zero_shot_box", "samed_lora",
        "--seeds", "0",
        "--epochs", "1",
        "--phantom-epochs", "2",
        "--image-size", "64",
        "--max-slices", "4",
        "--patients", "8",
        "--slices-per-patient", "1",
        "--bootstrap", "20",
        "--output", str(output),
    ]  # fmt: skip
    results = benchmark.main(argv)
    assert {(run["dataset"], run["method"]) for run in results["runs"]} == {
        (dataset, method) for dataset in ("mni", "phantoms") for method in ("zero_shot_box", "samed_lora")
    }
    for run in results["runs"]:
        assert 0.0 <= run["dice"] <= 1.0 and 0.0 <= run["volume_dice"] <= 1.0
        assert "examples" not in run  # arrays go to the figures only
        if run["method"] == "zero_shot_box":
            assert run["trainable"] == 0 and run["adapter_mb"] < 1e-3 and math.isnan(run["seconds_per_step"])
        else:
            assert 0 < run["encoder_trainable_percent"] < 1 < run["trainable_percent"] < 60
            assert run["adapter_mb"] > 0 and run["steps"] >= 1
    trained = {run["dataset"]: run for run in results["runs"] if run["method"] == "samed_lora"}
    assert (trained["mni"]["epochs_run"], trained["phantoms"]["epochs_run"]) == (1, 2)  # --phantom-epochs
    phantoms = next(run for run in results["runs"] if run["dataset"] == "phantoms")
    assert {"site", "sex"} <= set(phantoms["groups"])
    summary = results["summary"]["mni"]
    assert "dice_minus_decoder_only" not in summary["samed_lora"]  # no decoder-only run to pair with
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["summary"]["phantoms"]["samed_lora"]["seeds"] == [0]
    markdown = output.read_text()
    assert "| zero_shot_box | 1 |" in markdown and "best − worst" in markdown
    assert "1 epochs (2 on the phantoms)" in markdown
    for figure in ("dice_by_method.png", "overlays.png"):
        assert (output.with_suffix("") / figure).stat().st_size > 0
        assert f"medical_sam/{figure}" in markdown


def test_summary_pairs_each_method_with_decoder_only_by_seed(benchmark) -> None:
    def run(method: str, seed: int, dice: float) -> dict:
        figures = {"dice": dice, "volume_dice": dice, "hd95": 1.0, "seconds_per_step": 0.5}
        return {"dataset": "mni", "method": method, "seed": seed, **figures, "trainable_percent": 1.0,
                "encoder_trainable_percent": 0.5, "adapter_mb": 1.0, "trainable": 10}  # fmt: skip

    runs = [run("decoder_only", 0, 0.5), run("decoder_only", 1, 0.6), run("samed_lora", 1, 0.7)]
    runs.append(run("samed_lora", 0, 0.6))
    summary = benchmark.summarise(runs)["mni"]
    paired = summary["samed_lora"]["dice_minus_decoder_only"]
    assert paired["values"] == pytest.approx([0.1, 0.1]) and paired["n"] == 2
    assert summary["decoder_only"]["dice"]["mean"] == pytest.approx(0.55)
