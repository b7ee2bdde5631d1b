"""Resuming runs: ``last.ckpt`` is the last completed epoch, random-number state round-trips, a resumed run
appends to its metrics and keeps its config, ``--ckpt_path last`` never attaches to a live run and names the
run it resumes, and SIGINT / SIGTERM leave a resumable checkpoint and a non-zero exit status.

(The kill-and-resume equality itself, with real SIGKILLs, is ``test_kill_resume.py``.)
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from verticals.core.cli import find_last_checkpoint, run_cli
from verticals.core.resume import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    LOCK_NAME,
    RunInUseError,
    acquire_run_lock,
    live_run_lock,
    random_state,
    release_run_lock,
    set_random_state,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _tiny_lora(root: Path, epochs: int, *extra: str) -> list[str]:
    """The default job's config on the tiny encoder (dropout on): 3 optimizer steps per epoch."""
    return [
        "--config",
        "timeseries/gunpoint_lora",
        "--model.init_args.model_args",
        "{encoder: tiny-bert, num_layers: 2}",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_test_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- random-number state ----------------------------------------------------------------------------
def test_random_state_round_trips_and_loads_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # a cached Gaussian is part of NumPy's state
    state = random_state()
    expected = (torch.rand(4), np.random.rand(3), np.random.normal(), random.random(), torch.randint(9, (2,)))
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    torch.save(state, tmp_path / "state.pt")
    set_random_state(torch.load(tmp_path / "state.pt", weights_only=True))  # as in a checkpoint
    again = (torch.rand(4), np.random.rand(3), np.random.normal(), random.random(), torch.randint(9, (2,)))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:4] == again[2:4] and torch.equal(expected[4], again[4])


# -- last.ckpt / best.ckpt ----------------------------------------------------------------------------
@pytest.mark.domains
def test_last_checkpoint_is_the_last_epoch_and_best_stays_the_best(tmp_path):
    """``val_accuracy`` ties on GunPoint's 10 validation series, so most epochs don't improve: Lightning's
    ``save_last`` then left ``last.ckpt`` at the best epoch."""
    monitor = ["--model.init_args.monitor", "val_accuracy", "--model.init_args.monitor_mode", "max"]
    cli = run_cli(["fit", *_tiny_lora(tmp_path, 4, *monitor)])
    run = tmp_path / "version_0"
    last = _checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (4, 12)  # after the 4th epoch, whatever the score did
    validation = [row for row in _rows(run) if row["val_accuracy"]]
    scores = [float(row["val_accuracy"]) for row in validation]
    best_epoch = scores.index(max(scores))  # the first of the best (a tie does not improve)
    assert best_epoch < 3, "this test needs a run whose last epoch is not its best"
    best = _checkpoint(run / "checkpoints" / "best.ckpt")
    assert best["global_step"] == 3 * (best_epoch + 1)
    assert cli.trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(max(scores))
    differs = any(
        not torch.equal(last["state_dict"][name], best["state_dict"][name]) for name in last["state_dict"]
    )
    assert differs


@pytest.mark.domains
@pytest.mark.parametrize("max_steps", [400, -1], ids=["max_steps", "epochs_only"])
def test_resuming_a_finished_run_trains_only_the_new_epochs(tmp_path, capfd, max_steps):
    """A finished 2-epoch run resumed with ``--trainer.max_epochs 3`` trains epoch 2 only, appends its metrics
    (rows a killed process logged after the checkpoint are dropped first), keeps ``config.yaml`` and names
    the run. With ``max_steps`` set, Lightning 2.6 resumed such a checkpoint one epoch (and one logged step)
    ahead; without it, Lightning's own ``last.ckpt`` (the best epoch) made it repeat epochs."""
    budget = ["--trainer.max_steps", str(max_steps)]
    run_cli(["fit", *_tiny_lora(tmp_path, 2, *budget)])
    run = tmp_path / "version_0"
    config = (run / "config.yaml").read_bytes()
    before = _rows(run)
    with (run / "metrics.csv").open("a", newline="") as handle:  # what a process killed in epoch 2 left
        writer = csv.DictWriter(handle, fieldnames=list(before[0]))
        writer.writerow(
            {**{name: "" for name in before[0]}, "epoch": "2", "step": "6", "train_loss_step": "9.0"}
        )
    capfd.readouterr()
    cli = run_cli(["fit", *_tiny_lora(tmp_path, 3, *budget, "--ckpt_path", "last")])
    assert f"verticals: resuming {run} from {run / 'checkpoints' / 'last.ckpt'} (after 2 epochs, step 6)" in (
        capfd.readouterr().err
    )
    assert (cli.trainer.current_epoch, cli.trainer.global_step) == (3, 9)
    assert not (tmp_path / "version_1").exists()
    rows = _rows(run)
    assert rows[: len(before)] == before  # the first process's rows, kept
    steps = [(int(row["epoch"]), int(row["step"])) for row in rows if row["train_loss_step"]]
    assert steps == [(epoch, step) for step in range(9) for epoch in [step // 3]]  # each step once, in order
    assert "9.0" not in {row["train_loss_step"] for row in rows}
    assert [int(row["epoch"]) for row in rows if row["val_loss"]] == [0, 1, 2]
    assert (run / "config.yaml").read_bytes() == config
    assert yaml.safe_load((run / "config_resume_1.yaml").read_text())["trainer"]["max_epochs"] == 3


# -- run.lock ------------------------------------------------------------------------------------------
def _fake_run(root: Path) -> Path:
    run = root / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read before the lock check")
    (run / "config.yaml").write_text("seed_everything: 0\n")
    (run / "metrics.csv").write_text("epoch,step,val_loss\n0,2,0.5\n")
    return run


def _write_lock(run: Path, pid: int, host: str | None = None) -> None:
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2025-01-01T00:00:00+00:00"}
    (run / LOCK_NAME).write_text(json.dumps(holder))


@pytest.mark.domains
def test_resume_refuses_a_live_run_and_touches_nothing(tmp_path):
    run = _fake_run(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(run, live.pid)
        files = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
        with pytest.raises(
            SystemExit, match=f"would resume {run}, but that run is still live: process {live.pid}"
        ):
            find_last_checkpoint(tmp_path)
        with pytest.raises(SystemExit, match="still live"):
            run_cli(["fit", *_tiny_lora(tmp_path, 1, "--ckpt_path", "last")])
        assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == files
        assert sorted(path.name for path in tmp_path.iterdir()) == ["version_0"]
    finally:
        live.kill()
        live.wait()
    # The same lock once its process is gone is stale: the run resumes.
    assert live_run_lock(run) is None
    assert find_last_checkpoint(tmp_path) == (str(run / "checkpoints" / "last.ckpt"), 0)


def test_lock_of_another_host_counts_as_live_and_own_or_unreadable_ones_do_not(tmp_path):
    _write_lock(tmp_path, 1, host="another-machine")
    assert live_run_lock(tmp_path)["host"] == "another-machine"
    with pytest.raises(RunInUseError, match="process 1 on host 'another-machine'.*delete .*run.lock"):
        acquire_run_lock(tmp_path)
    _write_lock(tmp_path, os.getpid())
    assert live_run_lock(tmp_path) is None  # this process's own lock
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # a lock cut short when its writer died
    assert live_run_lock(tmp_path) is None
    lock = acquire_run_lock(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_run_lock(tmp_path)
    assert not lock.exists()


@pytest.mark.domains
def test_fit_holds_the_run_lock_and_releases_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # resume_probes
    record = tmp_path / "locks.jsonl"
    witness = [
        "--trainer.callbacks+",
        "resume_probes.LockWitness",
        "--trainer.callbacks.init_args.record",
        str(record),
    ]
    run_cli(["fit", *_tiny_lora(tmp_path / "runs", 2, *witness)])
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(seen) == 2 and all(lock["pid"] == os.getpid() for lock in seen)
    assert seen[0]["host"] == socket.gethostname() and seen[0]["command"].startswith("verticals fit")
    assert not (tmp_path / "runs" / "version_0" / LOCK_NAME).exists()


# -- signals ---------------------------------------------------------------------------------------------
@pytest.mark.domains
def test_sigint_and_sigterm_exit_nonzero_and_leave_a_resumable_checkpoint(tmp_path):
    """``verticals run`` signalled after optimizer step 4 (mid-epoch 1): Lightning stopped cleanly but SIGTERM
    exited 0 with no report. Now: status 130 / 143, a message naming the checkpoint, ``last.ckpt`` at the
    start of epoch 1 (the interrupted epoch is redone), the lock released, and the run resumes."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    processes = {}
    for name in ("SIGINT", "SIGTERM"):
        kill = ["--trainer.callbacks+", "resume_probes.KillAt", "--trainer.callbacks.init_args.at_step", "4"]
        kill += ["--trainer.callbacks.init_args.signal_name", name]
        command = [sys.executable, "-m", "verticals.core.cli", "run", *_tiny_lora(tmp_path / name, 3, *kill)]
        processes[name] = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for name, status in (("SIGINT", EXIT_SIGINT), ("SIGTERM", EXIT_SIGTERM)):
        _, err = processes[name].communicate(timeout=300)
        run = tmp_path / name / "version_0"
        assert processes[name].returncode == status, err[-3000:]
        assert f"verticals: stopped by {name} in epoch 1 (step 4)" in err
        assert f"{run / 'checkpoints' / 'last.ckpt'} holds the run after 1 epochs, step 3" in err
        assert "resume with `--ckpt_path last`" in err
        assert not (run / "report.json").exists() and not (run / LOCK_NAME).exists()
        last = _checkpoint(run / "checkpoints" / "last.ckpt")
        assert (last["epoch"], last["global_step"]) == (1, 3)
    cli = run_cli(["fit", *_tiny_lora(tmp_path / "SIGTERM", 2, "--ckpt_path", "last")])
    assert (cli.trainer.current_epoch, cli.trainer.global_step) == (2, 6)
