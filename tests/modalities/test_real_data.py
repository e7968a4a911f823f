"""Real files from ../shared/data go through decode -> prepare; skipped where the data is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modalities import ModalitySpec, prepare, prepare_mask, read_file, stack_sample

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"
MULSEN = DATA_ROOT / "mulsen_ad_derived"
TIRE = DATA_ROOT / "mvtec3d_ad" / "tire"
MULSEN_SPECS = [ModalitySpec("rgb", "rgb"), ModalitySpec("infrared", "gray"), ModalitySpec("depth", "depth")]
MULSEN_FILES = {"rgb": "rgb.png", "infrared": "ir_normalized.png", "depth": "pc_depth.png"}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available at {path} (see ../shared/data/SOURCES.md)")
    return path


def test_mulsen_sample_becomes_a_finite_three_modality_input() -> None:
    sample = require(MULSEN / "button_cell" / "test" / "good" / "000")
    arrays = {name: read_file(sample / file_name) for name, file_name in MULSEN_FILES.items()}
    assert arrays["rgb"].shape == (256, 256, 3) and arrays["infrared"].shape == (256, 256)
    stacked = stack_sample(arrays, MULSEN_SPECS, 64)
    assert stacked.shape == (3, 3, 64, 64) and np.isfinite(stacked).all()
    assert stacked[2].std() > 0  # this depth render has relief


def test_constant_depth_render_becomes_zeros() -> None:
    # SOURCES.md flags capsule/hole depth renders as one constant value: no relief, no NaN.
    depth = read_file(require(MULSEN / "capsule" / "test" / "hole" / "007" / "pc_depth.png"))
    assert depth.min() == depth.max()
    np.testing.assert_array_equal(prepare(depth, MULSEN_SPECS[2], 32), 0.0)


def test_mvtec3d_class_id_masks_binarise() -> None:
    defect = read_file(require(TIRE / "test" / "cut" / "gt" / "000.png"))
    assert defect.dtype == np.uint8 and defect.max() > 1  # class ids, not 0/1
    assert prepare_mask(defect, 256).any()
    good = read_file(require(TIRE / "test" / "good" / "gt" / "000.png"))
    assert not prepare_mask(good, 256).any()
