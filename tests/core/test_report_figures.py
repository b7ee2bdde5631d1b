"""The pieces of a run report, without a run: intervals, the learning curve read from metrics.csv, every
plot, the data's name and sizes, the kept test outputs and the model cards."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread
from torch import nn
from torch.utils.data import DataLoader

from verticals.core.adapters.api import adapt
from verticals.core.adapters.io import save_adapter
from verticals.core.data import BaseDataModule, dataset_name_of
from verticals.core.model_card import adapter_card, backbone_license, front_matter, hub_model_id, tag_of
from verticals.core.report import _markdown, describe_data, split_size
from verticals.core.report_figures import (
    best_epoch,
    bootstrap_column_means,
    curve_metric,
    nan_mean_over_columns,
    percentile_bounds,
    read_learning_curve,
    stratified_means,
)
from verticals.core.report_outputs import ReportOutputs, per_sample_tensors
from verticals.core.report_plots import (
    plot_confusion_matrix,
    plot_forecasts,
    plot_intervals,
    plot_learning_curve,
    plot_overlays,
)
from verticals.core.tasks.segmentation import REPORT_VIEW_SIDE, report_views


# -- intervals --------------------------------------------------------------------------------------------
def test_bootstrap_means_are_weighted_means_of_multinomial_resamples():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(30, 3))
    values[::4, 1] = np.nan  # a class absent from some samples
    values[:, 2] = np.nan  # and one never present
    point, draws = bootstrap_column_means(values, 50, seed=5)
    np.testing.assert_allclose(point[:2], np.nanmean(values[:, :2], axis=0))
    assert np.isnan(point[2]) and np.isnan(draws[:, 2]).all()
    counts = np.random.default_rng(5).multinomial(30, np.full(30, 1 / 30), size=50)
    for row, weights in enumerate(counts):  # the same resamples, one by one
        resample = np.repeat(values[:, 1], weights)
        assert draws[row, 1] == pytest.approx(np.nanmean(resample))
    again = bootstrap_column_means(values, 50, seed=5)[1]
    np.testing.assert_array_equal(np.nan_to_num(again), np.nan_to_num(draws))
    low, high = percentile_bounds(draws)
    assert low[0] < point[0] < high[0]
    np.testing.assert_allclose([low[0], high[0]], np.percentile(draws[:, 0], [2.5, 97.5]))


def test_many_resamples_are_drawn_in_chunks_with_the_same_result(monkeypatch):
    import verticals.core.report_figures as figures

    values = np.arange(40, dtype=float)
    whole = bootstrap_column_means(values, 30, seed=2)[1]
    monkeypatch.setattr(figures, "_CHUNK_CELLS", 100)  # 2 resamples of 40 rows per chunk
    chunked = bootstrap_column_means(values, 30, seed=2)[1]
    assert chunked.shape == (30, 1)
    np.testing.assert_allclose(chunked.mean(), whole.mean(), rtol=0.05)
    assert bootstrap_column_means(values, 0)[1].shape == (0, 1)


def test_stratified_means_resample_within_each_stratum():
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    strata = np.array([0, 0, 0, 1, 1, 1, 1])
    found = stratified_means(values, strata, ["a", "b", "empty"], 100)
    np.testing.assert_allclose(found.value[:2], [2 / 3, 0.5])
    assert list(found.count) == [3, 4, 0] and np.isnan(found.value[2]) and np.isnan(found.low[2])
    assert (found.low[:2] <= found.value[:2]).all() and (found.value[:2] <= found.high[:2]).all()
    assert found.high[0] <= 1.0  # a stratum's resamples hold only its own rows
    dice = np.array([[1.0, np.nan], [0.5, 0.0], [0.0, 1.0]])
    per_group = stratified_means(dice, np.array([0, 0, 1]), ["x", "y"], 20, combine=nan_mean_over_columns)
    np.testing.assert_allclose(per_group.value, [np.mean([0.75, 0.0]), 0.5])


# -- the learning curve -----------------------------------------------------------------------------------
def write_metrics(path: Path) -> Path:
    """A metrics.csv as a run resumed after epoch 0 leaves it: epoch 1's validation row logged twice (the
    second process redid it), a test row, a per-class column."""
    rows = [
        {"epoch": 0, "step": 0, "train_loss_step": 0.9},
        {"epoch": 0, "step": 1, "train_loss_step": 0.8},
        {
            "epoch": 0,
            "step": 1,
            "val_loss": 0.85,
            "val_accuracy": 0.5,
            "val_dice/a": 0.1,
            "train_loss_epoch": 0.85,
        },
        {"epoch": 1, "step": 2, "train_loss_step": 0.7},
        {"epoch": 1, "step": 3, "train_loss_step": 0.6},
        {"epoch": 1, "step": 3, "val_loss": 0.7, "val_accuracy": 0.55, "train_loss_epoch": 0.65},
        {"epoch": 1, "step": 3, "val_loss": 0.69, "val_accuracy": 0.6, "train_loss_epoch": 0.65},
        {"epoch": 2, "step": 4, "train_loss_step": 0.5},
        {"epoch": 2, "step": 5, "val_loss": 0.6, "val_accuracy": 0.58, "train_loss_epoch": 0.55},
        {"epoch": 2, "step": 5, "test_accuracy": 0.57, "test_loss": 0.61},
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_learning_curve_has_each_epoch_and_step_once_with_the_last_values(tmp_path):
    curve = read_learning_curve(write_metrics(tmp_path / "metrics.csv"))
    assert list(curve.epochs.index) == [0, 1, 2] and list(curve.steps.index) == [0, 1, 2, 3, 4]
    assert curve.epochs.loc[1, "val_accuracy"] == 0.6 and curve.epochs.loc[1, "val_loss"] == 0.69
    assert not [column for column in curve.epochs.columns if column.startswith("test_") or "/" in column]
    assert curve_metric(curve.epochs, "val_accuracy") == "val_accuracy"
    assert curve_metric(curve.epochs, "val_loss") == "val_accuracy"  # the loss is on the left panel
    assert best_epoch(curve.epochs, "val_accuracy", "max") == 1
    assert best_epoch(curve.epochs, "val_loss", "min") == 2
    assert best_epoch(curve.epochs, "val_missing", "min") is None
    with pytest.raises(ValueError, match="not a Lightning metrics.csv"):
        pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
        read_learning_curve(tmp_path / "other.csv")


# -- the plots --------------------------------------------------------------------------------------------
def saved(figure, path: Path) -> np.ndarray:
    figure.savefig(path, dpi=60)
    return imread(path)


def test_every_plot_draws(tmp_path):
    curve = read_learning_curve(write_metrics(tmp_path / "metrics.csv"))
    plots = {
        "curve": plot_learning_curve(curve.steps, curve.epochs, metric="val_accuracy", monitor="val_loss", best_epoch=2),
        "losses": plot_learning_curve(curve.steps, curve.epochs),
        "confusion": plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["no", "yes"]),
        "confusion_many": plot_confusion_matrix(np.eye(15, dtype=int), [f"c{i}" for i in range(15)]),
        "bars": plot_intervals(
            ["a", "b", "c"], [0.5, np.nan, 0.9], [0.4, np.nan, 0.8], [0.6, np.nan, 1.0],
            counts=[3, 0, 5], ylabel="recall", title="t", unit_interval=True, reference=0.7,
        ),
        "overlays_rgb": plot_overlays(
            np.random.rand(2, 3, 8, 10), np.zeros((2, 8, 10), int), np.ones((2, 4, 5), int),
            labels=[1], class_names=["thing"],
        ),
        "overlays_grey": plot_overlays(
            np.random.rand(1, 8, 8), np.eye(8, dtype=int)[None], np.eye(8, dtype=int)[None],
            labels=[0, 1], class_names=["rest", "diagonal"],
        ),
        "forecasts": plot_forecasts(np.random.rand(3, 2, 10), np.random.rand(3, 2, 4), np.random.rand(3, 2, 4)),
        "forecast_one": plot_forecasts(np.random.rand(1, 10), np.random.rand(1, 4), np.random.rand(1, 4)),
    }  # fmt: skip
    for name, figure in plots.items():
        assert saved(figure, tmp_path / f"{name}.png").shape[0] > 50, name
    assert len(plots["losses"].axes) == 1 and len(plots["curve"].axes) == 2
    assert "picked on val_loss" in plots["curve"].axes[1].get_title()


# -- naming the data --------------------------------------------------------------------------------------
class Named(BaseDataModule):
    def __init__(self, dataset: str = "Coffee", batch_size: int = 4) -> None:
        super().__init__(batch_size=batch_size)
        self.save_hyperparameters()


class SetsItsName(BaseDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.dataset_name = "tiles-v2"


def test_the_data_is_named_by_the_protocol():
    assert SetsItsName().dataset_name == "tiles-v2" == dataset_name_of(SetsItsName())
    assert Named().dataset_name == "Coffee"  # from the saved hyperparameters
    assert dataset_name_of(SimpleNamespace(dataset="GunPoint")) == "GunPoint"
    assert dataset_name_of(SimpleNamespace(dataset=lambda split: None)) == "SimpleNamespace"  # a method
    assert BaseDataModule().dataset_name == "Base"  # the class name less "DataModule"

    class PlainDataModule:  # no verticals base, no name anywhere
        pass

    assert dataset_name_of(PlainDataModule()) == "Plain"


def test_describe_data_counts_the_splits_without_loading_anything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    loader = DataLoader(list(range(12)), batch_size=4)
    assert split_size(loader) == 12 and split_size([loader, loader]) == 24 and split_size(None) is None
    datamodule = Named()
    datamodule.val_dataset = list(range(5))  # set by the datamodule's own setup
    trainer = SimpleNamespace(
        datamodule=datamodule, train_dataloader=None, val_dataloaders=None, test_dataloaders=loader
    )
    data = describe_data(trainer, splits={"train": 30}, tested=8)
    assert data == {
        "datamodule": f"{Named.__module__}.Named",
        "dataset": "Coffee",
        "splits": {"train": 30, "val": 5, "test": 12},
        "seed": 11,
        "datamodule_seed": 0,
        "tested": 8,
    }
    assert describe_data(SimpleNamespace(datamodule=None)) is None
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert describe_data(trainer)["seed"] is None


def test_report_names_the_data_and_lists_its_figures():
    report = {
        "task": "ClassificationTask",
        "model": "m",
        "adapter": {"method": "lora", "targets": "attention", "options": {}},
        "backbone": {"source": "s", "fingerprint": "f" * 64},
        "parameters": {"trainable": 10, "backbone": 100, "trainable_percent": 10.0},
        "adapter_file_bytes": 1,
        "best_validation": None,
        "timing": None,
        "test": {"test_accuracy": 0.5},
        "data": {
            "datamodule": "pkg.Data",
            "dataset": "Coffee",
            "splits": {"train": 20, "val": None, "test": 10},
            "seed": 4,
            "tested": 6,
        },
        "figures": ["learning_curve.png"],
        "figures_skipped": {"overlays.png": "point sets"},
    }
    markdown = _markdown(report)
    assert "- data: Coffee (`pkg.Data`); samples: train 20, val —, test 10 (6 tested)" in markdown
    assert "- seed: 4" in markdown
    assert "![learning curve](learning_curve.png)" in markdown
    assert "- not drawn: `overlays.png`: point sets" in markdown


# -- what a test keeps ------------------------------------------------------------------------------------
def test_examples_are_bounded_and_outputs_must_be_per_sample():
    kept = ReportOutputs(max_examples=5)
    task = SimpleNamespace(report_examples=None)
    for batch in range(3):
        task.report_examples = {"x": torch.full((4, 2, 3, 3), float(batch)), "truth": torch.zeros(4, 3, 3)}
        kept.add({"probs": torch.rand(4, 2), "target": torch.zeros(4, dtype=torch.long)}, task)
        assert task.report_examples is None  # taken, then cleared
    examples = kept.examples()
    assert examples["x"].shape == (5, 2, 3, 3) and examples["x"][4, 0, 0, 0] == 1.0
    kept.add({"other": torch.rand(4)}, task)  # another set of keys: left out, no error
    assert kept.skipped_batches == 1
    arrays = kept.compute()
    assert arrays["probs"].shape == (12, 2) and arrays["target"].shape == (12,)
    assert per_sample_tensors({"a": torch.zeros(3), "b": torch.zeros(2)}) == {}  # not one row per sample
    assert per_sample_tensors(None) == {} and per_sample_tensors({"group": torch.zeros(3)})[
        "group"
    ].shape == (3, 1)
    kept.reset()
    assert kept.compute() == {} and kept.examples() == {}
    with pytest.raises(ValueError, match="max_examples"):
        ReportOutputs(max_examples=-1)


def test_segmentation_views_are_2d_and_small():
    volume = torch.arange(2 * 1 * 5 * 4 * 4, dtype=torch.float32).reshape(2, 1, 5, 4, 4)
    masks = torch.zeros(2, 5, 4, 4, dtype=torch.long)
    views = report_views(volume, masks, masks, "volume")
    torch.testing.assert_close(views["x"], volume[:, :, 2])  # the middle slice
    assert views["truth"].shape == (2, 4, 4)
    assert report_views(torch.zeros(2, 3, 30), torch.zeros(2, 30), torch.zeros(2, 30), "points") is None
    large = report_views(
        torch.zeros(1, 3, 600, 300), torch.zeros(1, 600, 300), torch.zeros(1, 600, 300), "image"
    )
    assert (
        max(large["x"].shape[-2:]) <= REPORT_VIEW_SIDE and large["truth"].shape[-2:] == large["x"].shape[-2:]
    )


# -- model cards ------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4))
        self.backbone.pretrained_cfg = {"license": "apache-2.0"}
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_card_metadata():
    assert hub_model_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert (
        hub_model_id("tiny-bert") is None
        and hub_model_id("/abs/path/x") is None
        and hub_model_id(None) is None
    )
    assert backbone_license(Net()) == "apache-2.0" and backbone_license(nn.Linear(2, 2)) is None
    assert front_matter({"a": 1, "b": None, "c": []}) == "---\na: 1\n---\n"


def test_a_saved_adapter_carries_a_card_not_peft_template(tmp_path):
    peft_model = adapt(Net(), "lora", targets=["backbone.0"], trainable=["head"], r=2)
    folder = save_adapter(peft_model, tmp_path / "lora")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\ntags:\n- verticals\n- lora\n")
    assert "## How to load" in card and "PeftModel.from_pretrained" in card
    assert "More Information Needed" not in card
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    probe = adapt(Net(), "linear_probe", targets=None, trainable=["head"])
    folder = save_adapter(probe, tmp_path / "probe")
    card = (folder / "README.md").read_text()
    assert "trainable.safetensors" in card and "library_name" not in card
    assert card == adapter_card(probe)


def test_dataset_names_become_hub_tags() -> None:
    assert tag_of("generated point-cloud shapes (clean and scanned)") == "generated-point-cloud-shapes-clean-and-scanned"
    assert tag_of("GunPoint") == "gunpoint"
    assert tag_of("  MNI152 2009a tissue maps (nilearn) ") == "mni152-2009a-tissue-maps-nilearn"
