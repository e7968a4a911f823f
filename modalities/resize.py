"""Bilinear resize in numpy with the semantics of ``torch.nn.functional.interpolate``.

``mode="bilinear", align_corners=False, antialias=False``: output pixel ``i`` samples the input at
``(i + 0.5) * in / out - 0.5`` (clamped at 0), mixing the two nearest input pixels. Used for depth maps
and masks (spec 1.3), which upstream resizes with torch, not PIL.
"""

from __future__ import annotations

import numpy as np


def _source_taps(in_length: int, out_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the lower and upper input index and the weight of the upper one."""
    position = (np.arange(out_length, dtype=np.float64) + 0.5) * (in_length / out_length) - 0.5
    position = np.maximum(position, 0.0)
    lower = np.minimum(np.floor(position).astype(np.intp), in_length - 1)
    upper = np.minimum(lower + 1, in_length - 1)
    return lower, upper, position - lower


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D array ``(H, W) -> (height, width)``; computed in float64, returned as float64."""
    if image.ndim != 2:
        raise ValueError(f"resize_bilinear expects a 2-D array, got shape {image.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    image = image.astype(np.float64, copy=False)
    top, bottom, row_weight = _source_taps(image.shape[0], height)
    rows = image[top] * (1.0 - row_weight)[:, None] + image[bottom] * row_weight[:, None]
    left, right, col_weight = _source_taps(image.shape[1], width)
    return rows[:, left] * (1.0 - col_weight) + rows[:, right] * col_weight
