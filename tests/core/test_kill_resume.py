"""``verticals fit`` killed (SIGKILL, a real subprocess) and resumed with ``--ckpt_path last`` ends bit-equal
to a run that was never interrupted, dropout on, on CPU.

One run is killed three times, at deterministic points (``resume_probes.KillAt``), and resumed after each:

1. mid-epoch (after optimizer step 4, inside epoch 1): the resume restarts from ``last.ckpt``, written at the
   start of epoch 1, so epoch 1's first steps are redone; the batches (the sampler's order depends only on
   seed and epoch) and the dropout masks (the random-number state is in the checkpoint) are the same, and
   the rows the killed process logged after the checkpoint are dropped from ``metrics.csv`` and logged again;
2. right after ``last.ckpt`` is written at the start of an epoch that follows an improving epoch;
3. right after ``last.ckpt`` is written at the start of an epoch that follows a non-improving one (the
   monitor is ``val_accuracy``, which ties on the 10 validation series).

The last process resumes with ``verticals run`` and finishes. Its ``metrics.csv`` (every row, every column),
``last.ckpt`` and ``best.ckpt`` tensors, exported adapter, test metrics and sample count must equal the
uninterrupted run's exactly. The uninterrupted run is started in the background first.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.domains  # the time-series domain's default config on the tiny encoder

HERE = Path(__file__).resolve().parent
EPOCHS = 6  # GunPoint: 40 training series, batch 16 -> 3 optimizer steps per epoch


def _command(subcommand: str, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "verticals.core.cli",
        subcommand,
        "--config",
        "timeseries/gunpoint_lora",  # lora_dropout 0.1 and head dropout 0.1: dropout is on
        "--model.init_args.model_args",
        "{encoder: tiny-bert, num_layers: 2}",
        "--model.init_args.monitor",
        "val_accuracy",
        "--model.init_args.monitor_mode",
        "max",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.limit_test_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


def _kill_at(**options: object) -> list[str]:
    arguments = ["--trainer.callbacks+", "resume_probes.KillAt"]
    for name, value in options.items():
        arguments += [f"--trainer.callbacks.init_args.{name}", str(value)]
    return arguments


def _environment() -> dict[str, str]:
    paths = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _largest_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[name].double() - second[name].double()).abs().max().item() for name in first)


def test_killed_fit_resumes_bit_equal_to_an_uninterrupted_run(tmp_path):
    environment = _environment()
    with (tmp_path / "reference.log").open("w") as log:
        reference = subprocess.Popen(
            _command("run", tmp_path / "reference", *_kill_at()),
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        chain, run = tmp_path / "chain", tmp_path / "chain" / "version_0"
        kills = [
            {"at_step": 4},
            {"after_last_checkpoint": "improving", "min_epoch": 2},
            {"after_last_checkpoint": "non_improving", "min_epoch": 4},
        ]
        stopped = []
        for index, kill in enumerate(kills):
            record = tmp_path / f"kill_{index}.json"
            resume = ["--ckpt_path", "last"] if index else []
            result = subprocess.run(
                _command("fit", chain, *_kill_at(**kill, record=record), *resume),
                env=environment,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
            stopped.append(json.loads(record.read_text()))
            if index:
                assert f"verticals: resuming {run}" in result.stderr
            lock = json.loads((run / "run.lock").read_text())  # left behind by the killed process: stale
            assert lock["pid"] != os.getpid()
        final = subprocess.run(
            _command("run", chain, *_kill_at(), "--ckpt_path", "last"),
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert final.returncode == 0, final.stderr[-3000:]
        assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()

    assert [point["point"] for point in stopped] == [
        "mid-epoch",
        "after last.ckpt (improving epoch before it)",
        "after last.ckpt (non_improving epoch before it)",
    ]
    assert stopped[0] == {"epoch": 1, "step": 4, "point": "mid-epoch"}
    assert stopped[0]["step"] < stopped[1]["step"] < stopped[2]["step"] < EPOCHS * 3

    expected = tmp_path / "reference" / "version_0"
    differences = {}
    assert _rows(run) == _rows(expected)  # every metric of every step and epoch, appended across 4 processes
    for name in ("last.ckpt", "best.ckpt"):
        resumed = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        uninterrupted = torch.load(expected / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert (resumed["epoch"], resumed["global_step"]) == (
            uninterrupted["epoch"],
            uninterrupted["global_step"],
        )
        differences[name] = _largest_difference(resumed["state_dict"], uninterrupted["state_dict"])
    adapter = "adapter/adapter_model.safetensors"
    differences["adapter"] = _largest_difference(load_file(run / adapter), load_file(expected / adapter))
    print(f"\nkill points {stopped}; max |Δ| {differences}")
    assert differences == {"last.ckpt": 0.0, "best.ckpt": 0.0, "adapter": 0.0}

    resumed_report = json.loads((run / "report.json").read_text())
    expected_report = json.loads((expected / "report.json").read_text())
    assert resumed_report["test"] == expected_report["test"]
    assert resumed_report["best_validation"] == expected_report["best_validation"]
    assert (
        resumed_report["timing"]["train_samples"] == expected_report["timing"]["train_samples"] == 40 * EPOCHS
    )
    assert (resumed_report["timing"]["fit_processes"], expected_report["timing"]["fit_processes"]) == (4, 1)

    # The first process's config stays; each resumed one wrote its own beside it.
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"] is None
    for index in (1, 2, 3):
        resumed_config = yaml.safe_load((run / f"config_resume_{index}.yaml").read_text())
        assert resumed_config["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert not (run / "run.lock").exists()  # the finished run released it
