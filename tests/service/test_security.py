"""Security details: a usable API key or none, documentation behind the key, request ids end to end, and a
request that cannot be answered refused before it costs an inference."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import (
    RGB_DEPTH_DOMAIN,
    copy_bundle,
    make_settings,
    rewrite_manifest,
    uploads,
    wait_ready,
)

from service import create_app
from service.logs import RequestIdFilter
from service.settings import MIN_API_KEY_LENGTH

REPO = Path(__file__).parents[2]
KEY = "k" * MIN_API_KEY_LENGTH
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("key", ["", " ", "short-key", "k" * (MIN_API_KEY_LENGTH - 1)])
def test_an_empty_or_short_api_key_is_refused(tiny_bundle: Path, key: str) -> None:
    with pytest.raises(ValidationError, match=f"at least {MIN_API_KEY_LENGTH} characters"):
        make_settings(tiny_bundle, api_key=key)
    assert make_settings(tiny_bundle, api_key=KEY).api_key.get_secret_value() == KEY


def test_cli_refuses_an_empty_api_key_with_one_line(tiny_bundle: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(tiny_bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "UNIMMAD_API_KEY": ""},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: setting api_key: the API key must have at least")
    assert result.stderr.count("\n") == 1 and KEY not in result.stderr


@pytest.mark.parametrize("route", ["/openapi.json", "/docs"])
def test_docs_follow_the_api_key_unless_opened(tiny_bundle: Path, route: str) -> None:
    with TestClient(create_app(make_settings(tiny_bundle, api_key=KEY))) as client:
        wait_ready(client)
        assert client.get(route).status_code == 401
        assert client.get(route, headers={"X-API-Key": KEY}).status_code == 200
    with TestClient(create_app(make_settings(tiny_bundle, api_key=KEY, public_docs=True))) as client:
        assert client.get(route).status_code == 200


def test_docs_are_open_without_a_key(client) -> None:
    assert client.get("/openapi.json").json()["paths"]["/detect"]
    assert "swagger" in client.get("/docs").text.lower()


def test_a_sane_client_request_id_comes_back_on_answers_and_errors(client) -> None:
    ok = client.get("/readyz", headers={"X-Request-ID": "order-42/cam:1"})
    assert ok.headers["X-Request-ID"] == "order-42/cam:1"
    refused = client.post("/detect", data={"domain": "nope"}, headers={"X-Request-ID": "trace.7"}, files={})
    assert refused.headers["X-Request-ID"] == "trace.7"
    assert refused.json()["error"]["request_id"] == "trace.7"


@pytest.mark.parametrize("offered", [None, "", "has space", "x" * 129, 'quote"', "semi;colon"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_generated_one(client, offered: str | None) -> None:
    headers = {} if offered is None else {"X-Request-ID": offered}
    response = client.get("/nowhere", headers=headers)
    request_id = response.headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["error"]["request_id"] == request_id


def test_a_server_fault_carries_the_request_id_in_answer_and_log(tiny_bundle: Path, caplog) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with TestClient(create_app(make_settings(tiny_bundle)), raise_server_exceptions=False) as client:
        wait_ready(client)

        def broken(*args, **kwargs):
            raise RuntimeError("device lost")

        client.app.state.runtime.engine.run = broken
        with caplog.at_level(logging.ERROR, logger="service.middleware"):
            response = client.post(
                "/detect",
                data={"domain": RGB_DEPTH_DOMAIN, "heatmap": "none"},
                files=uploads(RGB_DEPTH_DOMAIN),
                headers={"X-Request-ID": "fault-1"},
            )
    assert response.status_code == 500 and response.headers["X-Request-ID"] == "fault-1"
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error; the fault was logged",
        "request_id": "fault-1",
    }
    faults = [r for r in caplog.records if r.name == "service.middleware"]
    assert faults and all(r.request_id == "fault-1" for r in faults)


def test_overlay_without_a_picture_is_refused_before_inference(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "no_picture")

    def rgb_as_depth(manifest: dict) -> None:
        for modality in manifest["domains"][RGB_DEPTH_DOMAIN]["modalities"]:
            modality.update(kind="depth", depth_scale=1.0)

    rewrite_manifest(bundle, rgb_as_depth)
    with TestClient(create_app(make_settings(bundle))) as client:
        wait_ready(client)
        files = uploads(RGB_DEPTH_DOMAIN)
        refused = client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN, "heatmap": "overlay"}, files=files)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "overlay_unavailable"
        registry = client.app.state.metrics.registry
        assert registry.get_sample_value("unimmad_batch_size_count") == 0
        served = client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN, "heatmap": "png"}, files=files)
        assert served.status_code == 200
        assert registry.get_sample_value("unimmad_batch_size_count") == 1
