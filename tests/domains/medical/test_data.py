"""Datamodules: batches with groups, patient-level splits, and the generated set's planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from verticals.core import manifest_data
from verticals.core.data import ImageDecodeError, check_groups
from verticals.domains.medical.data import GeneratedDermatologyDataModule, ManifestDataModule, patient_split
from verticals.domains.medical.synthetic import DermatologySpec, generate_dermatology, render_lesion


def test_generated_set_is_deterministic_and_cached(tmp_path: Path) -> None:
    spec = DermatologySpec(num_images=24, image_size=32, seed=5)
    first = generate_dermatology(tmp_path / "a", spec)
    second = generate_dermatology(tmp_path / "b", spec)
    assert first.read_text() == second.read_text()
    image_a = np.asarray(Image.open(first.parent / "images/lesion_00007.png"))
    image_b = np.asarray(Image.open(second.parent / "images/lesion_00007.png"))
    assert image_a.shape == (32, 32, 3) and np.array_equal(image_a, image_b)
    mtime = first.stat().st_mtime_ns
    assert generate_dermatology(tmp_path / "a", spec) == first and first.stat().st_mtime_ns == mtime
    other = generate_dermatology(tmp_path / "a", DermatologySpec(num_images=24, image_size=32, seed=6))
    assert other != first and other.read_text() != first.read_text()


def test_generated_set_plants_prevalence_and_contrast_gap(tmp_path: Path) -> None:
    manifest = generate_dermatology(tmp_path, DermatologySpec(num_images=300, image_size=32, seed=0))
    table = pd.read_csv(manifest)
    prevalence = table.assign(m=table.label == "malignant").groupby("skin_tone").m.mean()
    assert prevalence["light"] > prevalence["dark"] + 0.08
    assert 0.2 < (table.skin_tone == "dark").mean() < 0.4

    def contrast(row: pd.Series) -> float:
        image = np.asarray(Image.open(manifest.parent / row.image), dtype=np.float32)
        return float(image.std())

    stds = table.head(120).assign(c=lambda t: t.apply(contrast, axis=1)).groupby("skin_tone").c.mean()
    assert stds["dark"] < 0.8 * stds["light"]  # measured ~0.71 at seed 0
    assert set(table.groupby("patient").split.nunique()) == {1}  # a patient's lesions share a split


def test_ink_marker_is_a_group_dependent_shortcut(tmp_path: Path) -> None:
    spec = DermatologySpec(num_images=400, image_size=32, seed=1)
    table = pd.read_csv(generate_dermatology(tmp_path, spec))
    rate = table.groupby(["skin_tone", "label"]).marker.mean()
    assert rate["light", "malignant"] > 0.6 and rate["light", "benign"] < 0.15  # light: mark means malignant
    assert rate["dark", "benign"] > 0.4 and rate["dark", "malignant"] < 0.2  # dark: mark means follow-up
    plain = render_lesion(np.random.default_rng(4), 64, True, False, spec)
    marked = render_lesion(np.random.default_rng(4), 64, True, False, spec, marker=True)
    purple = (marked[..., 2] > marked[..., 1] + 0.2) & (marked[..., 0] > marked[..., 1] + 0.1)
    assert (
        purple.sum() > 10
        and not ((plain[..., 2] > plain[..., 1] + 0.2) & (plain[..., 0] > plain[..., 1] + 0.1)).any()
    )
    with pytest.raises(ValueError, match="marker_dark_benign"):
        generate_dermatology(tmp_path, DermatologySpec(num_images=10, marker_dark_benign=1.2))


def test_planted_strengths_are_spec_fields_and_change_the_cache_key(tmp_path: Path) -> None:
    def draw(**fields: float) -> np.ndarray:  # the same random draws, only the named strengths differ
        return render_lesion(np.random.default_rng(3), 64, True, True, DermatologySpec(**fields))

    clean = draw(dark_noise=0.0)
    noise = draw(dark_noise=0.05) - clean
    assert 0.02 < float(noise.std()) < 0.08  # per-image sigma: 0.05 x U(0.5, 1.5), a little clipped
    assert np.array_equal(clean, draw(dark_noise=0.0))
    assert float(np.abs(draw(dark_noise=0.0, dark_variegation=0.5) - clean).max()) > 0.01

    def benign(**fields: float) -> np.ndarray:  # evenly brown pigment: opacity alone sets its contrast
        return render_lesion(
            np.random.default_rng(3), 64, False, True, DermatologySpec(dark_noise=0.0, **fields)
        )

    assert float(benign(dark_lesion_opacity=0.2).std()) < float(benign().std())  # fainter: less contrast
    default = DermatologySpec()
    assert (
        DermatologySpec(dark_noise=0.04).key() != default.key() and default.key() == DermatologySpec().key()
    )
    with pytest.raises(ValueError, match="dark_fraction"):
        generate_dermatology(tmp_path, DermatologySpec(num_images=10, dark_fraction=1.5))
    with pytest.raises(ValueError, match="dark_noise"):
        generate_dermatology(tmp_path, DermatologySpec(num_images=10, dark_noise=-0.1))


def test_generated_datamodule_batches(tmp_path: Path) -> None:
    dm = GeneratedDermatologyDataModule(
        num_images=40, generated_size=32, root=str(tmp_path), image_size=32, batch_size=8
    )
    assert dm.num_classes == 2 and dm.class_names == ["benign", "malignant"] and dm.input_shape == (3, 32, 32)
    assert dm.group_attributes == ["skin_tone", "sex", "age_band"]
    assert dm.group_names["skin_tone"] == ["dark", "light"] and dm.group_names["age_band"] == ["<60", "60+"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 3, 32, 32) and batch["y"].dtype.is_floating_point is False
    assert batch["group"].shape == (8, 3) and int(batch["group"].max()) <= 1
    table = dm.table
    stages = {stage: set(table[table.stage == stage].patient) for stage in ("train", "val", "test")}
    assert all(stages[s] for s in stages)
    assert not (stages["train"] & stages["val"]) and not (stages["train"] & stages["test"])
    test_rows = table[table.stage == "test"]
    codes = dm.group_codes(test_rows)
    names = [dm.group_names["skin_tone"][c] for c in codes[:, 0]]
    assert names == list(test_rows.skin_tone)


def test_generated_datamodule_planted_overrides(tmp_path: Path) -> None:
    dm = GeneratedDermatologyDataModule(
        num_images=40, generated_size=32, root=str(tmp_path), image_size=32, planted={"dark_fraction": 0.6}
    )
    assert (
        dm.spec.dark_fraction == 0.6 and dm.spec.key() != DermatologySpec(num_images=40, image_size=32).key()
    )
    with pytest.raises(ValueError, match=r"Unknown `planted` field\(s\) \['dark_fractoin'\]"):
        GeneratedDermatologyDataModule(num_images=40, root=str(tmp_path), planted={"dark_fractoin": 0.5})
    with pytest.raises(ValueError, match="generation_seed"):
        GeneratedDermatologyDataModule(num_images=40, root=str(tmp_path), planted={"seed": 3})
    with pytest.raises(ValueError, match="dark_fraction"):
        GeneratedDermatologyDataModule(num_images=40, root=str(tmp_path), planted={"dark_fraction": 1.5})


def test_few_shot_keeps_k_training_images_per_class_and_whole_eval_splits(tmp_path: Path) -> None:
    options = dict(num_images=80, generated_size=32, root=str(tmp_path), image_size=32, batch_size=4)
    whole = GeneratedDermatologyDataModule(**options).table
    few = GeneratedDermatologyDataModule(**options, shots_per_class=3)
    table = few.table
    train = table[table.stage == "train"]
    assert train.label.value_counts().to_dict() == {"benign": 3, "malignant": 3}
    assert set(train.path) <= set(whole[whole.stage == "train"].path)  # drawn from the same training split
    for stage in ("val", "test"):
        assert list(table[table.stage == stage].path) == list(whole[whole.stage == stage].path)
    again = GeneratedDermatologyDataModule(**options, shots_per_class=3).table
    assert list(again[again.stage == "train"].path) == list(train.path)  # seeded
    few.setup()
    assert len(few.datasets["train"]) == 6 and sum(len(b["y"]) for b in few.train_dataloader()) == 6
    with pytest.raises(
        ValueError,
        match=r"`shots_per_class`=500 but the training split has only 24 image\(s\) of class 'benign'",
    ):
        _ = GeneratedDermatologyDataModule(**options, shots_per_class=500).table
    with pytest.raises(ValueError, match="`shots_per_class` must be >= 1"):
        GeneratedDermatologyDataModule(**options, shots_per_class=0)


def test_manifest_datamodule_splits_by_patient(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), i * 8, dtype=np.uint8)).save(path)
        rows.append(
            {"image": f"img/{i}.png", "label": "ab"[i % 2], "patient": f"p{i // 3}", "site": "xy"[i % 2]}
        )
    csv = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    dm = ManifestDataModule(
        str(csv), attributes=["site"], image_size=16, batch_size=4, test_fraction=0.3, val_fraction=0.2
    )
    table = dm.table
    for patient, stages in table.groupby("patient").stage.unique().items():
        assert len(stages) == 1, patient
    batch = next(iter(dm.test_dataloader()))
    assert batch["x"].shape == (4, 3, 16, 16) and batch["group"].shape == (4, 1)
    with pytest.raises(ValueError, match="test_fraction"):
        ManifestDataModule(str(csv), test_fraction=1.5)


def test_patient_split_holds_out_whole_patients() -> None:
    patients = ["a", "a", "b", "c", "c", "d"]
    keep, held = patient_split(patients, 0.5, seed=0)
    assert sorted([*keep, *held]) == list(range(6))
    assert not ({patients[i] for i in keep} & {patients[i] for i in held})
    with pytest.raises(ValueError, match="patient"):
        patient_split(["a", "a"], 0.5, seed=0)


def test_medical_datamodules_are_the_core_manifest_datamodule_with_medical_layouts(tmp_path: Path) -> None:
    dm = GeneratedDermatologyDataModule(
        num_images=40, generated_size=32, root=str(tmp_path), image_size=32, batch_size=8
    )
    assert isinstance(dm, manifest_data.ManifestDataModule) and dm.split_by == "patient"
    assert dm.mean == (0.485, 0.456, 0.406) and dm.hparams["num_images"] == 40
    check_groups(dm)
    table = dm.table
    test_rows = table[table.stage == "test"]
    batches = list(dm.test_dataloader())
    assert torch.cat([b["group"] for b in batches]).tolist() == dm.group_codes(test_rows).tolist()
    assert torch.cat([b["y"] for b in batches]).tolist() == test_rows.y.tolist()
    broken = test_rows.path.iloc[1]
    Path(broken).write_bytes(b"not an image")
    fresh = GeneratedDermatologyDataModule(
        num_images=40, generated_size=32, root=str(tmp_path), image_size=32, batch_size=8
    )
    line = int(fresh.table.line[fresh.table.path == broken].iloc[0])
    with pytest.raises(ImageDecodeError, match=rf"manifest\.csv, line {line}: Cannot decode {broken}"):
        list(fresh.test_dataloader())
