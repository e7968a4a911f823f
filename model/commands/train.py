"""``python -m model train``: train one unified UniMMAD over every domain of a data spec.

Writes runs/NAME/{config.json, model.safetensors, train_state.*} after every epoch (and when the time
budget runs out) and periodic evaluations to runs/NAME/eval/. Example:

    python -m model train --preset lite --data synthetic,shared:magnetic_tile --out runs/demo --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import PRESETS, UniMMADConfig

if TYPE_CHECKING:  # model.train imports torch: commands load it only when they run
    from model.train import TrainOptions

CONFIG_FIELDS = {field.name for field in dataclasses.fields(UniMMADConfig)}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train one unified model on a data spec",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="lite", choices=list(PRESETS), help="model preset (default: lite)"
    )
    parser.add_argument(
        "--data", required=True, help="data spec, e.g. synthetic,shared:magnetic_tile,mvtec3d:/path"
    )
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, evaluations)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="samples per step (default: the preset's); without --lr the learning rate follows the "
        "large-batch rule lr = preset lr * sqrt(batch / preset batch)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        help="Adam learning rate, cosine-annealed (default: the preset's, scaled by the --batch-size rule)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, sampling and holdout (default: 0)"
    )
    add_run_arguments(parser, "domain", eval_every="10")
    parser.add_argument("--prior-weights", help="weights file of the frozen prior (default: the preset's)")
    parser.add_argument("--no-prior-cache", action="store_true", help="recompute the frozen prior every step")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes that decode the data (once, or every step with --no-data-cache; default: 0)",
    )
    parser.add_argument(
        "--no-data-cache",
        action="store_true",
        help="decode every sample every step instead of once into memory (on the --device)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=config_override,
        metavar="FIELD=VALUE",
        help="change one field of the preset's config (repeatable; VALUE is JSON, else a string), "
        "e.g. --set balance_anneal_fraction=1.0 --set kernel_sizes=[1,3]",
    )
    return parser


def evaluation_cadence(text: str) -> int | None:
    """``--eval-every``: a number of epochs, or ``end`` (None) for the final evaluation only."""
    if text == "end":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of epochs or 'end', got {text!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser, holdout_of: str, eval_every: str) -> None:
    """The options `train` and `adapt` share: resume, evaluation cadence, holdout, budget, device."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument(
        "--eval-every",
        type=evaluation_cadence,
        default=evaluation_cadence(eval_every),
        metavar="EPOCHS|end",
        help="evaluate on the test split every N epochs and at the end; end = at the end only; 0 = never "
        f"(default: {eval_every})",
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.1,
        help=f"normal training samples per {holdout_of} held out for calibration (default: 0.1)",
    )
    parser.add_argument(
        "--max-minutes", type=float, help="stop (with a resumable checkpoint) after this wall time"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16 autocast (CUDA only) or fp32 (default)",
    )


def print_result(result: Any, **extra: Any) -> None:
    """One JSON line on stdout: where the run is and how far it got."""
    summary = {
        "out": str(result.out),
        "epochs_done": result.epochs_done,
        "step": result.step,
        "finished": result.finished,
        "last_loss": result.last_loss,
    }
    print(json.dumps({**summary, **extra}))


def config_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` -> (field, value); VALUE parsed as JSON (lists become tuples), else kept as text."""
    name, separator, raw = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    if name not in CONFIG_FIELDS:
        raise argparse.ArgumentTypeError(
            f"unknown config field {name!r}; see `python -m model info --preset lite`"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, tuple(value) if isinstance(value, list) else value


def run_options(args: argparse.Namespace, **fields: Any) -> TrainOptions:
    """TrainOptions from the options `train` and `adapt` share, plus the command's own ``fields``. Sets
    passive OpenMP waits first: threads that wait by spinning hold cores that other processes need, and on
    a shared machine a step then crawls; passive waits cost ~5 % on an otherwise idle 2-core machine
    (benchmarks/train_throughput.py, path "passive"). OpenMP reads it once, when torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from model.train import TrainOptions

    return TrainOptions(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        resume=args.resume,
        eval_every=args.eval_every,
        holdout_fraction=args.holdout_fraction,
        max_minutes=args.max_minutes,
        device=args.device,
        precision=args.precision,
        prior_weights=args.prior_weights,
        **fields,
    )


def run(args: argparse.Namespace) -> int:
    options = run_options(
        args,
        preset=args.preset,
        batch_size=args.batch_size,
        prior_cache=not args.no_prior_cache,
        workers=args.workers,
        data_cache=not args.no_data_cache,
        config_overrides=tuple(args.overrides),
    )
    from model.train import train

    result = train(options)
    print_result(result, prior_cache=result.cache_stats)
    return 0
