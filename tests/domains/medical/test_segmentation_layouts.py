"""Segmentation layout readers on tiny files in each real format: NIfTI (nibabel, with affines) plus a
Decathlon dataset.json, BTCV's img/label folders, ISIC JPG images with 0/255 PNG masks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from verticals.core.image_io import ImageDecodeError
from verticals.domains.medical.segmentation_layouts import (
    BTCV_CLASSES,
    BTCV_TO_SYNAPSE8,
    ISIC_CLASSES,
    SYNAPSE8_CLASSES,
    TRANSUNET_CT_WINDOW,
    TRANSUNET_TEST_CASES,
    BTCVDataModule,
    DecathlonDataModule,
    ISICSegmentationDataModule,
    btcv_cases,
    btcv_class_names,
    decathlon_task,
    isic_cases,
    read_btcv,
    read_decathlon,
    read_isic,
    read_nifti_pair,
    split_cases,
)

RAS = np.diag([0.8, 0.9, 2.5, 1.0])  # voxel axes already RAS+
LPS = np.diag([-0.8, -0.9, 2.5, 1.0])  # i towards the patient's left, j towards posterior (DICOM-like)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = RAS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine).to_filename(str(path))
    return path


def _scan(seed: int, shape: tuple[int, ...] = (6, 5, 4)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 300, size=shape).astype(np.int16)


def _mask(shape: tuple[int, int, int] = (6, 5, 4), classes: int = 3) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    for value in range(1, classes):
        label[value, 1:3, value] = value
    return label


def _decathlon(
    root: Path,
    cases: int = 3,
    *,
    modalities: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> Path:
    modalities = modalities or {"0": "CT"}
    labels = labels or {"0": "background", "1": "spleen", "2": "tumour"}
    training = []
    for i in range(cases):
        shape = (6, 5, 4) if len(modalities) == 1 else (6, 5, 4, len(modalities))
        _nifti(root / "imagesTr" / f"organ_{i}.nii.gz", _scan(i, shape))
        _nifti(root / "labelsTr" / f"organ_{i}.nii.gz", _mask(classes=len(labels)))
        training.append({"image": f"./imagesTr/organ_{i}.nii.gz", "label": f"./labelsTr/organ_{i}.nii.gz"})
    meta = {
        "name": "Organ",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "3D" if len(modalities) == 1 else "4D",
        "modality": modalities,
        "labels": labels,
        "numTraining": cases,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/organ_9.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# -- NIfTI pairs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("affine", "where"), [(RAS, (2, 4, 5)), (LPS, (2, 0, 0))])
def test_nifti_reoriented_to_axial_radiological_order(
    tmp_path: Path, affine: np.ndarray, where: tuple
) -> None:
    data = np.zeros((6, 5, 4), dtype=np.int16)
    data[0, 0, 2] = 1000  # voxel (i, j, k) = (0, 0, 2)
    label = (data > 0).astype(np.uint8)
    volume = read_nifti_pair(
        _nifti(tmp_path / "a.nii.gz", data, affine), _nifti(tmp_path / "b.nii.gz", label, affine)
    )
    # [D, H, W] = [inferior->superior, anterior->posterior, patient right->left]
    assert volume.image.shape == (4, 5, 6) and volume.label.shape == (4, 5, 6)
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert np.argwhere(volume.image == 1000).tolist() == [list(where)]
    assert np.argwhere(volume.label == 1).tolist() == [list(where)]
    assert volume.case_id == "a" and volume.image.dtype == np.int16 and volume.label.dtype == np.uint8


def test_nifti_pair_mismatches_name_both_files(tmp_path: Path) -> None:
    image = _nifti(tmp_path / "img.nii.gz", _scan(0))
    wrong_shape = _nifti(tmp_path / "shape.nii.gz", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"img\.nii\.gz has shape \(4, 5, 6\).*shape\.nii\.gz has \(3, 5, 6\)"
    ):
        read_nifti_pair(image, wrong_shape)
    wrong_spacing = _nifti(tmp_path / "sp.nii.gz", _mask(), np.diag([0.8, 0.9, 3.0, 1.0]))
    with pytest.raises(
        ValueError, match=r"img\.nii\.gz has spacing \(2\.5, 0\.9, 0\.8\).*sp\.nii\.gz has \(3,"
    ):
        read_nifti_pair(image, wrong_spacing)
    within_tolerance = _nifti(tmp_path / "ok.nii.gz", _mask(), np.diag([0.8, 0.9, 2.5002, 1.0]))
    assert read_nifti_pair(image, within_tolerance).spacing == pytest.approx((2.5, 0.9, 0.8))
    with pytest.raises(FileNotFoundError, match=r"label file .*missing\.nii\.gz"):
        read_nifti_pair(image, tmp_path / "missing.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(ImageDecodeError, match="broken.nii.gz"):
        read_nifti_pair(image, broken)
    fractional = _nifti(tmp_path / "frac.nii.gz", _mask().astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match="non-integer"):
        read_nifti_pair(image, fractional)
    negative = _nifti(tmp_path / "neg.nii.gz", -_mask().astype(np.int16))
    with pytest.raises(ValueError, match="negative values"):
        read_nifti_pair(image, negative)


def test_nifti_pair_channels(tmp_path: Path) -> None:
    four_d = _nifti(tmp_path / "mm.nii.gz", _scan(1, (6, 5, 4, 2)))
    label = _nifti(tmp_path / "lab.nii.gz", _mask())
    with pytest.raises(ValueError, match="has 2 channels.*pass `channel`"):
        read_nifti_pair(four_d, label)
    with pytest.raises(ValueError, match="out of range"):
        read_nifti_pair(four_d, label, channel=2)
    with pytest.raises(ValueError, match="single channel"):
        read_nifti_pair(_nifti(tmp_path / "one.nii.gz", _scan(2)), label, channel=1)
    volume = read_nifti_pair(four_d, label, channel=1)
    raw = _scan(1, (6, 5, 4, 2))[..., 1]
    assert np.array_equal(volume.image, np.flip(raw, (0, 1)).transpose(2, 1, 0))


# -- Decathlon -------------------------------------------------------------------------------------------
def test_read_decathlon(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "Task99_Organ")
    task = decathlon_task(root)
    assert task.name == "Organ" and task.modalities == ["CT"]
    assert task.class_names == ["background", "spleen", "tumour"]
    assert [case for case, _, _ in task.cases] == ["organ_0", "organ_1", "organ_2"]
    assert task.test_images == [root / "imagesTs/organ_9.nii.gz"]
    volumes = read_decathlon(root)
    assert [v.case_id for v in volumes] == ["organ_0", "organ_1", "organ_2"]
    assert all(v.image.shape == (4, 5, 6) and v.attributes == {} for v in volumes)
    assert set(np.unique(volumes[0].label).tolist()) == {0, 1, 2}
    assert [v.case_id for v in read_decathlon(root, cases=["organ_2"])] == ["organ_2"]
    with pytest.raises(ValueError, match=r"\['organ_7'\] are not in"):
        read_decathlon(root, cases=["organ_7"])
    with pytest.raises(ValueError, match="'training'.*no public labels"):
        read_decathlon(root, split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range.*\\['CT'\\]"):
        read_decathlon(root, channel=1)


def test_read_decathlon_multimodal_by_name(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "Task05_Prostate", 2, modalities={"0": "T2", "1": "ADC"})
    assert decathlon_task(root).modalities == ["T2", "ADC"]
    volumes = read_decathlon(root, channel="adc")
    expected = np.flip(_scan(0, (6, 5, 4, 2))[..., 1], (0, 1)).transpose(2, 1, 0)
    assert np.array_equal(volumes[0].image, expected)
    with pytest.raises(ValueError, match=r"'DWI' is not a modality.*\['T2', 'ADC'\]"):
        read_decathlon(root, channel="DWI")


def test_decathlon_nnunet_v2_style_labels(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "T", 1, labels={"background": "0", "liver": "1"})  # type: ignore[dict-item]
    assert decathlon_task(root).class_names == ["background", "liver"]


def test_decathlon_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset.json does not exist"):
        decathlon_task(tmp_path)
    root = _decathlon(tmp_path / "Task", 2)
    (root / "labelsTr" / "organ_1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"label file .*labelsTr/organ_1\.nii\.gz does not exist"):
        read_decathlon(root)
    _nifti(root / "labelsTr" / "organ_1.nii.gz", _mask() * 2)  # value 4 > the 2 declared foreground classes
    with pytest.raises(ValueError, match=r"values \[4\] above the largest class index 2"):
        read_decathlon(root)
    meta = json.loads((root / "dataset.json").read_text())
    for broken, pattern in (
        ({k: v for k, v in meta.items() if k != "training"}, r"lacks \['training'\]"),
        ({**meta, "labels": {"0": "background", "2": "tumour"}}, "without gaps"),
        ({**meta, "training": []}, "empty"),
        ({**meta, "training": [{"image": "x"}]}, "entry 0 must have"),
    ):
        (root / "dataset.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=pattern):
            decathlon_task(root)
    (root / "dataset.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        decathlon_task(root)


# -- BTCV ------------------------------------------------------------------------------------------------
def _btcv(root: Path, ids: tuple[str, ...] = ("0001", "0002")) -> Path:
    folder = root / "RawData" / "Training"
    for i, case in enumerate(ids):
        _nifti(folder / "img" / f"img{case}.nii.gz", _scan(i, (4, 4, 14)), np.diag([0.7, 0.7, 3.0, 1.0]))
        label = np.zeros((4, 4, 14), dtype=np.uint8)
        label[1, 2, :] = np.arange(14)  # every BTCV value 0..13 on one line of voxels
        _nifti(folder / "label" / f"label{case}.nii.gz", label, np.diag([0.7, 0.7, 3.0, 1.0]))
    return root


def test_read_btcv_all_and_synapse8(tmp_path: Path) -> None:
    root = _btcv(tmp_path)
    assert [case for case, _, _ in btcv_cases(root)] == ["0001", "0002"]
    assert btcv_cases(root / "RawData" / "Training") == btcv_cases(root)
    volumes = read_btcv(root)
    assert [v.case_id for v in volumes] == ["0001", "0002"] and volumes[0].image.shape == (14, 4, 4)
    assert volumes[0].spacing == pytest.approx((3.0, 0.7, 0.7))
    line = volumes[0].label[:, 4 - 1 - 2, 4 - 1 - 1]  # voxel (i=1, j=2) after the flips
    assert line.tolist() == list(range(14))
    synapse = read_btcv(root, "synapse8", cases=["0002"])
    mapped = synapse[0].label[:, 1, 2]
    assert mapped.tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    kept = {SYNAPSE8_CLASSES[mapped[v]] for v in range(14) if mapped[v]}
    assert kept == {
        "aorta",
        "gallbladder",
        "left kidney",
        "right kidney",
        "liver",
        "pancreas",
        "spleen",
        "stomach",
    }
    assert all(
        BTCV_CLASSES[v] == SYNAPSE8_CLASSES[BTCV_TO_SYNAPSE8[v]] for v in range(14) if BTCV_TO_SYNAPSE8[v]
    )
    assert btcv_class_names("synapse8") == list(SYNAPSE8_CLASSES) and len(btcv_class_names()) == 14
    with pytest.raises(ValueError, match="`organs` must be"):
        btcv_class_names("abdomen")  # type: ignore[arg-type]
    assert len(TRANSUNET_TEST_CASES) == 12


def test_btcv_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No img/ folder"):
        btcv_cases(tmp_path)
    root = _btcv(tmp_path)
    label = root / "RawData" / "Training" / "label" / "label0002.nii.gz"
    label.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"img0002\.nii\.gz is missing: expected .*label0002\.nii\.gz"
    ):
        read_btcv(root)
    _nifti(label, np.full((4, 4, 14), 14, np.uint8), np.diag([0.7, 0.7, 3.0, 1.0]))
    with pytest.raises(ValueError, match=r"values \[14\] above the largest class index 13"):
        read_btcv(root, cases=["0002"])
    _nifti(label.with_name("label0003.nii.gz"), np.zeros((4, 4, 14), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"label0003\.nii\.gz'\] .* have no image"):
        btcv_cases(root)


# -- ISIC ------------------------------------------------------------------------------------------------
def _isic(
    root: Path, n: int = 3, size: tuple[int, int] = (12, 16), capital: bool = False, first: int = 0
) -> tuple[Path, Path]:
    images, masks = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        case = f"ISIC_{first + i:07d}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / f"{case}.jpg")
        mask = np.zeros(size, dtype=np.uint8)
        mask[2:8, 3 + i : 9 + i] = 255
        suffix = "_Segmentation.png" if capital else "_segmentation.png"
        Image.fromarray(mask).save(masks / f"{case}{suffix}")
    (images / "ISIC_0000000_superpixels.png").write_bytes(b"")  # 2017 ships these beside the images
    (images / "LICENSE.txt").write_text("CC-BY-NC")
    return images, masks


@pytest.mark.parametrize("capital", [False, True])
def test_read_isic(tmp_path: Path, capital: bool) -> None:
    images, masks = _isic(tmp_path, capital=capital)
    assert [case for case, _, _ in isic_cases(images, masks)] == [
        "ISIC_0000000",
        "ISIC_0000001",
        "ISIC_0000002",
    ]
    volumes = read_isic(images, masks)
    assert len(volumes) == 3 and ISIC_CLASSES == ("background", "lesion")
    first = volumes[0]
    assert first.image.shape == (1, 12, 16, 3) and first.image.dtype == np.uint8
    assert first.label.shape == (1, 12, 16) and set(np.unique(first.label).tolist()) == {0, 1}
    assert int(first.label.sum()) == 36 and first.spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(first.image[0], np.asarray(Image.open(images / "ISIC_0000000.jpg")))
    assert [v.case_id for v in read_isic(images, masks, cases=["ISIC_0000001"])] == ["ISIC_0000001"]


def test_read_isic_max_side(tmp_path: Path) -> None:
    images, masks = _isic(tmp_path, 1, size=(40, 80))
    (volume,) = read_isic(images, masks, max_side=20)
    assert volume.image.shape == (1, 10, 20, 3) and volume.label.shape == (1, 10, 20)
    assert volume.spacing == pytest.approx((1.0, 4.0, 4.0)) and set(np.unique(volume.label)) == {0, 1}
    with pytest.raises(ValueError, match="`max_side` must be"):
        read_isic(images, masks, max_side=0)


def test_isic_errors(tmp_path: Path) -> None:
    images, masks = _isic(tmp_path, 2)
    grey = np.zeros((12, 16), dtype=np.uint8)
    grey[0, :4] = 128  # an anti-aliased edge
    Image.fromarray(grey).save(masks / "ISIC_0000001_segmentation.png")
    with pytest.raises(
        ValueError, match=r"ISIC_0000001_segmentation\.png is not binary: 4 pixel\(s\) hold values \[128\]"
    ):
        read_isic(images, masks)
    (volume,) = read_isic(images, masks, cases=["ISIC_0000001"], mask_threshold=0.6)
    assert int(volume.label.sum()) == 0  # 128 / 255 < 0.6
    (volume,) = read_isic(images, masks, cases=["ISIC_0000001"], mask_threshold=0.4)
    assert int(volume.label.sum()) == 4
    with pytest.raises(ValueError, match="`mask_threshold` must be"):
        read_isic(images, masks, mask_threshold=2.0)
    Image.fromarray(np.zeros((12, 15), np.uint8)).save(masks / "ISIC_0000001_segmentation.png")
    with pytest.raises(
        ValueError, match=r"ISIC_0000001\.jpg is \(12, 16\).*ISIC_0000001_segmentation\.png is \(12, 15\)"
    ):
        read_isic(images, masks)
    (masks / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) have no mask.*ISIC_0000001_segmentation\.png"):
        read_isic(images, masks)
    with pytest.raises(FileNotFoundError, match="mask folder"):
        isic_cases(images, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no ISIC"):
        isic_cases(masks, masks)


# -- splits ----------------------------------------------------------------------------------------------
def test_split_cases() -> None:
    ids = [f"case{i:02d}" for i in range(20)]
    split = split_cases(ids, 0.2, 0.25, seed=3)
    assert [len(split[name]) for name in ("train", "val", "test")] == [12, 3, 5]
    assert sorted(sum(split.values(), [])) == ids
    assert split == split_cases(ids, 0.2, 0.25, seed=3) and split != split_cases(ids, 0.2, 0.25, seed=4)
    fixed = split_cases(ids, 0.0, 0.5, seed=0, test_cases=["case03", "case07"])
    assert fixed["test"] == ["case03", "case07"] and fixed["val"] == [] and len(fixed["train"]) == 18
    assert split_cases(ids, 0.0, 0.0, seed=0)["train"] == ids
    with pytest.raises(ValueError, match=r"`test_cases` \['x'\]"):
        split_cases(ids, 0.1, 0.1, 0, test_cases=["x"])
    with pytest.raises(ValueError, match="`val_fraction` must be in"):
        split_cases(ids, 1.0, 0.1, 0)
    with pytest.raises(ValueError, match="unique"):
        split_cases(["a", "a"], 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="No case is left"):
        split_cases(["a", "b"], 0.0, 0.0, 0, test_cases=["a", "b"])


# -- datamodules -----------------------------------------------------------------------------------------
def _cases_of(dm, split: str) -> list[str]:
    return [volume.case_id for volume in dm.volumes(split)]


def test_decathlon_datamodule_splits_by_case(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "Task09_Spleen", 6)
    dm = DecathlonDataModule(
        str(root), val_fraction=0.25, test_fraction=0.3, seed=1, image_size=16, batch_size=4
    )
    splits = dm.case_splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 2]
    assert sorted(sum(splits.values(), [])) == [f"organ_{i}" for i in range(6)]
    assert {s: _cases_of(dm, s) for s in ("train", "val", "test")} == splits
    assert dm.class_names == ["background", "spleen", "tumour"] and dm.intensity == "ct"
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert batch["x"].shape[1:] == (3, 16, 16) and batch["y"].shape[1:] == (16, 16)
    assert batch["boxes"].shape[1:] == (2, 4) and dm.group_attributes == []
    for split in ("train", "val", "test"):  # a case's slices stay in its split
        indices = dm.split_dataset(split).volume_index.unique().tolist()
        assert {dm.volumes(split)[i].case_id for i in indices} <= set(splits[split])
    same = DecathlonDataModule(str(root), val_fraction=0.25, test_fraction=0.3, seed=1)
    assert same.case_splits == splits
    assert DecathlonDataModule(str(root), val_fraction=0.25, test_fraction=0.3, seed=2).case_splits != splits


def test_decathlon_datamodule_mri_channel(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "Task05_Prostate", 3, modalities={"0": "T2", "1": "ADC"})
    dm = DecathlonDataModule(str(root), channel="ADC", val_fraction=0.0, test_fraction=0.34, image_size=8)
    assert dm.intensity == "percentile" and dm.channel == 1
    assert len(dm.volumes("train")) == 2 and len(dm.volumes("test")) == 1 and dm.volumes("val") == []
    with pytest.raises(ValueError, match="`intensity` must be"):
        DecathlonDataModule(str(root), intensity="hu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`test_fraction` must be in"):
        DecathlonDataModule(str(root), test_fraction=1.5)


def test_btcv_datamodule_transunet_split(tmp_path: Path) -> None:
    root = _btcv(tmp_path, (*TRANSUNET_TEST_CASES, "0005", "0006", "0007"))
    dm = BTCVDataModule(str(root), organs="synapse8", split="transunet", val_fraction=0.3, image_size=8)
    splits = dm.case_splits
    assert splits["test"] == list(TRANSUNET_TEST_CASES)
    assert sorted(splits["train"] + splits["val"]) == ["0005", "0006", "0007"] and len(splits["val"]) == 1
    assert dm.num_classes == 9 and dm.intensity == "ct" and dm.ct_window == TRANSUNET_CT_WINDOW
    assert _cases_of(dm, "test") == list(TRANSUNET_TEST_CASES)
    assert int(dm.split_dataset("train").labels.max()) == 8
    few = BTCVDataModule(str(_btcv(tmp_path / "few")), split="transunet")
    with pytest.raises(ValueError, match=r"\['0003', '0004'.*are not under.*split='random'"):
        _ = few.case_splits
    random = BTCVDataModule(str(tmp_path / "few"), test_fraction=0.5, val_fraction=0.0)
    assert sorted(sum(random.case_splits.values(), [])) == ["0001", "0002"] and random.num_classes == 14
    with pytest.raises(ValueError, match="`split` must be"):
        BTCVDataModule(str(root), split="samed")  # type: ignore[arg-type]


def test_isic_datamodule(tmp_path: Path) -> None:
    images, masks = _isic(tmp_path / "train", 5)
    dm = ISICSegmentationDataModule(
        str(images), str(masks), val_fraction=0.25, test_fraction=0.2, image_size=8
    )
    assert [len(dm.case_splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert batch["x"].shape == (3, 3, 8, 8) and set(batch["y"].unique().tolist()) <= {0, 1}
    assert dm.class_names == ["background", "lesion"] and dm.slice_counts["train"]["kept"] == 3
    test_images, test_masks = _isic(tmp_path / "test", 2, first=90)
    official = ISICSegmentationDataModule(
        str(images),
        str(masks),
        test_image_dir=str(test_images),
        test_mask_dir=str(test_masks),
        val_fraction=0.2,
    )
    assert official.case_splits["test"] == ["ISIC_0000090", "ISIC_0000091"]
    assert len(official.case_splits["train"]) == 4 and len(official.case_splits["val"]) == 1
    assert official.volumes("test")[0].image.shape == (1, 12, 16, 3)
    leaky = ISICSegmentationDataModule(
        str(images), str(masks), val_image_dir=str(images), val_mask_dir=str(masks)
    )
    with pytest.raises(ValueError, match=r"\['ISIC_0000000', .* are both in .*one image in two splits leaks"):
        leaky.volumes("val")
    with pytest.raises(ValueError, match="Give both `val_image_dir` and `val_mask_dir`"):
        ISICSegmentationDataModule(str(images), str(masks), val_image_dir=str(images))
    with pytest.raises(ValueError, match="`max_side` must be"):
        ISICSegmentationDataModule(str(images), str(masks), max_side=0)
