"""torchgeo's LoveDA, Potsdam, Vaihingen and EuroSAT datamodules behind verticals' datamodule protocol, on tiny
files written in each dataset's real layout: what torchgeo reads, what the task receives (keys, normalisation,
groups, classes, no-data), the splits, the checks torchgeo doesn't make, and a LoveDA-shaped set trained through
``verticals fit`` on the registered ``remote_sensing.vit``."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("torchgeo")

from verticals.core.cli import run_cli  # noqa: E402
from verticals.core.data import check_groups  # noqa: E402
from verticals.domains.remote_sensing.torchgeo_data import (  # noqa: E402
    EUROSAT_CLASSES,
    ISPRS_CLASSES,
    ISPRS_COLOURS,
    LOVEDA_CLASSES,
    TorchGeoClassificationDataModule,
    TorchGeoItems,
    TorchGeoSegmentationDataModule,
    check_isprs_mask,
    write_tiny_eurosat,
    write_tiny_loveda,
    write_tiny_potsdam,
    write_tiny_vaihingen,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def loveda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_loveda(tmp_path_factory.mktemp("loveda"), images_per_folder=2, size=32)


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_eurosat(tmp_path_factory.mktemp("eurosat"), per_class=(1, 1, 1), size=16)


class Recorder(L.LightningModule):
    """Keeps the batches a Trainer hands the model (after the datamodule's ``on_after_batch_transfer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "val": [], "test": []}

    def _keep(self, stage: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen[stage].append({key: value.detach().clone() for key, value in batch.items()})
        return self.weight.sum() * 0 + self.weight.square().sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._keep("train", batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._keep("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._keep("test", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


# -- the files -----------------------------------------------------------------------------------------------
def test_tiny_loveda_has_the_release_layout(loveda: Path) -> None:
    for split in ("Train", "Val", "Test"):
        for scene in ("Urban", "Rural"):
            images = sorted((loveda / split / scene / "images_png").glob("*.png"))
            assert len(images) == 2
            masks = loveda / split / scene / "masks_png"
            assert masks.is_dir() == (split != "Test")  # the test masks are not public
            if split != "Test":
                for image in images:
                    mask = np.asarray(Image.open(masks / image.name))
                    assert (
                        mask.dtype == np.uint8 and mask.shape == (32, 32) and mask.max() < len(LOVEDA_CLASSES)
                    )
                    assert Image.open(image).mode == "RGB"
    first = np.asarray(Image.open(loveda / "Train" / "Rural" / "masks_png" / "0.png"))
    assert (first[:8, :8] == 0).all()  # a no-data corner
    with pytest.raises(ValueError, match="images_per_folder"):
        write_tiny_loveda(loveda / "bad", images_per_folder=0)


def test_tiny_isprs_and_eurosat_have_the_layout_torchgeo_reads(tmp_path: Path, eurosat: Path) -> None:
    potsdam = write_tiny_potsdam(tmp_path / "potsdam", train_tiles=2, test_tiles=1, size=16)
    assert (potsdam / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif").is_file()
    assert (potsdam / "top_potsdam_2_10_label.tif").is_file() and (
        potsdam / "top_potsdam_5_15_label.tif"
    ).is_file()
    vaihingen = write_tiny_vaihingen(tmp_path / "vaihingen", train_tiles=1, test_tiles=1, size=16)
    assert (vaihingen / "top" / "top_mosaic_09cm_area1.tif").is_file()
    assert (vaihingen / "top_mosaic_09cm_area1.tif").is_file()
    with pytest.raises(ValueError, match="train_tiles"):
        write_tiny_potsdam(tmp_path / "bad", train_tiles=25)
    assert (eurosat / "eurosat-train.txt").read_text().splitlines()[0] == "AnnualCrop_1.jpg"
    for name in ("eurosat-spatial-val.txt", "eurosat-100-test.txt"):
        assert len((eurosat / name).read_text().splitlines()) == len(EUROSAT_CLASSES)
    base = eurosat / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    assert sorted(path.name for path in base.iterdir()) == sorted(EUROSAT_CLASSES)
    with pytest.raises(ValueError, match="per_class"):
        write_tiny_eurosat(tmp_path / "bad", per_class=(1, 0, 1))


# -- LoveDA --------------------------------------------------------------------------------------------------
def test_loveda_declares_what_the_task_needs(loveda: Path) -> None:
    dm = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2)
    assert dm.num_classes == 8 and dm.class_names == list(LOVEDA_CLASSES) and dm.class_names[0] == "no-data"
    assert dm.ignore_index == 0  # LoveDA's no-data label
    assert dm.input_shape == [3, 32, 32] and dm.bands == ("red", "green", "blue")
    check_groups(dm)
    assert dm.group_attributes == ["scene"] and dm.group_names == {"scene": ["urban", "rural"]}
    assert TorchGeoSegmentationDataModule("loveda", loveda, patch_size=16).input_shape == [3, 16, 16]


def test_loveda_batches_through_a_trainer_are_torchgeos_mapped(loveda: Path, tmp_path: Path) -> None:
    """A Trainer runs torchgeo's setup, loaders and on-device normalisation; the model sees x, y and group."""
    dm = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=None)
    model = Recorder()
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    assert len(model.seen["train"]) == 2 and len(model.seen["val"]) == 2 and len(model.seen["test"]) == 2
    for stage, batches in model.seen.items():
        for batch in batches:
            assert set(batch) == {"x", "y", "group"}, stage
            assert batch["x"].shape == (2, 3, 32, 32) and batch["x"].dtype == torch.float32
            assert float(batch["x"].min()) >= 0.0 and float(batch["x"].max()) <= 1.0  # torchgeo's ÷255
            assert float(batch["x"].max()) > 0.5
            assert batch["y"].dtype == torch.long and int(batch["y"].max()) < 8
            assert batch["group"].shape == (2, 1) and batch["group"].dtype == torch.long
    # each tile's scene code matches its folder: the test split (official Val) is sorted Rural then Urban
    codes = torch.cat([batch["group"][:, 0] for batch in model.seen["test"]]).tolist()
    assert codes == [1, 1, 0, 0]  # rural, rural, urban, urban
    assert any(int((batch["y"] == 0).sum()) > 0 for batch in model.seen["train"])  # no-data reaches the task


def test_loveda_splits(loveda: Path, caplog: pytest.LogCaptureFixture) -> None:
    official = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=None)
    official.setup("fit")
    assert len(official.torchgeo.train_dataset) == 4 and len(official.torchgeo.val_dataset) == 4
    with caplog.at_level(logging.WARNING):
        official.setup("test")
    assert "also served validation" in caplog.text
    test_files = official.torchgeo.test_dataset.files
    assert all("/Val/" in item["image"] for item in test_files) and len(test_files) == 4

    held = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=0.25, seed=3)
    held.setup("fit")
    train, val = held.torchgeo.train_dataset, held.torchgeo.val_dataset
    assert (len(train), len(val)) == (3, 1)
    assert set(train.indices).isdisjoint(val.indices)  # validation tiles come out of Train, none shared
    again = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=0.25, seed=3)
    again.setup("fit")
    assert list(again.torchgeo.val_dataset.indices) == list(val.indices)  # seeded
    default = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2)  # validation never on test tiles
    default.setup("fit")
    assert (len(default.torchgeo.train_dataset), len(default.torchgeo.val_dataset)) == (3, 1)  # >= 1 held out
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        default.setup("test")
    assert "also served validation" not in caplog.text

    rural = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, scene=["rural"], val_fraction=None)
    rural.setup("fit")
    assert len(rural.torchgeo.train_dataset) == 2
    assert {int(rural.torchgeo.train_dataset[i]["group"][0]) for i in range(2)} == {1}

    predict = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=None)
    batch = next(iter(predict.dataloader("predict")))  # the official Test images: no masks
    assert "mask" not in batch
    assert set(predict.transform_batch(batch, "predict")) == {"x", "group"}


def test_loveda_crops_and_batches_without_a_trainer(loveda: Path) -> None:
    dm = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, patch_size=16, val_fraction=None)
    raw = next(iter(dm.dataloader("val", shuffle=False)))  # torchgeo's raw items, in file order
    assert set(raw) == {"image", "mask", "group"} and raw["image"].shape == (2, 3, 32, 32)
    assert float(raw["image"].max()) > 1.0  # not normalised yet: torchgeo does it after the transfer
    batch = dm.transform_batch(raw, "val")  # centre crop, ÷255
    assert batch["x"].shape == (2, 3, 16, 16) and batch["y"].shape == (2, 16, 16)
    torch.testing.assert_close(batch["x"], raw["image"][:, :, 8:24, 8:24] / 255)
    assert torch.equal(batch["y"], raw["mask"][:, 8:24, 8:24]) and torch.equal(batch["group"], raw["group"])
    train = dm.transform_batch(next(iter(dm.dataloader("train"))), "train")  # random crop
    assert train["x"].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="split"):
        dm.transform_batch(raw, "holdout")


# -- ISPRS Potsdam / Vaihingen -------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "bands"), [("potsdam", 4), ("vaihingen", 3)])
def test_isprs_colour_masks_become_labels(
    name: str, bands: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = write_tiny_potsdam if name == "potsdam" else write_tiny_vaihingen
    root = writer(tmp_path / name, train_tiles=5, test_tiles=2, size=48)
    dm = TorchGeoSegmentationDataModule(name, root, batch_size=2, patch_size=32, val_fraction=None)
    assert dm.input_shape == [bands, 32, 32] and dm.num_classes == 6 and dm.ignore_index is None
    assert dm.class_names == list(ISPRS_CLASSES) and dm.group_attributes == []
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    listed = 24 if name == "potsdam" else 16
    assert (
        f"{name} train split: 5 of torchgeo's {listed} tiles found" in caplog.text
    )  # torchgeo skips silently
    missing = "top_potsdam_4_11" if name == "potsdam" else "top_mosaic_09cm_area21.tif"
    assert missing in caplog.text
    assert (len(dm.torchgeo.train_dataset), len(dm.torchgeo.val_dataset)) == (4, 1)  # torchgeo's 20% hold-out
    item = dm.torchgeo.train_dataset[0]
    label_file = Path(dm.torchgeo.dataset.files[dm.torchgeo.train_dataset.indices[0]]["mask"])
    rgb = np.asarray(Image.open(label_file).convert("RGB"))
    expected = np.zeros(rgb.shape[:2], dtype=np.int64)
    for code, colour in enumerate(ISPRS_COLOURS):
        expected[(rgb == colour).all(axis=-1)] = code
    assert torch.equal(item["mask"], torch.from_numpy(expected))  # colour -> class index, as torchgeo decodes
    batch = dm.transform_batch(next(iter(dm.dataloader("train"))), "train")
    assert batch["x"].shape == (2, bands, 32, 32) and batch["y"].shape == (2, 32, 32)
    assert float(batch["x"].min()) >= 0.0 and float(batch["x"].max()) <= 1.0
    predict = next(iter(dm.dataloader("predict")))  # torchgeo has no predict split: the test tiles
    assert len(dm.torchgeo.predict_dataset) == 2 and set(predict) == {"image", "mask"}


@pytest.mark.parametrize("name", ["potsdam", "vaihingen"])
def test_isprs_zips_are_extracted_by_torchgeo(name: str, tmp_path: Path) -> None:
    writer = write_tiny_potsdam if name == "potsdam" else write_tiny_vaihingen
    root = writer(tmp_path / name, train_tiles=2, test_tiles=1, size=16, zipped=True)
    assert sorted(path.suffix for path in root.iterdir()) == [
        ".zip",
        ".zip",
    ]  # the downloads, nothing extracted
    dm = TorchGeoSegmentationDataModule(name, root, batch_size=1, patch_size=16, val_fraction=None)
    dm.setup("test")
    assert len(dm.torchgeo.test_dataset) == 1
    assert (root / ("4_Ortho_RGBIR" if name == "potsdam" else "top")).is_dir()  # extracted in place


def test_isprs_stray_colours_are_an_error_naming_the_file(tmp_path: Path) -> None:
    root = write_tiny_vaihingen(tmp_path / "vaihingen", train_tiles=2, test_tiles=1, size=16)
    label = root / "top_mosaic_09cm_area1.tif"
    check_isprs_mask(label)  # clean
    rgb = np.asarray(Image.open(label).convert("RGB")).copy()
    rgb[:2, :3] = (10, 20, 30)
    Image.fromarray(rgb).save(label)
    with pytest.raises(ValueError, match=r"area1\.tif: 6 pixel\(s\).*\(10, 20, 30\)×6.*check_masks=False"):
        check_isprs_mask(label)
    dm = TorchGeoSegmentationDataModule("vaihingen", root, batch_size=1, patch_size=16, val_fraction=0.5)
    dm.setup("fit")
    with pytest.raises(ValueError, match="area1.tif"):
        [dm.torchgeo.train_dataset[0], dm.torchgeo.val_dataset[0]]
    lenient = TorchGeoSegmentationDataModule(
        "vaihingen", root, batch_size=1, check_masks=False, val_fraction=0.5
    )
    lenient.setup("fit")
    items = [lenient.torchgeo.train_dataset[0], lenient.torchgeo.val_dataset[0]]
    stray = next(item for item in items if item["image"].shape[-1] == 16 and int(item["mask"][0, 0]) == 0)
    assert int(stray["mask"][:2, :3].max()) == 0  # torchgeo's reading: clutter


# -- EuroSAT -------------------------------------------------------------------------------------------------
def test_eurosat_batches(eurosat: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = TorchGeoClassificationDataModule("eurosat", eurosat, batch_size=5)
    assert dm.input_shape == [13, 16, 16] and dm.num_classes == 10 and dm.class_names == list(EUROSAT_CLASSES)
    dm.setup("fit")
    assert len(dm.torchgeo.train_dataset) == 10
    batch = dm.transform_batch(next(iter(dm.dataloader("train", shuffle=False))), "train")
    assert (
        set(batch) == {"x", "y"}
        and batch["x"].shape == (5, 13, 16, 16)
        and batch["y"].tolist() == [0, 1, 2, 3, 4]
    )
    assert float(batch["x"].abs().mean()) < 4.0  # torchgeo's per-band EuroSAT mean / std applied
    rgb = TorchGeoClassificationDataModule("eurosat100", eurosat, bands="rgb", batch_size=2)
    assert rgb.input_shape == [3, 16, 16] and rgb.bands == ("B04", "B03", "B02")
    rgb.setup("test")
    assert next(iter(rgb.test_dataloader()))["image"].shape == (2, 3, 16, 16)

    partial = write_tiny_eurosat(tmp_path / "partial", per_class=(2, 1, 1), size=8)
    (
        partial
        / "ds"
        / "images"
        / "remote_sensing"
        / "otherDatasets"
        / "sentinel_2"
        / "tif"
        / "River"
        / "River_2.tif"
    ).unlink()
    with caplog.at_level(logging.WARNING):
        TorchGeoClassificationDataModule("eurosat", partial, batch_size=2).setup("fit")
    assert "EuroSAT train split: 19 of the 20 images listed in eurosat-train.txt found" in caplog.text

    extra = write_tiny_eurosat(tmp_path / "extra", per_class=(1, 1, 1), size=8)
    base = extra / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    (base / "Glacier").mkdir()
    (base / "Glacier" / "Glacier_1.tif").write_bytes((base / "Forest" / "Forest_1.tif").read_bytes())
    (extra / "eurosat-train.txt").write_text((extra / "eurosat-train.txt").read_text() + "Glacier_1.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"classes Glacier.*each class folder needs an image listed"):
        TorchGeoClassificationDataModule("eurosat", extra, batch_size=2).setup("fit")  # none listed in val
    for number, split in enumerate(("val", "test"), start=2):
        (base / "Glacier" / f"Glacier_{number}.tif").write_bytes(
            (base / "Forest" / "Forest_1.tif").read_bytes()
        )
        listing = extra / f"eurosat-{split}.txt"
        listing.write_text(listing.read_text() + f"Glacier_{number}.jpg\n")
    with pytest.raises(ValueError, match=r"class folders \[.*'Glacier'.*shifts every label"):
        TorchGeoClassificationDataModule("eurosat", extra, batch_size=2).setup("fit")


# -- bad inputs ----------------------------------------------------------------------------------------------
def test_missing_data_shows_the_layout_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"images_png.*zenodo.org/records/5706578"):
        TorchGeoSegmentationDataModule("loveda", tmp_path / "none").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"images_png"):
        _ = TorchGeoSegmentationDataModule("loveda", tmp_path / "none").input_shape
    with pytest.raises(FileNotFoundError, match=r"4_Ortho_RGBIR.*ISPRS"):
        TorchGeoSegmentationDataModule("potsdam", tmp_path / "none").setup("fit")
    (tmp_path / "empty" / "top").mkdir(parents=True)  # the folder torchgeo looks for, but no tile
    with pytest.raises(FileNotFoundError, match=r"train split of vaihingen.*empty.*top_mosaic_09cm"):
        TorchGeoSegmentationDataModule("vaihingen", tmp_path / "empty").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"EuroSATallBands.zip"):
        TorchGeoClassificationDataModule("eurosat", tmp_path / "none").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"eurosat-\{train,val,test\}"):
        _ = TorchGeoClassificationDataModule("eurosat", tmp_path / "none").input_shape


def test_a_loveda_mask_value_outside_the_labels_names_the_file(tmp_path: Path) -> None:
    root = write_tiny_loveda(tmp_path / "loveda", images_per_folder=1, size=16)
    mask_file = root / "Train" / "Rural" / "masks_png" / "0.png"
    mask = np.asarray(Image.open(mask_file)).copy()
    mask[0, 0] = 255
    Image.fromarray(mask).save(mask_file)
    dm = TorchGeoSegmentationDataModule("loveda", root, batch_size=1)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"Rural/masks_png/0\.png holds value\(s\) \[255\].*0\.\.7"):
        dm.torchgeo.train_dataset[0]


def test_bad_arguments(loveda: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"dataset": "isaid"}, "Unknown `dataset`"),
        ({"dataset": "eurosat"}, "TorchGeoClassificationDataModule"),
        ({"patch_size": 0}, "patch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"scene": ["suburban"]}, "scene"),
        ({"scene": []}, "scene"),
        ({"dataset": "potsdam", "scene": ["urban"]}, "LoveDA's option"),
        ({"dataset": "vaihingen", "download": True}, "cannot download vaihingen"),
        ({"batch_size": 0}, "batch_size"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            TorchGeoSegmentationDataModule(**({"root": loveda} | kwargs))
    for kwargs, message in [
        ({"dataset": "loveda"}, "TorchGeoSegmentationDataModule"),
        ({"bands": "nir"}, "'all', 'rgb'"),
        ({"bands": ["B04", "B8"]}, r"\['B8'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            TorchGeoClassificationDataModule(**kwargs)
    small = TorchGeoSegmentationDataModule(
        "loveda", loveda, batch_size=5, val_fraction=None
    )  # 4 training tiles
    with pytest.raises(ValueError, match=r"4 item\(s\), fewer than batch_size=5.*drops the last incomplete"):
        small.setup("fit")


def test_the_task_must_ignore_no_data_and_read_the_bands(loveda: Path) -> None:
    dm = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=None)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(hparams={"ignore_index": None}))
    with pytest.raises(ValueError, match=r"unlabelled pixels with 0 \('no-data'\).*`ignore_index: 0`"):
        dm.setup("fit")
    dm.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams={"ignore_index": 0, "input_shape": [4, 32, 32]})
    )
    with pytest.raises(ValueError, match=r"4 band\(s\) but loveda tiles have 3 \(red, green, blue\)"):
        dm.setup("fit")
    dm.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(hparams={"ignore_index": 0, "input_shape": [3, 32, 32]})
    )
    dm.setup("fit")


def test_wrapped_items_pickle_for_loader_workers(loveda: Path) -> None:
    dm = TorchGeoSegmentationDataModule("loveda", loveda, batch_size=2, val_fraction=None)
    dm.setup("fit")
    items = dm.torchgeo.train_dataset
    assert isinstance(items, TorchGeoItems) and len(items.files) == 4  # torchgeo's attributes show through
    copy = pickle.loads(pickle.dumps(items))
    assert torch.equal(copy[1]["mask"], items[1]["mask"]) and torch.equal(copy[1]["group"], items[1]["group"])


# -- through the CLI -----------------------------------------------------------------------------------------
def _config(tmp_path: Path, data: dict[str, Any], task: str, init_args: dict[str, Any]) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 2,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
        },
        "model": {"class_path": f"verticals.core.tasks.{task}", "init_args": init_args},
        "data": data,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_loveda_trains_through_verticals_fit(
    loveda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's check: a LoveDA-shaped torchgeo datamodule, unchanged, trains through ``verticals fit``; then
    ``verticals run`` reports mIoU per scene (urban / rural)."""
    pytest.importorskip("verticals.domains.remote_sensing.models")  # registers remote_sensing.vit
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    data = {
        "class_path": "verticals.domains.remote_sensing.torchgeo_data.TorchGeoSegmentationDataModule",
        "init_args": {"dataset": "loveda", "root": str(loveda), "batch_size": 2, "val_fraction": 0.25},
    }
    task = {
        "model": "remote_sensing.vit",
        "model_args": {"backbone": "tile_vit_tiny", "pretrained": False},
        "adapter": {
            "method": "lora",
            "targets": "attention",
            "trainable": ["decode_head"],
            "options": {"r": 2},
        },
        "ignore_index": 0,  # LoveDA's no-data
        "monitor": "val_miou",
        "report_bootstrap": 10,
    }
    config = _config(tmp_path, data, "SegmentationTask", task)
    cli = run_cli(["fit", "--config", str(config)])
    assert cli.trainer.global_step == 1  # 3 training tiles, batches of 2, torchgeo drops the incomplete one
    hparams = cli.model.hparams
    assert hparams["num_classes"] == 8 and hparams["class_names"] == list(LOVEDA_CLASSES)
    assert list(hparams["input_shape"]) == [3, 32, 32]
    assert cli.model.metric_labels == list(range(1, 8))  # no-data is neither trained nor scored
    assert np.isfinite(float(cli.trainer.callback_metrics["val_miou"]))

    cli = run_cli(["run", "--config", str(config)])
    run = Path(cli.trainer.log_dir)
    groups = json.loads((run / "groups.json").read_text())["groupings"]["scene"]["groups"]
    assert set(groups) == {"urban", "rural"}
    for row in groups.values():
        assert 0.0 <= row["miou"]["value"] <= 1.0


def test_eurosat_trains_through_verticals_fit(
    eurosat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("verticals.domains.remote_sensing.models")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    data = {
        "class_path": "verticals.domains.remote_sensing.torchgeo_data.TorchGeoClassificationDataModule",
        "init_args": {"dataset": "eurosat", "root": str(eurosat), "batch_size": 4},
    }
    task = {
        "model": "remote_sensing.vit",
        "model_args": {"backbone": "tile_vit_tiny", "pretrained": False},
        "adapter": {"method": "lora", "targets": "attention", "trainable": ["head"], "options": {"r": 2}},
    }
    cli = run_cli(["fit", "--config", str(_config(tmp_path, data, "ClassificationTask", task))])
    assert cli.trainer.global_step == 2
    assert cli.model.hparams["num_classes"] == 10 and list(cli.model.hparams["input_shape"]) == [13, 16, 16]
