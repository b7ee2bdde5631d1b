"""Manifest readers on tiny instances of each real layout (a few PNGs + the CSV as distributed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from verticals.domains.medical.manifests import (
    HAM10000_MALIGNANT,
    ManifestError,
    age_band,
    attribute_categories,
    read_manifest,
)


def _png(path: Path, value: int = 128, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8) if grey else (8, 8, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def _ham(tmp_path: Path, rows: list[dict]) -> Path:
    for i, row in enumerate(rows):
        _png(tmp_path / f"HAM10000_images_part_{1 + i % 2}" / f"{row['image_id']}.png", 40 * i)
    csv = tmp_path / "HAM10000_metadata.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


HAM_ROWS = [
    {
        "lesion_id": "HAM_0000118",
        "image_id": "ISIC_0027419",
        "dx": "bkl",
        "dx_type": "histo",
        "age": "80.0",
        "sex": "male",
        "localization": "scalp",
    },
    {
        "lesion_id": "HAM_0000118",
        "image_id": "ISIC_0025030",
        "dx": "bkl",
        "dx_type": "histo",
        "age": "80.0",
        "sex": "male",
        "localization": "scalp",
    },
    {
        "lesion_id": "HAM_0002730",
        "image_id": "ISIC_0026769",
        "dx": "mel",
        "dx_type": "histo",
        "age": "35.0",
        "sex": "female",
        "localization": "back",
    },
    {
        "lesion_id": "HAM_0001466",
        "image_id": "ISIC_0031633",
        "dx": "nv",
        "dx_type": "follow_up",
        "age": "55.0",
        "sex": "female",
        "localization": "ear",
    },
]


def test_ham10000_layout(tmp_path: Path) -> None:
    csv = _ham(tmp_path, HAM_ROWS)
    label_map = {dx: ("malignant" if dx in HAM10000_MALIGNANT else "benign") for dx in ("bkl", "mel", "nv")}
    table = read_manifest(csv, layout="ham10000", label_map=label_map)
    assert list(table.label) == ["benign", "benign", "malignant", "benign"]
    assert list(table.sex) == ["male", "male", "female", "female"]
    assert list(table.age_band) == ["60+", "60+", "<40", "40-59"]
    assert table.patient[0] == table.patient[1] == "HAM_0000118"  # split by lesion
    assert list(table.line) == [2, 3, 4, 5]  # CSV lines, for messages that name a bad file
    assert all(Path(p).is_file() for p in table.path)
    assert attribute_categories(table, "age_band") == ["<40", "40-59", "60+"]


def test_ham10000_unknown_sex_is_missing_and_can_be_dropped(tmp_path: Path) -> None:
    rows = [
        *HAM_ROWS,
        {**HAM_ROWS[3], "image_id": "ISIC_0000001", "lesion_id": "HAM_9", "sex": "unknown", "age": ""},
    ]
    csv = _ham(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"row 6 .*'sex'.*missing_attributes='drop'"):
        read_manifest(csv, layout="ham10000")
    assert len(read_manifest(csv, layout="ham10000", missing_attributes="drop")) == 4


def test_errors_name_row_and_column(tmp_path: Path) -> None:
    csv = _ham(tmp_path, HAM_ROWS)
    with pytest.raises(ManifestError, match=r"\['diagnosis'\] not found.*columns"):
        read_manifest(csv, layout="ham10000", label_column="diagnosis")
    bad_sex = tmp_path / "bad_sex.csv"
    pd.DataFrame([*HAM_ROWS[:2], {**HAM_ROWS[2], "sex": "X"}]).to_csv(bad_sex, index=False)
    with pytest.raises(ManifestError, match=r"row 4, column 'sex': unknown value 'X'"):
        read_manifest(bad_sex, layout="ham10000")
    missing_file = tmp_path / "missing.csv"
    pd.DataFrame([*HAM_ROWS, {**HAM_ROWS[0], "image_id": "ISIC_9999999"}]).to_csv(missing_file, index=False)
    with pytest.raises(ManifestError, match=r"row 6 \(image_id='ISIC_9999999'\): image file not found"):
        read_manifest(missing_file, layout="ham10000")
    with pytest.raises(ManifestError, match=r"not in `label_map`"):
        read_manifest(csv, layout="ham10000", label_map={"bkl": "benign"})
    with pytest.raises(ManifestError, match="Unknown manifest layout"):
        read_manifest(csv, layout="ham")


def test_isic2020_layout(tmp_path: Path) -> None:
    rows = [
        {
            "image_name": "ISIC_2637011",
            "patient_id": "IP_7279968",
            "sex": "male",
            "age_approx": "45.0",
            "anatom_site_general_challenge": "head/neck",
            "diagnosis": "unknown",
            "benign_malignant": "benign",
            "target": "0",
        },
        {
            "image_name": "ISIC_0015719",
            "patient_id": "IP_3075186",
            "sex": "female",
            "age_approx": "45.0",
            "anatom_site_general_challenge": "upper extremity",
            "diagnosis": "melanoma",
            "benign_malignant": "malignant",
            "target": "1",
        },
    ]
    for row in rows:
        _png(tmp_path / "train" / f"{row['image_name']}.jpg".replace(".jpg", ".png"))
    csv = tmp_path / "ISIC_2020_Training_GroundTruth.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = read_manifest(csv, layout="isic2020")
    assert list(table.label) == ["benign", "malignant"] and list(table.patient) == [
        "IP_7279968",
        "IP_3075186",
    ]


def test_fitzpatrick17k_layout(tmp_path: Path) -> None:
    rows = [
        {
            "md5hash": "5e82a45bc5d78bd24ae9202d194423f8",
            "fitzpatrick_scale": "3",
            "fitzpatrick_centaur": "3",
            "label": "drug induced pigmentary changes",
            "nine_partition_label": "inflammatory",
            "three_partition_label": "non-neoplastic",
            "qc": "",
            "url": "https://x",
            "url_alphanum": "x",
        },
        {
            "md5hash": "fa2911a9b13b6f8af79cb700937cc14f",
            "fitzpatrick_scale": "6",
            "fitzpatrick_centaur": "5",
            "label": "melanoma",
            "nine_partition_label": "malignant melanoma",
            "three_partition_label": "malignant",
            "qc": "",
            "url": "https://y",
            "url_alphanum": "y",
        },
        {
            "md5hash": "0000a9b13b6f8af79cb700937cc14f00",
            "fitzpatrick_scale": "-1",
            "fitzpatrick_centaur": "1",
            "label": "psoriasis",
            "nine_partition_label": "inflammatory",
            "three_partition_label": "non-neoplastic",
            "qc": "",
            "url": "https://z",
            "url_alphanum": "z",
        },
    ]
    for row in rows:
        _png(tmp_path / "images" / f"{row['md5hash']}.png")
    csv = tmp_path / "fitzpatrick17k.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = read_manifest(csv, layout="fitzpatrick17k", missing_attributes="drop")
    assert list(table.skin_type) == ["III-IV", "V-VI"] and list(table.label) == [
        "non-neoplastic",
        "malignant",
    ]
    both = read_manifest(
        csv, layout="fitzpatrick17k", attributes=["skin_type", "fitzpatrick"], missing_attributes="drop"
    )
    assert list(both.fitzpatrick) == ["3", "6"]
    bad = tmp_path / "bad.csv"
    pd.DataFrame([{**rows[0], "fitzpatrick_scale": "9"}]).to_csv(bad, index=False)
    with pytest.raises(ManifestError, match=r"column 'fitzpatrick_scale': unknown value '9'.*1-6"):
        read_manifest(bad, layout="fitzpatrick17k")


def test_chexpert_layout(tmp_path: Path) -> None:
    findings = {"No Finding": "", "Cardiomegaly": "", "Pleural Effusion": ""}
    rows = [
        {
            "Path": "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "Sex": "Female",
            "Age": "68",
            "Frontal/Lateral": "Frontal",
            "AP/PA": "AP",
            **findings,
            "Pleural Effusion": "1.0",
        },
        {
            "Path": "CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg",
            "Sex": "Female",
            "Age": "68",
            "Frontal/Lateral": "Frontal",
            "AP/PA": "AP",
            **findings,
            "Pleural Effusion": "-1.0",
        },
        {
            "Path": "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
            "Sex": "Male",
            "Age": "34",
            "Frontal/Lateral": "Frontal",
            "AP/PA": "PA",
            **findings,
            "No Finding": "1.0",
        },
    ]
    for row in rows:
        _png(tmp_path / row["Path"].replace(".jpg", ".png"), grey=True)
        row["Path"] = row["Path"].replace(".jpg", ".png")
    csv = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    dropped = read_manifest(csv, layout="chexpert", image_root=tmp_path)
    assert list(dropped.label) == ["1", "0"] and list(dropped.patient) == ["patient00001", "patient00002"]
    assert list(dropped.sex) == ["female", "male"]
    ones = read_manifest(csv, layout="chexpert", image_root=tmp_path, uncertain_labels="positive")
    zeros = read_manifest(csv, layout="chexpert", image_root=tmp_path, uncertain_labels="negative")
    assert list(ones.label) == ["1", "1", "0"] and list(zeros.label) == ["1", "0", "0"]
    # The CSV's own folder as image root also works (the first path component is the dataset folder).
    assert len(read_manifest(csv, layout="chexpert", label_column="Cardiomegaly")) == 3


def test_age_band() -> None:
    assert [age_band(a, [40, 60]) for a in (0, 39.9, 40, 59, 60, 90)] == [
        "<40",
        "<40",
        "40-59",
        "40-59",
        "60+",
        "60+",
    ]


def test_real_layouts_feed_the_datamodule(tmp_path: Path) -> None:
    """HAM10000 (RGB, split by lesion) and CheXpert (greyscale) manifests as batches with group codes."""
    from verticals.domains.medical.data import ManifestDataModule

    rows = [
        {"lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}", "dx": ("mel" if i % 3 == 0 else "nv"),
         "dx_type": "histo", "age": f"{30 + 5 * i}.0", "sex": ("male" if i % 2 else "female"), "localization": "back"}
        for i in range(16)
    ]  # fmt: skip
    for i, row in enumerate(rows):
        _png(tmp_path / "ham" / "HAM10000_images_part_1" / f"{row['image_id']}.png", 15 * i)
    csv = tmp_path / "ham" / "HAM10000_metadata.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    ham = ManifestDataModule(
        str(csv), layout="ham10000", label_map={"mel": "malignant", "nv": "benign"}, image_size=16, batch_size=4,
        test_fraction=0.25, val_fraction=0.2,
    )  # fmt: skip
    assert ham.class_names == ["benign", "malignant"] and ham.group_attributes == ["sex", "age_band"]
    table = ham.table
    by_stage = {stage: set(table[table.stage == stage].patient) for stage in ("train", "val", "test")}
    assert all(by_stage.values()) and not (by_stage["train"] & by_stage["test"])  # lesions never straddle
    batch = next(iter(ham.test_dataloader()))
    assert batch["x"].shape[1:] == (3, 16, 16) and batch["group"].shape[1] == 2
    test_rows = table[table.stage == "test"].head(len(batch["y"]))
    sexes = [ham.group_names["sex"][code] for code in batch["group"][:, 0].tolist()]
    assert sexes == list(test_rows.sex)

    findings = {"No Finding": "", "Pleural Effusion": ""}
    chexpert = []
    for i in range(8):
        path = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.png"
        _png(tmp_path / "cxr" / path, 20 * i, grey=True)
        chexpert.append({"Path": path, "Sex": ("Male" if i % 2 else "Female"), "Age": str(40 + i),
                         "Frontal/Lateral": "Frontal", "AP/PA": "AP", **findings,
                         "Pleural Effusion": ("1.0" if i % 2 else "0.0")})  # fmt: skip
    (tmp_path / "cxr" / "CheXpert-v1.0-small").mkdir(parents=True, exist_ok=True)
    cxr_csv = tmp_path / "cxr" / "CheXpert-v1.0-small" / "train.csv"
    pd.DataFrame(chexpert).to_csv(cxr_csv, index=False)
    cxr = ManifestDataModule(str(cxr_csv), layout="chexpert", image_size=16, batch_size=8, test_fraction=0.25)
    batch = next(iter(cxr.train_dataloader()))
    assert batch["x"].shape[1:] == (3, 16, 16)  # greyscale radiographs come out as 3 channels
    assert set(batch["y"].tolist()) <= {0, 1} and cxr.group_names["sex"] == ["female", "male"]
