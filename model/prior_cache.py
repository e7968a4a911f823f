"""Cache of the frozen prior's features per (sample, modality slot).

The prior generator never trains (spec 7.2) and the spec has no augmentation (spec 1.3), so a sample's
prior features are the same in every epoch. The first time a sample is seen its pairs run through the
prior; afterwards they are read from memory and only the trainable parts run. Features are kept in
float32 so the cached path is numerically the uncached one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from model.unimmad import UniMMAD, presence_mask

PairKey = tuple[Hashable, int]


class PriorCache:
    """In-memory prior features keyed by (sample key, slot); ``hits``/``misses`` count pairs."""

    def __init__(self, model: UniMMAD, storage_device: str | torch.device = "cpu") -> None:
        self.model = model
        self.storage_device = torch.device(storage_device)
        self.features: dict[PairKey, tuple[Tensor, ...]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.features)

    def nbytes(self) -> int:
        """Memory held by the cached features."""
        return sum(
            level.numel() * level.element_size() for levels in self.features.values() for level in levels
        )

    def priors(self, images: Tensor, modality_count: Tensor, keys: Sequence[Hashable]) -> list[Tensor]:
        """Prior features of a batch in UniMMAD.forward's slot-major pair order.

        images [B,M,3,S,S], modality_count int64 [B], keys: one stable key per sample (e.g. (domain, id)).
        Returns per level [N,C_l,h_l,w_l] on the images' device, N = modality_count.sum().
        """
        batch, slots = images.shape[:2]
        if len(keys) != batch:
            raise ValueError(f"need one key per sample: {batch} samples, {len(keys)} keys")
        present = presence_mask(modality_count.cpu(), batch, slots)
        pairs = [(sample, slot) for slot in range(slots) for sample in range(batch) if present[sample, slot]]
        missing = [(sample, slot) for sample, slot in pairs if (keys[sample], slot) not in self.features]
        if missing:
            self._fill(images, keys, missing)
        self.hits += len(pairs) - len(missing)
        self.misses += len(missing)
        levels = zip(*(self.features[(keys[sample], slot)] for sample, slot in pairs))
        return [torch.stack(level).to(images.device, non_blocking=True) for level in levels]

    def _fill(self, images: Tensor, keys: Sequence[Hashable], pairs: list[tuple[int, int]]) -> None:
        samples = torch.tensor([sample for sample, _ in pairs], device=images.device)
        slots = torch.tensor([slot for _, slot in pairs], device=images.device)
        with torch.autocast(images.device.type, enabled=False):
            computed = self.model.prior_features(images[samples, slots].float())
        for position, (sample, slot) in enumerate(pairs):
            self.features[(keys[sample], slot)] = tuple(
                level[position].to(self.storage_device, copy=True) for level in computed
            )
