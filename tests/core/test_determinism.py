"""The same config and seed give identical results run to run on one machine (same thread count): every
logged metric of every step and epoch, and every trained tensor, bit for bit, dropout on. Another seed
gives another run, so the seed reaches the training.

What changes across machines and thread counts is not promised (a different CPU, BLAS or thread count sums
in another order: differences from about 1e-7 that training can grow); quote results over seeds
(``verticals run CONFIG --seeds 0 1 2 3 4``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from verticals.core.cli import run_cli

pytestmark = pytest.mark.domains  # the time-series domain's default config on the tiny encoder


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _fit(root: Path, seed: int) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    run_cli(
        [
            "fit",
            "--config",
            "timeseries/gunpoint_lora",  # lora_dropout 0.1, head dropout 0.1
            "--model.init_args.model_args",
            "{encoder: tiny-bert, num_layers: 2}",
            "--seed_everything",
            str(seed),
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_epochs",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    run = root / "version_0"
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return rows, state


def test_same_config_and_seed_give_identical_runs(tmp_path):
    first_rows, first_state = _fit(tmp_path / "first", 0)
    second_rows, second_state = _fit(tmp_path / "second", 0)
    assert first_rows == second_rows and len(first_rows) == 10
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)

    other_rows, _ = _fit(tmp_path / "other", 1)
    assert [row["val_loss"] for row in other_rows] != [row["val_loss"] for row in first_rows]
