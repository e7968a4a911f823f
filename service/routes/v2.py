"""Open Inference Protocol (KServe / Triton "v2") health and model metadata, beside the native API.

Health answers carry their verdict in the status alone: 200 true with an empty body, 400 false with the
protocol's ``{"error": message}``. The model is the bundle under the name :data:`MODEL_NAME`, its one
version the manifest's ``model_version``. Inference stays on ``POST /detect`` (multipart files, not tensors).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bundle.manifest import TensorSpec
from service.runtime import Runtime
from service.security import require_api_key

MODEL_NAME = "unimmad"
PLATFORM = "onnxruntime"
# Manifest dtypes -> the protocol's tensor data types.
DATATYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}

router = APIRouter(prefix="/v2")


class V2Error(BaseModel):
    error: str = Field(examples=["unknown model 'x'; this server serves 'unimmad'"])


class TensorMetadata(BaseModel):
    name: str = Field(examples=["images"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 for a dimension of any size", examples=[[-1, 3, 3, 256, 256]])


class ModelMetadata(BaseModel):
    name: str = Field(examples=[MODEL_NAME])
    versions: list[str] = Field(examples=[["lite-2025-01-01"]])
    platform: str = Field(examples=[PLATFORM])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def tensor_metadata(name: str, spec: TensorSpec) -> TensorMetadata:
    """A manifest tensor in protocol form; symbolic dimensions (``"batch"``) become -1."""
    shape = [dim if isinstance(dim, int) else -1 for dim in spec.shape]
    return TensorMetadata(name=name, datatype=DATATYPES[spec.dtype], shape=shape)


def _verdict(problem: str | None) -> Response:
    return Response(status_code=200) if problem is None else JSONResponse({"error": problem}, status_code=400)


def _unknown_model(name: str) -> str | None:
    return None if name == MODEL_NAME else f"unknown model {name!r}; this server serves {MODEL_NAME!r}"


_HEALTH = {
    "responses": {200: {"description": "true (empty body)"}, 400: {"model": V2Error, "description": "false"}},
    "response_class": Response,
}


@router.get("/health/live", summary="The server can still serve (liveness)", **_HEALTH)
async def server_live(request: Request) -> Response:
    return _verdict(await request.app.state.runtime.liveness_problem())


def _readiness_problem(runtime: Runtime) -> str | None:
    return None if runtime.ready.is_set() else "the model is still warming up"


@router.get("/health/ready", summary="The model is loaded and warmed up (readiness)", **_HEALTH)
async def server_ready(request: Request) -> Response:
    return _verdict(_readiness_problem(request.app.state.runtime))


@router.get(
    "/models/{name}/ready",
    summary="This model is ready",
    responses={**_HEALTH["responses"], 404: {"model": V2Error, "description": "no such model"}},
    response_class=Response,
)
async def model_ready(name: str, request: Request) -> Response:
    if (unknown := _unknown_model(name)) is not None:
        return JSONResponse({"error": unknown}, status_code=404)
    return _verdict(_readiness_problem(request.app.state.runtime))


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    responses={404: {"model": V2Error, "description": "no such model"}},
    summary="Model metadata: versions, platform, input and output tensors",
    dependencies=[Depends(require_api_key)],
)
async def model_metadata(name: str, request: Request) -> ModelMetadata | JSONResponse:
    if (unknown := _unknown_model(name)) is not None:
        return JSONResponse({"error": unknown}, status_code=404)
    runtime: Runtime = request.app.state.runtime
    manifest = runtime.bundle.manifest
    # Every graph of a bundle has the same inputs and outputs; describe one the service runs.
    graph = manifest.graph(min(runtime.engine.sessions))
    return ModelMetadata(
        name=MODEL_NAME,
        versions=[manifest.model_version],
        platform=PLATFORM,
        inputs=[tensor_metadata(tensor, spec) for tensor, spec in graph.inputs.items()],
        outputs=[tensor_metadata(tensor, spec) for tensor, spec in graph.outputs.items()],
    )
