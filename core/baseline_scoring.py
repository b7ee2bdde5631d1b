"""Per-sample scores of a task's test predictions, so an adapter and a baseline can be compared pairwise.

A baseline is only worth quoting beside the adapter when both are scored on the same test samples with the
same metric, and the difference gets an interval. :func:`scoring_for` gives, per task type, how to turn a
batch into predictions (of the trained task, or of any network of the same kind such as the frozen model),
what the truth of a batch is, the per-sample arrays of predictions against the truth, and the statistic of
any subset of samples (the paired bootstrap recomputes it on resamples):

========================  ==================  =====================================================
task                      prediction          statistic (its name in the report)
========================  ==================  =====================================================
``ClassificationTask``    class index         accuracy (share of correct samples)
``ForecastingTask``       forecast values     mse (mean squared error; lower is better)
``SegmentationTask``      label map           dice, or miou when the task selects on IoU (class means)
``Seq2SeqTask``           generated text      the text metric's primary aggregate (e.g. an error rate)
========================  ==================  =====================================================

The numbers equal those the task logs at test (``test_accuracy``, ``test_mse``, ``test_dice`` …) on the
same samples. :func:`split_batches` serves a split's batches in dataset order, on a device, through the
datamodule's batch transform, to score or to extract features without a Trainer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from verticals.core.tasks.base import AdapterTask
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.forecasting import ForecastingTask
from verticals.core.tasks.segmentation import SegmentationTask, class_mean
from verticals.core.tasks.seq2seq import Seq2SeqTask

__all__ = [
    "ClassificationScoring",
    "ForecastingScoring",
    "SegmentationScoring",
    "Seq2SeqScoring",
    "TaskScoring",
    "concatenate",
    "network_inputs",
    "scoring_for",
    "split_batches",
]


class TaskScoring:
    """How one task type's test predictions are scored per sample (see the module docstring).

    Args:
        task: the trained task; its hyperparameters (classes, ignored label, text metric …) define the scoring.

    Attributes:
        metric: the statistic's name, as in the report's test metrics without ``test_``.
        higher_is_better: the statistic's direction.
        in_points: the statistic is a share in [0, 1], so differences are read in percentage points.
    """

    metric = ""
    higher_is_better = True
    in_points = True

    def __init__(self, task: AdapterTask) -> None:
        self.task = task

    def adapter_predictions(self, batch: Any) -> Any:
        """The trained task's predictions for a batch (the model as tested).

        Args:
            batch: a test batch on the task's device.
        """
        return self.network_predictions(self.task.model, batch)

    def network_predictions(self, network: nn.Module, batch: Any) -> Any:
        """Predictions of ``network``, a model of the kind the task trains (a rebuilt frozen one, say).

        Args:
            network: the model to predict with.
            batch: a test batch on the network's device.
        """
        raise NotImplementedError

    def truth(self, batch: Any) -> Any:
        """The batch's ground truth, one row (or item) per sample.

        Args:
            batch: a test batch.
        """
        return batch["y"].detach().cpu().numpy()

    def per_sample(self, predictions: Any, truth: Any) -> dict[str, np.ndarray]:
        """Per-sample arrays (first dimension = samples) that :meth:`statistic` reads.

        Args:
            predictions: the predictions of some samples, joined over batches.
            truth: their ground truth, joined the same way.
        """
        raise NotImplementedError

    def statistic(self, arrays: Mapping[str, np.ndarray]) -> float:
        """The metric on the samples whose arrays are given (any subset, e.g. a bootstrap resample).

        Args:
            arrays: per-sample arrays from :meth:`per_sample`, restricted to the samples to score.
        """
        raise NotImplementedError


class ClassificationScoring(TaskScoring):
    """Arg-max class against the label; accuracy."""

    metric = "accuracy"

    def network_predictions(self, network: nn.Module, batch: Any) -> np.ndarray:
        return network(batch["x"]).argmax(dim=-1).cpu().numpy()

    def per_sample(self, predictions: Any, truth: Any) -> dict[str, np.ndarray]:
        predictions, truth = np.asarray(predictions).reshape(-1), np.asarray(truth).reshape(-1)
        return {"correct": (predictions == truth).astype(np.float64)}

    def statistic(self, arrays: Mapping[str, np.ndarray]) -> float:
        return float(np.mean(arrays["correct"])) if len(arrays["correct"]) else math.nan


class ForecastingScoring(TaskScoring):
    """Forecast against the target window; mean squared error (lower is better), in the model's units."""

    metric = "mse"
    higher_is_better = False
    in_points = False

    def network_predictions(self, network: nn.Module, batch: Any) -> np.ndarray:
        return network(batch["x"]).detach().float().cpu().numpy()

    def per_sample(self, predictions: Any, truth: Any) -> dict[str, np.ndarray]:
        predictions, truth = np.asarray(predictions, dtype=np.float64), np.asarray(truth, dtype=np.float64)
        if predictions.shape != truth.shape:
            raise ValueError(
                f"Forecasts of shape {predictions.shape} do not match the targets {truth.shape}: give one "
                "forecast per test window, shaped like its target."
            )
        return {"squared_error": ((predictions - truth) ** 2).reshape(len(truth), -1).mean(axis=1)}

    def statistic(self, arrays: Mapping[str, np.ndarray]) -> float:
        errors = arrays["squared_error"]
        return float(np.mean(errors)) if len(errors) else math.nan


class SegmentationScoring(TaskScoring):
    """Label maps against the masks; Dice (or IoU, for a task that selects its checkpoint on mIoU) per sample
    and class, undefined where a class is absent from the truth (MONAI's ``ignore_empty``), averaged per
    class over samples, then over classes (``test_dice`` / ``test_miou``)."""

    metric = "dice"

    def __init__(self, task: AdapterTask) -> None:
        super().__init__(task)
        if "iou" in str(task.monitor).lower():
            self.metric = "miou"

    def adapter_predictions(self, batch: Any) -> np.ndarray:
        task = self.task
        logits = task.infer(batch["x"], inputs=task.model_inputs(batch))
        return task.labels_from_logits(logits).cpu().numpy()

    def network_predictions(self, network: nn.Module, batch: Any) -> np.ndarray:
        task = self.task
        inputs = network_inputs(network, batch)
        roi_size = task.hparams.get("roi_size")
        if roi_size is not None and not inputs:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(
                batch["x"],
                roi_size=list(roi_size),
                sw_batch_size=task.hparams["sw_batch_size"],
                predictor=network,
                overlap=task.hparams["overlap"],
                mode=task.hparams["sw_mode"],
            )
        else:
            logits = network(batch["x"], **inputs)
        return task.labels_from_logits(logits).cpu().numpy()

    def truth(self, batch: Any) -> np.ndarray:
        return batch["y"].detach().long().cpu().numpy()

    def per_sample(self, predictions: Any, truth: Any) -> dict[str, np.ndarray]:
        predicted = torch.as_tensor(np.asarray(predictions)).long()
        target = torch.as_tensor(np.asarray(truth)).long()
        if predicted.shape != target.shape:
            raise ValueError(
                f"Label maps of shape {tuple(predicted.shape)} do not match the masks {tuple(target.shape)}."
            )
        ignore = self.task.hparams.get("ignore_index")
        valid = None if ignore is None else target != ignore
        columns = []
        for label in self.task.metric_labels:
            mine, true = predicted == label, target == label
            if valid is not None:
                mine, true = mine & valid, true & valid
            overlap = (mine & true).flatten(1).sum(1).double()
            sizes = mine.flatten(1).sum(1).double() + true.flatten(1).sum(1).double()
            present = true.flatten(1).any(1)
            if self.metric == "dice":
                value = 2 * overlap / sizes.clamp_min(1)
            else:
                value = overlap / (sizes - overlap).clamp_min(1)
            columns.append(torch.where(present, value, torch.nan))
        return {self.metric: torch.stack(columns, dim=1).numpy()}

    def statistic(self, arrays: Mapping[str, np.ndarray]) -> float:
        values = arrays[self.metric]
        return class_mean({"values": values}, key="values") if len(values) else math.nan


class Seq2SeqScoring(TaskScoring):
    """Greedy text against the reference; the text metric's primary aggregate from per-sample counts."""

    def __init__(self, task: AdapterTask) -> None:
        super().__init__(task)
        self.text_metric = task.configure_metrics()["text"]
        self.metric = self.text_metric.primary
        self.higher_is_better = bool(self.text_metric.aggregates[self.metric])

    def adapter_predictions(self, batch: Any) -> list[str]:
        return list(self.task.generate_text(batch["input_features"]))

    def network_predictions(self, network: nn.Module, batch: Any) -> list[str]:
        tokenizer = self.task.tokenizer
        if tokenizer is None:
            raise ValueError("The task has no tokenizer to decode another model's output with.")
        generated = network.generate(
            input_features=batch["input_features"], max_new_tokens=self.task.hparams["max_new_tokens"]
        )
        sequences = generated.sequences if hasattr(generated, "sequences") else generated
        return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]

    def truth(self, batch: Any) -> list[str]:
        return [str(text) for text in batch["text"]]

    def per_sample(self, predictions: Any, truth: Any) -> dict[str, np.ndarray]:
        statistics = self.text_metric.sample_statistics(list(truth), list(predictions))
        return {name: value.detach().cpu().numpy() for name, value in statistics.items()}

    def statistic(self, arrays: Mapping[str, np.ndarray]) -> float:
        return float(self.text_metric.aggregate(arrays)[self.metric])


def scoring_for(task: AdapterTask) -> TaskScoring | None:
    """The scoring of ``task``'s type (subclasses included); None for a task type without one.

    Args:
        task: the trained task.
    """
    for kind, scoring in (
        (ClassificationTask, ClassificationScoring),
        (ForecastingTask, ForecastingScoring),
        (SegmentationTask, SegmentationScoring),
        (Seq2SeqTask, Seq2SeqScoring),
    ):
        if isinstance(task, kind):
            return scoring(task)
    return None


def network_inputs(network: nn.Module, batch: Any, function: Any = None) -> dict[str, Any]:
    """The batch entries a network takes besides ``x`` (those its ``batch_inputs`` attribute names), keeping
    only those ``function`` (default: the network's ``forward``) accepts as keywords.

    Args:
        network: the model (a peft wrapper is looked through).
        batch: the batch.
        function: the method the entries are for (e.g. ``forward_features``).
    """
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    names = [
        name for name in getattr(base, "batch_inputs", ()) if isinstance(batch, Mapping) and name in batch
    ]
    if not names:
        return {}
    try:
        parameters = inspect.signature(function or base.forward).parameters
    except (TypeError, ValueError):
        return {name: batch[name] for name in names}
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return {name: batch[name] for name in names}
    return {name: batch[name] for name in names if name in parameters}


def split_batches(
    datamodule: Any, split: str, device: torch.device | str, *, limit: int | None = None
) -> Iterator[Any]:
    """The batches of ``split`` in dataset order (no shuffling), moved to ``device`` and through the
    datamodule's batch transform (``transform_batch(batch, split)`` where it has one, as a Trainer's
    ``on_after_batch_transfer``); at most ``limit`` batches.

    Args:
        datamodule: a verticals datamodule (``dataloader(split, shuffle=False)``) or any with
            ``<split>_dataloader()``.
        split: ``train``, ``val`` or ``test``.
        device: where the batches go.
        limit: the most batches to serve (None: all).
    """
    if hasattr(datamodule, "dataloader"):
        loader = datamodule.dataloader(split, shuffle=False)
    else:
        loader = getattr(datamodule, f"{split}_dataloader")()
    transform = getattr(datamodule, "transform_batch", None)
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        batch = move_data_to_device(batch, torch.device(device))
        yield transform(batch, split) if transform is not None else batch


def concatenate(parts: Sequence[Any]) -> Any:
    """Per-batch predictions or truths joined along the samples (arrays stacked, lists chained).

    Args:
        parts: one entry per batch.
    """
    if not parts:
        return np.zeros(0)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)
    return [item for part in parts for item in part]
