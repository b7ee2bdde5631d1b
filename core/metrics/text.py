"""Metrics of generated text against references, streamed per sample so they can be split by group.

A ``SequenceMetric`` is the contract ``Seq2SeqTask`` scores with: a torchmetrics ``Metric`` updated with
``(references, hypotheses, groups)`` that keeps per-sample statistics (gathered across processes with
``cat``) and turns any subset of them into its aggregates (``aggregate``), so the same function gives the
corpus value, the value of a group and a bootstrap resample. ``TokenErrorRate`` is the domain-free default
(edit distance over white-space tokens and characters, and exact match); a domain brings its own (e.g. a
word error rate after its text normaliser) by ``class_path`` in the task's config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.text.helper import _edit_distance
from torchmetrics.utilities import dim_zero_cat

__all__ = ["SequenceMetric", "TokenErrorRate", "error_rate", "token_errors"]


def error_rate(errors: np.ndarray, totals: np.ndarray) -> float:
    """Pooled rate ``sum(errors) / sum(totals)`` (NaN when there is nothing to count).

    Args:
        errors: per-sample error counts.
        totals: per-sample reference counts (words, tokens, characters).
    """
    total = float(np.sum(totals))
    return float(np.sum(errors)) / total if total else float("nan")


class SequenceMetric(Metric):
    """Per-sample statistics of (reference, hypothesis) pairs and the aggregates computed from them.

    Subclasses declare ``statistics`` (names of the per-sample counts), ``aggregates`` (name -> higher is
    better), ``primary`` (the aggregate logged on the progress bar, split by group and monitored), and
    implement ``sample_statistics`` and ``aggregate``. ``aggregate`` must work on any subset of samples:
    the group report calls it per group and per bootstrap resample.
    """

    statistics: ClassVar[tuple[str, ...]] = ()
    aggregates: ClassVar[dict[str, bool]] = {}
    primary: ClassVar[str] = ""
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.primary not in self.aggregates or not self.statistics:
            raise TypeError(
                f"{type(self).__name__} must declare `statistics`, `aggregates` and a `primary` among the "
                f"aggregates; got statistics={self.statistics}, aggregates={list(self.aggregates)}, "
                f"primary={self.primary!r}."
            )
        for name in (*self.statistics, "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.last_statistics: dict[str, torch.Tensor] = {}

    def sample_statistics(
        self, references: Sequence[str], hypotheses: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``{statistic: Tensor[N]}`` for N (reference, hypothesis) pairs."""
        raise NotImplementedError

    def aggregate(self, statistics: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Every aggregate from the per-sample statistics of some samples (numpy arrays, one row each)."""
        raise NotImplementedError

    def update(
        self, references: Sequence[str], hypotheses: Sequence[str], groups: torch.Tensor | None = None
    ) -> None:
        """Add a batch; its per-sample statistics stay in ``last_statistics`` (what a test step hands to the
        group report: torchmetrics' ``update`` returns nothing).

        ``groups``: ``[N]`` or ``[N, A]`` group codes, or None (every sample in group 0).
        """
        if len(references) != len(hypotheses) or (groups is not None and len(references) != len(groups)):
            raise ValueError(
                f"Got {len(references)} references, {len(hypotheses)} hypotheses and "
                f"{len(groups) if groups is not None else 'no'} group codes; they must be one per sample."
            )
        statistics = {
            name: value.to(self.device).reshape(-1)
            for name, value in self.sample_statistics(references, hypotheses).items()
        }
        missing = set(self.statistics) - set(statistics)
        if missing:
            raise KeyError(f"{type(self).__name__}.sample_statistics did not return {sorted(missing)}.")
        for name in self.statistics:
            getattr(self, name).append(statistics[name])
        codes = torch.zeros(len(references), 1, dtype=torch.long) if groups is None else groups
        self.group.append(codes.to(self.device).long().reshape(len(references), -1))
        self.last_statistics = statistics

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-sample statistics and ``group`` (``[N, A]``) as numpy arrays (after any gathering)."""
        out = {}
        for name in (*self.statistics, "group"):
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                out[name] = np.zeros((0, 1) if name == "group" else 0, dtype=np.int64)
            else:
                out[name] = dim_zero_cat(state).cpu().numpy()
        if out["group"].ndim == 1:
            out["group"] = out["group"][:, None]
        return out

    def compute(self) -> dict[str, float]:
        return self.aggregate(self.arrays())

    def group_report_metrics(self) -> dict[str, Any]:
        """``GroupReport`` metrics: each aggregate as a function of per-sample arrays, with its direction."""
        from verticals.core.group_report import GroupMetric

        return {
            name: GroupMetric(_AggregateOf(self.aggregate, name), higher_is_better=higher)
            for name, higher in self.aggregates.items()
        }


class _AggregateOf:
    """One named aggregate of a metric's ``aggregate`` (a picklable callable, unlike a lambda)."""

    def __init__(self, aggregate: Callable[[Mapping[str, np.ndarray]], dict[str, float]], name: str) -> None:
        self.function, self.name = aggregate, name

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> float:
        return self.function(arrays)[self.name]


def token_errors(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(token edits, reference tokens, character edits, reference characters) of one pair.

    Tokens are white-space separated; edits are Levenshtein substitutions + deletions + insertions
    (torchmetrics' word and character error rates count the same). An empty reference counts every
    hypothesis token as an insertion over zero reference tokens.

    Args:
        reference: the reference text.
        hypothesis: the generated text.
    """
    ref_tokens, hyp_tokens = reference.split(), hypothesis.split()
    return (
        _edit_distance(hyp_tokens, ref_tokens),
        len(ref_tokens),
        _edit_distance(list(hypothesis), list(reference)),
        len(reference),
    )


class TokenErrorRate(SequenceMetric):
    """Token error rate over white-space tokens, character error rate and exact match: no domain needed.

    Args:
        lowercase: compare case-insensitively.
        collapse_whitespace: strip and collapse runs of white space before comparing (so character
            counts do not depend on spacing).
    """

    statistics = ("token_errors", "tokens", "char_errors", "chars", "exact")
    aggregates = {"token_error_rate": False, "char_error_rate": False, "exact_match": True}
    primary = "token_error_rate"
    higher_is_better = False

    def __init__(self, lowercase: bool = False, collapse_whitespace: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lowercase, self.collapse_whitespace = lowercase, collapse_whitespace

    def _normalize(self, text: str) -> str:
        text = text.lower() if self.lowercase else text
        return " ".join(text.split()) if self.collapse_whitespace else text

    def sample_statistics(
        self, references: Sequence[str], hypotheses: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        pairs = [(self._normalize(r), self._normalize(h)) for r, h in zip(references, hypotheses)]
        counts = torch.tensor([(*token_errors(r, h), int(r == h)) for r, h in pairs], dtype=torch.long)
        counts = counts.reshape(-1, len(self.statistics))
        return {name: counts[:, column] for column, name in enumerate(self.statistics)}

    def aggregate(self, statistics: Mapping[str, np.ndarray]) -> dict[str, float]:
        exact = np.asarray(statistics["exact"])
        return {
            "token_error_rate": error_rate(statistics["token_errors"], statistics["tokens"]),
            "char_error_rate": error_rate(statistics["char_errors"], statistics["chars"]),
            "exact_match": float(exact.mean()) if len(exact) else float("nan"),
        }
