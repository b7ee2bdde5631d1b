"""The open sentence generator: thousands of words, varied shapes, spelled-out numbers and names; splits
that share no sentence, held-out words, and a user's own sentences."""

from __future__ import annotations

import re

import pytest

from verticals.domains.speech.text import (
    OPEN_SLOTS,
    normalize_transcript,
    open_sentences,
    open_vocabulary,
    read_sentences,
    split_sentences,
    split_user_sentences,
    split_vocabulary,
    template_sentences,
    unseen_word_share,
)


def test_vocabulary_has_thousands_of_words_from_the_packages():
    vocabulary = open_vocabulary()
    assert set(vocabulary) == set(OPEN_SLOTS)
    assert sum(len(words) for words in vocabulary.values()) > 5000
    assert min(len(words) for words in vocabulary.values()) > 500
    assert all(re.fullmatch(r"[a-z]{3,12}", w) for w in vocabulary["noun"] + vocabulary["verb"])
    assert all(name[0].isupper() for name in vocabulary["name"])


def test_held_out_words_are_a_seeded_disjoint_share_of_each_slot():
    training, held_out = split_vocabulary(0.25, seed=3)
    assert (training, held_out) == split_vocabulary(0.25, seed=3)
    for slot in OPEN_SLOTS:
        assert not set(training[slot]) & set(held_out[slot])
        total = len(open_vocabulary()[slot])
        assert len(held_out[slot]) == pytest.approx(0.25 * total, rel=0.05)
        assert len(training[slot]) + len(held_out[slot]) <= total  # words held out in another slot leave too
    held = {word.lower() for words in held_out.values() for word in words}
    assert not held & {word.lower() for words in training.values() for word in words}
    with pytest.raises(ValueError, match="held_out_share"):
        split_vocabulary(1.0)


def test_open_sentences_vary_in_shape_and_spell_numbers_out():
    texts = open_sentences(64, seed=1)
    assert texts == open_sentences(64, seed=1) and texts != open_sentences(64, seed=2)
    assert len(set(texts)) == 64 and not any(ch.isdigit() for text in texts for ch in text)
    shapes = {re.sub(r"\W.*", "", text) for text in texts}  # first words differ with the shape
    assert len(shapes) >= 8
    names = set(open_vocabulary()["name"])
    assert sum(any(word.strip(",.?") in names for word in text.split()) for text in texts) >= 16
    # spelled numbers become digits under the scoring normaliser, in reference and hypothesis alike
    assert any(ch.isdigit() for text in texts for ch in normalize_transcript(text))
    with pytest.raises(ValueError, match="count"):
        open_sentences(-1)


def test_splits_share_no_sentence_and_training_text_skips_the_held_out_words():
    counts = {"train": 120, "val": 20, "test": 40}
    splits = split_sentences(counts, seed=0, held_out_share=0.3)
    assert splits == split_sentences(counts, seed=0, held_out_share=0.3)
    assert {split: len(texts) for split, texts in splits.items()} == counts
    keys = {split: {normalize_transcript(t) for t in texts} for split, texts in splits.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["train"] & keys["val"]
        and not keys["val"] & keys["test"]
    )
    _, held_out = split_vocabulary(0.3, seed=0)
    held = {word for slot in ("noun", "adjective", "verb") for word in held_out[slot]}
    train_words = {w.strip(",.?").lower() for text in splits["train"] for w in text.split()}
    test_words = {w.strip(",.?").lower() for text in splits["test"] for w in text.split()}
    assert not train_words & held and test_words & held
    share = unseen_word_share(splits["train"], splits["test"])
    assert 0.1 < share < 0.6
    assert unseen_word_share(splits["train"], splits["train"]) == 0.0


def test_a_users_sentences_are_read_deduplicated_and_split_without_overlap(tmp_path):
    path = tmp_path / "mine.txt"
    lines = [f"The clinic opens at {n} in the morning." for n in range(12)]
    path.write_text("# my sentences\n\n" + "\n".join(lines + ["the clinic opens at 0 in the morning"]) + "\n")
    read = read_sentences(path)
    assert len(read) == 13 and read[0] == lines[0]
    splits = split_user_sentences(read, {"train": 6, "val": 2, "test": 4}, seed=0)
    assert splits == split_user_sentences(read, {"train": 6, "val": 2, "test": 4}, seed=0)
    everything = splits["train"] + splits["val"] + splits["test"]
    assert len({normalize_transcript(t) for t in everything}) == 12 and set(everything) <= set(lines)
    with pytest.raises(ValueError, match="12 distinct sentences cannot fill"):
        split_user_sentences(read, {"train": 10, "val": 2, "test": 4})
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")


def test_template_sentences_are_the_earlier_narrow_vocabulary():
    words = {w for text in template_sentences(400, seed=0) for w in normalize_transcript(text).split()}
    assert len(words) < 250  # the issue's ~170-word vocabulary (templates' fixed words included)
