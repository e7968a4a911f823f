from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import make_settings, wait_ready
from tiny_bundle import make_test_bundle

from service import create_app


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture()
def client(bundle_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(bundle_dir))) as test_client:
        wait_ready(test_client)
        yield test_client
