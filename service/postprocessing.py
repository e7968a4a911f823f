"""Graph outputs -> decision, normalised score and heatmap PNGs (base64), fused and per modality.

Heatmaps come at the resolution of the upload (``heatmap_size=input``, the default) or at the model's
S x S (``heatmap_size=model``). At input resolution they take the size of the domain's primary modality's
file (the first rgb/gray one, the picture overlays are blended onto; the first modality when there is
none), read from its header because huge uploads are reduced while decoding, and shrunk with its aspect
ratio kept to at most MAX_HEATMAP_PIXELS so a huge upload cannot make the response huge. Each map is
coloured at S x S and the colours are resized bilinearly, which equals colouring the bilinearly resized
map except across the ramp's anchor points and costs a fraction of the memory.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping

import numpy as np
from PIL import Image

from bundle.manifest import DomainSpec, Normalization
from modalities.decode import image_size
from modalities.errors import ModalityError
from service.errors import ServiceError, from_modality_error

# Anchor points of a blue -> cyan -> yellow -> red ramp (value in [0, 1] -> RGB).
_RAMP_POSITIONS = np.array([0.0, 0.35, 0.65, 1.0])
_RAMP_COLOURS = np.array([[0, 0, 128], [0, 200, 255], [255, 220, 0], [200, 0, 0]], dtype=np.float64)
OVERLAY_ALPHA = 0.5
OVERLAY_KINDS = ("rgb", "gray")
# 2048 x 2048: a full-resolution heatmap of a camera image, while 1 + M PNGs stay a few MB per response.
MAX_HEATMAP_PIXELS = 2048 * 2048


def is_anomalous(image_score: float, threshold: float) -> bool:
    return image_score > threshold


def colourise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``[H, W]`` map -> ``uint8 [H, W, 3]`` colours: ``low`` and below darkest, ``high`` and above brightest."""
    unit = np.clip(np.nan_to_num((values - low) / (high - low), nan=0.0), 0.0, 1.0)
    channels = [np.interp(unit, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def display_image(prepared: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Undo the ImageNet normalisation of one prepared rgb/gray modality ``[3, S, S]`` -> ``uint8 [S, S, 3]``."""
    mean = np.asarray(normalization.mean).reshape(3, 1, 1)
    std = np.asarray(normalization.std).reshape(3, 1, 1)
    unit = np.clip(prepared * std + mean, 0.0, 1.0)
    return (unit.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)


def display_upload(image: np.ndarray) -> np.ndarray:
    """A decoded rgb/gray upload (uint8, uint16 or float in [0, 1]; gray, RGB or RGBA) -> ``uint8 [H, W, 3]``."""
    if image.ndim == 3:
        image = image[:, :, :3]
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def overlay_base(spec: DomainSpec) -> int | None:
    """Index of the first rgb/gray modality, the picture heatmaps are blended onto (None without one)."""
    return next((i for i, m in enumerate(spec.modalities) if m.kind in OVERLAY_KINDS), None)


def heatmap_shape(
    spec: DomainSpec, files: Mapping[str, bytes], size: str, model_side: int
) -> tuple[int, int]:
    """(height, width) of the heatmaps: S x S for ``model``; for ``input`` the primary modality file's,
    at most MAX_HEATMAP_PIXELS with its aspect ratio kept."""
    if size == "model":
        return model_side, model_side
    primary = spec.modalities[overlay_base(spec) or 0].name
    try:
        height, width = image_size(files[primary])
    except ModalityError as exc:
        raise from_modality_error(exc, primary) from None
    shrink = min(1.0, math.sqrt(MAX_HEATMAP_PIXELS / (height * width)))
    return max(1, math.floor(height * shrink)), max(1, math.floor(width * shrink))


def resized(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``uint8 [h, w, 3]`` -> ``uint8 [*shape, 3]``, bilinear (unchanged when already that size)."""
    if rgb.shape[:2] == shape:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def png_base64(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_heatmaps(
    anomaly_map: np.ndarray,
    modality_maps: np.ndarray,
    spec: DomainSpec,
    mode: str,
    shape: tuple[int, int],
    *,
    sample: np.ndarray,
    uploads: Mapping[str, np.ndarray],
    normalization: Normalization,
) -> dict | None:
    """``{"fused": b64, "modalities": {name: b64}, "height", "width"}`` of ``shape`` (heatmap_shape) for
    ``png``/``overlay``; ``None`` for ``none``. Colours follow the manifest's per-map ranges (normal median
    darkest, threshold level mid-ramp); overlays blend onto the prepared picture at model size, else onto
    the decoded upload.

    ``anomaly_map`` ``[S, S]``, ``modality_maps`` ``[M, S, S]``, ``sample`` the prepared input ``[M, 3, S, S]``,
    ``uploads`` the decoded modalities by name.
    """
    if mode == "none":
        return None
    background = None
    if mode == "overlay":
        base = overlay_base(spec)
        if base is None:
            raise ServiceError(
                422, "overlay_unavailable", "overlay needs an rgb or gray modality; use heatmap=png"
            )
        picture = (
            display_image(sample[base], normalization)
            if shape == anomaly_map.shape
            else display_upload(uploads[spec.modalities[base].name])
        )
        background = resized(picture, shape).astype(np.float32)

    def encode(values: np.ndarray, bounds: tuple[float, float]) -> str:
        colours = resized(colourise(values, *bounds), shape)
        if background is not None:
            colours = (OVERLAY_ALPHA * colours + (1 - OVERLAY_ALPHA) * background).round().astype(np.uint8)
        return png_base64(colours)

    ranges = spec.heatmap_range
    return {
        "fused": encode(anomaly_map, ranges.fused),
        "modalities": {
            m.name: encode(modality_maps[i], ranges.modalities[m.name]) for i, m in enumerate(spec.modalities)
        },
        "height": int(shape[0]),
        "width": int(shape[1]),
    }
