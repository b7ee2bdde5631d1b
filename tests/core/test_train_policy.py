"""A frozen backbone keeps the modes its model asks for while training: Lightning restores module modes
without calling ``train()``, so the task applies the model's own ``train()`` policy each epoch."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from verticals.core.adapters.batchnorm import keep_batchnorm_statistics
from verticals.core.tasks import ClassificationTask
from verticals.core.tasks.base import apply_train_policy, evaluation_mode


class FrozenStatisticsNet(nn.Module):
    """A tiny convolutional classifier whose ``train()`` keeps the backbone's BatchNorm statistics, like the
    domains' EfficientNet and point-transformer wrappers; its dropout was left in eval mode at load time."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU())
        self.dropout = nn.Dropout(0.5).eval()
        self.head = nn.Linear(4, 2)

    def train(self, mode: bool = True) -> FrozenStatisticsNet:
        super().train(mode)
        self.dropout.eval()  # as a pretrained encoder's dropout left off by its loader: train() turns it on
        keep_batchnorm_statistics(self.backbone)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x).mean(-1)))


def test_policy_keeps_what_train_turns_off_and_nothing_else() -> None:
    net = FrozenStatisticsNet()
    net.dropout.train()  # left on by whoever built it: the policy does not switch it off, nor on
    plain_dropout = nn.Dropout(0.1).eval()
    net.extra = plain_dropout
    apply_train_policy(net)
    assert not net.backbone[1].training  # the override's BatchNorm decision
    assert net.dropout.training is False  # turned off by the override
    assert plain_dropout.training is False  # was off, stays off (train() alone would switch it on)
    assert net.head.training


def test_evaluation_mode_restores_each_module() -> None:
    net = FrozenStatisticsNet()
    net.dropout.eval()
    with evaluation_mode(net):
        assert not any(module.training for module in net.modules())
    assert net.head.training and not net.dropout.training and net.backbone[1].training


class _ModeProbe(L.Callback):
    def __init__(self) -> None:
        self.batchnorm_modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.batchnorm_modes += [m.training for m in pl_module.modules() if isinstance(m, nn.BatchNorm1d)]


def test_frozen_batchnorm_statistics_unchanged_by_training(tmp_path) -> None:
    torch.manual_seed(0)
    task = ClassificationTask(
        model=FrozenStatisticsNet(), adapter={"method": "linear_probe", "trainable": ["head"]}, num_classes=2
    )
    x = torch.randn(16, 1, 8) * 3 + 1
    y = torch.randint(0, 2, (16,))
    loader = torch.utils.data.DataLoader(
        [{"x": a, "y": b} for a, b in zip(x, y)], batch_size=4, collate_fn=torch.utils.data.default_collate
    )
    batchnorm = next(m for m in task.modules() if isinstance(m, nn.BatchNorm1d))
    statistics = batchnorm.running_mean.clone(), batchnorm.running_var.clone()
    probe = _ModeProbe()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=loader)
    assert probe.batchnorm_modes and not any(probe.batchnorm_modes)  # every batch, both epochs
    assert torch.equal(batchnorm.running_mean, statistics[0]) and torch.equal(
        batchnorm.running_var, statistics[1]
    )
