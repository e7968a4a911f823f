"""Slow clients against a live service: normal requests must keep being answered while they hang on.

    python scripts/hostile_clients.py --bundle bundles/demo      # starts its own service (short deadlines)
    python scripts/hostile_clients.py --url http://127.0.0.1:8000 --header-timeout-s 10 --body-timeout-s 30

Opens --slow connections of each kind at once -- request headers sent a byte per second, a /detect body sent
half at once and then a byte per second, a complete /detect whose answer is never read -- and while they hang
on, sends --normal ordinary POST /detect requests one after another. Prints JSON: what each slow kind got back
and after how long, the normal requests' statuses and latency. Exits 0 when every normal request got 200 and
every slow header or upload connection got its 408 within its deadline (+ --grace-s).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import live_service
from bad_inputs import png

log = logging.getLogger("hostile_clients")
TRICKLE_INTERVAL_S = 1.0


@dataclass
class SlowOutcome:
    kind: str
    status: int | None  # None: no answer (or not read)
    seconds: float


def detect_request(host: str, domain: str) -> tuple[bytes, bytes]:
    """Head and body of a valid multipart POST /detect for a one-rgb-image domain."""
    request = httpx.Request(
        "POST",
        f"http://{host}/detect",
        data={"domain": domain, "heatmap": "png"},
        files={"rgb": ("rgb.png", png((256, 256)), "image/png")},
    )
    body = request.read()
    lines = ["POST /detect HTTP/1.1", f"Host: {host}"] + [
        f"{key}: {value}" for key, value in request.headers.items() if key.lower() != "host"
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


def _status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and answer.startswith(b"HTTP/") and parts[1].isdigit() else None


def _trickle_then_read(sock: socket.socket, head: bytes, rest: bytes, stop: threading.Event) -> bytes:
    """Send ``head`` at once, then ``rest`` a byte at a time until the server answers, closes or ``stop``."""
    sock.sendall(head)
    sock.settimeout(TRICKLE_INTERVAL_S)
    for byte in rest:
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            answer = None
        if answer is not None:
            return answer
        if stop.is_set():
            return b""
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed by the server: its answer is already in the receive buffer
            break
    sock.settimeout(5.0)
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def slow_client(kind: str, address: tuple[str, int], request: tuple[bytes, bytes], stop: threading.Event):
    """One slow connection of ``kind``; returns its outcome when the server answered or ``stop`` was set."""
    head, body = request
    started = time.monotonic()
    with socket.create_connection(address, timeout=10.0) as sock:
        if kind == "slow headers":
            answer = _trickle_then_read(sock, b"", head, stop)
        elif kind == "slow upload":
            answer = _trickle_then_read(sock, head + body[: len(body) // 2], body[len(body) // 2 :], stop)
        else:  # "unread answer": the whole request, then never a read until the run ends
            sock.sendall(head + body)
            stop.wait()
            answer = b""
    return SlowOutcome(kind, _status_of(answer), time.monotonic() - started)


def run(url: str, domain: str, slow: int, normal: int) -> dict:
    """Open ``slow`` connections of each kind, send ``normal`` requests meanwhile, collect everything."""
    target = httpx.URL(url)
    address = (target.host, target.port or 80)
    request = detect_request(f"{target.host}:{address[1]}", domain)
    stop = threading.Event()
    outcomes: list[SlowOutcome] = []
    threads = [
        threading.Thread(target=lambda k=kind: outcomes.append(slow_client(k, address, request, stop)))
        for kind in ("slow headers", "slow upload", "unread answer")
        for _ in range(slow)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every slow connection is open and stalled before the normal traffic starts
    statuses: Counter[str] = Counter()
    latencies = []
    files = {"rgb": ("rgb.png", png((256, 256)), "image/png")}
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for _ in range(normal):
            started = time.perf_counter()
            response = client.post("/detect", data={"domain": domain, "heatmap": "none"}, files=files)
            latencies.append(time.perf_counter() - started)
            statuses[str(response.status_code)] += 1
    deadline = time.monotonic() + 120
    while sum(o.kind != "unread answer" for o in outcomes) < 2 * slow and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(30)
    by_kind: dict[str, dict] = {}
    for outcome in outcomes:
        summary = by_kind.setdefault(outcome.kind, {"statuses": Counter(), "seconds_max": 0.0})
        summary["statuses"][str(outcome.status)] += 1
        summary["seconds_max"] = round(max(summary["seconds_max"], outcome.seconds), 2)
    return {
        "slow_connections_per_kind": slow,
        "slow": by_kind,
        "normal": {
            "statuses": dict(statuses),
            "latency_ms_p50": round(statistics.median(latencies) * 1e3, 1),
            "latency_ms_max": round(max(latencies) * 1e3, 1),
        },
    }


def verdict(report: dict, header_timeout_s: float, body_timeout_s: float, grace_s: float) -> list[str]:
    """What went wrong, one line each (empty: the service held up)."""
    problems = []
    normal = report["normal"]["statuses"]
    if set(normal) != {"200"}:
        problems.append(f"normal requests got {normal}, not only 200")
    for kind, deadline in (("slow headers", header_timeout_s), ("slow upload", body_timeout_s)):
        got = report["slow"].get(kind, {"statuses": {}, "seconds_max": 0.0})
        if dict(got["statuses"]) != {"408": report["slow_connections_per_kind"]}:
            problems.append(f"{kind}: got {dict(got['statuses'])}, expected 408 for each")
        elif got["seconds_max"] > deadline + grace_s:
            problems.append(
                f"{kind}: the last 408 came after {got['seconds_max']} s (deadline {deadline:g} s)"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    live_service.add_target_arguments(parser)
    parser.add_argument("--domain", help="a domain with one `rgb` modality (default: the first one found)")
    parser.add_argument("--slow", type=int, default=8, help="slow connections of each kind (default 8)")
    parser.add_argument("--normal", type=int, default=20, help="normal requests sent meanwhile (default 20)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="UNIMMAD_MAX_IN_FLIGHT (with --bundle)")
    parser.add_argument("--header-timeout-s", type=float, default=3.0, help="UNIMMAD_HEADER_TIMEOUT_S")
    parser.add_argument("--body-timeout-s", type=float, default=5.0, help="UNIMMAD_BODY_TIMEOUT_S")
    parser.add_argument("--grace-s", type=float, default=2.0, help="slack on each deadline (default 2)")
    args = parser.parse_args(argv)
    live_service.configure_logging()
    if (error := live_service.remote_url_error(args.url)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def measure(url: str) -> dict:
        domains = httpx.get(f"{url}/domains", timeout=10.0).json()["domains"]
        domain = args.domain or next(
            (d["name"] for d in domains if [m["name"] for m in d["modalities"]] == ["rgb"]), None
        )
        if domain is None:
            raise SystemExit("error: the bundle has no domain with exactly one `rgb` modality; pass --domain")
        return run(url, domain, args.slow, args.normal)

    if args.url is not None:
        report = measure(args.url)
    else:
        settings = {
            "UNIMMAD_MAX_IN_FLIGHT": str(args.max_in_flight),
            "UNIMMAD_HEADER_TIMEOUT_S": str(args.header_timeout_s),
            "UNIMMAD_BODY_TIMEOUT_S": str(args.body_timeout_s),
        }
        with (
            tempfile.TemporaryDirectory(prefix="unimmad-hostile-") as tmp,
            live_service.running(args.bundle, Path(tmp) / "service.log", settings) as service,
        ):
            report = measure(service.url)
            report["service_settings"] = settings
    problems = verdict(report, args.header_timeout_s, args.body_timeout_s, args.grace_s)
    report["problems"] = problems
    print(json.dumps(report, indent=2))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
