"""A frozen backbone's BatchNorms keep their pretrained statistics; BatchNorms an adapter added train."""

from __future__ import annotations

from torch import nn

import verticals.core.adapters.bottleneck  # noqa: F401  (registers the "bottleneck_" prefix with peft)
from verticals.core.adapters.batchnorm import keep_batchnorm_statistics


def test_pretrained_batchnorms_stay_in_eval_and_adapter_batchnorms_train() -> None:
    model = nn.Module()
    model.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.block = nn.Module()
    model.block.bottleneck_norm = nn.ModuleDict({"default": nn.BatchNorm1d(4)})  # added by an adapter
    model.head = nn.Module()
    model.head.modules_to_save = nn.ModuleDict({"default": nn.BatchNorm1d(4)})  # a trained copy of a head
    model.train()
    keep_batchnorm_statistics(model)
    assert not model.stem[1].training
    assert model.block.bottleneck_norm["default"].training
    assert model.head.modules_to_save["default"].training
