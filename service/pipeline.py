"""POST /detect from parsed form to response: choose the served set, decode, preprocess, queue, infer,
check the domain fit, postprocess.

The served set is the named domain (or its calibrated subset when modalities are missing and allowed), or,
without a domain, the set among those taking exactly the uploaded modalities that the sample's domain
signature fits best: one run of the small signature graph (the prior alone) decides it before the sample
is queued. With a domain, the signature comes out of the scoring run itself, so checking the fit costs no
extra pass. A sample beyond every candidate's bound is out of distribution (service.domain_match).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
from starlette.datastructures import FormData

from bundle.manifest import Manifest
from service.domain_match import (
    DomainMatch,
    ServedSet,
    best_match,
    by_name,
    candidates,
    given_match,
    set_for_domain,
)
from service.errors import ServiceError
from service.postprocessing import heatmap_shape, is_anomalous, render_heatmaps
from service.preprocessing import (
    check_overlay,
    decode_files,
    parse_allow_missing,
    parse_controls,
    parse_heatmap_size,
    prepare_sample,
    read_modality_files,
    uploaded_names,
)
from service.runtime import Runtime
from service.schemas import DetectResponse, DomainMatchInfo, Heatmaps, Timings

INFERRED = "(inferred)"


def candidate_sets(runtime: Runtime, uploaded: frozenset[str], allow_subsets: bool) -> list[ServedSet]:
    """The sets a request without a domain may be scored as; 422 when there is none or no statistics."""
    manifest = runtime.bundle.manifest
    found = candidates(runtime.engine.sets, uploaded, allow_subsets)
    if not found:
        hint = (
            "a calibrated subset does: send allow_missing=true"
            if candidates(runtime.engine.sets, uploaded, allow_subsets=True)
            else "see GET /domains"
        )
        raise ServiceError(
            422,
            "no_matching_domain",
            f"no domain of this bundle takes exactly the modalities {', '.join(sorted(uploaded)) or '(none)'}; "
            f"{hint}",
        )
    if manifest.signature is None or runtime.engine.signature_session is None:
        raise ServiceError(
            422,
            "domain_inference_unavailable",
            "this bundle has no domain statistics (format 2): send `domain`, or re-export the bundle with "
            "`python -m export bundle` to infer it",
        )
    return found


def prepared_per_set(
    arrays: dict[str, np.ndarray], sets: list[ServedSet], manifest: Manifest
) -> tuple[np.ndarray, dict[str, int]]:
    """The sample prepared once per distinct modality preparation ([G, M, 3, S, S]) and each set's row."""
    rows: dict[tuple, int] = {}
    samples = []
    row_of = {}
    for served in sets:
        recipe = tuple(served.spec.modalities)
        if recipe not in rows:
            rows[recipe] = len(samples)
            samples.append(prepare_sample(arrays, served.spec, manifest))
        row_of[served.key] = rows[recipe]
    return np.stack(samples), row_of


def match_info(match: DomainMatch | None) -> DomainMatchInfo | None:
    if match is None:
        return None
    other = match.nearest_other
    return DomainMatchInfo(
        distance=match.scored.ratio,
        nearest_other=None if other is None else other.served.domain,
        nearest_other_distance=None if other is None else other.ratio,
        confidence=match.confidence,
    )


def mismatch_warning(match: DomainMatch, factor: float) -> str | None:
    """A warning when another domain fits the sample (within its bound) while the requested set does not, or
    fits `factor` times worse."""
    other, given = match.nearest_other, match.scored
    if other is None or other.ratio > 1 or (given.ratio <= 1 and other.ratio * factor > given.ratio):
        return None
    return (
        f"the sample fits {other.served.domain!r} (distance {other.ratio:.2f}) much better than the given "
        f"domain {given.served.domain!r} (distance {given.ratio:.2f}); check the domain"
    )


def out_of_distribution(runtime: Runtime, match: DomainMatch, *, inferred: bool, route: str) -> bool:
    """True when no candidate fits the sample (every fit beyond its bound) and the service flags such samples;
    422 when it rejects them (UNIMMAD_OOD_ACTION). A named domain that does not fit while another does is a
    mislabel, answered with a warning (mismatch_warning), not an unknown input."""
    scored, other = match.scored, match.nearest_other
    if scored.ratio <= 1 or (other is not None and other.ratio <= 1):
        return False
    action = "rejected" if runtime.settings.ood_action == "reject" else "flagged"
    runtime.metrics.out_of_distribution.labels(route=route, action=action).inc()
    if action == "flagged":
        return True
    nearest = scored if inferred or other is None or scored.ratio <= other.ratio else other
    which = (
        "none of the domains" if inferred else f"neither domain {scored.served.domain!r} nor any other domain"
    )
    raise ServiceError(
        422,
        "out_of_distribution",
        f"the sample fits {which} that take these modalities (nearest: {nearest.served.domain!r} at "
        f"{nearest.ratio:.2f} times its out-of-distribution bound); it was not scored",
    )


async def detect(
    runtime: Runtime,
    form: FormData,
    *,
    on_domain: Callable[[str], None],
    route: str,
    is_disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> DetectResponse:
    """Run one detection; ``on_domain`` learns the domain (for metric labels) as soon as it is known;
    ``route`` labels the out-of-distribution counter."""
    started = time.perf_counter()
    manifest = runtime.bundle.manifest
    settings = runtime.settings
    metrics = runtime.metrics

    domain, heatmap_mode = parse_controls(form, manifest)
    heatmap_size = parse_heatmap_size(form)
    allow_subsets = parse_allow_missing(form, settings.allow_missing_modalities)
    uploaded = uploaded_names(form)
    if domain is not None:
        on_domain(domain)
        served = set_for_domain(runtime.engine.sets, domain, uploaded, allow_subsets)
        rivals = [
            s for s in candidates(runtime.engine.sets, served.names, allow_subsets) if s.key != served.key
        ]
        sets = [served]
    else:
        sets = candidate_sets(runtime, uploaded, allow_subsets)
        served = sets[0]
    check_overlay(served.spec, heatmap_mode)
    files = await read_modality_files(form, domain or INFERRED, served.spec, settings.max_upload_bytes)

    # Decoding and resizing are CPU work; they run off the event loop like inference does.
    mark = time.perf_counter()
    arrays = await runtime.in_cpu_pool(decode_files, files, settings.max_pixels, manifest.input_size)
    decode_s = time.perf_counter() - mark
    mark = time.perf_counter()
    samples, row_of = await runtime.in_cpu_pool(prepared_per_set, arrays, sets, manifest)
    preprocess_s = time.perf_counter() - mark

    match: DomainMatch | None = None
    flagged = False
    match_s = 0.0
    if domain is None:
        mark = time.perf_counter()
        signatures = await runtime.engine.signatures_async(samples)
        match = best_match({s.key: by_name(signatures[row_of[s.key]], s) for s in sets}, sets)
        match_s = time.perf_counter() - mark
        served = match.scored.served
        # A rejected sample belongs to no domain: its metrics keep the label 'none'.
        flagged = out_of_distribution(runtime, match, inferred=True, route=route)
        on_domain(served.domain)
        check_overlay(served.spec, heatmap_mode)
        metrics.domains_inferred.labels(domain=served.domain).inc()
    sample = samples[row_of[served.key]]
    spec = served.spec

    result = await runtime.batcher.submit(
        served.key, sample, timeout_s=settings.request_timeout_s, is_disconnected=is_disconnected
    )

    warnings = []
    if domain is not None and result.signature is not None and spec.signature is not None:
        match = given_match(by_name(result.signature, served), served, rivals)
        flagged = out_of_distribution(runtime, match, inferred=False, route=route)
        warning = mismatch_warning(match, settings.domain_mismatch_factor)
        if warning is not None:
            warnings.append(warning)
            metrics.domain_warnings.labels(domain=served.domain).inc()

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
        metrics.stage_duration.labels(stage=name).observe(seconds)

    anomalous = is_anomalous(result.image_score, spec.threshold)
    metrics.requests.labels(domain=served.domain).inc()
    if anomalous:
        metrics.anomalies.labels(domain=served.domain).inc()
    if served.subset is not None:
        metrics.degraded.labels(domain=served.domain).inc()
    return DetectResponse(
        domain=served.domain,
        domain_inferred=domain is None,
        domain_match=match_info(match),
        out_of_distribution=flagged,
        warnings=warnings,
        modalities_used=spec.modality_names,
        degraded=served.subset is not None,
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
            domain_match_ms=match_s * 1e3,
            total_ms=(time.perf_counter() - started) * 1e3,
            batch_size=result.batch_size,
        ),
    )
