"""Utterance texts for the generated speech set, and the transcript normaliser used for scoring.

Sentences come from a few templates filled from a fixed vocabulary with a seeded generator, so the
set is varied (about 10^9 distinct sentences) yet the same for a given seed, with no network. Words
are common English (names, objects, places, verbs) that a general English recogniser should know:
errors then measure the acoustic condition, not out-of-vocabulary words.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from verticals.domains.speech.metrics import text_normalizer

__all__ = ["normalize_transcript", "sentences"]

_VOCABULARY: dict[str, tuple[str, ...]] = {
    "name": (
        "Anna",
        "David",
        "Maria",
        "James",
        "Sarah",
        "Thomas",
        "Emma",
        "Peter",
        "Laura",
        "Michael",
        "Helen",
        "Robert",
        "Julia",
        "Daniel",
        "Grace",
        "Steven",
        "Alice",
        "George",
        "Kate",
        "Paul",
    ),
    "adjective": (
        "small",
        "large",
        "red",
        "green",
        "old",
        "new",
        "heavy",
        "quiet",
        "bright",
        "warm",
        "cold",
        "empty",
        "clean",
        "broken",
        "wooden",
        "yellow",
        "simple",
        "strong",
        "soft",
        "dark",
    ),
    "noun": (
        "book",
        "table",
        "window",
        "garden",
        "letter",
        "bottle",
        "chair",
        "picture",
        "basket",
        "coat",
        "door",
        "lamp",
        "box",
        "car",
        "bridge",
        "kitchen",
        "river",
        "train",
        "phone",
        "key",
        "bag",
        "ball",
        "cup",
        "shirt",
        "boat",
        "house",
        "road",
        "tree",
        "bed",
        "computer",
    ),
    "place": (
        "near the station",
        "in the kitchen",
        "behind the house",
        "at the market",
        "on the table",
        "by the river",
        "in the garden",
        "at the school",
        "on the train",
        "in the office",
        "at the hospital",
        "under the bridge",
        "in the morning",
        "after dinner",
        "before lunch",
    ),
    "verb_past": (
        "opened",
        "carried",
        "painted",
        "cleaned",
        "found",
        "bought",
        "moved",
        "closed",
        "washed",
        "sold",
        "borrowed",
        "watched",
        "checked",
        "fixed",
        "dropped",
        "picked up",
        "brought",
        "left",
        "took",
        "saw",
    ),
    "verb_base": (
        "open",
        "carry",
        "paint",
        "clean",
        "find",
        "buy",
        "move",
        "close",
        "wash",
        "sell",
        "borrow",
        "watch",
        "check",
        "fix",
        "bring",
        "take",
        "keep",
        "show",
        "help",
        "call",
    ),
    "time": (
        "today",
        "yesterday",
        "tomorrow",
        "this evening",
        "last week",
        "next month",
        "every day",
        "on Monday",
        "on Friday",
        "in the summer",
        "at night",
        "this afternoon",
    ),
    "feeling": ("happy", "tired", "busy", "ready", "late", "hungry", "sure", "glad", "worried", "careful"),
}

_TEMPLATES: tuple[str, ...] = (
    "{name} {verb_past} the {adjective} {noun} {place}.",
    "Please {verb_base} the {noun} {time}.",
    "Can you {verb_base} the {adjective} {noun} for {name}?",
    "The {noun} {place} is {adjective} and {adjective2}.",
    "{name} was {feeling} when the {noun} arrived {time}.",
    "We will {verb_base} the {noun} {place} {time}.",
    "I think {name} {verb_past} my {adjective} {noun}.",
    "{name} and {name2} {verb_past} a {adjective} {noun} {time}.",
    "Do not {verb_base} the {noun} until {name} is {feeling}.",
    "There is a {adjective} {noun} {place}.",
)


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` English sentences, the same for the same ``seed`` (templates cycle, slots are drawn)."""
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))] if i >= len(_TEMPLATES) else _TEMPLATES[i]
        slots = {}
        for slot, words in _VOCABULARY.items():
            first, second = rng.choice(len(words), size=2, replace=False)
            slots[slot], slots[f"{slot}2"] = words[int(first)], words[int(second)]
        out.append(template.format(**slots))
    return out


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    return text_normalizer("whisper_english")


def normalize_transcript(text: str) -> str:
    """Whisper's ``EnglishTextNormalizer`` (lower case, no punctuation, standard spellings), for WER/CER:
    the ``whisper_english`` normaliser of ``TranscriptErrors``, the speech configs' text metric, so both
    score alike."""
    return _normalizer()(text)
