"""Optional API key: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import ServiceError


def presented_key(request: Request) -> str | None:
    header = request.headers.get("x-api-key")
    if header is not None:
        return header
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


async def require_api_key(request: Request) -> None:
    """FastAPI dependency; a no-op unless ``api_key`` is configured."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    key = presented_key(request)
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise ServiceError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer or X-API-Key)",
            {"WWW-Authenticate": "Bearer"},
        )
