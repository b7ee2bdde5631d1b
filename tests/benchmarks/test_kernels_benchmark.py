"""The kernel benchmark script end to end at tiny scale: report, JSON, and same outputs as peft on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("adapter_kernels") as module:
        yield module


def test_tiny_run_writes_markdown_and_json(
    benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERTICALS_KERNELS", raising=False)
    output = tmp_path / "kernels.md"
    argv = ["--shapes", "whisper_tiny.q_proj", "--batches", "1", "3", "--tokens", "4", "--rank", "4",
            "--adapters", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu", "--output", str(output)]  # fmt: skip
    results = benchmark.main(argv)
    markdown = output.read_text()
    assert markdown.startswith("# Adapter kernels")
    assert "- command: `python benchmarks/adapter_kernels.py --shapes whisper_tiny.q_proj" in markdown
    assert "verticals path: **reference** — a CPU run" in markdown and "pending a GPU" in markdown
    rows = [
        line for line in markdown.splitlines() if line.startswith("| whisper_tiny.q_proj | 384→384 | 4 |")
    ]
    assert len(rows) == 2
    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["argv"] == argv and raw["backend"] == "reference" and len(raw["rows"]) == 2
    for row in raw["rows"]:
        assert row["max_abs_diff"] == 0.0  # on CPU the dispatcher runs peft's own forward
        assert row["mixed_max_abs_diff"] == 0.0
        assert all(row[key] > 0 for key in row if key.endswith("_ms"))
    assert results["summary"]["forward"] > 0
