from __future__ import annotations

from fastapi import APIRouter, Request

from service.errors import ServiceError
from service.pipeline import detect as run_detection
from service.preprocessing import HEATMAP_MODES, HEATMAP_SIZES
from service.runtime import Runtime
from service.schemas import DetectResponse, ErrorResponse

router = APIRouter()
DETECT_PATH = "/detect"

# Form field names are the manifest's modality names; app.py fills in the bundle's names and domains.
DETECT_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "domain": {
            "type": "string",
            "description": "a domain of the bundle (GET /domains); optional: without it the service infers the "
            "domain among those taking exactly the uploaded modalities (answer: domain_inferred, domain_match)",
        },
        "heatmap": {"type": "string", "enum": list(HEATMAP_MODES), "default": "png"},
        "heatmap_size": {"type": "string", "enum": list(HEATMAP_SIZES), "default": "input"},
        "allow_missing": {
            "type": "string",
            "enum": ["true", "false"],
            "description": "score a calibrated subset of the domain's modalities when some are missing "
            "(default: UNIMMAD_ALLOW_MISSING_MODALITIES)",
        },
    },
    "additionalProperties": {"type": "string", "format": "binary"},
}
MAX_FORM_PARTS = 16

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "missing or wrong API key",
        413: "an upload or its pixel count is over the limit",
        415: "not multipart/form-data, or a file that is not a supported image or array",
        422: "unknown domain, missing/extra/duplicated modality, an undecodable file, no domain taking the "
        "uploaded modalities, domain inference on a bundle without domain statistics, or out_of_distribution "
        "(the sample fits no domain)",
        503: "overloaded, queue full or not ready yet (see Retry-After)",
        504: "no result within the request timeout",
    }.items()
}


@router.post(
    DETECT_PATH,
    response_model=DetectResponse,
    responses=_ERRORS,
    summary="Score one multimodal sample",
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": DETECT_FORM_SCHEMA}}}
    },
)
async def detect(request: Request) -> DetectResponse:
    """Multipart form: optional `domain` (inferred when absent), one file per modality (named as in the
    manifest), optional `heatmap` = none | png | overlay, `heatmap_size` = input (the upload's resolution) |
    model and `allow_missing` = true | false. Files: PNG (8/16-bit), JPEG, TIFF (incl. MVTec-3D xyz), BMP, `.npy`.
    """
    runtime: Runtime = request.app.state.runtime
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ServiceError(415, "unsupported_media_type", "send the sample as multipart/form-data")
    if not runtime.ready.is_set():
        raise ServiceError(503, "not_ready", "the model is still warming up", {"Retry-After": "2"})
    async with request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS) as form:

        def remember_domain(domain: str) -> None:
            request.state.domain = domain

        return await run_detection(
            runtime,
            form,
            on_domain=remember_domain,
            route=DETECT_PATH,
            is_disconnected=request.is_disconnected,
        )
