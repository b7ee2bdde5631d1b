"""Subgroup (fairness), uncertainty and generated-text metrics: functional, streaming (torchmetrics), plots.

Functional metrics take numpy arrays or tensors and return floats / pandas tables; ``SubgroupMetrics``
streams inside Lightning on any device and computes the same numbers.
"""

from verticals.core.metrics.bootstrap import bootstrap_ci, bootstrap_indices, percentile_interval
from verticals.core.metrics.calibration import TemperatureScaler, fit_temperature
from verticals.core.metrics.ensembles import (
    adapter_dropout_modules,
    adapter_ensemble_probabilities,
    entropy,
    mc_dropout_probabilities,
    predictive_uncertainty,
)
from verticals.core.metrics.fairness import (
    OPERATING_POINTS,
    auroc,
    confusion_rates,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    group_metrics,
    operating_threshold,
    summarize_groups,
)
from verticals.core.metrics.groups import decode_group_matrix, encode_groups, intersect
from verticals.core.metrics.plots import plot_group_metric, plot_reliability_diagram
from verticals.core.metrics.report import FairnessResults, fairness_report, write_fairness_files
from verticals.core.metrics.streaming import SubgroupMetrics
from verticals.core.metrics.text import SequenceMetric, TokenErrorRate
from verticals.core.metrics.uncertainty import (
    ReliabilityCurve,
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

__all__ = [
    "OPERATING_POINTS",
    "FairnessResults",
    "ReliabilityCurve",
    "SequenceMetric",
    "SubgroupMetrics",
    "TemperatureScaler",
    "TokenErrorRate",
    "adapter_dropout_modules",
    "adapter_ensemble_probabilities",
    "adaptive_calibration_error",
    "aurc",
    "auroc",
    "bootstrap_ci",
    "calibrated_ece_floor",
    "bootstrap_indices",
    "brier_score",
    "confusion_rates",
    "decode_group_matrix",
    "demographic_parity_difference",
    "encode_groups",
    "entropy",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "expected_calibration_error",
    "fairness_report",
    "fit_temperature",
    "group_metrics",
    "intersect",
    "mc_dropout_probabilities",
    "negative_log_likelihood",
    "operating_threshold",
    "percentile_interval",
    "plot_group_metric",
    "plot_reliability_diagram",
    "predictive_uncertainty",
    "reliability_curve",
    "risk_at_coverage",
    "risk_coverage_curve",
    "summarize_groups",
    "uncertainty_metrics",
    "write_fairness_files",
]
