"""Acoustic conditions of the generated speech set: the source (``clear``) and shifts a deployment meets.

- ``clear``: espeak-ng's American English voice (its ``m3`` variant), normal pitch, 140 words/min;
- ``child``: the ``f2`` variant with very high pitch, a wide pitch range and fast speech (child-like
  prosody; espeak-ng does not model a child's vocal tract, so this is a prosodic shift, not child speech);
- ``accented``: the English text read by French, German, Spanish and Hindi voices, which apply their
  own language's letter-to-sound rules and phonemes to English (a strong foreign accent);
- ``noisy``: the clear voice in a reverberant room (synthetic impulse response, RT60 0.4 s) with
  additive white noise at 15 dB SNR (torchaudio ``fftconvolve`` and ``add_noise``).

The voices were chosen on 16 sentences (``sentences(16, seed=2)``) so that the converted tiny.en
transcribes ``clear`` well (the plain ``en-us`` voice at 160 wpm gave 21% WER, ``en-us+m3`` at 140 wpm
11%) and each shift is large but not hopeless; report figures from another seed.

Each utterance varies pitch and rate slightly around the condition's voice (seeded per utterance), so
a condition is a population of similar speakers rather than one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torchaudio.functional as AF

from verticals.domains.speech.synthesis import Voice, synthesize

__all__ = ["CONDITIONS", "Condition", "render", "room_impulse_response"]


@dataclass(frozen=True)
class Condition:
    """How an utterance of a condition is rendered: voices (cycled by utterance), jitter, room, noise."""

    name: str
    voices: tuple[Voice, ...] = (Voice(),)
    pitch_jitter: int = 4
    rate_jitter: int = 8
    rt60: float | None = None
    snr_db: float | None = None
    description: str = field(default="", compare=False)

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
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


_STANDARD = Voice("en-us+m3", rate=140)

CONDITIONS: dict[str, Condition] = {
    "clear": Condition("clear", (_STANDARD,), description="standard en-us voice (m3 variant), 140 wpm"),
    "child": Condition(
        "child",
        (Voice("en-us+f2", rate=210, pitch=95, pitch_range=90),),
        description="high pitch, wide pitch range, fast (210 wpm)",
    ),
    "accented": Condition(
        "accented",
        tuple(Voice(name, rate=140) for name in ("fr", "de", "es", "hi")),
        description="English read by fr/de/es/hi voices",
    ),
    "noisy": Condition(
        "noisy",
        (_STANDARD,),
        rt60=0.4,
        snr_db=15.0,
        description="reverb RT60 0.4 s + white noise at 15 dB SNR",
    ),
}


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
