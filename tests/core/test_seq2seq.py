"""Seq2SeqTask on a tiny generic encoder-decoder: training, generation, the text metric from the config, per-group
values and the group report at test, with no domain package."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from torchmetrics.text import CharErrorRate, WordErrorRate

from verticals.core.group_report import GroupReport
from verticals.core.metrics.text import SequenceMetric, TokenErrorRate, token_errors
from verticals.core.tasks import Seq2SeqTask
from verticals.core.tasks.seq2seq import build_text_metric

WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "the", "a", "big"]
PAD, BOS, EOS = 0, 1, 2
FEATURES, FRAMES = 6, 10


class WordTokenizer:
    """White-space words to ids and back, with pad / start / end ids that ``skip_special_tokens`` drops."""

    vocabulary = ["<pad>", "<s>", "</s>", *WORDS]

    def encode(self, text: str) -> list[int]:
        return [self.vocabulary.index(word) for word in text.split()] + [EOS]

    def batch_decode(self, sequences: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [
            " ".join(
                self.vocabulary[i] for i in row.tolist() if not (skip_special_tokens and i in (PAD, BOS, EOS))
            )
            for row in sequences
        ]


class TinyEncoderDecoder(nn.Module):
    """A pooled linear encoder and a one-step recurrent decoder: ``loss`` from ``labels``, greedy ``generate``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "encoder": nn.Linear(FEATURES, width),
                "embed": nn.Embedding(len(WordTokenizer.vocabulary), width),
                "mix": nn.Linear(width, width),
                "out": nn.Linear(width, len(WordTokenizer.vocabulary)),
            }
        )

    def _logits(self, input_features: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        memory = self.backbone["encoder"](input_features.mean(dim=-1))[:, None]
        hidden = torch.tanh(self.backbone["mix"](self.backbone["embed"](previous) + memory))
        return self.backbone["out"](hidden)

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        targets = labels.clamp_min(0)
        previous = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], dim=1)
        logits = self._logits(input_features, previous)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_features: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        tokens = torch.full((len(input_features), 1), BOS, dtype=torch.long)
        for _ in range(max_new_tokens):
            step = self._logits(input_features, tokens[:, -1:])[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, step], dim=1)
        return tokens


class TinySequenceData(L.LightningDataModule):
    """Random inputs with three-word references; groups by sample parity (``groups`` names them)."""

    group_attributes = ["parity"]

    def __init__(
        self, samples: int = 8, batch_size: int = 4, groups: tuple[str, ...] = ("even", "odd")
    ) -> None:
        super().__init__()
        self.tokenizer = WordTokenizer()
        self.batch_size = batch_size
        self.group_names = {"parity": list(groups)}
        rng = random.Random(0)
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for index in range(samples):
            text = " ".join(rng.choice(WORDS) for _ in range(3))
            self.items.append(
                {
                    "input_features": torch.randn(FEATURES, FRAMES, generator=generator),
                    "labels": torch.tensor(self.tokenizer.encode(text)),
                    "text": text,
                    "group": torch.tensor([index % len(groups)]),
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


LORA = {"method": "lora", "targets": ["backbone.encoder", "backbone.mix"], "options": {"r": 2}}


def _task(**kwargs) -> Seq2SeqTask:
    torch.manual_seed(0)
    return Seq2SeqTask(
        model=TinyEncoderDecoder(),
        adapter=LORA,
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


def test_fit_validates_with_the_default_text_metric_and_trains_only_the_adapter(tmp_path):
    task = _task()
    assert task.monitor == "val_token_error_rate" and task.mode == "min"
    assert task.hparams["text_metric"]["class_path"] == "verticals.core.metrics.text.TokenErrorRate"
    trainer = _trainer(tmp_path, limit_train_batches=1)
    data = TinySequenceData()
    trainer.fit(task, data)
    assert task.hparams["group_names"] == ["even", "odd"] and task.hparams["group_attribute"] == "parity"
    for name in (
        "val_token_error_rate",
        "val_char_error_rate",
        "val_exact_match",
        "val_token_error_rate_even",
        "val_token_error_rate_odd",
        "val_token_error_rate_gap",
        "val_token_error_rate_worst_group",
        "train_loss",
    ):
        assert name in trainer.callback_metrics, name
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in task.parameters() if p.requires_grad}
    assert task.trainable_names() and all("lora_" in name for name in task.trainable_names())
    outputs = task.predict_step(data.collate(data.items[:2]), 0)
    assert len(outputs) == 2 and all(isinstance(text, str) for text in outputs)


def test_test_writes_the_group_report_with_cis_that_adds_up_to_the_logged_values(tmp_path):
    task = _task(generate_at_validation=False)
    trainer = _trainer(tmp_path, limit_train_batches=1)
    data = TinySequenceData()
    trainer.fit(task, data)
    assert task.monitor == "val_loss" and "val_token_error_rate" not in trainer.callback_metrics
    trainer.test(task, data)
    report = json.loads((tmp_path / "groups.json").read_text())
    assert report["metrics"] == {"token_error_rate": False, "char_error_rate": False, "exact_match": True}
    groups = report["groupings"]["parity"]["groups"]
    assert list(groups) == ["even", "odd"] and sum(row["count"] for row in groups.values()) == len(data.items)
    for name, row in groups.items():
        entry = row["token_error_rate"]
        assert entry["low"] <= entry["value"] <= entry["high"]
        assert trainer.callback_metrics[f"test_token_error_rate_{name}"].item() == pytest.approx(
            entry["value"]
        )
    assert trainer.callback_metrics["test_token_error_rate"].item() == pytest.approx(
        report["overall"]["token_error_rate"]["value"]
    )
    assert report["groupings"]["parity"]["summary"]["token_error_rate"]["worst_group"] in {"even", "odd"}
    assert "| even |" in (tmp_path / "groups.md").read_text()
    for metric in ("token_error_rate", "char_error_rate", "exact_match"):
        assert (tmp_path / f"groups_{metric}.png").stat().st_size > 0
    callback = next(c for c in trainer.callbacks if isinstance(c, GroupReport))
    assert callback.results.n_bootstrap == 50 and callback.extra is None  # TokenErrorRate adds no files


def test_a_checkpoint_tested_on_data_with_more_groups_reports_all_of_them(tmp_path):
    task = _task(generate_at_validation=False)
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(task, TinySequenceData())
    assert task.hparams["group_names"] == ["even", "odd"]
    wider = TinySequenceData(samples=9, groups=("first", "second", "third"))
    trainer.test(task, wider)
    groups = json.loads((tmp_path / "groups.json").read_text())["groupings"]["parity"]["groups"]
    assert {name: row["count"] for name, row in groups.items()} == {"first": 3, "second": 3, "third": 3}
    assert {"test_token_error_rate_first", "test_token_error_rate_third"} <= set(trainer.callback_metrics)


def test_text_metric_comes_from_the_config_and_sets_the_monitor():
    spec = {"class_path": "verticals.core.metrics.text.TokenErrorRate", "init_args": {"lowercase": True}}
    task = _task(text_metric=spec)
    assert task.hparams["text_metric"] == spec
    assert build_text_metric(spec).lowercase and isinstance(build_text_metric(None), TokenErrorRate)

    class Agreement(TokenErrorRate):
        primary = "exact_match"

    task = _task(text_metric=Agreement())  # an instance: hparams record its class
    assert task.monitor == "val_exact_match" and task.mode == "max"
    assert task.hparams["text_metric"]["class_path"].endswith("Agreement")
    with pytest.raises(TypeError, match="SequenceMetric"):
        build_text_metric({"class_path": "torchmetrics.text.WordErrorRate"})
    with pytest.raises(TypeError, match="class_path"):
        build_text_metric({"init_args": {}})
    with pytest.raises(TypeError, match="text_metric"):
        _task(normalizer="lower")
    with pytest.raises(TypeError, match="primary"):

        class Undeclared(SequenceMetric):
            statistics = ("errors",)

        Undeclared()


def test_token_error_rate_matches_torchmetrics_and_counts_edge_cases():
    rng = random.Random(3)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    hyps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(20)]
    hyps[0] = refs[0]
    metric = TokenErrorRate()
    metric.update(refs[:10], hyps[:10], torch.zeros(10))
    assert metric.last_statistics["exact"][0] == 1 and len(metric.last_statistics["tokens"]) == 10
    metric.update(refs[10:], hyps[10:], torch.ones(10, 1))
    result = metric.compute()
    assert result["token_error_rate"] == pytest.approx(WordErrorRate()(hyps, refs).item(), rel=1e-6)
    assert result["char_error_rate"] == pytest.approx(CharErrorRate()(hyps, refs).item(), rel=1e-6)
    assert result["exact_match"] == pytest.approx(np.mean([r == h for r, h in zip(refs, hyps)]))
    assert metric.arrays()["group"].shape == (20, 1)
    assert token_errors("a b c", "a x c d") == (2, 3, 3, 5)
    assert token_errors("", "two words") == (2, 0, 9, 0)  # insertions over an empty reference are kept
    assert token_errors("two words", "") == (2, 2, 9, 9)
    lower = TokenErrorRate(lowercase=True)
    lower.update(["The  Cat"], ["the cat"])
    assert lower.compute() == {"token_error_rate": 0.0, "char_error_rate": 0.0, "exact_match": 1.0}
    with pytest.raises(ValueError, match="one per sample"):
        TokenErrorRate().update(["a"], ["a", "b"], torch.zeros(1))
