"""Bytes -> numpy array for every file format a modality may arrive in.

The format is sniffed from magic bytes (never from a file name or a client's content type), the pixel
count is checked from the header before any pixel is decoded, and every failure surfaces as a
:class:`~modalities.errors.ModalityError` with a stable code.

Output: ``uint8``/``uint16``/``float32`` (other integer dtypes from ``.npy``/TIFF are kept as stored),
shape ``(H, W)`` or ``(H, W, C)`` with C in {3, 4}. Palette images become RGB(A), 1-bit images
become 0/255 ``uint8``, the alpha of grey+alpha images is dropped (no modality uses it).
EXIF orientation is not applied: training read the pixels as stored, so serving must too.

``reduce_to=S`` (the service passes its model input size) bounds the memory of huge uploads: each axis
longer than ``REDUCTION_GAP * S`` is reduced while decoding by the integer factor that keeps it at least
that long, before any float conversion. JPEG decodes at 1/2, 1/4 or 1/8 scale (draft mode), other Pillow
images are box-averaged (``Image.reduce``), TIFF and ``.npy`` arrays keep every k-th pixel (they are mostly
depth or xyz maps, where averaging would blend foreground into background) and TIFF strips or tiles are
decoded one at a time. ``prepare`` then resizes from at least 8 S pixels per axis: on a noisy 12 MP photo the
model input moves by under one grey level on average, under five at worst (tests/modalities/test_decode.py).
Without ``reduce_to`` (training) nothing changes.
"""

from __future__ import annotations

import contextlib
import io
import math
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
# An axis is reduced only while it stays at least this many output sides long.
REDUCTION_GAP = 8

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


def reduction_factors(height: int, width: int, reduce_to: int | None) -> tuple[int, int]:
    """``(ky, kx)``: the integer factors that keep each axis at least ``REDUCTION_GAP * reduce_to`` long."""
    if reduce_to is None:
        return 1, 1
    if reduce_to < 1:
        raise ModalityError("bad_size", f"reduce_to must be a positive integer, got {reduce_to!r}")
    floor = REDUCTION_GAP * reduce_to
    return max(1, height // floor), max(1, width // floor)


def decode_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None
) -> np.ndarray:
    """Decode one modality file held in memory; see the module docstring for the output contract and
    for ``reduce_to``."""
    data = bytes(data)
    if not data:
        raise ModalityError("empty_file", "the file is empty")
    file_format = sniff_format(data)
    if file_format is None:
        raise ModalityError(
            "unsupported_format",
            "unrecognised file format; expected PNG, JPEG, TIFF, BMP or a NumPy .npy array",
        )
    array = _DECODERS[file_format](data, max_pixels, reduce_to)
    return canonical_array(array, max_pixels=max_pixels)


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a file :func:`decode_bytes` accepts, from its header alone: the size of the
    upload itself, whatever ``reduce_to`` later decodes (the service returns heatmaps at this size)."""
    file_format = sniff_format(bytes(data[:8]))
    try:
        if file_format == "npy":
            return tuple(_npy_header(io.BytesIO(data))[0][:2])
        if file_format == "tiff":
            # As in _decode_tiff, Pillow reads what tifffile cannot.
            with contextlib.suppress(Exception), tifffile.TiffFile(io.BytesIO(data)) as tiff:
                return tuple(tiff.series[0].shape[:2])
        if file_format is not None:
            with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[file_format]]) as image:
                return image.height, image.width
    except ModalityError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile headers make decoder plugins raise almost any type
        raise ModalityError("corrupt_image", f"cannot read the image size: {exc}") from None
    raise ModalityError("unsupported_format", "unrecognised file format; cannot read the image size")


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


def _decode_pillow(data: bytes, max_pixels: int, reduce_to: int | None, *, file_format: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[file_format]]) as image:
            check_pixel_count(image.height, image.width, max_pixels)
            ky, kx = reduction_factors(image.height, image.width, reduce_to)
            if file_format == "jpeg" and max(ky, kx) > 1:
                # The DCT decodes straight at the largest scale (1/2 .. 1/8) still as large as requested.
                image.draft(None, (math.ceil(image.width / kx), math.ceil(image.height / ky)))
            # load() decodes every pixel now; with LOAD_TRUNCATED_IMAGES left False a short stream raises.
            image.load()
            return _pillow_to_array(image, reduction_factors(image.height, image.width, reduce_to))
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


def _pillow_to_array(image: Image.Image, factors: tuple[int, int] = (1, 1)) -> np.ndarray:
    """A loaded image -> array; ``factors`` ``(ky, kx)`` box-average it first (before numpy sees a pixel)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in _MODE_CONVERSIONS:
        image = image.convert(_MODE_CONVERSIONS[mode])
    if max(factors) > 1:
        image = image.reduce((factors[1], factors[0]))
    array = np.asarray(image)
    # Pillow widens some 16-bit files to 32-bit "I"; narrow back so 16-bit scaling applies.
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
        array = array.astype(np.uint16)
    return array


def _decode_tiff(data: bytes, max_pixels: int, reduce_to: int | None) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            series = tiff.series[0]
            check_dtype(np.dtype(series.dtype))
            check_shape(series.shape, max_pixels=max_pixels)
            factors = reduction_factors(series.shape[0], series.shape[1], reduce_to)
            if max(factors) > 1 and len(series.pages) == 1:
                return _subsampled_page(series.pages[0], tuple(series.shape), factors)
            return series.asarray()[:: factors[0], :: factors[1]]
    except ModalityError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile lacks some codecs (LZW and PackBits need
        # imagecodecs) and raises many types on corrupt files: let Pillow try before giving up
        tifffile_error = str(exc) or type(exc).__name__
    try:
        return _decode_pillow(data, max_pixels, reduce_to, file_format="tiff")
    except ModalityError as exc:
        if exc.code == "too_many_pixels":
            raise
        raise ModalityError("unreadable_tiff", f"cannot read TIFF: {tifffile_error}") from None


def _subsampled_page(page: tifffile.TiffPage, shape: tuple[int, ...], factors: tuple[int, int]) -> np.ndarray:
    """Every ``ky``-th row and ``kx``-th column of a one-page image, decoding one strip or tile at a time.

    Equals ``page.asarray()[::ky, ::kx]`` without ever holding the full image.
    """
    (ky, kx), (height, width) = factors, shape[:2]
    out = np.zeros((-(-height // ky), -(-width // kx), *shape[2:]), dtype=page.dtype)
    for segment, (_, _, row, col, _), _ in page.segments(maxworkers=1):
        if segment is None:  # an empty strip or tile stands for zeros
            continue
        first_row, first_col = -row % ky, -col % kx
        block = segment[0, : height - row, : width - col]  # [length, width, samples], cut at the image edge
        block = block.reshape(*block.shape[:2], *shape[2:])
        picked = block[first_row::ky, first_col::kx]
        top, left = (row + first_row) // ky, (col + first_col) // kx
        out[top : top + picked.shape[0], left : left + picked.shape[1]] = picked
    return out


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy stream, which is left at the first data byte."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(stream)
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as exc:  # noqa: BLE001 - the header parser (ast, tokenize) raises ValueError,
        # SyntaxError, TokenError ... on hostile input
        raise ModalityError("bad_npy", f"malformed .npy header: {exc}") from None


def _decode_npy(data: bytes, max_pixels: int, reduce_to: int | None) -> np.ndarray:
    stream = io.BytesIO(data)
    shape, fortran_order, dtype = _npy_header(stream)
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
    ky, kx = reduction_factors(shape[0], shape[1], reduce_to)
    # A view of the upload's bytes: canonical_array copies only the pixels kept.
    return flat.reshape(shape, order="F" if fortran_order else "C")[::ky, ::kx]


_DECODERS: dict[str, Callable[[bytes, int, int | None], np.ndarray]] = {
    "png": partial(_decode_pillow, file_format="png"),
    "jpeg": partial(_decode_pillow, file_format="jpeg"),
    "bmp": partial(_decode_pillow, file_format="bmp"),
    "tiff": _decode_tiff,
    "npy": _decode_npy,
}
