"""espeak-ng synthesis, the acoustic conditions and the sentence generator."""

from __future__ import annotations

import ctypes

import pytest
import torch

from verticals.domains.speech.conditions import CONDITIONS, Condition, render, room_impulse_response
from verticals.domains.speech.synthesis import (
    ESPEAK_SAMPLE_RATE,
    Voice,
    espeak_version,
    synthesize,
    synthesize_native,
)
from verticals.domains.speech.text import normalize_transcript, template_sentences


def test_synthesis_is_reproducible_and_resampled_to_16k():
    first = synthesize_native("Hello there.")
    assert first.dtype.name == "float32" and 0.05 < abs(first).max() <= 1.0
    assert (synthesize_native("Hello there.") == first).all()  # the same samples every call
    ctypes.CDLL(None).rand()  # the parent's libc rand() state, inherited by the child, must not matter
    assert (synthesize_native("Hello there.") == first).all()
    resampled = synthesize("Hello there.")
    assert abs(resampled.numel() - len(first) * 16_000 / ESPEAK_SAMPLE_RATE) <= 1
    assert espeak_version().startswith("espeakng-loader ")


def test_voice_controls_change_the_audio():
    base = synthesize_native("Good morning.", Voice())
    faster = synthesize_native("Good morning.", Voice(rate=300))
    assert len(faster) < 0.8 * len(base)
    assert len(synthesize_native("Good morning.", Voice("fr"))) != len(base)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="`pitch` must be in 0..100"):
        Voice(pitch=120)
    with pytest.raises(ValueError, match="empty text"):
        synthesize(" ")
    with pytest.raises(RuntimeError, match="no voice 'xx-none'"):
        synthesize_native("Hi.", Voice("xx-none"))


def test_conditions_render_deterministically_with_their_shift():
    text = "The small red book is on the table."
    clear = render(text, CONDITIONS["clear"], 0, 0)
    assert torch.equal(clear, render(text, CONDITIONS["clear"], 0, 0))
    noisy = render(text, CONDITIONS["noisy"], 0, 0)
    assert noisy.numel() > clear.numel()  # reverberant tail
    assert torch.equal(noisy, render(text, CONDITIONS["noisy"], 0, 0))
    assert noisy.abs().max() <= 0.9 + 1e-6
    child_voice = CONDITIONS["child"].voice_for(3, 0)
    assert child_voice.pitch > CONDITIONS["clear"].voice_for(3, 0).pitch
    accents = {CONDITIONS["accented"].voice_for(i, 0).name for i in range(4)}
    assert accents == {"fr", "de", "es", "hi"}
    assert Condition("x").key() == Condition("x", description="other words").key() != Condition("y").key()


def test_room_impulse_response_decays():
    response = room_impulse_response(0.5, 16_000, torch.Generator().manual_seed(0))
    assert response.numel() == 8000 and torch.isclose(response.norm(), torch.tensor(1.0))
    assert response[0] == response.abs().max()
    assert response[4000:].abs().max() < response[40:4000].abs().max()
    with pytest.raises(ValueError, match="rt60"):
        room_impulse_response(0.0, 16_000, torch.Generator())


def test_sentences_are_seeded_and_varied():
    a = template_sentences(30, seed=1)
    assert a == template_sentences(30, seed=1) and a != template_sentences(30, seed=2)
    assert len(set(a)) == 30 and all(s[0].isupper() and s[-1] in ".?" for s in a)
    assert normalize_transcript("Can you CALL Anna, please?") == "can you call anna please"
    with pytest.raises(ValueError, match="count"):
        template_sentences(-1)
