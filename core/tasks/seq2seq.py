"""Sequence-to-sequence tasks (speech recognition first) on Hugging Face encoder-decoders.

Training is teacher-forced cross-entropy (the model's own ``loss`` from ``labels`` padded with -100, plus any
regulariser the adapter exposes, e.g. S2-LoRA's L1 penalty); validation and test decode greedily with a cap
on new tokens and score word and character error rates with jiwer after text normalisation, overall and per
group (sum of errors / sum of reference words in each group), with the gap, the worst group and bootstrap
confidence intervals at test time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torchmetrics import Metric, MetricCollection

from verticals.core.adapters.summary import ParameterSummary, parameter_summary
from verticals.core.tasks.base import AdapterTask

__all__ = [
    "NORMALIZERS",
    "Seq2SeqTask",
    "TranscriptErrors",
    "group_report_markdown",
    "group_wer_report",
    "text_normalizer",
    "utterance_errors",
]

NORMALIZERS = ("whisper_english", "whisper_basic", "lower", "none")


def text_normalizer(name: str) -> Callable[[str], str]:
    """A transcript normaliser by name; WER is only comparable between systems under the same one.

    ``whisper_english``: Whisper's ``EnglishTextNormalizer`` with an empty spelling map (works offline);
    ``whisper_basic``: its language-independent ``BasicTextNormalizer``; ``lower``: lower-case and collapse
    white space; ``none``: collapse white space only.
    """
    if name == "whisper_english":
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        return EnglishTextNormalizer({})
    if name == "whisper_basic":
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        return BasicTextNormalizer()
    if name == "lower":
        return lambda text: " ".join(text.lower().split())
    if name == "none":
        return lambda text: " ".join(text.split())
    raise ValueError(f"`normalizer` must be one of {list(NORMALIZERS)}, got {name!r}.")


def utterance_errors(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(word errors, reference words, character errors, reference characters) of one normalised pair.

    An empty reference counts every hypothesis word (character) as an insertion over zero reference words,
    so it still adds to the group's errors instead of being dropped.
    """
    ref_words, hyp_words = reference.split(), hypothesis.split()
    if not ref_words:
        return len(hyp_words), 0, len(hypothesis), 0
    if not hyp_words:
        return len(ref_words), len(ref_words), len(reference), len(reference)
    import jiwer  # the speech extra's; the core imports without it

    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return word_errors, len(ref_words), char_errors, len(reference)


class TranscriptErrors(Metric):
    """Streams per-utterance error counts and groups (gathered across processes) for corpus and group WER."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("word_errors", "words", "char_errors", "chars", "groups"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, references: Sequence[str], hypotheses: Sequence[str], groups: torch.Tensor) -> None:
        if len(references) != len(hypotheses) or len(references) != len(groups):
            raise ValueError(
                f"Got {len(references)} references, {len(hypotheses)} hypotheses and {len(groups)} group codes; "
                "they must be one per utterance."
            )
        counts = torch.tensor([utterance_errors(r, h) for r, h in zip(references, hypotheses)], device=self.device)
        counts = counts.reshape(-1, 4)
        self.word_errors.append(counts[:, 0])
        self.words.append(counts[:, 1])
        self.char_errors.append(counts[:, 2])
        self.chars.append(counts[:, 3])
        self.groups.append(groups.to(self.device).reshape(-1).long())

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-utterance counts as numpy arrays (after gathering)."""

        def cat(state: Any) -> np.ndarray:
            if isinstance(state, list):
                return torch.cat(state).cpu().numpy() if state else np.zeros(0, dtype=np.int64)
            return state.cpu().numpy().reshape(-1)

        return {name: cat(getattr(self, name)) for name in ("word_errors", "words", "char_errors", "chars", "groups")}

    def compute(self) -> dict[str, float]:
        counts = self.arrays()
        return {
            "wer": _rate(counts["word_errors"], counts["words"]),
            "cer": _rate(counts["char_errors"], counts["chars"]),
        }


def _rate(errors: np.ndarray, totals: np.ndarray) -> float:
    total = float(np.sum(totals))
    return float(np.sum(errors)) / total if total else float("nan")


def group_wer_report(
    counts: dict[str, np.ndarray],
    group_names: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """WER and CER per group with bootstrap CIs (resampling utterances), plus the worst group and the gap."""
    from verticals.core.metrics.bootstrap import bootstrap_ci
    from verticals.core.metrics.fairness import summarize_groups

    def wer(errors: np.ndarray, words: np.ndarray) -> float:
        return _rate(errors, words)

    overall = bootstrap_ci(
        wer, counts["word_errors"], counts["words"], n_resamples=n_bootstrap, confidence=confidence, seed=seed,
        strata=counts["groups"],
    )
    groups: dict[str, dict[str, float]] = {}
    for code, name in enumerate(group_names):
        mask = counts["groups"] == code
        if not mask.any():
            continue
        point, low, high = bootstrap_ci(
            wer, counts["word_errors"][mask], counts["words"][mask], n_resamples=n_bootstrap,
            confidence=confidence, seed=seed,
        )
        groups[name] = {
            "wer": point,
            "wer_low": low,
            "wer_high": high,
            "cer": _rate(counts["char_errors"][mask], counts["chars"][mask]),
            "utterances": int(mask.sum()),
            "words": int(counts["words"][mask].sum()),
        }
    summary = summarize_groups({name: row["wer"] for name, row in groups.items()}, higher_is_better=False)
    return {
        "overall": {
            "wer": overall[0],
            "wer_low": overall[1],
            "wer_high": overall[2],
            "cer": _rate(counts["char_errors"], counts["chars"]),
            "utterances": len(counts["words"]),
        },
        "groups": groups,
        "summary": summary,
        "bootstrap": {"resamples": n_bootstrap, "confidence": confidence, "seed": seed},
    }


def group_report_markdown(report: dict[str, Any]) -> str:
    """The per-group WER table as markdown."""
    level = int(round(100 * report["bootstrap"]["confidence"]))
    lines = [
        f"| group | utterances | WER | {level}% CI | CER |",
        "|---|---|---|---|---|",
    ]
    rows = [("all", report["overall"]), *report["groups"].items()]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['utterances']} | {row['wer']:.4f} | [{row['wer_low']:.4f}, {row['wer_high']:.4f}] "
            f"| {row['cer']:.4f} |"
        )
    summary = {k: v for k, v in report["summary"].items() if isinstance(v, (int, float, str))}
    return "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v}" for k, v in summary.items()) + "\n"


class Seq2SeqTask(AdapterTask):
    """Teacher-forced training and generation-based WER/CER for an encoder-decoder (e.g. Whisper).

    The registered model (``speech.whisper``) must return an output with ``.loss`` when called with
    ``input_features`` and ``labels``, and offer ``generate(input_features, max_new_tokens=...)``; a model
    exposing ``.backbone`` is adapted as a whole and fingerprinted by its backbone. Batches carry
    ``input_features``, ``labels`` (-100 padding), ``text`` (reference transcripts) and, optionally,
    ``group`` (``[N, A]`` codes of the datamodule's ``group_attributes``).

    Args:
        max_new_tokens: cap on generated tokens (greedy decoding can loop on noisy audio).
        normalizer: transcript normaliser applied to references and hypotheses (see :func:`text_normalizer`).
        generate_at_validation: decode at validation to log ``val_wer`` (the default monitor); False logs
            only the teacher-forced ``val_loss`` (cheaper) and monitors it.
        group_attribute: which group attribute WER is split by (default: the datamodule's first).
        n_bootstrap / ci_confidence: bootstrap resamples and level of the per-group CIs at test time.
    """

    monitor = "val_wer"
    mode = "min"

    def __init__(
        self,
        *args: Any,
        max_new_tokens: int = 64,
        normalizer: str = "whisper_english",
        generate_at_validation: bool = True,
        group_attribute: str | None = None,
        group_names: list[str] | None = None,
        n_bootstrap: int = 1000,
        ci_confidence: float = 0.95,
        **kwargs: Any,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}.")
        if not 0.0 < ci_confidence < 1.0:
            raise ValueError(f"`ci_confidence` must be in (0, 1), got {ci_confidence}.")
        self.normalize = text_normalizer(normalizer)
        if not generate_at_validation and kwargs.get("monitor") is None:
            kwargs["monitor"], kwargs["monitor_mode"] = "val_loss", "min"
        self.tokenizer: Any = None
        self.group_report: dict[str, Any] | None = None
        self.test_counts: dict[str, np.ndarray] | None = None
        super().__init__(*args, **kwargs)

    # -- model ---------------------------------------------------------------------------
    def configure_losses(self) -> None:
        """The loss is the model's own teacher-forced cross-entropy (``labels`` padded with -100)."""

    def configure_metrics(self) -> MetricCollection:
        return MetricCollection({"transcript": TranscriptErrors()})

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
            attributes = list(getattr(datamodule, "group_attributes", list(datamodule.group_names)))
            attribute = self.hparams.get("group_attribute") or attributes[0]
            if attribute not in attributes:
                raise ValueError(f"`group_attribute` {attribute!r} is not one of the datamodule's {attributes}.")
            self._set_inferred("group_attribute", attribute)
            self._set_inferred("group_names", list(datamodule.group_names[attribute]))

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self._fill_adalora_total_step()
        super().configure_model()
        if self.tokenizer is None:
            processor = getattr(self._base_network(), "processor", None)
            self.tokenizer = getattr(processor, "tokenizer", processor)

    def _fill_adalora_total_step(self) -> None:
        """AdaLoRA's rank schedule needs the number of optimizer steps: take it from the trainer if unset."""
        spec = self.adapter_spec
        if spec is None or spec.method.lower() != "adalora" or spec.options.get("total_step"):
            return
        minimum = int(spec.options.get("tinit", 0)) + int(spec.options.get("tfinal", 0)) + 1
        trainer = self._trainer
        total = minimum
        if trainer is not None and trainer.state.fn == "fit":
            total = max(int(trainer.estimated_stepping_batches), minimum)
        spec.options = {**spec.options, "total_step": total}
        self.hparams["adapter"]["options"] = dict(spec.options)

    def parameter_summary(self) -> ParameterSummary:
        base = self._base_network()
        if hasattr(base, "backbone"):
            return super().parameter_summary()
        return parameter_summary(self.model, ignore=getattr(base, "unused_parameters", ()))

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.model(input_features=input_features, labels=labels)

    def regularization_loss(self) -> torch.Tensor | None:
        """The adapter's own regulariser (S2-LoRA's ``β Σ‖λ‖₁``), if it has one."""
        model = self.model
        tuner = model.base_model if isinstance(model, PeftModel) else None
        penalty = getattr(type(tuner), "regularization_loss", None) if tuner is not None else None
        return penalty(tuner) if penalty is not None else None

    @torch.no_grad()
    def transcribe(self, input_features: torch.Tensor) -> list[str]:
        """Greedy transcripts (raw, not normalised) of a batch of features."""
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
        penalty = self.regularization_loss() if stage == "train" else None
        if penalty is not None:
            self.log("train_regularization", penalty, on_step=True, on_epoch=True, batch_size=size)
            loss = loss + penalty
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=size)
        if stage == "test" or (stage == "val" and self.hparams["generate_at_validation"]):
            hypotheses = [self.normalize(text) for text in self.transcribe(features)]
            references = [self.normalize(text) for text in batch["text"]]
            groups = batch.get("group")
            codes = groups[:, self._group_column()] if groups is not None else torch.zeros(size, dtype=torch.long)
            getattr(self, f"{stage}_metrics")["transcript"].update(references, hypotheses, codes)
        return loss

    def _group_column(self) -> int:
        attribute = self.hparams.get("group_attribute")
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        attributes = list(getattr(datamodule, "group_attributes", []) or [])
        return attributes.index(attribute) if attribute in attributes else 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        tuner = self.model.base_model if isinstance(self.model, PeftModel) else None
        if tuner is not None and type(tuner).__name__ == "AdaLoraModel":
            tuner.update_and_allocate(self.global_step)  # after the optimizer step, before zero_grad

    def on_validation_epoch_end(self) -> None:
        if self.hparams["generate_at_validation"]:
            self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        counts = self._log_error_rates("test")
        names = self.hparams.get("group_names") or ["all"]
        self.test_counts = counts
        if counts is not None and len(counts["words"]):
            self.group_report = group_wer_report(
                counts, names, n_bootstrap=self.hparams["n_bootstrap"], confidence=self.hparams["ci_confidence"]
            )
            self._write_group_report()

    def _log_error_rates(self, stage: str) -> dict[str, np.ndarray] | None:
        """Log WER/CER overall and per group from the utterances of every process; returns the counts."""
        metric = getattr(self, f"{stage}_metrics")["transcript"]
        with metric.sync_context(should_sync=metric._to_sync, should_unsync=True):
            counts = metric.arrays()
        metric.reset()
        if not len(counts["words"]):
            return None
        self.log(f"{stage}_wer", _rate(counts["word_errors"], counts["words"]), prog_bar=True)
        rates = {f"{stage}_cer": _rate(counts["char_errors"], counts["chars"])}
        names = self.hparams.get("group_names") or []
        per_group = {}
        for code, name in enumerate(names):
            mask = counts["groups"] == code
            if mask.any():
                per_group[name] = _rate(counts["word_errors"][mask], counts["words"][mask])
                rates[f"{stage}_wer_{name}"] = per_group[name]
        if len(per_group) > 1:
            rates[f"{stage}_wer_worst_group"] = max(per_group.values())
            rates[f"{stage}_wer_gap"] = max(per_group.values()) - min(per_group.values())
        self.log_dict(rates)
        return counts

    def _write_group_report(self) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or self.group_report is None:
            return
        from verticals.core.callbacks import run_directory

        directory = Path(run_directory(trainer))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "wer_by_group.json").write_text(json.dumps(self.group_report, indent=2, default=float) + "\n")
        (directory / "wer_by_group.md").write_text(group_report_markdown(self.group_report))
        rows = self.test_utterance_rows()
        if rows:  # per utterance, in test-loader order: paired comparisons between runs
            with (directory / "test_utterance_errors.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)

    def test_utterance_rows(self) -> list[dict[str, Any]]:
        """The last test's error counts per utterance, in test-loader order, with each one's group name."""
        if self.test_counts is None:
            return []
        names = self.hparams.get("group_names") or ["all"]
        columns = ("word_errors", "words", "char_errors", "chars")
        rows = []
        for index, code in enumerate(self.test_counts["groups"].tolist()):
            group = names[code] if code < len(names) else str(code)
            counts = {column: int(self.test_counts[column][index]) for column in columns}
            rows.append({"utterance": index, "group": group, **counts})
        return rows

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        return self.transcribe(batch["input_features"])

