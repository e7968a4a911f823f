"""Anomaly maps and image scores from a UniMMAD forward, per sample (spec 8.2).

Per level l and pair: A = 1 - cos(u_l, p_l) over channels. Fusion "code" (official): upsample every A
to SxS (bilinear, align_corners=True) and take the root-sum-square over all levels and modalities.
Fusion "paper" (eq. 4): root-sum-square over modalities per level at the level's resolution, upsample,
mean over levels. Then a 15x15, sigma-4 Gaussian with zero padding, and the image score = mean of the
top floor(S*S/1000) pixels. Per-modality maps use the same level reduction (RSS for "code", mean for
"paper") over that modality alone; an absent modality's map and score are 0.

Unlike the official code (which merges every sample of a batch into one map), every sample is fused on
its own. Everything is a pure tensor program so the exporter can put it inside the ONNX graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import UniMMADConfig
from model.unimmad import UniMMADOutput

COSINE_EPS = 1e-8


class AnomalyMaps(NamedTuple):
    """fused [B,S,S], per_modality [B,M,S,S], image_score [B], modality_scores [B,M]."""

    fused: Tensor
    per_modality: Tensor
    image_score: Tensor
    modality_scores: Tensor


def cosine_distance(prior: Tensor, prediction: Tensor) -> Tensor:
    """1 - cosine similarity over channels: [N,C,h,w] x2 -> [N,h,w], values in [0, 2]."""
    return 1 - F.cosine_similarity(prior, prediction, dim=1, eps=COSINE_EPS)


def upsample(maps: Tensor, size: int) -> Tensor:
    """Bilinear, align_corners=True: [..., h, w] -> [..., size, size]."""
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=True)
    return resized.reshape(*leading, size, size)


def gaussian_kernel1d(size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian taps [size] centred on size // 2 (kornia's get_gaussian_kernel1d)."""
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def gaussian_blur(maps: Tensor, size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with zero padding size // 2 (borders are attenuated): [..., S, S] -> same."""
    taps = gaussian_kernel1d(size, sigma).to(maps)
    leading = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    flat = F.conv2d(flat, taps.view(1, 1, size, 1), padding=(size // 2, 0))
    flat = F.conv2d(flat, taps.view(1, 1, 1, size), padding=(0, size // 2))
    return flat.reshape(*leading, *maps.shape[-2:])


def top_pixels_mean(maps: Tensor, count: int) -> Tensor:
    """Mean of the `count` largest pixels: [..., S, S] -> [...]."""
    return maps.flatten(-2).topk(count, dim=-1).values.mean(dim=-1)


def scatter_pairs(values: Tensor, pair_sample: Tensor, pair_slot: Tensor, present: Tensor) -> Tensor:
    """Place per-pair values [N, ...] at their (sample, slot): -> [B, M, ...], zeros where absent."""
    batch, slots = present.shape
    flat_index = pair_sample * slots + pair_slot
    grid = values.new_zeros(batch * slots, *values.shape[1:]).index_copy(0, flat_index, values)
    return grid.unflatten(0, (batch, slots))


def anomaly_maps(output: UniMMADOutput, config: UniMMADConfig) -> AnomalyMaps:
    """Maps and scores of every sample of a forward (fusion, blur and top fraction from `config`)."""
    size = config.image_size
    distances = [
        scatter_pairs(
            cosine_distance(prior, prediction), output.pair_sample, output.pair_slot, output.modality_present
        )
        for prior, prediction in zip(output.priors, output.predictions)
    ]  # per level [B, M, h_l, w_l]
    if config.anomaly_fusion == "code":
        squares = torch.stack([upsample(level, size) ** 2 for level in distances]).sum(dim=0)
        per_modality = squares.sqrt()
        fused = squares.sum(dim=1).sqrt()
    else:
        per_modality = torch.stack([upsample(level, size) for level in distances]).mean(dim=0)
        fused = torch.stack([upsample((level**2).sum(dim=1).sqrt(), size) for level in distances]).mean(dim=0)
    fused = gaussian_blur(fused, config.blur_kernel, config.blur_sigma)
    per_modality = gaussian_blur(per_modality, config.blur_kernel, config.blur_sigma)
    return AnomalyMaps(
        fused=fused,
        per_modality=per_modality,
        image_score=top_pixels_mean(fused, config.top_pixels),
        modality_scores=top_pixels_mean(per_modality, config.top_pixels),
    )
