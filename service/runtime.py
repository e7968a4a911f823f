"""Everything the routes need at run time, created by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np

from bundle.loader import Bundle
from service.batcher import Batcher
from service.inference import InferenceEngine
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# A liveness probe that waits longer than this for the inference worker counts as failed: orchestrators
# give up on a probe after a few seconds (Docker's HEALTHCHECK here: 3 s, Kubernetes' default: 1 s).
LIVENESS_PROBE_TIMEOUT_S = 2.0


@dataclass
class Runtime:
    settings: Settings
    bundle: Bundle
    engine: InferenceEngine
    batcher: Batcher
    metrics: Metrics
    # Decode, preprocess and heatmaps: bounded, unlike asyncio's default pool, so that concurrent uploads
    # decode a few at a time instead of all at once (each decode's memory is that of one image).
    cpu_pool: ThreadPoolExecutor
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    warmup_error: str | None = None

    async def in_cpu_pool(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on the bounded CPU pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self.cpu_pool, partial(function, *args, **kwargs)
        )

    def warmup_shapes(self) -> list[tuple[int, int, int]]:
        """``(domain index, batch size, modality count)`` covering every input shape the batcher can send
        to every graph in use (one served set, a domain or a calibrated subset, stands for all sets of its
        modality count and graph)."""
        representative: dict[tuple[int, str], int] = {}
        for key, served in self.engine.sets.items():
            representative.setdefault(
                (len(served.spec.modalities), self.engine.graph_of[key]), served.spec.index
            )
        return [
            (index, batch, count)
            for (count, _), index in sorted(representative.items())
            for batch in range(1, self.settings.max_batch_size + 1)
        ]

    async def _run_zeros(self, index: int, batch: int, count: int) -> None:
        size = self.bundle.manifest.input_size
        await self.engine.run_async(np.zeros((batch, count, 3, size, size), dtype=np.float32), index)

    def signature_warmup_counts(self) -> list[int]:
        """The modality counts a request without a domain can send to the signature graph (one sample per
        run: that pass is per request); none without a signature graph."""
        if self.engine.signature_session is None:
            return []
        return sorted({len(served.spec.modalities) for served in self.engine.sets.values()})

    async def warm_up(self) -> None:
        """Run every input shape once (arena allocation, kernel selection), the signature graph's too, so
        that neither the first request nor the first request without a domain pays for it; then report
        ready."""
        started = time.perf_counter()
        shapes = self.warmup_shapes()
        for shape in shapes:
            await self._run_zeros(*shape)
        size = self.bundle.manifest.input_size
        for count in self.signature_warmup_counts():
            await self.engine.signatures_async(np.zeros((1, count, 3, size, size), dtype=np.float32))
        self.ready.set()
        log.info(
            "warm-up done", extra={"shapes": len(shapes), "seconds": round(time.perf_counter() - started, 3)}
        )

    async def liveness_problem(self) -> str | None:
        """Why this process cannot serve any more (a restart is the cure), or None while it can.

        Dead: a failed warm-up, a stopped batcher task, or an inference session whose latest run failed and
        that fails a probe run too (one smallest warm-up shape) -- a run that failed once but passes the
        probe was a passing fault. Still warming up is alive (readiness says when it can take traffic).
        """
        if self.warmup_error is not None:
            return f"warm-up failed: {self.warmup_error}"
        stopped = self.batcher.stopped_collector()
        if stopped is not None:
            return stopped
        failure = self.engine.last_error
        if failure is None:
            return None
        try:
            await asyncio.wait_for(self._run_zeros(*self.warmup_shapes()[0]), LIVENESS_PROBE_TIMEOUT_S)
        except TimeoutError:
            return f"inference failed ({failure}) and a probe run got no result within {LIVENESS_PROBE_TIMEOUT_S:g} s"
        except Exception:  # noqa: BLE001 -- whatever the session raises, it is broken; engine.last_error says what
            return f"inference session broken: {self.engine.last_error}"
        return None
