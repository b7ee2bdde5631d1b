"""Read image, array and volume files into tensors, chosen by suffix; a suffix listed is one that decodes.

Readers, each listed only when it can run here:
    Pillow   ``.png .jpg .jpeg .bmp .tif .tiff .webp`` (each one this Pillow build opens)
    numpy    ``.npy`` (channels first: ``[H, W]``, ``[C, H, W]`` or ``[C, D, H, W]``; never pickled)
    MONAI    ``.nii .nii.gz`` through ``monai.transforms.LoadImage`` with nibabel (``pip install nibabel``)

Images come back as ``[C, *spatial]`` tensors: ``uint8`` when the file stores 8-bit values (scaled to
[0, 1] later by the transforms), 16-bit rasters as ``float32`` in [0, 1], anything else as ``float32``
with its stored values. Masks come back as ``LongTensor[*spatial]``. A file that fails to decode, or that
decodes to something no model can take (no pixels, text or complex values, NaN or infinity), raises
:class:`ImageDecodeError` naming the file and the reason; an unknown suffix raises
:class:`UnsupportedSuffixError` listing the suffixes that work. Both subclass
:class:`~verticals.core.file_errors.VerticalsFileError`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from verticals.core.file_errors import VerticalsFileError

__all__ = [
    "ImageDecodeError",
    "UnsupportedSuffixError",
    "check_suffix",
    "file_suffix",
    "read_image",
    "read_mask",
    "supported_suffixes",
]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NUMPY_SUFFIXES = (".npy",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class ImageDecodeError(VerticalsFileError):
    """A file that exists but cannot be read as an image or mask; the message names it and says why."""


class UnsupportedSuffixError(VerticalsFileError):
    """A file whose suffix no available reader decodes; the message lists the suffixes that work."""


def file_suffix(path: str | Path) -> str:
    """Lower-case suffix, with the two-part ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _pil_suffixes() -> tuple[str, ...]:
    from PIL import Image, features

    Image.init()
    registered = Image.registered_extensions()
    readable = [s for s in PIL_SUFFIXES if registered.get(s) in Image.OPEN]
    if ".webp" in readable and not features.check("webp"):
        readable.remove(".webp")
    return tuple(readable)


def _nifti_missing() -> str | None:
    """Why NIfTI files cannot be read here, or None when they can."""
    if importlib.util.find_spec("nibabel") is None:
        return "NIfTI files (.nii, .nii.gz) need nibabel, which MONAI's reader uses: `pip install nibabel`"
    return None


def supported_suffixes() -> tuple[str, ...]:
    """Every suffix a reader available in this environment decodes."""
    return (*_pil_suffixes(), *NUMPY_SUFFIXES, *(() if _nifti_missing() else NIFTI_SUFFIXES))


def check_suffix(path: str | Path) -> str:
    """The reader-ready suffix of ``path``; raises :class:`UnsupportedSuffixError` if none reads it."""
    suffix = file_suffix(path)
    if suffix in supported_suffixes():
        return suffix
    hint = ""
    if suffix in NIFTI_SUFFIXES:
        hint = f" {_nifti_missing()}."
    elif suffix in PIL_SUFFIXES:
        hint = f" This Pillow build cannot open {suffix} files; reinstall Pillow with that codec."
    raise UnsupportedSuffixError(
        f"{path}: files ending in {suffix or '(no suffix)'!r} cannot be decoded here; supported suffixes: "
        f"{', '.join(supported_suffixes())}.{hint} Convert the file (for example to .png or .npy)."
    )


def _decoded(path: Path, read: Callable[[Path], np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
    try:
        return read(path)
    except ValueError as error:
        if "allow_pickle" in str(error) or "pickled" in str(error):  # numpy's advice is to allow pickles: no
            with open(path, "rb") as handle:
                is_npy = handle.read(6) == b"\x93NUMPY"
            reason = (
                "it holds pickled Python objects (an object array)"
                if is_npy
                else "it is not a .npy array (no NumPy header: another format, a pickle, or damaged)"
            )
            raise ImageDecodeError(
                f"Cannot decode {path}: {reason}; verticals never unpickles data files (that can run code). Save "
                "the data as a numeric array, e.g. numpy.save(path, array.astype(numpy.float32)).",
                path,
            ) from None
        raise ImageDecodeError(f"Cannot decode {path}: {type(error).__name__}: {error}", path) from error
    except Exception as error:  # every reader has its own error types; all mean "this file is bad"
        raise ImageDecodeError(f"Cannot decode {path}: {type(error).__name__}: {error}", path) from error


# PIL modes converted when no channel count is asked for: palettes and exotic colour spaces to RGB.
_NATIVE_MODES = {
    "1": "L",
    "P": "RGB",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}
_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _pil_array(path: Path, mode: str | None, mask: bool = False) -> np.ndarray:
    """Pixels of a Pillow-readable file; a mask keeps its stored values (palette indices included)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        elif mode is None and not mask and image.mode in _NATIVE_MODES:
            image = image.convert(_NATIVE_MODES[image.mode])
        array = np.array(image)
    if not mask and array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return array.astype(np.float32) / np.float32(65535.0)  # 16-bit rasters, scaled like 8-bit ones
    return array


def _nifti_tensor(path: Path) -> torch.Tensor:
    from monai.transforms import LoadImage

    loaded = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=None)
    return loaded(str(path)).as_tensor()


def _numeric(path: Path, array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``array`` if it holds real numbers (booleans, integers, floats); otherwise an error naming ``path``."""
    if isinstance(array, torch.Tensor):
        ok, dtype = not array.is_complex(), str(array.dtype)
    else:
        ok, dtype = array.dtype.kind in "buif", str(array.dtype)
    if not ok:
        raise ImageDecodeError(
            f"Cannot decode {path}: it holds {dtype} values; images and masks hold real numbers (integers or "
            "floats). Convert the file.",
            path,
        )
    if (
        isinstance(array, np.ndarray) and not array.dtype.isnative
    ):  # big-endian files: torch reads native order
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _as_image_tensor(array: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 2:
        tensor = tensor[None]
    elif channels_last:
        tensor = tensor.permute(2, 0, 1)
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8) * 255
    elif tensor.dtype != torch.uint8:
        tensor = tensor.to(torch.float32)
    return tensor.contiguous()


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """The image at ``path`` as ``[C, *spatial]`` (see the module docstring for dtypes).

    ``channels``: 3 gives RGB (grey images repeated), 1 grey, 4 RGBA, ``None`` the file's own channels.
    An array or volume with another channel count than asked for is an error naming the file.
    """
    path = Path(path)
    suffix = check_suffix(path)
    if suffix in PIL_SUFFIXES:
        mode = _CHANNEL_MODES.get(channels) if channels is not None else None
        if channels is not None and mode is None:
            raise ValueError(f"`channels` must be 1, 3, 4 or None for {suffix} images, got {channels}.")
        array = _decoded(path, lambda p: _pil_array(p, mode))
        channels_last = True
    elif suffix in NUMPY_SUFFIXES:
        array, channels_last = _decoded(path, lambda p: np.load(p, allow_pickle=False)), False
    else:
        array, channels_last = _decoded(path, _nifti_tensor), False
    if array.ndim < 2:
        raise ImageDecodeError(
            f"Cannot decode {path}: expected an image of at least 2 dimensions, got {array.ndim} (shape "
            f"{tuple(array.shape)}).",
            path,
        )
    tensor = _as_image_tensor(_numeric(path, array), channels_last=channels_last)
    if tensor.ndim < 3:
        raise ImageDecodeError(
            f"Cannot decode {path}: expected an image of at least 2 dimensions, got {tensor.ndim}."
        )
    if tensor.numel() == 0:
        raise ImageDecodeError(
            f"Cannot decode {path}: it holds no pixels (shape {tuple(tensor.shape)}, channels first).", path
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ImageDecodeError(
            f"Cannot decode {path}: {bad} of its {tensor.numel()} values are NaN or infinite. Replace them (for "
            "example with numpy.nan_to_num) or drop the file.",
            path,
        )
    if channels is not None and tensor.shape[0] != channels:
        if tensor.shape[0] == 1:
            return tensor.expand(channels, *tensor.shape[1:]).contiguous()
        raise ImageDecodeError(
            f"Cannot decode {path} as {channels} channel(s): it has {tensor.shape[0]} (shape "
            f"{tuple(tensor.shape)}, channels first). Set `channels=None` to keep them, or convert the file."
        )
    return tensor


def read_mask(path: str | Path) -> torch.Tensor:
    """The label mask at ``path`` as ``LongTensor[*spatial]`` (a leading channel of size 1 is dropped).

    Palette PNGs give their palette indices; RGB masks are an error (encode classes as one channel).
    """
    path = Path(path)
    suffix = check_suffix(path)
    if suffix in PIL_SUFFIXES:
        array = _decoded(path, lambda p: _pil_array(p, None, mask=True))
        if isinstance(array, np.ndarray) and array.ndim == 3:
            raise ImageDecodeError(
                f"Cannot read {path} as a mask: it has {array.shape[2]} colour channels; a mask stores one "
                "class index per pixel (a grey or palette image, or an integer .npy)."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif suffix in NUMPY_SUFFIXES:
        array = _numeric(path, _decoded(path, lambda p: np.load(p, allow_pickle=False)))
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        tensor = _numeric(path, _decoded(path, _nifti_tensor))
    if tensor.ndim >= 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.numel() == 0:
        raise ImageDecodeError(
            f"Cannot read {path} as a mask: it holds no pixels (shape {tuple(tensor.shape)}).", path
        )
    if tensor.dtype.is_floating_point:
        if not bool(torch.isfinite(tensor).all()) or not torch.equal(tensor, tensor.round()):
            raise ImageDecodeError(
                f"Cannot read {path} as a mask: it holds non-integer values (fractions, NaN or infinity; dtype "
                f"{tensor.dtype}); masks hold class indices."
            )
    elif tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    if tensor.ndim not in (2, 3):
        raise ImageDecodeError(
            f"Cannot read {path} as a mask: shape {tuple(tensor.shape)}; expected [H, W] or [D, H, W]."
        )
    return tensor.long().contiguous()
