"""Domain signatures: what the graphs output so the service can tell which domain a sample belongs to.

    images [B, M, 3, S, S] -> frozen prior per modality image -> per level: L2-normalise each pixel's
    feature vector, mean over the pixels -> concatenate the levels -> signature [B, M, F]

The prior is the pretrained trunk that training never changes, so the signature is the same whatever the
`domain` input says: the frozen graph outputs it beside the maps at no extra cost, and the small signature
graph (the prior alone) computes it before the domain is known. On the unified lite run it separated the
eight domains better than the pooled general features the C-MoE conditions on (README, "Domain
inference"). bundle.domain_match turns signatures into statistics, distances and bounds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from bundle.domain_match import fit_signature_statistics, ood_bound, signature_distance
from export.samples import DomainData, batches
from model.unimmad import UniMMAD

SIGNATURE_OUTPUT = "signature"
SIGNATURE_FILE = "model_signature.onnx"


def pooled_signature(priors: list[Tensor], batch: int, slots: int) -> Tensor:
    """Unit-norm prior levels of slot-major pairs, each [M*B, C_l, h_l, w_l] -> signature [B, M, sum C_l]."""
    pooled = torch.cat([level.mean(dim=(2, 3)) for level in priors], dim=1)
    return pooled.unflatten(0, (slots, batch)).transpose(0, 1)


class SignatureNet(nn.Module):
    """forward(images [B, M, 3, S, S]) -> signature [B, M, F]: the prior alone (the signature graph)."""

    def __init__(self, model: UniMMAD) -> None:
        super().__init__()
        self.prior = model.prior

    def forward(self, images: Tensor) -> Tensor:
        batch, slots = images.shape[:2]
        pairs = images.transpose(0, 1).reshape(slots * batch, *images.shape[2:])
        priors = [nn.functional.normalize(level, dim=1) for level in self.prior(pairs)]
        return pooled_signature(priors, batch, slots)


@torch.no_grad()
def signatures_of(
    net: SignatureNet, data: DomainData, refs: list, model: UniMMAD, batch_size: int
) -> np.ndarray:
    """Signatures [N, M, F] of `refs` of one domain (M: the domain's modalities, in its order)."""
    parts = [net(batch.images).numpy() for batch in batches(data, refs, model.config, batch_size)]
    if not parts:
        raise ValueError(f"domain {data.name}: no images to compute signatures of")
    return np.concatenate(parts)


def signature_entry(
    fitted_on: np.ndarray, held_out: np.ndarray, names: list[str], fit_split: str, bound_split: str
) -> dict:
    """The manifest's ``signature`` of a domain: per-modality statistics fitted on `fitted_on` [N, M, F]
    and the out-of-distribution bound from the distances of `held_out` [N', M, F]."""
    mean, scale = fit_signature_statistics(fitted_on)
    return {
        "split": fit_split,
        "n_images": len(fitted_on),
        "bound_split": bound_split,
        "bound_images": len(held_out),
        "bound": ood_bound(signature_distance(held_out, mean, scale)),
        "modalities": {
            name: {"mean": mean[slot].tolist(), "scale": scale[slot].tolist()}
            for slot, name in enumerate(names)
        },
    }


def subset_bound(entry: dict, held_out: np.ndarray, names: list[str], subset: list[str]) -> float:
    """The bound of a modality subset, from the held-out signatures [N, M, F] restricted to its slots."""
    slots = [names.index(name) for name in subset]
    mean = np.array([entry["modalities"][name]["mean"] for name in subset])
    scale = np.array([entry["modalities"][name]["scale"] for name in subset])
    return ood_bound(signature_distance(held_out[:, slots], mean, scale))
