"""The speech benchmark script end to end at tiny scale (tiny random Whisper, a few utterances, 1 epoch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from verticals.core.metrics import bootstrap_indices, percentile_interval


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
    per_utterance = saved["methods"]["s2lora"]["utterances"]
    assert (
        per_utterance["condition"] == ["clear", "child", "accented", "noisy"]
        and len(per_utterance["words"]) == 4
    )
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


def test_paired_ratio_of_shifted_wer_with_a_bootstrap_ci(benchmark) -> None:
    conditions = ["clear"] * 3 + ["child"] * 3 + ["noisy"] * 3
    words = [5] * 9
    lora = {"condition": conditions, "words": words, "word_errors": [0, 1, 0, 2, 2, 2, 1, 1, 1]}
    half = {"condition": conditions, "words": words, "word_errors": [0, 0, 0, 1, 1, 1, 0, 1, 0]}
    result = benchmark.paired_ratio(half, lora, n_bootstrap=200)
    # shifted WER: lora (6/15 + 3/15) / 2 = 0.3, half (3/15 + 1/15) / 2 = 2/15
    assert result["ratio"] == pytest.approx((2 / 15) / 0.3)
    assert result["low"] <= result["ratio"] <= result["high"]
    same = benchmark.paired_ratio(lora, lora, n_bootstrap=50)
    assert same == {"ratio": 1.0, "low": 1.0, "high": 1.0}  # paired: the same draw for both sides
    with pytest.raises(ValueError, match="'words' arrays differ: a paired bootstrap needs the same samples"):
        benchmark.paired_ratio(half, {**lora, "words": [4] * 9}, n_bootstrap=10)
    methods = {
        "s2lora": {"utterances": half},
        "lora_qv": {"utterances": lora},
        "zero_shot": {"utterances": None},
    }
    assert set(benchmark.paired_comparisons(methods, 20)) == {"s2lora_over_lora_qv"}


def _paired_ratio_before_the_core(benchmark, numerator, denominator, n_bootstrap, seed=0):
    """``paired_ratio`` as the benchmark had it before the paired bootstrap moved to ``verticals.core.seeds``."""
    conditions = np.asarray(numerator["condition"])
    words = np.asarray(numerator["words"])
    top, bottom = np.asarray(numerator["word_errors"]), np.asarray(denominator["word_errors"])
    shifted = benchmark.shifted_wer_of_counts
    value = shifted(top, words, conditions) / shifted(bottom, words, conditions)
    draws = [
        shifted(top[i], words[i], conditions[i]) / shifted(bottom[i], words[i], conditions[i])
        for i in bootstrap_indices(len(words), max(n_bootstrap, 1), seed=seed, strata=conditions)
    ]
    low, high = percentile_interval(np.asarray(draws))
    return {"ratio": value, "low": low, "high": high}


@pytest.mark.parametrize("n_bootstrap, seed", [(0, 0), (1, 3), (500, 0), (500, 11)])
def test_paired_ratio_is_unchanged_by_the_move_to_the_core(benchmark, n_bootstrap, seed) -> None:
    rng = np.random.default_rng(seed)
    conditions = list(rng.choice(["clear", "child", "noisy", "fast"], 60))
    words = [int(w) for w in rng.integers(3, 30, 60)]
    one = {
        "condition": conditions,
        "words": words,
        "word_errors": [int(rng.integers(0, w // 2 + 1)) for w in words],
    }
    two = {
        "condition": conditions,
        "words": words,
        "word_errors": [int(rng.integers(0, w // 3 + 1)) for w in words],
    }
    assert benchmark.paired_ratio(two, one, n_bootstrap, seed) == _paired_ratio_before_the_core(
        benchmark, two, one, n_bootstrap, seed
    )
