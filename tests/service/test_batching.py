"""Dynamic batching, bounded queue (503), timeouts (504), cancelled requests and graceful shutdown."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import RGB_DOMAIN, make_settings, uploads, wait_ready

from service import create_app
from service.batcher import Batcher
from service.errors import ServiceError
from service.inference import BatchOutputs
from service.metrics import Metrics


def _post(client: TestClient, scene: int = 0):
    return client.post(
        "/detect", data={"domain": RGB_DOMAIN, "heatmap": "none"}, files=uploads(RGB_DOMAIN, scene)
    )


def _batch_counts(client: TestClient) -> tuple[float, float]:
    """(runs of size 1, all runs) from the unimmad_batch_size histogram."""
    text = client.get("/metrics").text
    ones = float(re.search(r'unimmad_batch_size_bucket\{le="1.0"\} (\S+)', text).group(1))
    total = float(re.search(r"unimmad_batch_size_count (\S+)", text).group(1))
    return ones, total


class Gate:
    """Holds every ORT run until released, so tests can fill the queue deterministically."""

    def __init__(self, engine) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._run = engine.run
        engine.run = self

    def __call__(self, images, domain_index):
        self.entered.set()
        assert self.release.wait(10)
        return self._run(images, domain_index)


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_concurrent_requests_share_a_batch(tiny_bundle) -> None:
    settings = make_settings(tiny_bundle, max_batch_size=8, max_batch_wait_ms=250)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda scene: _post(client, scene), range(8)))
        assert all(r.status_code == 200 for r in responses)
        assert max(r.json()["timings"]["batch_size"] for r in responses) > 1
        ones, total = _batch_counts(client)
        assert total < 8 and ones < total
        # Batched results equal single-request results for the same input.
        alone = _post(client, 3).json()["image_score"]
        assert responses[3].json()["image_score"] == pytest.approx(alone, rel=1e-6)


def test_full_queue_answers_503_with_retry_after(tiny_bundle) -> None:
    # The in-flight limit is raised so the batcher's own bound, the second line, is the one that refuses.
    settings = make_settings(
        tiny_bundle, max_batch_size=1, max_batch_wait_ms=0, queue_size=1, max_in_flight=10
    )
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(2) as pool:
        wait_ready(client)
        runtime = client.app.state.runtime
        gate = Gate(runtime.engine)
        running = pool.submit(_post, client, 0)
        assert gate.entered.wait(5)
        queued = pool.submit(_post, client, 1)
        _wait_for(lambda: runtime.batcher.depth == 1)
        rejected = _post(client, 2)
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "queue_full"
        gate.release.set()
        assert running.result().status_code == 200
        assert queued.result().status_code == 200


def test_timeout_is_504_and_the_abandoned_request_takes_no_batch_slot(tiny_bundle) -> None:
    settings = make_settings(tiny_bundle, max_batch_size=4, max_batch_wait_ms=0, request_timeout_s=0.3)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        wait_ready(client)
        gate = Gate(client.app.state.runtime.engine)
        running = pool.submit(_post, client, 0)
        assert gate.entered.wait(5)
        timed_out = _post(client, 1)  # waits behind the held run, then gives up
        assert timed_out.status_code == 504
        assert timed_out.json()["error"]["code"] == "timeout"
        gate.release.set()
        assert running.result().status_code == 504  # held past its own timeout too
        after = _post(client, 2)
        assert after.status_code == 200
        assert after.json()["timings"]["batch_size"] == 1
        _, total = _batch_counts(client)
        assert total == 2  # the held run and the last one; the abandoned request never ran


class _CountingEngine:
    """Stands in for the ORT engine in batcher unit tests: records batch sizes, answers instantly."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def run_async(self, images: np.ndarray, domain_index: int) -> BatchOutputs:
        await asyncio.sleep(0.01)
        self.batches.append(len(images))
        b, m, _, s, _ = images.shape
        score = images.reshape(b, -1).mean(axis=1)
        return BatchOutputs(np.zeros((b, s, s)), np.zeros((b, m, s, s)), score, np.zeros((b, m)))


def test_shutdown_finishes_admitted_work_and_refuses_new() -> None:
    async def scenario() -> None:
        engine = _CountingEngine()
        batcher = Batcher(engine, {"d": 0}, Metrics(), max_batch_size=2, max_wait_s=0.0, queue_size=10)
        batcher.start()
        samples = [np.full((1, 3, 2, 2), i, dtype=np.float32) for i in range(5)]
        waiting = [asyncio.create_task(batcher.submit("d", s, timeout_s=5)) for s in samples]
        await asyncio.sleep(0)  # let every submit enqueue
        await batcher.close()
        results = await asyncio.gather(*waiting)
        assert [r.image_score for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert sum(engine.batches) == 5 and max(engine.batches) == 2
        try:
            await batcher.submit("d", samples[0], timeout_s=1)
        except ServiceError as exc:
            assert (exc.status, exc.code) == (503, "shutting_down")
        else:
            raise AssertionError("a closed batcher admitted a request")

    asyncio.run(scenario())
