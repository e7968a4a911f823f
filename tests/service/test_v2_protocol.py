"""Open Inference Protocol v2 health and model metadata, as Kubernetes probes and KServe/Triton clients call them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import make_settings, wait_ready

from bundle import load_bundle
from service import create_app
from service.inference import OUTPUT_NAMES, load_engine
from service.routes.v2 import MODEL_NAME

HEALTH_ROUTES = ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready")


def test_health_routes_answer_200_with_an_empty_body(client) -> None:
    for route in HEALTH_ROUTES:
        response = client.get(route)
        assert response.status_code == 200 and response.content == b"", route


def test_model_metadata_describes_the_served_graph(client, tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    metadata = client.get(f"/v2/models/{MODEL_NAME}").json()
    assert metadata["name"] == MODEL_NAME
    assert metadata["versions"] == [manifest.model_version]
    assert metadata["platform"] == "onnxruntime"
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    size = manifest.input_size
    assert inputs["images"]["datatype"] == "FP32"
    assert inputs["images"]["shape"][0] == -1 and inputs["images"]["shape"][-2:] == [size, size]
    assert inputs["domain"]["datatype"] == "INT64"
    outputs = {tensor["name"]: tensor for tensor in metadata["outputs"]}
    assert set(OUTPUT_NAMES) <= set(outputs)
    assert outputs["image_score"]["datatype"] == "FP32" and outputs["image_score"]["shape"] == [-1]


@pytest.mark.parametrize("route", ["/v2/models/other", "/v2/models/other/ready"])
def test_an_unknown_model_is_404_with_a_protocol_error(client, route: str) -> None:
    response = client.get(route)
    assert response.status_code == 404
    assert response.json() == {"error": f"unknown model 'other'; this server serves '{MODEL_NAME}'"}


def test_readiness_is_false_during_warm_up_and_liveness_is_not(tiny_bundle: Path) -> None:
    settings = make_settings(tiny_bundle)
    engine = load_engine(settings)
    working, release = engine.run, threading.Event()

    def slow_first_run(*args, **kwargs):
        release.wait(10)
        return working(*args, **kwargs)

    engine.run = slow_first_run
    with TestClient(create_app(settings, engine=engine)) as client:
        try:
            assert client.get("/v2/health/live").status_code == 200
            for route in HEALTH_ROUTES[1:]:
                response = client.get(route)
                assert response.status_code == 400
                assert response.json() == {"error": "the model is still warming up"}
        finally:
            release.set()
        wait_ready(client)
        assert [client.get(route).status_code for route in HEALTH_ROUTES] == [200, 200, 200]


def test_with_an_api_key_health_stays_open_and_metadata_needs_it(tiny_bundle: Path) -> None:
    key = "a-key-of-sixteen-chars"
    with TestClient(create_app(make_settings(tiny_bundle, api_key=key))) as client:
        wait_ready(client)
        assert [client.get(route).status_code for route in HEALTH_ROUTES] == [200, 200, 200]
        assert client.get(f"/v2/models/{MODEL_NAME}").status_code == 401
        assert client.get(f"/v2/models/{MODEL_NAME}", headers={"X-API-Key": key}).status_code == 200
