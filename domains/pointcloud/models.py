"""Point transformers of the point-cloud domain (Point-MAE / Point-BERT style), registered for configs as
``pointcloud.point_transformer``, with the ``point_transformer`` backbone family.

A cloud ``[B, N, 3]`` is cut into patches by :class:`~verticals.domains.pointcloud.grouping.PointGrouper`
(farthest-point-sampled centres, the kNN of each), each patch becomes a token through a mini-PointNet
(:class:`MiniPointNet`, Point-MAE's ``Encoder``), an MLP embeds the centres as positions, and a plain
transformer runs over ``[CLS] + tokens`` with the positions added before every block (as Point-MAE and
Point-BERT do). Two task models keep it as ``.backbone`` (the trainable-% denominator):

- :class:`PointClassifier`: Point-MAE's classification head on ``concat(CLS, max over tokens)``;
- :class:`PointSegmenter`: Point-MAE's part-segmentation head: the normed tokens of a few blocks, their max
  and mean over the cloud, inverse-distance interpolation from the centres to every point, a point MLP, and
  optionally the object category as a one-hot (ShapeNetPart).

Weights come from an official checkpoint (:func:`load_point_checkpoint` maps Point-MAE's ``pretrain.pth``
and fine-tuned files and Point-BERT's pre-trained and fine-tuned files onto the backbone, every tensor
accounted for), from the project's stand-in pretrained on generated shapes (``pretrained: true``,
``verticals.domains.pointcloud.pretrained``), or a random init. Sizes (:data:`POINT_TRANSFORMER_SIZES`):
``base`` is Point-MAE's (384-d, 12 blocks, 6 heads, 64 groups of 32 of 1024 points), ``small`` the CPU
stand-in's, ``tiny`` the tests'.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from timm.layers import DropPath, trunc_normal_
from torch import nn

from verticals.core.adapters.batchnorm import keep_batchnorm_statistics
from verticals.core.adapters.families import every_block_has, has_modules, register_family
from verticals.core.registry import register_model
from verticals.domains.pointcloud.grouping import PointGrouper, inverse_distance_interpolate

__all__ = [
    "CHECKPOINT_LAYOUTS",
    "HEAD_SIZES",
    "POINT_TRANSFORMER_SIZES",
    "Attention",
    "Block",
    "MiniPointNet",
    "PointClassifier",
    "PointSegHead",
    "PointSegmenter",
    "PointTransformer",
    "build_point_transformer",
    "default_feature_blocks",
    "is_point_transformer",
    "load_point_checkpoint",
    "point_checkpoint_architecture",
    "point_mlp",
    "point_transformer",
    "read_point_checkpoint",
    "write_tiny_point_bert_checkpoint",
    "write_tiny_point_mae_checkpoint",
]

#: Backbone sizes. ``base``: Point-MAE / Point-BERT (ModelNet40 and ShapeNet pre-training: 1024 points);
#: ``small``: the CPU stand-in; ``tiny``: tests. ``num_points`` is what the grouping was chosen for.
POINT_TRANSFORMER_SIZES: dict[str, dict[str, Any]] = {
    "base": {
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "num_groups": 64,
        "group_size": 32,
        "tokenizer_widths": (128, 256, 512),
        "num_points": 1024,
    },
    "small": {
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 3,
        "num_groups": 32,
        "group_size": 16,
        "tokenizer_widths": (64, 128, 256),
        "num_points": 512,
    },
    "tiny": {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "num_groups": 16,
        "group_size": 8,
        "tokenizer_widths": (16, 32, 64),
        "num_points": 128,
    },
}
#: Head sizes per backbone size: the classifier's hidden width, the segmentation head's widths
#: (propagation MLP x2, then the point MLP x2) and its category embedding width. ``base`` is Point-MAE's.
HEAD_SIZES: dict[str, dict[str, Any]] = {
    "base": {"head_dim": 256, "seg_widths": (1536, 1024, 512, 256), "category_dim": 64},
    "small": {"head_dim": 256, "seg_widths": (128, 128, 128, 64), "category_dim": 32},
    "tiny": {"head_dim": 32, "seg_widths": (32, 32, 32, 16), "category_dim": 8},
}
TASKS = ("classification", "segmentation")
#: Checkpoint layouts :func:`load_point_checkpoint` recognises.
CHECKPOINT_LAYOUTS = (
    "point_mae_pretrain",  # Point-MAE pretrain.pth: MAE_encoder.* (+ decoder)
    "point_mae_finetuned",  # Point-MAE / Point-BERT fine-tuned PointTransformer (+ cls_head_finetune)
    "point_mae_partseg",  # Point-MAE segmentation/ get_model (no CLS token; + segmentation head)
    "point_bert_pretrain",  # Point-BERT: transformer_q.* (+ momentum encoder transformer_k, dVAE, queue)
    "verticals",  # this module's own names (a PointTransformer's state dict, or a task model's backbone.*)
)
_BACKBONE_KEY = re.compile(r"(?:encoder|reduce_dim|pos_embed|norm|blocks)\.|cls_token$|cls_pos$")
_OFFICIAL_BLOCK = re.compile(r"blocks\.blocks\.(\d+)\.(.*)")
_OWN_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")


# -- the encoder ---------------------------------------------------------------------------------------


class MiniPointNet(nn.Module):
    """Point-MAE's patch tokenizer (its ``Encoder``): a shared point MLP, a max-pool, the pooled feature
    concatenated back onto every point, a second point MLP and a max-pool: ``[B, G, k, 3] -> [B, G, out]``.

    Args:
        out_dim: token width (Point-MAE: the transformer's width; Point-BERT: 256, bridged by a Linear).
        widths: hidden widths ``(first, pooled, second)``; Point-MAE's are ``(128, 256, 512)``.
    """

    def __init__(self, out_dim: int, widths: Sequence[int] = (128, 256, 512)) -> None:
        super().__init__()
        first, pooled, second = _widths(widths, 3, "widths")
        self.out_dim = _positive(out_dim, "out_dim")
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, first, 1), nn.BatchNorm1d(first), nn.ReLU(), nn.Conv1d(first, pooled, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * pooled, second, 1), nn.BatchNorm1d(second), nn.ReLU(), nn.Conv1d(second, out_dim, 1)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, G, out_dim]`` for centred patches ``[B, G, k, 3]``."""
        if groups.ndim != 4 or groups.shape[-1] != 3:
            raise ValueError(f"MiniPointNet takes patches [B, G, k, 3], got {tuple(groups.shape)}.")
        batch, count, size, _ = groups.shape
        feature = point_mlp(self.first_conv, groups.reshape(-1, 3)).reshape(batch * count, size, -1)
        pooled = feature.max(dim=1).values  # [BG, pooled]
        width = pooled.shape[-1]
        conv = self.second_conv[0]
        if _is_pointwise_conv(conv):
            # concat([pooled, point]) @ W = pooled @ W_pooled (once per patch) + point @ W_point
            weight = conv.weight[..., 0]
            first = (
                F.linear(feature, weight[:, width:], conv.bias) + F.linear(pooled, weight[:, :width])[:, None]
            )
            feature = point_mlp(self.second_conv[1:], first.reshape(batch * count * size, -1))
        else:
            joined = torch.cat([pooled[:, None].expand(-1, size, -1), feature], dim=-1)
            feature = point_mlp(self.second_conv, joined.reshape(batch * count * size, -1))
        return feature.reshape(batch * count, size, -1).max(dim=1).values.reshape(batch, count, self.out_dim)


def _is_pointwise_conv(module: nn.Module) -> bool:
    """A plain ``nn.Conv1d`` of kernel 1 (not one an adapter wrapped), which a Linear can stand in for."""
    return (
        type(module) is nn.Conv1d
        and module.kernel_size == (1,)
        and module.stride == (1,)
        and module.groups == 1
        and module.padding in ((0,), "valid")
    )


def point_mlp(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a point MLP written as ``Conv1d(kernel 1)`` / ``BatchNorm1d`` / activation layers (the official
    layout, kept for the checkpoints' names) to channels-last points ``[M, C]``: each plain kernel-1 Conv1d
    runs as the equal Linear (much faster than a convolution on CPU, in both directions), BatchNorm1d on
    ``[M, C]`` normalises over the same points as on ``[B, C, L]``, and any other layer (an adapter-wrapped
    conv) runs on the ``[1, C, M]`` view."""
    for layer in layers:
        if _is_pointwise_conv(layer):
            x = F.linear(x, layer.weight[..., 0], layer.bias)
        elif isinstance(layer, (nn.BatchNorm1d, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Dropout, nn.Identity)):
            x = layer(x)
        else:
            x = layer(x.T[None])[0].T
    return x


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear (no bias by default, as Point-MAE) and an
    output ``proj``; softmax(q kᵀ / √d) v through PyTorch's fused kernel.

    Args:
        dim: width.
        num_heads: heads (``dim`` must divide by it).
        qkv_bias: a bias on ``qkv``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"The width {dim} must divide into `num_heads` {num_heads} heads.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block (``norm1``, ``attn``, ``norm2``, ``mlp``), optional stochastic depth.

    Args:
        dim: width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: a bias on the fused ``qkv``.
        drop_path: stochastic-depth rate of this block.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PointTransformer(nn.Module):
    """The Point-MAE / Point-BERT encoder: grouper, mini-PointNet tokenizer (``encoder``; Point-BERT adds a
    Linear ``reduce_dim``), position MLP on the centres (``pos_embed``), ``cls_token`` and ``cls_pos``,
    ``blocks`` and a final ``norm``. The positions are added before every block.

    Args:
        embed_dim: width of the transformer.
        depth: blocks.
        num_heads: attention heads.
        num_groups: patches per cloud (tokens besides CLS).
        group_size: points per patch.
        encoder_dims: the tokenizer's output width (default ``embed_dim``); another width needs
            ``reduce_dim``.
        tokenizer_widths: the mini-PointNet's hidden widths.
        reduce_dim: Point-BERT's Linear from ``encoder_dims`` to ``embed_dim``.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        qkv_bias: a bias on the fused ``qkv`` (Point-MAE and Point-BERT have none).
        pos_hidden: hidden width of the position MLP (128 in both).
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks (their fine-tuning
            uses 0.1).

    ``last_centres`` holds the centres ``[B, G, 3]`` of the latest forward (adapters that regroup tokens
    by geometry read them); ``num_prefix_tokens`` is 1 (the CLS token); ``architecture`` holds the
    constructor arguments (``PointTransformer(**backbone.architecture)`` rebuilds it).
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_groups: int = 64,
        group_size: int = 32,
        encoder_dims: int | None = None,
        tokenizer_widths: Sequence[int] = (128, 256, 512),
        reduce_dim: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        pos_hidden: int = 128,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        embed_dim = _positive(embed_dim, "embed_dim")
        depth = _positive(depth, "depth")
        num_heads = _positive(num_heads, "num_heads")
        encoder_dims = embed_dim if encoder_dims is None else _positive(encoder_dims, "encoder_dims")
        if encoder_dims != embed_dim and not reduce_dim:
            raise ValueError(
                f"`encoder_dims` {encoder_dims} differs from `embed_dim` {embed_dim}: set reduce_dim=True (Point-BERT's "
                "Linear bridge) or make them equal (Point-MAE)."
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"`drop_path_rate` must be in [0, 1), got {drop_path_rate}.")
        self.architecture: dict[str, Any] = {
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "num_groups": num_groups,
            "group_size": group_size,
            "encoder_dims": encoder_dims,
            "tokenizer_widths": tuple(int(w) for w in tokenizer_widths),
            "reduce_dim": bool(reduce_dim),
            "mlp_ratio": float(mlp_ratio),
            "qkv_bias": bool(qkv_bias),
            "pos_hidden": int(pos_hidden),
            "drop_path_rate": float(drop_path_rate),
        }
        self.embed_dim = embed_dim
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = MiniPointNet(encoder_dims, tokenizer_widths)
        self.reduce_dim: nn.Module = nn.Linear(encoder_dims, embed_dim) if reduce_dim else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos_hidden = _positive(pos_hidden, "pos_hidden")
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rate) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.last_centres: torch.Tensor | None = None
        self.apply(_init_weights)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)

    @property
    def num_groups(self) -> int:
        return self.grouper.num_groups

    @property
    def group_size(self) -> int:
        return self.grouper.group_size

    def set_grouping(self, num_groups: int | None = None, group_size: int | None = None) -> None:
        """Change how clouds are cut into patches (no weight depends on it: the fine-tuning configs of
        Point-MAE use 128 groups on ScanObjectNN's 2048 points with weights pretrained at 64)."""
        self.grouper = PointGrouper(
            self.num_groups if num_groups is None else num_groups,
            self.group_size if group_size is None else group_size,
        )
        self.architecture.update(num_groups=self.num_groups, group_size=self.group_size)

    def check_points(self, xyz: torch.Tensor) -> None:
        """Raise an error naming the fix unless ``xyz`` is float clouds ``[B, N, 3]`` of finite coordinates
        with enough points for the grouper."""
        if not isinstance(xyz, torch.Tensor) or xyz.ndim != 3:
            shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
            raise ValueError(f"A point transformer takes clouds [B, N, 3] (xyz per point), got {shape}.")
        if xyz.shape[-1] != 3:
            if xyz.shape[1] == 3:
                hint = "they look channels-first [B, 3, N]: pass x.transpose(1, 2)"
            else:
                hint = (
                    f"{xyz.shape[-1]} channels per point (xyz with normals or colours?); the backbone reads xyz "
                    "only: pass x[..., :3], or drop the extra channels in the datamodule"
                )
            raise ValueError(f"A point transformer takes clouds [B, N, 3], got {tuple(xyz.shape)}: {hint}.")
        if not xyz.is_floating_point():
            raise TypeError(f"Point coordinates must be floats, got dtype {xyz.dtype}.")
        self.grouper.check_points(int(xyz.shape[1]))
        finite = torch.isfinite(xyz).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(
                f"Clouds at batch index {bad[:10]}{' …' if len(bad) > 10 else ''} hold NaN or infinite "
                "coordinates; drop or repair those samples in the data."
            )

    def forward_tokens(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, 1 + G, D] after the final norm, centres [B, G, 3])`` for clouds ``[B, N, 3]``."""
        tokens, _, centres = self._run(xyz, ())
        return tokens, centres

    def forward_intermediates(
        self, xyz: torch.Tensor, indices: Sequence[int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([tokens [B, 1 + G, D] of each block in indices, through the final norm], centres)`` — the
        blocks a segmentation head reads (Point-MAE's reads blocks 3, 7 and 11); negative indices count from
        the end. Stops after the last block asked for."""
        chosen = _feature_blocks(indices, len(self.blocks))
        _, levels, centres = self._run(xyz, chosen)
        return levels, centres

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + G, D]`` (see :meth:`forward_tokens`)."""
        return self.forward_tokens(xyz)[0]

    def _run(
        self, xyz: torch.Tensor, collect: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        self.check_points(xyz)
        neighbourhoods, centres = self.grouper(xyz)
        self.last_centres = centres
        tokens = self.reduce_dim(self.encoder(neighbourhoods))
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres)], dim=1)
        levels: list[torch.Tensor] = []
        last = max(collect) if collect else len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x = block(x + pos)
            if index in collect:
                levels.append(self.norm(x))
            if index == last and collect:
                return x, levels, centres
        return self.norm(x), levels, centres


def _init_weights(module: nn.Module) -> None:
    """Point-MAE's init: truncated normal (std 0.02) for Linear and Conv1d weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_point_transformer(size: str = "small", **overrides: Any) -> PointTransformer:
    """A random :class:`PointTransformer` of a named size (:data:`POINT_TRANSFORMER_SIZES`), any constructor
    argument overridden."""
    if size not in POINT_TRANSFORMER_SIZES:
        raise ValueError(f"`size` must be one of {sorted(POINT_TRANSFORMER_SIZES)}, got {size!r}.")
    options = {key: value for key, value in POINT_TRANSFORMER_SIZES[size].items() if key != "num_points"}
    options.update({key: value for key, value in overrides.items() if value is not None})
    return PointTransformer(**options)


def is_point_transformer(module: nn.Module) -> bool:
    """A point transformer: a mini-PointNet ``encoder`` (Conv1d point MLPs), a ``pos_embed`` MLP from 3-d
    centres, a final ``norm``, and ``blocks.N`` that all have norms, a fused ``attn.qkv``, ``attn.proj`` and
    ``mlp.fc1/fc2`` Linears."""
    if not has_modules(
        module,
        {
            "encoder.first_conv.0": nn.Conv1d,
            "encoder.second_conv.3": nn.Conv1d,
            "pos_embed.0": nn.Linear,
            "pos_embed.2": nn.Linear,
            "norm": nn.LayerNorm,
        },
    ):
        return False
    if module.get_submodule("pos_embed.0").in_features != 3:
        return False
    return every_block_has(
        module,
        "blocks",
        {
            "norm1": nn.LayerNorm,
            "attn.qkv": nn.Linear,
            "attn.proj": nn.Linear,
            "norm2": nn.LayerNorm,
            "mlp.fc1": nn.Linear,
            "mlp.fc2": nn.Linear,
        },
    )


# -- task models ------------------------------------------------------------------------------------------


class _PointModel(nn.Module):
    """What both task models share: the backbone, where its weights come from, the input checks, and frozen
    BatchNorm statistics in the backbone's tokenizer."""

    #: Parameters of the pretrained part (the trainable-% denominator of the core's parameter summary).
    pretrained_prefix = r"(?:^|\.)backbone\."

    def __init__(self, backbone: PointTransformer, source: str = "", freeze_batchnorm: bool = True) -> None:
        super().__init__()
        if not isinstance(backbone, PointTransformer):
            raise TypeError(
                f"The backbone must be a PointTransformer, got {type(backbone).__name__}; build one with "
                "build_point_transformer or the `pointcloud.point_transformer` builder."
            )
        self.backbone = backbone
        self.source = source or "PointTransformer"
        self.embed_dim = backbone.embed_dim
        self.freeze_batchnorm = freeze_batchnorm

    @property
    def backbone_source(self) -> str:
        """Where the backbone's weights come from (the core records it beside the backbone's fingerprint)."""
        return self.source

    def train(self, mode: bool = True) -> _PointModel:
        """Train mode; with ``freeze_batchnorm`` the tokenizer's BatchNorms keep their pretrained running
        statistics (a frozen backbone's would otherwise drift with the batches, unsaved by the adapter)."""
        super().train(mode)
        if self.freeze_batchnorm:
            keep_batchnorm_statistics(self.backbone)
        return self

    def check_points(self, x: torch.Tensor) -> None:
        """See :meth:`PointTransformer.check_points`."""
        self.backbone.check_points(x)


class PointClassifier(_PointModel):
    """A point transformer and Point-MAE's classification ``head`` (Linear-BN-ReLU-Dropout twice, then a
    Linear) on ``concat(CLS token, max over the patch tokens)``.

    Args:
        backbone: the point transformer.
        num_classes: output logits.
        head_dim: the head's hidden width (256 in Point-MAE).
        dropout: the head's dropout (0.5 in Point-MAE).
        source: where the backbone's weights come from (recorded in run reports).
        freeze_batchnorm: keep the backbone's BatchNorm statistics while training (off for full fine-tuning
            from scratch).
    """

    def __init__(
        self,
        backbone: PointTransformer,
        num_classes: int,
        head_dim: int = 256,
        dropout: float = 0.5,
        source: str = "",
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__(backbone, source, freeze_batchnorm)
        self.num_classes = _positive(num_classes, "num_classes")
        head_dim = _positive(head_dim, "head_dim")
        self.num_features = 2 * self.embed_dim
        self.head = nn.Sequential(
            nn.Linear(self.num_features, head_dim),
            nn.BatchNorm1d(head_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_dim, head_dim),
            nn.BatchNorm1d(head_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_dim, self.num_classes),
        )
        self.head.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``concat(CLS, max over patch tokens)`` ``[B, 2·D]`` for clouds ``[B, N, 3]``."""
        tokens, _ = self.backbone.forward_tokens(x)
        prefix = self.backbone.num_prefix_tokens
        return torch.cat([tokens[:, 0], tokens[:, prefix:].max(dim=1).values], dim=-1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from :meth:`forward_features`."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for clouds ``[B, N, 3]``."""
        return self.forward_head(self.forward_features(x))


class PointSegHead(nn.Module):
    """Point-MAE's part-segmentation head on per-point features packed by :meth:`PointSegmenter.forward_features`
    (``[B, N, 3 + L·D | 2·L·D | K]``: xyz and interpolated block features; the blocks' max and mean over the
    cloud; the object-category one-hot): a propagation MLP on the first part, the cloud-level part (and the
    category, through ``label_conv``) added to every point, then a point MLP to the classes.

    The first point-MLP layer ``convs1`` is one Conv1d over ``[propagated | global | category]`` as in
    Point-MAE, but its cloud-level part is applied once per cloud (then broadcast), not once per point.

    Args:
        embed_dim: the backbone's width ``D``.
        num_levels: blocks read ``L``.
        num_classes: output channels.
        num_categories: object categories ``K`` (ShapeNetPart: 16); 0 for none.
        widths: ``(propagation 1, propagation 2, point MLP 1, point MLP 2)``; Point-MAE's are
            ``(1536, 1024, 512, 256)``.
        category_dim: width of the category embedding (64 in Point-MAE).
        dropout: after the first point-MLP layer (0.5 in Point-MAE).
    """

    def __init__(
        self,
        embed_dim: int,
        num_levels: int,
        num_classes: int,
        num_categories: int = 0,
        widths: Sequence[int] = (1536, 1024, 512, 256),
        category_dim: int = 64,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        prop1, prop2, mlp1, mlp2 = _widths(widths, 4, "widths")
        levels = _positive(num_levels, "num_levels") * _positive(embed_dim, "embed_dim")
        if isinstance(num_categories, bool) or not isinstance(num_categories, int) or num_categories < 0:
            raise ValueError(f"`num_categories` must be an int >= 0, got {num_categories!r}.")
        self.num_categories = num_categories
        self.local_dim = 3 + levels
        self.global_dim = 2 * levels
        self.in_features = self.local_dim + self.global_dim + num_categories
        self.propagation = nn.Sequential(
            nn.Conv1d(self.local_dim, prop1, 1),
            nn.BatchNorm1d(prop1),
            nn.ReLU(),
            nn.Conv1d(prop1, prop2, 1),
            nn.BatchNorm1d(prop2),
            nn.ReLU(),
        )
        self.label_conv: nn.Module | None = None
        category_width = 0
        if num_categories:
            category_width = _positive(category_dim, "category_dim")
            self.label_conv = nn.Sequential(
                nn.Conv1d(num_categories, category_width, 1, bias=False),
                nn.BatchNorm1d(category_width),
                nn.LeakyReLU(0.2),
            )
        self.prop_dim = prop2
        self.convs1 = nn.Conv1d(prop2 + self.global_dim + category_width, mlp1, 1)
        self.bns1 = nn.BatchNorm1d(mlp1)
        self.dropout = nn.Dropout(dropout)
        self.convs2 = nn.Conv1d(mlp1, mlp2, 1)
        self.bns2 = nn.BatchNorm1d(mlp2)
        self.convs3 = nn.Conv1d(mlp2, _positive(num_classes, "num_classes"), 1)
        self.apply(_init_weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, N]`` from packed per-point features ``[B, N, in_features]``."""
        if features.ndim != 3 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"The segmentation head takes PointSegmenter.forward_features' [B, N, {self.in_features}], got "
                f"{tuple(features.shape)}."
            )
        batch, count, _ = features.shape
        local = features[..., : self.local_dim].reshape(batch * count, self.local_dim)
        cloud = features[:, 0, self.local_dim : self.local_dim + self.global_dim]  # the same at every point
        propagated = point_mlp(self.propagation, local)  # [B·N, prop2]
        weight = self.convs1.weight[..., 0]  # [mlp1, prop2 + global + category]
        parts = [cloud]
        if self.label_conv is not None:
            category = features[:, 0, self.local_dim + self.global_dim :]
            parts.append(point_mlp(self.label_conv, category))
        per_cloud = F.linear(torch.cat(parts, dim=-1), weight[:, self.prop_dim :])  # [B, mlp1]
        x = F.linear(propagated, weight[:, : self.prop_dim], self.convs1.bias).reshape(batch, count, -1)
        x = (x + per_cloud[:, None]).reshape(batch * count, -1)
        x = self.dropout(F.relu(self.bns1(x)))
        x = point_mlp(nn.Sequential(self.convs2, self.bns2, nn.ReLU(), self.convs3), x)
        return x.reshape(batch, count, -1).transpose(1, 2)


class PointSegmenter(_PointModel):
    """A point transformer and a per-point ``seg_head`` (:class:`PointSegHead`): logits ``[B, C, N]``.

    The normed patch tokens (CLS left out) of ``feature_blocks`` are concatenated per patch, pooled over the
    cloud (max and mean) and interpolated from the patch centres to every point (3 nearest centres,
    inverse squared distance); with ``num_categories`` the object category (a batch key ``category``:
    ``[B]`` indices or ``[B, K]`` one-hot) is a further input, as ShapeNetPart's part segmentation uses.

    Args:
        backbone: the point transformer.
        num_classes: output channels (part labels).
        feature_blocks: block indices the head reads (negative counts from the end); default
            :func:`default_feature_blocks` (Point-MAE's 3, 7, 11 of 12).
        num_categories: object categories given with each cloud (ShapeNetPart: 16); None for none.
        widths: the head's widths (see :class:`PointSegHead`).
        category_dim: the category embedding's width.
        dropout: the head's dropout.
        source: where the backbone's weights come from (recorded in run reports).
        freeze_batchnorm: keep the backbone's BatchNorm statistics while training.

    ``forward_features`` packs the head's inputs per point ``[B, N, F]`` (the core pools them over points
    for a group objective); ``forward_head`` runs ``seg_head`` on them.
    """

    def __init__(
        self,
        backbone: PointTransformer,
        num_classes: int,
        feature_blocks: Sequence[int] | None = None,
        num_categories: int | None = None,
        widths: Sequence[int] = (1536, 1024, 512, 256),
        category_dim: int = 64,
        dropout: float = 0.5,
        source: str = "",
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__(backbone, source, freeze_batchnorm)
        depth = len(backbone.blocks)
        self.feature_blocks = _feature_blocks(
            default_feature_blocks(depth) if feature_blocks is None else feature_blocks, depth
        )
        self.num_classes = _positive(num_classes, "num_classes")
        self.num_categories = 0 if num_categories is None else _positive(num_categories, "num_categories")
        #: Batch keys the segmentation task passes to forward as keyword arguments.
        self.batch_inputs: tuple[str, ...] = ("category",) if self.num_categories else ()
        self.seg_head = PointSegHead(
            self.embed_dim,
            len(self.feature_blocks),
            self.num_classes,
            self.num_categories,
            widths,
            category_dim,
            dropout,
        )
        self.num_features = self.seg_head.in_features

    def forward_features(self, x: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """The head's packed per-point inputs ``[B, N, 3 + 3·L·D + K]`` for clouds ``[B, N, 3]``."""
        one_hot = self._category(category, x)
        levels, centres = self.backbone.forward_intermediates(x, self.feature_blocks)
        prefix = self.backbone.num_prefix_tokens
        tokens = torch.cat([level[:, prefix:] for level in levels], dim=-1)  # [B, G, L·D]
        interpolated = inverse_distance_interpolate(x, centres, tokens)  # [B, N, L·D]
        cloud = torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1)  # [B, 2·L·D]
        count = x.shape[1]
        parts = [x.to(tokens.dtype), interpolated, cloud[:, None].expand(-1, count, -1)]
        if one_hot is not None:
            parts.append(one_hot.to(tokens.dtype)[:, None].expand(-1, count, -1))
        return torch.cat(parts, dim=-1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, N]`` from :meth:`forward_features`."""
        return self.seg_head(features)

    def forward(self, x: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes, N]`` for clouds ``[B, N, 3]`` (and their ``category`` if built with
        ``num_categories``)."""
        return self.forward_head(self.forward_features(x, category))

    def _category(self, category: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """The category one-hot ``[B, K]`` (checked), or None for a head without categories."""
        count = self.num_categories
        if not count:
            if category is not None:
                raise ValueError(
                    "A `category` was given, but this segmenter was built without `num_categories`: build it with "
                    "num_categories (ShapeNetPart: 16) to use the object category, or drop the batch key."
                )
            return None
        if category is None:
            raise ValueError(
                f"This segmenter was built with num_categories={count} and needs each cloud's object category: "
                "pass `category` ([B] indices or [B, K] one-hot; datamodules give it as the batch key 'category')."
            )
        batch = x.shape[0]
        if category.ndim == 2 and category.shape == (batch, count):
            if not bool(((category == 0) | (category == 1)).all()) or not bool((category.sum(-1) == 1).all()):
                raise ValueError("A [B, K] `category` must be one-hot (a single 1 per row).")
            return category.to(x.device, torch.float32)
        if category.ndim != 1 or category.shape[0] != batch or category.is_floating_point():
            raise ValueError(
                f"`category` must be [B] integer indices or a [B, {count}] one-hot for the B={batch} clouds, got "
                f"shape {tuple(category.shape)} and dtype {category.dtype}."
            )
        bad = ((category < 0) | (category >= count)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"`category` at batch index {bad[:10]} is {category[bad[:10]].tolist()}, outside the {count} "
                f"categories 0..{count - 1}."
            )
        return F.one_hot(category.long().to(x.device), count).float()


def default_feature_blocks(depth: int) -> list[int]:
    """Up to 3 blocks spread over ``depth``, ending at the last: 12 -> [3, 7, 11] (Point-MAE's), 6 -> [1, 3, 5]."""
    depth = _positive(depth, "depth")
    count = min(3, depth)
    return [depth * (level + 1) // count - 1 for level in range(count)]


def _feature_blocks(blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise ValueError(f"`feature_blocks` must be a non-empty list of block indices, got {blocks!r}.")
    resolved = []
    for block in blocks:
        try:
            index = operator.index(block)
        except TypeError:
            raise ValueError(f"`feature_blocks` must hold ints, got {block!r} in {list(blocks)}.") from None
        if not -depth <= index < depth:
            raise ValueError(
                f"`feature_blocks` {list(blocks)}: block {index} does not exist in a backbone of {depth} blocks "
                f"(valid: 0..{depth - 1}, or negative from the end)."
            )
        resolved.append(index % depth)
    if len(set(resolved)) != len(resolved) or resolved != sorted(resolved):
        raise ValueError(f"`feature_blocks` must be distinct and shallow to deep, got {list(blocks)}.")
    return tuple(resolved)


# -- official checkpoints -------------------------------------------------------------------------------


def read_point_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a ``.safetensors`` file, or a PyTorch pickle read with
    ``weights_only=True`` whose weights sit under ``base_model`` (Point-MAE, Point-BERT), ``model``,
    ``model_state_dict`` (Point-MAE's segmentation) or ``state_dict``, or at the top; a ``module.`` prefix
    (DistributedDataParallel) is removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; `checkpoint` must be a local file.")
    try:
        if path.suffix == ".safetensors":
            content: Any = load_safetensors(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling, safetensors and zip errors alike: say which file
        raise ValueError(
            f"Could not read {path} as a checkpoint ({type(error).__name__}: {error}). Give a .safetensors file "
            "or a .pth holding tensors and plain values only (as Point-MAE's and Point-BERT's releases do)."
        ) from error
    state = _unwrap_state(content, path)
    return {key.removeprefix("module."): value for key, value in state.items()}


def _unwrap_state(content: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(content, Mapping):
        raise ValueError(f"Checkpoint {path} holds a {type(content).__name__}, not a dict of tensors.")
    if content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return dict(content)
    for key in ("base_model", "model", "model_state_dict", "state_dict"):
        inner = content.get(key)
        if isinstance(inner, Mapping) and inner:
            wrong = sorted(name for name, value in inner.items() if not isinstance(value, torch.Tensor))
            if wrong:
                raise ValueError(f"Checkpoint {path}: entries {wrong[:5]} of '{key}' are not tensors.")
            return dict(inner)
    raise ValueError(
        f"Checkpoint {path} holds no weights where Point-MAE / Point-BERT keep them ('base_model', 'model', "
        f"'model_state_dict', 'state_dict', or tensors at the top); its top-level keys are {sorted(content)[:10]}."
    )


def _detect_layout(keys: Sequence[str], path: Path | str) -> str:
    if any(key.startswith("transformer_q.") for key in keys):
        return "point_bert_pretrain"
    if any(key.startswith("MAE_encoder.") for key in keys):
        return "point_mae_pretrain"
    stripped = [key.removeprefix("base_model.") for key in keys]
    if any(_OFFICIAL_BLOCK.match(key) for key in stripped):
        if any(key.startswith("propagation_0.") for key in stripped):
            return "point_mae_partseg"
        return "point_mae_finetuned"
    own = [key.removeprefix("backbone.") for key in keys]
    if any(_OWN_BLOCK.match(key) for key in own) and any(key.startswith("encoder.first_conv") for key in own):
        return "verticals"
    raise ValueError(
        f"Checkpoint {path} is in none of the layouts {list(CHECKPOINT_LAYOUTS)}: no 'MAE_encoder.*' (Point-MAE "
        f"pre-training), 'transformer_q.*' (Point-BERT), 'blocks.blocks.N.*' (a fine-tuned Point-MAE / Point-BERT) "
        f"or 'blocks.N.*' keys. Its first keys: {sorted(keys)[:8]}."
    )


def _map_key(key: str, layout: str) -> tuple[str | None, str]:
    """``(backbone key or None, unused reason)`` for a file key of ``layout`` (``module.`` already removed)."""
    if layout == "point_bert_pretrain":
        if key.startswith("transformer_k."):
            return None, "momentum_encoder"
        if key.startswith("dvae."):
            return None, "dvae"
        if not key.startswith("transformer_q."):
            return None, "pretraining" if key in ("queue", "queue_ptr") else "other"
        inner = key.removeprefix("transformer_q.")
        if inner == "mask_token" or inner.startswith(("lm_head.", "cls_head.")):
            return None, "pretraining"
        return _own_name(inner)
    if layout == "point_mae_pretrain":
        if key.startswith("MAE_encoder."):
            return _own_name(key.removeprefix("MAE_encoder."))
        if key.startswith(("MAE_decoder.", "decoder_pos_embed.", "increase_dim.")):
            return None, "decoder"
        return None, "pretraining" if key == "mask_token" else "other"
    if layout in ("point_mae_finetuned", "point_mae_partseg"):
        inner = key.removeprefix("base_model.")
        if inner.startswith(("cls_head_finetune.", "label_conv.", "propagation_0.", "convs", "bns")):
            return None, "head"
        return _own_name(inner)
    if key.startswith(("head.", "seg_head.")):  # verticals: a task model's head
        return None, "head"
    inner = key.removeprefix("backbone.")
    if _BACKBONE_KEY.match(inner) and not _OFFICIAL_BLOCK.match(inner):
        return inner, ""
    return None, "other"


def _own_name(key: str) -> tuple[str | None, str]:
    match = _OFFICIAL_BLOCK.fullmatch(key)
    if match:
        return f"blocks.{match.group(1)}.{match.group(2)}", ""
    if _BACKBONE_KEY.match(key):
        return key, ""
    return None, "other"


#: Seed of the CLS token and its position when a checkpoint has none (Point-MAE's pre-training files).
CLS_INIT_SEED = 0


def load_point_checkpoint(model: PointTransformer, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load an official Point-MAE or Point-BERT checkpoint (or this module's own layout) into ``model``.

    Backbone tensors are renamed onto the model (``MAE_encoder.`` / ``transformer_q.`` / ``base_model.``
    prefixes removed, ``blocks.blocks.N`` -> ``blocks.N``) and their shapes checked; every other tensor of
    the file is listed by why it is not used: ``decoder`` (Point-MAE's MAE decoder), ``momentum_encoder``
    (Point-BERT's ``transformer_k``), ``dvae`` (Point-BERT's tokenizer), ``pretraining`` (mask tokens, the
    MoCo queue, Point-BERT's token and contrastive heads), ``head`` (a fine-tuned file's task head) or
    ``other`` (anything unknown: an error unless ``strict=False``). Point-MAE's pre-training has no CLS
    token: ``cls_token`` and ``cls_pos`` are then initialised as in Point-MAE's own fine-tuning (truncated
    std 0.02) but from a fixed generator (:data:`CLS_INIT_SEED`), not the global seed, so that a model
    rebuilt from the same file has the same frozen tokens and an adapter saved on it reloads exactly.

    Returns ``{"path", "layout", "loaded": [model keys], "kept_initial": [model keys], "unused":
    {reason: [file keys]}}``.
    """
    if not isinstance(model, PointTransformer):
        raise TypeError(f"`model` must be a PointTransformer, got {type(model).__name__}.")
    path = Path(path).expanduser()
    state = read_point_checkpoint(path)
    layout = _detect_layout(list(state), path)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unused: dict[str, list[str]] = {}
    for key, tensor in state.items():
        name, reason = _map_key(key, layout)
        if name is not None and name not in own and not _other_architecture(name, model):
            name, reason = None, "other"  # e.g. a prompt or adapter tensor inside a block
        if name is None:
            unused.setdefault(reason, []).append(key)
        else:
            mapped[name] = tensor
    if unused.get("other") and strict:
        other = unused["other"]
        raise ValueError(
            f"Checkpoint {path} ({layout}) holds tensors that are neither backbone weights nor known "
            f"decoder / pre-training / head tensors: {other[:8]}{' …' if len(other) > 8 else ''}. Is it an "
            "adapted model (Point-PEFT, IDPT, DAPT)? Load it with strict=False to take the backbone and list "
            "these under unused['other']."
        )
    _check_architecture(model, mapped, path, layout)
    allowed_missing = (
        {"cls_token", "cls_pos"} if layout in ("point_mae_pretrain", "point_mae_partseg") else set()
    )
    missing = sorted(key for key in own if key not in mapped and not key.endswith("num_batches_tracked"))
    wrong = [key for key in missing if key not in allowed_missing]
    if wrong:
        raise ValueError(
            f"Checkpoint {path} ({layout}) lacks backbone tensors {wrong[:8]}{' …' if len(wrong) > 8 else ''}; "
            "is it a complete Point-MAE / Point-BERT file?"
        )
    model.load_state_dict(mapped, strict=False)
    kept = sorted(key for key in own if key not in mapped)
    generator = torch.Generator().manual_seed(CLS_INIT_SEED)
    with torch.no_grad():
        for key in ("cls_token", "cls_pos"):
            if key in kept:
                # trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. never at this std: a plain normal
                getattr(model, key).copy_(
                    torch.empty(getattr(model, key).shape).normal_(generator=generator) * 0.02
                )
    return {
        "path": str(path),
        "layout": layout,
        "loaded": sorted(mapped),
        "kept_initial": kept,
        "unused": {reason: sorted(keys) for reason, keys in sorted(unused.items())},
    }


def _other_architecture(name: str, model: PointTransformer) -> bool:
    """Whether a backbone tensor the model lacks means another architecture (more blocks, Point-BERT's
    ``reduce_dim``) rather than an extra tensor (an adapter's)."""
    block = _OWN_BLOCK.fullmatch(name)
    if block:
        return int(block.group(1)) >= len(model.blocks)
    return name.startswith("reduce_dim.") or _BACKBONE_KEY.match(name) is not None


def _check_architecture(
    model: PointTransformer, mapped: Mapping[str, torch.Tensor], path: Path, layout: str
) -> None:
    own = model.state_dict()
    file_arch = _architecture(mapped)
    model_arch = model.architecture
    summary = (
        f"the file holds a {file_arch['depth']}-block, {file_arch['embed_dim']}-wide transformer"
        f"{' with reduce_dim' if file_arch['reduce_dim'] else ''}; the model is {model_arch['depth']}-block, "
        f"{model_arch['embed_dim']}-wide{' with reduce_dim' if model_arch['reduce_dim'] else ''}"
    )
    extra = sorted(key for key in mapped if key not in own)
    mismatched = [
        f"{key}: file {tuple(mapped[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(mapped)
        if key in own and tuple(mapped[key].shape) != tuple(own[key].shape)
    ]
    if extra or mismatched:
        details = (extra[:4] and [f"not in the model: {extra[:4]}"]) or []
        details += mismatched[:4]
        raise ValueError(
            f"Checkpoint {path} ({layout}) does not fit this backbone: {summary}. {'; '.join(details)}. Build the "
            "model from the file (the builder's `checkpoint`, or point_checkpoint_architecture) or pick the "
            "matching `size` (Point-MAE and Point-BERT are size 'base')."
        )


def _architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A backbone's constructor arguments read from its tensors (in this module's names)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"The checkpoint has no '{key}' tensor, which every point transformer has.")
        return tuple(state[key].shape)

    blocks = {int(m.group(1)) for m in map(_OWN_BLOCK.match, state) if m}
    embed_dim = shape("norm.weight")[0]
    hidden = shape("blocks.0.mlp.fc1.weight")[0] if blocks else 4 * embed_dim
    first = shape("encoder.first_conv.0.weight")[0]
    pooled = shape("encoder.first_conv.3.weight")[0]
    second = shape("encoder.second_conv.0.weight")[0]
    return {
        "embed_dim": embed_dim,
        "depth": max(blocks) + 1 if blocks else 0,
        "encoder_dims": shape("encoder.second_conv.3.weight")[0],
        "tokenizer_widths": (first, pooled, second),
        "reduce_dim": "reduce_dim.weight" in state,
        "mlp_ratio": hidden / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "pos_hidden": shape("pos_embed.0.weight")[0],
    }


def point_checkpoint_architecture(path: str | Path) -> dict[str, Any]:
    """The backbone a checkpoint holds, as :class:`PointTransformer` arguments (all but ``num_heads``, which
    no tensor records, and the grouping) plus its ``layout``."""
    path = Path(path).expanduser()
    state = read_point_checkpoint(path)
    layout = _detect_layout(list(state), path)
    mapped = {}
    for key, tensor in state.items():
        name, _ = _map_key(key, layout)
        if name is not None:
            mapped[name] = tensor
    return {"layout": layout, **_architecture(mapped)}


# -- tiny files in the official layouts (tests, examples) --------------------------------------------------


def _random_state(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values for every tensor of ``model`` (so a wrong mapping shows), valid BatchNorm statistics."""
    state = {}
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            state[key] = torch.full_like(tensor, 7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(tensor.shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(tensor.shape, generator=generator) * 0.1
    return state


def _official_names(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        match = _OWN_BLOCK.fullmatch(key)
        name = f"blocks.blocks.{match.group(1)}.{match.group(2)}" if match else key
        out[prefix + name] = tensor
    return out


def _tiny_backbone(
    embed_dim: int, depth: int, encoder_dims: int | None, tokenizer_widths: Sequence[int], reduce_dim: bool
) -> PointTransformer:
    heads = next(h for h in (2, 1) if embed_dim % h == 0)
    return PointTransformer(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        num_groups=4,
        group_size=4,
        encoder_dims=encoder_dims,
        tokenizer_widths=tokenizer_widths,
        reduce_dim=reduce_dim,
    )


def _batchnorm_state(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(width, generator=generator),
        f"{prefix}.bias": torch.randn(width, generator=generator),
        f"{prefix}.running_mean": torch.randn(width, generator=generator),
        f"{prefix}.running_var": torch.rand(width, generator=generator) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _linear_state(prefix: str, out: int, inp: int, generator: torch.Generator, conv: bool = False):
    weight = torch.randn(out, inp, *((1,) if conv else ()), generator=generator) * 0.1
    return {f"{prefix}.weight": weight, f"{prefix}.bias": torch.randn(out, generator=generator) * 0.1}


def _save_official(path: str | Path, state: dict[str, torch.Tensor], ddp: bool, wrapper: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ddp:
        state = {f"module.{key}": value for key, value in state.items()}
    if wrapper == "model_state_dict":  # Point-MAE's segmentation/main.py
        content: dict[str, Any] = {
            "epoch": 1,
            "train_acc": 0.5,
            "test_acc": 0.5,
            "class_avg_iou": 0.5,
            "inctance_avg_iou": 0.5,
            "model_state_dict": state,
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
        }
    else:  # tools/builder.py's save_checkpoint
        content = {
            "base_model": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": [0]}]},
            "epoch": 1,
            "metrics": {"acc": 50.0},
            "best_metrics": {"acc": 50.0},
        }
    torch.save(content, path)
    return path


def write_tiny_point_mae_checkpoint(
    path: str | Path,
    kind: Literal["pretrain", "finetuned", "partseg"] = "pretrain",
    *,
    embed_dim: int = 32,
    depth: int = 2,
    tokenizer_widths: Sequence[int] = (16, 32, 64),
    group_size: int = 8,
    num_classes: int = 4,
    decoder_depth: int = 1,
    ddp: bool = False,
    seed: int = 0,
) -> Path:
    """A small random file in one of Point-MAE's released layouts (for tests and examples).

    ``pretrain``: ``pretrain.pth`` — ``{"base_model": {MAE_encoder.*, mask_token, decoder_pos_embed.*,
    MAE_decoder.*, increase_dim.*}, "optimizer", "epoch", …}``; ``finetuned``: a fine-tuned classifier
    (``scan_hardest.pth``, ``modelnet_1k.pth``) — the encoder at the top level with ``cls_token``,
    ``cls_pos`` and ``cls_head_finetune.*``; ``partseg``: ``part_seg.pth`` — ``{"model_state_dict": …}``
    without CLS, with the segmentation head. ``ddp`` prefixes every key with ``module.``.
    """
    generator = torch.Generator().manual_seed(seed)
    backbone = _tiny_backbone(embed_dim, depth, None, tokenizer_widths, reduce_dim=False)
    own = _random_state(backbone, generator)
    if kind == "pretrain":
        encoder = {k: v for k, v in own.items() if k not in ("cls_token", "cls_pos")}
        state = _official_names(encoder, "MAE_encoder.")
        state["mask_token"] = torch.randn(1, 1, embed_dim, generator=generator)
        state.update(_linear_state("decoder_pos_embed.0", 128, 3, generator))
        state.update(_linear_state("decoder_pos_embed.2", embed_dim, 128, generator))
        block_state = {k: v for k, v in own.items() if k.startswith("blocks.0.")}
        for index in range(decoder_depth):
            for key, value in block_state.items():
                name = key.replace("blocks.0.", f"MAE_decoder.blocks.blocks.{index}.", 1)
                state[name] = torch.randn(value.shape, generator=generator)
        state["MAE_decoder.norm.weight"] = torch.ones(embed_dim)
        state["MAE_decoder.norm.bias"] = torch.zeros(embed_dim)
        state.update(_linear_state("increase_dim.0", 3 * group_size, embed_dim, generator, conv=True))
        return _save_official(path, state, ddp, "base_model")
    if kind == "finetuned":
        state = _official_names(own)
        state.update(_linear_state("cls_head_finetune.0", 256, 2 * embed_dim, generator))
        state.update(_batchnorm_state("cls_head_finetune.1", 256, generator))
        state.update(_linear_state("cls_head_finetune.4", 256, 256, generator))
        state.update(_batchnorm_state("cls_head_finetune.5", 256, generator))
        state.update(_linear_state("cls_head_finetune.8", num_classes, 256, generator))
        return _save_official(path, state, ddp, "base_model")
    if kind == "partseg":
        state = _official_names({k: v for k, v in own.items() if k not in ("cls_token", "cls_pos")})
        state["label_conv.0.weight"] = torch.randn(64, 16, 1, generator=generator)
        state.update(_batchnorm_state("label_conv.1", 64, generator))
        levels = 3 * embed_dim
        state.update(
            _linear_state("propagation_0.mlp_convs.0", 4 * embed_dim, levels + 3, generator, conv=True)
        )
        state.update(_batchnorm_state("propagation_0.mlp_bns.0", 4 * embed_dim, generator))
        state.update(_linear_state("propagation_0.mlp_convs.1", 1024, 4 * embed_dim, generator, conv=True))
        state.update(_batchnorm_state("propagation_0.mlp_bns.1", 1024, generator))
        state.update(_linear_state("convs1", 512, 1024 + 2 * levels + 64, generator, conv=True))
        state.update(_linear_state("convs2", 256, 512, generator, conv=True))
        state.update(_linear_state("convs3", num_classes, 256, generator, conv=True))
        state.update(_batchnorm_state("bns1", 512, generator))
        state.update(_batchnorm_state("bns2", 256, generator))
        return _save_official(path, state, ddp, "model_state_dict")
    raise ValueError(f"`kind` must be 'pretrain', 'finetuned' or 'partseg', got {kind!r}.")


def write_tiny_point_bert_checkpoint(
    path: str | Path,
    kind: Literal["pretrain", "finetuned"] = "pretrain",
    *,
    embed_dim: int = 32,
    depth: int = 2,
    encoder_dims: int = 24,
    tokenizer_widths: Sequence[int] = (16, 32, 64),
    num_classes: int = 4,
    num_tokens: int = 16,
    cls_dim: int = 16,
    ddp: bool = True,
    seed: int = 0,
) -> Path:
    """A small random file in one of Point-BERT's released layouts (for tests and examples).

    ``pretrain``: ``Point-BERT.pth`` — ``{"base_model": {module.transformer_q.*, module.transformer_k.*
    (the momentum encoder), module.dvae.* (a few of the dVAE's tensors), module.queue, module.queue_ptr},
    …}``, the query encoder with ``reduce_dim``, ``mask_token``, ``lm_head`` and ``cls_head``;
    ``finetuned``: a fine-tuned ``PointTransformer`` (encoder at the top, ``cls_head_finetune.*``).
    ``ddp`` (default, as Point-BERT trains distributed) prefixes every key with ``module.``.
    """
    generator = torch.Generator().manual_seed(seed)
    backbone = _tiny_backbone(embed_dim, depth, encoder_dims, tokenizer_widths, reduce_dim=True)
    if kind == "finetuned":
        state = _official_names(_random_state(backbone, generator))
        state.update(_linear_state("cls_head_finetune.0", 256, 2 * embed_dim, generator))
        state.update(_linear_state("cls_head_finetune.3", num_classes, 256, generator))
        return _save_official(path, state, ddp, "base_model")
    if kind != "pretrain":
        raise ValueError(f"`kind` must be 'pretrain' or 'finetuned', got {kind!r}.")
    state = {}
    for encoder in ("transformer_q", "transformer_k"):
        part = _official_names(_random_state(backbone, generator), f"{encoder}.")
        part[f"{encoder}.mask_token"] = torch.randn(1, 1, embed_dim, generator=generator)
        part.update(_linear_state(f"{encoder}.lm_head", num_tokens, embed_dim, generator))
        part.update(_linear_state(f"{encoder}.cls_head.0", cls_dim, embed_dim, generator))
        part.update(_linear_state(f"{encoder}.cls_head.2", cls_dim, cls_dim, generator))
        state.update(part)
    tokenizer = MiniPointNet(encoder_dims, tokenizer_widths)
    state.update({f"dvae.encoder.{k}": v for k, v in _random_state(tokenizer, generator).items()})
    state.update(_linear_state("dvae.dgcnn_1.input_trans", 128, encoder_dims, generator, conv=True))
    state["dvae.dgcnn_1.layer1.0.weight"] = torch.randn(256, 256, 1, 1, generator=generator)
    state["dvae.dgcnn_1.layer1.1.weight"] = torch.ones(256)
    state["dvae.dgcnn_1.layer1.1.bias"] = torch.zeros(256)
    state["dvae.codebook"] = torch.randn(num_tokens, 16, generator=generator)
    state.update(_linear_state("dvae.decoder.mlp.0", 64, 16, generator))
    state["queue"] = torch.randn(cls_dim, 32, generator=generator)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return _save_official(path, state, ddp, "base_model")


# -- the registered builder -----------------------------------------------------------------------------


def point_transformer(
    input_shape: Sequence[int],
    num_outputs: int,
    task: str = "classification",
    size: str | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool = True,
    num_groups: int | None = None,
    group_size: int | None = None,
    feature_blocks: Sequence[int] | None = None,
    num_categories: int | None = None,
    num_heads: int | None = None,
    drop_path_rate: float = 0.0,
    freeze_batchnorm: bool = True,
) -> PointClassifier | PointSegmenter:
    """``pointcloud.point_transformer``: a point transformer with Point-MAE's classification head
    (``task: classification``) or part-segmentation head (``task: segmentation``).

    The backbone: ``checkpoint`` (an official Point-MAE / Point-BERT file, or a state dict in this module's
    names; its architecture is read from the file, ``size`` only supplies the heads); else with
    ``pretrained: true`` the project's stand-in pretrained on generated shapes (size ``small``); else a
    random init of ``size`` (default ``small``; ``tiny`` for tests, ``base`` = Point-MAE). ``num_groups`` /
    ``group_size`` change the grouping (default: the size's). ``input_shape`` is ``(N points, 3)``.
    ``freeze_batchnorm``: keep the tokenizer's BatchNorm statistics while training (set false for full
    fine-tuning).

    In a config, the arguments below except ``input_shape`` and ``num_outputs`` go under the task's
    ``model_args``.

    Args:
        input_shape: ``(points, 3)`` of a cloud (xyz only); set by the task from the datamodule.
        num_outputs: classes (classification) or part labels (segmentation); set by the task.
        task: ``classification`` or ``segmentation`` (per-point part labels).
        size: ``tiny`` (tests), ``small`` (the stand-in's, the default) or ``base`` (Point-MAE's 12 blocks);
            with ``checkpoint`` it is read from the file.
        checkpoint: an official Point-MAE / Point-BERT file (pretrained or fine-tuned) or a state dict in
            this module's names, to adapt the real pretrained encoder.
        pretrained: with no ``checkpoint``, use the project's stand-in pretrained on generated shapes (size
            ``small``); False builds a random init (the from-scratch baseline).
        num_groups: patches (tokens) per cloud, centres chosen by farthest-point sampling; default: the
            size's (small 32, base 64). More covers finer detail at a higher cost.
        group_size: points per patch (nearest neighbours of its centre); default: the size's.
        feature_blocks: segmentation only: the blocks the head reads (negative counts from the end);
            default Point-MAE's choice (3, 7, 11 of 12, spread the same way for smaller sizes).
        num_categories: segmentation only: object categories given with each cloud (ShapeNetPart: 16), an
            input of the head; None for none.
        num_heads: attention heads of a random or checkpoint backbone; default: the size's.
        drop_path_rate: the largest stochastic-depth rate, reached at the last block (0 turns it off; the
            Point-MAE configs here use 0.1): a regulariser when blocks train.
        freeze_batchnorm: keep the tokenizer's BatchNorm statistics while training (set false for full
            fine-tuning).
    """
    points = _check_input_shape(input_shape)
    if task not in TASKS:
        raise ValueError(f"`pointcloud.point_transformer` does `task` {list(TASKS)}, got {task!r}.")
    if task == "classification" and (feature_blocks is not None or num_categories is not None):
        raise ValueError(
            "`feature_blocks` and `num_categories` are for the segmentation head; the classifier reads the CLS "
            "token and the max over tokens. Drop them, or set task: segmentation."
        )
    if size is not None and size not in POINT_TRANSFORMER_SIZES:
        raise ValueError(f"`size` must be one of {sorted(POINT_TRANSFORMER_SIZES)}, got {size!r}.")
    backbone, source, size = _build_backbone(size, checkpoint, pretrained, num_heads, drop_path_rate)
    if num_groups is not None or group_size is not None:
        backbone.set_grouping(num_groups, group_size)
    backbone.grouper.check_points(points)
    heads = HEAD_SIZES[size]
    if task == "classification":
        return PointClassifier(
            backbone, num_outputs, heads["head_dim"], source=source, freeze_batchnorm=freeze_batchnorm
        )
    return PointSegmenter(
        backbone,
        num_outputs,
        feature_blocks,
        num_categories,
        heads["seg_widths"],
        heads["category_dim"],
        source=source,
        freeze_batchnorm=freeze_batchnorm,
    )


def _check_input_shape(input_shape: Sequence[int]) -> int:
    try:
        points, channels = (operator.index(value) for value in input_shape)
    except (TypeError, ValueError):
        points = channels = 0
    if points < 1 or channels < 1:
        raise ValueError(
            f"`pointcloud.point_transformer` takes clouds: `input_shape` (points, 3), got {input_shape!r}."
        )
    if channels != 3:
        raise ValueError(
            f"`pointcloud.point_transformer` reads xyz only, but the data have {channels} channels per point "
            f"(input_shape {tuple(input_shape)}; normals or colours?). Give the datamodule xyz only (3 channels)."
        )
    return points


def _build_backbone(
    size: str | None,
    checkpoint: str | Path | None,
    pretrained: bool,
    num_heads: int | None,
    drop_path_rate: float,
) -> tuple[PointTransformer, str, str]:
    """The backbone a config names, where its weights come from, and its size name (for the heads)."""
    if checkpoint is not None:
        if not pretrained:
            raise ValueError(
                f"`checkpoint` {checkpoint} is given but `pretrained` is false: drop the checkpoint for a random "
                "init, or set pretrained: true to load it."
            )
        path = Path(checkpoint).expanduser()
        arch = point_checkpoint_architecture(path)
        layout = arch.pop("layout")
        size = _size_for_width(arch["embed_dim"], size, path)
        heads = num_heads or POINT_TRANSFORMER_SIZES[size]["num_heads"]
        grouping = POINT_TRANSFORMER_SIZES[size]
        backbone = PointTransformer(
            **arch,
            num_heads=heads,
            num_groups=grouping["num_groups"],
            group_size=grouping["group_size"],
            drop_path_rate=drop_path_rate,
        )
        load_point_checkpoint(backbone, path)
        return backbone, f"{path.resolve()} ({layout})", size
    size = size or "small"
    if not pretrained:
        backbone = build_point_transformer(size, num_heads=num_heads, drop_path_rate=drop_path_rate)
        return backbone, f"point_transformer_{size}(random)", size
    if size != "small":
        raise ValueError(
            f"There are no offline pretrained weights of size {size!r}: the project's stand-in is size 'small'. Give "
            "`checkpoint` (e.g. Point-MAE's pretrain.pth) for size 'base', or set `pretrained: false` for a "
            "random init."
        )
    # Trains the stand-in once, or reads it from the cache.
    from verticals.domains.pointcloud.pretrained import pretrained_point_transformer

    backbone = pretrained_point_transformer(size=size)
    if num_heads is not None and num_heads != backbone.architecture["num_heads"]:
        raise ValueError(
            f"`num_heads` {num_heads} differs from the pretrained stand-in's {backbone.architecture['num_heads']}; drop it."
        )
    if drop_path_rate:
        rates = torch.linspace(0, drop_path_rate, len(backbone.blocks)).tolist()
        for block, rate in zip(backbone.blocks, rates):
            block.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        backbone.architecture["drop_path_rate"] = float(drop_path_rate)
    source = str(
        getattr(backbone, "pretrained_source", "point_transformer_small(pretrained on generated shapes)")
    )
    return backbone, source, size


def _size_for_width(width: int, size: str | None, path: Path) -> str:
    if size is not None:
        if POINT_TRANSFORMER_SIZES[size]["embed_dim"] != width:
            raise ValueError(
                f"Checkpoint {path} holds a {width}-wide transformer but `size` is {size!r} "
                f"({POINT_TRANSFORMER_SIZES[size]['embed_dim']}-wide): drop `size` (the file sets the architecture) "
                "or give the matching one."
            )
        return size
    for name, options in POINT_TRANSFORMER_SIZES.items():
        if options["embed_dim"] == width:
            return name
    raise ValueError(
        f"Checkpoint {path} holds a {width}-wide transformer, none of the sizes "
        f"{ {name: o['embed_dim'] for name, o in POINT_TRANSFORMER_SIZES.items()} }: give `num_heads` and `size` "
        "for the heads, or convert the file."
    )


# -- helpers -------------------------------------------------------------------------------------------------


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def _widths(widths: Sequence[int], count: int, name: str) -> tuple[int, ...]:
    values = tuple(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else ()
    if len(values) != count or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in values):
        raise ValueError(f"`{name}` must be {count} positive ints, got {widths!r}.")
    return values


register_model(name="pointcloud.point_transformer", builder=point_transformer)
_BLOCK = r"blocks\.\d+"
register_family(
    name="point_transformer",
    detect=is_point_transformer,
    presets={
        "attention": _BLOCK + r"\.attn\.(?:qkv|proj)",
        "mlp": _BLOCK + r"\.mlp\.(?:fc1|fc2)",
        "all-linear": _BLOCK + r"\..*",
        "blocks": _BLOCK,
    },
    unsupported={
        "qv": "the point transformer fuses q, k and v into one `attn.qkv` Linear (as Point-MAE and Point-BERT "
        "do), so q and v cannot be adapted alone; use `attention` (qkv and proj) or a regex such as "
        "'blocks\\.\\d+\\.attn\\.qkv'",
    },
)
