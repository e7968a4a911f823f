"""Torch side of the data: a multi-domain Dataset, the class-balanced sampler and the collate (spec 1.4-1.5).

Mixing follows spec 1.5: each epoch draws ``len(dataset)`` items with replacement, an item with
probability proportional to ``1 / (items of its domain)``, so every domain is equally likely whatever
its size. Dataset weights are loss multipliers carried per item, not sampling weights. No
augmentation (spec 1.3), so a sample's model input never changes: :class:`DecodedCache` decodes and
prepares every sample once and assembles batches from memory (on any device) with the exact float
tensors :func:`collate` would give.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from modalities import IMAGENET_MEAN, IMAGENET_STD, prepare_mask, stack_sample
from model.data.sample import Domain, SampleRef, Source, Split

MAX_MODALITIES = 4
CODE_LEVELS = 256

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------- decoded cache


def code_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 [3, 256]: what an 8-bit value q becomes in each channel, computed as modalities.prepare does
    (float64 q / 255, minus mean, over std, then float32), so a looked-up plane is bit-identical."""
    unit = np.arange(CODE_LEVELS, dtype=np.float64) / 255.0
    mean_column = np.asarray(mean, dtype=np.float64)[:, None]
    std_column = np.asarray(std, dtype=np.float64)[:, None]
    return ((unit[None, :] - mean_column) / std_column).astype(np.float32)


def encode_plane(plane: np.ndarray, table: np.ndarray) -> np.ndarray | None:
    """The uint8 codes whose values in one channel's ``table`` [256] are exactly ``plane`` (float32
    [S, S]), or None if there are none (depth, 16-bit or float sources: those planes stay float32)."""
    # The table is increasing in q (std > 0): invert it, then keep the codes only if they reproduce every bit.
    scale = (float(table[-1]) - float(table[0])) / (CODE_LEVELS - 1)
    codes = np.clip(np.rint((plane.astype(np.float64) - float(table[0])) / scale), 0, CODE_LEVELS - 1)
    codes = codes.astype(np.uint8)
    return codes if np.array_equal(table[codes], plane) else None


class PlaneStore:
    """Distinct planes [P, S, S] of one dtype, appended once; row 0 is all zeros (absent slots)."""

    def __init__(self, size: int, dtype: np.dtype) -> None:
        self.planes: list[np.ndarray] = [np.zeros((size, size), dtype=dtype)]

    def add(self, plane: np.ndarray) -> int:
        self.planes.append(plane)
        return len(self.planes) - 1

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.stack(self.planes))


class DecodedCache:
    """Every sample of a dataset, prepared once and held compactly; batches are assembled from memory.

    A channel plane that is an exact lookup of 8-bit codes (rgb/gray from 8-bit files: the usual case) is
    kept as uint8 codes, any other plane (depth, 16-bit, float) as float32; a modality whose three channels
    share one plane (gray, depth) stores it once. Every plane is verified bit for bit when it is encoded,
    so :meth:`collate` returns exactly what ``collate([dataset[i] for i in indices])`` returns, with the
    tensors on ``device`` and without decoding a file: the index tensors, planes and masks live on the
    device and a batch is gathered there (no host round-trip).

    Built by decoding the dataset once, through ``workers`` loader processes when > 0.
    """

    def __init__(self, dataset: MultiDomainDataset, device: str | torch.device = "cpu", workers: int = 0):
        started = time.monotonic()
        self.size = dataset.size
        table = code_table(dataset.mean, dataset.std)
        codes = PlaneStore(dataset.size, np.uint8)
        floats = PlaneStore(dataset.size, np.float32)
        masks = PlaneStore(dataset.size, bool)
        items = len(dataset)
        # Per (item, slot, channel): row in `codes` or in `floats` (row 0 of both: zeros).
        code_rows = np.zeros((items, MAX_MODALITIES, 3), dtype=np.int64)
        float_rows = np.zeros((items, MAX_MODALITIES, 3), dtype=np.int64)
        is_code = np.zeros((items, MAX_MODALITIES, 3), dtype=bool)
        mask_rows = np.zeros(items, dtype=np.int64)
        counts, labels, weights = [], [], []
        self.domains: list[str] = []
        self.ids: list[str] = []
        self.meta: list[Any] = []
        for index, item in enumerate(DataLoader(dataset, batch_size=None, num_workers=workers)):
            images = item["images"].numpy()
            for slot in range(item["modality_count"]):
                encoded = [encode_plane(plane, values) for plane, values in zip(images[slot], table)]
                if all(plane is not None for plane in encoded):
                    is_code[index, slot] = True
                    code_rows[index, slot] = self._rows(codes, encoded)
                else:
                    float_rows[index, slot] = self._rows(floats, list(images[slot]))
            if item["mask"].any():
                mask_rows[index] = masks.add(item["mask"].numpy())
            counts.append(item["modality_count"])
            labels.append(item["label"])
            weights.append(item["loss_weight"])
            self.domains.append(item["domain"])
            self.ids.append(item["id"])
            self.meta.append(item["meta"])
        self.device = torch.device(device)
        on_device = {"device": self.device}
        self.table = torch.from_numpy(table).to(**on_device)
        self.codes = codes.tensor().to(**on_device)
        self.floats = floats.tensor().to(**on_device)
        self.masks = masks.tensor().to(**on_device)
        self.code_rows = torch.from_numpy(code_rows).to(**on_device)
        self.float_rows = torch.from_numpy(float_rows).to(**on_device)
        self.is_code = torch.from_numpy(is_code).to(**on_device)
        self.mask_rows = torch.from_numpy(mask_rows).to(**on_device)
        self.modality_count = torch.tensor(counts, dtype=torch.int64, device=self.device)
        self.labels = torch.tensor(labels, dtype=torch.int64, device=self.device)
        self.loss_weight = torch.tensor(weights, dtype=torch.float32, device=self.device)
        logger.info(
            "decoded %d samples once in %.1f s: %.1f MB on %s",
            items,
            time.monotonic() - started,
            self.nbytes() / 2**20,
            self.device,
        )

    @staticmethod
    def _rows(store: PlaneStore, channels: list[np.ndarray]) -> list[int]:
        """Rows of a modality's three channel planes, one shared row when they are all equal."""
        if all(np.array_equal(channels[0], other) for other in channels[1:]):
            return [store.add(channels[0])] * 3
        return [store.add(plane) for plane in channels]

    def __len__(self) -> int:
        return len(self.ids)

    def nbytes(self) -> int:
        """Memory held by the planes and masks."""
        return sum(tensor.numel() * tensor.element_size() for tensor in (self.codes, self.floats, self.masks))

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """index int64 [B] on the cache's device -> float32 [B, 4, 3, S, S], as the Dataset prepares them."""
        shape = (index.shape[0], MAX_MODALITIES, 3, self.size, self.size)
        codes = self.codes.index_select(0, self.code_rows.index_select(0, index).flatten()).view(shape)
        # One gather per channel (its own table row); int32 positions, half the traffic of int64.
        decoded = torch.stack(
            [
                values.index_select(0, codes[:, :, channel].flatten().int()).view(shape[:2] + shape[3:])
                for channel, values in enumerate(self.table)
            ],
            dim=2,
        )
        stored = self.floats.index_select(0, self.float_rows.index_select(0, index).flatten()).view(shape)
        return torch.where(self.is_code.index_select(0, index)[..., None, None], decoded, stored)

    def collate(self, indices: Sequence[int]) -> dict[str, Any]:
        """The batch of ``indices`` with :func:`collate`'s keys, its tensors on the cache's device."""
        index = torch.tensor(indices, dtype=torch.int64).to(self.device, non_blocking=True)
        return {
            "images": self.images(index),
            "modality_count": self.modality_count.index_select(0, index),
            "masks": self.masks.index_select(0, self.mask_rows.index_select(0, index)),
            "labels": self.labels.index_select(0, index),
            "loss_weight": self.loss_weight.index_select(0, index),
            "domains": [self.domains[i] for i in indices],
            "ids": [self.ids[i] for i in indices],
            "meta": [self.meta[i] for i in indices],
        }
