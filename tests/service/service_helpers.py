"""Helpers shared by the service and bundle tests: settings, readiness, realistic uploads, bundle copies.

The bundle is the session's tiny real export (tests/conftest.py): the four synthetic domains, one per
modality set. Uploads are synthetic scenes of those domains encoded the way users send them.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from model.data.synthetic import SyntheticConfig, generate
from service import Settings

# One domain per modality set of the tiny bundle.
RGB_DOMAIN = "synthetic/tiles"  # rgb
RGB_DEPTH_DOMAIN = "synthetic/parts"  # rgb, depth
RGB_INFRARED_DEPTH_DOMAIN = "synthetic/boards"  # rgb, infrared, depth
MRI_DOMAIN = "synthetic/brain"  # flair, t1, t1ce, t2
# Not the bundle's input size, so every upload goes through the resize of its kind.
UPLOAD_SIZE = 80

Upload = tuple[str, bytes, str]


def make_settings(bundle: Path, **overrides) -> Settings:
    """Settings of a test service. Out-of-distribution samples are scored and flagged: the tests upload
    generated scenes and hand-made pictures that the tiny random-prior bundle's bounds need not admit
    (tests/service/test_domain_inference.py tests the default, rejection)."""
    defaults = {
        "bundle": bundle,
        "providers": ["CPUExecutionProvider"],
        "max_batch_size": 4,
        "ood_action": "flag",
    }
    return Settings(**(defaults | overrides))


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not become ready"
        time.sleep(0.01)


def pillow_bytes(array: np.ndarray, file_format: str) -> bytes:
    """`array` encoded by Pillow as `file_format` (PNG, JPEG, BMP ...)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=file_format)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    return pillow_bytes(array, "PNG")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def xyz_tiff_bytes(depth: np.ndarray) -> bytes:
    """A depth map as an MVTec-3D style float32 xyz TIFF: x and y pixel grids, z the depth."""
    y, x = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]].astype(np.float32) / depth.shape[0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.dstack([x, y, depth]).astype(np.float32), photometric="rgb")
    return buffer.getvalue()


@cache
def _encoded_scene(domain: str, index: int, depth_format: str) -> tuple[tuple[str, Upload], ...]:
    scene = generate(domain, "test", index, None, SyntheticConfig(size=UPLOAD_SIZE))
    files = []
    for spec in scene.specs:
        array = scene.modalities[spec.name]
        if spec.kind == "depth" and depth_format == "tiff":
            upload = (f"{spec.name}.tiff", xyz_tiff_bytes(array), "image/tiff")
        elif spec.kind == "depth":
            upload = (f"{spec.name}.npy", npy_bytes(array), "application/octet-stream")
        elif spec.kind == "gray":
            # Scanners and MRI exports write 16 bits; the same scene at full 16-bit scale.
            upload = (f"{spec.name}.png", png_bytes(array.astype(np.uint16) * 257), "image/png")
        else:
            upload = (f"{spec.name}.png", png_bytes(array), "image/png")
        files.append((spec.name, upload))
    return tuple(files)


def uploads(domain: str, index: int = 0, *, depth_format: str = "npy") -> dict[str, Upload]:
    """Scene ``index`` of a synthetic ``domain`` as /detect files: PNG rgb, 16-bit PNG gray, depth .npy or xyz TIFF."""
    return dict(_encoded_scene(domain, index, depth_format))


def copy_bundle(bundle: Path, target: Path) -> Path:
    """A private copy of ``bundle`` for a test that breaks or edits it."""
    return Path(shutil.copytree(bundle, target))


def rewrite_manifest(root: Path, edit: Callable[[dict], object]) -> None:
    """Apply ``edit(dict)`` to the raw manifest JSON (for tests that break a bundle on purpose)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def as_format_2(manifest: dict) -> None:
    """A ``rewrite_manifest`` edit: the manifest as format 2 wrote it (no signature graph, statistics or subsets)."""
    manifest.update(format_version=2)
    del manifest["signature"]
    for domain in manifest["domains"].values():
        del domain["signature"], domain["subsets"]
