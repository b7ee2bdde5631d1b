"""``verticals run`` on the default job's config (tiny encoder): the report names the dataset, its splits and
the seed, draws its figures, fills the adapter's card; resumed, its learning curve has every epoch once."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from verticals.core.cli import run_cli
from verticals.core.report_figures import read_learning_curve

pytestmark = pytest.mark.domains  # the timeseries domain's packaged config and data (see conftest.py)


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _run(root, epochs: int, *extra: str) -> dict:
    run_cli(
        [
            "run",
            "timeseries/gunpoint_lora",
            "--model.init_args.model_args",
            "{encoder: tiny-bert, num_layers: 2}",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.limit_train_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--seed_everything",
            "5",
            *extra,
        ]
    )
    return json.loads((root / "version_0" / "report.json").read_text())


def test_run_names_its_data_draws_its_figures_and_a_resumed_curve_has_every_epoch_once(tmp_path):
    _run(tmp_path, 1)
    report = _run(tmp_path, 3, "--ckpt_path", "last")
    run = tmp_path / "version_0"
    assert not (tmp_path / "version_1").exists()
    data = report["data"]
    assert data["dataset"] == "GunPoint" and data["datamodule"].endswith("timeseries.data.UCRDataModule")
    assert data["splits"] == {"train": 40, "val": 10, "test": 150} and data["seed"] == 5
    assert {"learning_curve.png", "confusion_matrix.png", "per_class.png"} <= set(report["figures"])
    assert all((run / name).read_bytes()[:4] == b"\x89PNG" for name in report["figures"])
    assert "GunPoint" in (run / "report.md").read_text()
    assert list(read_learning_curve(run / "metrics.csv").epochs.index) == [0, 1, 2]
    card = (run / "adapter" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and "gunpoint" in front["tags"]  # the dataset as a Hub tag (lower case, hyphens)
    assert "train 40, val 10, test 150" in card and "PeftModel.from_pretrained" in card
