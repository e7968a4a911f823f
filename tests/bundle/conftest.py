from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The bundle-editing helpers are shared with the service tests; tests/ is not a package, so expose its folder.
sys.path.insert(0, str(Path(__file__).parents[1] / "service"))

from service_helpers import copy_bundle


@pytest.fixture()
def bundle_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny real bundle, free to break."""
    return copy_bundle(tiny_bundle, tmp_path / "bundle")
