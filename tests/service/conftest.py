from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import make_settings, wait_ready

from service import create_app


@pytest.fixture()
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    """A ready service on the session's tiny real bundle; a fresh app (and metrics) per test."""
    with TestClient(create_app(make_settings(tiny_bundle))) as test_client:
        wait_ready(test_client)
        yield test_client
