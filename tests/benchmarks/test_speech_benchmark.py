"""The speech benchmark script end to end at tiny scale (tiny random Whisper, a few utterances, 1 epoch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("speech") as module:
        yield module


def test_tiny_run_writes_markdown_and_json(benchmark, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    output = tmp_path / "results" / "speech.md"
    argv = [
        "--source",
        "tiny-random",
        "--methods",
        "zero_shot",
        "s2lora",
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
        "10",
        "--merge-batches",
        "1",
        "--timing-repeats",
        "1",
        "--throughput-steps",
        "2",
        "--throughput-repeats",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--output",
        str(output),
    ]
    results = benchmark.main(argv)
    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["methods"].keys() == {"zero_shot", "s2lora"}
    assert set(saved["methods"]["s2lora"]["wer"]) == {"clear", "child", "accented", "noisy"}
    assert (
        saved["methods"]["s2lora"]["adapter_bytes"] > 0
        and saved["methods"]["zero_shot"]["adapter_bytes"] == 0
    )
    merge = saved["merge"]["s2lora"]
    assert merge["equal_transcripts"] == merge["utterances"] == 2  # one test batch of two
    throughput = saved["throughput"]
    assert throughput["verticals"]["steps"] == throughput["seq2seq_trainer"]["steps"] == 2
    assert throughput["verticals"]["utterances"] == throughput["seq2seq_trainer"]["utterances"] == 4
    for route in ("verticals", "seq2seq_trainer"):  # steady state: step 2 only, so below the whole window
        assert 0 < throughput[route]["steady_utterances_per_s"] < float("inf")
    assert results["throughput"]["ratio"] > 0 and results["throughput"]["ratio_whole_window"] > 0
    benchmark.main(["--render", str(output.with_suffix(".json")), "--output", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == output.read_text()
    text = output.read_text()
    assert "python benchmarks/speech.py" in text and "| s2lora |" in text and "Seq2SeqTrainer" in text
