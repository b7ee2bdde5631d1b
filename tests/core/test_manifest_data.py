"""The CSV-manifest datamodule and its file readers, on tiny files written in their real formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from verticals.core import image_io
from verticals.core.data import (
    BaseDataModule,
    GroupedDataModule,
    ImageDecodeError,
    ManifestDataModule,
    ManifestError,
    UnsupportedSuffixError,
    check_groups,
    group_split,
    read_image,
    read_mask,
    supported_suffixes,
)
from verticals.core.file_errors import VerticalsFileError


def _png(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P")
        image.putpalette([value for index in range(256) for value in (index, 255 - index, 0)])
        image.putdata(array.flatten().tolist())
    image.save(path)
    return path


def _manifest(tmp_path: Path, rows: list[dict], name: str = "manifest.csv") -> str:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _labelled_set(tmp_path: Path, count: int = 24) -> tuple[str, list[np.ndarray]]:
    """RGB and grey PNGs, 3 rows per subject, a site and a scanner per row; pixel value = row index."""
    rows, arrays = [], []
    for i in range(count):
        array = np.full((12, 10, 3) if i % 2 else (12, 10), i * 8, dtype=np.uint8)
        _png(tmp_path / "images" / f"{i}.png", array)
        arrays.append(array)
        rows.append(
            {
                "file": f"images/{i}.png",
                "diagnosis": "ab"[i % 2],
                "subject_id": f"s{i // 3}",
                "site": ["10", "9", "2"][i % 3],
                "scanner": "xy"[(i // 2) % 2],
            }
        )
    return _manifest(tmp_path, rows), arrays


def _labelled(manifest: str, **kwargs) -> ManifestDataModule:
    options = dict(
        path_column="file",
        label_column="diagnosis",
        group_columns=["site", "scanner"],
        split_by="subject_id",
        image_size=None,
        batch_size=4,
        test_fraction=0.25,
        val_fraction=0.2,
    )
    return ManifestDataModule(manifest, **{**options, **kwargs})


# -- readers ----------------------------------------------------------------------------------
def test_png_and_npy_decode_to_channels_first(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert torch.equal(
        read_image(_png(tmp_path / "g.png", grey), channels=3), torch.tensor(grey).expand(3, 3, 4)
    )
    rgb = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    assert torch.equal(read_image(_png(tmp_path / "c.png", rgb)), torch.tensor(rgb).permute(2, 0, 1))
    assert read_image(tmp_path / "c.png", channels=1).shape == (1, 3, 4)
    bands = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float64)
    np.save(tmp_path / "bands.npy", bands)
    decoded = read_image(tmp_path / "bands.npy")
    assert decoded.dtype == torch.float32 and torch.equal(decoded, torch.tensor(bands, dtype=torch.float32))
    with pytest.raises(ImageDecodeError, match=r"bands\.npy as 3 channel\(s\): it has 5"):
        read_image(tmp_path / "bands.npy", channels=3)
    deep = np.full((3, 4), 65535, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert torch.allclose(read_image(tmp_path / "deep.png"), torch.ones(1, 3, 4))  # 16-bit scales to [0, 1]


def test_masks_decode_to_class_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)
    assert torch.equal(read_mask(_png(tmp_path / "m.png", labels)), torch.tensor(labels, dtype=torch.long))
    palette = read_mask(_png(tmp_path / "p.png", labels, palette=True))  # indices, not palette colours
    assert Image.open(tmp_path / "p.png").mode == "P" and torch.equal(palette, torch.tensor(labels).long())
    np.save(tmp_path / "m.npy", labels[None].astype(np.float32))
    assert torch.equal(read_mask(tmp_path / "m.npy"), torch.tensor(labels).long())  # channel of 1 dropped
    np.save(tmp_path / "soft.npy", np.full((2, 3), 0.5, dtype=np.float32))
    with pytest.raises(ImageDecodeError, match=r"soft\.npy as a mask: it holds non-integer values"):
        read_mask(tmp_path / "soft.npy")
    _png(tmp_path / "rgb.png", np.zeros((2, 3, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"rgb\.png as a mask: it has 3 colour channels"):
        read_mask(tmp_path / "rgb.png")


def test_supported_suffixes_are_those_that_decode(tmp_path: Path) -> None:
    suffixes = supported_suffixes()
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy"} <= set(suffixes)
    image = np.random.default_rng(1).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    lossless = torch.tensor(image).permute(2, 0, 1)
    for suffix in suffixes:
        path = tmp_path / f"file{suffix}"
        if suffix == ".npy":
            np.save(path, image.transpose(2, 0, 1))
        elif suffix in image_io.NIFTI_SUFFIXES:  # a volume without a channel axis gets one
            import nibabel

            nibabel.save(nibabel.Nifti1Image(image.transpose(2, 0, 1).astype(np.float32), np.eye(4)), path)
        else:
            Image.fromarray(image).save(path)
        decoded = read_image(path, channels=None)
        if suffix in image_io.NIFTI_SUFFIXES:
            assert torch.equal(decoded, lossless[None].float()), suffix
        elif suffix in (".jpg", ".jpeg", ".webp"):  # lossy codecs: shape and rough values
            assert decoded.shape == (3, 6, 5) and (decoded.float() - lossless.float()).abs().mean() < 60, (
                suffix
            )
        else:
            assert torch.equal(decoded, lossless), suffix
    assert (".nii.gz" in suffixes) == (importlib.util.find_spec("nibabel") is not None)


def test_unsupported_suffix_lists_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "scan.xyz").write_bytes(b"\x00" * 16)
    with pytest.raises(
        UnsupportedSuffixError, match=r"'\.xyz' cannot be decoded here; supported suffixes: \.png"
    ):
        read_image(tmp_path / "scan.xyz")
    rows = [{"path": "scan.xyz", "label": "a"}]
    dm = ManifestDataModule(_manifest(tmp_path, rows))
    with pytest.raises(UnsupportedSuffixError, match=r"manifest\.csv, line 2 \(path\): .*scan\.xyz.*\.npy"):
        _ = dm.num_classes


def test_nifti_without_nibabel_is_refused_naming_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(image_io, "_nifti_missing", lambda: "NIfTI files need nibabel: `pip install nibabel`")
    assert ".nii.gz" not in supported_suffixes()
    (tmp_path / "brain.nii.gz").write_bytes(b"\x00" * 16)
    with pytest.raises(UnsupportedSuffixError, match=r"brain\.nii\.gz.*'\.nii\.gz'.*pip install nibabel"):
        read_image(tmp_path / "brain.nii.gz")


def test_nifti_volumes_and_masks_round_trip(tmp_path: Path) -> None:
    nibabel = pytest.importorskip("nibabel")
    volume = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    labels = (volume > 0).astype(np.int16) + (volume > 1).astype(np.int16)
    rows = []
    for i in range(4):
        nibabel.save(nibabel.Nifti1Image(volume + i, np.eye(4)), tmp_path / f"v{i}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(labels, np.eye(4)), tmp_path / f"l{i}.nii")
        rows.append(
            {"path": f"v{i}.nii.gz", "mask": f"l{i}.nii", "split": ["train", "train", "val", "test"][i]}
        )
    assert torch.equal(read_image(tmp_path / "v1.nii.gz"), torch.tensor(volume + 1)[None])
    dm = ManifestDataModule(
        _manifest(tmp_path, rows),
        mask_column="mask",
        channels=None,
        image_size=None,
        flips=False,
        batch_size=2,
    )
    batch = next(iter(dm.test_dataloader()))
    assert batch["x"].shape == (1, 1, 4, 5, 6) and torch.equal(batch["x"][0, 0], torch.tensor(volume + 3))
    assert batch["y"].dtype == torch.long and torch.equal(batch["y"][0], torch.tensor(labels).long())
    assert dm.class_names == ["0", "1", "2"]


# -- files that fail ----------------------------------------------------------------------------
def test_a_corrupt_file_is_named_with_its_manifest_line(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=12)
    pd.read_csv(manifest).assign(split=["train"] * 10 + ["test"] * 2).to_csv(manifest, index=False)
    (tmp_path / "images" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dm = _labelled(manifest, val_fraction=0.0)
    dataset = dm.split_dataset("train")
    with pytest.raises(
        ImageDecodeError, match=r"manifest\.csv, line 7: Cannot decode .*images/5\.png: .*Error"
    ):
        dataset[5]
    np.save(tmp_path / "images" / "arr.npy", np.zeros(3))
    (tmp_path / "images" / "arr.npy").write_bytes(b"garbage")
    with pytest.raises(ImageDecodeError, match=r"Cannot decode .*arr\.npy: it is not a \.npy array"):
        read_image(tmp_path / "images" / "arr.npy")


def test_missing_columns_files_and_bad_values_are_named(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=6)
    with pytest.raises(ManifestError, match=r"column\(s\) \['sex'\] not found"):
        _ = _labelled(manifest, group_columns=["sex"]).table
    table = pd.read_csv(manifest, dtype=str)
    table.loc[3, "file"] = "images/missing.png"
    table.loc[4, "site"] = ""
    broken = tmp_path / "broken.csv"
    table.to_csv(broken, index=False)
    with pytest.raises(
        ManifestError, match=r"broken\.csv: line 5 \(file='images/missing\.png'\): file .* not found"
    ):
        _ = _labelled(str(broken)).table
    table.loc[3, "file"] = "images/3.png"
    table.to_csv(broken, index=False)
    with pytest.raises(
        ManifestError, match=r"line 6 has no value in group column 'site'.*missing_groups='drop'"
    ):
        _ = _labelled(str(broken)).table
    assert len(_labelled(str(broken), missing_groups="drop", split_by=None).table) == 5
    table["split"] = "training"
    table.to_csv(broken, index=False)
    with pytest.raises(
        ManifestError, match=r"column 'split' has values \['training'\]; use train, val, test"
    ):
        _ = _labelled(str(broken), missing_groups="drop").table
    with pytest.raises(ValueError, match="not both"):
        ManifestDataModule(manifest, label_column="diagnosis", mask_column="mask")
    with pytest.raises(ValueError, match="test_fraction"):
        ManifestDataModule(manifest, test_fraction=1.0)


def test_bmp_and_tif_manifests_decode_and_an_undecodable_suffix_is_refused_up_front(
    tmp_path: Path, monkeypatch
) -> None:
    rows = []
    for i, suffix in enumerate([".bmp", ".tif", ".bmp", ".tif"] * 2):
        Image.fromarray(np.full((6, 5, 3), 30 * i, dtype=np.uint8)).save(tmp_path / f"{i}{suffix}")
        rows.append({"path": f"{i}{suffix}", "label": "ab"[i % 2], "split": ["train", "test"][i // 6]})
    dm = ManifestDataModule(_manifest(tmp_path, rows), image_size=None, flips=False, batch_size=2)
    batch = next(iter(dm.test_dataloader()))
    assert batch["x"].shape == (2, 3, 6, 5) and torch.allclose(
        batch["x"][0, 0, 0, 0], torch.tensor(180 / 255)
    )
    # A Pillow built without a codec: the manifest is refused when it is read, not at the first batch.
    monkeypatch.setattr(image_io, "_pil_suffixes", lambda: (".png", ".jpg", ".jpeg", ".bmp"))
    with pytest.raises(
        UnsupportedSuffixError,
        match=r"line 3 \(path\): .*1\.tif: files ending in '\.tif' cannot be decoded "
        r"here; supported suffixes: \.png, \.jpg, \.jpeg, \.bmp, \.npy",
    ):
        _ = ManifestDataModule(_manifest(tmp_path, rows, "again.csv")).num_classes


def test_a_single_class_manifest_is_refused(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=6)
    pd.read_csv(manifest).assign(diagnosis="a").to_csv(manifest, index=False)
    with pytest.raises(
        ManifestError, match=r"every row has the label 'a' \(column 'diagnosis'\); a classifier needs"
    ):
        _ = _labelled(manifest).num_classes


def test_file_contents_no_model_can_take_are_named_with_their_line(tmp_path: Path) -> None:
    good = np.zeros((3, 4, 4), dtype=np.float32)
    arrays = {
        "nan.npy": np.full((3, 4, 4), np.nan, dtype=np.float32),
        "text.npy": np.array([["a", "b"], ["c", "d"]]),
        "complex.npy": np.ones((3, 4, 4), dtype=np.complex64),
        "empty.npy": np.zeros((3, 0, 4), dtype=np.float32),
        "five_bands.npy": np.zeros((5, 4, 4), dtype=np.float32),
    }
    words = {
        "nan.npy": "48 of its 48 values are NaN or infinite",
        "text.npy": "holds <U1 values",
        "complex.npy": "holds complex64 values",
        "empty.npy": "holds no pixels",
        "five_bands.npy": r"gives channels \(5,\), but .*0\.npy \(line 2\) gives \(3,\); set `channels`",
    }
    for name, array in arrays.items():
        np.save(tmp_path / "0.npy", good)
        np.save(tmp_path / name, array)
        rows = [
            {"path": "0.npy", "label": "a", "split": "train"},
            {"path": name, "label": "b", "split": "train"},
        ]
        rows.append({"path": "0.npy", "label": "a", "split": "test"})
        dm = ManifestDataModule(
            _manifest(tmp_path, rows), channels=None, image_size=None, flips=False, val_fraction=0.0
        )
        dataset = dm.split_dataset("train")
        dataset[0]
        with pytest.raises(ImageDecodeError, match=r"manifest\.csv, line 3: .*" + words[name]) as caught:
            dataset[1]
        assert isinstance(caught.value, VerticalsFileError) and name in str(caught.value)


def test_a_pickled_array_is_refused_without_suggesting_to_allow_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageDecodeError, match=r"objects\.npy: it holds pickled Python objects") as caught:
        read_image(tmp_path / "objects.npy")
    error = caught.value  # numpy's own advice (load it with allow_pickle) is neither shown nor chained
    assert "allow_pickle" not in str(error) and error.__cause__ is None and error.__suppress_context__


def test_a_manifest_that_is_not_a_csv_table_is_named(tmp_path: Path) -> None:
    for name, content in {
        "empty.csv": b"",
        "binary.csv": bytes(range(256)) * 4,
        "header.csv": b"path,label\n",
    }.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ManifestError, match=name.replace(".", r"\.") + ": it "):
            _ = ManifestDataModule(str(tmp_path / name)).num_classes


# -- labels, groups, splits -----------------------------------------------------------------------
def test_group_codes_follow_batch_order_and_the_protocol(tmp_path: Path) -> None:
    manifest, arrays = _labelled_set(tmp_path)
    dm = _labelled(manifest, channels=3)
    assert isinstance(dm, BaseDataModule) and isinstance(dm, GroupedDataModule)
    check_groups(dm)
    assert dm.group_attributes == ["site", "scanner"]
    assert dm.group_names == {"site": ["2", "9", "10"], "scanner": ["x", "y"]}  # numbers sort numerically
    assert dm.class_names == ["a", "b"] and dm.num_classes == 2 and dm.input_shape == (3, 12, 10)
    table = dm.table
    for split in ("val", "test"):
        rows = table[table.stage == split]
        batches = list(dm.dataloader(split))
        group = torch.cat([b["group"] for b in batches])
        assert group.dtype == torch.long and group.shape == (len(rows), 2)
        decoded = [
            [dm.group_names[a][code] for a, code in zip(dm.group_attributes, codes)]
            for codes in group.tolist()
        ]
        assert decoded == rows[["site", "scanner"]].values.tolist()
        assert torch.cat([b["y"] for b in batches]).tolist() == rows.y.tolist()
        pixels = torch.cat([b["x"][:, 0, 0, 0] for b in batches])  # 8-bit pixels scaled to [0, 1]
        expected = [float(arrays[line - 2].flat[0]) / 255 for line in rows.line]
        assert torch.allclose(pixels, torch.tensor(expected))


def test_split_by_a_column_keeps_each_value_in_one_split(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=30)
    for column in ("subject_id", "site"):
        table = _labelled(manifest, split_by=column, test_fraction=0.3, val_fraction=0.3).table
        assert set(table.groupby(column).stage.nunique()) == {1}, column
        assert {"train", "val", "test"} <= set(table.stage)
    again = _labelled(manifest, split_by="subject_id", test_fraction=0.3, val_fraction=0.3).table
    other_seed = _labelled(manifest, split_by="subject_id", test_fraction=0.3, val_fraction=0.3, seed=5).table
    first = _labelled(manifest, split_by="subject_id", test_fraction=0.3, val_fraction=0.3).table
    assert list(again.stage) == list(first.stage) and list(other_seed.stage) != list(first.stage)
    units = np.array(["a", "a", "b", "c", "c", "d"])
    keep, held = group_split(units, 0.5, seed=0, unit="site")
    assert sorted([*keep, *held]) == list(range(6)) and not set(units[keep]) & set(units[held])
    assert len(set(units[held])) == 2  # half of the four sites
    with pytest.raises(ValueError, match=r"Cannot split 1 site\(s\)"):
        group_split(["a", "a"], 0.5, seed=0, unit="site")


def test_a_split_column_fixes_the_splits(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=9)
    table = pd.read_csv(manifest).assign(split=["train"] * 5 + ["TEST"] * 2 + ["val"] * 2)
    table.to_csv(manifest, index=False)
    dm = _labelled(manifest)
    assert list(dm.table.stage) == ["train"] * 5 + ["test"] * 2 + ["val"] * 2
    assert len(dm.split_dataset("train")) == 5 and len(dm.split_dataset("test")) == 2


def test_few_shot_keeps_k_training_rows_per_class(tmp_path: Path) -> None:
    manifest, _ = _labelled_set(tmp_path, count=30)
    dm = _labelled(manifest, shots_per_class=2)
    train = dm.table[dm.table.stage == "train"]
    assert train.label.value_counts().to_dict() == {"a": 2, "b": 2}
    assert sum(len(b["y"]) for b in dm.train_dataloader()) == 4


# -- masks ----------------------------------------------------------------------------------------
def _segmentation_set(tmp_path: Path, count: int = 8, size: tuple[int, int] = (12, 10)) -> str:
    """Masks with classes 0..2; the image's red channel is 50 x the class, so x and y can be compared."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(count):
        mask = rng.integers(0, 3, size, dtype=np.uint8)
        image = np.stack([mask * 50, np.full(size, i, np.uint8), np.zeros(size, np.uint8)], axis=-1)
        _png(tmp_path / "tiles" / f"{i}.png", image)
        _png(tmp_path / "masks" / f"{i}.png", mask)
        rows.append(
            {"path": f"tiles/{i}.png", "mask": f"masks/{i}.png", "region": f"r{i % 4}", "sensor": "ab"[i % 2]}
        )
    return _manifest(tmp_path, rows)


def test_masks_round_trip_and_share_the_image_geometry(tmp_path: Path) -> None:
    manifest = _segmentation_set(tmp_path)
    exact = ManifestDataModule(
        manifest, mask_column="mask", group_columns=["sensor"], split_by="region", image_size=None,
        mask_classes=["background", "field", "water"], batch_size=8, test_fraction=0.25, val_fraction=0.0,
    )  # fmt: skip
    batch = next(iter(exact.test_dataloader()))
    assert (
        batch["y"].dtype == torch.long and batch["y"].shape == (2, 12, 10) and batch["group"].shape == (2, 1)
    )
    rows = exact.table[exact.table.stage == "test"]
    for index, line in enumerate(rows.line):
        written = np.asarray(Image.open(tmp_path / "masks" / f"{line - 2}.png"))
        assert torch.equal(batch["y"][index], torch.tensor(written).long())
    assert exact.num_classes == 3 and exact.class_names == ["background", "field", "water"]

    flipped = ManifestDataModule(
        manifest, mask_column="mask", split_by="region", image_size=None, batch_size=4, flips=True, seed=1
    )
    assert flipped.class_names == ["0", "1", "2"]  # read from the masks
    torch.manual_seed(0)
    for batch in flipped.train_dataloader():  # the random flips hit image and mask alike
        assert torch.equal((batch["x"][:, 0] * 255 / 50).round().long(), batch["y"])

    resized = ManifestDataModule(manifest, mask_column="mask", split_by="region", image_size=8, flips=False)
    batch = next(iter(resized.test_dataloader()))
    assert batch["x"].shape[1:] == (3, 8, 8) and batch["y"].shape[1:] == (8, 8)
    rows = resized.table[resized.table.stage == "test"]
    for index, line in enumerate(rows.line):  # nearest-neighbour resize + centre crop of the stored mask
        written = torch.tensor(np.asarray(Image.open(tmp_path / "masks" / f"{line - 2}.png")))[None]
        expected = v2.functional.center_crop(v2.functional.resize(written, 8, InterpolationMode.NEAREST), 8)
        assert torch.equal(batch["y"][index], expected[0].long())


def test_mask_values_outside_the_classes_and_shape_mismatches_are_named(tmp_path: Path) -> None:
    manifest = _segmentation_set(tmp_path, count=4)
    pd.read_csv(manifest).assign(split=["train", "train", "train", "test"]).to_csv(manifest, index=False)
    _png(tmp_path / "masks" / "2.png", np.full((12, 10), 7, dtype=np.uint8))
    dm = ManifestDataModule(
        manifest, mask_column="mask", mask_classes=["a", "b", "c"], image_size=None, val_fraction=0.0,
    )  # fmt: skip
    with pytest.raises(
        ImageDecodeError, match=r"line 4: mask .*masks/2\.png has class values \[7\] outside 0\.\.2"
    ):
        dm.split_dataset("train")[2]
    ignored = ManifestDataModule(
        manifest, mask_column="mask", mask_classes=["a", "b", "c"], ignore_index=7, image_size=None,
        val_fraction=0.0,
    )  # fmt: skip
    assert int(ignored.split_dataset("train")[2]["y"].max()) == 7
    _png(tmp_path / "masks" / "1.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(
        ImageDecodeError, match=r"line 3: mask .*1\.png has shape \(5, 5\) but image .* \(12, 10\)"
    ):
        ignored.split_dataset("train")[1]
