"""Speech datamodules: the generated set (cached), and tiny instances of LibriSpeech and Common Voice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.domains.speech import conditions as conditions_module
from verticals.domains.speech import data as data_module
from verticals.domains.speech.audio import AudioError
from verticals.domains.speech.conditions import CONDITIONS, Condition
from verticals.domains.speech.data import (
    CommonVoiceDataModule,
    LibriSpeechDataModule,
    SyntheticSpeechDataModule,
    read_librispeech,
)
from verticals.domains.speech.synthesis import Voice
from verticals.domains.speech.text import template_sentences, unseen_word_share

soundfile = pytest.importorskip("soundfile")


def _synthetic(tmp_path, **kwargs) -> SyntheticSpeechDataModule:
    options = dict(
        conditions=["clear", "child"],
        utterances_per_condition=2,
        val_utterances_per_condition=1,
        test_utterances_per_condition=1,
        cache_dir=str(tmp_path / "cache"),
        batch_size=3,
        max_source_positions=300,
    )
    return SyntheticSpeechDataModule(**{**options, **kwargs})


def test_synthetic_batches_have_the_agreed_layout(tmp_path):
    datamodule = _synthetic(tmp_path)
    assert datamodule.group_attributes == ["condition"]
    assert datamodule.group_names == {"condition": ["clear", "child"]}
    assert datamodule.input_shape == (80, 600) and datamodule.window_seconds == 6.0
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_features"].shape == (3, 80, 600) and batch["input_features"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["group"].shape == (3, 1)
    assert len(batch["text"]) == 3
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert labels[0] == 50362 and labels[-1] == 50256  # no decoder start: HF Whisper prepends it
    decoded = datamodule.tokenizer.decode(labels, skip_special_tokens=True)
    assert decoded == " " + batch["text"][0]
    assert (batch["labels"] == -100).any() or len({len(t) for t in batch["text"]}) == 1
    test = datamodule.dataset("test")
    assert [u.group for u in test] == [0, 1] and test[0].text == test[1].text  # paired conditions
    assert datamodule.treatment_counts["train"] == {"ok": 4}
    assert datamodule.waveform("test", 1).ndim == 1


def test_synthetic_features_are_cached_and_reused(tmp_path, monkeypatch):
    first = _synthetic(tmp_path)
    first.setup("test")
    features = first.dataset("test")[1].features

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesised again despite the cache")

    monkeypatch.setattr(data_module, "render", no_synthesis)
    second = _synthetic(tmp_path)
    assert torch.equal(second.dataset("test")[1].features, features)
    assert second.treatment_counts["test"] == {"ok": 2}
    monkeypatch.setattr(data_module, "render", conditions_module.render)
    other_window = _synthetic(tmp_path, max_source_positions=400)  # a separate cache entry: features differ
    expanded = data_module.SpeechCollator(800)([other_window.dataset("test")[1]])["input_features"][0]
    assert expanded.shape == (80, 800)
    assert torch.allclose(expanded[:, :100], features[:, :100], atol=1e-3)  # the same speech at its start


def test_synthetic_accepts_user_defined_conditions(tmp_path):
    slow = Condition("slow", (Voice("en-us+m3", rate=110),), pitch_jitter=0, rate_jitter=0)
    datamodule = _synthetic(tmp_path, conditions=["clear", slow])
    assert datamodule.group_names == {"condition": ["clear", "slow"]}
    clear, slow_item = datamodule.dataset("test")
    assert clear.text == slow_item.text and slow_item.group == 1
    assert clear.features.shape != slow_item.features.shape or not torch.equal(
        clear.features, slow_item.features
    )  # another voice, other audio
    with pytest.raises(ValueError, match="distinct names"):
        _synthetic(tmp_path, conditions=["clear", Condition("clear", (Voice("en-us+m5"),))])


def test_synthetic_rejects_unknown_conditions(tmp_path):
    with pytest.raises(ValueError, match="conditions"):
        _synthetic(tmp_path, conditions=["clear", "martian"])
    with pytest.raises(ValueError, match=">= 1"):
        _synthetic(tmp_path, test_utterances_per_condition=0)


def test_synthetic_splits_share_no_sentence_and_the_summary_measures_unseen_test_words(tmp_path):
    datamodule = _synthetic(tmp_path, utterances_per_condition=30, test_utterances_per_condition=20)
    summary = datamodule.summary()
    assert summary["text"] == "open" and summary["sentences"] == {"train": 30, "val": 1, "test": 20}
    assert summary["shared_sentences"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    texts = datamodule.split_texts()
    assert summary["unseen_test_word_share"] == unseen_word_share(texts["train"], texts["test"]) > 0.1
    assert summary["train_voices"] == {"clear": ["en-us+m3"], "child": ["en-us+f2"]}
    template = _synthetic(tmp_path, test_set="in_template", utterances_per_condition=30)
    assert template.split_texts()["test"] == template_sentences(1, seed=2)  # the earlier test split
    assert template.split_texts()["train"] == texts["train"]  # the same training text


def test_synthetic_takes_a_users_sentences_as_a_list_or_a_file(tmp_path):
    mine = [f"Patient {name} takes the tablets twice a day." for name in ("Ann", "Bo", "Cy", "Di", "Ed")]
    datamodule = _synthetic(tmp_path, sentences=mine)
    texts = datamodule.split_texts()
    used = texts["train"] + texts["val"] + texts["test"]
    assert [len(texts[split]) for split in ("train", "val", "test")] == [2, 1, 1]
    assert set(used) <= set(mine) and len(set(used)) == 4  # no sentence in two splits
    assert datamodule.summary()["text"] == "user"
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(mine) + "\n")
    assert _synthetic(tmp_path, sentences_file=str(path)).split_texts() == texts
    with pytest.raises(ValueError, match="cannot fill"):
        _synthetic(tmp_path, sentences=mine[:3])
    with pytest.raises(ValueError, match="not both"):
        _synthetic(tmp_path, sentences=mine, sentences_file=str(path))


def test_synthetic_options_parse_from_a_config(tmp_path):
    """Sentences, voices and the test set come through the YAML a `verticals` config holds."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticSpeechDataModule, "data")
    config = parser.parse_string(
        f"""
data:
  conditions: [clear, scottish]
  voices: {{scottish: [en-gb-scotland]}}
  held_out_voices: {{scottish: [en-029]}}
  sentences: [One two three., Four five six., Seven eight nine., Ten eleven twelve.]
  test_set: held_out_voices
  train_conditions: [clear]
  utterances_per_condition: 2
  val_utterances_per_condition: 1
  test_utterances_per_condition: 1
  cache_dir: {tmp_path}
"""
    )
    datamodule = SyntheticSpeechDataModule(**config.data.as_dict())
    summary = datamodule.summary()
    assert datamodule.group_names == {"condition": ["clear", "scottish"]}
    assert summary["train_conditions"] == ["clear"] and summary["text"] == "user"
    assert summary["test_voices"] == {"clear": ["en-gb-x-rp", "en-us+m1"], "scottish": ["en-029"]}
    assert [s.group for s in datamodule._sources("train")] == ["clear", "clear"]
    assert [s.group for s in datamodule._sources("test")] == ["clear", "scottish"]


def test_held_out_voices_are_never_trained_on_and_sound_different(tmp_path):
    clear = CONDITIONS["clear"]
    assert clear.held_out_voices and not {v.name for v in clear.voices} & {
        v.name for v in clear.held_out_voices
    }
    assert clear.with_held_out_voices().key() != clear.key()
    datamodule = _synthetic(tmp_path, conditions=["clear"], test_set="held_out_voices")
    usual = _synthetic(tmp_path, conditions=["clear"])
    (held_out,), (trained,) = datamodule.dataset("test"), usual.dataset("test")
    assert held_out.text == trained.text and not torch.equal(held_out.features, trained.features)
    train_voices = {v.name for c in datamodule._condition_specs.values() for v in c.voices}
    assert not train_voices & set(datamodule.summary()["test_voices"]["clear"])
    with pytest.raises(ValueError, match="must never be trained on"):
        Condition("x", (Voice("en-us+m3"),), held_out_voices=(Voice("en-us+m3"),))
    with pytest.raises(ValueError, match="held-out voices"):
        _synthetic(tmp_path, conditions=[Condition("plain", (Voice("en-us"),))], test_set="held_out_voices")


def _write(path, seconds, rate=16_000, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, amplitude * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2, rate)


def _librispeech(root):
    layout = {"dev-clean": [("84", "121123"), ("174", "50561")], "test-other": [("1688", "142285")]}
    for subset, chapters in layout.items():
        for speaker, chapter in chapters:
            folder = root / subset / speaker / chapter
            lines = []
            for i in range(2):
                utterance = f"{speaker}-{chapter}-{i:04d}"
                _write(
                    folder / f"{utterance}.flac", 0.6 + 0.2 * i, rate=16_000 if speaker != "174" else 8_000
                )
                lines.append(f"{utterance} GO DO YOU HEAR NUMBER {i}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n84   | F | dev-clean        |  8.02 | Christie\n"
        "174  | M | dev-clean        |  8.04 | Peter\n1688 | M | test-other       |  8.10 | Tom\n"
    )


def test_librispeech_layout_groups_by_subset_or_sex(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    rows = read_librispeech(root, "dev-clean")
    assert len(rows) == 4 and rows[0][2] == "GO DO YOU HEAR NUMBER 0" and rows[0][3] == "174"
    subsets = {"train": ["dev-clean"], "val": ["test-other"], "test": ["dev-clean", "test-other"]}
    datamodule = LibriSpeechDataModule(
        str(root), subsets, cache_dir=str(tmp_path / "c"), batch_size=8, max_source_positions=100
    )
    assert datamodule.group_names == {"subset": ["dev-clean", "test-other"]}
    batch = next(iter(datamodule.test_dataloader()))
    assert (
        batch["input_features"].shape == (6, 80, 200) and batch["group"][:, 0].tolist() == [0] * 4 + [1] * 2
    )
    assert datamodule.treatment_counts["test"] == {"ok": 6, "resampled": 2}
    by_sex = LibriSpeechDataModule(
        str(root), subsets, group_by="sex", cache_dir=str(tmp_path / "c"), max_source_positions=100
    )
    assert by_sex.group_attributes == ["sex"] and by_sex.group_names == {"sex": ["F", "M"]}
    assert sorted(u.group for u in by_sex.dataset("val")) == [1, 1]
    limited = LibriSpeechDataModule(
        str(root), subsets, max_utterances=3, cache_dir=str(tmp_path / "c"), max_source_positions=100
    )
    assert len(limited.dataset("test")) == 3


def test_librispeech_layout_errors_name_the_file(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    (root / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").unlink()
    with pytest.raises(FileNotFoundError, match="lists 84-121123-0001"):
        read_librispeech(root, "dev-clean")
    with pytest.raises(FileNotFoundError, match="train-clean-360"):
        read_librispeech(root, "train-clean-360")
    _write(root / "test-other" / "1688" / "142285" / "1688-142285-0009.flac", 0.5)
    with pytest.raises(ValueError, match="without a transcript line"):
        read_librispeech(root, "test-other")


def _common_voice(root, long_clip=False):
    rows = {
        "train.tsv": [
            ("a.mp3", "Hello there.", "female", "twenties", "England English"),
            ("b.mp3", "Good day.", "", "", ""),
        ],
        "dev.tsv": [("c.mp3", "How are you?", "male", "thirties", "")],
        "test.tsv": [
            ("d.mp3", "Fine thanks.", "male", "fifties", "India and South Asia"),
            ("e.mp3", "Bye.", "female", "", ""),
        ],
    }
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
    for name, entries in rows.items():
        lines = [header]
        for path, sentence, gender, age, accents in entries:
            seconds = 7.0 if (long_clip and path == "e.mp3") else 0.8
            _write(root / "clips" / path, seconds, rate=48_000)
            lines.append(f"x\t{path}\t{sentence}\t2\t0\t{age}\t{gender}\t{accents}\ten\t")
        (root / name).write_text("\n".join(lines) + "\n")


def test_common_voice_tsv_layout_with_mp3_clips(tmp_path):
    root = tmp_path / "cv" / "en"
    _common_voice(root)
    datamodule = CommonVoiceDataModule(str(root), cache_dir=str(tmp_path / "c"), max_source_positions=100)
    assert datamodule.group_names == {"gender": ["female", "male", "unknown"]}
    train = datamodule.dataset("train")
    assert [u.text for u in train] == ["Hello there.", "Good day."] and [u.group for u in train] == [0, 2]
    assert datamodule.treatment_counts["train"] == {"ok": 2, "resampled": 2}
    accents = CommonVoiceDataModule(
        str(root), group_by="accents", cache_dir=str(tmp_path / "c"), max_source_positions=100
    )
    assert accents.group_names["accents"] == ["England English", "India and South Asia", "unknown"]


def test_common_voice_too_long_clips_error_or_are_counted(tmp_path):
    root = tmp_path / "cv"
    _common_voice(root, long_clip=True)
    strict = CommonVoiceDataModule(str(root), cache_dir=str(tmp_path / "c"), max_source_positions=100)
    with pytest.raises(AudioError, match=r"e.mp3: 7.\d+ s is longer than the encoder window of 2 s"):
        strict.dataset("test")
    lenient = CommonVoiceDataModule(
        str(root), too_long_audio="skip", cache_dir=str(tmp_path / "c"), max_source_positions=100
    )
    assert len(lenient.dataset("test")) == 1
    assert lenient.treatment_counts["test"] == {"ok": 1, "resampled": 2, "skipped_too_long": 1}
    with pytest.raises(ValueError, match="missing column"):
        CommonVoiceDataModule(str(root), group_by="dialect")
    (root / "clips" / "a.mp3").unlink()
    with pytest.raises(FileNotFoundError, match="lists a.mp3"):
        CommonVoiceDataModule(str(root), cache_dir=str(tmp_path / "c2")).dataset("train")


def test_synthetic_utterances_longer_than_a_short_window_error_or_are_counted(tmp_path):
    with pytest.raises(AudioError, match=r"test/clear/0000: .* longer than the encoder window of 1 s"):
        _synthetic(tmp_path, conditions=["clear"], max_source_positions=50).dataset("test")
    lenient = _synthetic(tmp_path, conditions=["clear"], max_source_positions=50, too_long_audio="skip")
    with pytest.raises(ValueError, match="no usable utterances.*skipped_too_long=1"):
        lenient.dataset("test")


def test_pad_to_utterance_pads_each_batch_to_its_longest_utterance_and_groups_durations(tmp_path):
    window = _synthetic(tmp_path)
    datamodule = _synthetic(tmp_path, pad_to="utterance", pad_multiple=50, pad_margin=0, batch_size=2)
    assert window.sample_lengths("train") is None  # the window route keeps its plain shuffle
    lengths = datamodule.sample_lengths("train")
    assert lengths == [u.features.shape[1] for u in datamodule.dataset("train").utterances]
    seen = [batch["input_features"].shape[-1] for batch in datamodule.train_dataloader()]
    # The 4 training utterances sorted by duration (one group of batches): each batch is its longest utterance
    # rounded up to 50 frames, never the whole window.
    kept = sorted(lengths, reverse=True)
    assert seen == [min(600, -(-kept[i] // 50) * 50) for i in (0, 2)]
    test = next(iter(datamodule.dataloader("test", shuffle=False)))
    assert test["input_features"].shape[-1] < 600  # evaluation pads per batch too
    margin = _synthetic(tmp_path, pad_to="utterance", pad_multiple=50, pad_margin=60, batch_size=2)
    assert _synthetic(tmp_path, pad_to="utterance").pad_margin == 100  # 1 s after the longest utterance by default
    seen = [batch["input_features"].shape[-1] for batch in margin.train_dataloader()]
    assert seen == [min(600, -(-(kept[i] + 60) // 50) * 50) for i in (0, 2)]  # at least 60 frames of padding


def test_pad_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="`pad_to` must be 'window' or 'utterance'"):
        _synthetic(tmp_path, pad_to="batch")
    with pytest.raises(ValueError, match="even number of log-mel frames"):
        _synthetic(tmp_path, pad_multiple=75)
    with pytest.raises(ValueError, match="`pad_margin` must be >= 0"):
        _synthetic(tmp_path, pad_margin=-2)
