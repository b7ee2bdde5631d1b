"""Convert a CTranslate2 Whisper model (``WhisperSpec``) to ``transformers.WhisperForConditionalGeneration``.

CTranslate2 fuses what Hugging Face keeps apart, so the conversion splits the encoder and decoder
self-attention ``linear_0`` into q/k/v and the cross-attention ``linear_1`` into k/v, renames layer
norms (``gamma/beta`` → ``weight/bias``), and casts fp16/bf16 to fp32. The output projection is an
alias of the token embeddings in both formats (tied). HF's ``k_proj`` has no bias: a key bias adds
the same score to every key of a query, which softmax cancels, so dropping it is exact; the converter
checks that it is zero anyway and says so if not.

Verified against ``ctranslate2.models.Whisper``'s greedy transcripts in
``tests/domains/speech/test_convert.py`` (marked ``slow``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from verticals.domains.speech.ct2_format import CT2Model, read_ct2_model

log = logging.getLogger(__name__)

__all__ = [
    "ct2_to_hf_state_dict",
    "load_ct2_whisper",
    "whisper_config_from_ct2",
]

#: Token ids of the English-only Whisper vocabulary (51,864 entries), fixed since OpenAI's release.
ENGLISH_ONLY_SPECIAL_IDS = {"eos": 50256, "decoder_start": 50257, "no_timestamps": 50362}


def _count_layers(model: CT2Model, stack: str) -> int:
    parts = {name.split("/")[1] for name in model.variables if name.startswith(f"{stack}/layer_")}
    indices = sorted(int(part[6:]) for part in parts if part[6:].isdigit())
    if indices != list(range(len(indices))) or not indices:
        raise ValueError(f"CTranslate2 {stack} layers are not numbered 0..N-1: found {indices}.")
    return len(indices)


def whisper_config_from_ct2(model: CT2Model, extra: dict | None = None) -> WhisperConfig:
    """The ``WhisperConfig`` that the variables of ``model`` describe (sizes read from the tensors).

    ``extra`` is CTranslate2's ``config.json`` (suppress ids); English-only vs multilingual follows
    the vocabulary size (51,864 is English-only).
    """
    if model.spec_name != "WhisperSpec":
        raise ValueError(f"Expected a CTranslate2 'WhisperSpec' model, got {model.spec_name!r}.")
    extra = extra or {}
    embeddings = model.get("decoder/embeddings/weight")
    vocab_size, d_model = embeddings.shape
    ffn_dim = model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    english_only = vocab_size == 51864
    eos, start = (50256, 50257) if english_only else (50257, 50258)
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=model.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=start,
        suppress_tokens=list(extra.get("suppress_ids", [])),
        begin_suppress_tokens=list(extra.get("suppress_ids_begin", [])),
        tie_word_embeddings=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


def _norm(model: CT2Model, source: str, target: str) -> dict[str, torch.Tensor]:
    return {f"{target}.weight": model.get(f"{source}/gamma"), f"{target}.bias": model.get(f"{source}/beta")}


def _linear(model: CT2Model, source: str, target: str) -> dict[str, torch.Tensor]:
    return {f"{target}.weight": model.get(f"{source}/weight"), f"{target}.bias": model.get(f"{source}/bias")}


def _split_projection(
    model: CT2Model, source: str, prefix: str, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Split a fused projection (rows stacked in ``names`` order) into HF's separate ``*_proj``."""
    weights = model.get(f"{source}/weight").chunk(len(names), dim=0)
    biases = model.get(f"{source}/bias").chunk(len(names), dim=0)
    out: dict[str, torch.Tensor] = {}
    for name, weight, bias in zip(names, weights, biases):
        out[f"{prefix}.{name}_proj.weight"] = weight
        if name == "k":
            if bias.abs().max() > 0:
                log.info("%s: non-zero key bias dropped (softmax cancels it; HF k_proj has no bias).", source)
        else:
            out[f"{prefix}.{name}_proj.bias"] = bias
    return out


def _self_attention_and_ffn(model: CT2Model, src: str, dst: str) -> dict[str, torch.Tensor]:
    """The parts every encoder and decoder layer has: fused-QKV self-attention, the feed-forward block."""
    sd = _split_projection(model, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"))
    sd.update(_linear(model, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
    sd.update(_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
    sd.update(_linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1"))
    sd.update(_linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2"))
    sd.update(_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    return sd


def ct2_to_hf_state_dict(model: CT2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    """HF parameter name → fp32 tensor for every parameter of ``WhisperForConditionalGeneration``."""
    sd: dict[str, torch.Tensor] = {}
    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        sd.update(_linear(model, f"encoder/{conv}", f"{enc}.{conv}"))
    sd[f"{enc}.embed_positions.weight"] = model.get("encoder/position_encodings/encodings")
    sd.update(_norm(model, "encoder/layer_norm", f"{enc}.layer_norm"))
    for i in range(config.encoder_layers):
        sd.update(_self_attention_and_ffn(model, f"encoder/layer_{i}", f"{enc}.layers.{i}"))
    sd[f"{dec}.embed_tokens.weight"] = model.get("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = model.get("decoder/position_encodings/encodings")
    sd.update(_norm(model, "decoder/layer_norm", f"{dec}.layer_norm"))
    for i in range(config.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        sd.update(_self_attention_and_ffn(model, src, dst))
        sd.update(_linear(model, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
        sd.update(_split_projection(model, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v")))
        sd.update(_linear(model, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
        sd.update(_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
    projection = model.get("decoder/projection/weight")
    if not torch.equal(projection, sd[f"{dec}.embed_tokens.weight"]):
        raise ValueError(
            "CTranslate2 decoder/projection/weight differs from decoder/embeddings/weight; HF Whisper ties them, "
            "so this model cannot be converted without changing its outputs."
        )
    return {name: tensor.to(torch.float32).contiguous() for name, tensor in sd.items()}


def load_ct2_whisper(directory: str | Path) -> WhisperForConditionalGeneration:
    """Build the HF Whisper model that a CTranslate2 Whisper directory holds, in eval mode.

    Every HF parameter must get a source of the same shape; a missing or extra name is an error.
    """
    directory = Path(directory)
    ct2 = read_ct2_model(directory)
    extra_path = directory / "config.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    config = whisper_config_from_ct2(ct2, extra)
    state = ct2_to_hf_state_dict(ct2, config)
    with torch.device("meta"):
        skeleton = WhisperForConditionalGeneration(config)
    expected = {name: p.shape for name, p in skeleton.state_dict().items() if name != "proj_out.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(expected) & set(state) if tuple(expected[n]) != tuple(state[n].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"CTranslate2 → HF Whisper mapping is incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {[(n, tuple(state[n].shape), tuple(expected[n])) for n in wrong[:5]]}."
        )
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False, assign=False)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise RuntimeError("proj_out is not tied to the decoder token embeddings after conversion.")
    return model.eval()
