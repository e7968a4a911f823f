"""The service imports modalities without torch: importing it must not pull torch or scipy in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_does_not_load_torch_or_scipy() -> None:
    probe = (
        "import sys, modalities, modalities.decode, modalities.prepare;"
        "loaded = sorted({'torch', 'scipy'} & set(sys.modules));"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == ""
