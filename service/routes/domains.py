from __future__ import annotations

from fastapi import APIRouter, Request

from service.schemas import DomainInfo, DomainsResponse

router = APIRouter()


@router.get("/domains", response_model=DomainsResponse, summary="Domains with modalities and thresholds")
async def list_domains(request: Request) -> DomainsResponse:
    runtime = request.app.state.runtime
    manifest = runtime.bundle.manifest
    return DomainsResponse(
        domains=[
            DomainInfo(
                name=name,
                index=spec.index,
                modalities=spec.modalities,
                threshold=spec.threshold,
                threshold_method=spec.threshold_method,
                image_score_reduction=manifest.image_score.reduction,
                routing=spec.routing,
                subsets=list(spec.subsets),
                inferable=spec.signature is not None,
                graph=runtime.engine.graph_of[name],
            )
            for name, spec in sorted(manifest.domains.items(), key=lambda item: item[1].index)
        ]
    )
