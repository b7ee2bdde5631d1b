"""``notebooks/pointcloud_point_peft.ipynb`` runs end to end at a small scale (papermill) and is committed clean;
its benchmark section reads a JSON that the benchmark's own ``summarise`` wrote."""

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
pytest.importorskip("sklearn")

NAME = "pointcloud_point_peft.ipynb"
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "pointcloud.py"
COLUMNS = [
    "overall",
    "clean",
    "scan",
    "seen",
    "novel",
    "clean & seen",
    "clean & novel",
    "scan & seen",
    "scan & novel",
]
SMALL_SCALE = {
    "NUM_TRAIN": 8,  # one labelled scan per family
    "NUM_VAL": 8,
    "NUM_TEST": 8,  # every family once per test domain: each group has clouds
    "NUM_POINTS": 128,
    "BATCH_SIZE": 8,
    "MAX_EPOCHS": 1,
    "SIZE": "tiny",
    "PRETRAINED": False,
    "METHODS": ["point_peft", "lora"],
    "TREES": 20,
    "N_BOOTSTRAP": 10,
    "N_SHOW": 1,
    "SEG_FAMILIES": ["table", "stool"],  # a seen and a novel family: 4 parts, so few report charts
    "SEG_NUM_TRAIN": 8,  # Point-PEFT's prior retrieves the top 8 training clouds
    "SEG_NUM_VAL": 2,
    "SEG_NUM_TEST": 2,
}


def _benchmark_module():
    """``benchmarks/pointcloud.py`` as a module (it imports its helpers from its own folder)."""
    if str(BENCHMARK.parent) not in sys.path:
        sys.path.append(str(BENCHMARK.parent))
    spec = importlib.util.spec_from_file_location("verticals_benchmark_pointcloud_notebook", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_benchmark(path: Path) -> None:
    """A results JSON in the layout the benchmark writes (its argument names, its ``summarise``), with planted
    figures: Point-PEFT exactly 0.05 above full fine-tuning on every seed and group, no different from the
    forest (paired differences 0.03, 0, -0.02), and the best on scans."""
    benchmark = _benchmark_module()
    offsets = {"domain=clean": 0.05, "domain=scan": -0.05, "novelty=seen": 0.02, "novelty=novel": -0.06}
    levels = {
        "point_peft": 0.80,
        "dapt": 0.78,
        "lora": 0.74,
        "bottleneck": 0.76,
        "linear_probe": 0.6,
        "full": 0.75,
    }
    runs = []
    for seed in (0, 1, 2):
        wobble = 0.01 * seed
        for method in (*benchmark.DEEP_METHODS, benchmark.BASELINE):
            if method == "descriptor_forest":
                level = levels["point_peft"] + wobble - (0.03, 0.0, -0.02)[seed]
            else:
                level = levels[method] + wobble
            forest = method == "descriptor_forest"
            runs.append({
                "method": method, "seed": seed, "phase": "eval", "learning_rate": math.nan if forest else 0.001,
                "best_val_accuracy": level, "accuracy": level,
                "accuracy_by_group": {column: level + offset for column, offset in offsets.items()},
                "trainable": 0 if forest else (60_000 if method != "full" else 1_500_000),
                "trainable_percent": math.nan if forest else (4.0 if method != "full" else 101.0),
                "adapter_parameters": 0 if forest else 50_000, "backbone_parameters": None if forest else 1_480_000,
                "seconds_per_step": math.nan if forest else 0.2 + wobble, "wall_seconds": 60.0,
            })  # fmt: skip
    arguments = vars(benchmark.parse_args([]))
    results = {
        "command": "",
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


def test_pointcloud_notebook(tmp_path: Path, run_notebook, monkeypatch: pytest.MonkeyPatch) -> None:
    # One thread in the kernel: on a busy 2-core machine two threads spin-wait on each other (about 3x slower).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path / "cache"))  # nothing pretrains at this scale
    results_csv = tmp_path / "results.csv"
    benchmark_json = tmp_path / "pointcloud.json"
    _fake_benchmark(benchmark_json)
    parameters = {
        **SMALL_SCALE,
        "RESULTS_CSV": str(results_csv),
        "RUN_DIR": str(tmp_path / "runs"),
        "BENCHMARK_JSON": str(benchmark_json),
    }
    executed = run_notebook(NAME, parameters)

    # classification: every method (and the forest) x every column, from the runs' group reports
    results = pd.read_csv(results_csv, keep_default_na=False, na_values=["", "nan", "NaN"])
    methods = [*SMALL_SCALE["METHODS"], "descriptor_forest"]
    expected = {(method, column) for method in methods for column in COLUMNS}
    assert set(zip(results.method, results.column)) == expected and len(results) == len(expected)
    for key in ("accuracy", "low", "high"):
        assert results[key].notna().all() and results[key].between(0, 1).all(), key
    assert (results.low <= results.high).all()
    clouds = results.set_index(["method", "column"]).clouds
    accuracy = results.pivot(index="method", columns="column", values="accuracy")
    test_clouds = SMALL_SCALE["NUM_TEST"]
    for method in methods:  # the groups are the test split's: the same counts and consistent means for all
        assert clouds[method, "overall"] == 2 * test_clouds
        assert clouds[method, "clean"] == clouds[method, "scan"] == test_clouds
        assert clouds[method, "seen"] + clouds[method, "novel"] == 2 * test_clouds
        assert clouds[method, "novel"] == 2 * 2  # stool and airplane, once per domain
        row = accuracy.loc[method]
        assert math.isclose(row["overall"], (row["clean"] + row["scan"]) / 2, abs_tol=1e-9)  # paired domains
        seen, novel = clouds[method, "seen"], clouds[method, "novel"]
        assert math.isclose(
            row["overall"], (seen * row["seen"] + novel * row["novel"]) / (seen + novel), abs_tol=1e-9
        )
    overall = results[results.column == "overall"].set_index("method")
    deep = overall.loc[SMALL_SCALE["METHODS"]]
    assert (deep.trainable > deep.adapter_parameters).all() and (deep.adapter_parameters > 0).all()
    assert (deep.trainable_percent > 0).all() and (deep.seconds_per_step > 0).all() and (deep.steps > 0).all()
    assert overall.adapter_parameters["lora"] < overall.adapter_parameters["point_peft"]
    forest = overall.loc["descriptor_forest"]
    assert forest.trainable == 0 and math.isnan(forest.trainable_percent)
    for method, run_dir in deep.run_dir.items():  # each run saved its method's adapter in peft's format
        run = Path(run_dir)
        assert (run / "metrics.csv").is_file(), run
        assert (
            json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == method.upper()
        )

    # part segmentation: mIoU per column for both families, one seen and one novel
    segmentation = pd.read_csv(results_csv.with_name("segmentation.csv")).set_index("column")
    assert list(segmentation.index) == COLUMNS
    main = segmentation.loc[["overall", "clean", "scan", "seen", "novel"]]
    assert main.miou.notna().all() and main.miou.between(0, 1).all()
    assert (
        main.clouds["overall"] == 2 * SMALL_SCALE["SEG_NUM_TEST"]
        and main.clouds["seen"] == main.clouds["novel"]
    )
    assert (tmp_path / "runs" / "shapes_partseg_point_peft").is_dir()

    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    # clean vs scanned grid, patches, frozen retrieval, accuracy vs trainable %, seen vs novel, part predictions
    assert len(figures) >= 6
    text = "".join(output.get("text", "") for output in outputs)
    assert "verticals run pointcloud/shapes_point_peft --seed_everything 0" in text
    assert "Highest accuracy on scanned test shapes among the adapted backbones:" in text
    assert "Part segmentation, Point-PEFT on 2 families (4 parts)" in text
    assert "Full-scale benchmark (" in text and "seeds [0, 1, 2]" in text
    assert "Point-PEFT − full on scans: 0.050 [0.050, 0.050], Point-PEFT better" in text
    assert "Point-PEFT − descriptor_forest on scans: 0.003 [" in text
    assert "no difference shown" in text.split("Point-PEFT − descriptor_forest on scans:")[1].split("\n")[0]
    assert "Point-PEFT trains 60,000 parameters (4.00% of the backbone" in text
    assert "Highest mean accuracy on scans at full scale: point_peft" in text
    assert "scanobjectnn_point_mae_point_peft" in text and "point_mae_pretrain.pth" in text
