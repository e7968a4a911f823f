"""Routing calibration: per domain and modality slot, the leaders each (level, branch) gate is frozen to.

For every normal training sample of a domain the model routes itself (per-sample gates: top-K of the
gate probabilities, renormalised). Two rules turn those into one frozen routing per (slot, level, branch):

- "topk" (issue 5's recipe): average the gate probabilities over the samples, take the top-K and
  renormalise them, so the frozen routing has exactly K leaders like one sample's.
- "expected": weight every leader j by the mean over samples of that sample's own routed score for j
  (0 where the sample did not pick j), w_j = mean_n s_nj with sum_j w_j = 1, and freeze
  R_frozen = sum_j w_j R_j. The routed branch conv(X, sum_j s_j R_j) is linear in the kernel, so this is
  exactly the average of the per-sample linear operators the domain's samples apply. It may mix more
  than K leaders, which costs nothing at inference: the fold collapses any number of leaders into one
  static k x k conv.

Agreement says how often a sample's own top-K leader set equals the K heaviest frozen leaders: per gate,
and over all gates of the domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from export.routing import DomainRouting, branch_name, routing_from_weights
from model.cmoe import top_k_routing
from model.routing_stats import RoutingMonitor
from model.unimmad import UniMMAD

ROUTING_MODES = ("topk", "expected")
DEFAULT_ROUTING_MODE = "expected"


@dataclass(frozen=True)
class Calibration:
    """A domain's frozen routing and how well it represents the per-sample routing.

    mode: one of ROUTING_MODES; mean_probs [M, L, nbranch, R]; agreement_per_gate [M, L, nbranch] in
    [0, 1]; samples counted; health: model.routing_stats summary of the per-sample gates (how sharp and
    how spread the routing is that the frozen one stands for).
    """

    mode: str
    routing: DomainRouting
    mean_probs: Tensor
    agreement_per_gate: Tensor
    samples: int
    health: dict

    @property
    def agreement(self) -> float:
        return float(self.agreement_per_gate.mean())

    def summary(self, kernel_sizes: tuple[int, ...]) -> dict:
        """JSON-safe statistics for calibration.json: per gate the leaders with a nonzero weight."""
        slots, levels, branches = self.agreement_per_gate.shape
        gates = []
        for slot in range(slots):
            for level in range(levels):
                for b in range(branches):
                    idx, scores = self.routing.route(slot, level, b)
                    used = scores > 0
                    gates.append(
                        {
                            "slot": slot,
                            "level": level,
                            "branch": branch_name(kernel_sizes[b]),
                            "experts": idx[used].tolist(),
                            "scores": scores[used].tolist(),
                            "agreement": float(self.agreement_per_gate[slot, level, b]),
                            "mean_probs": self.mean_probs[slot, level, b].tolist(),
                        }
                    )
        return {
            "mode": self.mode,
            "samples": self.samples,
            "agreement": self.agreement,
            "health": self.health,
            "gates": gates,
        }


def gate_tensors(output_routes: list, batch: int, slots: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stack a forward's gate outputs of a full slot-major batch.

    -> probs [B, M, L, nbranch, R], idx [B, M, L, nbranch, K], scores [B, M, L, nbranch, K].
    """

    def stacked(field: str) -> Tensor:
        values = torch.stack(
            [torch.stack([getattr(gate, field) for gate in level]) for level in output_routes]
        )
        # [L, nb, N, X] with pairs slot-major: N = M * B
        return values.unflatten(2, (slots, batch)).permute(3, 2, 0, 1, 4)

    return stacked("probs"), stacked("idx"), stacked("scores")


def expected_weights(sample_idx: Tensor, sample_scores: Tensor, leaders: int) -> Tensor:
    """Mean over samples of each sample's routed score per leader (0 where not selected).

    sample_idx int64 [n, ..., K], sample_scores [n, ..., K] -> weights [..., R] (sum over R = mean score sum).
    """
    dense = sample_scores.new_zeros(*sample_idx.shape[:-1], leaders)
    return dense.scatter_add_(-1, sample_idx, sample_scores).mean(0)


def frozen_weights(
    mode: str, mean_probs: Tensor, sample_idx: Tensor, sample_scores: Tensor, top_k: int
) -> Tensor:
    """Dense frozen leader weights [M, L, nbranch, R] of `mode` (see the module docstring)."""
    if mode == "topk":
        idx, scores = top_k_routing(mean_probs, top_k)
        return torch.zeros_like(mean_probs).scatter_(-1, idx, scores)
    if mode == "expected":
        return expected_weights(sample_idx, sample_scores, mean_probs.shape[-1])
    raise ValueError(f"unknown routing mode {mode!r}; valid: {', '.join(ROUTING_MODES)}")


@torch.no_grad()
def calibrate(
    model: UniMMAD, image_batches: Iterable[Tensor], mode: str = DEFAULT_ROUTING_MODE
) -> Calibration:
    """Frozen routing of `mode` from the per-sample gates over `image_batches` ([B, M, 3, S, S] each, one domain)."""
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown routing mode {mode!r}; valid: {', '.join(ROUTING_MODES)}")
    all_probs, all_idx, all_scores = [], [], []
    monitor = RoutingMonitor()
    for images in image_batches:
        batch, slots = images.shape[:2]
        output = model(images, kernel_mode="bank")
        monitor.add(output.routes, [f"slot{slot}" for slot in range(slots) for _ in range(batch)])
        probs, idx, scores = gate_tensors(output.routes, batch, slots)
        all_probs.append(probs)
        all_idx.append(idx)
        all_scores.append(scores)
    if not all_probs:
        raise ValueError("routing calibration needs at least one normal training sample")
    sample_idx, sample_scores = torch.cat(all_idx), torch.cat(all_scores)  # [n, M, L, nb, K]
    mean_probs = torch.cat(all_probs).mean(0)
    top_k = model.config.top_k
    routing = routing_from_weights(frozen_weights(mode, mean_probs, sample_idx, sample_scores, top_k))
    heaviest = routing.idx[..., :top_k]
    same_set = (sample_idx.sort(-1).values == heaviest.sort(-1).values[None]).all(-1)
    return Calibration(
        mode=mode,
        routing=routing,
        mean_probs=mean_probs,
        agreement_per_gate=same_set.double().mean(0),
        samples=len(sample_idx),
        health=monitor.summary(),
    )
