"""Every packaged medical classification config runs through the CLI (fit, test the best checkpoint, report) at
tiny size. The SAM segmentation configs have their own test (``test_sam_configs.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verticals.core.cli import packaged_configs, run_cli

pytest.importorskip("open_clip")
MEDICAL = sorted(
    name
    for name in packaged_configs()
    if name.startswith("medical/") and not name.split("/")[1].startswith(("litemedsam_", "sam_"))
)


def test_the_issue_configs_are_packaged() -> None:
    for name in ("biomedclip_zero_shot", "biomedclip_lora", "efficientnet_lora", "efficientnet_scratch"):
        assert f"medical/{name}" in MEDICAL


@pytest.mark.parametrize("name", MEDICAL)
def test_config_runs(name: str, tmp_path: Path) -> None:
    epochs = "0" if name.endswith("zero_shot") else "1"
    cli = run_cli(
        [
            "run", name,
            "--trainer.max_epochs", epochs,
            "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--data.init_args.root", str(tmp_path / "data"),
            "--data.init_args.num_images", "24",
            "--data.init_args.generated_size", "32",
            "--data.init_args.batch_size", "4",
            *(["--data.init_args.shots_per_class", "2", "--trainer.check_val_every_n_epoch", "1"]
              if "few_shot" in name else []),
        ]
    )
    report = json.loads((Path(cli.trainer.log_dir) / "report.json").read_text())
    assert 0.0 <= report["test"]["test_accuracy"] <= 1.0
    assert report["parameters"]["trainable"] > 0
    if name.endswith("_lora"):
        assert report["parameters"]["trainable_percent"] < 10.0
    if "few_shot" in name:
        assert cli.datamodule.shots_per_class == 2 and len(cli.datamodule.datasets["train"]) == 4
    # The practitioner's baseline beside it on the same test images (tests/domains/medical/test_baseline.py).
    baseline = report["baseline"]
    assert "skipped" not in baseline, baseline
    expected = "zero-shot" if "biomedclip" in name else "linear probe (ImageNet features)"
    assert baseline["name"] == expected
    assert baseline["adapter"] == pytest.approx(report["test"]["test_accuracy"])
    itself = name.endswith("zero_shot") or name == "medical/efficientnet_linear_probe"
    assert baseline.get("is_config", False) is itself
    # Every medical config, plain or fairness-aware, writes the per-group report at test end.
    fairness = json.loads((Path(cli.trainer.log_dir) / "fairness.json").read_text())
    assert {row["grouping"] for row in fairness["fairness"]["groups"]} >= {"skin_tone", "sex"}
    assert (Path(cli.trainer.log_dir) / "reliability.png").stat().st_size > 0
