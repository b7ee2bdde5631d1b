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
    methods = ["zero_shot", "lora_qv", "control", "s2lora", "adalora"]
    for test_set in (
        "held_out_sentences",
        "in_template",
        "held_out_voices",
    ):  # every method on every test set
        assert list(results.loc[results.test_set == test_set, "method"]) == methods
    first = results[results.test_set == "held_out_sentences"].set_index("method")
    assert first.trainable["s2lora"] < first.trainable["lora_qv"] == first.trainable["control"]
    assert (results.low_clear <= results.wer_clear).all() and (results.wer_noisy <= results.high_noisy).all()
    assert (first.adapter_bytes.drop("zero_shot") > 0).all()
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    data = [output.get("data", {}) for output in outputs]
    assert sum("image/png" in d for d in data) >= 3  # the data, the WER per test set, the control's shares
    assert any("text/html" in d and "<audio" in d["text/html"] for d in data)
    assert any("share of the gain [95% CI]" in d.get("text/html", "") for d in data)
    text = "".join(output.get("text", "") for output in outputs)
    assert "worst condition" in text and "test words that never occur in the training text" in text
