"""Fold a MiMoE branch with frozen routing into one static k x k convolution (spec 11.3).

With the leaders fixed, everything between the output of the branch's `pre` block and the GroupNorm of
its `post` block is linear in the values X:

    Y_fix = X * F_k                          (fixed expert, k x k, zero padding k//2, no bias)
    Y_rt  = sum_j s_j X * R_j                (routed leader kernels R_j, scores s_j applied)
    Z     = P [Y_fix ; Y_rt]                 (post's 1x1 conv P [E, 2E], no bias)

so Z = X * W_fold with W_fold[o,i] = sum_c P[o,c] F_k[c,i] + sum_c P[o,E+c] sum_j s_j R_j[c,i].

Where the fold stops (spec 11.4): it starts AFTER pre's ReLU (pre's GroupNorm uses per-sample statistics,
so pre's 1x1 conv cannot join it) and ends BEFORE post's GroupNorm, the first non-linear op after the
mixing conv; post's GroupNorm + ReLU stay in the graph as they are. Branches are not merged with each
other or with conv_out_first, since each branch output passes its own GroupNorm + ReLU first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from export.routing import DomainRouting
from model.cmoe import MiMoE, leader_kernels
from model.unimmad import UniMMAD


def fold_branch(branch: MiMoE, bank: Tensor, idx: Tensor, scores: Tensor) -> Tensor:
    """One static kernel for `branch` with leaders `idx` [K] weighted by `scores` [K].

    bank [nb,E,E,k,k] -> W_fold [E,E,k,k] (float64 internally, returned in the bank's dtype).
    """
    dtype = bank.dtype
    routed = leader_kernels(bank.double(), branch.experts.double(), idx[None])[0]  # [K, E, E, k, k]
    mixed = torch.einsum("j,jcihw->cihw", scores.double(), routed)
    mixing = branch.post[0].weight.double()[:, :, 0, 0]  # [E, 2E]
    width = mixed.shape[0]
    folded = torch.einsum("oc,cihw->oihw", mixing[:, :width], branch.soft_expert.double())
    folded = folded + torch.einsum("oc,cihw->oihw", mixing[:, width:], mixed)
    return folded.to(dtype)


@torch.no_grad()
def fold_domain(model: UniMMAD, routing: DomainRouting) -> list[list[Tensor]]:
    """Folded kernels of one domain: result[level][branch] is [M, E, E, k, k] (one kernel per slot)."""
    kernels = []
    for level, cmoe in enumerate(model.c_moes):
        per_branch = []
        for b, (branch, bank) in enumerate(zip(cmoe.MoEs, cmoe.expert_bases)):
            per_slot = [
                fold_branch(branch, bank, *routing.route(slot, level, b)) for slot in range(routing.slots)
            ]
            per_branch.append(torch.stack(per_slot))
        kernels.append(per_branch)
    return kernels


def kernel_banks(model: UniMMAD, routings: list[DomainRouting]) -> list[list[Tensor]]:
    """The frozen graph's banks: result[level][branch] is [D, max_modalities, E, E, k, k].

    Domain d's kernels sit at index d; slots a domain does not have stay zero (never read, since a
    batch of domain d holds exactly its M slots).
    """
    slots = model.config.max_modalities
    folded = [fold_domain(model, routing) for routing in routings]
    banks = []
    for level, cmoe in enumerate(model.c_moes):
        per_branch = []
        for b in range(len(cmoe.MoEs)):
            first = folded[0][level][b]
            bank = first.new_zeros(len(routings), slots, *first.shape[1:])
            for d, domain_kernels in enumerate(folded):
                bank[d, : domain_kernels[level][b].shape[0]] = domain_kernels[level][b]
            per_branch.append(bank)
        banks.append(per_branch)
    return banks
