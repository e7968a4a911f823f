"""POST /detect on every modality set of the tiny real bundle, parity with a bare onnxruntime session, read routes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import (
    MRI_DOMAIN,
    RGB_DEPTH_DOMAIN,
    RGB_DOMAIN,
    RGB_INFRARED_DEPTH_DOMAIN,
    copy_bundle,
    make_settings,
    rewrite_manifest,
    uploads,
    wait_ready,
)

from bundle import load_bundle
from bundle.manifest import Manifest
from modalities.decode import decode_bytes
from modalities.prepare import stack_sample
from service import create_app

# (domain, how its depth travels): every modality set, and both depth file formats.
MODALITY_SETS = [
    (RGB_DOMAIN, "npy"),
    (RGB_DEPTH_DOMAIN, "npy"),
    (RGB_INFRARED_DEPTH_DOMAIN, "tiff"),
    (MRI_DOMAIN, "npy"),
]


def _png_shape(b64: str) -> tuple[int, ...]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))).shape


@pytest.fixture(scope="module")
def manifest(tiny_bundle: Path) -> Manifest:
    return load_bundle(tiny_bundle).manifest


def _reference_scores(bundle: Path, graph: str, domain: str, files: dict) -> tuple[float, list[float]]:
    """image_score and modality_scores of a bare ORT session on the bundle's graph, fed as docs/DESIGN.md says."""
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    spec = manifest.domains[domain]
    arrays = {name: decode_bytes(content) for name, (_, content, _) in files.items()}
    sample = stack_sample(
        arrays,
        spec.modality_specs,
        manifest.input_size,
        mean=manifest.normalization.mean,
        std=manifest.normalization.std,
    )
    session = ort.InferenceSession(str(loaded.graph(graph).model), providers=["CPUExecutionProvider"])
    feeds = {"images": sample[None]}
    if graph == "frozen":
        feeds["domain"] = np.array([spec.index], dtype=np.int64)
    score, modality_scores = session.run(["image_score", "modality_scores"], feeds)
    return float(score[0]), modality_scores[0].tolist()


@pytest.mark.parametrize(("domain", "depth_format"), MODALITY_SETS)
def test_happy_path_per_modality_set(client, manifest: Manifest, domain: str, depth_format: str) -> None:
    files = uploads(domain, depth_format=depth_format)
    response = client.post("/detect", data={"domain": domain}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    spec = manifest.domains[domain]
    assert body["domain"] == domain
    assert body["threshold"] == spec.threshold
    assert np.isfinite(body["image_score"])
    assert body["is_anomalous"] == (body["image_score"] > body["threshold"])
    assert list(body["modality_scores"]) == [m.name for m in spec.modalities]
    assert set(body["heatmaps"]["modalities"]) == {m.name for m in spec.modalities}
    assert _png_shape(body["heatmaps"]["fused"]) == (manifest.input_size, manifest.input_size, 3)
    assert body["model_version"] == manifest.model_version
    assert body["timings"]["batch_size"] == 1
    assert body["timings"]["total_ms"] >= body["timings"]["infer_ms"] > 0


@pytest.mark.parametrize(("domain", "depth_format"), MODALITY_SETS)
def test_same_result_as_bare_onnxruntime(client, tiny_bundle: Path, domain: str, depth_format: str) -> None:
    files = uploads(domain, index=1, depth_format=depth_format)
    body = client.post("/detect", data={"domain": domain, "heatmap": "none"}, files=files).json()
    score, modality_scores = _reference_scores(tiny_bundle, "frozen", domain, files)
    assert body["image_score"] == pytest.approx(score, rel=1e-5, abs=1e-6)
    assert list(body["modality_scores"].values()) == pytest.approx(modality_scores, rel=1e-5, abs=1e-6)


def test_dynamic_graph_serves_the_same_as_its_bare_session(tiny_bundle: Path, tmp_path: Path) -> None:
    # UNIMMAD_GRAPH=dynamic is accepted only where every domain was calibrated on the dynamic graph.
    bundle = copy_bundle(tiny_bundle, tmp_path / "dynamic")
    rewrite_manifest(bundle, lambda m: [spec.update(graph="dynamic") for spec in m["domains"].values()])
    files = uploads(RGB_INFRARED_DEPTH_DOMAIN, index=2)
    with TestClient(create_app(make_settings(bundle, graph="dynamic"))) as client:
        wait_ready(client)
        assert client.get("/model").json()["graphs"] == ["dynamic"]
        body = client.post("/detect", data={"domain": RGB_INFRARED_DEPTH_DOMAIN}, files=files).json()
    score, modality_scores = _reference_scores(tiny_bundle, "dynamic", RGB_INFRARED_DEPTH_DOMAIN, files)
    assert body["image_score"] == pytest.approx(score, rel=1e-5, abs=1e-6)
    assert list(body["modality_scores"].values()) == pytest.approx(modality_scores, rel=1e-5, abs=1e-6)


def test_a_domain_the_manifest_moves_to_the_dynamic_graph_is_served_by_it(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "mixed")
    rewrite_manifest(bundle, lambda m: m["domains"][RGB_INFRARED_DEPTH_DOMAIN].update(graph="dynamic"))
    files = {domain: uploads(domain, index=3) for domain in (RGB_INFRARED_DEPTH_DOMAIN, RGB_DEPTH_DOMAIN)}
    with TestClient(create_app(make_settings(bundle))) as client:
        wait_ready(client)
        assert client.get("/model").json()["graphs"] == ["dynamic", "frozen"]
        graphs = {d["name"]: d["graph"] for d in client.get("/domains").json()["domains"]}
        bodies = {
            domain: client.post("/detect", data={"domain": domain}, files=sent).json()
            for domain, sent in files.items()
        }
    assert graphs[RGB_INFRARED_DEPTH_DOMAIN] == "dynamic" and graphs[RGB_DEPTH_DOMAIN] == "frozen"
    for domain, graph in ((RGB_INFRARED_DEPTH_DOMAIN, "dynamic"), (RGB_DEPTH_DOMAIN, "frozen")):
        score, _ = _reference_scores(tiny_bundle, graph, domain, files[domain])
        assert bodies[domain]["image_score"] == pytest.approx(score, rel=1e-5, abs=1e-6)


def test_each_domain_runs_with_its_own_index(client, manifest: Manifest) -> None:
    """The frozen graph gathers per-domain kernels, so the batcher must pass the domain's manifest index."""
    engine = client.app.state.runtime.engine
    run = engine.run
    seen: list[int] = []

    def recording_run(images, domain_index):
        seen.append(domain_index)
        return run(images, domain_index)

    engine.run = recording_run
    for domain, _ in MODALITY_SETS:
        assert client.post(
            "/detect", data={"domain": domain, "heatmap": "none"}, files=uploads(domain)
        ).is_success
    assert seen == [manifest.domains[domain].index for domain, _ in MODALITY_SETS]
    assert len(set(seen)) == len(MODALITY_SETS)


def test_heatmap_modes(client, manifest: Manifest) -> None:
    files = uploads(RGB_DEPTH_DOMAIN)
    form = {"domain": RGB_DEPTH_DOMAIN}
    none = client.post("/detect", data=form | {"heatmap": "none"}, files=files).json()
    assert none["heatmaps"] is None
    png = client.post("/detect", data=form | {"heatmap": "png"}, files=files).json()
    overlay = client.post("/detect", data=form | {"heatmap": "overlay"}, files=files).json()
    assert none["image_score"] == png["image_score"] == overlay["image_score"]
    assert overlay["heatmaps"]["fused"] != png["heatmaps"]["fused"]
    assert _png_shape(overlay["heatmaps"]["modalities"]["depth"]) == (
        manifest.input_size,
        manifest.input_size,
        3,
    )


def test_domains_and_model_routes(client, manifest: Manifest) -> None:
    domains = client.get("/domains").json()["domains"]
    assert [d["name"] for d in domains] == list(manifest.domains)
    parts = next(d for d in domains if d["name"] == RGB_DEPTH_DOMAIN)
    assert [m["name"] for m in parts["modalities"]] == ["rgb", "depth"]
    assert parts["threshold"] == manifest.domains[RGB_DEPTH_DOMAIN].threshold
    assert parts["threshold_method"]["method"] == manifest.domains[RGB_DEPTH_DOMAIN].threshold_method.method
    assert parts["routing"]["agreement"] == manifest.domains[RGB_DEPTH_DOMAIN].routing.agreement
    model = client.get("/model").json()
    assert model["provider"] == "CPUExecutionProvider"
    assert model["graphs"] == ["frozen"] and model["input_size"] == manifest.input_size
    assert {d["graph"] for d in domains} == {"frozen"}


def test_health_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/detect", data={"domain": RGB_DOMAIN}, files=uploads(RGB_DOMAIN))
    text = client.get("/metrics").text
    assert f'unimmad_requests_total{{domain="{RGB_DOMAIN}"}} 1.0' in text
    assert (
        f'unimmad_request_duration_seconds_count{{domain="{RGB_DOMAIN}",route="/detect",status="200"}} 1.0'
        in text
    )
    for stage in ("decode", "preprocess", "queue", "infer", "postprocess"):
        assert f'unimmad_inference_duration_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'unimmad_model_info{format_version="1",graphs="frozen"' in text
    assert "unimmad_queue_depth 0.0" in text


def test_openapi_lists_bundle_fields(client, manifest: Manifest) -> None:
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["domain"]["enum"] == sorted(manifest.domains)
    assert {"rgb", "depth", "infrared", "flair", "t1", "t1ce", "t2"} <= set(form["properties"])
