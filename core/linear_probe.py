"""The generic baseline: a linear probe on the frozen backbone's features, for any backbone a user brings.

Before adapting a backbone, the first question is how far its frozen features already go. This baseline
rebuilds the network without adapter (:meth:`~verticals.core.baseline.BaselineContext.frozen_network`),
reads ``forward_features(x)`` (timm's convention, which the verticals models follow) and fits
scikit-learn's ``LogisticRegression`` on standardised features of the training split, with ``C`` picked
from :data:`C_GRID` on the validation split:

- **classification**: on the pooled features (``[N, D]``; token maps and feature maps are averaged);
- **segmentation**: per element of the feature map (``[N, C, h, w]`` patch tokens, ``[N, C, *S]`` or
  channel-last ``[N, *S, C]`` per-point features), each labelled with the mask's majority class under it,
  at most :data:`MAX_CELLS` of them; test logits are resampled (bilinearly) to the mask's resolution, as
  in DINOv2's linear segmentation probe.

A model without ``forward_features``, or whose features have no spatial layout for a segmentation mask, is
skipped with that reason in the report. One forward pass over the training, validation and test splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from verticals.core.baseline import Baseline, BaselineContext, BaselineSkipped
from verticals.core.baseline_scoring import network_inputs
from verticals.core.group_objective import pool_features
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.segmentation import SegmentationTask

__all__ = [
    "C_GRID",
    "LINEAR_PROBE",
    "MAX_CELLS",
    "Features",
    "classification_probe",
    "fit_probe",
    "frozen_features",
    "linear_probe_predictions",
    "segmentation_probe",
]

#: Inverse regularisation strengths tried, the one best on validation kept (C = 1 without validation).
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: Feature-map elements a segmentation probe trains on at most (a seeded draw spread over the images).
MAX_CELLS = 50_000

Features = Callable[[nn.Module, Any], torch.Tensor]


def frozen_features(network: nn.Module, batch: Any) -> torch.Tensor:
    """``network.forward_features(x)`` of a batch (with the batch entries it takes, such as a category),
    as float; :class:`BaselineSkipped` for a model without ``forward_features``.

    Args:
        network: the frozen model (a peft wrapper is looked through).
        batch: the batch.
    """
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    function = getattr(base, "forward_features", None)
    if function is None:
        raise BaselineSkipped(
            f"{type(base).__name__} has no forward_features(x), so there are no frozen features to probe "
            "(give the model timm's forward_features / forward_head split)"
        )
    return function(batch["x"], **network_inputs(base, batch, function)).detach().float()


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    seed: int = 0,
) -> Any:
    """A standardised ``LogisticRegression`` fit on ``train`` (features, labels), ``C`` from :data:`C_GRID`
    picked on ``validation`` (the first best; C = 1 without validation).

    Args:
        train: features ``[n, d]`` and integer labels ``[n]``.
        validation: the same for choosing ``C``; None or empty to keep C = 1.
        seed: the solver's ``random_state``.

    Returns:
        The fitted scikit-learn pipeline (``predict``, ``predict_proba``, ``classes_``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = train
    if len(np.unique(labels)) < 2:
        raise BaselineSkipped(
            f"the training split holds one class only ({int(labels[0]) if len(labels) else 'none'}): a linear "
            "probe needs two"
        )

    def fitted(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=seed)).fit(
            features, labels
        )

    if validation is None or not len(validation[1]):
        return fitted(1.0)
    best, best_score = None, -1.0
    for c in C_GRID:
        candidate = fitted(c)
        score = float((candidate.predict(validation[0]) == validation[1]).mean())
        if score > best_score:
            best, best_score = candidate, score
    return best


# -- classification ------------------------------------------------------------------------------------------
def _pooled(network: nn.Module, batches: Iterable[Any], features: Features) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for batch in batches:
        rows.append(pool_features(features(network, batch)).cpu().numpy())
        labels.append(batch["y"].detach().cpu().numpy().reshape(-1))
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(labels).astype(np.int64)


def classification_probe(
    context: BaselineContext, network: nn.Module, features: Features = frozen_features
) -> np.ndarray:
    """Class predictions of a logistic regression on the pooled frozen features (see the module docstring).

    Args:
        context: the run's baseline context.
        network: the frozen network (from ``context.frozen_network()``).
        features: how to read a batch's features from the network.
    """
    train = _pooled(network, context.batches("train"), features)
    validation = _optional(lambda: _pooled(network, context.batches("val"), features))
    probe = fit_probe(train, validation, seed=context.seed)
    test, _ = _pooled(network, context.test_batches(), features)
    return probe.predict(test).astype(np.int64)


# -- segmentation --------------------------------------------------------------------------------------------
def _channel_first(maps: torch.Tensor, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Feature maps as ``[N, C, *S']`` for masks ``[N, *S]``: channel-first, channel-last at the mask's
    resolution (per-point features), or a coarser grid (patch tokens)."""
    dims = len(mask_shape)
    if maps.ndim != dims + 2:
        raise BaselineSkipped(
            f"forward_features gives {list(maps.shape)}, no per-element feature map for masks of spatial shape "
            f"{list(mask_shape)}"
        )
    if tuple(maps.shape[2:]) == mask_shape:
        return maps
    if tuple(maps.shape[1:-1]) == mask_shape:
        return maps.movedim(-1, 1)
    if dims in (2, 3):
        return maps
    raise BaselineSkipped(
        f"forward_features gives {list(maps.shape)}, which does not line up with masks of spatial shape "
        f"{list(mask_shape)}"
    )


def _cell_labels(
    target: torch.Tensor, grid: tuple[int, ...], classes: list[int], ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The majority class under each cell of ``grid`` (label values) and which cells hold a labelled element."""
    one_hot = torch.stack([(target == label) for label in classes], dim=1).float()  # [N, K, *S]
    if ignore is not None:
        one_hot = one_hot * (target != ignore)[:, None].float()
    if tuple(target.shape[1:]) != grid:
        pool = F.adaptive_avg_pool2d if len(grid) == 2 else F.adaptive_avg_pool3d
        one_hot = pool(one_hot, grid)
    labelled = one_hot.sum(dim=1) > 0
    labels = torch.as_tensor(classes, device=target.device)[one_hot.argmax(dim=1)]
    return labels, labelled


def _cells(
    network: nn.Module,
    batches: Iterable[Any],
    features: Features,
    task: SegmentationTask,
    per_sample: int,
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    ignore = task.hparams.get("ignore_index")
    classes = list(task.scored_labels)
    rows, labels = [], []
    for batch in batches:
        target = batch["y"].long()
        maps = _channel_first(features(network, batch), tuple(target.shape[1:]))
        cell_labels, labelled = _cell_labels(target, tuple(maps.shape[2:]), classes, ignore)
        flat = maps.movedim(1, -1)  # [N, *S', C]
        for index in range(len(target)):
            keep = labelled[index].reshape(-1).cpu().numpy()
            chosen = np.flatnonzero(keep)
            if len(chosen) > per_sample:
                chosen = np.sort(generator.choice(chosen, per_sample, replace=False))
            rows.append(flat[index].reshape(-1, flat.shape[-1])[chosen].cpu().numpy())
            labels.append(cell_labels[index].reshape(-1)[chosen].cpu().numpy())
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(labels).astype(np.int64)


def segmentation_probe(
    context: BaselineContext, network: nn.Module, features: Features = frozen_features
) -> np.ndarray:
    """Label maps of a per-element logistic regression on the frozen feature maps (see the module docstring).

    Args:
        context: the run's baseline context.
        network: the frozen network (from ``context.frozen_network()``).
        features: how to read a batch's feature maps from the network.
    """
    task = context.task
    if not isinstance(task, SegmentationTask):
        raise BaselineSkipped(f"{type(task).__name__} is not a segmentation task")
    generator = np.random.default_rng(context.seed)
    images = _split_size(context.datamodule, "train")
    per_sample = max(1, MAX_CELLS // max(1, images)) if images else MAX_CELLS
    train = _cells(network, context.batches("train"), features, task, per_sample, generator)
    validation = _optional(
        lambda: _cells(network, context.batches("val"), features, task, per_sample, generator)
    )
    probe = fit_probe(train, validation, seed=context.seed)
    classes = torch.as_tensor(probe.classes_)
    predictions = []
    for batch in context.test_batches():
        mask_shape = tuple(batch["y"].shape[1:])
        maps = _channel_first(features(network, batch), mask_shape)
        grid = tuple(maps.shape[2:])
        flat = maps.movedim(1, -1).reshape(-1, maps.shape[1]).cpu().numpy()
        scores = torch.as_tensor(probe.predict_proba(flat), dtype=torch.float32)
        scores = scores.reshape(len(maps), *grid, -1).movedim(-1, 1)  # [N, K', *S']
        if grid != mask_shape:
            mode = "bilinear" if len(grid) == 2 else "trilinear"
            scores = F.interpolate(scores, size=mask_shape, mode=mode, align_corners=False)
        predictions.append(classes[scores.argmax(dim=1)].numpy().astype(np.int64))
    return np.concatenate(predictions) if predictions else np.zeros((0,), np.int64)


def _split_size(datamodule: Any, split: str) -> int | None:
    try:
        return len(datamodule.split_dataset(split))
    except Exception:  # a datamodule without split_dataset: no per-image share, the cap applies at the end
        return None


def _optional(read: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray] | None:
    """A validation split's features, or None where the datamodule has none."""
    try:
        return read()
    except BaselineSkipped:
        raise
    except (NotImplementedError, AttributeError, KeyError):
        return None


# -- the registered entry ------------------------------------------------------------------------------------
def linear_probe_predictions(
    context: BaselineContext,
    *,
    model_args: dict[str, Any] | None = None,
    verify: bool = True,
    features: Features = frozen_features,
) -> np.ndarray:
    """The linear probe's predictions on the test samples, for a classification or segmentation task.

    Args:
        context: the run's baseline context.
        model_args: builder arguments replacing the task's (e.g. real weights for a config trained from scratch).
        verify: check the rebuilt backbone against the run's fingerprint (off when ``model_args`` changes it).
        features: how to read a batch's features from the network.
    """
    task = context.task
    if not isinstance(task, (ClassificationTask, SegmentationTask)):
        raise BaselineSkipped(f"no linear probe for a {type(task).__name__}: it probes classes or masks only")
    with context.frozen_network(model_args=model_args, verify=verify) as network:
        if isinstance(task, SegmentationTask):
            return segmentation_probe(context, network, features)
        return classification_probe(context, network, features)


def _is_linear_probe(context: BaselineContext) -> bool:
    """A classification config that trains only a head on the frozen backbone already is this baseline."""
    spec = context.task.adapter_spec
    return isinstance(context.task, ClassificationTask) and spec is not None and spec.method == "linear_probe"


#: The baseline of a run no registered one applies to.
LINEAR_PROBE = Baseline(
    name="linear probe",
    description=(
        "scikit-learn LogisticRegression on the frozen backbone's standardised forward_features (pooled for "
        "classes, per feature-map element for masks), fit on the training split, C picked on validation"
    ),
    applies=lambda task, datamodule: True,
    predict=linear_probe_predictions,
    is_config=_is_linear_probe,
)
