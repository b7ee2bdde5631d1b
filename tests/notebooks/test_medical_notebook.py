"""``notebooks/medical_fairness.ipynb`` runs end to end at a small scale (papermill) and is committed clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")
pytest.importorskip("open_clip")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "medical_fairness.ipynb"
SMALL_SCALE = {"NUM_IMAGES": 80, "GENERATED_SIZE": 32, "IMAGE_SIZE": 32, "MAX_EPOCHS": 1, "N_BOOTSTRAP": 30}


def test_committed_clean_with_parameters() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and all(f"{name} =" in tagged[0].source for name in SMALL_SCALE)


def test_medical_fairness_notebook(tmp_path: Path, kernel_name: str) -> None:
    results_csv = tmp_path / "results.csv"
    executed = papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "medical_fairness.ipynb"),
        parameters={**SMALL_SCALE, "RESULTS_CSV": str(results_csv)},
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
    )
    results = pd.read_csv(results_csv)
    assert list(results.method) == ["zero-shot CLIP", "LoRA", "fair LoRA (CLUB)"]
    assert results.overall_auroc.between(0, 1).all() and (results.gap_low <= results.gap_high).all()
    assert {"ece_dark", "ece_light"} <= set(results.columns)
    assert (results.trainable_percent > 0).all()
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 6
    assert "worst-group ECE" in "".join(output.get("text", "") for output in outputs)
