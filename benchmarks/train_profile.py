"""Per-op profile of lite training steps on CPU: where a step's time goes, data loading measured apart.

Batches come from the embedded synthetic set through the domain-balanced sampler (1 to 4 modalities per
sample, like the unified run), the prior cache is warmed first (a later epoch only reads it), and
torch.profiler records forward + backward + Adam of --steps steps after one warm-up step. Loading the
same batches through the decoding Dataset + collate is timed separately. Writes a text report, e.g.

    .venv/bin/python benchmarks/train_profile.py --out docs/results/train_profile_before.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.lite_steps import LiteSteps
from model.data.loader import DomainBalancedSampler, MultiDomainDataset, collate

TABLE_ROWS = 30


def load_batches(dataset: MultiDomainDataset, batch_size: int, count: int) -> tuple[list[dict], float]:
    """``count`` sampler-drawn batches and the median seconds one took to decode and collate."""
    order = list(DomainBalancedSampler(dataset, seed=0))
    batches, seconds = [], []
    for start in range(0, count * batch_size, batch_size):
        started = time.perf_counter()
        batches.append(collate([dataset[index] for index in order[start : start + batch_size]]))
        seconds.append(time.perf_counter() - started)
    return batches, statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="text report to write")
    parser.add_argument("--steps", type=int, default=4, help="profiled steps (default: 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    parser.add_argument("--kernel-mode", default="grouped", help="C-MoE routed conv formulation")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")

    bench = LiteSteps.build()
    config = bench.config
    batches, load_seconds = load_batches(bench.dataset, args.batch_size, args.steps + 1)

    def step(batch: dict) -> float:
        return bench.step(batch, kernel_mode=args.kernel_mode)

    bench.warm_cache(batches)
    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step_seconds = [step(batch) for batch in batches[1:]]
    step_median = statistics.median(step_seconds)
    pairs = sum(int(batch["modality_count"].sum()) for batch in batches[1:]) / args.steps
    lines = [
        (
            f"lite preset, {config.image_size} px, batch {args.batch_size}, synthetic data, "
            f"prior cache warm, kernel_mode={args.kernel_mode}"
        ),
        (
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op / "
            f"{torch.get_num_interop_threads()} inter-op threads"
        ),
        f"mean (sample, modality) pairs per step: {pairs:.1f}",
        f"data loading (decode + prepare + collate), median per batch: {load_seconds * 1000:.1f} ms",
        f"train step (prior cache read, forward, loss, backward, Adam), median: {step_median * 1000:.1f} ms",
        f"samples/s with loading in the loop: {args.batch_size / (step_median + load_seconds):.2f}",
        "",
        f"torch.profiler over {args.steps} steps, top {TABLE_ROWS} ops by self CPU time:",
        profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=TABLE_ROWS),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
