"""Resuming a run exactly where it stopped, and never into a run that is still going.

- :class:`LastCheckpoint` writes ``last.ckpt``: the run as it stood after its last completed epoch. It is
  written at the start of every epoch (once the previous epoch's validation, logging, early stopping and
  epoch-wise scheduler step are all done) and at the end of training, whatever the monitored score did.
  A process killed mid-epoch is resumed from the start of that epoch: the partial epoch is redone, with the
  same batches (the sampler's order depends only on seed and epoch) and the same random numbers.
- :class:`RandomState` saves every process's random-number state (Python, NumPy, torch CPU and CUDA) in each
  checkpoint and restores it when training resumes, so dropout draws the same masks as in a run that never
  stopped: on CPU a resumed run ends bit-equal to an uninterrupted one.
- :class:`RunLogger` is Lightning's ``CSVLogger`` that keeps the ``metrics.csv`` of the version it writes
  to; a resumed run drops the rows logged after its checkpoint (they are logged again) and appends.
- :class:`RunLock` holds ``run.lock`` (pid, host, start time) in the run directory while a process works in it;
  ``--ckpt_path last`` refuses a run whose lock is held by a live process. A lock left by a process that
  died (SIGKILL) on this host is stale and ignored.

Mid-epoch checkpoints are not written: with an ordinary (not stateful) ``DataLoader``, Lightning resumes
mid-epoch with a new iterator, so it could not continue the epoch's batches exactly.
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.trainer.states import TrainerFn

LOCK_NAME = "run.lock"
#: Exit statuses of a run stopped by a signal (128 + the signal's number, as shells report them).
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


# -- random-number state ---------------------------------------------------------------------------
def random_state() -> dict[str, Any]:
    """This process's random-number state: Python's, NumPy's global, torch's CPU and (when in use) CUDA
    generators, as tensors and plain values, so a checkpoint holding it loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Restore a state :func:`random_state` returned (CUDA's only onto the same number of devices)."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _every_rank(state: dict[str, Any]) -> list[dict[str, Any]]:
    """``state`` of every process, in rank order (a collective: every process saves a checkpoint)."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return [state]
    gathered: list[Any] = [None] * distributed.get_world_size()
    distributed.all_gather_object(gathered, state)
    return gathered


class RandomState(L.Callback):
    """Saves the random-number state of every process in each checkpoint; restores it when ``fit`` resumes.

    The state is put back at the point of the loop where it was taken: a checkpoint taken before the
    epoch's training batches were drawn (``last.ckpt`` at an epoch start, ``best.ckpt`` at an epoch end)
    is restored before the resumed epoch's ``DataLoader`` iterator is made (Lightning makes it earlier when
    resuming, so it is made again), one taken mid-epoch after. Workers of a ``DataLoader`` with persistent
    workers keep the seeds they were started with.
    """

    def __init__(self) -> None:
        self._batches_drawn = False  # whether this epoch's training iterator exists (it draws a seed)
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": _every_rank(random_state()), "batches_drawn": self._batches_drawn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = dict(state_dict)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._to_restore = None  # a checkpoint restored for testing is not resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches_drawn = True  # Lightning makes the first epoch's iterator before this hook
        saved, self._to_restore = self._to_restore, None
        if not saved or not saved.get("ranks"):
            return
        ranks = saved["ranks"]
        if len(ranks) != trainer.world_size:
            warnings.warn(
                f"The checkpoint holds the random-number state of {len(ranks)} processes, this run has "
                f"{trainer.world_size}: every process continues from rank 0's, so the resumed run is not "
                "the run that was interrupted.",
                stacklevel=1,
            )
        set_random_state(ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0])
        if not saved.get("batches_drawn", True):
            _restart_training_iterator(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batches_drawn = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches_drawn = False


def _restart_training_iterator(trainer: L.Trainer) -> None:
    """Make the training ``DataLoader`` iterator again, as the uninterrupted run makes it after this point.

    Creating an iterator draws its workers' base seed from torch's generator. Not for a stateful loader
    (it would lose the position Lightning restored into it).
    """
    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    combined = getattr(loop, "_combined_loader", None)
    loaders = getattr(combined, "flattened", []) if combined is not None else []
    if fetcher is None or any(callable(getattr(loader, "state_dict", None)) for loader in loaders):
        return
    iter(fetcher)


# -- last.ckpt ---------------------------------------------------------------------------------------
class LastCheckpoint(ModelCheckpoint):
    """``<run>/checkpoints/last.ckpt``: the run after its last completed epoch (see the module doc).

    Lightning's ``ModelCheckpoint(save_last=True, monitor=...)`` rewrites ``last.ckpt`` only when it saves a
    new best one, so its ``last.ckpt`` is the best epoch, and a resumed run repeats every epoch since.
    This one is written at every epoch start and at the end of training, and on nothing else.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
        )
        self._saved_step: int | None = None
        self._saving = False
        self._resumed_between_epochs = False

    @property
    def path(self) -> str:
        return os.path.join(str(self.dirpath), self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._saved_step = state_dict.get("saved_step")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._resumed_between_epochs = False

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._resumed_between_epochs = _is_between_epochs(checkpoint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed_between_epochs:
            _start_epoch_afresh(trainer)
        self._resumed_between_epochs = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving:
            _between_epochs(checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)

    # ModelCheckpoint's own saving points: none (save_top_k=0 already skips them; made explicit here).
    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        return

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        return  # an interrupted epoch is redone from last.ckpt: a mid-epoch state could not resume exactly

    def _save_last(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if self._saved_step == trainer.global_step and os.path.isfile(self.path):
            return  # the state this process resumed from, or saved already
        self._saved_step = trainer.global_step
        self.last_model_path = self.path
        self._saving = True
        try:
            self._save_checkpoint(trainer, self.path)
        finally:
            self._saving = False


def _between_epochs(checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint taken between two epochs (at an epoch start, or at the end of a fit whose last epoch
    completed) as the loop state Lightning has just before an epoch's first batch.

    Lightning 2.6 resumes such a state wrongly: at ``on_train_epoch_start`` it has counted the new epoch as
    "ready" but its epoch loop still holds the previous epoch's batch counters (``is_last_batch``), and with
    ``max_steps`` set (a restart then always counts as mid-run) it runs the resumed epoch with no batches and
    goes on one epoch and one logging step ahead. Nothing has happened since the previous epoch completed,
    so the new epoch's "ready" is taken back and the epoch loop's per-epoch counters are zeroed (as Lightning
    zeroes them when an epoch starts); totals, steps and everything else stay.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop")
    if not loops or "epoch_progress" not in loops:
        return
    epochs = loops["epoch_progress"]
    if any(counts["processed"] != counts["completed"] for counts in epochs.values()):
        return  # stopped inside an epoch (max_steps): that is a mid-epoch state, left as it is
    for counts in epochs.values():
        counts["ready"] = counts["started"] = counts["completed"]
    batches = loops["epoch_loop.batch_progress"]
    _zero(batches["current"])
    batches["is_last_batch"] = False
    _zero(loops["epoch_loop.scheduler_progress"]["current"])
    for tracker in loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"].values():
        _zero(tracker["current"])
    validation = loops["epoch_loop.val_loop.batch_progress"]
    _zero(validation["total"])
    _zero(validation["current"])
    validation["is_last_batch"] = False


def _is_between_epochs(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint's loops are in the form :func:`_between_epochs` writes."""
    loops = checkpoint.get("loops", {}).get("fit_loop") or {}
    epochs, batches = loops.get("epoch_progress"), loops.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return False
    same = all(len(set(counts.values())) == 1 for counts in epochs.values())
    return same and not batches.get("is_last_batch") and not any(batches["current"].values())


def _start_epoch_afresh(trainer: L.Trainer) -> None:
    """After resuming a between-epochs checkpoint, run the next epoch as an uninterrupted run starts it.

    Lightning treats every resume of a fit with ``max_steps`` as a restart inside an epoch: its epoch loop
    then spends its first iteration on no batch (one logging step ahead for the rest of the run) and the
    epoch's end skips the epoch-wise scheduler step. Nothing of the epoch has run, so the loops are told
    they are not restarting (Lightning's ``restarting`` flag, set on the fit loop and its children).
    """
    from lightning.pytorch.loops.loop import _Loop

    _Loop.restarting.fset(trainer.fit_loop, False)  # the fit loop's own setter would keep True with max_steps


def _zero(counts: dict[str, int]) -> None:
    for name in counts:
        counts[name] = 0


# -- metrics.csv ---------------------------------------------------------------------------------------
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept and appended to (Lightning deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(next(csv.reader(handle), []))

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows logged at ``step`` or later (a resumed run logs them again); returns how many."""
        self.save()
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < step]
        if len(kept) != len(rows):
            with self._fs.open(self.metrics_file_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)


class RunLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/version_N/metrics.csv`` that appends to the file a version already
    has, so a resumed run keeps the metrics of the processes before it (the default logger of ``verticals``;
    :class:`ResumedLog` drops the rows logged after the checkpoint)."""

    @property
    def experiment(self) -> _AppendingWriter:  # type: ignore[override]
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ResumedLog(L.Callback):
    """When ``fit`` resumes from a checkpoint, drop the ``metrics.csv`` rows logged after it (the steps the
    resumed run redoes); earlier rows stay."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.ckpt_path or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunLogger):
                logger.experiment.drop_rows_from(trainer.global_step)


# -- run.lock ----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def read_run_lock(directory: str | Path) -> dict[str, Any] | None:
    """The lock of a run directory (``pid``, ``host``, ``started``, ``command``), or None without one."""
    path = Path(directory) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "started": None, "unreadable": True}
    return holder if isinstance(holder, dict) else {"pid": None, "host": None, "unreadable": True}


def live_run_lock(directory: str | Path) -> dict[str, Any] | None:
    """The lock of a run that another live process holds, else None.

    A lock of this process, of a dead process on this host, or that can't be read is not live. A lock
    taken on another host can't be checked from here and counts as live.
    """
    holder = read_run_lock(directory)
    if holder is None or holder.get("unreadable"):
        return None
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname():
        return holder
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    return holder if _pid_alive(pid) else None


def describe_lock(directory: str | Path, holder: dict[str, Any]) -> str:
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r} has held {Path(directory) / LOCK_NAME} "
        f"since {holder.get('started')} ({holder.get('command') or 'command unknown'})"
    )


class RunInUseError(RuntimeError):
    """Another live process is working in this run directory."""


def acquire_run_lock(directory: str | Path) -> Path:
    """Write this process's lock into ``directory``; a live lock of another process is an error."""
    directory = Path(directory)
    holder = live_run_lock(directory)
    if holder is not None:
        raise RunInUseError(
            f"verticals: {directory} is in use: {describe_lock(directory, holder)}. Two processes must not "
            "train into one run. Wait for it to end, or stop it; if that process is gone (a job on another "
            f"machine), delete {directory / LOCK_NAME}."
        )
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    temporary = directory / f".{LOCK_NAME}.{os.getpid()}"
    temporary.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["verticals", *sys.argv[1:]]),
            }
        )
        + "\n"
    )
    os.replace(temporary, lock)
    return lock


def release_run_lock(directory: str | Path) -> None:
    """Remove ``directory``'s lock if this process holds it."""
    holder = read_run_lock(directory)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        (Path(directory) / LOCK_NAME).unlink(missing_ok=True)


class RunLock(L.Callback):
    """Holds ``run.lock`` in the run directory from setup to teardown (see :func:`acquire_run_lock`).

    ``VerticalsTrainer.run`` keeps it from fit through test (``trainer.keep_run_lock``).
    """

    def __init__(self) -> None:
        self._held: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from verticals.core.callbacks import run_directory

        if trainer.fast_dev_run or not trainer.loggers:
            return  # no run directory of its own (without a logger, files go to the shared root)
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if not trainer.is_global_zero:
            return
        acquire_run_lock(directory)
        self._held = directory

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not getattr(trainer, "keep_run_lock", False):
            self.release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._held is not None:
            release_run_lock(self._held)
            self._held = None


def launched_worker() -> bool:
    """Whether this process is a worker a launcher started (DDP rank > 0), not the one a user ran."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def resumed_config_name(run_dir: str | Path) -> str:
    """``config_resume_K.yaml``, the first free K: a resumed process's config beside the run's ``config.yaml``."""
    index = 1
    while (Path(run_dir) / f"config_resume_{index}.yaml").exists():
        index += 1
    return f"config_resume_{index}.yaml"


def checkpoint_position(path: str | Path) -> str:
    """``epoch E, step S`` of a checkpoint (read lazily), or ``""`` if it can't be read here."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return f"after {int(checkpoint['epoch'])} epochs, step {int(checkpoint['global_step'])}"
    except Exception:  # the load that follows reports a damaged file with its own error
        return ""
