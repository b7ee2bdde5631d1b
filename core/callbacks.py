"""Callbacks every verticals run gets: best/last checkpoints, resume state, adapter export, timing and the report
(with its figures and the adapter's model card)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from verticals.core.adapters.io import CONFIG_NAME, TRAINABLE_NAME, save_adapter
from verticals.core.model_card import run_model_card, write_card
from verticals.core.report import describe_data, split_size, write_report
from verticals.core.report_figures import DEFAULT_RESAMPLES, RunFigures, write_run_figures
from verticals.core.report_outputs import MAX_EXAMPLES, ReportOutputs
from verticals.core.resume import LastCheckpoint, RandomState, ResumedLog, RunLock


def run_directory(trainer: L.Trainer) -> Path:
    """Where a run's files go: the logger's directory, else the trainer's root directory."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def batch_size(batch: Any) -> int:
    """Samples in a batch: ``len(batch["x"])``, else the length of its first tensor (``input_features`` …)."""
    if isinstance(batch, dict):
        if "x" in batch:
            return len(batch["x"])
        first = next((value for value in batch.values() if isinstance(value, torch.Tensor)), None)
        if first is not None:
            return len(first)
    if isinstance(batch, (list, tuple)) and batch:
        return len(batch[0])
    raise TypeError(f"Cannot count the samples of a {type(batch).__name__} batch: expected a dict with tensors.")


class Timing(L.Callback):
    """Wall time and throughput of training (samples/s), for the report and benchmarks.

    The figures cover the whole run: every DDP process (a batch counts once per process) and every
    process of a run resumed from a checkpoint (they are saved in checkpoints and restored when ``fit``
    resumes; ``fit_processes`` counts them: 1 + the resumes). Loading a checkpoint to test it does not
    rewind them.
    """

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.train_samples = 0
        self.fit_processes = 0
        self._start = self._before = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "fit_seconds": self.fit_seconds,
            "train_samples": self.train_samples,
            "fit_processes": self.fit_processes,
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if state and trainer.state.fn == TrainerFn.FITTING:
            self.fit_seconds = float(state["fit_seconds"])
            self.train_samples = int(state["train_samples"])
            self.fit_processes = int(state.get("fit_processes", 1))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_processes += 1
        self._start, self._before = time.perf_counter(), self.fit_seconds

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_samples += batch_size(batch) * trainer.world_size
        self.fit_seconds = self._before + time.perf_counter() - self._start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = self._before + time.perf_counter() - self._start

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.fit_seconds if self.fit_seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "fit_seconds": self.fit_seconds,
            "train_samples": self.train_samples,
            "samples_per_second": self.samples_per_second,
            "fit_processes": self.fit_processes,
        }


class ExportAdapter(L.Callback):
    """Write the adapter (peft format) to ``<run>/adapter``: the best weights after fit and after test."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            current = {
                name: tensor.detach().clone()
                for name, tensor in pl_module.state_dict().items()
                if name in state
            }
            pl_module.load_state_dict(state, strict=False)
            self._export(trainer, pl_module)
            pl_module.load_state_dict(current, strict=False)  # leave the trainer's model as it was
        else:
            self._export(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module)

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if trainer.is_global_zero and not trainer.fast_dev_run:
            save_adapter(pl_module.model, directory / "adapter")


class RunReport(L.Callback):
    """At test end: ``report.json`` and ``report.md`` (metrics, parameters, adapter size, timing, the data and
    the figures), the figures themselves (:mod:`verticals.core.report_figures`) and the adapter's model card.

    During the test it keeps what the figures need (:class:`~verticals.core.report_outputs.ReportOutputs`):
    the per-sample outputs of ``test_step`` and up to ``max_examples`` examples the task offers. A run's
    ``GroupReport`` is finished first, so its figures are listed too.

    Args:
        max_examples: examples kept for the figures that show samples (overlays, forecasts).
        n_resamples: bootstrap resamples of the figures' per-class and per-group intervals.
    """

    def __init__(self, max_examples: int = MAX_EXAMPLES, n_resamples: int = DEFAULT_RESAMPLES) -> None:
        if n_resamples < 0:
            raise ValueError(f"`n_resamples` must be >= 0 (0: no intervals), got {n_resamples}.")
        self.outputs = ReportOutputs(max_examples)
        self.n_resamples = n_resamples
        #: What the last report drew and why it skipped what it did not.
        self.figures: RunFigures | None = None
        self._splits: dict[str, int | None] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Noted now: Lightning drops a fit's loaders before the test that follows it.
        self._splits["train"] = split_size(trainer.train_dataloader)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._splits["val"] = split_size(trainer.val_dataloaders)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs.reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        keep = trainer.is_global_zero and not trainer.fast_dev_run
        self.outputs.add(outputs, pl_module, keep_examples=keep)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        from verticals.core.group_report import GroupReport  # it imports this module

        group_reports = [callback for callback in trainer.callbacks if isinstance(callback, GroupReport)]
        for group_report in group_reports:  # every rank: their outputs are gathered
            group_report.finish(trainer, pl_module)
        arrays = self.outputs.compute()  # every rank: the gather is collective
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        self.figures = write_run_figures(
            directory,
            task=pl_module,
            trainer=trainer,
            arrays=arrays,
            examples=self.outputs.examples(),
            group_report=next((report for report in group_reports if getattr(report, "results", None)), None),
            n_resamples=self.n_resamples,
        )
        drawn = list(self.figures.written)
        drawn += sorted(path.name for path in directory.glob("*.png") if path.name not in drawn)
        timing = next((callback for callback in trainer.callbacks if isinstance(callback, Timing)), None)
        checkpoint = trainer.checkpoint_callback
        tested = next((len(values) for values in arrays.values()), None)
        report = write_report(
            directory,
            task=pl_module,
            test_metrics={
                name: float(value)
                for name, value in trainer.callback_metrics.items()
                if name.startswith("test_")
            },
            best_validation=(
                {"monitor": checkpoint.monitor, "value": float(checkpoint.best_model_score)}
                if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_score is not None
                else None
            ),
            checkpoint=str(getattr(checkpoint, "best_model_path", "") or ""),
            timing=timing.as_dict() if timing else None,
            data=describe_data(trainer, splits=self._splits, tested=tested),
            figures=drawn,
            figures_skipped=self.figures.skipped,
        )
        adapter = directory / "adapter"
        if (adapter / CONFIG_NAME).is_file() or (adapter / TRAINABLE_NAME).is_file():
            card = run_model_card(
                report, task=pl_module, directory=adapter, peft_adapter=(adapter / CONFIG_NAME).is_file()
            )
            write_card(adapter, card)


def default_callbacks(*, monitor: str, mode: str) -> list[L.Callback]:
    """A run's callbacks: ``best.ckpt`` (the best ``monitor`` score) and ``last.ckpt`` (the last completed
    epoch, see :mod:`verticals.core.resume`), the random-number state in both, the run's lock and
    appended metrics log on resume, timing, the adapter export and the report.

    The best checkpoint comes first: it is the trainer's ``checkpoint_callback`` (``ckpt_path="best"``).
    """
    return [
        ModelCheckpoint(monitor=monitor, mode=mode, filename="best", auto_insert_metric_name=False),
        LastCheckpoint(),
        RandomState(),
        ResumedLog(),
        RunLock(),
        Timing(),
        ExportAdapter(),
        RunReport(),
    ]
