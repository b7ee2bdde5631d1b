"""The baselines a time-series practitioner tries first, beside every time-series run's adapter.

Classification (UCR/UEA archive problems, CSV series): **MiniRocket** (Dempster et al. 2021; sktime's
``MiniRocket`` transform, ``StandardScaler(with_mean=False)`` and ``RidgeClassifierCV`` over
``logspace(-3, 3, 10)``, the recipe of the paper and of sktime's docs), and **1-NN DTW** (sktime's
``KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw")``), the archive's reference baseline for
two decades. Both are fit on the training split (the series the adapter trains on, normalised the same way)
and predict the test split.

Forecasting: the **seasonal naive** forecast, the one sktime's ``NaiveForecaster(strategy="last",
sp=season)`` makes: each test window's forecast repeats the last season of its own context, so it sees
exactly what the model sees. It is computed here with numpy (the tests check it equals sktime's on every
window): sktime fits each window on its own, about 0.1 s apiece. The season comes from the series'
calendar frequency (monthly 12, quarterly 4, weekly 52, daily 7, business daily 5, hourly 24, per-minute
steps per day); without one, from the training period's autocorrelation (the lag with the largest
autocorrelation of the differenced series, when it is significant at 5% with a Bonferroni correction over
the lags tried), else 1 (the last value). A season longer than the context falls back to 1.

Registered at import (``verticals.domains.timeseries`` imports this module).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

from verticals.core.baseline import BaselineContext, BaselineSkipped, register_baseline
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.forecasting import ForecastingTask
from verticals.domains.timeseries.data import (
    BUNDLED_FORECASTING_SERIES,
    CSVClassificationDataModule,
    ForecastingDataModule,
    UCRDataModule,
)

__all__ = [
    "DTW_CELL_BUDGET",
    "dtw_predictions",
    "minirocket_predictions",
    "seasonal_naive",
    "seasonal_naive_predictions",
    "seasonal_period",
]

#: Dynamic-programming cells (train series × test series × length²) 1-NN DTW may fill without a window;
#: beyond it a 10% Sakoe-Chiba window is used, and beyond the budget with the window it is skipped.
DTW_CELL_BUDGET = 5e10
_DTW_WINDOW = 0.1
#: Seasonal periods by pandas offset name.
_PERIODS = {
    "M": 12,
    "MS": 12,
    "ME": 12,
    "SM": 24,
    "Q": 4,
    "QS": 4,
    "QE": 4,
    "W": 52,
    "D": 7,
    "B": 5,
    "H": 24,
    "h": 24,
}
_MINUTES_PER_DAY = 24 * 60


def _series_classification(task: Any, datamodule: Any) -> bool:
    return isinstance(task, ClassificationTask) and isinstance(
        datamodule, (UCRDataModule, CSVClassificationDataModule)
    )


def _series(datamodule: Any, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, C, L], y [n])`` of a split as the model sees it (padded and normalised), the first ``count``."""
    dataset = datamodule.split_dataset(split)
    x, y = dataset.x.numpy().astype(np.float64), dataset.y.numpy()
    return (x, y) if count is None else (x[:count], y[:count])


def minirocket_predictions(context: BaselineContext) -> np.ndarray:
    """MiniRocket + ridge classifier, fit on the training split: class indices of the test samples.

    Args:
        context: the run's baseline context (its datamodule, test count and seed).
    """
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sktime.transformations.panel.rocket import MiniRocket, MiniRocketMultivariate

    x_train, y_train = _series(context.datamodule, "train")
    x_test, _ = _series(context.datamodule, "test", context.test_count)
    if x_train.shape[2] < 9:
        raise BaselineSkipped(f"MiniRocket needs series of length 9 or more, these have {x_train.shape[2]}")
    kind = MiniRocket if x_train.shape[1] == 1 else MiniRocketMultivariate
    classifier = make_pipeline(
        StandardScaler(with_mean=False), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        transform = kind(random_state=context.seed).fit(x_train)
        classifier.fit(np.asarray(transform.transform(x_train)), y_train)
        return np.asarray(classifier.predict(np.asarray(transform.transform(x_test)))).astype(np.int64)


def dtw_predictions(context: BaselineContext) -> np.ndarray:
    """1-NN under dynamic time warping, over the training split: class indices of the test samples.

    Full DTW, or a 10% Sakoe-Chiba window when full DTW would fill more than ``DTW_CELL_BUDGET`` cells;
    skipped when even that is over the budget (a large archive problem: hours on a CPU).

    Args:
        context: the run's baseline context (its datamodule and test count).
    """
    from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

    x_train, y_train = _series(context.datamodule, "train")
    x_test, _ = _series(context.datamodule, "test", context.test_count)
    cells = float(len(x_train)) * len(x_test) * x_train.shape[2] ** 2
    parameters: dict[str, Any] | None = None
    if cells > DTW_CELL_BUDGET:
        cells *= 2 * _DTW_WINDOW
        if cells > DTW_CELL_BUDGET:
            raise BaselineSkipped(
                f"1-NN DTW would fill about {cells:.1e} dynamic-programming cells even with a "
                f"{_DTW_WINDOW:.0%} window ({len(x_train)} training × {len(x_test)} test series of length "
                f"{x_train.shape[2]}): longer than a baseline should take"
            )
        parameters = {"window": _DTW_WINDOW}
    model = KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw", distance_params=parameters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(x_train, y_train)
        return np.asarray(model.predict(x_test)).astype(np.int64)


# -- forecasting ---------------------------------------------------------------------------------------------
def _frequency_period(datamodule: ForecastingDataModule) -> int | None:
    """The season of a bundled series from its calendar frequency; None when it has none (or a CSV)."""
    if datamodule.csv_path is not None or datamodule.series not in BUNDLED_FORECASTING_SERIES:
        return None
    offset = getattr(BUNDLED_FORECASTING_SERIES[datamodule.series]().index, "freq", None)
    if offset is None:
        return None
    name, steps = str(getattr(offset, "rule_code", None) or offset.name).split("-")[0], max(1, int(offset.n))
    if name in ("min", "T"):
        return _MINUTES_PER_DAY // steps if _MINUTES_PER_DAY % steps == 0 else None
    if name in _PERIODS:
        return _PERIODS[name]
    return 1 if name in ("Y", "A", "YS", "AS", "YE") else None


def _autocorrelation_period(values: np.ndarray, longest: int) -> int:
    """The lag (2..``longest``) with the largest autocorrelation of the differenced series, if significant."""
    series = np.diff(np.asarray(values, dtype=np.float64))
    series = series - series.mean()
    denominator = float((series**2).sum())
    longest = min(longest, len(series) // 2)
    if denominator == 0 or longest < 2:
        return 1
    correlations = {
        lag: float((series[lag:] * series[:-lag]).sum()) / denominator for lag in range(2, longest + 1)
    }
    lag = max(correlations, key=lambda key: correlations[key])
    # White noise's autocorrelations are about N(0, 1/n): significant at 5%, Bonferroni over the lags tried.
    threshold = float(stats.norm.ppf(1.0 - 0.025 / len(correlations))) / np.sqrt(len(series))
    return lag if correlations[lag] > threshold else 1


def seasonal_period(datamodule: ForecastingDataModule) -> tuple[int, str]:
    """The seasonal naive forecast's period for a forecasting datamodule and how it was found (see the
    module docstring); at most the context length.

    Args:
        datamodule: the run's forecasting datamodule.
    """
    period = _frequency_period(datamodule)
    how = "the series' calendar frequency"
    if period is None:
        train = datamodule.values[0, : datamodule.split_bounds[0]]  # the training period of the first channel
        period = _autocorrelation_period(train, datamodule.context_length)
        how = "the training period's autocorrelation"
    if period > datamodule.context_length:
        return 1, f"{how} gave {period}, longer than the context: the last value instead"
    return period, how


def seasonal_naive(contexts: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """Seasonal naive forecasts ``[..., horizon]`` of contexts ``[..., L]``: step ``h`` (from 1) repeats the
    context's value ``period - (h - 1) % period`` steps from its end, as sktime's
    ``NaiveForecaster(strategy="last", sp=period)`` does.

    Args:
        contexts: the past of each series, time last.
        horizon: steps to forecast.
        period: the season (1: the last value), at most the context length.
    """
    contexts = np.asarray(contexts, dtype=np.float64)
    if not 1 <= period <= contexts.shape[-1]:
        raise ValueError(f"`period` must be in 1..{contexts.shape[-1]} (the context length), got {period}.")
    steps = np.arange(horizon)
    return contexts[..., contexts.shape[-1] - period + steps % period]


def seasonal_naive_predictions(context: BaselineContext) -> np.ndarray:
    """Each test window's seasonal naive forecast from its own context: ``[n, C, horizon]``.

    Args:
        context: the run's baseline context (its datamodule and test count).
    """
    datamodule = context.datamodule
    period, _ = seasonal_period(datamodule)
    dataset = datamodule.split_dataset("test")
    windows = [dataset[index] for index in range(context.test_count)]
    contexts = np.stack([window["x"].numpy() for window in windows])  # [n, C, L]
    return seasonal_naive(contexts, int(windows[0]["y"].shape[-1]), period)


def _describe_season() -> str:
    return (
        "the forecast of sktime NaiveForecaster(strategy='last', sp=season): each test window repeats the last "
        "season of its own context; the season from the series' frequency or the training period's "
        "autocorrelation"
    )


register_baseline(
    name="MiniRocket",
    description=(
        "sktime MiniRocket features, StandardScaler(with_mean=False) and RidgeClassifierCV(logspace(-3, 3, 10)), "
        "fit on the training split"
    ),
    applies=_series_classification,
    predict=minirocket_predictions,
)
register_baseline(
    name="1-NN DTW",
    description=(
        "sktime KNeighborsTimeSeriesClassifier(n_neighbors=1, distance='dtw') over the training split "
        "(full warping; a 10% window on large problems)"
    ),
    applies=_series_classification,
    predict=dtw_predictions,
)
register_baseline(
    name="seasonal naive",
    description=_describe_season(),
    applies=lambda task, datamodule: (
        isinstance(task, ForecastingTask) and isinstance(datamodule, ForecastingDataModule)
    ),
    predict=seasonal_naive_predictions,
)
