"""The baselines a medical-imaging practitioner tries first, beside every medical run's adapter.

- **Vision-language classification** (``medical.clip``: BiomedCLIP, CLIP): **zero-shot** with the domain's
  class prompts (the templates of :mod:`~verticals.domains.medical.prompts`, averaged per class; the
  ``prompts`` head of :class:`~verticals.domains.medical.clip.CLIPClassifier`), the model as it ships.
  A config that trains nothing (``biomedclip_zero_shot``) is this baseline.
- **CNN classification** (``medical.efficientnet_lite0``): a **linear probe** on the frozen ImageNet
  features (the core's probe: logistic regression on the pooled 1280-d features, ``C`` on validation),
  with the ImageNet weights even when the config trains from scratch. ``efficientnet_linear_probe`` is
  this baseline.
- **SAM segmentation** (``medical.litemedsam``, ``medical.sam``): the pretrained model **zero-shot,
  prompted with one box per class** taken from the ground-truth mask (tight, no jitter), its single-mask
  output: MedSAM's protocol, and the ``litemedsam_zero_shot_box`` config. A prompt-free config (SAMed)
  is thus compared with a baseline that is given the true boxes. Configs that train nothing are this
  baseline.

Registered at import (``verticals.domains.medical`` imports this module). Every other medical run (your own
backbone on these datamodules) gets the core's generic linear probe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verticals.core.baseline import BaselineContext, nothing_trained, register_baseline
from verticals.core.linear_probe import linear_probe_predictions
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.segmentation import SegmentationTask
from verticals.domains.medical.sam_prompts import prompts_from_label

__all__ = ["box_prompted_predictions", "efficientnet_probe_predictions", "zero_shot_predictions"]

SAM_MODELS = ("medical.litemedsam", "medical.sam")


def _model(task: Any) -> Any:
    return task.hparams.get("model")


def zero_shot_predictions(context: BaselineContext) -> np.ndarray:
    """The CLIP model without adapter, classifying by its class prompts: class indices of the test samples.

    Args:
        context: the run's baseline context.
    """
    with context.frozen_network(model_args={"head": "prompts"}) as network:
        return context.network_predictions(network)


def efficientnet_probe_predictions(context: BaselineContext) -> np.ndarray:
    """A linear probe on frozen EfficientNet-Lite0 ImageNet features (those the config names, or the packaged
    ones for a config that trains from scratch): class indices of the test samples.

    Args:
        context: the run's baseline context.
    """
    args = context.task.hparams.get("model_args") or {}
    pretrained = bool(args.get("pretrained", True)) or args.get("weights") is not None
    return linear_probe_predictions(context, model_args={"pretrained": True}, verify=pretrained)


def box_prompted_predictions(context: BaselineContext) -> np.ndarray:
    """The SAM model as it ships, one ground-truth box per class present: label maps of the test samples.

    Args:
        context: the run's baseline context.
    """
    task = context.task
    num_classes = int(task.hparams["num_classes"])
    ignore = task.hparams.get("ignore_index")

    def forward(network: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
        labels = batch["y"].long()
        if ignore is not None:
            labels = torch.where(labels == ignore, torch.zeros_like(labels), labels)
        prompts = [prompts_from_label(label, num_classes, mode="box") for label in labels.cpu()]
        boxes = torch.stack([prompt["boxes"] for prompt in prompts]).to(batch["x"].device)
        present = torch.stack([prompt["prompt_present"] for prompt in prompts]).to(batch["x"].device)
        logits = network(batch["x"], boxes=boxes, prompt_present=present)
        return task.labels_from_logits(logits).cpu().numpy()

    with context.frozen_network(model_args={"prompt": "box"}) as network:
        return context.predictions(lambda batch: forward(network, batch))


def _is_linear_probe(context: BaselineContext) -> bool:
    spec = context.task.adapter_spec
    return spec is not None and spec.method == "linear_probe"


register_baseline(
    name="zero-shot",
    description=(
        "the model as it ships, no adapter, classifying by the cosine similarity of each image to its "
        "class prompts (the domain's templates, averaged per class)"
    ),
    applies=lambda task, datamodule: isinstance(task, ClassificationTask) and _model(task) == "medical.clip",
    predict=zero_shot_predictions,
    is_config=nothing_trained,
)
register_baseline(
    name="linear probe (ImageNet features)",
    description=(
        "logistic regression on the frozen EfficientNet-Lite0 ImageNet features (pooled, 1280-d, "
        "standardised), fit on the training split, C picked on validation"
    ),
    applies=lambda task, datamodule: (
        isinstance(task, ClassificationTask) and _model(task) == "medical.efficientnet_lite0"
    ),
    predict=efficientnet_probe_predictions,
    is_config=_is_linear_probe,
)
register_baseline(
    name="zero-shot box prompts",
    description=(
        "the pretrained model as it ships, prompted with one tight box per class from the ground-truth "
        "mask (no jitter), its single-mask output (MedSAM's protocol)"
    ),
    applies=lambda task, datamodule: isinstance(task, SegmentationTask) and _model(task) in SAM_MODELS,
    predict=box_prompted_predictions,
    is_config=nothing_trained,
)
