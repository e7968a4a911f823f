"""``python -m model metrics PATH.npz``: the seven anomaly-detection metrics of a saved evaluation set.

The file holds ``labels`` (N, 1 = anomalous), ``scores`` (N), ``masks`` (N, H, W; defect where > 0) and
``maps`` (N, H, W). Stdout carries exactly one JSON object; any bad input is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from model.metrics import compute_metrics

REQUIRED_KEYS = ("labels", "scores", "masks", "maps")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "metrics",
        help="image/pixel AUROC, AP, F1-max and AUPRO of an .npz evaluation set, as JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", type=Path, help="an .npz file with labels, scores, masks and maps")
    return parser


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of ``path``; ``ValueError`` with one line when the file cannot provide them."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise ValueError(
                    f"{path}: missing key(s) {', '.join(missing)} (needs {', '.join(REQUIRED_KEYS)})"
                )
            return {key: archive[key] for key in REQUIRED_KEYS}
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None


def run(args: argparse.Namespace) -> int:
    try:
        arrays = load_arrays(args.path)
        metrics = compute_metrics(**arrays)
    except ValueError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0
