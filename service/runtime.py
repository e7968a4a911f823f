"""Everything the routes need at run time, created by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from bundle.loader import Bundle
from service.batcher import Batcher
from service.inference import InferenceEngine
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    bundle: Bundle
    engine: InferenceEngine
    batcher: Batcher
    metrics: Metrics
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def warmup_shapes(self) -> list[tuple[int, int, int]]:
        """``(domain index, batch size, modality count)`` covering every input shape the batcher can send
        to every graph in use (one domain stands for all domains of its modality count and graph)."""
        representative: dict[tuple[int, str], int] = {}
        for name, spec in self.bundle.manifest.domains.items():
            representative.setdefault((len(spec.modalities), self.engine.graph_of[name]), spec.index)
        return [
            (index, batch, count)
            for (count, _), index in sorted(representative.items())
            for batch in range(1, self.settings.max_batch_size + 1)
        ]

    async def warm_up(self) -> None:
        """Run every input shape once (arena allocation, kernel selection), then report ready."""
        size = self.bundle.manifest.input_size
        started = time.perf_counter()
        shapes = self.warmup_shapes()
        for index, batch, count in shapes:
            await self.engine.run_async(np.zeros((batch, count, 3, size, size), dtype=np.float32), index)
        self.ready.set()
        log.info(
            "warm-up done", extra={"shapes": len(shapes), "seconds": round(time.perf_counter() - started, 3)}
        )
