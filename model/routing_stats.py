"""Routing health: how sharp, how balanced and how domain-specific the C-MoE gates are.

A gate that collapsed to uniform (every leader at 1/R) makes its top-K choice noise, and routing frozen
per domain then means nothing. Per gate (level, branch) and domain this accumulates the gate
probabilities of every (sample, modality) pair it saw and reports:

- ``top_probability``: mean of each pair's largest probability (1/R = uniform, 1 = one-hot);
- ``entropy``: mean per-pair entropy divided by log R (1 = uniform, 0 = one-hot);
- ``importance_cv2``: CV^2 of the domain's mean probabilities (the balance statistic, within a domain);
- ``leaders_used``: leaders that are some pair's top-1 (out of R);
- per gate, ``domain_divergence``: mean Jensen-Shannon divergence (base 2, in [0, 1]) between the domains'
  mean gate distributions (0 = every domain routes alike).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

GateKey = tuple[int, int]  # (level, branch)


@dataclass
class _GateTally:
    """Running sums for one (gate, domain)."""

    pairs: int = 0
    probability_sum: Tensor | None = None  # [R]
    top_probability_sum: float = 0.0
    entropy_sum: float = 0.0
    top1_counts: Tensor | None = None  # [R] int64


@dataclass
class RoutingMonitor:
    """Accumulate gate probabilities per (level, branch) and domain; ``summary()`` reports them."""

    tallies: dict[GateKey, dict[str, _GateTally]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, routes: Sequence[Sequence[Any]], pair_domains: Sequence[str]) -> None:
        """routes[level][branch] with ``probs`` [N,R] (a GateOutput); pair_domains: the N pairs' domains."""
        for level, branches in enumerate(routes):
            for branch, gate in enumerate(branches):
                if gate.probs is None:
                    continue
                probs = gate.probs.detach().float().cpu()
                for domain, rows in _rows_by_domain(pair_domains).items():
                    self._add(self.tallies[(level, branch)], domain, probs[rows])

    @staticmethod
    def _add(per_domain: dict[str, _GateTally], domain: str, probs: Tensor) -> None:
        tally = per_domain.setdefault(domain, _GateTally())
        leaders = probs.shape[1]
        if tally.probability_sum is None:
            tally.probability_sum = torch.zeros(leaders)
            tally.top1_counts = torch.zeros(leaders, dtype=torch.int64)
        tally.pairs += probs.shape[0]
        tally.probability_sum += probs.sum(dim=0)
        tally.top_probability_sum += float(probs.max(dim=1).values.sum())
        tally.entropy_sum += float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=1).sum())
        tally.top1_counts += torch.bincount(probs.argmax(dim=1), minlength=leaders)

    def summary(self) -> dict[str, Any]:
        """{"gates": {"l<level>.b<branch>": {"domains": {name: stats}, "domain_divergence": x}},
        "overall": means over gates and domains}."""
        gates: dict[str, Any] = {}
        for (level, branch), per_domain in sorted(self.tallies.items()):
            domains = {name: _domain_stats(tally) for name, tally in sorted(per_domain.items())}
            means = {name: tally.probability_sum / tally.pairs for name, tally in per_domain.items()}
            gates[f"l{level}.b{branch}"] = {
                "domains": domains,
                "domain_divergence": mean_pairwise_js(list(means.values())),
            }
        return {"gates": gates, "overall": _overall(gates)}


def _rows_by_domain(pair_domains: Sequence[str]) -> dict[str, Tensor]:
    rows: dict[str, list[int]] = defaultdict(list)
    for index, domain in enumerate(pair_domains):
        rows[domain].append(index)
    return {domain: torch.tensor(indices) for domain, indices in rows.items()}


def _domain_stats(tally: _GateTally) -> dict[str, float | int]:
    leaders = tally.probability_sum.shape[0]
    importance = tally.probability_sum / tally.pairs
    return {
        "pairs": tally.pairs,
        "top_probability": tally.top_probability_sum / tally.pairs,
        "entropy": tally.entropy_sum / tally.pairs / math.log(leaders),
        "importance_cv2": float(importance.var(unbiased=False) / importance.mean() ** 2),
        "leaders_used": int((tally.top1_counts > 0).sum()),
    }


def js_divergence(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon divergence in bits between two distributions [R] (0 = equal, 1 = disjoint)."""
    middle = (p + q) / 2

    def kl(a: Tensor) -> Tensor:
        return (a * (a.clamp_min(1e-12) / middle.clamp_min(1e-12)).log2()).sum()

    return float((kl(p) + kl(q)) / 2)


def mean_pairwise_js(distributions: list[Tensor]) -> float | None:
    """Mean JS divergence over all pairs of distributions; None with fewer than two."""
    pairs = list(itertools.combinations(distributions, 2))
    if not pairs:
        return None
    return sum(js_divergence(p, q) for p, q in pairs) / len(pairs)


def _overall(gates: dict[str, Any]) -> dict[str, float | None]:
    rows = [stats for gate in gates.values() for stats in gate["domains"].values()]
    divergences = [
        gate["domain_divergence"] for gate in gates.values() if gate["domain_divergence"] is not None
    ]
    if not rows:
        return {}
    return {
        "top_probability": sum(row["top_probability"] for row in rows) / len(rows),
        "entropy": sum(row["entropy"] for row in rows) / len(rows),
        "leaders_used": sum(row["leaders_used"] for row in rows) / len(rows),
        "domain_divergence": sum(divergences) / len(divergences) if divergences else None,
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One log line: the overall means."""
    overall = summary.get("overall") or {}
    if not overall:
        return "no routed pairs"
    divergence = overall["domain_divergence"]
    return (
        f"gate top-prob {overall['top_probability']:.3f}, entropy {overall['entropy']:.3f}, "
        f"leaders used {overall['leaders_used']:.1f}, domain JS "
        + ("n/a" if divergence is None else f"{divergence:.3f}")
    )
