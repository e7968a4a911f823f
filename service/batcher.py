"""Dynamic batching per domain in front of the single inference worker.

Each domain has a FIFO and a collector task. A collector takes the oldest request, waits up to
``max_wait_s`` for companions (a batch holds one domain, the graph's ``domain`` input is per batch),
then waits for the engine; requests that arrived meanwhile top the batch up to ``max_batch_size``, so
under load batches fill without extra waiting. Admission is bounded by ``queue_size`` over all domains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import ServiceError
from service.inference import InferenceEngine
from service.metrics import Metrics

log = logging.getLogger(__name__)

_DISCONNECT_POLL_S = 0.1
_STOP = None  # queue sentinel: the collector finishes what is before it and exits


@dataclass(frozen=True)
class SampleResult:
    """One sample's slice of a batch run."""

    anomaly_map: np.ndarray  # [S, S]
    modality_maps: np.ndarray  # [M, S, S]
    image_score: float
    modality_scores: np.ndarray  # [M]
    signature: np.ndarray | None  # [M, F]; None from a graph without the output
    queue_s: float
    infer_s: float
    batch_size: int


@dataclass
class _Pending:
    sample: np.ndarray  # [M, 3, S, S]
    future: asyncio.Future[SampleResult]
    enqueued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        engine: InferenceEngine,
        domain_indices: dict[str, int],
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
    ) -> None:
        self._engine = engine
        self._domain_indices = domain_indices
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue_size = queue_size
        self._queues: dict[str, asyncio.Queue[_Pending | None]] = {}
        self._collectors: list[asyncio.Task[None]] = []
        self._engine_lock = asyncio.Lock()
        self._depth = 0
        self._closing = False

    def start(self) -> None:
        for domain in self._domain_indices:
            self._queues[domain] = asyncio.Queue()
            self._collectors.append(asyncio.create_task(self._collect(domain), name=f"batcher:{domain}"))

    @property
    def depth(self) -> int:
        return self._depth

    def stopped_collector(self) -> str | None:
        """What stopped a domain's collector task before ``close``, or None while every one runs.

        A stopped collector never answers its domain again: requests would only time out.
        """
        if self._closing:
            return None
        for task in self._collectors:
            if task.done():
                error = None if task.cancelled() else task.exception()
                return f"batcher task {task.get_name()} stopped" + (f": {error!r}" if error else "")
        return None

    def _set_depth(self, delta: int) -> None:
        self._depth += delta
        self._metrics.queue_depth.set(self._depth)

    async def submit(
        self,
        domain: str,
        sample: np.ndarray,
        *,
        timeout_s: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> SampleResult:
        """Queue one ``[M, 3, S, S]`` sample and wait for its result (503 when full, 504 after ``timeout_s``)."""
        if self._closing:
            raise ServiceError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
        if self._depth >= self._queue_size:
            raise ServiceError(
                503,
                "queue_full",
                f"{self._depth} requests are already waiting; retry shortly",
                {"Retry-After": "1"},
            )
        future: asyncio.Future[SampleResult] = asyncio.get_running_loop().create_future()
        self._set_depth(+1)
        self._queues[domain].put_nowait(_Pending(sample, future))
        try:
            return await self._wait(future, timeout_s, is_disconnected)
        finally:
            # A cancelled future tells the collector to skip the request: it takes no batch slot.
            future.cancel()

    @staticmethod
    async def _wait(
        future: asyncio.Future[SampleResult],
        timeout_s: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> SampleResult:
        deadline = time.perf_counter() + timeout_s
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise ServiceError(504, "timeout", f"no result within {timeout_s:g} s")
            done, _ = await asyncio.wait({future}, timeout=min(remaining, _DISCONNECT_POLL_S))
            if done:
                return future.result()
            if is_disconnected is not None and await is_disconnected():
                raise ServiceError(499, "client_disconnected", "the client closed the connection")

    async def _next_live(
        self, queue: asyncio.Queue[_Pending | None], timeout_s: float | None
    ) -> _Pending | None:
        """The next request whose client still waits; ``None`` at the stop sentinel; TimeoutError if none came."""
        while True:
            item = await (asyncio.wait_for(queue.get(), timeout_s) if timeout_s is not None else queue.get())
            if item is _STOP:
                return None
            self._set_depth(-1)
            if not item.future.done():
                return item

    def _take_ready(self, queue: asyncio.Queue[_Pending | None], batch: list[_Pending]) -> bool:
        """Move already-queued live requests into ``batch``; False once the stop sentinel is reached."""
        while len(batch) < self._max_batch_size and not queue.empty():
            item = queue.get_nowait()
            if item is _STOP:
                return False
            self._set_depth(-1)
            if not item.future.done():
                batch.append(item)
        return True

    async def _collect(self, domain: str) -> None:
        queue = self._queues[domain]
        running = True
        while running:
            first = await self._next_live(queue, None)
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self._max_wait_s
            while len(batch) < self._max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await self._next_live(queue, remaining)
                except TimeoutError:
                    break
                if item is None:
                    running = False
                    break
                batch.append(item)
            async with self._engine_lock:
                if running:
                    running = self._take_ready(queue, batch)
                await self._run(domain, batch)

    async def _run(self, domain: str, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.future.done()]
        if not live:
            return
        started = time.perf_counter()
        self._metrics.batch_size.observe(len(live))
        try:
            outputs = await self._engine.run_async(
                np.stack([item.sample for item in live]), self._domain_indices[domain]
            )
        except Exception as exc:
            log.exception("inference failed", extra={"domain": domain, "batch_size": len(live)})
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        infer_s = time.perf_counter() - started
        for i, item in enumerate(live):
            if item.future.done():
                continue
            item.future.set_result(
                SampleResult(
                    anomaly_map=outputs.anomaly_map[i],
                    modality_maps=outputs.modality_maps[i],
                    image_score=float(outputs.image_score[i]),
                    modality_scores=outputs.modality_scores[i],
                    signature=None if outputs.signature is None else outputs.signature[i],
                    queue_s=started - item.enqueued_at,
                    infer_s=infer_s,
                    batch_size=len(live),
                )
            )

    async def close(self) -> None:
        """Stop admitting, finish every admitted request, then stop the collectors."""
        self._closing = True
        for queue in self._queues.values():
            queue.put_nowait(_STOP)
        await asyncio.gather(*self._collectors, return_exceptions=True)
