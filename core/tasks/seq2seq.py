"""Sequence-to-sequence tasks on Hugging Face-style encoder-decoders (``loss`` from ``labels``, ``generate``).

Training is teacher-forced cross-entropy (the model's own ``loss`` from ``labels`` padded with -100, plus any
regulariser the adapter exposes, e.g. S2-LoRA's L1 penalty); validation and test decode greedily with a cap
on new tokens and score the generated text with the task's text metric (a ``SequenceMetric`` named in the
config), overall and per group, and at test time with bootstrap CIs in the ``GroupReport``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import instantiate_class
from torchmetrics import MetricCollection

from verticals.core.adapters.summary import ParameterSummary, parameter_summary
from verticals.core.group_report import GroupMetric, GroupReport, GroupReportResults
from verticals.core.metrics.text import SequenceMetric, TokenErrorRate
from verticals.core.tasks.base import AdapterTask

__all__ = ["Seq2SeqTask", "build_text_metric"]

TextMetricSpec = dict[str, Any] | str | SequenceMetric | None


def build_text_metric(spec: TextMetricSpec) -> SequenceMetric:
    """A ``SequenceMetric`` from a ``{class_path, init_args}`` dict, a class path, an instance or None.

    None gives the domain-free default, :class:`TokenErrorRate`.
    """
    if spec is None:
        return TokenErrorRate()
    if isinstance(spec, SequenceMetric):
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise TypeError(
            f"`text_metric` must be a {{class_path, init_args}} dict, a class path or a SequenceMetric, got {spec!r}."
        )
    unknown = set(spec) - {"class_path", "init_args"}
    if unknown:
        raise TypeError(f"`text_metric` takes only `class_path` and `init_args`; got also {sorted(unknown)}.")
    metric = instantiate_class(
        (), {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    )
    if not isinstance(metric, SequenceMetric):
        raise TypeError(
            f"`text_metric` {spec['class_path']!r} built a {type(metric).__name__}; it must subclass "
            "verticals.core.metrics.text.SequenceMetric (per-sample statistics + aggregates)."
        )
    return metric


def _spec_of(spec: TextMetricSpec, metric: SequenceMetric) -> dict[str, Any]:
    """A plain-types record of the metric for hparams (an instance records only its class)."""
    if isinstance(spec, Mapping):
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    return {"class_path": f"{type(metric).__module__}.{type(metric).__qualname__}", "init_args": {}}


class Seq2SeqTask(AdapterTask):
    """Teacher-forced training and generation-based text metrics for an encoder-decoder.

    The registered model must return an output with ``.loss`` when called with ``input_features`` and
    ``labels``, and offer ``generate(input_features, max_new_tokens=...)``; a model exposing ``.backbone`` is
    adapted as a whole and fingerprinted by its backbone. Batches carry ``input_features``, ``labels`` (-100
    padding), ``text`` (reference strings) and, optionally, ``group`` (``[N, A]`` codes of the datamodule's
    ``group_attributes``).

    Args:
        max_new_tokens: cap on generated tokens (greedy decoding can loop on noisy inputs).
        text_metric: the ``SequenceMetric`` that scores generated text, as ``{class_path, init_args}``
            (e.g. a domain's error rate after its text normaliser); default :class:`TokenErrorRate`. Its
            ``primary`` aggregate is logged as ``{stage}_<primary>``, per group, and monitored.
        generate_at_validation: decode at validation to log the text metric (the default monitor); False
            logs only the teacher-forced ``val_loss`` (cheaper) and monitors it.
        group_attribute: which group attribute the logged per-group values split by (default: the
            datamodule's first); the test-end ``GroupReport`` covers every attribute.
        group_names: the categories of ``group_attribute`` (``group_names[code]`` for the codes of its
            ``group`` column), used in the logged per-group keys; default: the datamodule's.
        n_bootstrap: bootstrap resamples of the test-end group report's CIs (0: no CIs); more gives steadier
            interval ends at a higher cost.
        ci_confidence: level of those CIs, in (0, 1), e.g. 0.95.
        group_objective: not taken by this task (its steps compute no per-sample losses); leave it unset.
    """

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self,
        *args: Any,
        max_new_tokens: int = 64,
        text_metric: dict[str, Any] | str | None = None,
        generate_at_validation: bool = True,
        group_attribute: str | None = None,
        group_names: list[str] | None = None,
        n_bootstrap: int = 1000,
        ci_confidence: float = 0.95,
        **kwargs: Any,
    ) -> None:
        if "normalizer" in kwargs:
            raise TypeError(
                f"Seq2SeqTask no longer takes `normalizer` (got {kwargs['normalizer']!r}): text normalisation "
                "belongs to the text metric. Name one that normalises, e.g. `text_metric: {class_path: "
                f"verticals.domains.<domain>.metrics.<Metric>, init_args: {{normalizer: {kwargs['normalizer']}}}}}`."
            )
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}.")
        if not 0.0 < ci_confidence < 1.0:
            raise ValueError(f"`ci_confidence` must be in (0, 1), got {ci_confidence}.")
        if n_bootstrap < 0:
            raise ValueError(f"`n_bootstrap` must be >= 0 (0: no CIs), got {n_bootstrap}.")
        metric = build_text_metric(text_metric)
        # A factory, not the metric itself: a Module can't be assigned before LightningModule.__init__.
        self._new_text_metric: Callable[[], SequenceMetric] = functools.partial(copy.deepcopy, metric)
        if kwargs.get("monitor") is None:
            if generate_at_validation:
                higher = metric.aggregates[metric.primary]
                kwargs["monitor"], kwargs["monitor_mode"] = (
                    f"val_{metric.primary}",
                    "max" if higher else "min",
                )
            else:
                kwargs["monitor"], kwargs["monitor_mode"] = "val_loss", "min"
        self.tokenizer: Any = None
        super().__init__(*args, **kwargs)
        self._set_inferred("text_metric", _spec_of(text_metric, metric))

    # -- model ---------------------------------------------------------------------------
    def configure_losses(self) -> None:
        """The loss is the model's own teacher-forced cross-entropy (``labels`` padded with -100)."""

    def configure_metrics(self) -> MetricCollection:
        return MetricCollection({"text": self._new_text_metric()})

    def model_outputs_kwargs(self) -> dict[str, Any]:
        return {}

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        if self.hparams.get("input_shape") is None:
            shape = getattr(datamodule, "input_shape", None)
            if shape is None and getattr(datamodule, "feature_extractor", None) is not None:
                extractor = datamodule.feature_extractor
                shape = (extractor.feature_size, extractor.nb_max_frames)
            if shape is not None:
                self._set_inferred("input_shape", [int(v) for v in shape])
        if self.tokenizer is None:
            self.tokenizer = getattr(datamodule, "tokenizer", None)
        if self.hparams.get("group_names") is None and getattr(datamodule, "group_names", None):
            attribute, names = self._split_groups(datamodule)
            self._set_inferred("group_attribute", attribute)
            self._set_inferred("group_names", names)

    def setup(self, stage: str) -> None:
        """Take the tokenizer and groups from the datamodule also when the model was given ready-built."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            self._infer_from_datamodule(datamodule)

    def _split_groups(self, datamodule: Any) -> tuple[str, list[str]]:
        """The attribute the logged per-group values split by, and its group names, from a datamodule."""
        attributes = list(getattr(datamodule, "group_attributes", None) or list(datamodule.group_names))
        attribute = self.hparams.get("group_attribute") or attributes[0]
        if attribute not in attributes:
            raise ValueError(f"`group_attribute` {attribute!r} is not one of the datamodule's {attributes}.")
        return attribute, list(datamodule.group_names[attribute])

    def configure_model(self) -> None:
        if self.net is not None:
            return
        super().configure_model()
        if self.tokenizer is None:
            processor = getattr(self._base_network(), "processor", None)
            self.tokenizer = getattr(processor, "tokenizer", processor)

    def parameter_summary(self) -> ParameterSummary:
        base = self._base_network()
        if hasattr(base, "backbone"):
            return super().parameter_summary()
        return parameter_summary(self.model, ignore=getattr(base, "unused_parameters", ()))

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.model(input_features=input_features, labels=labels)

    @torch.no_grad()
    def generate_text(self, input_features: torch.Tensor) -> list[str]:
        """Greedy outputs (decoded, stripped, not normalised) of a batch of inputs."""
        if self.tokenizer is None:
            raise RuntimeError(
                "Seq2SeqTask has no tokenizer to decode with: use a datamodule with a `tokenizer` attribute or "
                "a model with a `processor`."
            )
        generated = self.model.generate(
            input_features=input_features, max_new_tokens=self.hparams["max_new_tokens"]
        )
        sequences = generated.sequences if hasattr(generated, "sequences") else generated
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]

    # -- steps ---------------------------------------------------------------------------
    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        features, labels = batch["input_features"], batch["labels"]
        size = len(features)
        output = self(features, labels=labels)
        loss = output.loss
        loss = self.adapter_loss(loss, stage)  # + the adapter's regulariser when training
        self.log(
            f"{stage}_loss",
            loss,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=size,
            sync_dist=True,  # the mean over every process's samples
        )
        if stage == "test" or (stage == "val" and self.hparams["generate_at_validation"]):
            groups = batch.get("group")
            metric = getattr(self, f"{stage}_metrics")["text"]
            metric.update(batch["text"], self.generate_text(features), groups)
            if stage == "test":
                self._last_outputs = dict(metric.last_statistics)
                if groups is not None:
                    self._last_outputs["group"] = groups[:, None] if groups.ndim == 1 else groups
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """The text metric's per-sample statistics (and ``group``), for the ``GroupReport``."""
        self._last_outputs = {}
        self._step(batch, "test")
        return self._last_outputs

    def on_validation_epoch_end(self) -> None:
        if self.hparams["generate_at_validation"]:
            self._log_text_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_text_metric("test")

    def _logged_groups(self) -> tuple[int, list[str]]:
        """The group column and names the logged per-group values use: the datamodule's at the time, so a
        checkpoint tested on data with other groups logs that data's groups."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "group_names", None):
            attribute, names = self._split_groups(datamodule)
            attributes = list(getattr(datamodule, "group_attributes", None) or list(datamodule.group_names))
            return attributes.index(attribute), names
        return 0, list(self.hparams.get("group_names") or [])

    def _log_text_metric(self, stage: str) -> None:
        """Log every aggregate, and the primary one per group with the worst group and the gap, from the
        samples of every process."""
        metric = getattr(self, f"{stage}_metrics")["text"]
        with metric.sync_context(should_sync=metric._to_sync, should_unsync=True):
            arrays = metric.arrays()
        metric.reset()
        if not len(arrays["group"]):
            return
        values = metric.aggregate(arrays)
        primary = metric.primary
        # The metric gathered every process's samples: the same values on each (sync_dist keeps them).
        self.log(f"{stage}_{primary}", values[primary], prog_bar=True, sync_dist=True)
        logged = {f"{stage}_{name}": value for name, value in values.items() if name != primary}
        column, names = self._logged_groups()
        codes = (
            arrays["group"][:, column]
            if column < arrays["group"].shape[1]
            else np.zeros(len(arrays["group"]))
        )
        unnamed = sorted({int(code) for code in codes if not 0 <= code < len(names)})
        if names and unnamed:  # never drop or relabel groups the names don't cover
            raise ValueError(
                f"The {stage} data has group code(s) {unnamed} but the task knows only the groups {names} "
                "(from its checkpoint); test through a datamodule whose `group_names` name every group."
            )
        per_group = {}
        for code, name in enumerate(names):
            rows = codes == code
            if rows.any():
                per_group[name] = metric.aggregate({key: value[rows] for key, value in arrays.items()})[
                    primary
                ]
                logged[f"{stage}_{primary}_{name}"] = per_group[name]
        if len(per_group) > 1:
            worst = max(per_group.values()) if not metric.aggregates[primary] else min(per_group.values())
            logged[f"{stage}_{primary}_worst_group"] = worst
            logged[f"{stage}_{primary}_gap"] = max(per_group.values()) - min(per_group.values())
        self.log_dict(logged, sync_dist=True)

    # -- group report --------------------------------------------------------------------
    def group_report_callback(self) -> L.Callback:
        """Always a ``GroupReport``: the text metric per group with bootstrap CIs."""
        return GroupReport(n_bootstrap=self.hparams["n_bootstrap"], confidence=self.hparams["ci_confidence"])

    def group_report_metrics(self) -> dict[str, GroupMetric]:
        """Every aggregate of the text metric, as a function of the per-sample statistics of any samples."""
        return self.test_metrics["text"].group_report_metrics()

    def extra_group_report(
        self,
        arrays: Mapping[str, np.ndarray],
        groups: Mapping[str, np.ndarray],
        directory: Path,
        results: GroupReportResults,
    ) -> Any:
        """What the text metric adds to the report (e.g. a per-sample table), if it has an own hook."""
        extra = getattr(self.test_metrics["text"], "extra_group_report", None)
        return extra(arrays, groups, directory, results) if extra is not None else None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self.generate_text(batch["input_features"])
