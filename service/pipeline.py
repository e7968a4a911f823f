"""POST /detect from parsed form to response: decode, preprocess, queue, infer, postprocess."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import FormData

from service.postprocessing import heatmap_shape, is_anomalous, render_heatmaps
from service.preprocessing import (
    decode_files,
    parse_controls,
    parse_heatmap_size,
    prepare_sample,
    read_modality_files,
)
from service.runtime import Runtime
from service.schemas import DetectResponse, Heatmaps, Timings


async def detect(
    runtime: Runtime,
    form: FormData,
    *,
    on_domain: Callable[[str], None],
    is_disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> DetectResponse:
    """Run one detection; ``on_domain`` learns the validated domain (for metric labels) as soon as it is known."""
    started = time.perf_counter()
    manifest = runtime.bundle.manifest
    settings = runtime.settings
    stage = runtime.metrics.stage_duration

    domain, spec, heatmap_mode = parse_controls(form, manifest)
    heatmap_size = parse_heatmap_size(form)
    on_domain(domain)
    files = await read_modality_files(form, domain, spec, settings.max_upload_bytes)

    # Decoding and resizing are CPU work; they run off the event loop like inference does.
    mark = time.perf_counter()
    arrays = await runtime.in_cpu_pool(decode_files, files, settings.max_pixels, manifest.input_size)
    decode_s = time.perf_counter() - mark
    mark = time.perf_counter()
    sample = await runtime.in_cpu_pool(prepare_sample, arrays, spec, manifest)
    preprocess_s = time.perf_counter() - mark

    result = await runtime.batcher.submit(
        domain, sample, timeout_s=settings.request_timeout_s, is_disconnected=is_disconnected
    )

    mark = time.perf_counter()
    heatmaps = await runtime.in_cpu_pool(
        render_heatmaps,
        result.anomaly_map,
        result.modality_maps,
        spec,
        heatmap_mode,
        heatmap_shape(spec, files, heatmap_size, manifest.input_size),
        sample=sample,
        uploads=arrays,
        normalization=manifest.normalization,
    )
    postprocess_s = time.perf_counter() - mark
    for name, seconds in (
        ("decode", decode_s),
        ("preprocess", preprocess_s),
        ("queue", result.queue_s),
        ("infer", result.infer_s),
        ("postprocess", postprocess_s),
    ):
        stage.labels(stage=name).observe(seconds)

    anomalous = is_anomalous(result.image_score, spec.threshold)
    runtime.metrics.requests.labels(domain=domain).inc()
    if anomalous:
        runtime.metrics.anomalies.labels(domain=domain).inc()
    return DetectResponse(
        domain=domain,
        image_score=result.image_score,
        normalized_score=spec.normalized_score(result.image_score),
        threshold=spec.threshold,
        is_anomalous=anomalous,
        modality_scores={m.name: float(result.modality_scores[i]) for i, m in enumerate(spec.modalities)},
        heatmaps=Heatmaps(**heatmaps) if heatmaps is not None else None,
        model_version=manifest.model_version,
        timings=Timings(
            decode_ms=decode_s * 1e3,
            preprocess_ms=preprocess_s * 1e3,
            queue_ms=result.queue_s * 1e3,
            infer_ms=result.infer_s * 1e3,
            postprocess_ms=postprocess_s * 1e3,
            total_ms=(time.perf_counter() - started) * 1e3,
            batch_size=result.batch_size,
        ),
    )
