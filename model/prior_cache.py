"""Cache of the frozen prior's features per (sample, modality slot).

The prior generator never trains (spec 7.2) and the spec has no augmentation (spec 1.3), so a sample's
prior features are the same in every epoch. The first time a sample is seen its pairs run through the
prior; afterwards they are read from memory and only the trainable parts run. Features are kept in
float32 so the cached path is numerically the uncached one. Each level is one tensor with a row per
pair, so a batch is one index_select per level (on the storage device: the GPU when training there).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from model.unimmad import UniMMAD, presence_mask

PairKey = tuple[Hashable, int]
INITIAL_ROWS = 64


class PriorCache:
    """In-memory prior features keyed by (sample key, slot); ``hits``/``misses`` count pairs."""

    def __init__(self, model: UniMMAD, storage_device: str | torch.device = "cpu") -> None:
        self.model = model
        self.storage_device = torch.device(storage_device)
        self.rows: dict[PairKey, int] = {}
        self.levels: list[Tensor] = []  # per level [capacity, C_l, h_l, w_l]; the first len(self) rows used
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.rows)

    def nbytes(self) -> int:
        """Memory held by the cached features."""
        return sum(level[0].numel() * level.element_size() * len(self) for level in self.levels)

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
        missing = [(sample, slot) for sample, slot in pairs if (keys[sample], slot) not in self.rows]
        if missing:
            self._fill(images, keys, missing)
        self.hits += len(pairs) - len(missing)
        self.misses += len(missing)
        rows = torch.tensor([self.rows[(keys[sample], slot)] for sample, slot in pairs])
        rows = rows.to(self.storage_device, non_blocking=True)
        return [level.index_select(0, rows).to(images.device, non_blocking=True) for level in self.levels]

    def _fill(self, images: Tensor, keys: Sequence[Hashable], pairs: list[tuple[int, int]]) -> None:
        samples = torch.tensor([sample for sample, _ in pairs], device=images.device)
        slots = torch.tensor([slot for _, slot in pairs], device=images.device)
        with torch.autocast(images.device.type, enabled=False):
            computed = self.model.prior_features(images[samples, slots].float())
        first = len(self)
        self._reserve(first + len(pairs), computed)
        for stored, level in zip(self.levels, computed):
            stored[first : first + len(pairs)] = level.to(self.storage_device)
        for position, (sample, slot) in enumerate(pairs):
            self.rows[(keys[sample], slot)] = first + position

    def _reserve(self, rows: int, like: list[Tensor]) -> None:
        """Room for ``rows`` pairs, doubling the capacity so that filling costs amortised O(1) per pair."""
        if not self.levels:
            self.levels = [
                level.new_empty((max(rows, INITIAL_ROWS), *level.shape[1:]), device=self.storage_device)
                for level in like
            ]
        elif rows > self.levels[0].shape[0]:
            capacity = max(rows, 2 * self.levels[0].shape[0])
            grown = [level.new_empty((capacity, *level.shape[1:])) for level in self.levels]
            for new, old in zip(grown, self.levels):
                new[: len(self)] = old[: len(self)]
            self.levels = grown
