"""Offline speech synthesis with espeak-ng, from the ``espeakng-loader`` wheel (library + voice data).

The wheel ships the shared library but no program, so the library is driven through ctypes in
synchronous mode: ``espeak_Synth`` returns after the whole utterance has been passed, chunk by chunk,
to a callback that collects 16-bit samples at espeak-ng's native 22,050 Hz. ``synthesize`` resamples
to Whisper's 16 kHz with torchaudio. espeak-ng is a deterministic formant synthesiser: the same
text, voice and controls give the same samples, which is what makes the cached, generated speech
set reproducible. The library holds global state, so calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

__all__ = ["ESPEAK_SAMPLE_RATE", "Voice", "espeak_version", "synthesize", "synthesize_native"]

ESPEAK_SAMPLE_RATE = 22_050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EE_OK = 0
_RAND_SEED = 1

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()
_state: dict[str, object] = {}


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice and its prosody controls.

    ``name``: an espeak-ng voice such as ``"en-us"``, ``"fr"``, ``"hi"``, optionally with a variant
    (``"en-us+f3"``). ``rate``: words per minute (espeak-ng accepts 80–450; its default is 175).
    ``pitch`` and ``pitch_range``: 0–100 (defaults 50). ``volume``: 0–200 (default 100).
    """

    name: str = "en-us"
    rate: int = 165
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100

    def __post_init__(self) -> None:
        for field_name, low, high in (
            ("rate", 80, 450),
            ("pitch", 0, 100),
            ("pitch_range", 0, 100),
            ("volume", 0, 200),
        ):
            value = getattr(self, field_name)
            if not low <= value <= high:
                raise ValueError(
                    f"Voice `{field_name}` must be in {low}..{high} (espeak-ng's range), got {value}."
                )


def _library() -> ctypes.CDLL:
    """Load and initialise libespeak-ng once (synchronous mode, the wheel's voice data)."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    try:
        import espeakng_loader
    except ImportError as error:
        raise ImportError(
            "Speech synthesis needs espeak-ng from the 'espeakng-loader' package: pip install 'verticals[speech]'."
        ) from error
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(
            f"espeak-ng failed to initialise from {espeakng_loader.get_data_path()} (returned {rate}, expected "
            f"sample rate {ESPEAK_SAMPLE_RATE}); reinstall 'espeakng-loader'."
        )
    chunks: list[np.ndarray] = []

    def collect(wav, num_samples, _events):  # called by espeak-ng for each chunk; 0 = continue
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    callback = _CALLBACK(collect)  # kept referenced in _state so it is not garbage-collected
    lib.espeak_SetSynthCallback(callback)
    _state.update(lib=lib, callback=callback, chunks=chunks)
    return lib


def espeak_version() -> str:
    """The espeak-ng package version (part of the audio cache key: another version sounds different)."""
    from importlib.metadata import version

    return f"espeakng-loader {version('espeakng-loader')}"


def _synthesize_here(text: str, voice: Voice) -> np.ndarray:
    """Synthesise in this process (int16 samples). Not reproducible across calls: see ``synthesize_native``."""
    with _lock:
        lib = _library()
        if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise ValueError(
                f"espeak-ng has no voice {voice.name!r}; use a language code such as 'en-us', 'en-gb', 'fr', 'de', "
                "'es', 'hi' (optionally with a variant, e.g. 'en-us+f3')."
            )
        for parameter, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_VOLUME, voice.volume),
        ):
            lib.espeak_SetParameter(parameter, value, 0)
        chunks: list[np.ndarray] = _state["chunks"]  # type: ignore[assignment]
        chunks.clear()
        # espeak-ng's noise sources: its own generator and libc's rand(), whose state a forked child
        # inherits from the parent; fixed seeds make the child's output independent of the parent.
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        ctypes.CDLL(None).srand(_RAND_SEED)
        encoded = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(encoded)
        status = lib.espeak_Synth(buffer, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(
                f"espeak-ng failed to synthesise {text[:40]!r} with voice {voice} (status {status})."
            )
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        chunks.clear()
    return samples


def _child(text: str, voice: Voice, connection) -> None:
    try:
        connection.send(("ok", _synthesize_here(text, voice)))
    except BaseException as error:  # report any failure to the parent instead of dying silently
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


def synthesize_native(text: str, voice: Voice = Voice()) -> np.ndarray:
    """``text`` spoken by ``voice`` as float32 samples in [-1, 1] at 22,050 Hz, reproducibly.

    espeak-ng carries state from one utterance to the next inside a process (its noise generator and
    wave-generator phase: the same text synthesised twice differs by a few samples, even after
    ``espeak_ng_SetRandSeed``), while the first utterance of a fresh library instance is the same on
    every run once both of its noise generators are seeded (libc's ``rand`` state is otherwise inherited
    from the parent). So each utterance is synthesised in a freshly forked process that loads the
    library and seeds them.
    """
    if not text.strip():
        raise ValueError("Cannot synthesise empty text; give at least one word.")
    if "lib" in _state:
        raise RuntimeError(
            "espeak-ng was initialised in this process; reproducible synthesis needs a fresh one."
        )
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(text, voice, sender), daemon=True)
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError as error:
        raise RuntimeError(
            f"espeak-ng synthesis of {text[:40]!r} died (exit code {process.exitcode})."
        ) from error
    finally:
        receiver.close()
        process.join()
    if status != "ok":
        raise RuntimeError(f"espeak-ng synthesis of {text[:40]!r} with {voice} failed: {payload}")
    return payload.astype(np.float32) / 32768.0


def synthesize(text: str, voice: Voice = Voice(), sample_rate: int = 16_000) -> torch.Tensor:
    """``text`` spoken by ``voice``, resampled (torchaudio, band-limited sinc) to ``sample_rate``: float32 [T]."""
    native = torch.from_numpy(synthesize_native(text, voice))
    if sample_rate == ESPEAK_SAMPLE_RATE:
        return native
    return AF.resample(native, ESPEAK_SAMPLE_RATE, sample_rate)
