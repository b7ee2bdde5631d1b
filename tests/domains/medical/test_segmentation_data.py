"""Slice datamodules for SAM segmentation: preprocessing, prompts, groups, volume Dice, MNI152, phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.core.data import check_groups
from verticals.domains.medical.sam_prompts import check_prompts
from verticals.domains.medical.segmentation_data import (
    MNI152_SLABS,
    MNI152TissueDataModule,
    PhantomSegmentationDataModule,
    PhantomSpec,
    SliceSegmentationDataModule,
    generate_phantoms,
    mni152_paths,
    normalise_intensity,
    read_mni152_tissue,
    resize_slices,
    volume_dice,
)
from verticals.domains.medical.volumes import LabelledVolume


def _volume(case: str, depth: int = 5, empty: tuple[int, ...] = (), site: str = "A", sex: str = "F", **kw):
    """``[depth, 16, 32]`` scan: a bright square (class 1) and a dim bar (class 2) on the non-empty slices."""
    rng = np.random.default_rng(len(case))
    image = rng.normal(100.0, 5.0, size=(depth, 16, 32)).astype(np.float32)
    label = np.zeros((depth, 16, 32), dtype=np.int64)
    for d in range(depth):
        if d not in empty:
            label[d, 4:10, 8:16] = 1
            label[d, 12:14, 20:30] = 2
    image[label == 1] += 200.0
    image[label == 2] += 60.0
    return LabelledVolume(
        image, label, spacing=(3.0, 0.5, 1.0), case_id=case, attributes={"site": site, "sex": sex}, **kw
    )


def _module(**kwargs) -> SliceSegmentationDataModule:
    splits = {
        "train": [
            _volume("a", empty=(0, 4)),
            _volume("bb", site="B", sex="M"),
            _volume("ccc", empty=(0, 1, 2, 3, 4)),
        ],
        "val": [_volume("dddd", site="B")],
        "test": [_volume("eeeee", sex="M", empty=(2,))],
    }
    options = {"class_names": ["background", "square", "bar"], "image_size": 8, "batch_size": 4} | kwargs
    return SliceSegmentationDataModule(**splits, **options)


def test_batches_hold_images_labels_prompts_origins_and_groups() -> None:
    dm = _module(prompt="box", box_jitter=0.0)
    assert dm.num_classes == 3 and dm.class_names == ["background", "square", "bar"]
    assert dm.input_shape == (3, 8, 8)
    check_groups(dm)
    assert dm.group_attributes == ["sex", "site"] and dm.group_names == {
        "sex": ["F", "M"],
        "site": ["A", "B"],
    }
    batch = next(iter(dm.dataloader("train", shuffle=False)))
    assert set(batch) == {
        "x", "y", "boxes", "points", "prompt_present", "group", "volume_index", "slice_index", "spacing"
    }  # fmt: skip
    assert batch["x"].shape == (4, 3, 8, 8) and batch["x"].dtype == torch.float32
    assert float(batch["x"].min()) >= 0.0 and float(batch["x"].max()) <= 1.0
    assert torch.equal(batch["x"][:, 0], batch["x"][:, 2])  # one channel repeated
    assert batch["y"].shape == (4, 8, 8) and batch["y"].dtype == torch.long
    assert set(batch["y"].unique().tolist()) == {0, 1, 2}
    assert batch["boxes"].shape == (4, 2, 4) and batch["points"].shape == (4, 2, 2)
    assert batch["prompt_present"].dtype == torch.bool and bool(batch["prompt_present"].all())
    check_prompts(batch["boxes"], batch["points"], 8)
    # volume "a" (index 0) keeps slices 1..3; then volume "bb" (index 1) from slice 0
    assert batch["volume_index"].tolist() == [0, 0, 0, 1] and batch["slice_index"].tolist() == [1, 2, 3, 0]
    # 16 x 32 slices of 0.5 x 1.0 mm resized to 8 x 8: 1 mm rows, 4 mm columns
    assert torch.allclose(batch["spacing"], torch.tensor([[1.0, 4.0]] * 4))
    assert batch["group"].tolist() == [[0, 0], [0, 0], [0, 0], [1, 1]]  # (sex, site)
    # the square covers rows 4..9 of 16 and columns 8..15 of 32: rows 2..4 and columns 2..3 at 8 x 8
    y = batch["y"][0]
    assert torch.equal(torch.nonzero(y == 1)[:, 0].unique(), torch.tensor([2, 3, 4]))
    assert torch.equal(torch.nonzero(y == 1)[:, 1].unique(), torch.tensor([2, 3]))
    assert batch["boxes"][0, 0].tolist() == [2.0, 2.0, 4.0, 5.0]
    assert dm.volumes("train")[1].case_id == "bb"


def test_empty_slices_and_volumes_are_counted_not_fatal() -> None:
    dm = _module()
    counts = dm.slice_counts
    assert counts["train"] == {
        "volumes": 3, "slices": 15, "foreground": 8, "empty": 7, "kept": 8, "empty_volumes": ["ccc"]
    }  # fmt: skip
    assert counts["test"]["kept"] == 4 and counts["test"]["empty_volumes"] == []
    assert len(dm.split_dataset("val")) == 5
    every = _module(slices="all")
    assert every.slice_counts["train"]["kept"] == 15 and len(every.split_dataset("train")) == 15
    item = every.split_dataset("train")[10]  # volume "ccc": no foreground, no prompt
    assert item["volume_index"] == 2 and not bool(item["prompt_present"].any())
    assert int(item["y"].max()) == 0
    check_prompts(item["boxes"], item["points"], 8)


def test_labels_outside_the_classes_name_the_case_and_values() -> None:
    bad = _volume("weird")
    bad.label[0, 0, 0] = 7
    dm = SliceSegmentationDataModule(train=[bad], class_names=["background", "square", "bar"], image_size=8)
    with pytest.raises(
        ValueError, match=r"Case 'weird' \(train\): label value\(s\) \[7\].*0..2.*class_names"
    ):
        dm.setup()
    inferred = SliceSegmentationDataModule(train=[bad], image_size=8)
    assert inferred.class_names == ["background"] + [f"class_{k}" for k in range(1, 8)]


def test_train_prompts_are_jittered_and_evaluation_prompts_fixed() -> None:
    dm = _module(prompt="box", box_jitter=2.0, image_size=16)
    train, val = dm.split_dataset("train"), dm.split_dataset("val")
    exact = train.boxes[0]
    torch.manual_seed(0)
    draws = torch.stack([train[0]["boxes"] for _ in range(10)])
    assert (draws[:, :, :2] <= exact[:, :2]).all() and (draws[:, :, 2:] >= exact[:, 2:]).all()
    assert (draws[:, :, :2] >= exact[:, :2] - 2).all() and len(
        {tuple(b.flatten().tolist()) for b in draws}
    ) > 1
    assert torch.equal(val[0]["boxes"], val[0]["boxes"]) and torch.equal(val[0]["boxes"], val.boxes[0])
    points = _module(prompt="point", box_jitter=1.0, image_size=16).split_dataset("train")
    item = points[0]
    x, y = item["points"][0].long().tolist()
    assert item["y"][y, x] == 1  # a random pixel of the class
    assert _module(prompt="box", image_size=256).box_jitter == 20.0  # MedSAM's default, scaled
    assert _module(prompt="box", image_size=128).box_jitter == 10.0


def test_intensity_axis_rgb_and_resizing() -> None:
    ramp = np.arange(1, 201, dtype=np.float32).reshape(2, 10, 10)
    normalised = normalise_intensity(ramp, "percentile")
    assert normalised.min() == 0.0 and normalised.max() == 1.0 and 0.45 < float(np.median(normalised)) < 0.55
    assert np.array_equal(normalise_intensity(np.full((1, 4, 4), 7.0)), np.zeros((1, 4, 4)))
    ct = normalise_intensity(np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]]), "ct", ct_window=(40, 400))
    assert np.allclose(ct, [[[0.0, 0.0, 0.5, 1.0, 1.0]]])
    with pytest.raises(ValueError, match="`intensity`"):
        normalise_intensity(ramp, "zscore")  # type: ignore[arg-type]
    image, label = resize_slices(np.zeros((3, 12, 20)), np.ones((3, 12, 20), dtype=np.int64), 8)
    assert image.shape == (3, 1, 8, 8) and label.shape == (3, 8, 8) and label.dtype == torch.int64
    # axis 2: slices across the 32 columns; in-plane spacing (3.0 mm, 0.5 mm) resized from 5 x 16 to 8 x 8
    across = _module(axis=2, slices="all")
    batch = across.split_dataset("test")[0]
    assert len(across.split_dataset("test")) == 32
    assert torch.allclose(batch["spacing"], torch.tensor([3.0 * 5 / 8, 0.5 * 16 / 8]))
    rgb = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    rgb[0, :8, :, 0] = 255
    label = np.zeros((1, 16, 16), dtype=np.int64)
    label[0, 4:12, 4:12] = 1
    dm = SliceSegmentationDataModule(train=[LabelledVolume(rgb, label, case_id="photo")], image_size=16)
    item = dm.split_dataset("train")[0]
    assert (
        item["x"].shape == (3, 16, 16) and float(item["x"][0, 0, 0]) == 1.0 and float(item["x"][1].max()) == 0
    )
    assert dm.class_names == ["background", "class_1"]


def test_volumes_fn_groups_and_argument_errors() -> None:
    volumes = {"train": [_volume("a")], "val": [], "test": [_volume("b", site="B")]}
    dm = SliceSegmentationDataModule(
        volumes_fn=volumes.__getitem__,
        image_size=8,
        group_attributes=["site"],
        group_names={"site": ["B", "A"]},
    )
    assert dm.group_attributes == ["site"] and dm.group_names == {"site": ["B", "A"]}
    assert dm.split_dataset("test")[0]["group"].tolist() == [0] and len(dm.split_dataset("val")) == 0
    assert "group" not in _module(group_attributes=[]).split_dataset("train")[0]

    def unread(split: str) -> list[LabelledVolume]:
        raise AssertionError(f"read {split} before setup")

    lazy = SliceSegmentationDataModule(volumes_fn=unread, class_names=["bg", "x"], group_attributes=[])
    assert (lazy.num_classes, lazy.group_attributes, lazy.group_names, lazy.input_shape) == (
        2,
        [],
        {},
        (3, 256, 256),
    )
    check_groups(lazy)  # shapes and groups are known without reading a volume
    with pytest.raises(ValueError, match=r"Case 'a' has no attribute\(s\) \['scanner'\]"):
        SliceSegmentationDataModule(train=[_volume("a")], group_attributes=["scanner"]).setup()
    with pytest.raises(ValueError, match="not both"):
        SliceSegmentationDataModule(train=[_volume("a")], volumes_fn=volumes.__getitem__)
    with pytest.raises(ValueError, match="training split has no volumes"):
        SliceSegmentationDataModule(test=[_volume("a")]).setup()
    with pytest.raises(ValueError, match="no training slice has foreground"):
        SliceSegmentationDataModule(
            train=[_volume("a", empty=tuple(range(5)))], class_names=["bg", "x", "y"]
        ).setup()
    with pytest.raises(TypeError, match="LabelledVolume"):
        SliceSegmentationDataModule(train=[np.zeros((2, 4, 4))]).setup()  # type: ignore[list-item]
    for bad, message in [
        ({"axis": 3}, "`axis`"),
        ({"image_size": 4}, "`image_size`"),
        ({"intensity": "zscore"}, "`intensity`"),
        ({"ct_window": (40.0, 0.0)}, "`ct_window`"),
        ({"percentiles": (99.0, 1.0)}, "`percentiles`"),
        ({"slices": "some"}, "`slices`"),
        ({"prompt": "mask"}, "`prompt`"),
        ({"box_jitter": -1.0}, "`box_jitter`"),
        ({"class_names": ["background"]}, "`class_names`"),
    ]:
        with pytest.raises(ValueError, match=message):
            SliceSegmentationDataModule(train=[_volume("a")], **bad)


def test_volume_dice_matches_a_hand_computed_example() -> None:
    true = np.zeros((3, 2, 3), dtype=np.int64)
    pred = np.zeros((3, 2, 3), dtype=np.int64)
    # volume 7 (slices 0 and 2): class 1 true at 3 voxels, predicted at 4 of which 2 overlap -> 2*2/7
    true[0, 0, :] = 1
    pred[0, 0, :2] = 1
    pred[2, 1, :2] = 1
    # class 2 is absent from volume 7 in truth and prediction -> nan
    # volume 3 (slice 1): class 2 true at 2 voxels, predicted exactly -> 1; class 1 predicted, absent -> 0
    true[1, 1, :2] = 2
    pred[1, 1, :2] = 2
    pred[1, 0, 0] = 1
    result = volume_dice(pred, torch.from_numpy(true), np.array([7, 3, 7]), 3)
    assert result["volume_index"].tolist() == [3, 7]
    assert np.allclose(result["dice"][1, 1], 4 / 7) and np.isnan(result["dice"][1, 2])
    assert result["dice"][0, 1] == 0.0 and result["dice"][0, 2] == 1.0
    background_7 = 2 * 7 / (9 + 8)  # 9 true and 8 predicted background voxels in volume 7, 7 shared
    assert np.isclose(result["dice"][1, 0], background_7)
    assert np.allclose(result["class_mean"][1:], [2 / 7, 1.0])
    assert np.isclose(result["mean"], (2 / 7 + 1.0) / 2)
    with pytest.raises(ValueError, match="argmax"):
        volume_dice(pred.astype(np.float32), true, [7, 3, 7], 3)
    with pytest.raises(ValueError, match="one shape"):
        volume_dice(pred[:, :1], true, [7, 3, 7], 3)
    with pytest.raises(ValueError, match="one per slice"):
        volume_dice(pred, true, [7, 3], 3)
    with pytest.raises(ValueError, match=r"outside the classes 0..1"):
        volume_dice(pred, true, [7, 3, 7], 2)


def test_mni152_template_slabs_and_batches() -> None:
    paths = mni152_paths()
    assert set(paths) == {"t1", "gm", "wm"} and all(
        path.name.endswith("_sym_09a_converted.nii.gz") for path in paths.values()
    )
    template = read_mni152_tissue()
    assert template.image.shape[1] == template.image.shape[2]  # a square crop around the brain
    assert template.image.min() == 0.0 and template.image.max() == 1.0
    assert set(np.unique(template.label).tolist()) == {0, 1, 2}
    assert template.label[:, :4].max() == 0 and template.label[:, -4:].max() == 0  # the margin
    default = MNI152TissueDataModule()
    sizes = {split: sum(v.num_slices for v in default.volumes(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 73, "val": 10, "test": 20}
    covered = {split: {z for a, b in slabs for z in range(a, b + 1)} for split, slabs in MNI152_SLABS.items()}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        gaps = [abs(a - b) for a in covered[first] for b in covered[second]]
        assert min(gaps) > 5  # at least five slices between any two splits
    dm = MNI152TissueDataModule(image_size=32, slab_step=3, max_slices=6, prompt="box")
    assert dm.num_classes == 3 and dm.class_names == ["background", "grey_matter", "white_matter"]
    assert dm.group_attributes == [] and [v.case_id for v in dm.volumes("train")] == [
        "mni152_2009a_z030-082",
        "mni152_2009a_z128-147",
    ]
    assert {split: counts["kept"] for split, counts in dm.slice_counts.items()} == {
        "train": 6,
        "val": 4,
        "test": 6,
    }
    batch = next(iter(dm.dataloader("test")))
    assert batch["x"].shape == (6, 3, 32, 32) and "group" not in batch
    assert bool(batch["prompt_present"].all())  # every slice shows grey and white matter
    with pytest.raises(ValueError, match="`slab_step`"):
        MNI152TissueDataModule(slab_step=0)
    with pytest.raises(ValueError, match="unknown split"):
        MNI152TissueDataModule(slabs={"holdout": [(1, 2)]})
    with pytest.raises(ValueError, match="runs past"):
        MNI152TissueDataModule(slabs={"val": [(150, 400)]}).volumes("val")


def _cnr(volume: LabelledVolume) -> float:
    """Organ-to-surrounding-tissue contrast over the noise of the air (the contrast-to-noise ratio)."""
    image, label = volume.image, volume.label
    tissue = (label == 0) & (image > 0.2) & (image < 0.5)
    return float((image[label == 1].mean() - image[tissue].mean()) / image[:, :4, :4].std())


def test_phantoms_plant_a_site_shift_and_are_deterministic() -> None:
    spec = PhantomSpec(num_patients=12, num_slices=3, image_size=48, seed=3)
    first, second = generate_phantoms(spec), generate_phantoms(spec)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first["train"], second["train"]))
    other = generate_phantoms(PhantomSpec(num_patients=12, num_slices=3, image_size=48, seed=4))
    assert not np.array_equal(first["train"][0].image, other["train"][0].image)
    volumes = [v for split in first.values() for v in split]
    assert len(volumes) == 12 and all(v.image.shape == (3, 48, 48) for v in volumes)
    for split in ("train", "val", "test"):  # every split has patients of both sites
        assert {v.attributes["site"] for v in first[split]} == {"A", "B"}
    assert sum(v.attributes["site"] == "B" for v in volumes) == 4  # round(0.35 * 12)
    assert {v.attributes["sex"] for v in volumes} == {"female", "male"}
    a = [_cnr(v) for v in volumes if v.attributes["site"] == "A"]
    b = [_cnr(v) for v in volumes if v.attributes["site"] == "B"]
    assert max(b) < 0.5 * min(a)  # the planted acquisition shift: lower contrast, more noise
    assert {v.spacing[1] for v in volumes} == {400 / 48, 320 / 48}  # site B: smaller field of view
    assert all(set(np.unique(v.label).tolist()) <= {0, 1, 2, 3} for v in volumes)
    assert any((v.label == 3).any() for v in volumes) and all((v.label == 2).any() for v in volumes)
    milder = generate_phantoms(
        PhantomSpec(
            num_patients=12, num_slices=3, image_size=48, seed=3, site_b_contrast=1.0, site_b_noise=0.03
        )
    )
    b_milder = [_cnr(v) for split in milder.values() for v in split if v.attributes["site"] == "B"]
    assert min(b_milder) > 2 * max(b)
    with pytest.raises(ValueError, match="site_b_contrast"):
        generate_phantoms(PhantomSpec(site_b_contrast=0.0))


def test_phantom_datamodule_batches_and_planted_overrides() -> None:
    dm = PhantomSegmentationDataModule(num_patients=9, num_slices=2, image_size=32, prompt="point")
    assert dm.class_names == ["background", "organ", "kidney", "lesion"] and dm.input_shape == (3, 32, 32)
    check_groups(dm)
    assert dm.group_attributes == ["site", "sex"] and dm.group_names["site"] == ["A", "B"]
    batch = next(iter(dm.dataloader("train")))
    assert batch["group"].shape[1] == 2 and batch["boxes"].shape[1:] == (3, 4)
    assert sum(c["volumes"] for c in dm.slice_counts.values()) == 9
    shifted = PhantomSegmentationDataModule(
        num_patients=9, image_size=32, generated_size=48, planted={"site_b_noise": 0.2}
    )
    assert shifted.spec.site_b_noise == 0.2 and shifted.spec.image_size == 48
    assert shifted.split_dataset("val")[0]["x"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"Unknown `planted` field\(s\) \['seed'\]"):
        PhantomSegmentationDataModule(planted={"seed": 1})
