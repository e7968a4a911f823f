"""Admission control before the body is read: the /detect in-flight limit answers 503 without touching the body.

These tests drive the ASGI app directly, so a request can be held in flight (its body never arrives) and
the refused request's ``receive`` can be watched: nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
from service_helpers import RGB_DOMAIN, make_settings, uploads

from service import Settings, create_app

Receive = Callable[[], Awaitable[dict]]


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


def _body_once(
    body: bytes, *, gate: asyncio.Event | None = None, asked: asyncio.Event | None = None
) -> Receive:
    """A client that sends ``body`` (after ``gate`` opens) and then stays connected."""
    sent = False
    connected_forever = asyncio.Event()

    async def receive() -> dict:
        nonlocal sent
        if asked is not None:
            asked.set()
        if sent:
            await connected_forever.wait()
        if gate is not None:
            await gate.wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _call(app, headers, receive: Receive) -> tuple[int, dict[str, str], dict]:
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    await app(_scope(headers), receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def test_detect_over_the_in_flight_limit_gets_503_without_its_body_being_read(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()

            # The first request is admitted and waits for its body: it holds the only slot.
            release, first_asked = asyncio.Event(), asyncio.Event()
            first = asyncio.create_task(
                _call(app, headers, _body_once(body, gate=release, asked=first_asked))
            )
            await asyncio.wait_for(first_asked.wait(), 10)

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
            assert registry.get_sample_value("unimmad_in_flight_requests") == 0

    asyncio.run(scenario())


def test_health_metrics_and_other_routes_are_not_limited(tiny_bundle) -> None:
    async def scenario() -> None:
        app = create_app(make_settings(tiny_bundle, max_in_flight=1))
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.ready.wait(), 10)
            headers, body = _detect_request()
            asked = asyncio.Event()
            held = asyncio.create_task(
                _call(app, headers, _body_once(body, gate=asyncio.Event(), asked=asked))
            )
            await asyncio.wait_for(asked.wait(), 10)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://testserver"
            ) as client:
                for route in ("/readyz", "/metrics", "/domains"):
                    assert (await client.get(route)).status_code == 200
            held.cancel()

    asyncio.run(scenario())


def test_in_flight_limit_defaults_to_queue_plus_batch_and_reads_the_environment(
    tiny_bundle, monkeypatch
) -> None:
    assert make_settings(tiny_bundle, queue_size=10, max_batch_size=4).detect_in_flight_limit == 14
    monkeypatch.setenv("UNIMMAD_MAX_IN_FLIGHT", "3")
    assert Settings(bundle=tiny_bundle).detect_in_flight_limit == 3
