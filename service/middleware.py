"""ASGI middleware, outermost first: request ids, the last-resort 500, request metrics, the /detect in-flight
limit and the request-body guard (size and time).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.logs import current_request_id
from service.metrics import NO_DOMAIN, Metrics

log = logging.getLogger(__name__)

# Request-state key naming the route of a request answered before routing (metrics label it by this).
ROUTE_LABEL = "route_label"
REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept when it is short printable token text (no spaces or quotes that could break a log line).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new random one."""
    offered = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
    return offered if _SANE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Every HTTP answer carries ``X-Request-ID``; the same id is in the logs of the request and its error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        # Threads and tasks started while the request is handled inherit the id with the context.
        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class ServerFaultMiddleware:
    """An exception nothing else handled: logged with its traceback, answered 500 JSON, and the process lives on.

    Inside the request-id layer (unlike Starlette's own error middleware), so the 500 carries the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                fault = error_response(500, "internal_error", "internal server error; the fault was logged")
                await fault(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class RequestBodyMiddleware:
    """Bounds every request body in size (413 past ``max_bytes``, before it is buffered or spooled) and in time
    (408 when the last byte has not arrived ``timeout_s`` after the headers). Both answers close the connection.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        close = {"Connection": "close"}
        too_large = error_response(
            413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes", close
        )
        too_slow = error_response(
            408, "body_timeout", f"request body not received within {self.timeout_s:g} s", close
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        received = 0
        body_complete = False
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later calls only poll for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise _BodyTooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (_BodyTooLarge, _BodyTooSlow) as exc:
            if not response_started:
                await (too_large if isinstance(exc, _BodyTooLarge) else too_slow)(scope, receive, send)


class _Overloaded(Exception):
    pass


class InFlightLimitMiddleware:
    """At most ``limit`` ``POST path`` requests are worked on at once; beyond that, 503 + ``Retry-After``.

    A request holds its slot from its last body byte to the start of its answer: the span in which it costs
    CPU (parsing, decoding, queueing, inference). Arriving while every slot is taken, it is refused before its
    body is read, which costs nothing. A slow upload takes no slot (the body guard ends it), nor does a
    client slow to read the answer, so neither can starve the others.
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

    def _overloaded(self, scope: Scope) -> ASGIApp:
        scope.setdefault("state", {})[ROUTE_LABEL] = self.path
        return error_response(
            503,
            "overloaded",
            f"{self.in_flight} requests are already being handled; retry shortly",
            {"Retry-After": str(self.retry_after_s)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._guards(scope):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            # No "Connection: close": the server discards the unread body and keeps the connection, whereas
            # closing on unread bytes resets it and the client loses the answer.
            await self._overloaded(scope)(scope, receive, send)
            return
        holding = False
        response_started = False

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self._track(-1)

        async def admitting_receive() -> Message:
            nonlocal holding
            message = await receive()
            body_done = message["type"] == "http.request" and not message.get("more_body", False)
            if body_done and not holding and not response_started:
                if self.in_flight >= self.limit:
                    raise _Overloaded
                holding = True
                self._track(+1)
            return message

        async def releasing_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                release()
            await send(message)

        try:
            await self.app(scope, admitting_receive, releasing_send)
        except _Overloaded:
            if not response_started:
                await self._overloaded(scope)(scope, receive, send)
        finally:
            release()


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
