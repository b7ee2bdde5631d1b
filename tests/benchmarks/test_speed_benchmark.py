"""The speed benchmark's ``merged`` part end to end at tiny scale (tiny random ViT, Whisper and BERT): every
variant per shape, positive ratios, merged = unmerged up to rounding; the pointer to the training parts' own scripts and the ABBA
order of its timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark(load_script):
    with load_script("speed") as module:
        yield module


def test_tiny_run_reports_every_variant_per_shape(benchmark, tmp_path: Path) -> None:
    output = tmp_path / "results" / "speed.md"
    argv = ["--tiny", "--repeats", "2", "--decoder-tokens", "3", "--bootstrap", "50",
            "--batch", "2", "minilm=3", "--output", str(output)]  # fmt: skip
    results = benchmark.main(argv)

    raw = json.loads(output.with_suffix(".json").read_text())
    assert raw["benchmark"] == "speed" and raw["argv"] == argv and raw["parts"] == ["merged"]
    rows = raw["merged"]["rows"]
    shapes = list(benchmark.SHAPES)
    assert [(row["shape"], row["targets"]) for row in rows] == [
        (shape, targets) for shape in shapes for targets in (benchmark.SHAPES[shape].targets, "all-linear")
    ]
    assert {row["shape"]: row["batch"] for row in rows} == dict.fromkeys(shapes[:-1], 2) | {"minilm": 3}
    for row in rows:
        assert set(row["times"]) == {"base", "unmerged", "merged", "exported"}
        assert all(len(times["seconds"]) == 2 and times["median_ms"] > 0 for times in row["times"].values())
        for ratio in row["ratios"].values():
            assert ratio["median"] > 0 and 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
            assert ratio["low"] is not None and ratio["low"] <= ratio["high"]
        assert row["adapted_modules"] > 0 and row["trainable_parameters"] > 0
        differences = row["differences"]
        if row["shape"] == "whisper_tiny_decode":  # exactly --decoder-tokens tokens per utterance
            assert differences["merged_vs_unmerged"] == {"differing_tokens": 0, "tokens": 2 * 3}
            assert differences["exported_vs_unmerged"]["differing_tokens"] == 0
        else:
            for key in ("merged_vs_unmerged", "exported_vs_unmerged"):
                assert differences[key]["max_abs_diff"] < 1e-4 * max(1.0, differences[key]["output_scale"])
            assert differences["unmerged_vs_base"]["max_abs_diff"] > 1e-4  # the adapter does change outputs
    for shape in shapes:  # one base timing per shape, the target rows' ratios are against it
        first, second = (row for row in rows if row["shape"] == shape)
        assert first["times"]["base"] == second["times"]["base"]
    assert results["merged"]["summary"]["max_abs_diff"] < 1e-4

    markdown = output.read_text()
    assert markdown.startswith("# Speed: what adapters cost at inference")
    assert "- command: `python benchmarks/speed.py --tiny --repeats 2" in markdown
    assert "- torch threads: " in markdown and "- machine: " in markdown and "- date: " in markdown
    assert "measured by `benchmarks/prefix_cache.py`" in markdown and "`--tiny` smoke run" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| whisper_tiny | `")]
    assert len(table) == 4  # two target rows in each of the two tables
    assert (tmp_path / "results" / "speed_merged.png").is_file() and "## Charts" in markdown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--parts", "caching"],
            "'caching' (issue item 5 (a)-(c)) is a training benchmark: run `python benchmarks/prefix_cache.py`",
        ),
        (["--parts", "merged", "whisper_length"], "run `python benchmarks/whisper_length.py`"),
        (["--parts", "speedup"], "unknown part 'speedup'"),
        (["--tiny"], "--tiny timings mean nothing: give --output"),
        (["--batch", "vit=4"], "unknown shape 'vit'"),
        (["--batch", "0"], "give a positive whole number"),
    ],
)
def test_points_to_the_training_parts_and_refuses_bad_arguments(benchmark, argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        benchmark.parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_overrides_and_defaults(benchmark) -> None:
    args = benchmark.parse_args(["--shapes", "vit_b16", "minilm", "--batch", "4", "minilm=32"])
    assert args.batches == {"vit_b16": 4, "minilm": 32}
    assert benchmark.parse_args([]).batches == {name: shape.batch for name, shape in benchmark.SHAPES.items()}


def test_timing_runs_warm_up_in_order_then_abba(benchmark) -> None:
    calls: list[str] = []
    ticks = iter(range(100))
    timed = benchmark.time_alternating(
        {name: (lambda name=name: calls.append(name)) for name in ("base", "unmerged", "merged")},
        repeats=3,
        warmup=1,
        clock=lambda: float(next(ticks)),
    )
    forward, backward = ["base", "unmerged", "merged"], ["merged", "unmerged", "base"]
    assert calls == forward + forward + backward + forward  # warm-up, then ABBA over the repeats
    assert timed == {name: [1.0, 1.0, 1.0] for name in ("base", "unmerged", "merged")}


def test_ratio_summary_pairs_repeats_and_bootstraps_the_median(benchmark) -> None:
    summary = benchmark.ratio_summary([2.0, 3.0, 4.4], [1.0, 2.0, 4.0], resamples=200)
    assert summary["per_repeat"] == pytest.approx([2.0, 1.5, 1.1])
    assert summary["median"] == pytest.approx(1.5)
    assert (summary["min"], summary["max"]) == pytest.approx((1.1, 2.0))
    assert 1.1 <= summary["low"] <= 1.5 <= summary["high"] <= 2.0
    single = benchmark.ratio_summary([2.0], [1.0], resamples=200)
    assert single["median"] == 2.0 and single["low"] is None and single["high"] is None
