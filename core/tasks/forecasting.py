"""Forecasting: predict the next ``horizon`` steps of every channel from a context window."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import (
    MeanAbsoluteError,
    MeanSquaredError,
    MetricCollection,
    SymmetricMeanAbsolutePercentageError,
)

from verticals.core.tasks.base import AdapterTask


class ForecastingTask(AdapterTask):
    """Point forecasts trained with MSE (or MAE); model selection on validation MSE.

    With a ``group_objective`` (see ``AdapterTask``; e.g. group-DRO over the sites or sensors of the
    series) the loss is taken per series first, then combined over the groups.

    Args:
        horizon: steps ahead to forecast (>= 1), the width of the head; default: the datamodule's
            ``horizon``.
        loss: the training loss, ``mse`` or ``mae``; ``mae`` is less pulled by outlying values. Both are
            logged as metrics (with sMAPE) either way.
    """

    monitor = "val_mse"
    mode = "min"
    accepts_group_objective = True

    def __init__(self, *args: Any, horizon: int | None = None, loss: str = "mse", **kwargs: Any) -> None:
        if loss not in ("mse", "mae"):
            raise ValueError(f"`loss` must be 'mse' or 'mae', got {loss!r}.")
        if horizon is not None and horizon < 1:
            raise ValueError(f"`horizon` must be a positive number of steps, got {horizon}.")
        super().__init__(*args, **kwargs)

    def _shapes_known(self) -> bool:
        return self.hparams.get("horizon") is not None

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        super()._infer_from_datamodule(datamodule)
        if self.hparams.get("horizon") is None:
            self._set_inferred("horizon", int(datamodule.horizon))

    def model_outputs_kwargs(self) -> dict[str, Any]:
        return {"num_outputs": self.hparams["horizon"], "task": "forecasting"}

    def configure_losses(self) -> None:
        self.loss_fn = F.mse_loss if self.hparams["loss"] == "mse" else F.l1_loss

    def configure_metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "mse": MeanSquaredError(),
                "mae": MeanAbsoluteError(),
                "smape": SymmetricMeanAbsolutePercentageError(),
            }
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        if self.group_objective is None:
            forecast = self(batch["x"])
            task_loss = loss = self.loss_fn(forecast, batch["y"])
        else:
            features, forecast = self.forward_with_features(batch["x"])
            per_series = self.loss_fn(forecast, batch["y"], reduction="none").flatten(1).mean(dim=1)
            task_loss, loss = self.group_objective_loss(per_series, batch, stage, features=features)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(forecast.detach().flatten(), batch["y"].flatten())
        on_step = stage == "train"
        self.log(
            f"{stage}_loss",
            task_loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=len(forecast),
            sync_dist=True,  # the mean over every process's samples
        )
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(forecast)
        )
        if stage == "test":  # for the run report's forecast plot (it keeps a few)
            self.report_examples = {"x": batch["x"], "y": batch["y"], "forecast": forecast.detach()}
        return self.adapter_loss(loss, stage)
