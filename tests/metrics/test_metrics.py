"""Metric values against scikit-learn, a brute-force AUPRO and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from model.metrics import (
    METRIC_KEYS,
    aggregate,
    aupro,
    auroc,
    auroc_interval,
    average_precision,
    compute_metrics,
    f1_max,
    image_metrics,
    rank_auroc,
)


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The MVTec AD definition evaluated threshold by threshold, slowly and independently."""
    defect = masks > 0
    regions = []
    for index, image_mask in enumerate(defect):
        labelled, count = ndimage.label(image_mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == k) for k in range(1, count + 1)]
    normal_scores = maps[~defect]
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal_scores >= threshold))
        pros.append(np.mean([np.mean(maps[index][region] >= threshold) for index, region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    grid = np.linspace(0.0, limit, 30001)
    # Linear interpolation of a curve with vertical steps: take the highest PRO at each FPR.
    fprs, pros = np.array(fprs), np.array(pros)
    return float(np.trapezoid(np.interp(grid, fprs, pros), grid) / limit)


def sklearn_f1_max(scores: np.ndarray, targets: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(targets, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    return float(f1.max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 300)
    # Rounded scores make long runs of ties, the case where implementations differ.
    scores = np.round(rng.normal(size=300) + targets * 0.8, 1)
    assert auroc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
    assert average_precision(scores, targets) == pytest.approx(
        average_precision_score(targets, scores), abs=1e-12
    )
    assert f1_max(scores, targets) == pytest.approx(sklearn_f1_max(scores, targets), abs=1e-12)


def test_tied_scores_form_one_threshold() -> None:
    scores = np.array([0.9, 0.5, 0.5])
    labels = np.array([1, 0, 1])
    # At 0.5 both tied items cross together: TP=2, FP=1 -> F1 = 0.8 (not 1.0 as a split tie would give).
    assert f1_max(scores, labels) == pytest.approx(0.8)
    assert average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc(scores, labels) == pytest.approx(0.75)


def test_hand_computed_aupro_two_images() -> None:
    masks = np.array([[[1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 1, 0]]], dtype=np.uint8)
    maps = np.array([[[0.95, 0.4, 0.9, 0.2, 0.2, 0.2]], [[0.85, 0.1, 0.1, 0.1, 0.3, 0.1]]])
    # PRO 0.25 up to FPR 2/9 (normal pixels of both images count), then 1: (0.25*2/9 + 0.3-2/9)/0.3 = 4/9.
    assert aupro(maps, masks) == pytest.approx(4 / 9)


def test_aupro_uses_eight_connected_regions() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 3, 3] = True
    maps = np.full((1, 4, 4), 0.5)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0
    maps[0, 1, 1] = 0.0
    # Diagonal neighbours are one region: PRO = mean(1/2, 1) = 0.75 (4-connectivity would give 2/3).
    assert aupro(maps, mask) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), dtype=np.uint8)
    masks[0, 2:5, 3:7] = 255
    masks[0, 9, 9] = 255  # a one-pixel region weighs as much as a large one
    masks[1, 6:11, 1:4] = 255
    maps = np.round(rng.normal(size=masks.shape) + (masks > 0) * 1.2, 2)
    assert aupro(maps, masks) == pytest.approx(brute_force_aupro(maps, masks), abs=1e-4)


def test_tiny_region_detected_or_missed_changes_aupro() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:6, 1:6] = True
    masks[1, 4, 4] = True
    maps = masks.astype(float)
    assert aupro(maps, masks) == pytest.approx(1.0)
    missed = maps.copy()
    missed[1, 4, 4] = -1.0  # the tiny region scores below every normal pixel
    # Half of the regions are missed until FPR = 1, however small the missed one is.
    assert aupro(missed, masks) == pytest.approx(0.5)


def test_bool_and_0_255_masks_give_identical_metrics() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 10, 10)) > 0.8
    maps = rng.normal(size=(4, 10, 10)) + masks
    labels = masks.any(axis=(1, 2)).astype(np.int64)
    labels[0] = 0
    scores = maps.max(axis=(1, 2))
    as_bool = compute_metrics(labels, scores, masks, maps)
    as_bytes = compute_metrics(labels, scores, masks.astype(np.uint8) * 255, maps)
    assert as_bool == as_bytes
    assert all(value is not None for value in as_bool.values())


def test_pixel_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((3, 16, 16)) > 0.9
    maps = np.round(rng.normal(size=masks.shape) + masks, 1) * 7.0  # any real range, many ties
    result = compute_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), masks, maps)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12
    )
    assert result["pixel_f1max"] == pytest.approx(sklearn_f1_max(maps.ravel(), masks.ravel()), abs=1e-12)


def test_one_class_gives_null_metrics() -> None:
    maps = np.zeros((2, 4, 4))
    only_normal = compute_metrics(np.array([0, 0]), np.array([0.1, 0.3]), np.zeros((2, 4, 4)), maps)
    assert list(only_normal) == list(METRIC_KEYS)
    assert all(value is None for value in only_normal.values())
    only_defect = compute_metrics(np.array([1, 1]), np.array([0.1, 0.3]), np.ones((2, 4, 4)), maps)
    assert all(value is None for value in only_defect.values())


def test_perfect_and_inverted_detectors() -> None:
    labels = np.array([0, 0, 1, 1])
    masks = np.zeros((4, 5, 5))
    masks[2:, 1:3, 1:3] = 1
    perfect = compute_metrics(labels, np.array([0.0, 0.1, 0.8, 0.9]), masks, masks * 3.0 - 1.0)
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    inverted = compute_metrics(labels, np.array([0.9, 0.8, 0.1, 0.0]), masks, -masks)
    assert inverted["image_auroc"] == pytest.approx(0.0)
    assert inverted["pixel_auroc"] == pytest.approx(0.0)
    assert inverted["pixel_aupro"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(labels=np.array([0, 2, 1])), "labels must hold only 0 and 1"),
        (lambda a: a.update(scores=np.array([0.1, np.nan, 0.2])), "scores holds NaN or inf"),
        (lambda a: a["maps"].__setitem__((0, 0, 0), np.inf), "maps holds NaN or inf"),
        (lambda a: a.update(maps=np.zeros((3, 4, 5))), "maps must have shape"),
        (lambda a: a.update(scores=np.zeros(2)), "scores must have shape"),
        (lambda a: a.update(masks=np.zeros((3, 4))), "masks must have shape"),
        (lambda a: a.update(labels=np.array(["a", "b", "c"])), "must hold real numbers"),
    ],
)
def test_bad_inputs_are_rejected_with_one_line(change, message: str) -> None:
    arrays = {
        "labels": np.array([0, 1, 1]),
        "scores": np.array([0.1, 0.5, 0.9]),
        "masks": np.zeros((3, 4, 4)),
        "maps": np.zeros((3, 4, 4)),
    }
    change(arrays)
    with pytest.raises(ValueError, match=message) as raised:
        compute_metrics(**arrays)
    assert "\n" not in str(raised.value)


def test_aggregate_means_per_dataset_and_skips_nulls() -> None:
    row = dict.fromkeys(METRIC_KEYS, 1.0)
    per_domain = {
        "mvtec3d/tire": row,
        "mvtec3d/foam": {**row, "image_auroc": 0.5, "pixel_aupro": None},
        "synthetic/tiles": dict.fromkeys(METRIC_KEYS, 0.0),
    }
    summary = aggregate(per_domain)
    assert summary["datasets"]["mvtec3d"]["image_auroc"] == pytest.approx(0.75)
    assert summary["datasets"]["mvtec3d"]["pixel_aupro"] == pytest.approx(1.0)
    assert summary["mean_over_domains"]["image_auroc"] == pytest.approx(0.5)
    assert summary["mean_over_datasets"]["image_auroc"] == pytest.approx(0.375)


def test_auroc_interval_brackets_the_auroc_and_narrows_with_more_images() -> None:
    rng = np.random.default_rng(0)

    def scores(normal: int, defective: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.r_[np.zeros(normal), np.ones(defective)]
        return labels, np.r_[rng.normal(0, 1, normal), rng.normal(1.5, 1, defective)]

    labels, values = scores(10, 40)
    low, high = auroc_interval(labels, values)
    assert low <= image_metrics(labels, values)["image_auroc"] <= high
    big_low, big_high = auroc_interval(*scores(400, 400))
    assert big_high - big_low < (high - low) / 2
    assert auroc_interval(labels, values) == (low, high)  # seeded: the same report twice
    assert auroc_interval(np.zeros(5), np.arange(5.0)) is None  # one class only


def test_rank_auroc_counts_ties_half_like_the_curve_auroc() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    values = np.array([0.1, 0.5, 0.5, 0.9, 0.3, 0.2])
    expected = image_metrics(labels, values)["image_auroc"]
    assert rank_auroc(values[None, :], labels[None, :] == 1)[0] == pytest.approx(expected)
