"""Frozen routing of one domain: the leaders every (modality slot, level, branch) uses at inference.

A domain's routing is two tensors indexed [slot, level, branch, k]: the leader indices and their
renormalised scores. `forced_routing` turns it into the per-pair `ForcedRoute`s UniMMAD.forward accepts,
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
    """idx int64 [M, L, nbranch, K] and scores float32 [M, L, nbranch, K] of one domain's M slots."""

    idx: Tensor
    scores: Tensor

    def __post_init__(self) -> None:
        if self.idx.shape != self.scores.shape or self.idx.dim() != 4:
            raise ValueError(f"routing idx {list(self.idx.shape)} and scores {list(self.scores.shape)} must "
                             "both be [slots, levels, branches, top_k]")

    @property
    def slots(self) -> int:
        return self.idx.shape[0]

    def route(self, slot: int, level: int, branch: int) -> tuple[Tensor, Tensor]:
        """Leaders and scores of one gate: ([K] int64, [K] float32)."""
        return self.idx[slot, level, branch], self.scores[slot, level, branch]


def forced_routing(routing: DomainRouting, pair_slot: Tensor) -> Routing:
    """Per-pair forced routes for pairs whose slots are `pair_slot` [N]: routing[level][branch] = ForcedRoute."""
    idx = routing.idx.to(pair_slot.device)[pair_slot]  # [N, L, nbranch, K]
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


def routing_from_manifest(spec: DomainSpec, config: UniMMADConfig) -> DomainRouting:
    """Rebuild a domain's frozen routing from its manifest entry (every slot, level and branch must be there)."""
    slots, levels, branches = len(spec.modalities), LEVELS, len(config.kernel_sizes)
    names = [branch_name(size) for size in config.kernel_sizes]
    idx = torch.full((slots, levels, branches, config.top_k), -1, dtype=torch.int64)
    scores = torch.zeros(slots, levels, branches, config.top_k)
    for leaders in spec.routing.leaders:
        if leaders.branch not in names or leaders.slot >= slots or leaders.level >= levels:
            raise ValueError(f"manifest routing names an unknown gate (slot {leaders.slot}, level {leaders.level}, "
                             f"branch {leaders.branch})")
        if len(leaders.experts) != config.top_k:
            raise ValueError(f"manifest routing has {len(leaders.experts)} experts per gate, the model uses top-{config.top_k}")
        gate = (leaders.slot, leaders.level, names.index(leaders.branch))
        idx[gate] = torch.tensor(leaders.experts)
        scores[gate] = torch.tensor(leaders.scores)
    if bool((idx < 0).any()):
        raise ValueError("manifest routing misses some (slot, level, branch) gates")
    return DomainRouting(idx, scores)
