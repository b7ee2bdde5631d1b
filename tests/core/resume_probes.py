"""Test-only callbacks for the resume tests, given with ``--trainer.callbacks+ resume_probes.<Name>`` (a
subprocess gets this folder on ``PYTHONPATH``; pytest puts it on ``sys.path`` for in-process runs).

- :class:`KillAt` stops its own ``verticals fit`` process at a chosen, deterministic point; before it signals,
  it writes where it stopped (``epoch``, ``step``, ``point``) to ``record`` as JSON.
- :class:`LockWitness` records, at every epoch start, the run's ``run.lock`` as it is then.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L


class KillAt(L.Callback):
    """Send ``signal_name`` to this process:

    - ``at_step=N``: after the training batch that completes optimizer step N (mid-epoch if N is not a
      multiple of the epoch's batches);
    - ``after_last_checkpoint="improving"`` / ``"non_improving"``: right after ``last.ckpt`` is written at
      the start of an epoch (``>= min_epoch``) whose previous epoch did / did not improve the best score.

    Without either it does nothing (the uninterrupted run carries it too, so both runs have the same callbacks).
    """

    def __init__(
        self,
        at_step: int | None = None,
        after_last_checkpoint: str | None = None,
        min_epoch: int = 0,
        signal_name: str = "SIGKILL",
        record: str | None = None,
    ) -> None:
        if after_last_checkpoint not in (None, "improving", "non_improving"):
            raise ValueError(
                f"after_last_checkpoint: 'improving' or 'non_improving', got {after_last_checkpoint!r}"
            )
        self.at_step, self.after_last_checkpoint, self.min_epoch = at_step, after_last_checkpoint, min_epoch
        self.signal = getattr(signal, signal_name)
        self.record = record
        self._previous_best: Any = None
        self._armed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.after_last_checkpoint is None:
            return
        save = trainer.save_checkpoint

        def save_then_stop(filepath: Any, *args: Any, **kwargs: Any) -> None:
            save(filepath, *args, **kwargs)
            if self._armed and Path(filepath).name == "last.ckpt":
                self._stop(trainer, f"after last.ckpt ({self.after_last_checkpoint} epoch before it)")

        trainer.save_checkpoint = save_then_stop  # type: ignore[method-assign]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before LastCheckpoint's hook (checkpoint callbacks run last), after the best checkpoint's update.
        best = trainer.checkpoint_callback.best_model_score
        best = None if best is None else float(best)
        improved = best is not None and best != self._previous_best
        self._previous_best = best
        wanted = {"improving": improved, "non_improving": not improved and best is not None}
        self._armed = (
            self.after_last_checkpoint is not None
            and trainer.current_epoch >= self.min_epoch
            and wanted[self.after_last_checkpoint]
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.at_step is not None and trainer.global_step == self.at_step:
            self._stop(
                trainer, "mid-epoch" if trainer.global_step % trainer.num_training_batches else "epoch end"
            )

    def _stop(self, trainer: L.Trainer, point: str) -> None:
        if self.record:
            Path(self.record).write_text(
                json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, "point": point})
            )
        os.kill(os.getpid(), self.signal)


class LockWitness(L.Callback):
    """Appends ``run.lock``'s content (or null) at every training epoch start to ``record`` (JSON lines)."""

    def __init__(self, record: str) -> None:
        self.record = record

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lock = Path(trainer.log_dir) / "run.lock"
        with open(self.record, "a") as handle:
            handle.write((lock.read_text().strip() if lock.exists() else "null") + "\n")
