"""`export verify --fallback`: serve a domain with per-sample routing where the frozen routing strays from it.

The decision is made on the validation split, never on test: the domain's threshold normals (the
held-out normal images its threshold comes from, export.build.threshold_normals) run through both graphs,
and the frozen graph keeps the domain when it follows the dynamic (per-sample, reference) graph closely:

- decisions: the mean absolute difference of the two graphs' normalised scores, each normalised by its
  own threshold and score range (model.calibration), is at most MAX_NORMALIZED_SCORE_GAP. A constant
  offset between the graphs is absorbed by their own thresholds; what remains is how much freezing
  moves an image relative to the decision: 0.05 is a tenth of the way from a typical normal (0) to the
  threshold (0.5);
- heatmaps: the Pearson correlation of the two graphs' fused maps over every pixel of those images is at
  least MIN_MAP_CORRELATION, so the frozen graph shows the same places.

A normal-only signal cannot see how routing reacts to a defect, and measured on the unified lite run it
does not: every domain's held-out normals agree closely (score gap <= 0.025, map correlation >= 0.995)
while the test split shows frozen routing costing synthetic/boards 1.3 and button_cell 1.9 image AUROC
points and capsule 5.1 pixel points (docs/results/verify_unified_fallback_rule.json). `export verify`
therefore keeps reporting the test split's AUROC with both routings next to the budget, so that blind
spot stays visible to whoever ships the bundle.

A domain whose graph changes gets its threshold, score range and heatmap colour ranges recomputed from
the new graph on the same normals (export.build.domain_threshold), so a decision keeps its false-positive
rate whichever graph serves it. Only manifest.json changes (rewritten atomically); the graphs and their
checksums stay as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bundle.loader import load_bundle, write_manifest
from bundle.manifest import GraphKind
from export.build import BundleOptions, domain_threshold, graph_outputs, threshold_normals
from export.onnx_graph import check_graph
from export.samples import DomainData
from model.calibration import normalized_scores, quantile_threshold, score_range
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

MAX_NORMALIZED_SCORE_GAP = 0.05
MIN_MAP_CORRELATION = 0.95


def normalized(scores: np.ndarray, target_fpr: float) -> np.ndarray:
    """Normal images' scores [n] normalised by the threshold and score range they set themselves."""
    threshold = quantile_threshold(scores, target_fpr)
    return normalized_scores(scores, score_range(scores, threshold))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally shaped arrays over all elements (1 for identical constants)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    spread = a.std() * b.std()
    if spread == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / spread)


def validation_agreement(
    frozen: ort.InferenceSession,
    dynamic: ort.InferenceSession,
    data: DomainData,
    index: int,
    model: UniMMAD,
    options: BundleOptions,
) -> dict[str, Any]:
    """How closely the frozen graph follows the dynamic one on the domain's threshold normals, and the
    verdict of the module's rule (`frozen_ok`)."""
    refs, split = threshold_normals(data, options)
    outputs = [
        graph_outputs(session, data, refs, index, model, options.batch_size) for session in (frozen, dynamic)
    ]
    gap = float(
        np.abs(
            normalized(outputs[0].image_scores, options.target_fpr)
            - normalized(outputs[1].image_scores, options.target_fpr)
        ).mean()
    )
    maps = correlation(outputs[0].fused_maps, outputs[1].fused_maps)
    return {
        "split": split,
        "images": len(refs),
        "normalized_score_gap": gap,
        "map_correlation": maps,
        "rule": {
            "max_normalized_score_gap": MAX_NORMALIZED_SCORE_GAP,
            "min_map_correlation": MIN_MAP_CORRELATION,
        },
        "frozen_ok": gap <= MAX_NORMALIZED_SCORE_GAP and maps >= MIN_MAP_CORRELATION,
    }


def chosen_graph(entry: dict[str, Any]) -> GraphKind:
    """'dynamic' when a verify report entry's validation check finds the frozen graph straying, else 'frozen'."""
    return "frozen" if entry["validation"]["frozen_ok"] else "dynamic"


def apply_fallback(
    bundle_path: Path,
    report: dict[str, Any],
    model: UniMMAD,
    domains: Sequence[DomainData],
    options: BundleOptions,
) -> dict[str, GraphKind]:
    """Set each verified domain's serving graph from `report` (export.verify); returns domain -> graph."""
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest.model_copy(deep=True)
    sessions: dict[str, Any] = {}
    choices: dict[str, GraphKind] = {}
    for data in domains:
        spec = manifest.domains[data.name]
        graph = chosen_graph(report["domains"][data.name])
        choices[data.name] = graph
        if graph == spec.graph:
            continue
        if graph not in sessions:
            sessions[graph] = check_graph(bundle.graph(graph).model)
        target_fpr = spec.threshold_method.target_fpr
        domain_options = options if target_fpr is None else replace(options, target_fpr=target_fpr)
        threshold, colour_range = domain_threshold(sessions[graph], data, spec.index, model, domain_options)
        manifest.domains[data.name] = spec.model_validate(
            spec.model_dump()
            | {
                "graph": graph,
                "threshold": threshold.value,
                "threshold_method": threshold.method_entry(),
                "score_range": threshold.score_range,
                "heatmap_range": colour_range,
            }
        )
        logger.info(
            "domain %s: served by the %s graph from now on, threshold %.4f", data.name, graph, threshold.value
        )
    write_manifest(bundle.root, manifest)
    return choices
