"""The frozen-routing network: UniMMAD with each C-MoE branch replaced by a folded kernel bank.

    images [B,M,3,S,S], domain int64 [1]
      -> prior trunk, stem + encoder + FCM                      (the trunk, held once)
      -> per level: conv_share -> per branch: pre -> slot conv with bank[domain] -> post's GN + ReLU
         -> conv_out_first[domain] (AggregationBank)             (router path removed, spec 11.4)
      -> anomaly maps (fusion, blur, top fraction)               (model.anomaly_map, unchanged)
         with normal statistics[domain] when the fusion is calibrated
      -> anomaly_map [B,S,S], modality_maps [B,M,S,S], image_score [B], modality_scores [B,M]
      and signature [B,M,F] from the prior alone (export.signature: the same whatever `domain` says)

The banks are buffers [D, max_modalities, E, E, k, k] (see export.fold); `domain` gathers one domain's
kernels at run time, so the graph never duplicates the trunk per domain. The dynamic graph (per-sample
routing) takes the same inputs: `domain` selects its normal statistics (unused by uncalibrated fusions).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.routing import slot_major_pairs
from export.signature import SIGNATURE_OUTPUT, pooled_signature
from export.slot_conv import DEFAULT_SLOT_CONV, slot_conv
from model.anomaly_map import NormalStatistics, anomaly_maps
from model.cmoe import CMoE
from model.stem import shared_input
from model.unimmad import UniMMAD, UniMMADOutput

# The maps and scores (what verify and bench compare), then the domain signature.
OUTPUT_NAMES = ("anomaly_map", "modality_maps", "image_score", "modality_scores")
GRAPH_OUTPUT_NAMES = (*OUTPUT_NAMES, SIGNATURE_OUTPUT)
GraphOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class FrozenCMoE(nn.Module):
    """One level's C-MoE with folded branches. banks: per branch [D, S_max, E, E, k, k]."""

    def __init__(self, cmoe: CMoE, banks: list[Tensor], method: str = DEFAULT_SLOT_CONV) -> None:
        super().__init__()
        self.conv_share = cmoe.conv_share
        self.pre = nn.ModuleList(branch.pre for branch in cmoe.MoEs)
        # post[0] is the 1x1 mixing conv that the fold absorbed; its GroupNorm + ReLU stay.
        self.post_norm = nn.ModuleList(nn.Sequential(*list(branch.post)[1:]) for branch in cmoe.MoEs)
        self.aggregation = AggregationBank(cmoe.conv_out_first, banks[0].shape[0])
        self.method = method
        for b, bank in enumerate(banks):
            self.register_buffer(f"bank_{b}", bank.contiguous())

    def forward(self, general: Tensor, domain: Tensor, slots: int) -> Tensor:
        """general [M*B, C, H, W] (slot-major pairs), domain [1] -> prediction [M*B, C, H, W]."""
        keys = self.conv_share(general)
        outputs = []
        for b, (pre, post_norm) in enumerate(zip(self.pre, self.post_norm)):
            kernels = getattr(self, f"bank_{b}").index_select(0, domain)[0]  # [S_max, E, E, k, k]
            outputs.append(post_norm(slot_conv(pre(keys), kernels, slots, self.method)))
        return self.aggregation(torch.cat(outputs, dim=1), domain)


class AggregationBank(nn.Module):
    """conv_out_first (1x1 conv -> GroupNorm [-> ReLU]) with its weights per domain, gathered by `domain`
    like the kernel banks: `model adapt` tunes the aggregation conv for the domains it adds, and `export
    add-domain` appends their rows without touching the old ones. A full export repeats the one trained
    conv D times. Buffers: weight [D, C, 3E, 1, 1], norm_weight / norm_bias [D, C]."""

    def __init__(self, conv_out_first: nn.Sequential, domains: int) -> None:
        super().__init__()
        conv, norm = conv_out_first[0], conv_out_first[1]
        self.groups, self.eps = norm.num_groups, norm.eps
        self.relu = len(conv_out_first) > 2
        for name, value in (("weight", conv.weight), ("norm_weight", norm.weight), ("norm_bias", norm.bias)):
            self.register_buffer(name, value.detach()[None].expand(domains, *value.shape).contiguous())

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        """x [N, 3E, H, W], domain [1] -> [N, C, H, W]."""
        out = nn.functional.conv2d(x, self.weight.index_select(0, domain)[0])
        out = nn.functional.group_norm(
            out,
            self.groups,
            self.norm_weight.index_select(0, domain)[0],
            self.norm_bias.index_select(0, domain)[0],
            self.eps,
        )
        return nn.functional.relu(out) if self.relu else out


class DomainStatistics(nn.Module):
    """Per-domain normal statistics held as buffers [D, M_max, L]; forward(domain [1]) -> [1, M_max, L] each.

    None (uncalibrated fusion) holds nothing and returns None."""

    def __init__(self, statistics: NormalStatistics | None) -> None:
        super().__init__()
        self.calibrated = statistics is not None
        if statistics is not None:
            self.register_buffer("location", statistics.location.contiguous())
            self.register_buffer("scale", statistics.scale.contiguous())

    def forward(self, domain: Tensor) -> NormalStatistics | None:
        if not self.calibrated:
            return None
        return NormalStatistics(self.location.index_select(0, domain), self.scale.index_select(0, domain))


class FrozenUniMMAD(nn.Module):
    """forward(images [B,M,3,S,S], domain int64 [1]) -> (anomaly_map, modality_maps, image_score,
    modality_scores, signature).

    statistics: [D, M_max, L] per domain (export.build), None for uncalibrated fusions."""

    def __init__(
        self,
        model: UniMMAD,
        banks: list[list[Tensor]],
        statistics: NormalStatistics | None = None,
        method: str = DEFAULT_SLOT_CONV,
    ) -> None:
        super().__init__()
        self.config = model.config
        self.statistics = DomainStatistics(statistics)
        self.prior = model.prior
        self.stem = model.stem
        self.encoder = model.encoder
        self.fcm = model.fcm
        self.c_moes = nn.ModuleList(
            FrozenCMoE(cmoe, level_banks, method) for cmoe, level_banks in zip(model.c_moes, banks)
        )

    def network_output(self, images: Tensor, domain: Tensor) -> UniMMADOutput:
        """Priors and predictions as UniMMAD.forward returns them (routes empty, balance loss 0)."""
        batch, slots = images.shape[:2]
        pairs = images.transpose(0, 1).reshape(slots * batch, *images.shape[2:])
        pair_sample, pair_slot = slot_major_pairs(batch, slots, images.device)
        priors = [nn.functional.normalize(level, dim=1) for level in self.prior(pairs)]
        general = self.fcm(self.encoder(self.stem(shared_input(images, self.config.stem))))
        predictions = [
            cmoe(level.repeat(slots, 1, 1, 1), domain, slots) for cmoe, level in zip(self.c_moes, general)
        ]
        present = torch.ones(batch, slots, dtype=torch.bool, device=images.device)
        return UniMMADOutput(priors, predictions, pair_sample, pair_slot, present, [], images.new_zeros(()))

    def forward(self, images: Tensor, domain: Tensor) -> GraphOutputs:
        output = self.network_output(images, domain)
        maps = anomaly_maps(output, self.config, self.statistics(domain))
        signature = pooled_signature(output.priors, *images.shape[:2])
        return maps.fused, maps.per_modality, maps.image_score, maps.modality_scores, signature


class DynamicUniMMAD(nn.Module):
    """Per-sample routing through the static base bank (kernel_mode="bank"), the same I/O as the frozen graph."""

    def __init__(self, model: UniMMAD, statistics: NormalStatistics | None = None) -> None:
        super().__init__()
        self.model = model
        self.statistics = DomainStatistics(statistics)

    def forward(self, images: Tensor, domain: Tensor) -> GraphOutputs:
        output = self.model(images, kernel_mode="bank")
        maps = anomaly_maps(output, self.model.config, self.statistics(domain))
        signature = pooled_signature(list(output.priors), *images.shape[:2])
        return maps.fused, maps.per_modality, maps.image_score, maps.modality_scores, signature
