"""S2-LoRA: shared pairs per shape, rank coefficients per weight, L1 penalty, merge and peft save/load."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

from verticals.core import adapt, save_adapter
from verticals.core.adapters.s2lora import S2LoRAConfig, S2LoRALayer, S2LoRAModel, shape_key
from verticals.core.peft_methods import registered_methods

CONFIG = WhisperConfig(
    vocab_size=64,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    num_mel_bins=8,
    max_source_positions=10,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


def tiny_whisper() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(CONFIG).eval()


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_features": torch.randn(2, 8, 20, generator=generator),
        "decoder_input_ids": torch.tensor([[1, 5, 6, 7], [1, 8, 9, 3]]),
    }


def _adapted(**options) -> PeftModel:
    options = {"r": 4, "init_weights": False, **options}
    return adapt(tiny_whisper(), "s2lora", targets="all-linear", **options)


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs()).logits


def test_s2lora_is_a_registered_peft_method():
    assert registered_methods()["s2lora"] is S2LoRAConfig
    assert isinstance(_adapted().base_model, S2LoRAModel)


def test_one_shared_pair_per_weight_shape():
    model = _adapted()
    layers = [m for m in model.modules() if isinstance(m, S2LoRALayer)]
    shapes = {(m.in_features, m.out_features) for m in layers}
    assert shapes == {(16, 16), (16, 32), (32, 16)}  # attention, fc1, fc2
    pairs = model.base_model.shared_pairs()
    assert set(pairs) == {shape_key(i, o) for i, o in shapes}
    for layer in layers:
        pair_a, pair_b = layer.pair("default")
        shared_a, shared_b = pairs[shape_key(layer.in_features, layer.out_features)]
        assert pair_a is shared_a and pair_b is shared_b  # the same tensor object, not a copy
    names = [name for name, _ in model.named_parameters() if ".s2lora_A." in name or ".s2lora_B." in name]
    assert len(names) == 2 * len(shapes)  # each pair appears once in the module tree
    # Trainable count: 3 pairs of rank 4 plus one λ (length 4) per adapted layer.
    expected = sum(4 * (i + o) for i, o in shapes) + 4 * len(layers)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_fresh_adapter_leaves_the_model_unchanged():
    base_logits = _logits(tiny_whisper())
    torch.testing.assert_close(_logits(_adapted(init_weights=True)), base_logits)
    assert not torch.allclose(_logits(_adapted()), base_logits)


def test_delta_weight_is_scaled_b_diag_lambda_a():
    model = _adapted(alpha=8.0)
    layer = next(m for m in model.modules() if isinstance(m, S2LoRALayer))
    with torch.no_grad():
        layer.s2lora_lambda["default"].copy_(torch.tensor([1.0, 0.0, -2.0, 0.5]))
    pair_a, pair_b = layer.pair("default")
    expected = 2.0 * pair_b @ torch.diag(layer.s2lora_lambda["default"]) @ pair_a  # s = alpha / r = 2
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    x = torch.randn(3, layer.in_features)
    torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + x @ expected.T)


def test_l1_penalty_value_and_gradient():
    model = _adapted(sparsity_weight=0.01, lambda_init=0.5)
    layers = [m for m in model.modules() if isinstance(m, S2LoRALayer)]
    penalty = model.regularization_loss()
    torch.testing.assert_close(penalty, torch.tensor(0.01 * 0.5 * 4 * len(layers)))
    penalty.backward()
    grad = layers[0].s2lora_lambda["default"].grad
    torch.testing.assert_close(grad, torch.full((4,), 0.01))
    assert _adapted(sparsity_weight=0.0).regularization_loss().item() == 0.0


def test_merged_equals_unmerged_and_unmerge_restores():
    model = _adapted()
    before = _logits(model)
    weight = model.base_model.model.model.encoder.layers[0].fc1.base_layer.weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(_logits(model), before, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(model.base_model.model.model.encoder.layers[0].fc1.base_layer.weight, weight)
    merged = model.merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, S2LoRALayer) for m in merged.modules())
    torch.testing.assert_close(_logits(merged), before, atol=1e-5, rtol=1e-5)


def test_save_and_load_with_stock_peft(tmp_path):
    model = _adapted()
    expected = _logits(model)
    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    shared = sorted(k for k in tensors if ".s2lora_A." in k or ".s2lora_B." in k)
    assert shared == [
        f"base_model.s2lora_{m}.{shape_key(i, o)}" for m in "AB" for i, o in [(16, 16), (16, 32), (32, 16)]
    ]
    assert sum(".s2lora_lambda" in k for k in tensors) == len(tensors) - len(shared)
    loaded = PeftModel.from_pretrained(tiny_whisper(), str(tmp_path))
    torch.testing.assert_close(_logits(loaded), expected)
    layer = next(m for m in loaded.modules() if isinstance(m, S2LoRALayer))
    assert layer.pair("default")[0] is loaded.base_model.s2lora_A["default"][layer.shape_key["default"]]


def test_far_fewer_parameters_than_lora_on_the_same_targets():
    lora = adapt(tiny_whisper(), "lora", targets="all-linear", r=4)
    s2 = _adapted()
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(s2) * 4 <= count(lora)


def test_trains_and_sparsifies_unneeded_ranks():
    """With a strong L1 penalty and nothing to learn, the rank coefficients shrink towards zero."""
    model = _adapted(sparsity_weight=0.05)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    start = model.regularization_loss().item()
    for _ in range(30):
        optimizer.zero_grad()
        model.regularization_loss().backward()
        optimizer.step()
    assert model.regularization_loss().item() < 0.2 * start
    assert set(model.base_model.rank_usage(threshold=0.5).values()) == {0}


def test_second_adapter_has_its_own_pairs_and_switching_freezes_the_other():
    model = _adapted()
    model.add_adapter("other", S2LoRAConfig(target_modules=["q_proj"], r=2))
    assert set(model.base_model.shared_pairs("other")) == {shape_key(16, 16)}
    model.set_adapter("other")
    assert all(not p.requires_grad for p in model.base_model.s2lora_A["default"].values())
    assert all(p.requires_grad for p in model.base_model.s2lora_A["other"].values())
    model.delete_adapter("default")
    assert "default" not in model.base_model.s2lora_A


def test_rejects_non_linear_targets_and_bad_options():
    conv = nn.Sequential(nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError, match="nn.Linear"):
        get_peft_model(conv, S2LoRAConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="`r`"):
        S2LoRAConfig(r=0)
    with pytest.raises(ValueError, match="sparsity_weight"):
        S2LoRAConfig(sparsity_weight=-1.0)
    with pytest.raises(ValueError, match="dropout"):
        S2LoRAConfig(dropout=1.5)


def test_a_model_type_without_default_targets_needs_target_modules():
    # Whisper's default (q_proj, v_proj) is registered by the speech domain: tests/domains/speech.
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(nn.Sequential(nn.Linear(2, 2)), S2LoRAConfig())
