"""``python -m model adapt``: add new domains to a trained run without retraining it (spec 9).

Tunes only the MoE leaders, the condition router (conv_cond + gates) and the aggregation conv
(conv_out_first) on the new domains of --data, with a replay of --replay of each old domain's training
items; everything else stays bit-identical to the parent, so `python -m export add-domain` can append the
new domains to the parent's bundle. Progress, --resume and --max-minutes work as for `train`. Example:

    python -m model adapt --checkpoint runs/A --data synthetic@boards --out runs/B --max-minutes 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.commands.train import add_run_arguments, print_result, run_options
from model.config import DEFAULT_REPLAY


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "adapt",
        help="learn new domains from a trained run by tuning < 10 %% of its parameters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the parent run folder")
    parser.add_argument("--data", required=True, help="data spec of the new domain(s) only")
    parser.add_argument("--out", required=True, type=Path, help="run folder of the adapted model")
    parser.add_argument(
        "--replay",
        type=float,
        default=DEFAULT_REPLAY,
        help=f"share of each old domain's training items replayed (default: {DEFAULT_REPLAY})",
    )
    parser.add_argument("--epochs", type=int, help="epochs (default: the parent's)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the parent's)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of sampling, holdout and replay (default: 0)"
    )
    # A new domain's epochs are short: evaluating every domain every 10 of them eats a short budget.
    add_run_arguments(parser, "new domain", eval_every="end")
    parser.add_argument("--prior-weights", help="where the parent's prior weights file lives now")
    return parser


def run(args: argparse.Namespace) -> int:
    options = run_options(args)
    from model.adapt import adapt

    result = adapt(args.checkpoint, options, replay=args.replay)
    print_result(result)
    return 0
