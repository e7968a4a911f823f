"""Which domain a sample belongs to, and whether it belongs to any, from its domain signature.

A signature is what the graphs output as ``signature`` ``[B, M, F]``: per modality slot, the spatial mean
of each L2-normalised prior level, concatenated. The prior is the frozen pretrained trunk, so the signature
does not depend on the ``domain`` input. Each domain keeps, per modality, the mean and a shrunk standard
deviation of the signatures of its normal training images; a sample's distance to a domain is the root
mean square of its standardised signature over the domain's (or a subset's) modalities and features, so
distances of different modality counts are on one scale. A domain's out-of-distribution bound is
``OOD_MARGIN`` times the ``OOD_QUANTILE`` quantile of the distances of its held-out normal images, which
the statistics were not fitted on.

Torch-free: export fits and calibrates with these functions and the service and the evaluation script
apply them, so the rule cannot differ between them.
"""

from __future__ import annotations

import numpy as np

# Each feature's variance is pulled this far toward the mean variance of its modality's features: a few
# dozen normal images cannot estimate a near-zero variance, and one such feature would dominate a distance.
VARIANCE_SHRINK = 0.1
OOD_QUANTILE = 0.99
OOD_MARGIN = 1.5
BOUND_RULE = f"{OOD_MARGIN:g} x the {OOD_QUANTILE:g} quantile of the held-out normals' distances"


def fit_signature_statistics(signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """signatures ``[N, M, F]`` of one domain's normal images (N >= 2) -> (mean ``[M, F]``, scale ``[M, F]``)."""
    if signatures.ndim != 3 or len(signatures) < 2:
        raise ValueError(f"need signatures [N >= 2, M, F], got shape {list(signatures.shape)}")
    values = signatures.astype(np.float64)
    variance = values.var(axis=0)
    pooled = variance.mean(axis=1, keepdims=True)
    shrunk = (1 - VARIANCE_SHRINK) * variance + VARIANCE_SHRINK * pooled
    return values.mean(axis=0), np.sqrt(np.maximum(shrunk, np.finfo(np.float32).tiny))


def signature_distance(signatures: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """signatures ``[N, M, F]`` -> distances ``[N]`` to statistics ``[M, F]`` of the same modalities."""
    if signatures.shape[1:] != mean.shape:
        raise ValueError(
            f"signatures {list(signatures.shape[1:])} do not match statistics {list(mean.shape)}"
        )
    standardised = (signatures.astype(np.float64) - mean) / scale
    return np.sqrt(np.mean(standardised**2, axis=(1, 2)))


def ood_bound(held_out_distances: np.ndarray) -> float:
    """The largest distance still in distribution, from held-out normal images' distances ``[N]`` (N >= 1)."""
    if held_out_distances.size == 0:
        raise ValueError("the out-of-distribution bound needs at least one held-out normal image")
    return float(OOD_MARGIN * np.quantile(held_out_distances, OOD_QUANTILE))
