"""Torch side of the data: a multi-domain Dataset, the class-balanced sampler and the collate (spec 1.4-1.5).

Mixing follows spec 1.5: each epoch draws ``len(dataset)`` items with replacement, an item with
probability proportional to ``1 / (items of its domain)``, so every domain is equally likely whatever
its size. Dataset weights are loss multipliers carried per item, not sampling weights. No
augmentation (spec 1.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from modalities import IMAGENET_MEAN, IMAGENET_STD, prepare_mask, stack_sample
from model.data.sample import Domain, SampleRef, Source, Split

MAX_MODALITIES = 4


@dataclass(frozen=True)
class Item:
    """One entry of a :class:`MultiDomainDataset`: the source that can load it and its reference."""

    source: Source
    ref: SampleRef


class MultiDomainDataset(Dataset):
    """Every sample of ``split`` over all domains of ``sources``, prepared at ``size`` pixels with the
    model's ``mean``/``std`` (the lite preset's prior expects other constants than ImageNet's).

    ``__getitem__`` returns ``images`` float32 [4, 3, S, S] (slots after the domain's modalities are
    zero), ``modality_count``, ``mask`` bool [S, S], ``label``, ``loss_weight``, ``domain``, ``id``.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        split: Split,
        size: int,
        domains: Sequence[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.domains: dict[str, Domain] = {}
        self.items: list[Item] = []
        for source in sources:
            for domain in source.domains():
                if domains is not None and domain.name not in domains:
                    continue
                self.domains[domain.name] = domain
                self.items += [Item(source, ref) for ref in source.refs(split, domain.name)]
        if domains is not None and (missing := sorted(set(domains) - set(self.domains))):
            raise ValueError(f"unknown domain(s) {', '.join(missing)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        sample = item.source.load(item.ref)
        domain = self.domains[sample.domain]
        images = np.zeros((MAX_MODALITIES, 3, self.size, self.size), dtype=np.float32)
        images[: len(domain.modalities)] = stack_sample(
            sample.modalities, domain.modalities, self.size, mean=self.mean, std=self.std
        )
        mask = (
            prepare_mask(sample.mask, self.size)
            if sample.mask is not None
            else np.zeros((self.size, self.size), dtype=bool)
        )
        return {
            "images": torch.from_numpy(images),
            "modality_count": len(domain.modalities),
            "mask": torch.from_numpy(mask),
            "label": sample.label,
            "loss_weight": domain.loss_weight,
            "domain": sample.domain,
            "id": sample.id,
            "meta": sample.meta,
        }

    def domain_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(self.domains, 0)
        for item in self.items:
            sizes[item.ref.domain] += 1
        return sizes


def balanced_weights(dataset: MultiDomainDataset) -> torch.Tensor:
    """Per-item sampling weight ``1 / (items of its domain)``: float64 [len(dataset)]."""
    sizes = dataset.domain_sizes()
    return torch.tensor([1.0 / sizes[item.ref.domain] for item in dataset.items], dtype=torch.float64)


class DomainBalancedSampler(Sampler[int]):
    """Draws ``num_samples`` indices (default ``len(dataset)``) with replacement, domains equally likely."""

    def __init__(self, dataset: MultiDomainDataset, num_samples: int | None = None, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.weights = balanced_weights(dataset)
        self.num_samples = num_samples or len(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A different, reproducible draw per epoch (and per resume from that epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=generator
        ).tolist()

    def __len__(self) -> int:
        return self.num_samples


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: images [B, 4, 3, S, S], modality_count int64 [B], masks bool [B, S, S],
    labels int64 [B], loss_weight float32 [B], domains / ids / meta as lists."""
    return {
        "images": torch.stack([item["images"] for item in batch]),
        "modality_count": torch.tensor([item["modality_count"] for item in batch], dtype=torch.int64),
        "masks": torch.stack([item["mask"] for item in batch]),
        "labels": torch.tensor([item["label"] for item in batch], dtype=torch.int64),
        "loss_weight": torch.tensor([item["loss_weight"] for item in batch], dtype=torch.float32),
        "domains": [item["domain"] for item in batch],
        "ids": [item["id"] for item in batch],
        "meta": [item["meta"] for item in batch],
    }
