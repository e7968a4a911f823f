"""Cross-modal Mixture of Experts (C-MoE), spec section 5: the heart of UniMMAD.

One C-MoE per feature level predicts, for every (sample, modality) pair, the modality's prior feature
from the shared general feature. Notation: N pairs, C = level channels, E = internal width,
nb = base experts, R = leaders, K = top-k, k = kernel size, J = K + 1 kernels per pair (fixed + routed).

    G [N,C,H,W] --conv_share--> keys  [N,E,H,W] ------------------------------+
    U [N,C,H,W] --conv_prior--> query [N,E,H,W]                               |
    conv_cond([keys; query]) --GAP--> condition g [N,E]                       |
    for k in (1, 3, 5):  MiMoE_k(keys, g, bank_k) -> O_k [N,E,H,W]  <---------+
    p = conv_out_first([O_1; O_3; O_5]) -> [N,C,H,W]   (ends in ReLU unless signed_prediction)

MiMoE_k: X = pre(keys); the gate picks K of R leaders from g; leader j's kernel mixes ALL nb base
kernels per output channel with softmax(S_k[j]) over the bases; the fixed expert F_k and the routed
kernels convolve X; post([X*F_k ; sum_j s_j X*R_j]) -> O_k.

The routed convolution has three implementations (`kernel_mode`), equal up to float rounding because
everything between pre's ReLU and post's GroupNorm is linear in the values X (as export/fold.py uses):
- "grouped": the official one (spec 5.4), builds the [N,J,E,E,k,k] kernels, runs one grouped conv with
  groups = N*J, concatenates [X*F_k ; sum_j s_j X*R_j] and applies post's 1x1 conv; the reference.
- "fused": one kernel per pair, W_n = P_fix F_k + P_rt sum_j s_j R_j (P = post's 1x1 conv [E,2E]; the
  leaders are mixed by score through their base coefficients), one grouped conv with groups = N, then
  post's GroupNorm + ReLU. A third of "grouped"'s k x k conv work and no 1x1 conv; the default.
- "bank": convolves X once with the static base bank (nb*E output channels) and mixes the responses
  per pair with the score-weighted leader coefficients. No conv weight is computed at run time, so the
  graph exports to ONNX with a dynamic batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import GROUP_NORM_CANDIDATES, group_norm_groups

BASE_BANK_STD = 0.05
LEADER_TABLE_STD = 0.02
SCORE_EPS = 1e-8
CV_EPS = 1e-8
KERNEL_MODES = ("grouped", "fused", "bank")
DEFAULT_KERNEL_MODE = "fused"


class ForcedRoute(NamedTuple):
    """Leaders chosen outside the gate for one (level, branch): idx [N,K] int64, scores [N,K] (or [1,K])."""

    idx: Tensor
    scores: Tensor


class GateOutput(NamedTuple):
    """One branch's routing. probs [N,R]; idx/scores [N,K]; importance_cv2 and z_loss are scalars.

    With forced routing the gate is not run: probs, importance_cv2 and z_loss are None.
    """

    probs: Tensor | None
    idx: Tensor
    scores: Tensor
    importance_cv2: Tensor | None
    z_loss: Tensor | None


class CMoEOutput(NamedTuple):
    """prediction [N,C,H,W]; routes per branch (kernel sizes in order); balance_loss scalar = sum over
    branches of (CV^2 + z-loss), zero when routing is forced."""

    prediction: Tensor
    routes: list[GateOutput]
    balance_loss: Tensor


def moe_norm_groups(width: int, min_group_channels: int) -> int:
    """GroupNorm groups of the C-MoE's internal width E: the official rule, but never fewer than
    ``min_group_channels`` channels in a group (config.moe_min_group_channels). With 8 at E = 256 that is
    the official GN(32, 256); at a small E the official rule would leave 1-2 channels per group, which
    normalises every channel on its own: the global condition vector g = GAP(GN(...)) then hardly varies
    between samples or domains, and the gates cannot route by input."""
    return next(
        groups
        for groups in GROUP_NORM_CANDIDATES
        if width % groups == 0 and width // groups >= min(min_group_channels, width)
    )


def conv_gn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 1, relu: bool = True, groups: int | None = None
) -> nn.Sequential:
    """Bias-free conv -> GroupNorm (``groups``; default: the official rule) [-> ReLU]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(groups or group_norm_groups(out_channels), out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def delta_kernel(channels: int, kernel_size: int) -> Tensor:
    """Identity convolution kernel [C,C,k,k]: 1 at the centre tap where out == in, 0 elsewhere."""
    kernel = torch.zeros(channels, channels, kernel_size, kernel_size)
    centre = kernel_size // 2
    kernel[:, :, centre, centre] = torch.eye(channels)
    return kernel


def top_k_routing(probs: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Largest `top_k` gate probabilities, renormalised to sum to 1.

    probs [N,R] -> idx [N,K] (sorted by probability, descending), scores [N,K].
    """
    values, idx = probs.topk(top_k, dim=-1)
    return idx, values / (values.sum(dim=-1, keepdim=True) + SCORE_EPS)


def importance_cv2(probs: Tensor) -> Tensor:
    """Squared coefficient of variation of the leaders' mean probability over the N pairs (scalar)."""
    importance = probs.mean(dim=0)
    return importance.var(unbiased=False) / (importance.mean() ** 2 + CV_EPS)


def router_z_loss(logits: Tensor) -> Tensor:
    """mean_n logsumexp(logits_n)^2 (scalar), unweighted."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def leader_coefficients(leader_logits: Tensor, idx: Tensor) -> Tensor:
    """Per-output-channel convex weights of the base experts for the chosen leaders.

    leader_logits [R,nb,E], idx [N,K] -> [N,K,nb,E] (softmax over the nb bases).
    """
    return leader_logits[idx].softmax(dim=-2)


def leader_kernels(bank: Tensor, leader_logits: Tensor, idx: Tensor) -> Tensor:
    """Routed kernels R_j[o,i] = sum_n softmax_n(S[j])[n,o] * W[n,o,i] (MoE-in-MoE, spec 5.4 step 3).

    bank [nb,E,E,k,k], leader_logits [R,nb,E], idx [N,K] -> [N,K,E,E,k,k].
    """
    return torch.einsum("nkbo,boihw->nkoihw", leader_coefficients(leader_logits, idx), bank)


def grouped_dynamic_conv(x: Tensor, kernels: Tensor) -> Tensor:
    """Per-pair kernels applied with one grouped convolution (stride 1, zero padding k//2, no bias).

    x [N,E,H,W], kernels [N,J,E,E,k,k] -> [N,J,E,H,W]: out[n, j] = conv2d(x[n], kernels[n, j]).
    """
    pairs, per_pair, out_channels, in_channels, size, _ = kernels.shape
    height, width = x.shape[-2:]
    replicated = x.unsqueeze(1).expand(pairs, per_pair, in_channels, height, width)
    replicated = replicated.reshape(1, pairs * per_pair * in_channels, height, width)
    weight = kernels.reshape(pairs * per_pair * out_channels, in_channels, size, size)
    out = F.conv2d(replicated, weight, padding=size // 2, groups=pairs * per_pair)
    return out.reshape(pairs, per_pair, out_channels, height, width)


def routed_coefficients(leader_logits: Tensor, idx: Tensor, scores: Tensor) -> Tensor:
    """Score-weighted base coefficients of a pair's routed kernels: sum_j s_j softmax_n(S[idx_j]).

    sum_j s_j R_j[o] = sum_n B[n,o] * W[n,o], so these [N,nb,E] coefficients stand for all K leaders.
    leader_logits [R,nb,E], idx/scores [N,K] -> [N,nb,E].
    """
    return (leader_coefficients(leader_logits, idx) * scores[..., None, None]).sum(dim=1)


def fused_pair_kernels(fixed: Tensor, bank: Tensor, coefficients: Tensor, post_weight: Tensor) -> Tensor:
    """One kernel per pair doing the fixed expert, the score-weighted routed experts and post's 1x1 conv.

    W_n = P_fix F + P_rt R_n with R_n[c] = sum_b B[n,b,c] W_b[c] (the pair's score-mixed routed kernel).
    fixed F [E,E,k,k], bank [nb,E,E,k,k], coefficients B [N,nb,E], post_weight P [E,2E,1,1]
    -> [N,E,E,k,k] (N = 1 broadcasts one routing to every pair).
    """
    width = fixed.shape[0]
    mixing = post_weight[:, :, 0, 0]
    routed = torch.einsum("nbc,bcihw->ncihw", coefficients, bank)
    shared = torch.einsum("oc,cihw->oihw", mixing[:, :width], fixed)
    return shared + torch.einsum("oc,ncihw->noihw", mixing[:, width:], routed)


def bank_routed_conv(x: Tensor, bank: Tensor, leader_logits: Tensor, idx: Tensor, scores: Tensor) -> Tensor:
    """Score-weighted routed response sum_j s_j * conv(x, R_j) through the static base bank.

    Because R_j is linear in the bank, conv(x, R_j)[o] = sum_n A_j[n,o] * conv(x, W[n])[o].
    x [N,E,H,W], bank [nb,E,E,k,k], leader_logits [R,nb,E], idx/scores [N,K] -> [N,E,H,W].
    """
    bases, out_channels, in_channels, size, _ = bank.shape
    responses = F.conv2d(x, bank.reshape(bases * out_channels, in_channels, size, size), padding=size // 2)
    responses = responses.unflatten(1, (bases, out_channels))  # [N, nb, E, H, W]
    mixing = routed_coefficients(leader_logits, idx, scores)
    return (responses * mixing[..., None, None]).sum(dim=1)


class Gate(nn.Module):
    """Linear router over the leaders (official name `gate.gate`): g [N,E] -> logits [N,R]."""

    def __init__(self, width: int, leaders: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, leaders)

    def forward(self, condition: Tensor) -> Tensor:
        return self.gate(condition)


class MiMoE(nn.Module):
    """One multi-scale branch (kernel size k): MoE-in-MoE routing + grouped dynamic filtering (spec 5.4).

    Parameters (official names): soft_expert F_k [E,E,k,k] (fixed expert, delta init), experts S_k
    [R,nb,E] (leader table), gate.gate Linear(E->R), pre 1x1 E->E + GN + ReLU, post 1x1 2E->E + GN + ReLU.
    The base bank [nb,E,E,k,k] belongs to the C-MoE (`expert_bases`) and is passed in.
    """

    def __init__(
        self,
        width: int,
        kernel_size: int,
        base_experts: int,
        leaders: int,
        top_k: int,
        z_loss_weight: float,
        norm_groups: int,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.top_k = top_k
        self.z_loss_weight = z_loss_weight
        self.soft_expert = nn.Parameter(delta_kernel(width, kernel_size))
        self.experts = nn.Parameter(torch.randn(leaders, base_experts, width) * LEADER_TABLE_STD)
        self.gate = Gate(width, leaders)
        self.pre = conv_gn_relu(width, width, groups=norm_groups)
        self.post = conv_gn_relu(2 * width, width, groups=norm_groups)

    def route(self, condition: Tensor) -> GateOutput:
        """Gate with top-K and renormalised scores, plus its balance statistics. condition [N,E]."""
        logits = self.gate(condition)
        probs = logits.softmax(dim=-1)
        idx, scores = top_k_routing(probs, self.top_k)
        return GateOutput(
            probs, idx, scores, importance_cv2(probs), self.z_loss_weight * router_z_loss(logits)
        )

    def forward(
        self,
        keys: Tensor,
        condition: Tensor | None,
        bank: Tensor,
        forced: ForcedRoute | None = None,
        kernel_mode: str = DEFAULT_KERNEL_MODE,
    ) -> tuple[Tensor, GateOutput]:
        """keys [N,E,H,W], condition [N,E] (unused when forced), bank [nb,E,E,k,k] -> O_k [N,E,H,W], routing."""
        if forced is None:
            route = self.route(condition)
        else:
            route = GateOutput(None, forced.idx, forced.scores, None, None)
        values = self.pre(keys)
        if kernel_mode == "grouped":
            pairs = values.shape[0]
            routed = leader_kernels(bank, self.experts, route.idx)
            routed = routed.expand(pairs, *routed.shape[1:])
            fixed = self.soft_expert.expand(pairs, 1, *self.soft_expert.shape)
            responses = grouped_dynamic_conv(values, torch.cat([fixed, routed], dim=1))
            fixed_response = responses[:, 0]
            routed_response = (responses[:, 1:] * route.scores[..., None, None, None]).sum(dim=1)
        elif kernel_mode == "fused":
            coefficients = routed_coefficients(self.experts, route.idx, route.scores)
            kernels = fused_pair_kernels(self.soft_expert, bank, coefficients, self.post[0].weight)
            kernels = kernels.expand(values.shape[0], *kernels.shape[1:])
            mixed = grouped_dynamic_conv(values, kernels.unsqueeze(1))[:, 0]
            return self.post[1:](mixed), route  # post's conv is inside the kernels: GN + ReLU remain
        elif kernel_mode == "bank":
            fixed_response = F.conv2d(values, self.soft_expert, padding=self.kernel_size // 2)
            routed_response = bank_routed_conv(values, bank, self.experts, route.idx, route.scores)
        else:
            raise ValueError(f"unknown kernel_mode {kernel_mode!r}; valid: {', '.join(KERNEL_MODES)}")
        return self.post(torch.cat([fixed_response, routed_response], dim=1)), route


class CMoE(nn.Module):
    """C-MoE of one level (spec 5.2-5.5). Shared by all modalities, classes and datasets.

    forward(general [N,C,H,W], prior [N,C,H,W]) -> CMoEOutput(prediction [N,C,H,W], routes, balance_loss).
    `prior` only steers the routing (through the condition vector); it never enters the value path.
    """

    def __init__(
        self,
        channels: int,
        width: int = 256,
        base_experts: int = 8,
        leaders: int = 32,
        top_k: int = 2,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        z_loss_weight: float = 1e-4,
        signed_prediction: bool = False,
        min_group_channels: int = 8,
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.signed_prediction = signed_prediction
        groups = moe_norm_groups(width, min_group_channels)
        self.conv_share = conv_gn_relu(channels, width, groups=groups)
        self.conv_prior = conv_gn_relu(channels, width, groups=groups)
        self.conv_cond = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1, bias=False),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
        )
        self.expert_bases = nn.ParameterList(
            nn.Parameter(torch.randn(base_experts, width, width, size, size) * BASE_BANK_STD)
            for size in kernel_sizes
        )
        self.MoEs = nn.ModuleList(
            MiMoE(width, size, base_experts, leaders, top_k, z_loss_weight, groups) for size in kernel_sizes
        )
        self.conv_out_first = conv_gn_relu(
            len(self.kernel_sizes) * width, channels, relu=not signed_prediction
        )

    def condition(self, keys: Tensor, prior: Tensor) -> Tensor:
        """Global condition vector g = GAP(conv_cond([keys; conv_prior(prior)])): [N,E]."""
        query = self.conv_prior(prior)
        return self.conv_cond(torch.cat([keys, query], dim=1)).mean(dim=(2, 3))

    def forward(
        self,
        general: Tensor,
        prior: Tensor | None,
        routing: Sequence[ForcedRoute] | None = None,
        kernel_mode: str = DEFAULT_KERNEL_MODE,
    ) -> CMoEOutput:
        """general/prior [N,C,H,W]; routing: one ForcedRoute per branch, which skips the whole router
        path (prior may then be None)."""
        keys = self.conv_share(general)
        if routing is None:
            condition = self.condition(keys, prior)
            forced: Sequence[ForcedRoute | None] = [None] * len(self.MoEs)
        else:
            if len(routing) != len(self.MoEs):
                raise ValueError(f"routing needs one route per branch ({len(self.MoEs)}), got {len(routing)}")
            condition, forced = None, routing
        outputs, routes = [], []
        for branch, bank, route in zip(self.MoEs, self.expert_bases, forced):
            out, gate = branch(keys, condition, bank, route, kernel_mode)
            outputs.append(out)
            routes.append(gate)
        prediction = self.conv_out_first(torch.cat(outputs, dim=1))
        if routing is None:
            balance = torch.stack([gate.importance_cv2 + gate.z_loss for gate in routes]).sum()
        else:
            balance = prediction.new_zeros(())
        return CMoEOutput(prediction, routes, balance)
