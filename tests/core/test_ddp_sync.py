"""A 2-process DDP run on CPU (gloo) gives the metrics of one process with the same global batch.

Every monitored and reported metric is synced across processes: the loss is logged with ``sync_dist`` (it
was rank 0's half of the validation data, which picked the best epoch), metric objects gather themselves,
and each process trains on its share of the same global batches (``EpochShuffleSampler`` shards itself;
Lightning's sampler wrapper reshuffled them). Dropout is off here: each process draws its own masks, so a
DDP run with dropout is a different (equally valid) run.

Tolerance: 1e-5 absolute on every logged value (train, validation and test, every step and epoch); the
measured differences are float rounding (about 1e-7): a sum over 2 x 8 samples instead of 16.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verticals.core.cli import run_cli

pytestmark = pytest.mark.domains  # the time-series domain's default config on the tiny encoder

TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _arguments(root: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "run",
        "--config",
        "timeseries/gunpoint_lora",
        "--model.init_args.model_args",
        "{encoder: tiny-bert, num_layers: 2, head_dropout: 0.0}",
        "--model.init_args.adapter.options",
        "{r: 8, lora_alpha: 16, lora_dropout: 0.0}",
        "--data.init_args.batch_size",
        str(batch_size),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_test_batches",
        "3",  # 3 batches of 2 x 8 = 3 batches of 16: the same 48 test series
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_process_ddp_gives_the_metrics_of_one_process(tmp_path):
    ddp = [sys.executable, "-m", "verticals.core.cli"] + _arguments(
        tmp_path / "ddp",
        8,
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    process = subprocess.Popen(
        ddp,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run_cli(_arguments(tmp_path / "one", 16))  # meanwhile, one process with the 16-series global batch
        output, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert "distributed_backend=gloo" in output

    one, ddp_rows = _rows(tmp_path / "one" / "version_0"), _rows(tmp_path / "ddp" / "version_0")
    assert [(row["epoch"], row["step"]) for row in ddp_rows] == [(row["epoch"], row["step"]) for row in one]
    worst: dict[str, float] = {}
    for single, distributed in zip(one, ddp_rows):
        assert single.keys() == distributed.keys()
        for name, value in single.items():
            assert bool(value) == bool(distributed[name]), (name, single, distributed)
            if value:
                worst[name] = max(worst.get(name, 0.0), abs(float(value) - float(distributed[name])))
    print(f"\nDDP (2 x 8) vs one process (16): max |Δ| per logged metric {worst}")
    assert {"val_loss", "val_accuracy", "val_auroc", "test_loss", "test_accuracy", "train_loss_epoch"} <= set(
        worst
    )
    assert max(worst.values()) <= TOLERANCE, worst

    reports = [
        json.loads((tmp_path / name / "version_0" / "report.json").read_text()) for name in ("one", "ddp")
    ]
    assert reports[0]["best_validation"]["value"] == pytest.approx(
        reports[1]["best_validation"]["value"], abs=TOLERANCE
    )
    assert reports[0]["test"] == pytest.approx(reports[1]["test"], abs=TOLERANCE)
    # Samples are counted over both processes (each trains on half of every batch).
    assert reports[0]["timing"]["train_samples"] == reports[1]["timing"]["train_samples"] == 80
