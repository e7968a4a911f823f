"""ASGI middleware: request metrics, an in-flight limit for /detect and a streaming request-body limit."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import NO_DOMAIN, Metrics

# Request-state key naming the route of a request answered before routing (metrics label it by this).
ROUTE_LABEL = "route_label"


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answers 413 as soon as a request body passes ``max_bytes``, before it is buffered or spooled."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes", {"Connection": "close"}
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await too_large(scope, receive, send)


class InFlightLimitMiddleware:
    """Answers ``POST path`` with 503 + ``Retry-After`` while ``limit`` of them are in flight, body unread.

    Receiving, parsing and decoding an upload costs CPU before a request reaches the batcher's bounded
    queue. Counted only there, overload would pile up as parsing work and every admitted request would
    wait behind it; counted at the door, a refusal costs nothing and admitted latency stays bounded.
    """

    def __init__(
        self, app: ASGIApp, *, path: str, limit: int, metrics: Metrics, retry_after_s: int = 1
    ) -> None:
        self.app = app
        self.path = path
        self.limit = limit
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def _guards(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path

    def _track(self, delta: int) -> None:
        self.in_flight += delta
        self.metrics.in_flight.set(self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._guards(scope):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            scope.setdefault("state", {})[ROUTE_LABEL] = self.path
            # No "Connection: close": the server discards the unread body and keeps the connection, whereas
            # closing on unread bytes resets it and the client loses the answer.
            overloaded = error_response(
                503,
                "overloaded",
                f"{self.in_flight} requests are already being handled; retry shortly",
                {"Retry-After": str(self.retry_after_s)},
            )
            await overloaded(scope, receive, send)
            return
        self._track(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._track(-1)


class MetricsMiddleware:
    """Observes ``unimmad_request_duration_seconds`` with the matched route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            state = scope.get("state", {})
            route = getattr(scope.get("route"), "path", None) or state.get(ROUTE_LABEL, "unmatched")
            domain = state.get("domain", NO_DOMAIN)
            self.metrics.request_duration.labels(route=route, domain=domain, status=str(status)).observe(
                time.perf_counter() - started
            )
