"""Trainable vs total parameters, the figure every PEFT comparison reports."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterSummary:
    """Parameter counts of an adapted model.

    ``backbone`` counts the frozen pretrained weights the adapter rides on (excluding ``ignored``, e.g. a
    word-embedding table a time-series model never reads); ``trainable_percent`` is relative to it.

    Attributes:
        trainable: parameters that train (adapter, heads, ``trainable`` modules).
        total: every parameter of the model, each shared tensor once.
        backbone: the pretrained parameters the adapter rides on, less ``ignored``.
        ignored: parameters left out of ``backbone`` (never read by the model).
        trainable_bytes: memory of the trainable parameters, in bytes.
    """

    trainable: int
    total: int
    backbone: int
    ignored: int
    trainable_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.backbone, 1)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "trainable_percent": self.trainable_percent}

    def __str__(self) -> str:
        ignored = f" (not counting {self.ignored:,} unused)" if self.ignored else ""
        return (
            f"trainable params: {self.trainable:,} || backbone params: {self.backbone:,}{ignored} || "
            f"all params: {self.total:,} || trainable %: {self.trainable_percent:.3f}"
        )


def parameter_summary(
    model: nn.Module, *, backbone_prefix: str | None = None, ignore: Sequence[str] = ()
) -> ParameterSummary:
    """Count parameters once each (shared tensors once).

    ``backbone_prefix`` is a regex: parameters whose names contain it, other than the ones an adapter
    added (peft prefixes, ``modules_to_save`` copies), form the backbone. ``ignore`` holds regexes of parameter names left out of the backbone count.

    Args:
        model: the adapted model.
        backbone_prefix: regex searched in parameter names that marks the backbone; None: every parameter
            an adapter did not add.
        ignore: regexes of parameter names the backbone count leaves out.
    """
    seen: set[int] = set()
    trainable = total = backbone = ignored = trainable_bytes = 0
    prefix = re.compile(backbone_prefix) if backbone_prefix else None
    added = adapter_name_pattern()
    ignore_patterns = [re.compile(pattern) for pattern in ignore]
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
            trainable_bytes += count * parameter.element_size()
        if any(pattern.search(name) for pattern in ignore_patterns):
            ignored += count
        elif not added.search(name) and (prefix is None or prefix.search(name)):
            backbone += count
    return ParameterSummary(trainable, total, backbone, ignored, trainable_bytes)


def adapter_name_pattern() -> re.Pattern[str]:
    """Matches the names of what an adapter added to a model (any peft method's prefix, ``modules_to_save``)."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    prefixes = sorted({re.escape(prefix) for prefix in PEFT_TYPE_TO_PREFIX_MAPPING.values()})
    return re.compile(r"(?:^|\.)(?:" + "|".join([*prefixes, r"modules_to_save\."]) + ")")
