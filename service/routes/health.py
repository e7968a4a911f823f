from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ServiceError
from service.schemas import ErrorResponse, Health

router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": ErrorResponse, "description": "the process cannot serve any more; restart it"}},
    summary="The process can still serve (liveness)",
)
async def healthz(request: Request) -> Health:
    """Fails after a failed warm-up, when a batcher task stopped, or when the inference session fails its runs."""
    problem = await request.app.state.runtime.liveness_problem()
    if problem is not None:
        raise ServiceError(503, "not_live", problem)
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
