"""Uploads decode on the service's own bounded pool: concurrent requests never decode more at once."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
from service_helpers import RGB_DEPTH_DOMAIN, make_settings, uploads

import service.pipeline
from service import create_app


def test_the_pool_defaults_to_the_cores_this_process_may_use(tiny_bundle) -> None:
    assert make_settings(tiny_bundle).decode_thread_count == len(os.sched_getaffinity(0))
    assert make_settings(tiny_bundle, decode_threads=3).decode_thread_count == 3


def test_concurrent_requests_decode_one_at_a_time_with_one_decode_thread(tiny_bundle, monkeypatch) -> None:
    decoding, most = 0, 0
    lock = threading.Lock()
    decode_files = service.pipeline.decode_files

    def observed_decode(*args):
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.05)  # long enough for the other requests to arrive while this one decodes
        try:
            return decode_files(*args)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(service.pipeline, "decode_files", observed_decode)

    async def scenario() -> list[int]:
        app = create_app(make_settings(tiny_bundle, decode_threads=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 30)
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/detect", data={"domain": RGB_DEPTH_DOMAIN}, files=uploads(RGB_DEPTH_DOMAIN)
                        )
                        for _ in range(4)
                    )
                )
        return [answer.status_code for answer in answers]

    assert asyncio.run(scenario()) == [200] * 4
    assert most == 1
