"""Everything fitted on the held-out normal images of a training run (the validation split, never test):
the normal statistics of calibrated fusion, the decision threshold and the normalised score's range.

One implementation serves `python -m model evaluate` and `python -m export bundle`, so the score a report
shows is the score the bundle's graphs compute:

    run config data.holdout --RecordedHoldout.split--> (training normals, held-out normals) per domain
    held-out normals --fit_normal_statistics--> NormalStatistics [M, L]: mean and standard deviation of
                                                every level's cosine distance over all normal pixels
    held-out normals' image scores --quantile_threshold--> threshold (1 - target FPR quantile)
                                   --score_range--> [low, high] of the normalised score

The normalised score follows anomalib's convention: clip((score - low) / (high - low), 0, 1) puts the
threshold at exactly 0.5; the range is centred on the threshold with half-width threshold - median normal
score, so a typical normal image scores 0 and a score as far above the threshold as the threshold is
above a typical normal scores 1 (the same anchoring as the heatmaps' colour ranges).

The statistics come from per-sample routing (the torch model as trained); both exported graphs apply the
same numbers. Held-out images, not training ones: the model reconstructs what it trained on better than
new normals, and a threshold set on deflated statistics would fire on every unseen normal. Only a run
that held out fewer than MIN_HOLDOUT_IMAGES normals of a domain falls back to its training normals, and
the split's name says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.anomaly_map import NormalStatistics, level_distances
from model.data.holdout import SampleT, split_holdout
from model.unimmad import UniMMAD

DEFAULT_HOLDOUT_FRACTION = 0.1
DEFAULT_HOLDOUT_SEED = 0
DEFAULT_TARGET_FPR = 0.05
# Fewer held-out normals than this make a meaningless quantile: the training normals are used instead.
MIN_HOLDOUT_IMAGES = 5
# Floor of a fitted scale, relative to 1: a (modality, level) whose normal distances are constant must
# not divide by zero.
MIN_SCALE = 1e-6
# Smallest half-width of a score range relative to the threshold, for normals that all score the same.
MIN_RELATIVE_SPAN = 1e-6


@dataclass(frozen=True)
class RecordedHoldout:
    """The normal training images a run held out: its fraction and seed and, when recorded, the ids per domain."""

    fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = DEFAULT_HOLDOUT_SEED
    ids: dict[str, list[str]] | None = None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RecordedHoldout:
        """What `python -m model train` recorded under data.holdout (the defaults for runs that recorded none)."""
        holdout = (run_config.get("data") or {}).get("holdout") or {}
        return cls(
            fraction=float(holdout.get("fraction", DEFAULT_HOLDOUT_FRACTION)),
            seed=int(holdout.get("seed", DEFAULT_HOLDOUT_SEED)),
            ids=holdout.get("ids"),
        )

    def split(self, domain: str, normals: Sequence[SampleT]) -> tuple[list[SampleT], list[SampleT]]:
        """(kept for training, held out) of one domain's normal training samples, each in input order: the
        recorded ids where the run recorded this domain's, else the deterministic split_holdout rule."""
        if self.ids is not None and domain in self.ids:
            held = set(self.ids[domain])
            return [s for s in normals if s.id not in held], [s for s in normals if s.id in held]
        return split_holdout(normals, self.fraction, self.seed)

    def describe(self) -> str:
        """The split's name in manifests and reports."""
        return f"holdout(fraction={self.fraction}, seed={self.seed})"


def calibration_normals(
    holdout: RecordedHoldout, domain: str, normals: Sequence[SampleT]
) -> tuple[list[SampleT], str]:
    """The normal images everything of a domain is fitted on, and their split's name: the held-out
    normals, or the training normals (said so) when fewer than MIN_HOLDOUT_IMAGES were held out."""
    train, held = holdout.split(domain, normals)
    if len(held) >= MIN_HOLDOUT_IMAGES:
        return held, holdout.describe()
    return train, f"train (fallback: only {len(held)} held-out normals, {MIN_HOLDOUT_IMAGES} needed)"


@torch.no_grad()
def fit_normal_statistics(model: UniMMAD, image_batches: Iterable[Tensor]) -> NormalStatistics:
    """Mean and standard deviation [M, L] of each (slot, level) cosine distance over every pixel of
    `image_batches` ([B, M, 3, S, S], one domain, every slot present), with per-sample routing."""
    total = squares = None
    images_seen = 0
    for images in image_batches:
        distances = [level.double() for level in level_distances(model(images))]  # per level [B, M, h, w]
        batch_total = torch.stack([level.sum(dim=(0, 2, 3)) for level in distances], dim=1)  # [M, L]
        batch_squares = torch.stack([(level**2).sum(dim=(0, 2, 3)) for level in distances], dim=1)
        total = batch_total if total is None else total + batch_total
        squares = batch_squares if squares is None else squares + batch_squares
        level_pixels = torch.tensor([level.shape[-2] * level.shape[-1] for level in distances])
        images_seen += images.shape[0]
    if total is None or squares is None:
        raise ValueError("normal statistics need at least one normal image")
    per_level = (level_pixels * images_seen).double()  # [L] pixels seen per (slot, level)
    mean = total / per_level
    variance = (squares / per_level - mean**2).clamp(min=0)
    return NormalStatistics(mean.float(), variance.sqrt().clamp(min=MIN_SCALE).float())


def stack_statistics(per_domain: Sequence[NormalStatistics], slots: int) -> NormalStatistics:
    """One [D, slots, L] bank of per-domain statistics [M_d, L] (unused slots: location 0, scale 1)."""
    levels = per_domain[0].location.shape[1]
    location = torch.zeros(len(per_domain), slots, levels)
    scale = torch.ones(len(per_domain), slots, levels)
    for index, statistics in enumerate(per_domain):
        present = statistics.location.shape[0]
        location[index, :present] = statistics.location
        scale[index, :present] = statistics.scale
    return NormalStatistics(location, scale)


def quantile_threshold(normal_scores: np.ndarray, target_fpr: float) -> float:
    """The (1 - target_fpr) quantile of normal image scores [n] (n >= 1; numpy's "higher" method, so at
    most target_fpr of them score above it)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target false positive rate must be within [0, 1), got {target_fpr}")
    if normal_scores.size == 0:
        raise ValueError("a threshold needs at least one normal image score")
    return float(np.quantile(normal_scores, 1 - target_fpr, method="higher"))


def score_range(normal_scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """[low, high] of the normalised score: centred on `threshold`, half-width threshold - median normal."""
    half = max(threshold - float(np.median(normal_scores)), MIN_RELATIVE_SPAN * max(abs(threshold), 1.0))
    return threshold - half, threshold + half


def normalized_scores(scores: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Scores [n] -> [0, 1] with the threshold (the middle of `bounds`) at 0.5."""
    low, high = bounds
    return np.clip((np.asarray(scores, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


__all__ = [
    "DEFAULT_TARGET_FPR",
    "MIN_HOLDOUT_IMAGES",
    "NormalStatistics",
    "RecordedHoldout",
    "calibration_normals",
    "fit_normal_statistics",
    "normalized_scores",
    "quantile_threshold",
    "score_range",
    "stack_statistics",
]
