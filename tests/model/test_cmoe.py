"""C-MoE: gate top-K and balance statistics, MoE-in-MoE kernels, grouped == per-pair loop == bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.cmoe import (
    CMoE,
    ForcedRoute,
    MiMoE,
    bank_routed_conv,
    delta_kernel,
    grouped_dynamic_conv,
    importance_cv2,
    leader_kernels,
    router_z_loss,
    top_k_routing,
)
from model.config import UniMMADConfig

WIDTH, BASES, LEADERS, TOP_K = 8, 3, 6, 2


def make_cmoe(channels: int = 12) -> CMoE:
    torch.manual_seed(0)
    return CMoE(channels, width=WIDTH, base_experts=BASES, leaders=LEADERS, top_k=TOP_K)


def test_top_k_routing_picks_the_largest_and_renormalises() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.4, 0.2, 0.1, 0.3]])
    idx, scores = top_k_routing(probs, 2)
    assert idx.tolist() == [[1, 2], [0, 3]]
    torch.testing.assert_close(scores, torch.tensor([[0.625, 0.375], [4 / 7, 3 / 7]]))
    torch.testing.assert_close(scores.sum(dim=-1), torch.ones(2))


def test_importance_cv2_on_hand_computed_probabilities() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    # importance = [0.5, 0.25, 0.25, 0]: mean 0.25, biased variance 0.03125 -> CV^2 = 0.5
    assert importance_cv2(probs).item() == pytest.approx(0.5, rel=1e-6)
    assert importance_cv2(torch.full((3, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-9)


def test_router_z_loss_is_mean_squared_logsumexp() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0, 0.0]])
    expected = (math.log(4.0) ** 2 + math.log(5.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_gate_route_scores_sum_to_one_and_balance_uses_weighted_z_loss() -> None:
    torch.manual_seed(0)
    branch = MiMoE(WIDTH, 3, BASES, LEADERS, TOP_K, z_loss_weight=1e-4, norm_groups=1)
    condition = torch.randn(5, WIDTH)
    route = branch.route(condition)
    logits = branch.gate(condition)
    assert route.idx.shape == route.scores.shape == (5, TOP_K)
    torch.testing.assert_close(route.scores.sum(dim=-1), torch.ones(5))
    torch.testing.assert_close(route.idx, logits.topk(TOP_K).indices)
    torch.testing.assert_close(route.probs, logits.softmax(-1))
    torch.testing.assert_close(route.z_loss, 1e-4 * router_z_loss(logits))
    torch.testing.assert_close(route.importance_cv2, importance_cv2(logits.softmax(-1)))


def test_leader_kernels_mix_all_bases_per_output_channel() -> None:
    torch.manual_seed(0)
    bank = torch.randn(BASES, 4, 5, 3, 3)
    table = torch.randn(LEADERS, BASES, 4)
    idx = torch.tensor([[2, 0], [5, 2]])
    kernels = leader_kernels(bank, table, idx)
    assert kernels.shape == (2, 2, 4, 5, 3, 3)
    weights = table[5].softmax(dim=0)  # [bases, out]
    expected = sum(weights[base][:, None, None, None] * bank[base] for base in range(BASES))
    torch.testing.assert_close(kernels[1, 0], expected)


def test_grouped_dynamic_conv_equals_a_per_pair_loop() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 7)
    kernels = torch.randn(3, 3, 5, 4, 3, 3)
    out = grouped_dynamic_conv(x, kernels)
    assert out.shape == (3, 3, 5, 7, 7)
    for pair in range(3):
        for j in range(3):
            expected = F.conv2d(x[pair : pair + 1], kernels[pair, j], padding=1)[0]
            torch.testing.assert_close(out[pair, j], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_bank_routed_conv_equals_the_composed_kernels(size: int) -> None:
    torch.manual_seed(size)
    x = torch.randn(4, WIDTH, 6, 6)
    bank = torch.randn(BASES, WIDTH, WIDTH, size, size) * 0.05
    table = torch.randn(LEADERS, BASES, WIDTH)
    idx = torch.randint(0, LEADERS, (4, TOP_K))
    scores = torch.rand(4, TOP_K).softmax(-1)
    kernels = leader_kernels(bank, table, idx)
    expected = sum(
        scores[:, j, None, None, None] * grouped_dynamic_conv(x, kernels[:, j : j + 1])[:, 0]
        for j in range(TOP_K)
    )
    torch.testing.assert_close(bank_routed_conv(x, bank, table, idx, scores), expected, atol=1e-5, rtol=1e-5)


def test_fixed_expert_starts_as_identity() -> None:
    x = torch.randn(2, WIDTH, 5, 5)
    for size in (1, 3, 5):
        torch.testing.assert_close(F.conv2d(x, delta_kernel(WIDTH, size), padding=size // 2), x)


def test_cmoe_shapes_and_routes() -> None:
    cmoe = make_cmoe()
    general, prior = torch.randn(5, 12, 8, 8), torch.randn(5, 12, 8, 8)
    out = cmoe(general, prior)
    assert out.prediction.shape == (5, 12, 8, 8)
    assert (out.prediction >= 0).all()
    assert len(out.routes) == 3
    for route in out.routes:
        assert route.probs.shape == (5, LEADERS) and route.idx.shape == (5, TOP_K)
    expected_balance = sum(route.importance_cv2 + route.z_loss for route in out.routes)
    torch.testing.assert_close(out.balance_loss, expected_balance)


@pytest.mark.parametrize("mode", ["fused", "bank"])
@pytest.mark.parametrize("train", [False, True])
def test_cmoe_kernel_modes_agree_with_the_grouped_reference(mode: str, train: bool) -> None:
    cmoe = make_cmoe().train(train)
    general, prior = torch.randn(4, 12, 8, 8), torch.randn(4, 12, 8, 8)
    grouped = cmoe(general, prior, kernel_mode="grouped")
    other = cmoe(general, prior, kernel_mode=mode)
    torch.testing.assert_close(other.prediction, grouped.prediction, atol=1e-5, rtol=1e-5)
    for a, b in zip(grouped.routes, other.routes):
        assert torch.equal(a.idx, b.idx)


def test_fused_mode_trains_like_the_grouped_reference() -> None:
    """Same loss and same gradient for every parameter (leader table, bank, gate, post's 1x1 conv, ...)."""
    general, prior = torch.randn(5, 12, 8, 8), torch.randn(5, 12, 8, 8)
    target = torch.randn(5, 12, 8, 8)
    losses, grads = {}, {}
    for mode in ("grouped", "fused"):
        cmoe = make_cmoe().train()
        out = cmoe(general, prior, kernel_mode=mode)
        losses[mode] = (out.prediction - target).square().mean() + out.balance_loss
        losses[mode].backward()
        grads[mode] = {name: parameter.grad for name, parameter in cmoe.named_parameters()}
    torch.testing.assert_close(losses["fused"], losses["grouped"], atol=1e-6, rtol=1e-5)
    assert grads["fused"].keys() == grads["grouped"].keys()
    for name, reference in grads["grouped"].items():
        assert reference is not None and reference.abs().max() > 0, name
        torch.testing.assert_close(grads["fused"][name], reference, atol=1e-6, rtol=1e-4, msg=name)


def test_forced_routing_replaces_the_gate_and_skips_the_prior() -> None:
    cmoe = make_cmoe().eval()
    general, prior = torch.randn(3, 12, 8, 8), torch.randn(3, 12, 8, 8)
    free = cmoe(general, prior)
    same = [ForcedRoute(route.idx, route.scores) for route in free.routes]
    for mode in ("grouped", "fused", "bank"):
        forced = cmoe(general, None, routing=same, kernel_mode=mode)
        torch.testing.assert_close(forced.prediction, free.prediction, atol=1e-5, rtol=1e-5)
        assert forced.balance_loss.item() == 0.0 and forced.routes[0].probs is None
    other = [ForcedRoute((route.idx + 1) % LEADERS, route.scores) for route in free.routes]
    assert not torch.allclose(cmoe(general, None, routing=other).prediction, free.prediction)
    broadcast = [ForcedRoute(torch.tensor([[1, 4]]), torch.tensor([[0.7, 0.3]]))] * 3
    grouped = cmoe(general, None, routing=broadcast, kernel_mode="grouped").prediction
    for mode in ("fused", "bank"):
        torch.testing.assert_close(
            cmoe(general, None, routing=broadcast, kernel_mode=mode).prediction, grouped, atol=1e-5, rtol=1e-5
        )


def test_bad_routing_and_kernel_mode_are_rejected() -> None:
    cmoe = make_cmoe()
    general = torch.randn(2, 12, 8, 8)
    with pytest.raises(ValueError, match="one route per branch"):
        cmoe(general, None, routing=[ForcedRoute(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2))])
    with pytest.raises(ValueError, match="unknown kernel_mode 'fast'"):
        cmoe(general, general, kernel_mode="fast")


def test_paper_width_parameter_counts_match_the_spec() -> None:
    with torch.device("meta"):
        levels = [CMoE(channels) for channels in (256, 512, 1024)]
    counts = [sum(p.numel() for p in level.parameters()) for level in levels]
    # spec 10.1 minus the two never-called 257-parameter heads, which are not built
    assert counts == [23_034_466 - 514, 23_362_658 - 514, 24_019_042 - 514]
    banks = sum(bank.numel() for level in levels for bank in level.expert_bases)
    assert banks == 55_050_240


def _domain_gate_probs(cmoe: CMoE, seed: int) -> list[torch.Tensor]:
    """Mean gate probabilities of branch 0 for two synthetic 'domains' (different channel profiles)."""
    generator = torch.Generator().manual_seed(seed)

    def domain() -> torch.Tensor:
        profile = torch.randn(16, 1, 1, generator=generator)
        return profile + 0.3 * torch.randn(12, 16, 6, 6, generator=generator)

    probs = []
    with torch.no_grad():
        for _ in range(2):
            general, prior = domain(), domain()
            probs.append(cmoe.MoEs[0].route(cmoe.condition(cmoe.conv_share(general), prior)).probs.mean(0))
    return probs


def test_small_widths_keep_enough_channels_per_group_for_the_gates_to_tell_domains_apart() -> None:
    """With one channel per GroupNorm group (the official rule at E = 8) every channel is normalised on
    its own, the condition vector is the same for every input and both domains route identically."""
    from model import cmoe as cmoe_module
    from model.config import group_norm_groups
    from model.routing_stats import js_divergence

    official = UniMMADConfig().moe_min_group_channels
    assert cmoe_module.moe_norm_groups(256, official) == group_norm_groups(256) == 32  # paper width unchanged
    assert cmoe_module.moe_norm_groups(64, official) == 8 and cmoe_module.moe_norm_groups(8, official) == 1
    assert cmoe_module.moe_norm_groups(8, 1) == group_norm_groups(8) == 8  # the official rule alone

    def divergence(min_group_channels: int) -> float:
        torch.manual_seed(0)
        module = cmoe_module.CMoE(
            16, width=8, base_experts=3, leaders=6, min_group_channels=min_group_channels
        ).eval()
        return js_divergence(*_domain_gate_probs(module, seed=1))

    with_enough_channels = divergence(official)
    per_channel = divergence(1)
    assert per_channel < 1e-4
    assert with_enough_channels > 100 * per_channel
