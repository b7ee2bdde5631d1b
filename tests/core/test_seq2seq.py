"""Seq2SeqTask on a tiny random Whisper: training, generation, WER/CER per group, penalties, AdaLoRA."""

from __future__ import annotations

import json
import random

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.text import CharErrorRate, WordErrorRate

from verticals.core.tasks import Seq2SeqTask
from verticals.core.tasks.seq2seq import (
    TranscriptErrors,
    group_report_markdown,
    group_wer_report,
    text_normalizer,
    utterance_errors,
)
from verticals.domains.speech.models import whisper_tokenizer

WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "the", "a", "big"]
FRAMES = 100  # 1 s window: 50 encoder positions


class TinySpeechData(L.LightningDataModule):
    """Random log-mels with real Whisper token labels; two conditions, the speech datamodule's batch format."""

    group_attributes = ["condition"]
    group_names = {"condition": ["clear", "noisy"]}
    input_shape = (80, FRAMES)

    def __init__(self, utterances: int = 8, batch_size: int = 4) -> None:
        super().__init__()
        self.tokenizer = whisper_tokenizer()
        self.batch_size = batch_size
        rng = random.Random(0)
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for index in range(utterances):
            text = " ".join(rng.choice(WORDS) for _ in range(3)).capitalize() + "."
            ids = self.tokenizer(text).input_ids[1:]  # HF Whisper prepends the decoder start itself
            self.items.append(
                {
                    "input_features": torch.randn(80, FRAMES, generator=generator),
                    "labels": torch.tensor(ids),
                    "text": text,
                    "group": torch.tensor([index % 2]),
                }
            )

    @staticmethod
    def collate(items: list[dict]) -> dict:
        width = max(len(item["labels"]) for item in items)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, item in enumerate(items):
            labels[row, : len(item["labels"])] = item["labels"]
        return {
            "input_features": torch.stack([item["input_features"] for item in items]),
            "labels": labels,
            "text": [item["text"] for item in items],
            "group": torch.stack([item["group"] for item in items]),
        }

    def _loader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, collate_fn=self.collate)

    train_dataloader = val_dataloader = test_dataloader = _loader


def _task(method: str = "lora", **kwargs) -> Seq2SeqTask:
    options = {"lora": {"r": 2}, "s2lora": {"r": 2, "sparsity_weight": 0.01}, "adalora": {"init_r": 4, "target_r": 2}}
    adapter = {"method": method, "targets": "qv", "options": options.get(method, {})}
    return Seq2SeqTask(
        model="speech.whisper",
        model_args={"source": "tiny-random"},
        adapter=adapter,
        max_new_tokens=4,
        n_bootstrap=50,
        learning_rate=1e-2,
        **kwargs,
    )


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_fit_validates_with_wer_and_trains_only_the_adapter(tmp_path):
    task = _task()
    trainer = _trainer(tmp_path, limit_train_batches=1)
    trainer.fit(task, TinySpeechData())
    assert task.hparams["input_shape"] == [80, FRAMES]
    assert task.hparams["group_names"] == ["clear", "noisy"]
    for name in ("val_wer", "val_cer", "val_wer_clear", "val_wer_noisy", "val_wer_gap", "train_loss"):
        assert name in trainer.callback_metrics, name
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in task.parameters() if p.requires_grad}
    assert all("lora_" in name for name in task.trainable_names())


def test_s2lora_penalty_is_added_to_the_training_loss(tmp_path):
    task = _task("s2lora", input_shape=[80, FRAMES])  # a known shape builds the model without a datamodule
    penalty = task.regularization_loss()
    layers = 2 * 2 + 2 * 4  # q and v: 2 encoder self-attention blocks, 2 decoder self- and cross-attention
    assert penalty is not None and penalty.item() == pytest.approx(0.01 * 2 * layers)  # β · r · layers (λ = 1)
    data = TinySpeechData()
    batch = data.collate(data.items[:2])
    task.train()
    loss = task._step(batch, "train")
    plain = task(batch["input_features"], labels=batch["labels"]).loss
    torch.testing.assert_close(loss, plain + penalty)
    assert _task("lora", input_shape=[80, FRAMES]).regularization_loss() is None


def test_test_writes_wer_per_group_with_cis(tmp_path):
    task = _task(generate_at_validation=False)
    trainer = _trainer(tmp_path, limit_train_batches=1)
    data = TinySpeechData()
    trainer.fit(task, data)
    assert task.monitor == "val_loss" and "val_wer" not in trainer.callback_metrics
    trainer.test(task, data)
    report = json.loads((tmp_path / "wer_by_group.json").read_text())
    assert set(report["groups"]) == {"clear", "noisy"}
    assert sum(row["utterances"] for row in report["groups"].values()) == len(data.items)
    for name, row in report["groups"].items():
        assert row["wer_low"] <= row["wer"] <= row["wer_high"]
        assert trainer.callback_metrics[f"test_wer_{name}"].item() == pytest.approx(row["wer"])
    assert report["summary"]["worst_group"] in {"clear", "noisy"}
    assert "| clear |" in (tmp_path / "wer_by_group.md").read_text()
    rows = (tmp_path / "test_utterance_errors.csv").read_text().splitlines()
    assert rows[0] == "utterance,group,word_errors,words,char_errors,chars" and len(rows) == 1 + len(data.items)
    per_group: dict[str, list[int]] = {}
    for row in rows[1:]:
        _, group, errors, words, *_ = row.split(",")
        per_group.setdefault(group, [0, 0])
        per_group[group] = [per_group[group][0] + int(errors), per_group[group][1] + int(words)]
    for name, (errors, words) in per_group.items():  # the file adds up to the report's WER
        assert errors / words == pytest.approx(report["groups"][name]["wer"])
    assert len(task.test_counts["words"]) == len(data.items)
    transcripts = task.predict_step(data.collate(data.items[:2]), 0)
    assert len(transcripts) == 2 and all(isinstance(t, str) for t in transcripts)


def test_adalora_gets_total_step_and_reallocates_ranks(tmp_path):
    task = _task("adalora")
    trainer = _trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    calls = []
    task.on_train_batch_end = lambda *a, _orig=task.on_train_batch_end: (calls.append(1), _orig(*a))  # type: ignore[method-assign]
    trainer.fit(task, TinySpeechData())
    assert task.adapter_spec.options["total_step"] == 4  # 2 batches x 2 epochs
    assert task.model.peft_config["default"].total_step == 4
    assert len(calls) == 4


def test_error_counts_match_torchmetrics_wer_and_cer():
    rng = random.Random(3)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    hyps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    metric = TranscriptErrors()
    metric.update(refs[:10], hyps[:10], torch.zeros(10))
    metric.update(refs[10:], hyps[10:], torch.ones(10))
    result = metric.compute()
    assert result["wer"] == pytest.approx(WordErrorRate()(hyps, refs).item(), rel=1e-6)
    assert result["cer"] == pytest.approx(CharErrorRate()(hyps, refs).item(), rel=1e-6)


def test_group_wer_is_pooled_errors_over_pooled_words():
    counts = {
        "word_errors": np.array([1, 0, 3, 2]),
        "words": np.array([4, 6, 3, 2]),
        "char_errors": np.array([1, 0, 5, 2]),
        "chars": np.array([10, 20, 12, 8]),
        "groups": np.array([0, 0, 1, 1]),
    }
    report = group_wer_report(counts, ["a", "b"], n_bootstrap=100)
    assert report["groups"]["a"]["wer"] == pytest.approx(1 / 10)
    assert report["groups"]["b"]["wer"] == pytest.approx(5 / 5)
    assert report["overall"]["wer"] == pytest.approx(6 / 15)
    assert report["summary"]["worst_group"] == "b" and report["summary"]["gap"] == pytest.approx(0.9)
    assert "| b | 2 | 1.0000 |" in group_report_markdown(report)


def test_utterance_errors_edge_cases_and_normalizers():
    assert utterance_errors("a b c", "a x c d") == (2, 3, 3, 5)
    assert utterance_errors("", "two words") == (2, 0, 9, 0)  # insertions over an empty reference are kept
    assert utterance_errors("two words", "") == (2, 2, 9, 9)
    assert text_normalizer("whisper_english")("Hello, Mr. Smith!") == "hello mister smith"
    assert text_normalizer("lower")("  Hello   World ") == "hello world"
    with pytest.raises(ValueError, match="normalizer"):
        text_normalizer("klingon")
    with pytest.raises(ValueError, match="one per utterance"):
        TranscriptErrors().update(["a"], ["a", "b"], torch.zeros(1))
