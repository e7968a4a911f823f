"""Anomaly-detection metrics as the field defines them, in numpy + scipy only.

Used by evaluation, by export verification and by ``python -m model metrics``. Every metric returns a
float in [0, 1], or ``None`` where it is undefined (one class only). Conventions fixed by the contract:

- AP is step-wise: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (scikit-learn's definition,
  no interpolation).
- F1-max is the best ``2PR / (P + R)`` over distinct thresholds; tied scores form a single threshold.
- AUROC is the trapezoidal area under the ROC curve built on distinct thresholds (ties count half).
- AUPRO follows the MVTec AD evaluation: for every distinct threshold, FPR over all normal pixels of all
  images (defective images included) and PRO = mean over 8-connected ground-truth components of the
  fraction of the component above the threshold; the curve is integrated to FPR 0.3 with the trapezoid
  rule (linear interpolation at the limit) and divided by 0.3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)
AUPRO_FPR_LIMIT = 0.3
# Bootstrap of the image AUROC: replicates and the two-sided coverage of the percentile interval.
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_LEVEL = 0.95
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class _Curve:
    """Cumulative true/false positives at each distinct threshold, highest score first."""

    true_positives: np.ndarray
    false_positives: np.ndarray

    @property
    def positives(self) -> int:
        return int(self.true_positives[-1])

    @property
    def negatives(self) -> int:
        return int(self.false_positives[-1])


def _curve(scores: np.ndarray, targets: np.ndarray) -> _Curve | None:
    """Counts for thresholds at every distinct score; ``None`` when ``targets`` hold one class only.

    scores: float (K,), targets: bool (K,).
    """
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    sorted_targets = targets[order]
    # The last index of each run of tied scores: a tie moves every tied item across the threshold at once.
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_positives = np.cumsum(sorted_targets, dtype=np.int64)[run_ends]
    false_positives = (run_ends + 1) - true_positives
    curve = _Curve(true_positives, false_positives)
    if curve.positives == 0 or curve.negatives == 0:
        return None
    return curve


def _auroc(curve: _Curve) -> float:
    tpr = np.r_[0.0, curve.true_positives / curve.positives]
    fpr = np.r_[0.0, curve.false_positives / curve.negatives]
    return float(np.trapezoid(tpr, fpr))


def _average_precision(curve: _Curve) -> float:
    precision = curve.true_positives / (curve.true_positives + curve.false_positives)
    recall_steps = np.diff(np.r_[0, curve.true_positives]) / curve.positives
    return float(np.sum(recall_steps * precision))


def _f1_max(curve: _Curve) -> float:
    # 2PR/(P+R) == 2TP / (2TP + FP + FN); the denominator is never zero since positives > 0.
    false_negatives = curve.positives - curve.true_positives
    f1 = 2 * curve.true_positives / (2 * curve.true_positives + curve.false_positives + false_negatives)
    return float(np.max(f1))


def auroc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` against binary ``targets``; ``None`` for one class."""
    curve = _curve(np.ravel(scores), np.ravel(targets).astype(bool))
    return None if curve is None else _auroc(curve)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Step-wise average precision; ``None`` for one class."""
    curve = _curve(np.ravel(scores), np.ravel(targets).astype(bool))
    return None if curve is None else _average_precision(curve)


def f1_max(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Best F1 over all distinct thresholds; ``None`` for one class."""
    curve = _curve(np.ravel(scores), np.ravel(targets).astype(bool))
    return None if curve is None else _f1_max(curve)


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoidal area under the piecewise-linear (x, y) for x in [x[0], x_limit]; x non-decreasing."""
    inside = x <= x_limit
    area = float(np.trapezoid(y[inside], x[inside]))
    last = np.flatnonzero(inside)[-1]
    if last + 1 < x.size and x[last] < x_limit:
        x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
        y_limit = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
        area += (x_limit - x0) * (y0 + y_limit) / 2
    return area


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float | None:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    maps: float (N, H, W) anomaly maps; masks: (N, H, W), defect where > 0.
    ``None`` when there is no defect pixel or no normal pixel.
    """
    defect = np.asarray(masks) > 0
    normal_count = int(np.count_nonzero(~defect))
    # Each pixel's contribution to FPR (normal) or to the mean PRO (1 / its region's size) when it
    # rises above the threshold; summing them in score order traces the whole curve at once.
    fp_step = (~defect).astype(np.float64)
    pro_step = np.zeros(defect.shape, dtype=np.float64)
    region_count = 0
    for index, image_mask in enumerate(defect):
        regions, count = ndimage.label(image_mask, structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel())
        pro_step[index][image_mask] = 1.0 / sizes[regions[image_mask]]
        region_count += count
    if region_count == 0 or normal_count == 0:
        return None

    scores = np.ravel(maps)
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    run_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    fpr = np.cumsum(fp_step.ravel()[order])[run_ends] / normal_count
    pro = np.cumsum(pro_step.ravel()[order])[run_ends] / region_count
    fpr = np.r_[0.0, fpr, 1.0]
    pro = np.r_[0.0, pro, 1.0]
    return float(np.clip(_trapezoid_to(fpr, pro, fpr_limit) / fpr_limit, 0.0, 1.0))


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """``image_auroc``, ``image_ap``, ``image_f1max`` from labels (N,) in {0, 1} and scores (N,)."""
    curve = _curve(np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1)
    if curve is None:
        return {"image_auroc": None, "image_ap": None, "image_f1max": None}
    return {
        "image_auroc": _auroc(curve),
        "image_ap": _average_precision(curve),
        "image_f1max": _f1_max(curve),
    }


def rank_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of every row by the rank-sum (Mann-Whitney) form, ties counted half.

    scores: float (R, K); positive: bool (R, K), each row with both classes -> (R,).
    """
    ranks = stats.rankdata(scores, axis=1)
    positives = positive.sum(axis=1)
    negatives = positive.shape[1] - positives
    rank_sum = (ranks * positive).sum(axis=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    replicates: int = BOOTSTRAP_REPLICATES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the image AUROC; None with one class only.

    Normals and defects are resampled separately (stratified), so every replicate keeps the test set's
    class sizes: with 10 normal images one of them moves the AUROC by up to 10 points, and the interval
    shows that. labels (N,) in {0, 1}, scores (N,).
    """
    labels, scores = np.asarray(labels) == 1, np.asarray(scores, dtype=np.float64)
    normal, defect = scores[~labels], scores[labels]
    if normal.size == 0 or defect.size == 0:
        return None
    rng = np.random.default_rng(seed)
    resampled = np.concatenate(
        [
            rng.choice(normal, size=(replicates, normal.size)),
            rng.choice(defect, size=(replicates, defect.size)),
        ],
        axis=1,
    )
    positive = np.zeros(resampled.shape, dtype=bool)
    positive[:, normal.size :] = True
    values = rank_auroc(resampled, positive)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float | None]:
    """``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``pixel_aupro`` from masks and maps (N, H, W)."""
    defect = np.asarray(masks) > 0
    curve = _curve(np.asarray(maps, dtype=np.float64).ravel(), defect.ravel())
    if curve is None:
        return {"pixel_auroc": None, "pixel_ap": None, "pixel_f1max": None, "pixel_aupro": None}
    return {
        "pixel_auroc": _auroc(curve),
        "pixel_ap": _average_precision(curve),
        "pixel_f1max": _f1_max(curve),
        "pixel_aupro": aupro(maps, defect),
    }


def validate_inputs(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> None:
    """Raise ``ValueError`` (one line) unless the four arrays form a valid evaluation set."""
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must have shape (N,) with N >= 1, got {labels.shape}")
    if scores.shape != labels.shape:
        raise ValueError(f"scores must have shape {labels.shape} like labels, got {scores.shape}")
    if masks.ndim != 3 or masks.shape[0] != labels.shape[0]:
        raise ValueError(f"masks must have shape ({labels.shape[0]}, H, W), got {masks.shape}")
    if maps.shape != masks.shape:
        raise ValueError(f"maps must have shape {masks.shape} like masks, got {maps.shape}")
    for name, array in (("labels", labels), ("scores", scores), ("masks", masks), ("maps", maps)):
        if not (
            np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)
            or array.dtype == np.bool_
        ):
            raise ValueError(f"{name} must hold real numbers or booleans, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds NaN or inf")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels must hold only 0 and 1, got values {np.unique(labels)[:5].tolist()}")


def compute_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray
) -> dict[str, float | None]:
    """All seven metrics of one evaluation set, keys in :data:`METRIC_KEYS` order.

    labels: (N,) 0/1 image labels; scores: (N,) image scores; masks: (N, H, W) defect where > 0;
    maps: (N, H, W) anomaly maps (any real values). Raises ``ValueError`` on invalid input.
    """
    labels, scores, masks, maps = (np.asarray(a) for a in (labels, scores, masks, maps))
    validate_inputs(labels, scores, masks, maps)
    return {**image_metrics(labels, scores), **pixel_metrics(masks, maps)}


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def dataset_of(domain: str) -> str:
    """The dataset part of a ``dataset/category`` domain name."""
    return domain.split("/", 1)[0]


def aggregate(per_domain: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per-dataset means, the mean over domains and the mean over datasets (spec 8.3).

    Means skip undefined (``None``) values; a metric undefined everywhere stays ``None``.
    Returns ``{"datasets": {dataset: metrics}, "mean_over_domains": metrics, "mean_over_datasets": metrics}``.
    """
    by_dataset: dict[str, list[Mapping[str, float | None]]] = {}
    for domain, metrics in per_domain.items():
        by_dataset.setdefault(dataset_of(domain), []).append(metrics)

    def mean_rows(rows: list[Mapping[str, float | None]]) -> dict[str, float | None]:
        return {key: _mean_defined([row.get(key) for row in rows]) for key in METRIC_KEYS}

    dataset_means = {name: mean_rows(rows) for name, rows in sorted(by_dataset.items())}
    return {
        "datasets": dataset_means,
        "mean_over_domains": mean_rows(list(per_domain.values())),
        "mean_over_datasets": mean_rows(list(dataset_means.values())),
    }
