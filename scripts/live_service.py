"""Run ``python -m service`` as a child process on a free loopback port, for tests and reliability scripts.

Every wait is bounded and the child is always stopped (SIGTERM, then SIGKILL) when the context ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = frozenset({LOOPBACK, "localhost", "::1"})


class ServiceFailed(RuntimeError):
    """The service exited or never became ready; the message ends with the tail of its log."""


@dataclass
class LiveService:
    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Exactly one of --bundle (a service this script starts) or --url (a live one on this machine)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bundle", type=Path, help="start a service on 127.0.0.1 serving this bundle")
    where.add_argument("--url", help="a live service on this machine, e.g. http://127.0.0.1:8000")


def remote_url_error(url: str | None) -> str | None:
    """The one-line complaint about a --url that is not on this machine; None when it is (or is absent)."""
    if url is None or httpx.URL(url).host in LOCAL_HOSTS:
        return None
    return "--url must point at this machine (127.0.0.1, localhost or ::1)"


def configure_logging() -> None:
    """Script logs as ``LEVEL name: message`` on stderr, without httpx's line per request."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ServiceFailed(f"no VmRSS for pid {pid}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a service child: this one, the repository importable, JSON logs, and ``extra``.

    Out-of-distribution samples are scored and flagged unless the environment says otherwise: these scripts
    measure memory, load and robustness with generated pictures, which the default (reject) would refuse
    before the path they measure."""
    return {
        "UNIMMAD_OOD_ACTION": "flag",
        **os.environ,
        "PYTHONPATH": str(REPO),
        "UNIMMAD_LOG_FORMAT": "json",
        **(extra or {}),
    }


def start(
    bundle: Path, log_path: Path, env: dict[str, str] | None = None, python: str = sys.executable
) -> LiveService:
    """Start the service on a free loopback port without waiting for it."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [python, "-m", "service", "--bundle", str(bundle), "--host", LOOPBACK, "--port", str(port)],
            cwd=REPO,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return LiveService(process, f"http://{LOOPBACK}:{port}", log_path)


def wait_ready(service: LiveService, timeout_s: float = 60.0) -> float:
    """Poll ``/readyz`` until it answers 200; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if service.process.poll() is not None:
            raise ServiceFailed(f"service exited with {service.process.returncode}:\n{service.log_tail()}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServiceFailed(f"service not ready after {timeout_s:.0f} s:\n{service.log_tail()}")


def stop(service: LiveService, timeout_s: float = 15.0) -> int:
    """Graceful stop (SIGTERM), then SIGKILL after ``timeout_s``; returns the exit code."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)
    return service.process.returncode


@contextmanager
def running(
    bundle: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 60.0,
    python: str = sys.executable,
) -> Iterator[LiveService]:
    """A ready service for the duration of the block."""
    service = start(bundle, log_path, env, python)
    try:
        wait_ready(service, ready_timeout_s)
        yield service
    finally:
        stop(service)
