"""Run reports and model cards name the data by ``dataset_name_of``: every datamodule a packaged config
names must give a real name, not the class-name fallback (``Shape`` for ``ShapeDataModule``)."""

from __future__ import annotations

import functools
import inspect
import json
from importlib import import_module
from typing import Any

import pytest
import yaml

from verticals.core.cli import packaged_configs
from verticals.core.data import BaseDataModule, dataset_name_of

pytestmark = pytest.mark.domains


@functools.cache
def config_datamodules() -> dict[str, dict[str, Any]]:
    """Class path of every datamodule a packaged config names -> the init_args of the first such config."""
    found: dict[str, dict[str, Any]] = {}
    for _, path in sorted(packaged_configs().items()):
        data = (yaml.safe_load(path.read_text()) or {}).get("data")
        if isinstance(data, dict) and isinstance(data.get("class_path"), str):
            found.setdefault(data["class_path"], dict(data.get("init_args") or {}))
    return found


def load(module: str, name: str | None = None) -> Any:
    """Import ``module`` (and take ``name`` from it); skip when an optional extra is not installed."""
    try:
        loaded = import_module(module)
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("verticals"):
            pytest.skip(f"{module} needs {error.name!r} (an optional extra)")
        raise
    return loaded if name is None else getattr(loaded, name)


def fallback(cls: type) -> str:
    """The name ``dataset_name_of`` gives a datamodule that names nothing."""
    return cls.__name__.removesuffix("DataModule") or cls.__name__


def names_its_data_in_source(cls: type) -> bool:
    """Whether the class or one of its datamodule bases assigns ``self.dataset_name`` in its code."""
    own = [base for base in cls.__mro__ if issubclass(base, BaseDataModule) and base is not BaseDataModule]
    return any("self.dataset_name =" in inspect.getsource(base) for base in own)


def test_the_packaged_configs_name_datamodules():
    assert len(config_datamodules()) >= 5


@pytest.mark.parametrize("class_path", sorted(config_datamodules()))
def test_every_configured_datamodule_names_its_data(class_path):
    module, _, name = class_path.rpartition(".")
    cls = load(module, name)
    try:
        datamodule = cls(**config_datamodules()[class_path])
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("verticals"):
            pytest.skip(f"{class_path} needs {error.name!r} (an optional extra)")
        raise
    except OSError:  # the constructor reads files that are not here: check the code instead
        assert names_its_data_in_source(cls), f"{class_path} sets no `self.dataset_name`"
        return
    named = dataset_name_of(datamodule)
    assert isinstance(named, str) and named.strip()
    assert named != fallback(cls), f"{class_path} names its data only by its class name ({named!r})"
    assert datamodule.dataset_name == named


def test_the_forecasting_series_or_the_csv_names_the_data(tmp_path):
    forecasting = load("verticals.domains.timeseries.data", "ForecastingDataModule")
    assert forecasting(series="lynx").dataset_name == "lynx"
    csv = tmp_path / "store_sales.csv"
    csv.write_text("t,sales\n" + "".join(f"{t},{t % 7}\n" for t in range(80)))
    assert forecasting(csv_path=str(csv)).dataset_name == "store_sales"
    series = load("verticals.domains.timeseries.data", "CSVClassificationDataModule")
    train, test = tmp_path / "ECG_TRAIN.csv", tmp_path / "ECG_TEST.csv"
    for path in (train, test):
        path.write_text("label,v0,v1\na,0,1\n")
    assert series(str(train), str(test)).dataset_name == "ECG"


def test_real_datasets_are_named_with_their_variant(tmp_path):
    data = "verticals.domains.pointcloud.data"
    assert load(data, "ScanObjectNNDataModule")(tmp_path).dataset_name == "ScanObjectNN PB_T50_RS"
    assert (
        load(data, "ScanObjectNNDataModule")(tmp_path, variant="OBJ_BG").dataset_name == "ScanObjectNN OBJ_BG"
    )
    assert load(data, "ModelNet40DataModule")(tmp_path, layout="hdf5").dataset_name == "ModelNet40 (hdf5)"
    parts = load(data, "ShapeNetPartDataModule")
    assert parts(tmp_path).dataset_name == "ShapeNetPart"
    assert parts(tmp_path, categories=["Airplane", "Chair"]).dataset_name == "ShapeNetPart (Airplane, Chair)"
    manifests = load("verticals.domains.medical.data", "ManifestDataModule")
    assert manifests(str(tmp_path / "HAM10000_metadata.csv"), layout="ham10000").dataset_name == "HAM10000"
    assert manifests(str(tmp_path / "derm_clinic.csv")).dataset_name == "derm_clinic"  # generic: the CSV


def test_segmentation_layouts_are_named_by_their_folders(tmp_path):
    layouts = "verticals.domains.medical.segmentation_layouts"
    btcv = load(layouts, "BTCVDataModule")
    assert btcv(str(tmp_path)).dataset_name == "BTCV abdomen CT (13 organs)"
    named = btcv(str(tmp_path), organs="synapse8", split="transunet").dataset_name
    assert named == "BTCV abdomen CT (Synapse 8 organs, TransUNet test cases)"
    images, masks = tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "masks"
    isic = load(layouts, "ISICSegmentationDataModule")(str(images), str(masks))
    assert isic.dataset_name == "ISIC lesion segmentation (ISIC2018_Task1-2_Training_Input)"
    task = tmp_path / "Task01_BrainTumour"
    task.mkdir()
    meta = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"},
        "training": [{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    decathlon = load(layouts, "DecathlonDataModule")
    assert (
        decathlon(str(task), channel="T1w").dataset_name
        == "Medical Segmentation Decathlon Task01_BrainTumour (T1w)"
    )


def test_a_subclass_of_the_volume_datamodule_is_not_named_as_its_base():
    slices = load("verticals.domains.medical.segmentation_data", "SliceSegmentationDataModule")

    class MyScansDataModule(slices):
        pass

    assert slices().dataset_name == "labelled volumes given in Python"
    assert MyScansDataModule().dataset_name == "MyScans"
