"""Group reports follow the data: a checkpoint trained on one condition and tested on three reports all
three by their own names (metrics, ``groups.json``, the per-utterance table), never the checkpoint's."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
from torch.utils.data import DataLoader

from verticals.core.tasks import Seq2SeqTask
from verticals.domains.speech.data import SyntheticSpeechDataModule
from verticals.domains.speech.metrics import UTTERANCE_TABLE

TRANSCRIPT_ERRORS = {
    "class_path": "verticals.domains.speech.metrics.TranscriptErrors",
    "init_args": {"normalizer": "whisper_english"},
}


def _data(tmp_path, conditions) -> SyntheticSpeechDataModule:
    return SyntheticSpeechDataModule(
        conditions=conditions,
        utterances_per_condition=2,
        val_utterances_per_condition=1,
        test_utterances_per_condition=1,
        cache_dir=str(tmp_path / "cache"),
        batch_size=2,
        max_source_positions=300,
    )


def _trainer(root, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1,
        default_root_dir=root,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**options, **kwargs})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Whisper + LoRA fitted one step on the ``clear`` condition only."""
    root = tmp_path_factory.mktemp("clear_only")
    task = Seq2SeqTask(
        model="speech.whisper",
        model_args={"source": "tiny-random"},
        adapter={"method": "lora", "targets": "qv", "options": {"r": 2}},
        max_new_tokens=3,
        n_bootstrap=20,
        generate_at_validation=False,
        text_metric=TRANSCRIPT_ERRORS,
    )
    trainer = _trainer(root / "fit", limit_train_batches=1, limit_val_batches=1)
    trainer.fit(task, _data(root, ["clear"]))
    assert task.hparams["group_names"] == ["clear"]
    return root, trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path


def test_checkpoint_tested_on_more_conditions_reports_each_by_name(checkpoint):
    root, path = checkpoint
    conditions = ["child", "clear", "noisy"]  # another order: codes differ from the checkpoint's
    task = Seq2SeqTask.load_from_checkpoint(path)
    assert task.hparams["group_names"] == ["clear"]
    out = root / "test3"
    trainer = _trainer(out)
    trainer.test(task, _data(root, conditions))
    for name in conditions:
        assert f"test_wer_{name}" in trainer.callback_metrics, name
    assert "test_wer_gap" in trainer.callback_metrics
    report = json.loads((out / "groups.json").read_text())
    grouping = report["groupings"]["condition"]
    assert list(grouping["groups"]) == conditions
    assert all(row["count"] == 1 for row in grouping["groups"].values())
    with (out / UTTERANCE_TABLE).open() as handle:
        labels = [row["condition"] for row in csv.DictReader(handle)]
    assert labels == conditions  # the test loader's order: one utterance per condition


def test_groups_the_task_cannot_name_are_refused(checkpoint):
    """Without a datamodule naming the groups, codes beyond the checkpoint's names are an error."""
    root, path = checkpoint
    task = Seq2SeqTask.load_from_checkpoint(path)
    data = _data(root, ["clear", "child", "noisy"])
    data.setup("test")
    loader = DataLoader(data.dataset("test"), batch_size=3, collate_fn=data.collate_fn("test"))
    task.tokenizer = data.tokenizer
    known_only = r"group code\(s\) \[1, 2\] but the task knows only the groups \['clear'\]"
    with pytest.raises(ValueError, match=known_only):
        _trainer(root / "bare").test(task, dataloaders=loader)
