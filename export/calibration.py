"""Routing calibration: per domain and modality slot, the leaders each (level, branch) gate uses most.

For every normal training sample of a domain the model routes itself (per-sample gates). The frozen
routing of (slot, level, branch) is the top-K of the gate probabilities averaged over those samples,
renormalised to sum to 1 (the same rule the gate applies per sample). Agreement says how often a sample's
own top-K leader set equals the frozen one: per gate, and over all gates of the domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from export.routing import DomainRouting, branch_name
from model.cmoe import top_k_routing
from model.unimmad import UniMMAD


@dataclass(frozen=True)
class Calibration:
    """A domain's frozen routing and how well it represents the per-sample routing.

    mean_probs [M, L, nbranch, R]; agreement_per_gate [M, L, nbranch] in [0, 1]; samples counted.
    """

    routing: DomainRouting
    mean_probs: Tensor
    agreement_per_gate: Tensor
    samples: int

    @property
    def agreement(self) -> float:
        return float(self.agreement_per_gate.mean())

    def summary(self, kernel_sizes: tuple[int, ...]) -> dict:
        """JSON-safe statistics for calibration.json."""
        slots, levels, branches = self.agreement_per_gate.shape
        return {
            "samples": self.samples,
            "agreement": self.agreement,
            "gates": [
                {
                    "slot": slot,
                    "level": level,
                    "branch": branch_name(kernel_sizes[b]),
                    "experts": self.routing.idx[slot, level, b].tolist(),
                    "scores": self.routing.scores[slot, level, b].tolist(),
                    "agreement": float(self.agreement_per_gate[slot, level, b]),
                    "mean_probs": self.mean_probs[slot, level, b].tolist(),
                }
                for slot in range(slots)
                for level in range(levels)
                for b in range(branches)
            ],
        }


def gate_tensors(output_routes: list, batch: int, slots: int) -> tuple[Tensor, Tensor]:
    """Stack a forward's gate outputs of a full slot-major batch: probs [B, M, L, nbranch, R], idx [B, M, L, nbranch, K]."""
    probs = torch.stack([torch.stack([gate.probs for gate in level]) for level in output_routes])  # [L, nb, N, R]
    idx = torch.stack([torch.stack([gate.idx for gate in level]) for level in output_routes])
    # pairs are slot-major: N = M * B
    probs = probs.unflatten(2, (slots, batch)).permute(3, 2, 0, 1, 4)
    idx = idx.unflatten(2, (slots, batch)).permute(3, 2, 0, 1, 4)
    return probs, idx


@torch.no_grad()
def calibrate(model: UniMMAD, image_batches: Iterable[Tensor]) -> Calibration:
    """Frozen routing from the per-sample gates over `image_batches` ([B, M, 3, S, S] each, one domain)."""
    probs_sum, all_idx, count = None, [], 0
    for images in image_batches:
        batch, slots = images.shape[:2]
        output = model(images, kernel_mode="bank")
        probs, idx = gate_tensors(output.routes, batch, slots)
        probs_sum = probs.sum(0) if probs_sum is None else probs_sum + probs.sum(0)
        all_idx.append(idx)
        count += batch
    if count == 0:
        raise ValueError("routing calibration needs at least one normal training sample")
    mean_probs = probs_sum / count
    frozen_idx, frozen_scores = top_k_routing(mean_probs, model.config.top_k)
    sample_idx = torch.cat(all_idx)  # [n, M, L, nb, K]
    same_set = (sample_idx.sort(-1).values == frozen_idx.sort(-1).values[None]).all(-1)
    return Calibration(
        routing=DomainRouting(frozen_idx, frozen_scores),
        mean_probs=mean_probs,
        agreement_per_gate=same_set.double().mean(0),
        samples=count,
    )
