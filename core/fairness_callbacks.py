"""``FairnessReport``: at test end, subgroup metrics with bootstrap CIs, calibration per group, and plots.

Writes ``fairness.json``, ``fairness.md``, ``fairness_<metric>_<grouping>.png`` and ``reliability.png``
into the run directory. The task's ``test_step`` must return ``probs``, ``target`` and ``group``
(``FairClassificationTask`` does); scores from every device are gathered before the report is computed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from verticals.core.callbacks import run_directory
from verticals.core.metrics.groups import decode_group_matrix, encode_groups
from verticals.core.metrics.plots import plot_group_metric, plot_reliability_diagram
from verticals.core.metrics.report import FairnessResults, fairness_report
from verticals.core.metrics.uncertainty import reliability_curve, uncertainty_metrics


class _Collected(Metric):
    """Test outputs of every batch, concatenated across devices (uneven sizes allowed)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("probs", "target", "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach().long())
        self.group.append(group.detach().long().reshape(len(target), -1))

    def compute(self) -> dict[str, np.ndarray]:
        return {
            name: dim_zero_cat(getattr(self, name)).cpu().numpy() for name in ("probs", "target", "group")
        }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace(" & ", "_x_")).strip("_")


def uncertainty_by_group(
    scores: np.ndarray, target: np.ndarray, groups: dict[str, np.ndarray], *, n_bins: int = 15
) -> dict[str, Any]:
    """Calibration and selective-prediction metrics overall and per group of every attribute."""
    result: dict[str, Any] = {"overall": uncertainty_metrics(scores, target, n_bins=n_bins)}
    for attribute, values in groups.items():
        codes, names = encode_groups(values)
        result[attribute] = {
            name: uncertainty_metrics(scores[codes == index], target[codes == index], n_bins=n_bins)
            for index, name in enumerate(names)
        }
    return result


def write_fairness_files(
    directory: Path,
    scores: np.ndarray,
    target: np.ndarray,
    groups: dict[str, np.ndarray],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    group_names: dict[str, list[str]] | None = None,
) -> FairnessResults:
    """Compute the fairness report and uncertainty metrics and write the JSON, markdown and PNG files."""
    directory.mkdir(parents=True, exist_ok=True)
    results = fairness_report(
        scores, target, groups, n_bootstrap=n_bootstrap, seed=seed, group_names=group_names
    )
    uncertainty = uncertainty_by_group(scores, target, groups, n_bins=n_bins)
    payload = {"fairness": results.to_dict(), "uncertainty": uncertainty}
    (directory / "fairness.json").write_text(json.dumps(_nan_to_none(payload), indent=2) + "\n")
    lines = ["# Fairness and calibration report", "", results.to_markdown(), "## Calibration per group", ""]
    columns = list(uncertainty["overall"])
    lines += ["| attribute | group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    lines.append("| all | all | " + " | ".join(f"{uncertainty['overall'][c]:.4f}" for c in columns) + " |")
    for attribute in groups:
        for group, values in uncertainty[attribute].items():
            lines.append(
                f"| {attribute} | {group} | " + " | ".join(f"{values[c]:.4f}" for c in columns) + " |"
            )
    (directory / "fairness.md").write_text("\n".join(lines) + "\n")
    for grouping in results.summary:
        for metric in ("auroc", "ece"):
            figure = plot_group_metric(results.table, metric, grouping=grouping)
            figure.savefig(directory / f"fairness_{metric}_{_slug(grouping)}.png", dpi=110)
    first, values = next(iter(groups.items()))
    codes, names = encode_groups(values, (group_names or {}).get(first))
    curves = {"all": reliability_curve(scores, target, n_bins=n_bins)}
    curves.update(
        {
            f"{first}={name}": reliability_curve(scores[codes == i], target[codes == i], n_bins=n_bins)
            for i, name in enumerate(names)
            if (codes == i).any()
        }
    )
    plot_reliability_diagram(curves, title=f"Reliability by {first}").savefig(
        directory / "reliability.png", dpi=110
    )
    return results


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and value != value:
        return None
    return value


class FairnessReport(L.Callback):
    """Collect test probabilities, targets and groups; at test end write the fairness and calibration report.

    Group names come from the task's ``group_attributes`` / ``group_names`` hparams (else the datamodule's).
    Skipped under ``fast_dev_run``, like the run report. The last result stays in ``self.results``.
    """

    def __init__(self, n_bootstrap: int = 1000, seed: int = 0, n_bins: int = 15) -> None:
        self.n_bootstrap, self.seed, self.n_bins = n_bootstrap, seed, n_bins
        self.results: FairnessResults | None = None
        self._collected: _Collected | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collected = _Collected().to(pl_module.device)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict) or not {"probs", "target", "group"} <= set(outputs):
            raise ValueError(
                f"FairnessReport needs test_step to return a dict with 'probs', 'target' and 'group'; "
                f"{type(pl_module).__name__}.test_step returned {type(outputs).__name__}"
                + (f" with keys {sorted(outputs)}" if isinstance(outputs, dict) else "")
                + ". Use FairClassificationTask and a datamodule whose batches carry 'group'."
            )
        self._collected.update(outputs["probs"], outputs["target"], outputs["group"])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_directory(trainer)  # every rank: trainer.log_dir is a collective call under DDP
        if self._collected is None or not self._collected.update_called:
            return
        data = self._collected.compute()  # every rank: the gather is collective
        self._collected = None
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        probs = data["probs"].astype(np.float64)
        scores = probs[:, 1] if probs.shape[1] == 2 else probs
        attributes, names = self._group_info(trainer, pl_module, data["group"].shape[1])
        groups = decode_group_matrix(data["group"], attributes, names)
        self.results = write_fairness_files(
            directory,
            scores,
            data["target"],
            groups,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
            n_bins=self.n_bins,
            group_names=names,
        )

    @staticmethod
    def _group_info(
        trainer: L.Trainer, pl_module: L.LightningModule, width: int
    ) -> tuple[list[str], dict[str, list[str]]]:
        hparams = getattr(pl_module, "hparams", {})
        datamodule = getattr(trainer, "datamodule", None)
        attributes = hparams.get("group_attributes") or getattr(datamodule, "group_attributes", None)
        names = hparams.get("group_names") or getattr(datamodule, "group_names", None) or {}
        if not attributes:
            attributes = [f"attribute_{index}" for index in range(width)]
        return list(attributes), {key: list(value) for key, value in dict(names).items()}
