"""Checkpoints that hold only what was trained, plus a reference to the frozen backbone.

A 22M-parameter backbone need not be copied into every checkpoint: it is rebuilt from its source and
checked against a fingerprint of its weights, so a checkpoint can't be silently loaded onto another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every tensor in ``module.state_dict()``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def trainable_state(state_dict: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` named in ``names``: what training changed (trainable parameters and
    running statistics), not the frozen backbone."""
    keep = set(names)
    return {name: tensor for name, tensor in state_dict.items() if name in keep}


def statistics_buffer_names(module: nn.Module) -> list[str]:
    """Names (in ``module.state_dict()``) of the running statistics that training updates without a gradient:
    BatchNorm / InstanceNorm ``running_mean``, ``running_var`` and ``num_batches_tracked``.

    They are not trainable parameters, but a checkpoint without them restores a fully trained (or
    un-frozen BatchNorm) model with the wrong statistics: the last epoch's instead of the checkpoint's,
    or the initial ones when resuming. They are small (two vectors per norm layer).
    """
    names = []
    for prefix, child in module.named_modules():
        if isinstance(child, nn.modules.batchnorm._NormBase) and child.track_running_stats:
            for buffer_name, buffer in child.named_buffers(recurse=False):
                if buffer is not None:
                    names.append(f"{prefix}.{buffer_name}" if prefix else buffer_name)
    return names


def check_backbone(
    reference: Mapping[str, Any], current: Mapping[str, Any], checkpoint_name: str = "checkpoint"
) -> None:
    """Raise if a checkpoint was trained on a different backbone than the one built now."""
    if reference.get("fingerprint") != current.get("fingerprint"):
        raise ValueError(
            f"The {checkpoint_name} was trained on backbone {reference.get('source')!r} "
            f"(fingerprint {str(reference.get('fingerprint'))[:12]}…), but this model's backbone is "
            f"{current.get('source')!r} (fingerprint {str(current.get('fingerprint'))[:12]}…). Build the task with "
            "the backbone the checkpoint was trained on, or start a new run without --ckpt_path."
        )
