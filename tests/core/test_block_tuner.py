"""The shared base of block-adapter configs and tuners: required targets, sets, regex checks, merge refusal."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from verticals.core.adapters.block_tuner import BlockAdapterConfig, nonlinear_merge_error
from verticals.core.adapters.bottleneck import BottleneckConfig


def test_target_lists_become_sets_and_bad_regexes_are_named() -> None:
    config = BlockAdapterConfig(target_modules=["blocks.0", "blocks.1"], exclude_modules=["blocks.1"])
    config._check_targets("BOTTLENECK")
    assert config.target_modules == {"blocks.0", "blocks.1"} and config.exclude_modules == {"blocks.1"}
    bad = BlockAdapterConfig(target_modules=r"blocks\.([")
    with pytest.raises(ValueError, match=r"`target_modules` 'blocks\\\\.\(\[' is not a valid regex"):
        bad._check_targets("BOTTLENECK")


def test_block_tuners_require_targets_and_refuse_merging() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="`target_modules` is required for bottleneck adapters"):
        get_peft_model(model, BottleneckConfig(target_modules=None))
    adapted = get_peft_model(nn.Sequential(nn.Linear(4, 4)), BottleneckConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="cannot be merged"):
        adapted.merge_and_unload()
    assert adapted(torch.zeros(1, 4)).shape == (1, 4)
    message = nonlinear_merge_error("Toy", "its gate is nonlinear")
    assert message.startswith("Toy adapters cannot be merged: its gate is nonlinear") and "unload()" in message
