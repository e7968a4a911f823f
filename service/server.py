"""The HTTP server of ``python -m service``: uvicorn, one worker, bounded connections and a header deadline.

uvicorn bounds neither how long a client may take to send its request headers nor its body; the body
deadline is the app's (``middleware.RequestBodyMiddleware``), the header deadline and the connection bound
are here because no ASGI app sees a connection before a request's headers are complete. (uvicorn's own
``limit_concurrency`` answers in plain text; these guards answer in the service's JSON error shape.)
"""

from __future__ import annotations

import asyncio
import json
import uuid

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body
from service.settings import Settings


def raw_error_response(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer in the service's JSON shape, for a connection closed right after."""
    request_id = uuid.uuid4().hex
    body = json.dumps(error_body(code, message, request_id)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two guards, both answered in JSON before the connection is closed:

    - a connection beyond ``max_connections`` open at once gets 503;
    - a connection must complete its request line and headers within ``header_timeout_s`` of connecting
      or of its previous answer, else it gets 408.
    """
    too_many = raw_error_response(
        503,
        "Service Unavailable",
        "too_many_connections",
        f"{max_connections} connections are open; retry shortly",
    )
    too_slow = f"request headers not received within {header_timeout_s:g} s"

    class GuardedProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(raw_error_response(408, "Request Timeout", "header_timeout", too_slow))
                self.transport.close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                self.transport.write(too_many)
                self.transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Past IDLE, h11 has parsed a complete request line and headers.
            if self.conn.their_state is not h11.IDLE:
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return GuardedProtocol


def build_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """One uvicorn worker (it owns the single ORT session) with the service's connection bounds."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        http=guarded_protocol(settings.header_timeout_s, settings.max_connections),
        timeout_graceful_shutdown=settings.request_timeout_s,
    )
    return uvicorn.Server(config)
