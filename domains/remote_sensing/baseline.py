"""The baseline a remote-sensing practitioner tries first with a foundation model: a linear probe on its
frozen features, beside every remote-sensing run's adapter.

Segmentation (land cover on the generated tiles, LoveDA, Potsdam, Vaihingen): a logistic regression on the
frozen ViT's patch tokens (the blocks the config's head reads, after the final norm), one sample per patch
labelled with the majority class of its pixels, test logits upsampled bilinearly to the pixels: the
linear segmentation probe of DINOv2 and of the geospatial foundation-model benchmarks (GEO-Bench,
PANGAEA). Classification (EuroSAT): the same regression on the pooled token.

Why a linear probe rather than decoder-only training: it is what those benchmarks report first for a
frozen encoder, it costs one pass of the frozen encoder over the training split instead of a second
training run in every ``verticals run``, and it asks the question an adapter has to answer (what do the
frozen features already hold?) without a decoder that learns its own features. Decoder-only training, the
stronger control, is packaged as ``tile_vit_decoder_only``. A config that trains only a linear head on the
frozen encoder (``head: linear`` with ``linear_probe``) is this baseline.

Registered at import (``verticals.domains.remote_sensing`` imports this module).
"""

from __future__ import annotations

from verticals.core.baseline import BaselineContext, register_baseline
from verticals.core.linear_probe import linear_probe_predictions
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.segmentation import SegmentationTask

__all__: list[str] = []


def _is_linear_probe(context: BaselineContext) -> bool:
    task = context.task
    spec = task.adapter_spec
    if spec is None or spec.method != "linear_probe":
        return False
    return (
        isinstance(task, ClassificationTask) or (task.hparams.get("model_args") or {}).get("head") == "linear"
    )


register_baseline(
    name="linear probe (frozen ViT)",
    description=(
        "logistic regression on the frozen ViT's standardised features (per patch token, labelled with its "
        "majority class, logits upsampled to pixels; the pooled token for tiles), fit on the training split, "
        "C picked on validation"
    ),
    applies=lambda task, datamodule: (
        isinstance(task, (ClassificationTask, SegmentationTask))
        and task.hparams.get("model") == "remote_sensing.vit"
    ),
    predict=linear_probe_predictions,
    is_config=_is_linear_probe,
)
