"""UniMMAD training losses (spec 6): focal cosine decompression loss + annealed load-balancing loss.

Decompression item per (level, pair): mean_hw(A * sg(A)^gamma) with A = 1 - cos(u, p), so the gradient
is that of A scaled by A^gamma. Items are summed over the 3 levels (official code, not the paper's mean).

Reductions over pairs with per-sample dataset weights w_b:
- "per_sample" (default; the first release's semantics, the intended behaviour): each pair's loss is
  multiplied by its own sample's weight and the total divided by B * M_max (M_max = most modalities of a
  sample in the batch). The first release also added a constant 1 for every absent (sample, slot); it
  carries no gradient and is left out here.
- "head" (current official code): mean over pairs times the batch-mean weight (per-sample weighting is lost).

Balance: lambda * mean over levels of sum over branches of (CV^2 + z-loss), computed by the model;
lambda = max(1 - progress / anneal_fraction, floor) with progress = step / planned steps
(model.schedule.balance_weight).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model.anomaly_map import cosine_distance
from model.config import UniMMADConfig
from model.schedule import balance_weight
from model.unimmad import UniMMADOutput


class LossTerms(NamedTuple):
    """total = decompression + balance_weight * balance (scalars; balance_weight a float)."""

    total: Tensor
    decompression: Tensor
    balance: Tensor
    balance_weight: float


def focal_cosine(prior: Tensor, prediction: Tensor, gamma: float) -> Tensor:
    """Per-pair focal cosine loss: [N,C,h,w] x2 -> [N] = mean_hw(A * sg(A)^gamma)."""
    distance = cosine_distance(prior, prediction)
    return (distance * distance.detach().pow(gamma)).mean(dim=(1, 2))


def decompression_loss(
    output: UniMMADOutput,
    sample_weights: Tensor | None = None,
    gamma: float = 2.0,
    reduction: str = "per_sample",
) -> Tensor:
    """Focal cosine loss summed over levels and reduced over pairs; sample_weights [B] (None = all 1)."""
    per_pair = torch.stack(
        [
            focal_cosine(prior, prediction, gamma)
            for prior, prediction in zip(output.priors, output.predictions)
        ]
    ).sum(dim=0)
    batch = output.modality_present.shape[0]
    if sample_weights is None:
        weights = per_pair.new_ones(batch)
    elif sample_weights.shape != (batch,):
        raise ValueError(f"sample_weights must have shape [{batch}], got {list(sample_weights.shape)}")
    else:
        weights = sample_weights.to(per_pair)
    if reduction == "per_sample":
        most_modalities = output.modality_present.sum(dim=1).max()
        return (weights[output.pair_sample] * per_pair).sum() / (batch * most_modalities)
    if reduction == "head":
        return per_pair.mean() * weights.mean()
    raise ValueError(f"unknown loss reduction {reduction!r}; valid: per_sample, head")


def unimmad_loss(
    output: UniMMADOutput, config: UniMMADConfig, progress: float, sample_weights: Tensor | None = None
) -> LossTerms:
    """The training objective of one batch at ``progress`` = step / planned steps, in [0, 1]."""
    decompression = decompression_loss(output, sample_weights, config.focal_gamma, config.loss_reduction)
    weight = balance_weight(progress, config.balance_anneal_fraction, config.balance_floor)
    return LossTerms(decompression + weight * output.balance_loss, decompression, output.balance_loss, weight)
