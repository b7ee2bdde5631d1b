"""What every notebook test shares: the Jupyter kernel (this interpreter, registered for the test only),
the committed-executed check and the papermill run."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

KERNEL_NAME = "verticals-test-python"


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec for this interpreter, visible only to this test."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "verticals tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # keep the kernel's inline backend: figures are checked
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return KERNEL_NAME


# Notebooks whose full-scale run has not been committed yet (a 2-core CPU could not run them in the session
# that made the others; notebooks/README.md says so). They stay committed without outputs until then: a
# partial or smoke run is never committed in their place.
AWAITING_FULL_RUN: dict[str, str] = {}


def _assert_committed_executed(name: str, parameter_names: Iterable[str]) -> None:
    notebook_path = NOTEBOOKS / name
    notebook = nbformat.read(notebook_path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if name in AWAITING_FULL_RUN:
        clean = all(not cell.outputs and cell.execution_count is None for cell in code)
        assert clean, f"{notebook_path.name} awaits its full-scale run: commit it clean or executed in full"
        _assert_parameters(notebook_path.name, code, parameter_names)
        return
    counts = [cell.execution_count for cell in code]
    assert all(counts) and counts == sorted(counts), (
        f"{notebook_path.name} must be committed executed top to bottom (a full-scale run; see notebooks/README.md)"
    )
    outputs = [output for cell in code for output in cell.outputs]
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, f"{notebook_path.name} was committed with an error: {errors[0].get('ename')}"
    assert any("image/png" in output.get("data", {}) for output in outputs), (
        f"{notebook_path.name} shows no figure to a reader who does not run it"
    )
    recorded = notebook.metadata.get("papermill", {}).get("parameters", {})
    small = {key: value for key, value in recorded.items() if key in SMALL_ONLY and SMALL_ONLY[key] == value}
    assert not small, f"{notebook_path.name} was committed from a smoke run ({small}); commit a full-scale run"
    _assert_parameters(notebook_path.name, code, parameter_names)


def _assert_parameters(file_name: str, code: list[Any], parameter_names: Iterable[str]) -> None:
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{file_name} needs exactly one cell tagged 'parameters' (papermill)"
    for name in parameter_names:
        assert f"{name} =" in tagged[0].source, f"{file_name}: the parameters cell lacks {name}"


# Parameters that only a smoke run sets: a committed notebook whose papermill record holds one of them shows
# a random or tiny model's numbers.
SMALL_ONLY = {
    "ENCODER": "tiny-bert",
    "SOURCE": "tiny-random",
    "PRETRAINED": False,
    "BACKBONE": "tile_vit_tiny",
    "SIZE": "tiny",
}


@pytest.fixture
def assert_committed_executed() -> Callable[[str, Iterable[str]], None]:
    """``assert_committed_executed("name.ipynb", names)``: ``notebooks/name.ipynb`` is valid, committed with
    the outputs of a full-scale run (every cell executed in order, no error, at least one figure), and has one
    ``parameters`` cell that sets every small-scale name."""
    return _assert_committed_executed


@pytest.fixture
def run_notebook(tmp_path: Path, kernel_name: str) -> Callable[[str, dict[str, Any]], Any]:
    """``run_notebook("name.ipynb", parameters)``: papermill runs ``notebooks/name.ipynb`` in the test's kernel
    with ``tmp_path`` as its working directory; returns the executed notebook."""
    import papermill

    def run(name: str, parameters: dict[str, Any]) -> Any:
        return papermill.execute_notebook(
            str(NOTEBOOKS / name),
            str(tmp_path / name),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(tmp_path),
            progress_bar=False,
        )

    return run
