"""The remote-sensing baseline: a linear probe on the frozen ViT beside every ViT run, on the same test tiles;
a config that trains only a linear head on the frozen encoder is that baseline, decoder-only training is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from verticals.core.baseline import baselines_for
from verticals.core.cli import run_cli
from verticals.core.tasks import ClassificationTask, SegmentationTask
from verticals.domains.remote_sensing import baseline

pytest.importorskip("timm")


def _context(task_class: type, method: str, head: str | None) -> SimpleNamespace:
    """A task as a config declares it (no network is built before a Trainer runs it)."""
    adapter = {"method": method, "targets": "attention" if method == "lora" else None}
    if method == "linear_probe":
        adapter["trainable"] = ["decode_head" if task_class is SegmentationTask else "head"]
    model_args = {"backbone": "tile_vit_tiny", **({"head": head} if head else {})}
    return SimpleNamespace(
        task=task_class(model="remote_sensing.vit", model_args=model_args, adapter=adapter)
    )


@pytest.mark.parametrize(
    ("task_class", "method", "head", "itself"),
    [
        (SegmentationTask, "linear_probe", "linear", True),
        (SegmentationTask, "linear_probe", "fpn", False),  # tile_vit_decoder_only: a decoder learns
        (SegmentationTask, "lora", "linear", False),
        (ClassificationTask, "linear_probe", None, True),
        (ClassificationTask, "lora", None, False),
    ],
)
def test_which_config_is_the_baseline(task_class: type, method: str, head: str | None, itself: bool) -> None:
    assert baseline._is_linear_probe(_context(task_class, method, head)) is itself


def test_a_linear_head_on_the_frozen_encoder_is_its_own_baseline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    model_args = {"backbone": "tile_vit_tiny", "pretrained": False, "head": "linear"}
    cli = run_cli(
        [
            "run", "remote_sensing/tile_vit_decoder_only",
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--model.init_args.model_args", json.dumps(model_args),
            "--data.init_args.tile_size", "32",
            "--data.init_args.num_train", "4",
            "--data.init_args.num_val", "2",
            "--data.init_args.num_test", "1",
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert [entry.name for entry in baselines_for(cli.model, cli.datamodule)] == ["linear probe (frozen ViT)"]
    report = json.loads((Path(cli.trainer.log_dir) / "report.json").read_text())
    entry = report["baseline"]
    assert entry["is_config"] is True and entry["metric"] == "miou"
    assert entry["adapter"] == pytest.approx(report["test"]["test_miou"], abs=1e-6)
