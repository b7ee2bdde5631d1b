from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel

from verticals.core import (
    AdapterSpec,
    adapt,
    build_peft_config,
    compose,
    load_adapter,
    merge,
    merge_in_place,
    negate,
    parameter_summary,
    peft_methods,
    save_adapter,
    unmerge,
)

# (method, family, targets, options) rows: every row adapts, trains only what it should, and round-trips
# through peft.
METHODS = [
    ("lora", "hf_bert", "attention", {"r": 4, "lora_alpha": 8}),
    ("lora", "timm_vit", "attention", {"r": 2}),
    ("lora", "open_clip", "attention", {"r": 2}),
    ("lora", "hf_whisper", "attention", {"r": 2}),
    ("lora", "generic", "attention", {"r": 2}),
    ("lora", "timm_convnext", "all-linear", {"r": 3}),  # no depthwise conv: any rank works
    ("lora", "monai_vit", "attention", {"r": 2}),
    ("ia3", "timm_vit", "mlp", {}),
    ("loha", "timm_vit", "attention", {"r": 2}),
    ("bottleneck", "timm_vit", "blocks", {"bottleneck_dim": 4}),
    ("s2lora", "timm_vit", "all-linear", {"r": 2, "init_weights": False}),
]


def _inputs(family: str) -> dict:
    torch.manual_seed(1)
    if family == "hf_bert":
        return {"input_ids": torch.randint(0, 32, (2, 5))}
    if family == "hf_whisper":
        return {"input_features": torch.randn(2, 8, 32), "decoder_input_ids": torch.randint(0, 64, (2, 3))}
    if family == "timm_vit":
        return {"x": torch.randn(2, 3, 8, 8)}
    if family == "open_clip":
        return {"x": torch.randn(2, 4, 16)}
    if family == "timm_convnext":
        return {"x": torch.randn(2, 3, 32, 32)}
    if family == "monai_vit":
        return {"x": torch.randn(2, 1, 16, 16)}
    return {"x": torch.randn(2, 8)}


def _output(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    if isinstance(out, tuple):  # MONAI's ViT returns (logits, hidden states)
        return out[0]
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def _randomise_adapter(model) -> None:
    """Adapters start as the identity; perturb them so a round-trip test can fail."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))


@pytest.mark.parametrize(
    ("method", "family", "targets", "options"), METHODS, ids=[f"{m}-{f}" for m, f, _, _ in METHODS]
)
def test_adapter_round_trips_through_stock_peft(tmp_path, make_backbone, method, family, targets, options):
    if method == "ia3":
        options = {
            "feedforward_modules": build_peft_config(make_backbone(family), "lora", "mlp").target_modules
        }
    model = adapt(make_backbone(family), method, targets=targets, **options)
    summary = parameter_summary(model)
    assert 0 < summary.trainable < summary.total
    _randomise_adapter(model)
    inputs = _inputs(family)
    model.eval()
    expected = _output(model, inputs)
    save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(make_backbone(family), str(tmp_path)).eval()
    torch.testing.assert_close(_output(reloaded, inputs), expected)


def test_adapter_file_size_matches_trainable_bytes(tmp_path):
    from transformers import BertConfig, BertModel

    # MiniLM's width (384) and depth (6): the safetensors header is small next to real adapter tensors.
    config = BertConfig(
        vocab_size=8, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=64
    )
    model = adapt(BertModel(config), "lora", targets="attention", r=8)
    save_adapter(model, tmp_path)
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    expected = parameter_summary(model).trainable_bytes
    assert abs(size - expected) / expected < 0.10


def test_anchored_targets_are_saved(tmp_path, make_backbone):
    model = adapt(make_backbone("timm_vit"), "lora", targets="attention", r=2)
    save_adapter(model, tmp_path)
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert "patch_embed.proj" not in targets and "blocks.0.attn.proj" in targets


def test_accepts_a_peft_config_with_a_preset(make_backbone):
    model = adapt(make_backbone("hf_bert"), LoraConfig(r=2, target_modules="qv"))
    assert set(model.peft_config["default"].target_modules) == {
        f"encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "value")
    }


def test_adapter_spec_and_trainable_modules(make_backbone):
    spec = AdapterSpec(method="lora", targets="attention", trainable=["head"], options={"r": 2})
    model = adapt(make_backbone("timm_vit"), spec)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("head.modules_to_save" in name for name in trainable)
    assert not any("patch_embed" in name for name in trainable)


def test_regimes(make_backbone):
    probe = adapt(make_backbone("timm_vit"), "linear_probe", trainable=["head"])
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    full = adapt(make_backbone("timm_vit"), "full")
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="needs `trainable`"):
        adapt(make_backbone("timm_vit"), "linear_probe")


def test_bad_method_and_options(make_backbone):
    with pytest.raises(ValueError, match="Unknown adapter method 'lorra'.*lora"):
        adapt(make_backbone("hf_bert"), "lorra")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['rank'\] for method 'lora'"):
        adapt(make_backbone("hf_bert"), "lora", rank=4)
    assert {"lora", "bottleneck", "ln_tuning", "full", "linear_probe"} <= set(peft_methods())


def test_merge_unmerge_and_merged_outputs(make_backbone):
    model = adapt(make_backbone("timm_vit"), "lora", targets="all-linear", r=2).eval()
    _randomise_adapter(model)
    x = torch.randn(2, 3, 8, 8)
    adapted = model(x)
    merge_in_place(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-4, atol=1e-5)
    unmerge(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-4, atol=1e-5)
    plain = merge(model)
    assert not isinstance(plain, PeftModel)
    torch.testing.assert_close(plain(x), adapted, rtol=1e-4, atol=1e-5)


def test_composition_add_negate_and_ties(make_backbone):
    base = make_backbone("timm_vit").eval()
    x = torch.randn(2, 3, 8, 8)
    reference = base(x)
    model = adapt(base, "lora", targets="attention", adapter_name="a", r=2)
    model.add_adapter("b", model.peft_config["a"])
    _randomise_adapter(model)
    model.set_adapter("b")
    _randomise_adapter(model)
    model.eval()
    negate(model, "a", name="minus_a")
    compose(model, ["a", "minus_a"], [1.0, 1.0], name="zero")
    model.set_adapter("zero")
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)  # a + (−a) = base
    compose(model, ["a", "b"], [0.5, 0.5], name="ties", combination="ties", density=0.5)
    assert "ties" in model.peft_config
    with pytest.raises(ValueError, match="one weight per adapter"):
        compose(model, ["a", "b"], [1.0], name="bad")
    with pytest.raises(ValueError, match="Unknown adapter"):
        compose(model, ["c"], [1.0], name="bad")
    with pytest.raises(ValueError, match="Unknown combination"):
        compose(model, ["a"], [1.0], name="bad", combination="average")


def test_composition_and_merge_need_a_peft_model(make_backbone):
    with pytest.raises(TypeError, match="needs a peft.PeftModel"):
        merge(make_backbone("timm_vit"))


def test_save_and_load_without_an_adapter(tmp_path, make_backbone):
    model = adapt(make_backbone("timm_vit"), "linear_probe", trainable=["head"])
    with torch.no_grad():
        model.head.weight.fill_(0.5)
    save_adapter(model, tmp_path)
    restored = load_adapter(make_backbone("timm_vit"), tmp_path)
    torch.testing.assert_close(restored.head.weight, model.head.weight)
    with pytest.raises(FileNotFoundError, match="No adapter in"):
        load_adapter(make_backbone("timm_vit"), tmp_path / "missing")


def test_load_adapter_peft_format(tmp_path, make_backbone):
    model = adapt(make_backbone("hf_bert"), "lora", targets="qv", r=2)
    save_adapter(model, tmp_path)
    assert isinstance(load_adapter(make_backbone("hf_bert"), tmp_path), PeftModel)


def test_parameter_summary_counts(make_backbone):
    model = adapt(make_backbone("timm_vit"), "lora", targets="attention", r=2)
    summary = parameter_summary(model, ignore=[r"patch_embed"])
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert summary.trainable == lora
    assert summary.ignored == 3 * 16 * 16 + 16
    assert "trainable %" in str(summary) and summary.as_dict()["trainable_percent"] > 0


class _HeadAndConvHead(torch.nn.Module):
    """timm-style names: peft's suffix match of ``head`` also catches ``conv_head``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 4)
        self.conv_head = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_head(self.fc(x)))


def test_trainable_modules_are_exactly_the_named_ones(tmp_path):
    from safetensors.torch import load_file

    model = adapt(
        _HeadAndConvHead(), AdapterSpec(method="lora", targets=["fc"], trainable=["head"], options={"r": 2})
    )
    trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert not any("conv_head" in name for name in trained) and any(
        ".head.modules_to_save." in n for n in trained
    )
    with torch.no_grad():
        model.base_model.model.head.modules_to_save["default"].weight.add_(1.0)
        model.base_model.model.fc.lora_B["default"].weight.add_(0.1)
    save_adapter(model, tmp_path)
    saved = load_file(
        str(tmp_path / "adapter_model.safetensors")
    )  # conv_head's copy, unchanged, for stock peft
    torch.testing.assert_close(
        saved["base_model.model.conv_head.weight"], model.base_model.model.conv_head.weight
    )
    x = torch.randn(3, 4)
    reloaded = load_adapter(_HeadAndConvHead(), tmp_path, is_trainable=True)
    assert not any("conv_head" in n for n, p in reloaded.named_parameters() if p.requires_grad)
    stock = PeftModel.from_pretrained(_HeadAndConvHead(), str(tmp_path))  # peft alone: same outputs
    model.eval()
    torch.testing.assert_close(reloaded(x), model(x))
    torch.testing.assert_close(stock(x), model(x))
