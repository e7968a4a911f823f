"""Slow clients against a live `python -m service` (real sockets, real uvicorn): they get 408 at their
deadline and, meanwhile, normal requests keep being answered."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import hostile_clients
import live_service
import pytest

SETTINGS = {
    "UNIMMAD_PROVIDERS": '["CPUExecutionProvider"]',
    "UNIMMAD_MAX_IN_FLIGHT": "2",
    "UNIMMAD_HEADER_TIMEOUT_S": "1",
    "UNIMMAD_BODY_TIMEOUT_S": "2",
}


@pytest.fixture(scope="module")
def impatient(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A service with short header and body deadlines and two /detect slots."""
    log_path = tmp_path_factory.mktemp("impatient") / "service.log"
    with live_service.running(tiny_bundle, log_path, env=SETTINGS) as service:
        yield service


def _answer_after(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(timeout_s)
    chunks = []
    while chunk := sock.recv(65536):  # until the server closes the connection
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def test_headers_that_never_end_get_408_and_the_connection_closes(impatient) -> None:
    host, port = impatient.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data")
        answer, seconds = _answer_after(sock, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "header_timeout"
    assert 0.5 < seconds < 5


def test_a_body_that_never_ends_gets_408_json(impatient) -> None:
    host, port = impatient.url.removeprefix("http://").split(":")
    head, body = hostile_clients.detect_request(f"{host}:{port}", "synthetic/tiles")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body[: len(body) // 2])
        answer, seconds = _answer_after(sock, 10)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408 ")
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "body_timeout"
    assert 1.0 < seconds < 6


def test_connections_beyond_the_bound_get_503_json_and_are_closed(tiny_bundle: Path, tmp_path: Path) -> None:
    env = {**SETTINGS, "UNIMMAD_MAX_CONNECTIONS": "2", "UNIMMAD_HEADER_TIMEOUT_S": "30"}
    with live_service.running(tiny_bundle, tmp_path / "service.log", env=env) as service:
        host, port = service.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            with socket.create_connection((host, int(port))) as extra:
                answer, _ = _answer_after(extra, 10)
        finally:
            for sock in held:
                sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body)["error"]["code"] == "too_many_connections"


def test_normal_requests_are_answered_while_slow_clients_hang_on(impatient) -> None:
    report = hostile_clients.run(impatient.url, "synthetic/tiles", slow=4, normal=6)
    # 4 slow uploads and 4 unread answers against 2 slots: none of them may cost a normal request its answer.
    assert report["normal"]["statuses"] == {"200": 6}
    assert hostile_clients.verdict(report, header_timeout_s=1, body_timeout_s=2, grace_s=3) == []


def test_the_verdict_fails_a_refused_normal_request_and_a_missing_408() -> None:
    report = {
        "slow_connections_per_kind": 2,
        "slow": {
            "slow headers": {"statuses": {"408": 2}, "seconds_max": 1.1},
            "slow upload": {"statuses": {"408": 1, "None": 1}, "seconds_max": 9.0},
        },
        "normal": {"statuses": {"200": 5, "503": 1}},
    }
    problems = hostile_clients.verdict(report, header_timeout_s=1, body_timeout_s=2, grace_s=1)
    assert len(problems) == 2
    assert problems[0].startswith("normal requests got") and problems[1].startswith("slow upload: got")
