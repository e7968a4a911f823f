"""Markdown table of scripts/recipe_ablation.sh: one row per run folder, in the order given.

Per row: steps trained in the budget, final training loss, routing health at the end (top gate
probability and the Jensen-Shannon divergence between domains' mean routings, from the train state), and
per domain the image AUROC under the official fusion -> under calibrated max (RUN/fusions.json).
Routing health is the last epoch's that sampled the gates.

    .venv/bin/python scripts/recipe_ablation_table.py runs/ablation/{0_official,1_gn_floor,2_anneal,3_warmup}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FUSIONS = ("code", "calibrated_max")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run scripts/recipe_ablation.sh first")
    return json.loads(path.read_text(encoding="utf-8"))


def row(run: Path, domains: list[str]) -> str:
    progress = read_json(run / "train_state.json")["progress"]
    fusions = read_json(run / "fusions.json")["fusions"]
    last = progress["history"][-1]
    # A last epoch of a few steps may hold no routing sample: then the latest epoch that has one.
    routing = next(entry["routing"] for entry in reversed(progress["history"]) if entry.get("routing"))
    cells = [
        run.name,
        str(progress["step"]),
        f"{last['mean_loss']:.3f}",
        f"{routing['top_probability']:.3f}",
        f"{routing['domain_divergence']:.4f}",
    ]
    for domain in domains:
        code, calibrated = (100 * fusions[fusion][domain]["image_auroc"] for fusion in FUSIONS)
        cells.append(f"{code:.1f} -> {calibrated:.1f}")
    return "| " + " | ".join(cells) + " |"


def table(runs: list[Path]) -> str:
    domains = list(read_json(runs[0] / "fusions.json")["fusions"][FUSIONS[0]])
    header = ["row", "steps", "final loss", "top gate prob.", "domain JS", *domains]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [row(run, domains) for run in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, one per row, in order")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(table(args.runs))
    except (OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
