"""Tasks on the tiny encoder: training, trainable-only checkpoints, resume, and the backbone check."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from verticals.core.registry import build_model, register_model, registered_models
from verticals.core.tasks import ClassificationTask, ForecastingTask

pytestmark = pytest.mark.domains  # the timeseries domain's model and data throughout (see conftest.py)
_timeseries = pytest.importorskip(
    "verticals.domains.timeseries.data", reason="the timeseries domain is blocked"
)
ForecastingDataModule, UCRDataModule = _timeseries.ForecastingDataModule, _timeseries.UCRDataModule

MODEL = "timeseries.patch_transformer"
TINY = {"encoder": "tiny-bert", "num_layers": 2}
LORA = {
    "method": "lora",
    "targets": "attention",
    "trainable": ["patch_embedding", "head"],
    "options": {"r": 2},
}


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _task(**kwargs) -> ClassificationTask:
    return ClassificationTask(model="timeseries.patch_transformer", model_args=TINY, adapter=LORA, **kwargs)


def test_classification_fits_and_shapes_come_from_the_datamodule(tmp_path):
    task = _task()
    trainer = _trainer(tmp_path)
    trainer.fit(task, UCRDataModule("GunPoint", batch_size=8))
    assert task.hparams["num_classes"] == 2 and task.hparams["input_shape"] == [1, 150]
    assert "val_accuracy" in trainer.callback_metrics
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in task.parameters() if p.requires_grad}


def test_checkpoint_holds_only_trained_tensors_and_the_backbone_reference(tmp_path):
    task = _task()
    trainer = _trainer(tmp_path)
    trainer.fit(task, UCRDataModule("GunPoint", batch_size=8))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(task.trainable_names())
    assert checkpoint["verticals"]["backbone"]["source"] == "tiny-bert"
    restored = ClassificationTask.load_from_checkpoint(
        tmp_path / "checkpoints" / "last.ckpt", weights_only=True
    )
    x = torch.randn(3, 1, 150)
    task.eval(), restored.eval()
    torch.testing.assert_close(restored(x), task(x))


def test_resume_continues_where_training_stopped(tmp_path):
    """An interrupted run resumed from last.ckpt ends with the weights of a run that never stopped."""
    data = UCRDataModule("GunPoint", batch_size=8)
    no_dropout = {**LORA, "options": {"r": 2, "lora_dropout": 0.0}}
    model_args = {**TINY, "head_dropout": 0.0}

    def task() -> ClassificationTask:
        return ClassificationTask(model=MODEL, model_args=model_args, adapter=no_dropout)

    L.seed_everything(0)
    straight = task()
    _trainer(tmp_path / "straight", max_epochs=2).fit(straight, data)

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    L.seed_everything(0)
    first = task()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "resumed", max_epochs=2, callbacks=[Crash()]).fit(first, data)
    resumed = task()
    trainer = _trainer(tmp_path / "resumed", max_epochs=2)
    trainer.fit(resumed, data, ckpt_path=tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert trainer.current_epoch == 2
    for name, tensor in straight.state_dict().items():
        if name in set(straight.trainable_names()):
            torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)


def test_checkpoint_from_a_different_backbone_is_refused(tmp_path):
    task = _task()
    _trainer(tmp_path).fit(task, UCRDataModule("GunPoint", batch_size=8))
    other = ClassificationTask(
        model="timeseries.patch_transformer",
        model_args={"encoder": "tiny-bert", "num_layers": 1},
        adapter=LORA,
        num_classes=2,
        input_shape=[1, 150],
    )
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    with pytest.raises(ValueError, match="trained on backbone .*fingerprint"):
        other.on_load_checkpoint(checkpoint)


def test_forecasting_task_fits(tmp_path):
    task = ForecastingTask(
        model="timeseries.patch_transformer",
        model_args={**TINY, "patch_length": 8, "stride": 4},
        adapter=LORA,
    )
    trainer = _trainer(tmp_path)
    data = ForecastingDataModule(
        "airline", context_length=24, horizon=6, test_size=12, val_size=6, batch_size=8
    )
    trainer.fit(task, data)
    assert task.hparams["horizon"] == 6
    assert task(torch.randn(2, 1, 24)).shape == (2, 1, 6)
    assert {"val_mse", "val_mae", "val_smape"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("method", ["linear_probe", "full", "bottleneck", "ln_tuning"])
def test_every_method_trains(tmp_path, method):
    adapter = {
        "linear_probe": {"method": "linear_probe", "targets": None, "trainable": ["patch_embedding", "head"]},
        "full": {"method": "full", "targets": None},
        "bottleneck": {
            "method": "bottleneck",
            "targets": "blocks",
            "trainable": ["head"],
            "options": {"bottleneck_dim": 4},
        },
        "ln_tuning": {
            "method": "ln_tuning",
            "targets": "layernorm",
            "trainable": ["patch_embedding", "head", "embeddings.position_embeddings"],
        },
    }[method]
    task = ClassificationTask(model="timeseries.patch_transformer", model_args=TINY, adapter=adapter)
    trainer = _trainer(tmp_path)
    trainer.fit(task, UCRDataModule("GunPoint", batch_size=8))
    assert torch.isfinite(trainer.callback_metrics["train_loss_epoch"])
    summary = task.parameter_summary()
    assert 0 < summary.trainable <= summary.total


def test_a_ready_module_can_be_adapted(tmp_path):
    from torch import nn

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(150, 16), nn.ReLU(), nn.Linear(16, 2))
    task = ClassificationTask(
        model=backbone, adapter={"method": "lora", "targets": ["1"], "trainable": ["3"]}, num_classes=2
    )
    _trainer(tmp_path).fit(task, UCRDataModule("GunPoint", batch_size=8))
    assert task.hparams["model"] == "Sequential"


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="`num_classes` must be at least 2"):
        _task(num_classes=1)
    with pytest.raises(ValueError, match="`scheduler` must be"):
        _task(scheduler="linear")
    with pytest.raises(ValueError, match="`loss` must be"):
        ForecastingTask(model=MODEL, model_args=TINY, adapter=LORA, loss="huber")
    with pytest.raises(RuntimeError, match="built in configure_model"):
        _ = _task().model
    with pytest.raises(ValueError, match="needs `input_shape`"):
        _task().configure_model()


def test_registry():
    assert "timeseries.patch_transformer" in registered_models()
    with pytest.raises(KeyError, match="Unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(KeyError, match="already registered"):
        register_model(name="timeseries.patch_transformer", builder=lambda **_: None)


def test_checkpoint_keeps_batchnorm_statistics_of_a_full_fine_tune(tmp_path):
    """Running statistics change without gradients: a checkpoint without them would restore the wrong ones."""
    from torch import nn

    def network() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv1d(1, 4, 5), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 146, 2)
        )

    task = ClassificationTask(model=network(), adapter={"method": "full"}, num_classes=2)
    _trainer(tmp_path, limit_val_batches=0).fit(task, UCRDataModule("GunPoint", batch_size=8))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    statistics = {name for name in checkpoint["state_dict"] if "running_" in name or "num_batches" in name}
    assert len(statistics) == 3 and set(checkpoint["state_dict"]) == set(task.trainable_names()) | statistics
    fresh = ClassificationTask(model=network(), adapter={"method": "full"}, num_classes=2)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    trained_mean = next(v for k, v in task.state_dict().items() if k.endswith("running_mean"))
    restored_mean = next(v for k, v in fresh.state_dict().items() if k.endswith("running_mean"))
    assert not torch.equal(restored_mean, torch.zeros(4)) and torch.equal(restored_mean, trained_mean)
