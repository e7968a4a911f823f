"""App factory: ``create_app(settings)`` wires settings, the bundle runtime, routes, errors and metrics."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from bundle.manifest import MAX_MODALITIES
from service.batcher import Batcher
from service.errors import install_error_handlers
from service.inference import InferenceEngine, first_line, load_engine
from service.metrics import Metrics
from service.middleware import (
    InFlightLimitMiddleware,
    MetricsMiddleware,
    RequestBodyMiddleware,
    RequestIdMiddleware,
    ServerFaultMiddleware,
)
from service.reload import Reloader, RequestGenerations
from service.reload import router as reload_router
from service.routes import build_router
from service.routes.detect import DETECT_PATH
from service.runtime import Runtime
from service.security import require_api_key
from service.settings import Settings

log = logging.getLogger(__name__)

# Room for multipart boundaries, part headers and the text fields around the files.
FORM_OVERHEAD_BYTES = 64 * 1024


def _publish_model_info(metrics: Metrics, engine: InferenceEngine) -> None:
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


def _start_runtime(settings: Settings, engine: InferenceEngine, metrics: Metrics) -> Runtime:
    batcher = Batcher(
        engine,
        {key: served.spec.index for key, served in engine.sets.items()},
        metrics,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_batch_wait_ms / 1e3,
        queue_size=settings.queue_size,
    )
    batcher.start()
    cpu_pool = ThreadPoolExecutor(max_workers=settings.decode_thread_count, thread_name_prefix="decode")
    return Runtime(
        settings=settings,
        bundle=engine.bundle,
        engine=engine,
        batcher=batcher,
        metrics=metrics,
        cpu_pool=cpu_pool,
    )


async def _close_runtime(runtime: Runtime) -> None:
    """Finish the runtime's admitted requests, then release its sessions and threads (off the event loop)."""
    await runtime.batcher.close()
    await asyncio.to_thread(runtime.engine.close)
    await asyncio.to_thread(runtime.cpu_pool.shutdown, wait=True)


def _on_warmup_failure(
    runtime: Runtime, on_fatal: Callable[[str], None]
) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback for the warm-up task: a failure marks the process dead and calls ``on_fatal``."""

    def check(task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        runtime.warmup_error = first_line(task.exception())
        log.error("warm-up failed; stopping", exc_info=task.exception())
        on_fatal(f"warm-up failed: {runtime.warmup_error}")

    return check


def _add_docs_routes(app: FastAPI, settings: Settings) -> None:
    """/openapi.json and /docs; they list the domains, so they follow the API key unless public_docs is set."""
    guard = [] if settings.public_docs else [Depends(require_api_key)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")


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


def create_app(
    settings: Settings,
    *,
    engine: InferenceEngine | None = None,
    on_fatal: Callable[[str], None] = lambda reason: None,
) -> FastAPI:
    """Build the service. ``engine`` lets a caller that already opened the bundle (the CLI) hand it over;
    ``on_fatal(reason)`` is called when the process cannot serve at all (the CLI stops the server with it).
    """
    metrics = Metrics()

    reloader = Reloader(settings, metrics, _start_runtime, _close_runtime, _publish_model_info)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = _start_runtime(settings, engine or load_engine(settings), metrics)
        _publish_model_info(metrics, runtime.engine)
        app.state.runtime = runtime
        app.state.reloader = reloader
        # Warm-up runs behind a live server, so /readyz can say "not yet" while it does.
        warmup = asyncio.create_task(runtime.warm_up(), name="warm-up")
        warmup.add_done_callback(_on_warmup_failure(runtime, on_fatal))
        try:
            yield
        finally:
            if not warmup.done():
                warmup.cancel()
            # A reload may have replaced the startup runtime; the old ones retire on their own.
            await _close_runtime(app.state.runtime)
            await reloader.wait_retired()
            log.info("shut down cleanly")

    app = FastAPI(
        title="UniMMAD anomaly detection",
        version="1",
        summary="One model for many domains and modality sets, served from an exported ONNX bundle.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(build_router())
    app.include_router(reload_router, tags=["admin"], dependencies=[Depends(require_api_key)])
    _add_docs_routes(app, settings)
    # The last added runs first: every answer gets its request id and is counted by the metrics (a fault as
    # 500), and the in-flight limit sees a request before its body is read.
    app.add_middleware(
        RequestBodyMiddleware,
        max_bytes=settings.max_upload_bytes * MAX_MODALITIES + FORM_OVERHEAD_BYTES,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(
        InFlightLimitMiddleware, path=DETECT_PATH, limit=settings.detect_in_flight_limit, metrics=metrics
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(ServerFaultMiddleware)
    app.add_middleware(RequestIdMiddleware)
    # Outermost: a request is counted under the runtime generation it started in before anything reads it.
    app.add_middleware(RequestGenerations, tracker=reloader.tracker)

    default_openapi = app.openapi
    app.openapi = lambda: _enriched_openapi(app, default_openapi())  # type: ignore[method-assign]
    return app
