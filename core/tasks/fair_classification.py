"""Fairness-aware classification: :class:`ClassificationTask` with a group objective from flat arguments.

The objective itself (CLUB / adversarial mutual-information penalty, group-DRO) lives in
``verticals.core.group_objective`` and any task that computes per-sample losses takes it as
``group_objective``; this task keeps the flat argument names of the packaged configs and notebooks
(``fairness_penalty``, ``dro_groups`` …), turns them into a :class:`GroupObjective`, and writes the group
report at test end by default.
"""

from __future__ import annotations

from typing import Any

import torch

from verticals.core.group_objective import (
    GroupObjective,
    Groups,
    Penalty,
    PenaltyOn,
    attribute_frequencies,
    club_upper_bound,
    pool_features,
    reverse_gradient,
)
from verticals.core.tasks.classification import ClassificationTask

__all__ = [
    "FairClassificationTask",
    "attribute_frequencies",
    "club_upper_bound",
    "pool_features",
    "reverse_gradient",
]


class FairClassificationTask(ClassificationTask):
    """Classification with a mutual-information penalty and/or group-DRO over sensitive groups.

    The same as ``ClassificationTask(group_objective={...})``; the arguments map onto
    :class:`~verticals.core.group_objective.GroupObjective`'s fields. ``ClassificationTask``'s arguments
    (``model``, ``adapter``, ``num_classes`` …) are taken too; the ``Args`` below are this task's own.

    Logs ``{stage}_worst_group_auroc``, ``{stage}_auroc_gap``, ``{stage}_ece/<group>`` … per epoch; use
    ``monitor: val_worst_group_auroc`` to select the checkpoint on worst-group AUROC (mode ``max`` is
    inferred for AUROC/accuracy monitors).

    Args:
        sensitive_attribute: the attribute the penalty and DRO act on (default: the first one).
        fairness_penalty: ``none`` | ``club`` | ``adversarial``: how the information ``z`` keeps about the
            attribute is estimated and penalised (``none``: no penalty, e.g. group-DRO alone).
        fairness_weight: λ, the weight of the penalty (for ``adversarial``, the gradient-reversal scale).
        penalty_on: ``features`` (pooled ``forward_features``) or ``logits`` (the head's output).
        fairness_conditional: penalise I(z; a | y) instead of I(z; a) (q / the adversary see the label).
        fairness_warmup_epochs: epochs over which λ ramps linearly from 0 (0: full λ from the start).
        auxiliary_steps: k >= 1 gives q / the adversary their own Adam optimiser and k steps per batch
            (at ``auxiliary_learning_rate``) before the encoder's step; 0 trains them in the task's optimiser.
        auxiliary_learning_rate: learning rate of that own Adam optimiser (used when ``auxiliary_steps`` >= 1).
        group_dro: reweight the loss online towards the worst group; ``dro_step_size`` is η.
        dro_step_size: η (> 0), the step of the exponentiated-gradient update of the group weights; larger
            moves the weight to the worst group faster.
        dro_groups: ``sensitive`` (the attribute's groups), ``intersectional`` (all attributes crossed)
            or ``sensitive_label`` (attribute × class, Sagawa et al.'s setting).
        auxiliary_hidden: width of the hidden layer of the CLUB / adversary net.
        feature_dim: width of ``forward_features``; default: ``model.num_features`` or a probe forward.
        group_attributes: the data's group attributes (one per column of a batch's ``group``); taken from
            the datamodule when not given.
        group_names: the categories of each attribute (``group_names[attribute][code]``); taken from the
            datamodule when not given.
        report_bootstrap: as in ``ClassificationTask``, but on by default: the group report at test end
            with 1000 bootstrap resamples (0: a report without CIs).
    """

    monitor = "val_loss"
    mode = "min"

    def __init__(
        self,
        *args: Any,
        sensitive_attribute: str | None = None,
        fairness_penalty: Penalty = "none",
        fairness_weight: float = 1.0,
        penalty_on: PenaltyOn = "features",
        fairness_conditional: bool = False,
        fairness_warmup_epochs: float = 0.0,
        auxiliary_steps: int = 0,
        auxiliary_learning_rate: float = 1e-3,
        group_dro: bool = False,
        dro_step_size: float = 0.01,
        dro_groups: Groups = "sensitive",
        auxiliary_hidden: int = 64,
        feature_dim: int | None = None,
        group_attributes: list[str] | None = None,
        group_names: dict[str, list[str]] | None = None,
        report_bootstrap: int = 1000,
        **kwargs: Any,
    ) -> None:
        if fairness_penalty not in ("none", "club", "adversarial"):
            raise ValueError(
                f"`fairness_penalty` must be 'none', 'club' or 'adversarial', got {fairness_penalty!r}."
            )
        if dro_groups not in ("sensitive", "intersectional", "sensitive_label"):
            raise ValueError(
                f"`dro_groups` must be 'sensitive', 'intersectional' or 'sensitive_label', got {dro_groups!r}."
            )
        if penalty_on not in ("features", "logits"):
            raise ValueError(f"`penalty_on` must be 'features' or 'logits', got {penalty_on!r}.")
        if fairness_weight < 0 or dro_step_size <= 0 or auxiliary_hidden < 1:
            raise ValueError(
                "Expected fairness_weight >= 0, dro_step_size > 0 and auxiliary_hidden >= 1; got "
                f"{fairness_weight}, {dro_step_size}, {auxiliary_hidden}."
            )
        if fairness_warmup_epochs < 0 or auxiliary_steps < 0 or auxiliary_learning_rate <= 0:
            raise ValueError(
                "Expected fairness_warmup_epochs >= 0, auxiliary_steps >= 0 and auxiliary_learning_rate > 0; "
                f"got {fairness_warmup_epochs}, {auxiliary_steps}, {auxiliary_learning_rate}."
            )
        super().__init__(*args, report_bootstrap=report_bootstrap, **kwargs)

    def configure_group_objective(self) -> GroupObjective:
        """The objective the flat arguments describe (a ``group_objective`` argument would be ambiguous)."""
        if self.hparams.get("group_objective") is not None:
            raise ValueError(
                "FairClassificationTask sets its group objective from `fairness_penalty`, `group_dro` … ; pass "
                "either those or `group_objective` to ClassificationTask, not both."
            )
        hparams = self.hparams
        return GroupObjective(
            penalty=hparams["fairness_penalty"],
            weight=hparams["fairness_weight"],
            penalty_on=hparams["penalty_on"],
            conditional=hparams["fairness_conditional"],
            warmup_epochs=hparams["fairness_warmup_epochs"],
            auxiliary_steps=hparams["auxiliary_steps"],
            auxiliary_learning_rate=hparams["auxiliary_learning_rate"],
            auxiliary_hidden=hparams["auxiliary_hidden"],
            feature_dim=hparams.get("feature_dim"),
            group_dro=hparams["group_dro"],
            dro_step_size=hparams["dro_step_size"],
            groups=hparams["dro_groups"],
            attribute=hparams.get("sensitive_attribute"),
            group_attributes=hparams.get("group_attributes"),
            group_names=hparams.get("group_names"),
        )

    def _record_group_objective(self) -> None:
        """Groups taken from the datamodule go to this task's own ``group_attributes`` / ``group_names``."""
        self._set_inferred("group_attributes", list(self.group_objective.group_attributes or []))
        self._set_inferred("group_names", dict(self.group_objective.group_names or {}))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``probs`` and ``logits``, plus ``target`` / ``group`` when the batch has them."""
        _, logits = self.forward_with_features(batch["x"])
        outputs = {"logits": logits, "probs": logits.float().softmax(dim=-1)}
        for key, name in (("y", "target"), ("group", "group")):
            if key in batch:
                outputs[name] = batch[key]
        return outputs
