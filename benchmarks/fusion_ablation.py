"""One checkpoint scored under each anomaly fusion: same weights, same held-out normals, same test images.

    .venv/bin/python benchmarks/fusion_ablation.py --checkpoint runs/h2_synth \
        --out docs/results/calibrated_fusion.json

Runs `model.evaluate.evaluate_model` once per fusion of FUSIONS (the fusion is the only thing changed) and
writes, per fusion and domain: image AUROC, pixel AUROC, AUPRO, each modality's own image AUROC, the image
AUROC per defect group (synthetic data: which modality shows the defect) and the false-positive rate the
validation threshold reaches on the test normals; MulSen domains also without their blank-depth samples.

With "calibrated_max" among the fusions it adds one fusion computed after the fact, at the image level only:
each modality's image score standardised by the mean and standard deviation of its own image scores on the
domain's held-out normals, then the maximum over modalities (the score-level fusion of the PatchCore
baseline in ../shared/design/BASELINES.md). It tells whether a sensor whose normal images vary little is
drowned by a noisier one at the image level, which per-pixel calibration does not address.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FUSIONS = ("code", "paper", "calibrated_max", "calibrated_mean")
FUSED = "fused"
SCORE_STANDARDISED = "calibrated_max+score_standardised"
# Floor of a modality's normal image-score spread (in the calibrated maps' units): a modality whose few
# held-out normals happen to score alike must not dominate the maximum.
MIN_SCORE_STD = 0.05


def domain_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one domain report that tell fusions apart."""
    fused = report["metrics"][FUSED]
    return {
        "image_auroc": fused["image_auroc"],
        "pixel_auroc": fused["pixel_auroc"],
        "pixel_aupro": fused["pixel_aupro"],
        "modality_image_auroc": {
            name: report["metrics"][name]["image_auroc"] for name in report["modalities"]
        },
        "image_auroc_by_defect_modality": {
            group: row[FUSED] for group, row in report.get("image_auroc_by_defect_modality", {}).items()
        },
        "false_positive_rate": report["decision"]["false_positive_rate"],
        "target_fpr": report["decision"]["target_fpr"],
    } | without_blank_depth(report)


def without_blank_depth(report: dict[str, Any]) -> dict[str, Any]:
    """Image AUROC of the fused score and of each modality without the blank-depth samples, where any."""
    kept = report.get("without_blank_depth")
    if kept is None:
        return {}
    return {
        "without_blank_depth": {
            name: kept["metrics"][name]["image_auroc"] for name in (FUSED, *report["modalities"])
        }
    }


def score_standardised(report: dict[str, Any]) -> dict[str, Any]:
    """Image AUROC of the maximum over modalities of each modality's image score standardised by its
    held-out normals' image scores (from a calibrated_max report's per-sample modality scores)."""
    from model.metrics import auroc

    validation = report["decision"]["validation"]
    mean = np.asarray(validation["modality_score_mean"])
    std = np.maximum(np.asarray(validation["modality_score_std"]), MIN_SCORE_STD)
    entries = report["scores"]
    labels = np.array([entry["label"] for entry in entries])
    scores = np.array(
        [[entry["modality_scores"][name] for name in report["modalities"]] for entry in entries]
    )
    fused = ((scores - mean) / std).max(axis=1)
    result: dict[str, Any] = {"image_auroc": auroc(fused, labels)}
    blank = np.array([entry.get("blank_depth", False) for entry in entries])
    if blank.any():
        result["without_blank_depth"] = {FUSED: auroc(fused[~blank], labels[~blank])}
    return result


def ablation(checkpoint: Path, data: str | None, batch_size: int, fusions: tuple[str, ...]) -> dict[str, Any]:
    from model.calibration import RecordedHoldout
    from model.checkpoint import STATE_JSON_FILE, load_checkpoint
    from model.data import parse_data_spec
    from model.evaluate import evaluate_model

    model, run_config = load_checkpoint(checkpoint)
    state = checkpoint / STATE_JSON_FILE
    progress = json.loads(state.read_text(encoding="utf-8"))["progress"] if state.is_file() else {}
    spec = data or run_config["data"]["spec"]
    trained_with = model.config.anomaly_fusion
    results = {}
    for fusion in fusions:
        model.config = model.config.replace(anomaly_fusion=fusion)
        report = evaluate_model(
            model,
            parse_data_spec(spec),
            batch_size=batch_size,
            holdout=RecordedHoldout.from_run_config(run_config),
        )
        results[fusion] = {name: domain_summary(domain) for name, domain in report["domains"].items()}
        if fusion == "calibrated_max":
            results[SCORE_STANDARDISED] = {
                name: score_standardised(domain) for name, domain in report["domains"].items()
            }
    return {
        "checkpoint": str(checkpoint),
        "data": spec,
        "checkpoint_fusion": trained_with,
        "trained": {"epochs": progress.get("epoch"), "steps": progress.get("step")},
        "fusions": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="training run folder")
    parser.add_argument("--data", help="data spec (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward (default 8)")
    parser.add_argument(
        "--fusions", nargs="+", choices=FUSIONS, default=list(FUSIONS), help="fusions to score"
    )
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout only)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        result = ablation(args.checkpoint, args.data, args.batch_size, tuple(args.fusions))
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
