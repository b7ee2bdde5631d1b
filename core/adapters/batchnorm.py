"""Frozen normalisation statistics for adapted convolutional backbones."""

from __future__ import annotations

from torch import nn

from verticals.core.adapters.summary import adapter_name_pattern


def keep_batchnorm_statistics(module: nn.Module) -> None:
    """Put every pretrained BatchNorm inside ``module`` in eval mode, so its running statistics stay the
    pretrained ones; a BatchNorm an adapter added (under a peft method's prefix) trains as usual, its
    statistics being adapter state saved with it.

    Call it after ``train()``: with a frozen or low-rank-adapted backbone and the few images per batch of a
    CPU run or a small dataset, batch statistics would drift the features, and the running buffers are not adapter
    weights, so the drift would not even be saved with the adapter.

    Args:
        module: the (adapted) backbone; its BatchNorms are switched to eval mode in place.
    """
    added = adapter_name_pattern()
    for name, child in module.named_modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not added.search(name):
            child.eval()
