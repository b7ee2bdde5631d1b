"""Tests for the time-series readers and datamodules, on tiny files in the real formats."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from verticals.domains.timeseries.data import (
    BUNDLED_FORECASTING_SERIES,
    SHIPPED_UCR_DATASETS,
    CSVClassificationDataModule,
    ForecastingDataModule,
    UCRDataModule,
    normalization_mode,
    read_csv_series,
    read_ts_file,
    standardize_channels,
    validate_series,
    znormalize,
)

LOGGER = "verticals.domains.timeseries.data"


def write_ts(
    path: Path,
    cases: list[str],
    labels: list[str],
    *,
    univariate: bool = True,
    dimensions: int = 1,
    equal_length: bool = True,
    missing: bool = False,
    class_labels: str | None = None,
) -> Path:
    """Write a .ts file as the UCR/UEA archive does: comments, @-header, then one case per line."""
    header = [
        "# A tiny test problem in the UCR/UEA .ts format.",
        f"@problemName {path.stem.split('_')[0]}",
        "@timeStamps false",
        f"@missing {str(missing).lower()}",
        f"@univariate {str(univariate).lower()}",
    ]
    if not univariate:
        header.append(f"@dimensions {dimensions}")
    header.append(f"@equalLength {str(equal_length).lower()}")
    if class_labels is None:
        class_labels = "true " + " ".join(dict.fromkeys(labels))
    header += [f"@classLabel {class_labels}", "@data"]
    body = [f"{case}:{label}" if label else case for case, label in zip(cases, labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + body) + "\n", encoding="utf-8")
    return path


UNIVARIATE = ["1.0,2.0,3.0,4.0", "4.0,3.0,2.0,1.0", "0.5,0.5,1.5,1.5", "2.0,1.0,2.0,1.0"]
MULTIVARIATE = [
    "1,2,3:10,20,30",
    "3,2,1:30,20,10",
    "0,0,1:5,5,6",
    "1,1,0:6,6,5",
]


def write_archive(root: Path, name: str = "Toy", n_train: int = 10, n_test: int = 6) -> Path:
    """A <root>/<name>/<name>_TRAIN.ts / _TEST.ts pair, two classes with distinct shapes."""
    rng = np.random.default_rng(0)

    def cases(n: int) -> tuple[list[str], list[str]]:
        lines, labels = [], []
        for i in range(n):
            up = i % 2 == 0
            series = np.linspace(0, 1, 8) * (1 if up else -1) * (i + 1) + rng.normal(0, 0.01, 8)
            lines.append(",".join(f"{v:.5f}" for v in series))
            labels.append("Up" if up else "Down")
        return lines, labels

    write_ts(root / name / f"{name}_TRAIN.ts", *cases(n_train), class_labels="true Up Down")
    write_ts(root / name / f"{name}_TEST.ts", *cases(n_test), class_labels="true Up Down")
    return root


# -- read_ts_file ---------------------------------------------------------------------------
def test_read_ts_univariate(tmp_path):
    x, y = read_ts_file(write_ts(tmp_path / "Uni_TRAIN.ts", UNIVARIATE, ["a", "b", "a", "b"]))
    assert x.shape == (4, 1, 4) and x.dtype == np.float32
    assert x[1, 0].tolist() == [4.0, 3.0, 2.0, 1.0]
    assert y.tolist() == ["a", "b", "a", "b"]


def test_read_ts_multivariate_keeps_label_spelling(tmp_path):
    labels = ["Walking", "Running", "Walking", "Running"]
    x, y = read_ts_file(
        write_ts(tmp_path / "Multi_TRAIN.ts", MULTIVARIATE, labels, univariate=False, dimensions=2)
    )
    assert x.shape == (4, 2, 3)
    assert x[0, 1].tolist() == [10.0, 20.0, 30.0]
    assert y.tolist() == labels  # sktime's parser lower-cases; the reader restores @classLabel spelling


def test_read_ts_unequal_length_pads_with_last_value_and_logs(tmp_path, caplog):
    cases = ["1,2,3,4,5", "7,8", "1,1,2"]
    path = write_ts(tmp_path / "Uneq_TRAIN.ts", cases, ["x", "y", "x"], equal_length=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        x, _ = read_ts_file(path)
    assert x.shape == (3, 1, 5)
    assert x[1, 0].tolist() == [7, 8, 8, 8, 8]
    assert x[2, 0].tolist() == [1, 1, 2, 2, 2]
    assert "right-padded 2 of 3 series to length 5" in caplog.text


def test_read_ts_missing_value_names_file_series_channel_and_time(tmp_path):
    cases = ["1,2,3:1,2,3", "1,2,3:4,?,6", "1,2,3:1,2,3"]
    path = write_ts(
        tmp_path / "Gap_TRAIN.ts", cases, ["a", "b", "a"], univariate=False, dimensions=2, missing=True
    )
    with pytest.raises(ValueError) as error:
        read_ts_file(path)
    message = str(error.value)
    assert str(path) in message
    assert "series 1" in message and "channel 1" in message and "time index 1" in message
    assert "Imputer" in message and "drop" in message


def test_read_ts_empty_channel_and_unlabelled_file_are_errors(tmp_path):
    path = write_ts(
        tmp_path / "Empty_TRAIN.ts", ["1,2:3,4", ":5,6"], ["a", "b"], univariate=False, dimensions=2
    )
    with pytest.raises(ValueError, match=r"series 1 .*channel 0 is empty"):
        read_ts_file(path)
    unlabelled = write_ts(tmp_path / "NoLabel_TRAIN.ts", ["1,2", "3,4"], ["", ""], class_labels="false")
    with pytest.raises(ValueError, match="no class labels"):
        read_ts_file(unlabelled)
    with pytest.raises(FileNotFoundError, match="nowhere.ts"):
        read_ts_file(tmp_path / "nowhere.ts")


def test_read_ts_malformed_file_is_a_value_error(tmp_path):
    path = write_ts(tmp_path / "Bad_TRAIN.ts", ["1,2:3,4", "3,4"], ["a", "b"], univariate=False, dimensions=2)
    with pytest.raises(ValueError, match=r"Bad_TRAIN\.ts: not a valid .ts file .*dimensions"):
        read_ts_file(path)
    undeclared = write_ts(
        tmp_path / "Undeclared_TRAIN.ts", ["1,2", "3,4"], ["a", "zzz"], class_labels="true a b"
    )
    with pytest.raises(ValueError, match=r"labels \['zzz'\] are not among those declared"):
        read_ts_file(undeclared)


# -- read_csv_series ------------------------------------------------------------------------
def test_read_csv_univariate_with_shorter_rows(tmp_path, caplog):
    path = tmp_path / "series.csv"
    path.write_text("label,t0,t1,t2,t3\nup,1,2,3,4\ndown,4,3,,\nup,0,1,2,3\n")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        x, y = read_csv_series(path)
    assert x.shape == (3, 1, 4)
    assert x[1, 0].tolist() == [4, 3, 3, 3]
    assert y.tolist() == ["up", "down", "up"]
    assert "right-padded 1 of 3" in caplog.text


def test_read_csv_multivariate_groups_rows_by_id(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text(
        "id,channel,label,t0,t1,t2\n"
        "s1,acc,walk,1,2,3\n"
        "s1,gyro,walk,10,20,30\n"
        "s2,gyro,run,40,50,60\n"
        "s2,acc,run,4,5,6\n"
    )
    x, y = read_csv_series(path, channel_column="channel", id_column="id")
    assert x.shape == (2, 2, 3)
    assert x[1, 0].tolist() == [4, 5, 6] and x[1, 1].tolist() == [
        40,
        50,
        60,
    ]  # channel order: first appearance
    assert y.tolist() == ["walk", "run"]


def test_read_csv_gap_names_line_and_column(tmp_path):
    path = tmp_path / "gap.csv"
    path.write_text("label,t0,t1,t2\na,1,2,3\nb,1,,3\n")
    with pytest.raises(ValueError) as error:
        read_csv_series(path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message and "'t1'" in message and "Imputer" in message


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("label,t0\na,1\n,2\n", {}, "line 3 has no value in label column 'label'"),
        ("label,t0,t1\na,1,x\n", {}, r"line 2, column 't1' holds 'x'"),
        ("y,t0\na,1\n", {}, "`label_column` 'label' is not a column"),
        ("label,ch,t0\na,c1,1\n", {"channel_column": "ch"}, "needs `id_column`"),
        (
            "id,ch,label,t0\ns1,c1,a,1\ns1,c2,a,2\ns2,c1,b,3\n",
            {"channel_column": "ch", "id_column": "id"},
            r"id='s2' has channels \['c1'\]",
        ),
        (
            "id,ch,label,t0\ns1,c1,a,1\ns1,c2,b,2\n",
            {"channel_column": "ch", "id_column": "id"},
            "conflicting labels",
        ),
        ("id,label,t0\ns1,a,1\ns1,b,2\n", {"id_column": "id"}, "repeats an id"),
        ("label,t0,t1\na,1,2\nb,,\n", {}, "line 3 has no values"),
    ],
)
def test_read_csv_errors(tmp_path, text, kwargs, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_csv_series(path, **kwargs)


# -- validate_series / znormalize -----------------------------------------------------------
def test_validate_series_reports_first_bad_value():
    x = np.zeros((3, 2, 5))
    x[2, 1, 3] = np.inf
    x[2, 1, 4] = np.nan
    with pytest.raises(
        ValueError, match=r"src\.ts: series 2 .*channel 1, time index 3 is infinite; 2 non-finite"
    ):
        validate_series(x, "src.ts")
    validate_series(np.zeros((3, 2, 5)), "ok", np.array(["a", "b", "a"]))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((0, 1, 4)), None, "contains no series"),
        (np.zeros((2, 1, 0)), None, "series are empty"),
        (np.zeros((2, 4)), None, r"\[N, channels, length\]"),
        (np.zeros((2, 1, 4)), np.array(["a"]), "2 series but 1 labels"),
        (np.zeros((2, 1, 4)), np.array(["a", ""]), "series 1 has no label"),
        (np.zeros((2, 1, 4)), np.array(["a", None], dtype=object), "series 1 has no label"),
    ],
)
def test_validate_series_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        validate_series(x, "src", y)


def test_znormalize_per_series_per_channel_over_observed_steps():
    x = np.array([[[1.0, 2.0, 3.0, 3.0], [5.0, 5.0, 5.0, 5.0]]])
    out = znormalize(x, lengths=np.array([[3, 4]]))
    observed = out[0, 0, :3]
    assert abs(observed.mean()) < 1e-6 and abs(observed.std(ddof=1) - 1) < 1e-6
    assert out[0, 0, 3] == out[0, 0, 2]  # the padded step stays equal to the last observed one
    assert np.all(out[0, 1] == 0)  # a constant channel becomes zeros, not NaN
    full = znormalize(np.random.default_rng(0).normal(3, 2, size=(5, 2, 50)))
    assert np.allclose(full.mean(axis=2), 0, atol=1e-5) and np.allclose(
        full.std(axis=2, ddof=1), 1, atol=1e-5
    )


def test_standardize_channels_uses_train_statistics_and_keeps_amplitude():
    rng = np.random.default_rng(0)
    x_train = np.concatenate([rng.normal(0, 1, (4, 2, 30)), rng.normal(0, 5, (4, 2, 30))])
    x_test = rng.normal(0, 5, (3, 2, 30))
    train, test = standardize_channels(x_train, x_test)
    pooled = train.transpose(1, 0, 2).reshape(2, -1)
    assert np.allclose(pooled.mean(axis=1), 0, atol=1e-5) and np.allclose(
        pooled.std(axis=1, ddof=1), 1, atol=1e-4
    )
    quiet, loud = train[:4].std(), train[4:].std()
    assert loud > 3 * quiet  # per-series z-normalisation would make these equal
    mean = x_train.transpose(1, 0, 2).reshape(2, -1).mean(axis=1)
    std = x_train.transpose(1, 0, 2).reshape(2, -1).std(axis=1, ddof=1)
    assert np.allclose(test, (x_test - mean[None, :, None]) / std[None, :, None], atol=1e-5)  # TRAIN stats
    padded = np.array([[[1.0, 3.0, 3.0]], [[5.0, 7.0, 9.0]]])
    out, _ = standardize_channels(padded, padded, train_lengths=np.array([[2], [3]]))
    observed = np.array([1.0, 3.0, 5.0, 7.0, 9.0])  # the padded step is left out of the statistics
    assert np.isclose(out[1, 0, 0], (5.0 - observed.mean()) / observed.std(ddof=1), atol=1e-6)
    constant, _ = standardize_channels(np.full((2, 1, 4), 3.0), np.full((1, 1, 4), 4.0))
    assert np.all(constant == 0)


@pytest.mark.parametrize("given, mode", [(True, "series"), (False, "none"), ("dataset", "dataset")])
def test_normalization_mode_accepts_booleans_and_names(given, mode):
    assert normalization_mode(given) == mode


def test_normalization_mode_rejects_unknown_names():
    with pytest.raises(ValueError, match="'instance'.*series"):
        normalization_mode("instance")


# -- UCRDataModule --------------------------------------------------------------------------
def test_ucr_from_root_lazy_properties_and_batches(tmp_path):
    dm = UCRDataModule("Toy", root=str(write_archive(tmp_path)), batch_size=4, val_fraction=0.2)
    assert (dm.num_classes, dm.num_channels, dm.series_length) == (2, 1, 8)
    assert dm.class_names == ["Down", "Up"] and dm.input_shape == (1, 8)
    assert dm.train_dataset is None
    dm.setup("fit")
    assert len(dm.train_dataset) == 8 and len(dm.val_dataset) == 2
    assert sorted(dm.val_dataset.y.tolist()) == [0, 1]  # stratified
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 1, 8) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (4,) and batch["y"].dtype == torch.long
    x = dm.arrays.x_train
    assert np.allclose(x.mean(axis=2), 0, atol=1e-5) and np.allclose(x.std(axis=2, ddof=1), 1, atol=1e-4)
    dm.setup("test")
    assert sum(len(b["y"]) for b in dm.test_dataloader()) == 6


def test_ucr_normalize_false_keeps_raw_values(tmp_path):
    root = write_archive(tmp_path)
    dm = UCRDataModule("Toy", root=str(root), normalize=False)
    raw, _ = read_ts_file(root / "Toy" / "Toy_TRAIN.ts")
    assert np.array_equal(dm.arrays.x_train, raw)
    pooled = UCRDataModule("Toy", root=str(root), normalize="dataset").arrays.x_train
    assert abs(pooled.mean()) < 1e-5 and not np.allclose(pooled.std(axis=2), pooled.std(axis=2)[0, 0])


def test_ucr_pads_train_and_test_to_one_length(tmp_path):
    write_ts(
        tmp_path / "U" / "U_TRAIN.ts",
        ["1,2,3", "3,2", "1,2", "2,1"],
        ["a", "b", "a", "b"],
        equal_length=False,
    )
    write_ts(tmp_path / "U" / "U_TEST.ts", ["1,2,3,4,5", "5,4"], ["a", "b"], equal_length=False)
    dm = UCRDataModule("U", root=str(tmp_path), normalize=False, val_fraction=0.0)
    assert dm.series_length == 5
    assert dm.arrays.x_train[1, 0].tolist() == [3, 2, 2, 2, 2]
    assert dm.arrays.x_test[1, 0].tolist() == [5, 4, 4, 4, 4]
    normalized = UCRDataModule("U", root=str(tmp_path)).arrays.x_train
    observed = normalized[0, 0, :3]  # statistics come from the observed steps only
    assert abs(observed.mean()) < 1e-6 and abs(observed.std(ddof=1) - 1) < 1e-5


def test_ucr_reads_the_ucr_2018_tsv_layout(tmp_path):
    folder = tmp_path / "Tsv"
    folder.mkdir()
    (folder / "Tsv_TRAIN.tsv").write_text(
        "1\t1.0\t2.0\t3.0\n2\t3.0\t2.0\tNaN\n1\t0.0\t1.0\t2.0\n2\t2.0\t1.0\t0.0\n"
    )
    (folder / "Tsv_TEST.tsv").write_text("1\t1.0\t2.0\t3.0\n2\t3.0\t2.0\t1.0\n")
    dm = UCRDataModule("Tsv", root=str(tmp_path), normalize=False, val_fraction=0.5)
    assert dm.input_shape == (1, 3) and dm.class_names == ["1", "2"]
    assert dm.arrays.x_train[1, 0].tolist() == [3, 2, 2]


def test_ucr_errors_name_what_is_expected(tmp_path):
    with pytest.raises(ValueError) as error:
        UCRDataModule("Adiac")
    assert all(name in str(error.value) for name in SHIPPED_UCR_DATASETS) and "root" in str(error.value)

    with pytest.raises(FileNotFoundError, match=r"does not exist; expected .*nowhere/Toy/Toy_TRAIN\.ts"):
        UCRDataModule("Toy", root=str(tmp_path / "nowhere"))

    write_ts(tmp_path / "Half" / "Half_TRAIN.ts", UNIVARIATE, ["a", "b", "a", "b"])
    with pytest.raises(FileNotFoundError) as error:
        UCRDataModule("Half", root=str(tmp_path))
    assert str(tmp_path / "Half" / "Half_TEST") + ".ts" in str(error.value)
    missing = str(error.value).split("missing ")[1].split(". Expected")[0]
    assert "Half_TEST" in missing and "Half_TRAIN" not in missing


def test_ucr_rejects_regression_problems(tmp_path):
    for split in ("TRAIN", "TEST"):
        write_ts(
            tmp_path / "Reg" / f"Reg_{split}.ts", ["1,2,3", "3,2,1"], ["0.5", "1.5"], class_labels="true"
        )
        text = (
            (tmp_path / "Reg" / f"Reg_{split}.ts")
            .read_text()
            .replace("@classLabel true", "@targetLabel true")
        )
        (tmp_path / "Reg" / f"Reg_{split}.ts").write_text(text)
    with pytest.raises(ValueError, match="regression problem"):
        UCRDataModule("Reg", root=str(tmp_path)).num_classes  # noqa: B018


def test_ucr_bundled_gunpoint():
    dm = UCRDataModule("gunpoint")  # shipped names match case-insensitively
    raw = UCRDataModule("GunPoint", normalize=False)
    assert np.allclose(
        dm.arrays.x_train, raw.arrays.x_train, atol=1e-4
    )  # the archive is already z-normalised
    assert (dm.num_classes, dm.num_channels, dm.series_length) == (2, 1, 150)
    assert len(dm.arrays.x_train) == 50 and len(dm.arrays.x_test) == 150
    assert dm.class_names == ["1", "2"]
    train_idx, val_idx = dm.split_indices
    assert (len(train_idx), len(val_idx)) == (40, 10)


def test_ucr_bundled_basicmotions_is_multivariate():
    dm = UCRDataModule("BasicMotions", batch_size=8)
    assert (dm.num_classes, dm.num_channels, dm.series_length) == (4, 6, 100)
    assert dm.class_names == ["Badminton", "Running", "Standing", "Walking"]
    assert (len(dm.arrays.x_train), len(dm.arrays.x_test)) == (40, 40)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 6, 100) and batch["y"].dtype == torch.long


# -- CSVClassificationDataModule ------------------------------------------------------------
def test_csv_datamodule(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        rows = [
            f"{i},{ch},{'pos' if i % 2 else 'neg'}," + ",".join(f"{v:.4f}" for v in rng.normal(size=6))
            for i in range(n)
            for ch in ("a", "b", "c")
        ]
        (tmp_path / f"{split}.csv").write_text(
            "sid,sensor,label,t0,t1,t2,t3,t4,t5\n" + "\n".join(rows) + "\n"
        )
    dm = CSVClassificationDataModule(
        str(tmp_path / "train.csv"),
        str(tmp_path / "test.csv"),
        channel_column="sensor",
        id_column="sid",
        batch_size=3,
        val_fraction=0.25,
    )
    assert (dm.num_classes, dm.num_channels, dm.series_length) == (2, 3, 6)
    assert dm.class_names == ["neg", "pos"]
    dm.setup()
    assert len(dm.val_dataset) == 3
    assert next(iter(dm.train_dataloader()))["x"].shape == (3, 3, 6)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        CSVClassificationDataModule(str(tmp_path / "train.csv"), str(tmp_path / "missing.csv"))


# -- ForecastingDataModule ------------------------------------------------------------------
def test_forecasting_airline_windows_stay_inside_their_split():
    dm = ForecastingDataModule(
        "airline", context_length=24, horizon=6, test_size=24, val_size=12, batch_size=8
    )
    assert (dm.num_channels, dm.context_length, dm.horizon) == (1, 24, 6)
    assert dm.input_shape == (1, 24) and dm.output_shape == (1, 6)
    val_start, test_start = dm.split_bounds
    assert (val_start, test_start) == (144 - 36, 144 - 24)
    train, val, test = (dm.window_starts(s) for s in ("train", "val", "test"))
    assert train.max() + dm.horizon <= val_start  # no training target reaches the validation period
    assert val.min() >= val_start and val.max() + dm.horizon <= test_start
    assert test.min() >= test_start and test.max() + dm.horizon == 144
    assert train.min() == 24 and val.min() - dm.context_length < val_start  # val context reaches back
    assert (len(train), len(val), len(test)) == (108 - 24 - 6 + 1, 12 - 6 + 1, 24 - 6 + 1)

    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 1, 24) and batch["y"].shape == (8, 1, 6)
    assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.float32
    loaded = list(dm.test_dataloader())
    predicted = list(dm.predict_dataloader())
    assert sum(len(b["x"]) for b in predicted) == len(test) and torch.equal(predicted[0]["x"], loaded[0]["x"])
    first = loaded[0]
    values = torch.from_numpy(dm.values)
    assert torch.equal(first["x"][0], values[:, test_start - 24 : test_start])
    assert torch.equal(first["y"][0], values[:, test_start : test_start + 6])
    # normalised with training-period statistics; inverse_transform restores passengers
    assert abs(dm.values[0, :val_start].mean()) < 1e-5
    restored = dm.inverse_transform(first["y"][0])
    raw = BUNDLED_FORECASTING_SERIES["airline"]().to_numpy()
    assert np.allclose(restored.numpy()[0], raw[test_start : test_start + 6], rtol=1e-5)


def test_forecasting_train_targets_never_enter_the_val_period():
    dm = ForecastingDataModule("airline", normalize=False)
    val_start, _ = dm.split_bounds
    dm.setup()
    raw = torch.from_numpy(dm.values)
    targets_end = []
    for batch in dm.train_dataloader():
        for y in batch["y"]:
            matches = [
                s for s in range(raw.shape[1] - dm.horizon + 1) if torch.equal(raw[:, s : s + dm.horizon], y)
            ]
            targets_end.append(max(matches) + dm.horizon)
    assert max(targets_end) <= val_start


def test_forecasting_csv_multichannel(tmp_path):
    t = np.arange(60)
    lines = [f"2020-01-{i % 28 + 1:02d},{np.sin(i):.5f},{np.cos(i):.5f}" for i in t]
    path = tmp_path / "sensors.csv"
    path.write_text("date,a,b\n" + "\n".join(lines) + "\n")
    dm = ForecastingDataModule(
        csv_path=str(path),
        context_length=10,
        horizon=5,
        test_size=10,
        val_size=5,
        batch_size=4,
        normalize=False,
    )
    assert dm.num_channels == 2 and dm.channel_names == ["a", "b"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 2, 10) and batch["y"].shape == (4, 2, 5)
    only_b = ForecastingDataModule(
        csv_path=str(path), value_columns=["b"], context_length=10, horizon=5, test_size=10, val_size=5
    )
    assert only_b.num_channels == 1 and only_b.channel_names == ["b"]


def test_forecasting_errors(tmp_path):
    with pytest.raises(ValueError) as error:
        ForecastingDataModule("sunspots")
    assert all(name in str(error.value) for name in BUNDLED_FORECASTING_SERIES)

    short = ForecastingDataModule("shampoo_sales")  # 36 points
    with pytest.raises(ValueError, match=r"has 36 points.*context_length 36 \+ horizon 12.*at least 96"):
        short.num_channels  # noqa: B018

    path = tmp_path / "gappy.csv"
    path.write_text("step,load\n" + "\n".join(f"{i},{'' if i == 17 else i}" for i in range(80)) + "\n")
    with pytest.raises(ValueError) as error:
        ForecastingDataModule(csv_path=str(path), value_columns=["load"]).num_channels  # noqa: B018
    message = str(error.value)
    assert "row 17 (line 19" in message and "'load'" in message and str(path) in message

    with pytest.raises(ValueError, match=r"`value_columns` \['nope'\] not found"):
        ForecastingDataModule(csv_path=str(path), value_columns=["nope"]).num_channels  # noqa: B018
    with pytest.raises(ValueError, match="`test_size`"):
        ForecastingDataModule(horizon=12, test_size=6)
    with pytest.raises(ValueError, match="`val_size`"):
        ForecastingDataModule(horizon=12, val_size=6)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        ForecastingDataModule(csv_path=str(tmp_path / "missing.csv"))


def test_forecasting_zero_val_size_warns(caplog):
    dm = ForecastingDataModule("airline", val_size=0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loader = dm.val_dataloader()
    assert "validation runs on the training windows" in caplog.text
    assert len(loader.dataset) == len(dm.window_starts("train"))


@pytest.mark.parametrize("name", ["lynx", "pbs", "uschange", "solar"])
def test_other_bundled_series_load_offline(name):
    dm = ForecastingDataModule(name, context_length=12, horizon=4, test_size=12, val_size=4)
    assert dm.num_channels == 1 and dm.values.shape[1] > 60
