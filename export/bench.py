"""`export bench`: throughput of torch eager (per-sample routing) vs the dynamic and frozen ONNX graphs.

All timings in one process on the same machine and inputs (one domain, its modality count), batch 1
and 8. C-MoE FLOPs come from torch's FlopCounterMode (official grouped dynamic routing vs the folded
frozen branches); the frozen graph's achieved GFLOP/s is its counted FLOPs x batches/s, set against a
numpy float32 matmul on the same threads to show how far from the machine's peak it runs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from bundle.loader import load_bundle
from export.build import statistics_bank, statistics_from_manifest
from export.fold import kernel_banks
from export.frozen import OUTPUT_NAMES, FrozenUniMMAD
from export.onnx_graph import check_graph
from export.routing import routing_from_manifest
from model.anomaly_map import AnomalyMaps, NormalStatistics, anomaly_maps
from model.unimmad import UniMMAD

BATCH_SIZES = (1, 8)
MATMUL_SIZE = 1024
GIGA = 1e9
CMOE_LEVEL = re.compile(r"[^.]+\.c_moes\.\d+")


def throughput(run: Callable[[], Any], batch: int, min_seconds: float, warmup: int = 2) -> float:
    """Images per second of `run` (one batch per call), timed over at least `min_seconds` and 3 calls."""
    for _ in range(warmup):
        run()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        run()
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def interleaved_throughput(
    runs: dict[str, Callable[[], Any]], batch: int, min_seconds: float, rounds: int = 5
) -> dict[str, float]:
    """Images per second of each of `runs`: `rounds` alternating turns of min_seconds / rounds each, every
    turn after one untimed call; the median turn counts, so a slow spell of a shared machine hits every
    contender alike."""
    for run in runs.values():
        run()
    turns: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            turns[name].append(throughput(run, batch, min_seconds / rounds, warmup=1))
    return {name: float(np.median(rates)) for name, rates in turns.items()}


def counted_flops(run: Callable[[], Any]) -> tuple[int, int]:
    """(total FLOPs, FLOPs of the C-MoE levels `<root>.c_moes.<level>`) of one call of `run`."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run()
    per_module = counter.get_flop_counts()
    part = sum(sum(counts.values()) for name, counts in per_module.items() if CMOE_LEVEL.fullmatch(name))
    return counter.get_total_flops(), part


def matmul_gflops(min_seconds: float) -> float:
    """numpy float32 matmul GFLOP/s ([MATMUL_SIZE]^2 @ [MATMUL_SIZE]^2) with numpy's default threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32) for _ in range(2))
    calls_per_second = throughput(lambda: a @ b, 1, min_seconds)
    return 2 * MATMUL_SIZE**3 * calls_per_second / GIGA


def torch_maps(model: UniMMAD, images: torch.Tensor, statistics: NormalStatistics | None) -> AnomalyMaps:
    """What the per-sample torch model answers for `images` [B, M, 3, S, S] of a domain with `statistics`
    ([1, M, L]): its anomaly maps and scores."""
    return anomaly_maps(model(images), model.config, statistics)


@torch.no_grad()
def bench(
    bundle_path: Path, model: UniMMAD, domain: str | None = None, min_seconds: float = 5.0
) -> dict[str, Any]:
    """The benchmark report of the bundle at `bundle_path` (domain: the manifest's first by default)."""
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    name = domain or min(manifest.domains, key=lambda key: manifest.domains[key].index)
    if name not in manifest.domains:
        raise ValueError(f"domain {name} is not in the bundle (it has {', '.join(manifest.domains)})")
    spec = manifest.domains[name]
    ordered = sorted(manifest.domains.values(), key=lambda entry: entry.index)
    frozen_torch = FrozenUniMMAD(
        model,
        kernel_banks(model, [routing_from_manifest(e, model.config) for e in ordered]),
        statistics_bank(ordered, model.config.max_modalities),
    )
    statistics = statistics_from_manifest(spec)
    statistics = None if statistics is None else statistics.as_batch()
    frozen_session = check_graph(bundle.graph("frozen").model)
    dynamic_session = check_graph(bundle.graph("dynamic").model)
    slots, size = len(spec.modalities), manifest.input_size
    domain_input = np.array([spec.index], dtype=np.int64)
    model.eval()

    results = []
    for batch in tqdm(BATCH_SIZES, desc="benchmark", unit="batch size"):
        images = torch.randn(batch, slots, 3, size, size, generator=torch.Generator().manual_seed(batch))
        feeds = {"images": images.numpy(), "domain": domain_input}
        run_frozen = partial(frozen_session.run, list(OUTPUT_NAMES), feeds)
        run_dynamic = partial(dynamic_session.run, list(OUTPUT_NAMES), feeds)
        rates = interleaved_throughput(
            {
                "torch_eager_per_sample": partial(torch_maps, model, images, statistics),
                "ort_dynamic": run_dynamic,
                "ort_frozen": run_frozen,
            },
            batch,
            min_seconds,
        )
        frozen_rate = rates["ort_frozen"]
        frozen_total, frozen_cmoe = counted_flops(
            partial(frozen_torch, images, torch.from_numpy(domain_input))
        )
        _, dynamic_cmoe = counted_flops(partial(model, images))
        results.append(
            {
                "batch": batch,
                "images_per_second": rates,
                "frozen_vs_torch_speedup": frozen_rate / rates["torch_eager_per_sample"],
                "cmoe_gflops": {
                    "dynamic": dynamic_cmoe / GIGA,
                    "frozen": frozen_cmoe / GIGA,
                    "frozen_over_dynamic": frozen_cmoe / dynamic_cmoe,
                },
                "frozen_graph_gflops_per_batch": frozen_total / GIGA,
                "frozen_achieved_gflop_per_s": frozen_total / GIGA * frozen_rate / batch,
            }
        )
    return {
        "bundle": str(bundle.root),
        "domain": name,
        "modalities": slots,
        "input_size": size,
        "threads": {"cpu_count": os.cpu_count(), "torch": torch.get_num_threads()},
        "numpy_matmul_gflop_per_s": matmul_gflops(min_seconds),
        "results": results,
    }
