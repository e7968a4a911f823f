"""Which calibrated modality set serves a request, and how well the sample fits it.

A served set is a domain with all its modalities, or a calibrated subset of them (a missing sensor); each
has its own graph index, threshold and out-of-distribution bound (bundle.manifest.DomainSpec.subset_view).
A request names its domain, or leaves it out and the service picks, among the sets whose modalities are
exactly the uploaded ones, the one the sample's domain signature is nearest to, in units of each set's
bound (bundle.domain_match): a fit of 1 is on the bound, above 1 is out of distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from bundle.domain_match import signature_distance
from bundle.manifest import DomainSpec, Manifest
from service.errors import ServiceError


@dataclass(frozen=True)
class ServedSet:
    """key: the batcher's queue ('domain' or 'domain:subset'); spec: the domain as this set serves it."""

    key: str
    domain: str
    subset: str | None
    spec: DomainSpec

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.spec.modality_names)


@dataclass(frozen=True)
class Fit:
    """A sample's distance to a served set in units of the set's bound (<= 1: in distribution)."""

    served: ServedSet
    ratio: float


@dataclass(frozen=True)
class DomainMatch:
    """The fit of the set a sample is scored as, and of the other candidates, best first."""

    scored: Fit
    others: list[Fit]

    @property
    def nearest_other(self) -> Fit | None:
        return self.others[0] if self.others else None

    @property
    def confidence(self) -> float:
        """1 - scored / nearest other fit: 0 for a tie, near 1 when the scored set is unambiguous; 1 without
        another candidate."""
        other = self.nearest_other
        if other is None:
            return 1.0
        return float(min(max(1.0 - self.scored.ratio / other.ratio, 0.0), 1.0))


def served_sets(manifest: Manifest) -> dict[str, ServedSet]:
    """Every domain, then every calibrated subset as 'domain:subset'."""
    sets = {name: ServedSet(name, name, None, spec) for name, spec in manifest.domains.items()}
    for name, spec in manifest.domains.items():
        for key in spec.subsets:
            sets[f"{name}:{key}"] = ServedSet(f"{name}:{key}", name, key, spec.subset_view(key))
    return sets


def set_for_domain(
    sets: Mapping[str, ServedSet], domain: str, uploaded: frozenset[str], allow_subsets: bool
) -> ServedSet:
    """The set serving `domain` for the uploaded modality names: the whole domain, or the calibrated subset
    of exactly those modalities when allowed. Anything else is left to the file checks (missing/extra)."""
    whole = sets[domain]
    if uploaded >= whole.names:
        return whole
    subset = next((s for s in sets.values() if s.domain == domain and s.subset and s.names == uploaded), None)
    if subset is None:
        return whole
    if not allow_subsets:
        missing = ", ".join(sorted(whole.names - uploaded))
        raise ServiceError(
            422,
            "missing_modality",
            f"domain {domain!r} also needs: {missing} (the subset {subset.subset} is calibrated: send "
            "allow_missing=true, or set UNIMMAD_ALLOW_MISSING_MODALITIES, to score without them)",
        )
    return subset


def candidates(
    sets: Mapping[str, ServedSet], uploaded: frozenset[str], allow_subsets: bool
) -> list[ServedSet]:
    """The sets whose modalities are exactly `uploaded` (subsets only when allowed)."""
    return [s for s in sets.values() if s.names == uploaded and (allow_subsets or s.subset is None)]


def fit(signature: Mapping[str, np.ndarray], served: ServedSet) -> Fit:
    """signature: per modality name its row [F] -> the sample's fit to `served` (its bound must exist)."""
    spec = served.spec
    if spec.signature is None:
        raise ValueError(f"{served.key} has no signature statistics")
    names = spec.modality_names
    sample = np.stack([signature[name] for name in names])[None]
    distance = float(signature_distance(sample, *spec.signature.statistics(names))[0])
    return Fit(served, distance / spec.signature.bound)


def best_match(signatures: Mapping[str, Mapping[str, np.ndarray]], sets: Iterable[ServedSet]) -> DomainMatch:
    """signatures: per set key, the sample's signature by modality name -> the best-fitting set scored."""
    fits = sorted((fit(signatures[s.key], s) for s in sets), key=lambda f: f.ratio)
    return DomainMatch(fits[0], fits[1:])


def given_match(
    signature: Mapping[str, np.ndarray], served: ServedSet, rivals: Iterable[ServedSet]
) -> DomainMatch:
    """The fit of the requested set `served`, and of the `rivals` that take the same modalities."""
    return DomainMatch(
        fit(signature, served), sorted((fit(signature, s) for s in rivals), key=lambda f: f.ratio)
    )


def by_name(signature: np.ndarray, served: ServedSet) -> dict[str, np.ndarray]:
    """One sample's signature [M, F] in `served`'s modality order -> {modality name: [F]}."""
    return dict(zip(served.spec.modality_names, signature))
