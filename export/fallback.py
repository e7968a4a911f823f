"""`export verify --fallback`: serve a domain with per-sample routing where freezing costs too much accuracy.

A domain whose verify entry misses the image or pixel AUROC budget gets ``graph: dynamic`` in the
manifest, every other verified domain ``graph: frozen``. For each domain whose graph changes, the
threshold and heatmap colour ranges are recomputed from the new graph on the same held-out normal images
(export.build.domain_threshold), so a decision keeps its false-positive rate whichever graph serves it.
Only manifest.json changes (rewritten atomically); the graphs and their checksums stay as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bundle.loader import load_bundle, write_manifest
from bundle.manifest import GraphKind
from export.build import BundleOptions, domain_threshold
from export.onnx_graph import check_graph
from export.samples import DomainData
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)


def chosen_graph(entry: dict[str, Any]) -> GraphKind:
    """'dynamic' when a verify report entry says the frozen routing misses a budget, else 'frozen'."""
    missed = any(
        entry.get(metric, {}).get("within_goal") is False for metric in ("image_auroc", "pixel_auroc")
    )
    return "dynamic" if missed else "frozen"


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
                "heatmap_range": colour_range,
            }
        )
        logger.info(
            "domain %s: served by the %s graph from now on, threshold %.4f", data.name, graph, threshold.value
        )
    write_manifest(bundle.root, manifest)
    return choices
