"""API key on/off, torch-free import, and startup failures that must be one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import RGB_DOMAIN, copy_bundle, make_settings, rewrite_manifest, uploads, wait_ready

from bundle import BundleError, file_sha256
from service import create_app
from service.inference import load_engine
from service.settings import Settings

REPO = Path(__file__).parents[2]
KEY = "s3cret-key-0123456789"


@pytest.fixture()
def keyed_client(tiny_bundle: Path):
    with TestClient(create_app(make_settings(tiny_bundle, api_key=KEY))) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("route", ["/domains", "/model"])
def test_api_key_required_when_set(keyed_client, route: str) -> None:
    denied = keyed_client.get(route)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert keyed_client.get(route, headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed_client.get(route, headers={"Authorization": "Basic " + KEY}).status_code == 401
    assert keyed_client.get(route, headers={"X-API-Key": KEY}).status_code == 200
    assert keyed_client.get(route, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_api_key_guards_detect_but_not_health(keyed_client) -> None:
    files = uploads(RGB_DOMAIN)
    assert keyed_client.post("/detect", data={"domain": RGB_DOMAIN}, files=files).status_code == 401
    ok = keyed_client.post(
        "/detect", data={"domain": RGB_DOMAIN}, files=files, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert ok.status_code == 200
    for route in ("/healthz", "/readyz", "/metrics"):
        assert keyed_client.get(route).status_code == 200


def test_no_key_configured_means_open(client) -> None:
    assert client.get("/domains").status_code == 200


def test_importing_service_does_not_import_torch() -> None:
    code = "import sys, service, service.__main__; print('torch' in sys.modules, 'model' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False False"


def test_corrupt_onnx_with_matching_sha256_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"this is not an onnx protobuf")
    rewrite_manifest(
        bundle, lambda m: m["graphs"]["frozen"].update(sha256=file_sha256(bundle / "model.onnx"))
    )
    with pytest.raises(BundleError, match=r"^onnxruntime cannot load model.onnx: [^\n]+$"):
        load_engine(make_settings(bundle))


def test_require_gpu_without_cuda_refuses_to_start(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="require_gpu"):
        load_engine(
            make_settings(
                tiny_bundle, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], require_gpu=True
            )
        )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_cli_bad_bundle_exits_with_one_line(tmp_path: Path) -> None:
    result = _cli("--bundle", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: bundle folder") and "\n" not in result.stderr.strip()


def test_cli_help_lists_every_setting_with_its_default() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for name in Settings.model_fields:
        assert f"UNIMMAD_{name.upper()} (" in result.stdout
    assert "UNIMMAD_MAX_BATCH_SIZE (default 8)" in result.stdout
