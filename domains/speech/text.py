"""Utterance texts for the generated speech set, and the transcript normaliser used for scoring.

Two generators, both seeded and offline:

- :func:`open_sentences`: the set's text. Sixteen sentence shapes (questions, requests, reported speech,
  prices, dates, years, counts) filled from thousands of words: nouns, adjectives and verbs from the
  ``wonderwords`` word lists, first and last names from ``faker``'s English-US lists, and numbers spelled
  out by ``num2words``. :func:`split_sentences` gives train, validation and test sentences that share
  none, training drawing only on a seeded part of the vocabulary (the rest is held out), so a measured
  share of the test words never occurs in training (:func:`unseen_word_share`).
- :func:`template_sentences`: the earlier ten templates on a ~170-word vocabulary, kept as the
  ``in_template`` test set: results on it and on new text side by side show how much of an adaptation
  is learning the templates' words.

A user's own sentences (a list or a file, :func:`read_sentences`) are split the same way by
:func:`split_user_sentences`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from verticals.domains.speech.metrics import text_normalizer

__all__ = [
    "SPLITS",
    "normalize_transcript",
    "open_sentences",
    "open_vocabulary",
    "read_sentences",
    "split_sentences",
    "split_user_sentences",
    "split_vocabulary",
    "template_sentences",
    "unseen_word_share",
]

SPLITS = ("train", "val", "test")

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


def template_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of the earlier ten templates (~170 words), the same for the same ``seed``
    (templates cycle, slots are drawn): the ``in_template`` test set."""
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


# -- the open generator ------------------------------------------------------------------------

#: Slots filled from the large word lists (split into training and held-out words).
OPEN_SLOTS = ("noun", "adjective", "verb", "name", "surname")

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_UNITS = ("minutes", "hours", "days", "weeks", "miles", "meters", "people", "pages", "tickets", "steps")

_OPEN_TEMPLATES: tuple[str, ...] = (
    "{name} wants to {verb} the {adjective} {noun} on {weekday}.",
    "Please {verb} the {noun} within {number} {unit}.",
    "We counted {count} {unit} near the {noun}.",
    "Did {name} {surname} {verb} the {noun} in {month}?",
    "The {adjective} {noun} costs {number} dollars and {number2} cents.",
    "{name} said that the {noun} looked {adjective}.",
    "How can we {verb} this {adjective} {noun} without {name}?",
    "Room {count} needs a new {noun} by the {ordinal} of {month}.",
    "In {year}, {name} {surname} learned to {verb} every {noun}.",
    "It is {adjective} to {verb} the {noun} when the {noun2} is {adjective2}.",
    "The {noun} and the {noun2} are {number} {unit} apart.",
    "{name} and {name2} will {verb} the {adjective} {noun} together.",
    "Nobody knew why the {noun} felt so {adjective} on the {ordinal} day.",
    "Should I {verb} the {noun} or {verb2} the {noun2} first?",
    "Our {adjective} {noun} arrived {number} minutes after {name} left.",
    "Tell {name} {surname} that the {noun} is {adjective} again.",
)

_WORD = re.compile(r"^[a-z]{3,12}$")


def _word_list(name: str, profane: set[str]) -> list[str]:
    text = resources.files("wonderwords.assets").joinpath(name).read_text()
    return [word for word in text.split() if _WORD.match(word) and word not in profane]


@lru_cache(maxsize=1)
def open_vocabulary() -> dict[str, tuple[str, ...]]:
    """The open generator's words by slot, sorted: lower-case alphabetic words of 3-12 letters from
    ``wonderwords`` (its profanity list left out; verb-list entries in the past tense, ending in ``ed`` but
    not ``eed``, left out) and alphabetic first / last names from ``faker``'s ``en_US`` person provider."""
    try:
        from faker.providers.person.en_US import Provider

        profane = set(resources.files("wonderwords.assets").joinpath("profanitylist.txt").read_text().split())
    except ImportError as error:
        raise ImportError(
            "The speech set's sentence generator needs 'wonderwords', 'faker' and 'num2words': "
            "pip install 'verticals[speech]'."
        ) from error
    verbs = [v for v in _word_list("verblist.txt", profane) if not v.endswith("ed") or v.endswith("eed")]
    return {
        "noun": tuple(sorted(set(_word_list("nounlist.txt", profane)))),
        "adjective": tuple(sorted(set(_word_list("adjectivelist.txt", profane)))),
        "verb": tuple(sorted(set(verbs))),
        "name": tuple(sorted({n for n in Provider.first_names if n.isalpha()})),
        "surname": tuple(sorted({n for n in Provider.last_names if n.isalpha()})),
    }


def split_vocabulary(
    held_out_share: float, seed: int = 0, vocabulary: Mapping[str, Sequence[str]] | None = None
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(training words, held-out words) by slot: a seeded ``held_out_share`` of each slot's words is kept
    out of training text, so test text can hold words the adapter never heard. A held-out word leaves
    every slot's training list; the shapes' fixed words are never held out.

    Args:
        held_out_share: share of each slot's words held out of training, in [0, 1).
        seed: seed of the split.
        vocabulary: words by slot; default :func:`open_vocabulary`.
    """
    if not 0.0 <= held_out_share < 1.0:
        raise ValueError(f"`held_out_share` must be in [0, 1), got {held_out_share}.")
    vocabulary = open_vocabulary() if vocabulary is None else vocabulary
    rng = np.random.default_rng([seed, 23])
    fixed = _fixed_words()  # the shapes' own words are in every training sentence: never held out
    held_out = {}
    for slot in OPEN_SLOTS:
        words = [word for word in vocabulary[slot] if word.lower() not in fixed]
        order = rng.permutation(len(words))
        held_out[slot] = tuple(sorted(words[i] for i in order[: int(round(held_out_share * len(words)))]))
    # a word held out in one slot ("ring" the noun) stays out of every slot ("ring" the verb)
    kept_out = {word.lower() for words in held_out.values() for word in words}
    training = {
        slot: tuple(sorted(word for word in vocabulary[slot] if word.lower() not in kept_out))
        for slot in OPEN_SLOTS
    }
    return training, held_out


@lru_cache(maxsize=1)
def _fixed_words() -> frozenset[str]:
    """The words the open shapes always say (not slots), lower case."""
    text = " ".join(re.sub(r"\{\w+\}", " ", shape) for shape in _OPEN_TEMPLATES)
    words = re.findall(r"[a-z]+", " ".join((text, *_WEEKDAYS, *_MONTHS, *_UNITS)).lower())
    return frozenset(words)


def open_sentences(
    count: int, seed: int | Sequence[int] = 0, vocabulary: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """``count`` sentences of the sixteen open shapes, the same for the same ``seed`` and vocabulary.

    Args:
        count: how many sentences (>= 0).
        seed: seed (or seed sequence) of the shapes, words and numbers.
        vocabulary: words by slot (``noun``, ``adjective``, ``verb``, ``name``, ``surname``); default
            :func:`open_vocabulary`.
    """
    from num2words import num2words

    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")
    vocabulary = open_vocabulary() if vocabulary is None else vocabulary
    empty = [slot for slot in OPEN_SLOTS if len(vocabulary.get(slot, ())) < 2]
    if empty:
        raise ValueError(f"The vocabulary needs at least two words in each of the slots {empty}.")
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 29])
    out = []
    for index in range(count):
        shape = _OPEN_TEMPLATES[
            index if index < len(_OPEN_TEMPLATES) else int(rng.integers(len(_OPEN_TEMPLATES)))
        ]
        slots: dict[str, str] = {}
        for slot in OPEN_SLOTS:
            words = vocabulary[slot]
            first, second = rng.choice(len(words), size=2, replace=False)
            slots[slot], slots[f"{slot}2"] = words[int(first)], words[int(second)]
        slots.update(
            number=num2words(int(rng.integers(2, 100))),
            number2=num2words(int(rng.integers(2, 100))),
            count=num2words(int(rng.integers(2, 1000))),
            year=num2words(int(rng.integers(1900, 2031)), to="year"),
            ordinal=num2words(int(rng.integers(1, 29)), to="ordinal"),
            weekday=_WEEKDAYS[int(rng.integers(len(_WEEKDAYS)))],
            month=_MONTHS[int(rng.integers(len(_MONTHS)))],
            unit=_UNITS[int(rng.integers(len(_UNITS)))],
        )
        text = shape.format(**slots)
        out.append(text[0].upper() + text[1:])
    return out


def _distinct(texts: Iterable[str], taken: set[str]) -> list[str]:
    out = []
    for text in texts:
        key = normalize_transcript(text)
        if key not in taken:
            taken.add(key)
            out.append(text)
    return out


def split_sentences(
    counts: Mapping[str, int], seed: int = 0, held_out_share: float = 0.2
) -> dict[str, list[str]]:
    """Open sentences for each split that share no sentence across splits (compared after the transcript
    normaliser): ``train`` uses only the training part of the vocabulary, ``val`` and ``test`` all of it.

    Args:
        counts: sentences wanted per split (``train``, ``val``, ``test``).
        seed: seed of the vocabulary split and of every split's sentences.
        held_out_share: share of each slot's words kept out of training text (see :func:`split_vocabulary`).
    """
    training, _ = split_vocabulary(held_out_share, seed)
    taken: set[str] = set()
    out = {}
    for split in SPLITS:
        wanted = int(counts.get(split, 0))
        vocabulary = training if split == "train" else None
        found: list[str] = []
        draw = 0
        while len(found) < wanted:  # a repeat is rare (about 10^15 sentences); draw again until enough
            more = open_sentences(wanted - len(found), [seed, SPLITS.index(split), draw], vocabulary)
            found += _distinct(more, taken)
            draw += 1
        out[split] = found
    return out


def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a UTF-8 text file, one a line; blank lines and lines starting with ``#`` skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise ValueError(f"{path} has no sentences (one a line; '#' starts a comment line).")
    return out


def split_user_sentences(
    sentences: Sequence[str], counts: Mapping[str, int], seed: int = 0
) -> dict[str, list[str]]:
    """A user's sentences shuffled (seeded) and cut into splits that share no sentence; repeats (after the
    transcript normaliser) are dropped first.

    Args:
        sentences: the user's sentences.
        counts: sentences wanted per split (``train``, ``val``, ``test``); their sum must not exceed the
            number of distinct sentences.
        seed: seed of the shuffle.
    """
    distinct = _distinct((s.strip() for s in sentences if s and s.strip()), set())
    wanted = [int(counts.get(split, 0)) for split in SPLITS]
    if sum(wanted) > len(distinct):
        raise ValueError(
            f"{len(distinct)} distinct sentences cannot fill train/val/test without sharing one: "
            f"{dict(zip(SPLITS, wanted))} asked for {sum(wanted)}. Give more sentences or ask for fewer "
            "utterances per condition."
        )
    order = np.random.default_rng([seed, 31]).permutation(len(distinct))
    out, start = {}, 0
    for split, size in zip(SPLITS, wanted):
        out[split] = [distinct[i] for i in order[start : start + size]]
        start += size
    return out


def unseen_word_share(training: Iterable[str], test: Iterable[str]) -> float:
    """Share of the test text's words (normalised word tokens) that never occur in the training text."""
    seen = {word for text in training for word in normalize_transcript(text).split()}
    words = [word for text in test for word in normalize_transcript(text).split()]
    return sum(word not in seen for word in words) / len(words) if words else 0.0


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    return text_normalizer("whisper_english")


def normalize_transcript(text: str) -> str:
    """Whisper's ``EnglishTextNormalizer`` (lower case, no punctuation, standard spellings), for WER/CER:
    the ``whisper_english`` normaliser of ``TranscriptErrors``, the speech configs' text metric, so both
    score alike."""
    return _normalizer()(text)
