"""Frozen normalisation statistics for adapted convolutional backbones."""

from __future__ import annotations

from torch import nn


def keep_batchnorm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm inside ``module`` in eval mode, so its running statistics stay the pretrained ones.

    Call it after ``train()``: with a frozen or low-rank-adapted backbone and the few images per batch of a
    CPU run or a small dataset, batch statistics would drift the features, and the running buffers are not adapter
    weights, so the drift would not even be saved with the adapter.
    """
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()
