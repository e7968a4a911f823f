"""Heatmap colouring and size: the manifest's normal-image range maps the baseline to the darkest colour and
defects to the brightest, per map; heatmaps come at the upload's resolution (bounded) or the model's."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from bundle.manifest import DomainSpec, Normalization
from service import postprocessing
from service.errors import ServiceError
from service.postprocessing import colourise, display_upload, heatmap_shape, render_heatmaps

DARKEST = (0, 0, 128)
BRIGHTEST = (200, 0, 0)
SIZE = 8
NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _spec(heatmap_range: dict, first_kind: str = "rgb") -> DomainSpec:
    return DomainSpec.model_validate(
        {
            "index": 0,
            "modalities": [
                {"name": "rgb", "kind": first_kind} | ({"depth_scale": 1.0} if first_kind == "depth" else {}),
                {"name": "depth", "kind": "depth", "depth_scale": 1.0},
            ],
            "threshold": 1.2,
            "threshold_method": {"method": "normal_quantile", "n_images": 6, "split": "holdout"},
            "score_range": [1.0, 1.4],
            "heatmap_range": heatmap_range,
        }
    )


RANGES = {"fused": [1.0, 1.4], "modalities": {"rgb": [0.5, 0.7], "depth": [3.0, 5.0]}}


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _uploads(height: int, width: int) -> dict[str, np.ndarray]:
    return {
        "rgb": np.full((height, width, 3), 200, dtype=np.uint8),
        "depth": np.ones((height // 2, width // 2), dtype=np.float32),
    }


def _render(spec: DomainSpec, fused: np.ndarray, modality_maps: np.ndarray, **options) -> dict:
    sample = np.zeros((2, 3, SIZE, SIZE), dtype=np.float32)
    arguments = {"mode": "png", "shape": (SIZE, SIZE), "uploads": _uploads(SIZE, SIZE)} | options
    return render_heatmaps(
        fused,
        modality_maps,
        spec,
        arguments["mode"],
        arguments["shape"],
        sample=sample,
        uploads=arguments["uploads"],
        normalization=NORMALIZATION,
    )


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((height, width), dtype=np.float32))
    return buffer.getvalue()


def _xyz_tiff(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ones((height, width, 3), dtype=np.float32), photometric="rgb")
    return buffer.getvalue()


def _maps() -> tuple[np.ndarray, np.ndarray]:
    fused = np.full((SIZE, SIZE), 1.0, dtype=np.float32)  # the normal baseline everywhere ...
    fused[2:4, 2:4] = 1.6  # ... and a defect above the fused range
    modality_maps = np.stack([np.full((SIZE, SIZE), 0.5), np.full((SIZE, SIZE), 5.0)]).astype(np.float32)
    return fused, modality_maps


def test_low_is_darkest_and_above_high_is_brightest() -> None:
    colours = colourise(np.array([[0.9, 1.0, 1.5, 2.0, 3.0]]), 1.0, 2.0)
    assert [tuple(c) for c in colours[0]] == [DARKEST, DARKEST, tuple(colours[0, 2]), BRIGHTEST, BRIGHTEST]
    assert tuple(colours[0, 2]) not in (DARKEST, BRIGHTEST)


def test_each_map_is_coloured_on_its_own_range() -> None:
    heatmaps = _render(_spec(RANGES), *_maps())
    fused_png = _decode(heatmaps["fused"])
    assert tuple(fused_png[0, 0]) == DARKEST and tuple(fused_png[3, 3]) == BRIGHTEST
    assert tuple(_decode(heatmaps["modalities"]["rgb"])[0, 0]) == DARKEST
    assert tuple(_decode(heatmaps["modalities"]["depth"])[0, 0]) == BRIGHTEST


def test_heatmaps_are_resized_to_the_requested_shape_with_the_defect_in_place() -> None:
    heatmaps = _render(_spec(RANGES), *_maps(), shape=(60, 80), uploads=_uploads(60, 80))
    assert (heatmaps["height"], heatmaps["width"]) == (60, 80)
    fused = _decode(heatmaps["fused"])
    assert fused.shape == (60, 80, 3) and _decode(heatmaps["modalities"]["depth"]).shape == (60, 80, 3)
    # the defect at model rows/cols 2..3 of 8 lands at rows 15..30 / cols 20..40 of the upload
    assert tuple(fused[22, 30]) == BRIGHTEST and tuple(fused[50, 70]) == DARKEST


@pytest.mark.parametrize(
    ("first_kind", "files", "shape"),
    [
        ("rgb", {"rgb": _png(60, 80), "depth": _npy(10, 10)}, (60, 80)),
        ("rgb", {"rgb": _png(60, 80), "depth": _xyz_tiff(10, 10)}, (60, 80)),
        # without an image modality the first file sets the size, whatever its format
        ("depth", {"rgb": _npy(30, 20), "depth": _png(10, 10)}, (30, 20)),
        ("depth", {"rgb": _xyz_tiff(30, 20), "depth": _png(10, 10)}, (30, 20)),
    ],
)
def test_input_heatmaps_take_the_primary_files_size(first_kind: str, files: dict, shape: tuple) -> None:
    spec = _spec(RANGES, first_kind=first_kind)
    assert heatmap_shape(spec, files, "input", SIZE) == shape
    assert heatmap_shape(spec, files, "model", SIZE) == (SIZE, SIZE)


def test_overlay_needs_an_image_modality() -> None:
    with pytest.raises(ServiceError, match="overlay needs an rgb or gray modality"):
        _render(_spec(RANGES, first_kind="depth"), *_maps(), mode="overlay")


def test_huge_uploads_get_bounded_heatmaps_with_their_aspect_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postprocessing, "MAX_HEATMAP_PIXELS", 1200)
    assert heatmap_shape(_spec(RANGES), {"rgb": _png(300, 400)}, "input", SIZE) == (30, 40)


def test_input_size_overlay_blends_onto_the_upload_itself() -> None:
    uploads = _uploads(16, 24)
    uploads["rgb"][:, :12] = 0  # left half black, right half light grey: only the upload has this edge
    heatmaps = _render(_spec(RANGES), *_maps(), mode="overlay", shape=(16, 24), uploads=uploads)
    depth = _decode(heatmaps["modalities"]["depth"]).astype(int)  # one colour everywhere before blending
    assert depth.shape == (16, 24, 3)
    assert (depth[:, 12:] - depth[:, :12].mean(axis=(0, 1)) > 90).all()


@pytest.mark.parametrize(
    "image",
    [
        np.full((4, 5), 128, dtype=np.uint8),
        np.full((4, 5, 4), 128, dtype=np.uint8),
        np.full((4, 5, 3), 128 * 257, dtype=np.uint16),
        np.full((4, 5), 128 / 255, dtype=np.float32),
    ],
    ids=["gray8", "rgba8", "rgb16", "float"],
)
def test_uploads_are_displayed_as_8_bit_rgb(image: np.ndarray) -> None:
    shown = display_upload(image)
    assert shown.shape == (4, 5, 3) and shown.dtype == np.uint8 and (shown == 128).all()
