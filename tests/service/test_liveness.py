"""Liveness tells the truth: /healthz (and /v2/health/live) fail when the process cannot serve any more --
a stopped batcher task, an inference session that fails its runs, a failed warm-up -- and a failed warm-up
stops `python -m service` with one line on stderr."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import RGB_DOMAIN, copy_bundle, make_settings, rewrite_manifest, uploads, wait_ready

from service import create_app
from service.inference import load_engine

REPO = Path(__file__).parents[2]
LIVENESS_ROUTES = ("/healthz", "/v2/health/live")


def _device_lost(*args, **kwargs):
    raise RuntimeError("CUDA failure 2: out of memory\nmore detail on the next lines")


def _live(client: TestClient) -> list[int]:
    return [client.get(route).status_code for route in LIVENESS_ROUTES]


def test_a_stopped_batcher_task_fails_liveness(tiny_bundle: Path, monkeypatch) -> None:
    with TestClient(create_app(make_settings(tiny_bundle, request_timeout_s=1.0))) as client:
        wait_ready(client)
        assert _live(client) == [200, 200]
        batcher = client.app.state.runtime.batcher
        monkeypatch.setattr(batcher, "_take_ready", _device_lost)  # a bug that kills the collector task
        stuck = client.post(
            "/detect", data={"domain": RGB_DOMAIN, "heatmap": "none"}, files=uploads(RGB_DOMAIN)
        )
        assert stuck.status_code == 504
        assert _live(client) == [503, 400]
        error = client.get("/healthz").json()["error"]
        assert (
            error["code"] == "not_live" and f"batcher task batcher:{RGB_DOMAIN} stopped" in error["message"]
        )


def test_a_broken_session_fails_liveness_until_it_runs_again(tiny_bundle: Path) -> None:
    with TestClient(create_app(make_settings(tiny_bundle)), raise_server_exceptions=False) as client:
        wait_ready(client)
        engine = client.app.state.runtime.engine
        working = engine.run
        engine.run = _device_lost
        failed = client.post(
            "/detect", data={"domain": RGB_DOMAIN, "heatmap": "none"}, files=uploads(RGB_DOMAIN)
        )
        assert failed.status_code == 500
        assert _live(client) == [503, 400]
        message = client.get("/healthz").json()["error"]["message"]
        assert message == "inference session broken: CUDA failure 2: out of memory"
        # A passing fault: the probe run succeeds again, and so does liveness.
        engine.run = working
        assert _live(client) == [200, 200]


# Warm-up runs the serving graphs and the signature graph (every modality count a request without a domain
# can send), so a broken one is fatal at start, not at the first request.
@pytest.mark.parametrize("broken", ["run", "signatures"])
def test_a_failed_warm_up_is_fatal(tiny_bundle: Path, broken: str) -> None:
    settings = make_settings(tiny_bundle)
    engine = load_engine(settings)
    setattr(engine, broken, _device_lost)
    reasons: list[str] = []
    with TestClient(create_app(settings, engine=engine, on_fatal=reasons.append)) as client:
        deadline = time.monotonic() + 10
        while not reasons:
            assert time.monotonic() < deadline, "the warm-up failure was not reported"
            time.sleep(0.01)
        assert reasons == ["warm-up failed: CUDA failure 2: out of memory"]
        assert _live(client) == [503, 400]
        assert client.get("/readyz").status_code == 503
        assert client.app.state.runtime.signature_warmup_counts() == [1, 2, 3, 4]  # tiles .. brain


@pytest.mark.slow
def test_cli_exits_with_one_line_when_warm_up_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    """A manifest whose input size disagrees with its graphs loads, then fails the first run."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "wrong_size")
    rewrite_manifest(bundle, lambda m: m.update(input_size=m["input_size"] + 8))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "UNIMMAD_PROVIDERS": '["CPUExecutionProvider"]'},
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert result.stderr.startswith("error: warm-up failed: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
