from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The tiny bundle builder is shared with the service tests; tests/ is not a package, so expose its folder.
sys.path.insert(0, str(Path(__file__).parents[1] / "service"))

from tiny_bundle import make_test_bundle


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return make_test_bundle(tmp_path / "bundle")
