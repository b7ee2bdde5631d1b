"""The frozen-prefix caching benchmark end to end at tiny scale (tiny BERT encoder, random point transformer):
both arms of every workload, equal losses, the cut the cache chose, and a report naming its command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.domains


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("prefix_cache") as module:
        yield module


def test_tiny_run_times_both_arms_with_equal_losses(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "results" / "prefix_cache.md"
    argv = ["--tiny", "--epochs", "2", "--repeats", "2", "--workloads", "timeseries_linear_probe",
            "pointcloud_point_peft", "--output", str(output)]  # fmt: skip
    benchmark.main(argv)
    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["command"] == "python benchmarks/prefix_cache.py " + " ".join(argv)
    rows = {row["workload"]: row for row in raw["rows"]}
    assert set(rows) == {"timeseries_linear_probe", "pointcloud_point_peft"}
    for row in rows.values():
        assert len(row["speedups"]) == 2 and all(speedup > 0 for speedup in row["speedups"])
        assert row["max_loss_difference"] <= 1e-5  # the cache changes no training step
        assert row["prefix_cache"]["used"] and row["prefix_cache"]["hit_rate"] > 0.3
    assert rows["timeseries_linear_probe"]["prefix_cache"]["cached_modules"] == ["backbone"]
    # Point-PEFT's frozen second pass of the backbone (the prior's query) is replayed with the tokenizer.
    point_peft = rows["pointcloud_point_peft"]
    assert "base_model.pointpeft_prior_query" in point_peft["prefix_cache"]["cached_modules"]
    assert point_peft["target"] == 2.0 and point_peft["meets_target"] in (True, False)
    markdown = output.read_text()
    assert "| timeseries_linear_probe | `backbone` |" in markdown and raw["command"] in markdown

    # --update measures one workload again and keeps the others' rows, each with its own command.
    again = ["--tiny", "--epochs", "2", "--repeats", "1", "--workloads", "pointcloud_point_peft", "--update",
             "--output", str(output)]  # fmt: skip
    benchmark.main(again)
    updated = json.loads(output.with_suffix(".json").read_text())
    commands = {row["workload"]: row["command"] for row in updated["rows"]}
    assert list(commands) == ["pointcloud_point_peft", "timeseries_linear_probe"]  # the benchmark's order
    assert commands["timeseries_linear_probe"] == raw["command"] != commands["pointcloud_point_peft"]
    assert len(updated["rows"][0]["speedups"]) == 1
    assert "Made in parts: " in output.read_text()


def test_every_workload_names_a_packaged_config(benchmark) -> None:
    from verticals.core.cli import packaged_configs

    args = benchmark.parse_args([])
    for name in benchmark.TARGETS:
        assert benchmark.workload_arguments(name, args)[0] in packaged_configs()
    with pytest.raises(ValueError, match="Unknown workload"):
        benchmark.workload_arguments("nope", args)
