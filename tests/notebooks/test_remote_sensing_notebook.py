"""``notebooks/remote_sensing_earth_adapter.ipynb`` runs end to end at a small scale (papermill) and is committed
clean; its benchmark section reads a JSON that the benchmark's own ``summarise`` wrote."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")
pytest.importorskip("timm")

NAME = "remote_sensing_earth_adapter.ipynb"
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "remote_sensing.py"
ARTEFACTS = ["clean", "stripes", "haze", "noise", "jpeg", "colour"]
SMALL_SCALE = {
    "TILE_SIZE": 32,
    "NUM_TRAIN": 4,
    "NUM_VAL": 2,
    "NUM_TEST": 2,
    "BATCH_SIZE": 4,
    "MAX_EPOCHS": 1,
    "METHODS": ["mofa", "lora"],
    "BACKBONE": "tile_vit_tiny",
    "PRETRAINED": False,
    "N_BOOTSTRAP": 10,
    "N_SHOW": 1,
}


def _benchmark_module():
    """``benchmarks/remote_sensing.py`` as a module (it imports its helpers from its own folder)."""
    if str(BENCHMARK.parent) not in sys.path:
        sys.path.append(str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location("verticals_benchmark_remote_sensing_notebook", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_benchmark(path: Path) -> None:
    """A results JSON in the layout the benchmark writes (its argument names, its ``summarise``), with planted
    figures: MoFA 0.05 above LoRA on every seed and artefact, level with the no-split control."""
    benchmark = _benchmark_module()
    runs = []
    for seed in (0, 1, 2):
        wobble = 0.01 * seed
        for method, level in (("mofa", 0.70), ("mofa_nosplit", 0.70 - wobble + 0.01), ("lora", 0.65)):
            per_artefact = {name: level + 0.01 * index + wobble for index, name in enumerate(ARTEFACTS)}
            runs.append({
                "method": method, "seed": seed, "phase": "eval", "learning_rate": 0.003,
                "miou": level + wobble, "miou_per_artefact": per_artefact,
                "seconds_per_step": 0.1 + wobble, "trainable": 60_000, "trainable_percent": 4.5,
                "adapter_parameters": 52_047 if method != "lora" else 24_576, "backbone_parameters": 1_200_000,
                "router": {name: {"backbone.blocks.0": [0.2, 0.3, 0.5]} for name in ARTEFACTS}
                if method == "mofa" else None,
            })  # fmt: skip
    arguments = vars(benchmark.parse_args(["--methods", "mofa", "mofa_nosplit", "lora"]))
    results = {
        "command": "--methods mofa mofa_nosplit lora",
        "date": "2026-01-01 00:00 UTC",
        "arguments": {
            key: str(value) if isinstance(value, Path) else value for key, value in arguments.items()
        },
        "runs": runs,
        "summary": benchmark.summarise(runs),
        "figures": [],
    }
    path.write_text(json.dumps(results, indent=2, default=str))


def test_committed_executed_with_parameters(assert_committed_executed) -> None:
    assert_committed_executed(NAME, SMALL_SCALE)


def test_remote_sensing_notebook(tmp_path: Path, run_notebook, monkeypatch: pytest.MonkeyPatch) -> None:
    # One thread in the kernel: on a busy 2-core machine two threads spin-wait on each other (about 3x slower).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path / "cache"))  # nothing pretrains at this scale
    results_csv = tmp_path / "results.csv"
    benchmark_json = tmp_path / "remote_sensing.json"
    _fake_benchmark(benchmark_json)
    parameters = {
        **SMALL_SCALE,
        "RESULTS_CSV": str(results_csv),
        "RUN_DIR": str(tmp_path / "runs"),
        "BENCHMARK_JSON": str(benchmark_json),
    }
    executed = run_notebook(NAME, parameters)

    results = pd.read_csv(results_csv)
    expected = {
        (method, artefact) for method in SMALL_SCALE["METHODS"] for artefact in ["overall", *ARTEFACTS]
    }
    assert set(zip(results.method, results.artefact)) == expected and len(results) == len(expected)
    assert results.miou.between(0, 1).all()
    assert (results.miou_low <= results.miou + 1e-9).all() and (
        results.miou <= results.miou_high + 1e-9
    ).all()
    tiles = results.set_index(["method", "artefact"]).tiles
    assert tiles["mofa", "overall"] == len(ARTEFACTS) * SMALL_SCALE["NUM_TEST"]
    assert tiles["mofa", "stripes"] == SMALL_SCALE["NUM_TEST"]
    overall = results[results.artefact == "overall"].set_index("method")
    assert (overall.adapter_parameters > 0).all() and (overall.trainable > overall.adapter_parameters).all()
    assert overall.adapter_parameters["mofa"] != overall.adapter_parameters["lora"]
    assert (overall.seconds_per_step > 0).all()
    assert (
        overall.adapter_percent - 100 * overall.adapter_parameters / overall.backbone_parameters
    ).abs().max() < 1e-9

    router = pd.read_csv(results_csv.with_name("router.csv"))
    assert set(router.method) == {"mofa"} and set(router.artefact) == set(ARTEFACTS)
    assert set(router.layer) == {"blocks.0", "blocks.1"}  # the tiny ViT has 2 blocks: packaged 0-2 trimmed
    sums = router[["spatial", "low", "high"]].sum(axis=1)
    assert all(math.isclose(total, 1.0, rel_tol=1e-4) for total in sums)

    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    # tiles, spectra, token drift, mIoU bars, parameters scatter, overlays, router bars, router maps
    assert len(figures) >= 8
    text = "".join(output.get("text", "") for output in outputs)
    shown = text + "".join(output.get("data", {}).get("text/plain", "") for output in outputs)
    assert "Best overall test mIoU in this run:" in text
    assert "low-band share, token grid" in shown
    assert "Full-scale benchmark (" in text
    assert "MoFA − lora: overall 0.050 [0.050, 0.050], MoFA better" in text
    assert "MoFA − mofa_nosplit" in text and "not reproduced" in text
    assert "0.200 / 0.300 / 0.500" in shown or "0.20 / 0.30 / 0.50" in shown  # the full-scale router table
    assert "loveda_dinov2_mofa" in text and "vit_small_patch16_224_sentinel2_all_dino" in text
