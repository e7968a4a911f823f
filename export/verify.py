"""`export verify`: is the bundle the checkpoint, and what does freezing the routing cost?

Report (JSON):
- fold_max_abs_diff: torch with routing forced to the manifest's frozen choice (through the static base
  bank, kernel_mode="bank", whose cost does not grow with the number of leaders an "expected" routing
  mixes) vs the folded kernels (C-MoE predictions of every level, every test batch);
- onnxruntime: max abs diff of every output, frozen graph vs torch forced routing and dynamic graph vs
  torch per-sample routing, on the same inputs;
- per domain, on the test split: image and pixel AUROC with per-sample routing (torch) and frozen routing
  (the frozen ONNX graph), their difference and whether it is within the goal (IMAGE_AUROC_GOAL /
  PIXEL_AUROC_GOAL); and the false-positive rate the serving graph's threshold reaches on the test
  normals next to the target it was set for on the validation split; where some test samples have a
  blank depth image (MulSen's render artifact), both AUROCs again without them (`without_blank_depth`);
- per domain, on the validation split (the held-out normals the thresholds come from): how closely the
  frozen graph follows the dynamic one (export.fallback.validation_agreement), which is what
  `--fallback` decides on. The test figures never choose anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bundle.loader import Bundle, load_bundle
from bundle.manifest import DomainSpec, Manifest
from export.build import BundleOptions, statistics_bank, statistics_from_manifest
from export.fallback import validation_agreement
from export.fold import kernel_banks
from export.frozen import OUTPUT_NAMES, FrozenUniMMAD
from export.onnx_graph import check_graph
from export.routing import forced_routing, routing_from_manifest, slot_major_pairs
from export.samples import DomainData, batches
from model.anomaly_map import anomaly_maps
from model.metrics import auroc
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

IMAGE_AUROC_GOAL = 0.005  # 0.5 points
PIXEL_AUROC_GOAL = 0.002  # 0.2 points
# What verify keeps of every test sample: ps_ = torch per-sample routing, fz_ = frozen graph, dy_ = dynamic graph.
COLLECTED = ("labels", "masks", "blank_depth", "ps_score", "ps_map", "fz_score", "fz_map", "dy_score")


def _max_diff(current: float, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return max(
        current, float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
    )


# AUROCs are ratios of pair counts: 0.755 - 0.750 comes out as 0.0050000000000000044, a loss equal to a
# 0.5-point budget must still count as within it.
_BUDGET_SLACK = 1e-9


def auroc_entry(per_sample: float | None, frozen: float | None, goal: float) -> dict[str, Any]:
    """One domain's AUROC with both routings, their difference (per-sample - frozen) and the verdict."""
    difference = None if per_sample is None or frozen is None else per_sample - frozen
    return {
        "per_sample": per_sample,
        "frozen": frozen,
        "difference": difference,
        "within_goal": None if difference is None else difference <= goal + _BUDGET_SLACK,
    }


def auroc_entries(values: dict[str, np.ndarray], image_goal: float, pixel_goal: float) -> dict[str, Any]:
    """Image and pixel AUROC entries, per-sample vs frozen routing, of collected test `values` (labels [N],
    masks [N, S, S], ps_/fz_score [N], ps_/fz_map [N, S, S]); pixel entries are None without any mask."""
    masks = values["masks"].ravel()
    pixel = (
        (auroc(values["ps_map"].ravel(), masks), auroc(values["fz_map"].ravel(), masks))
        if masks.any()
        else (None, None)
    )
    return {
        "image_auroc": auroc_entry(
            auroc(values["ps_score"], values["labels"]),
            auroc(values["fz_score"], values["labels"]),
            image_goal,
        ),
        "pixel_auroc": auroc_entry(*pixel, pixel_goal),
    }


def false_positive_rate(spec: DomainSpec, normal_scores: np.ndarray) -> dict[str, Any]:
    """The serving graph's threshold on the test normals' scores [n] of that graph, next to its target."""
    return {
        "graph": spec.graph,
        "target": spec.threshold_method.target_fpr,
        "test_normals": float((normal_scores > spec.threshold).mean()) if normal_scores.size else None,
        "test_normal_images": int(normal_scores.size),
        "threshold_split": spec.threshold_method.split,
    }


def added_domains(manifest: Manifest) -> set[str]:
    """Every domain `export add-domain` appended along the bundle's lineage."""
    added: set[str] = set()
    lineage = manifest.lineage
    while lineage is not None:
        added.update(lineage.domains_added)
        lineage = lineage.parent_lineage
    return added


def check_bundle_matches(bundle: Bundle, model: UniMMAD, domains: Sequence[DomainData]) -> None:
    """ValueError unless the checkpoint and the data fit the bundle (size, domains and their modalities)."""
    manifest = bundle.manifest
    if manifest.input_size != model.config.image_size:
        raise ValueError(
            f"bundle input size {manifest.input_size} != checkpoint image_size {model.config.image_size}"
        )
    added = added_domains(manifest)
    for data in domains:
        if data.name not in manifest.domains:
            raise ValueError(
                f"domain {data.name} is not in the bundle (it has {', '.join(manifest.domains)})"
            )
        if data.name in added:
            raise ValueError(
                f"domain {data.name} was appended by `export add-domain`: the bundle's per-sample graph is "
                "its parent's model, so verify cannot compare the two routings; verify the parent's domains "
                "only (--data), or export the adapted checkpoint in full"
            )
        names = [entry.name for entry in manifest.domains[data.name].modalities]
        if names != list(data.domain.modality_names):
            raise ValueError(
                f"domain {data.name}: bundle modalities {names} != data modalities "
                f"{list(data.domain.modality_names)}"
            )


@torch.no_grad()
def verify(
    bundle_path: Path,
    model: UniMMAD,
    domains: Sequence[DomainData],
    options: BundleOptions,
    image_goal: float = IMAGE_AUROC_GOAL,
    pixel_goal: float = PIXEL_AUROC_GOAL,
) -> dict[str, Any]:
    """The verification report of the bundle at `bundle_path` against `model` on `domains` (test split,
    and the validation split `options.holdout` names).

    image_goal, pixel_goal: the largest AUROC loss (as a fraction) frozen routing may cost a domain.
    """
    batch_size = options.batch_size
    bundle = load_bundle(bundle_path)
    check_bundle_matches(bundle, model, domains)
    manifest = bundle.manifest
    ordered = sorted(manifest.domains.items(), key=lambda item: item[1].index)
    routings = [routing_from_manifest(spec, model.config) for _, spec in ordered]
    bank = statistics_bank(list(manifest.domains.values()), model.config.max_modalities)
    frozen_torch = FrozenUniMMAD(model, kernel_banks(model, routings), bank).eval()
    frozen_session = check_graph(bundle.graph("frozen").model)
    dynamic_session = check_graph(bundle.graph("dynamic").model)

    fold_diff = 0.0
    ort_diff = {"frozen": dict.fromkeys(OUTPUT_NAMES, 0.0), "dynamic": dict.fromkeys(OUTPUT_NAMES, 0.0)}
    report_domains = {}
    for data in tqdm(domains, desc="verifying", unit="domain"):
        spec = manifest.domains[data.name]
        routing = routings[spec.index]
        statistics = statistics_from_manifest(spec)
        statistics = None if statistics is None else statistics.as_batch()
        domain = torch.tensor([spec.index])
        refs = data.test_refs()
        collected: dict[str, list[np.ndarray]] = {key: [] for key in COLLECTED}
        for batch in batches(data, refs, model.config, batch_size):
            images = batch.images
            count, slots = images.shape[:2]
            per_sample = anomaly_maps(model(images), model.config, statistics)
            forced_output = model(
                images, routing=forced_routing(routing, slot_major_pairs(count, slots)[1]), kernel_mode="bank"
            )
            forced = anomaly_maps(forced_output, model.config, statistics)
            folded_output = frozen_torch.network_output(images, domain)
            for reference, folded in zip(forced_output.predictions, folded_output.predictions):
                fold_diff = _max_diff(fold_diff, reference, folded)
            feeds = {"images": images.numpy(), "domain": domain.numpy()}
            frozen_ort = frozen_session.run(list(OUTPUT_NAMES), feeds)
            dynamic_ort = dynamic_session.run(list(OUTPUT_NAMES), feeds)
            for name, got_frozen, got_dynamic, want_frozen, want_dynamic in zip(
                OUTPUT_NAMES, frozen_ort, dynamic_ort, forced, per_sample
            ):
                ort_diff["frozen"][name] = _max_diff(ort_diff["frozen"][name], got_frozen, want_frozen)
                ort_diff["dynamic"][name] = _max_diff(ort_diff["dynamic"][name], got_dynamic, want_dynamic)
            collected["labels"].append(batch.labels)
            collected["masks"].append(batch.masks)
            collected["blank_depth"].append(batch.blank_depth)
            collected["ps_score"].append(per_sample.image_score.numpy())
            collected["ps_map"].append(per_sample.fused.numpy())
            collected["fz_score"].append(frozen_ort[2])
            collected["fz_map"].append(frozen_ort[0])
            collected["dy_score"].append(dynamic_ort[2])
        target_fpr = spec.threshold_method.target_fpr
        domain_options = options if target_fpr is None else replace(options, target_fpr=target_fpr)
        validation = validation_agreement(
            frozen_session, dynamic_session, data, spec.index, model, domain_options
        )
        if not refs:
            report_domains[data.name] = {"test_samples": 0, "validation": validation}
            continue
        values = {key: np.concatenate(parts) for key, parts in collected.items()}
        report_domains[data.name] = {
            "test_samples": len(refs),
            "routing_mode": spec.routing.mode,
            "routing_agreement": spec.routing.agreement,
            **auroc_entries(values, image_goal, pixel_goal),
            "false_positive_rate": false_positive_rate(
                spec, values["fz_score" if spec.graph == "frozen" else "dy_score"][values["labels"] == 0]
            ),
            "validation": validation,
        }
        blank = values["blank_depth"]
        if blank.any():
            kept = {key: value[~blank] for key, value in values.items()}
            report_domains[data.name]["without_blank_depth"] = {
                "excluded": int(blank.sum()),
                **auroc_entries(kept, image_goal, pixel_goal),
            }
    return {
        "bundle": str(bundle.root),
        "fold_max_abs_diff": fold_diff,
        "onnxruntime_max_abs_diff": ort_diff,
        "goals": {"image_auroc_loss_max": image_goal, "pixel_auroc_loss_max": pixel_goal},
        "domains": report_domains,
    }
