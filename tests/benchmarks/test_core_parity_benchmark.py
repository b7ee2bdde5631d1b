"""The core parity script end to end on its cheapest packaged config (record, then compare with the record),
and its comparison helpers on tampered and fabricated records: a difference must be reported."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

# The cheapest packaged config at the script's small budget (~15 s a run on an idle core, most of it
# importing torch and Lightning in the run's own process); its test step and predict return several arrays.
CONFIG = "medical/biomedclip_fair_lora"
NPZ_NAME = "medical__biomedclip_fair_lora.npz"


@pytest.fixture(scope="module")
def parity(load_script):
    pytest.importorskip("open_clip")
    with load_script("core_parity") as module:
        yield module


@pytest.fixture(scope="module")
def recorded(parity: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--record`` and one ``--compare`` of ``CONFIG`` (two runs, each in its own process)."""
    folder = tmp_path_factory.mktemp("core_parity")
    record = folder / "before.json"
    record_argv = [
        "--record",
        str(record),
        "--configs",
        CONFIG,
        "--keep-workdir",
        str(folder / "work_before"),
    ]
    record_status = parity.main(record_argv)
    output = folder / "compared" / "parity.md"
    output.parent.mkdir()
    compare_argv = ["--compare", str(record), "--configs", CONFIG, "--output", str(output)]
    compare_argv += ["--keep-workdir", str(folder / "work_after")]
    compare_status = parity.main(compare_argv)
    return {
        "folder": folder,
        "record": record,
        "record_argv": record_argv,
        "record_status": record_status,
        "output": output,
        "compare_argv": compare_argv,
        "compare_status": compare_status,
    }


def _row(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} | "))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_record_keeps_every_test_metric_and_output_with_its_hash(parity, recorded) -> None:
    assert recorded["record_status"] == 0
    raw = json.loads(recorded["record"].read_text())
    assert raw["complete"] is True and raw["settings"] == {"seeds": None, "full_budget": False}
    assert raw["command"].startswith("python ") and raw["command"].endswith(
        "core_parity.py " + " ".join(recorded["record_argv"])
    ), "the command must be main()'s argv, not the test runner's"
    assert CONFIG in raw["environment"]["configs"] and raw["environment"]["torch_threads"] == 1
    assert list(raw["results"]) == [CONFIG]
    entry = raw["results"][CONFIG]
    assert entry["status"] == "ok", entry.get("error")
    assert entry["config"] == CONFIG and entry["seed"] is None
    assert entry["global_step"] == 3  # the small medical budget: 1 epoch x 3 batches
    assert entry["note"].startswith("160 generated images (32 px)")
    data_root = entry["argv"][entry["argv"].index("--data.init_args.root") + 1]
    assert Path(data_root).is_relative_to(
        recorded["folder"] / "work_before"
    )  # not the repo, not the home cache
    assert Path(data_root).is_dir()

    metrics = entry["metrics"]
    assert metrics and all(key.startswith("test_") for key in metrics)
    assert {"test_auroc", "test_loss", "test_auroc_gap", "test_worst_group_auroc"} <= set(metrics)
    assert 0.0 <= metrics["test_auroc"] <= 1.0

    assert entry["npz"] == f"before/{NPZ_NAME}"  # relative to the record, so the pair can be moved
    with np.load(recorded["record"].parent / entry["npz"]) as data:
        arrays = {key: data[key] for key in data.files}
    assert set(arrays) == set(entry["outputs"])
    assert {"test_step/logits", "test_step/target", "predict/logits", "predict/probs"} <= set(arrays)
    for key, array in arrays.items():
        stored = entry["outputs"][key]
        assert stored["sha256"] == parity.digest(array), key
        assert (stored["dtype"], stored["shape"]) == (array.dtype.str, list(array.shape))
    (size,) = {len(array) for array in arrays.values()}  # every output covers the same test samples
    assert size > 16, "the whole test split, not one batch"
    # the test-step capture and trainer.predict walk the same test loader in the same order
    assert entry["outputs"]["test_step/logits"]["sha256"] == entry["outputs"]["predict/logits"]["sha256"]


def test_compare_with_its_own_record_reports_equal_metrics_and_identical_outputs(recorded) -> None:
    assert recorded["compare_status"] == 0
    markdown = recorded["output"].read_text()
    assert markdown.startswith("# Core parity: packaged configs before and after\n")
    assert "core_parity.py " + " ".join(recorded["compare_argv"]) + "`" in markdown
    row = _row(markdown, CONFIG)
    assert row[1:9] == ["ok", "yes", "0", "yes", "0", "-", "0 / 0", "- / -"]
    assert row[-1].startswith("160 generated images")
    after = json.loads(recorded["output"].with_suffix(".json").read_text())
    before = json.loads(recorded["record"].read_text())
    old, new = before["results"][CONFIG], after["results"][CONFIG]
    assert new["metrics"] == old["metrics"] and new["outputs"] == old["outputs"]
    assert (recorded["output"].parent / new["npz"]).exists()
    assert f"| {CONFIG} | `test_auroc` | {old['metrics']['test_auroc']!r} |" in markdown


def _tampered(parity, recorded, tmp_path: Path) -> tuple[dict, dict, dict]:
    """The record, with test_auroc moved by 0.25, one output's hash changed and one logit moved by 0.5 (its
    hash updated), saved beside a copy of the outputs; and the comparison run's results."""
    before = copy.deepcopy(json.loads(recorded["record"].read_text()))
    after = json.loads(recorded["output"].with_suffix(".json").read_text())
    entry = before["results"][CONFIG]
    entry["metrics"]["test_auroc"] += 0.25
    entry["outputs"]["predict/probs"]["sha256"] = "0" * 64
    with np.load(recorded["record"].parent / entry["npz"]) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["test_step/logits"][3, 1] += 0.5
    entry["outputs"]["test_step/logits"]["sha256"] = parity.digest(arrays["test_step/logits"])
    (tmp_path / "tampered").mkdir()
    np.savez_compressed(tmp_path / "tampered" / NPZ_NAME, **arrays)
    entry["npz"] = f"tampered/{NPZ_NAME}"
    return before, after, entry


def test_compare_reports_a_tampered_metric_and_outputs(parity, recorded, tmp_path: Path) -> None:
    before, after, entry = _tampered(parity, recorded, tmp_path)
    row = parity.compare_entry(entry, after["results"][CONFIG], tmp_path, recorded["output"].parent)
    assert row["metrics_equal"] is False and row["outputs_identical"] is False
    assert row["metric_deltas"]["test_auroc"] == pytest.approx(-0.25)
    assert row["max_metric_delta"] == pytest.approx(0.25)
    assert set(row["metric_deltas"]) - {"test_auroc"} and all(
        delta == 0 for key, delta in row["metric_deltas"].items() if key != "test_auroc"
    )
    # the changed hash alone breaks bit-identity; the arrays themselves show the moved logit
    assert row["output_deltas"]["predict/probs"] == 0
    assert row["output_deltas"]["test_step/logits"] == pytest.approx(0.5, abs=1e-6)
    assert row["max_output_delta"] == pytest.approx(0.5, abs=1e-6)

    markdown = parity.markdown("python benchmarks/core_parity.py --compare x", before, after, {CONFIG: row})
    assert _row(markdown, CONFIG)[1:6] == ["ok", "NO", "0.25", "NO", "0.5"]
    failures = parity.parity_failures(before, after, {CONFIG: row})
    assert failures == [
        f"{CONFIG}: test metrics differ (max |Δ| 0.25)",
        f"{CONFIG}: test outputs not bit-identical (max |Δ| 0.5)",
    ]


def test_main_exits_1_when_the_comparison_differs(parity, recorded, tmp_path: Path, monkeypatch) -> None:
    """``--compare`` against the tampered record, with the rerun replaced by the recorded comparison run."""
    before, after, _ = _tampered(parity, recorded, tmp_path)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(before))
    source = recorded["output"].parent / after["results"][CONFIG]["npz"]

    def rerun(names, settings, npz_dir, timeout, keep, on_result):
        assert list(names) == [CONFIG] and settings == before["settings"]
        npz_dir.mkdir(parents=True)
        entry = dict(after["results"][CONFIG], npz=str(shutil.copy(source, npz_dir / NPZ_NAME)))
        return {CONFIG: entry}

    monkeypatch.setattr(parity, "run_all", rerun)
    output = tmp_path / "out" / "parity.md"
    output.parent.mkdir()
    assert parity.main(["--compare", tampered, "--configs", CONFIG, "--output", output]) == 1
    assert _row(output.read_text(), CONFIG)[1:6] == ["ok", "NO", "0.25", "NO", "0.5"]


# -- the pure helpers, on fabricated records -----------------------------------------------------------------
def _entry(metrics: dict[str, float], outputs: dict[str, str], status: str = "ok") -> dict[str, Any]:
    return {
        "status": status,
        "metrics": metrics,
        "outputs": {key: {"sha256": sha, "shape": [2]} for key, sha in outputs.items()},
        "wall_seconds": 1.0,
        "note": "fabricated",
    }


def _report(results: dict[str, Any], summary: dict | None = None) -> dict[str, Any]:
    environment = {
        "date": "2026-01-01",
        "code": "/x",
        "git": {},
        "platform": "p",
        "cpu_count": 2,
        "torch": "t",
    }
    report = {"command": "python benchmarks/core_parity.py --record r.json", "results": results}
    report["environment"] = dict(environment, configs=["a/one", "a/two", "a/three"])
    return report if summary is None else dict(report, summary=summary)


def test_compare_entry_on_fabricated_records(parity, tmp_path: Path) -> None:
    nan = float("nan")
    old = _entry({"test_a": 0.5, "test_b": nan, "test_gone": 1.0}, {"predict": "h1", "test_step/x": "h2"})
    new = _entry({"test_a": 0.5, "test_b": nan, "test_new": 2.0}, {"predict": "h1", "test_step/y": "h3"})
    row = parity.compare_entry(old, new, tmp_path, tmp_path)
    assert row["metrics_equal"] is True  # NaN in both runs is the same undefined metric
    assert (row["metrics_only_before"], row["metrics_only_after"]) == (["test_gone"], ["test_new"])
    assert row["outputs_identical"] is True
    assert (row["outputs_only_before"], row["outputs_only_after"]) == (["test_step/x"], ["test_step/y"])
    assert math.isnan(row["output_deltas"]["predict"])  # no arrays saved: the difference is unknown

    changed = _entry({"test_a": 0.25, "test_b": 1.0}, {"predict": "h9"})
    row = parity.compare_entry(old, changed, tmp_path, tmp_path)
    assert row["metrics_equal"] is False and row["outputs_identical"] is False
    assert row["max_metric_delta"] == 0.25  # the NaN -> 1.0 change is unequal but has no finite size
    assert parity.compare_entry(_entry({}, {}), _entry({}, {}), tmp_path, tmp_path)["metrics_equal"] is False

    texts = {"predict/transcripts": {"sha256": "t1", "values": ["a cat", "a dog", "hi"]}}
    other = {"predict/transcripts": {"sha256": "t2", "values": ["a cat", "a log"]}}
    # one transcript differs and one is missing: 2 differing
    row = parity.compare_entry(dict(old, outputs=texts), dict(old, outputs=other), tmp_path, tmp_path)
    assert row["output_deltas"]["predict/transcripts"] == 2.0 and row["max_output_delta"] == 0.0


def test_markdown_and_failures_on_fabricated_records(parity, tmp_path: Path) -> None:
    before = _report(
        {
            "a/one": _entry({"test_a": 0.5}, {"predict": "h"}),
            "a/two": _entry({"test_a": 0.5}, {"predict": "h"}),
            "a/three": _entry({"test_a": 0.5}, {"predict": "h"}),
            "a/old": _entry({}, {}, status="failed") | {"error": "Traceback\nValueError: bad thing"},
        }
    )
    after = _report(
        {
            "a/one": _entry({"test_a": 0.5}, {"predict": "h"}),
            "a/two": _entry({"test_a": 0.5}, {}, status="failed") | {"error": "RuntimeError: broke"},
            "a/old": _entry({}, {}, status="failed") | {"error": "ValueError: bad thing"},
            "a/new": _entry({"test_a": 1.0}, {"predict": "h"}),
        }
    )
    rows = {
        "a/one": parity.compare_entry(
            before["results"]["a/one"], after["results"]["a/one"], tmp_path, tmp_path
        )
    }
    markdown = parity.markdown("python benchmarks/core_parity.py --compare r.json", before, after, rows)
    assert _row(markdown, "a/one")[1:6] == ["ok", "yes", "0", "yes", "nan"]
    assert _row(markdown, "a/two")[1] == "before ok, after failed"
    assert _row(markdown, "a/three")[1] == "not run (not in --configs)"
    assert _row(markdown, "a/new")[1] == "new config: no before record"
    assert "- a/two (after): `RuntimeError: broke`" in markdown
    assert "- a/old (before): `ValueError: bad thing`" in markdown
    # a config that fails only after the change breaks parity; one that failed before has nothing to compare
    assert parity.parity_failures(before, after, rows) == ["a/two: ok before, failed after"]


def test_seed_summary_digest_and_small_budgets(parity, tmp_path: Path) -> None:
    results = {
        f"t/x@seed={seed}": {
            "status": "ok",
            "config": "t/x",
            "seed": seed,
            "metrics": {"test_accuracy": value},
        }
        for seed, value in ((0, 0.8), (1, 0.9), (2, 1.0))
    }
    results["t/x@seed=3"] = {"status": "failed", "config": "t/x", "seed": 3}
    results["t/y"] = {"status": "ok", "config": "t/y", "seed": None, "metrics": {"test_accuracy": 0.1}}
    summary = parity.seed_summary(results)
    assert list(summary) == ["t/x"] and summary["t/x"]["seeds"] == [0, 1, 2]
    stats = summary["t/x"]["metrics"]["test_accuracy"]
    assert stats["mean"] == pytest.approx(0.9) and stats["std"] == pytest.approx(0.1)
    assert parity.run_key("t/x", None) == "t/x" and parity.run_key("t/x", 3) == "t/x@seed=3"

    array = np.arange(6, dtype=np.float32)
    assert parity.digest(array) == parity.digest(array.copy())
    assert parity.digest(array) != parity.digest(array.reshape(2, 3))  # same bytes, another shape
    assert parity.digest(array) != parity.digest(array.view(np.int32))  # same bytes, another dtype
    assert parity.digest(array.reshape(2, 3).T) == parity.digest(np.ascontiguousarray(array.reshape(2, 3).T))

    arrays, transcripts = parity._predict_outputs([["a b", "c"], ["d"]])
    assert arrays == {} and transcripts == ["a b", "c", "d"]
    arrays, transcripts = parity._predict_outputs(
        [{"probs": torch.ones(2, 3)}, None, {"probs": torch.zeros(1, 3)}]
    )
    assert (
        transcripts is None and list(arrays) == ["predict/probs"] and arrays["predict/probs"].shape == (3, 3)
    )
    arrays, _ = parity._predict_outputs([torch.ones(2), torch.ones(3)])  # plain tensors: one array, "predict"
    assert list(arrays) == ["predict"] and arrays["predict"].shape == (5,)

    medical, note = parity.small_budget("medical/efficientnet_lora", tmp_path)
    assert medical[:2] == ["--trainer.max_epochs", "1"] and str(tmp_path / "data" / "medical") in medical
    assert parity.small_budget("medical/biomedclip_zero_shot", tmp_path)[0][:2] == [
        "--trainer.max_epochs",
        "0",
    ]
    few_shot = parity.small_budget("medical/biomedclip_few_shot_lora", tmp_path)[0]
    assert few_shot[:2] == ["--trainer.max_epochs", "3"] and "--data.init_args.shots_per_class" in few_shot
    speech, _ = parity.small_budget("speech/whisper_zero_shot", tmp_path)
    assert speech[:2] == ["--trainer.max_epochs", "0"] and str(tmp_path / "data" / "speech") in speech
    assert parity.small_budget("timeseries/gunpoint_lora", tmp_path)[0] == ["--trainer.max_epochs", "3"]
    generic, note = parity.small_budget("audio/new_thing", tmp_path)
    assert "--trainer.limit_test_batches=2" in generic and "no small budget written" in note
