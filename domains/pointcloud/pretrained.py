"""The project's stand-in for a pretrained point-cloud encoder (Point-MAE / Point-BERT): the "small" point
transformer pretrained on generated shapes, so that adapting it to scans of shapes is a transfer problem. It is
not Point-MAE: it has seen one generator's families and no real scan. Pretraining takes a few minutes on a CPU
and is cached on disk (``$VERTICALS_CACHE/pointcloud``), keyed by everything that changes the weights.

The objective is supervised classification of the pretraining families, half of each batch clean CAD-like
samples and half scan-style views of other shapes (partial, occluded, uneven, jittered, with background
points): an encoder pretrained on clean shapes only did not transfer to scans in an earlier measurement of
ours. The classification head is thrown away; only the encoder is kept. Shapes come from a seed stream
(``PRETRAIN_SEED_OFFSET``) no datamodule uses, and by default only the generator's seen families: its novel
families stay novel to the encoder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from verticals.core.cache import cache_root, cached_state_dict, recipe_digest
from verticals.core.seeding import seeded

__all__ = [
    "PRETRAIN_SEED_OFFSET",
    "PretrainRecipe",
    "pretrain_point_transformer",
    "pretrained_point_transformer",
]

logger = logging.getLogger(__name__)

#: Seeds of the pretraining shapes start here; datamodules draw from seeds far below it.
PRETRAIN_SEED_OFFSET = 1_000_000
#: Bumped when the pretraining code changes in a way that changes the weights (invalidates the cache).
RECIPE_VERSION = 1


def _default_families() -> tuple[str, ...]:
    """The generator's seen families; its novel ones (``NOVEL_FAMILIES``) stay unseen by the encoder."""
    from verticals.domains.pointcloud.shapes import SEEN_FAMILIES

    return tuple(SEEN_FAMILIES)


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pretrained weights (the cache key)."""

    size: str = "small"
    points: int = 512
    shapes: int = 1536
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    families: tuple[str, ...] = field(default_factory=_default_families)

    def digest(self) -> str:
        """The cache key: the recipe, its version and the shape generator's source."""
        from verticals.domains.pointcloud import shapes

        return recipe_digest(asdict(self), RECIPE_VERSION, shapes.__file__)


def pretrained_point_transformer(
    size: str = "small", recipe: PretrainRecipe | None = None, cache_dir: str | Path | None = None
):
    """The point transformer with pretrained weights: read from the cache, or pretrained now (minutes) and
    cached. Returns a :class:`~verticals.domains.pointcloud.models.PointTransformer`."""
    recipe = recipe or PretrainRecipe(size=size)
    if recipe.size != size:
        raise ValueError(
            f"The pretraining recipe is for size {recipe.size!r} but size {size!r} was asked for: pass a recipe "
            f"with size={size!r}, or ask for {recipe.size!r}."
        )
    path = Path(cache_dir or cache_root() / "pointcloud") / f"point_transformer-{recipe.digest()}.safetensors"
    cached_state_dict(
        path,
        lambda: pretrain_point_transformer(recipe),
        what="the point transformer, pretrained on generated shapes",
        metadata={"recipe": json.dumps(asdict(recipe))},
    )
    from verticals.domains.pointcloud.models import build_point_transformer

    backbone = build_point_transformer(recipe.size)
    backbone.load_state_dict(load_file(str(path)), strict=True)
    backbone.pretrained_source = f"verticals point transformer pretrained on generated shapes ({path.name})"
    return backbone


def pretrain_point_transformer(recipe: PretrainRecipe) -> dict[str, torch.Tensor]:
    """Pretrain a fresh encoder on clean and scanned shapes of ``recipe.families``; its state dict."""
    from verticals.domains.pointcloud.models import point_transformer
    from verticals.domains.pointcloud.shapes import generate_shapes

    started = time.perf_counter()
    half = recipe.shapes // 2
    seed = PRETRAIN_SEED_OFFSET + recipe.seed
    clean, clean_labels, _ = generate_shapes(half, seed, "clean", recipe.points, recipe.families)
    scans, scan_labels, _ = generate_shapes(half, seed + 1, "scan", recipe.points, recipe.families)
    x_all = torch.from_numpy(np.concatenate([clean, scans]))
    y_all = torch.from_numpy(np.concatenate([clean_labels, scan_labels]))
    logger.info("Generated %d pretraining shapes in %.0f s.", len(x_all), time.perf_counter() - started)
    with seeded(recipe.seed):
        model = point_transformer(
            (recipe.points, 3),
            len(recipe.families),
            task="classification",
            size=recipe.size,
            pretrained=False,
            freeze_batchnorm=False,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
        )
        generator = torch.Generator().manual_seed(recipe.seed)
        model.train()
        for step in range(recipe.steps):
            rows = torch.randint(len(x_all), (recipe.batch_size,), generator=generator)
            loss = F.cross_entropy(model(x_all[rows]), y_all[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == recipe.steps - 1:
                logger.info(
                    "point transformer pretraining step %d/%d: loss %.3f", step + 1, recipe.steps, loss.item()
                )
    logger.info("Pretrained the point transformer in %.0f s.", time.perf_counter() - started)
    return {name: tensor.detach().contiguous() for name, tensor in model.backbone.state_dict().items()}
