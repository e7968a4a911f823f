"""POST /detect on every modality set of the tiny real bundle, parity with a bare onnxruntime session, the
normalised score, heatmaps at upload or model resolution, read routes."""

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
    UPLOAD_SIZE,
    copy_bundle,
    make_settings,
    npy_bytes,
    png_bytes,
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
    feeds = {"images": sample[None], "domain": np.array([spec.index], dtype=np.int64)}
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
    assert body["normalized_score"] == pytest.approx(spec.normalized_score(body["image_score"]))
    assert (body["normalized_score"] > 0.5) == body["is_anomalous"]
    assert list(body["modality_scores"]) == [m.name for m in spec.modalities]
    assert set(body["heatmaps"]["modalities"]) == {m.name for m in spec.modalities}
    # by default at the upload's resolution, not the model's
    assert UPLOAD_SIZE != manifest.input_size
    assert _png_shape(body["heatmaps"]["fused"]) == (UPLOAD_SIZE, UPLOAD_SIZE, 3)
    assert (body["heatmaps"]["height"], body["heatmaps"]["width"]) == (UPLOAD_SIZE, UPLOAD_SIZE)
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
    model_size = client.post("/detect", data=form | {"heatmap_size": "model"}, files=files).json()
    assert none["image_score"] == png["image_score"] == overlay["image_score"] == model_size["image_score"]
    assert overlay["heatmaps"]["fused"] != png["heatmaps"]["fused"]
    assert _png_shape(overlay["heatmaps"]["modalities"]["depth"]) == (UPLOAD_SIZE, UPLOAD_SIZE, 3)
    side = manifest.input_size
    assert _png_shape(model_size["heatmaps"]["modalities"]["depth"]) == (side, side, 3)
    assert (model_size["heatmaps"]["height"], model_size["heatmaps"]["width"]) == (side, side)


@pytest.mark.parametrize(
    ("mode", "shape"),
    [
        ("png", (90, 120)),
        ("overlay", (90, 120)),
        # wide enough to be reduced while decoding (one axis only): the heatmap still has the upload's size
        ("overlay", (300, 1100)),
    ],
)
def test_heatmaps_take_the_size_of_an_oblong_upload(client, mode: str, shape: tuple[int, int]) -> None:
    """An 800 x 600 camera image gets 800 x 600 heatmaps (here with a depth map of another size)."""
    rng = np.random.default_rng(0)
    picture = np.broadcast_to(np.linspace(0, 255, shape[1], dtype=np.uint8)[None, :, None], (*shape, 3))
    files = {
        "rgb": ("rgb.png", png_bytes(np.ascontiguousarray(picture)), "image/png"),
        "depth": (
            "depth.npy",
            npy_bytes(rng.random((40, 50), dtype=np.float32) + 1),
            "application/octet-stream",
        ),
    }
    body = client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN, "heatmap": mode}, files=files).json()
    assert (body["heatmaps"]["height"], body["heatmaps"]["width"]) == shape
    for b64 in (body["heatmaps"]["fused"], *body["heatmaps"]["modalities"].values()):
        assert _png_shape(b64) == (*shape, 3)


def test_an_unknown_heatmap_size_is_refused(client) -> None:
    response = client.post(
        "/detect",
        data={"domain": RGB_DOMAIN, "heatmap_size": "huge"},
        files=uploads(RGB_DOMAIN),
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_heatmap_size"


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
    assert 'unimmad_model_info{format_version="3",graphs="frozen"' in text
    assert "unimmad_queue_depth 0.0" in text


def test_openapi_lists_bundle_fields(client, manifest: Manifest) -> None:
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["domain"]["enum"] == sorted(manifest.domains)
    assert {"rgb", "depth", "infrared", "flair", "t1", "t1ce", "t2"} <= set(form["properties"])
