"""``python -m model info``: parameter counts, GMACs and input size of a preset, as one JSON object.

Works on the meta device with random structure only: no weight file is ever read, so it is instant.
"""

from __future__ import annotations

import argparse
import json

from model.config import PRESETS, preset

DEFAULT_MODALITIES = "rgb"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="parameter counts (total/active/trainable), GMACs and input size of a preset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="paper", choices=list(PRESETS), help="model preset (default: paper)"
    )
    parser.add_argument(
        "--modalities",
        default=DEFAULT_MODALITIES,
        help="comma-separated modality names of one sample, 1 to 4 (default: rgb); only their count matters",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    return parser


def parse_modalities(text: str, limit: int) -> list[str]:
    """'rgb,depth' -> ['rgb', 'depth']; ValueError for empty, duplicate or too many names."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise ValueError(f"--modalities {text!r} holds an empty name")
    if len(set(names)) != len(names):
        raise ValueError(f"--modalities {text!r} repeats a name")
    if len(names) > limit:
        raise ValueError(f"--modalities names {len(names)} modalities; at most {limit} are supported")
    return names


def run(args: argparse.Namespace) -> int:
    from model.complexity import model_complexity

    config = preset(args.preset)
    report = model_complexity(config, parse_modalities(args.modalities, config.max_modalities))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"preset {report['preset']}, input {report['input_size']} ({', '.join(report['modalities'])})")
    print(
        f"params total {report['params_total']:,}  active {report['params_active']:,}  "
        f"trainable {report['params_trainable']:,}  GMACs {report['gmacs']:.2f}"
    )
    for name, part in report["modules"].items():
        print(f"  {name:<10} params {part['params']:>12,}  GMACs {part['gmacs']:8.3f}")
    return 0
