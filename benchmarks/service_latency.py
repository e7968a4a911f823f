"""Service overhead and batching gain, measured in one run on one machine; prints JSON.

1. Latency at batch 1: sequential ``POST /detect`` (heatmap=none) against a live ``python -m service``,
   vs the bare onnxruntime session on the same preprocessed input (goal: ratio <= 1.15).
2. Throughput: requests/s at concurrency 8 with dynamic batching vs the same requests sent one at a time
   (goal: ratio >= 1.5).

    python benchmarks/service_latency.py --bundle bundles/last [--domain NAME] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from bundle import BundleError, load_bundle
from modalities.decode import decode_bytes
from service.preprocessing import prepare_sample


def synthetic_files(modalities, size: int, seed: int = 0) -> dict[str, tuple[str, bytes, str]]:
    """One upload per modality at the model's input size: 8-bit PNG for rgb/gray, float32 .npy for depth."""
    rng = np.random.default_rng(seed)
    files = {}
    for modality in modalities:
        buffer = io.BytesIO()
        if modality.kind == "depth":
            np.save(buffer, rng.uniform(0.5, 1.0, (size, size)).astype(np.float32), allow_pickle=False)
            files[modality.name] = (f"{modality.name}.npy", buffer.getvalue(), "application/octet-stream")
        else:
            shape = (size, size, 3) if modality.kind == "rgb" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
            files[modality.name] = (f"{modality.name}.png", buffer.getvalue(), "image/png")
    return files


def bare_session_latency(bundle, domain: str, files, repeats: int) -> float:
    """Median seconds of one ``session.run`` at batch 1 on the preprocessed sample."""
    manifest = bundle.manifest
    spec = manifest.domains[domain]
    arrays = {name: decode_bytes(content) for name, (_, content, _) in files.items()}
    sample = prepare_sample(arrays, spec, manifest)[None]
    session = ort.InferenceSession(str(bundle.graph("frozen").model), providers=ort.get_available_providers())
    feeds = {"images": sample, "domain": np.array([spec.index], dtype=np.int64)}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in tqdm(range(repeats), desc="bare onnxruntime", leave=False):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(bundle_path: Path, port: int, max_batch_size: int) -> subprocess.Popen:
    env = os.environ | {
        "UNIMMAD_MAX_BATCH_SIZE": str(max_batch_size),
        "UNIMMAD_LOG_LEVEL": "WARNING",
        "UNIMMAD_QUEUE_SIZE": "256",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--bundle", str(bundle_path), "--port", str(port)], env=env
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: the service exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("error: the service did not become ready within 300 s")


async def send(
    client: httpx.AsyncClient, domain: str, files, count: int, concurrency: int, desc: str
) -> list[float]:
    """Latencies of ``count`` POST /detect sent by ``concurrency`` workers."""
    latencies: list[float] = []
    remaining = iter(range(count))
    progress = tqdm(total=count, desc=desc, leave=False)

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            response = await client.post("/detect", data={"domain": domain, "heatmap": "none"}, files=files)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            progress.update()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    progress.close()
    return latencies


async def measure_service(port: int, domain: str, files, requests: int, concurrency: int) -> dict:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        await send(client, domain, files, 5, 1, "warm-up")
        started = time.perf_counter()
        sequential = await send(client, domain, files, requests, 1, "sequential")
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        await send(client, domain, files, requests, concurrency, f"concurrency {concurrency}")
        concurrent_s = time.perf_counter() - started
    return {
        "detect_latency_median_s": statistics.median(sequential),
        "sequential_rps": requests / sequential_s,
        "concurrent_rps": requests / concurrent_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--domain", help="domain to send (default: the first of the manifest)")
    parser.add_argument("--requests", type=int, default=200, help="requests per throughput phase")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    domain = args.domain or next(iter(bundle.manifest.domains))
    if domain not in bundle.manifest.domains:
        print(f"error: unknown domain {domain!r}", file=sys.stderr)
        return 1
    files = synthetic_files(bundle.manifest.domains[domain].modalities, bundle.manifest.input_size)
    bare_s = bare_session_latency(bundle, domain, files, args.requests)
    port = free_port()
    service = start_service(args.bundle, port, max_batch_size=args.concurrency)
    try:
        served = asyncio.run(measure_service(port, domain, files, args.requests, args.concurrency))
    finally:
        service.terminate()
        service.wait(timeout=30)
    report = {
        "domain": domain,
        "device": ort.get_device(),
        "bare_session_latency_median_s": bare_s,
        **served,
        "latency_ratio_detect_vs_bare": served["detect_latency_median_s"] / bare_s,
        "throughput_ratio_concurrent_vs_sequential": served["concurrent_rps"] / served["sequential_rps"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
