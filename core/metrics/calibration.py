"""Temperature scaling (Guo et al. 2017) fitted by NLL with LBFGS, overall or one temperature per group.

Per-group temperatures correct a model that is over-confident for one subgroup and not another; a group
unseen at fit time falls back to the overall temperature.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``logits / T`` (binary ``[N]`` or ``[N, C]`` logits)."""
    logits = logits.detach().double()
    target = target.detach().long()
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll(logits / log_temperature.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())


class TemperatureScaler(nn.Module):
    """``fit(logits, target, groups=None)`` then ``transform(logits, groups=None)``; saved as buffers.

    ``logits`` are ``[N, C]`` class logits or ``[N]`` positive-class logits (binary); ``groups`` are ``[N]``
    integer codes. Scaling never changes a prediction's rank, so AUROC is unchanged; calibration is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("group_temperatures", torch.ones(0))

    def fit(
        self, logits: Any, target: Any, groups: Any = None, *, max_iter: int = 100, min_group_size: int = 10
    ) -> TemperatureScaler:
        """Fit the overall temperature and, with ``groups``, one per group of at least ``min_group_size``."""
        logits, target = torch.as_tensor(logits), torch.as_tensor(target).long()
        if len(logits) != len(target):
            raise ValueError(f"`logits` has {len(logits)} rows but `target` has {len(target)}.")
        self.temperature = torch.tensor(fit_temperature(logits, target, max_iter=max_iter))
        if groups is None:
            self.group_temperatures = torch.ones(0)
            return self
        codes = self._codes(groups, len(target))
        values = torch.full((int(codes.max()) + 1,), float(self.temperature), dtype=torch.float64)
        for group in codes.unique().tolist():
            rows = codes == group
            if int(rows.sum()) >= min_group_size:
                values[group] = fit_temperature(logits[rows], target[rows], max_iter=max_iter)
        self.group_temperatures = values.float()
        return self

    def transform(self, logits: Any, groups: Any = None) -> torch.Tensor:
        """Calibrated logits: ``logits / T`` (per sample ``T`` of its group when ``groups`` is given)."""
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
        return logits / (per_sample if logits.ndim == 1 else per_sample[:, None])

    def forward(self, logits: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return self.transform(logits, groups)

    @staticmethod
    def _codes(groups: Any, length: int) -> torch.Tensor:
        codes = torch.as_tensor(groups).long()
        if codes.shape != (length,) or (length and int(codes.min()) < 0):
            raise ValueError(
                f"`groups` must be {length} non-negative integer codes, got shape {tuple(codes.shape)}."
            )
        return codes
