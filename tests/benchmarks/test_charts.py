"""``benchmarks/charts.py``: every kind of results JSON gives readable PNGs from a tiny fake in the real schema,
the ``## Charts`` block is idempotent, and the committed reports link only charts that exist."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PNG = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 150 * 1024


@pytest.fixture(scope="module")
def charts(load_script):
    with load_script("charts") as module:
        yield module


def _stats(values: list[float]) -> dict:
    """A ``SeedStatistics.as_dict()`` (without the interval: the chart recomputes it from the values)."""
    return {"values": values, "n": len(values), "mean": sum(values) / len(values)}


def _ci(value: float) -> dict:
    return {"value": value, "low": value - 0.02, "high": value + 0.02}


def _fairness_seed(seed: int) -> dict:
    """One seed's ``medical_fairness.py`` JSON: two runs with per-group AUROC and gaps."""

    def run(label: str, dark: float) -> dict:
        return {
            "label": label,
            "method": label,
            "test": {
                "overall": {"auroc": _ci(0.95)},
                "attributes": {
                    "skin_tone": {
                        "auroc_best_minus_worst": _ci(0.98 - dark),
                        "groups": {"dark": {"auroc": _ci(dark)}, "light": {"auroc": _ci(0.98)}},
                    },
                    "sex": {
                        "auroc_best_minus_worst": _ci(0.01),
                        "groups": {"female": {"auroc": _ci(0.95)}, "male": {"auroc": _ci(0.96)}},
                    },
                },
            },
        }

    return {
        "settings": {"seed": seed, "num_images": 200, "bootstrap": 10},
        "runs": [run("lora", 0.93 + 0.01 * seed), run("group_dro", 0.95)],
        "errors": [],
        "complete": True,
    }


def _fairness_seeds() -> dict:
    def entry(method: str, versus: bool) -> dict:
        result = {
            "method": method,
            "auroc": _stats([0.97, 0.98, 0.96]),
            "gap": _stats([0.05, 0.04, 0.03]),
            "chosen": None,
            "calibration": {
                scaling: {
                    "worst_group_ece": _stats([0.04, 0.05, 0.06]),
                    "worst_group_floor": _stats([0.03] * 3),
                }
                for scaling in ("none", "global", "per_group")
            },
        }
        if versus:
            result["vs_lora"] = {
                "auroc_change": _stats([-0.01, 0.0, -0.02]),
                "gap_reduction": _stats([0.3, 0.6, 0.5]),
                "gap_reduction_of_means": 0.45,
            }
        return result

    return {
        "command": "python benchmarks/medical_fairness_seeds.py --seeds 0 1 2",
        "seed_reports": {
            "0": "fake_seeds/seed_0.md",
            "1": "fake_seeds/seed_1.md",
        },  # seed 2's report is missing
        "failed": {},
        "summary": {
            "seeds": [0, 1, 2],
            "runs": {"lora": entry("lora", False), "group_dro": entry("group_dro", True)},
        },
    }


def _fakes() -> dict[str, dict]:
    """Kind -> a tiny results JSON in that benchmark's schema (the keys its chart function reads)."""
    methods = ["linear_probe", "lora", "full"]
    return {
        "timeseries": {
            "settings": {"seeds": [0, 1]},
            "runs": [
                {
                    "dataset": dataset,
                    "method": method,
                    "seed": seed,
                    "test_accuracy": 0.7 + 0.05 * index + 0.01 * seed,
                    "trainable_parameters": 10 ** (index + 2),
                    "backbone_parameters": 10**5,
                }
                for dataset in ("GunPoint", "ArrowHead", "BasicMotions")
                for index, method in enumerate(methods)
                for seed in (0, 1)
            ],
            "classical": {"GunPoint": {"dtw": {"name": "1-NN DTW", "accuracy": 0.9}}},
            "overhead": {
                "config": "timeseries/gunpoint_lora",
                "epochs": 1,
                "repeats": 2,
                "runs": [
                    {"repeat": r, "loop": loop, "samples_per_second": 10.0 + r}
                    for r in range(2)
                    for loop in ("verticals", "plain")
                ],
                "median": {"verticals": {"samples_per_second": 10.5}, "plain": {"samples_per_second": 10.4}},
                "ratio_verticals_over_plain": 1.01,
            },
            "errors": [],
        },
        "seeds": {
            "configs": ["/x/domains/timeseries/configs/gunpoint_lora.yaml"],
            "seeds": [0, 1, 2],
            "confidence": 0.95,
            "runs": [{"seed": s, "test": {"test_accuracy": 0.9 + 0.01 * s}} for s in range(3)],
            "summary": {"test_accuracy": _stats([0.9, 0.91, 0.92]), "test_loss": _stats([0.3, 0.2, 0.25])},
        },
        "kernels": {
            "backend": "reference",
            "device": "CPU x, 2 logical cores",
            "dtype": "float32",
            "statistic": "min",
            "repeats": 3,
            "rank": 16,
            "rows": [
                {
                    "shape": "vit.qkv",
                    "in": 8,
                    "out": 24,
                    "batch": batch,
                    "ratio_forward": 1.0,
                    "ratio_train": 0.9,
                    "ratio_mixed": 1.1,
                }
                for batch in (1, 8)
            ],  # fmt: skip
        },
        "speech": {
            "settings": {"source": "tiny-random", "test_per_condition": 4, "bootstrap": 10},
            "methods": {
                name: {
                    "wer": {"clear": wer, "noisy": 2 * wer},
                    "wer_ci": {"clear": [wer / 2, wer * 1.5], "noisy": [wer, wer * 3]},
                    "overall": {"wer": 1.5 * wer, "wer_low": wer, "wer_high": 2 * wer},
                    "trainable": trainable,
                    "fit_seconds": 0.0 if name == "zero_shot" else 1.0,
                }
                for name, wer, trainable in (
                    ("zero_shot", 0.5, 10),
                    ("lora_qv", 0.2, 1000),
                    ("bitfit", 0.3, 300),
                )
            },
            "merge": {"lora_qv": {"utterances": 4, "equal_transcripts": 4, "merged_vs_base_time": 1.01}},
            "throughput": {
                "verticals": {"repeats_steady_utterances_per_s": [2.0, 2.1], "steady_utterances_per_s": 2.05},
                "seq2seq_trainer": {
                    "repeats_steady_utterances_per_s": [2.0, 2.2],
                    "steady_utterances_per_s": 2.1,
                },
                "ratio": 0.98,
            },
        },
        "speech_voices": {
            "settings": {"model": "tiny.en", "sentences": 4},
            "rows": [
                {
                    "voice": voice,
                    "rate": rate,
                    "wer": 0.1 + 0.01 * rate / 10,
                    "cer": 0.05,
                    "packaged_clear": clear,
                }
                for voice, clear in (("en-us", False), ("en-us+m3", True))
                for rate in (120, 140)
            ],
        },
        "medical_fairness": _fairness_seed(0),
        "medical_fairness_seeds": _fairness_seeds(),
        "medical_sam": {
            "arguments": {"methods": ["zero_shot_box", "samed_lora"]},
            "runs": [
                {
                    "dataset": "phantoms",
                    "method": method,
                    "seed": seed,
                    "dice": 0.8,
                    "dice_per_class": {"organ": 0.9, "lesion": 0.5 + 0.1 * seed},
                    "groups": {
                        "site": {
                            "dice": {"A": _ci(0.85), "B": _ci(0.7)},
                            "best_minus_worst": _ci(0.15) if method != "samed_lora" else {"value": None},
                        }
                    },
                }
                for method in ("zero_shot_box", "samed_lora")
                for seed in (0, 1)
            ],
            "summary": {"phantoms": {"samed_lora": {"dice": _stats([0.8, 0.8])}}},
        },
        "pointcloud": {
            "arguments": {"tune_seed": 100},
            "summary": {
                "columns": ["overall", "domain=scan"],
                "methods": {
                    "point_peft": {
                        "accuracy": {"overall": _stats([0.8, 0.85, 0.82])},
                        "trainable_percent": 9.8,
                        "learning_rate": 0.001,
                    },
                    "descriptor_forest": {
                        "accuracy": {"overall": _stats([0.5, 0.55, 0.6])},
                        "trainable_percent": math.nan,
                    },
                },
                "point_peft_minus": {
                    "descriptor_forest": {
                        "overall": _stats([0.3, 0.3, 0.22]),
                        "domain=scan": _stats([0.1, -0.1, 0.0]),
                    }
                },
                "tuning": {"point_peft": {"0.0003": 0.8, "0.001": 0.9}},
            },
        },  # fmt: skip
        "remote_sensing": {
            "arguments": {"tune_seed": 100},
            "summary": {
                "artefacts": ["clean", "haze"],
                "methods": {
                    "mofa": {"miou": _stats([0.7, 0.71]), "trainable_percent": 16.6, "learning_rate": 0.01},
                    "lora": {"miou": _stats([0.69, 0.7]), "trainable_percent": 15.4, "learning_rate": 0.01},
                },
                "mofa_minus": {"lora": {"overall": _stats([0.01, 0.01])}},
                "tuning": {"mofa": {"0.003": 0.6, "0.01": 0.7}, "lora": {"0.003": 0.65, "0.01": 0.66}},
            },
            "runs": [
                {
                    "method": "mofa",
                    "seed": 0,
                    "router": {a: {"blocks.0": [0.2, 0.5, 0.3]} for a in ("clean", "haze")},
                }
            ],
        },
        "speed": {
            "benchmark": "speed",
            "settings": {"rank": 8, "repeats": 4},
            "machine": {"cpu": "AMD EPYC", "torch_threads": 1},
            "merged": {
                "summary": {"target_ratio": 1.05},
                "rows": [
                    {
                        "shape": shape,
                        "targets": targets,
                        "batch": 8,
                        "ratios": {
                            key: {"median": value, "low": value - 0.02, "high": value + 0.03}
                            for key, value in (("unmerged", 1.2), ("merged", 1.01), ("exported", 0.99))
                        },
                    }
                    for shape in ("vit_b16", "minilm")
                    for targets in ("attention", "all-linear")
                ],
            },
        },
        "prefix_cache": {
            "benchmark": "prefix_cache",
            "settings": {"epochs": 3, "repeats": 2, "seed": 0},
            "rows": [
                {"workload": "sam_decoder_only", "speedup": 8.0, "speedups": [7.0, 9.0], "target": 3.0},
                {
                    "workload": "timeseries_linear_probe",
                    "speedup": 12.0,
                    "speedups": [11.0, 13.0],
                    "target": None,
                },
            ],
        },
        "whisper_length": {
            "benchmark": "whisper_length",
            "settings": {"source": "tiny.en", "seeds": [0], "test_per_condition": 25},
            "runs": [
                {"route": route, "method": method, "wer": {"clear": 0.1 + shift, "child": 0.3 + shift}}
                for route, shift in (("window_30s", 0.0), ("window_10s", 0.01), ("utterance", 0.02))
                for method in ("zero_shot", "lora_qv")
            ],
        },
    }


REPORT = "# A benchmark\n\n- command: `python x.py`\n\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"

CORE_PARITY = """# Core parity: packaged configs before and after

- command: `python benchmarks/core_parity.py --compare before.json`

## Test metrics

| config | metric | before | after | Δ |
|---|---|---|---|---|
| medical/a | `test_auroc` | 0.5 | 0.5 | 0 |
| medical/a | `test_loss` | 0.7 | 0.7 | 0 |
| medical/a | `test_worst_group_loss` |  | 0.69 |  |
| timeseries/b | `test_accuracy` | 0.49 | 0.51 | 0.02 |
"""


def _write_report(folder: Path, name: str, results: dict | None, text: str = REPORT) -> Path:
    md_path = folder / f"{name}.md"
    md_path.write_text(text)
    if results is not None:
        md_path.with_suffix(".json").write_text(json.dumps(results))
    return md_path


def _check_charts(charts_module, md_path: Path, written) -> None:
    assert written, f"{md_path.name}: no chart"
    text = md_path.read_text()
    for chart in written:
        assert chart.path.parent == md_path.parent and chart.path.name.startswith(f"{md_path.stem}_")
        data = chart.path.read_bytes()
        assert data[:8] == PNG and 0 < len(data) < MAX_BYTES
        assert f"]({chart.path.name})" in text and chart.title
    assert text.count(charts_module.HEADING) == 1


@pytest.mark.parametrize("kind", sorted(_fakes()))
def test_each_kind_draws_its_charts_from_a_fake_of_its_schema(charts, kind: str, tmp_path: Path) -> None:
    results = _fakes()[kind]
    assert charts.kind_of(results) == kind
    if kind == "medical_fairness_seeds":
        (tmp_path / "fake_seeds").mkdir()
        for seed in (0, 1):
            _write_report(tmp_path / "fake_seeds", f"seed_{seed}", _fairness_seed(seed))
    md_path = _write_report(tmp_path, kind, results)
    written = charts.chart_report(md_path)
    _check_charts(charts, md_path, written)
    first = md_path.read_text()
    assert charts.with_chart_links(first, written, md_path) == first  # linked again: the same block, once


def test_seed_sweep_draws_the_earlier_record_beside_it(charts, tmp_path: Path) -> None:
    before = {
        "summary": {
            "timeseries/gunpoint_lora": {"seeds": [0, 1], "metrics": {"test_accuracy": _stats([0.8, 0.9])}}
        }
    }
    (tmp_path / "sweep_before.json").write_text(json.dumps(before))
    md_path = _write_report(tmp_path, "sweep_after", _fakes()["seeds"])
    kind, _, options, _ = charts.load_report(md_path)
    assert kind == "seeds" and options["before"] == before and options["before_label"] == "sweep_before.json"
    _check_charts(charts, md_path, charts.chart_report(md_path))


def test_core_parity_reads_the_markdown_table_when_there_is_no_json(charts, tmp_path: Path) -> None:
    parsed = charts.core_parity_from_markdown(CORE_PARITY)
    assert parsed["metrics"][2] == {
        "config": "medical/a", "metric": "test_worst_group_loss", "before": None, "after": 0.69
    }  # fmt: skip
    assert len(parsed["metrics"]) == 4 and charts.kind_of(parsed) == "core_parity"
    records = charts.core_parity_from_records(
        {"results": {"x": {"status": "ok", "metrics": {"test_loss": 1.0}}}},
        {"results": {"x": {"status": "ok", "metrics": {"test_loss": 1.0, "test_f1": 0.5}}}},
    )
    assert records["metrics"] == [
        {"config": "x", "metric": "test_f1", "before": None, "after": 0.5},
        {"config": "x", "metric": "test_loss", "before": 1.0, "after": 1.0},
    ]
    md_path = _write_report(tmp_path, "core_parity", None, CORE_PARITY)
    _check_charts(charts, md_path, charts.chart_report(md_path))


def test_links_block_is_idempotent_and_goes_before_the_first_section(charts, tmp_path: Path) -> None:
    md_path = tmp_path / "r.md"
    made = [charts.Chart(tmp_path / "r_a.png", "A"), charts.Chart(tmp_path / "r_b.png", "B")]
    once = charts.with_chart_links(REPORT, made, md_path)
    assert once == charts.with_chart_links(once, made, md_path)
    assert once.index(charts.HEADING) < once.index("## Results") and "![A](r_a.png)\n\n![B](r_b.png)" in once
    assert charts.strip_chart_links(once) == REPORT
    assert charts.with_chart_links(once, [], md_path) == REPORT  # no charts: no block
    no_section = "# Title\n\ntext\n"
    assert charts.with_chart_links(no_section, made, md_path).endswith(charts.BLOCK_END + "\n")
    fewer = charts.with_chart_links(once, made[:1], md_path)
    assert "r_b.png" not in fewer and fewer.count(charts.HEADING) == 1


def test_targets_are_read_from_the_report_text(charts) -> None:
    seeds = "Targets: gap cut by ≥ 50% with overall AUROC down by ≤ 2 points. A row ..."
    assert charts._options_from_markdown("medical_fairness_seeds", seeds) == {
        "gap_reduction_target": 0.5,
        "auroc_drop_target": 0.02,
    }
    voices = "Lowest WER: `en` at 120 wpm, 17.1% (over the issue's 15% target for the clear condition)."
    assert charts._options_from_markdown("speech_voices", voices) == {"target_wer": 0.15}
    assert charts._options_from_markdown("timeseries", seeds) == {}


def test_t_interval_matches_the_committed_seed_statistics(charts) -> None:
    """The interval the charts draw is the one the reports print (``verticals.core.seeds``)."""
    summary = json.loads((RESULTS / "pointcloud.json").read_text())["summary"]["methods"]["point_peft"]
    entry = summary["accuracy"]["overall"]
    mean, low, high = charts.t_interval(entry["values"])
    assert (mean, low, high) == pytest.approx((entry["mean"], entry["low"], entry["high"]))
    assert math.isnan(charts.t_interval([0.5])[1]) and math.isnan(charts.t_interval([None, float("nan")])[0])


def test_main_draws_the_reports_given_and_names_those_it_cannot(charts, tmp_path: Path, capsys) -> None:
    drawn = _write_report(tmp_path, "kernels", _fakes()["kernels"])
    bare = _write_report(tmp_path, "notes", None)
    unknown = _write_report(tmp_path, "other", {"something": 1})
    rows = charts.main([str(drawn), str(bare), str(unknown)])
    assert [row["kind"] for row in rows] == ["kernels", "–", "–"]
    assert rows[1]["note"] == "no JSON beside it" and "not a results format" in rows[2]["note"]
    assert "kernels_ratios.png" in capsys.readouterr().out
    with pytest.raises(ValueError, match="nothing to draw"):
        charts.chart_report(bare)


# -- the committed reports ---------------------------------------------------------------------------------
COMMITTED = sorted([*RESULTS.glob("*.md"), *RESULTS.glob("*/*.md")])


@pytest.mark.parametrize("md_path", COMMITTED, ids=lambda path: path.relative_to(RESULTS).as_posix())
def test_committed_report_links_only_files_that_exist(md_path: Path) -> None:
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md_path.read_text()):
        assert (md_path.parent / target).is_file(), f"{md_path.name} links {target}, which is not there"


@pytest.mark.parametrize("md_path", COMMITTED, ids=lambda path: path.relative_to(RESULTS).as_posix())
def test_committed_report_has_its_charts_linked_and_small(charts, md_path: Path) -> None:
    """Every chart beside a report is linked from its block (none left over from an old name), each under
    150 KB; a report charts.py can draw has its block."""
    text = md_path.read_text()
    longer = [other.stem for other in md_path.parent.glob(f"{md_path.stem}_*.md")]  # speech_voices vs speech
    beside = sorted(
        path.name
        for path in md_path.parent.glob(f"{md_path.stem}_*.png")
        if not any(path.name.startswith(f"{stem}_") for stem in longer)
    )
    block = (
        text[text.find(charts.BLOCK_START) : text.find(charts.BLOCK_END)]
        if charts.BLOCK_START in text
        else ""
    )
    assert sorted(re.findall(r"\]\(([^)\s]+\.png)\)", block)) == beside
    for name in beside:
        assert (md_path.parent / name).stat().st_size < MAX_BYTES
    kind, _, _, _ = charts.load_report(md_path)
    assert (kind is not None) == bool(beside)
