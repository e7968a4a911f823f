"""A domain's samples as model-ready batches: decode through `modalities`, exactly as the service does."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from modalities import prepare_mask, stack_sample
from model.config import UniMMADConfig
from model.data import Domain, SampleRef, Source


@dataclass(frozen=True)
class DomainData:
    """One domain with the source that loads it."""

    source: Source
    domain: Domain

    @property
    def name(self) -> str:
        return self.domain.name

    def normal_train_refs(self) -> list[SampleRef]:
        return [ref for ref in self.source.refs("train", self.name) if ref.label == 0]

    def test_refs(self) -> list[SampleRef]:
        return self.source.refs("test", self.name)


@dataclass(frozen=True)
class Batch:
    """images float32 [B, M, 3, S, S], masks bool [B, S, S] (False without a pixel mask), labels int64 [B],
    blank_depth bool [B] (the adapter flagged the sample's depth image as blank: MulSen's render artifact)."""

    images: Tensor
    masks: np.ndarray
    labels: np.ndarray
    blank_depth: np.ndarray


def select_domains(sources: Sequence[Source], names: Sequence[str] | None) -> list[DomainData]:
    """Every domain of `sources` (or just `names`, in that order); ValueError names unknown ones."""
    available = {domain.name: DomainData(source, domain) for source in sources for domain in source.domains()}
    if names is None:
        return list(available.values())
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(unknown)}; the data has {', '.join(available)}")
    return [available[name] for name in names]


def batches(
    data: DomainData, refs: Sequence[SampleRef], config: UniMMADConfig, batch_size: int
) -> Iterator[Batch]:
    """Decode and prepare `refs` in order, `batch_size` at a time."""
    size = config.image_size
    for start in range(0, len(refs), batch_size):
        samples = [data.source.load(ref) for ref in refs[start : start + batch_size]]
        images = np.stack(
            [
                # Only the domain's modalities: a modality subset (export.build) names fewer than a sample has.
                stack_sample(
                    {name: s.modalities[name] for name in data.domain.modality_names},
                    data.domain.modalities,
                    size,
                    mean=config.mean,
                    std=config.std,
                )
                for s in samples
            ]
        )
        masks = np.stack(
            [
                prepare_mask(s.mask, size) if s.mask is not None else np.zeros((size, size), bool)
                for s in samples
            ]
        )
        yield Batch(
            torch.from_numpy(images),
            masks,
            np.array([s.label for s in samples], dtype=np.int64),
            np.array([bool(s.meta.get("blank_depth", False)) for s in samples]),
        )


@dataclass(frozen=True)
class LimitedDomainData(DomainData):
    """A domain cut to its first `limit` normal training samples and first `limit` test samples of each
    label (quick runs; both labels stay represented); the same refs every time."""

    limit: int = 0

    def normal_train_refs(self) -> list[SampleRef]:
        return super().normal_train_refs()[: self.limit]

    def test_refs(self) -> list[SampleRef]:
        refs = super().test_refs()
        return [ref for label in (0, 1) for ref in [r for r in refs if r.label == label][: self.limit]]
