"""The generated land-cover set as a datamodule: tiles with sensor artefacts, the artefact as the group.

:class:`LandCoverDataModule` draws its tiles with :mod:`verticals.domains.remote_sensing.landcover` at
``setup`` (in memory; a few hundred tiles take well under a second or two). Training and validation tiles
take the ``train_artefacts`` in turn (tile ``i`` gets ``train_artefacts[i % len]``); the test split holds the
same ``num_test`` scenes once under each of ``test_artefacts`` (paired: a difference between artefacts is
not a difference between scenes). Train, validation and test scenes, and every artefact's parameters, come
from disjoint seed streams of ``seed``. Batches::

    x [B, 4, S, S] float32 reflectance (blue, green, red, nir; not normalised)
    y [B, S, S] long, 0..4 = LANDCOVER_CLASSES (every value a real class)
    group [B, 1] long, the tile's artefact: group_names["artefact"][code]

The card is ``datasets_cards/generated_landcover.md``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from verticals.core.data import SPLITS, BaseDataModule, encode_group_matrix
from verticals.domains.remote_sensing.landcover import (
    BANDS,
    LANDCOVER_CLASSES,
    apply_artefact,
    artefact_parts,
    generate_tiles,
)

__all__ = ["DEFAULT_TRAIN_ARTEFACTS", "LandCoverDataModule", "LandCoverTiles"]

#: What the training (and validation) tiles carry by default: every single artefact.
DEFAULT_TRAIN_ARTEFACTS: tuple[str, ...] = ("stripes", "haze", "noise", "jpeg", "colour")


class LandCoverTiles(Dataset):
    """Items ``{"x": float [4, S, S], "y": long [S, S], "group": long [1]}`` over in-memory arrays."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, groups: np.ndarray) -> None:
        if not len(images) == len(masks) == len(groups):
            raise ValueError(
                f"{len(images)} images, {len(masks)} masks and {len(groups)} group rows; one of each per tile."
            )
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
        self.groups = torch.from_numpy(np.ascontiguousarray(groups, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.images[index], "y": self.masks[index].long(), "group": self.groups[index]}


def _artefact_list(values: Sequence[str] | str, name: str) -> list[str]:
    """Canonical artefact names (``"haze + noise"`` → ``"haze+noise"``), checked, no repeats."""
    if isinstance(values, str):
        raise ValueError(
            f"`{name}` must be a list of artefact names, got the string {values!r}; write [{values!r}]."
        )
    names = []
    for value in values:
        parts = artefact_parts(value)
        names.append("+".join(parts) if parts else "clean")
    if not names:
        raise ValueError(f"`{name}` is empty; name at least one artefact (e.g. ['clean']).")
    repeated = sorted({value for value in names if names.count(value) > 1})
    if repeated:
        raise ValueError(f"`{name}` repeats {repeated}; list each artefact once.")
    return names


def _stream(seed: int, split: str, artefact: str = "") -> np.random.SeedSequence:
    """The seed stream of one split's scenes (``artefact=""``) or of one artefact on them: disjoint streams
    per (seed, split, artefact), independent of the other splits and artefacts listed."""
    return np.random.SeedSequence([seed, 1 + SPLITS.index(split), 1 + zlib.crc32(artefact.encode())])


class LandCoverDataModule(BaseDataModule):
    """Generated multispectral land-cover tiles under sensor artefacts; the artefact is the group.

    Args:
        train_artefacts: artefacts of the training and validation tiles, taken in turn (see
            ``landcover.ARTEFACTS``; ``"a+b"`` applies both, in order).
        test_artefacts: the test split's artefacts, ``num_test`` tiles each (the same scenes under every
            one); default ``"clean"`` and then ``train_artefacts``.
        num_train: tiles in the training split (>= 1, all artefacts together).
        num_val: tiles in the validation split (>= 1, all artefacts together).
        num_test: test tiles *per* test artefact.
        tile_size: side ``S`` of a tile in px; a multiple of ``patch_size``.
        strength: every artefact's strength (0 = none, 1 = the card's defaults).
        patch_size: the ViT patch the stripes' period is set against (1.5–2 patches).
        batch_size: tiles per batch (>= 1).
        seed: seed (>= 0) of the generated tiles and their artefacts (disjoint per split) and of the
            training order; change it to draw other scenes.
        num_workers: DataLoader worker processes (0: generate and load in the main process).
    """

    def __init__(
        self,
        train_artefacts: Sequence[str] = DEFAULT_TRAIN_ARTEFACTS,
        test_artefacts: Sequence[str] | None = None,
        num_train: int = 48,
        num_val: int = 16,
        num_test: int = 24,
        tile_size: int = 64,
        strength: float = 1.0,
        patch_size: int = 8,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1 (tiles), got {value!r}.")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"`patch_size` must be an integer >= 1 (px), got {patch_size!r}.")
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 8:
            raise ValueError(f"`tile_size` must be an integer >= 8 (px), got {tile_size!r}.")
        if tile_size % patch_size:
            nearest = max(patch_size, round(tile_size / patch_size) * patch_size)
            raise ValueError(
                f"`tile_size` {tile_size} is not divisible by `patch_size` {patch_size}: the ViT's token grid "
                f"needs whole patches; use tile_size={nearest}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")
        self.train_artefacts = _artefact_list(train_artefacts, "train_artefacts")
        self.test_artefacts = (
            ["clean", *[name for name in self.train_artefacts if name != "clean"]]
            if test_artefacts is None
            else _artefact_list(test_artefacts, "test_artefacts")
        )
        if (
            isinstance(strength, bool)
            or not isinstance(strength, (int, float))
            or not math.isfinite(strength)
            or strength < 0
        ):
            raise ValueError(
                f"`strength` must be a finite number >= 0 (0 = no artefact, 1 = the card's defaults), got {strength!r}."
            )
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.tile_size, self.strength, self.patch_size = tile_size, float(strength), patch_size
        self.save_hyperparameters()
        order = dict.fromkeys([*self.test_artefacts, *self.train_artefacts])
        self.group_attributes = ["artefact"]
        self.group_names = {"artefact": list(order)}
        self.dataset_name = "generated multispectral land-cover tiles (sensor artefacts)"
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        self._datasets: dict[str, LandCoverTiles] = {}

    # -- shapes -----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Name of each label value (all real classes, no background)."""
        return list(LANDCOVER_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(LANDCOVER_CLASSES)

    @property
    def bands(self) -> list[str]:
        """Channel order of ``x``."""
        return list(BANDS)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (len(BANDS), self.tile_size, self.tile_size)

    # -- the tiles ------------------------------------------------------------------------------
    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(images [N, 4, S, S], masks [N, S, S], artefact of each tile)`` of ``split``, generated once."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if split not in self._arrays:
            self._arrays[split] = self._generate(split)
        return self._arrays[split]

    def _generate(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        count = {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]
        scene_seed = int(_stream(self.seed, split).generate_state(1)[0])
        images, masks = generate_tiles(count, scene_seed, "clean", self.tile_size)

        def shifted(tiles: np.ndarray, artefact: str) -> np.ndarray:
            rng = np.random.default_rng(_stream(self.seed, split, artefact))
            return apply_artefact(tiles, artefact, rng, self.strength, self.patch_size)

        if split == "test":
            blocks = [shifted(images, artefact) for artefact in self.test_artefacts]
            names = [artefact for artefact in self.test_artefacts for _ in range(count)]
            return np.concatenate(blocks), np.tile(masks, (len(blocks), 1, 1)), names
        names = [self.train_artefacts[i % len(self.train_artefacts)] for i in range(count)]
        for artefact in self.train_artefacts:
            rows = [i for i, name in enumerate(names) if name == artefact]
            if rows:
                images[rows] = shifted(images[rows], artefact)
        return images, masks, names

    def split_dataset(self, split: str) -> LandCoverTiles:
        if split not in self._datasets:
            images, masks, names = self.split_arrays(split)
            groups = encode_group_matrix({"artefact": names}, self.group_names)
            self._datasets[split] = LandCoverTiles(images, masks, groups)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.split_dataset(split)
