"""Frozen routing of one domain: the leaders every (modality slot, level, branch) uses at inference.

A domain's routing is two tensors indexed [slot, level, branch, k]: the leader indices and their
scores (summing to 1 per gate), heaviest first. With "topk" calibration every gate has K leaders; with
"expected" calibration a gate may mix any number of leaders, so the last axis is the largest count over
the domain's gates and shorter gates are padded with zero-score leaders, which add exactly nothing to a
routed kernel. `forced_routing` turns it into the per-pair `ForcedRoute`s UniMMAD.forward accepts,
which is the torch reference of the frozen export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bundle.manifest import DomainSpec
from model.cmoe import ForcedRoute
from model.config import UniMMADConfig
from model.unimmad import LEVELS, Routing


def branch_name(kernel_size: int) -> str:
    """Manifest name of a MiMoE branch: its kernel size, e.g. 'k3'."""
    return f"k{kernel_size}"


@dataclass(frozen=True)
class DomainRouting:
    """idx int64 [M, L, nbranch, K'] and scores float32 [M, L, nbranch, K'] of one domain's M slots."""

    idx: Tensor
    scores: Tensor

    def __post_init__(self) -> None:
        if self.idx.shape != self.scores.shape or self.idx.dim() != 4:
            raise ValueError(
                f"routing idx {list(self.idx.shape)} and scores {list(self.scores.shape)} must "
                "both be [slots, levels, branches, leaders]"
            )

    @property
    def slots(self) -> int:
        return self.idx.shape[0]

    def route(self, slot: int, level: int, branch: int) -> tuple[Tensor, Tensor]:
        """Leaders and scores of one gate: ([K'] int64, [K'] float32)."""
        return self.idx[slot, level, branch], self.scores[slot, level, branch]


def forced_routing(routing: DomainRouting, pair_slot: Tensor) -> Routing:
    """Per-pair forced routes for pairs whose slots are `pair_slot` [N]: routing[level][branch] = ForcedRoute."""
    idx = routing.idx.to(pair_slot.device)[pair_slot]  # [N, L, nbranch, K']
    scores = routing.scores.to(pair_slot.device)[pair_slot]
    levels, branches = idx.shape[1:3]
    return [
        [ForcedRoute(idx[:, level, branch], scores[:, level, branch]) for branch in range(branches)]
        for level in range(levels)
    ]


def slot_major_pairs(batch: int, slots: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """pair_sample, pair_slot [slots*batch] of a full batch packed slot-major (all slot-0 pairs first).

    Built with expand rather than `%`/`//` so that it exports with a symbolic batch size.
    """
    grid = (slots, batch)
    pair_sample = torch.arange(batch, device=device)[None, :].expand(grid).reshape(-1)
    pair_slot = torch.arange(slots, device=device)[:, None].expand(grid).reshape(-1)
    return pair_sample, pair_slot


def routing_from_weights(weights: Tensor) -> DomainRouting:
    """Dense leader weights [M, L, nbranch, R] (zero = unused) -> routing over the nonzero ones, heaviest first.

    K' = the most nonzero leaders any gate has; gates with fewer are padded with zero-score leaders.
    """
    if bool((weights < 0).any()):
        raise ValueError("routing weights must be non-negative")
    width = max(int((weights > 0).sum(-1).max()), 1)
    scores, idx = weights.topk(width, dim=-1)
    return DomainRouting(idx, scores)


def routing_from_manifest(spec: DomainSpec, config: UniMMADConfig) -> DomainRouting:
    """Rebuild a domain's frozen routing from its manifest entry (every slot, level and branch must be there)."""
    slots, levels, branches = len(spec.modalities), LEVELS, len(config.kernel_sizes)
    names = [branch_name(size) for size in config.kernel_sizes]
    weights = torch.zeros(slots, levels, branches, config.leaders)
    seen = torch.zeros(slots, levels, branches, dtype=torch.bool)
    for leaders in spec.routing.leaders:
        if leaders.branch not in names or leaders.slot >= slots or leaders.level >= levels:
            raise ValueError(
                f"manifest routing names an unknown gate (slot {leaders.slot}, level {leaders.level}, "
                f"branch {leaders.branch})"
            )
        if spec.routing.mode in (None, "topk") and len(leaders.experts) != config.top_k:
            raise ValueError(
                f"manifest top-K routing has {len(leaders.experts)} experts per gate, the model uses "
                f"top-{config.top_k}"
            )
        if max(leaders.experts) >= config.leaders:
            raise ValueError(
                f"manifest routing names leader {max(leaders.experts)}, the model has {config.leaders}"
            )
        gate = (leaders.slot, leaders.level, names.index(leaders.branch))
        weights[gate].index_add_(0, torch.tensor(leaders.experts), torch.tensor(leaders.scores))
        seen[gate] = True
    if not bool(seen.all()):
        raise ValueError("manifest routing misses some (slot, level, branch) gates")
    return routing_from_weights(weights)
