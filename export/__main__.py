"""`python -m export {bundle,verify,bench,add-domain}`: checkpoint -> ONNX bundle, its verification, its
benchmark, and a new bundle with a domain learned by `model adapt` appended.

Errors are one line on stderr and exit status 1 (2 for bad arguments); logs go to stderr, JSON reports
to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bundle.loader import BundleError
from export.calibration import DEFAULT_ROUTING_MODE, ROUTING_MODES
from export.onnx_graph import ExportError
from export.verify import IMAGE_AUROC_GOAL, PIXEL_AUROC_GOAL
from model.calibration import DEFAULT_TARGET_FPR

logger = logging.getLogger("export")


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="training run folder (config.json + model.safetensors)"
    )
    parser.add_argument(
        "--prior-weights", help="where the prior's weights file lives now, if it moved since training"
    )


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="data spec (default: the one recorded in the checkpoint), e.g. 'synthetic'"
    )
    parser.add_argument("--domains", nargs="+", help="only these domains (default: every domain of the data)")
    parser.add_argument(
        "--max-samples", type=int, help="at most this many samples per domain and split (quick runs)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="batch size of calibration/evaluation (default 8)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    bundle = commands.add_parser(
        "bundle", help="calibrate routing per domain, fold, export both graphs, write the bundle"
    )
    _add_checkpoint(bundle)
    _add_data(bundle)
    bundle.add_argument("--out", required=True, type=Path, help="bundle folder to write (created)")
    bundle.add_argument(
        "--fp16", action="store_true", help="float16 weights/activations inside the graphs (I/O stay float32)"
    )
    bundle.add_argument(
        "--target-fpr",
        type=float,
        default=DEFAULT_TARGET_FPR,
        help=f"false positive rate on held-out normals the threshold aims at (default {DEFAULT_TARGET_FPR})",
    )
    bundle.add_argument(
        "--routing",
        choices=ROUTING_MODES,
        default=DEFAULT_ROUTING_MODE,
        help="frozen routing per domain: 'topk' = top-K of the mean gate probabilities, renormalised; "
        "'expected' = mean of the samples' own routed scores over all leaders, i.e. the average "
        f"per-sample routed kernel (default {DEFAULT_ROUTING_MODE})",
    )
    bundle.add_argument(
        "--model-version", default=None, help="manifest model_version (default: the checkpoint folder name)"
    )
    bundle.add_argument(
        "--subsets",
        nargs="+",
        default=[],
        metavar="DOMAIN:MODALITY+MODALITY",
        help="modality subsets to calibrate so a request missing a sensor can be served, e.g. "
        "mulsen_derived/capsule:rgb+infrared (each costs one domain's calibration)",
    )

    verify = commands.add_parser(
        "verify",
        help="fold exactness, torch vs onnxruntime, per-sample vs frozen AUROC and the false-positive rate "
        "on test, frozen-vs-dynamic agreement on the held-out normals",
    )
    verify.add_argument("bundle", type=Path, help="bundle folder")
    _add_checkpoint(verify)
    _add_data(verify)
    verify.add_argument(
        "--max-image-loss",
        type=float,
        default=100 * IMAGE_AUROC_GOAL,
        help="image AUROC points frozen routing may cost a domain, reported on the test split "
        f"(default {100 * IMAGE_AUROC_GOAL:g})",
    )
    verify.add_argument(
        "--max-pixel-loss",
        type=float,
        default=100 * PIXEL_AUROC_GOAL,
        help="pixel AUROC points frozen routing may cost a domain, reported on the test split "
        f"(default {100 * PIXEL_AUROC_GOAL:g})",
    )
    verify.add_argument(
        "--fallback",
        action="store_true",
        help="write the result into the manifest: domains whose frozen graph strays from the per-sample one "
        "on the validation split (held-out normals; see export.fallback) are served by the per-sample "
        "(dynamic) graph, with threshold and ranges recomputed from it; the others by the frozen one",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: indented summary)"
    )

    add = commands.add_parser(
        "add-domain",
        help="a new bundle: BUNDLE plus a domain learned by `model adapt`, the old domains bit-identical",
    )
    add.add_argument("bundle", type=Path, help="bundle folder to extend (never modified)")
    _add_checkpoint(add)
    add.add_argument("--domain", required=True, help="the domain to add (one of the checkpoint's domains)")
    add.add_argument("--out", type=Path, help="new bundle folder (default: BUNDLE+DOMAIN beside BUNDLE)")
    add.add_argument("--model-version", help="the new bundle's model_version (default: OLD+DOMAIN)")
    add.add_argument("--batch-size", type=int, default=8, help="batch size of calibration (default 8)")
    add.add_argument("--json", action="store_true", help="print the summary as one JSON line")

    bench = commands.add_parser(
        "bench", help="images/s of torch eager, ORT dynamic and ORT frozen at batch 1 and 8"
    )
    bench.add_argument("bundle", type=Path, help="bundle folder")
    _add_checkpoint(bench)
    bench.add_argument("--domain", help="domain whose modality count is benchmarked (default: the first)")
    bench.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="time each contender at least this long, in 5 alternating turns (default 5)",
    )
    bench.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: indented summary)"
    )
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        parser.error(f"{name} must be positive, got {value}")


def _domains(args: argparse.Namespace, run_config: dict) -> list:
    from export.samples import select_domains
    from model.data import parse_data_spec

    spec = args.data or (run_config.get("data") or {}).get("spec")
    if not spec:
        raise ValueError("the checkpoint records no data spec; pass --data SPEC")
    domains = select_domains(parse_data_spec(spec), args.domains)
    if args.max_samples:
        from export.samples import LimitedDomainData

        domains = [LimitedDomainData(data.source, data.domain, args.max_samples) for data in domains]
    return domains


def run(args: argparse.Namespace) -> dict | None:
    from export.bench import bench
    from export.build import BundleOptions, build_bundle, parse_subset
    from export.fallback import apply_fallback
    from export.verify import verify
    from model.calibration import RecordedHoldout
    from model.checkpoint import load_checkpoint

    if args.command == "add-domain":
        from export.add_domain import add_domain

        out = args.out or args.bundle.with_name(f"{args.bundle.name}+{args.domain.replace('/', '_')}")
        manifest = add_domain(
            args.bundle,
            args.checkpoint,
            args.domain,
            out,
            args.model_version,
            args.batch_size,
            args.prior_weights,
        )
        return {
            "bundle": str(out),
            "model_version": manifest.model_version,
            "domains": list(manifest.domains),
        }
    model, run_config = load_checkpoint(args.checkpoint, prior_weights=args.prior_weights)
    if args.command == "bench":
        return bench(args.bundle, model, args.domain, args.min_seconds)
    domains = _domains(args, run_config)
    options = BundleOptions(holdout=RecordedHoldout.from_run_config(run_config), batch_size=args.batch_size)
    if args.command == "verify":
        report = verify(
            args.bundle, model, domains, options, args.max_image_loss / 100, args.max_pixel_loss / 100
        )
        if args.fallback:
            report["served_by"] = apply_fallback(args.bundle, report, model, domains, options)
        return report
    options = replace(
        options,
        target_fpr=args.target_fpr,
        fp16=args.fp16,
        routing=args.routing,
        model_version=args.model_version or args.checkpoint.resolve().name,
        subsets=tuple(parse_subset(text) for text in args.subsets),
    )
    build_bundle(model, domains, args.out, options)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_samples", "min_seconds"):
        _positive(parser, f"--{name.replace('_', '-')}", getattr(args, name, None))
    if args.command == "bundle" and not 0 <= args.target_fpr < 1:
        parser.error(f"--target-fpr must be within [0, 1), got {args.target_fpr}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", "message": "%(message)s"}',
        stream=sys.stderr,
    )
    if not args.verbose:
        # The exporter's optimiser logs every folded constant and rewritten slice at INFO.
        for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        report = run(args)
    except (ValueError, BundleError, ExportError, OSError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    if report is not None:
        print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
