"""The array contract every decoded modality meets: ``(H, W)`` or ``(H, W, C)`` with C in {3, 4}.

Shared by the decoders (checked on the header's shape before pixels are read) and by ``prepare``
(arrays from data adapters never went through a decoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modalities.errors import ModalityError

CHANNEL_COUNTS = (1, 3, 4)

# Not image samples: booleans carry no intensity scale, the rest are not numbers at all.
_REJECTED_DTYPE_KINDS = {
    "b": "boolean",
    "c": "complex",
    "O": "object",
    "V": "structured/void",
    "U": "string",
    "S": "bytes",
    "M": "datetime",
    "m": "timedelta",
}


def check_shape(shape: Sequence[int], *, max_pixels: int | None = None) -> None:
    """Reject shapes outside the contract; ``max_pixels`` bounds H*W (None: unbounded)."""
    if len(shape) not in (2, 3):
        raise ModalityError(
            "bad_array_rank",
            f"expected a 2-D (H, W) or 3-D (H, W, C) array, got {len(shape)}-D shape {tuple(shape)}",
        )
    if len(shape) == 3 and shape[2] not in CHANNEL_COUNTS:
        raise ModalityError(
            "bad_channel_count",
            f"expected 1, 3 or 4 channels in the last axis (H, W, C), got shape {tuple(shape)}",
        )
    height, width = int(shape[0]), int(shape[1])
    if height == 0 or width == 0:
        raise ModalityError("empty_array", f"image has no pixels (shape {tuple(shape)})")
    check_pixel_count(height, width, max_pixels)


def check_pixel_count(height: int, width: int, max_pixels: int | None) -> None:
    """Raise ``too_many_pixels`` when ``height * width`` exceeds ``max_pixels``."""
    if max_pixels is not None and height * width > max_pixels:
        raise ModalityError(
            "too_many_pixels",
            f"image is {width}x{height} = {height * width} pixels, the limit is {max_pixels}",
        )


def check_dtype(dtype: np.dtype) -> None:
    """Reject dtypes that are not real numbers (bool, complex, object, structured, text, time)."""
    if dtype.fields is not None or dtype.hasobject:
        raise ModalityError(
            "bad_array_dtype", f"arrays of {dtype} are not accepted (plain numeric arrays only)"
        )
    kind_name = _REJECTED_DTYPE_KINDS.get(dtype.kind)
    if kind_name is not None:
        raise ModalityError(
            "bad_array_dtype",
            f"{kind_name} arrays ({dtype}) are not accepted; use uint8, uint16 or float32",
        )


def canonical_array(array: np.ndarray, *, max_pixels: int | None = None) -> np.ndarray:
    """Validate ``array`` and return it in canonical form.

    Floats become float32, byte order becomes native, a trailing single channel is dropped
    (``(H, W, 1) -> (H, W)``); integer arrays keep their dtype. The result owns its memory.
    """
    check_dtype(array.dtype)
    check_shape(array.shape, max_pixels=max_pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, which prepare then rejects
            return array.astype(np.float32)
    return array.astype(array.dtype.newbyteorder("="))
