"""Streaming subgroup metrics for Lightning: torchmetrics ``Metric`` states gathered across devices.

AUROC needs every score, so the states are concatenated (``dist_reduce_fx="cat"``, like torchmetrics'
exact AUROC); ``compute`` then runs the same functions as ``verticals.core.metrics.fairness``, so streamed
and functional numbers agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from verticals.core.metrics.fairness import (
    auroc,
    group_table_arrays,
    operating_thresholds,
    summary_from_table,
)

_PER_GROUP = ("auroc", "ece", "accuracy", "count")
_SUMMARY = (
    "worst_group_auroc",
    "auroc_gap",
    "worst_group_accuracy",
    "worst_group_ece",
    "ece_gap",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)


class SubgroupMetrics(Metric):
    """Overall and per-group AUROC, worst-group AUROC, AUROC gap, per-group ECE and parity differences.

    ``update(scores, target, groups)``: ``scores`` are ``[N]`` positive-class probabilities, ``[N, 2]`` or
    ``[N, C]`` probabilities; ``groups`` are ``[N]`` group codes indexing ``group_names``. ``compute``
    returns a dict of scalar tensors: ``auroc``, ``worst_group_auroc``, ``auroc_gap``, … and per group
    ``auroc/<group>``, ``ece/<group>``, ``accuracy/<group>``, ``count/<group>``.

    ``full=True`` returns every column and summary of :func:`group_table_arrays` / :func:`summary_from_table`
    instead — per group also Brier, NLL, prevalence, TPR/FPR/FNR/TNR and selection rate (binary: also at the
    80%-sensitivity and 80%-specificity thresholds, suffixed ``@sens80`` / ``@spec80``), and the gaps, ratios
    and parity differences at every operating point (dozens of keys: for a logger, not a progress table).

    Args:
        group_names: the groups in code order, or their count (named ``0``, ``1``, …).
        threshold: the fixed decision threshold of binary scores.
        n_bins: bins of the per-group ECE.
        full: return every per-group column and summary (see above) instead of the short set.
        **kwargs: torchmetrics ``Metric`` options (``dist_sync_on_step`` …).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        group_names: Sequence[str] | int,
        *,
        threshold: float = 0.5,
        n_bins: int = 15,
        full: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(group_names, int):
            if group_names < 1:
                raise ValueError(f"`group_names` must name at least one group, got {group_names}.")
            group_names = [str(index) for index in range(group_names)]
        self.group_names = [str(name) for name in group_names]
        self.threshold = threshold
        self.n_bins = n_bins
        self.full = full
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        scores = scores.detach()
        if scores.ndim == 2 and scores.shape[1] == 2:
            scores = scores[:, 1]
        if len(scores) != len(target) or len(target) != len(groups):
            raise ValueError(
                f"`scores`, `target` and `groups` need one entry per sample; got {len(scores)}, {len(target)} "
                f"and {len(groups)}."
            )
        if groups.ndim != 1:
            raise ValueError(f"`groups` must be [N] codes of one grouping, got shape {tuple(groups.shape)}.")
        if len(groups) and (int(groups.min()) < 0 or int(groups.max()) >= len(self.group_names)):
            raise ValueError(
                f"Group codes must be in 0..{len(self.group_names) - 1} for groups {self.group_names}, got "
                f"{int(groups.min())}..{int(groups.max())}."
            )
        self.scores.append(scores.float())
        self.target.append(target.long())
        self.groups.append(groups.long())

    def compute(self) -> dict[str, torch.Tensor]:
        scores = dim_zero_cat(self.scores).double().cpu().numpy()
        target = dim_zero_cat(self.target).cpu().numpy()
        groups = dim_zero_cat(self.groups).cpu().numpy()
        thresholds = operating_thresholds(scores, target, self.threshold) if scores.ndim == 1 else {"": 0.5}
        table = group_table_arrays(scores, target, groups, len(self.group_names), thresholds, self.n_bins)
        summary = summary_from_table(table)
        values = {"auroc": auroc(scores, target)}
        values.update(
            {name: summary[name] for name in (summary if self.full else _SUMMARY) if name in summary}
        )
        for column in table if self.full else _PER_GROUP:
            for index, group in enumerate(self.group_names):
                values[f"{column}/{group}"] = float(table[column][index])
        return {
            name: torch.tensor(value, dtype=torch.float32, device=self.device)
            for name, value in values.items()
        }
