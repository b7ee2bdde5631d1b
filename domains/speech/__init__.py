"""Speech: a real Whisper tiny.en offline (converted from CTranslate2), generated and real speech data.

The generated set (``data.SyntheticSpeechDataModule``) separates what an adaptation learns: sentences
from a generator with thousands of words (train, validation and test share none; a measured share of
test words never occurs in training), or your own sentences; conditions that are voice families, with
held-out voices only the ``held_out_voices`` test set uses; and the earlier template sentences as the
``in_template`` test set. Reports name the groups of the data being evaluated.

Model names register lazily (``speech.whisper``); import submodules for the rest.
"""

from verticals.domains.speech import baseline as _baseline  # noqa: F401  (registers its baseline)
from verticals.domains.speech.models import WhisperModule, load_whisper

__all__ = ["WhisperModule", "load_whisper"]
