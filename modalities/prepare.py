"""Decoded array -> model input ``float32 (3, S, S)``, per modality kind (docs/DESIGN.md, spec 1.3).

- ``rgb``: 8-bit / 16-bit / float-in-[0, 1] image, grey replicated, alpha dropped; PIL bilinear
  (antialiased) resize, then ImageNet mean/std.
- ``gray``: the same, after reducing colour input to luminance (PIL's ITU-R 601-2 weights).
- ``depth``: a ``(H, W)`` map or ``(H, W, 3)`` xyz (z = channel 2). Foreground = finite and > 0;
  centred on the foreground mean with the background set to that mean (so it becomes exactly 0),
  times ``depth_scale``, torch-style bilinear resize without antialias, no ImageNet normalisation.

Integer input must be 8- or 16-bit and is read as a fraction of full scale (/255, /65535) for every
kind, so an 8-bit depth PNG and a 16-bit one of the same scene give the same model input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from modalities.arrays import canonical_array, check_dtype, check_shape
from modalities.errors import ModalityError
from modalities.kinds import IMAGENET_MEAN, IMAGENET_STD, ModalitySpec
from modalities.resize import resize_bilinear

# PIL's "L" conversion weights (ITU-R 601-2), reused for 16-bit/float input so every path agrees.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def prepare(
    array: np.ndarray,
    spec: ModalitySpec,
    size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Turn one decoded modality into model input ``float32 (3, size, size)``.

    ``mean``/``std`` apply to ``rgb`` and ``gray`` only. Raises :class:`ModalityError` whose message
    names the modality.
    """
    _check_size(size)
    mean_column, std_column = _normalisation(mean, std)
    try:
        image = canonical_array(_require_ndarray(array))
        if spec.kind == "depth":
            planes = _prepare_depth(image, spec.depth_scale, size)
        else:
            planes = (_resize_unit_image(image, spec.kind, size) - mean_column) / std_column
    except ModalityError as exc:
        raise ModalityError(exc.code, f"modality {spec.name!r} ({spec.kind}): {exc.message}") from None
    return np.ascontiguousarray(planes, dtype=np.float32)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth mask ``(H, W[, C])`` -> ``bool (size, size)``: first channel, bilinear resize, ``> 0``.

    Accepts 0/255, 0/1, bool and class-id masks; the bilinear step slightly dilates (spec 1.3).
    """
    _check_size(size)
    mask = _require_ndarray(mask)
    if mask.dtype != np.bool_:
        check_dtype(mask.dtype)
    check_shape(mask.shape)
    plane = (mask[:, :, 0] if mask.ndim == 3 else mask).astype(np.float64)
    if not np.isfinite(plane).all():
        raise ModalityError("non_finite_values", "mask contains NaN or infinite values")
    return resize_bilinear(plane, size, size) > 0


def stack_sample(
    arrays: Mapping[str, np.ndarray],
    specs: Sequence[ModalitySpec],
    size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Prepare every modality of one sample: ``float32 [M, 3, size, size]`` in ``specs`` order."""
    names = [spec.name for spec in specs]
    if not names:
        raise ModalityError("invalid_spec", "a sample needs at least one modality spec")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ModalityError(
            "invalid_spec", f"modality names repeat in the spec list: {', '.join(duplicated)}"
        )
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModalityError(
            "missing_modality", f"missing modality {', '.join(missing)} (expected {', '.join(names)})"
        )
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ModalityError(
            "unexpected_modality", f"unexpected modality {', '.join(extra)} (expected {', '.join(names)})"
        )
    return np.stack([prepare(arrays[spec.name], spec, size, mean=mean, std=std) for spec in specs])


def _require_ndarray(array: object) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ModalityError("bad_array_dtype", f"expected a numpy array, got {type(array).__name__}")
    return array


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ModalityError("bad_size", f"output size must be a positive integer, got {size!r}")


def _normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std as ``(3, 1, 1)`` columns, validated."""
    mean_array = np.asarray(mean, dtype=np.float64)
    std_array = np.asarray(std, dtype=np.float64)
    if mean_array.shape != (3,) or std_array.shape != (3,):
        raise ModalityError("bad_normalisation", f"mean and std need 3 values each, got {mean!r} and {std!r}")
    if not (np.isfinite(mean_array).all() and np.isfinite(std_array).all() and (std_array > 0).all()):
        raise ModalityError(
            "bad_normalisation", f"mean must be finite and std finite and > 0, got {mean!r}, {std!r}"
        )
    return mean_array[:, None, None], std_array[:, None, None]


def _resize_unit_image(image: np.ndarray, kind: str, size: int) -> np.ndarray:
    """``rgb``/``gray`` image -> ``float64 (3, size, size)`` in [0, 1] (before normalisation)."""
    if image.ndim == 3:
        image = image[:, :, :3]  # alpha is not part of the model input
    if image.dtype == np.uint8:
        # The 8-bit path is exactly the training recipe: PIL image, PIL bilinear resize, /255.
        pil_image = Image.fromarray(np.ascontiguousarray(image))
        if kind == "gray" and pil_image.mode == "RGB":
            pil_image = pil_image.convert("L")
        resized = (
            np.asarray(pil_image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        )
    else:
        unit = _unit_range(image)
        if kind == "gray" and unit.ndim == 3:
            unit = unit @ _LUMA_WEIGHTS
        planes = unit[:, :, None] if unit.ndim == 2 else unit
        resized = np.stack(
            [_resize_float_plane(planes[:, :, channel], size) for channel in range(planes.shape[2])], axis=-1
        )
    if resized.ndim == 2 or resized.shape[2] == 1:
        resized = resized.reshape(size, size, 1).repeat(3, axis=2)
    return resized.transpose(2, 0, 1)


def _resize_float_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """PIL bilinear (antialiased) resize of one float plane, in PIL's 32-bit float mode."""
    pil_plane = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(pil_plane.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)


def _unit_range(image: np.ndarray) -> np.ndarray:
    """16-bit or float image -> float64 in [0, 1]; anything else is rejected."""
    if image.dtype in _FULL_SCALE:
        return image.astype(np.float64) / _FULL_SCALE[image.dtype]
    if image.dtype.kind != "f":
        raise ModalityError(
            "bad_array_dtype", f"image arrays must be uint8, uint16 or float in [0, 1], got {image.dtype}"
        )
    if not np.isfinite(image).all():
        raise ModalityError("non_finite_values", "image contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise ModalityError(
            "bad_value_range",
            f"float images must lie in [0, 1], got values in [{low:.6g}, {high:.6g}] (8-bit data: use uint8)",
        )
    return image.astype(np.float64)


def _prepare_depth(image: np.ndarray, depth_scale: float, size: int) -> np.ndarray:
    """Depth map or xyz -> ``float64 (3, size, size)``, centred and scaled (spec 1.3)."""
    depth = resize_bilinear(centre_depth(depth_plane(image), depth_scale), size, size)
    return np.broadcast_to(depth, (3, size, size))


def depth_plane(image: np.ndarray) -> np.ndarray:
    """The depth values of a canonical array: ``(H, W)`` as is, ``(H, W, 3)`` xyz -> z; float64."""
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ModalityError(
                "bad_channel_count",
                f"depth must be an (H, W) map or an (H, W, 3) xyz array, got shape {image.shape}",
            )
        image = image[:, :, 2]
    if image.dtype in _FULL_SCALE:
        return image.astype(np.float64) / _FULL_SCALE[image.dtype]
    if image.dtype.kind != "f":
        raise ModalityError(
            "bad_array_dtype",
            f"depth arrays must be uint8, uint16 or float, got {image.dtype} (save metric depth as float32)",
        )
    return image.astype(np.float64)


def centre_depth(depth: np.ndarray, depth_scale: float) -> np.ndarray:
    """``(depth - foreground mean) * depth_scale`` on the foreground (finite, > 0), 0 elsewhere.

    Without foreground (an all-zero or all-NaN map) the result is all zeros rather than NaN.
    """
    foreground = np.isfinite(depth) & (depth > 0)
    if not foreground.any():
        return np.zeros(depth.shape, dtype=np.float64)
    foreground_mean = depth[foreground].mean()
    return np.where(foreground, depth - foreground_mean, 0.0) * depth_scale
