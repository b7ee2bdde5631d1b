"""Temperature scaling recovers planted temperatures, overall and per group."""

from __future__ import annotations

import pytest
import torch

from verticals.core.metrics import TemperatureScaler, expected_calibration_error


def _calibrated(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    target = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    return logits, target


def test_recovers_a_planted_temperature_and_lowers_ece():
    logits, target = _calibrated(20000, 3, 0)
    overconfident = logits * 2.5  # the model's logits are the calibrated ones times T = 2.5
    scaler = TemperatureScaler().fit(overconfident, target)
    assert float(scaler.temperature) == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(overconfident.softmax(-1), target)
    after = expected_calibration_error(scaler.transform(overconfident).softmax(-1), target)
    assert after < 0.3 * before


def test_per_group_temperatures_for_binary_logits():
    logits, target = _calibrated(16000, 2, 1)
    margin = logits[:, 1] - logits[:, 0]  # binary: one positive-class logit
    groups = torch.arange(len(margin)) % 2
    planted = torch.where(groups == 0, 3.0, 0.5).double()
    scaler = TemperatureScaler().fit(margin * planted, target, groups)
    assert scaler.group_temperatures.tolist() == pytest.approx([3.0, 0.5], rel=0.06)
    restored = scaler.transform(margin * planted, groups)
    torch.testing.assert_close(restored, margin.to(restored.dtype), rtol=0.07, atol=0.0)
    unseen = scaler.transform(torch.ones(2), torch.tensor([0, 7]))  # group 7 falls back to the overall T
    assert float(unseen[1]) == pytest.approx(1.0 / float(scaler.temperature))


def test_state_dict_round_trip_and_errors():
    logits, target = _calibrated(500, 3, 2)
    scaler = TemperatureScaler().fit(logits, target, torch.arange(500) % 3)
    copy = TemperatureScaler()
    copy.group_temperatures = torch.empty(3)
    copy.load_state_dict(scaler.state_dict())
    torch.testing.assert_close(
        copy.transform(logits, torch.zeros(500, dtype=torch.long)),
        scaler(logits, torch.zeros(500, dtype=torch.long)),
    )
    with pytest.raises(ValueError, match="without groups"):
        TemperatureScaler().fit(logits, target).transform(logits, torch.zeros(500, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        TemperatureScaler().fit(logits, target[:10])
