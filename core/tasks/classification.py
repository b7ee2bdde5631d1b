"""Classification of whole inputs (a series, an image, a clip) into one of ``num_classes``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from verticals.core.tasks.base import AdapterTask


class ClassificationTask(AdapterTask):
    """Cross-entropy classification; model selection on validation accuracy.

    ``report_bootstrap``: with a number (of bootstrap resamples, 0 for none), a ``FairnessReport`` per
    group (JSON, markdown, plots) is written at test end for datamodules whose batches carry ``"group"``;
    ``None`` (the default) writes none.
    """

    monitor = "val_accuracy"
    mode = "max"

    def __init__(
        self,
        *args: Any,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        report_bootstrap: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if report_bootstrap is not None and report_bootstrap < 0:
            raise ValueError(f"`report_bootstrap` must be >= 0 (or None for no report), got {report_bootstrap}.")
        super().__init__(*args, **kwargs)

    def configure_callbacks(self) -> list[L.Callback]:
        from verticals.core.fairness_callbacks import FairnessReport

        callbacks = super().configure_callbacks()
        bootstrap = self.hparams.get("report_bootstrap")
        if bootstrap is not None and not any(isinstance(callback, FairnessReport) for callback in callbacks):
            callbacks.append(FairnessReport(n_bootstrap=bootstrap))
        return callbacks

    def _shapes_known(self) -> bool:
        return self.hparams.get("num_classes") is not None

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        super()._infer_from_datamodule(datamodule)
        if self.hparams.get("num_classes") is None:
            self._set_inferred("num_classes", int(datamodule.num_classes))

    def model_outputs_kwargs(self) -> dict[str, Any]:
        return {"num_outputs": self.hparams["num_classes"], "task": "classification"}

    def configure_losses(self) -> None:
        self.label_smoothing = self.hparams["label_smoothing"]

    def configure_metrics(self) -> MetricCollection:
        num_classes = self.hparams["num_classes"]
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
                "auroc": MulticlassAUROC(num_classes),
            }
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["x"])
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), batch["y"])
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(logits))
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(logits)
        )
        if stage == "test":
            self._last_outputs = step_outputs(logits, batch)
        return loss

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``logits``, ``probs``, ``target`` (and ``group`` when batches carry it), for test-end callbacks
        such as ``FairnessReport``, so a plain classifier is reported like a fairness-aware one."""
        self._last_outputs = None
        self._step(batch, "test")
        return self._last_outputs

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"]).softmax(dim=-1)


def step_outputs(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a test step hands to callbacks: detached logits, softmax probabilities, targets, group codes."""
    outputs = {"logits": logits.detach(), "probs": logits.detach().float().softmax(dim=-1), "target": batch["y"]}
    if "group" in batch:
        group = batch["group"]
        outputs["group"] = group[:, None] if group.ndim == 1 else group
    return outputs
