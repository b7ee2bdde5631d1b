"""ViT backbones and heads of the remote-sensing domain, registered for configs as ``remote_sensing.vit``.

A frozen timm ``VisionTransformer`` (``.backbone``) reads a tile of bands; a light decode head turns the
patch tokens of chosen blocks into per-pixel logits (:class:`ViTSegmenter`), or a linear head turns the
pooled token into a class (:class:`ViTClassifier`, for EuroSAT). The ViT comes from one of:

- :func:`build_timm_vit`: any timm ViT by name (``vit_small_patch14_reg4_dinov2``) or ``hf-hub:`` id, its
  weights from a local file through timm's own loading, so the position table is resampled to the tile
  size, register tokens are kept and the patch embedding is adapted to the band count as timm does it;
- :func:`torchgeo_vit`: torchgeo's pretrained ViTs (SSL4EO-S12, SSL4EO-L …) by weights name, from a local
  copy of the file torchgeo would otherwise download;
- :func:`tile_vit`: the project's small ViT (4 bands, patch 8) at random init; ``pretrained: true`` in a
  config takes the stand-in pretrained on generated clean tiles (``remote_sensing.pretrained``).

Every model keeps the frozen pretrained part as ``.backbone`` (the trainable-% denominator) and checks the
tiles it is given: band count, and a size that splits into whole patches.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from timm.models import get_pretrained_cfg_value
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from verticals.core.registry import register_model

__all__ = [
    "FPNHead",
    "LinearHead",
    "TILE_VIT_PATCH_SIZE",
    "TILE_VIT_SIZES",
    "ViTClassifier",
    "ViTSegmenter",
    "build_timm_vit",
    "check_band_count",
    "check_tile_size",
    "default_feature_blocks",
    "read_state_dict",
    "tile_vit",
    "torchgeo_vit",
    "vit_segmenter",
]

#: Patch size of :func:`tile_vit`: a 64-px tile is an 8x8 token grid, a 128-px one 16x16.
TILE_VIT_PATCH_SIZE = 8
#: Width, depth and heads of :func:`tile_vit` per ``size`` (``benchmark``: the CPU benchmark's backbone).
TILE_VIT_SIZES: dict[str, dict[str, int]] = {
    "benchmark": {"embed_dim": 128, "depth": 6, "num_heads": 4},
    "tiny": {"embed_dim": 32, "depth": 2, "num_heads": 2},
}
HEADS = ("fpn", "linear")
#: Name prefixes timm resolves to a model config outside its registry (a hub id, or a local folder).
HUB_PREFIXES = ("hf-hub:", "local-dir:")
TASKS = ("segmentation", "classification")
# torchgeo's own ViT builders accept these keys absent from (or extra in) its checkpoints, which hold the
# pretrained encoder without the final norm or a classifier: a missing norm keeps its identity init.
TORCHGEO_OPTIONAL_KEYS = frozenset({"norm.weight", "norm.bias", "head.weight", "head.bias"})
_PATCH_WEIGHT = "patch_embed.proj.weight"


# -- decode heads -------------------------------------------------------------------------------------


class FPNHead(nn.Module):
    """A light FPN over same-resolution ViT block maps: a 1x1 lateral conv per block, a top-down merge (deep
    into shallow), a 3x3 conv per level, the levels summed, one learned 2x upsampling (a token covers a
    patch of pixels; this lets a boundary fall inside a token), a 1x1 classifier and a bilinear resize to the
    input size.

    Args:
        in_channels: width of each block map (the ViT's ``embed_dim``).
        num_levels: how many block maps the head reads, shallow to deep.
        num_classes: output channels.
        head_dim: the head's width.
    """

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, head_dim: int = 64) -> None:
        super().__init__()
        _check_head_args(in_channels, num_levels, num_classes, head_dim)
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels, head_dim, 1) for _ in range(num_levels))
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(head_dim, head_dim, 3, padding=1), nn.GELU()) for _ in range(num_levels)
        )
        self.upsample = nn.Sequential(nn.ConvTranspose2d(head_dim, head_dim, 2, stride=2), nn.GELU())
        self.classifier = nn.Conv2d(head_dim, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[N, num_classes, *size]`` from block maps ``[N, in_channels, h, w]`` (shallow first)."""
        _check_levels(features, len(self.lateral))
        laterals = [conv(feature) for conv, feature in zip(self.lateral, features)]
        merged = laterals[-1]
        fused = self.smooth[-1](merged)
        for level in range(len(laterals) - 2, -1, -1):
            merged = laterals[level] + _resize(merged, laterals[level].shape[-2:])
            fused = fused + _resize(self.smooth[level](merged), fused.shape[-2:])
        return _resize(self.classifier(self.upsample(fused)), size)


class LinearHead(nn.Module):
    """The smallest head: the block maps concatenated, one 1x1 conv to the classes, a bilinear resize to the
    input size (the linear probe of dense features).

    Args:
        in_channels: width of each block map (the ViT's ``embed_dim``).
        num_levels: how many block maps the head reads.
        num_classes: output channels.
    """

    def __init__(self, in_channels: int, num_levels: int, num_classes: int) -> None:
        super().__init__()
        _check_head_args(in_channels, num_levels, num_classes, 1)
        self.num_levels = num_levels
        self.classifier = nn.Conv2d(in_channels * num_levels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[N, num_classes, *size]`` from block maps ``[N, in_channels, h, w]``."""
        _check_levels(features, self.num_levels)
        return _resize(self.classifier(torch.cat(list(features), dim=1)), size)


def _check_head_args(in_channels: int, num_levels: int, num_classes: int, head_dim: int) -> None:
    for name, value in {
        "in_channels": in_channels,
        "num_levels": num_levels,
        "num_classes": num_classes,
        "head_dim": head_dim,
    }.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_levels(features: Sequence[torch.Tensor], expected: int) -> None:
    if len(features) != expected:
        raise ValueError(f"The head was built for {expected} block maps, got {len(features)}.")


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# -- models -------------------------------------------------------------------------------------------


class _ViTModel(nn.Module):
    """What both task models share: the backbone, its geometry, and the checks on incoming tiles."""

    #: Parameters of the pretrained part (the trainable-% denominator of the core's parameter summary).
    pretrained_prefix = r"(?:^|\.)backbone\."

    def __init__(self, backbone: VisionTransformer, source: str = "") -> None:
        super().__init__()
        _check_backbone(backbone)
        self.backbone = backbone
        self.source = source or type(backbone).__name__
        self.in_chans = int(backbone.patch_embed.proj.in_channels)
        height, width = _pair(backbone.patch_embed.patch_size)
        if height != width:
            raise ValueError(
                f"The backbone's patches are {height}x{width}; only square patches are supported (timm ViTs with "
                "a single `patch_size`)."
            )
        self.patch_size = height
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.embed_dim = int(backbone.embed_dim)

    @property
    def backbone_source(self) -> str:
        """Where the backbone's weights come from (the core records it beside the backbone's fingerprint)."""
        return self.source

    def check_tiles(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the fix unless ``x`` is float tiles ``[N, in_chans, H, W]`` whose
        sides split into whole patches (and match a fixed-size backbone's size)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} takes tiles [N, bands, H, W], got {shape}.")
        if not x.is_floating_point():
            raise ValueError(
                f"{name} takes float tiles (reflectance or normalised values), got dtype {x.dtype}."
            )
        check_band_count(int(x.shape[1]), self.in_chans, self.source)
        check_tile_size(int(x.shape[2]), int(x.shape[3]), self.patch_size)
        fixed = _fixed_size(self.backbone)
        if fixed is not None and tuple(x.shape[2:]) != fixed:
            raise ValueError(
                f"The backbone ({self.source}) was built for {fixed[0]}x{fixed[1]} px tiles without "
                f"`dynamic_img_size`, got {x.shape[2]}x{x.shape[3]}: build it with img_size "
                f"{x.shape[2]} (or dynamic_img_size=True), or resize the tiles."
            )


class ViTSegmenter(_ViTModel):
    """A frozen timm VisionTransformer (``self.backbone``) and a decode head (``self.decode_head``) reading
    the patch tokens of ``feature_blocks`` as ``[N, D, h, w]`` maps (CLS and register tokens left out).

    Args:
        backbone: a timm ``VisionTransformer`` (from :func:`build_timm_vit`, :func:`torchgeo_vit` or
            :func:`tile_vit`).
        num_classes: output channels (one per class).
        feature_blocks: block indices the head reads (negative counts from the end); default
            :func:`default_feature_blocks` (up to 4, evenly spread, ending at the last block).
        head: ``fpn`` (:class:`FPNHead`) or ``linear`` (:class:`LinearHead`, the smallest).
        head_dim: the FPN's width.
        source: where the backbone's weights come from (recorded in run reports).

    The block maps pass through the backbone's final norm (as DINOv2's dense heads read them).
    ``forward_features`` gives them stacked as one ``[N, len(feature_blocks)·D, h, w]`` tensor, which the
    core pools to ``[N, num_features]`` for a group objective's penalty; ``forward_head`` decodes it.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        feature_blocks: Sequence[int] | None = None,
        head: Literal["fpn", "linear"] = "fpn",
        head_dim: int = 64,
        source: str = "",
    ) -> None:
        super().__init__(backbone, source)
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {list(HEADS)}, got {head!r}.")
        depth = len(backbone.blocks)
        self.feature_blocks = _feature_blocks(feature_blocks, depth)
        levels = len(self.feature_blocks)
        self.num_classes = num_classes
        self.num_features = levels * self.embed_dim
        if head == "fpn":
            self.decode_head: nn.Module = FPNHead(self.embed_dim, levels, num_classes, head_dim)
        else:
            self.decode_head = LinearHead(self.embed_dim, levels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen blocks' patch-token maps, stacked: ``[N, len(feature_blocks)·D, H/patch, W/patch]``."""
        self.check_tiles(x)
        maps = self.backbone.forward_intermediates(
            x,
            indices=list(self.feature_blocks),
            norm=True,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        return torch.cat(maps, dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes, H, W]`` from :meth:`forward_features`' maps (``H = h·patch``)."""
        if features.ndim != 4 or features.shape[1] != self.num_features:
            raise ValueError(
                f"forward_head takes forward_features' maps [N, {self.num_features}, h, w], got "
                f"{tuple(features.shape)}."
            )
        size = (features.shape[2] * self.patch_size, features.shape[3] * self.patch_size)
        return self.decode_head(features.split(self.embed_dim, dim=1), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes, H, W]`` for tiles ``[N, in_chans, H, W]``."""
        return self.forward_head(self.forward_features(x))


class ViTClassifier(_ViTModel):
    """The same frozen backbone with a linear ``head`` on its pooled token (CLS, or the mean for a ViT built
    with ``global_pool: avg``), after its final norm: one class per tile (EuroSAT).

    Args:
        backbone: a timm ``VisionTransformer`` without a classifier (``num_classes=0``).
        num_classes: output logits.
        source: where the backbone's weights come from (recorded in run reports).
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int, source: str = "") -> None:
        super().__init__(backbone, source)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        self.num_classes = num_classes
        self.num_features = self.embed_dim
        self.head = nn.Linear(self.embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled token ``[N, D]`` (timm's ``pre_logits``)."""
        self.check_tiles(x)
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for tiles ``[N, in_chans, H, W]``."""
        return self.forward_head(self.forward_features(x))


def default_feature_blocks(depth: int) -> list[int]:
    """Up to 4 blocks spread over ``depth``, ending at the last: 12 -> [2, 5, 8, 11], 6 -> [0, 2, 3, 5]."""
    if depth < 1:
        raise ValueError(f"A ViT needs at least one block, got depth {depth}.")
    count = min(4, depth)
    return [depth * (level + 1) // count - 1 for level in range(count)]


def _feature_blocks(blocks: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    if blocks is None:
        return tuple(default_feature_blocks(depth))
    if isinstance(blocks, (str, int)) or len(blocks) == 0:
        raise ValueError(f"`feature_blocks` must be a non-empty list of block indices, got {blocks!r}.")
    resolved = []
    for block in blocks:
        if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth:
            raise ValueError(
                f"`feature_blocks` entry {block!r} is not a block of this {depth}-block ViT: use indices "
                f"0..{depth - 1} (or -{depth}..-1 from the end)."
            )
        resolved.append(block % depth)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`feature_blocks` {list(blocks)} names a block twice (indices {resolved}).")
    return tuple(sorted(resolved))


# -- checks -------------------------------------------------------------------------------------------


def check_band_count(bands: int, in_chans: int, source: str) -> None:
    """Raise unless tiles of ``bands`` bands fit a backbone that takes ``in_chans``."""
    if bands != in_chans:
        raise ValueError(
            f"The tiles have {bands} bands but the backbone ({source}) takes {in_chans}: select the "
            f"backbone's {in_chans} bands in the datamodule, or build the model for {bands} bands (a timm "
            "name or tile_vit adapt to the data's `input_shape`; torchgeo weights are for one sensor's bands)."
        )


def check_tile_size(height: int, width: int, patch_size: int) -> None:
    """Raise unless a ``height`` x ``width`` tile splits into whole ``patch_size`` patches."""
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Tiles of {height}x{width} px don't split into whole {patch_size}x{patch_size} patches: crop or "
            f"pad them to {_nearest(height, patch_size)}x{_nearest(width, patch_size)} px (the nearest "
            f"multiples of {patch_size})."
        )


def _nearest(size: int, patch_size: int) -> int:
    return max(patch_size, round(size / patch_size) * patch_size)


def _check_backbone(backbone: nn.Module) -> None:
    patch_embed = getattr(backbone, "patch_embed", None)
    required = (
        hasattr(backbone, "forward_intermediates")
        and isinstance(getattr(patch_embed, "proj", None), nn.Conv2d)
        and hasattr(patch_embed, "patch_size")
        and isinstance(getattr(backbone, "blocks", None), (nn.Sequential, nn.ModuleList))
        and hasattr(backbone, "num_prefix_tokens")
        and hasattr(backbone, "embed_dim")
    )
    if not required:
        raise TypeError(
            f"The backbone must be a timm VisionTransformer (patch_embed.proj, blocks, forward_intermediates), "
            f"got {type(backbone).__name__}; build one with build_timm_vit, torchgeo_vit or tile_vit."
        )


def _fixed_size(backbone: nn.Module) -> tuple[int, int] | None:
    """The only tile size a backbone takes, or None when it takes any (``dynamic_img_size``)."""
    patch_embed = backbone.patch_embed
    if getattr(backbone, "dynamic_img_size", False) or not getattr(patch_embed, "strict_img_size", False):
        return None
    size = getattr(patch_embed, "img_size", None)
    return None if size is None else _pair(size)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


# -- backbones ----------------------------------------------------------------------------------------


def tile_vit(
    size: Literal["benchmark", "tiny"] = "benchmark",
    img_size: int | Sequence[int] = 64,
    in_chans: int = 4,
) -> VisionTransformer:
    """The project's small ViT at random init: patch 8, one CLS token, ``dynamic_img_size`` (so a backbone
    built for 64-px tiles also reads 128-px ones); ``benchmark``: width 128, depth 6, 4 heads; ``tiny``:
    width 32, depth 2, 2 heads (tests). Its pretraining is ``remote_sensing.pretrained``'s."""
    if size not in TILE_VIT_SIZES:
        raise ValueError(f"`size` must be one of {sorted(TILE_VIT_SIZES)}, got {size!r}.")
    height, width = _pair(img_size)
    check_tile_size(height, width, TILE_VIT_PATCH_SIZE)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"`in_chans` must be a positive int (the number of bands), got {in_chans!r}.")
    return VisionTransformer(
        img_size=(height, width),
        patch_size=TILE_VIT_PATCH_SIZE,
        in_chans=in_chans,
        num_classes=0,
        class_token=True,
        dynamic_img_size=True,
        **TILE_VIT_SIZES[size],
    )


def build_timm_vit(
    name: str,
    checkpoint: str | Path | None = None,
    in_chans: int = 3,
    img_size: int | Sequence[int] | None = None,
    pretrained: bool = True,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A timm ViT by name (``vit_small_patch14_reg4_dinov2``), ``hf-hub:`` id or ``local-dir:`` folder (timm's
    ``config.json`` and weights, offline), without a classifier.

    ``checkpoint``: a local file (safetensors, or .pth/.bin read with ``weights_only=True``), loaded by
    timm's ``load_pretrained`` (strict): the position table is resampled to ``img_size``, register tokens
    are kept, and the patch embedding is adapted from the file's bands to ``in_chans`` as timm does (channels
    repeated or cut, rescaled). Without it, ``pretrained=True`` fetches timm's own weights (network or the
    Hugging Face cache; a ``local-dir:`` folder's own file) and ``pretrained=False`` is a random init.
    ``dynamic_img_size`` defaults to True so any tile size that splits into whole patches runs; other
    ``timm_kwargs`` go to ``timm.create_model``.
    """
    _check_timm_name(name)
    timm_kwargs.setdefault("dynamic_img_size", True)
    timm_kwargs["in_chans"] = in_chans
    if img_size is not None:
        timm_kwargs["img_size"] = _pair(img_size)
    if checkpoint is not None:
        if not pretrained:
            raise ValueError(
                f"`checkpoint` {checkpoint} is given but `pretrained` is false: drop the checkpoint for a random "
                "init, or set pretrained: true to load it."
            )
        path = _checkpoint_path(checkpoint)
        state = read_state_dict(path)
        overlay = _overlay_for(name, state, img_size)
        timm_kwargs.setdefault("num_classes", overlay["num_classes"])
        try:
            model = _create_vit(name, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(
                f"Checkpoint {path} does not fit timm model {name!r} (in_chans={in_chans}, "
                f"img_size={img_size}): {str(error).strip().rstrip('.')}. Check that the file holds that "
                "architecture's weights (its width, depth and patch size)."
            ) from error
    elif pretrained:
        try:
            model = _create_vit(name, pretrained=True, **timm_kwargs)
        except (OSError, RuntimeError, ValueError) as error:
            raise RuntimeError(
                f"Could not fetch timm's pretrained weights for {name!r} ({type(error).__name__}: {error}). "
                "Offline, download the weights once and pass `checkpoint: <local file>`, or set "
                "`pretrained: false` for a random init."
            ) from error
    else:
        model = _create_vit(name, pretrained=False, **timm_kwargs)
    _check_backbone(model)
    model.reset_classifier(0)
    return model


def _create_vit(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model``, a model that takes no ``dynamic_img_size`` reported as not a ViT."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:
        if "dynamic_img_size" not in str(error):
            raise
        raise TypeError(
            f"timm model {name!r} must be a timm VisionTransformer (it takes no `dynamic_img_size`: {error}); "
            "choose a ViT, e.g. from timm.list_models('vit_*')."
        ) from error


def torchgeo_vit(
    weights: str, checkpoint: str | Path | None = None, img_size: int | Sequence[int] | None = None
) -> VisionTransformer:
    """A torchgeo pretrained ViT, by weights name (``ViTSmall16_Weights.SENTINEL2_ALL_DINO``), from a local
    copy of its file: the timm architecture and band count come from the weights' ``meta``, the tensors from
    ``checkpoint`` (loaded as torchgeo does: norm and classifier may be absent), the position table resampled
    to ``img_size`` (default: the weights' size) by timm's checkpoint filter; ``dynamic_img_size`` is on."""
    weight = _torchgeo_weight(weights)
    meta = weight.meta
    architecture, in_chans = str(meta["model"]), int(meta["in_chans"])
    if checkpoint is None:
        raise ValueError(
            f"torchgeo_vit needs `checkpoint`, a local copy of {weights}'s file ({weight.url}): torchgeo would "
            "download it, and verticals loads weights from disk only. Download it once and pass its path."
        )
    path = _checkpoint_path(checkpoint)
    state = read_state_dict(path)
    size = _pair(img_size) if img_size is not None else meta.get("img_size")
    options: dict[str, Any] = {"in_chans": in_chans, "num_classes": 0, "dynamic_img_size": True}
    if size is not None:
        options["img_size"] = _pair(size)
    model = timm.create_model(architecture, pretrained=False, **options)
    try:
        result = model.load_state_dict(checkpoint_filter_fn(state, model), strict=False)
    except RuntimeError as error:
        raise ValueError(
            f"Checkpoint {path} does not fit {weights} ({architecture}, {in_chans} bands): {error}."
        ) from error
    wrong = sorted((set(result.missing_keys) | set(result.unexpected_keys)) - TORCHGEO_OPTIONAL_KEYS)
    if wrong:
        raise ValueError(
            f"Checkpoint {path} does not fit {weights} ({architecture}, {in_chans} bands): keys "
            f"{wrong[:8]}{' …' if len(wrong) > 8 else ''} are missing from the file or unknown to the "
            f"model. Is it the file of {weight.url}?"
        )
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read by timm (safetensors, or a pickle with ``weights_only=True``; nested
    ``state_dict`` / ``model`` entries and a ``module.`` prefix are unwrapped)."""
    path = _checkpoint_path(path)
    try:
        return timm_load_state_dict(str(path), weights_only=True)
    except Exception as error:  # unpickling, safetensors and zip errors alike: say which file
        raise ValueError(
            f"Could not read {path} as a state dict of tensors ({type(error).__name__}: {error}). Give a "
            ".safetensors file or a .pth/.bin holding only tensors."
        ) from error


def _checkpoint_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; `checkpoint` must be a local file.")
    return path


def _overlay_for(name: str, state: dict[str, torch.Tensor], img_size: Any) -> dict[str, Any]:
    """timm's pretrained config for ``state``: the tensors themselves (timm loads them strictly), the file's
    band count (so timm adapts the patch embedding from it) and classifier size (so nothing is dropped)."""
    patch = state.get(_PATCH_WEIGHT)
    file_chans = int(patch.shape[1]) if isinstance(patch, torch.Tensor) and patch.ndim == 4 else 3
    head = state.get("head.weight")
    num_classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else 0
    default = None if name.startswith(HUB_PREFIXES) else get_pretrained_cfg_value(name, "input_size")
    spatial = _pair(img_size) if img_size is not None else tuple(default[1:]) if default else (224, 224)
    return {
        "state_dict": state,
        "source": "timm",  # a hub id's or folder's config names its own source: load these tensors instead
        "num_classes": num_classes,
        "input_size": (file_chans, *spatial),
    }


def _check_timm_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"A timm model name is a non-empty string, got {name!r}.")
    if name.startswith(HUB_PREFIXES) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise ValueError(
        f"Unknown timm model {name!r}; close names: {close or 'none'}. ViTs are listed by "
        "timm.list_models('vit_*'); 'hf-hub:<org>/<name>' names a hub model, 'local-dir:<folder>' a folder "
        "with timm's config.json and weights."
    )


def _torchgeo_weight(name: str) -> Any:
    """torchgeo's weights enum member ``name`` (``<Enum>.<MEMBER>``), checked to be a timm ViT's."""
    from torchgeo import models as torchgeo_models  # heavy (seconds): only when torchgeo weights are named

    vit_weights = {
        str(member): member
        for enum_name in dir(torchgeo_models)
        if enum_name.startswith("ViT") and enum_name.endswith("_Weights")
        for member in getattr(torchgeo_models, enum_name)
    }
    if name in vit_weights:
        return vit_weights[name]
    try:
        weight = torchgeo_models.get_weight(name)
    except ValueError:
        close = difflib.get_close_matches(str(name), list(vit_weights), n=5, cutoff=0.5)
        raise ValueError(
            f"Unknown torchgeo weights {name!r}; close ViT weights: {close or sorted(vit_weights)[:5]}. Names "
            "are '<Enum>.<MEMBER>', e.g. 'ViTSmall16_Weights.SENTINEL2_ALL_DINO'."
        ) from None
    raise ValueError(
        f"torchgeo weights {name!r} are for {weight.meta.get('model')!r}, not a timm ViT; remote_sensing.vit "
        f"takes ViT weights such as {sorted(vit_weights)[:3]}."
    )


# -- the registered builder ---------------------------------------------------------------------------


def vit_segmenter(
    input_shape: Sequence[int],
    num_outputs: int,
    task: str = "segmentation",
    backbone: str = "tile_vit",
    checkpoint: str | Path | None = None,
    torchgeo_weights: str | None = None,
    pretrained: bool = True,
    img_size: int | Sequence[int] | None = None,
    feature_blocks: Sequence[int] | None = None,
    head: Literal["fpn", "linear"] = "fpn",
    head_dim: int = 64,
    timm_kwargs: dict[str, Any] | None = None,
) -> ViTSegmenter | ViTClassifier:
    """``remote_sensing.vit``: a ViT backbone with a decode head (``task: segmentation``) or a linear head on
    the pooled token (``task: classification``).

    ``backbone``: ``tile_vit`` (the project's stand-in: pretrained on generated clean tiles with
    ``pretrained: true``, random with false), ``tile_vit_tiny`` (random, tests), or a timm name / ``hf-hub:``
    id (weights from ``checkpoint``, a local file; see :func:`build_timm_vit`). ``torchgeo_weights`` (a
    weights name, with ``checkpoint`` its local file) takes torchgeo's ViT instead (:func:`torchgeo_vit`).
    ``img_size``: the size the backbone is built for (default: the tiles'); any size splitting into whole
    patches runs. ``timm_kwargs`` go to ``timm.create_model`` for a timm name (``drop_path_rate`` …).

    In a config, the arguments below except ``input_shape`` and ``num_outputs`` go under the task's
    ``model_args`` (``task`` too, which the task passes: a classification task asks for ``classification``).

    Args:
        input_shape: ``(bands, height, width)`` of a tile; set by the task from the datamodule.
        num_outputs: classes (output channels of the head); set by the task.
        task: ``segmentation`` (a decode head over the patch tokens) or ``classification`` (a linear head on
            the pooled token).
        backbone: ``tile_vit`` (the project's stand-in), ``tile_vit_tiny`` (random, for tests), or a timm
            name (``vit_small_patch14_reg4_dinov2``) / ``hf-hub:`` / ``local-dir:`` id.
        checkpoint: a local weights file for the backbone (safetensors, or .pth/.bin read with
            ``weights_only``), or the file of ``torchgeo_weights``; None uses the backbone's own source.
        torchgeo_weights: a torchgeo ViT weights name (``ViTSmall16_Weights.SENTINEL2_ALL_DINO``); its
            architecture replaces ``backbone`` and ``checkpoint`` must be a local copy of its file.
        pretrained: load pretrained weights (False: a random init, for a from-scratch baseline).
        img_size: the tile size the backbone's position table is built for (one int or ``(h, w)``); default:
            the tiles'.
        feature_blocks: segmentation only: the ViT blocks the decode head reads (negative counts from the
            end); default up to 4, evenly spread, ending at the last block.
        head: segmentation only: ``fpn`` (a small feature pyramid) or ``linear`` (the smallest head, which
            shows what the frozen features alone give).
        head_dim: the FPN head's width (channels); larger adds capacity to the trained head.
        timm_kwargs: extra ``timm.create_model`` arguments for a timm-named backbone (``drop_path_rate`` …).
    """
    bands, height, width = _check_input_shape(input_shape)
    if task not in TASKS:
        raise ValueError(f"`remote_sensing.vit` does `task` {list(TASKS)}, got {task!r}.")
    if task == "classification" and feature_blocks is not None:
        raise ValueError(
            "`feature_blocks` is for segmentation heads; the classifier reads the pooled token. Drop it."
        )
    size = _pair(img_size) if img_size is not None else (height, width)
    vit, source = _build_backbone(
        backbone, bands, size, checkpoint, torchgeo_weights, pretrained, timm_kwargs
    )
    if task == "classification":
        model: ViTSegmenter | ViTClassifier = ViTClassifier(vit, num_outputs, source=source)
    else:
        model = ViTSegmenter(vit, num_outputs, feature_blocks, head, head_dim, source=source)
    check_band_count(bands, model.in_chans, source)
    check_tile_size(height, width, model.patch_size)
    return model


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        bands, height, width = (operator.index(value) for value in input_shape)
    except (TypeError, ValueError):
        bands = height = width = 0
    if min(bands, height, width) < 1:
        raise ValueError(
            f"`remote_sensing.vit` takes tiles: `input_shape` (bands, height, width), got {input_shape!r}."
        )
    return bands, height, width


def _build_backbone(
    backbone: str,
    bands: int,
    size: tuple[int, int],
    checkpoint: str | Path | None,
    torchgeo_weights: str | None,
    pretrained: bool,
    timm_kwargs: dict[str, Any] | None = None,
) -> tuple[VisionTransformer, str]:
    """The ViT a ``remote_sensing.vit`` config names, and where its weights come from."""
    if timm_kwargs and (torchgeo_weights is not None or backbone in ("tile_vit", "tile_vit_tiny")):
        raise ValueError(
            f"`timm_kwargs` {sorted(timm_kwargs)} are for a backbone given by timm name; the tile ViT and "
            "torchgeo weights fix their architecture. Drop them."
        )
    reserved = sorted(set(timm_kwargs or {}) & {"in_chans", "img_size", "num_classes", "pretrained"})
    if reserved:
        raise ValueError(
            f"`timm_kwargs` {reserved} are set by remote_sensing.vit itself (bands from `input_shape`, "
            "`img_size`, `pretrained`; no classifier): give them as its own arguments."
        )
    if torchgeo_weights is not None:
        if backbone != "tile_vit":
            raise ValueError(
                f"Both `backbone` {backbone!r} and `torchgeo_weights` {torchgeo_weights!r} are given: the "
                "torchgeo weights fix the architecture. Keep one."
            )
        if not pretrained:
            raise ValueError("`torchgeo_weights` loads pretrained weights; drop it for `pretrained: false`.")
        weight = _torchgeo_weight(torchgeo_weights)
        check_band_count(bands, int(weight.meta["in_chans"]), f"torchgeo {torchgeo_weights}")
        vit = torchgeo_vit(torchgeo_weights, checkpoint, img_size=size)
        return vit, f"torchgeo:{torchgeo_weights} ({Path(str(checkpoint)).expanduser().resolve()})"
    if backbone in ("tile_vit", "tile_vit_tiny"):
        tiny = backbone == "tile_vit_tiny"
        arch = "tiny" if tiny else "benchmark"
        if checkpoint is not None:
            if not pretrained:
                raise ValueError(
                    f"`checkpoint` {checkpoint} is given but `pretrained` is false: drop the checkpoint for a "
                    "random init, or set pretrained: true to load it."
                )
            path = _checkpoint_path(checkpoint)
            vit = tile_vit(arch, img_size=size, in_chans=bands)
            _load_strict(vit, path, backbone)
            return vit, str(path.resolve())
        if not pretrained:
            return tile_vit(arch, img_size=size, in_chans=bands), f"{backbone}(random)"
        if tiny:
            raise ValueError(
                "`tile_vit_tiny` has no pretrained weights (it is for tests): set `pretrained: false`, or use "
                "`backbone: tile_vit` for the pretrained stand-in."
            )
        from verticals.domains.remote_sensing.pretrained import pretrained_tile_vit  # trains or reads a cache

        # Its position table is square: a non-square tile size resamples it at run time (dynamic_img_size).
        square = {"img_size": size[0]} if size[0] == size[1] else {}
        vit = pretrained_tile_vit(in_chans=bands, **square)
        return vit, str(getattr(vit, "pretrained_source", "tile_vit(pretrained on generated clean tiles)"))
    vit = build_timm_vit(
        backbone, checkpoint, in_chans=bands, img_size=size, pretrained=pretrained, **(timm_kwargs or {})
    )
    if checkpoint is not None:
        return vit, f"{backbone} ({Path(checkpoint).expanduser().resolve()})"
    return vit, backbone if pretrained else f"{backbone}(random)"


def _load_strict(model: VisionTransformer, path: Path, name: str) -> None:
    """Load ``path`` into ``model`` strictly, the position table resampled by timm's checkpoint filter."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    except RuntimeError as error:
        raise ValueError(f"Checkpoint {path} does not fit `{name}`: {error}.") from error


register_model(name="remote_sensing.vit", builder=vit_segmenter)
