"""One error shape for every failure: ``{"error": {"code", "message", "request_id"}}`` with a fitting status.

A 500 is reserved for real server faults (answered by ``middleware.ServerFaultMiddleware``, which logs the
traceback); the process stays up.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modalities.errors import ErrorCode, ModalityError
from service.logs import current_request_id


class ServiceError(Exception):
    """An error with its HTTP status, a stable ``code`` slug and one human line."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


# Decoding failures are the client's; the status says which kind of fault it was.
_MODALITY_STATUS = {
    ErrorCode.UNSUPPORTED_FORMAT: 415,
    ErrorCode.TOO_MANY_PIXELS: 413,
}


def from_modality_error(error: ModalityError, field: str | None = None) -> ServiceError:
    message = f"{field}: {error.message}" if field else error.message
    return ServiceError(_MODALITY_STATUS.get(error.code, 422), error.code.value, message)


def error_body(code: str, message: str, request_id: str | None = None) -> dict:
    """``{"error": {"code", "message", "request_id"}}``; the id defaults to that of the request being handled."""
    return {"error": {"code": code, "message": message, "request_id": request_id or current_request_id.get()}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
