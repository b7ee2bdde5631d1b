"""Predictive uncertainty from adapters: ensembles of LoRAs on one frozen backbone, and MC-dropout.

Both return ``[K, N, C]`` class probabilities (K members or passes); ``predictive_uncertainty`` turns
them into the mean prediction, its entropy (total), the expected entropy (aleatoric) and their difference,
the mutual information between prediction and model (epistemic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from verticals.core.seeding import seeded

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _default_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _batches(inputs: torch.Tensor | Iterable[Any]) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield inputs
        return
    for batch in inputs:
        yield batch["x"] if isinstance(batch, Mapping) else batch


def _probabilities(model: nn.Module, inputs: Any, forward: Forward) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat(
            [forward(model, x.to(device)).float().softmax(dim=-1).cpu() for x in _batches(inputs)]
        )


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension.

    Args:
        probabilities: class probabilities ``[..., C]`` (rows sum to 1).
    """
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)


def predictive_uncertainty(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mean`` [N, C], ``predictive_entropy``, ``expected_entropy`` and ``mutual_information`` [N] from [K, N, C].

    Args:
        samples: ``[K, N, C]`` probabilities of K members or passes (from
            :func:`adapter_ensemble_probabilities` or :func:`mc_dropout_probabilities`).
    """
    if samples.ndim != 3:
        raise ValueError(
            f"Expected [K, N, C] probabilities (members × samples × classes), got {tuple(samples.shape)}."
        )
    mean = samples.mean(dim=0)
    total = entropy(mean)
    expected = entropy(samples).mean(dim=0)
    return {
        "mean": mean,
        "predictive_entropy": total,
        "expected_entropy": expected,
        "mutual_information": (total - expected).clamp_min(0.0),
    }


def adapter_ensemble_probabilities(
    model: nn.Module, inputs: Any, adapter_names: Sequence[str], *, forward: Forward = _default_forward
) -> torch.Tensor:
    """``[K, N, C]`` probabilities of each named adapter of one peft model (switched with ``set_adapter``).

    ``inputs`` is a tensor or an iterable of batches (tensors or dicts with ``"x"``). The model's active
    adapter and train/eval mode are restored afterwards.

    Args:
        model: a ``PeftModel`` holding the members (see :func:`verticals.core.load_adapter_ensemble`).
        inputs: a tensor of inputs, or an iterable of batches (tensors or dicts with ``"x"``).
        adapter_names: the members' adapter names.
        forward: ``forward(model, x) -> logits``, for models whose call takes more than ``x`` or returns more
            than logits; default ``model(x)``.
    """
    if not hasattr(model, "set_adapter") or not hasattr(model, "peft_config"):
        raise TypeError(
            f"An adapter ensemble needs a peft model with several adapters, got {type(model).__name__}."
        )
    missing = sorted(set(adapter_names) - set(model.peft_config))
    if missing or not adapter_names:
        raise ValueError(
            f"Adapters {missing or adapter_names} are not in this model; it has {sorted(model.peft_config)}."
        )
    active, was_training = model.active_adapter, model.training
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    model.eval()
    try:
        members = []
        for name in adapter_names:
            model.set_adapter(name)
            members.append(_probabilities(model, inputs, forward))
    finally:
        model.set_adapter(active)
        for name, parameter in model.named_parameters():  # set_adapter marks the active adapter trainable
            parameter.requires_grad_(name in trainable)
        model.train(was_training)
    return torch.stack(members)


def adapter_dropout_modules(model: nn.Module) -> list[nn.Dropout]:
    """The dropout modules inside adapter layers (e.g. peft's ``lora_dropout``), not the backbone's own.

    Args:
        model: an adapted model.
    """
    found: dict[int, nn.Dropout] = {}
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for name, child in module.named_modules():
            if name.split(".")[0] != "base_layer" and isinstance(child, nn.Dropout) and child.p > 0:
                found[id(child)] = child
    return list(found.values())


def mc_dropout_probabilities(
    model: nn.Module, inputs: Any, *, n_samples: int = 20, seed: int = 0, forward: Forward = _default_forward
) -> torch.Tensor:
    """``[n_samples, N, C]`` probabilities with only the adapters' dropout active (the backbone stays in eval).

    Args:
        model: an adapted model whose adapter has dropout > 0 (e.g. ``lora_dropout: 0.1``).
        inputs: a tensor of inputs, or an iterable of batches (tensors or dicts with ``"x"``).
        n_samples: stochastic passes (>= 2); more gives steadier uncertainty estimates at a higher cost.
        seed: seed of the dropout masks.
        forward: ``forward(model, x) -> logits``, for models whose call takes more than ``x`` or returns more
            than logits; default ``model(x)``.
    """
    if n_samples < 2:
        raise ValueError(f"`n_samples` must be at least 2 for MC-dropout, got {n_samples}.")
    dropouts = adapter_dropout_modules(model)
    if not dropouts:
        raise ValueError(
            "MC-dropout found no adapter dropout with p > 0 in this model; build the adapter with dropout, "
            "e.g. options: {lora_dropout: 0.1}."
        )
    was_training = model.training
    model.eval()
    for module in dropouts:
        module.train()
    try:
        with seeded(seed, next(model.parameters()).device):
            samples = [_probabilities(model, inputs, forward) for _ in range(n_samples)]
    finally:
        model.train(was_training)
    return torch.stack(samples)
