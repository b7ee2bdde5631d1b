"""``notebooks/speech_whisper_lora.ipynb`` runs end to end at a small scale (papermill) and is committed clean."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

NAME = "speech_whisper_lora.ipynb"
SMALL_SCALE = {
    "SOURCE": "tiny-random",
    "CONDITIONS": ["clear", "noisy"],
    "TRAIN_PER_CONDITION": 2,
    "VAL_PER_CONDITION": 1,
    "TEST_PER_CONDITION": 2,
    "MAX_SOURCE_POSITIONS": 250,
    "BATCH_SIZE": 2,
    "MAX_EPOCHS": 1,
    "N_BOOTSTRAP": 20,
}


def test_committed_executed_with_parameters(assert_committed_executed) -> None:
    assert_committed_executed(NAME, SMALL_SCALE)


def test_speech_notebook(tmp_path: Path, run_notebook) -> None:
    results_csv = tmp_path / "results.csv"
    parameters = {
        **SMALL_SCALE,
        "RESULTS_CSV": str(results_csv),
        "RUN_DIR": str(tmp_path / "runs"),
        "CACHE_DIR": str(tmp_path / "cache"),
    }
    executed = run_notebook(NAME, parameters)
    results = pd.read_csv(results_csv)
    assert list(results.method) == ["zero_shot", "lora_qv", "s2lora", "adalora"]
    assert (
        results.loc[results.method == "s2lora", "trainable"].item()
        < results.loc[results.method == "lora_qv", "trainable"].item()
    )
    assert (results.low_clear <= results.wer_clear).all() and (results.wer_noisy <= results.high_noisy).all()
    assert (results.adapter_bytes[1:] > 0).all()
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    data = [output.get("data", {}) for output in outputs]
    assert sum("image/png" in d for d in data) >= 2
    assert any("text/html" in d and "<audio" in d["text/html"] for d in data)
    assert "worst condition" in "".join(output.get("text", "") for output in outputs)
