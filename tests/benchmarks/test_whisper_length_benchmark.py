"""The Whisper-length benchmark end to end at tiny scale (tiny random Whisper, a few generated utterances): every
route and method reports WER per condition, the Seq2SeqTrainer rows and the comparison with the 30 s route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.domains


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("whisper_length") as module:
        yield module


def test_tiny_run_reports_each_route(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "results" / "whisper_length.md"
    argv = ["--source", "tiny-random", "--train-per-condition", "2", "--val-per-condition", "1",
            "--test-per-condition", "1", "--epochs", "1", "--throughput-steps", "2", "--batch-size", "2",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]  # fmt: skip
    benchmark.main(argv)
    raw = json.loads(output.with_suffix(".json").read_text())
    assert [(run["route"], run["method"]) for run in raw["runs"]] == [
        (route, method) for route in benchmark.ROUTES for method in ("zero_shot", "lora_qv")
    ]
    for run in raw["runs"]:
        assert set(run["wer"]) == {"clear", "child", "accented", "noisy"}
        assert ("--data.init_args.pad_to utterance" in run["command"]) == run["route"].startswith("utterance")
        margin = {"utterance": "0", "utterance_margin": "100"}.get(run["route"])
        assert (f"--data.init_args.pad_margin {margin}" in run["command"]) == (margin is not None)
    trained = [run for run in raw["runs"] if run["method"] == "lora_qv"]
    assert all(run["train_utterances"] == 8 and run["steady_utterances_per_s"] > 0 for run in trained)
    assert set(raw["hf"]) == {"hf_30s", "hf_10s"} and all(row["steps"] == 2 for row in raw["hf"].values())
    changes = {(e["route"], e["method"], e["reference"]) for e in raw["summary"]["wer_changes"]}
    assert changes == {
        (route, method, reference)
        for route in benchmark.SHORT_ROUTES
        for method in ("zero_shot", "lora_qv")
        for reference in ("window_30s", "window_10s")
    }
    for ratios in raw["summary"]["throughput_ratio"].values():
        assert set(ratios) == {"hf_30s", "hf_10s"}
    markdown = output.read_text()
    assert f"| {benchmark.ROUTE_TITLES['utterance_margin']} | lora_qv |" in markdown and raw["command"] in markdown
