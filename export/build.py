"""Checkpoint -> bundle: calibrate routing, fold kernels, export both graphs, set thresholds, write the manifest.

for each domain: normal training refs --split_holdout--> (calibration refs, held-out refs)
                 calibration refs --per-sample gates--> frozen routing (export.calibration)
frozen routing --fold--> kernel banks [D, S_max, E, E, k, k] --> model.onnx (+ data)   (export.frozen)
per-sample routing ----------------------------------------> model_dynamic.onnx (+ data)
held-out normals --model.onnx scores, maps--> threshold, heatmap colour ranges   (export.threshold)
manifest.json (validated by bundle.manifest) + calibration.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from tqdm import tqdm

from bundle.loader import write_manifest
from bundle.manifest import Manifest
from export.calibration import DEFAULT_ROUTING_MODE, Calibration, calibrate
from export.fold import kernel_banks
from export.frozen import DynamicUniMMAD, FrozenUniMMAD
from export.onnx_graph import OPSET, check_graph, export_graph, graph_spec
from export.precision import convert_to_fp16
from export.samples import DomainData, batches
from export.threshold import (
    DEFAULT_TARGET_FPR,
    NormalOutputs,
    Threshold,
    choose_normals,
    choose_threshold,
    heatmap_ranges,
)
from model.data.holdout import split_holdout
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

FROZEN_FILE = "model.onnx"
DYNAMIC_FILE = "model_dynamic.onnx"
CALIBRATION_FILE = "calibration.json"
DEFAULT_HOLDOUT_FRACTION = 0.1
DEFAULT_HOLDOUT_SEED = 0


@dataclass(frozen=True)
class BundleOptions:
    """Everything `python -m export bundle` can change besides the checkpoint and data."""

    target_fpr: float = DEFAULT_TARGET_FPR
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    holdout_seed: int = DEFAULT_HOLDOUT_SEED
    batch_size: int = 8
    fp16: bool = False
    model_version: str = "unimmad"
    holdout_ids: dict[str, list[str]] | None = None  # per domain, as training recorded them
    routing: str = DEFAULT_ROUTING_MODE  # export.calibration.ROUTING_MODES


def run_holdout(run_config: dict[str, Any]) -> tuple[float, int, dict[str, list[str]] | None]:
    """The holdout training recorded: fraction, seed (DEFAULT_* when none) and the held-out ids per domain."""
    holdout = (run_config.get("data") or {}).get("holdout") or {}
    return (
        float(holdout.get("fraction", DEFAULT_HOLDOUT_FRACTION)),
        int(holdout.get("seed", DEFAULT_HOLDOUT_SEED)),
        holdout.get("ids"),
    )


def split_normals(data: DomainData, options: BundleOptions) -> tuple[list, list]:
    """(calibration refs, held-out refs) of a domain's normal training samples: the ids training held out
    when it recorded them for this domain, else the same deterministic split_holdout rule."""
    refs = data.normal_train_refs()
    if options.holdout_ids is not None and data.name in options.holdout_ids:
        held = set(options.holdout_ids[data.name])
        return [ref for ref in refs if ref.id not in held], [ref for ref in refs if ref.id in held]
    return split_holdout(refs, options.holdout_fraction, options.holdout_seed)


def graph_outputs(
    session: ort.InferenceSession,
    data: DomainData,
    refs: Sequence,
    index: int,
    model: UniMMAD,
    batch_size: int,
) -> NormalOutputs:
    """Scores and maps of `refs` from a bundle graph (the frozen one gets the domain `index`)."""
    names = ["image_score", "modality_scores", "anomaly_map", "modality_maps"]
    takes_domain = any(value.name == "domain" for value in session.get_inputs())
    runs = []
    for batch in batches(data, refs, model.config, batch_size):
        feeds = {"images": batch.images.numpy()}
        if takes_domain:
            feeds["domain"] = np.array([index])
        runs.append(session.run(names, feeds))
    if not runs:  # nothing held out: empty outputs, so the caller falls back to the training normals
        size, slots = model.config.image_size, len(data.domain.modalities)
        shapes = ((0,), (0, slots), (0, size, size), (0, slots, size, size))
        return NormalOutputs(*(np.zeros(shape, dtype=np.float32) for shape in shapes))
    return NormalOutputs(*(np.concatenate([run[i] for run in runs]) for i in range(len(names))))


def domain_threshold(
    session: ort.InferenceSession, data: DomainData, index: int, model: UniMMAD, options: BundleOptions
) -> tuple[Threshold, dict]:
    """The decision threshold and heatmap colour ranges of one domain, from `session`'s outputs on the
    held-out normal images (the training normals when too few were held out)."""
    calibration_refs, holdout = split_normals(data, options)
    split_name = f"holdout(fraction={options.holdout_fraction}, seed={options.holdout_seed})"
    outputs = partial(graph_outputs, session, data, index=index, model=model, batch_size=options.batch_size)
    normals, split = choose_normals(outputs(holdout), partial(outputs, calibration_refs), split_name)
    names = [spec.name for spec in data.domain.modalities]
    return choose_threshold(normals, options.target_fpr, split), heatmap_ranges(
        normals, names, options.target_fpr
    )


def build_bundle(
    model: UniMMAD, domains: Sequence[DomainData], out: Path, options: BundleOptions
) -> Manifest:
    """Write a complete bundle for `domains` (domain index = position) into `out`; returns its manifest."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    calibrations: list[Calibration] = []
    for data in tqdm(domains, desc="calibrating routing", unit="domain"):
        train, _ = split_normals(data, options)
        if not train:
            raise ValueError(f"domain {data.name} has no normal training samples to calibrate its routing")
        images = (batch.images for batch in batches(data, train, config, options.batch_size))
        calibrations.append(calibrate(model, images, options.routing))
        logger.info(
            "domain %s: %s routing, agreement %.3f over %d samples",
            data.name,
            options.routing,
            calibrations[-1].agreement,
            len(train),
        )

    banks = kernel_banks(model, [calibration.routing for calibration in calibrations])
    # Two samples and two slots: torch.export specialises any dimension traced at size 1.
    example = torch.zeros(2, 2, 3, config.image_size, config.image_size)
    logger.info("exporting the frozen graph")
    export_graph(
        FrozenUniMMAD(model, banks), (example, torch.tensor([0])), out / FROZEN_FILE, with_domain=True
    )
    logger.info("exporting the dynamic graph")
    export_graph(DynamicUniMMAD(model), (example,), out / DYNAMIC_FILE, with_domain=False)
    if options.fp16:
        for name in (FROZEN_FILE, DYNAMIC_FILE):
            convert_to_fp16(out / name)
    session = check_graph(out / FROZEN_FILE)
    check_graph(out / DYNAMIC_FILE)

    thresholds: list[Threshold] = []
    ranges: list[dict] = []
    for index, data in enumerate(tqdm(domains, desc="thresholds", unit="domain")):
        threshold, colour_range = domain_threshold(session, data, index, model, options)
        thresholds.append(threshold)
        ranges.append(colour_range)
    manifest = make_manifest(model, domains, calibrations, thresholds, ranges, out, options)
    write_manifest(out, manifest)
    calibration_report = {
        data.name: calibration.summary(config.kernel_sizes)
        for data, calibration in zip(domains, calibrations)
    }
    (out / CALIBRATION_FILE).write_text(json.dumps(calibration_report, indent=2), encoding="utf-8")
    logger.info("bundle written to %s", out)
    return manifest


def make_manifest(
    model: UniMMAD,
    domains: Sequence[DomainData],
    calibrations: Sequence[Calibration],
    thresholds: Sequence[Threshold],
    ranges: Sequence[dict],
    out: Path,
    options: BundleOptions,
) -> Manifest:
    """The manifest, validated through bundle.manifest (so the service reads exactly what is written)."""
    config = model.config
    domain_entries = {}
    for index, (data, calibration, threshold, heatmap_range) in enumerate(
        zip(domains, calibrations, thresholds, ranges)
    ):
        summary = calibration.summary(config.kernel_sizes)
        domain_entries[data.name] = {
            "index": index,
            "modalities": [spec.to_dict() for spec in data.domain.modalities],
            "threshold": threshold.value,
            "threshold_method": threshold.method_entry(),
            "heatmap_range": heatmap_range,
            "loss_weight": data.domain.loss_weight,
            "routing": {
                "mode": calibration.mode,
                "agreement": calibration.agreement,
                "leaders": [
                    {key: gate[key] for key in ("level", "branch", "slot", "experts", "scores")}
                    for gate in summary["gates"]
                ],
            },
        }
    return Manifest.model_validate(
        {
            "model_version": options.model_version,
            "preset": config.preset,
            "created_at": datetime.now(UTC).isoformat(),
            "input_size": config.image_size,
            "normalization": {"mean": list(config.mean), "std": list(config.std)},
            "image_score": {
                "reduction": "top_fraction_mean",
                "fraction": config.top_pixels / config.image_size**2,
            },
            "anomaly_map": {
                "fusion": "rss",
                "blur_sigma": config.blur_sigma,
                "blur_kernel": config.blur_kernel,
            },
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "opset": OPSET,
                "onnxscript": onnxscript.__version__,
                "onnxruntime": ort.__version__,
            },
            "graphs": {
                "frozen": graph_spec(out / FROZEN_FILE, out),
                "dynamic": graph_spec(out / DYNAMIC_FILE, out),
            },
            "domains": domain_entries,
        }
    )
