"""Reader and writer for CTranslate2's ``model.bin`` (binary version 6), without the ctranslate2 package.

The layout, all integers little-endian: ``uint32 version``, ``string spec_name``, ``uint32 revision``,
``uint32 n_variables``; per variable ``string name``, ``uint8 rank``, ``rank × uint32 dims``,
``uint8 dtype_id``, ``uint32 n_bytes``, raw bytes (C order); then ``uint32 n_aliases`` and pairs of
``string alias, string target``. A string is ``uint16 length`` (counting a trailing NUL), the UTF-8
bytes, and the NUL. Scalars (rank 0) hold options such as ``decoder/num_heads``.

The writer exists so that tests can build a tiny file in the real format and convert it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["CT2Model", "SUPPORTED_BINARY_VERSION", "read_ct2_model", "write_ct2_model"]

SUPPORTED_BINARY_VERSION = 6

#: dtype ids in the order CTranslate2 numbers them.
_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)


@dataclass
class CT2Model:
    """The variables of a CTranslate2 model, with aliases kept apart (``alias -> target`` names)."""

    spec_name: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, following an alias; the error lists near names when it is missing."""
        resolved = self.aliases.get(name, name)
        if resolved not in self.variables:
            prefix = name.rsplit("/", 1)[0]
            near = sorted(n for n in self.variables if n.startswith(prefix))[:8]
            raise KeyError(
                f"CTranslate2 {self.spec_name} model has no variable {name!r} (near names: {near}); "
                "the file is not the model layout this converter expects."
            )
        return self.variables[resolved]

    def scalar(self, name: str) -> int:
        return int(self.get(name).item())


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.offset, self.path = data, 0, path

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 file (wanted {size} bytes at offset {self.offset}, "
                f"file has {len(self.data)}). Re-download or re-convert the model."
            )
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("<H")
        raw = self.take(length)
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: malformed string at offset {self.offset - length} (no NUL end).")
        return raw[:-1].decode("utf-8")

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 file (wanted {n} bytes at offset {self.offset}, "
                f"file has {len(self.data)})."
            )
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or the directory holding it) into tensors (dtypes as stored)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"No CTranslate2 model file at {path}; pass the model directory or its model.bin."
        )
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("<I")
    if version != SUPPORTED_BINARY_VERSION:
        raise ValueError(
            f"{path}: CTranslate2 binary version {version}, expected {SUPPORTED_BINARY_VERSION}. Re-convert the "
            "model with a current ctranslate2 release (ct2-transformers-converter)."
        )
    spec_name = reader.string()
    revision = reader.unpack("<I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.unpack("<I")):
        name = reader.string()
        shape = [reader.unpack("<I") for _ in range(reader.unpack("<B"))]
        dtype_id = reader.unpack("<B")
        if dtype_id >= len(_DTYPES):
            raise ValueError(
                f"{path}: variable {name!r} has unknown dtype id {dtype_id} (known 0..{len(_DTYPES) - 1})."
            )
        dtype = _DTYPES[dtype_id]
        raw = reader.take(reader.unpack("<I"))
        expected = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if len(raw) != expected:
            raise ValueError(
                f"{path}: variable {name!r} of shape {shape} and {dtype} holds {len(raw)} bytes, expected {expected}."
            )
        variables[name] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()
    aliases = {}
    for _ in range(reader.unpack("<I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{path}: {len(reader.data) - reader.offset} unexpected trailing bytes after the aliases."
        )
    return CT2Model(spec_name, revision, variables, aliases)


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2_model(model: CT2Model, path: str | Path) -> Path:
    """Write ``model`` in CTranslate2's binary layout (version 6); returns the file path."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    chunks = [struct.pack("<I", SUPPORTED_BINARY_VERSION), _pack_string(model.spec_name)]
    chunks += [struct.pack("<I", model.revision), struct.pack("<I", len(model.variables))]
    for name, tensor in model.variables.items():
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"Variable {name!r} has dtype {tensor.dtype}; CTranslate2 stores only {_DTYPES}.")
        tensor = tensor.detach().contiguous().cpu()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        chunks += [_pack_string(name), struct.pack("<B", tensor.dim())]
        chunks += [struct.pack("<I", d) for d in tensor.shape]
        chunks += [struct.pack("<B", _DTYPES.index(tensor.dtype)), struct.pack("<I", len(raw)), raw]
    chunks.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        chunks += [_pack_string(alias), _pack_string(target)]
    path.write_bytes(b"".join(chunks))
    return path
