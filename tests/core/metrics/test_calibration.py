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


def test_small_group_is_shrunk_to_the_overall_temperature():
    logits, target = _calibrated(4005, 2, 3)
    margin = logits[:, 1] - logits[:, 0]
    groups = (torch.arange(len(margin)) >= 4000).long()  # group 1: five items
    planted = torch.where(groups == 0, 2.0, 0.3).double()
    shrunk = TemperatureScaler().fit(margin * planted, target, groups, min_group_size=1)
    overall = float(shrunk.temperature)
    assert overall == pytest.approx(2.0, rel=0.1)
    assert float(shrunk.group_temperatures[1]) == pytest.approx(overall, rel=0.15)
    assert float(shrunk.group_temperatures[0]) == pytest.approx(2.0, rel=0.1)  # a large group keeps its own
    free = TemperatureScaler().fit(margin * planted, target, groups, min_group_size=1, prior_precision=0.0)
    assert abs(float(free.group_temperatures[1]) - overall) > 0.3 * overall  # 5 items alone: far from it


def test_temperatures_stay_inside_the_bounds():
    generator = torch.Generator().manual_seed(4)
    noise = torch.randn(400, generator=generator, dtype=torch.float64)
    target = (torch.arange(400) % 2).long()
    collapsed = TemperatureScaler().fit(50.0 * noise, target)  # logits unrelated to the label: T -> infinity
    assert float(collapsed.temperature) == pytest.approx(torch.e**3, rel=1e-3)
    separable = TemperatureScaler(max_log_temperature=2.0).fit(
        (2.0 * target - 1.0) * (1.0 + noise.abs()), target, target, min_group_size=1
    )  # perfectly separable: T -> 0, for the whole set and for each group
    assert float(separable.temperature) == pytest.approx(torch.e**-2, rel=1e-3)
    assert separable.group_temperatures.tolist() == pytest.approx([torch.e**-2] * 2, rel=5e-3)
    with pytest.raises(ValueError, match="max_log_temperature"):
        TemperatureScaler(max_log_temperature=0.0)
    with pytest.raises(ValueError, match="prior_precision"):
        TemperatureScaler().fit(noise, target, target, prior_precision=-1.0)


def test_group_bias_corrects_a_per_group_offset_that_a_temperature_cannot():
    logits, target = _calibrated(12000, 2, 5)
    groups = torch.arange(len(target)) % 2
    shifted = logits.clone()
    shifted[groups == 1, 1] += 1.5  # group 1: class 1 over-predicted by a constant logit offset
    plain = TemperatureScaler().fit(shifted, target, groups)
    biased = TemperatureScaler(group_bias=True).fit(shifted, target, groups)
    offset = biased.group_biases[1, 1] - biased.group_biases[1, 0]
    assert float(offset) == pytest.approx(-1.5, abs=0.15) and float(
        biased.group_temperatures[1]
    ) == pytest.approx(1.0, rel=0.1)
    rows = groups == 1
    ece = {
        name: expected_calibration_error(scaler.transform(shifted, groups)[rows].softmax(-1), target[rows])
        for name, scaler in (("plain", plain), ("biased", biased))
    }
    assert ece["biased"] < 0.5 * ece["plain"]
    copy = TemperatureScaler(group_bias=True)
    copy.load_state_dict(biased.state_dict())  # buffers take the saved shapes
    torch.testing.assert_close(copy.transform(shifted, groups), biased.transform(shifted, groups))
    older = {k: v for k, v in plain.state_dict().items() if k != "group_biases"}  # saved before biases
    legacy = TemperatureScaler()
    legacy.load_state_dict(older)
    torch.testing.assert_close(legacy.transform(shifted, groups), plain.transform(shifted, groups))
    unseen = biased.transform(torch.zeros(1, 2), torch.tensor([5]))  # unknown group: no offset
    torch.testing.assert_close(unseen, torch.zeros(1, 2))
