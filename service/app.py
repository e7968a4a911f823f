"""App factory: ``create_app(settings)`` wires settings, the bundle runtime, routes, errors and metrics."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from bundle.manifest import MAX_MODALITIES
from service.batcher import Batcher
from service.errors import install_error_handlers
from service.inference import InferenceEngine, load_engine
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, InFlightLimitMiddleware, MetricsMiddleware
from service.routes import build_router
from service.routes.detect import DETECT_PATH
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

# Room for multipart boundaries, part headers and the text fields around the files.
FORM_OVERHEAD_BYTES = 64 * 1024


def _start_runtime(settings: Settings, engine: InferenceEngine, metrics: Metrics) -> Runtime:
    manifest = engine.bundle.manifest
    metrics.model_info.info(
        {
            "model_version": manifest.model_version,
            "preset": manifest.preset,
            "format_version": str(manifest.format_version),
            "graphs": ",".join(sorted(engine.sessions)),
            "provider": engine.provider,
        }
    )
    batcher = Batcher(
        engine,
        {name: spec.index for name, spec in manifest.domains.items()},
        metrics,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_batch_wait_ms / 1e3,
        queue_size=settings.queue_size,
    )
    batcher.start()
    return Runtime(settings=settings, bundle=engine.bundle, engine=engine, batcher=batcher, metrics=metrics)


def _log_warmup_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("warm-up failed; /readyz stays unready", exc_info=task.exception())


def _enriched_openapi(app: FastAPI, base: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the served bundle's domains and modality fields filled in."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is None:
        return base
    schema = copy.deepcopy(base)
    form = schema["paths"][DETECT_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    domains = runtime.bundle.manifest.domains
    form["properties"]["domain"]["enum"] = sorted(domains)
    for name, spec in domains.items():
        for modality in spec.modalities:
            form["properties"].setdefault(
                modality.name,
                {
                    "type": "string",
                    "format": "binary",
                    "description": f"{modality.kind} modality, needed by: ",
                },
            )["description"] += f"{name} "
    for prop in form["properties"].values():
        prop["description"] = prop.get("description", "").strip()
    form["additionalProperties"] = False
    return schema


def create_app(settings: Settings, *, engine: InferenceEngine | None = None) -> FastAPI:
    """Build the service. ``engine`` lets a caller that already opened the bundle (the CLI) hand it over."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = _start_runtime(settings, engine or load_engine(settings), metrics)
        app.state.runtime = runtime
        warmup = asyncio.create_task(runtime.warm_up(), name="warm-up")
        warmup.add_done_callback(_log_warmup_failure)
        try:
            yield
        finally:
            await runtime.batcher.close()
            if not warmup.done():
                warmup.cancel()
            runtime.engine.close()
            log.info("shut down cleanly")

    app = FastAPI(
        title="UniMMAD anomaly detection",
        version="1",
        summary="One model for many domains and modality sets, served from an exported ONNX bundle.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(build_router())
    # The last added runs first: metrics see every answer, the in-flight limit runs before any body is read.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_upload_bytes * MAX_MODALITIES + FORM_OVERHEAD_BYTES
    )
    app.add_middleware(
        InFlightLimitMiddleware, path=DETECT_PATH, limit=settings.detect_in_flight_limit, metrics=metrics
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    default_openapi = app.openapi
    app.openapi = lambda: _enriched_openapi(app, default_openapi())  # type: ignore[method-assign]
    return app
