from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ServiceError
from service.schemas import ErrorResponse, Health

router = APIRouter()


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": ErrorResponse, "description": "still warming up"}},
    summary="The session is loaded and warmed up on every input shape",
)
async def readyz(request: Request) -> Health:
    if not request.app.state.runtime.ready.is_set():
        raise ServiceError(503, "not_ready", "the model is still warming up", {"Retry-After": "2"})
    return Health(status="ready")
