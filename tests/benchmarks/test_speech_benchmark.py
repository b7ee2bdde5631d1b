"""The speech benchmark end to end at tiny scale (tiny random Whisper, one utterance per condition, 1 epoch):
every method on the three test sets, the clear-only control, resuming, and the analysis on known counts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("speech") as module:
        yield module


def _tiny(tmp_path: Path, output: Path) -> list[str]:
    return [
        "--source",
        "tiny-random",
        "--methods",
        "zero_shot",
        "lora_qv",
        "control",
        "--seeds",
        "0",
        "1",
        "--train-per-condition",
        "1",
        "--val-per-condition",
        "1",
        "--test-per-condition",
        "1",
        "--max-source-positions",
        "250",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--bootstrap",
        "20",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--output",
        str(output),
    ]


def test_tiny_run_reports_every_method_and_test_set_and_resumes(
    benchmark, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    output = tmp_path / "results" / "speech.md"
    output.parent.mkdir()
    earlier = {"command": "python benchmarks/speech.py --epochs 2", "settings": {"epochs": 2}}
    earlier["methods"] = {"zero_shot": {"wer": {"clear": 0.2}}, "lora_qv": {"wer": {"clear": 0.02}}}
    output.with_suffix(".json").write_text(json.dumps(earlier))
    results = benchmark.main(_tiny(tmp_path, output))
    saved = json.loads(output.with_suffix(".json").read_text())
    runs = {(r["method"], r["seed"]) for r in saved["runs"]}
    assert runs == {("zero_shot", 0), ("lora_qv", 0), ("lora_qv", 1), ("control", 0), ("control", 1)}
    conditions = ["clear", "child", "accented", "noisy"]
    for run in saved["runs"]:
        assert set(run["test_sets"]) == {"held_out_sentences", "in_template", "held_out_voices"}
        for table in run["test_sets"].values():
            assert table["condition"] == conditions  # every condition by its own name, control included
    control = next(r for r in saved["runs"] if r["method"] == "control")
    lora = next(r for r in saved["runs"] if r["method"] == "lora_qv")
    assert control["steps"] == lora["steps"] == 2  # 4 utterances, batches of 2: the same steps
    assert control["data"]["train_conditions"] == ["clear"] and lora["data"]["train_conditions"] == conditions
    assert lora["data"]["shared_sentences"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    summary = saved["summary"]
    assert list(summary) == ["held_out_sentences", "in_template", "held_out_voices"]
    cell = summary["held_out_voices"]["methods"]["lora_qv"]["child"]
    assert cell["seeds"] == 2 and cell["seed_low"] <= cell["wer"] <= cell["seed_high"]
    assert {"value", "low", "high"} <= set(cell["change"]) and "control_share" in cell
    assert "control_share" not in summary["held_out_voices"]["methods"]["control"]["child"]
    assert saved["before"]["wer"]["lora_qv"] == {"clear": 0.02}
    assert set(saved["methods"]) == {"zero_shot", "lora_qv", "control"}  # the chart's block
    text = output.read_text()
    for needle in (
        "## held_out_voices",
        "| control |",
        "Before (the table this replaces",
        "lora_qv clear 0.020",
    ):
        assert needle in text, needle
    benchmark.main(["--render", str(output.with_suffix(".json")), "--output", str(tmp_path / "again.md")])
    from charts import strip_chart_links  # benchmarks/ is on sys.path once a script is loaded

    assert strip_chart_links((tmp_path / "again.md").read_text()) == strip_chart_links(text)

    def no_more_runs(*args, **kwargs):
        raise AssertionError("a recorded run ran again")

    monkeypatch.setattr(benchmark, "run_method", no_more_runs)
    again = benchmark.main([*_tiny(tmp_path, output), "--resume"])
    assert len(again["runs"]) == len(results["runs"]) and again["before"] == results["before"]


def _arrays(conditions, words, errors):
    return {
        "condition": np.asarray(conditions),
        "words": np.asarray(words, dtype=float),
        "word_errors": np.asarray(errors, dtype=float),
    }


def test_change_and_control_share_on_known_counts(benchmark) -> None:
    conditions, words = ["child"] * 4 + ["clear"] * 2, [10] * 6
    zero = _arrays(conditions, words, [4, 4, 4, 4, 1, 1])
    method = _arrays(conditions, words, [2, 2, 2, 2, 0, 0])
    control = _arrays(conditions, words, [3, 3, 3, 3, 0, 0])
    change = benchmark.paired_change(zero, method, "child", n_bootstrap=50)
    assert change["value"] == pytest.approx(0.2 - 0.4) and change["low"] == change["high"] == change["value"]
    share = benchmark.control_share(zero, control, method, "child", n_bootstrap=50)
    assert share["value"] == pytest.approx(0.5) and share["low"] == share["high"] == pytest.approx(0.5)
    none = benchmark.control_share(zero, control, zero, "child", n_bootstrap=10)
    assert math.isnan(none["value"])  # no gain to explain
    with pytest.raises(ValueError, match="'words' arrays differ"):
        benchmark.paired_change(zero, _arrays(conditions, [9] * 6, [0] * 6), "child", n_bootstrap=5)


def test_the_control_trains_on_clear_speech_with_the_same_number_of_utterances(benchmark) -> None:
    args = benchmark.parse_args(["--train-per-condition", "7"])
    assert args.methods == list(benchmark.DEFAULT_METHODS) and args.seeds == [0, 1, 2]
    control = benchmark.data_arguments(args, "control", "in_template")
    assert control[control.index("--data.init_args.utterances_per_condition") + 1] == "28"
    assert control[control.index("--data.init_args.train_conditions") + 1] == "[clear]"
    assert benchmark.config_name("control") == "speech/whisper_lora_qv"
    assert benchmark.packaged_data()["max_epochs"] == benchmark.packaged_data("s2lora")["max_epochs"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--resume"])  # resuming needs the runs directory


def _cell(cut, change_high, share_high=None):
    cell = {"relative_cut": cut, "change": {"value": -cut, "low": -cut - 0.1, "high": change_high}}
    cell["verdict"] = "better than zero-shot" if change_high < 0 else "no difference shown"
    if share_high is not None:
        cell["control_share"] = {"value": share_high - 0.2, "low": share_high - 0.4, "high": share_high}
    return cell


def test_the_claim_is_judged_per_condition_from_the_table(benchmark) -> None:
    def summary(child, noisy):
        return {
            test_set: {
                "conditions": ["clear", "child", "noisy"],
                "methods": {"lora_qv": {"child": c, "noisy": n}},
            }
            for test_set, c, n in zip(("held_out_sentences", "held_out_voices"), child, noisy)
        }

    lines = benchmark.judge(
        summary(
            [_cell(0.5, -0.1, 0.6), _cell(0.4, -0.1, 0.5)], [_cell(0.5, -0.1, 1.2), _cell(0.1, 0.05, 1.2)]
        )
    )
    assert lines[0].startswith("- **child: reproduced**") and lines[1].startswith("- **noisy: partly**")
    lines = benchmark.judge(summary([_cell(0.5, -0.1), _cell(0.5, -0.1)], [_cell(0.0, 0.1), _cell(0.0, 0.1)]))
    assert "reproduced against zero-shot (no control run yet)" in lines[0]
    assert lines[1].startswith("- **noisy: not reproduced**")
