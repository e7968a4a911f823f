"""The frozen-routing network: UniMMAD with each C-MoE branch replaced by a folded kernel bank.

    images [B,M,3,S,S], domain int64 [1]
      -> prior trunk, stem + encoder + FCM                      (the trunk, held once)
      -> per level: conv_share -> per branch: pre -> slot conv with bank[domain] -> post's GN + ReLU
         -> conv_out_first                                       (router path removed, spec 11.4)
      -> anomaly maps (fusion, blur, top fraction)               (model.anomaly_map, unchanged)
      -> anomaly_map [B,S,S], modality_maps [B,M,S,S], image_score [B], modality_scores [B,M]

The banks are buffers [D, max_modalities, E, E, k, k] (see export.fold); `domain` gathers one domain's
kernels at run time, so the graph never duplicates the trunk per domain.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.routing import slot_major_pairs
from export.slot_conv import DEFAULT_SLOT_CONV, slot_conv
from model.anomaly_map import anomaly_maps
from model.cmoe import CMoE
from model.stem import shared_input
from model.unimmad import UniMMAD, UniMMADOutput

OUTPUT_NAMES = ("anomaly_map", "modality_maps", "image_score", "modality_scores")


class FrozenCMoE(nn.Module):
    """One level's C-MoE with folded branches. banks: per branch [D, S_max, E, E, k, k]."""

    def __init__(self, cmoe: CMoE, banks: list[Tensor], method: str = DEFAULT_SLOT_CONV) -> None:
        super().__init__()
        self.conv_share = cmoe.conv_share
        self.pre = nn.ModuleList(branch.pre for branch in cmoe.MoEs)
        # post[0] is the 1x1 mixing conv that the fold absorbed; its GroupNorm + ReLU stay.
        self.post_norm = nn.ModuleList(nn.Sequential(*list(branch.post)[1:]) for branch in cmoe.MoEs)
        self.conv_out_first = cmoe.conv_out_first
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
        return self.conv_out_first(torch.cat(outputs, dim=1))


class FrozenUniMMAD(nn.Module):
    """forward(images [B,M,3,S,S], domain int64 [1]) -> (anomaly_map, modality_maps, image_score, modality_scores)."""

    def __init__(self, model: UniMMAD, banks: list[list[Tensor]], method: str = DEFAULT_SLOT_CONV) -> None:
        super().__init__()
        self.config = model.config
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

    def forward(self, images: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        maps = anomaly_maps(self.network_output(images, domain), self.config)
        return maps.fused, maps.per_modality, maps.image_score, maps.modality_scores


class DynamicUniMMAD(nn.Module):
    """Per-sample routing through the static base bank (kernel_mode="bank"), same I/O minus `domain`."""

    def __init__(self, model: UniMMAD) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        maps = anomaly_maps(self.model(images, kernel_mode="bank"), self.model.config)
        return maps.fused, maps.per_modality, maps.image_score, maps.modality_scores
