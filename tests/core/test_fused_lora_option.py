"""``fused_lora: true`` in a task's config: the LoRA layers report the fused path, and on CPU nothing changes
(the same losses, weights and outputs as without it); it reaches the model through ``verticals fit``."""

from __future__ import annotations

import logging
import sys

import lightning as L
import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from verticals.core.cli import run_cli
from verticals.core.tasks import ClassificationTask
from verticals.kernels import fused_lora_enabled

pytestmark = pytest.mark.domains  # the timeseries domain's tiny encoder and GunPoint (see conftest.py)
_timeseries = pytest.importorskip(
    "verticals.domains.timeseries.data", reason="the timeseries domain is blocked"
)
UCRDataModule = _timeseries.UCRDataModule

MODEL = "timeseries.patch_transformer"
TINY = {"encoder": "tiny-bert", "num_layers": 2}
LORA = {
    "method": "lora",
    "targets": "attention",
    "trainable": ["head"],
    "options": {"r": 2, "lora_dropout": 0.1},
}


def _lora_layers(task: ClassificationTask) -> list[LoraLinear]:
    return [module for module in task.model.modules() if isinstance(module, LoraLinear)]


def _fit_and_predict(tmp_path, fused: bool) -> tuple[ClassificationTask, list[float], torch.Tensor]:
    """Two training steps (dropout on), then predictions; the per-step losses and the predictions."""
    L.seed_everything(0)
    task = ClassificationTask(model=MODEL, model_args=TINY, adapter=LORA, fused_lora=fused)
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=0,
        limit_predict_batches=2,
        default_root_dir=tmp_path / ("fused" if fused else "plain"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Losses()],
    )
    data = UCRDataModule("GunPoint", batch_size=8, val_fraction=0.0)
    trainer.fit(task, data)
    predictions = torch.cat(trainer.predict(task, data))
    return task, losses, predictions


def test_fused_lora_changes_nothing_on_cpu(tmp_path):
    plain, plain_losses, plain_predictions = _fit_and_predict(tmp_path, fused=False)
    fused, fused_losses, fused_predictions = _fit_and_predict(tmp_path, fused=True)
    layers = _lora_layers(fused)
    assert layers and all(fused_lora_enabled(layer) for layer in layers)
    assert not any(fused_lora_enabled(layer) for layer in _lora_layers(plain))
    assert len(fused_losses) == 2 and fused_losses == plain_losses
    assert torch.equal(fused_predictions, plain_predictions)
    trained = dict(plain.named_parameters())
    for name, parameter in fused.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(parameter, trained[name]), name
    assert "fused_lora" not in fused.hparams  # how to run, not what was trained: never in a checkpoint


def test_fused_lora_on_a_method_without_lora_layers_says_it_does_nothing(caplog):
    bottleneck = {
        "method": "bottleneck",
        "targets": "blocks",
        "trainable": ["head"],
        "options": {"bottleneck_dim": 4},
    }
    with caplog.at_level(logging.WARNING, logger="verticals.core.adapters.fused"):
        ClassificationTask(
            model=MODEL,
            model_args=TINY,
            adapter=bottleneck,
            input_shape=[1, 150],
            num_classes=2,
            fused_lora=True,
        )
    assert any(
        "does nothing for adapter method 'bottleneck'" in record.getMessage() for record in caplog.records
    )


def test_fit_takes_fused_lora_from_the_config(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli = run_cli(
        [
            "fit",
            "timeseries/gunpoint_lora",
            "--model.init_args.model_args",
            "{encoder: tiny-bert, num_layers: 2}",
            "--model.init_args.fused_lora",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    layers = _lora_layers(cli.model)
    assert layers and all(fused_lora_enabled(layer) for layer in layers)
