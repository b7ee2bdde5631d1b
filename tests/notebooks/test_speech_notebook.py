"""``notebooks/speech_whisper_lora.ipynb`` runs end to end at a small scale (papermill) and is committed clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "speech_whisper_lora.ipynb"
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


def test_committed_clean_with_parameters() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and all(f"{name} =" in tagged[0].source for name in SMALL_SCALE)


def test_speech_notebook(tmp_path: Path, kernel_name: str) -> None:
    results_csv = tmp_path / "results.csv"
    executed = papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "speech_whisper_lora.ipynb"),
        parameters={
            **SMALL_SCALE,
            "RESULTS_CSV": str(results_csv),
            "RUN_DIR": str(tmp_path / "runs"),
            "CACHE_DIR": str(tmp_path / "cache"),
        },
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
    )
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
