"""Dense labelling: one class per pixel of an image, voxel of a volume, or point of a point set.

Masks are label maps ``[N, H, W]`` (images), ``[N, D, H, W]`` (volumes) or ``[N, P]`` (point sets); the
model returns logits ``[N, C, H, W]``, ``[N, C, D, H, W]`` or ``[N, C, P]``. Losses, metrics and
sliding-window inference are MONAI's, so figures match what the field reports with MONAI:
- losses: ``dice``, ``ce``, ``focal``, ``dice_ce``, ``dice_focal`` and weighted sums of their terms
  (``lambda_dice`` / ``lambda_ce`` / ``lambda_focal``, as in MONAI's ``DiceCELoss``), e.g.
  0.2·CE + 0.8·Dice;
- metrics: Dice and IoU per class and their class means (``dice``, ``miou``); on images and volumes also
  the 95th-percentile Hausdorff distance (``hd95``) and the surface Dice (``surface_dice``) — distances
  between surfaces, which a point set's labels don't have, so they are skipped there;
- an ``ignore_index`` label (padding, unlabelled regions) counts in no loss and no metric.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import FocalLoss, MaskedDiceLoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDiceMetric
from monai.networks.utils import one_hot
from torch import nn

from verticals.core.group_objective import GroupObjective
from verticals.core.group_report import GroupMetric
from verticals.core.tasks.base import AdapterTask

Loss = Literal["dice", "ce", "focal", "dice_ce", "dice_focal"]
Activation = Literal["softmax", "sigmoid"]
# Which terms each named loss sums; ``lambda_*`` reweight them (1 each by default, as MONAI's).
LOSS_TERMS: dict[str, tuple[str, ...]] = {
    "dice": ("dice",),
    "ce": ("ce",),
    "focal": ("focal",),
    "dice_ce": ("dice", "ce"),
    "dice_focal": ("dice", "focal"),
}
STAGES = ("train", "val", "test")
SPATIAL_METRICS = ("hd95", "surface_dice")
# Mask rank (without the sample dimension) -> what the samples are.
MASK_KINDS = {1: "points", 2: "image", 3: "volume"}


class SegmentationLoss(nn.Module):
    """``λ_dice·Dice + λ_ce·CE + λ_focal·Focal`` per sample, on MONAI's Dice and focal losses.

    Each term is averaged over a sample's labelled (not ignored) elements and over its classes, so the
    batch mean of the result equals MONAI's ``DiceLoss`` / ``DiceCELoss`` / ``FocalLoss`` on the same
    batch without ignored labels; per-sample values let a group objective weight samples by group.
    ``sigmoid``: one output channel, the probability of the foreground (CE is then binary CE).
    ``include_background`` applies to the Dice and focal terms, as in MONAI (CE always sees every class).
    Focal uses the softmax form for softmax outputs (MONAI's ``DiceFocalLoss`` uses the sigmoid form on
    every channel; the two agree for one sigmoid channel).
    """

    def __init__(
        self,
        *,
        weights: dict[str, float],
        sigmoid: bool,
        include_background: bool = True,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - {"dice", "ce", "focal"})
        if unknown:
            raise ValueError(f"Unknown loss term(s) {unknown}; the terms are 'dice', 'ce' and 'focal'.")
        self.weights = dict(weights)
        self.sigmoid = sigmoid
        # One sigmoid channel is the foreground: there is no background channel to leave out.
        background = include_background or sigmoid
        self.dice = MaskedDiceLoss(
            include_background=background, sigmoid=sigmoid, softmax=not sigmoid, reduction="none"
        )
        self.focal = FocalLoss(
            include_background=background, gamma=focal_gamma, use_softmax=not sigmoid, reduction="none"
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sample loss ``[N]`` for ``logits [N, C, *S]`` and class indices ``target [N, *S]``.

        ``valid [N, *S]`` (bool) marks the labelled elements; ``target`` must hold a class index
        (any) where it is False.
        """
        logits = logits.float()
        if valid is None:
            valid = torch.ones_like(target, dtype=torch.bool)
        mask = valid[:, None].to(logits.dtype)
        if self.sigmoid:
            encoded = target[:, None].to(logits.dtype)
        else:
            encoded = one_hot(target[:, None], num_classes=logits.shape[1], dtype=logits.dtype)
        total = logits.new_zeros(len(logits))
        if self.weights.get("dice"):
            dice = self.dice(logits, encoded, mask).flatten(1).mean(dim=1)
            total = total + self.weights["dice"] * dice
        if self.weights.get("ce"):
            if self.sigmoid:
                ce = F.binary_cross_entropy_with_logits(logits, encoded, reduction="none")[:, 0]
            else:
                ce = F.cross_entropy(logits, target, reduction="none")
            total = total + self.weights["ce"] * _masked_sample_mean(ce, valid)
        if self.weights.get("focal"):
            focal = self.focal(logits, encoded).mean(dim=1)
            total = total + self.weights["focal"] * _masked_sample_mean(focal, valid)
        return total


def _masked_sample_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [N, *S]`` over each sample's valid elements (0 for a sample with none)."""
    weight = valid.to(values.dtype)
    return (values * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1.0)


class MissedClassHausdorff(HausdorffDistanceMetric):
    """MONAI's 95th-percentile Hausdorff distance, except that a class present in the truth but absent from
    the prediction scores the sample's diagonal (the largest distance its grid allows, in spacing units)
    rather than NaN: MONAI's NaN would drop exactly the worst failures from the mean and make a model that
    never predicts a class look perfect. A class absent from the truth stays NaN (no distance to measure)."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        distances = super()._compute_tensor(y_pred, y, **kwargs)
        missed = y.flatten(2).any(-1) & ~y_pred.flatten(2).any(-1)  # [N, K]
        if not bool(missed.any()):
            return distances
        shape = torch.tensor(y.shape[2:], dtype=torch.float64)
        spacing = kwargs.get("spacing")
        rows = []
        for row in range(len(y)):
            if spacing is None:
                step = torch.ones_like(shape)
            elif isinstance(spacing, (list, tuple)) and spacing and isinstance(spacing[0], (list, tuple)):
                step = torch.tensor(spacing[row], dtype=torch.float64)
            else:
                step = torch.as_tensor(spacing, dtype=torch.float64).expand_as(shape)
            rows.append(float(torch.linalg.vector_norm(shape * step)))
        diagonal = torch.tensor(rows, dtype=distances.dtype, device=distances.device)[:, None]
        return torch.where(missed.to(distances.device), diagonal.expand_as(distances), distances)


@dataclass
class StageMetrics:
    """MONAI's cumulative metrics for one stage; each call returns per-sample, per-class values ``[N, K]``
    and buffers them (gathered across processes at ``aggregate``)."""

    dice: DiceMetric
    iou: MeanIoU
    hd95: MissedClassHausdorff | None = None
    surface_dice: SurfaceDiceMetric | None = None

    def items(self) -> list[tuple[str, Any]]:
        return [(name, metric) for name, metric in vars(self).items() if metric is not None]

    def reset(self) -> None:
        for _, metric in self.items():
            metric.reset()


class SegmentationTask(AdapterTask):
    """Segmentation of images, volumes or point sets with MONAI's losses, metrics and sliding window.

    Logs ``{stage}_loss``, ``{stage}_dice``, ``{stage}_miou``, ``{stage}_dice/<class>``,
    ``{stage}_iou/<class>`` and, where computed, ``{stage}_hd95[/<class>]`` and
    ``{stage}_surface_dice[/<class>]``. Class means average the per-class means over samples; a class
    absent from a sample's mask gives no Dice/IoU for that sample (MONAI's ``ignore_empty``).
    ``test_step`` returns per-sample ``[N, K]`` arrays of each metric (and ``group``) for the group report.

    A model whose ``batch_inputs`` attribute names batch keys (a promptable model's ``boxes``, ``points``)
    receives those entries as keyword arguments. Test batches of 2-D slices that carry ``volume_index`` also
    give the Dice of each whole volume rebuilt from its slices: ``test_volume_dice[/<class>]`` and
    ``volume_dice``.

    Args:
        num_classes: label values ``0..num_classes-1``, background (0) included; a binary task has 2.
            Default: the datamodule's ``num_classes``.
        class_names: one name per label value, used in logged keys (``val_dice/<name>``). Default: the
            datamodule's ``class_names``, else ``background``, ``class_1``, ….
        activation: ``softmax`` (one output channel per class) or ``sigmoid`` (binary only: one channel,
            the foreground probability, thresholded at ``threshold``).
        threshold: the foreground probability above which a ``sigmoid`` output predicts the foreground,
            in (0, 1); raise it for fewer false positives. Unused with ``softmax`` (arg-max).
        loss: ``dice`` | ``ce`` | ``focal`` | ``dice_ce`` | ``dice_focal``; ``lambda_dice`` / ``lambda_ce`` /
            ``lambda_focal`` weight its terms (default 1 each; e.g. ``dice_ce`` with 0.8 / 0.2).
        lambda_dice: weight (>= 0) of the loss's Dice term; default 1. Setting it for a loss without a Dice
            term is an error.
        lambda_ce: weight (>= 0) of the loss's cross-entropy term; default 1 (only ``ce`` / ``dice_ce``).
        lambda_focal: weight (>= 0) of the loss's focal term; default 1 (only ``focal`` / ``dice_focal``).
        include_background: whether the Dice / focal terms of the loss score the background channel
            (MONAI's option; CE always does).
        metrics_include_background: whether label 0 is a class of the metrics and their means (False where
            label 0 is just the rest around the structures; True where it is a class of its own).
        ignore_index: a label value that counts in no loss and no metric (e.g. 255 for unlabelled
            pixels, or a padding value for point sets). A value inside ``0..num_classes-1`` also removes
            that class: its output channel is never scored nor predicted.
        focal_gamma: the focusing parameter of the focal term (>= 0; 0 is plain cross-entropy, larger
            down-weights elements the model already gets right).
        spatial_metrics: which of ``hd95`` / ``surface_dice`` to compute (images and volumes only); default:
            both, ``[]`` for none.
        spatial_metrics_stages: stages that compute them (they need distance transforms: slow on
            large volumes, so by default only ``test``).
        surface_dice_tolerance: the surface Dice tolerance per metric class (one value for all), in the
            units of ``spacing``.
        spacing: element spacing for the distances (one number or one per axis); a batch key ``spacing``
            (``[N, D]``) takes precedence.
        roi_size: MONAI sliding-window inference at validation, test and predict for inputs larger than
            the model's window (``roi_size``: the window, one size per spatial axis); off when ``roi_size``
            is None. Training sees the batches as they come.
        sw_batch_size: windows the sliding window runs through the model at once (>= 1); lower it when
            inference runs out of memory.
        overlap: fraction in [0, 1) by which neighbouring windows overlap; more overlap averages more
            predictions per voxel at a higher cost.
        sw_mode: how overlapping windows are blended: ``constant`` (plain mean) or ``gaussian`` (window
            centres weigh more, which smooths seams).
        report_bootstrap: with a number of bootstrap resamples (0: no CIs), a ``GroupReport`` of every
            metric (and per class) overall and per group is written at test end; None writes none.
        group_objective: see ``AdapterTask``: group-DRO and/or a penalty over the groups of the batches,
            on the per-sample losses (``sensitive`` or ``intersectional`` groups; no per-sample label). A
            penalty reads ``forward_features``, which a sliding window doesn't give: under ``roi_size`` it is
            a training term only.
    """

    monitor = "val_dice"
    mode = "max"
    accepts_group_objective = True
    _mask_kind: str | None = None  # "points" | "image" | "volume", from the first mask seen
    _last_outputs: dict[str, torch.Tensor] | None = None
    #: After testing batches that carry ``volume_index`` (2-D slices of 3-D scans): Dice per volume and
    #: class ``[volumes, K]`` over the ``metric_labels``, each volume rebuilt from its slices; else None.
    volume_dice: torch.Tensor | None = None

    def __init__(
        self,
        *args: Any,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        activation: Activation = "softmax",
        threshold: float = 0.5,
        loss: Loss = "dice_ce",
        lambda_dice: float | None = None,
        lambda_ce: float | None = None,
        lambda_focal: float | None = None,
        include_background: bool = True,
        metrics_include_background: bool = False,
        ignore_index: int | None = None,
        focal_gamma: float = 2.0,
        spatial_metrics: list[str] | None = None,
        spatial_metrics_stages: list[str] | None = None,
        surface_dice_tolerance: float | list[float] = 1.0,
        spacing: float | list[float] | None = None,
        roi_size: list[int] | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        sw_mode: Literal["constant", "gaussian"] = "constant",
        report_bootstrap: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        check_classes(num_classes, class_names, activation, ignore_index)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1), got {threshold}.")
        _loss_weights(loss, lambda_dice, lambda_ce, lambda_focal)  # validates
        if focal_gamma < 0:
            raise ValueError(f"`focal_gamma` must be >= 0, got {focal_gamma}.")
        spatial_metrics = list(SPATIAL_METRICS) if spatial_metrics is None else list(spatial_metrics)
        spatial_metrics_stages = ["test"] if spatial_metrics_stages is None else list(spatial_metrics_stages)
        for name in spatial_metrics:
            if name not in SPATIAL_METRICS:
                raise ValueError(
                    f"Unknown spatial metric {name!r} in `spatial_metrics`; choose from {list(SPATIAL_METRICS)}."
                )
        for stage in spatial_metrics_stages:
            if stage not in STAGES:
                raise ValueError(
                    f"Unknown stage {stage!r} in `spatial_metrics_stages`; choose from {list(STAGES)}."
                )
        tolerances = np.atleast_1d(np.asarray(surface_dice_tolerance, dtype=float))
        if (tolerances < 0).any():
            raise ValueError(f"`surface_dice_tolerance` must be >= 0, got {surface_dice_tolerance}.")
        if roi_size is not None and (not roi_size or any(int(size) < 1 for size in roi_size)):
            raise ValueError(
                f"`roi_size` must list one positive window size per spatial axis, got {roi_size}."
            )
        if sw_batch_size < 1:
            raise ValueError(f"`sw_batch_size` must be >= 1, got {sw_batch_size}.")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"`overlap` must be in [0, 1), got {overlap}.")
        if sw_mode not in ("constant", "gaussian"):
            raise ValueError(f"`sw_mode` must be 'constant' or 'gaussian', got {sw_mode!r}.")
        if report_bootstrap is not None and report_bootstrap < 0:
            raise ValueError(
                f"`report_bootstrap` must be >= 0 (or None for no report), got {report_bootstrap}."
            )
        # The base's save_hyperparameters reads these arguments (as normalised above) from this frame; under
        # LightningCLI it takes the config as given instead, so the normalised values are written back.
        super().__init__(*args, **kwargs)
        normalised = {
            "num_classes": num_classes,
            "spatial_metrics": spatial_metrics,
            "spatial_metrics_stages": spatial_metrics_stages,
        }
        for key, value in normalised.items():
            self._set_inferred(key, value)

    def configure_group_objective(self) -> GroupObjective | None:
        """The base's, refusing what needs one class label per sample (a mask has one per element)."""
        objective = super().configure_group_objective()
        if objective is not None and (objective.conditional or objective.groups == "sensitive_label"):
            raise ValueError(
                "A segmentation sample has a label per element, not one class: `group_objective.conditional` and "
                "`groups: sensitive_label` don't apply. Use `groups: sensitive` or `intersectional`, unconditional."
            )
        return objective

    # -- shapes --------------------------------------------------------------------------
    def _shapes_known(self) -> bool:
        return self.hparams.get("num_classes") is not None

    def _infer_from_datamodule(self, datamodule: Any) -> None:
        super()._infer_from_datamodule(datamodule)
        self._infer_classes(datamodule)

    def _infer_classes(self, datamodule: Any) -> None:
        """``num_classes`` and ``class_names`` from the datamodule where they were not given."""
        if self.hparams.get("num_classes") is None:
            if getattr(datamodule, "num_classes", None) is None:
                raise ValueError(
                    f"SegmentationTask needs `num_classes` (label values, background included), and "
                    f"{type(datamodule).__name__} has no `num_classes` to take it from: pass it to the task."
                )
            self._set_inferred("num_classes", int(datamodule.num_classes))
        names = getattr(datamodule, "class_names", None)
        if self.hparams.get("class_names") is None and names is not None:
            self._set_inferred("class_names", [str(name) for name in names])
        check_classes(
            self.hparams["num_classes"],
            self.hparams.get("class_names"),
            self.hparams["activation"],
            self.hparams.get("ignore_index"),
        )

    @property
    def class_names(self) -> list[str]:
        """One name per label value (background included)."""
        names = self.hparams.get("class_names")
        if names is not None:
            return list(names)
        return ["background", *(f"class_{index}" for index in range(1, self.hparams["num_classes"]))]

    @property
    def scored_labels(self) -> list[int]:
        """Label values the model predicts: every class but an ignored one inside ``0..num_classes-1``."""
        ignore = self.hparams.get("ignore_index")
        return [label for label in range(self.hparams["num_classes"]) if label != ignore]

    @property
    def metric_labels(self) -> list[int]:
        """Label values the metrics report (the scored ones, background only if asked for)."""
        labels = self.scored_labels
        return labels if self.hparams["metrics_include_background"] else [label for label in labels if label]

    def model_outputs_kwargs(self) -> dict[str, Any]:
        channels = 1 if self.hparams["activation"] == "sigmoid" else self.hparams["num_classes"]
        return {"num_outputs": channels, "task": "segmentation"}

    # -- losses and metrics --------------------------------------------------------------
    def configure_losses(self) -> None:
        weights = _loss_weights(
            self.hparams["loss"],
            self.hparams["lambda_dice"],
            self.hparams["lambda_ce"],
            self.hparams["lambda_focal"],
        )
        # An ignored label 0 takes the background channel away: the first scored channel is a class.
        no_background = self.hparams.get("ignore_index") == 0
        self.criterion = SegmentationLoss(
            weights=weights,
            sigmoid=self.hparams["activation"] == "sigmoid",
            include_background=self.hparams["include_background"] or no_background,
            focal_gamma=self.hparams["focal_gamma"],
        )

    def configure_metrics(self) -> StageMetrics:
        """Fresh metrics for one stage. MONAI sees one-hot maps of the ``metric_labels`` only, ignored
        elements zeroed in prediction and truth, so its own background / ignore options stay off."""
        count = len(self.metric_labels)
        tolerance = self.hparams["surface_dice_tolerance"]
        tolerances = [float(tolerance)] * count if np.isscalar(tolerance) else [float(t) for t in tolerance]
        if len(tolerances) != count:
            raise ValueError(
                f"`surface_dice_tolerance` has {len(tolerances)} values but the metrics score {count} classes "
                f"({[self.class_names[label] for label in self.metric_labels]}): give one value or one per class."
            )
        spatial = self.hparams["spatial_metrics"]
        return StageMetrics(
            dice=DiceMetric(include_background=True, reduction="mean_batch"),
            iou=MeanIoU(include_background=True, reduction="mean_batch"),
            hd95=(
                MissedClassHausdorff(include_background=True, percentile=95, reduction="mean_batch")
                if "hd95" in spatial
                else None
            ),
            surface_dice=(
                SurfaceDiceMetric(tolerances, include_background=True, reduction="mean_batch")
                if "surface_dice" in spatial
                else None
            ),
        )

    def _metric_clones(self) -> tuple[StageMetrics | None, ...]:  # type: ignore[override]
        # MONAI's metrics are cumulative buffers, not torchmetrics: one fresh set per stage. A ready model is
        # adapted at __init__, possibly before the classes are known: ``setup`` then builds them.
        if self.hparams.get("num_classes") is None:
            return None, None, None
        return self.configure_metrics(), self.configure_metrics(), self.configure_metrics()

    def setup(self, stage: str) -> None:
        """Take what a ready model left unknown at ``__init__`` (classes, their names, the input shape) from
        the datamodule; a model built here from its name takes them in ``configure_model``."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        known = self.hparams.get("num_classes") is not None and self.hparams.get("class_names") is not None
        if self.net is None or datamodule is None or known:
            return
        had_classes = self.hparams.get("num_classes") is not None
        if self.hparams.get("input_shape") is None and getattr(datamodule, "input_shape", None) is not None:
            self._set_inferred("input_shape", list(datamodule.input_shape))
        self._infer_classes(datamodule)
        if not had_classes:
            self.train_metrics, self.val_metrics, self.test_metrics = self._metric_clones()

    # -- inference -----------------------------------------------------------------------
    def model_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """The batch entries the model takes besides ``x``: those its ``batch_inputs`` attribute names
        (a promptable model's boxes and points …) that the batch holds, passed as keyword arguments."""
        if not isinstance(batch, dict):
            return {}
        names = getattr(self._base_network(), "batch_inputs", ())
        return {name: batch[name] for name in names if name in batch}

    def infer(
        self, x: torch.Tensor, *, sliding_window: bool = True, inputs: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits for ``x`` (and the model's other ``inputs``): through MONAI's sliding window when
        ``roi_size`` is set (and asked for)."""
        roi_size = self.hparams.get("roi_size")
        inputs = inputs or {}
        if not sliding_window or roi_size is None:
            return self.model(x, **inputs) if inputs else self(x)
        if inputs:
            raise ValueError(
                f"`roi_size` is set, but the model also takes {sorted(inputs)} per image (prompts given in image "
                "coordinates), which a sliding window would cut apart. Set `roi_size: null` and feed whole images."
            )
        if self._mask_kind == "points":
            raise ValueError(
                "`roi_size` is set, but the masks are point sets [N, P]: a sliding window needs a grid (images "
                "or volumes). Set `roi_size: null` for point sets."
            )
        if len(roi_size) != x.ndim - 2:
            raise ValueError(
                f"`roi_size` {list(roi_size)} has {len(roi_size)} axes but the input {tuple(x.shape)} has "
                f"{x.ndim - 2} spatial axes: give one window size per spatial axis."
            )
        return sliding_window_inference(
            x,
            roi_size=list(roi_size),
            sw_batch_size=self.hparams["sw_batch_size"],
            predictor=self,
            overlap=self.hparams["overlap"],
            mode=self.hparams["sw_mode"],
        )

    def labels_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Label maps ``[N, *S]`` (label values, not channel positions): argmax, or the sigmoid threshold."""
        if self.hparams["activation"] == "sigmoid":
            return (logits[:, 0].float().sigmoid() > self.hparams["threshold"]).long()
        scored = torch.as_tensor(self.scored_labels, device=logits.device)
        return scored[logits[:, scored].argmax(dim=1)]

    # -- steps ---------------------------------------------------------------------------
    def _encode_target(
        self, y: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check a mask against the logits and the declared classes; return channel positions and the
        labelled elements (None when nothing is ignored)."""
        kind = MASK_KINDS.get(y.ndim - 1)
        if kind is None:
            raise ValueError(
                f"Masks must be [N, P] (point sets), [N, H, W] (images) or [N, D, H, W] (volumes) of label values; "
                f"got shape {tuple(y.shape)}. Drop a channel axis of size 1 with mask[:, 0]."
            )
        if self._mask_kind not in (None, kind):
            raise ValueError(
                f"The masks were {self._mask_kind} masks and are now {kind} masks ({tuple(y.shape)})."
            )
        self._mask_kind = kind
        channels = self.model_outputs_kwargs()["num_outputs"]
        if logits.ndim != y.ndim + 1 or logits.shape[0] != y.shape[0] or logits.shape[2:] != y.shape[1:]:
            raise ValueError(
                f"The model's output {tuple(logits.shape)} does not match the mask {tuple(y.shape)}: expected "
                f"[N, {channels}, *mask.shape[1:]] (logits at the mask's resolution)."
            )
        if logits.shape[1] != channels:
            raise ValueError(
                f"The model returns {logits.shape[1]} channels but this task needs {channels} "
                f"({self.hparams['activation']} over {self.hparams['num_classes']} classes)."
            )
        if y.is_floating_point():
            raise TypeError(f"Masks must hold integer label values, got dtype {y.dtype}.")
        y = y.long()
        ignore = self.hparams.get("ignore_index")
        num_classes = self.hparams["num_classes"]
        valid = None if ignore is None else y != ignore
        known = (y >= 0) & (y < num_classes)
        if valid is not None:
            known |= ~valid
        if not bool(known.all()):
            bad = sorted(int(value) for value in torch.unique(y[~known])[:10])
            raise ValueError(
                f"The mask holds label values {bad} outside the {num_classes} declared classes 0..{num_classes - 1}"
                f"{'' if ignore is None else f' and ignore_index {ignore}'}: raise `num_classes` (with "
                "`class_names`), or map those labels to `ignore_index`."
            )
        if valid is None:
            return y, None
        position = torch.where(valid, y, torch.zeros_like(y))
        if 0 <= ignore < num_classes and self.hparams["activation"] == "softmax":
            position = position - (position > ignore).long()  # channel positions without the ignored class
        return position, valid

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        y = batch["y"]
        windowed = stage != "train" and self.hparams.get("roi_size") is not None
        objective = self.group_objective
        features = None
        inputs = self.model_inputs(batch)
        if objective is not None and objective.needs_features and not windowed:
            if inputs:
                raise ValueError(
                    f"The group objective's penalty reads `forward_features(x)`, but this model also takes "
                    f"{sorted(inputs)}: use group-DRO alone (`penalty: none`) with a promptable model."
                )
            features, logits = self.forward_with_features(batch["x"])
        else:
            logits = self.infer(batch["x"], sliding_window=stage != "train", inputs=inputs)
        target, valid = self._encode_target(y, logits)
        per_sample = self.criterion(self._scored_channels(logits), target, valid)
        if objective is None or (objective.needs_features and features is None):
            # A sliding window gives no features: the penalty is a training term, so evaluation goes without.
            task_loss = loss = per_sample.mean()
        else:
            task_loss, loss = self.group_objective_loss(per_sample, batch, stage, features=features)
        self.log(
            f"{stage}_loss",
            task_loss,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=len(y),
            sync_dist=True,  # the mean over every process's samples
        )
        predicted = self.labels_from_logits(logits.detach())
        values = self._update_metrics(stage, predicted, y.long(), valid, batch.get("spacing"))
        if stage == "test" and "volume_index" in batch:
            self._count_volume_overlap(predicted, y.long(), valid, batch["volume_index"])
        if stage == "test":
            if "group" in batch:
                group = batch["group"]
                values["group"] = group[:, None] if group.ndim == 1 else group
            self._last_outputs = values
            self.report_examples = report_views(batch["x"], y, predicted, self._mask_kind)
        return self.adapter_loss(loss, stage)

    def _scored_channels(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits of the scored classes (all but an ignored class inside ``0..num_classes-1``)."""
        if self.hparams["activation"] == "sigmoid" or len(self.scored_labels) == logits.shape[1]:
            return logits
        return logits[:, self.scored_labels]

    def _update_metrics(
        self,
        stage: str,
        predicted: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor | None,
        spacing: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Feed one batch of label maps to the stage's MONAI metrics; per-sample ``[N, K]`` values by name."""
        predicted_onehot, truth_onehot = self._scored_one_hots(predicted, y, valid)
        metrics: StageMetrics | None = getattr(self, f"{stage}_metrics")
        if metrics is None:
            raise ValueError(
                "SegmentationTask does not know `num_classes`: pass it (or `class_names`), or run it through a "
                "Trainer with a datamodule that has `num_classes`."
            )
        spatial = self._mask_kind != "points" and stage in self.hparams["spatial_metrics_stages"]
        values: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            if name not in SPATIAL_METRICS:
                values[name] = _quiet(metric)(predicted_onehot, truth_onehot)
            elif spatial:
                values[name] = _quiet(metric)(predicted_onehot, truth_onehot, spacing=self._spacing(spacing))
        return {name: value.detach().float() for name, value in values.items()}

    def _scored_one_hots(
        self, predicted: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot maps ``[N, K, *S]`` of the ``metric_labels`` in prediction and truth, ignored elements zeroed
        in both (so MONAI's own background / ignore options stay off)."""
        labels = self.metric_labels
        predicted_onehot = _one_hot_labels(predicted, labels)
        truth_onehot = _one_hot_labels(y, labels)
        if valid is not None:
            keep = valid[:, None].to(truth_onehot.dtype)
            predicted_onehot, truth_onehot = predicted_onehot * keep, truth_onehot * keep
        return predicted_onehot, truth_onehot

    def _spacing(self, batch_spacing: torch.Tensor | None) -> Any:
        if batch_spacing is not None:
            return [
                [float(v) for v in row]
                for row in torch.as_tensor(batch_spacing).reshape(len(batch_spacing), -1)
            ]
        spacing = self.hparams.get("spacing")
        return None if spacing is None else spacing

    def _log_epoch(self, stage: str) -> None:
        metrics: StageMetrics | None = getattr(self, f"{stage}_metrics", None)
        if metrics is None:
            return
        names = [self.class_names[label] for label in self.metric_labels]
        for name, metric in metrics.items():
            if metric.get_buffer() is None:  # not computed at this stage (or on point sets)
                continue
            # Per-class means over the samples that have a value; NaN (not MONAI's 0) for a class with none.
            per_class = _nanmean_columns(metric.get_buffer().float().reshape(-1, len(names)))
            mean_name = "miou" if name == "iou" else name
            # MONAI's get_buffer() is gathered from every process: the same values on each.
            self.log(
                f"{stage}_{mean_name}",
                _nanmean(per_class),
                prog_bar=stage != "train" and name == "dice",
                sync_dist=True,
            )
            for class_name, value in zip(names, per_class):
                self.log(f"{stage}_{name}/{class_name}", value, sync_dist=True)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._volume_counts = {}

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self._log_volume_dice()

    # -- slices of volumes -----------------------------------------------------------------
    def _count_volume_overlap(
        self,
        predicted: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor | None,
        volume_index: torch.Tensor,
    ) -> None:
        """Add each slice's per-class overlap, predicted and true voxel counts to its volume's totals."""
        predicted_onehot, truth_onehot = self._scored_one_hots(predicted, y, valid)
        overlap = (predicted_onehot * truth_onehot).flatten(2).sum(-1)
        slices = torch.ones_like(overlap)  # so a volume with nothing true or predicted still counts as tested
        counts = torch.stack(
            [overlap, predicted_onehot.flatten(2).sum(-1), truth_onehot.flatten(2).sum(-1), slices], dim=-1
        ).double()  # [N, K, 4]
        totals = getattr(self, "_volume_counts", None)
        if totals is None:
            totals = self._volume_counts = {}
        for row, volume in enumerate(torch.as_tensor(volume_index).reshape(-1).tolist()):
            previous = totals.get(int(volume))
            totals[int(volume)] = counts[row].cpu() if previous is None else previous + counts[row].cpu()

    def _log_volume_dice(self) -> None:
        """Dice of each volume rebuilt from its slices (summed overlaps over summed sizes, per class), its
        mean over volumes as ``test_volume_dice`` and per class; summed across processes. A class absent
        from a volume's truth gives no value for that volume (as MONAI's ``ignore_empty``)."""
        totals: dict[int, torch.Tensor] = getattr(self, "_volume_counts", None) or {}
        local_count = torch.tensor(max(totals, default=-1) + 1, device=self.device)
        count = int(_gathered(self, local_count).max())
        if count == 0:
            self.volume_dice = None
            return
        dense = torch.zeros(count, len(self.metric_labels), 4, dtype=torch.float64, device=self.device)
        for volume, values in totals.items():
            dense[volume] = values.to(self.device)
        dense = _gathered(self, dense)
        dense = dense.sum(0) if dense.ndim == 4 else dense
        overlap, predicted, truth, slices = dense.unbind(-1)
        dice = torch.where(truth > 0, 2 * overlap / (predicted + truth).clamp_min(1), torch.nan)
        seen = (slices[:, 0] > 0).cpu()  # every tested volume, an empty one included (a row of NaN)
        self.volume_dice = dice[seen].float().cpu()  # [volumes, K], in volume-index order
        per_class = _nanmean_columns(self.volume_dice)
        self.log("test_volume_dice", _nanmean(per_class), sync_dist=True)  # gathered: the same on each process
        for label, value in zip(self.metric_labels, per_class):
            self.log(f"test_volume_dice/{self.class_names[label]}", value, sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Per-sample ``[N, K]`` metric values over the ``metric_labels`` (``dice``, ``iou``, and ``hd95`` /
        ``surface_dice`` on images and volumes) plus ``group`` ``[N, A]``, for the group report."""
        self._last_outputs = None
        self._step(batch, "test")
        return self._last_outputs

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Label maps ``[N, *S]`` of label values (sliding window when ``roi_size`` is set)."""
        x = batch["x"] if isinstance(batch, dict) else batch
        return self.labels_from_logits(self.infer(x, inputs=self.model_inputs(batch)))

    # -- group report --------------------------------------------------------------------
    def group_report_metrics(self) -> dict[str, GroupMetric]:
        """Metric name -> function of the per-sample arrays of some samples: each metric's class mean
        (``dice``, ``miou``, ``hd95``, ``surface_dice``) and its value per class (``dice/<class>`` …)."""
        names = [self.class_names[label] for label in self.metric_labels]
        keys = ["dice", "iou"]
        if self._mask_kind != "points" and "test" in self.hparams["spatial_metrics_stages"]:
            keys += [name for name in SPATIAL_METRICS if name in self.hparams["spatial_metrics"]]
        metrics: dict[str, GroupMetric] = {}
        for key in keys:
            better = key != "hd95"  # a distance: lower is better
            metrics["miou" if key == "iou" else key] = GroupMetric(
                functools.partial(class_mean, key=key), higher_is_better=better
            )
        for key in keys:
            for column, name in enumerate(names):
                metrics[f"{key}/{name}"] = GroupMetric(
                    functools.partial(class_value, key=key, column=column), higher_is_better=key != "hd95"
                )
        return metrics


def check_classes(
    num_classes: int | None, class_names: Sequence[str] | None, activation: str, ignore_index: int | None
) -> None:
    """Validate the class declaration of a segmentation task (as far as it is known yet)."""
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"`activation` must be 'softmax' or 'sigmoid', got {activation!r}.")
    if num_classes is None:
        return
    if num_classes < 2:
        raise ValueError(
            f"`num_classes` counts label values with background included and must be >= 2, got {num_classes} "
            "(a binary mask has 2)."
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but `num_classes` is {num_classes}: give one name per "
            "label value, background (0) included."
        )
    if activation == "sigmoid" and num_classes != 2:
        raise ValueError(
            f"`activation: sigmoid` is for binary masks (num_classes 2), got num_classes {num_classes}; use "
            "`activation: softmax` for several classes."
        )
    if ignore_index is not None and activation == "sigmoid" and 0 <= ignore_index < 2:
        raise ValueError(
            f"`ignore_index` {ignore_index} is one of the two classes of a binary (sigmoid) task; use a label "
            "outside 0..1 (e.g. 255) for the elements to ignore."
        )
    if ignore_index is not None and 0 <= ignore_index < num_classes and num_classes < 3:
        raise ValueError(
            f"`ignore_index` {ignore_index} removes one of only {num_classes} classes, leaving one: use a label "
            f"outside 0..{num_classes - 1} (e.g. 255) for the elements to ignore."
        )


def class_value(arrays: dict[str, np.ndarray], *, key: str, column: int) -> float:
    """Mean over samples of one class's per-sample values (samples where it is undefined left out)."""
    return float(_nanmean_np(np.asarray(arrays[key], dtype=float)[:, column]))


def class_mean(arrays: dict[str, np.ndarray], *, key: str) -> float:
    """Mean over classes of each class's mean over samples (the figure logged as ``{stage}_<key>``)."""
    values = np.asarray(arrays[key], dtype=float)
    return float(_nanmean_np(np.array([_nanmean_np(values[:, column]) for column in range(values.shape[1])])))


def _nanmean_np(values: np.ndarray) -> float:
    finite_or_inf = values[~np.isnan(values)]
    return float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")


def _nanmean_columns(values: torch.Tensor) -> torch.Tensor:
    """Column means over the finite entries (nan for a column with none)."""
    finite = torch.isfinite(values)
    total = torch.where(finite, values, torch.zeros_like(values)).sum(0)
    count = finite.sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.nan)


def _gathered(module: Any, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` from every process stacked on a new first axis (itself, unstacked, in one process)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.world_size == 1:
        return tensor
    return module.all_gather(tensor)


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    kept = values[~values.isnan()]
    return kept.mean() if kept.numel() else values.new_tensor(float("nan"))


#: The longest side of the examples the run report draws (larger inputs are subsampled to it).
REPORT_VIEW_SIDE = 256


def report_views(
    x: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor, kind: str | None
) -> dict[str, torch.Tensor] | None:
    """What the run report's overlay grid draws of a test batch: the inputs and the true and predicted label
    maps as 2-D views (a volume's middle slice along its first spatial axis), subsampled to at most
    ``REPORT_VIEW_SIDE`` per side; views, not copies. None for point sets (no image to draw).

    Args:
        x: the batch's inputs ``[N, C, H, W]`` or ``[N, C, D, H, W]``.
        truth: the true label maps ``[N, H, W]`` or ``[N, D, H, W]``.
        predicted: the predicted label maps, shaped like ``truth``.
        kind: the task's mask kind (``points``, ``image``, ``volume``).
    """
    if kind == "points" or x.ndim not in (4, 5) or x.ndim - 2 != truth.ndim - 1:
        return None
    if x.ndim == 5:
        middle = x.shape[2] // 2
        x, truth, predicted = x[:, :, middle], truth[:, middle], predicted[:, middle]
    stride = max(1, -(-max(truth.shape[-2:]) // REPORT_VIEW_SIDE))
    return {
        "x": x[..., ::stride, ::stride],
        "truth": truth[..., ::stride, ::stride],
        "predicted": predicted[..., ::stride, ::stride],
    }


def _one_hot_labels(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """``[N, K, *S]`` float indicators of ``labels == values[k]``."""
    return torch.stack([labels == value for value in values], dim=1).float()


def _quiet(function: Callable[..., Any]) -> Callable[..., Any]:
    """MONAI warns on every empty class (its distance is then NaN/inf, which the values show) and on a
    deprecated argument it passes itself; keep the logs readable."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*(?:all 0|always_return_as_numpy|prediction of class).*"
            )
            return function(*args, **kwargs)

    return call


def _loss_weights(
    loss: str, lambda_dice: float | None, lambda_ce: float | None, lambda_focal: float | None
) -> dict[str, float]:
    """Term weights of a named loss, with ``lambda_*`` overrides; a weight for an absent term is an error."""
    if loss not in LOSS_TERMS:
        raise ValueError(f"Unknown `loss` {loss!r}; choose one of {sorted(LOSS_TERMS)}.")
    given = {"dice": lambda_dice, "ce": lambda_ce, "focal": lambda_focal}
    terms = LOSS_TERMS[loss]
    for term, weight in given.items():
        if weight is None:
            continue
        if term not in terms:
            raise ValueError(
                f"`lambda_{term}` is set but `loss: {loss}` has no {term} term (its terms: {list(terms)}); choose a "
                f"loss with it, e.g. `loss: dice_{term}`."
            )
        if weight < 0:
            raise ValueError(f"`lambda_{term}` must be >= 0, got {weight}.")
    weights = {term: 1.0 if given[term] is None else float(given[term]) for term in terms}
    if not any(weights.values()):
        raise ValueError(f"Every term of `loss: {loss}` has weight 0: nothing would train.")
    return weights
