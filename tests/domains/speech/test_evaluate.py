"""Zero-shot scoring per condition (the measurement script behind the reported WERs)."""

from __future__ import annotations

import pytest

from verticals.domains.speech.evaluate import (
    evaluation_set,
    main,
    score_groups,
    transcribe_split,
    zero_shot_scores,
)
from verticals.domains.speech.models import load_whisper


def test_score_groups_is_corpus_wer_after_normalisation():
    scores = score_groups(
        ["The cat sat.", "a dog", "hello", "Extra words here"],
        ["the cat sat", "A dog ran!", "Hello.", "words"],
        [0, 0, 1, 2],
        ["a", "b", "c", "unused"],
    )
    assert [s.condition for s in scores] == ["a", "b", "c"]
    assert scores[0].utterances == 2 and scores[0].wer == pytest.approx(1 / 6)
    assert scores[1].wer == 0.0 and scores[2].wer == 2.0  # two insertions against one reference word


def test_transcripts_and_scores_come_in_group_order(tmp_path):
    model, processor = load_whisper("tiny-random", max_source_positions=300, max_new_tokens=2)
    datamodule = evaluation_set(["noisy", "clear"], 1, max_source_positions=300, cache_dir=str(tmp_path))
    assert datamodule.counts == {"train": 1, "val": 1, "test": 1}
    hypotheses, references, groups = transcribe_split(model, processor.tokenizer, datamodule)
    assert groups == [0, 1] and references[0] == references[1] and len(hypotheses) == 2
    scores = zero_shot_scores(model, processor.tokenizer, datamodule)
    assert [s.condition for s in scores] == ["noisy", "clear"] and all(s.wer >= 0 for s in scores)


def test_command_line_prints_a_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path))
    main(
        [
            "--model",
            "tiny-random",
            "--conditions",
            "clear",
            "--utterances",
            "1",
            "--max-source-positions",
            "300",
            "--max-new-tokens",
            "2",
            "--show",
            "1",
            "--test-set",
            "in_template",
        ]
    )
    out = capsys.readouterr().out
    assert "window=6s" in out and "| clear | 1 |" in out and "audio treatments: ok=1" in out
    assert "test set=in_template" in out


def test_the_evaluation_set_takes_each_test_set(tmp_path):
    for test_set in ("held_out_sentences", "in_template", "held_out_voices"):
        assert evaluation_set(["clear"], 2, cache_dir=str(tmp_path), test_set=test_set).test_set == test_set
    with pytest.raises(ValueError, match="test_set"):
        evaluation_set(["clear"], 2, cache_dir=str(tmp_path), test_set="martian")
