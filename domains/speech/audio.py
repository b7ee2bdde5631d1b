"""Audio checks and Whisper's log-mel features.

Treatments (chosen so that nothing is dropped silently; every one is counted in ``AudioCounts`` and
the datamodules report the counts):

- **wrong sample rate**: resampled to 16 kHz with torchaudio (band-limited sinc), counted as ``resampled``
  (``AudioPolicy(resample=False)`` makes it an error instead);
- **several channels**: averaged to mono, counted as ``downmixed``;
- **empty, silent (peak below ``silence_threshold``, e.g. clipped to zero) or non-finite**: an
  ``AudioError`` naming the file and the value, or with ``invalid="skip"`` left out and counted as
  ``skipped_empty`` / ``skipped_silent`` / ``skipped_nonfinite`` with a warning naming the file;
- **longer than the encoder window** (30 s, or ``max_source_positions / 50`` s): an ``AudioError``, or
  with ``too_long="skip"`` left out and counted as ``skipped_too_long``. Truncating would leave a
  transcript that the audio no longer says, so it is not offered.

Features are computed by transformers' ``WhisperFeatureExtractor`` (the extractor Whisper was trained
with), padded to the window. ``compact_features`` / ``expand_features`` store them without the
constant padding tail, exactly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchaudio.functional as AF
from transformers import WhisperFeatureExtractor

log = logging.getLogger(__name__)

__all__ = [
    "AudioCounts",
    "AudioError",
    "AudioPolicy",
    "compact_features",
    "expand_features",
    "log_mel",
    "prepare_waveform",
    "read_audio",
]

TARGET_SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """Audio that cannot be used as it is; the message names the source, the value and the fix."""


class AudioCounts(Counter):
    """How many utterances got each treatment (``resampled``, ``downmixed``, ``skipped_*``, ``ok``)."""

    def summary(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(self.items())) or "none"


@dataclass(frozen=True)
class AudioPolicy:
    """What to do with audio that is not 16 kHz mono speech inside the window (see the module docstring)."""

    invalid: Literal["error", "skip"] = "error"
    too_long: Literal["error", "skip"] = "error"
    resample: bool = True
    silence_threshold: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("invalid", "too_long"):
            if getattr(self, name) not in ("error", "skip"):
                raise ValueError(
                    f"AudioPolicy `{name}` must be 'error' or 'skip', got {getattr(self, name)!r}."
                )
        if self.silence_threshold < 0:
            raise ValueError(f"`silence_threshold` must be >= 0, got {self.silence_threshold}.")


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 ``[channels, samples]`` and its sample rate.

    WAV, FLAC, MP3 and OGG go through ``soundfile`` (libsndfile); without it, WAV alone is read with scipy.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Audio file {path} does not exist.")
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise AudioError(f"Cannot decode audio file {path}: {error}.") from error
        return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)
    if path.suffix.lower() != ".wav":
        raise ImportError(
            f"Reading {path.suffix} files ({path}) needs the 'soundfile' package (libsndfile): pip install soundfile."
        )
    from scipy.io import wavfile

    rate, data = wavfile.read(str(path))
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    data = data.astype(np.float32).reshape(data.shape[0], -1).T
    return torch.from_numpy(np.ascontiguousarray(data)), int(rate)


def prepare_waveform(
    waveform: torch.Tensor,
    sample_rate: int,
    source: str,
    *,
    max_seconds: float,
    policy: AudioPolicy = AudioPolicy(),
    counts: AudioCounts | None = None,
) -> torch.Tensor | None:
    """Check and convert audio to mono float32 at 16 kHz; ``None`` when the policy skips it (counted).

    ``waveform``: ``[samples]`` or ``[channels, samples]``. ``source`` names the file in messages.
    """
    counts = counts if counts is not None else AudioCounts()
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    if waveform.dim() == 2:
        if waveform.shape[0] > 1:
            waveform = waveform.mean(dim=0)
            counts["downmixed"] += 1
        else:
            waveform = waveform[0]
    elif waveform.dim() != 1:
        raise AudioError(
            f"{source}: expected audio shaped [samples] or [channels, samples], got {tuple(waveform.shape)}."
        )

    def reject(kind: str, message: str, setting: str) -> None:
        if getattr(policy, setting) == "error":
            raise AudioError(
                f"{source}: {message} (set AudioPolicy({setting}='skip') to leave such files out, counted)."
            )
        counts[f"skipped_{kind}"] += 1
        log.warning("Skipping %s: %s.", source, message)

    if waveform.numel() == 0:
        reject("empty", "the audio is empty (0 samples)", "invalid")
        return None
    if not torch.isfinite(waveform).all():
        bad = int((~torch.isfinite(waveform)).nonzero()[0])
        reject("nonfinite", f"sample {bad} is {waveform[bad].item()} (NaN/inf)", "invalid")
        return None
    peak = float(waveform.abs().max())
    if peak < policy.silence_threshold:
        reject(
            "silent",
            f"the audio is silent (peak {peak:.2e} < threshold {policy.silence_threshold:.0e})",
            "invalid",
        )
        return None
    if sample_rate != TARGET_SAMPLE_RATE:
        if not policy.resample:
            raise AudioError(
                f"{source}: sample rate {sample_rate} Hz, Whisper needs {TARGET_SAMPLE_RATE} Hz (allow resampling "
                "with AudioPolicy(resample=True), or resample the file)."
            )
        waveform = AF.resample(waveform, sample_rate, TARGET_SAMPLE_RATE)
        counts["resampled"] += 1
    seconds = waveform.numel() / TARGET_SAMPLE_RATE
    if seconds > max_seconds:
        reject(
            "too_long",
            f"{seconds:.2f} s is longer than the encoder window of {max_seconds:g} s (split the recording at pauses, "
            "or raise max_source_positions up to 1500 = 30 s)",
            "too_long",
        )
        return None
    counts["ok"] += 1
    return waveform


def log_mel(waveform: torch.Tensor, extractor: WhisperFeatureExtractor) -> torch.Tensor:
    """Whisper's log-mel features of 16 kHz mono audio, padded to the extractor's window: ``[80, frames]``."""
    features = extractor(
        waveform.numpy(), sampling_rate=TARGET_SAMPLE_RATE, return_tensors="np", padding="max_length"
    ).input_features[0]
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def compact_features(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Drop the constant tail that padding leaves: returns (prefix ``[80, kept]``, fill value). Exact."""
    fill = float(features[:, -1].max())
    constant = (features == fill).all(dim=0)
    kept = int(features.shape[1])
    while kept > 0 and bool(constant[kept - 1]):
        kept -= 1
    return features[:, :kept].clone(), fill


def expand_features(prefix: torch.Tensor, fill: float, frames: int) -> torch.Tensor:
    """Inverse of ``compact_features``: ``[80, frames]``."""
    if prefix.shape[1] > frames:
        raise ValueError(f"Stored features have {prefix.shape[1]} frames, more than the window of {frames}.")
    out = torch.full((prefix.shape[0], frames), fill, dtype=prefix.dtype)
    out[:, : prefix.shape[1]] = prefix
    return out
