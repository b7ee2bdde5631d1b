"""Checkpoints written whole or not at all, and read safely: Lightning's ``CheckpointIO`` for every verticals
trainer.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to a file in
``$TMPDIR`` that is then moved over the checkpoint. When ``$TMPDIR`` is on another filesystem than the run
(a local ``/tmp`` and a shared run folder), the move copies over the old checkpoint, and a full disk leaves
it truncated: the previous good checkpoint is lost. :class:`AtomicCheckpointIO` writes to a temporary file
in the checkpoint's own folder, flushes it to disk and renames it over the old one (``os.replace``), so a
failed save leaves the previous checkpoint loadable.

It also reads checkpoints with ``torch.load(weights_only=True)`` whatever the caller asks (a pickle that
refers to code is never run), and turns a truncated, damaged, foreign or hostile file, or one whose tensors
hold NaN or infinity, into a :class:`~verticals.core.file_errors.VerticalsFileError` naming the file and what
to do. Lightning routes both ``ModelCheckpoint``'s saves and every ``ckpt_path`` load (``fit`` resuming,
``validate``/``test``/``predict``) through the strategy's ``checkpoint_io``.

Remote paths (``s3://`` …) keep Lightning's own writer; their loads are checked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from verticals.core.file_errors import VerticalsFileError, check_finite, load_torch_file, write_atomically

__all__ = ["AtomicCheckpointIO", "with_atomic_checkpoints"]

_FIX = (
    "Use another checkpoint of the run (best.ckpt or last.ckpt beside it), or start a new run without "
    "--ckpt_path."
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that replaces a local checkpoint atomically and loads it safely (module doc)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        local = _local_path(path)
        if local is None:
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` is not supported by AtomicCheckpointIO; pass "
                "your own CheckpointIO plugin (`--trainer.plugins`) to use storage options."
            )
        write_atomically(local, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The checkpoint at ``path``, read with ``weights_only=True`` (``weights_only`` is ignored: a run
        that must unpickle objects passes its own ``CheckpointIO`` plugin)."""
        local = _local_path(path)
        if local is None:
            try:
                checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=True)
            except FileNotFoundError:
                raise
            except Exception:
                raise VerticalsFileError(
                    f"{path}: is not a readable PyTorch checkpoint (truncated, damaged, or holding Python objects "
                    f"that loading would run). {_FIX}",
                    None,
                ) from None
        else:
            checkpoint = load_torch_file(local, kind="checkpoint", fix=_FIX, map_location=map_location)
        return checked_checkpoint(checkpoint, path)


def checked_checkpoint(checkpoint: Any, path: _PATH) -> dict[str, Any]:
    """``checkpoint`` if it has the shape of a Lightning checkpoint with finite tensors; else a
    :class:`VerticalsFileError` naming ``path``."""
    if not isinstance(checkpoint, dict):
        raise VerticalsFileError(
            f"{path}: holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a mapping with "
            f"`state_dict`). {_FIX}",
            path if isinstance(path, (str, Path)) else None,
        )
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        found = (
            "no `state_dict`" if state is None else "a `state_dict` that is not a mapping of names to tensors"
        )
        raise VerticalsFileError(
            f"{path}: has {found}, so it is not a Lightning checkpoint (perhaps a bare state dict or another "
            f"program's file). {_FIX}",
            path if isinstance(path, (str, Path)) else None,
        )
    check_finite(state, path, fix=_FIX)
    return checkpoint


def with_atomic_checkpoints(plugins: Any, strategy: Any = None) -> Any:
    """``plugins`` (a Trainer argument) plus an :class:`AtomicCheckpointIO`, unless a ``CheckpointIO`` is among
    them already, the ``strategy`` instance carries its own, or the strategy is one with its own checkpoint
    format (XLA)."""
    if isinstance(strategy, str) and "xla" in strategy.lower():
        return plugins
    if getattr(strategy, "_checkpoint_io", None) is not None:
        return plugins
    listed = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in listed):
        return plugins
    return [*listed, AtomicCheckpointIO()]


def _local_path(path: _PATH) -> Path | None:
    """``path`` as a local file path, or None for a remote one (``s3://`` …)."""
    text = str(path)
    if "://" not in text:
        return Path(text)
    if isinstance(get_filesystem(text), LocalFileSystem):
        return Path(text.split("://", 1)[1])
    return None
