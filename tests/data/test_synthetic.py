"""The synthetic generator: determinism, exact single-modality defects, variation, speed-independent API."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.synthetic import DEFECT_MODALITIES, DOMAINS, SyntheticConfig, SyntheticSource, generate

SMALL = SyntheticConfig(size=48, train_per_domain=4, test_normal_per_domain=2, test_defective_per_domain=6)


def test_same_seed_same_samples_and_other_seed_differs() -> None:
    first, second = SyntheticSource(config=SMALL), SyntheticSource(config=SMALL)
    other = SyntheticSource(config=SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    for domain in DOMAINS:
        ref = first.refs("test", domain.name)[-1]
        a, b, c = first.load(ref), second.load(ref), other.load(ref)
        for name in domain.modality_names:
            np.testing.assert_array_equal(a.modalities[name], b.modalities[name])
            assert not np.array_equal(a.modalities[name], c.modalities[name])
        np.testing.assert_array_equal(a.mask, b.mask)


def test_a_sample_does_not_depend_on_generation_order() -> None:
    source = SyntheticSource(config=SMALL)
    refs = source.refs("train", "synthetic/parts")
    forward = [source.load(ref).modalities["depth"] for ref in refs]
    backward = [source.load(ref).modalities["depth"] for ref in reversed(refs)][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("domain", [d.name for d in DOMAINS])
def test_defects_change_only_their_modalities_and_only_inside_the_mask(domain: str) -> None:
    for defect in DEFECT_MODALITIES[domain]:
        for index in range(3):
            # The defect has its own random stream: the same index without a defect is the clean scene.
            clean = generate(domain, "test", index, None, SMALL)
            defective = generate(domain, "test", index, defect, SMALL)
            assert clean.label == 0 and not clean.mask.any()
            assert defective.label == 1 and defective.meta["defect_modality"] == defect
            assert defective.mask.dtype == bool and defective.mask.any()
            shown_in = set(defect.split("+"))
            for name, array in defective.modalities.items():
                changed = array != clean.modalities[name]
                changed = changed.any(axis=2) if changed.ndim == 3 else changed
                if name in shown_in:
                    assert not (changed & ~defective.mask).any(), f"{name} changed outside the mask"
                    # Most of the mask must visibly change (uint8 rounding may hide a pixel here and there).
                    assert changed[defective.mask].mean() > 0.9, (name, defect)
                else:
                    assert not changed.any(), f"{defect} defect leaked into {name}"


def test_normal_samples_vary() -> None:
    source = SyntheticSource(config=SMALL)
    for domain in DOMAINS:
        first, second = (source.load(ref) for ref in source.refs("train", domain.name)[:2])
        for name in domain.modality_names:
            a, b = first.modalities[name].astype(float), second.modalities[name].astype(float)
            assert np.abs(a - b).mean() > 0.002 * (1 if first.modalities[name].dtype.kind == "f" else 255)


def test_arrays_follow_the_modality_kinds() -> None:
    source = SyntheticSource(config=SMALL)
    for domain in DOMAINS:
        sample = source.load(source.refs("train", domain.name)[0])
        assert [spec.name for spec in sample.specs] == list(domain.modality_names)
        for spec in sample.specs:
            array = sample.modalities[spec.name]
            expected = {
                "rgb": ((48, 48, 3), np.uint8),
                "gray": ((48, 48), np.uint8),
                "depth": ((48, 48), np.float32),
            }
            assert (array.shape, array.dtype) == expected[spec.kind]
            if spec.kind == "depth":
                assert (array > 0).any() and np.isfinite(array).all()


def test_split_counts_and_defect_cycle() -> None:
    source = SyntheticSource(config=SMALL)
    refs = source.refs("test", "synthetic/boards")
    assert [ref.label for ref in refs] == [0, 0] + [1] * 6
    assert [ref.meta["defect_modality"] for ref in refs[2:]] == ["rgb", "infrared", "depth"] * 2
    assert len(source.refs("train", "synthetic/boards")) == 4


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="size"):
        SyntheticConfig(size=4)
    with pytest.raises(ValueError, match="no defect shown in 'infrared'"):
        generate("synthetic/tiles", "test", 0, "infrared", SMALL)
