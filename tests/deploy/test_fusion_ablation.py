"""benchmarks/fusion_ablation.py: the score-level fusion it derives from a calibrated_max report."""

from __future__ import annotations

import fusion_ablation
import pytest


def report(entries: list[tuple[int, float, float, bool]], mean: list[float], std: list[float]) -> dict:
    """A domain report with modalities quiet (normals score alike) and noisy, per-sample scores as given."""
    return {
        "modalities": ["quiet", "noisy"],
        "decision": {"validation": {"modality_score_mean": mean, "modality_score_std": std}},
        "scores": [
            {"label": label, "modality_scores": {"quiet": quiet, "noisy": noisy}, "blank_depth": blank}
            for label, quiet, noisy, blank in entries
        ],
    }


def test_a_defect_only_the_quiet_sensor_sees_is_not_drowned_by_the_noisy_one() -> None:
    # quiet: normals 1.0 +- 0.1, defects 1.5; noisy: normals 2.0 +- 1.0 and no signal in the defects.
    entries = [(0, 1.0, 3.0, False), (0, 1.1, 1.0, False), (1, 1.5, 2.0, False), (1, 1.5, 1.5, False)]
    derived = fusion_ablation.score_standardised(report(entries, mean=[1.0, 2.0], std=[0.1, 1.0]))
    raw_max = [max(quiet, noisy) for _, quiet, noisy, _ in entries]  # what a raw maximum would rank
    assert raw_max[0] > raw_max[2]  # the raw maximum ranks a normal above a defect
    assert derived["image_auroc"] == pytest.approx(1.0)
    assert "without_blank_depth" not in derived


def test_blank_depth_samples_get_their_own_figure_and_a_tiny_spread_is_floored() -> None:
    entries = [(0, 1.0 + 1e-3, 2.0, False), (1, 1.0, 3.0, False), (1, 0.0, 0.5, True)]
    # Unfloored, the quiet sensor's spread of 0 would blow the normal's 1e-3 up past every defect.
    derived = fusion_ablation.score_standardised(report(entries, mean=[1.0, 2.0], std=[0.0, 1.0]))
    assert derived["without_blank_depth"]["fused"] == pytest.approx(1.0)
    assert derived["image_auroc"] == pytest.approx(0.5)  # the blank-depth defect scores below the normal
