"""Speech: a real Whisper tiny.en offline (converted from CTranslate2), generated and real speech data.

Model names register lazily (``speech.whisper``); import submodules for the rest.
"""

from verticals.domains.speech.models import WhisperModule, load_whisper

__all__ = ["WhisperModule", "load_whisper"]
