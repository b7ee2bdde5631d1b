"""Acoustic conditions of the generated speech set: the source (``clear``) and shifts a deployment meets.

Each condition is a voice family: the voices its training (and validation) utterances use, and
held-out voices of the same family that only the ``held_out_voices`` test set uses, so a result on
them says whether an adaptation learned the condition or the few voices it heard.

- ``clear``: espeak-ng's American English voice (its ``m3`` variant), normal pitch, 140 words/min;
  held out: the ``m1`` variant and British received pronunciation (``en-gb-x-rp``);
- ``child``: the ``f2`` variant with very high pitch, a wide pitch range and fast speech (child-like
  prosody; espeak-ng does not model a child's vocal tract, so this is a prosodic shift, not child speech);
  held out: the ``f3`` and ``f4`` variants with the same prosody;
- ``accented``: the English text read by French, German, Spanish and Hindi voices, which apply their
  own language's letter-to-sound rules and phonemes to English (a strong foreign accent); held out:
  Italian, Portuguese, Dutch and Polish voices;
- ``noisy``: the clear voice in a reverberant room (synthetic impulse response, RT60 0.4 s) with
  additive white noise at 15 dB SNR (torchaudio ``fftconvolve`` and ``add_noise``); held out: the clear
  condition's held-out voices in the same room and noise.

The voices were chosen on 16 sentences (``template_sentences(16, seed=2)``) so that the converted tiny.en
transcribes ``clear`` well (the plain ``en-us`` voice at 160 wpm gave 21% WER, ``en-us+m3`` at 140 wpm
11%) and each shift is large but not hopeless; report figures from another seed.

Each utterance varies pitch and rate slightly around the condition's voice (seeded per utterance), so
a condition is a population of similar speakers rather than one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torchaudio.functional as AF

from verticals.domains.speech.synthesis import Voice, synthesize

__all__ = ["CONDITIONS", "Condition", "render", "room_impulse_response", "voice_condition"]


@dataclass(frozen=True)
class Condition:
    """How an utterance of a condition is rendered: voices (cycled by utterance), jitter, room, noise.

    Args:
        name: the condition's group name in reports.
        voices: the voices of its training, validation and in-distribution test utterances.
        pitch_jitter: per-utterance pitch change, up to this many espeak-ng pitch units either way.
        rate_jitter: per-utterance rate change, up to this many words per minute either way.
        rt60: reverberation time of the synthetic room in seconds; None: no room.
        snr_db: white noise at this signal-to-noise ratio in dB; None: no noise.
        held_out_voices: voices of the same family never used in training, for the ``held_out_voices``
            test set (:meth:`with_held_out_voices`); empty: the condition has none.
        description: one line for tables and cards.
    """

    name: str
    voices: tuple[Voice, ...] = (Voice(),)
    pitch_jitter: int = 4
    rate_jitter: int = 8
    rt60: float | None = None
    snr_db: float | None = None
    held_out_voices: tuple[Voice, ...] = field(default=(), compare=False)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError(f"Condition {self.name!r} needs at least one voice.")
        shared = {v.name for v in self.voices} & {v.name for v in self.held_out_voices}
        if shared:
            raise ValueError(
                f"Condition {self.name!r}: held-out voices {sorted(shared)} are also training voices; a "
                "held-out voice must never be trained on."
            )

    def with_held_out_voices(self) -> Condition:
        """The same condition (room, noise, jitter) spoken by its held-out voices instead."""
        if not self.held_out_voices:
            raise ValueError(f"Condition {self.name!r} has no held-out voices.")
        return replace(self, voices=self.held_out_voices, held_out_voices=())

    def voice_for(self, index: int, seed: int) -> Voice:
        """The voice of utterance ``index``: the condition's voice, pitch/rate jittered (seeded)."""
        base = self.voices[index % len(self.voices)]
        rng = np.random.default_rng([seed, index, 17])
        pitch = int(np.clip(base.pitch + rng.integers(-self.pitch_jitter, self.pitch_jitter + 1), 0, 100))
        rate = int(np.clip(base.rate + rng.integers(-self.rate_jitter, self.rate_jitter + 1), 80, 450))
        return replace(base, pitch=pitch, rate=rate)

    def key(self) -> str:
        """A digest of everything that changes the audio (for the cache)."""
        spec = asdict(self)
        spec.pop("description")
        spec.pop("held_out_voices")  # they never sound in this condition's own utterances
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


_STANDARD = Voice("en-us+m3", rate=140)
_STANDARD_HELD_OUT = (Voice("en-us+m1", rate=140), Voice("en-gb-x-rp", rate=140))


def _child(variant: str) -> Voice:
    return Voice(f"en-us+{variant}", rate=210, pitch=95, pitch_range=90)


CONDITIONS: dict[str, Condition] = {
    "clear": Condition(
        "clear",
        (_STANDARD,),
        held_out_voices=_STANDARD_HELD_OUT,
        description="standard en-us voice (m3 variant), 140 wpm",
    ),
    "child": Condition(
        "child",
        (_child("f2"),),
        held_out_voices=(_child("f3"), _child("f4")),
        description="high pitch, wide pitch range, fast (210 wpm)",
    ),
    "accented": Condition(
        "accented",
        tuple(Voice(name, rate=140) for name in ("fr", "de", "es", "hi")),
        held_out_voices=tuple(Voice(name, rate=140) for name in ("it", "pt", "nl", "pl")),
        description="English read by fr/de/es/hi voices",
    ),
    "noisy": Condition(
        "noisy",
        (_STANDARD,),
        rt60=0.4,
        snr_db=15.0,
        held_out_voices=_STANDARD_HELD_OUT,
        description="reverb RT60 0.4 s + white noise at 15 dB SNR",
    ),
}


def voice_condition(name: str, voices: Sequence[str], base: Condition | None = None) -> Condition:
    """A condition spoken by the named espeak-ng ``voices`` (e.g. ``["en-gb-scotland", "en-029"]``) at the
    clear condition's rate, keeping ``base``'s room, noise and jitter (and its held-out voices if none of
    them is among ``voices``): how a config brings its own voices.

    Args:
        name: the condition's group name.
        voices: espeak-ng voice names, optionally with a variant (``en-us+f3``).
        base: the condition whose room, noise, jitter and prosody to keep; default ``clear``'s settings.
    """
    base = base or CONDITIONS["clear"]
    prosody = base.voices[0]
    chosen = tuple(replace(prosody, name=voice) for voice in voices)
    if not chosen:
        raise ValueError(f"Condition {name!r}: give at least one voice name.")
    held_out = tuple(v for v in base.held_out_voices if v.name not in set(voices))
    return replace(
        base, name=name, voices=chosen, held_out_voices=held_out, description=f"voices {list(voices)}"
    )


def room_impulse_response(rt60: float, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    """A synthetic room response: a direct path, then noise decaying by 60 dB over ``rt60`` seconds."""
    if rt60 <= 0:
        raise ValueError(f"`rt60` must be positive seconds, got {rt60}.")
    length = int(rt60 * sample_rate)
    t = torch.arange(length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length, generator=generator) * torch.exp(-6.9078 * t / rt60)  # ln(1000) = 60 dB
    tail[: int(0.002 * sample_rate)] = 0.0  # first reflections arrive after the direct sound
    response = 0.3 * tail / tail.abs().max()
    response[0] = 1.0
    return response / response.norm()


def render(text: str, condition: Condition, index: int, seed: int, sample_rate: int = 16_000) -> torch.Tensor:
    """Utterance ``index`` of ``condition`` speaking ``text``: float32 ``[samples]`` at ``sample_rate``."""
    audio = synthesize(text, condition.voice_for(index, seed), sample_rate)
    generator = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(f"{seed}/{index}/{condition.key()}".encode()).digest()[:7], "big")
    )
    if condition.rt60 is not None:
        wet = AF.fftconvolve(audio, room_impulse_response(condition.rt60, sample_rate, generator))
        audio = wet[: audio.numel() + int(0.25 * sample_rate)]  # keep a short reverberant tail
    if condition.snr_db is not None:
        noise = torch.randn(audio.shape, generator=generator)
        audio = AF.add_noise(audio[None], noise[None], torch.tensor([condition.snr_db]))[0]
    peak = audio.abs().max()
    return audio / peak * 0.9 if peak > 0.9 else audio
