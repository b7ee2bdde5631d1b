"""Whisper loaders: tiny random, local directories, the shortened encoder window, the registered module."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from verticals.core.registry import build_model
from verticals.domains.speech.models import (
    DEFAULT_MAX_NEW_TOKENS,
    TINY_RANDOM,
    WhisperModule,
    cache_root,
    converted_tiny_en,
    load_whisper,
    tiny_random_config,
    whisper_generation_config,
    whisper_tokenizer,
    window_feature_extractor,
)


def test_tiny_random_is_seeded_with_real_tokenizer_and_local_generation_config():
    model, processor = load_whisper(TINY_RANDOM)
    again, _ = load_whisper(TINY_RANDOM)
    assert isinstance(model, WhisperForConditionalGeneration) and not model.training
    assert torch.equal(model.model.encoder.conv1.weight, again.model.encoder.conv1.weight)
    generation = model.generation_config
    assert generation.is_multilingual is False and generation.no_timestamps_token_id == 50362
    assert generation.forced_decoder_ids is None and generation.max_length == DEFAULT_MAX_NEW_TOKENS
    assert generation.max_new_tokens is None  # the cap is Whisper's max_length: see whisper_generation_config
    assert len(processor.tokenizer) == 50363 and processor.tokenizer.pad_token_id == 50256
    assert processor.feature_extractor.nb_max_frames == 3000


def test_generate_starts_with_the_english_no_timestamps_prompt():
    model, _ = load_whisper(TINY_RANDOM, max_source_positions=50, max_new_tokens=3)
    with torch.no_grad():
        out = model.generate(input_features=torch.randn(1, 80, 100), return_dict_in_generate=True)
    assert 1 <= out.sequences.shape[1] <= 3 + 2  # the cap counts new tokens; the 2 start tokens come on top
    assert model.generation_config.decoder_start_token_id == 50257


def test_decoding_caps_new_tokens_without_a_warning_per_batch(caplog):
    """transformers warns "Both `max_new_tokens` and `max_length` seem to have been set" on every call that
    gives Whisper ``max_new_tokens``; the module passes the cap as Whisper's ``max_length`` instead."""
    module = WhisperModule(input_shape=(80, 100), source=TINY_RANDOM)
    features = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(0))
    module.generate(features, max_new_tokens=3)  # transformers' once-per-process notices come first
    caplog.clear()
    with caplog.at_level(logging.INFO):
        lengths = [module.generate(features, max_new_tokens=cap).shape[1] for cap in (3, 5, 3)]
        default = module.generate(features).shape[1]
    assert lengths == [3, 5, 3] and default <= DEFAULT_MAX_NEW_TOKENS  # random weights never stop early
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not said, said


def test_max_source_positions_slices_the_position_table_and_pads_features_to_match():
    full, _ = load_whisper(TINY_RANDOM)
    model, processor = load_whisper(TINY_RANDOM, max_source_positions=100)
    table = model.model.encoder.embed_positions.weight
    assert table.shape[0] == 100 and not table.requires_grad
    assert torch.equal(table, full.model.encoder.embed_positions.weight[:100])
    features = processor.feature_extractor(
        torch.zeros(8000).numpy(), sampling_rate=16000, return_tensors="pt"
    )
    assert features.input_features.shape == (1, 80, 200)
    with torch.no_grad():
        assert model.model.encoder(features.input_features).last_hidden_state.shape == (1, 100, 32)


@pytest.mark.parametrize("bad", [0, 75, 1550])
def test_window_must_be_whole_seconds_inside_the_table(bad):
    with pytest.raises(ValueError, match="max_source_positions"):
        load_whisper(TINY_RANDOM, max_source_positions=bad)


def test_window_feature_extractor_defaults_to_thirty_seconds():
    assert window_feature_extractor(None).nb_max_frames == 3000
    assert window_feature_extractor(500).n_samples == 160_000


def test_local_directory_round_trip_and_missing_directory(tmp_path):
    model, processor = load_whisper(TINY_RANDOM)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_whisper(str(tmp_path))
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)
    assert loaded.generation_config.no_timestamps_token_id == 50362
    assert loaded_processor.tokenizer.pad_token_id == 50256
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_whisper(str(tmp_path / "nope"))
    with pytest.raises(OSError, match="Offline, use 'tiny.en'"):  # a hub id: tried on the hub, offline here
        load_whisper("openai/whisper-nonexistent-size")


def test_generation_config_follows_the_vocabulary():
    config = tiny_random_config()
    assert whisper_generation_config(config).is_multilingual is False
    config.vocab_size = 51865
    multilingual = whisper_generation_config(config, max_new_tokens=10)
    assert multilingual.is_multilingual is True and multilingual.max_length == 10


def test_registered_module_reads_its_window_from_the_data_shape():
    module = build_model("speech.whisper", input_shape=(80, 200), source=TINY_RANDOM)
    assert isinstance(module, WhisperModule)
    assert module.backbone.config.max_source_positions == 100
    labels = torch.tensor([[50362, 464, 50256]])
    out = module(torch.randn(1, 80, 200), labels=labels)
    assert out.loss.ndim == 0 and out.logits.shape == (1, 3, 51864)
    assert module.generate(torch.randn(1, 80, 200), max_new_tokens=2).shape[0] == 1
    assert (
        WhisperModule(input_shape=(80, 3000), source=TINY_RANDOM).backbone.config.max_source_positions == 1500
    )
    with pytest.raises(ValueError, match="give both the same window"):
        WhisperModule(input_shape=(80, 200), source=TINY_RANDOM, max_source_positions=500)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert (
        whisper_tokenizer().decode([50257, 50362, 464, 50256])
        == "<|startoftranscript|><|notimestamps|>The<|endoftext|>"
    )


@pytest.mark.slow
def test_tiny_en_is_converted_once_into_a_safetensors_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path))
    folder = converted_tiny_en()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_tiny_en() == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model, processor = load_whisper("tiny.en", max_source_positions=500)
    assert model.config.vocab_size == 51864 and model.config.max_source_positions == 500
    assert processor.feature_extractor.nb_max_frames == 1000


class _CollectMessages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_whisper_decoding_prints_neither_transformers_notice(tmp_path, monkeypatch) -> None:
    """Whisper's own generate passes suppress_tokens beside the config and asks for a decoder mask greedy decoding
    doesn't need: both notices are dropped by their text, other transformers messages kept."""
    from verticals.domains.speech.models import WHISPER_GENERATE_NOTICES

    monkeypatch.setenv("VERTICALS_CACHE", str(tmp_path))
    model = WhisperModule(source="tiny-random", max_source_positions=100).eval()
    collect = _CollectMessages()
    logging.getLogger("transformers").addHandler(collect)
    try:
        with torch.no_grad():
            model.generate(torch.randn(2, 80, 200), max_new_tokens=4)
    finally:
        logging.getLogger("transformers").removeHandler(collect)
    assert not [m for m in collect.messages if m.startswith(WHISPER_GENERATE_NOTICES)]


def test_a_short_batch_runs_at_its_own_length_exactly_as_a_model_with_that_window():
    """Features of 200 frames through a 600-frame model equal the same features through a model whose window is
    200 frames (the loss, the encoder states and the decoded tokens), and leave the model's window untouched."""
    torch.manual_seed(0)
    features, labels = torch.randn(2, 80, 200), torch.tensor([[50362, 11, 50256], [50362, 13, 50256]])
    long_window = WhisperModule(source="tiny-random", max_source_positions=300).eval()
    short_window = WhisperModule(source="tiny-random", max_source_positions=100).eval()
    with torch.no_grad():
        cropped = long_window(features, labels=labels, output_hidden_states=True)
        reference = short_window(features, labels=labels, output_hidden_states=True)
        tokens = long_window.generate(features, max_new_tokens=5)
        reference_tokens = short_window.generate(features, max_new_tokens=5)
    torch.testing.assert_close(cropped.loss, reference.loss)
    torch.testing.assert_close(cropped.encoder_last_hidden_state, reference.encoder_last_hidden_state)
    assert torch.equal(tokens, reference_tokens)
    encoder = long_window.backbone.get_encoder()
    assert encoder.embed_positions.num_embeddings == 300 == long_window.backbone.config.max_source_positions
    with pytest.raises(ValueError, match="even number of log-mel frames up to its window of 600; got 601"):
        long_window(torch.randn(1, 80, 601))
