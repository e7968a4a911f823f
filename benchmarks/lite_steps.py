"""Timed training steps of the lite preset on the embedded synthetic data (real weights), the part the
step benchmarks share (benchmarks/train_profile.py, scripts/bench_prior_cache.py): each builds its own
batches and decides what to time."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from model.config import UniMMADConfig, preset
from model.data import SyntheticConfig, parse_data_spec
from model.data.loader import MultiDomainDataset
from model.losses import unimmad_loss
from model.prior_cache import PriorCache
from model.unimmad import DEFAULT_KERNEL_MODE, UniMMAD


def cache_keys(batch: dict) -> list[tuple[str, str]]:
    """The prior cache's (domain, sample id) keys of a collated batch."""
    return list(zip(batch["domains"], batch["ids"]))


@dataclass
class LiteSteps:
    config: UniMMADConfig
    model: UniMMAD
    optimizer: torch.optim.Optimizer
    dataset: MultiDomainDataset
    cache: PriorCache

    @classmethod
    def build(cls) -> LiteSteps:
        """The lite model in training mode (seed 0), Adam at the preset's lr, and the synthetic train split."""
        config = preset("lite")
        torch.manual_seed(0)
        model = UniMMAD(config).train()
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
        sources = parse_data_spec("synthetic", synthetic=SyntheticConfig(size=config.image_size))
        dataset = MultiDomainDataset(sources, "train", config.image_size, mean=config.mean, std=config.std)
        return cls(config, model, optimizer, dataset, PriorCache(model))

    def warm_cache(self, batches: list[dict]) -> None:
        """Fill the prior cache with `batches` (a later epoch only reads it)."""
        for batch in batches:
            self.cache.priors(batch["images"], batch["modality_count"], cache_keys(batch))

    def step(self, batch: dict, cached: bool = True, kernel_mode: str = DEFAULT_KERNEL_MODE) -> float:
        """Seconds of one step: prior (read from the cache, or recomputed), forward, loss, backward, Adam."""
        started = time.perf_counter()
        count = batch["modality_count"]
        priors = self.cache.priors(batch["images"], count, cache_keys(batch)) if cached else None
        output = self.model(batch["images"], count, priors=priors, kernel_mode=kernel_mode)
        terms = unimmad_loss(output, self.config, 0.0, batch["loss_weight"])
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        terms.total.item()
        return time.perf_counter() - started
