"""Every worked notebook runs end to end at a small scale (papermill), and is committed executed at full scale.

The notebooks run in a kernel of *this* interpreter: a kernel spec pointing at ``sys.executable`` is written
into ``tmp_path`` and found first through ``JUPYTER_PATH``, so nothing is registered globally and a user-level
``python3`` kernel of another environment cannot shadow it. Each notebook writes its runs under ``tmp_path``
(the kernel's working directory) and its results table to a CSV path given as a parameter.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

# One entry per notebook: the parameters of its small CI scale (full-scale defaults live in the notebook).
SMALL_SCALE: dict[str, dict[str, object]] = {
    "timeseries_adaptation.ipynb": {
        "ENCODER": "tiny-bert",
        "DATASETS": ["GunPoint", "BasicMotions"],  # univariate and multivariate
        "METHODS": ["lora", "bottleneck", "full"],  # a peft method, a verticals method, a regime
        "MAX_EPOCHS": 2,
    },
}


@pytest.mark.parametrize("name", sorted(SMALL_SCALE))
def test_notebook_is_committed_executed(name: str, assert_committed_executed) -> None:
    assert_committed_executed(name, SMALL_SCALE[name])


def test_timeseries_adaptation(tmp_path: Path, run_notebook) -> None:
    results_csv = tmp_path / "results.csv"
    parameters = {**SMALL_SCALE["timeseries_adaptation.ipynb"], "RESULTS_CSV": str(results_csv)}
    executed = run_notebook("timeseries_adaptation.ipynb", parameters)

    results = pd.read_csv(results_csv)
    expected = {(d, m) for d in parameters["DATASETS"] for m in [*parameters["METHODS"], "dtw"]}
    assert set(zip(results.dataset, results.method)) == expected
    assert results.accuracy.between(0, 1).all()
    assert (results.ci_low <= results.accuracy).all() and (results.accuracy <= results.ci_high).all()
    trained = results[results.method != "dtw"]
    assert (trained.trainable_percent > 0).all() and (trained.train_seconds > 0).all()
    assert (trained.epochs == parameters["MAX_EPOCHS"]).all()
    full = trained[trained.method == "full"].set_index("dataset").trainable_percent
    lora = trained[trained.method == "lora"].set_index("dataset").trainable_percent
    assert (lora < full).all()
    for run_dir in trained.run_dir:  # runs land under the kernel's working directory
        run = tmp_path / run_dir
        assert (run / "metrics.csv").is_file() and (run / "adapter").is_dir(), run

    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 4  # examples, accuracy bars, accuracy vs trainable %, training curves
    text = "".join(output.get("text", "") for output in outputs)
    assert "Highest test accuracy among the trained methods" in text
