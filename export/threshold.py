"""Per-domain decision threshold from the image scores of normal images nobody trained on.

Method "normal_quantile": the threshold is the (1 - target_fpr) quantile of the held-out normal images'
frozen-graph image scores (numpy's "higher" method, so at most target_fpr of them score above it). With
fewer than MIN_HOLDOUT_IMAGES held-out normals the estimate is meaningless; the training normals are used
instead and the manifest's `split` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

METHOD = "normal_quantile"
DEFAULT_TARGET_FPR = 0.05
MIN_HOLDOUT_IMAGES = 5


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    target_fpr: float
    n_images: int
    split: str


def quantile_threshold(normal_scores: np.ndarray, target_fpr: float) -> float:
    """The (1 - target_fpr) quantile of normal image scores [n] (n >= 1)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target false positive rate must be within [0, 1), got {target_fpr}")
    if normal_scores.size == 0:
        raise ValueError("a threshold needs at least one normal image score")
    return float(np.quantile(normal_scores, 1 - target_fpr, method="higher"))


def choose_threshold(
    holdout_scores: np.ndarray, train_scores: Callable[[], np.ndarray], target_fpr: float, holdout_split: str
) -> Threshold:
    """Threshold from held-out normals, or from `train_scores()` (called only then) when too few are held out."""
    if holdout_scores.size >= MIN_HOLDOUT_IMAGES:
        scores, split = holdout_scores, holdout_split
    else:
        scores = train_scores()
        split = f"train (fallback: only {holdout_scores.size} held-out normals, {MIN_HOLDOUT_IMAGES} needed)"
    return Threshold(quantile_threshold(scores, target_fpr), METHOD, target_fpr, int(scores.size), split)
