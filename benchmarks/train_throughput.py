"""Training throughput (samples/s) of training paths, measured in alternating turns in one run.

Workloads: the lite preset at 128 and 256 px and the paper preset at 256 px (random prior weights: for
timing only), each with 1 modality (synthetic/tiles, rgb) and 3 (synthetic/boards, rgb + infrared +
depth). A step is what model.train runs: prior cache read (warmed first: a later epoch only reads it),
forward, loss, backward, Adam. Paths:

- old:     the code before issue 12: grouped C-MoE kernels, the decoding Dataset + collate every step,
           torch's default threads and OpenMP waits
- fused:   old with the fused C-MoE kernels
- cached:  old with batches gathered from the DecodedCache
- passive: old with passive OpenMP waits (OMP_WAIT_POLICY=PASSIVE, what `python -m model train` sets)
- new:     fused kernels + DecodedCache + passive waits (+ --threads)

Each path runs in its own worker process (the OpenMP wait policy is fixed when a process starts), all
built before timing starts; a turn runs each path for --steps steps, one after the other, so a busy
machine slows them alike. The report gives the median samples/s per path and new/old per workload, as
JSON on stdout (and --out); progress goes to stderr. Examples:

    .venv/bin/python benchmarks/train_throughput.py --out docs/results/train_throughput_cpu.json
    .venv/bin/python benchmarks/train_throughput.py --device cuda --precision bf16 \\
        --workloads lite-256-1m,paper-256-1m --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from model.config import UniMMADConfig, preset
from model.data import SyntheticConfig, parse_data_spec
from model.data.loader import DecodedCache, MultiDomainDataset, collate
from model.losses import unimmad_loss
from model.prior_cache import PriorCache
from model.unimmad import UniMMAD

DOMAINS = {1: "synthetic/tiles", 3: "synthetic/boards"}


@dataclass(frozen=True)
class Workload:
    """One model size and modality count; batch_size/steps None take the CLI's or the preset's values."""

    name: str
    preset: str
    image_size: int
    modalities: int
    batch_size: int | None = None
    steps: int | None = None


# The paper preset is slow on a CPU (about 2 TFLOP per step of 8): small batches, one step per turn there.
WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload("lite-128-1m", "lite", 128, 1),
        Workload("lite-128-3m", "lite", 128, 3),
        Workload("lite-256-1m", "lite", 256, 1),
        Workload("lite-256-3m", "lite", 256, 3),
        Workload("paper-256-1m", "paper", 256, 1, batch_size=2, steps=1),
        Workload("paper-256-3m", "paper", 256, 3, batch_size=2, steps=1),
    )
}


@dataclass(frozen=True)
class TrainPath:
    """How a step is run: C-MoE kernel mode, where batches come from, threads (None: torch's default) and
    the OpenMP wait policy of its process (None: the library's default, spinning)."""

    kernel_mode: str
    cached_data: bool
    threads: int | None = None
    omp_wait_policy: str | None = None


def build_paths(threads: int | None) -> dict[str, TrainPath]:
    return {
        "old": TrainPath("grouped", cached_data=False),
        "fused": TrainPath("fused", cached_data=False),
        "cached": TrainPath("grouped", cached_data=True),
        "passive": TrainPath("grouped", cached_data=False, omp_wait_policy="PASSIVE"),
        "new": TrainPath("fused", True, threads=threads, omp_wait_policy="PASSIVE"),
    }


def model_config(workload: Workload, batch_size: int | None) -> UniMMADConfig:
    config = preset(workload.preset).replace(image_size=workload.image_size)
    return config.replace(batch_size=batch_size or workload.batch_size or config.batch_size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One workload's model, optimiser, data in both forms and warm prior cache."""

    def __init__(self, workload: Workload, config: UniMMADConfig, device: torch.device, precision: str):
        self.config, self.device = config, device
        torch.manual_seed(0)
        self.model = UniMMAD(config, allow_random_prior=True).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=config.lr)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        batch = config.batch_size
        sizes = SyntheticConfig(size=workload.image_size, train_per_domain=max(2 * batch, 16))
        sources = parse_data_spec("synthetic", synthetic=sizes)
        self.dataset = MultiDomainDataset(
            sources, "train", config.image_size, [DOMAINS[workload.modalities]], config.mean, config.std
        )
        started = time.perf_counter()
        self.decoded = DecodedCache(self.dataset, device)
        self.cache_build_seconds = time.perf_counter() - started
        self.prior_cache = PriorCache(self.model, storage_device=device)
        started = time.perf_counter()
        for start in range(0, len(self.dataset), batch):
            self.priors(self.decoded.collate(range(start, min(start + batch, len(self.dataset)))))
        self.prior_warm_seconds = time.perf_counter() - started
        self.cursor = 0

    def priors(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        keys = list(zip(batch["domains"], batch["ids"]))
        return self.prior_cache.priors(batch["images"], batch["modality_count"], keys)

    def next_batch(self, path: TrainPath) -> dict[str, Any]:
        size = self.config.batch_size
        indices = [(self.cursor + offset) % len(self.dataset) for offset in range(size)]
        self.cursor = (self.cursor + size) % len(self.dataset)
        if path.cached_data:
            return self.decoded.collate(indices)
        return collate([self.dataset[index] for index in indices])

    def step(self, path: TrainPath) -> torch.Tensor:
        batch = self.next_batch(path)
        images = batch["images"].to(self.device, non_blocking=True)
        count = batch["modality_count"].to(self.device)
        priors = self.priors({**batch, "images": images, "modality_count": count})
        with self.autocast:
            output = self.model(images, count, priors=priors, kernel_mode=path.kernel_mode)
            terms = unimmad_loss(output, self.config, 0.0, batch["loss_weight"].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        return terms.total.detach()

    def turn(self, path: TrainPath, steps: int) -> float:
        """samples/s of ``steps`` steps on ``path``."""
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            loss = self.step(path)
        loss.item()  # one host read per turn, which also waits for the device
        return steps * self.config.batch_size / (time.perf_counter() - started)

    def setup_report(self) -> dict[str, Any]:
        return {
            "decoded_cache_build_seconds": round(self.cache_build_seconds, 2),
            "decoded_cache_megabytes": round(self.decoded.nbytes() / 2**20, 2),
            "prior_cache_warm_seconds": round(self.prior_warm_seconds, 2),
        }


def path_worker(connection: Connection, workload: Workload, path: TrainPath, options: dict[str, Any]) -> None:
    """One path's process: build the bench, one warm-up step, then a timed turn per request (the number of
    steps; None ends it), each answered with its samples/s."""
    if path.threads:
        torch.set_num_threads(path.threads)
    bench = Bench(workload, options["config"], torch.device(options["device"]), options["precision"])
    bench.turn(path, 1)  # first-call allocations and kernel choices
    connection.send({**bench.setup_report(), "threads": torch.get_num_threads()})
    while (steps := connection.recv()) is not None:
        connection.send(bench.turn(path, steps))


@contextlib.contextmanager
def omp_wait_policy(policy: str | None):
    """OMP_WAIT_POLICY as ``policy`` (None: unset) for the processes started inside."""
    saved = os.environ.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        os.environ["OMP_WAIT_POLICY"] = policy
    try:
        yield
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved


def run_workload(workload: Workload, paths: dict[str, TrainPath], args: argparse.Namespace) -> dict[str, Any]:
    config = model_config(workload, args.batch_size)
    steps = args.steps or workload.steps or 3
    options = {"config": config, "device": args.device, "precision": args.precision}
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[Any, Connection]] = {}
    try:
        for name, path in paths.items():
            ours, theirs = context.Pipe()
            with omp_wait_policy(path.omp_wait_policy):
                process = context.Process(
                    target=path_worker, args=(theirs, workload, path, options), daemon=True
                )
                process.start()
            workers[name] = (process, ours)
        setup = {name: connection.recv() for name, (_, connection) in workers.items()}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.turns):
            for name, (_, connection) in workers.items():
                connection.send(steps)
                rates[name].append(connection.recv())
                print(f"{workload.name} {name}: {rates[name][-1]:.2f} samples/s", file=sys.stderr, flush=True)
    finally:
        for process, connection in workers.values():
            with contextlib.suppress(OSError):
                connection.send(None)
            process.join(timeout=60)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    first = next(iter(setup.values()))
    result: dict[str, Any] = {
        "workload": workload.name,
        "preset": workload.preset,
        "image_size": workload.image_size,
        "modalities": workload.modalities,
        "batch_size": config.batch_size,
        "steps_per_turn": steps,
        **{key: value for key, value in first.items() if key != "threads"},
        "threads": {name: report["threads"] for name, report in setup.items()},
        "samples_per_second": {name: round(value, 3) for name, value in medians.items()},
        "samples_per_second_per_turn": {
            name: [round(v, 3) for v in values] for name, values in rates.items()
        },
    }
    if "old" in medians and "new" in medians:
        result["new_over_old"] = round(medians["new"] / medians["old"], 3)
    return result


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16 autocast (CUDA only); default fp32",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--paths",
        default="old,new",
        help="comma-separated, of old, fused, cached, passive, new (default: old,new)",
    )
    parser.add_argument("--batch-size", type=int, help="samples per step (default: the preset's; paper: 2)")
    parser.add_argument("--steps", type=int, help="timed steps per path and turn (default: 3; paper: 1)")
    parser.add_argument(
        "--turns", type=int, default=2, help="alternating turns; medians reported (default: 2)"
    )
    parser.add_argument("--threads", type=int, help="intra-op threads of the new path (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    unknown = [name for name in args.workloads.split(",") if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; valid: {', '.join(WORKLOADS)}")
    for name in ("batch_size", "steps", "turns", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.precision == "bf16" and args.device != "cuda":
        parser.error("--precision bf16 needs --device cuda")
    return args


def main() -> int:
    args = parse_args()
    all_paths = build_paths(args.threads)
    names = args.paths.split(",")
    if unknown := [name for name in names if name not in all_paths]:
        print(f"error: unknown path(s) {', '.join(unknown)}; valid: {', '.join(all_paths)}", file=sys.stderr)
        return 2
    paths = {name: all_paths[name] for name in names}
    results = [run_workload(WORKLOADS[name], paths, args) for name in args.workloads.split(",")]
    report = {
        "device": args.device,
        "device_name": device_name(args.device),
        "precision": args.precision,
        "cpu_count": os.cpu_count(),
        "default_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "turns": args.turns,
        "paths": {name: vars(path) for name, path in paths.items()},
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
