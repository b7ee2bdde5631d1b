"""Temperature scaling (Guo et al. 2017) fitted by NLL with LBFGS, overall or one temperature per group.

Per-group temperatures correct a model that is over-confident for one subgroup and not another. Small
groups make that fit noisy (a 50-item validation group can "find" T = 0.4 that does not transfer), so
each group's ``log T_g`` is a MAP estimate under a Gaussian prior centred on the overall ``log T``:

    minimise  sum_i NLL(z_i / T_g)  +  (prior_precision / 2) * (log T_g - log T)^2

``prior_precision`` is in units of summed NLL: a group whose items carry less curvature than that stays
near the overall T, a large group gets its own (0 = independent per-group fits). Every ``log T`` is kept
inside ``[-max_log_temperature, max_log_temperature]`` (default ±3: T in [0.05, 20]) through a tanh
reparametrisation: beyond those bounds a fit is describing separable or collapsed logits, not
calibration, and an unbounded fit can run off (T = 3.7e6 on a collapsed model). A group unseen at fit
time, or with fewer than ``min_group_size`` items, uses the overall temperature.

A temperature cannot move a group's mean prediction: a model that over-predicts one class for a group
(e.g. a prevalence it did not learn for that group) stays biased however its logits are scaled. With
``group_bias=True`` each group also gets a logit offset ``b_g`` (per-group Platt / vector scaling:
``z / T_g + b_g``) under a ``N(0, 1 / prior_precision)`` prior per component, fitted jointly with ``T_g``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Default bound on |log T|: T in [e^-3, e^3] = [0.05, 20.1].
MAX_LOG_TEMPERATURE = 3.0
#: Default precision of the per-group prior on log T (summed-NLL units; prior sd = 1/sqrt(20) = 0.22).
GROUP_PRIOR_PRECISION = 20.0


def _nll_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum")
    return F.cross_entropy(logits, target, reduction="sum")


def fit_temperature(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    max_iter: int = 100,
    prior_log_temperature: float = 0.0,
    prior_precision: float = 0.0,
    max_log_temperature: float = MAX_LOG_TEMPERATURE,
) -> float:
    """The temperature ``T`` minimising the NLL of ``logits / T`` (binary ``[N]`` or ``[N, C]`` logits).

    With ``prior_precision > 0`` the fit is the MAP estimate under ``log T ~ N(prior_log_temperature,
    1 / prior_precision)``; ``log T`` always stays within ``±max_log_temperature``.

    Args:
        logits: binary ``[N]`` positive-class logits or ``[N, C]`` class logits (e.g. on the validation set).
        target: ``[N]`` labels (0/1 for binary logits, class indices otherwise).
        max_iter: LBFGS iterations.
        prior_log_temperature: centre of the Gaussian prior on ``log T`` (0: T = 1).
        prior_precision: precision of the priors, in summed-NLL units (0: maximum likelihood, no prior).
        max_log_temperature: bound on ``|log T|`` (> 0; 3 keeps T in [0.05, 20]).
    """
    temperature, _ = fit_temperature_and_bias(
        logits, target, max_iter=max_iter, prior_log_temperature=prior_log_temperature,
        prior_precision=prior_precision, max_log_temperature=max_log_temperature, bias=False,
    )  # fmt: skip
    return temperature


def fit_temperature_and_bias(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    max_iter: int = 100,
    prior_log_temperature: float = 0.0,
    prior_precision: float = 0.0,
    max_log_temperature: float = MAX_LOG_TEMPERATURE,
    bias: bool = True,
) -> tuple[float, torch.Tensor]:
    """``(T, b)`` minimising the NLL of ``logits / T + b`` (``b``: ``[C]``, or a scalar for ``[N]`` logits).

    The priors are ``log T ~ N(prior_log_temperature, 1 / prior_precision)`` and each ``b_c ~ N(0, 1 /
    prior_precision)`` (MAP; 0 = maximum likelihood). ``bias=False`` keeps ``b = 0`` (temperature only).

    Args:
        logits: binary ``[N]`` positive-class logits or ``[N, C]`` class logits (e.g. on the validation set).
        target: ``[N]`` labels (0/1 for binary logits, class indices otherwise).
        max_iter: LBFGS iterations.
        prior_log_temperature: centre of the Gaussian prior on ``log T`` (0: T = 1).
        prior_precision: precision of the priors, in summed-NLL units (0: maximum likelihood, no prior).
        max_log_temperature: bound on ``|log T|`` (> 0; 3 keeps T in [0.05, 20]).
        bias: fit the logit offset ``b`` too (False: temperature only).
    """
    if max_log_temperature <= 0 or prior_precision < 0:
        raise ValueError(
            f"Expected max_log_temperature > 0 and prior_precision >= 0, got {max_log_temperature} and "
            f"{prior_precision}."
        )
    if abs(prior_log_temperature) >= max_log_temperature:
        raise ValueError(
            f"`prior_log_temperature` {prior_log_temperature} must lie inside ±{max_log_temperature}."
        )
    logits = logits.detach().double()
    target = target.detach().long()
    count = max(len(target), 1)
    bound = float(max_log_temperature)
    # log T = bound * tanh(u): bounded, smooth, and LBFGS cannot run off to T = 0 or infinity.
    start = math.atanh(prior_log_temperature / bound)
    free = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(logits.shape[1:], dtype=torch.float64, requires_grad=bias)
    parameters = [free, offset] if bias else [free]
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        log_temperature = bound * torch.tanh(free)
        loss = _nll_sum(logits / log_temperature.exp() + offset, target)
        penalty = (log_temperature - prior_log_temperature) ** 2 + (offset**2).sum()
        loss = loss + 0.5 * prior_precision * penalty
        loss = loss / count  # a per-item scale keeps LBFGS's steps comparable across set sizes
        loss.backward()
        return loss

    optimizer.step(closure)
    return float((bound * torch.tanh(free.detach())).exp()), offset.detach()


class TemperatureScaler(nn.Module):
    """``fit(logits, target, groups=None)`` then ``transform(logits, groups=None)``; saved as buffers.

    ``logits`` are ``[N, C]`` class logits or ``[N]`` positive-class logits (binary); ``groups`` are ``[N]``
    integer codes. Scaling never changes a prediction's rank, so AUROC is unchanged; calibration is.
    ``max_log_temperature`` bounds every fitted ``|log T|``; ``group_bias`` adds a per-group logit offset
    (see the module docstring).

    Args:
        max_log_temperature: bound on every fitted ``|log T|`` (> 0; 3 keeps T in [0.05, 20]).
        group_bias: fit a logit offset per group beside its temperature, to correct a group's biased mean
            prediction that a temperature cannot move.
    """

    def __init__(self, max_log_temperature: float = MAX_LOG_TEMPERATURE, group_bias: bool = False) -> None:
        super().__init__()
        if max_log_temperature <= 0:
            raise ValueError(f"`max_log_temperature` must be > 0, got {max_log_temperature}.")
        self.max_log_temperature = float(max_log_temperature)
        self.group_bias = bool(group_bias)
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("group_temperatures", torch.ones(0))
        self.register_buffer("group_biases", torch.zeros(0))

    def fit(
        self,
        logits: Any,
        target: Any,
        groups: Any = None,
        *,
        max_iter: int = 100,
        min_group_size: int = 10,
        prior_precision: float = GROUP_PRIOR_PRECISION,
    ) -> TemperatureScaler:
        """Fit the overall temperature and, with ``groups``, one per group of at least ``min_group_size``.

        Each group's temperature is shrunk toward the overall one with ``prior_precision`` (0: no shrinkage).

        Args:
            logits: ``[N]`` binary or ``[N, C]`` class logits of a held-out set.
            target: ``[N]`` labels.
            groups: ``[N]`` non-negative integer group codes, or None for one temperature.
            max_iter: LBFGS iterations per fit.
            min_group_size: groups with fewer items use the overall temperature.
            prior_precision: shrinkage of each group's fit toward the overall one (summed-NLL units).
        """
        logits, target = torch.as_tensor(logits), torch.as_tensor(target).long()
        if len(logits) != len(target):
            raise ValueError(f"`logits` has {len(logits)} rows but `target` has {len(target)}.")
        if prior_precision < 0 or min_group_size < 1:
            raise ValueError(
                f"Expected prior_precision >= 0 and min_group_size >= 1, got {prior_precision} and "
                f"{min_group_size}."
            )
        bound = self.max_log_temperature
        overall = fit_temperature(logits, target, max_iter=max_iter, max_log_temperature=bound)
        self.temperature = torch.tensor(overall)
        if groups is None:
            self.group_temperatures = torch.ones(0)
            self.group_biases = torch.zeros(0)
            return self
        codes = self._codes(groups, len(target))
        count = int(codes.max()) + 1
        values = torch.full((count,), overall, dtype=torch.float64)
        biases = torch.zeros((count, *logits.shape[1:]), dtype=torch.float64)
        # The prior's centre must lie strictly inside the bounds for the tanh start point.
        centre = min(max(math.log(overall), -0.999 * bound), 0.999 * bound)
        for group in codes.unique().tolist():
            rows = codes == group
            if int(rows.sum()) >= min_group_size:
                values[group], biases[group] = fit_temperature_and_bias(
                    logits[rows], target[rows], max_iter=max_iter, prior_log_temperature=centre,
                    prior_precision=prior_precision, max_log_temperature=bound, bias=self.group_bias,
                )  # fmt: skip
        self.group_temperatures = values.float()
        self.group_biases = biases.float()
        return self

    def transform(self, logits: Any, groups: Any = None) -> torch.Tensor:
        """Calibrated logits: ``logits / T`` (per sample ``T`` of its group when ``groups`` is given).

        Args:
            logits: ``[N]`` or ``[N, C]`` logits, as given to ``fit``.
            groups: ``[N]`` group codes (a group unseen by ``fit`` gets the overall temperature), or None.
        """
        logits = torch.as_tensor(logits)
        if groups is None:
            return logits / self.temperature.to(logits)
        if not len(self.group_temperatures):
            raise ValueError("This scaler was fitted without groups; call fit(logits, target, groups) first.")
        codes = self._codes(groups, len(logits))
        per_sample = torch.full(
            (len(codes),), float(self.temperature), dtype=logits.dtype, device=logits.device
        )
        known = codes < len(self.group_temperatures)
        per_sample[known] = self.group_temperatures.to(logits)[codes[known]]
        scaled = logits / (per_sample if logits.ndim == 1 else per_sample[:, None])
        if len(self.group_biases):  # unknown groups get no offset
            offsets = torch.zeros_like(scaled)
            offsets[known] = self.group_biases.to(logits)[codes[known]]
            scaled = scaled + offsets
        return scaled

    def forward(self, logits: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return self.transform(logits, groups)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The per-group buffers take the saved shapes (a fresh scaler has none); a state saved before
        # ``group_biases`` existed loads with no offsets.
        state_dict.setdefault(prefix + "group_biases", torch.zeros(0))
        for name in ("group_temperatures", "group_biases"):
            setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _codes(groups: Any, length: int) -> torch.Tensor:
        codes = torch.as_tensor(groups).long()
        if codes.shape != (length,) or (length and int(codes.min()) < 0):
            raise ValueError(
                f"`groups` must be {length} non-negative integer codes, got shape {tuple(codes.shape)}."
            )
        return codes
