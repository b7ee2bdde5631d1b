"""Seq2SeqTask on a tiny random Whisper with the speech configs' text metric: WER per group and the reports."""

from __future__ import annotations

import json
import random

import lightning as L
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from verticals.core.tasks import Seq2SeqTask
from verticals.domains.speech.metrics import UTTERANCE_TABLE
from verticals.domains.speech.models import whisper_tokenizer

WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "the", "a", "big"]
FRAMES = 100  # 1 s window: 50 encoder positions
TRANSCRIPT_ERRORS = {
    "class_path": "verticals.domains.speech.metrics.TranscriptErrors",
    "init_args": {"normalizer": "whisper_english"},
}


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
        return {
            "input_features": torch.stack([item["input_features"] for item in items]),
            "labels": pad_sequence([item["labels"] for item in items], batch_first=True, padding_value=-100),
            "text": [item["text"] for item in items],
            "group": torch.stack([item["group"] for item in items]),
        }

    def _loader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, collate_fn=self.collate)

    train_dataloader = val_dataloader = test_dataloader = _loader


def _task(**kwargs) -> Seq2SeqTask:
    return Seq2SeqTask(
        model="speech.whisper",
        model_args={"source": "tiny-random"},
        adapter={"method": "lora", "targets": "qv", "options": {"r": 2}},
        max_new_tokens=4,
        n_bootstrap=50,
        learning_rate=1e-2,
        text_metric=TRANSCRIPT_ERRORS,
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


def test_fit_validates_with_wer_per_condition(tmp_path, caplog):
    task = _task()
    assert task.monitor == "val_wer" and task.mode == "min"
    trainer = _trainer(tmp_path, limit_train_batches=1)
    trainer.fit(task, TinySpeechData())
    both = [r for r in caplog.records if "seem to have been set" in r.getMessage()]
    assert not both, both[0].getMessage()  # decoding every validation batch: no max_length warning
    assert task.hparams["input_shape"] == [80, FRAMES]
    assert task.hparams["group_names"] == ["clear", "noisy"]
    for name in ("val_wer", "val_cer", "val_wer_clear", "val_wer_noisy", "val_wer_gap", "train_loss"):
        assert name in trainer.callback_metrics, name


def test_test_writes_wer_per_group_with_cis_and_the_per_utterance_table(tmp_path):
    task = _task(generate_at_validation=False)
    trainer = _trainer(tmp_path, limit_train_batches=1)
    data = TinySpeechData()
    trainer.fit(task, data)
    trainer.test(task, data)
    report = json.loads((tmp_path / "groups.json").read_text())
    groups = report["groupings"]["condition"]["groups"]
    assert set(groups) == {"clear", "noisy"} and sum(row["count"] for row in groups.values()) == len(
        data.items
    )
    for name, row in groups.items():
        assert row["wer"]["low"] <= row["wer"]["value"] <= row["wer"]["high"]
        assert trainer.callback_metrics[f"test_wer_{name}"].item() == pytest.approx(row["wer"]["value"])
    assert report["groupings"]["condition"]["summary"]["wer"]["worst_group"] in {"clear", "noisy"}
    assert "| clear |" in (tmp_path / "groups.md").read_text()
    assert (tmp_path / "groups_wer.png").is_file() and (tmp_path / "groups_cer.png").is_file()
    rows = (tmp_path / UTTERANCE_TABLE).read_text().splitlines()
    assert rows[0] == "utterance,condition,word_errors,words,char_errors,chars" and len(rows) == 1 + len(
        data.items
    )
    per_group: dict[str, list[int]] = {}
    for row in rows[1:]:
        _, group, errors, words, *_ = row.split(",")
        per_group.setdefault(group, [0, 0])
        per_group[group] = [per_group[group][0] + int(errors), per_group[group][1] + int(words)]
    for name, (errors, words) in per_group.items():  # the table adds up to the report's WER
        assert errors / words == pytest.approx(groups[name]["wer"]["value"])
