"""Calibration and selective-prediction metrics, against torchmetrics / scikit-learn where they overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from verticals.core.metrics import (
    adaptive_calibration_error,
    aurc,
    brier_score,
    calibrated_ece_floor,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    risk_at_coverage,
    risk_coverage_curve,
    uncertainty_metrics,
)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_binary_ece_equals_torchmetrics(norm):
    rng = np.random.default_rng(0)
    probs = rng.random(700)
    target = (rng.random(700) < probs**1.5).astype(int)
    reference = BinaryCalibrationError(n_bins=10, norm=norm)(torch.tensor(probs), torch.tensor(target))
    assert expected_calibration_error(probs, target, n_bins=10, norm=norm) == pytest.approx(
        float(reference), abs=1e-6
    )


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_multiclass_ece_equals_torchmetrics(norm):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=600)
    target = rng.integers(0, 5, 600)
    metric = MulticlassCalibrationError(num_classes=5, n_bins=15, norm=norm)
    reference = metric(torch.tensor(probs), torch.tensor(target))
    assert expected_calibration_error(probs, target, norm=norm) == pytest.approx(float(reference), abs=1e-6)


def test_brier_and_nll_equal_sklearn():
    rng = np.random.default_rng(2)
    probs = rng.random(300)
    target = rng.integers(0, 2, 300)
    assert brier_score(probs, target) == pytest.approx(brier_score_loss(target, probs), abs=1e-12)
    assert negative_log_likelihood(probs, target) == pytest.approx(log_loss(target, probs), abs=1e-9)
    multi = rng.dirichlet(np.ones(3), size=300)
    labels = rng.integers(0, 3, 300)
    assert negative_log_likelihood(multi, labels) == pytest.approx(log_loss(labels, multi), abs=1e-9)
    assert brier_score(multi, labels) == pytest.approx(np.mean(np.sum((multi - np.eye(3)[labels]) ** 2, 1)))


def test_adaptive_ece_uses_equal_mass_bins_and_is_zero_when_calibrated_per_bin():
    probs = np.repeat([0.2, 0.6], 50)
    target = np.r_[np.zeros(40), np.ones(10), np.zeros(20), np.ones(30)].astype(int)
    curve = reliability_curve(probs, target, n_bins=4, adaptive=True)
    assert curve.count.tolist() == [25, 25, 25, 25]
    # Bins are 25 samples each: the first two hold only p=0.2 samples with 10/50 positives in total.
    assert adaptive_calibration_error(probs, target, n_bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(probs, target, n_bins=10) == pytest.approx(0.0)


def test_risk_coverage_aurc_and_risk_at_coverage_on_a_hand_example():
    probs = np.array([0.95, 0.9, 0.2, 0.6, 0.55])  # confidences 0.95, 0.9, 0.8, 0.6, 0.55
    target = np.array([1, 0, 0, 1, 0])  # errors: no, yes, no, no, yes
    coverage, risk = risk_coverage_curve(probs, target)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert aurc(probs, target) == pytest.approx(np.mean([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5]))
    assert risk_at_coverage(probs, target, 0.6) == pytest.approx(1 / 3)
    assert risk_at_coverage(probs, target, 1.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="coverage"):
        risk_at_coverage(probs, target, 0.0)


def test_uncertainty_metrics_bundle_and_curve_json():
    rng = np.random.default_rng(3)
    probs, target = rng.random(200), rng.integers(0, 2, 200)
    values = uncertainty_metrics(probs, target)
    assert set(values) == {"ece", "adaptive_ece", "mce", "brier", "nll", "aurc", "risk_at_80_coverage"}
    curve = reliability_curve(probs[:3], target[:3], n_bins=5).to_dict()
    assert curve["count"].count(0) >= 2 and None in curve["accuracy"]
    with pytest.raises(ValueError, match="norm"):
        expected_calibration_error(probs, target, norm="l3")


def test_calibrated_ece_floor_is_the_small_sample_bias_of_ece():
    rng = np.random.default_rng(0)
    probs = rng.random(2000)
    small, large = calibrated_ece_floor(probs[:100]), calibrated_ece_floor(probs)
    assert 0 < large < small  # ECE's upward bias shrinks with the sample (about 1 / sqrt(n))
    assert small / large == pytest.approx(np.sqrt(20), rel=0.35)
    # A calibrated model's ECE sits at its floor; an overconfident one's is far above it.
    calibrated = (rng.random(2000) < probs).astype(int)
    assert expected_calibration_error(probs, calibrated) < 2 * large
    sharpened = np.clip((probs - 0.5) * 1.8 + 0.5, 0, 1)
    assert expected_calibration_error(sharpened, calibrated) > 5 * calibrated_ece_floor(sharpened)
    # Multiclass: the top-label floor of the same kind; seeded, so repeatable.
    three = rng.dirichlet(np.ones(3), size=500)
    assert calibrated_ece_floor(three, seed=1) == calibrated_ece_floor(three, seed=1) > 0
    assert np.isnan(calibrated_ece_floor(np.empty(0)))
    with pytest.raises(ValueError, match="n_draws"):
        calibrated_ece_floor(probs, n_draws=0)
