"""Graph outputs -> decision and heatmap PNGs (base64), fused and per modality."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from bundle.manifest import DomainSpec, Normalization
from service.errors import ServiceError

# Anchor points of a blue -> cyan -> yellow -> red ramp (value in [0, 1] -> RGB).
_RAMP_POSITIONS = np.array([0.0, 0.35, 0.65, 1.0])
_RAMP_COLOURS = np.array([[0, 0, 128], [0, 200, 255], [255, 220, 0], [200, 0, 0]], dtype=np.float64)
OVERLAY_ALPHA = 0.5


def is_anomalous(image_score: float, threshold: float) -> bool:
    return image_score > threshold


def heat_scale(threshold: float, anomaly_map: np.ndarray) -> float:
    """Old bundles' top of the ramp (they record no colour range): twice the threshold, so it sits mid-ramp.

    A non-positive threshold carries no scale; the map's own maximum is used instead.
    """
    if threshold > 0:
        return 2.0 * threshold
    peak = float(np.max(anomaly_map))
    return peak if peak > 0 else 1.0


def colour_ranges(
    spec: DomainSpec, anomaly_map: np.ndarray
) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    """(fused range, {modality: range}): the manifest's normal-image ranges, else 0 .. heat_scale for every map."""
    if spec.heatmap_range is not None:
        return spec.heatmap_range.fused, dict(spec.heatmap_range.modalities)
    legacy = (0.0, heat_scale(spec.threshold, anomaly_map))
    return legacy, {m.name: legacy for m in spec.modalities}


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


def overlay_base(spec: DomainSpec) -> int:
    """Index of the first rgb/gray modality, the picture heatmaps are blended onto."""
    for index, modality in enumerate(spec.modalities):
        if modality.kind in ("rgb", "gray"):
            return index
    raise ServiceError(422, "overlay_unavailable", "overlay needs an rgb or gray modality; use heatmap=png")


def png_base64(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_heatmaps(
    anomaly_map: np.ndarray,
    modality_maps: np.ndarray,
    spec: DomainSpec,
    mode: str,
    *,
    sample: np.ndarray,
    normalization: Normalization,
) -> dict | None:
    """``{"fused": b64, "modalities": {name: b64}}`` for ``png``/``overlay``; ``None`` for ``none``.

    ``anomaly_map`` ``[S, S]``, ``modality_maps`` ``[M, S, S]``, ``sample`` the prepared input ``[M, 3, S, S]``.
    """
    if mode == "none":
        return None
    fused_range, modality_ranges = colour_ranges(spec, anomaly_map)
    background = None
    if mode == "overlay":
        background = display_image(sample[overlay_base(spec)], normalization).astype(np.float64)

    def encode(values: np.ndarray, bounds: tuple[float, float]) -> str:
        colours = colourise(values, *bounds)
        if background is not None:
            colours = (OVERLAY_ALPHA * colours + (1 - OVERLAY_ALPHA) * background).round().astype(np.uint8)
        return png_base64(colours)

    return {
        "fused": encode(anomaly_map, fused_range),
        "modalities": {
            m.name: encode(modality_maps[i], modality_ranges[m.name]) for i, m in enumerate(spec.modalities)
        },
    }
