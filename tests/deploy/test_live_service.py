"""`python -m service --bundle <tiny real bundle>` starts, warms up every input shape and serves every domain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
from live_service import LiveService
from service_helpers import uploads

from bundle import load_bundle
from service.settings import Settings


def _log_records(service: LiveService) -> list[dict]:
    return [
        json.loads(line)
        for line in service.log_path.read_text(encoding="utf-8").splitlines()
        if line.startswith("{")
    ]


def test_the_served_bundle_warmed_up_every_shape_before_ready(served: LiveService, tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    records = {record["message"]: record for record in _log_records(served)}
    assert records["onnxruntime sessions ready"]["provider"] == "CPUExecutionProvider"
    assert records["onnxruntime sessions ready"]["graphs"] == ["frozen"]
    modality_counts = {len(spec.modalities) for spec in manifest.domains.values()}
    max_batch = Settings.model_fields["max_batch_size"].default
    assert records["warm-up done"]["shapes"] == len(modality_counts) * max_batch
    assert httpx.get(f"{served.url}/readyz", timeout=5.0).json() == {"status": "ready"}
    model = httpx.get(f"{served.url}/model", timeout=5.0).json()
    assert model["model_version"] == manifest.model_version and model["input_size"] == manifest.input_size


def test_every_domain_of_the_bundle_is_served(served: LiveService, tiny_bundle: Path) -> None:
    domains = load_bundle(tiny_bundle).manifest.domains
    for name, spec in domains.items():
        response = httpx.post(
            f"{served.url}/detect",
            data={"domain": name},
            files=uploads(name, depth_format="tiff"),
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert math.isfinite(body["image_score"]) and body["threshold"] == spec.threshold
        assert list(body["modality_scores"]) == [m.name for m in spec.modalities]
        assert body["heatmaps"]["fused"]
