"""The time-series benchmark script end to end, at tiny scale (tiny-bert, 1 epoch, GunPoint)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    pytest.importorskip("sktime")
    with load_script("timeseries") as module:
        yield module


def test_tiny_run_writes_markdown_and_json(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "results" / "timeseries.md"
    argv = [
        "--datasets", "GunPoint",
        "--methods", "lora",
        "--encoder", "tiny-bert",
        "--epochs", "1",
        "--overhead-epochs", "1",
        "--overhead-repeats", "3",
        "--output", str(output),
        "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    argv_before = list(sys.argv)
    results = benchmark.main(argv)
    assert sys.argv == argv_before, "the benchmark must restore sys.argv after run_cli"
    assert results["errors"] == []

    markdown = output.read_text()
    assert "- command: `python benchmarks/timeseries.py --datasets GunPoint --methods lora" in markdown
    assert "--encoder tiny-bert --epochs 1" in markdown
    assert "- machine: " in markdown and "torch " in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| dataset | lora"))
    assert "1-NN DTW" in header and "MiniRocket" in header
    row = next(line for line in markdown.splitlines() if line.startswith("| GunPoint | "))
    accuracies = [float(cell) for cell in row.strip("|").split("|")[1:]]
    assert len(accuracies) == 3 and all(0.0 <= value <= 1.0 for value in accuracies)
    assert accuracies[1] == pytest.approx(0.9067, abs=1e-3)  # 1-NN DTW on GunPoint, as published (0.907)
    assert re.search(r"LoRA ≥ 1-NN DTW on [01] of 1 datasets", markdown)
    assert "| GunPoint | lora | " in markdown and "trainable %" in markdown
    ratio = re.search(r"Throughput ratio verticals/plain: ([0-9.]+)", markdown)
    assert ratio and float(ratio.group(1)) > 0

    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["command"].startswith("python benchmarks/timeseries.py ")
    assert raw["argv"] == argv
    (run,) = raw["runs"]
    assert run["method"] == "lora" and run["encoder"] == "tiny-bert" and run["epochs"] == 1
    assert 0 < run["trainable_parameters"] < run["total_parameters"]
    percent = 100 * run["trainable_parameters"] / run["backbone_parameters"]
    assert run["trainable_percent"] == pytest.approx(percent)
    assert run["fit_seconds"] > 0 and run["wall_seconds"] >= run["fit_seconds"]
    assert set(raw["classical"]["GunPoint"]) == {"dtw", "minirocket"}
    overhead = raw["overhead"]
    loops = [r["loop"] for r in overhead["runs"]]
    assert loops == ["verticals", "plain", "plain", "verticals", "verticals", "plain"]  # alternating
    assert len({r["samples"] for r in overhead["runs"]}) == 1  # same data, same epochs in both loops
    assert overhead["ratio_verticals_over_plain"] == pytest.approx(float(ratio.group(1)), abs=1e-3)
    # validation is off, so no best.ckpt; last.ckpt is written at most once an epoch (what a resume needs)
    verticals_runs = [r for r in overhead["runs"] if r["loop"] == "verticals"]
    assert all(r["checkpoint_saves_in_window"] <= overhead["epochs"] for r in verticals_runs)


def test_resume_keeps_finished_runs_and_runs_only_the_rest(benchmark, tmp_path: Path, monkeypatch) -> None:
    finished = {"dataset": "GunPoint", "method": "lora", "seed": 0, "test_accuracy": 0.5}
    previous = tmp_path / "previous.json"
    previous.write_text(
        json.dumps(
            {
                "date": "2026-01-01T00:00:00+00:00",
                "command": "python benchmarks/timeseries.py",
                "settings": {"epochs": 1, "encoder": "tiny-bert"},
                "runs": [finished, {**finished, "dataset": "ArrowHead"}],  # ArrowHead is not asked for again
                "classical": {
                    "GunPoint": {"dtw": {"name": "1-NN DTW", "accuracy": 0.9, "wall_seconds": 1.0}}
                },
            }
        )
    )
    trained = []

    def fake_train(dataset, method, seed, *args, **kwargs):
        if "extra" not in kwargs:  # the untimed warm-up run passes batch limits
            trained.append((dataset, method, seed))
        return {
            **finished,
            "method": method,
            "test_accuracy": 0.75,
            "trainable_percent": 1.0,
            "wall_seconds": 1.0,
        }

    monkeypatch.setattr(benchmark, "train_method", fake_train)
    args = benchmark.parse_args(
        ["--datasets", "GunPoint", "--methods", "lora", "full", "--encoder", "tiny-bert", "--epochs", "1",
         "--skip-overhead", "--resume", str(previous)]
    )  # fmt: skip
    results = benchmark.run_benchmark(args, [], tmp_path / "runs")
    assert trained == [("GunPoint", "full", 0)]
    assert [(r["dataset"], r["method"]) for r in results["runs"]] == [
        ("GunPoint", "lora"),
        ("GunPoint", "full"),
    ]
    assert results["classical"]["GunPoint"]["dtw"]["accuracy"] == 0.9  # not recomputed
    assert results["resumed_from"]["date"].startswith("2026-01-01")
    assert "resumed from a run started 2026-01-01" in benchmark.render_markdown({**results, "runs": []})

    mismatched = benchmark.parse_args(["--epochs", "2", "--resume", str(previous)])
    with pytest.raises(ValueError, match="epochs=1.*same --epochs"):
        benchmark.run_benchmark(mismatched, [], tmp_path / "runs")
