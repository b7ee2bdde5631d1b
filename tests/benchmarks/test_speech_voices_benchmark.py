"""The voice-selection benchmark end to end at tiny scale (tiny random Whisper, two voices, two sentences)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("speech_voices") as module:
        yield module


def test_tiny_run_writes_markdown_and_json(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "speech_voices.md"
    argv = [
        "--model",
        "tiny-random",
        "--voices",
        "en-us+m3",
        "en-us+m5",
        "--rates",
        "140",
        "--sentences",
        "2",
    ]
    argv += ["--max-source-positions", "250", "--max-new-tokens", "3", "--cache-dir", str(tmp_path / "cache")]
    results = benchmark.main([*argv, "--output", str(output)])
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert [(row["voice"], row["rate"], row["utterances"]) for row in rows] == [
        ("en-us+m3", 140, 2),
        ("en-us+m5", 140, 2),
    ]
    assert [row["packaged_clear"] for row in rows] == [True, False]  # the clear condition's own voice
    assert all(row["wer"] >= 0 for row in results["rows"])
    benchmark.main(["--render", str(output.with_suffix(".json")), "--output", str(tmp_path / "again.md")])
    from charts import strip_chart_links  # benchmarks/ is on sys.path once a script is loaded

    assert strip_chart_links((tmp_path / "again.md").read_text()) == strip_chart_links(output.read_text())
    assert "`en-us+m3` | 140 |" in output.read_text()
