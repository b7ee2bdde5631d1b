"""The speech baseline reproduces the config it stands for: the frozen model's WER beside a LoRA run is what
``whisper_zero_shot`` (a zero-initialised adapter, nothing trained) scores on the same utterances."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from verticals.core.cli import run_cli


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def _run(name: str, root: Path, cache: Path, epochs: str) -> dict[str, Any]:
    cli = run_cli(
        [
            "run", "--config", f"speech/{name}",
            "--model.init_args.model_args", json.dumps({"source": "tiny-random"}),
            "--model.init_args.max_new_tokens", "3",
            "--model.init_args.n_bootstrap", "0",
            "--data.init_args.conditions", "[clear, noisy]",
            "--data.init_args.utterances_per_condition", "2",
            "--data.init_args.val_utterances_per_condition", "1",
            "--data.init_args.test_utterances_per_condition", "2",
            "--data.init_args.max_source_positions", "250",
            "--data.init_args.batch_size", "2",
            "--data.init_args.cache_dir", str(cache),
            "--trainer.default_root_dir", str(root),
            "--trainer.max_epochs", epochs,
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
        ]
    )  # fmt: skip
    return json.loads((Path(cli.trainer.log_dir) / "report.json").read_text())


def test_frozen_model_baseline_is_the_zero_shot_config(tmp_path: Path) -> None:
    lora = _run("whisper_lora_qv", tmp_path / "lora", tmp_path / "cache", "1")
    zero_shot = _run("whisper_zero_shot", tmp_path / "zero", tmp_path / "cache", "0")
    entry = lora["baseline"]
    assert entry["name"] == "frozen model" and entry["metric"] == "wer" and entry["samples"] == 4
    assert entry["higher_is_better"] is False and entry["in_points"] is True
    assert entry["baseline"] == pytest.approx(zero_shot["test"]["test_wer"])
    assert entry["adapter"] == pytest.approx(lora["test"]["test_wer"])
    assert zero_shot["baseline"]["is_config"] is True
    assert zero_shot["baseline"]["verdict"].startswith(
        "This config is the baseline (frozen model): test WER "
    )
