"""A tiny UniMMAD learns: the total loss falls over 20 Adam steps on a fixed batch; maps come out per sample."""

from __future__ import annotations

import torch

from model.anomaly_map import anomaly_maps
from model.config import UniMMADConfig
from model.losses import unimmad_loss
from model.unimmad import UniMMAD


def test_loss_decreases_over_20_adam_steps(tiny_model: UniMMAD, tiny_config: UniMMADConfig) -> None:
    torch.manual_seed(1)
    batch = torch.randn(4, 2, 3, tiny_config.image_size, tiny_config.image_size)
    count = torch.tensor([2, 1, 2, 1])
    weights = torch.tensor([1.0, 1.0, 10.0, 0.5])
    optimiser = torch.optim.Adam(tiny_model.trainable_parameters(), lr=tiny_config.lr)
    tiny_model.train()
    losses = []
    for _ in range(20):
        terms = unimmad_loss(tiny_model(batch, count), tiny_config, progress=0.0, sample_weights=weights)
        optimiser.zero_grad()
        terms.total.backward()
        optimiser.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.5 * losses[0], losses
    tiny_model.eval()
    with torch.no_grad():
        maps = anomaly_maps(tiny_model(batch, count), tiny_config)
    assert maps.fused.shape == (4, tiny_config.image_size, tiny_config.image_size)
    assert maps.image_score.shape == (4,) and torch.isfinite(maps.image_score).all()
    assert (maps.modality_scores[count == 1, 1] == 0).all()
