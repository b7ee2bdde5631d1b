from __future__ import annotations

import pytest
from torch import nn

from verticals.core.adapters.targets import detect_families, detect_family, resolve_targets, summarise_names

# (family, preset, expected module names) — anchored names, never a patch embedding or a pooler.
CASES = [
    (
        "hf_bert",
        "attention",
        {
            f"encoder.layer.{i}.attention.{n}"
            for i in (0, 1)
            for n in ("self.query", "self.key", "self.value", "output.dense")
        },
    ),
    ("hf_bert", "qv", {f"encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "value")}),
    ("hf_bert", "mlp", {f"encoder.layer.{i}.{n}.dense" for i in (0, 1) for n in ("intermediate", "output")}),
    ("hf_bert", "blocks", {"encoder.layer.0", "encoder.layer.1"}),
    ("timm_vit", "attention", {f"blocks.{i}.attn.{n}" for i in (0, 1) for n in ("qkv", "proj")}),
    ("timm_vit", "mlp", {f"blocks.{i}.mlp.{n}" for i in (0, 1) for n in ("fc1", "fc2")}),
    (
        "timm_vit",
        "all-linear",
        {f"blocks.{i}.{n}" for i in (0, 1) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")},
    ),
    ("open_clip", "attention", {"transformer.resblocks.0.attn", "transformer.resblocks.1.attn"}),
    ("open_clip", "mlp", {f"transformer.resblocks.{i}.mlp.{n}" for i in (0, 1) for n in ("c_fc", "c_proj")}),
    (
        "hf_whisper",
        "qv",
        {
            f"{side}.layers.0.{attn}.{n}"
            for side, attns in (("encoder", ("self_attn",)), ("decoder", ("self_attn", "encoder_attn")))
            for attn in attns
            for n in ("q_proj", "v_proj")
        },
    ),
    (
        "hf_whisper",
        "mlp",
        {f"{side}.layers.0.{n}" for side in ("encoder", "decoder") for n in ("fc1", "fc2")},
    ),
    ("generic", "attention", {"attention.query"}),
    ("generic", "mlp", {"mlp.fc1", "mlp.fc2"}),
    ("generic", "all-linear", {"attention.query", "mlp.fc1", "mlp.fc2"}),
]


@pytest.mark.parametrize(("family", "preset", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_presets_resolve_to_anchored_names(make_backbone, family, preset, expected):
    model = make_backbone(family)
    assert set(resolve_targets(model, preset)) == expected


@pytest.mark.parametrize("family", ["hf_bert", "hf_whisper", "timm_vit", "open_clip"])
def test_family_detection(make_backbone, family):
    assert detect_family(make_backbone(family)).name == family


def test_a_two_tower_model_resolves_presets_in_both_towers(make_backbone):
    """BiomedCLIP-like: a timm ViT image tower beside an HF BERT text tower."""
    model = nn.Module()
    model.visual, model.text = make_backbone("timm_vit"), make_backbone("hf_bert")
    assert [family.name for family in detect_families(model)] == ["hf_bert", "timm_vit"]
    names = resolve_targets(model, "attention")
    assert {name.split(".")[0] for name in names} == {"visual", "text"}
    assert "visual.blocks.0.attn.qkv" in names and "text.encoder.layer.0.attention.self.query" in names
    assert set(resolve_targets(model, "qv")) == {
        *(f"visual.blocks.{i}.attn.qkv" for i in range(2)),
        *(n for n in names if n.startswith("text.") and n.endswith(("query", "value"))),
    }
    with pytest.raises(ValueError, match="hf_bert \\+ timm_vit"):
        resolve_targets(model, "no_such_module")


def test_generic_backbone_has_no_family(make_backbone):
    assert detect_family(make_backbone("generic")) is None


def test_presets_work_on_a_wrapped_backbone(make_backbone):
    wrapper = nn.Module()
    wrapper.backbone = make_backbone("timm_vit")
    names = resolve_targets(wrapper, "attention")
    assert "backbone.blocks.0.attn.qkv" in names
    assert not any("patch_embed" in name for name in names)


def test_regex_and_list_targets(make_backbone):
    model = make_backbone("hf_bert")
    assert resolve_targets(model, r"encoder\.layer\.0\.attention\.self\.query") == [
        "encoder.layer.0.attention.self.query"
    ]
    assert set(resolve_targets(model, ["intermediate.dense"])) == {
        f"encoder.layer.{i}.intermediate.dense" for i in (0, 1)
    }


def test_layernorm_preset(make_backbone):
    names = resolve_targets(make_backbone("timm_vit"), "layernorm")
    assert set(names) == {f"blocks.{i}.norm{j}" for i in (0, 1) for j in (1, 2)}


def test_unknown_target_lists_candidates(make_backbone):
    with pytest.raises(
        ValueError,
        match=r"'nonexistent' matched no module.*hf_bert.*encoder\.layer\.\{0\.\.1\}\.attention\.self\.query",
    ):
        resolve_targets(make_backbone("hf_bert"), ["nonexistent"])
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_targets(make_backbone("hf_bert"), "(unclosed")
    with pytest.raises(ValueError, match="'blocks' needs a known backbone family"):
        resolve_targets(make_backbone("generic"), "blocks")


def test_summarise_names_collapses_indices():
    names = [f"blocks.{i}.attn.qkv" for i in range(12)] + ["head"]
    assert summarise_names(names) == "blocks.{0..11}.attn.qkv, head"
    assert summarise_names([f"m{i}" for i in range(5)], limit=2).endswith("and 3 more")
