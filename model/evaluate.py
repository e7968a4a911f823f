"""Evaluation of a trained UniMMAD on the test split of every domain (spec 8).

For each domain: the seven metrics of the fused map and score (model.metrics), the same for each
modality's own map and score (what every modality finds alone), the image AUROC per defect group where
the data says which modality shows a defect (``meta["defect_modality"]``, the synthetic set), and, where
some samples have a blank depth image (``meta["blank_depth"]``, MulSen), everything again without them.
Maps are computed per sample, so the batch size never changes a number.

Everything fitted comes from the run's held-out normals (the validation split, model.calibration), as the
exporter fits it: the normal statistics of calibrated fusion, and the decision threshold with its
normalised-score range. The report gives per domain the false-positive rate that threshold reaches on
the test normals next to its target, and every test image's raw and normalised score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.anomaly_map import NormalStatistics, anomaly_maps
from model.calibration import (
    DEFAULT_TARGET_FPR,
    RecordedHoldout,
    calibration_normals,
    fit_normal_statistics,
    normalized_scores,
    quantile_threshold,
    score_range,
    stack_statistics,
)
from model.config import CALIBRATED_FUSIONS
from model.data.loader import MAX_MODALITIES, MultiDomainDataset, collate
from model.data.sample import Domain, Source
from model.metrics import METRIC_KEYS, aggregate, auroc_interval, compute_metrics, image_metrics
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

FUSED = "fused"
HEATMAP_FOLDER = "heatmaps"
# Display range of a domain's heatmaps: these percentiles of all its maps (one scale per domain).
DISPLAY_PERCENTILES = (1.0, 99.9)
# A perceptual blue-green-yellow-red ramp (anchor positions, RGB in [0, 1]).
COLOUR_RAMP = np.array(
    [
        [0.0, 0.05, 0.05, 0.35],
        [0.25, 0.1, 0.4, 0.9],
        [0.5, 0.1, 0.8, 0.5],
        [0.75, 0.95, 0.85, 0.1],
        [1.0, 0.85, 0.1, 0.05],
    ]
)
OVERLAY_ALPHA = 0.55


@dataclass
class DomainOutputs:
    """Everything the evaluation keeps of one domain's test samples (maps at S x S, float32)."""

    domain: Domain
    indices: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    modality_scores: list[np.ndarray] = field(default_factory=list)
    modality_maps: list[np.ndarray] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def arrays(self, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Stacked arrays (optionally only the samples where ``keep`` is True)."""
        stacked = {
            "labels": np.asarray(self.labels, dtype=np.int64),
            "scores": np.asarray(self.scores, dtype=np.float64),
            "maps": np.stack(self.maps),
            "masks": np.stack(self.masks),
            "modality_scores": np.stack(self.modality_scores),
            "modality_maps": np.stack(self.modality_maps),
        }
        return stacked if keep is None else {name: value[keep] for name, value in stacked.items()}


@dataclass(frozen=True)
class Validation:
    """What a domain's held-out normals fix: normal statistics (calibrated fusions) and the threshold."""

    split: str
    images: int
    statistics: NormalStatistics | None  # [M, L]
    threshold: float
    target_fpr: float
    score_range: tuple[float, float]
    # Each modality's own image score on these normals [M]: what a score-level fusion would standardise by.
    modality_score_mean: tuple[float, ...]
    modality_score_std: tuple[float, ...]

    def report(self, test_labels: np.ndarray, test_scores: np.ndarray) -> dict[str, Any]:
        """The decision entry of a domain report: threshold, its split, and the rates it reaches on test."""
        normal, defective = test_scores[test_labels == 0], test_scores[test_labels == 1]
        return {
            "threshold": self.threshold,
            "score_range": list(self.score_range),
            "validation": {
                "split": self.split,
                "normal_images": self.images,
                "modality_score_mean": list(self.modality_score_mean),
                "modality_score_std": list(self.modality_score_std),
            },
            "target_fpr": self.target_fpr,
            "false_positive_rate": float((normal > self.threshold).mean()) if normal.size else None,
            "true_positive_rate": float((defective > self.threshold).mean()) if defective.size else None,
        }


def normal_image_batches(
    dataset: MultiDomainDataset, indices: list[int], batch_size: int, device: torch.device
) -> Iterator[Tensor]:
    """Images [B, M, 3, S, S] of `indices` (all of one domain with M modalities), `batch_size` at a time."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[index] for index in indices[start : start + batch_size]]
        yield torch.stack([item["images"][: item["modality_count"]] for item in items]).to(device)


@torch.no_grad()
def fit_validation(
    model: UniMMAD,
    sources: Sequence[Source],
    domains: Sequence[str],
    holdout: RecordedHoldout,
    target_fpr: float,
    batch_size: int,
    device: torch.device,
) -> dict[str, Validation]:
    """Per domain, from its held-out normal training images: normal statistics when the fusion is
    calibrated, then the threshold and score range of the per-sample model's scores on the same images."""
    config = model.config
    train = MultiDomainDataset(
        sources, "train", config.image_size, domains=domains, mean=config.mean, std=config.std
    )
    positions: dict[str, dict[str, int]] = {name: {} for name in train.domains}
    normals: dict[str, list] = {name: [] for name in train.domains}
    for position, item in enumerate(train.items):
        if item.ref.label == 0:
            positions[item.ref.domain][item.ref.id] = position
            normals[item.ref.domain].append(item.ref)
    was_training = model.training
    model.eval()
    fitted = {}
    try:
        for name in train.domains:
            refs, split = calibration_normals(holdout, name, normals[name])
            if not refs:
                raise ValueError(f"domain {name} has no normal training images to calibrate on")
            indices = [positions[name][ref.id] for ref in refs]
            statistics = None
            if config.anomaly_fusion in CALIBRATED_FUSIONS:
                statistics = fit_normal_statistics(
                    model, normal_image_batches(train, indices, batch_size, device)
                )
            batched = None if statistics is None else statistics.as_batch()
            # Only the scores of each batch are kept, not its S x S maps.
            per_batch = [
                (maps.image_score.float().cpu().numpy(), maps.modality_scores.float().cpu().numpy())
                for maps in (
                    anomaly_maps(model(images), config, batched)
                    for images in normal_image_batches(train, indices, batch_size, device)
                )
            ]
            scores = np.concatenate([image for image, _ in per_batch])
            modality_scores = np.concatenate([modality for _, modality in per_batch])
            threshold = quantile_threshold(scores, target_fpr)
            fitted[name] = Validation(
                split,
                len(refs),
                statistics,
                threshold,
                target_fpr,
                score_range(scores, threshold),
                tuple(modality_scores.mean(axis=0).tolist()),
                tuple(modality_scores.std(axis=0).tolist()),
            )
    finally:
        model.train(was_training)
    return fitted


def sample_statistics(
    statistics: dict[str, NormalStatistics], domains: Sequence[str], device: torch.device
) -> NormalStatistics:
    """Per-sample statistics [B, MAX_MODALITIES, L] of a batch whose samples belong to `domains` [B]."""
    names = list(statistics)
    bank = stack_statistics([statistics[name] for name in names], MAX_MODALITIES)
    rows = torch.tensor([names.index(name) for name in domains])
    return NormalStatistics(bank.location[rows].to(device), bank.scale[rows].to(device))


@torch.no_grad()
def collect_outputs(
    model: UniMMAD,
    dataset: MultiDomainDataset,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    statistics: dict[str, NormalStatistics] | None = None,
) -> dict[str, DomainOutputs]:
    """Run the model over ``dataset`` in order; per domain, every sample's maps, scores and labels
    (calibrated fusions need ``statistics``: each domain's [M, L])."""
    outputs = {name: DomainOutputs(domain) for name, domain in dataset.domains.items()}
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers
    )
    was_training = model.training
    model.eval()
    position = 0
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True):
            count = batch["modality_count"]
            output = model(batch["images"].to(device), count.to(device))
            per_sample = (
                None if statistics is None else sample_statistics(statistics, batch["domains"], device)
            )
            maps = anomaly_maps(output, model.config, per_sample)
            fused, per_modality = maps.fused.float().cpu().numpy(), maps.per_modality.float().cpu().numpy()
            scores, modality_scores = (
                maps.image_score.float().cpu().numpy(),
                maps.modality_scores.float().cpu().numpy(),
            )
            for row, name in enumerate(batch["domains"]):
                present = int(count[row])
                target = outputs[name]
                target.indices.append(position)
                target.ids.append(batch["ids"][row])
                target.labels.append(int(batch["labels"][row]))
                target.scores.append(float(scores[row]))
                target.maps.append(fused[row])
                target.masks.append(batch["masks"][row].numpy())
                target.modality_scores.append(modality_scores[row, :present])
                target.modality_maps.append(per_modality[row, :present])
                target.meta.append(dict(batch["meta"][row]))
                position += 1
    finally:
        model.train(was_training)
    return {name: result for name, result in outputs.items() if result.labels}


def sample_counts(labels: np.ndarray) -> dict[str, int]:
    return {"normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())}


def metric_rows(
    arrays: dict[str, np.ndarray], modality_names: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """The fused row and one row per modality (its own map and score)."""
    rows = {FUSED: compute_metrics(arrays["labels"], arrays["scores"], arrays["masks"], arrays["maps"])}
    rows[FUSED]["image_auroc_ci95"] = auroc_interval(arrays["labels"], arrays["scores"])
    for slot, name in enumerate(modality_names):
        rows[name] = compute_metrics(
            arrays["labels"],
            arrays["modality_scores"][:, slot],
            arrays["masks"],
            arrays["modality_maps"][:, slot],
        )
        rows[name]["image_auroc_ci95"] = auroc_interval(arrays["labels"], arrays["modality_scores"][:, slot])
    return rows


def by_defect_modality(result: DomainOutputs, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Image AUROC of each defect group (normals vs the defects shown in one modality set), per map."""
    groups = sorted({meta.get("defect_modality") for meta in result.meta} - {None})
    names = result.domain.modality_names
    normal = arrays["labels"] == 0
    table: dict[str, dict[str, Any]] = {}
    for group in groups:
        keep = normal | np.array([meta.get("defect_modality") == group for meta in result.meta])
        labels = arrays["labels"][keep]
        row: dict[str, Any] = {"defective": int(labels.sum())}
        row[FUSED] = image_metrics(labels, arrays["scores"][keep])["image_auroc"]
        for slot, name in enumerate(names):
            row[name] = image_metrics(labels, arrays["modality_scores"][keep, slot])["image_auroc"]
        table[group] = row
    return table


def domain_report(result: DomainOutputs, validation: Validation) -> dict[str, Any]:
    arrays = result.arrays()
    names = result.domain.modality_names
    normalized = normalized_scores(arrays["scores"], validation.score_range)
    report: dict[str, Any] = {
        "modalities": list(names),
        "samples": sample_counts(arrays["labels"]),
        "metrics": metric_rows(arrays, names),
        "decision": validation.report(arrays["labels"], arrays["scores"]),
        "scores": [
            {
                "id": sample_id,
                "label": label,
                "score": score,
                "normalized_score": float(value),
                "modality_scores": dict(zip(names, per_modality.tolist())),
            }
            | ({"blank_depth": bool(meta["blank_depth"])} if "blank_depth" in meta else {})
            for sample_id, label, score, value, per_modality, meta in zip(
                result.ids, result.labels, result.scores, normalized, result.modality_scores, result.meta
            )
        ],
    }
    defect_groups = by_defect_modality(result, arrays)
    if defect_groups:
        report["image_auroc_by_defect_modality"] = defect_groups
    blank = np.array([bool(meta.get("blank_depth", False)) for meta in result.meta])
    if blank.any():
        kept = result.arrays(~blank)
        report["without_blank_depth"] = {
            "excluded": {
                "normal": int((blank & (arrays["labels"] == 0)).sum()),
                "defective": int((blank & (arrays["labels"] == 1)).sum()),
            },
            "samples": sample_counts(kept["labels"]),
            "metrics": metric_rows(kept, names),
        }
    return report


def evaluate_model(
    model: UniMMAD,
    sources: Sequence[Source],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    domains: Sequence[str] | None = None,
    heatmap_dir: Path | None = None,
    heatmaps_per_class: int = 0,
    workers: int = 0,
    holdout: RecordedHoldout | None = None,
    target_fpr: float = DEFAULT_TARGET_FPR,
) -> dict[str, Any]:
    """Metrics of every domain of ``sources`` (or only ``domains``) on the test split, as a JSON-safe dict:
    ``{"domains": {name: domain_report}, "summary": aggregate of the fused rows}``; optionally heatmaps.

    holdout: the normals the run held out (RecordedHoldout.from_run_config; default: the default rule)."""
    config = model.config
    dataset = MultiDomainDataset(
        sources, "test", config.image_size, domains=domains, mean=config.mean, std=config.std
    )
    if len(dataset) == 0:
        raise ValueError("the data spec has no test samples")
    validation = fit_validation(
        model,
        sources,
        list(dataset.domains),
        holdout or RecordedHoldout(),
        target_fpr,
        batch_size,
        torch.device(device),
    )
    statistics = None
    if config.anomaly_fusion in CALIBRATED_FUSIONS:
        statistics = {name: fitted.statistics for name, fitted in validation.items()}
    results = collect_outputs(model, dataset, batch_size, torch.device(device), workers, statistics)
    reports = {name: domain_report(result, validation[name]) for name, result in results.items()}
    if heatmap_dir is not None and heatmaps_per_class > 0:
        for result in results.values():
            write_heatmaps(dataset, result, config.mean, config.std, heatmap_dir, heatmaps_per_class)
    fused = {name: report["metrics"][FUSED] for name, report in reports.items()}
    return {"domains": reports, "summary": aggregate(fused)}


def summary_line(report: dict[str, Any]) -> str:
    """One log line: mean image/pixel AUROC and AUPRO over domains."""
    mean = report["summary"]["mean_over_domains"]
    return " ".join(f"{key}={_cell(mean[key])}" for key in ("image_auroc", "pixel_auroc", "pixel_aupro"))


# ------------------------------------------------------------------------------------------- markdown

COLUMNS = {
    key: key.replace("image_", "I-")
    .replace("pixel_", "P-")
    .replace("aupro", "AUPRO")
    .replace("auroc", "AUROC")
    .replace("ap", "AP")
    .replace("f1max", "F1max")
    for key in METRIC_KEYS
}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _interval_cell(interval: Sequence[float] | None) -> str:
    return "–" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"


def _metrics_table(rows: list[tuple[str, str, dict[str, int], dict[str, Any]]]) -> list[str]:
    header = ["domain", "map", "normal", "defective", *COLUMNS.values(), "I-AUROC 95 % CI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for domain, source, counts, metrics in rows:
        cells = [domain, source, str(counts["normal"]), str(counts["defective"])]
        cells += [_cell(metrics[key]) for key in METRIC_KEYS]
        cells.append(_interval_cell(metrics.get("image_auroc_ci95")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: dict[str, Any], title: str = "UniMMAD evaluation") -> str:
    """The report as markdown tables: fused per domain, per dataset, per modality, blank depth, defect groups."""
    domains = report["domains"]
    lines = [f"# {title}", "", "## Per domain (fused map and score)", ""]
    lines += _metrics_table([(name, FUSED, d["samples"], d["metrics"][FUSED]) for name, d in domains.items()])
    lines += [
        "",
        "## Per dataset (mean over its domains)",
        "",
        "| dataset | " + " | ".join(COLUMNS.values()) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    summary = report["summary"]
    for name, metrics in [
        *summary["datasets"].items(),
        ("mean over domains", summary["mean_over_domains"]),
        ("mean over datasets", summary["mean_over_datasets"]),
    ]:
        lines.append(f"| {name} | " + " | ".join(_cell(metrics[key]) for key in METRIC_KEYS) + " |")
    lines += ["", "## Per modality (each modality's own map and score vs the fused ones)", ""]
    lines += _metrics_table(
        [
            (name, source, d["samples"], metrics)
            for name, d in domains.items()
            for source, metrics in d["metrics"].items()
        ]
    )
    blank = {name: d["without_blank_depth"] for name, d in domains.items() if "without_blank_depth" in d}
    if blank:
        lines += ["", "## Without the samples whose depth image is blank (constant)", ""]
        for name, section in blank.items():
            excluded = section["excluded"]
            lines.append(
                f"- {name}: {excluded['defective']} defective and {excluded['normal']} normal samples left out"
            )
        lines.append("")
        lines += _metrics_table(
            [
                (name, source, s["samples"], metrics)
                for name, s in blank.items()
                for source, metrics in s["metrics"].items()
            ]
        )
    lines += [
        "",
        "## Decision threshold (set on the held-out normals, rates on the test split)",
        "",
        "| domain | threshold | validation normals | target FPR | FPR on test normals | TPR on test defects |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in domains.items():
        decision = d["decision"]
        lines.append(
            f"| {name} | {decision['threshold']:.4f} | {decision['validation']['normal_images']} | "
            f"{decision['target_fpr']:.3f} | {_cell(decision['false_positive_rate'])} | "
            f"{_cell(decision['true_positive_rate'])} |"
        )
    groups = {
        name: d["image_auroc_by_defect_modality"]
        for name, d in domains.items()
        if "image_auroc_by_defect_modality" in d
    }
    if groups:
        lines += [
            "",
            "## Image AUROC per defect group (normals vs defects visible only in the named modalities)",
            "",
            "| domain | defect shown in | defective | fused | per modality |",
            "|---|---|---|---|---|",
        ]
        for name, table in groups.items():
            for group, row in table.items():
                singles = ", ".join(f"{m} {_cell(row[m])}" for m in domains[name]["modalities"])
                lines.append(f"| {name} | {group} | {row['defective']} | {_cell(row[FUSED])} | {singles} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- heatmaps


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 RGB (H, W, 3) along :data:`COLOUR_RAMP`."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, COLOUR_RAMP[:, 0], COLOUR_RAMP[:, channel]) for channel in (1, 2, 3)]
    return (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)


def display_image(plane: np.ndarray, kind: str, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A prepared modality [3,S,S] back to uint8 RGB (S,S,3): undo mean/std, or min-max for depth."""
    if kind == "depth":
        depth = plane[0]
        span = float(depth.max() - depth.min())
        unit = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
        unit = np.repeat(unit[..., None], 3, axis=-1)
    else:
        unit = plane.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(unit, 0, 1) * 255).round().astype(np.uint8)


def overlay(background: np.ndarray, heat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend a colourised heatmap over an image and draw the ground-truth outline in white."""
    blended = (1 - OVERLAY_ALPHA) * background + OVERLAY_ALPHA * colourise(heat)
    outline = mask & ~ndimage.binary_erosion(mask)
    blended[outline] = 255
    return blended.round().astype(np.uint8)


def _display_range(maps: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(maps, DISPLAY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def chosen_samples(labels: Sequence[int], per_class: int) -> list[int]:
    """Positions of the first ``per_class`` normal and the first ``per_class`` defective samples."""
    normal = [i for i, label in enumerate(labels) if label == 0][:per_class]
    defective = [i for i, label in enumerate(labels) if label == 1][:per_class]
    return normal + defective


def write_heatmaps(
    dataset: MultiDomainDataset,
    result: DomainOutputs,
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: Path,
    per_class: int,
) -> list[Path]:
    """PNG per chosen sample: every modality's input, then the fused map and each modality's own map,
    each blended over the first modality with the ground-truth outline; one colour scale per domain."""
    folder = Path(out_dir) / result.domain.name.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    fused_range = _display_range(np.stack(result.maps))
    modality_range = _display_range(np.stack(result.modality_maps))
    written = []
    for position in chosen_samples(result.labels, per_class):
        item = dataset[result.indices[position]]
        images = item["images"].numpy()
        inputs = [
            display_image(images[slot], spec.kind, mean, std)
            for slot, spec in enumerate(result.domain.modalities)
        ]
        mask = result.masks[position].astype(bool)
        heat = [(result.maps[position], fused_range)] + [
            (m, modality_range) for m in result.modality_maps[position]
        ]
        panels = inputs + [
            overlay(inputs[0], (values - low) / (high - low), mask) for values, (low, high) in heat
        ]
        label = "defective" if result.labels[position] else "normal"
        safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in item["id"])
        path = folder / f"{label}_{safe_id}.png"
        Image.fromarray(np.concatenate(panels, axis=1)).save(path)
        written.append(path)
    return written
