"""``notebooks/medical_fairness.ipynb`` runs end to end at a small scale (papermill) and is committed clean."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")
pytest.importorskip("open_clip")

NAME = "medical_fairness.ipynb"
SMALL_SCALE = {"NUM_IMAGES": 80, "GENERATED_SIZE": 32, "IMAGE_SIZE": 32, "MAX_EPOCHS": 1, "N_BOOTSTRAP": 30}


def test_committed_executed_with_parameters(assert_committed_executed) -> None:
    assert_committed_executed(NAME, SMALL_SCALE)


def test_medical_fairness_notebook(tmp_path: Path, run_notebook) -> None:
    results_csv = tmp_path / "results.csv"
    executed = run_notebook(NAME, {**SMALL_SCALE, "RESULTS_CSV": str(results_csv)})
    results = pd.read_csv(results_csv)
    assert list(results.method) == ["zero-shot CLIP", "LoRA", "fair LoRA (CLUB)", "group-DRO"]
    assert results.overall_auroc.between(0, 1).all() and (results.gap_low <= results.gap_high).all()
    assert {"ece_dark", "ece_light"} <= set(results.columns)
    assert results.worst_group_auroc.between(0, 1).all()
    assert results.trainable_percent.iloc[0] == 0  # zero-shot trains nothing
    assert (results.trainable_percent.iloc[1:] > 0).all() and (results.trainable_percent < 100).all()
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 6
    assert "worst-group ECE" in "".join(output.get("text", "") for output in outputs)
