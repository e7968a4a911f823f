from __future__ import annotations

from fastapi import APIRouter, Request

from service.schemas import ModelInfo

router = APIRouter()


@router.get("/model", response_model=ModelInfo, summary="Bundle summary and the active ORT provider")
async def model_info(request: Request) -> ModelInfo:
    runtime = request.app.state.runtime
    manifest = runtime.bundle.manifest
    return ModelInfo(
        model_version=manifest.model_version,
        preset=manifest.preset,
        format_version=manifest.format_version,
        created_at=manifest.created_at.isoformat(),
        input_size=manifest.input_size,
        graphs=sorted(runtime.engine.sessions),
        provider=runtime.engine.provider,
        domains=list(manifest.domains),
        versions=manifest.versions.model_dump(),
        max_batch_size=runtime.settings.max_batch_size,
    )
