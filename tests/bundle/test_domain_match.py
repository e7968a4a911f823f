"""The signature rule shared by export, service and evaluation: statistics, distance and the OOD bound."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.domain_match import (
    OOD_MARGIN,
    OOD_QUANTILE,
    fit_signature_statistics,
    ood_bound,
    signature_distance,
)


def normals(count: int, seed: int = 0) -> np.ndarray:
    """[count, 2 modalities, 8 features] around 1 with spread 0.1, one feature constant."""
    values = 1.0 + 0.1 * np.random.default_rng(seed).standard_normal((count, 2, 8))
    values[:, 0, 0] = 0.5
    return values


def test_normals_sit_near_one_and_a_shifted_domain_far_away() -> None:
    mean, scale = fit_signature_statistics(normals(200))
    held_out = signature_distance(normals(50, seed=1), mean, scale)
    shifted = signature_distance(normals(50, seed=2) + 0.5, mean, scale)
    assert 0.7 < np.median(held_out) < 1.3
    assert shifted.min() > 3 * held_out.max()


def test_a_constant_feature_gets_a_finite_scale() -> None:
    """Its variance is shrunk toward the modality's mean variance, so one new value cannot explode."""
    mean, scale = fit_signature_statistics(normals(20))
    assert np.all(np.isfinite(scale)) and scale[0, 0] > 0.01
    moved = normals(1, seed=3)
    moved[:, 0, 0] = 0.6
    assert signature_distance(moved, mean, scale)[0] < 3


def test_the_bound_is_the_margin_times_the_quantile() -> None:
    distances = np.linspace(0.5, 1.5, 101)
    assert ood_bound(distances) == pytest.approx(OOD_MARGIN * np.quantile(distances, OOD_QUANTILE))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_signature_statistics(normals(1)), "N >= 2"),
        (
            lambda: signature_distance(normals(2)[:, :1], *fit_signature_statistics(normals(5))),
            "do not match",
        ),
        (lambda: ood_bound(np.array([])), "at least one"),
    ],
)
def test_bad_shapes_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
