"""POST /detect on every modality set, parity with a bare onnxruntime session, heatmaps and read-only routes."""

from __future__ import annotations

import base64
import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from service_helpers import sample_files
from tiny_bundle import INPUT_SIZE, TEST_DOMAINS

from bundle import load_bundle
from modalities.decode import decode_bytes
from modalities.prepare import stack_sample


def _png_shape(b64: str) -> tuple[int, ...]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))).shape


@pytest.mark.parametrize("domain", list(TEST_DOMAINS))
def test_happy_path_per_modality_set(client, domain: str) -> None:
    modalities = TEST_DOMAINS[domain][1]
    response = client.post("/detect", data={"domain": domain}, files=sample_files(modalities))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["domain"] == domain
    assert body["threshold"] == TEST_DOMAINS[domain][3]
    assert body["is_anomalous"] == (body["image_score"] > body["threshold"])
    assert list(body["modality_scores"]) == [name for name, _ in modalities]
    assert set(body["heatmaps"]["modalities"]) == {name for name, _ in modalities}
    assert _png_shape(body["heatmaps"]["fused"]) == (INPUT_SIZE, INPUT_SIZE, 3)
    assert body["model_version"] == "test-0.1"
    assert body["timings"]["batch_size"] == 1
    assert body["timings"]["total_ms"] >= body["timings"]["infer_ms"] > 0


@pytest.mark.parametrize("domain", ["mvtec3d/tire", "brats/brain"])
def test_same_result_as_bare_onnxruntime(client, bundle_dir, domain: str) -> None:
    modalities = TEST_DOMAINS[domain][1]
    files = sample_files(modalities, seed=7)
    body = client.post("/detect", data={"domain": domain}, files=files).json()

    manifest = load_bundle(bundle_dir).manifest
    spec = manifest.domains[domain]
    arrays = {name: decode_bytes(content) for name, (_, content, _) in files.items()}
    sample = stack_sample(arrays, spec.modality_specs, manifest.input_size,
                          mean=manifest.normalization.mean, std=manifest.normalization.std)
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    _, _, score, modality_scores = session.run(
        None, {"images": sample[None], "domain": np.array([spec.index], dtype=np.int64)}
    )
    assert body["image_score"] == pytest.approx(float(score[0]), rel=1e-6)
    assert list(body["modality_scores"].values()) == pytest.approx(modality_scores[0].tolist(), rel=1e-6)


def test_domains_change_the_result(client) -> None:
    """The frozen graph gathers per-domain kernels: the same rgb image scores differently per domain."""
    files = sample_files([("rgb", "rgb")], seed=3)
    bottle = client.post("/detect", data={"domain": "mvtec/bottle"}, files=files).json()
    depth_files = files | sample_files([("depth", "depth")], seed=3)
    tire = client.post("/detect", data={"domain": "mvtec3d/tire"}, files=depth_files).json()
    assert bottle["modality_scores"]["rgb"] == pytest.approx(2 * tire["modality_scores"]["rgb"], rel=1e-5)


def test_heatmap_modes(client) -> None:
    files = sample_files(TEST_DOMAINS["mvtec3d/tire"][1])
    none = client.post("/detect", data={"domain": "mvtec3d/tire", "heatmap": "none"}, files=files).json()
    assert none["heatmaps"] is None
    png = client.post("/detect", data={"domain": "mvtec3d/tire", "heatmap": "png"}, files=files).json()
    overlay = client.post("/detect", data={"domain": "mvtec3d/tire", "heatmap": "overlay"}, files=files).json()
    assert none["image_score"] == png["image_score"] == overlay["image_score"]
    assert overlay["heatmaps"]["fused"] != png["heatmaps"]["fused"]
    assert _png_shape(overlay["heatmaps"]["modalities"]["depth"]) == (INPUT_SIZE, INPUT_SIZE, 3)


def test_domains_and_model_routes(client) -> None:
    domains = client.get("/domains").json()["domains"]
    assert [d["name"] for d in domains] == list(TEST_DOMAINS)
    tire = domains[1]
    assert [m["name"] for m in tire["modalities"]] == ["rgb", "depth"]
    assert tire["threshold_method"]["method"] == "normal_quantile"
    assert tire["routing"]["agreement"] == 0.9
    model = client.get("/model").json()
    assert model["provider"] == "CPUExecutionProvider"
    assert model["graph"] == "frozen" and model["input_size"] == INPUT_SIZE


def test_health_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/detect", data={"domain": "mvtec/bottle"}, files=sample_files([("rgb", "rgb")]))
    text = client.get("/metrics").text
    assert 'unimmad_requests_total{domain="mvtec/bottle"} 1.0' in text
    assert 'unimmad_request_duration_seconds_count{domain="mvtec/bottle",route="/detect",status="200"} 1.0' in text
    for stage in ("decode", "preprocess", "queue", "infer", "postprocess"):
        assert f'unimmad_inference_duration_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'unimmad_model_info{format_version="1",graph="frozen"' in text
    assert "unimmad_queue_depth 0.0" in text


def test_openapi_lists_bundle_fields(client) -> None:
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["domain"]["enum"] == sorted(TEST_DOMAINS)
    assert {"rgb", "depth", "infrared", "flair", "t1", "t1ce", "t2"} <= set(form["properties"])
