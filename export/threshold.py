"""Per-domain decision threshold, normalised-score range and heatmap colour ranges from normal images
nobody trained on (the run's held-out normals: the validation split, never test).

Method "normal_quantile": the threshold is the (1 - target_fpr) quantile of the held-out normal images'
image scores from the graph serving the domain (model.calibration.quantile_threshold), and the normalised
score's range is centred on it (model.calibration.score_range). With fewer than
model.calibration.MIN_HOLDOUT_IMAGES held-out normals the estimate is meaningless; the training normals
are used instead and the manifest's `split` says so.

Heatmap colour ranges come from the same normal images. Anomaly maps of this model sit on a large
per-domain baseline, so a ramp anchored at 0 paints every pixel the same mid colour. Per map (fused and
each modality, whose scales differ) the range is:
    low  = median pixel of the normal maps            -> half of all normal pixels get the darkest colour
    high = low + 2 * (level - low), level = the (1 - target_fpr) quantile of that map's normal image scores
so the level that flags an image (for the fused map: the threshold) sits mid-ramp, the hottest spots of
normal images stay below it and defects reach the top of the ramp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.calibration import MIN_RELATIVE_SPAN, quantile_threshold, score_range

METHOD = "normal_quantile"


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    target_fpr: float
    n_images: int
    split: str
    score_range: tuple[float, float]  # of the normalised score, threshold in the middle

    def method_entry(self) -> dict:
        """The manifest's ``threshold_method`` of this threshold."""
        return {
            "method": self.method,
            "target_fpr": self.target_fpr,
            "n_images": self.n_images,
            "split": self.split,
        }


@dataclass(frozen=True)
class NormalOutputs:
    """Frozen-graph outputs of a set of normal images (n of them, M modalities, side S)."""

    image_scores: np.ndarray  # [n]
    modality_scores: np.ndarray  # [n, M]
    fused_maps: np.ndarray  # [n, S, S]
    modality_maps: np.ndarray  # [n, M, S, S]

    @property
    def count(self) -> int:
        return int(self.image_scores.size)


def choose_threshold(normals: NormalOutputs, target_fpr: float, split: str) -> Threshold:
    value = quantile_threshold(normals.image_scores, target_fpr)
    return Threshold(
        value, METHOD, target_fpr, normals.count, split, score_range(normals.image_scores, value)
    )


def colour_range(
    normal_maps: np.ndarray, normal_scores: np.ndarray, target_fpr: float
) -> tuple[float, float]:
    """(low, high), low < high, of one kind of map from its normal maps [n, S, S] and image scores [n]."""
    low = float(np.median(normal_maps))
    level = quantile_threshold(normal_scores, target_fpr)
    span = max(2.0 * (level - low), MIN_RELATIVE_SPAN * max(abs(low), 1.0))
    return low, low + span


def heatmap_ranges(normals: NormalOutputs, modality_names: Sequence[str], target_fpr: float) -> dict:
    """``{"fused": (low, high), "modalities": {name: (low, high)}}`` in the manifest's form."""
    return {
        "fused": colour_range(normals.fused_maps, normals.image_scores, target_fpr),
        "modalities": {
            name: colour_range(normals.modality_maps[:, slot], normals.modality_scores[:, slot], target_fpr)
            for slot, name in enumerate(modality_names)
        },
    }
