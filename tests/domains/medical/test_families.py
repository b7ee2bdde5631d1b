"""The medical domain's backbone families: BiomedCLIP's ``clip_qkv`` and EfficientNet's ``pointwise_convs``
presets pick exactly the modules the configs' former regexes picked, and the preset rules hold on both."""

from __future__ import annotations

import re

import pytest
from torch import nn

from verticals.core.adapters.targets import detect_families, resolve_targets

pytest.importorskip("open_clip")

from verticals.domains.medical.clip import CLIPClassifier  # noqa: E402
from verticals.domains.medical.models import EfficientNetClassifier  # noqa: E402

# The regexes the seven YAML files carried before the families held them (matched on every module name).
FORMER_CLIP_REGEX = (
    r"(?:.*\.)?(?:visual\.trunk\.blocks\.\d+\.attn\.qkv"
    r"|text\.transformer\.encoder\.layer\.\d+\.attention\.self\.(?:query|key|value))"
)
FORMER_EFFICIENTNET_REGEX = r"(?:.*\.)?backbone\.(?:blocks\.\d+\.\d+\.conv_pwl?|conv_head)"


@pytest.fixture(scope="module")
def clip() -> nn.Module:
    return CLIPClassifier(input_shape=(3, 160, 160), num_outputs=2, class_names=["benign", "malignant"])


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    return EfficientNetClassifier(input_shape=(3, 64, 64), num_outputs=2, pretrained=False)


def _former(model: nn.Module, regex: str) -> list[str]:
    return [name for name, _ in model.named_modules() if name and re.fullmatch(regex, name)]


def test_clip_qkv_is_exactly_the_former_regex(clip):
    assert [f.name for f in detect_families(clip)] == ["hf_bert", "timm_vit", "biomedclip"]
    names = resolve_targets(clip, "clip_qkv")
    assert names == _former(clip, FORMER_CLIP_REGEX) and len(names) == 12  # 6 image blocks, 2 x 3 text


def test_pointwise_convs_is_exactly_the_former_regex(efficientnet):
    assert [f.name for f in detect_families(efficientnet)] == ["timm_efficientnet"]
    names = resolve_targets(efficientnet, "pointwise_convs")
    assert names == _former(efficientnet, FORMER_EFFICIENTNET_REGEX) and len(names) == 32


def test_efficientnet_all_linear_takes_the_pointwise_convs_not_the_stem_depthwise_or_classifier(efficientnet):
    names = resolve_targets(efficientnet, "all-linear")
    assert names == resolve_targets(efficientnet, "pointwise_convs")  # Lite0 has no squeeze-excitation convs
    modules = dict(efficientnet.named_modules())
    assert not any(modules[name].groups > 1 for name in names)
    assert "backbone.conv_stem" not in names and "fc.1" not in names


@pytest.mark.parametrize("preset", ["attention", "qv", "mlp"])
def test_efficientnet_has_no_attention_or_mlp_presets_and_says_why(efficientnet, preset):
    with pytest.raises(ValueError, match="EfficientNet is convolutional.*Presets there are: pointwise_convs"):
        resolve_targets(efficientnet, preset)


def test_clip_standard_presets_follow_the_rules(clip):
    attention = resolve_targets(clip, "attention")
    assert set(resolve_targets(clip, "clip_qkv")) < set(attention)
    assert {name.rpartition(".")[2] for name in attention} == {
        "qkv",
        "proj",
        "query",
        "key",
        "value",
        "dense",
    }
    all_linear = resolve_targets(clip, "all-linear")
    assert not any(
        part in name for name in all_linear for part in ("patch_embed", "head", "text.proj", "pooler")
    )
    with pytest.raises(
        ValueError, match="'qv' cannot apply.*timm fuses q, k and v.*Presets there are: .*clip_qkv"
    ):
        resolve_targets(
            clip, "qv"
        )  # the text tower alone would be adapted: an error, not a half-adapted model


def test_detectors_check_the_whole_structure(clip, efficientnet):
    import timm

    text_only = nn.Module()
    text_only.text = clip.backbone.text
    assert "biomedclip" not in [f.name for f in detect_families(text_only)]
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=2)
    assert detect_families(convnext) == []
    mobilenet = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=2)
    assert "timm_efficientnet" not in [
        f.name for f in detect_families(mobilenet)
    ]  # last stage has no conv_dw
