"""Checkpoint -> bundle: calibrate routing, fold kernels, export the graphs, set thresholds, write the manifest.

Calibrated sets are the domains, then the opt-in modality subsets (`--subsets`), each with its own index
into the banks: a subset is calibrated exactly like a domain whose modalities are the subset's.

for each calibrated set: normal training refs --RecordedHoldout.split--> (calibration refs, held-out refs)
                 calibration refs --per-sample gates--> frozen routing (export.calibration)
                 held-out refs --per-sample torch model--> normal statistics (model.calibration)
frozen routing --fold--> kernel banks [D, S_max, E, E, k, k] --\
normal statistics [D, S_max, L] (calibrated fusions) ------------+--> model.onnx (+ data)  (export.frozen)
per-sample routing + the same statistics ----------------------------> model_dynamic.onnx (+ data)
held-out normals --model.onnx scores, maps--> threshold, score range, heatmap colour ranges (export.threshold)
for each domain: signatures of the calibration refs --> signature statistics; of the held-out refs --> OOD
                 bounds of the domain and its subsets (export.signature); the prior --> model_signature.onnx
manifest.json (validated by bundle.manifest) + calibration.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from tqdm import tqdm

from bundle.domain_match import BOUND_RULE
from bundle.loader import write_manifest
from bundle.manifest import DomainSpec, Manifest, subset_key
from export.calibration import DEFAULT_ROUTING_MODE, Calibration, calibrate
from export.fold import kernel_banks
from export.frozen import DynamicUniMMAD, FrozenUniMMAD
from export.onnx_graph import OPSET, check_graph, export_graph, graph_spec
from export.precision import convert_to_fp16
from export.samples import DomainData, batches
from export.signature import SIGNATURE_FILE, SignatureNet, signature_entry, signatures_of, subset_bound
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
    # Modality subsets to calibrate, (domain, modality names); each costs a domain's calibration.
    subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()


def parse_subset(text: str) -> tuple[str, tuple[str, ...]]:
    """'mulsen_derived/button_cell:rgb+infrared' -> (domain, modality names); ValueError on anything else."""
    domain, separator, names = text.rpartition(":")
    modalities = tuple(names.split("+"))
    if not separator or not domain or not all(modalities):
        raise ValueError(f"subset {text!r} must look like DOMAIN:MODALITY+MODALITY, e.g. mvtec3d/x:rgb")
    return domain, modalities


def subset_data(domains: Sequence[DomainData], domain: str, names: Sequence[str]) -> DomainData:
    """`domain` restricted to the modalities `names` (kept in the domain's order); ValueError names the fault."""
    by_name = {data.name: data for data in domains}
    if domain not in by_name:
        raise ValueError(f"subset of unknown domain {domain!r}; the bundle has {', '.join(by_name)}")
    data = by_name[domain]
    available = data.domain.modality_names
    unknown = sorted(set(names) - set(available))
    if unknown or len(set(names)) != len(names) or len(set(names)) >= len(available):
        raise ValueError(
            f"subset {'+'.join(names)} of {domain} must name fewer than all of its modalities "
            f"({', '.join(available)}) without repeats"
        )
    kept = tuple(spec for spec in data.domain.modalities if spec.name in names)
    return replace(data, domain=replace(data.domain, modalities=kept))


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
    """Write a complete bundle for `domains` (domain index = position, then options.subsets) into `out`;
    returns its manifest."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    units = [*domains, *(subset_data(domains, name, names) for name, names in options.subsets)]
    calibrations: list[Calibration] = []
    for data in tqdm(units, desc="calibrating routing", unit="set"):
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
        statistics = [domain_statistics(model, data, options) for data in units]
        for data, fitted in zip(units, statistics):
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
    logger.info("exporting the signature graph")
    export_graph(SignatureNet(model), example[:1], out / SIGNATURE_FILE)
    if options.fp16:
        for name in (FROZEN_FILE, DYNAMIC_FILE, SIGNATURE_FILE):
            convert_to_fp16(out / name)
    session = check_graph(out / FROZEN_FILE)
    check_graph(out / DYNAMIC_FILE)
    check_graph(out / SIGNATURE_FILE)

    thresholds: list[Threshold] = []
    ranges: list[dict] = []
    for index, data in enumerate(tqdm(units, desc="thresholds", unit="set")):
        threshold, colour_range = domain_threshold(session, data, index, model, options)
        thresholds.append(threshold)
        ranges.append(colour_range)
    signatures = domain_signatures(model, domains, options)
    manifest = make_manifest(
        model, units, calibrations, thresholds, ranges, statistics, signatures, out, options
    )
    write_manifest(out, manifest)
    names = [data.name for data in domains]
    names += [f"{name}:{subset_key(subset)}" for name, subset in options.subsets]
    calibration_report = {
        name: calibration.summary(config.kernel_sizes) for name, calibration in zip(names, calibrations)
    }
    (out / CALIBRATION_FILE).write_text(json.dumps(calibration_report, indent=2), encoding="utf-8")
    logger.info("bundle written to %s", out)
    return manifest


@dataclass(frozen=True)
class SignatureFit:
    """A domain's manifest ``signature`` entry and its held-out signatures [N, M, F] (for subset bounds)."""

    entry: dict
    held_out: np.ndarray


def domain_signatures(
    model: UniMMAD, domains: Sequence[DomainData], options: BundleOptions
) -> list[SignatureFit]:
    """Per domain: signature statistics from the normals routing was calibrated on, and the OOD bound from
    threshold_normals (the held-out normals; the training normals, as the split name says, when too few)."""
    net = SignatureNet(model).eval()
    fits = []
    for data in tqdm(domains, desc="signatures", unit="domain"):
        train, _ = split_normals(data, options)
        held_out, bound_split = threshold_normals(data, options)
        fitted_on = signatures_of(net, data, train, model, options.batch_size)
        held = signatures_of(net, data, held_out, model, options.batch_size)
        split = f"train minus {options.holdout.describe()}"
        entry = signature_entry(fitted_on, held, list(data.domain.modality_names), split, bound_split)
        logger.info(
            "domain %s: signature bound %.3f from %d held-out images", data.name, entry["bound"], len(held)
        )
        fits.append(SignatureFit(entry, held))
    return fits


def calibrated_entry(
    calibration: Calibration,
    threshold: Threshold,
    heatmap_range: dict,
    statistics: DomainStatistics | None,
    names: Sequence[str],
    kernel_sizes: tuple[int, ...],
) -> dict:
    """The manifest fields every calibrated set (domain or subset) has."""
    summary = calibration.summary(kernel_sizes)
    return {
        "threshold": threshold.value,
        "threshold_method": threshold.method_entry(),
        "score_range": threshold.score_range,
        "heatmap_range": heatmap_range,
        "normal_statistics": None if statistics is None else statistics.manifest_entry(names),
        "routing": {
            "mode": calibration.mode,
            "agreement": calibration.agreement,
            "leaders": [
                {key: gate[key] for key in ("level", "branch", "slot", "experts", "scores")}
                for gate in summary["gates"]
            ],
        },
    }


def make_manifest(
    model: UniMMAD,
    units: Sequence[DomainData],
    calibrations: Sequence[Calibration],
    thresholds: Sequence[Threshold],
    ranges: Sequence[dict],
    statistics: Sequence[DomainStatistics] | None,
    signatures: Sequence[SignatureFit],
    out: Path,
    options: BundleOptions,
) -> Manifest:
    """The manifest, validated through bundle.manifest (so the service reads exactly what is written).

    units: the domains, then options.subsets in order (index = position)."""
    config = model.config
    domain_entries = {}
    for index, data in enumerate(units):
        names = data.domain.modality_names
        entry = calibrated_entry(
            calibrations[index],
            thresholds[index],
            ranges[index],
            None if statistics is None else statistics[index],
            names,
            config.kernel_sizes,
        )
        if index < len(signatures):
            domain_entries[data.name] = entry | {
                "index": index,
                "modalities": [spec.to_dict() for spec in data.domain.modalities],
                "loss_weight": data.domain.loss_weight,
                "signature": signatures[index].entry,
                "subsets": {},
            }
            continue
        parent = domain_entries[data.name]
        full_names = [m["name"] for m in parent["modalities"]]
        held_out = signatures[parent["index"]].held_out
        parent["subsets"][subset_key(names)] = entry | {
            "index": index,
            "modalities": list(names),
            "signature_bound": subset_bound(parent["signature"], held_out, full_names, list(names)),
        }
    signature_graph = graph_spec(out / SIGNATURE_FILE, out)
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
            "signature": {
                "features": signature_graph["outputs"]["signature"]["shape"][-1],
                "bound_rule": BOUND_RULE,
                "graph": signature_graph,
            },
        }
    )
