"""Admission control on POST /detect: a slot is held from the last body byte to the start of the answer.

Over the limit, a request gets 503 before its body is read. Slow uploads hold no slot and are cut at the body
deadline (408); a client that never reads its answer holds no slot either. These tests drive the ASGI app
directly, so bodies and reads can be held back at will and nothing depends on timing but the deadline itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable

import httpx
from service_helpers import RGB_DOMAIN, make_settings, uploads

from service import Settings, create_app

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _detect_request() -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a valid multipart POST /detect for the rgb domain."""
    request = httpx.Request(
        "POST",
        "http://testserver/detect",
        data={"domain": RGB_DOMAIN, "heatmap": "none"},
        files=uploads(RGB_DOMAIN),
    )
    body = request.read()
    return [(k.lower(), v) for k, v in request.headers.raw], body


def _scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/detect",
        "raw_path": b"/detect",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def _body_once(body: bytes) -> Receive:
    """A client that sends ``body`` in one message and then stays connected."""
    sent = False
    connected_forever = asyncio.Event()

    async def receive() -> dict:
        nonlocal sent
        if sent:
            await connected_forever.wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _slow_upload(body: bytes) -> Receive:
    """A client that sends the first half of ``body`` and then nothing more (a slowloris upload)."""
    chunks = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True}]
    stalled = asyncio.Event()

    async def receive() -> dict:
        if chunks:
            return chunks.pop()
        await stalled.wait()
        raise AssertionError("unreachable")

    return receive


async def _call(app, headers, receive: Receive, send: Send | None = None) -> tuple[int, dict[str, str], dict]:
    messages: list[dict] = []

    async def record(message: dict) -> None:
        messages.append(message)
        if send is not None:
            await send(message)

    await app(_scope(headers), receive, record)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def _in_flight(app) -> float:
    return app.state.metrics.registry.get_sample_value("unimmad_in_flight_requests")


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def _stall_inference(app) -> threading.Event:
    """Make inference wait until the returned event is set (the request holding a slot stays there)."""
    engine = app.state.runtime.engine
    working, release = engine.run, threading.Event()

    def stalled(*args, **kwargs):
        release.wait(10)
        return working(*args, **kwargs)

    engine.run = stalled
    return release


def test_detect_over_the_in_flight_limit_gets_503_without_its_body_being_read(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()
            release = _stall_inference(app)
            first = asyncio.create_task(_call(app, headers, _body_once(body)))
            await _until(lambda: _in_flight(app) == 1)

            reads = 0

            async def watched_receive() -> dict:
                nonlocal reads
                reads += 1
                return {"type": "http.request", "body": body, "more_body": False}

            status, response_headers, payload = await _call(app, headers, watched_receive)
            assert status == 503
            assert response_headers["retry-after"] == "1"
            assert payload["error"]["code"] == "overloaded"
            assert reads == 0, "the refused request's body was read"

            release.set()
            assert (await asyncio.wait_for(first, 10))[0] == 200
            # The slot is free again once the admitted request is answered.
            assert (await _call(app, headers, _body_once(body)))[0] == 200

            registry = app.state.metrics.registry
            refused = {"route": "/detect", "domain": "none", "status": "503"}
            assert registry.get_sample_value("unimmad_request_duration_seconds_count", refused) == 1
            assert _in_flight(app) == 0

    asyncio.run(scenario())


def test_slow_uploads_hold_no_slot_and_are_cut_at_the_body_deadline(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1, body_timeout_s=0.5))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()
            slow = [asyncio.create_task(_call(app, headers, _slow_upload(body))) for _ in range(3)]
            await asyncio.sleep(0.05)  # every slow upload is in and stalled
            assert _in_flight(app) == 0
            for _ in range(3):  # with the only slot free, normal requests are answered meanwhile
                assert (await asyncio.wait_for(_call(app, headers, _body_once(body)), 10))[0] == 200
            for status, response_headers, payload in await asyncio.wait_for(asyncio.gather(*slow), 10):
                assert status == 408 and response_headers["connection"] == "close"
                assert payload["error"]["code"] == "body_timeout"

    asyncio.run(scenario())


def test_a_client_that_does_not_read_its_answer_holds_no_slot(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()
            answer_started, never_read = asyncio.Event(), asyncio.Event()

            async def reads_nothing(message: dict) -> None:
                if message["type"] == "http.response.start":
                    answer_started.set()
                else:
                    await never_read.wait()  # the socket buffer is full: sending the body blocks

            stuck = asyncio.create_task(_call(app, headers, _body_once(body), reads_nothing))
            await asyncio.wait_for(answer_started.wait(), 10)
            assert _in_flight(app) == 0
            assert (await asyncio.wait_for(_call(app, headers, _body_once(body)), 10))[0] == 200
            stuck.cancel()

    asyncio.run(scenario())


def test_health_metrics_and_other_routes_are_not_limited(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()
            release = _stall_inference(app)
            held = asyncio.create_task(_call(app, headers, _body_once(body)))
            await _until(lambda: _in_flight(app) == 1)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://testserver"
            ) as client:
                for route in ("/readyz", "/metrics", "/domains"):
                    assert (await client.get(route)).status_code == 200
            release.set()
            assert (await asyncio.wait_for(held, 10))[0] == 200

    asyncio.run(scenario())


def test_in_flight_limit_defaults_to_queue_plus_batch_and_reads_the_environment(
    tiny_bundle, monkeypatch
) -> None:
    assert make_settings(tiny_bundle, queue_size=10, max_batch_size=4).detect_in_flight_limit == 14
    monkeypatch.setenv("UNIMMAD_MAX_IN_FLIGHT", "3")
    assert Settings(bundle=tiny_bundle).detect_in_flight_limit == 3
