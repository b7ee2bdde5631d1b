"""Speech datamodules for Whisper: a generated set with known transcripts, LibriSpeech and Common Voice.

Every datamodule yields batches
``{"input_features": FloatTensor[N, 80, frames], "labels": LongTensor[N, L], "text": list[str],
"group": LongTensor[N, 1]}`` and exposes ``group_attributes``, ``group_names``, ``tokenizer`` and
``feature_extractor``. ``labels`` are the tokenised transcript with a leading space (as Whisper writes
text), ``<|notimestamps|>`` first and ``<|endoftext|>`` last, padded with -100; the decoder start token
is not included, since HF Whisper prepends it when it shifts ``labels`` right. ``frames`` is
``2 × max_source_positions`` (3000 = 30 s by default).

Log-mel features are computed once per utterance with Whisper's feature extractor and cached on disk
(safetensors, keyed by a hash of everything that changes them) together with the 16 kHz audio and the
treatments the audio got (``audio.py``); ``treatment_counts`` reports them per split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from verticals.core.data import BaseDataModule, encode_group_matrix
from verticals.domains.speech.audio import (
    TARGET_SAMPLE_RATE,
    AudioCounts,
    AudioPolicy,
    compact_features,
    expand_features,
    log_mel,
    prepare_waveform,
    read_audio,
)
from verticals.domains.speech.conditions import CONDITIONS, Condition, render, voice_condition
from verticals.domains.speech.models import cache_root, whisper_tokenizer, window_feature_extractor
from verticals.domains.speech.synthesis import espeak_version
from verticals.domains.speech.text import (
    normalize_transcript,
    read_sentences,
    split_sentences,
    split_user_sentences,
    template_sentences,
    unseen_word_share,
)

log = logging.getLogger(__name__)

__all__ = [
    "CommonVoiceDataModule",
    "LibriSpeechDataModule",
    "SpeechCollator",
    "SpeechDataModule",
    "TEST_SETS",
    "SyntheticSpeechDataModule",
    "UtteranceDataset",
    "read_librispeech",
]

SPLITS = ("train", "val", "test")
_CACHE_VERSION = "2"


@dataclass(frozen=True)
class UtteranceSource:
    """One utterance before feature extraction: ``load()`` gives (waveform, sample rate)."""

    key: str
    name: str
    text: str
    group: str
    load: Callable[[], tuple[torch.Tensor, int]]


@dataclass
class Utterance:
    name: str
    text: str
    group: int
    labels: list[int]
    features: torch.Tensor  # [80, kept] without the constant padding tail
    fill: float


class UtteranceDataset(Dataset):
    """Prepared utterances of one split (features held compactly in memory)."""

    def __init__(self, utterances: Sequence[Utterance]) -> None:
        self.utterances = list(utterances)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]


class SpeechCollator:
    """Pads features and labels (with -100) into the batch layout above: features to the window, or with
    ``pad_multiple`` to the batch's longest utterance rounded up to a multiple of that many frames (within the
    window), which Whisper's encoder then runs at (``verticals.domains.speech.models.encoder_length``)."""

    def __init__(self, frames: int, pad_multiple: int | None = None, pad_margin: int = 0) -> None:
        self.frames, self.pad_multiple, self.pad_margin = frames, pad_multiple, pad_margin

    def batch_frames(self, items: Sequence[Utterance]) -> int:
        """The frames this batch is padded to."""
        if self.pad_multiple is None:
            return self.frames
        longest = max(item.features.shape[1] for item in items) + self.pad_margin
        return min(self.frames, max(1, math.ceil(longest / self.pad_multiple)) * self.pad_multiple)

    def __call__(self, items: Sequence[Utterance]) -> dict[str, object]:
        frames = self.batch_frames(items)
        labels = pad_sequence(
            [torch.tensor(item.labels, dtype=torch.long) for item in items],
            batch_first=True,
            padding_value=-100,
        )
        return {
            "input_features": torch.stack([expand_features(i.features, i.fill, frames) for i in items]),
            "labels": labels,
            "text": [item.text for item in items],
            "group": torch.tensor([[item.group] for item in items], dtype=torch.long),
        }


class SpeechDataModule(BaseDataModule):
    """Base: turns each split's ``UtteranceSource`` list into cached features, labels and loaders.

    Subclasses set ``group_attributes``/``group_names`` and implement ``_sources(split)``. Loaders come
    from the core's one factory (``BaseDataModule.dataloader``); a last training batch of one utterance is
    kept (Whisper has no BatchNorm).

    Args:
        batch_size: utterances per batch (>= 1).
        max_source_positions: the Whisper encoder window in positions, a multiple of 50 (50 per second:
            500 = 10 s); None keeps Whisper's 30 s. A shorter window makes short utterances much cheaper;
            the model reads it from the data's ``input_shape``.
        cache_dir: folder of the cached audio and log-mel features; default ``<cache root>/speech``
            (``$VERTICALS_CACHE`` or ``~/.cache/verticals``).
        invalid_audio: ``error`` stops at an empty, silent or non-finite clip, naming it; ``skip`` leaves
            it out and counts it in the audio-treatment summary.
        too_long_audio: ``error`` stops at a clip longer than the encoder window; ``skip`` leaves it out and
            counts it (clips are never truncated: the transcript would no longer match).
        seed: seed of the training order.
        num_workers: DataLoader worker processes (0: load in the main process).
        pad_to: ``window`` pads every utterance to the encoder window (Whisper's own route); ``utterance`` pads a
            batch only to its longest utterance (rounded up to ``pad_multiple`` frames), runs the encoder at
            that length, and groups training batches by duration, so short utterances cost what they last.
        pad_multiple: with ``pad_to: utterance``, batch lengths are multiples of this many log-mel frames (100 =
            1 s); fewer distinct lengths, a little more padding. Even.
        pad_margin: with ``pad_to: utterance``, at least this many frames of padding after the longest
            utterance (default 100 = 1 s). Whisper was trained with silence after every utterance: without
            it, LoRA q/v trained at the utterance's length lost 1-3 WER points against the 10 s window
            (``benchmarks/results/whisper_length.md``); with 1 s it is within a point.
    """

    group_attributes: list[str] = ["condition"]
    drop_single_last = False

    def __init__(
        self,
        batch_size: int = 8,
        max_source_positions: int | None = None,
        cache_dir: str | None = None,
        invalid_audio: Literal["error", "skip"] = "error",
        too_long_audio: Literal["error", "skip"] = "error",
        seed: int = 0,
        num_workers: int = 0,
        pad_to: Literal["window", "utterance"] = "window",
        pad_multiple: int = 100,
        pad_margin: int = 100,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        if pad_to not in ("window", "utterance"):
            raise ValueError(f"`pad_to` must be 'window' or 'utterance', got {pad_to!r}.")
        if pad_multiple < 2 or pad_multiple % 2:
            raise ValueError(
                f"`pad_multiple` must be an even number of log-mel frames (2 per encoder position), got {pad_multiple}."
            )
        if pad_margin < 0:
            raise ValueError(f"`pad_margin` must be >= 0 log-mel frames, got {pad_margin}.")
        self.pad_to, self.pad_multiple, self.pad_margin = pad_to, pad_multiple, pad_margin
        self.max_source_positions = max_source_positions
        self.feature_extractor = window_feature_extractor(max_source_positions)
        self.tokenizer = whisper_tokenizer()
        self.policy = AudioPolicy(invalid=invalid_audio, too_long=too_long_audio)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "speech"
        self.treatment_counts: dict[str, AudioCounts] = {}
        self._datasets: dict[str, UtteranceDataset] = {}

    # -- to implement ----------------------------------------------------------------------
    group_names: dict[str, list[str]]

    def _sources(self, split: str) -> list[UtteranceSource]:
        raise NotImplementedError(f"{type(self).__name__} must implement _sources(split).")

    # -- shapes --------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return int(self.feature_extractor.nb_max_frames)

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(80, frames)``: a registered ``speech.whisper`` model reads its encoder window from it."""
        return (int(self.feature_extractor.feature_size), self.frames)

    @property
    def window_seconds(self) -> float:
        return self.frames * self.feature_extractor.hop_length / TARGET_SAMPLE_RATE

    # -- preparation -----------------------------------------------------------------------
    def labels_for(self, text: str) -> list[int]:
        """Token ids of ``text`` as HF Whisper's ``labels`` (no decoder start; see the module docstring)."""
        ids = self.tokenizer(" " + text.strip()).input_ids
        start = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        if ids and ids[0] == start:
            ids = ids[1:]
        limit = 448 - 1
        if len(ids) > limit:
            raise ValueError(
                f"Transcript of {len(ids)} tokens is longer than Whisper's {limit}: {text[:60]!r}..."
            )
        return ids

    def _cache_path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{_CACHE_VERSION}/{key}/{self.frames}/{self.policy}".encode()).hexdigest()
        return self.cache_dir / "features" / digest[:2] / f"{digest}.safetensors"

    def _prepare(self, source: UtteranceSource, counts: AudioCounts) -> Utterance | None:
        attribute = self.group_attributes[0]
        group = int(encode_group_matrix({attribute: [source.group]}, self.group_names)[0, 0])
        path = self._cache_path(source.key)
        if path.is_file():
            tensors = load_file(str(path))
            treatments = json.loads(bytes(tensors["treatments"].tolist()).decode())
            counts.update(treatments)
            return Utterance(
                source.name,
                source.text,
                group,
                self.labels_for(source.text),
                tensors["features"],
                float(tensors["fill"]),
            )
        local = AudioCounts()
        waveform, rate = source.load()
        waveform = prepare_waveform(
            waveform, rate, source.name, max_seconds=self.window_seconds, policy=self.policy, counts=local
        )
        counts.update(local)
        if waveform is None:
            return None
        features, fill = compact_features(log_mel(waveform, self.feature_extractor))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp")
        save_file(
            {
                "audio": waveform.contiguous(),
                "features": features.contiguous(),
                "fill": torch.tensor(fill),
                "treatments": torch.tensor(list(json.dumps(dict(local)).encode()), dtype=torch.uint8),
            },
            str(staging),
            metadata={"name": source.name, "text": source.text, "group": source.group},
        )
        staging.replace(path)
        return Utterance(source.name, source.text, group, self.labels_for(source.text), features, fill)

    def dataset(self, split: str) -> UtteranceDataset:
        """The prepared utterances of ``split`` ('train', 'val' or 'test'), built once."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if split not in self._datasets:
            counts = AudioCounts()
            prepared = [self._prepare(source, counts) for source in self._sources(split)]
            utterances = [u for u in prepared if u is not None]
            if not utterances:
                raise ValueError(
                    f"{type(self).__name__}: the {split} split has no usable utterances ({counts.summary()})."
                )
            self.treatment_counts[split] = counts
            log.info(
                "%s %s: %d utterances; audio treatments: %s",
                type(self).__name__,
                split,
                len(utterances),
                counts.summary(),
            )
            self._datasets[split] = UtteranceDataset(utterances)
        return self._datasets[split]

    def waveform(self, split: str, index: int) -> torch.Tensor:
        """The cached 16 kHz audio of utterance ``index`` of ``split`` (for listening and plots)."""
        sources = [s for s in self._sources(split)]
        self.dataset(split)
        path = self._cache_path(sources[index].key)
        if not path.is_file():
            raise KeyError(
                f"Utterance {index} of {split} ({sources[index].name}) was skipped; it has no audio."
            )
        return load_file(str(path))["audio"]

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", SPLITS):
            self.dataset(split)

    def split_dataset(self, split: str) -> UtteranceDataset:
        return self.dataset(split)

    def collate_fn(self, split: str) -> SpeechCollator:
        if self.pad_to != "utterance":
            return SpeechCollator(self.frames)
        return SpeechCollator(self.frames, self.pad_multiple, self.pad_margin)

    def sample_lengths(self, split: str) -> list[int] | None:
        """With ``pad_to: utterance``, each utterance's frames: training batches group similar durations."""
        if self.pad_to != "utterance":
            return None
        return [int(utterance.features.shape[1]) for utterance in self.dataset(split).utterances]


TEST_SETS = ("held_out_sentences", "in_template", "held_out_voices")


class SyntheticSpeechDataModule(SpeechDataModule):
    """Generated English utterances (espeak-ng) under acoustic ``conditions`` (see ``conditions.py``).

    Text: by default the open sentence generator (``text.split_sentences``): train, validation and test
    share no sentence and training text draws on only part of the vocabulary, so a share of the test
    words never occurs in training (``summary()`` measures it). ``sentences`` / ``sentences_file`` bring
    your own text instead (split the same way); ``text="template"`` trains on the earlier ten templates.
    Within a split every condition speaks the same sentences, so per-condition WERs are paired.

    Test sets (``test_set``): ``held_out_sentences`` (the test sentences, the training voices),
    ``in_template`` (the earlier template sentences, the training voices) and ``held_out_voices`` (the
    test sentences read by each condition's held-out voices, never trained on). Test a checkpoint on each
    to see what an adaptation learned: the text, the voices, or the condition.

    Args:
        conditions: the acoustic conditions, each a group of the report: names of the packaged ones
            (``clear``, ``child``, ``accented``, ``noisy``; see ``conditions.CONDITIONS``), names given in
            ``voices``, or your own ``Condition`` objects, with distinct names.
        utterances_per_condition: training utterances generated per condition (>= 1).
        val_utterances_per_condition: validation utterances per condition (>= 1).
        test_utterances_per_condition: test utterances per condition (>= 1); more narrows the per-condition
            WER intervals.
        seed: seed of the sentences, voices and noise of every split (each split draws its own) and of
            the training order; change it to generate another set.
        cache_dir: folder of the cached audio and log-mel features; default ``<cache root>/speech``
            (``$VERTICALS_CACHE`` or ``~/.cache/verticals``).
        batch_size: utterances per batch (>= 1).
        max_source_positions: the Whisper encoder window in positions, a multiple of 50 (50 per second:
            500 = 10 s); None keeps Whisper's 30 s. A shorter window makes short utterances much cheaper;
            the model reads it from the data's ``input_shape``.
        too_long_audio: ``error`` stops at a clip longer than the encoder window; ``skip`` leaves it out and
            counts it (clips are never truncated: the transcript would no longer match).
        num_workers: DataLoader worker processes (0: load in the main process).
        text: ``open`` (the generator with thousands of words; default) or ``template`` (the earlier ten
            templates for every split, as before this option existed: splits may then share sentences).
        sentences: your own sentences (a list); shuffled with ``seed`` and cut into train, validation and
            test sentences that share none.
        sentences_file: a UTF-8 file of your own sentences, one a line (``#`` starts a comment line); read
            and split like ``sentences`` (give one or the other).
        held_out_word_share: with the open generator, the share of each word list kept out of training
            text (in [0, 1)); validation and test text draws on all words.
        test_set: what the test split holds: ``held_out_sentences``, ``in_template`` or
            ``held_out_voices`` (see above).
        train_conditions: the conditions of the training and validation splits (default: all of
            ``conditions``); the test split always covers every condition. ``[clear]`` trains a
            clear-speech-only control.
        voices: your own voices, ``{condition: [espeak-ng voice names]}``: a packaged condition keeps its
            room, noise and prosody with these voices; a new name becomes a condition with the clear
            condition's prosody (list it in ``conditions`` too).
        held_out_voices: ``{condition: [espeak-ng voice names]}`` for the ``held_out_voices`` test set,
            replacing the condition's own; they must not be among its training voices.
        pad_to: ``window`` (every utterance padded to the encoder window) or ``utterance`` (each batch to its
            longest utterance, the encoder run at that length, training batches grouped by duration); see
            :class:`SpeechDataModule`.
        pad_multiple: with ``pad_to: utterance``, batch lengths are multiples of this many log-mel frames.
        pad_margin: with ``pad_to: utterance``, at least this many frames of padding after the longest utterance.
    """

    def __init__(
        self,
        conditions: Sequence[str | Condition] = ("clear", "child", "accented", "noisy"),
        utterances_per_condition: int = 100,
        val_utterances_per_condition: int = 20,
        test_utterances_per_condition: int = 50,
        seed: int = 0,
        cache_dir: str | None = None,
        batch_size: int = 8,
        max_source_positions: int | None = None,
        too_long_audio: Literal["error", "skip"] = "error",
        num_workers: int = 0,
        text: Literal["open", "template"] = "open",
        sentences: Sequence[str] | None = None,
        sentences_file: str | None = None,
        held_out_word_share: float = 0.2,
        test_set: Literal["held_out_sentences", "in_template", "held_out_voices"] = "held_out_sentences",
        train_conditions: Sequence[str] | None = None,
        voices: Mapping[str, Sequence[str]] | None = None,
        held_out_voices: Mapping[str, Sequence[str]] | None = None,
        pad_to: Literal["window", "utterance"] = "window",
        pad_multiple: int = 100,
        pad_margin: int = 100,
    ) -> None:
        super().__init__(
            batch_size,
            max_source_positions,
            cache_dir,
            too_long_audio=too_long_audio,
            seed=seed,
            num_workers=num_workers,
            pad_to=pad_to,
            pad_multiple=pad_multiple,
            pad_margin=pad_margin,
        )
        voices, held_out_voices = dict(voices or {}), dict(held_out_voices or {})
        unknown = [
            c for c in conditions if not isinstance(c, Condition) and c not in CONDITIONS and c not in voices
        ]
        resolved = [self._resolve(c, voices, held_out_voices) for c in conditions if c not in unknown]
        names = [c.name for c in resolved]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"`conditions` must be distinct names from {sorted(CONDITIONS)}, names given in `voices`, or "
                f"`Condition`s with distinct names; got {list(conditions)}."
            )
        stray = sorted((set(voices) | set(held_out_voices)) - set(names))
        if stray:
            raise ValueError(
                f"`voices` / `held_out_voices` name {stray}, which are not in `conditions` {names}."
            )
        counts = (utterances_per_condition, val_utterances_per_condition, test_utterances_per_condition)
        if min(counts) < 1:
            raise ValueError(f"Utterances per condition must be >= 1 for train/val/test, got {counts}.")
        if text not in ("open", "template"):
            raise ValueError(f"`text` must be 'open' or 'template', got {text!r}.")
        if test_set not in TEST_SETS:
            raise ValueError(f"`test_set` must be one of {TEST_SETS}, got {test_set!r}.")
        if sentences is not None and sentences_file is not None:
            raise ValueError("Give `sentences` or `sentences_file`, not both.")
        if not 0.0 <= held_out_word_share < 1.0:
            raise ValueError(f"`held_out_word_share` must be in [0, 1), got {held_out_word_share}.")
        trained = list(train_conditions) if train_conditions is not None else names
        if not trained or set(trained) - set(names):
            raise ValueError(f"`train_conditions` must be a non-empty subset of {names}, got {trained}.")
        if test_set == "held_out_voices":
            lacking = [c.name for c in resolved if not c.held_out_voices]
            if lacking:
                raise ValueError(
                    f"The held_out_voices test set needs held-out voices for every condition; {lacking} have "
                    "none (give them in `held_out_voices`)."
                )
        self.conditions = names
        self.train_conditions = [name for name in names if name in trained]
        self._condition_specs = dict(zip(names, resolved))
        self.counts = dict(zip(SPLITS, counts))
        self.text, self.test_set, self.held_out_word_share = text, test_set, held_out_word_share
        self.dataset_name = f"synthetic espeak-ng speech ({test_set.replace('_', ' ')} test set)"
        self.user_sentences = read_sentences(sentences_file) if sentences_file else sentences
        self.group_names = {"condition": names}
        self._texts: dict[str, list[str]] | None = None
        self._summary_logged = False
        if self.user_sentences is not None:
            self.split_texts()  # too few sentences for the splits is an error now, not at setup

    @staticmethod
    def _resolve(
        condition: str | Condition, voices: Mapping[str, Sequence[str]], held_out: Mapping[str, Sequence[str]]
    ) -> Condition:
        spec = condition if isinstance(condition, Condition) else CONDITIONS.get(condition)
        name = spec.name if spec is not None else str(condition)
        if name in voices:
            spec = voice_condition(name, voices[name], spec)
        if name in held_out:
            prosody = spec.voices[0]
            spec = replace(spec, held_out_voices=tuple(replace(prosody, name=v) for v in held_out[name]))
        return spec

    # -- text ------------------------------------------------------------------------------
    def split_texts(self) -> dict[str, list[str]]:
        """The sentences of each split (``test``: of the chosen test set), one per utterance index."""
        if self._texts is None:
            wanted = {split: self.counts[split] for split in SPLITS}
            if self.user_sentences is not None:
                texts = split_user_sentences(self.user_sentences, wanted, self.seed)
            elif self.text == "template":
                texts = {
                    s: template_sentences(n, seed=self.seed * 3 + SPLITS.index(s)) for s, n in wanted.items()
                }
            else:
                texts = split_sentences(wanted, self.seed, self.held_out_word_share)
            if self.test_set == "in_template":  # the earlier set's test sentences, as they were drawn
                texts["test"] = template_sentences(wanted["test"], seed=self.seed * 3 + SPLITS.index("test"))
            self._texts = texts
        return self._texts

    def summary(self) -> dict[str, object]:
        """What the set holds: text source, sentences per split, sentences shared between splits, the share
        of test words never in training text, and the voices of each condition in train and test."""
        texts = self.split_texts()
        normalised = {split: {normalize_transcript(t) for t in texts[split]} for split in SPLITS}
        test_specs = {
            name: spec.with_held_out_voices() if self.test_set == "held_out_voices" else spec
            for name, spec in self._condition_specs.items()
        }
        return {
            "text": "user" if self.user_sentences is not None else self.text,
            "test_set": self.test_set,
            "sentences": {split: len(texts[split]) for split in SPLITS},
            "shared_sentences": {
                "train_val": len(normalised["train"] & normalised["val"]),
                "train_test": len(normalised["train"] & normalised["test"]),
                "val_test": len(normalised["val"] & normalised["test"]),
            },
            "unseen_test_word_share": unseen_word_share(texts["train"], texts["test"]),
            "train_conditions": list(self.train_conditions),
            "train_voices": {
                name: sorted({v.name for v in self._condition_specs[name].voices})
                for name in self.train_conditions
            },
            "test_voices": {name: sorted({v.name for v in spec.voices}) for name, spec in test_specs.items()},
        }

    def setup(self, stage: str | None = None) -> None:
        """Prepare the stage's splits and log :meth:`summary` once (what the text and voices hold out)."""
        super().setup(stage)
        if not self._summary_logged:
            self._summary_logged = True
            log.info("%s: %s", type(self).__name__, json.dumps(self.summary()))

    def _sources(self, split: str) -> list[UtteranceSource]:
        texts = self.split_texts()[split]
        version = espeak_version()
        out = []
        names = self.conditions if split == "test" else self.train_conditions
        for name in names:
            condition = self._condition_specs[name]
            if split == "test" and self.test_set == "held_out_voices":
                condition = condition.with_held_out_voices()
            for index, text in enumerate(texts):
                key = f"synthetic/{version}/{condition.key()}/{self.seed}/{split}/{index}/{text}"

                def load(text=text, condition=condition, index=index, split=split):
                    utterance_seed = self.seed * 3 + SPLITS.index(split)
                    return render(
                        text, condition, index, utterance_seed, TARGET_SAMPLE_RATE
                    ), TARGET_SAMPLE_RATE

                out.append(UtteranceSource(key, f"{split}/{name}/{index:04d}", text, name, load))
        return out


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}/{stat.st_size}/{stat.st_mtime_ns}"


def _subsample(items: list, limit: int | None, seed: int) -> list:
    if limit is None or len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def read_librispeech(
    root: str | Path, subset: str, audio_extension: str = "flac"
) -> list[tuple[str, Path, str, str]]:
    """(utterance id, audio path, transcript, speaker id) from ``<root>/<subset>/<speaker>/<chapter>/``.

    Each chapter folder holds ``<speaker>-<chapter>.trans.txt`` with lines ``<utterance id> <TEXT>``;
    an utterance without its audio file, or audio without a transcript line, is an error.
    """
    folder = Path(root) / subset
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech subset folder {folder} does not exist (expected <root>/<subset>, e.g. test-clean)."
        )
    rows = []
    for transcript in sorted(folder.glob("*/*/*.trans.txt")):
        lines = [line.split(" ", 1) for line in transcript.read_text().splitlines() if line.strip()]
        listed = set()
        for parts in lines:
            if len(parts) != 2:
                raise ValueError(f"{transcript}: line {' '.join(parts)!r} is not '<utterance id> <TEXT>'.")
            utterance_id, text = parts
            audio = transcript.parent / f"{utterance_id}.{audio_extension}"
            if not audio.is_file():
                raise FileNotFoundError(f"{transcript} lists {utterance_id} but {audio} does not exist.")
            listed.add(audio.name)
            rows.append((utterance_id, audio, text.strip(), utterance_id.split("-")[0]))
        unlisted = sorted(
            p.name for p in transcript.parent.glob(f"*.{audio_extension}") if p.name not in listed
        )
        if unlisted:
            raise ValueError(f"{transcript.parent}: audio files without a transcript line: {unlisted[:5]}.")
    if not rows:
        raise FileNotFoundError(f"No <speaker>/<chapter>/*.trans.txt found under {folder}.")
    return rows


def _speaker_sex(root: Path) -> dict[str, str]:
    """Speaker id → 'F'/'M' from LibriSpeech's ``SPEAKERS.TXT`` (``ID | SEX | SUBSET | MINUTES | NAME``)."""
    path = root / "SPEAKERS.TXT"
    if not path.is_file():
        raise FileNotFoundError(f"Grouping LibriSpeech by sex needs {path} (shipped with the corpus).")
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        fields = [f.strip() for f in line.split("|")]
        out[fields[0]] = fields[1]
    return out


class LibriSpeechDataModule(SpeechDataModule):
    """LibriSpeech in its distributed layout; ``subsets`` maps each split to subset folders.

    ``group_by``: ``"subset"`` (e.g. test-clean vs test-other) or ``"sex"`` (from ``SPEAKERS.TXT``).
    ``max_utterances``: a seeded subsample per split, for CPU-scale runs.

    Args:
        root: the corpus folder, holding the subset folders (``<root>/test-clean/<speaker>/<chapter>/``)
            and ``SPEAKERS.TXT``.
        subsets: the subset folders of each split (keys ``train``, ``val``, ``test``); default:
            ``train-clean-100`` / ``dev-clean`` / ``test-clean`` and ``test-other``.
        group_by: ``subset`` (each subset a group) or ``sex`` (the speaker's, from ``SPEAKERS.TXT``): what
            the per-group WERs split by.
        audio_extension: suffix of the audio files (``flac`` as distributed; ``wav`` after a conversion).
        max_utterances: keep a seeded random subsample of this many utterances per split (None: all).
        batch_size: utterances per batch (>= 1).
        max_source_positions: the Whisper encoder window in positions, a multiple of 50 (50 per second:
            500 = 10 s); None keeps Whisper's 30 s. A shorter window makes short utterances much cheaper;
            the model reads it from the data's ``input_shape``.
        cache_dir: folder of the cached audio and log-mel features; default ``<cache root>/speech``
            (``$VERTICALS_CACHE`` or ``~/.cache/verticals``).
        invalid_audio: ``error`` stops at an empty, silent or non-finite clip, naming it; ``skip`` leaves
            it out and counts it in the audio-treatment summary.
        too_long_audio: ``error`` stops at a clip longer than the encoder window; ``skip`` leaves it out and
            counts it (clips are never truncated: the transcript would no longer match).
        seed: seed of the training order and of the ``max_utterances`` subsample.
        num_workers: DataLoader worker processes (0: load in the main process).
        pad_to: ``window`` (every utterance padded to the encoder window) or ``utterance`` (each batch to its
            longest utterance, the encoder run at that length, training batches grouped by duration); see
            :class:`SpeechDataModule`.
        pad_multiple: with ``pad_to: utterance``, batch lengths are multiples of this many log-mel frames.
        pad_margin: with ``pad_to: utterance``, at least this many frames of padding after the longest utterance.
    """

    def __init__(
        self,
        root: str,
        subsets: dict[str, list[str]] | None = None,
        group_by: Literal["subset", "sex"] = "subset",
        audio_extension: str = "flac",
        max_utterances: int | None = None,
        batch_size: int = 8,
        max_source_positions: int | None = None,
        cache_dir: str | None = None,
        invalid_audio: Literal["error", "skip"] = "error",
        too_long_audio: Literal["error", "skip"] = "error",
        seed: int = 0,
        num_workers: int = 0,
        pad_to: Literal["window", "utterance"] = "window",
        pad_multiple: int = 100,
        pad_margin: int = 100,
    ) -> None:
        super().__init__(
            batch_size,
            max_source_positions,
            cache_dir,
            invalid_audio,
            too_long_audio,
            seed,
            num_workers,
            pad_to=pad_to,
            pad_multiple=pad_multiple,
            pad_margin=pad_margin,
        )
        self.root = Path(root)
        self.subsets = dict(
            subsets
            or {"train": ["train-clean-100"], "val": ["dev-clean"], "test": ["test-clean", "test-other"]}
        )
        if set(self.subsets) - set(SPLITS):
            raise ValueError(f"`subsets` keys must be among {SPLITS}, got {sorted(self.subsets)}.")
        if group_by not in ("subset", "sex"):
            raise ValueError(f"`group_by` must be 'subset' or 'sex', got {group_by!r}.")
        self.group_by, self.audio_extension, self.max_utterances = group_by, audio_extension, max_utterances
        self.group_attributes = [group_by]
        self._sex = _speaker_sex(self.root) if group_by == "sex" else {}
        names = (
            sorted({s for subsets_ in self.subsets.values() for s in subsets_})
            if group_by == "subset"
            else sorted(set(self._sex.values()))
        )
        self.group_names = {group_by: names}

    def _sources(self, split: str) -> list[UtteranceSource]:
        rows = []
        for subset in self.subsets.get(split, []):
            rows += [(subset, *row) for row in read_librispeech(self.root, subset, self.audio_extension)]
        rows = _subsample(rows, self.max_utterances, self.seed)
        out = []
        for subset, _utterance_id, audio, text, speaker in rows:
            if self.group_by == "subset":
                group = subset
            elif speaker in self._sex:
                group = self._sex[speaker]
            else:
                raise KeyError(f"Speaker {speaker} of {audio} is not in {self.root / 'SPEAKERS.TXT'}.")
            out.append(
                UtteranceSource(_file_key(audio), str(audio), text, group, lambda a=audio: read_audio(a))
            )
        return out


class CommonVoiceDataModule(SpeechDataModule):
    """Common Voice in its distributed layout: ``clips/*.mp3`` and ``train.tsv``/``dev.tsv``/``test.tsv``.

    ``group_by`` is a TSV column (``gender``, ``age``, ``accents`` or the older ``accent``); an empty
    value becomes the group ``"unknown"``. Groups are the sorted values over all splits' TSVs.

    Args:
        root: the language folder of the release, holding ``clips/`` and the split TSVs.
        tsv: the TSV file of each split (keys ``train``, ``val``, ``test``); default ``train.tsv`` /
            ``dev.tsv`` / ``test.tsv``.
        group_by: the TSV column the per-group WERs split by (``gender``, ``age``, ``accents``).
        max_utterances: keep a seeded random subsample of this many utterances per split (None: all).
        batch_size: utterances per batch (>= 1).
        max_source_positions: the Whisper encoder window in positions, a multiple of 50 (50 per second:
            500 = 10 s); None keeps Whisper's 30 s. A shorter window makes short utterances much cheaper;
            the model reads it from the data's ``input_shape``.
        cache_dir: folder of the cached audio and log-mel features; default ``<cache root>/speech``
            (``$VERTICALS_CACHE`` or ``~/.cache/verticals``).
        invalid_audio: ``error`` stops at an empty, silent or non-finite clip, naming it; ``skip`` leaves
            it out and counts it in the audio-treatment summary.
        too_long_audio: ``error`` stops at a clip longer than the encoder window; ``skip`` leaves it out and
            counts it (clips are never truncated: the transcript would no longer match).
        seed: seed of the training order and of the ``max_utterances`` subsample.
        num_workers: DataLoader worker processes (0: load in the main process).
        pad_to: ``window`` (every utterance padded to the encoder window) or ``utterance`` (each batch to its
            longest utterance, the encoder run at that length, training batches grouped by duration); see
            :class:`SpeechDataModule`.
        pad_multiple: with ``pad_to: utterance``, batch lengths are multiples of this many log-mel frames.
        pad_margin: with ``pad_to: utterance``, at least this many frames of padding after the longest utterance.
    """

    def __init__(
        self,
        root: str,
        tsv: dict[str, str] | None = None,
        group_by: str = "gender",
        max_utterances: int | None = None,
        batch_size: int = 8,
        max_source_positions: int | None = None,
        cache_dir: str | None = None,
        invalid_audio: Literal["error", "skip"] = "error",
        too_long_audio: Literal["error", "skip"] = "error",
        seed: int = 0,
        num_workers: int = 0,
        pad_to: Literal["window", "utterance"] = "window",
        pad_multiple: int = 100,
        pad_margin: int = 100,
    ) -> None:
        super().__init__(
            batch_size,
            max_source_positions,
            cache_dir,
            invalid_audio,
            too_long_audio,
            seed,
            num_workers,
            pad_to=pad_to,
            pad_multiple=pad_multiple,
            pad_margin=pad_margin,
        )
        self.root = Path(root)
        self.tsv = dict(tsv or {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"})
        if set(self.tsv) - set(SPLITS):
            raise ValueError(f"`tsv` keys must be among {SPLITS}, got {sorted(self.tsv)}.")
        self.group_by, self.max_utterances = group_by, max_utterances
        self.group_attributes = [group_by]
        self._rows = {split: self._read(name) for split, name in self.tsv.items()}
        self.group_names = {group_by: sorted({row["group"] for rows in self._rows.values() for row in rows})}

    def _read(self, name: str) -> list[dict[str, str]]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Common Voice split file {path} does not exist (expected train.tsv/dev.tsv/test.tsv)."
            )
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            columns = reader.fieldnames or []
            column = self.group_by
            if column == "accents" and "accents" not in columns and "accent" in columns:
                column = "accent"
            missing = [c for c in ("path", "sentence", column) if c not in columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; it has {columns}.")
            return [
                {
                    "path": row["path"],
                    "sentence": row["sentence"],
                    "group": (row[column] or "").strip() or "unknown",
                }
                for row in reader
            ]

    def _sources(self, split: str) -> list[UtteranceSource]:
        rows = _subsample(self._rows.get(split, []), self.max_utterances, self.seed)
        out = []
        for row in rows:
            audio = self.root / "clips" / row["path"]
            if not audio.is_file():
                raise FileNotFoundError(f"{self.tsv[split]} lists {row['path']} but {audio} does not exist.")
            out.append(
                UtteranceSource(
                    _file_key(audio), str(audio), row["sentence"], row["group"], lambda a=audio: read_audio(a)
                )
            )
        return out


def iter_batches(datamodule: SpeechDataModule, split: str) -> Iterable[dict[str, object]]:
    """Batches of ``split`` in order (for evaluation scripts that do not run a Trainer)."""
    return datamodule.dataloader(split, shuffle=False)
