"""BitFit as a regime of ``adapt``: only bias terms (plus named ``trainable`` modules) train."""

from __future__ import annotations

import pytest
from torch import nn

from verticals.core import AdapterSpec, adapt, peft_methods


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3, bias=False), nn.Linear(3, 2))


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_bitfit_trains_every_bias_and_nothing_else():
    model = adapt(_model(), AdapterSpec(method="bitfit", targets=None))
    assert "bitfit" in peft_methods()
    assert _trainable(model) == {"0.bias", "1.bias", "3.bias"}


def test_bitfit_on_targets_and_with_a_trained_head():
    model = adapt(_model(), "bitfit", targets=["0"], trainable=["3"])
    assert _trainable(model) == {"0.bias", "3.weight", "3.bias"}


def test_bitfit_without_biases_is_an_error():
    with pytest.raises(ValueError, match="no bias parameters"):
        adapt(_model(), "bitfit", targets=["2"])
    with pytest.raises(ValueError, match="takes no options"):
        adapt(_model(), "bitfit", targets=None, r=4)
