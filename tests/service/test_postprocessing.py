"""Heatmap colouring: the manifest's normal-image range maps the baseline to the darkest colour and defects
to the brightest, per map; bundles without ranges keep the old 0 .. 2 x threshold ramp."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from bundle.manifest import DomainSpec, Normalization
from service.postprocessing import colourise, render_heatmaps

DARKEST = (0, 0, 128)
BRIGHTEST = (200, 0, 0)
SIZE = 8


def _spec(heatmap_range: dict | None) -> DomainSpec:
    return DomainSpec.model_validate(
        {
            "index": 0,
            "modalities": [
                {"name": "rgb", "kind": "rgb"},
                {"name": "depth", "kind": "depth", "depth_scale": 1.0},
            ],
            "threshold": 1.2,
            "threshold_method": {"method": "normal_quantile", "n_images": 6, "split": "holdout"},
            "heatmap_range": heatmap_range,
        }
    )


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _render(spec: DomainSpec, fused: np.ndarray, modality_maps: np.ndarray) -> dict:
    sample = np.zeros((2, 3, SIZE, SIZE), dtype=np.float32)
    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return render_heatmaps(fused, modality_maps, spec, "png", sample=sample, normalization=normalization)


def test_low_is_darkest_and_above_high_is_brightest() -> None:
    colours = colourise(np.array([[0.9, 1.0, 1.5, 2.0, 3.0]]), 1.0, 2.0)
    assert [tuple(c) for c in colours[0]] == [DARKEST, DARKEST, tuple(colours[0, 2]), BRIGHTEST, BRIGHTEST]
    assert tuple(colours[0, 2]) not in (DARKEST, BRIGHTEST)


def test_each_map_is_coloured_on_its_own_range() -> None:
    spec = _spec({"fused": [1.0, 1.4], "modalities": {"rgb": [0.5, 0.7], "depth": [3.0, 5.0]}})
    fused = np.full((SIZE, SIZE), 1.0, dtype=np.float32)  # the normal baseline everywhere ...
    fused[2:4, 2:4] = 1.6  # ... and a defect above the fused range
    modality_maps = np.stack([np.full((SIZE, SIZE), 0.5), np.full((SIZE, SIZE), 5.0)]).astype(np.float32)
    heatmaps = _render(spec, fused, modality_maps)
    fused_png = _decode(heatmaps["fused"])
    assert tuple(fused_png[0, 0]) == DARKEST and tuple(fused_png[3, 3]) == BRIGHTEST
    assert tuple(_decode(heatmaps["modalities"]["rgb"])[0, 0]) == DARKEST
    assert tuple(_decode(heatmaps["modalities"]["depth"])[0, 0]) == BRIGHTEST


def test_bundle_without_ranges_keeps_the_zero_to_twice_threshold_ramp() -> None:
    fused = np.zeros((SIZE, SIZE), dtype=np.float32)
    fused[0, 0] = 2 * 1.2
    heatmaps = _render(_spec(None), fused, np.stack([fused, fused]))
    for b64 in (heatmaps["fused"], *heatmaps["modalities"].values()):
        png = _decode(b64)
        assert tuple(png[0, 0]) == BRIGHTEST and tuple(png[5, 5]) == DARKEST
