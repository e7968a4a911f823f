"""A deterministic holdout of normal training samples (threshold calibration, early evaluation).

Per domain, the samples are ranked by the SHA-256 of ``seed`` and their id, and the first
``ceil(fraction * n)`` go to the holdout, raised to ``minimum`` as far as ``MAX_HOLDOUT_SHARE`` of the
domain allows (none when ``fraction`` is 0, never all). The floor exists because thresholds are quantiles of the
held-out normals' scores: a 0.95 quantile of 6 images is just their maximum. The choice depends only on ids, seed and fraction: it is the same
whatever order the adapter lists the samples in, and adding a sample moves at most one other.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol, TypeVar


class HasDomainAndId(Protocol):
    domain: str
    id: str


SampleT = TypeVar("SampleT", bound=HasDomainAndId)

# Enough held-out normals per domain for a 0.95 quantile that is not simply the maximum.
DEFAULT_MIN_HOLDOUT = 20
# The floor never takes more than this share of a small domain's normals away from training.
MAX_HOLDOUT_SHARE = 0.25


def holdout_rank(sample_id: str, seed: int) -> bytes:
    """The sort key of a sample within its domain: SHA-256 of ``"<seed>:<id>"``."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()


def holdout_count(size: int, fraction: float, minimum: int = DEFAULT_MIN_HOLDOUT) -> int:
    """How many of a domain's ``size`` samples are held out: ceil(fraction*size), raised to ``minimum``
    but never by the floor beyond floor(MAX_HOLDOUT_SHARE * size); at least 1, at most size - 1."""
    if size < 2 or fraction == 0:
        return 0
    floor = min(minimum, math.floor(MAX_HOLDOUT_SHARE * size))
    return min(max(math.ceil(fraction * size), floor, 1), size - 1)


def split_holdout(
    samples: Sequence[SampleT], fraction: float = 0.1, seed: int = 0, minimum: int = DEFAULT_MIN_HOLDOUT
) -> tuple[list[SampleT], list[SampleT]]:
    """Split ``samples`` (SampleRef or Sample: anything with ``domain`` and ``id``) into (train, holdout).

    Both lists keep the input order. Raises ValueError for a fraction outside [0, 1) or repeated ids.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be within [0, 1), got {fraction}")
    by_domain: dict[str, list[str]] = defaultdict(list)
    for sample in samples:
        by_domain[sample.domain].append(sample.id)
    held: set[tuple[str, str]] = set()
    for domain, ids in by_domain.items():
        if len(set(ids)) != len(ids):
            raise ValueError(f"domain {domain} repeats sample ids; a holdout by id needs unique ids")
        ranked = sorted(ids, key=lambda sample_id: holdout_rank(sample_id, seed))
        held.update((domain, sample_id) for sample_id in ranked[: holdout_count(len(ids), fraction, minimum)])
    train = [sample for sample in samples if (sample.domain, sample.id) not in held]
    holdout = [sample for sample in samples if (sample.domain, sample.id) in held]
    return train, holdout
