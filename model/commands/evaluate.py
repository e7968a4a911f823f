"""``python -m model evaluate``: per-domain metrics of a trained checkpoint, as JSON + markdown + heatmaps.

Writes DIR/metrics.json, DIR/metrics.md and DIR/heatmaps/<domain>/*.png. Example:

    python -m model evaluate --checkpoint runs/demo --out runs/demo/evaluation
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-domain metrics, per-modality rows and heatmaps of a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="run folder written by 'train'")
    parser.add_argument(
        "--data", help="data spec to test on (default: the one the checkpoint was trained on)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward (default: 8)")
    parser.add_argument(
        "--heatmaps",
        type=int,
        default=3,
        metavar="N",
        help="overlay PNGs for the first N normal and N defective samples per domain (default: 3)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument(
        "--prior-weights", help="where the prior's weights file lives now (sha256 must match)"
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from model.calibration import RecordedHoldout
    from model.checkpoint import load_checkpoint
    from model.data import parse_data_spec
    from model.evaluate import HEATMAP_FOLDER, evaluate_model, markdown_report

    if args.batch_size < 1 or args.heatmaps < 0 or args.workers < 0:
        raise ValueError("--batch-size must be >= 1, --heatmaps and --workers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    model, config = load_checkpoint(args.checkpoint, prior_weights=args.prior_weights, device=args.device)
    spec = args.data or config["data"]["spec"]
    args.out.mkdir(parents=True, exist_ok=True)
    report = evaluate_model(
        model,
        parse_data_spec(spec),
        batch_size=args.batch_size,
        device=args.device,
        heatmap_dir=args.out / HEATMAP_FOLDER,
        heatmaps_per_class=args.heatmaps,
        workers=args.workers,
        holdout=RecordedHoldout.from_run_config(config),
    )
    trained = {domain["name"] for domain in config["data"]["domains"]}
    report = {
        "checkpoint": str(args.checkpoint),
        "data": spec,
        "untrained_domains": sorted(set(report["domains"]) - trained),
        **report,
    }
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "metrics.md").write_text(markdown_report(report, f"UniMMAD evaluation of {args.checkpoint}"))
    print(json.dumps({"out": str(args.out), **report["summary"]["mean_over_domains"]}))
    return 0
