"""Frequency bands and token grids for the remote-sensing adapters (:mod:`.adapters`).

Earth-Adapter splits a block's patch-token map into a low and a high spatial-frequency band; ConvPass runs a
3x3 convolution over the same map. Both see a ViT block's output as prefix tokens (CLS, registers), which
pass through, plus a grid of patch tokens, and a convolutional block's output ``[B, C, H, W]`` as the grid
itself. The helpers here work on a channels-last grid ``[..., H, W, C]``: the FFT acts over (H, W) and the
adapters' linear layers over C.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from verticals.core.adapters.bottleneck import infer_hidden_size

__all__ = ["infer_channels", "low_pass_mask", "model_layout", "split_frequencies", "token_grid"]

# Keeps floor(H * rho / 2) exact when the product is an integer that floating point lands just below.
_EPS = 1e-9


def low_pass_mask(
    height: int, width: int, cutoff_ratio: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """The low band of an ``fftshift``-ed ``height x width`` spectrum as a boolean mask.

    The band is the centred square (rectangle on a non-square grid) of frequencies ``|k_h| <= floor(height *
    cutoff_ratio / 2)`` and ``|k_w| <= floor(width * cutoff_ratio / 2)``. It always holds the zero frequency
    (the grid's mean) and is symmetric about it, so the band of a real map is a real map.
    """
    if not 0.0 < cutoff_ratio < 1.0:
        raise ValueError(f"`cutoff_ratio` must lie in (0, 1), got {cutoff_ratio!r}.")
    if height < 1 or width < 1:
        raise ValueError(f"A frequency mask needs a grid of at least 1x1, got {height}x{width}.")
    half_h = math.floor(height * cutoff_ratio / 2 + _EPS)
    half_w = math.floor(width * cutoff_ratio / 2 + _EPS)
    rows = (torch.arange(height, device=device) - height // 2).abs() <= half_h
    cols = (torch.arange(width, device=device) - width // 2).abs() <= half_w
    return rows[:, None] & cols[None, :]


def split_frequencies(grid: torch.Tensor, cutoff_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a channels-last grid ``[..., H, W, C]`` into its low and high spatial-frequency bands.

    Orthonormal ``fft2`` over (H, W), ``fftshift``, the :func:`low_pass_mask` band, then ``ifftshift``,
    ``ifft2`` and the real part give the low band; the high band is ``grid - low``, which equals the inverse
    transform of the complementary mask (the transform is linear). Computed in float32 at least (the FFT has
    no half-precision CPU kernel), returned in the grid's dtype.
    """
    if grid.dim() < 3:
        raise ValueError(
            f"`split_frequencies` needs a channels-last grid [..., H, W, C], got a tensor of shape "
            f"{tuple(grid.shape)}."
        )
    height, width = grid.shape[-3], grid.shape[-2]
    x = grid if grid.dtype in (torch.float32, torch.float64) else grid.float()
    dims = (-3, -2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, dim=dims, norm="ortho"), dim=dims)
    mask = low_pass_mask(height, width, cutoff_ratio, device=grid.device)[:, :, None]
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=dims), dim=dims, norm="ortho").real
    return low.to(grid.dtype), (x - low).to(grid.dtype)


def token_grid(
    num_tokens: int, num_prefix_tokens: int, grid_size: Sequence[int] | None, module_name: str
) -> tuple[int, int]:
    """The (H, W) grid of the ``num_tokens - num_prefix_tokens`` patch tokens a module returned.

    ``grid_size`` (the model's ``patch_embed.grid_size``) when it holds exactly that many tokens, so
    non-square timm grids work; else a square; neither is an error that says how to fix it.
    """
    patches = num_tokens - num_prefix_tokens
    if patches < 1:
        raise ValueError(
            f"Module '{module_name}' returned {num_tokens} tokens, but `num_prefix_tokens` is "
            f"{num_prefix_tokens}: no patch tokens are left for the grid. Set `num_prefix_tokens` to the number "
            "of CLS/register tokens the backbone prepends."
        )
    if grid_size is not None and grid_size[0] * grid_size[1] == patches:
        return int(grid_size[0]), int(grid_size[1])
    side = math.isqrt(patches)
    if side * side == patches:
        return side, side
    known = (
        f"does not match the model's `patch_embed.grid_size` {tuple(grid_size)}"
        if grid_size is not None
        else "the model has no `patch_embed.grid_size` to say its shape"
    )
    raise ValueError(
        f"Module '{module_name}' returned N={num_tokens} tokens; without its p={num_prefix_tokens} prefix "
        f"tokens that leaves {patches} patch tokens, which is not a square grid, and {known}. Set "
        "`num_prefix_tokens` to the number of CLS/register tokens the backbone prepends, or feed images whose "
        "token grid matches `patch_embed.grid_size` (or is square)."
    )


def model_layout(model: nn.Module, module_name: str) -> tuple[int | None, tuple[int, int] | None]:
    """``(num_prefix_tokens, grid_size)`` of the nearest ancestors of ``module_name`` in ``model`` with them.

    timm's ``VisionTransformer`` has both: ``num_prefix_tokens`` (CLS + register tokens) and
    ``patch_embed.grid_size``. ``None`` where no ancestor says.
    """
    parts = module_name.split(".") if module_name else []
    prefix_tokens: int | None = None
    grid: tuple[int, int] | None = None
    for depth in range(len(parts) - 1, -1, -1):
        try:
            ancestor = model.get_submodule(".".join(parts[:depth]))
        except AttributeError:
            continue
        value = getattr(ancestor, "num_prefix_tokens", None)
        if prefix_tokens is None and _is_int(value) and value >= 0:
            prefix_tokens = value
        size = getattr(getattr(ancestor, "patch_embed", None), "grid_size", None)
        if (
            grid is None
            and isinstance(size, (tuple, list))
            and len(size) == 2
            and all(_is_int(s) for s in size)
        ):
            grid = (int(size[0]), int(size[1]))
        if prefix_tokens is not None and grid is not None:
            break
    return prefix_tokens, grid


def infer_channels(module: nn.Module) -> int | None:
    """The feature width of ``module``'s output, or None.

    The last ``nn.Linear``'s ``out_features`` or convolution's ``out_channels`` (a transformer block's MLP,
    a convolutional block's last conv); else the core's rules (a ``hidden_size``/``embed_dim`` attribute, a
    LayerNorm); else a batch or group norm's channel count.
    """
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if layers:
        last = layers[-1]
        return last.out_features if isinstance(last, nn.Linear) else last.out_channels
    found = infer_hidden_size(module)
    if found is not None:
        return found
    for sub in reversed(list(module.modules())):
        if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            return sub.num_features
        if isinstance(sub, nn.GroupNorm):
            return sub.num_channels
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
