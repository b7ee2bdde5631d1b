"""2-D slice datasets for SAM-style segmentation: labelled volumes in, prompted slice batches out.

Every reader (Decathlon, BTCV, ISIC, the MNI152 template, the generated phantoms) returns
:class:`~verticals.domains.medical.volumes.LabelledVolume` objects; :class:`SliceSegmentationDataModule`
turns them into 2-D training samples the way MedSAM and SAMed do:

1. each volume's intensities are normalised once, over the whole volume: ``"percentile"`` clips to the
   0.5–99.5th percentiles of its non-zero voxels and scales to [0, 1] (MedSAM's MR / PET / ultrasound
   recipe), ``"ct"`` clips to a window (level, width) in HU, ``"none"`` keeps values already in [0, 1];
   RGB images (``[D, H, W, 3]``) are taken as 8-bit and divided by 255 (floats already in [0, 1] are kept);
2. the volume is cut into slices along ``axis``; ``slices="foreground"`` keeps the slices with any label
   > 0 (the empty ones are counted in ``slice_counts``; a volume without any foreground gives no slice and
   is listed there, never an error), ``"all"`` keeps every slice;
3. each slice is resized to ``image_size`` × ``image_size`` with MONAI (image: bilinear with MONAI's
   Gaussian anti-aliasing when shrinking; label: ``nearest-exact``), a plain resize that changes the aspect
   ratio of non-square slices; ``spacing`` in the batch is the in-plane pixel size after it;
4. one channel is repeated to three (SAM's encoders take RGB).

All of this runs once, at ``setup``, into memory (the sets are small and CPUs slow); only the training
prompts are drawn per item. Batches (``S = image_size``, ``K = num_classes - 1``)::

    x [N, 3, S, S] float in [0, 1]     y [N, S, S] long
    boxes [N, K, 4]  points [N, K, 2]  prompt_present [N, K] bool   (always, whatever ``prompt`` is)
    volume_index [N]  slice_index [N]  spacing [N, 2] (mm, rows then columns)
    group [N, A]                       (when the volumes have group attributes)

Prompts follow :mod:`verticals.domains.medical.sam_prompts`: tight boxes and centre-most points for
validation and test, and in training a box jittered outward by up to ``box_jitter`` px (``prompt="box"``)
or a random pixel of the class (``prompt="point"``). ``volume_index`` indexes ``volumes(split)`` and
``slice_index`` the slice along ``axis`` in that volume: :func:`volume_dice` stacks slice predictions back
into per-volume Dice with them.

Two datasets ship: :class:`MNI152TissueDataModule` (grey / white matter of the MNI152 2009 template that
nilearn packages: real anatomy, offline, one brain) and :class:`PhantomSegmentationDataModule` (generated
abdominal phantoms with a planted per-site acquisition shift, ``site`` and ``sex`` attributes). Their cards
are ``datasets_cards/mni152_tissue.md`` and ``datasets_cards/generated_phantoms.md``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from verticals.core.data import SPLITS, BaseDataModule, encode_group_matrix, sorted_labels
from verticals.domains.medical.sam_prompts import PROMPT_MODES, PromptMode, prompts_from_label
from verticals.domains.medical.volumes import LabelledVolume

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CT_WINDOW",
    "MNI152_CLASSES",
    "MNI152_SLABS",
    "MNI152TissueDataModule",
    "PHANTOM_CLASSES",
    "PHANTOM_SITES",
    "PhantomSegmentationDataModule",
    "PhantomSpec",
    "SliceDataset",
    "SliceSegmentationDataModule",
    "generate_phantoms",
    "mni152_paths",
    "normalise_intensity",
    "read_mni152_tissue",
    "resize_slices",
    "volume_dice",
]

Intensity = Literal["percentile", "ct", "none"]
#: Soft-tissue CT window (level, width) in HU, the abdominal window MedSAM uses.
DEFAULT_CT_WINDOW: tuple[float, float] = (40.0, 400.0)


# -- preprocessing -----------------------------------------------------------------------------
def normalise_intensity(
    image: np.ndarray,
    intensity: Intensity = "percentile",
    *,
    ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray:
    """A scalar volume as float32 in [0, 1], by one rule for the whole volume (see the module docstring).

    ``"percentile"`` takes the percentiles of the non-zero voxels (a zero-padded background would pull
    the lower one down), as MedSAM does; a constant volume becomes all zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if intensity == "none":
        return np.clip(image, 0.0, 1.0)
    if intensity == "ct":
        level, width = (float(value) for value in ct_window)
        low, high = level - width / 2, level + width / 2
    elif intensity == "percentile":
        values = image[image != 0]
        values = values if values.size else image.reshape(-1)
        low, high = (float(value) for value in np.percentile(values, list(percentiles)))
    else:
        raise ValueError(f"`intensity` must be 'percentile', 'ct' or 'none', got {intensity!r}.")
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _rgb_unit(image: np.ndarray) -> np.ndarray:
    """RGB pixels as float32 in [0, 1]: integers (and floats above 1) are 8-bit values."""
    scaled = np.asarray(image, dtype=np.float32)
    if np.issubdtype(image.dtype, np.integer) or float(scaled.max(initial=0.0)) > 1.0:
        scaled = scaled / 255.0
    return np.clip(scaled, 0.0, 1.0)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MONAI ``MetaTensor`` as a plain tensor (a plain one as it is)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def resize_slices(image: np.ndarray, label: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``image [n, H, W]`` or ``[n, H, W, 3]`` and ``label [n, H, W]`` resized to ``size`` × ``size`` (MONAI).

    Returns ``image [n, C, size, size]`` float32 (C = 1 or 3) and ``label [n, size, size]`` int64. The
    image is interpolated bilinearly, Gaussian-smoothed first where it shrinks (MONAI's ``anti_aliasing``);
    the label by ``nearest-exact`` (no half-pixel shift, no invented classes).
    """
    from monai.transforms import Resize

    rgb = image.ndim == 4
    count, height, width = label.shape
    planes = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    planes = planes.permute(0, 3, 1, 2).reshape(count * 3, height, width) if rgb else planes
    labels = torch.from_numpy(np.ascontiguousarray(label)).to(torch.float32)
    if (height, width) != (size, size):
        # MONAI returns MetaTensors, whose per-op metadata bookkeeping costs ~15% of a forward pass later.
        planes = _plain(Resize((size, size), mode="bilinear", anti_aliasing=True)(planes))
        labels = _plain(Resize((size, size), mode="nearest-exact")(labels))
    planes = planes.reshape(count, 3 if rgb else 1, size, size).clamp(0.0, 1.0)
    return planes.contiguous(), labels.round().to(torch.int64)


# -- the dataset -------------------------------------------------------------------------------
class SliceDataset(Dataset):
    """Preprocessed slices in memory, with their prompts, origins and groups (one item per slice).

    ``random_prompts`` (training) redraws each item's prompts from its label with ``prompt_mode`` and
    ``jitter`` every time it is read (torch's global generator, which Lightning seeds per worker);
    otherwise the prompts computed at construction (tight box, centre-most point) are served.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        volume_index: torch.Tensor,
        slice_index: torch.Tensor,
        spacing: torch.Tensor,
        num_classes: int,
        *,
        groups: torch.Tensor | None = None,
        prompt_mode: PromptMode = "none",
        jitter: float = 0.0,
        random_prompts: bool = False,
    ) -> None:
        count = len(images)
        for name, value in (("labels", labels), ("volume_index", volume_index), ("slice_index", slice_index)):
            if len(value) != count:
                raise ValueError(f"{count} images but {len(value)} {name}; one per slice is needed.")
        self.images, self.labels = images, labels
        self.volume_index, self.slice_index, self.spacing = volume_index, slice_index, spacing
        self.groups, self.num_classes = groups, num_classes
        self.prompt_mode, self.jitter = prompt_mode, float(jitter)
        self.random_prompts = random_prompts and self.jitter > 0 and prompt_mode != "none"
        prompts = [prompts_from_label(label.numpy(), num_classes, mode=prompt_mode) for label in labels]
        k = num_classes - 1
        self.boxes = torch.stack([p["boxes"] for p in prompts]) if prompts else torch.zeros(0, k, 4)
        self.points = torch.stack([p["points"] for p in prompts]) if prompts else torch.zeros(0, k, 2)
        self.prompt_present = (
            torch.stack([p["prompt_present"] for p in prompts])
            if prompts
            else torch.zeros(0, k, dtype=torch.bool)
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        label = self.labels[index]
        item = {
            "x": image.expand(3, *image.shape[1:]),
            "y": label.long(),
            "boxes": self.boxes[index],
            "points": self.points[index],
            "prompt_present": self.prompt_present[index],
            "volume_index": self.volume_index[index],
            "slice_index": self.slice_index[index],
            "spacing": self.spacing[index],
        }
        if self.random_prompts:
            item.update(
                prompts_from_label(label.numpy(), self.num_classes, mode=self.prompt_mode, jitter=self.jitter)
            )
        if self.groups is not None:
            item["group"] = self.groups[index]
        return item


# -- the datamodule ------------------------------------------------------------------------------
class SliceSegmentationDataModule(BaseDataModule):
    """Labelled volumes per split → 2-D slice batches with prompts, groups and slice origins.

    Args:
        train: the training volumes (``LabelledVolume`` objects, from Python); or ``volumes_fn(split)``
            returning each split's; subclasses override :meth:`load_volumes` instead (keep volumes out of
            the hyperparameters). A split with no volumes is an empty dataset; an empty training split is
            an error at ``setup``.
        val: the validation volumes, as ``train``.
        test: the test volumes, as ``train``.
        volumes_fn: a function ``split -> volumes`` called once per split, instead of the three lists.
        class_names: one name per label value, background first; default ``background``, ``class_1``, … up
            to the largest label value of any split. A label value outside is an error naming the case.
        axis: the volume axis slices are cut along (0 = the first of ``[D, H, W]``).
        image_size: the side ``S`` of the square slices the model sees.
        intensity: per-volume normalisation (see the module docstring): ``percentile`` (MR, PET,
            ultrasound), ``ct`` (a HU window) or ``none`` (values already in [0, 1]); ignored for RGB images.
        ct_window: ``(level, width)`` in HU of the ``ct`` window (default (40, 400), a soft-tissue window);
            narrow it to bring out the contrast of one tissue.
        percentiles: ``(low, high)`` percentiles (0..100) of a volume's non-zero voxels that ``percentile``
            clips to and scales to [0, 1].
        slices: ``"foreground"`` (slices with a label > 0, MedSAM / SAMed training) or ``"all"``. Volume
            Dice over kept slices misses false positives on dropped ones: evaluate with ``"all"`` for that.
        prompt: ``"none"`` | ``"box"`` | ``"point"``: which prompt ``box_jitter`` randomises in training.
            Every batch carries boxes, points and ``prompt_present`` whatever the mode.
        box_jitter: training-only prompt randomness in px (see :mod:`~verticals.domains.medical.sam_prompts`);
            default MedSAM's 20 px at 256 px, scaled to ``image_size``; 0 turns it off.
        group_attributes: volume attributes to group by (batch ``group``); default every attribute that all
            volumes have, ``[]`` for none. ``group_names`` fixes each attribute's category order (default:
            sorted values over all splits).
        group_names: each group attribute's categories in code order (``{"site": ["A", "B"]}``); default:
            the sorted values over all splits.
        batch_size: slices per batch (>= 1).
        seed: seed of the training order (training prompts are drawn from torch's global generator, which
            the run's ``seed_everything`` seeds).
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    def __init__(
        self,
        train: Sequence[LabelledVolume] | None = None,
        val: Sequence[LabelledVolume] | None = None,
        test: Sequence[LabelledVolume] | None = None,
        volumes_fn: Callable[[str], Sequence[LabelledVolume]] | None = None,
        class_names: list[str] | None = None,
        axis: int = 0,
        image_size: int = 256,
        intensity: Intensity = "percentile",
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        percentiles: tuple[float, float] = (0.5, 99.5),
        slices: Literal["foreground", "all"] = "foreground",
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        group_attributes: list[str] | None = None,
        group_names: dict[str, list[str]] | None = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if volumes_fn is not None and any(split is not None for split in (train, val, test)):
            raise ValueError(
                "Give the volumes either as `train`/`val`/`test` lists or as `volumes_fn`, not both."
            )
        if axis not in (0, 1, 2):
            raise ValueError(f"`axis` must be 0, 1 or 2 (an axis of [D, H, W]), got {axis}.")
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(f"`image_size` must be an integer >= 8 (px), got {image_size}.")
        if intensity not in ("percentile", "ct", "none"):
            raise ValueError(f"`intensity` must be 'percentile', 'ct' or 'none', got {intensity!r}.")
        if len(ct_window) != 2 or float(ct_window[1]) <= 0:
            raise ValueError(f"`ct_window` must be (level, width) in HU with width > 0, got {ct_window}.")
        low, high = (float(value) for value in percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"`percentiles` must be (low, high) with 0 <= low < high <= 100, got {percentiles}."
            )
        if slices not in ("foreground", "all"):
            raise ValueError(f"`slices` must be 'foreground' or 'all', got {slices!r}.")
        if prompt not in PROMPT_MODES:
            raise ValueError(f"`prompt` must be one of {PROMPT_MODES}, got {prompt!r}.")
        if box_jitter is not None and (not np.isfinite(box_jitter) or box_jitter < 0):
            raise ValueError(
                f"`box_jitter` must be >= 0 px (or None for MedSAM's default), got {box_jitter}."
            )
        if class_names is not None and len(class_names) < 2:
            raise ValueError(
                f"`class_names` needs the background and at least one class, got {class_names}; "
                "e.g. ['background', 'tumour']."
            )
        self.save_hyperparameters(ignore=["train", "val", "test", "volumes_fn"])
        self._given = {"train": train, "val": val, "test": test}
        self.volumes_fn = volumes_fn
        self.axis, self.image_size, self.intensity = axis, int(image_size), intensity
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self.percentiles = (low, high)
        self.slices, self.prompt = slices, prompt
        self.box_jitter = 20.0 * self.image_size / 256 if box_jitter is None else float(box_jitter)
        self._class_names = None if class_names is None else [str(name) for name in class_names]
        self._requested_attributes = None if group_attributes is None else list(group_attributes)
        self._requested_group_names = group_names
        self._volumes: dict[str, list[LabelledVolume]] | None = None
        self._datasets: dict[str, SliceDataset] = {}
        self._slice_counts: dict[str, dict[str, Any]] = {}
        if type(self) is SliceSegmentationDataModule:  # a subclass names its own data (else its class name)
            self.dataset_name = "labelled volumes given in Python"

    # -- what the splits hold ----------------------------------------------------------------
    def load_volumes(self, split: str) -> Sequence[LabelledVolume]:
        """The volumes of ``split`` (called once per split); subclasses with their own reader override this."""
        if self.volumes_fn is not None:
            return self.volumes_fn(split)
        return self._given[split] or []

    def volumes(self, split: str) -> list[LabelledVolume]:
        """The volumes of ``split`` as read (``volume_index`` in a batch indexes this list)."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        return self._loaded()[split]

    def _loaded(self) -> dict[str, list[LabelledVolume]]:
        if self._volumes is None:
            loaded: dict[str, list[LabelledVolume]] = {}
            for split in SPLITS:
                volumes = list(self.load_volumes(split))
                for index, volume in enumerate(volumes):
                    if not isinstance(volume, LabelledVolume):
                        raise TypeError(
                            f"{type(self).__name__}: {split} item {index} is a {type(volume).__name__}; readers "
                            "must return LabelledVolume objects (verticals.domains.medical.volumes)."
                        )
                loaded[split] = volumes
            if self._class_names is None:
                largest = max((int(v.label.max(initial=0)) for vs in loaded.values() for v in vs), default=1)
                self._class_names = ["background"] + [f"class_{k}" for k in range(1, max(largest, 1) + 1)]
            for split, volumes in loaded.items():
                for volume in volumes:
                    self._check_label(volume, split)
            self._resolve_groups(loaded)
            self._volumes = loaded
        return self._volumes

    def _check_label(self, volume: LabelledVolume, split: str) -> None:
        label, count = volume.label, len(self.class_names)
        if label.size and (int(label.min()) < 0 or int(label.max()) >= count):
            values = np.unique(label)
            bad = values[(values < 0) | (values >= count)].tolist()
            raise ValueError(
                f"Case {volume.case_id!r} ({split}): label value(s) {bad[:10]} are outside the declared classes "
                f"0..{count - 1} ({self.class_names}); add the missing classes to `class_names` or map those "
                "labels to a declared class (e.g. 0, background) in the reader."
            )

    def _resolve_groups(self, loaded: Mapping[str, list[LabelledVolume]]) -> None:
        everything = [volume for volumes in loaded.values() for volume in volumes]
        if self._requested_attributes is None:
            shared = set.intersection(*(set(v.attributes) for v in everything)) if everything else set()
            attributes = sorted(shared)
        else:
            attributes = self._requested_attributes
            for volume in everything:
                missing = [name for name in attributes if name not in volume.attributes]
                if missing:
                    raise ValueError(
                        f"Case {volume.case_id!r} has no attribute(s) {missing} (it has {sorted(volume.attributes)}); "
                        "every volume needs each of `group_attributes`, or drop them from it."
                    )
        requested = dict(self._requested_group_names or {})
        names = {}
        for attribute in attributes:
            if attribute in requested:
                names[attribute] = [str(name) for name in requested[attribute]]
            else:
                names[attribute] = sorted_labels({str(v.attributes[attribute]) for v in everything})
        self.group_attributes, self.group_names = attributes, names

    @property
    def group_attributes(self) -> list[str]:
        """Attributes of the batch's ``group`` columns (read from the volumes only when not given)."""
        if self._volumes is None and self._requested_attributes is not None:
            return list(self._requested_attributes)
        self._loaded()
        return self._group_attributes

    @group_attributes.setter
    def group_attributes(self, attributes: Sequence[str]) -> None:
        self._group_attributes = list(attributes)

    @property
    def group_names(self) -> dict[str, list[str]]:
        requested, given = self._requested_attributes, self._requested_group_names or {}
        if self._volumes is None and requested is not None and all(name in given for name in requested):
            return {name: [str(category) for category in given[name]] for name in requested}
        self._loaded()
        return self._group_names

    @group_names.setter
    def group_names(self, names: Mapping[str, Sequence[str]]) -> None:
        self._group_names = {attribute: list(categories) for attribute, categories in names.items()}

    # -- shapes -----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Name of each label value, background first."""
        if self._class_names is None:
            self._loaded()
        assert self._class_names is not None
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Label values ``0..num_classes-1``, background included (a binary task has 2)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def slice_counts(self) -> dict[str, dict[str, Any]]:
        """Per split: ``volumes``, ``slices`` (all along ``axis``), ``foreground`` / ``empty`` slices,
        ``kept`` (in the dataset) and ``empty_volumes`` (case ids without any foreground)."""
        self.setup()
        return {split: dict(counts) for split, counts in self._slice_counts.items()}

    # -- preprocessing, once ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        loaded = self._loaded()
        if not loaded["train"]:
            raise ValueError(
                f"{type(self).__name__}: the training split has no volumes; pass `train` (or `volumes_fn`)."
            )
        datasets = {split: self._build(split) for split in SPLITS}
        if len(datasets["train"]) == 0:
            raise ValueError(
                f"{type(self).__name__}: no training slice has foreground ({self._slice_counts['train']}); "
                "check the labels or use slices='all'."
            )
        self._datasets = datasets

    def _volume_slices(self, volume: LabelledVolume) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """The volume's image (normalised) and label with ``axis`` first, and the in-plane spacing."""
        image = np.moveaxis(volume.image, self.axis, 0)
        label = np.moveaxis(volume.label, self.axis, 0)
        if volume.image.ndim == 4:
            image = _rgb_unit(image)
        else:
            image = normalise_intensity(
                image, self.intensity, ct_window=self.ct_window, percentiles=self.percentiles
            )
        in_plane = [spacing for axis, spacing in enumerate(volume.spacing) if axis != self.axis]
        return image, label, (in_plane[0], in_plane[1])

    def _build(self, split: str) -> SliceDataset:
        volumes = self.volumes(split)
        counts: dict[str, Any] = {"volumes": len(volumes), "slices": 0, "foreground": 0, "empty": 0}
        counts["empty_volumes"] = []
        channels = {volume.image.ndim for volume in volumes}
        if len(channels) > 1:
            raise ValueError(
                f"{type(self).__name__} ({split}): some volumes are RGB [D, H, W, 3] and some scalar [D, H, W]; "
                "one datamodule takes one kind."
            )
        images, labels, volume_index, slice_index, spacing = [], [], [], [], []
        for index, volume in enumerate(volumes):
            image, label, (row_mm, col_mm) = self._volume_slices(volume)
            foreground = (label > 0).reshape(len(label), -1).any(axis=1)
            counts["slices"] += len(label)
            counts["foreground"] += int(foreground.sum())
            counts["empty"] += int((~foreground).sum())
            if not foreground.any():
                counts["empty_volumes"].append(volume.case_id)
            keep = np.flatnonzero(foreground if self.slices == "foreground" else np.ones_like(foreground))
            if keep.size == 0:
                continue
            x, y = resize_slices(image[keep], label[keep], self.image_size)
            images.append(x)
            labels.append(y.to(torch.uint8 if self.num_classes <= 256 else torch.int32))
            volume_index.append(torch.full((len(keep),), index, dtype=torch.int64))
            slice_index.append(torch.from_numpy(keep.astype(np.int64)))
            height, width = label.shape[1:]
            size = self.image_size
            spacing.append(
                torch.tensor([[row_mm * height / size, col_mm * width / size]]).expand(len(keep), 2)
            )
        counts["kept"] = sum(len(x) for x in images)
        if counts["empty_volumes"]:
            log.warning(
                "%s (%s): %d volume(s) have no foreground label at all: %s",
                type(self).__name__,
                split,
                len(counts["empty_volumes"]),
                counts["empty_volumes"][:10],
            )
        log.info("%s (%s): %s", type(self).__name__, split, counts)
        self._slice_counts[split] = counts
        size, channel_count = self.image_size, 3 if channels == {4} else 1
        groups = None
        if self.group_attributes:
            values = {
                attribute: [
                    str(volumes[int(v)].attributes[attribute]) for part in volume_index for v in part.tolist()
                ]
                for attribute in self.group_attributes
            }
            groups = torch.from_numpy(encode_group_matrix(values, self.group_names))
        return SliceDataset(
            torch.cat(images) if images else torch.zeros(0, channel_count, size, size),
            torch.cat(labels) if labels else torch.zeros(0, size, size, dtype=torch.uint8),
            torch.cat(volume_index) if volume_index else torch.zeros(0, dtype=torch.int64),
            torch.cat(slice_index) if slice_index else torch.zeros(0, dtype=torch.int64),
            torch.cat(spacing).float().contiguous() if spacing else torch.zeros(0, 2),
            self.num_classes,
            groups=groups,
            prompt_mode=self.prompt,
            jitter=self.box_jitter if split == "train" else 0.0,
            random_prompts=split == "train",
        )

    def split_dataset(self, split: str) -> SliceDataset:
        self.setup()
        return self._datasets[split]


# -- evaluation ---------------------------------------------------------------------------------
def _integer_array(value: Any, name: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(
            f"`{name}` must hold integer class indices, got dtype {array.dtype}; take the argmax over the "
            "class axis of the logits first."
        )
    return array.astype(np.int64)


def volume_dice(
    pred_slices: np.ndarray | torch.Tensor,
    true_slices: np.ndarray | torch.Tensor,
    volume_index: np.ndarray | torch.Tensor,
    num_classes: int,
) -> dict[str, Any]:
    """Dice per volume and class from 2-D slice predictions gathered back into their volumes.

    ``pred_slices`` / ``true_slices``: class indices ``[N, H, W]``; ``volume_index [N]``: the volume of
    each slice (the batch key). A volume's Dice counts every voxel of its slices at once (3-D Dice), not
    the mean of slice Dice. Returns ``volume_index [V]`` (sorted distinct volumes), ``dice [V, C]``
    (column 0 is the background; ``nan`` where a class is absent from both truth and prediction),
    ``class_mean [C]`` (mean over volumes, ``nan`` ignored) and ``mean`` (mean of the foreground classes'
    ``class_mean``). Only the slices given are counted (see ``slices`` of the datamodule).

    For predictions made outside a Trainer. ``SegmentationTask``'s ``test_volume_dice`` (from test batches
    with ``volume_index``) follows MONAI's ``ignore_empty`` instead: a class absent from a volume's truth
    gives no value there, where this function gives 0 if the class was predicted.
    """
    pred = _integer_array(pred_slices, "pred_slices")
    true = _integer_array(true_slices, "true_slices")
    volumes = _integer_array(volume_index, "volume_index").reshape(-1)
    if pred.shape != true.shape or pred.ndim < 2:
        raise ValueError(
            f"`pred_slices` {tuple(pred.shape)} and `true_slices` {tuple(true.shape)} must be class-index maps "
            "of one shape [N, H, W]."
        )
    if len(volumes) != len(pred):
        raise ValueError(f"`volume_index` has {len(volumes)} entries for {len(pred)} slices; one per slice.")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes}.")
    for name, array in (("pred_slices", pred), ("true_slices", true)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(
                f"`{name}` holds values in [{array.min()}, {array.max()}], outside the classes 0..{num_classes - 1}."
            )
    distinct = np.unique(volumes)
    dice = np.full((len(distinct), num_classes), np.nan)
    for row, volume in enumerate(distinct):
        chosen = volumes == volume
        p, t = pred[chosen].reshape(-1), true[chosen].reshape(-1)
        overlap = np.bincount(t[p == t], minlength=num_classes)
        total = np.bincount(p, minlength=num_classes) + np.bincount(t, minlength=num_classes)
        dice[row] = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent everywhere: nan, not a warning
        class_mean = np.nanmean(dice, axis=0) if len(distinct) else np.full(num_classes, np.nan)
        mean = float(np.nanmean(class_mean[1:]))
    return {"volume_index": distinct, "dice": dice, "class_mean": class_mean, "mean": mean}


# -- MNI152 2009 tissue maps (nilearn) ------------------------------------------------------------
MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: Axial slabs (first, last template z index, inclusive; z = k - 72 mm in MNI space) of each split:
#: 5-slice gaps keep neighbouring, nearly identical 1-mm slices out of two splits.
MNI152_SLABS: dict[str, tuple[tuple[int, int], ...]] = {
    "train": ((30, 82), (128, 147)),
    "test": ((88, 107),),
    "val": ((113, 122),),
}
MNI152_CLASSES = ("background", "grey_matter", "white_matter")


def mni152_paths() -> dict[str, Path]:
    """Paths of the MNI152 2009 T1 / grey-matter / white-matter files inside the installed nilearn."""
    try:
        import importlib.resources

        folder = importlib.resources.files("nilearn") / "datasets" / "data"
    except ModuleNotFoundError as error:
        raise ImportError(
            "The MNI152 tissue set reads the template files packaged with nilearn: `pip install nilearn`."
        ) from error
    paths = {name: Path(str(folder / file)) for name, file in MNI152_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"nilearn is installed but lacks {missing}; reinstall it (`pip install --force-reinstall nilearn`)."
        )
    return paths


def read_mni152_tissue(margin: int = 4) -> LabelledVolume:
    """The MNI152 2009 template as one axial volume with a grey / white matter label map.

    Label: 1 (grey matter) or 2 (white matter) where that probability is the larger of the two and at
    least 0.5, else 0 (background: CSF and outside the brain). The image is the (brain-extracted) T1,
    normalised once for the whole template (0.5–99.5th percentiles of the brain voxels). Axes: ``[z, y, x]``
    with z inferior → superior (template index k; z = k - 72 mm), rows anterior → posterior, columns the
    patient's left → right (x increasing in RAS+: the neurological view). In-plane it is cropped to a
    square around the brain's bounding box over all slices plus ``margin`` voxels, so the brain fills the
    slices after resizing; every slice shares that field of view (1 mm voxels).
    """
    if margin < 0:
        raise ValueError(f"`margin` must be >= 0 voxels, got {margin}.")
    image, label = _mni152_arrays(int(margin))
    return LabelledVolume(
        image=image.copy(), label=label.copy(), spacing=(1.0, 1.0, 1.0), case_id="mni152_2009a"
    )


@functools.lru_cache(maxsize=2)
def _mni152_arrays(margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The cropped template image and label (read once per process: reading takes about a second)."""
    import nibabel as nib

    arrays = {}
    for name, path in mni152_paths().items():
        data = np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), dtype=np.float32)
        arrays[name] = np.ascontiguousarray(np.transpose(data, (2, 1, 0))[:, ::-1, :])  # RAS -> [z, y, x]
    grey, white = (
        arrays[name] / 255.0 if arrays[name].max() > 1.0 else arrays[name] for name in ("gm", "wm")
    )
    label = np.where(np.maximum(grey, white) >= 0.5, np.where(white > grey, 2, 1), 0).astype(np.uint8)
    image = normalise_intensity(arrays["t1"], "percentile")
    rows = np.flatnonzero(label.any(axis=(0, 2)))
    cols = np.flatnonzero(label.any(axis=(0, 1)))
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 + 2 * margin
    row0 = (rows[0] + rows[-1] + 1) // 2 - side // 2
    col0 = (cols[0] + cols[-1] + 1) // 2 - side // 2
    return _crop_square(image, row0, col0, side), _crop_square(label, row0, col0, side)


def _crop_square(array: np.ndarray, row0: int, col0: int, side: int) -> np.ndarray:
    """``array[:, row0:row0+side, col0:col0+side]``, zero-padded where the square leaves the array."""
    out = np.zeros((array.shape[0], side, side), dtype=array.dtype)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + side, array.shape[1]), min(col0 + side, array.shape[2])
    out[:, r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = array[:, r0:r1, c0:c1]
    return out


class MNI152TissueDataModule(SliceSegmentationDataModule):
    """Grey / white matter segmentation on axial slices of the MNI152 2009 template (nilearn's copy).

    Real anatomy and real tissue maps with no download: a quick, offline check that a segmenter learns
    anatomy. It is **one template brain** (an average of 152 subjects), not a cohort: splits are axial
    slabs of that brain (``slabs``, default :data:`MNI152_SLABS`: train z 30–82 and 128–147, test 88–107,
    val 113–122, 5-slice gaps), every ``slab_step``-th slice; ``max_slices`` keeps at most that many evenly
    spaced slices per split. ``slice_index`` counts the kept slices of a slab volume (its ``case_id``
    names the slab). Classes: background, grey matter, white matter (see :func:`read_mni152_tissue`,
    which also crops to the brain so it fills the image). No groups.

    Args:
        image_size: the side ``S`` of the square slices the model sees (px, >= 8).
        slab_step: keep every ``slab_step``-th axial slice of each slab (>= 1); 2 halves the slices (and
            the epoch time) with neighbours that differ little.
        max_slices: keep at most this many evenly spaced slices per split (None: every kept slice); for
            quick runs.
        slabs: each split's slabs as ``(first, last)`` template z indices, inclusive (keys ``train``,
            ``val``, ``test``); a split not given keeps :data:`MNI152_SLABS`'s.
        margin: voxels kept around the brain's bounding box when cropping (>= 0).
    """

    def __init__(
        self,
        image_size: int = 256,
        slab_step: int = 1,
        max_slices: int | None = None,
        slabs: dict[str, list[tuple[int, int]]] | None = None,
        margin: int = 4,
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            class_names=list(MNI152_CLASSES),
            image_size=image_size,
            intensity="none",
            slices="foreground",
            prompt=prompt,
            box_jitter=box_jitter,
            group_attributes=[],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        if int(slab_step) != slab_step or slab_step < 1:
            raise ValueError(f"`slab_step` must be an integer >= 1, got {slab_step}.")
        if max_slices is not None and max_slices < 1:
            raise ValueError(f"`max_slices` must be >= 1 (or None for all), got {max_slices}.")
        chosen = {split: [tuple(slab) for slab in MNI152_SLABS[split]] for split in SPLITS}
        if slabs is not None:
            unknown = sorted(set(slabs) - set(SPLITS))
            if unknown:
                raise ValueError(f"`slabs` has unknown split(s) {unknown}; use {list(SPLITS)}.")
            chosen.update({split: [tuple(slab) for slab in value] for split, value in slabs.items()})
        for split, value in chosen.items():
            for slab in value:
                if len(slab) != 2 or not 0 <= int(slab[0]) <= int(slab[1]):
                    raise ValueError(
                        f"`slabs[{split!r}]` holds {slab}; each slab is (first, last) template z index, first <= last."
                    )
        self.slab_step, self.max_slices, self.margin = int(slab_step), max_slices, margin
        self.slabs = chosen
        self.dataset_name = "MNI152 2009a tissue maps (nilearn)"
        self._template: LabelledVolume | None = None

    def load_volumes(self, split: str) -> list[LabelledVolume]:
        if self._template is None:
            self._template = read_mni152_tissue(self.margin)
        template = self._template
        depth = template.num_slices
        parts = []
        for first, last in self.slabs[split]:
            if last >= depth:
                raise ValueError(
                    f"Slab ({first}, {last}) of {split!r} runs past the template's {depth} slices."
                )
            parts.append((first, last, np.arange(first, last + 1, self.slab_step)))
        total = sum(len(z) for *_, z in parts)
        if self.max_slices is not None and total > self.max_slices:
            keep = set(np.unique(np.linspace(0, total - 1, self.max_slices).round().astype(int)).tolist())
            offsets = np.cumsum([0] + [len(z) for *_, z in parts])
            parts = [
                (first, last, z[[i for i in range(len(z)) if offset + i in keep]])
                for (first, last, z), offset in zip(parts, offsets, strict=False)
            ]
        return [
            LabelledVolume(
                image=template.image[z],
                label=template.label[z],
                spacing=(float(self.slab_step), 1.0, 1.0),
                case_id=f"mni152_2009a_z{first:03d}-{last:03d}",
            )
            for first, last, z in parts
            if len(z)
        ]


# -- generated phantoms ------------------------------------------------------------------------
PHANTOM_CLASSES = ("background", "organ", "kidney", "lesion")
PHANTOM_SITES = ("A", "B")


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines one generated phantom set (see ``datasets_cards/generated_phantoms.md``).

    Attributes:
        num_patients: how many patients (volumes) the set holds.
        num_slices: axial slices per patient.
        image_size: square matrix side of each slice in px.
        seed: seeds every random draw of the generator (same spec, same set).
        site_b_fraction: share of patients scanned at site B (under-represented).
        lesion_fraction: share of patients with a lesion in the organ.
        site_b_contrast: site B's tissue contrast relative to site A's (1 = the same).
        site_a_noise: site A's noise sigma (tissue intensities span about 0–0.8).
        site_b_noise: site B's noise sigma (tissue intensities span about 0–0.8).
        site_b_blur: site B's Gaussian blur sigma in px at 128 px (scaled with ``image_size``).
        site_a_fov: site A's field of view in mm (a smaller one crops the body and enlarges it).
        site_b_fov: site B's field of view in mm (a smaller one crops the body and enlarges it).
        slice_thickness: mm between slices.
        val_fraction: per-site share of patients in validation.
        test_fraction: per-site share of patients in test.
    """

    num_patients: int = 24
    num_slices: int = 4
    image_size: int = 128
    seed: int = 0
    site_b_fraction: float = 0.35
    lesion_fraction: float = 0.75
    site_b_contrast: float = 0.6
    site_a_noise: float = 0.03
    site_b_noise: float = 0.06
    site_b_blur: float = 1.0
    site_a_fov: float = 400.0
    site_b_fov: float = 320.0
    slice_thickness: float = 5.0
    val_fraction: float = 0.2
    test_fraction: float = 0.3

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        for name in ("site_b_fraction", "lesion_fraction", "val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must leave patients for training, got "
                f"{self.val_fraction} + {self.test_fraction}."
            )
        if not 0 < self.site_b_contrast <= 1:
            raise ValueError(f"`site_b_contrast` must be in (0, 1], got {self.site_b_contrast}.")
        for name in ("site_a_noise", "site_b_noise", "site_b_blur"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in ("site_a_fov", "site_b_fov", "slice_thickness"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0 mm, got {getattr(self, name)}.")
        if self.num_patients < 3 or self.num_slices < 1 or self.image_size < 16:
            raise ValueError(
                "`num_patients` must be >= 3, `num_slices` >= 1 and `image_size` >= 16, got "
                f"{self.num_patients}, {self.num_slices}, {self.image_size}."
            )


#: Mean intensity of each tissue before the site's contrast, blur and noise (air is 0).
_TISSUE = {"body": 0.35, "organ": 0.6, "kidney": 0.8, "spine": 0.75, "lesion": 0.42}


def _ellipse(xx: np.ndarray, yy: np.ndarray, centre: Sequence[float], radii: Sequence[float], theta_mod=None):
    """Pixels inside an ellipse (radii in mm); ``theta_mod(theta)`` scales the radius by angle."""
    dx, dy = (xx - centre[0]) / radii[0], (yy - centre[1]) / radii[1]
    radius = np.hypot(dx, dy)
    limit = 1.0 if theta_mod is None else theta_mod(np.arctan2(dy, dx))
    return radius <= limit


def _render_patient(
    rng: np.random.Generator, spec: PhantomSpec, site: str, lesion: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One patient's ``[num_slices, S, S]`` image and label and its spacing (mm)."""
    from scipy.ndimage import gaussian_filter

    size = spec.image_size
    fov = spec.site_a_fov if site == "A" else spec.site_b_fov
    pixel = fov / size
    coords = (np.arange(size) + 0.5 - size / 2) * pixel
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # y grows towards the back (posterior)
    body_radii = (rng.uniform(150, 175), rng.uniform(105, 125))
    organ_centre = (-55 + rng.normal(0, 8), -30 + rng.normal(0, 6), rng.normal(0, 4))
    organ_radii = (rng.uniform(65, 80), rng.uniform(48, 58), rng.uniform(40, 60))
    harmonics = [(k, rng.normal(0, 0.05) / k, rng.uniform(0, 2 * np.pi)) for k in range(2, 5)]

    def organ_shape(theta: np.ndarray) -> np.ndarray:
        return 1 + sum(amplitude * np.cos(k * theta + phase) for k, amplitude, phase in harmonics)

    kidneys = [
        (
            (side * rng.uniform(55, 70), rng.uniform(52, 64), rng.normal(0, 6)),
            (rng.uniform(18, 24), rng.uniform(24, 30), rng.uniform(25, 35)),
        )
        for side in (-1, 1)
    ]
    spine_centre = (0.0, body_radii[1] - 30)
    half = (spec.num_slices - 1) / 2 * spec.slice_thickness
    lesion_radius = rng.uniform(7, 14)
    angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5)
    lesion_centre = (
        organ_centre[0] + reach * organ_radii[0] * np.cos(angle),
        organ_centre[1] + reach * organ_radii[1] * np.sin(angle),
        rng.uniform(-half, half) if spec.num_slices > 1 else 0.0,
    )
    contrast = 1.0 if site == "A" else spec.site_b_contrast
    images, labels = [], []
    for index in range(spec.num_slices):
        z = (index - (spec.num_slices - 1) / 2) * spec.slice_thickness
        label = np.zeros((size, size), dtype=np.uint8)
        image = np.zeros((size, size), dtype=np.float32)
        body = _ellipse(xx, yy, (0, 0), body_radii)
        image[body] = _TISSUE["body"]
        image[_ellipse(xx, yy, spine_centre, (15, 15)) & body] = _TISSUE["spine"]  # unlabelled distractor
        scale = np.sqrt(max(0.0, 1 - ((z - organ_centre[2]) / organ_radii[2]) ** 2))
        if scale > 0:
            organ = _ellipse(
                xx, yy, organ_centre, (organ_radii[0] * scale, organ_radii[1] * scale), organ_shape
            )
            organ &= body
            label[organ], image[organ] = 1, _TISSUE["organ"]
            across = lesion_radius**2 - (z - lesion_centre[2]) ** 2
            if lesion and across > 0:
                spot = _ellipse(xx, yy, lesion_centre, (np.sqrt(across),) * 2) & organ
                label[spot], image[spot] = 3, _TISSUE["lesion"]
        for centre, radii in kidneys:
            kidney_scale = np.sqrt(max(0.0, 1 - ((z - centre[2]) / radii[2]) ** 2))
            if kidney_scale > 0:
                kidney = _ellipse(xx, yy, centre, (radii[0] * kidney_scale, radii[1] * kidney_scale)) & body
                label[kidney], image[kidney] = 2, _TISSUE["kidney"]
        texture = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
        texture /= max(float(texture.std()), 1e-6)
        image = np.where(body, image * (1 + 0.03 * texture), 0.0)
        image = np.where(body, _TISSUE["body"] + contrast * (image - _TISSUE["body"]), 0.0)
        if site == "B" and spec.site_b_blur > 0:
            image = gaussian_filter(image, sigma=spec.site_b_blur * size / 128)
        images.append(image)
        labels.append(label)
    noise = (spec.site_a_noise if site == "A" else spec.site_b_noise) * rng.uniform(0.8, 1.2)
    volume = np.stack(images) + rng.normal(0, noise, size=(spec.num_slices, size, size))
    return np.abs(volume).astype(np.float32), np.stack(labels), (spec.slice_thickness, pixel, pixel)


def generate_phantoms(spec: PhantomSpec = PhantomSpec()) -> dict[str, list[LabelledVolume]]:
    """The phantom set of ``spec``, split per site into train / val / test patients (deterministic in ``seed``).

    Patients get ``site`` (``A`` or ``B``, ``round(site_b_fraction * num_patients)`` at B) and ``sex``
    (``female`` / ``male``, no effect: a negative control) attributes; each split takes its share of
    every site's patients, so validation and test hold site-B patients.
    """
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    count = spec.num_patients
    at_b = round(spec.site_b_fraction * count)
    sites = rng.permutation(["B"] * at_b + ["A"] * (count - at_b))
    splits = np.empty(count, dtype=object)
    for site in PHANTOM_SITES:
        members = rng.permutation(np.flatnonzero(sites == site))
        n_test, n_val = round(spec.test_fraction * len(members)), round(spec.val_fraction * len(members))
        splits[members[:n_test]] = "test"
        splits[members[n_test : n_test + n_val]] = "val"
        splits[members[n_test + n_val :]] = "train"
    result: dict[str, list[LabelledVolume]] = {split: [] for split in SPLITS}
    for patient in range(count):
        sex = "female" if rng.random() < 0.5 else "male"
        lesion = bool(rng.random() < spec.lesion_fraction)
        image, label, spacing = _render_patient(rng, spec, str(sites[patient]), lesion)
        result[str(splits[patient])].append(
            LabelledVolume(
                image=image,
                label=label,
                spacing=spacing,
                case_id=f"phantom_{patient:03d}",
                attributes={"site": str(sites[patient]), "sex": sex},
            )
        )
    return result


def _planted_fields(planted: Mapping[str, float] | None) -> dict[str, float]:
    """Check ``planted`` names only ``PhantomSpec`` strengths (not size, seed or split shares)."""
    planted = dict(planted or {})
    reserved = {"num_patients", "num_slices", "image_size", "seed", "val_fraction", "test_fraction"}
    allowed = {item.name for item in fields(PhantomSpec)} - reserved
    unknown = sorted(set(planted) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown `planted` field(s) {unknown}; expected some of {sorted(allowed)} (sizes, seed and split shares "
            "have their own arguments)."
        )
    return planted


class PhantomSegmentationDataModule(SliceSegmentationDataModule):
    """Generated abdominal phantoms with a planted per-site acquisition shift (a Dice gap by construction).

    Each patient is a small axial stack (``num_slices`` slices, ``slice_thickness`` mm apart) of a body
    ellipse with an ``organ`` (a large smooth blob), a ``kidney`` pair (one class, two components) and, in
    ``lesion_fraction`` of patients, a small hypo-intense ``lesion`` inside the organ, plus an unlabelled
    vertebra as a bright distractor. Site B (``site_b_fraction`` of patients) scans with lower tissue
    contrast, stronger noise, a blur and a smaller field of view; ``sex`` has no effect (a negative control).
    ``planted`` overrides any :class:`PhantomSpec` strength (e.g. ``{site_b_noise: 0.1}``). Generated in
    memory, deterministic in ``generation_seed``; ``generated_size`` defaults to ``image_size`` (no resampling).
    Groups: ``site`` and ``sex``. See ``datasets_cards/generated_phantoms.md``.

    Args:
        num_patients: generated patients (>= 3), split per site into train / val / test.
        num_slices: axial slices per patient (>= 1).
        generated_size: side in px the phantoms are rendered at (>= 16); default ``image_size``. Render
            smaller and let the slices be resized up to mimic a coarse scanner matrix.
        generation_seed: seed of the phantoms (anatomy, sites, sexes, lesions, noise) and of their split;
            ``seed`` seeds only the training order.
        planted: overrides of :class:`PhantomSpec`'s site-shift strengths (``site_b_contrast``,
            ``site_b_noise``, ``site_b_blur``, ``site_b_fraction`` …), e.g. ``{site_b_noise: 0.1}``.
        val_fraction: per-site share of patients in validation, in [0, 1].
        test_fraction: per-site share of patients in test, in [0, 1]; with ``val_fraction`` below 1.
        group_attributes: which of ``site`` and ``sex`` the batches' ``group`` carries; default both.
    """

    def __init__(
        self,
        num_patients: int = 24,
        num_slices: int = 4,
        generated_size: int | None = None,
        generation_seed: int = 0,
        planted: dict[str, float] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.3,
        image_size: int = 256,
        slices: Literal["foreground", "all"] = "foreground",
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        group_attributes: list[str] | None = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            class_names=list(PHANTOM_CLASSES),
            image_size=image_size,
            intensity="percentile",
            slices=slices,
            prompt=prompt,
            box_jitter=box_jitter,
            group_attributes=["site", "sex"] if group_attributes is None else group_attributes,
            group_names={"site": list(PHANTOM_SITES), "sex": ["female", "male"]},
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.spec = PhantomSpec(
            num_patients=num_patients,
            num_slices=num_slices,
            image_size=image_size if generated_size is None else generated_size,
            seed=generation_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            **_planted_fields(planted),
        )
        self.spec.validate()
        self._generated: dict[str, list[LabelledVolume]] | None = None
        self.dataset_name = "generated two-site abdominal phantoms"

    def load_volumes(self, split: str) -> list[LabelledVolume]:
        if self._generated is None:
            self._generated = generate_phantoms(self.spec)
        return self._generated[split]
