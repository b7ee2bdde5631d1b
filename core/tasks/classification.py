"""Classification of whole inputs (a series, an image, a clip) into one of ``num_classes``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from verticals.core.group_report import GroupMetric, GroupReportResults
from verticals.core.metrics.fairness import auroc
from verticals.core.metrics.report import FairnessResults, write_fairness_files
from verticals.core.metrics.streaming import SubgroupMetrics
from verticals.core.tasks.base import AdapterTask


class ClassificationTask(AdapterTask):
    """Cross-entropy classification; model selection on validation accuracy.

    ``report_bootstrap``: with a number (of bootstrap resamples, 0 for none), a ``GroupReport`` (AUROC and
    accuracy per group with CIs) and, for datamodules whose batches carry ``"group"``, the fairness and
    calibration report (``fairness.json``, ``fairness.md``, ``reliability.png``) are written at test end;
    ``None`` (the default) writes none.

    ``group_objective`` (see ``AdapterTask``): group-DRO and/or a CLUB / adversarial penalty over the groups
    of the batches; per-sample cross-entropy is its input, the labels its ``target``. The sensitive
    attribute's per-group AUROC and ECE are then logged each validation and test epoch
    (``monitor: val_worst_group_auroc`` selects the checkpoint on the worst group).

    Args:
        num_classes: number of classes (>= 2), the width of the head; default: the datamodule's
            ``num_classes``.
        label_smoothing: cross-entropy label smoothing in [0, 1); 0 trains on hard labels, a little (0.1)
            can help small, noisy training sets.
        report_bootstrap: bootstrap resamples for the CIs of the per-group report written at test end
            (0: the report without CIs); None writes no group report.
    """

    monitor = "val_accuracy"
    mode = "max"
    accepts_group_objective = True

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
            raise ValueError(
                f"`report_bootstrap` must be >= 0 (or None for no report), got {report_bootstrap}."
            )
        super().__init__(*args, **kwargs)

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
        y = batch["y"]
        if self.group_objective is None:
            logits = self(batch["x"])
            task_loss = loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        else:
            features, logits = self.forward_with_features(batch["x"])
            per_sample = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")
            task_loss, loss = self.group_objective_loss(per_sample, batch, stage, features=features, target=y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), y)
        on_step = stage == "train"
        # sync_dist: the epoch's loss is the mean over every process's samples (metric objects sync themselves).
        self.log(
            f"{stage}_loss",
            task_loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=len(logits),
            sync_dist=True,
        )
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(logits)
        )
        subgroups = getattr(self, f"{stage}_subgroups", None)
        if subgroups is not None and self.group_loss is not None and "group" in batch:
            groups = batch["group"][:, None] if batch["group"].ndim == 1 else batch["group"]
            probs = logits.detach().float().softmax(dim=-1)
            subgroups.update(probs, y, groups[:, self.group_loss.sensitive_index])
        if stage == "test":
            self._last_outputs = step_outputs(logits, batch)
        return self.adapter_loss(loss, stage)

    # -- groups ----------------------------------------------------------------------------
    def configure_group_metrics(self, sensitive_names: list[str]) -> None:
        """AUROC, ECE and accuracy per group of the objective's sensitive attribute, logged per epoch
        (``{stage}_worst_group_auroc``, ``{stage}_auroc_gap``, ``{stage}_ece/<group>`` …) for model selection."""
        if sensitive_names:
            self.val_subgroups = SubgroupMetrics(sensitive_names)
            self.test_subgroups = SubgroupMetrics(sensitive_names)

    def _log_subgroups(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_subgroups", None)
        if metric is None or not metric.update_called:
            return
        values = metric.compute()
        metric.reset()
        # Overall AUROC is already logged by the metric collection as {stage}_auroc.
        # The same values on every process (the metric gathered them); sync_dist keeps Lightning's check quiet.
        self.log_dict(
            {f"{stage}_{name}": value for name, value in values.items() if name != "auroc"}, sync_dist=True
        )

    def on_validation_epoch_end(self) -> None:
        self._log_subgroups("val")

    def on_test_epoch_end(self) -> None:
        self._log_subgroups("test")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``logits``, ``probs``, ``target`` (and ``group`` when batches carry it) per sample, for the
        ``GroupReport``, so a plain classifier is reported like a fairness-aware one."""
        self._last_outputs = None
        self._step(batch, "test")
        return self._last_outputs

    def group_report_metrics(self) -> dict[str, GroupMetric]:
        """AUROC (binary, or macro one-vs-rest) and accuracy (arg-max, as ``test_accuracy``) of any samples."""
        return {"auroc": GroupMetric(_auroc_of), "accuracy": GroupMetric(_accuracy_of)}

    def extra_group_report(
        self,
        arrays: Mapping[str, np.ndarray],
        groups: Mapping[str, np.ndarray],
        directory: Path,
        results: GroupReportResults,
    ) -> FairnessResults | None:
        """The fairness and calibration report (parity gaps at operating points, ECE per group, reliability
        diagram), with the group report's bootstrap settings; None when batches carry no groups."""
        if not groups:
            return None
        probs = np.asarray(arrays["probs"], dtype=np.float64)
        return write_fairness_files(
            Path(directory),
            probs[:, 1] if probs.shape[1] == 2 else probs,
            arrays["target"],
            groups,
            n_bootstrap=results.n_bootstrap,
            seed=results.seed,
            group_names=results.group_names,
        )

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"]).softmax(dim=-1)


def _auroc_of(arrays: Mapping[str, np.ndarray]) -> float:
    probs = np.asarray(arrays["probs"], dtype=np.float64)
    return auroc(probs[:, 1] if probs.shape[1] == 2 else probs, arrays["target"])


def _accuracy_of(arrays: Mapping[str, np.ndarray]) -> float:
    return float((np.asarray(arrays["probs"]).argmax(axis=1) == np.asarray(arrays["target"])).mean())


def step_outputs(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a test step hands to the group report: detached logits, softmax probabilities, targets and
    ``[N, A]`` group codes, one row per sample."""
    outputs = {
        "logits": logits.detach(),
        "probs": logits.detach().float().softmax(dim=-1),
        "target": batch["y"],
    }
    if "group" in batch:
        group = batch["group"]
        outputs["group"] = group[:, None] if group.ndim == 1 else group
    return outputs
