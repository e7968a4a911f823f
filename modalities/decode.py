"""Bytes -> numpy array for every file format a modality may arrive in.

The format is sniffed from magic bytes (never from a file name or a client's content type), the pixel
count is checked from the header before any pixel is decoded, and every failure surfaces as a
:class:`~modalities.errors.ModalityError` with a stable code.

Output: ``uint8``/``uint16``/``float32`` (other integer dtypes from ``.npy``/TIFF are kept as stored),
shape ``(H, W)`` or ``(H, W, C)`` with C in {3, 4}. Palette images become RGB(A), 1-bit images
become 0/255 ``uint8``, the alpha of grey+alpha images is dropped (no modality uses it).
EXIF orientation is not applied: training read the pixels as stored, so serving must too.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from os import PathLike
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from modalities.arrays import canonical_array, check_dtype, check_pixel_count, check_shape
from modalities.errors import ModalityError

DEFAULT_MAX_PIXELS = 40_000_000

_MAGIC_TO_FORMAT: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
    (b"BM", "bmp"),
)
_PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF"}

# Pillow modes that numpy cannot represent as one of our layouts, and what they become.
_MODE_CONVERSIONS = {
    "1": "L",
    "LA": "L",
    "La": "L",
    "PA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def sniff_format(data: bytes) -> str | None:
    """``"png" | "jpeg" | "tiff" | "bmp" | "npy"`` from the leading bytes, or None if unknown."""
    for magic, name in _MAGIC_TO_FORMAT:
        if data.startswith(magic):
            return name
    return None


def decode_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one modality file held in memory; see the module docstring for the output contract."""
    data = bytes(data)
    if not data:
        raise ModalityError("empty_file", "the file is empty")
    file_format = sniff_format(data)
    if file_format is None:
        raise ModalityError(
            "unsupported_format",
            "unrecognised file format; expected PNG, JPEG, TIFF, BMP or a NumPy .npy array",
        )
    array = _DECODERS[file_format](data, max_pixels)
    return canonical_array(array, max_pixels=max_pixels)


def read_file(path: str | PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`decode_bytes` of a file's contents."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModalityError("file_not_found", f"no such file: {path}") from None
    except OSError as exc:
        raise ModalityError("unreadable_file", f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_bytes(data, max_pixels=max_pixels)


def _decode_pillow(data: bytes, max_pixels: int, *, file_format: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[file_format]]) as image:
            check_pixel_count(image.height, image.width, max_pixels)
            # load() decodes every pixel now; with LOAD_TRUNCATED_IMAGES left False a short stream raises.
            image.load()
            return _pillow_to_array(image)
    except ModalityError:
        raise
    except Image.DecompressionBombError as exc:
        raise ModalityError("too_many_pixels", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes make decoder plugins raise almost any type
        detail = str(exc) or type(exc).__name__
        if "truncated" in detail.lower():
            raise ModalityError(
                "truncated_image", f"{file_format.upper()} data ends early: {detail}"
            ) from None
        raise ModalityError("corrupt_image", f"cannot decode {file_format.upper()} data: {detail}") from None


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in _MODE_CONVERSIONS:
        image = image.convert(_MODE_CONVERSIONS[mode])
    array = np.asarray(image)
    # Pillow widens some 16-bit files to 32-bit "I"; narrow back so 16-bit scaling applies.
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
        array = array.astype(np.uint16)
    return array


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            series = tiff.series[0]
            check_dtype(np.dtype(series.dtype))
            check_shape(series.shape, max_pixels=max_pixels)
            return series.asarray()
    except ModalityError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile lacks some codecs (LZW and PackBits need
        # imagecodecs) and raises many types on corrupt files: let Pillow try before giving up
        tifffile_error = str(exc) or type(exc).__name__
    try:
        return _decode_pillow(data, max_pixels, file_format="tiff")
    except ModalityError as exc:
        if exc.code == "too_many_pixels":
            raise
        raise ModalityError("unreadable_tiff", f"cannot read TIFF: {tifffile_error}") from None


def _decode_npy(data: bytes, max_pixels: int) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as exc:  # noqa: BLE001 - the header parser (ast, tokenize) raises ValueError,
        # SyntaxError, TokenError ... on hostile input
        raise ModalityError("bad_npy", f"malformed .npy header: {exc}") from None
    if dtype.hasobject:
        raise ModalityError("bad_array_dtype", "object (pickled) .npy arrays are not accepted")
    check_dtype(dtype)
    check_shape(shape, max_pixels=max_pixels)
    count = int(np.prod(shape))
    offset = stream.tell()
    if len(data) - offset < count * dtype.itemsize:
        raise ModalityError(
            "bad_npy",
            f".npy data is truncated: header promises {count * dtype.itemsize} bytes, file has {len(data) - offset}",
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


_DECODERS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    "png": partial(_decode_pillow, file_format="png"),
    "jpeg": partial(_decode_pillow, file_format="jpeg"),
    "bmp": partial(_decode_pillow, file_format="bmp"),
    "tiff": _decode_tiff,
    "npy": _decode_npy,
}
