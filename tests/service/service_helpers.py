"""Helpers shared by the service tests: settings for the tiny bundle, readiness and valid uploads."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings


def make_settings(bundle: Path, **overrides) -> Settings:
    defaults = {"bundle": bundle, "providers": ["CPUExecutionProvider"], "max_batch_size": 4}
    return Settings(**(defaults | overrides))


def wait_ready(client: TestClient, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service did not become ready"
        time.sleep(0.01)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def sample_files(modalities: list[tuple[str, str]], seed: int = 0) -> dict[str, tuple[str, bytes, str]]:
    """One valid upload per modality: rgb as 8-bit PNG, gray as 16-bit PNG, depth as a float32 .npy."""
    rng = np.random.default_rng(seed)
    files = {}
    for name, kind in modalities:
        if kind == "rgb":
            files[name] = (f"{name}.png", png_bytes(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)), "image/png")
        elif kind == "gray":
            files[name] = (f"{name}.png", png_bytes(rng.integers(0, 65536, (20, 20), dtype=np.uint16)), "image/png")
        else:
            depth = rng.uniform(0.5, 1.0, (18, 18)).astype(np.float32)
            depth[:3] = 0.0  # background rows
            files[name] = (f"{name}.npy", npy_bytes(depth), "application/octet-stream")
    return files
