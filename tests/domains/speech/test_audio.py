"""Audio checks and treatments, reading files, and Whisper's log-mel features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.domains.speech.audio import (
    AudioCounts,
    AudioError,
    AudioPolicy,
    compact_features,
    expand_features,
    log_mel,
    prepare_waveform,
    read_audio,
)
from verticals.domains.speech.models import window_feature_extractor


def _tone(seconds: float, rate: int = 16_000, channels: int | None = None) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    return wave if channels is None else wave.repeat(channels, 1)


def test_good_audio_passes_and_is_counted():
    counts = AudioCounts()
    out = prepare_waveform(_tone(1.0), 16_000, "a.wav", max_seconds=30, counts=counts)
    assert out.shape == (16_000,) and counts == {"ok": 1}


def test_wrong_rate_is_resampled_and_stereo_downmixed_with_counts():
    counts = AudioCounts()
    out = prepare_waveform(_tone(1.0, 8_000, channels=2), 8_000, "b.wav", max_seconds=30, counts=counts)
    assert out.shape == (16_000,)
    assert counts == {"resampled": 1, "downmixed": 1, "ok": 1}
    assert "resampled=1" in counts.summary()
    with pytest.raises(AudioError, match="b.wav: sample rate 8000 Hz"):
        prepare_waveform(
            _tone(1.0, 8_000), 8_000, "b.wav", max_seconds=30, policy=AudioPolicy(resample=False)
        )


@pytest.mark.parametrize(
    ("waveform", "kind", "message"),
    [
        (torch.zeros(0), "empty", "empty"),
        (torch.zeros(16_000), "silent", "silent"),
        (torch.full((16_000,), 3e-5), "silent", "silent"),
        (torch.tensor([0.1, float("nan"), 0.2]), "nonfinite", "sample 1 is nan"),
    ],
)
def test_unusable_audio_errors_or_is_skipped_and_counted(waveform, kind, message):
    with pytest.raises(AudioError, match=f"clip.flac: .*{message}"):
        prepare_waveform(waveform, 16_000, "clip.flac", max_seconds=30)
    counts = AudioCounts()
    out = prepare_waveform(
        waveform, 16_000, "clip.flac", max_seconds=30, policy=AudioPolicy(invalid="skip"), counts=counts
    )
    assert out is None and counts == {f"skipped_{kind}": 1}


def test_audio_longer_than_the_window_errors_or_is_skipped():
    with pytest.raises(AudioError, match=r"long.wav: 12.00 s is longer than the encoder window of 10 s"):
        prepare_waveform(_tone(12.0), 16_000, "long.wav", max_seconds=10)
    counts = AudioCounts()
    policy = AudioPolicy(too_long="skip")
    assert (
        prepare_waveform(_tone(12.0), 16_000, "long.wav", max_seconds=10, policy=policy, counts=counts)
        is None
    )
    assert counts == {"skipped_too_long": 1}
    with pytest.raises(ValueError, match="'error' or 'skip'"):
        AudioPolicy(too_long="truncate")


def test_log_mel_matches_whisper_extractor_and_compacts_exactly():
    extractor = window_feature_extractor(100)
    wave = _tone(0.7)
    features = log_mel(wave, extractor)
    reference = extractor(wave.numpy(), sampling_rate=16_000, return_tensors="np").input_features[0]
    assert features.shape == (80, 200)
    np.testing.assert_array_equal(features.numpy(), reference)
    prefix, fill = compact_features(features)
    assert 70 <= prefix.shape[1] < 200
    assert torch.equal(expand_features(prefix, fill, 200), features)
    with pytest.raises(ValueError, match="more than the window"):
        expand_features(prefix, fill, 10)


def test_read_audio_wav_flac_and_missing(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    stereo = _tone(0.5, 22_050, channels=2).numpy().T
    soundfile.write(tmp_path / "a.flac", stereo, 22_050)
    wave, rate = read_audio(tmp_path / "a.flac")
    assert rate == 22_050 and wave.shape == (2, 11_025)
    assert torch.allclose(wave, torch.from_numpy(stereo.T).float(), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_audio(tmp_path / "absent.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(AudioError, match="Cannot decode"):
        read_audio(tmp_path / "bad.wav")


def test_read_audio_falls_back_to_scipy_for_wav(tmp_path, monkeypatch):
    from scipy.io import wavfile

    wavfile.write(tmp_path / "a.wav", 16_000, (_tone(0.25).numpy() * 32767).astype(np.int16))
    monkeypatch.setitem(__import__("sys").modules, "soundfile", None)
    wave, rate = read_audio(tmp_path / "a.wav")
    assert rate == 16_000 and wave.shape == (1, 4000) and 0.49 < wave.abs().max() < 0.51
    (tmp_path / "a.flac").write_bytes(b"x")
    with pytest.raises(ImportError, match="soundfile"):
        read_audio(tmp_path / "a.flac")
