"""HTTP routes; each module is thin and delegates to the service's logic modules."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.routes import detect, domains, health, metrics, model, v2
from service.security import require_api_key


def build_router() -> APIRouter:
    router = APIRouter()
    router.include_router(health.router, tags=["health"])
    router.include_router(metrics.router, tags=["metrics"])
    router.include_router(v2.router, tags=["open inference protocol v2"])
    protected = [Depends(require_api_key)]
    router.include_router(detect.router, tags=["detection"], dependencies=protected)
    router.include_router(domains.router, tags=["bundle"], dependencies=protected)
    router.include_router(model.router, tags=["bundle"], dependencies=protected)
    return router
