"""One error for every file verticals cannot use, and the safe readers that raise it.

Adapters, checkpoints, configs and data files that are truncated, of another format, hostile (a pickle that
would run code), or that don't fit the model raise :class:`VerticalsFileError` (a ``ValueError``): the
message names the file, what is wrong with it (the tensor, the expected and found shape) and what to do.
Library errors (safetensors', json's, torch's zip reader's, the hub's "Repo id must be …") never reach the
user in their place; the original stays on ``__context__`` for debugging.

Readers here never unpickle code: ``torch.load`` always runs with ``weights_only=True``, and a refusal
never suggests turning that off.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "MissingFileError",
    "VerticalsFileError",
    "check_finite",
    "check_tensors",
    "load_json_file",
    "load_safetensors_file",
    "load_torch_file",
    "write_atomically",
]

_PICKLE_FIX = (
    "verticals never unpickles Python objects from a file (that can run code). Use a file written by verticals "
    "(tensors and plain values only), or ask its author for safetensors weights."
)


class VerticalsFileError(ValueError):
    """A file that cannot be used as it is; the message names it, says what is wrong and what to do.

    ``path`` is the file (or folder) concerned.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class MissingFileError(VerticalsFileError, FileNotFoundError):
    """A file that should be there is not (also a ``FileNotFoundError``)."""


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _problem(path: str | Path, problem: str, fix: str) -> VerticalsFileError:
    return VerticalsFileError(f"{path}: {problem} {fix}", path)


def _first_bytes(path: Path, count: int = 8) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _looks_like_pickle(head: bytes) -> bool:
    """A torch zip archive (``PK\\x03\\x04``) or a raw pickle stream (``\\x80`` and a protocol number 2-5)."""
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _looks_like_safetensors(head: bytes) -> bool:
    """Eight bytes of header length, then the header's JSON object."""
    return len(head) >= 9 and head[8:9] == b"{"


def _readable(path: Path, kind: str) -> None:
    if not path.exists():
        raise MissingFileError(f"{path}: no such {kind}. Check the path.", path)
    if not path.is_file():
        raise _problem(path, f"is not a file (expected {_a(kind)}).", "Pass the file itself, not a folder.")


def load_json_file(path: str | Path, *, kind: str = "JSON file", fix: str = "Restore the file.") -> Any:
    """The JSON value in ``path``; a truncated or non-JSON file is a :class:`VerticalsFileError`."""
    path = Path(path)
    _readable(path, kind)
    try:
        text = path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise _problem(
            path, f"is not a readable {kind} (not UTF-8 text: {type(error).__name__}).", fix
        ) from None
    if not text.strip():
        raise _problem(path, f"is empty; expected {_a(kind)}.", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _problem(
            path,
            f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): the {kind} is "
            "truncated or was damaged.",
            fix,
        ) from None
    except RecursionError:
        raise _problem(path, f"is nested too deeply to be {_a(kind)}.", fix) from None


def load_safetensors_file(
    path: str | Path, *, kind: str = "safetensors file", fix: str = "Restore or re-save the file."
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; anything else (truncated, a pickle, empty) is a
    :class:`VerticalsFileError`."""
    from safetensors.torch import load_file

    path = Path(path)
    _readable(path, kind)
    head = _first_bytes(path, 9)
    if not _looks_like_safetensors(head) and _looks_like_pickle(head):
        raise _problem(
            path,
            f"is a PyTorch pickle, but {_a(kind)} must be safetensors; it was not loaded.",
            _PICKLE_FIX,
        )
    if len(head) < 9:
        raise _problem(path, f"is {'empty' if not head else 'truncated'}: too short for {_a(kind)}.", fix)
    try:
        return load_file(str(path))
    except Exception:  # safetensors raises its own SafetensorError (and OSError, ValueError) for a bad file
        raise _problem(
            path,
            f"is not a readable {kind}: it is truncated (an interrupted copy or a full disk) or not "
            "safetensors at all.",
            fix,
        ) from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch_file(
    path: str | Path,
    *,
    kind: str = "checkpoint",
    fix: str = "Use an earlier checkpoint, or copy this one again.",
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(path, weights_only=True)``; a truncated file, another format or a pickle that refers to
    code is a :class:`VerticalsFileError` naming the file (never a suggestion to disable ``weights_only``)."""
    path = Path(path)
    _readable(path, kind)
    if not _first_bytes(path):
        raise _problem(
            path, f"is empty: the {kind} was never written (an interrupted save or a full disk).", fix
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError … for bad files
        message = str(error)
        if "Weights only load failed" in message:
            found = _GLOBAL.search(message)
            if found:
                raise _problem(
                    path,
                    f"refers to Python object `{found.group(1)}`, which loading would import and call; it was "
                    "not loaded.",
                    _PICKLE_FIX,
                ) from None
            raise _problem(
                path,
                f"is not a PyTorch {kind} (its bytes are not a tensor archive: another format, or damaged).",
                fix,
            ) from None
        raise _problem(
            path,
            f"is not a readable PyTorch {kind}: it is truncated (an interrupted save, a full disk or an "
            "incomplete copy) or damaged.",
            fix,
        ) from None


def check_tensors(
    found: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: str | Path,
    *,
    fix: str,
    allow_missing: bool = False,
    extra_ok: Callable[[str, torch.Tensor], bool] | None = None,
) -> None:
    """Raise a :class:`VerticalsFileError` unless ``found`` (from the file ``source``) fits ``expected``.

    Checks, before anything is copied (so a load is all-or-nothing): names the model lacks, names the file
    lacks (unless ``allow_missing``), shapes (an empty tensor of the model is a placeholder that takes any
    size), non-tensor values, a non-float tensor where the model holds floats, and NaN or infinite values. ``extra_ok(name, tensor)`` may accept a name ``expected`` lacks.
    """
    not_tensors = sorted(name for name, value in found.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise _problem(source, f"holds entries that are not tensors: {_some(not_tensors)}.", fix)
    unexpected = sorted(
        name
        for name in found
        if name not in expected and not (extra_ok is not None and extra_ok(name, found[name]))
    )
    missing = [] if allow_missing else sorted(set(expected) - set(found))
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(
                f"{len(unexpected)} of its {len(found)} tensors have no place in this model ({_some(unexpected)})"
            )
        if missing:
            parts.append(f"{len(missing)} tensors this model needs are not in it ({_some(missing)})")
        raise _problem(
            source,
            "does not fit this model: " + "; ".join(parts) + ". It was saved from a different model (another "
            "depth, width, module names or adapter settings).",
            fix,
        )
    for name, tensor in found.items():
        if name not in expected:
            continue
        want = expected[name]
        placeholder = want.numel() == 0 and tensor.ndim == want.ndim  # empty until loaded (a memory bank)
        if tuple(tensor.shape) != tuple(want.shape) and not placeholder:
            raise _problem(
                source,
                f"tensor {name} has shape {tuple(tensor.shape)} in the file, but this model expects "
                f"{tuple(want.shape)}.",
                fix,
            )
        if want.is_floating_point() and not (tensor.is_floating_point() or tensor.is_complex()):
            raise _problem(
                source,
                f"tensor {name} is {str(tensor.dtype).removeprefix('torch.')}, but this model expects "
                f"{str(want.dtype).removeprefix('torch.')} values.",
                fix,
            )
    check_finite(found, source, fix=fix)


def check_finite(tensors: Mapping[str, Any], source: str | Path, *, fix: str) -> None:
    """Raise a :class:`VerticalsFileError` naming the first floating tensor that holds NaN or infinity."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise _problem(
                    source,
                    f"tensor {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}: it was saved from a "
                    "run that diverged, or damaged.",
                    fix,
                )


def _some(names: list[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", … {len(names) - count} more" if len(names) > count else "")


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(handle)`` so that it is replaced whole or not at all.

    The bytes go to a temporary file in the same folder (so on the same filesystem), are flushed to disk,
    and replace ``path`` with ``os.replace``; a failure (a full disk, a kill) leaves the previous ``path``
    untouched and removes the temporary file. A full disk is an ``OSError`` that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(
                error.errno,
                f"Could not write {path}: {os.strerror(error.errno)}. Any earlier {path.name} there is untouched; "
                f"free space on {path.parent} (or point the run elsewhere) and try again",
            ) from error
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); a filesystem that can't open folders is left as it is."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
