"""The helpers every benchmark script shares (``benchmarks/_common.py``): the timed window and throughput."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader


@pytest.fixture(scope="module")
def common(load_script):
    with load_script("_common") as module:
        yield module


def test_steady_throughput_leaves_out_the_first_step(common):
    # steps end at 10 s (warm-up), 11 s, 13 s: 2 later steps of 4 and 2 samples in 3 s
    assert common.steady_throughput([10.0, 11.0, 13.0], [8, 4, 2]) == pytest.approx(6 / 3)
    assert math.isnan(common.steady_throughput([10.0], [8]))


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_train_window_counts_samples_steps_and_checkpoint_time(common, tmp_path):
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(10)]
    window = common.TrainWindow()
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        callbacks=[window],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Regression(), DataLoader(data, batch_size=4))
    assert window.samples == 20 and window.step_samples == [4, 4, 2, 4, 4, 2]
    assert window.checkpoint_saves >= 1 and 0 < window.seconds <= window.elapsed
    assert window.steady_samples_per_second > 0
    assert common.find_callback(trainer, common.TrainWindow) is window
    assert "save_checkpoint" not in vars(trainer)  # the timed wrapper is removed after the window
    assert common.callback_class_path(common.TrainWindow).endswith("TrainWindow")


def test_machine_line_reads_the_machine_record(common):
    line = common.machine_line(common.machine(["torch"]))
    assert "cores" in line and "torch" in line and "load average" in line


def test_alternate_runs_in_abba_order(common):
    calls, seen = [], []

    def runner(name):
        return lambda repeat: calls.append((repeat, name)) or f"{name}{repeat}"

    results = common.alternate(
        {"a": runner("a"), "b": runner("b")}, 3, on_result=lambda name, repeat, result: seen.append(result)
    )
    assert calls == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert results == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]} and seen == [
        "a0",
        "b0",
        "b1",
        "a1",
        "a2",
        "b2",
    ]


def test_median_step_seconds_is_the_middle_gap_between_step_ends(common):
    window = common.TrainWindow()
    window.step_ends = [0.0, 1.0, 1.5, 4.5, 5.0]  # gaps 1, 0.5, 3, 0.5
    assert common.median_step_seconds(window) == 1.0
    window.step_ends = [2.0]
    assert math.isnan(common.median_step_seconds(window)) and math.isnan(common.median_step_seconds(None))


def test_paired_verdict_reads_the_interval(common):
    assert common.paired_verdict({"low": 0.01, "high": 0.03}, "A better", "B better") == "A better"
    assert common.paired_verdict({"low": -0.03, "high": -0.01}, "A better", "B better") == "B better"
    assert common.paired_verdict({"low": -0.01, "high": 0.01}, "A", "B") == "no difference shown"
    assert common.paired_verdict({"low": math.nan, "high": math.nan}, "A", "B") == "too few seeds"


def test_tuning_table_bolds_each_methods_best_rate_and_figure_links_are_relative(common):
    lines = common.tuning_table({"lora": {"0.001": 0.8, "0.003": 0.9}, "full": {"0.0002": 0.7}}, "## Rates")
    assert lines[1] == "## Rates" and lines[3] == "| method | 0.0002 | 0.001 | 0.003 |"
    assert lines[5] == "| lora |  | 0.800 | **0.900** |" and lines[6] == "| full | **0.700** |  |  |"
    assert common.tuning_table({}, "## Rates") == []
    links = common.figure_links(["/x/results/pointcloud/a.png", "/x/results/pointcloud/b.png"])
    assert links == ["![a](pointcloud/a.png)", "![b](pointcloud/b.png)", ""]
