"""Folding is exact: the folded static kernels reproduce forced routing in torch to 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.fold import fold_branch, kernel_banks
from export.frozen import FrozenUniMMAD
from export.routing import DomainRouting, forced_routing, routing_from_weights, slot_major_pairs
from export.slot_conv import SLOT_CONVS, slot_conv
from model.cmoe import CMoE, ForcedRoute
from model.unimmad import UniMMAD

FOLD_TOLERANCE = 1e-5


def random_routing(
    slots: int, leaders: int, generator: torch.Generator, levels: int = 3, branches: int = 3
) -> DomainRouting:
    """Distinct random leaders per gate and random scores summing to 1."""
    gates = slots * levels * branches
    idx = torch.stack([torch.randperm(leaders, generator=generator)[:2] for _ in range(gates)])
    scores = torch.rand(gates, 2, generator=generator) + 0.1
    return DomainRouting(
        idx.reshape(slots, levels, branches, 2),
        (scores / scores.sum(-1, keepdim=True)).reshape(slots, levels, branches, 2),
    )


def mixed_routing(
    slots: int, leaders: int, generator: torch.Generator, levels: int = 3, branches: int = 3
) -> DomainRouting:
    """An "expected"-style routing: each gate mixes a random subset (1 to all) of the leaders, weights summing to 1."""
    weights = torch.rand(slots, levels, branches, leaders, generator=generator)
    weights = weights * (torch.rand(weights.shape, generator=generator) < 0.6)
    weights[..., 0] += 0.05  # no gate without a leader
    routing = routing_from_weights(weights / weights.sum(-1, keepdim=True))
    # wider than top-2, and some gates padded with zero-score leaders
    assert routing.idx.shape[-1] > 2 and bool((routing.scores == 0).any())
    return routing


ROUTINGS = {"top2": random_routing, "mixed": mixed_routing}


def test_folded_kernel_equals_fixed_plus_routed_plus_mixing_conv() -> None:
    torch.manual_seed(0)
    cmoe = CMoE(channels=6, width=8, base_experts=3, leaders=5, top_k=2).eval()
    for branch in cmoe.MoEs:  # move the fixed expert away from its identity init
        branch.soft_expert.data.normal_(0, 0.2)
    keys = torch.randn(4, 8, 9, 9)
    idx, scores = torch.tensor([3, 1]), torch.tensor([0.7, 0.3])
    for branch, bank in zip(cmoe.MoEs, cmoe.expert_bases):
        with torch.no_grad():
            reference, _ = branch(
                keys, None, bank, ForcedRoute(idx.expand(4, 2), scores.expand(4, 2)), "grouped"
            )
            kernel = fold_branch(branch, bank, idx, scores)
            folded = branch.post[1:](F.conv2d(branch.pre(keys), kernel, padding=branch.kernel_size // 2))
        assert kernel.shape == (8, 8, branch.kernel_size, branch.kernel_size)
        assert (reference - folded).abs().max() <= FOLD_TOLERANCE


@pytest.mark.parametrize("method", SLOT_CONVS)
def test_slot_conv_methods_apply_each_slot_its_own_kernel(method: str) -> None:
    generator = torch.Generator().manual_seed(0)
    slots, batch = 3, 2
    pairs = torch.randn(slots * batch, 4, 7, 7, generator=generator)
    kernels = torch.randn(4, 5, 4, 3, 3, generator=generator)  # S_max = 4 > slots
    out = slot_conv(pairs, kernels, slots, method)
    for slot in range(slots):
        own = pairs[slot * batch : (slot + 1) * batch]
        expected = F.conv2d(own, kernels[slot], padding=1)
        assert torch.allclose(out[slot * batch : (slot + 1) * batch], expected, atol=1e-5)


def test_unknown_slot_conv_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown slot conv 'im2col'"):
        slot_conv(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), 1, "im2col")


@pytest.mark.parametrize("kind", ROUTINGS)
def test_frozen_network_matches_forced_routing_per_domain(tiny_export_model: UniMMAD, kind: str) -> None:
    generator = torch.Generator().manual_seed(3)
    routings = [ROUTINGS[kind](2, 6, generator), ROUTINGS[kind](3, 6, generator)]
    frozen = FrozenUniMMAD(tiny_export_model, kernel_banks(tiny_export_model, routings)).eval()
    images = torch.randn(2, 3, 3, 64, 64, generator=generator)
    for domain, routing in enumerate(routings):
        slots = routing.slots
        with torch.no_grad():
            reference = tiny_export_model(
                images[:, :slots], routing=forced_routing(routing, slot_major_pairs(2, slots)[1])
            )
            folded = frozen.network_output(images[:, :slots], torch.tensor([domain]))
        for want, got in zip(reference.predictions, folded.predictions):
            assert (want - got).abs().max() <= FOLD_TOLERANCE
