"""Every packaged remote-sensing config runs through the CLI (fit, test, report) on a tiny random tile ViT and a
few 32-px tiles: the report names mIoU per artefact type (the group of every report), each method trains what
it should, and the exported adapters of the verticals-registered methods reload with stock peft."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import PeftModel

from verticals.core.cli import packaged_configs, run_cli

pytest.importorskip("timm")

TILE = 32
# What each packaged tile-ViT config trains besides the head: "adapter" (a small adapter), "head" (decoder
# only), "all" (full fine-tuning).
TILE_CONFIGS = {
    "remote_sensing/tile_vit_bottleneck": "adapter",
    "remote_sensing/tile_vit_convpass": "adapter",
    "remote_sensing/tile_vit_decoder_only": "head",
    "remote_sensing/tile_vit_full": "all",
    "remote_sensing/tile_vit_lora": "adapter",
    "remote_sensing/tile_vit_mofa": "adapter",
    "remote_sensing/tile_vit_mofa_nosplit": "adapter",
}
RELOADED = {"remote_sensing/tile_vit_mofa", "remote_sensing/tile_vit_convpass"}


# The configs for real data a user brings (torchgeo layouts), run here on tiny files in those layouts.
REAL_DATA_CONFIGS = ("remote_sensing/eurosat_vit_lora", "remote_sensing/loveda_dinov2_mofa")


def test_every_packaged_config_is_covered() -> None:
    packaged = {name for name in packaged_configs() if name.startswith("remote_sensing/")}
    assert packaged == set(TILE_CONFIGS) | set(REAL_DATA_CONFIGS)


def _model_args(name: str) -> dict[str, Any]:
    config = yaml.safe_load(packaged_configs()[name].read_text())
    args = dict(config["model"]["init_args"]["model_args"])
    args.pop("feature_blocks", None)  # the tiny ViT has 2 blocks
    return args | {"backbone": "tile_vit_tiny", "pretrained": False}


def _options(name: str) -> list[str]:
    """The config's adapter options, with the frequency layers of the 6-block ViT mapped to the tiny one's."""
    adapter = yaml.safe_load(packaged_configs()[name].read_text())["model"]["init_args"]["adapter"]
    options = dict(adapter.get("options") or {})
    if "frequency_modules" in options:
        options["frequency_modules"] = ["blocks.0"]
    return ["--model.init_args.adapter.options", json.dumps(options)] if options else []


@pytest.mark.parametrize("name", sorted(TILE_CONFIGS))
def test_tile_config_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli = run_cli(
        [
            "run", name,
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--model.init_args.model_args", json.dumps(_model_args(name)),
            "--model.init_args.report_bootstrap", "10",
            *_options(name),
            "--data.init_args.tile_size", str(TILE),
            "--data.init_args.num_train", "8",
            "--data.init_args.num_val", "4",
            "--data.init_args.num_test", "2",
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    for file in ("report.json", "report.md", "groups.json", "groups.md", "config.yaml"):
        assert (run / file).is_file(), file
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["test"]["test_miou"] <= 1.0
    _assert_linear_probe_beside(run, "miou")  # the practitioner's baseline, on the same tiles
    groups = json.loads((run / "groups.json").read_text())["groupings"]["artefact"]["groups"]
    assert set(groups) == {"clean", "stripes", "haze", "noise", "jpeg", "colour"}
    for row in groups.values():
        assert 0.0 <= row["miou"]["value"] <= 1.0

    parameters = report["parameters"]
    task = cli.model
    head = sum(
        p.numel()
        for n, p in task.model.named_parameters()
        if "decode_head" in n and "original_module" not in n and p.requires_grad
    )
    expected = TILE_CONFIGS[name]
    if expected == "all":
        assert parameters["trainable"] == parameters["total"]
    elif expected == "head":
        assert parameters["trainable"] == head > 0
    else:
        assert head < parameters["trainable"] < 0.5 * parameters["total"]
    if name in RELOADED:
        _assert_reloads(cli, run / "adapter")


def _assert_reloads(cli: Any, adapter: Path) -> None:
    """Stock peft puts the exported adapter back on the backbone without it (the random tiny backbone of this
    run, unwrapped from a copy): equal outputs."""
    trained = cli.model.model.eval()
    fresh = copy.deepcopy(trained).unload()  # the base model as built: adapters gone, the head untrained
    reloaded = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    x = torch.rand(2, 4, TILE, TILE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained(x), rtol=1e-5, atol=1e-5)


def _quick(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.init_args.report_bootstrap", "10",
    ]  # fmt: skip


def test_loveda_config_runs_on_a_tiny_loveda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LoveDA config unchanged but for the backbone (no DINOv2 file here: the tiny random ViT), the crop
    and the batch: torchgeo reads the release layout, no-data is ignored, mIoU is reported per scene."""
    pytest.importorskip("torchgeo")
    from verticals.domains.remote_sensing.torchgeo_data import write_tiny_loveda

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    root = write_tiny_loveda(tmp_path / "loveda", images_per_folder=3, size=32)
    model_args = {"backbone": "tile_vit_tiny", "pretrained": False, "head": "fpn", "head_dim": 16}
    cli = run_cli(
        [
            "run", "remote_sensing/loveda_dinov2_mofa", *_quick(tmp_path),
            "--model.init_args.model_args", json.dumps(model_args),
            "--model.init_args.adapter.options", json.dumps({"bottleneck_dim": 4, "frequency_modules": ["blocks.0"]}),
            "--data.init_args.root", str(root),
            "--data.init_args.patch_size", "32",
            "--data.init_args.val_fraction", "0.34",
            "--data.init_args.batch_size", "2",
        ]
    )  # fmt: skip
    assert cli.model.hparams["ignore_index"] == 0 and cli.model.metric_labels == list(range(1, 8))
    network = cli.model.model
    assert type(network.base_model).__name__ == "MoFAModel"
    run = Path(cli.trainer.log_dir)
    groups = json.loads((run / "groups.json").read_text())["groupings"]["scene"]["groups"]
    assert set(groups) == {"urban", "rural"}
    _assert_linear_probe_beside(run, "miou")


def test_eurosat_config_runs_on_a_tiny_eurosat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The EuroSAT config unchanged but for the backbone (no torchgeo weights file here): 13 bands in,
    10 classes out, LoRA on the attention, the head trained."""
    pytest.importorskip("torchgeo")
    from verticals.domains.remote_sensing.torchgeo_data import write_tiny_eurosat

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    root = write_tiny_eurosat(tmp_path / "eurosat", per_class=(1, 1, 1), size=16)
    model_args = {"backbone": "tile_vit_tiny", "pretrained": False}
    cli = run_cli(
        [
            "run", "remote_sensing/eurosat_vit_lora", *_quick(tmp_path),
            "--model.init_args.model_args", json.dumps(model_args),
            "--data.init_args.root", str(root),
            "--data.init_args.batch_size", "4",
        ]
    )  # fmt: skip
    assert cli.model.hparams["num_classes"] == 10 and list(cli.model.hparams["input_shape"]) == [13, 16, 16]
    assert type(cli.model.model.base_model).__name__ == "LoraModel"
    assert (Path(cli.trainer.log_dir) / "report.json").is_file()
    _assert_linear_probe_beside(Path(cli.trainer.log_dir), "accuracy")


def _assert_linear_probe_beside(run: Path, metric: str) -> None:
    """The report holds the linear probe on the frozen ViT, scored like the run on the same test samples."""
    report = json.loads((run / "report.json").read_text())
    baseline = report["baseline"]
    assert baseline["name"] == "linear probe (frozen ViT)" and "skipped" not in baseline, baseline
    assert baseline["metric"] == metric and 0.0 <= baseline["baseline"] <= 1.0
    assert baseline["adapter"] == pytest.approx(report["test"][f"test_{metric}"], abs=1e-6)
