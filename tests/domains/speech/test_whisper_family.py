"""The ``hf_whisper`` backbone family, registered by the speech domain: the presets the speech configs use
(``qv``, ``all-linear``) name exactly the modules they named when the family lived in the core."""

from __future__ import annotations

import pytest
from torch import nn

from verticals.core.adapters.targets import detect_families, resolve_targets
from verticals.domains.speech.models import TINY_RANDOM, WhisperModule, is_hf_whisper, load_whisper

LAYERS = {"encoder": ("self_attn",), "decoder": ("self_attn", "encoder_attn")}


def _names(prefix: str, parts: tuple[str, ...], attention_only: bool = False) -> set[str]:
    """``{prefix}{side}.layers.{i}.{...}`` for the 2 + 2 layers of the tiny random Whisper."""
    names = set()
    for side, attentions in LAYERS.items():
        for i in range(2):
            for attention in attentions:
                names |= {
                    f"{prefix}{side}.layers.{i}.{attention}.{part}" for part in parts if part.endswith("proj")
                }
            if not attention_only:
                names |= {f"{prefix}{side}.layers.{i}.{part}" for part in parts if part.startswith("fc")}
    return names


# What the pre-redesign core family resolved on the same model (recorded from its code, by hand here).
EXPECTED = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "mlp": ("fc1", "fc2"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


@pytest.fixture(scope="module")
def whisper_module() -> WhisperModule:
    return WhisperModule(input_shape=(80, 200), source=TINY_RANDOM)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_presets_name_the_same_modules_as_before(whisper_module, preset):
    names = resolve_targets(whisper_module, preset)
    assert set(names) == _names("backbone.model.", EXPECTED[preset]) and len(names) == len(set(names))
    assert not {"backbone.model.encoder.conv1", "backbone.model.encoder.conv2", "backbone.proj_out"} & set(
        names
    )


def test_blocks_and_detection(whisper_module):
    assert [family.name for family in detect_families(whisper_module)] == ["hf_whisper"]
    assert set(resolve_targets(whisper_module, "blocks")) == {
        f"backbone.model.{side}.layers.{i}" for side in LAYERS for i in range(2)
    }


def test_the_detector_checks_the_whole_structure():
    model, _ = load_whisper(TINY_RANDOM)
    assert is_hf_whisper(model.model)
    model.model.decoder.layers[1].encoder_attn.v_proj = nn.Identity()
    assert not is_hf_whisper(model.model)
    assert "hf_whisper" not in [family.name for family in detect_families(model)]


def test_s2lora_without_target_modules_adapts_q_and_v_of_a_whisper():
    """The speech domain registers Whisper's default S2-LoRA targets (the paper's q/v projections)."""
    from peft import get_peft_model

    from verticals.core.adapters.s2lora import S2LoRAConfig, S2LoRALayer

    whisper, _ = load_whisper(TINY_RANDOM)
    model = get_peft_model(whisper, S2LoRAConfig(r=2))
    adapted = {m.module_name.rsplit(".", 1)[-1] for m in model.modules() if isinstance(m, S2LoRALayer)}
    assert adapted == {"q_proj", "v_proj"}
