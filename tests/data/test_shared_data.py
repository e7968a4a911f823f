"""Adapters on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from model.data import parse_data_spec, shared_data_root

pytestmark = pytest.mark.skipif(
    not (shared_data_root() / "SOURCES.md").is_file(),
    reason=f"real data not found at {shared_data_root()} (set UNIMMAD_SHARED_DATA)",
)


def test_magnetic_tile_split_is_deterministic_and_disjoint() -> None:
    (source,) = parse_data_spec("shared:magnetic_tile")
    (domain,) = source.domains()
    train, test = source.refs("train", domain.name), source.refs("test", domain.name)
    assert [ref.id for ref in train] == [
        ref.id for ref in parse_data_spec("shared:magnetic_tile")[0].refs("train", domain.name)
    ]
    assert not {ref.id for ref in train} & {ref.id for ref in test}
    assert all(ref.label == 0 for ref in train) and all(ref.id.startswith("MT_Free/") for ref in train)
    normal_test = sum(ref.label == 0 for ref in test)
    assert 0.7 < len(train) / (len(train) + normal_test) < 0.9
    assert sum(ref.label for ref in test) == 115 + 85 + 57 + 32 + 103
    defective = source.load(next(ref for ref in test if ref.label and ref.id.startswith("MT_Blowhole")))
    assert defective.modalities["gray"].ndim == 2 and defective.mask.dtype == bool and defective.mask.any()
    assert defective.mask.shape == defective.modalities["gray"].shape


def test_mvtec3d_tire_is_rgb_only_with_binarised_class_id_masks() -> None:
    (source,) = parse_data_spec("shared:mvtec3d_tire")
    (domain,) = source.domains()
    assert domain.name == "mvtec3d/tire" and domain.modality_names == ("rgb",)
    test = source.refs("test", domain.name)
    assert len(source.refs("train", domain.name)) == 90 and len(test) == 112
    sample = source.load(next(ref for ref in test if ref.meta["defect_type"] == "cut"))
    assert sample.modalities["rgb"].shape == (800, 600, 3) and sample.label == 1
    assert sample.mask.any() and sample.mask.dtype == bool


def test_mulsen_derived_flags_blank_depth() -> None:
    (source,) = parse_data_spec("shared:mulsen:capsule")
    (domain,) = source.domains()
    assert [(m.name, m.kind) for m in domain.modalities] == [
        ("rgb", "rgb"),
        ("infrared", "gray"),
        ("depth", "depth"),
    ]
    samples = [source.load(ref) for ref in source.refs("test", domain.name)]
    blank = {s.meta["defect_type"] for s in samples if s.meta["blank_depth"]}
    assert {"crack", "squeeze", "broken_outside"} <= blank
    assert not any(s.meta["blank_depth"] for s in samples if s.label == 0)
    # SOURCES.md: 48 defective capsules, 40 of them with a non-empty RGB mask.
    assert sum(s.label for s in samples) == 48
    assert sum(s.mask is not None and s.mask.any() for s in samples) == 40
    assert all(s.mask.shape == (256, 256) for s in samples if s.mask is not None)
    assert np.ptp(source.load(source.refs("train", domain.name)[0]).modalities["depth"]) > 0


def test_unknown_mulsen_category_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown category teapot"):
        parse_data_spec("shared:mulsen:capsule+teapot")
