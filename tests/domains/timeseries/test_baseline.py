"""The time-series baselines: MiniRocket and 1-NN DTW beside classification runs, the seasonal naive forecast
beside forecasting runs (equal to sktime's NaiveForecaster on every window, its season from the calendar or
the autocorrelation), and every packaged time-series config's ``verticals run`` reporting them at tiny scale."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sktime")

from verticals.core.baseline import BaselineSkipped  # noqa: E402
from verticals.core.cli import packaged_configs, run_cli  # noqa: E402
from verticals.domains.timeseries import baseline  # noqa: E402
from verticals.domains.timeseries.data import ForecastingDataModule, UCRDataModule  # noqa: E402

TINY_MODEL = "{encoder: tiny-bert, num_layers: 2}"
TINY_FORECAST_MODEL = "{encoder: tiny-bert, num_layers: 2, patch_length: 8, stride: 4}"
TIMESERIES = sorted(name for name in packaged_configs() if name.startswith("timeseries/"))


@pytest.mark.parametrize(("period", "horizon"), [(12, 12), (12, 5), (4, 10), (1, 3), (7, 20)])
def test_seasonal_naive_is_sktimes_naive_forecaster(period: int, horizon: int) -> None:
    from sktime.forecasting.naive import NaiveForecaster

    contexts = np.random.default_rng(period).normal(size=(3, 2, 24))
    ours = baseline.seasonal_naive(contexts, horizon, period)
    assert ours.shape == (3, 2, horizon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for window in range(3):
            for channel in range(2):
                forecaster = NaiveForecaster(strategy="last", sp=period).fit(
                    pd.Series(contexts[window, channel])
                )
                expected = forecaster.predict(fh=np.arange(1, horizon + 1)).to_numpy()
                np.testing.assert_allclose(ours[window, channel], expected)
    with pytest.raises(ValueError, match=r"`period` must be in 1..24"):
        baseline.seasonal_naive(contexts, horizon, 25)


def test_seasonal_period_from_the_calendar_or_the_autocorrelation() -> None:
    airline = ForecastingDataModule(series="airline")
    assert baseline.seasonal_period(airline) == (12, "the series' calendar frequency")  # monthly
    lynx = ForecastingDataModule(series="lynx", context_length=24, horizon=6, test_size=12, val_size=6)
    assert baseline.seasonal_period(lynx)[0] == 1  # yearly: no season within a year
    steps = np.arange(120)
    seasonal = np.sin(2 * np.pi * steps / 12) + 0.1 * np.random.default_rng(0).normal(size=120)
    assert baseline._autocorrelation_period(seasonal, 36) == 12
    walk = np.random.default_rng(0).normal(size=120).cumsum()
    assert baseline._autocorrelation_period(walk, 36) == 1  # nothing significant: the last value
    short = ForecastingDataModule(series="airline", context_length=8, horizon=4, test_size=12, val_size=4)
    period, how = baseline.seasonal_period(short)
    assert period == 1 and "longer than the context" in how


def test_minirocket_and_dtw_on_gunpoint() -> None:
    """Fit on GunPoint's 40 training series (its TRAIN less the validation share), all 150 test series:
    0.993 and 0.907 measured (1-NN DTW's published GunPoint error with all 50 is 0.093)."""
    datamodule = UCRDataModule(dataset="GunPoint")
    context = SimpleNamespace(datamodule=datamodule, test_count=150, seed=0)
    truth = datamodule.split_dataset("test").y.numpy()
    assert (baseline.minirocket_predictions(context) == truth).mean() >= 0.95
    assert (baseline.dtw_predictions(context) == truth).mean() >= 0.85


def test_dtw_takes_a_window_or_stands_aside_on_large_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    datamodule = UCRDataModule(dataset="GunPoint")
    context = SimpleNamespace(datamodule=datamodule, test_count=4, seed=0)
    full = 40 * 4 * 150**2
    monkeypatch.setattr(baseline, "DTW_CELL_BUDGET", full / 2)  # over without a window, under with 10%
    assert len(baseline.dtw_predictions(context)) == 4
    monkeypatch.setattr(baseline, "DTW_CELL_BUDGET", full / 10)
    with pytest.raises(BaselineSkipped, match=r"1-NN DTW would fill about .* with a 10% window"):
        baseline.dtw_predictions(context)


@pytest.fixture
def _keep_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))


@pytest.mark.usefixtures("_keep_argv")
@pytest.mark.parametrize("name", TIMESERIES)
def test_every_config_reports_its_baselines(name: str, tmp_path: Path) -> None:
    forecasting = "airline" in name
    cli = run_cli(
        [
            "run", "--config", name,
            "--model.init_args.model_args", TINY_FORECAST_MODEL if forecasting else TINY_MODEL,
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
        ]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "report.json").read_text())
    entries = report["baseline"] if isinstance(report["baseline"], list) else [report["baseline"]]
    expected = ["seasonal naive"] if forecasting else ["MiniRocket", "1-NN DTW"]
    assert [entry["name"] for entry in entries] == expected
    metric = "mse" if forecasting else "accuracy"
    for entry in entries:
        assert "skipped" not in entry, entry
        assert entry["metric"] == metric and entry["samples"] == 16  # one test batch
        assert entry["adapter"] == pytest.approx(report["test"][f"test_{metric}"], rel=1e-5)
        assert entry["difference"]["low"] <= entry["difference"]["estimate"] <= entry["difference"]["high"]
        assert entry["verdict"] in (run / "report.md").read_text()
    if forecasting:
        assert entries[0]["baseline"] > 0.0 and not entries[0]["higher_is_better"]
    else:
        assert all(0.0 <= entry["baseline"] <= 1.0 for entry in entries)
