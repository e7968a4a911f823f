"""Measure what the prior cache saves per training step: lite preset, real weights, synthetic batches.

Times forward + backward + Adam step of the same batches with the frozen prior recomputed and with its
features read from a warm PriorCache (median over --steps steps each, after one warm-up step), and prints
one JSON object. Example: .venv/bin/python scripts/bench_prior_cache.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.lite_steps import LiteSteps
from model.data.loader import collate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (default: 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")

    bench = LiteSteps.build()
    dataset = bench.dataset
    # Domains round-robin, so the batches hold 1 to 4 modalities like the unified run.
    by_domain: dict[str, list[int]] = {}
    for index, item in enumerate(dataset.items):
        by_domain.setdefault(item.ref.domain, []).append(index)
    order = [index for group in zip(*by_domain.values()) for index in group]
    needed = (args.steps + 1) * args.batch_size
    if len(order) < needed:
        parser.error(
            f"--steps {args.steps} x --batch-size {args.batch_size} needs {needed} samples, have {len(order)}"
        )
    batches = [
        collate([dataset[i] for i in order[start : start + args.batch_size]])
        for start in range(0, needed, args.batch_size)
    ]
    timings = {}
    for mode, cached in (("uncached", False), ("cached", True)):
        if cached:
            bench.warm_cache(batches)
        bench.step(batches[0], cached)
        timings[mode] = statistics.median(bench.step(batch, cached) for batch in batches[1:])
    print(
        json.dumps(
            {
                "batch_size": args.batch_size,
                "steps": len(batches) - 1,
                "threads": torch.get_num_threads(),
                "seconds_per_step_uncached": round(timings["uncached"], 4),
                "seconds_per_step_cached": round(timings["cached"], 4),
                "speedup": round(timings["uncached"] / timings["cached"], 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
