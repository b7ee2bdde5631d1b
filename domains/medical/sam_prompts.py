"""Box and point prompts for SAM-style segmenters, derived from a label map (MedSAM's recipe).

A SAM decoder is asked "segment the object inside this box" or "… under this point". For training and
evaluation the prompts come from the ground truth: one prompt per foreground class (K = ``num_classes - 1``,
prompt ``k`` belongs to class ``k + 1``), with ``prompt_present`` False where the class is absent.

Conventions (what :func:`check_prompts` enforces):

- a box is ``(x0, y0, x1, y1)`` in input pixels with pixel edges as coordinates: it covers columns
  ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``, so ``0 <= x0 < x1 <= W`` (a one-pixel object has a box of side
  1, never an empty one). One box spans every part of its class (both kidneys of a ``kidney`` class);
- a point is ``(x, y)``: the column and row of a pixel, ``0 <= x < W`` and ``0 <= y < H``;
- an absent class gets the whole image as its box and the centre pixel as its point, so every row is a
  valid prompt; the model must read ``prompt_present`` to ignore it.

Randomness, in training only (``jitter > 0``): with ``mode="box"`` each side of the box moves *outward*
by a uniform 0..``jitter`` px, clipped to the image (MedSAM perturbs boxes by 0–20 px at 256 px, so the
model does not learn to expect a tight box); with ``mode="point"`` the point is a uniformly random pixel of
the class. Without jitter (validation, test) the box is tight and the point is the class's centre-most
pixel (the one farthest from its boundary, as in SAM's interactive evaluation), so results are
deterministic. ``generator`` (a ``torch.Generator`` or a NumPy ``Generator``) makes the random draws
reproducible; ``None`` draws from torch's global generator (seeded per dataloader worker by Lightning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

__all__ = ["PROMPT_MODES", "PromptMode", "check_prompts", "prompts_from_label"]

PromptMode = Literal["none", "box", "point"]
#: What a segmenter is prompted with: nothing (SAMed), a box per class (MedSAM), a point per class.
PROMPT_MODES: tuple[str, ...] = ("none", "box", "point")


def _uniform(generator: torch.Generator | np.random.Generator | None, count: int) -> np.ndarray:
    """``count`` floats in [0, 1) from ``generator`` (torch's global generator when ``None``)."""
    if isinstance(generator, np.random.Generator):
        return generator.random(count)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(count, generator=generator, dtype=torch.float64).numpy()
    raise TypeError(
        f"`generator` must be a torch.Generator, a numpy.random.Generator or None, got {type(generator).__name__}."
    )


def _centre_most(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the mask pixel farthest from the mask's boundary (ties: the first in raster order)."""
    from scipy.ndimage import distance_transform_edt

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the bounding box: a cheaper transform
    distance = distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]  # outside the mask counts as boundary
    row, col = np.unravel_index(int(np.argmax(distance)), crop.shape)
    return int(row + rows[0]), int(col + cols[0])


def prompts_from_label(
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    mode: PromptMode = "box",
    jitter: float = 0.0,
    generator: torch.Generator | np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One box and one point per foreground class of a ``[H, W]`` label map.

    Returns ``boxes [K, 4]`` and ``points [K, 2]`` (float32) and ``prompt_present [K]`` (bool) for
    K = ``num_classes - 1``. Both kinds are always returned (a batch has the same keys whatever the mode);
    ``mode`` says which of them ``jitter > 0`` randomises (see the module docstring): ``"box"`` jitters the
    box outward, ``"point"`` draws a random pixel of the class, ``"none"`` leaves both exact.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"`mode` must be one of {PROMPT_MODES}, got {mode!r}.")
    if not np.isfinite(jitter) or jitter < 0:
        raise ValueError(f"`jitter` must be a finite number of pixels >= 0, got {jitter}.")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an integer >= 2 (background plus at least one class), got {num_classes}."
        )
    label = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if label.ndim != 2:
        raise ValueError(
            f"`label` must be one [H, W] label map, got shape {tuple(label.shape)}; call once per slice."
        )
    if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.bool_)):
        raise ValueError(f"`label` must hold integer class indices, got dtype {label.dtype}.")
    outside = label[(label < 0) | (label >= num_classes)]
    if outside.size:
        raise ValueError(
            f"`label` holds value(s) {sorted(set(outside.tolist()))[:10]} outside the classes 0..{num_classes - 1}; "
            "declare the classes or remap the label."
        )
    height, width = label.shape
    count = int(num_classes) - 1
    boxes = np.tile(np.array([0.0, 0.0, width, height], dtype=np.float64), (count, 1))
    points = np.tile(np.array([width // 2, height // 2], dtype=np.float64), (count, 1))
    present = np.zeros(count, dtype=bool)
    for k in range(count):
        mask = label == k + 1
        if not mask.any():
            continue
        present[k] = True
        rows, cols = np.nonzero(mask)
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
        if mode == "box" and jitter > 0:
            shift = _uniform(generator, 4) * jitter
            box += shift * np.array([-1.0, -1.0, 1.0, 1.0])  # outward only, as MedSAM
            box = np.clip(box, 0.0, np.array([width, height, width, height], dtype=np.float64))
        boxes[k] = box
        if mode == "point" and jitter > 0:
            pick = min(int(_uniform(generator, 1)[0] * len(rows)), len(rows) - 1)
            row, col = int(rows[pick]), int(cols[pick])
        else:
            row, col = _centre_most(mask)
        points[k] = (col, row)
    return {
        "boxes": torch.from_numpy(boxes.astype(np.float32)),
        "points": torch.from_numpy(points.astype(np.float32)),
        "prompt_present": torch.from_numpy(present),
    }


def _as_array(value: np.ndarray | torch.Tensor | Sequence, name: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}.")
    return array


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int]:
    """(height, width) from a side or a pair."""
    if image_size is None:
        raise ValueError(
            "`image_size` is required: the side (or (height, width)) of the image the prompts are for."
        )
    sizes = [image_size, image_size] if np.ndim(image_size) == 0 else list(image_size)
    if len(sizes) != 2 or any(int(size) != size or size < 1 for size in sizes):
        raise ValueError(f"`image_size` must be a positive side or (height, width), got {image_size}.")
    return int(sizes[0]), int(sizes[1])


def check_prompts(
    boxes: np.ndarray | torch.Tensor | None = None,
    points: np.ndarray | torch.Tensor | None = None,
    image_size: int | Sequence[int] | None = None,
    prompt_present: np.ndarray | torch.Tensor | None = None,
) -> None:
    """Raise ``ValueError`` naming the first prompt that is malformed or outside the image.

    ``boxes [K, 4]`` or ``[N, K, 4]`` as ``(x0, y0, x1, y1)`` with ``0 <= x0 < x1 <= W`` and
    ``0 <= y0 < y1 <= H``; ``points [K, 2]`` or ``[N, K, 2]`` as ``(x, y)`` with ``0 <= x < W``,
    ``0 <= y < H``; ``image_size`` a side or ``(H, W)``. With ``prompt_present`` (``[K]`` / ``[N, K]``)
    only the present prompts are checked.
    """
    height, width = _image_size(image_size)
    shapes: dict[str, tuple[int, ...]] = {}
    present = None if prompt_present is None else _as_array(prompt_present, "prompt_present").astype(bool)
    for name, value, last in (("boxes", boxes, 4), ("points", points, 2)):
        if value is None:
            continue
        array = _as_array(value, name).astype(np.float64)
        if array.ndim not in (2, 3) or array.shape[-1] != last:
            raise ValueError(
                f"`{name}` must have shape [K, {last}] or [N, K, {last}] (K prompts per image), got "
                f"{tuple(array.shape)}."
            )
        shapes[name] = array.shape[:-1]
        if present is not None and present.shape != array.shape[:-1]:
            raise ValueError(
                f"`prompt_present` has shape {tuple(present.shape)} but `{name}` has "
                f"{tuple(array.shape[:-1])} prompts; give one flag per prompt."
            )
        flat = array.reshape(-1, last)
        rows = np.arange(len(flat)) if present is None else np.flatnonzero(present.reshape(-1))
        if not np.isfinite(flat[rows]).all():
            raise ValueError(f"`{name}` holds NaN or infinite coordinates.")
        kept = flat[rows]
        if name == "boxes":
            x0, y0, x1, y1 = kept.T
            bad = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x1 <= x0) | (y1 <= y0)
            rule = (
                f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (x1, y1 are the exclusive right and "
                "bottom pixel edges); put the corners in order and clip the box to the image"
            )
        else:
            x, y = kept.T
            bad = (x < 0) | (y < 0) | (x >= width) | (y >= height)
            rule = f"0 <= x < {width} and 0 <= y < {height} (a pixel's column and row); clip it to the image"
        if bad.any():
            row = int(rows[np.flatnonzero(bad)[0]])
            where = np.unravel_index(row, array.shape[:-1])
            place = f"image {where[0]}, prompt {where[1]}" if len(where) == 2 else f"prompt {where[0]}"
            values = tuple(round(float(v), 3) for v in flat[row])
            raise ValueError(
                f"`{name}` ({place}) is {values} for an image of {height}x{width} (HxW); it must satisfy {rule}."
            )
    if len(shapes) == 2 and shapes["boxes"] != shapes["points"]:
        raise ValueError(
            f"`boxes` has {shapes['boxes']} prompts but `points` has {shapes['points']}; one of each per class."
        )
