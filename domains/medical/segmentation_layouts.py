"""Readers for three public segmentation layouts, and thin slice datamodules over them.

Each reader turns a dataset's files into :class:`~verticals.domains.medical.volumes.LabelledVolume` objects;
:class:`~verticals.domains.medical.segmentation_data.SliceSegmentationDataModule` slices them for 2-D models.

* Medical Segmentation Decathlon (``Task01_BrainTumour`` … ``Task10_Colon``): :func:`read_decathlon`,
  :class:`DecathlonDataModule`. Cases and class names come from the task's ``dataset.json``.
* BTCV "Multi-Atlas Labeling Beyond the Cranial Vault" abdomen (``img/imgXXXX.nii.gz`` +
  ``label/labelXXXX.nii.gz``): :func:`read_btcv`, :class:`BTCVDataModule`; all 13 organs or the 8 of the
  Synapse benchmark (TransUNet, SAMed), the other five mapped to background.
* ISIC 2016–2018 lesion segmentation (task 1: ``ISIC_xxxxxxx.jpg`` + ``ISIC_xxxxxxx_segmentation.png``):
  :func:`read_isic`, :class:`ISICSegmentationDataModule`; 2-D RGB images as volumes of one slice.

**Axis order of NIfTI volumes.** Every volume is reoriented to the closest RAS+ voxel grid
(``nibabel.as_closest_canonical``: no resampling, only axis permutations and flips) and returned as
``[D, H, W]`` with D = inferior → superior (axial slices along D), H = anterior → posterior (the top of a
slice is anterior) and W = patient right → left (the patient's right on the image's left: the radiological
display convention). ``spacing`` is the header's voxel size in mm in that same ``(D, H, W)`` order. Image
and label are checked to cover the same grid (shape, and spacing to 1e-3 relative) after reorientation.

Splits are by case (a case's slices never land in two splits), seeded; see :func:`split_cases`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from verticals.core.image_io import ImageDecodeError, check_suffix, read_image, read_mask
from verticals.core.manifest_data import group_split
from verticals.domains.medical.sam_prompts import PromptMode
from verticals.domains.medical.segmentation_data import DEFAULT_CT_WINDOW, SliceSegmentationDataModule
from verticals.domains.medical.volumes import LabelledVolume

log = logging.getLogger(__name__)

__all__ = [
    "BTCVDataModule",
    "BTCV_CLASSES",
    "BTCV_TO_SYNAPSE8",
    "ISIC_CLASSES",
    "SYNAPSE8_CLASSES",
    "TRANSUNET_CT_WINDOW",
    "TRANSUNET_TEST_CASES",
    "DecathlonDataModule",
    "DecathlonTask",
    "ISICSegmentationDataModule",
    "btcv_cases",
    "btcv_class_names",
    "decathlon_task",
    "isic_cases",
    "read_btcv",
    "read_decathlon",
    "read_isic",
    "read_nifti_pair",
    "split_cases",
]

#: BTCV abdomen label values 0–13 (Synapse wiki numbering).
BTCV_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)
#: The 8 organs of the Synapse benchmark (TransUNet, SAMed), in BTCV's own order.
SYNAPSE8_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "liver",
    "stomach",
    "aorta",
    "pancreas",
)
#: BTCV label value -> Synapse-8 class index (esophagus, IVC, portal/splenic veins, adrenals -> 0).
BTCV_TO_SYNAPSE8: dict[int, int] = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 5, 7: 6, 8: 7, 9: 0, 10: 0, 11: 8, 12: 0, 13: 0,
}  # fmt: skip
#: The 12 BTCV training cases TransUNet (and SAMed after it) test on; the other 18 train.
TRANSUNET_TEST_CASES: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
)  # fmt: skip
ISIC_CLASSES: tuple[str, ...] = ("background", "lesion")
#: TransUNet's CT window [-125, 275] HU as (level, width), the ``ct_window`` of BTCVDataModule.
TRANSUNET_CT_WINDOW: tuple[float, float] = (75.0, 400.0)

_SPACING_RTOL = 1e-3


# -- NIfTI --------------------------------------------------------------------------------------------
def _load_nifti(path: Path, what: str) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """Voxels reoriented to ``[D, H, W(, C)]`` (module docstring), the spacing, and the original axcodes."""
    if not path.is_file():
        raise FileNotFoundError(f"The {what} file {path} does not exist.")
    check_suffix(path)  # says how to install nibabel when it is missing
    import nibabel as nib

    try:
        original = nib.load(str(path))
        codes = "".join(nib.aff2axcodes(original.affine))
        canonical = nib.as_closest_canonical(original)
        data = np.asanyarray(canonical.dataobj)
        zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    except Exception as error:  # nibabel raises many types; all mean "this file is unreadable"
        raise ImageDecodeError(f"Cannot decode {path}: {type(error).__name__}: {error}") from error
    if data.ndim not in (3, 4):
        raise ImageDecodeError(
            f"Cannot use {path}: shape {data.shape}; expected a 3-D volume or a 4-D one with channels last."
        )
    if data.dtype == np.float64:
        data = data.astype(np.float32)  # scaled integers come back as float64: half the memory
    # RAS (x: left->Right, y: posterior->Anterior, z: inferior->Superior) -> [S, A reversed, R reversed]
    data = np.flip(data, axis=(0, 1))
    data = np.ascontiguousarray(np.moveaxis(data, (0, 1, 2), (2, 1, 0)))
    spacing = (zooms[2], zooms[1], zooms[0])
    return data, spacing, codes


def _label_array(label: np.ndarray, path: Path, largest: int | None = None) -> np.ndarray:
    """Integer class map in the smallest unsigned dtype; non-integer, negative or too large values are errors."""
    if np.issubdtype(label.dtype, np.floating) and not np.all(np.equal(np.mod(label, 1), 0)):
        raise ValueError(f"The label {path} holds non-integer values; a label map holds class indices.")
    values = np.unique(label)
    if values.size and values[0] < 0:
        raise ValueError(f"The label {path} holds negative values {values[values < 0][:5].tolist()}.")
    top = int(values[-1]) if values.size else 0
    if largest is not None and top > largest:
        bad = values[values > largest][:8].astype(int).tolist()
        raise ValueError(
            f"The label {path} holds values {bad} above the largest class index {largest}; check the file or "
            "the class list."
        )
    return label.astype(np.uint8 if top < 256 else np.int32)


def _same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) <= _SPACING_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def read_nifti_pair(
    image: str | Path,
    label: str | Path,
    *,
    case_id: str | None = None,
    channel: int | None = None,
    label_map: dict[int, int] | None = None,
    largest_label: int | None = None,
) -> LabelledVolume:
    """One NIfTI image and its label as a :class:`LabelledVolume` (axis order in the module docstring).

    ``channel`` picks one channel of a 4-D (multi-modal) image (required for those, an error for 3-D
    ones unless 0). ``label_map`` renumbers label values (values it lacks are an error); ``largest_label``
    bounds the stored values. Shapes or spacings that differ between the files are an error naming both.
    """
    image_path, label_path = Path(image), Path(label)
    case_id = case_id if case_id is not None else _nifti_stem(image_path)
    voxels, spacing, image_codes = _load_nifti(image_path, "image")
    labels, label_spacing, label_codes = _load_nifti(label_path, "label")
    if voxels.ndim == 4:
        if channel is None:
            raise ValueError(
                f"{image_path} has {voxels.shape[3]} channels (4-D, shape after reorientation "
                f"{voxels.shape}); pass `channel` (0..{voxels.shape[3] - 1}) to pick one."
            )
        if not 0 <= channel < voxels.shape[3]:
            raise ValueError(
                f"`channel` {channel} is out of range for {image_path}, which has {voxels.shape[3]} channels."
            )
        voxels = np.ascontiguousarray(voxels[..., channel])
    elif channel not in (None, 0):
        raise ValueError(f"`channel` {channel} was asked for but {image_path} has a single channel (3-D).")
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.shape != voxels.shape:
        raise ValueError(
            f"Case {case_id!r}: image {image_path} has shape {voxels.shape} but label {label_path} has "
            f"{labels.shape} (both as [D, H, W] after reorientation to RAS); they must cover the same voxels."
        )
    if not _same_spacing(spacing, label_spacing):
        raise ValueError(
            f"Case {case_id!r}: image {image_path} has spacing {_mm(spacing)} but label {label_path} has "
            f"{_mm(label_spacing)} (mm, [D, H, W]); they must share one voxel grid (resample the label)."
        )
    if image_codes != label_codes:
        log.warning(
            "Case %r: image %s is stored %s but label %s is stored %s; both were reoriented to RAS by their "
            "affines, so they align only if both headers are right.",
            case_id, image_path, image_codes, label_path, label_codes,
        )  # fmt: skip
    if label_map is not None:
        labels = _remap(_label_array(labels, label_path, max(label_map)), label_map)
    else:
        labels = _label_array(labels, label_path, largest_label)
    return LabelledVolume(image=voxels, label=labels, spacing=spacing, case_id=case_id)


def _mm(spacing: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in spacing) + ")"


def _remap(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    table = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table[label]


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# -- Medical Segmentation Decathlon -------------------------------------------------------------------
@dataclass
class DecathlonTask:
    """What a Decathlon task's ``dataset.json`` says.

    Attributes:
        name: the task's ``name`` (e.g. ``"Spleen"``).
        modalities: channel names in channel order (``["FLAIR", "T1w", "t1gd", "T2w"]`` for brain tumours).
        class_names: class names by label value, background first.
        cases: ``(case_id, image_path, label_path)`` of every labelled (``training``) case.
        test_images: the unlabelled ``test`` images (not read: they have no labels).
    """

    name: str
    modalities: list[str]
    class_names: list[str]
    cases: list[tuple[str, Path, Path]]
    test_images: list[Path]


def _indexed_names(mapping: Any, key: str, path: Path) -> list[str]:
    """``{"0": "background", ...}`` (MSD) or ``{"background": 0, ...}`` (nnU-Net v2) as a list by index."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: `{key}` must be a non-empty mapping of index to name, got {mapping!r}.")
    try:
        if all(str(k).strip().isdigit() for k in mapping):
            pairs = {int(k): str(v) for k, v in mapping.items()}
        else:
            pairs = {int(v): str(k) for k, v in mapping.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: `{key}` must map integer indices to names, got {mapping!r}.") from error
    if sorted(pairs) != list(range(len(pairs))):
        raise ValueError(
            f"{path}: `{key}` indices must be 0..{len(pairs) - 1} without gaps, got {sorted(pairs)}."
        )
    return [pairs[i] for i in range(len(pairs))]


def decathlon_task(root: str | Path) -> DecathlonTask:
    """Parse ``<root>/dataset.json`` of a Decathlon task (``root`` is e.g. ``.../Task09_Spleen``)."""
    root = Path(root).expanduser()
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; `root` must be a Decathlon task folder holding dataset.json, imagesTr/ "
            "and labelsTr/ (e.g. Task09_Spleen)."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from error
    missing = [key for key in ("labels", "training") if key not in meta]
    if missing or not ("modality" in meta or "channel_names" in meta):
        missing += [] if ("modality" in meta or "channel_names" in meta) else ["modality"]
        raise ValueError(
            f"{path} lacks {missing}; a Decathlon dataset.json has `modality`, `labels` and a `training` list "
            "of {image, label} entries."
        )
    modalities = _indexed_names(meta.get("modality", meta.get("channel_names")), "modality", path)
    class_names = _indexed_names(meta["labels"], "labels", path)
    cases: list[tuple[str, Path, Path]] = []
    for index, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(
                f"{path}: `training` entry {index} must have `image` and `label`, got {entry!r}."
            )
        image = root / str(entry["image"])
        cases.append((_nifti_stem(image), image, root / str(entry["label"])))
    if not cases:
        raise ValueError(f"{path}: the `training` list is empty; there are no labelled cases to read.")
    ids = [case for case, _, _ in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: the `training` list names an image twice; case ids must be unique.")
    tests = [root / str(entry) for entry in meta.get("test", [])]
    return DecathlonTask(str(meta.get("name", root.name)), modalities, class_names, cases, tests)


def _channel_index(channel: int | str, modalities: Sequence[str], where: str) -> int:
    if isinstance(channel, str):
        lowered = [m.lower() for m in modalities]
        if channel.lower() not in lowered:
            raise ValueError(
                f"`channel` {channel!r} is not a modality of {where}; it has {list(modalities)}."
            )
        return lowered.index(channel.lower())
    if not 0 <= channel < len(modalities):
        raise ValueError(
            f"`channel` {channel} is out of range for {where}, whose modalities are {list(modalities)} "
            f"(indices 0..{len(modalities) - 1})."
        )
    return channel


def _select(available: Sequence[str], cases: Sequence[str] | None, where: str) -> list[str]:
    if cases is None:
        return list(available)
    unknown = sorted(set(cases) - set(available))
    if unknown:
        raise ValueError(f"Case(s) {unknown[:8]} are not in {where}; it has {sorted(available)[:8]}...")
    wanted = set(cases)
    return [case for case in available if case in wanted]


def read_decathlon(
    root: str | Path,
    split: Literal["training"] = "training",
    *,
    channel: int | str = 0,
    cases: Sequence[str] | None = None,
) -> list[LabelledVolume]:
    """The labelled cases of a Decathlon task (``root`` holds ``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    ``channel`` picks one modality of multi-modal (4-D) tasks, by index or name (``"T2"``, ``"ADC"``);
    single-modality tasks accept 0. ``cases`` reads only those case ids (file stems such as
    ``spleen_19``). Class names: ``decathlon_task(root).class_names``. The Decathlon's ``test`` images
    have no labels, so ``split`` must be ``"training"``; the datamodule splits those cases itself.
    Volumes carry no attributes (the Decathlon distributes no patient metadata), so no groups.
    """
    if split != "training":
        raise ValueError(
            f"`split` must be 'training' (the only labelled cases of the Decathlon), got {split!r}; the "
            "test images have no public labels. DecathlonDataModule splits the training cases by case."
        )
    task = decathlon_task(root)
    where = f"{Path(root) / 'dataset.json'}"
    index = _channel_index(channel, task.modalities, where)
    by_id = {case: (image, label) for case, image, label in task.cases}
    volumes = []
    for case in _select(list(by_id), cases, where):
        image, label = by_id[case]
        volumes.append(
            read_nifti_pair(
                image,
                label,
                case_id=case,
                channel=index if len(task.modalities) > 1 else None,
                largest_label=len(task.class_names) - 1,
            )
        )
    return volumes


# -- BTCV / Synapse ------------------------------------------------------------------------------------
_BTCV_IMAGE = re.compile(r"^img(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_BTCV_LABEL = re.compile(r"^label(\d+)\.nii(\.gz)?$", re.IGNORECASE)


def _btcv_folder(root: Path) -> Path:
    """The folder holding ``img/`` and ``label/``: ``root`` itself, ``root/Training`` or ``root/RawData/Training``."""
    for candidate in (root, root / "Training", root / "RawData" / "Training"):
        if (candidate / "img").is_dir():
            return candidate
    raise FileNotFoundError(
        f"No img/ folder under {root} (looked in {root}, {root / 'Training'}, {root / 'RawData' / 'Training'}); "
        "`root` must hold BTCV's img/imgXXXX.nii.gz and label/labelXXXX.nii.gz (RawData/Training)."
    )


def btcv_cases(root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, image, label)`` for every ``img/imgXXXX.nii.gz`` under ``root``; ids are the digits.

    An image without its ``label/labelXXXX.nii.gz`` (or the reverse) is an error naming the file.
    """
    folder = _btcv_folder(Path(root).expanduser())
    images = {m.group(1): p for p in (folder / "img").iterdir() if (m := _BTCV_IMAGE.match(p.name))}
    label_dir = folder / "label"
    labels = (
        {m.group(1): p for p in label_dir.iterdir() if (m := _BTCV_LABEL.match(p.name))}
        if label_dir.is_dir()
        else {}
    )
    if not images:
        raise FileNotFoundError(f"{folder / 'img'} holds no imgXXXX.nii.gz files.")
    for case, image in sorted(images.items()):
        if case not in labels:
            raise FileNotFoundError(
                f"The label of {image} is missing: expected {label_dir / f'label{case}.nii.gz'}. (BTCV's "
                "Testing/ folder has no labels; point `root` at Training/.)"
            )
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise FileNotFoundError(
            f"Label(s) {[labels[c].name for c in orphans[:5]]} in {label_dir} have no image "
            f"{folder / 'img'}/img<id>.nii.gz."
        )
    return [(case, images[case], labels[case]) for case in sorted(images)]


def btcv_class_names(organs: Literal["all", "synapse8"] = "all") -> list[str]:
    """Class names of :func:`read_btcv`'s labels for ``organs``."""
    if organs == "all":
        return list(BTCV_CLASSES)
    if organs == "synapse8":
        return list(SYNAPSE8_CLASSES)
    raise ValueError(
        f"`organs` must be 'all' (13 organs) or 'synapse8' (the Synapse benchmark), got {organs!r}."
    )


def read_btcv(
    root: str | Path,
    organs: Literal["all", "synapse8"] = "all",
    *,
    cases: Sequence[str] | None = None,
) -> list[LabelledVolume]:
    """BTCV abdomen CTs (``RawData/Training``, or any folder with ``img/`` and ``label/``).

    ``organs="all"``: labels 0–13 as stored (:data:`BTCV_CLASSES`). ``"synapse8"``: the 8 organs of the
    Synapse benchmark (:data:`SYNAPSE8_CLASSES`), esophagus, inferior vena cava, portal/splenic veins and
    both adrenal glands mapped to background, as TransUNet and SAMed do. Intensities stay in Hounsfield
    units (window them in the datamodule, e.g. TransUNet's [-125, 275]). ``cases``: ids such as ``"0001"``.
    """
    names = btcv_class_names(organs)
    listing = btcv_cases(root)
    by_id = {case: (image, label) for case, image, label in listing}
    volumes = []
    for case in _select(list(by_id), cases, str(root)):
        image, label = by_id[case]
        volumes.append(
            read_nifti_pair(
                image,
                label,
                case_id=case,
                label_map=BTCV_TO_SYNAPSE8 if organs == "synapse8" else None,
                largest_label=len(names) - 1,
            )
        )
    return volumes


# -- ISIC ----------------------------------------------------------------------------------------------
_ISIC_IMAGE = re.compile(r"^(ISIC_\d+)\.(jpe?g|png)$", re.IGNORECASE)
_ISIC_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


def isic_cases(image_dir: str | Path, mask_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(image_id, image, mask)`` for every ``ISIC_<id>.jpg`` in ``image_dir``.

    Masks are ``ISIC_<id>_segmentation.png`` (2018) or ``ISIC_<id>_Segmentation.png`` (2016, 2017); other
    files (``_superpixels.png``, metadata CSVs, LICENSE.txt) are skipped. An image without a mask is an error.
    """
    image_dir, mask_dir = Path(image_dir).expanduser(), Path(mask_dir).expanduser()
    for folder, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not folder.is_dir():
            raise FileNotFoundError(f"The ISIC {what} folder {folder} does not exist.")
    images = {m.group(1): p for p in image_dir.iterdir() if (m := _ISIC_IMAGE.match(p.name))}
    masks = {m.group(1): p for p in mask_dir.iterdir() if (m := _ISIC_MASK.match(p.name))}
    if not images:
        raise FileNotFoundError(f"{image_dir} holds no ISIC_<id>.jpg images.")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no mask in {mask_dir}, e.g. {images[missing[0]].name}: expected "
            f"{mask_dir / (missing[0] + '_segmentation.png')} (or _Segmentation.png)."
        )
    extra = len(set(masks) - set(images))
    if extra:
        log.info("%d mask(s) in %s have no image in %s; they are not used.", extra, mask_dir, image_dir)
    return [(case, images[case], masks[case]) for case in sorted(images)]


def _binary_mask(mask: torch.Tensor, path: Path, threshold: float | None) -> np.ndarray:
    values = torch.unique(mask)
    if threshold is not None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"`mask_threshold` must be in (0, 1], got {threshold}.")
        scale = 1.0 if int(values.max()) <= 1 else 255.0
        return (mask.numpy() / scale >= threshold).astype(np.uint8)
    allowed = {0, 255} if int(values.max()) > 1 else {0, 1}
    stray = [int(v) for v in values.tolist() if int(v) not in allowed]
    if stray:
        count = int(sum(int((mask == v).sum()) for v in stray))
        raise ValueError(
            f"The ISIC mask {path} is not binary: {count} pixel(s) hold values {stray[:8]} besides 0 and 255. "
            "Pass `mask_threshold` (e.g. 0.5: value/255 >= 0.5 is lesion) to binarise it."
        )
    return (mask.numpy() > 0).astype(np.uint8)


def _resized(image: torch.Tensor, mask: np.ndarray, max_side: int) -> tuple[torch.Tensor, np.ndarray, float]:
    height, width = image.shape[-2:]
    scale = max(height, width) / max_side
    if scale <= 1.0:
        return image, mask, 1.0
    size = (max(1, round(height / scale)), max(1, round(width / scale)))
    small = torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]
    small = small.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else small
    small_mask = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=size)[0, 0]
    return small, small_mask.to(torch.uint8).numpy(), height / size[0]


def read_isic(
    image_dir: str | Path,
    mask_dir: str | Path,
    *,
    cases: Sequence[str] | None = None,
    max_side: int | None = None,
    mask_threshold: float | None = None,
) -> list[LabelledVolume]:
    """ISIC task-1 images and lesion masks as RGB volumes of one slice (``[1, H, W, 3]``), 2 classes.

    Masks must hold only 0 and 255 (or 0 and 1); anything else is an error unless ``mask_threshold`` t is
    given (lesion where value/255 >= t). ``max_side`` shrinks images whose longer side exceeds it (image
    bilinear with antialiasing, mask nearest) to bound memory: ISIC photos reach 6000 px. ``spacing``
    is ``(1, s, s)`` with s the size of a returned pixel in original pixels (dermoscopy has no mm scale).
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"`max_side` must be a positive pixel count or None, got {max_side}.")
    listing = isic_cases(image_dir, mask_dir)
    by_id = {case: (image, mask) for case, image, mask in listing}
    volumes = []
    for case in _select(list(by_id), cases, str(image_dir)):
        image_path, mask_path = by_id[case]
        image = read_image(image_path, channels=3)
        mask = _binary_mask(read_mask(mask_path), mask_path, mask_threshold)
        if tuple(image.shape[-2:]) != mask.shape:
            raise ValueError(
                f"Image {image_path} is {tuple(image.shape[-2:])} (H, W) but mask {mask_path} is {mask.shape}; "
                "an ISIC mask has the size of its image."
            )
        step = 1.0
        if max_side is not None:
            image, mask, step = _resized(image, mask, max_side)
        volumes.append(
            LabelledVolume(
                image=image.permute(1, 2, 0).numpy()[None],
                label=mask[None],
                spacing=(1.0, step, step),
                case_id=case,
            )
        )
    return volumes


# -- splits --------------------------------------------------------------------------------------------
def split_cases(
    case_ids: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    test_cases: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Seeded case-level ``{"train", "val", "test"}`` lists (each in ``case_ids`` order).

    ``test_fraction`` of the cases is held out for testing (or exactly ``test_cases``), then ``val_fraction``
    of the rest for validation, as the core's manifest splits do. Training is never empty.
    """
    ids = [str(case) for case in case_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("Case ids must be unique to split by case; two volumes share an id.")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
    order = np.asarray(ids, dtype=str)
    if test_cases is not None:
        fixed = [str(case) for case in test_cases]
        unknown = sorted(set(fixed) - set(ids))
        if unknown:
            raise ValueError(f"`test_cases` {unknown[:8]} are not among the cases read ({ids[:8]}...).")
        test = np.flatnonzero(np.isin(order, fixed))
    elif test_fraction == 0.0:
        test = np.empty(0, dtype=np.int64)
    else:
        _, test = group_split(order, test_fraction, seed, unit="case")
    rest = np.setdiff1d(np.arange(len(ids)), test)
    if len(rest) == 0:
        raise ValueError(
            f"No case is left for training after holding out {len(test)} test case(s) of {len(ids)}."
        )
    val = np.empty(0, dtype=np.int64)
    if val_fraction > 0:
        _, held = group_split(order[rest], val_fraction, seed + 1, unit="case")
        val = rest[held]
    train = np.setdiff1d(rest, val)
    return {
        name: [ids[i] for i in sorted(index)]
        for name, index in (("train", train), ("val", val), ("test", test))
    }


# -- datamodules ---------------------------------------------------------------------------------------
class _CaseSplitDataModule(SliceSegmentationDataModule):
    """Lists the cases once, splits them by case (seeded), reads each split's cases when asked."""

    def _init_split(self, val_fraction: float, test_fraction: float) -> None:
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._case_splits: dict[str, list[str]] | None = None

    def case_ids(self) -> list[str]:
        """Every labelled case id of the dataset (the unit of the split); each layout's subclass lists them."""
        raise NotImplementedError(f"{type(self).__name__} must implement `case_ids()`.")

    def read_cases(self, split: str, cases: list[str]) -> list[LabelledVolume]:
        """The volumes of ``cases`` (those of ``split``), read in the layout's format."""
        raise NotImplementedError(f"{type(self).__name__} must implement `read_cases()`.")

    def fixed_test_cases(self) -> list[str] | None:
        return None

    @property
    def case_splits(self) -> dict[str, list[str]]:
        """The case ids of each split (``train``, ``val``, ``test``), fixed at first use."""
        if self._case_splits is None:
            self._case_splits = split_cases(
                self.case_ids(),
                self.val_fraction,
                self.test_fraction,
                self.seed,
                test_cases=self.fixed_test_cases(),
            )
        return {split: list(ids) for split, ids in self._case_splits.items()}

    def load_volumes(self, split: str) -> list[LabelledVolume]:
        cases = self.case_splits[split]
        return self.read_cases(split, cases) if cases else []


class DecathlonDataModule(_CaseSplitDataModule):
    """2-D slices of one Medical Segmentation Decathlon task, split by case (``datasets_cards/msd_decathlon.md``).

    ``root`` is the task folder (``Task09_Spleen``); class names come from its ``dataset.json``.
    ``channel`` picks the modality of 4-D tasks (index or name). ``intensity="auto"`` windows CT tasks
    with ``ct_window`` and scales MRI by per-volume percentiles (MedSAM). Of the labelled cases, a seeded
    ``test_fraction`` is held out for testing and ``val_fraction`` of the rest for validation. The other
    arguments are :class:`SliceSegmentationDataModule`'s.

    Args:
        root: the task folder as downloaded (``Task09_Spleen``), holding ``dataset.json``, ``imagesTr`` and
            ``labelsTr``.
        channel: the modality of a 4-D task, by index or by its ``dataset.json`` name (``FLAIR``, ``T2``).
        val_fraction: share of the cases left after the test split held out for validation (seeded), in
            [0, 1).
        test_fraction: share of the labelled cases held out for testing (seeded), in [0, 1).
        seed: seed of the case split and of the training order.
        intensity: ``auto`` (``ct`` for CT tasks, else ``percentile``), ``percentile`` or ``ct``: the
            per-volume normalisation.
    """

    def __init__(
        self,
        root: str,
        channel: int | str = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        image_size: int = 256,
        intensity: Literal["auto", "percentile", "ct"] = "auto",
        ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
        percentiles: tuple[float, float] = (0.5, 99.5),
        axis: int = 0,
        slices: Literal["foreground", "all"] = "foreground",
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        task = decathlon_task(root)
        index = _channel_index(channel, task.modalities, str(Path(root) / "dataset.json"))
        if intensity not in ("auto", "percentile", "ct"):
            raise ValueError(f"`intensity` must be 'auto', 'percentile' or 'ct', got {intensity!r}.")
        resolved = intensity
        if intensity == "auto":
            resolved = "ct" if task.modalities[index].strip().upper() == "CT" else "percentile"
        super().__init__(
            class_names=task.class_names,
            axis=axis,
            image_size=image_size,
            intensity=resolved,
            ct_window=ct_window,
            percentiles=percentiles,
            slices=slices,
            prompt=prompt,
            box_jitter=box_jitter,
            group_attributes=[],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self._init_split(val_fraction, test_fraction)
        self.root, self.channel, self.task = Path(root), index, task
        modality = f" ({task.modalities[index]})" if len(task.modalities) > 1 else ""
        folder = self.root.expanduser().resolve().name
        self.dataset_name = f"Medical Segmentation Decathlon {folder}{modality}"

    def case_ids(self) -> list[str]:
        return [case for case, _, _ in self.task.cases]

    def read_cases(self, split: str, cases: list[str]) -> list[LabelledVolume]:
        return read_decathlon(self.root, channel=self.channel, cases=cases)


class BTCVDataModule(_CaseSplitDataModule):
    """2-D axial slices of the BTCV abdomen CTs, split by case (``datasets_cards/btcv_synapse.md``).

    ``organs``: ``"all"`` (13 organs) or ``"synapse8"`` (the Synapse benchmark's 8). ``split``:
    ``"random"`` (seeded ``test_fraction`` of the cases, then ``val_fraction`` of the rest) or
    ``"transunet"`` (test on :data:`TRANSUNET_TEST_CASES`, validation a seeded ``val_fraction`` of the
    other 18). CT intensities are windowed with ``ct_window`` (default TransUNet's [-125, 275] HU).

    Args:
        root: the BTCV folder (``RawData/Training``, or any folder with ``img/`` and ``label/``).
        organs: ``all`` (13 organs) or ``synapse8`` (the Synapse benchmark's 8; the others are background).
        split: ``random`` (seeded case split) or ``transunet`` (TransUNet's 12 test cases, so figures compare
            with the papers that use them).
        val_fraction: share of the non-test cases held out for validation (seeded), in [0, 1).
        test_fraction: share of the cases held out for testing with ``split: random`` (seeded), in [0, 1).
        seed: seed of the case split and of the training order.
        ct_window: ``(level, width)`` in HU; default (75, 400), TransUNet's [-125, 275].
    """

    def __init__(
        self,
        root: str,
        organs: Literal["all", "synapse8"] = "all",
        split: Literal["random", "transunet"] = "random",
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        image_size: int = 256,
        ct_window: tuple[float, float] = TRANSUNET_CT_WINDOW,
        axis: int = 0,
        slices: Literal["foreground", "all"] = "foreground",
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        if split not in ("random", "transunet"):
            raise ValueError(
                f"`split` must be 'random' or 'transunet' (TransUNet's 12 test cases), got {split!r}."
            )
        super().__init__(
            class_names=btcv_class_names(organs),
            axis=axis,
            image_size=image_size,
            intensity="ct",
            ct_window=ct_window,
            slices=slices,
            prompt=prompt,
            box_jitter=box_jitter,
            group_attributes=[],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self._init_split(val_fraction, test_fraction)
        self.root, self.organs, self.split_mode = Path(root), organs, split
        organ_set = "Synapse 8 organs" if organs == "synapse8" else "13 organs"
        split_note = ", TransUNet test cases" if split == "transunet" else ""
        self.dataset_name = f"BTCV abdomen CT ({organ_set}{split_note})"

    def case_ids(self) -> list[str]:
        return [case for case, _, _ in btcv_cases(self.root)]

    def fixed_test_cases(self) -> list[str] | None:
        if self.split_mode != "transunet":
            return None
        missing = sorted(set(TRANSUNET_TEST_CASES) - set(self.case_ids()))
        if missing:
            raise ValueError(
                f"split='transunet' tests on cases {list(TRANSUNET_TEST_CASES)}, but {missing} are not under "
                f"{self.root}; use all 30 labelled BTCV cases or split='random'."
            )
        return list(TRANSUNET_TEST_CASES)

    def read_cases(self, split: str, cases: list[str]) -> list[LabelledVolume]:
        return read_btcv(self.root, self.organs, cases=cases)


class ISICSegmentationDataModule(_CaseSplitDataModule):
    """ISIC lesion segmentation (task 1, 2016–2018) as RGB slices, 2 classes (``datasets_cards/isic_segmentation.md``).

    Images are the unit of the split (the folders carry no patient id): a seeded ``test_fraction`` for
    testing, ``val_fraction`` of the rest for validation, unless official folders are given
    (``val_image_dir`` + ``val_mask_dir``, ``test_image_dir`` + ``test_mask_dir``), which then take that
    side and leave ``image_dir`` for the rest. Every image is kept (``slices="all"``); ``max_side`` and
    ``mask_threshold`` are :func:`read_isic`'s.

    Args:
        image_dir: folder of the (training) dermoscopy images.
        mask_dir: folder of their lesion masks.
        val_image_dir: the official validation images (with ``val_mask_dir``); None splits validation off
            ``image_dir``.
        val_mask_dir: the official validation masks.
        test_image_dir: the official test images (with ``test_mask_dir``); None splits the test set off
            ``image_dir``.
        test_mask_dir: the official test masks.
        val_fraction: share of the images left after the test split held out for validation (seeded), in
            [0, 1); unused with official validation folders.
        test_fraction: share of the images held out for testing (seeded), in [0, 1); unused with official
            test folders.
        seed: seed of the image split and of the training order.
        max_side: images whose longer side exceeds this many px are shrunk on reading, to bound memory
            (ISIC photos reach 6000 px); None keeps them whole.
        mask_threshold: lesion where mask value / 255 >= this; None requires masks of only 0 and 255 (or 0
            and 1) and refuses others.
    """

    def __init__(
        self,
        image_dir: str,
        mask_dir: str,
        val_image_dir: str | None = None,
        val_mask_dir: str | None = None,
        test_image_dir: str | None = None,
        test_mask_dir: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        max_side: int | None = 512,
        mask_threshold: float | None = None,
        image_size: int = 256,
        prompt: PromptMode = "none",
        box_jitter: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        folders = {"train": (image_dir, mask_dir)}
        for split, images, masks in (
            ("val", val_image_dir, val_mask_dir),
            ("test", test_image_dir, test_mask_dir),
        ):
            if (images is None) != (masks is None):
                raise ValueError(
                    f"Give both `{split}_image_dir` and `{split}_mask_dir` (official {split} folders) or neither; "
                    f"got {images!r} and {masks!r}."
                )
            if images is not None:
                folders[split] = (images, masks)
        if max_side is not None and max_side < 1:
            raise ValueError(f"`max_side` must be a positive pixel count or None, got {max_side}.")
        super().__init__(
            class_names=list(ISIC_CLASSES),
            image_size=image_size,
            intensity="none",
            slices="all",
            prompt=prompt,
            box_jitter=box_jitter,
            group_attributes=[],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self._init_split(
            0.0 if "val" in folders else val_fraction,
            0.0 if "test" in folders else test_fraction,
        )
        self.folders = {split: (Path(i), Path(m)) for split, (i, m) in folders.items()}
        self.max_side, self.mask_threshold = max_side, mask_threshold
        self.dataset_name = f"ISIC lesion segmentation ({Path(image_dir).expanduser().resolve().name})"

    def case_ids(self) -> list[str]:
        return [case for case, _, _ in isic_cases(*self.folders["train"])]

    @property
    def case_splits(self) -> dict[str, list[str]]:
        splits = super().case_splits
        for split in ("val", "test"):
            if split in self.folders:
                splits[split] = [case for case, _, _ in isic_cases(*self.folders[split])]
                shared = sorted(set(splits[split]) & set(self.case_ids()))
                if shared:
                    raise ValueError(
                        f"Image(s) {shared[:5]} are both in {self.folders['train'][0]} and in the {split} folder "
                        f"{self.folders[split][0]}; one image in two splits leaks. Remove them from one side."
                    )
        return splits

    def read_cases(self, split: str, cases: list[str]) -> list[LabelledVolume]:
        images, masks = self.folders.get(split, self.folders["train"])
        return read_isic(
            images, masks, cases=cases, max_side=self.max_side, mask_threshold=self.mask_threshold
        )
