"""Fairness-aware classification: task loss + λ · I(z; sensitive attribute [| label]), and/or group-DRO.

``z`` is the pooled features (``model.forward_features``) or, with ``penalty_on: logits``, the class
logits. The mutual information between ``z`` and the sensitive attribute ``a`` is estimated by either
- ``club``: the CLUB upper bound (Cheng et al. 2020). A variational net q(a|z) learns ``log q(a|z)`` on
  detached features (its own loss); the penalty ``E[log q(a_i|z_i)] - E_i E_j[log q(a_j|z_i)]`` is taken
  through a frozen copy of q, so only the encoder (adapter) is pushed to forget the attribute; the
  penalty is clamped at 0, since a negative estimate means q lags, not that information is gone;
- ``adversarial``: a classifier on ``z`` behind a gradient-reversal layer (Ganin & Lempitsky 2015) — it
  learns to predict the attribute while the encoder gets the reversed gradient scaled by λ.

Why the unconditional feature penalty can collapse a model (skin tone is visible in every image, so
``I(features; a) = 0`` asks the encoder to destroy what it sees, and a lagging q is easier to fool than
the attribute is to forget), and the options against it:
- ``fairness_conditional``: penalise ``I(z; a | y)`` (the equalised-odds form, Zhang et al. 2018): q
  also sees the label, and CLUB's negative pairs are drawn within the same class. On logits this asks
  for equal class-conditional score distributions across groups, i.e. equal per-group AUROC;
- ``auxiliary_steps`` k >= 1: q / the adversary gets its own Adam optimiser (``auxiliary_learning_rate``)
  and takes k steps on the batch's detached ``z`` before every encoder step, so the estimate tracks
  the encoder instead of lagging behind it (0: trained jointly in the task's optimiser);
- ``fairness_warmup_epochs``: λ ramps linearly from 0 over these epochs, so the task features form first.
Online group-DRO (Sagawa et al. 2020) replaces the mean loss by ``Σ_g q_g L_g`` with ``q_g ∝ q_g ·
exp(η L_g)`` over sensitive groups (or intersectional, or group × label cells).

Batches carry ``"group"``: ``LongTensor[N, A]`` codes of the datamodule's ``group_attributes``; models
follow timm's ``forward_features`` / ``forward_head`` split.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from verticals.core.metrics.streaming import SubgroupMetrics
from verticals.core.tasks.classification import ClassificationTask, step_outputs

Penalty = Literal["none", "club", "adversarial"]
PenaltyOn = Literal["features", "logits"]
DROGroups = Literal["sensitive", "intersectional", "sensitive_label"]
_MAX_MODES = ("auroc", "accuracy", "f1")


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward (gradient-reversal layer)."""
    return _ReverseGradient.apply(x, scale)


def club_upper_bound(
    log_q: torch.Tensor, attribute: torch.Tensor, condition: torch.Tensor | None = None
) -> torch.Tensor:
    """CLUB estimate of I(z; a) (or of I(z; a | c)) for a categorical ``a`` from ``log q(·|z_i)`` rows ``[N, G]``.

    Positive pairs ``log q(a_i|z_i)`` minus all pairs ``log q(a_j|z_i)``; the all-pairs mean is taken
    against the batch's attribute frequencies, which equals the mean over every (i, j). With
    ``condition`` (e.g. the label), the pairs ``j`` are only those with ``c_j = c_i``: frequencies per
    condition value, which bounds the conditional mutual information.
    """
    positive = log_q.gather(1, attribute[:, None]).mean()
    condition = torch.zeros_like(attribute) if condition is None else condition
    _, frequencies = attribute_frequencies(attribute, log_q.shape[1], condition)
    return positive - (log_q * frequencies.to(log_q)[condition]).sum(dim=1).mean()


def attribute_frequencies(
    attribute: torch.Tensor, groups: int, condition: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts ``[C, G]`` of each attribute value within each condition value, and their per-condition
    frequencies (rows sum to 1; an empty row stays 0)."""
    width = int(condition.max()) + 1
    counts = torch.bincount(condition * groups + attribute, minlength=width * groups).float().reshape(width, groups)
    return counts, counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` features: token maps ``[N, T, D]`` are averaged over tokens, ``[N, C, H, W]`` over space."""
    if features.ndim == 2:
        return features
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    raise ValueError(
        f"Can't pool features of shape {tuple(features.shape)}; expected [N, D], [N, T, D] or [N, C, H, W]."
    )


class FairClassificationTask(ClassificationTask):
    """Classification with a mutual-information penalty and/or group-DRO over sensitive groups.

    Args beyond ``ClassificationTask``:
        sensitive_attribute: the attribute the penalty and DRO act on (default: the first one).
        fairness_penalty: ``none`` | ``club`` | ``adversarial``.
        fairness_weight: λ, the weight of the penalty (for ``adversarial``, the gradient-reversal scale).
        penalty_on: ``features`` (pooled ``forward_features``) or ``logits`` (the head's output).
        fairness_conditional: penalise I(z; a | y) instead of I(z; a) (q / the adversary see the label).
        fairness_warmup_epochs: epochs over which λ ramps linearly from 0 (0: full λ from the start).
        auxiliary_steps: k >= 1 gives q / the adversary their own Adam optimiser and k steps per batch
            (at ``auxiliary_learning_rate``) before the encoder's step; 0 trains them in the task's optimiser.
        group_dro: reweight the loss online towards the worst group; ``dro_step_size`` is η.
        dro_groups: ``sensitive`` (the attribute's groups), ``intersectional`` (all attributes crossed)
            or ``sensitive_label`` (attribute × class, Sagawa et al.'s setting).
        auxiliary_hidden: width of the hidden layer of the CLUB / adversary net.
        feature_dim: width of ``forward_features``; default: ``model.num_features`` or a probe forward.
        group_attributes / group_names: taken from the datamodule when not given.
        report_bootstrap: as in ``ClassificationTask``, but on by default: the ``FairnessReport`` at test end
            with 1000 bootstrap resamples (0: a report without CIs).

    Logs ``{stage}_worst_group_auroc``, ``{stage}_auroc_gap``, ``{stage}_ece/<group>`` … per epoch; use
    ``monitor: val_worst_group_auroc`` to select the checkpoint on worst-group AUROC (mode ``max`` is
    inferred for AUROC/accuracy monitors).
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
        dro_groups: DROGroups = "sensitive",
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
        if kwargs.get("monitor") and kwargs.get("monitor_mode") is None:
            name = str(kwargs["monitor"])
            kwargs["monitor_mode"] = (
                "max" if any(key in name for key in _MAX_MODES) and "gap" not in name else "min"
            )
        super().__init__(*args, report_bootstrap=report_bootstrap, **kwargs)

    # -- groups --------------------------------------------------------------------------
    def _infer_groups(self, datamodule: Any) -> None:
        if self.hparams.get("group_attributes") is None and hasattr(datamodule, "group_attributes"):
            self._set_inferred("group_attributes", list(datamodule.group_attributes))
        if self.hparams.get("group_names") is None and hasattr(datamodule, "group_names"):
            self._set_inferred("group_names", {k: list(v) for k, v in datamodule.group_names.items()})

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        super()._infer_from_datamodule(datamodule)
        self._infer_groups(datamodule)

    @property
    def group_attributes(self) -> list[str]:
        attributes = self.hparams.get("group_attributes")
        if not attributes:
            raise ValueError(
                "FairClassificationTask needs `group_attributes` (e.g. ['sex', 'age_band']): pass them, or use a "
                "datamodule that exposes `group_attributes` and `group_names`."
            )
        return list(attributes)

    def group_sizes(self) -> list[int]:
        """Number of categories per attribute, from ``group_names``."""
        names = self.hparams.get("group_names") or {}
        missing = [attribute for attribute in self.group_attributes if not names.get(attribute)]
        if missing:
            raise ValueError(
                f"`group_names` lacks the categories of attribute(s) {missing}; got {sorted(names)}."
            )
        return [len(names[attribute]) for attribute in self.group_attributes]

    @property
    def sensitive_index(self) -> int:
        attribute = self.hparams.get("sensitive_attribute") or self.group_attributes[0]
        if attribute not in self.group_attributes:
            raise ValueError(
                f"`sensitive_attribute` {attribute!r} is not one of the attributes {self.group_attributes}."
            )
        return self.group_attributes.index(attribute)

    def sensitive_names(self) -> list[str]:
        return list(self.hparams["group_names"][self.group_attributes[self.sensitive_index]])

    def _dro_codes(self, groups: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sizes = self.group_sizes()
        kind = self.hparams["dro_groups"]
        if kind == "sensitive":
            return groups[:, self.sensitive_index]
        if kind == "sensitive_label":
            return groups[:, self.sensitive_index] * self.hparams["num_classes"] + target
        codes = torch.zeros_like(groups[:, 0])
        for column, size in enumerate(sizes):
            codes = codes * size + groups[:, column]
        return codes

    def _dro_group_count(self) -> int:
        kind = self.hparams["dro_groups"]
        if kind == "sensitive":
            return self.group_sizes()[self.sensitive_index]
        if kind == "sensitive_label":
            return self.group_sizes()[self.sensitive_index] * self.hparams["num_classes"]
        return math.prod(self.group_sizes())

    # -- model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "datamodule", None) is not None:
            self._infer_groups(trainer.datamodule)
        if getattr(self, "val_subgroups", None) is not None or self.hparams.get("group_attributes") is None:
            return
        names = self.sensitive_names()
        self.val_subgroups = SubgroupMetrics(names)
        self.test_subgroups = SubgroupMetrics(names)  # the full set, with CIs, is in the FairnessReport
        if self.hparams["fairness_penalty"] != "none":
            hidden = self.hparams["auxiliary_hidden"]
            if self.hparams["penalty_on"] == "logits":
                width = int(self.hparams["num_classes"])
                self._check_feature_split(self._base_network())
            else:
                width = self._feature_dim()
            if self.hparams["fairness_conditional"]:
                width += int(self.hparams["num_classes"])  # the label, one-hot
            self.attribute_net = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, len(names))
            )
        if self.hparams["group_dro"]:
            count = self._dro_group_count()
            self.register_buffer("dro_weights", torch.full((count,), 1.0 / count), persistent=True)

    def _feature_dim(self) -> int:
        if self.hparams.get("feature_dim"):
            return int(self.hparams["feature_dim"])
        network = self._base_network()
        self._check_feature_split(network)
        width = getattr(network, "num_features", None)
        if isinstance(width, int) and width > 0:
            return width
        shape = self.hparams.get("input_shape")
        if shape is None:
            raise ValueError(
                "Pass `feature_dim` (the width of forward_features) or `input_shape` to probe it."
            )
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            width = pool_features(self.model.forward_features(torch.zeros(2, *shape))).shape[-1]
        self.model.train(was_training)
        return int(width)

    @staticmethod
    def _check_feature_split(network: nn.Module) -> None:
        if not (hasattr(network, "forward_features") and hasattr(network, "forward_head")):
            raise TypeError(
                f"{type(network).__name__} has no forward_features/forward_head; the fairness penalty needs the "
                "timm split (forward(x) = forward_head(forward_features(x)))."
            )

    def configure_optimizers(self) -> Any:
        """The task's optimiser; without the auxiliary net when it has its own (``auxiliary_steps`` >= 1)."""
        net = getattr(self, "attribute_net", None)
        if net is None or not self.hparams["auxiliary_steps"]:
            return super().configure_optimizers()
        net.requires_grad_(False)
        try:
            return super().configure_optimizers()
        finally:
            net.requires_grad_(True)

    # -- training ------------------------------------------------------------------------
    def _features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.hparams["fairness_penalty"] == "none":
            return None, self(x)
        features = self.model.forward_features(x)
        logits = self.model.forward_head(features)
        return (logits if self.hparams["penalty_on"] == "logits" else pool_features(features)), logits

    def penalty_weight(self) -> float:
        """λ, ramped linearly from 0 over ``fairness_warmup_epochs`` of training (full λ outside a fit)."""
        weight, warmup = float(self.hparams["fairness_weight"]), float(self.hparams["fairness_warmup_epochs"])
        trainer = self._trainer
        if warmup <= 0 or trainer is None:
            return weight
        batches = trainer.num_training_batches
        per_epoch = batches if isinstance(batches, int) and batches > 0 else 1
        progress = (self.global_step / per_epoch) / warmup
        return weight * min(max(progress, 0.0), 1.0)

    def _auxiliary_input(self, z: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if not self.hparams["fairness_conditional"]:
            return z
        if target is None:
            raise ValueError("`fairness_conditional` needs the labels of the batch (I(z; a | y)).")
        return torch.cat([z, F.one_hot(target, int(self.hparams["num_classes"])).to(z)], dim=1)

    def _train_auxiliary(self, inputs: torch.Tensor, attribute: torch.Tensor) -> None:
        """``auxiliary_steps`` Adam steps of q / the adversary on detached inputs, with its own optimiser."""
        optimizer = getattr(self, "_auxiliary_optimizer", None)
        if optimizer is None:
            optimizer = torch.optim.Adam(
                self.attribute_net.parameters(), lr=self.hparams["auxiliary_learning_rate"]
            )
            saved = getattr(self, "_auxiliary_optimizer_state", None)
            if saved is not None:  # a resumed fit: q goes on with its moments, not from a cold start
                optimizer.load_state_dict(saved)
                self._auxiliary_optimizer_state = None
            self._auxiliary_optimizer = optimizer
        inputs = inputs.detach()
        with torch.enable_grad():
            for _ in range(self.hparams["auxiliary_steps"]):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(self.attribute_net(inputs), attribute).backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _penalty(
        self, features: torch.Tensor, attribute: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(term added to the loss, mutual-information estimate in nats).

        ``target`` (the labels) is needed with ``fairness_conditional``; the estimate is then of I(z; a | y).
        """
        net, weight = self.attribute_net, self.penalty_weight()
        inputs = self._auxiliary_input(features, target)
        separate = self.hparams["auxiliary_steps"] > 0
        if separate and self.training and torch.is_grad_enabled():
            self._train_auxiliary(inputs, attribute)
        frozen = {name: parameter.detach() for name, parameter in net.named_parameters()}
        condition = target if self.hparams["fairness_conditional"] else None
        if self.hparams["fairness_penalty"] == "club":
            # q(a|z) learns on its own loss (detached inputs), here or in _train_auxiliary.
            own_loss = inputs.new_zeros(()) if separate else F.cross_entropy(net(inputs.detach()), attribute)
            log_q = torch.func.functional_call(net, frozen, (inputs,)).log_softmax(dim=-1)
            estimate = club_upper_bound(log_q, attribute, condition)
            # I(z; a) >= 0: a negative estimate only says q lags behind the encoder, and following its
            # gradient lets the encoder fool q (features collapse) instead of removing the attribute.
            return own_loss + weight * estimate.clamp_min(0.0), estimate.detach()
        reversed_inputs = self._auxiliary_input(reverse_gradient(features, weight), target)
        # Trained apart, the adversary is applied frozen: the encoder alone gets the reversed gradient.
        predicted = (
            torch.func.functional_call(net, frozen, (reversed_inputs,)) if separate else net(reversed_inputs)
        )
        adversary_loss = F.cross_entropy(predicted, attribute)
        # H(a [| y]) - CE(adversary) is a variational lower bound on I(z; a [| y]).
        entropy = self._attribute_entropy(attribute, condition)
        return adversary_loss, (entropy - adversary_loss).detach()

    def _attribute_entropy(self, attribute: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """H(a) of the batch, or H(a | c) averaged over the batch's condition values."""
        condition = torch.zeros_like(attribute) if condition is None else condition
        counts, frequencies = attribute_frequencies(attribute, len(self.sensitive_names()), condition)
        entropies = -(frequencies * frequencies.clamp_min(1e-12).log()).sum(dim=1)
        return (entropies * counts.sum(dim=1)).sum() / len(attribute)

    def _dro_loss(self, per_sample: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        count = len(self.dro_weights)
        sums = torch.zeros(count, device=per_sample.device, dtype=per_sample.dtype).index_add(
            0, codes, per_sample
        )
        sizes = torch.bincount(codes, minlength=count).to(per_sample.dtype)
        group_loss = sums / sizes.clamp_min(1.0)
        with torch.no_grad():
            weights = self.dro_weights * torch.exp(self.hparams["dro_step_size"] * group_loss.detach())
            self.dro_weights.copy_(weights / weights.sum())
        return (self.dro_weights * group_loss).sum()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        groups = batch.get("group")
        if groups is not None and groups.ndim == 1:
            groups = groups[:, None]
        if self.hparams["fairness_penalty"] != "none" or self.hparams["group_dro"]:
            if groups is None:
                raise ValueError(
                    "The fairness penalty / group-DRO needs batches with a 'group' entry (LongTensor[N, A] codes "
                    "of the sensitive attributes); this batch has keys " + str(sorted(batch)) + "."
                )
            if getattr(self, "val_subgroups", None) is None:
                self.group_sizes()  # raises, naming what is missing
        features, logits = self._features_and_logits(x)
        per_sample = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")
        if stage == "train" and self.hparams["group_dro"] and groups is not None:
            task_loss = self._dro_loss(per_sample, self._dro_codes(groups, y))
        else:
            task_loss = per_sample.mean()
        loss = task_loss
        size = len(logits)
        if features is not None and groups is not None:
            added, estimate = self._penalty(features, groups[:, self.sensitive_index], y)
            if stage == "train":
                loss = loss + added
            self.log(f"{stage}_mi_estimate", estimate, on_step=False, on_epoch=True, batch_size=size)
        on_step = stage == "train"
        self.log(f"{stage}_loss", task_loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=size)
        if stage == "train" and loss is not task_loss:
            self.log("train_total_loss", loss, on_step=True, on_epoch=True, batch_size=size)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), y)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=size)
        self._last_outputs = step_outputs(logits, batch)
        subgroups = getattr(self, f"{stage}_subgroups", None)
        if subgroups is not None and groups is not None:
            subgroups.update(self._last_outputs["probs"], y, groups[:, self.sensitive_index])
        return loss

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``probs`` and ``logits``, plus ``target`` / ``group`` when the batch has them."""
        _, logits = self._features_and_logits(batch["x"])
        outputs = {"logits": logits, "probs": logits.float().softmax(dim=-1)}
        for key, name in (("y", "target"), ("group", "group")):
            if key in batch:
                outputs[name] = batch[key]
        return outputs

    def _log_subgroups(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_subgroups", None)
        if metric is None or not metric.update_called:
            return
        values = metric.compute()
        metric.reset()
        # Overall AUROC is already logged by the metric collection as {stage}_auroc.
        self.log_dict({f"{stage}_{name}": value for name, value in values.items() if name != "auroc"})

    def on_validation_epoch_end(self) -> None:
        self._log_subgroups("val")

    def on_test_epoch_end(self) -> None:
        self._log_subgroups("test")

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if getattr(self, "dro_weights", None) is not None:
            checkpoint["verticals"]["group_dro_weights"] = self.dro_weights.detach().cpu().tolist()
        # q's own optimiser is not Lightning's, so Lightning would not save it.
        optimizer = getattr(self, "_auxiliary_optimizer", None)
        if optimizer is not None:
            checkpoint["verticals"]["auxiliary_optimizer"] = optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("verticals", {}).get("group_dro_weights")
        if saved is not None and getattr(self, "dro_weights", None) is not None:
            self.dro_weights.copy_(torch.tensor(saved, dtype=self.dro_weights.dtype))
        # Applied when q's optimiser is next built (the first training step of a resumed fit).
        self._auxiliary_optimizer = None
        self._auxiliary_optimizer_state = checkpoint.get("verticals", {}).get("auxiliary_optimizer")
