"""TranscriptErrors: WER/CER after Whisper's normalisers, per utterance, and the per-utterance table."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torchmetrics.text import CharErrorRate, WordErrorRate

from verticals.core.group_report import group_report
from verticals.domains.speech.metrics import (
    UTTERANCE_TABLE,
    TranscriptErrors,
    control_share,
    pooled_wer,
    read_utterance_table,
    text_normalizer,
    utterance_errors,
)

WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "the", "a", "big"]


def test_error_counts_match_torchmetrics_wer_and_cer():
    rng = random.Random(3)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    hyps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    metric = TranscriptErrors(normalizer="none")
    metric.update(refs[:10], hyps[:10], torch.zeros(10))
    metric.update(refs[10:], hyps[10:], torch.ones(10))
    result = metric.compute()
    assert result["wer"] == pytest.approx(WordErrorRate()(hyps, refs).item(), rel=1e-6)
    assert result["cer"] == pytest.approx(CharErrorRate()(hyps, refs).item(), rel=1e-6)
    assert metric.arrays()["group"][:, 0].tolist() == [0] * 10 + [1] * 10


def test_the_normaliser_is_applied_before_counting():
    metric = TranscriptErrors()  # whisper_english, as the speech configs
    metric.update(["Hello, Mr. Smith!"], ["hello mister smith"])
    assert metric.compute() == {"wer": 0.0, "cer": 0.0}
    assert metric.last_statistics["words"].tolist() == [3]


def test_group_wer_is_pooled_errors_over_pooled_words():
    counts = {
        "word_errors": np.array([1, 0, 3, 2]),
        "words": np.array([4, 6, 3, 2]),
        "char_errors": np.array([1, 0, 5, 2]),
        "chars": np.array([10, 20, 12, 8]),
    }
    metric = TranscriptErrors(normalizer="none")
    report = group_report(
        counts, metric.group_report_metrics(), {"condition": np.array(["a", "a", "b", "b"])}, n_bootstrap=100
    )
    groups = report.groupings["condition"]["groups"]
    assert groups["a"]["wer"]["value"] == pytest.approx(1 / 10)
    assert groups["b"]["wer"]["value"] == pytest.approx(5 / 5)
    assert report.overall["wer"]["value"] == pytest.approx(6 / 15)
    summary = report.summary["condition"]["wer"]
    assert summary["worst_group"] == "b" and summary["gap"]["value"] == pytest.approx(0.9)
    assert report.metrics == {"wer": False, "cer": False}


def test_utterance_errors_edge_cases_and_normalizers():
    assert utterance_errors("a b c", "a x c d") == (2, 3, 3, 5)
    assert utterance_errors("", "two words") == (2, 0, 9, 0)  # insertions over an empty reference are kept
    assert utterance_errors("two words", "") == (2, 2, 9, 9)
    assert text_normalizer("whisper_english")("Hello, Mr. Smith!") == "hello mister smith"
    assert text_normalizer("lower")("  Hello   World ") == "hello world"
    with pytest.raises(ValueError, match="normalizer"):
        text_normalizer("klingon")
    with pytest.raises(ValueError, match="one per sample"):
        TranscriptErrors().update(["a"], ["a", "b"], torch.zeros(1))


def test_the_extra_report_writes_the_per_utterance_table(tmp_path):
    metric = TranscriptErrors(normalizer="none")
    metric.update(["a b c", "the dog"], ["a x c d", "the dog"], torch.tensor([[0], [1]]))
    arrays = metric.arrays()
    groups = {"condition": np.array(["clear", "noisy"])}
    results = group_report(arrays, metric.group_report_metrics(), groups, n_bootstrap=0)
    rows = metric.extra_group_report(arrays, groups, tmp_path, results)
    lines = (tmp_path / UTTERANCE_TABLE).read_text().splitlines()
    assert lines == [
        "utterance,condition,word_errors,words,char_errors,chars",
        "0,clear,2,3,3,5",
        "1,noisy,0,2,0,7",
    ]
    assert read_utterance_table(tmp_path / UTTERANCE_TABLE) == rows


def test_pooled_wer_and_control_share_on_known_counts() -> None:
    assert pooled_wer(np.asarray([1, 3]), np.asarray([10, 10])) == pytest.approx(0.2)
    assert math.isnan(pooled_wer(np.asarray([]), np.asarray([])))

    def arrays(errors):
        return {
            "condition": np.asarray(["child"] * 4 + ["clear"] * 2),
            "words": np.full(6, 10.0),
            "word_errors": np.asarray(errors, dtype=float),
        }

    zero, method, control = arrays([4, 4, 4, 4, 1, 1]), arrays([2, 2, 2, 2, 0, 0]), arrays([3, 3, 3, 3, 0, 0])
    share = control_share(zero, control, method, "child", n_bootstrap=50)
    assert share["value"] == pytest.approx(0.5) and share["low"] == share["high"] == pytest.approx(0.5)
    assert control_share(zero, control, method, "clear", n_bootstrap=20)["value"] == pytest.approx(1.0)
    assert math.isnan(
        control_share(zero, control, zero, "child", n_bootstrap=10)["value"]
    )  # no gain to explain
