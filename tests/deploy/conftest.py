"""Fixtures for the live tests: the session's tiny real bundle (tests/conftest.py) served by a `python -m service` child."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# tests/ is not a package: reuse the service tests' upload helpers; the scripts are imported as modules.
sys.path[:0] = [str(TESTS / "service"), str(TESTS.parent / "scripts"), str(TESTS.parent / "benchmarks")]

import live_service


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[live_service.LiveService]:
    """A ready service on a free loopback port, stopped when the module's tests are done."""
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    with live_service.running(
        tiny_bundle, log_path, env={"UNIMMAD_PROVIDERS": '["CPUExecutionProvider"]'}
    ) as service:
        yield service
