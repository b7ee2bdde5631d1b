"""Seeded blocks that leave every other random state alone.

``torch.manual_seed`` inside ``torch.random.fork_rng(devices=[])`` restores the CPU generator afterwards
but also seeds every CUDA device (lazily, when CUDA is not initialised yet) and never restores them: a
seeded model init would silently override ``seed_everything`` for all later GPU dropout. ``seeded`` seeds
only the CPU generator, and the generator of ``device`` when that is a GPU, and restores both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the CPU generator (and ``device``'s CUDA generator) seeded; restore them after."""
    device = torch.device(device if device is not None else "cpu")
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
