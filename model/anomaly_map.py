"""Anomaly maps and image scores from a UniMMAD forward, per sample (spec 8.2).

Per level l and pair: A = 1 - cos(u_l, p_l) over channels. Fusion "code" (official): upsample every A
to SxS (bilinear, align_corners=True) and take the root-sum-square over all levels and modalities.
Fusion "paper" (eq. 4): root-sum-square over modalities per level at the level's resolution, upsample,
mean over levels. Then a 15x15, sigma-4 Gaussian with zero padding, and the image score = mean of the
top floor(S*S/1000) pixels. Per-modality maps use the same level reduction (RSS for "code", mean for
"paper") over that modality alone; an absent modality's map and score are 0.

Calibrated fusions (not in the paper): raw distances of different modalities and levels sit on different
baselines with different spreads, so a defect one sensor sees drowns in the others' normal noise under
RSS. Each level's map of each modality is standardised by its domain's normal statistics, z = (A - mu) /
sigma (NormalStatistics, fitted on held-out normal images by model.calibration), the z maps are upsampled
and averaged over levels into the modality's map (in units of its normal spread, so sensors compare),
and the modality maps are fused late: "calibrated_max" keeps, per pixel, the modality that deviates most;
"calibrated_mean" averages the present modalities. Blur and image score as above.

Unlike the official code (which merges every sample of a batch into one map), every sample is fused on
its own. Everything is a pure tensor program so the exporter can put it inside the ONNX graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import CALIBRATED_FUSIONS, UniMMADConfig
from model.unimmad import UniMMADOutput

COSINE_EPS = 1e-8


class AnomalyMaps(NamedTuple):
    """fused [B,S,S], per_modality [B,M,S,S], image_score [B], modality_scores [B,M]."""

    fused: Tensor
    per_modality: Tensor
    image_score: Tensor
    modality_scores: Tensor


class NormalStatistics(NamedTuple):
    """Location and scale of normal pixels' cosine distance per modality slot and level: location and
    scale [..., M, L] (scale > 0). Leading dims: none for one domain, or [B] / [1] to apply per sample."""

    location: Tensor
    scale: Tensor

    def as_batch(self) -> NormalStatistics:
        """One domain's [M, L] statistics as [1, M, L], applied to every sample of a batch."""
        return NormalStatistics(self.location[None], self.scale[None])


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


def level_distances(output: UniMMADOutput) -> list[Tensor]:
    """Cosine distance of every (sample, slot) pair, per level: [B, M, h_l, w_l], 0 where a slot is absent."""
    return [
        scatter_pairs(
            cosine_distance(prior, prediction), output.pair_sample, output.pair_slot, output.modality_present
        )
        for prior, prediction in zip(output.priors, output.predictions)
    ]


def calibrated_fusion(
    distances: list[Tensor], present: Tensor, statistics: NormalStatistics, size: int, rule: str
) -> tuple[Tensor, Tensor]:
    """Unblurred (fused [B,S,S], per_modality [B,M,S,S]) of standardised level maps (module docstring).

    distances: per level [B, M, h_l, w_l]; present [B, M] bool; statistics [B|1, >=M, L].
    """
    slots = present.shape[1]
    location = statistics.location[:, :slots, :, None, None]
    scale = statistics.scale[:, :slots, :, None, None]
    standardised = [
        upsample((level - location[:, :, index]) / scale[:, :, index], size)
        for index, level in enumerate(distances)
    ]
    shown = present[:, :, None, None]
    per_modality = torch.stack(standardised).mean(dim=0) * shown
    if rule == "calibrated_max":
        fused = per_modality.masked_fill(~shown, float("-inf")).amax(dim=1)
    else:
        fused = per_modality.sum(dim=1) / present.sum(dim=1).to(per_modality.dtype)[:, None, None]
    return fused, per_modality


def anomaly_maps(
    output: UniMMADOutput, config: UniMMADConfig, statistics: NormalStatistics | None = None
) -> AnomalyMaps:
    """Maps and scores of every sample of a forward (fusion, blur and top fraction from `config`).

    statistics: the samples' domain normal statistics ([B|1, M_max, L]); required by calibrated fusions.
    """
    size = config.image_size
    distances = level_distances(output)  # per level [B, M, h_l, w_l]
    if config.anomaly_fusion in CALIBRATED_FUSIONS:
        if statistics is None:
            raise ValueError(f"anomaly_fusion={config.anomaly_fusion!r} needs the domain's normal statistics")
        fused, per_modality = calibrated_fusion(
            distances, output.modality_present, statistics, size, config.anomaly_fusion
        )
    elif config.anomaly_fusion == "code":
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
