"""Shared fixtures: tiny, seeded backbones of each family the target presets know, and of two they don't."""

from __future__ import annotations

import ctypes.util
import logging
import os
import warnings

# Triton decides between compiling and its CPU interpreter when it is first imported (its own standard
# library is decorated then), and any test module may import it first: without a CUDA driver, choose the
# interpreter here, before anything imports torch or triton, so the kernel tests run the Triton code.
if ctypes.util.find_library("cuda") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


class TinyViTBlock(nn.Module):
    """The module names of a timm ViT block: ``attn.qkv`` (fused), ``attn.proj``, ``mlp.fc1/fc2``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, 2 * width)
        self.mlp.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.attn.proj(attention @ v)
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """timm-like ViT: a Conv2d ``patch_embed.proj`` that a bare ``proj`` target would wrongly catch."""

    def __init__(self, width: int = 16, depth: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.blocks = nn.Sequential(*[TinyViTBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(dim=1))


class TinyCLIPBlock(nn.Module):
    """open_clip's ResidualAttentionBlock names: ``attn`` (nn.MultiheadAttention), ``mlp.c_fc/c_proj``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 2 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


class TinyCLIPTower(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[TinyCLIPBlock(width) for _ in range(depth)])
        self.proj_out = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.transformer.resblocks(x).mean(dim=1))


class TinyMLP(nn.Module):
    """A backbone of no known family: the generic presets apply."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(8, 16)
        self.mlp.fc2 = nn.Linear(16, 8)
        self.attention = nn.Module()
        self.attention.query = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention.query(x)
        return self.head(self.mlp.fc2(torch.relu(self.mlp.fc1(x))))


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def tiny_whisper() -> nn.Module:
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return WhisperModel(config).eval()


def tiny_convnext(conv_mlp: bool = False) -> nn.Module:
    """timm's ConvNeXt at test size: a 4x4 stem, depthwise 7x7 convs, Linear (or 1x1 conv) MLPs, ``head.fc``."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "convnext_tiny",
        pretrained=False,
        num_classes=3,
        depths=(1, 1, 1, 1),
        dims=(8, 16, 24, 32),
        conv_mlp=conv_mlp,
    ).eval()


def tiny_monai_vit() -> nn.Module:
    """MONAI's ViT: ``blocks.N.attn.qkv`` like timm, but ``attn.out_proj`` and ``mlp.linear1/linear2``."""
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    return ViT(
        in_channels=1,
        img_size=(16, 16),
        patch_size=(8, 8),
        hidden_size=16,
        mlp_dim=32,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=3,
        spatial_dims=2,
    ).eval()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# The suite runs on 2 processes (pytest -n 2) on 2-core machines, and its tensors are tiny: one intra-op
# thread per process avoids oversubscription, which made small ops 100x slower on a loaded machine.
torch.set_num_threads(1)


# Keys name the architecture. The core registers the hf_bert, timm_vit and open_clip families; the speech
# domain registers hf_whisper (the core's tests resolve Whisper through the generic presets, to the same
# names); ConvNeXt and MONAI's ViT belong to no family and check the generic presets.
BACKBONES = {
    "hf_bert": tiny_bert,
    "hf_whisper": tiny_whisper,
    "timm_vit": TinyViT,
    "open_clip": TinyCLIPTower,
    "generic": TinyMLP,
    "timm_convnext": tiny_convnext,
    "monai_vit": tiny_monai_vit,
}


@pytest.fixture
def make_backbone():
    """``make_backbone(family, **options)`` builds a fresh, seeded tiny backbone of that family."""

    def make(family: str, **options: object) -> nn.Module:
        torch.manual_seed(0)
        return BACKBONES[family](**options)

    return make
