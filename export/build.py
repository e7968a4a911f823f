"""Checkpoint -> bundle: calibrate routing, fold kernels, export both graphs, set thresholds, write the manifest.

for each domain: normal training refs --RecordedHoldout.split--> (calibration refs, held-out refs)
                 calibration refs --per-sample gates--> frozen routing (export.calibration)
                 held-out refs --per-sample torch model--> normal statistics (model.calibration)
frozen routing --fold--> kernel banks [D, S_max, E, E, k, k] --\
normal statistics [D, S_max, L] (calibrated fusions) ------------+--> model.onnx (+ data)  (export.frozen)
per-sample routing + the same statistics ----------------------------> model_dynamic.onnx (+ data)
held-out normals --model.onnx scores, maps--> threshold, score range, heatmap colour ranges (export.threshold)
manifest.json (validated by bundle.manifest) + calibration.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from tqdm import tqdm

from bundle.loader import write_manifest
from bundle.manifest import DomainSpec, Manifest
from export.calibration import DEFAULT_ROUTING_MODE, Calibration, calibrate
from export.fold import kernel_banks
from export.frozen import DynamicUniMMAD, FrozenUniMMAD
from export.onnx_graph import OPSET, check_graph, export_graph, graph_spec
from export.precision import convert_to_fp16
from export.samples import DomainData, batches
from export.threshold import NormalOutputs, Threshold, choose_threshold, heatmap_ranges
from model.anomaly_map import NormalStatistics
from model.calibration import (
    DEFAULT_TARGET_FPR,
    RecordedHoldout,
    calibration_normals,
    fit_normal_statistics,
    stack_statistics,
)
from model.config import CALIBRATED_FUSIONS
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

FROZEN_FILE = "model.onnx"
DYNAMIC_FILE = "model_dynamic.onnx"
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class BundleOptions:
    """Everything `python -m export bundle` can change besides the checkpoint and data."""

    target_fpr: float = DEFAULT_TARGET_FPR
    # The normals training held out (RecordedHoldout.from_run_config), for statistics and thresholds.
    holdout: RecordedHoldout = field(default_factory=RecordedHoldout)
    batch_size: int = 8
    fp16: bool = False
    model_version: str = "unimmad"
    routing: str = DEFAULT_ROUTING_MODE  # export.calibration.ROUTING_MODES


def split_normals(data: DomainData, options: BundleOptions) -> tuple[list, list]:
    """(calibration refs, held-out refs) of a domain's normal training samples, as the run split them."""
    return options.holdout.split(data.name, data.normal_train_refs())


@dataclass(frozen=True)
class DomainStatistics:
    """A domain's normal statistics [M, L] and the images they were fitted on."""

    statistics: NormalStatistics
    split: str
    n_images: int

    def manifest_entry(self, modality_names: Sequence[str]) -> dict:
        """The manifest's ``normal_statistics`` of the domain: per modality, location and scale per level."""
        return {
            "split": self.split,
            "n_images": self.n_images,
            "modalities": {
                name: {
                    "location": self.statistics.location[slot].tolist(),
                    "scale": self.statistics.scale[slot].tolist(),
                }
                for slot, name in enumerate(modality_names)
            },
        }


def statistics_from_manifest(spec: DomainSpec) -> NormalStatistics | None:
    """A domain's normal statistics [M, L] as the manifest records them (None for uncalibrated fusions)."""
    if spec.normal_statistics is None:
        return None
    entries = [spec.normal_statistics.modalities[m.name] for m in spec.modalities]
    return NormalStatistics(
        torch.tensor([entry.location for entry in entries]), torch.tensor([entry.scale for entry in entries])
    )


def statistics_bank(specs: Sequence[DomainSpec], slots: int) -> NormalStatistics | None:
    """The [D, slots, L] bank both graphs hold, rebuilt from the manifest's domains in index order."""
    ordered = sorted(specs, key=lambda spec: spec.index)
    per_domain = [statistics_from_manifest(spec) for spec in ordered]
    if any(statistics is None for statistics in per_domain):
        return None
    return stack_statistics(per_domain, slots)


def domain_statistics(model: UniMMAD, data: DomainData, options: BundleOptions) -> DomainStatistics:
    """Normal statistics of one domain from its threshold_normals (model.calibration, as evaluate fits them)."""
    refs, split = threshold_normals(data, options)
    if not refs:
        raise ValueError(f"domain {data.name} has no normal training samples to fit its normal statistics")
    images = (batch.images for batch in batches(data, refs, model.config, options.batch_size))
    return DomainStatistics(fit_normal_statistics(model, images), split, len(refs))


def graph_outputs(
    session: ort.InferenceSession,
    data: DomainData,
    refs: Sequence,
    index: int,
    model: UniMMAD,
    batch_size: int,
) -> NormalOutputs:
    """Scores and maps of `refs` from a bundle graph (fed the domain `index`)."""
    names = ["image_score", "modality_scores", "anomaly_map", "modality_maps"]
    domain = np.array([index], dtype=np.int64)
    runs = [
        session.run(names, {"images": batch.images.numpy(), "domain": domain})
        for batch in batches(data, refs, model.config, batch_size)
    ]
    if not runs:
        raise ValueError(f"domain {data.name}: no normal images to run the graph on")
    return NormalOutputs(*(np.concatenate([run[i] for run in runs]) for i in range(len(names))))


def threshold_normals(data: DomainData, options: BundleOptions) -> tuple[list, str]:
    """The normal images a domain's statistics, threshold, score range and colour ranges come from, and
    their split's name (model.calibration.calibration_normals)."""
    return calibration_normals(options.holdout, data.name, data.normal_train_refs())


def domain_threshold(
    session: ort.InferenceSession, data: DomainData, index: int, model: UniMMAD, options: BundleOptions
) -> tuple[Threshold, dict]:
    """The decision threshold (with its score range) and heatmap colour ranges of one domain, from
    `session`'s outputs on the domain's threshold_normals."""
    refs, split = threshold_normals(data, options)
    normals = graph_outputs(session, data, refs, index, model, options.batch_size)
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

    statistics = None
    if config.anomaly_fusion in CALIBRATED_FUSIONS:
        statistics = [domain_statistics(model, data, options) for data in domains]
        for data, fitted in zip(domains, statistics):
            logger.info(
                "domain %s: normal statistics from %d images (%s)", data.name, fitted.n_images, fitted.split
            )
    bank = (
        None
        if statistics is None
        else stack_statistics([fitted.statistics for fitted in statistics], config.max_modalities)
    )
    banks = kernel_banks(model, [calibration.routing for calibration in calibrations])
    # Two samples and two slots: torch.export specialises any dimension traced at size 1.
    example = (torch.zeros(2, 2, 3, config.image_size, config.image_size), torch.tensor([0]))
    logger.info("exporting the frozen graph")
    export_graph(FrozenUniMMAD(model, banks, bank), example, out / FROZEN_FILE)
    logger.info("exporting the dynamic graph")
    export_graph(DynamicUniMMAD(model, bank), example, out / DYNAMIC_FILE)
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
    manifest = make_manifest(model, domains, calibrations, thresholds, ranges, statistics, out, options)
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
    statistics: Sequence[DomainStatistics] | None,
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
            "score_range": threshold.score_range,
            "heatmap_range": heatmap_range,
            "normal_statistics": None
            if statistics is None
            else statistics[index].manifest_entry(data.domain.modality_names),
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
                "fusion": config.anomaly_fusion,
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
