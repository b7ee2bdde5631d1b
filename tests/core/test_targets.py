from __future__ import annotations

import pytest
import torch
from torch import nn

from verticals.core import adapt
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
    # An HF encoder-decoder through the generic presets (the speech domain's family gives the same names).
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
    ("generic", "qv", {"attention.query"}),
    ("generic", "mlp", {"mlp.fc1", "mlp.fc2"}),
    ("generic", "all-linear", {"attention.query", "mlp.fc1", "mlp.fc2"}),
    ("monai_vit", "attention", {f"blocks.{i}.attn.{n}" for i in (0, 1) for n in ("qkv", "out_proj")}),
    ("monai_vit", "mlp", {f"blocks.{i}.mlp.{n}" for i in (0, 1) for n in ("linear1", "linear2")}),
    (
        "monai_vit",
        "all-linear",
        {
            f"blocks.{i}.{n}"
            for i in (0, 1)
            for n in ("attn.qkv", "attn.out_proj", "mlp.linear1", "mlp.linear2")
        },
    ),
    ("timm_convnext", "mlp", {f"stages.{s}.blocks.0.mlp.{n}" for s in range(4) for n in ("fc1", "fc2")}),
    (
        "timm_convnext",
        "all-linear",
        {f"stages.{s}.blocks.0.mlp.{n}" for s in range(4) for n in ("fc1", "fc2")},
    ),
]


@pytest.mark.parametrize(("family", "preset", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_presets_resolve_to_anchored_names(make_backbone, family, preset, expected):
    model = make_backbone(family)
    assert set(resolve_targets(model, preset)) == expected


@pytest.mark.parametrize("family", ["hf_bert", "timm_vit", "open_clip"])
def test_family_detection(make_backbone, family):
    assert detect_family(make_backbone(family)).name == family


@pytest.mark.parametrize("backbone", ["generic", "timm_convnext", "monai_vit"])
def test_backbones_of_no_family(make_backbone, backbone):
    assert detect_families(make_backbone(backbone)) == []


# --- the preset rules, on every backbone the tests build --------------------------------------------------

# Modules no standard preset may take, named by hand: patch embeddings and stems, poolers, classifier heads,
# embedding tables, grouped (depthwise) convolutions.
FORBIDDEN = {
    "hf_bert": {
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
        "pooler.dense",
    },
    "hf_whisper": {
        "encoder.conv1",
        "encoder.conv2",
        "encoder.embed_positions",
        "decoder.embed_tokens",
        "decoder.embed_positions",
    },
    "timm_vit": {"patch_embed.proj", "head"},
    "open_clip": {"proj_out"},
    "generic": {"head"},
    "timm_convnext": {"stem.0", "head.fc", *(f"stages.{s}.blocks.0.conv_dw" for s in range(4))},
    "monai_vit": {"patch_embedding.patch_embeddings", "classification_head.0"},
}
# (backbone, preset) pairs that cannot apply: fused q/k/v, or no attention at all.
CANNOT_APPLY = {
    ("timm_vit", "qv"): "fuses q, k and v",
    ("open_clip", "qv"): "in_proj_weight",
    ("monai_vit", "qv"): "fuses q, k and v into blocks.{0..1}.attn.qkv",
    ("timm_convnext", "attention"): "matched no module",
    ("timm_convnext", "qv"): "matched no module",
}
QV_NAMES = {"q", "v", "query", "value", "q_proj", "v_proj"}


@pytest.mark.parametrize("backbone", sorted(FORBIDDEN))
@pytest.mark.parametrize("preset", ["attention", "qv", "mlp", "all-linear"])
def test_preset_rules_hold_on_every_backbone(make_backbone, backbone, preset):
    model = make_backbone(backbone)
    forbidden = FORBIDDEN[backbone]
    assert forbidden <= {name for name, _ in model.named_modules()}  # the table names real modules
    if (backbone, preset) in CANNOT_APPLY:
        with pytest.raises(ValueError, match="Candidate module names") as error:
            resolve_targets(model, preset)
        assert CANNOT_APPLY[(backbone, preset)] in str(error.value)
        return
    names = resolve_targets(model, preset)
    assert names and not forbidden & set(names)
    modules = [model.get_submodule(name) for name in names]
    assert not any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in modules)
    if preset == "qv":
        assert {name.rpartition(".")[2] for name in names} <= QV_NAMES
    if preset == "all-linear":
        for name, module in zip(names, modules):
            pointwise = isinstance(module, nn.modules.conv._ConvNd) and set(module.kernel_size) == {1}
            assert isinstance(module, (nn.Linear, nn.MultiheadAttention)) or pointwise, name


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_lora_on_all_linear_of_a_convnext_takes_any_rank(make_backbone, conv_mlp):
    """The depthwise convs are left out, so peft accepts a rank that is no multiple of their groups."""
    model = make_backbone("timm_convnext", conv_mlp=conv_mlp)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    adapted = adapt(model, "lora", targets="all-linear", r=3)
    wrapped = [name for name, module in adapted.named_modules() if hasattr(module, "lora_A")]
    assert len(wrapped) == 8 and all(".mlp.fc" in name for name in wrapped)
    torch.testing.assert_close(adapted(x), expected)  # LoRA starts as the identity


def test_two_tower_model_resolves_presets_in_both_towers(make_backbone):
    """BiomedCLIP-like: a timm ViT image tower beside an HF BERT text tower."""
    model = nn.Module()
    model.visual, model.text = make_backbone("timm_vit"), make_backbone("hf_bert")
    assert [family.name for family in detect_families(model)] == ["hf_bert", "timm_vit"]
    names = resolve_targets(model, "attention")
    assert {name.split(".")[0] for name in names} == {"visual", "text"}
    assert "visual.blocks.0.attn.qkv" in names and "text.encoder.layer.0.attention.self.query" in names
    # One tower fuses q, k and v: 'qv' would silently adapt only the other one, so it is an error.
    with pytest.raises(
        ValueError, match=r"'qv' cannot apply.*timm_vit: timm fuses q, k and v.*Presets there"
    ):
        resolve_targets(model, "qv")
    with pytest.raises(ValueError, match="hf_bert \\+ timm_vit"):
        resolve_targets(model, "no_such_module")


def test_a_detector_checks_the_whole_structure(make_backbone):
    """One renamed projection in one block makes a timm-like ViT generic: its presets would miss it."""
    vit = make_backbone("timm_vit")
    vit.blocks[1].mlp.linear1 = vit.blocks[1].mlp.fc1
    del vit.blocks[1].mlp.fc1
    assert detect_families(vit) == []
    monai = make_backbone("monai_vit")
    assert {name for name, _ in monai.named_modules()} >= {"blocks.0.attn.qkv", "blocks.1.attn.qkv"}
    assert detect_families(monai) == []


def test_family_presets_stay_inside_their_backbone(make_backbone):
    """A ConvNeXt beside a timm ViT: its ``stages.N.blocks.M.mlp.fc1`` are no timm ViT MLPs."""
    model = nn.Module()
    model.vit, model.cnn = make_backbone("timm_vit"), make_backbone("timm_convnext")
    assert [family.name for family in detect_families(model)] == ["timm_vit"]
    assert set(resolve_targets(model, "mlp")) == {
        f"vit.blocks.{i}.mlp.{n}" for i in (0, 1) for n in ("fc1", "fc2")
    }


def test_generic_backbone_has_no_family(make_backbone):
    assert detect_family(make_backbone("generic")) is None


def test_presets_work_on_a_wrapped_backbone(make_backbone):
    wrapper = nn.Module()
    wrapper.backbone = make_backbone("timm_vit")
    names = resolve_targets(wrapper, "attention")
    assert "backbone.blocks.0.attn.qkv" in names
    assert not any("patch_embed" in name for name in names)
    # Only names inside the family's backbone are judged: a wrapper may call its tower anything.
    tower = nn.Module()
    tower.classifier = make_backbone("timm_vit")
    assert len(resolve_targets(tower, "all-linear")) == 8


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


def test_kinds_narrow_a_preset_and_the_error_names_them(make_backbone):
    model = make_backbone("timm_vit")
    assert resolve_targets(model, "blocks", kinds=(nn.LayerNorm,)) == [
        "blocks.0",
        "blocks.1",
    ]  # never narrowed
    with pytest.raises(ValueError, match=r"matched no module of the kinds this method adapts \(LayerNorm\)"):
        resolve_targets(model, "attention", kinds=(nn.LayerNorm,))


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


def test_lora_on_monai_vit_attention_and_mlp(make_backbone):
    """MONAI's ViT, as the generic presets read it: attention includes ``out_proj``, mlp is ``linear1/2``."""
    model = adapt(make_backbone("monai_vit"), "lora", targets="mlp", r=2)
    wrapped = {name for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert len(wrapped) == 4 and all(".mlp.linear" in name for name in wrapped)
    assert model(torch.randn(1, 1, 16, 16))[0].shape == (1, 3)
