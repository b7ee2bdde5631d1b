"""The project's stand-in for a geospatial foundation model: the small tile ViT pretrained on generated *clean*
land-cover tiles, so that adapting it to tiles with sensor artefacts is a transfer problem, as adapting DINOv2
or Prithvi to a new sensor is. It is not a foundation model: it has seen one generator's five classes and no
real image. Pretraining takes a few minutes on a CPU and is cached on disk (``$VERTICALS_CACHE/remote_sensing``),
keyed by everything that changes the weights.

The objective is supervised segmentation of the clean tiles with a throw-away per-token linear pixel decoder
(each token predicts the classes of its patch's pixels); only the ViT is kept. Tiles come from a seed stream
(``PRETRAIN_SEED_OFFSET``) that no datamodule uses, so no downstream tile was seen in pretraining.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from verticals.core.cache import cache_root, cached_state_dict, recipe_digest
from verticals.core.seeding import seeded

__all__ = ["PRETRAIN_SEED_OFFSET", "PretrainRecipe", "pretrain_tile_vit", "pretrained_tile_vit"]

logger = logging.getLogger(__name__)

#: Seeds of the pretraining tiles start here; datamodules draw from seeds far below it.
PRETRAIN_SEED_OFFSET = 1_000_000
#: Bumped when the pretraining code changes in a way that changes the weights (invalidates the cache).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pretrained weights (the cache key)."""

    size: str = "benchmark"
    tile_size: int = 64
    in_chans: int = 4
    steps: int = 600
    batch_size: int = 32
    tiles: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0

    def digest(self) -> str:
        """The cache key: the recipe, its version and the tile generator's source (a changed generator gives
        other tiles, so other weights)."""
        from verticals.domains.remote_sensing import landcover

        return recipe_digest(asdict(self), RECIPE_VERSION, landcover.__file__)


def pretrained_tile_vit(
    img_size: int = 64,
    in_chans: int = 4,
    recipe: PretrainRecipe | None = None,
    cache_dir: str | Path | None = None,
) -> VisionTransformer:
    """The tile ViT with pretrained weights: read from the cache, or pretrained now (minutes) and cached.

    ``img_size`` sets the position table of the returned model (resampled from the pretraining grid); the model
    also accepts other sizes divisible by its patch at run time (timm's ``dynamic_img_size``).
    """
    recipe = recipe or PretrainRecipe()
    if recipe.in_chans != in_chans:
        raise ValueError(
            f"The pretraining recipe has {recipe.in_chans} bands but {in_chans} were asked for: the generated "
            f"tiles have {recipe.in_chans} (blue, green, red, nir); pass a recipe with in_chans={in_chans}."
        )
    path = Path(cache_dir or cache_root() / "remote_sensing") / f"tile_vit-{recipe.digest()}.safetensors"
    cached_state_dict(
        path,
        lambda: pretrain_tile_vit(recipe),
        what="the tile ViT, pretrained on clean generated tiles",
        metadata={"recipe": json.dumps(asdict(recipe))},
    )
    return _load(path, recipe, img_size)


def pretrain_tile_vit(recipe: PretrainRecipe) -> dict[str, torch.Tensor]:
    """Pretrain a fresh tile ViT on clean tiles; returns its state dict (contiguous, for safetensors)."""
    from verticals.domains.remote_sensing.landcover import BANDS, LANDCOVER_CLASSES, generate_tiles
    from verticals.domains.remote_sensing.models import tile_vit

    if recipe.in_chans != len(BANDS):
        raise ValueError(
            f"The generated tiles have {len(BANDS)} bands ({', '.join(BANDS)}), but the recipe asks for "
            f"{recipe.in_chans}: set in_chans={len(BANDS)}."
        )
    started = time.perf_counter()
    with seeded(recipe.seed):
        images, masks = generate_tiles(
            recipe.tiles, seed=PRETRAIN_SEED_OFFSET + recipe.seed, artefact="clean", size=recipe.tile_size
        )
        vit = tile_vit(recipe.size, img_size=recipe.tile_size, in_chans=recipe.in_chans)
        patch = vit.patch_embed.patch_size[0]
        decoder = nn.Linear(vit.embed_dim, len(LANDCOVER_CLASSES) * patch * patch)
        parameters = list(vit.parameters()) + list(decoder.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
        )
        x_all, y_all = torch.from_numpy(images), torch.from_numpy(masks)
        generator = torch.Generator().manual_seed(recipe.seed)
        vit.train()
        for step in range(recipe.steps):
            rows = torch.randint(len(x_all), (recipe.batch_size,), generator=generator)
            logits = _pixel_logits(vit, decoder, x_all[rows], patch)
            loss = F.cross_entropy(logits, y_all[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 100 == 0 or step == recipe.steps - 1:
                logger.info("tile ViT pretraining step %d/%d: loss %.3f", step + 1, recipe.steps, loss.item())
    logger.info("Pretrained the tile ViT in %.0f s.", time.perf_counter() - started)
    return {name: tensor.detach().contiguous() for name, tensor in vit.state_dict().items()}


def _pixel_logits(vit: VisionTransformer, decoder: nn.Linear, x: torch.Tensor, patch: int) -> torch.Tensor:
    """Class logits per pixel ``[N, C, H, W]``: each patch token predicts its own patch's pixels."""
    tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]
    n, _, height, width = x.shape
    rows, cols = height // patch, width // patch
    logits = decoder(tokens).view(n, rows, cols, -1, patch, patch)  # [N, h, w, C, p, p]
    return logits.permute(0, 3, 1, 4, 2, 5).reshape(n, -1, height, width)


def _load(path: Path, recipe: PretrainRecipe, img_size: int) -> VisionTransformer:
    from verticals.domains.remote_sensing.models import tile_vit

    state = load_file(str(path))
    vit = tile_vit(recipe.size, img_size=img_size, in_chans=recipe.in_chans)
    if img_size != recipe.tile_size:
        patch = vit.patch_embed.patch_size[0]
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=[img_size // patch] * 2,
            old_size=[recipe.tile_size // patch] * 2,
            num_prefix_tokens=vit.num_prefix_tokens,
        )
    vit.load_state_dict(state, strict=True)
    vit.pretrained_source = f"verticals tile ViT pretrained on clean generated tiles ({path.name})"
    return vit
