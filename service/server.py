"""The HTTP server of ``python -m service``: uvicorn, one worker, bounded connections and a header deadline.

uvicorn bounds neither how long a client may take to send its request headers nor (in this app's absence)
its body; the body deadline is the app's (``middleware.RequestBodyMiddleware``), the header deadline is
here because no ASGI app sees a request before its headers are complete.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings


def header_timeout_response(timeout_s: float) -> bytes:
    """The raw 408 answer to a connection whose request headers did not arrive in time (it is then closed)."""
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {
            "error": {
                "code": "header_timeout",
                "message": f"request headers not received within {timeout_s:g} s",
                "request_id": request_id,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol where a connection must complete its request line and headers within
    ``timeout_s`` of connecting or of its previous answer; otherwise it gets 408 and is closed."""

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_overdue)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(header_timeout_response(timeout_s))
                self.transport.close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(transport)  # type: ignore[arg-type]
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

    return HeaderDeadlineProtocol


def build_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """One uvicorn worker (it owns the single ORT session) with the service's connection bounds."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        http=header_deadline_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.request_timeout_s,
    )
    return uvicorn.Server(config)
