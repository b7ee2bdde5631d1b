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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
from verticals.domains.speech.conditions import CONDITIONS, Condition, render
from verticals.domains.speech.models import cache_root, whisper_tokenizer, window_feature_extractor
from verticals.domains.speech.synthesis import espeak_version
from verticals.domains.speech.text import sentences

log = logging.getLogger(__name__)

__all__ = [
    "CommonVoiceDataModule",
    "LibriSpeechDataModule",
    "SpeechCollator",
    "SpeechDataModule",
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
    """Pads features to the window and labels with -100 into the batch layout above."""

    def __init__(self, frames: int) -> None:
        self.frames = frames

    def __call__(self, items: Sequence[Utterance]) -> dict[str, object]:
        labels = pad_sequence(
            [torch.tensor(item.labels, dtype=torch.long) for item in items], batch_first=True, padding_value=-100
        )
        return {
            "input_features": torch.stack([expand_features(i.features, i.fill, self.frames) for i in items]),
            "labels": labels,
            "text": [item.text for item in items],
            "group": torch.tensor([[item.group] for item in items], dtype=torch.long),
        }


class SpeechDataModule(BaseDataModule):
    """Base: turns each split's ``UtteranceSource`` list into cached features, labels and loaders.

    Subclasses set ``group_attributes``/``group_names`` and implement ``_sources(split)``. Loaders come
    from the core's one factory (``BaseDataModule.dataloader``); a last training batch of one utterance is
    kept (Whisper has no BatchNorm).
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
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
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
        return SpeechCollator(self.frames)


class SyntheticSpeechDataModule(SpeechDataModule):
    """Generated English utterances (espeak-ng) under acoustic ``conditions`` (see ``conditions.py``).

    Each split has its own sentences (``text.sentences`` with a split-specific seed); within a split
    every condition speaks the same sentences, so per-condition WERs are paired comparisons.
    ``conditions`` are names of the packaged ones or your own ``Condition`` objects (another voice, room
    or noise level); the audio cache is keyed on everything that changes the sound.
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
    ) -> None:
        super().__init__(
            batch_size,
            max_source_positions,
            cache_dir,
            too_long_audio=too_long_audio,
            seed=seed,
            num_workers=num_workers,
        )
        unknown = [c for c in conditions if not isinstance(c, Condition) and c not in CONDITIONS]
        resolved = [c if isinstance(c, Condition) else CONDITIONS[c] for c in conditions if c not in unknown]
        names = [c.name for c in resolved]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"`conditions` must be distinct names from {sorted(CONDITIONS)} or `Condition`s with distinct "
                f"names, got {list(conditions)}."
            )
        counts = (utterances_per_condition, val_utterances_per_condition, test_utterances_per_condition)
        if min(counts) < 1:
            raise ValueError(f"Utterances per condition must be >= 1 for train/val/test, got {counts}.")
        self.conditions = names
        self._condition_specs = dict(zip(names, resolved))
        self.counts = dict(zip(SPLITS, counts))
        self.group_names = {"condition": names}

    def _sources(self, split: str) -> list[UtteranceSource]:
        texts = sentences(self.counts[split], seed=self.seed * 3 + SPLITS.index(split))
        version = espeak_version()
        out = []
        for name in self.conditions:
            condition = self._condition_specs[name]
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
    ) -> None:
        super().__init__(
            batch_size, max_source_positions, cache_dir, invalid_audio, too_long_audio, seed, num_workers
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
    ) -> None:
        super().__init__(
            batch_size, max_source_positions, cache_dir, invalid_audio, too_long_audio, seed, num_workers
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
