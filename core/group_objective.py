"""Group-aware training for any task: a mutual-information penalty and/or group-DRO over sensitive groups.

A task computes its per-sample losses; with a :class:`GroupObjective` the batch loss becomes
``Σ_g q_g L_g`` (online group-DRO, Sagawa et al. 2020: ``q_g ∝ q_g · exp(η L_g)``) instead of their mean,
plus ``λ · I(z; a)`` (or ``I(z; a | y)``), an estimate of the information the representation ``z`` keeps
about the sensitive attribute ``a``. ``z`` is the pooled ``forward_features`` of the model (timm's
``forward_features`` / ``forward_head`` split) or, with ``penalty_on: logits``, its output. The mutual
information is estimated by either
- ``club``: the CLUB upper bound (Cheng et al. 2020). A variational net q(a|z) learns ``log q(a|z)`` on
  detached features (its own loss); the penalty ``E[log q(a_i|z_i)] - E_i E_j[log q(a_j|z_i)]`` is taken
  through a frozen copy of q, so only the encoder (adapter) is pushed to forget the attribute; the
  penalty is clamped at 0, since a negative estimate means q lags, not that information is gone;
- ``adversarial``: a classifier on ``z`` behind a gradient-reversal layer (Ganin & Lempitsky 2015) — it
  learns to predict the attribute while the encoder gets the reversed gradient scaled by λ.

Why the unconditional feature penalty can collapse a model (an attribute visible in every input makes
``I(features; a) = 0`` ask the encoder to destroy what it sees, and a lagging q is easier to fool than the
attribute is to forget), and the options against it:
- ``conditional``: penalise ``I(z; a | y)`` (the equalised-odds form, Zhang et al. 2018): q also sees the
  label, and CLUB's negative pairs are drawn within the same class. On logits this asks for equal
  class-conditional score distributions across groups, i.e. equal per-group AUROC;
- ``auxiliary_steps`` k >= 1: q / the adversary gets its own Adam optimiser (``auxiliary_learning_rate``)
  and takes k steps on the batch's detached ``z`` before every encoder step, so the estimate tracks the
  encoder instead of lagging behind it (0: trained jointly in the task's optimiser);
- ``warmup_epochs``: λ ramps linearly from 0 over these epochs, so the task features form first.

Batches carry ``"group"``: ``LongTensor[N, A]`` codes of the datamodule's ``group_attributes``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

__all__ = [
    "GroupObjective",
    "GroupObjectiveLoss",
    "WorstGroupLoss",
    "attribute_frequencies",
    "club_upper_bound",
    "pool_features",
    "reverse_gradient",
]

Penalty = Literal["none", "club", "adversarial"]
PenaltyOn = Literal["features", "logits"]
Groups = Literal["sensitive", "intersectional", "sensitive_label"]


@dataclasses.dataclass
class GroupObjective:
    """How a task trains over groups, as it appears under ``group_objective`` in a config file.

    Args:
        penalty: ``none`` | ``club`` | ``adversarial``: the mutual-information penalty on ``z``.
        weight: λ, the weight of the penalty (for ``adversarial``, the gradient-reversal scale).
        penalty_on: ``features`` (pooled ``forward_features``) or ``logits`` (the model's output).
        conditional: penalise I(z; a | y) instead of I(z; a) (q / the adversary see the label).
        warmup_epochs: epochs over which λ ramps linearly from 0 (0: full λ from the start).
        auxiliary_steps: k >= 1 gives q / the adversary their own Adam optimiser and k steps per batch (at
            ``auxiliary_learning_rate``) before the encoder's step; 0 trains them in the task's optimiser.
        auxiliary_learning_rate: learning rate of that optimiser.
        auxiliary_hidden: width of the hidden layer of the CLUB / adversary net.
        feature_dim: width of ``forward_features``; default: ``model.num_features`` or a probe forward.
        group_dro: reweight the loss online towards the worst group; ``dro_step_size`` is η.
        dro_step_size: η of the exponentiated-gradient update of the group weights.
        groups: the groups DRO reweights and ``worst_group_loss`` is taken over: ``sensitive`` (the
            attribute's groups), ``intersectional`` (all attributes crossed) or ``sensitive_label``
            (attribute × class, Sagawa et al.'s setting).
        attribute: the sensitive attribute (default: the first of ``group_attributes``).
        group_attributes: the data's group attributes, one per column of a batch's ``group``; default: the
            datamodule's, recorded in the task's hparams so a checkpoint rebuilds the objective.
        group_names: the categories of each attribute (``group_names[attribute][code]``); default: the
            datamodule's, recorded like ``group_attributes``.
    """

    penalty: Penalty = "none"
    weight: float = 1.0
    penalty_on: PenaltyOn = "features"
    conditional: bool = False
    warmup_epochs: float = 0.0
    auxiliary_steps: int = 0
    auxiliary_learning_rate: float = 1e-3
    auxiliary_hidden: int = 64
    feature_dim: int | None = None
    group_dro: bool = False
    dro_step_size: float = 0.01
    groups: Groups = "sensitive"
    attribute: str | None = None
    group_attributes: list[str] | None = None
    group_names: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        choices = {
            "penalty": ("none", "club", "adversarial"),
            "penalty_on": ("features", "logits"),
            "groups": ("sensitive", "intersectional", "sensitive_label"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if self.weight < 0 or self.dro_step_size <= 0 or self.auxiliary_hidden < 1:
            raise ValueError(
                "Expected `weight` >= 0, `dro_step_size` > 0 and `auxiliary_hidden` >= 1; got "
                f"{self.weight}, {self.dro_step_size}, {self.auxiliary_hidden}."
            )
        if self.warmup_epochs < 0 or self.auxiliary_steps < 0 or self.auxiliary_learning_rate <= 0:
            raise ValueError(
                "Expected `warmup_epochs` >= 0, `auxiliary_steps` >= 0 and `auxiliary_learning_rate` > 0; got "
                f"{self.warmup_epochs}, {self.auxiliary_steps}, {self.auxiliary_learning_rate}."
            )
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(
                f"`feature_dim` must be a positive width (or None to infer it), got {self.feature_dim}."
            )

    @classmethod
    def coerce(cls, value: GroupObjective | Mapping[str, Any] | None) -> GroupObjective | None:
        """A ``GroupObjective`` from itself, a dict of its fields (a config's ``group_objective:``) or None."""
        if value is None or isinstance(value, GroupObjective):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"`group_objective` must be a GroupObjective, a dict of its fields or None, got {value!r}."
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(
                f"Unknown `group_objective` field(s) {unknown}; GroupObjective accepts {sorted(fields)}."
            )
        return cls(**value)

    @property
    def needs_features(self) -> bool:
        """Whether the task must hand over ``z`` (the penalty's input) with the per-sample losses."""
        return self.penalty != "none"


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward (gradient-reversal layer).

    Args:
        x: the features the adversary reads.
        scale: the factor of the reversed gradient (λ of the adversarial penalty).
    """
    return _ReverseGradient.apply(x, scale)


def club_upper_bound(
    log_q: torch.Tensor, attribute: torch.Tensor, condition: torch.Tensor | None = None
) -> torch.Tensor:
    """CLUB estimate of I(z; a) (or of I(z; a | c)) for a categorical ``a`` from ``log q(·|z_i)`` rows ``[N, G]``.

    Positive pairs ``log q(a_i|z_i)`` minus all pairs ``log q(a_j|z_i)``; the all-pairs mean is taken
    against the batch's attribute frequencies, which equals the mean over every (i, j). With
    ``condition`` (e.g. the label), the pairs ``j`` are only those with ``c_j = c_i``: frequencies per
    condition value, which bounds the conditional mutual information.

    Args:
        log_q: ``[N, G]`` log-probabilities ``log q(a | z_i)`` of each attribute value.
        attribute: ``[N]`` attribute codes in ``0..G-1``.
        condition: ``[N]`` codes of a conditioning variable (e.g. the label), or None.
    """
    positive = log_q.gather(1, attribute[:, None]).mean()
    condition = torch.zeros_like(attribute) if condition is None else condition
    _, frequencies = attribute_frequencies(attribute, log_q.shape[1], condition)
    return positive - (log_q * frequencies.to(log_q)[condition]).sum(dim=1).mean()


def attribute_frequencies(
    attribute: torch.Tensor, groups: int, condition: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts ``[C, G]`` of each attribute value within each condition value, and their per-condition
    frequencies (rows sum to 1; an empty row stays 0).

    Args:
        attribute: ``[N]`` attribute codes in ``0..groups-1``.
        groups: number of attribute values G.
        condition: ``[N]`` non-negative condition codes (all zeros for no condition).
    """
    width = int(condition.max()) + 1
    counts = (
        torch.bincount(condition * groups + attribute, minlength=width * groups)
        .float()
        .reshape(width, groups)
    )
    return counts, counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` features: token maps ``[N, T, D]`` are averaged over tokens, ``[N, C, *S]`` (images,
    volumes) over space.

    Args:
        features: ``[N, D]``, ``[N, T, D]``, ``[N, C, H, W]`` or ``[N, C, D, H, W]`` features.
    """
    if features.ndim == 2:
        return features
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim in (4, 5):
        return features.mean(dim=tuple(range(2, features.ndim)))
    raise ValueError(
        f"Can't pool features of shape {tuple(features.shape)}; expected [N, D], [N, T, D], [N, C, H, W] or "
        "[N, C, D, H, W]."
    )


def check_feature_split(network: nn.Module) -> None:
    """The penalty reads ``z`` between ``forward_features`` and ``forward_head`` (timm's split).

    Args:
        network: the task's network; a ``TypeError`` when it lacks the split.
    """
    if not (hasattr(network, "forward_features") and hasattr(network, "forward_head")):
        raise TypeError(
            f"{type(network).__name__} has no forward_features/forward_head; the group objective's penalty needs "
            "the timm split (forward(x) = forward_head(forward_features(x)))."
        )


class WorstGroupLoss(Metric):
    """The largest per-group mean of the per-sample losses over an epoch (Sagawa et al.'s worst-group loss);
    groups without a sample are left out.

    Args:
        num_groups: the groups whose per-sample losses are averaged (codes ``0..num_groups-1``).
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_groups = num_groups
        self.add_state("sums", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, per_sample: torch.Tensor, codes: torch.Tensor) -> None:
        self.sums += torch.zeros_like(self.sums).index_add(0, codes, per_sample.detach().double())
        self.counts += torch.bincount(codes, minlength=self.num_groups).to(self.counts)

    def compute(self) -> torch.Tensor:
        seen = self.counts > 0
        if not seen.any():
            return torch.tensor(float("nan"))
        return (self.sums[seen] / self.counts[seen]).max().float()


class GroupObjectiveLoss(nn.Module):
    """A :class:`GroupObjective` built for a task's data: the CLUB / adversary net, the DRO weights, and the
    auxiliary optimiser, with the loss they give.

    Args:
        objective: what to train.
        group_attributes: the data's group attributes, one per column of a batch's ``group``.
        group_names: attribute -> its categories in code order.
        num_classes: classes of the per-sample labels (needed by ``conditional`` and ``sensitive_label``).
        feature_dim: width of ``z`` (the pooled features, or the output's width with ``penalty_on: logits``;
            without the label's one-hot, which is added here); needed with a penalty.
    """

    def __init__(
        self,
        objective: GroupObjective,
        *,
        group_attributes: Sequence[str],
        group_names: Mapping[str, Sequence[str]],
        num_classes: int | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.objective = objective
        self.group_attributes = list(group_attributes)
        missing = [attribute for attribute in self.group_attributes if not group_names.get(attribute)]
        if not self.group_attributes or missing:
            raise ValueError(
                f"The group objective needs the categories of every group attribute; `group_names` lacks {missing} "
                f"(attributes {self.group_attributes}, names given for {sorted(group_names)})."
            )
        self.group_names = {attribute: list(group_names[attribute]) for attribute in self.group_attributes}
        attribute = objective.attribute or self.group_attributes[0]
        if attribute not in self.group_attributes:
            raise ValueError(
                f"The group objective's sensitive attribute {attribute!r} is not one of the attributes "
                f"{self.group_attributes}."
            )
        self.sensitive_index = self.group_attributes.index(attribute)
        self.num_classes = num_classes
        label_needed = objective.conditional or objective.groups == "sensitive_label"
        if label_needed and not num_classes:
            raise ValueError(
                "`conditional` and `groups: sensitive_label` need per-sample class labels (`num_classes`); this "
                "task has none. Use `groups: sensitive` or `intersectional` and an unconditional penalty."
            )
        self._auxiliary_optimizer: torch.optim.Optimizer | None = None
        self._auxiliary_optimizer_state: dict[str, Any] | None = None
        if objective.penalty != "none":
            if feature_dim is None:
                raise ValueError("A group objective with a penalty needs `feature_dim` (the width of z).")
            width = feature_dim + (int(num_classes) if objective.conditional else 0)
            hidden = objective.auxiliary_hidden
            self.attribute_net = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, len(self.sensitive_names()))
            )
        if objective.group_dro:
            count = self.group_count()
            self.register_buffer("dro_weights", torch.full((count,), 1.0 / count), persistent=True)

    # -- groups --------------------------------------------------------------------------
    def group_sizes(self) -> list[int]:
        """Number of categories per attribute."""
        return [len(self.group_names[attribute]) for attribute in self.group_attributes]

    def sensitive_names(self) -> list[str]:
        return list(self.group_names[self.group_attributes[self.sensitive_index]])

    def group_count(self) -> int:
        """How many groups ``groups`` makes (DRO weights, worst-group loss)."""
        kind, sizes = self.objective.groups, self.group_sizes()
        if kind == "sensitive":
            return sizes[self.sensitive_index]
        if kind == "sensitive_label":
            return sizes[self.sensitive_index] * int(self.num_classes or 0)
        return math.prod(sizes)

    def group_codes(self, groups: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Each sample's group under ``groups`` (``[N]`` codes < :meth:`group_count`)."""
        kind = self.objective.groups
        if kind == "sensitive":
            return groups[:, self.sensitive_index]
        if kind == "sensitive_label":
            if target is None:
                raise ValueError("`groups: sensitive_label` needs the per-sample labels of the batch.")
            return groups[:, self.sensitive_index] * int(self.num_classes or 0) + target
        codes = torch.zeros_like(groups[:, 0])
        for column, size in enumerate(self.group_sizes()):
            codes = codes * size + groups[:, column]
        return codes

    # -- the loss ------------------------------------------------------------------------
    def penalty_weight(self, epochs_done: float | None) -> float:
        """λ, ramped linearly from 0 over ``warmup_epochs`` of training (full λ when the progress is unknown)."""
        weight, warmup = float(self.objective.weight), float(self.objective.warmup_epochs)
        if warmup <= 0 or epochs_done is None:
            return weight
        return weight * min(max(epochs_done / warmup, 0.0), 1.0)

    def forward(
        self,
        per_sample: torch.Tensor,
        groups: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        train: bool = True,
        epochs_done: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(task loss, loss to train on, mutual-information estimate or None)``.

        The task loss is the DRO-weighted loss when training with ``group_dro`` (the weights are updated
        here), else the mean; the penalty is added to the training loss only when ``train``.
        """
        if train and self.objective.group_dro:
            task_loss = self.dro_loss(per_sample, self.group_codes(groups, target))
        else:
            task_loss = per_sample.mean()
        if self.objective.penalty == "none":
            return task_loss, task_loss, None
        if features is None:
            raise ValueError(
                f"The group objective's {self.objective.penalty!r} penalty needs `features` (z) with the "
                "per-sample losses: the task must pass them."
            )
        added, estimate = self.penalty(
            features, groups[:, self.sensitive_index], target, weight=self.penalty_weight(epochs_done)
        )
        return task_loss, (task_loss + added if train else task_loss), estimate

    def dro_loss(self, per_sample: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``Σ_g q_g L_g`` after the update ``q_g ∝ q_g · exp(η L_g)`` with this batch's group losses."""
        count = len(self.dro_weights)
        sums = torch.zeros(count, device=per_sample.device, dtype=per_sample.dtype).index_add(
            0, codes, per_sample
        )
        sizes = torch.bincount(codes, minlength=count).to(per_sample.dtype)
        group_loss = sums / sizes.clamp_min(1.0)
        with torch.no_grad():
            weights = self.dro_weights * torch.exp(self.objective.dro_step_size * group_loss.detach())
            self.dro_weights.copy_(weights / weights.sum())
        return (self.dro_weights * group_loss).sum()

    def penalty(
        self,
        features: torch.Tensor,
        attribute: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        weight: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(term added to the loss, mutual-information estimate in nats) for ``z = features`` (pooled here).

        ``target`` (the labels) is needed with ``conditional``; the estimate is then of I(z; a | y).
        """
        net = self.attribute_net
        weight = self.penalty_weight(None) if weight is None else weight
        features = pool_features(features)
        inputs = self._auxiliary_input(features, target)
        separate = self.objective.auxiliary_steps > 0
        if separate and self.training and torch.is_grad_enabled():
            self.train_auxiliary(inputs, attribute)
        frozen = {name: parameter.detach() for name, parameter in net.named_parameters()}
        condition = target if self.objective.conditional else None
        if self.objective.penalty == "club":
            # q(a|z) learns on its own loss (detached inputs), here or in train_auxiliary.
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

    def _auxiliary_input(self, z: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if not self.objective.conditional:
            return z
        if target is None:
            raise ValueError("`conditional` needs the labels of the batch (I(z; a | y)).")
        return torch.cat([z, F.one_hot(target, int(self.num_classes or 0)).to(z)], dim=1)

    def _attribute_entropy(self, attribute: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """H(a) of the batch, or H(a | c) averaged over the batch's condition values."""
        condition = torch.zeros_like(attribute) if condition is None else condition
        counts, frequencies = attribute_frequencies(attribute, len(self.sensitive_names()), condition)
        entropies = -(frequencies * frequencies.clamp_min(1e-12).log()).sum(dim=1)
        return (entropies * counts.sum(dim=1)).sum() / len(attribute)

    # -- the auxiliary optimiser ---------------------------------------------------------
    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the auxiliary optimiser (``auxiliary_steps`` >= 1), kept out of the task's."""
        net = getattr(self, "attribute_net", None)
        return list(net.parameters()) if net is not None and self.objective.auxiliary_steps else []

    def train_auxiliary(self, inputs: torch.Tensor, attribute: torch.Tensor) -> None:
        """``auxiliary_steps`` Adam steps of q / the adversary on detached inputs, with its own optimiser."""
        optimizer = self._auxiliary_optimizer
        if optimizer is None:
            optimizer = torch.optim.Adam(
                self.attribute_net.parameters(), lr=self.objective.auxiliary_learning_rate
            )
            if self._auxiliary_optimizer_state is not None:  # a resumed fit: q goes on with its moments
                optimizer.load_state_dict(self._auxiliary_optimizer_state)
                self._auxiliary_optimizer_state = None
            self._auxiliary_optimizer = optimizer
        inputs = inputs.detach()
        with torch.enable_grad():
            for _ in range(self.objective.auxiliary_steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(self.attribute_net(inputs), attribute).backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the trained parameters: the DRO weights (a buffer, not trained) and
        the auxiliary optimiser's state (not Lightning's, so Lightning would not save it)."""
        state: dict[str, Any] = {}
        if getattr(self, "dro_weights", None) is not None:
            state["group_dro_weights"] = self.dro_weights.detach().cpu().tolist()
        if self._auxiliary_optimizer is not None:
            state["auxiliary_optimizer"] = self._auxiliary_optimizer.state_dict()
        return state

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`; the optimiser state is applied when it is next built (the first
        training step of a resumed fit)."""
        saved = state.get("group_dro_weights")
        if saved is not None and getattr(self, "dro_weights", None) is not None:
            self.dro_weights.copy_(torch.tensor(saved, dtype=self.dro_weights.dtype))
        self._auxiliary_optimizer = None
        self._auxiliary_optimizer_state = state.get("auxiliary_optimizer")
