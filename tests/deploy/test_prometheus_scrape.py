"""Debian's Prometheus scrapes a live service with the project's own scrape config."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_files import PROMETHEUS_CONFIG
from live_service import LOOPBACK, free_port
from service_helpers import RGB_DOMAIN, uploads

DETECT_CALLS = 3
WAIT_S = 45.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "prometheus not installed: `apt-get install prometheus` (scripts/install_test_tools.sh does it)"
        )
    return found


def scrape_config_for(target: str) -> dict:
    """The project's `unimmad` job, unchanged but for its target and a 1 s interval; the rest dropped."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "unimmad"]
    for static in job["static_configs"]:
        static["targets"] = [target]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    return {
        "global": {**config["global"], "scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [job],
    }


def wait_until_ready(base_url: str, prometheus: subprocess.Popen, log: Path, deadline: float) -> None:
    """Prometheus answers 503 "Service Unavailable" to queries until its TSDB has opened."""
    while time.monotonic() < deadline:
        assert prometheus.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{base_url}/-/ready", timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"Prometheus not ready after {WAIT_S} s: {log.read_text()[-2000:]}")


def query(base_url: str, promql: str) -> list[dict]:
    answer = httpx.get(f"{base_url}/api/v1/query", params={"query": promql}, timeout=5.0).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_request_counts_from_the_live_service(served, tmp_path: Path) -> None:
    binary = prometheus_binary()
    for _ in range(DETECT_CALLS):
        response = httpx.post(
            f"{served.url}/detect",
            data={"domain": RGB_DOMAIN, "heatmap": "none"},
            files=uploads(RGB_DOMAIN),
            timeout=30.0,
        )
        assert response.status_code == 200, response.text

    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(
        yaml.safe_dump(scrape_config_for(served.url.removeprefix("http://"))), encoding="utf-8"
    )
    port = free_port()
    prometheus_url = f"http://{LOOPBACK}:{port}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        promql = 'sum(unimmad_request_duration_seconds_count{job="unimmad", route="/detect", status="200"})'
        deadline = time.monotonic() + WAIT_S
        wait_until_ready(prometheus_url, prometheus, tmp_path / "prometheus.log", deadline)
        count = 0.0
        while time.monotonic() < deadline and count < DETECT_CALLS:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                result = query(prometheus_url, promql)
                count = float(result[0]["value"][1]) if result else 0.0
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert count == DETECT_CALLS, f"Prometheus saw {count} /detect requests after {WAIT_S} s"
        (up,) = query(prometheus_url, 'up{job="unimmad"}')
        assert up["value"][1] == "1"
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
