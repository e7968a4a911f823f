"""Zero-downtime bundle reload: ``POST /admin/reload`` with ``{"bundle": PATH}`` (API key required).

    load + verify the new bundle, open its sessions (a worker thread)   -- the old runtime keeps serving
    start its batcher and warm it up on every input shape               -- still the old one
    app.state.runtime = new   (one assignment on the event loop: atomic for every later request)
    the old runtime retires once every request that started before the swap has finished

A request reads ``app.state.runtime`` once and uses that runtime to the end, so a request in flight
finishes on the old bundle. Which requests may still hold the old runtime is known by generation:
:class:`RequestGenerations` counts HTTP requests by the reload generation they started under, and the
old runtime is closed when its generation has none left. A bundle that fails to load or to warm up is
closed again and the old one keeps serving; the answer (422) says why. Reloads happen one at a time
(409 while one runs); the path must lie inside ``settings.reload_root`` (default: the folder that holds
the startup bundle). ``unimmad_reloads_total{outcome}`` counts them; ``GET /model`` shows the active
``model_version``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from bundle.loader import BundleError
from service.errors import ServiceError
from service.inference import InferenceEngine, first_line, load_engine
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

RELOAD_PATH = "/admin/reload"
# How often a retiring runtime looks whether the requests of its generation are done.
DRAIN_POLL_S = 0.05


class ReloadRequest(BaseModel):
    bundle: str = Field(min_length=1, max_length=4096, description="bundle folder, inside the reload root")


class ReloadResponse(BaseModel):
    model_version: str = Field(description="the bundle now serving")
    previous_version: str
    domains: list[str]
    seconds: float = Field(description="load + warm-up time; the old bundle served meanwhile")


class GenerationTracker:
    """Requests in progress per reload generation (generation 0 is the startup bundle)."""

    def __init__(self) -> None:
        self.generation = 0
        self.active: Counter[int] = Counter()

    def enter(self) -> int:
        self.active[self.generation] += 1
        return self.generation

    def leave(self, generation: int) -> None:
        self.active[generation] -= 1

    async def drained(self, generation: int) -> None:
        """Return once no request that started under ``generation`` is in progress."""
        while self.active[generation] > 0:
            await asyncio.sleep(DRAIN_POLL_S)
        del self.active[generation]


class RequestGenerations:
    """Pure ASGI middleware: every HTTP request is counted under the generation it started in (the reload
    request itself is not, or a reload would wait for its own answer)."""

    def __init__(self, app: ASGIApp, tracker: GenerationTracker) -> None:
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == RELOAD_PATH:
            await self.app(scope, receive, send)
            return
        generation = self.tracker.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.tracker.leave(generation)


def allowed_bundle(text: str, root: Path) -> Path:
    """The bundle folder ``text`` names (relative paths are taken from ``root``), refused unless inside root."""
    path = (root / text).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ServiceError(403, "forbidden_path", f"bundle {text!r} is outside the reload root {root}")
    return path


StartRuntime = Callable[[Settings, InferenceEngine, Metrics], Runtime]
CloseRuntime = Callable[[Runtime], Awaitable[None]]
PublishModelInfo = Callable[[Metrics, InferenceEngine], None]


class Reloader:
    """Swaps the app's runtime for one on a new bundle; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        start: StartRuntime,
        close: CloseRuntime,
        publish: PublishModelInfo,
    ) -> None:
        """start/close/publish: how the app starts a runtime, closes one and publishes its model info."""
        self.settings = settings
        self.metrics = metrics
        self.start = start
        self.close = close
        self.publish = publish
        self.tracker = GenerationTracker()
        self.root = settings.reload_root or settings.bundle.resolve().parent
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    def _failed(self, status: int, code: str, reason: str, serving: str) -> ServiceError:
        self.metrics.reloads.labels(outcome="failure").inc()
        log.error("reload failed; still serving the old bundle", extra={"reason": reason, "serving": serving})
        return ServiceError(status, code, f"{reason}; still serving {serving}")

    async def reload(self, state: object, bundle_text: str) -> ReloadResponse:
        """Load, warm and swap ``state.runtime`` (an app's state) to the bundle ``bundle_text``."""
        if self._lock.locked():
            raise ServiceError(409, "reload_in_progress", "another reload is running; retry when it is done")
        async with self._lock:
            old: Runtime = state.runtime  # type: ignore[attr-defined]
            serving = old.bundle.manifest.model_version
            path = allowed_bundle(bundle_text, self.root)
            settings = self.settings.model_copy(update={"bundle": path})
            started = time.perf_counter()
            try:
                engine = await asyncio.to_thread(load_engine, settings)
            except BundleError as error:
                raise self._failed(
                    422, "reload_failed", f"cannot load {path}: {first_line(error)}", serving
                ) from None
            runtime = self.start(settings, engine, self.metrics)
            try:
                await runtime.warm_up()
            except Exception as error:  # noqa: BLE001 -- any warm-up fault means the bundle cannot serve
                await self.close(runtime)
                raise self._failed(
                    422, "reload_failed", f"warm-up of {path} failed: {first_line(error)}", serving
                ) from None
            state.runtime = runtime  # type: ignore[attr-defined]
            retired = self.tracker.generation
            self.tracker.generation += 1
            self.metrics.reloads.labels(outcome="success").inc()
            self.publish(self.metrics, runtime.engine)
            task = asyncio.create_task(self._retire(old, retired), name=f"retire-generation-{retired}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            manifest = runtime.bundle.manifest
            log.info("reloaded", extra={"model_version": manifest.model_version, "previous": serving})
            return ReloadResponse(
                model_version=manifest.model_version,
                previous_version=serving,
                domains=list(manifest.domains),
                seconds=round(time.perf_counter() - started, 3),
            )

    async def _retire(self, runtime: Runtime, generation: int) -> None:
        await self.tracker.drained(generation)
        await self.close(runtime)
        log.info("old bundle closed", extra={"model_version": runtime.bundle.manifest.model_version})

    async def wait_retired(self) -> None:
        """Let every retiring runtime finish its requests and close (at shutdown)."""
        await asyncio.gather(*self._retiring, return_exceptions=True)


router = APIRouter()


@router.post(
    RELOAD_PATH,
    response_model=ReloadResponse,
    summary="Serve another bundle without downtime (needs UNIMMAD_API_KEY)",
    responses={
        403: {"description": "no API key configured, or a path outside the reload root"},
        409: {"description": "a reload is already running"},
        422: {"description": "the bundle failed to load or warm up; the old one keeps serving"},
    },
)
async def reload_bundle(body: ReloadRequest, request: Request) -> ReloadResponse:
    if request.app.state.settings.api_key is None:
        raise ServiceError(403, "admin_disabled", "admin routes need an API key: set UNIMMAD_API_KEY")
    return await request.app.state.reloader.reload(request.app.state, body.bundle)
