"""Word and character error rates of transcripts, after a Whisper text normaliser, per utterance and group.

``TranscriptErrors`` is the text metric the speech configs give ``Seq2SeqTask``
(``text_metric: {class_path: verticals.domains.speech.metrics.TranscriptErrors, init_args: {normalizer:
whisper_english}}``): corpus WER/CER are errors summed over utterances divided by reference words /
characters (jiwer's counts), and at test end it adds the per-utterance table
``test_utterance_errors.csv`` to the group report, for paired comparisons between runs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from verticals.core.group_report import GroupReportResults
from verticals.core.metrics import bootstrap_indices, percentile_interval
from verticals.core.metrics.text import SequenceMetric, error_rate

__all__ = [
    "NORMALIZERS",
    "UTTERANCE_TABLE",
    "TranscriptErrors",
    "control_share",
    "pooled_wer",
    "read_utterance_table",
    "text_normalizer",
    "utterance_errors",
    "utterance_rows",
    "write_utterance_table",
]

NORMALIZERS = ("whisper_english", "whisper_basic", "lower", "none")
UTTERANCE_TABLE = "test_utterance_errors.csv"
_COUNTS = ("word_errors", "words", "char_errors", "chars")


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
    import jiwer

    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return word_errors, len(ref_words), char_errors, len(reference)


class TranscriptErrors(SequenceMetric):
    """Per-utterance word and character error counts after a transcript normaliser; corpus WER and CER.

    Args:
        normalizer: applied to references and hypotheses before counting (see :func:`text_normalizer`):
            ``whisper_english`` (default), ``whisper_basic`` (other languages), ``lower`` or ``none``. WERs
            compare only under the same one.
    """

    statistics = _COUNTS
    aggregates = {"wer": False, "cer": False}
    primary = "wer"
    higher_is_better = False

    def __init__(self, normalizer: str = "whisper_english", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalizer = normalizer
        self.normalize = text_normalizer(normalizer)

    def sample_statistics(
        self, references: Sequence[str], hypotheses: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        counts = torch.tensor(
            [utterance_errors(self.normalize(r), self.normalize(h)) for r, h in zip(references, hypotheses)],
            dtype=torch.long,
        ).reshape(-1, len(_COUNTS))
        return {name: counts[:, column] for column, name in enumerate(_COUNTS)}

    def aggregate(self, statistics: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {
            "wer": error_rate(statistics["word_errors"], statistics["words"]),
            "cer": error_rate(statistics["char_errors"], statistics["chars"]),
        }

    def extra_group_report(
        self,
        arrays: Mapping[str, np.ndarray],
        groups: Mapping[str, np.ndarray],
        directory: Path,
        results: GroupReportResults,
    ) -> list[dict[str, Any]]:
        """Write ``test_utterance_errors.csv`` beside the group report; returns its rows."""
        rows = utterance_rows(arrays, groups)
        write_utterance_table(rows, Path(directory) / UTTERANCE_TABLE)
        return rows


def utterance_rows(
    arrays: Mapping[str, np.ndarray], groups: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Error counts per utterance, in test-loader order, with the utterance's group under each attribute."""
    rows = []
    for index in range(len(arrays["words"])):
        row: dict[str, Any] = {"utterance": index}
        row.update({attribute: str(values[index]) for attribute, values in groups.items()})
        row.update({column: int(arrays[column][index]) for column in _COUNTS})
        rows.append(row)
    return rows


def write_utterance_table(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The per-utterance table as CSV (header from the first row); nothing is written for no rows."""
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_utterance_table(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``test_utterance_errors.csv``, counts as integers."""
    with Path(path).open(newline="") as handle:
        return [
            {key: int(value) if key in (*_COUNTS, "utterance") else value for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def pooled_wer(word_errors: np.ndarray, words: np.ndarray) -> float:
    """Corpus WER of some utterances: their word errors summed over their reference words summed (NaN for
    no words)."""
    total = float(np.sum(words))
    return float(np.sum(word_errors)) / total if total else math.nan


def control_share(
    reference: Mapping[str, np.ndarray],
    control: Mapping[str, np.ndarray],
    method: Mapping[str, np.ndarray],
    condition: str,
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, float]:
    """What share of a method's WER gain over a reference a control already gets, on one condition:
    ``(reference - control) / (reference - method)``, with a 95% percentile interval over utterance resamples
    shared by the three (resamples where the method gains nothing are dropped).

    Why: a gain that a control trained without the shifted condition also gets is not adaptation to that
    condition (1 = the control gets all of it).

    Args:
        reference: per-utterance arrays ``condition``, ``word_errors`` and ``words`` of the reference run (e.g.
            zero-shot), in test-loader order; ``control`` and ``method`` hold the same utterances, in the same
            order (their ``word_errors`` are read).
        control: the control run's arrays.
        method: the method's arrays.
        condition: the condition whose utterances are compared.
        n_bootstrap: utterance resamples for the interval.
        seed: seed of the resamples.
    """
    rows = np.flatnonzero(np.asarray(reference["condition"]) == condition)
    words = np.asarray(reference["words"])[rows]
    errors = [np.asarray(arrays["word_errors"])[rows] for arrays in (reference, control, method)]

    def share(index: np.ndarray | slice) -> float:
        base, controlled, adapted = (pooled_wer(e[index], words[index]) for e in errors)
        return (base - controlled) / (base - adapted) if base - adapted > 0 else math.nan

    value = share(slice(None))
    draws = np.asarray([share(i) for i in bootstrap_indices(len(rows), max(n_bootstrap, 1), seed=seed)])
    draws = draws[~np.isnan(draws)]
    low, high = percentile_interval(draws) if len(draws) else (math.nan, math.nan)
    return {"value": value, "low": low, "high": high}
