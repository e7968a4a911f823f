"""Bounded overload test of POST /detect on 127.0.0.1: measure capacity, then offer ~4x of it.

    python benchmarks/load_test.py --bundle bundles/demo            # starts its own service
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --pid 1234

Phase 1 (capacity): a closed loop with 2 x max-batch-size clients for --capacity-s seconds.
Phase 2 (overload): open-loop arrivals at --overload x capacity for --duration-s seconds; at most
--max-in-flight requests are outstanding (arrivals beyond that are counted as `client_dropped`).
An overloaded service must shed load with 503 (bounded queue), never fail otherwise. Prints JSON
(counts per status, latency percentiles of admitted requests, service RSS before/after) and exits
1 when any answer was neither 200 nor 503.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import live_service

log = logging.getLogger("load_test")
EXPECTED_STATUSES = {200, 503}


@dataclass
class PhaseResult:
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    admitted_latencies_s: list[float] = field(default_factory=list)
    client_dropped: int = 0

    def summary(self) -> dict:
        latencies = np.array(self.admitted_latencies_s) * 1000.0
        sent = sum(self.statuses.values())
        percentiles = (
            {f"p{q}": round(float(np.percentile(latencies, q)), 2) for q in (50, 95, 99)}
            if len(latencies)
            else {}
        )
        return {
            "seconds": round(self.seconds, 2),
            "sent": sent,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "client_dropped": self.client_dropped,
            "admitted_per_s": round(self.statuses[200] / self.seconds, 2) if self.seconds else 0.0,
            "admitted_latency_ms": percentiles,
        }


def sample_files(
    modalities: list[dict], seed: int = 0, size: int = 64
) -> list[tuple[str, tuple[str, bytes, str]]]:
    """One synthetic size x size file per modality, in the format its kind is most often sent in."""
    rng = np.random.default_rng(seed)
    files = []
    for modality in modalities:
        if modality["kind"] == "depth":
            buffer = io.BytesIO()
            np.save(buffer, rng.uniform(0.5, 1.0, (size, size)).astype(np.float32))
            files.append((modality["name"], ("depth.npy", buffer.getvalue(), "application/octet-stream")))
            continue
        shape = (size, size, 3) if modality["kind"] == "rgb" else (size, size)
        pixels = rng.integers(0, 255, shape, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append((modality["name"], (f"{modality['name']}.png", buffer.getvalue(), "image/png")))
    return files


class Load:
    def __init__(self, client: httpx.AsyncClient, url: str, domain: str, files: list) -> None:
        self.client, self.url = client, url
        # Encoded once: multipart encoding per request would make the generator, not the service, the bottleneck.
        form = httpx.Request("POST", url, data={"domain": domain, "heatmap": "none"}, files=files)
        self.body, self.content_type = form.read(), form.headers["content-type"]

    async def one(self, result: PhaseResult) -> None:
        started = time.perf_counter()
        try:
            response = await self.client.post(
                f"{self.url}/detect", content=self.body, headers={"content-type": self.content_type}
            )
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        result.statuses[status] += 1
        if status == 200:
            result.admitted_latencies_s.append(time.perf_counter() - started)

    async def closed_loop(self, clients: int, seconds: float) -> PhaseResult:
        result = PhaseResult()
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await self.one(result)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
        return result

    async def open_loop(self, rate_per_s: float, seconds: float, max_in_flight: int) -> PhaseResult:
        result = PhaseResult()
        in_flight: set[asyncio.Task] = set()
        started = time.perf_counter()
        arrivals = int(rate_per_s * seconds)
        for n in range(arrivals):
            delay = started + n / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                result.client_dropped += 1
                continue
            task = asyncio.create_task(self.one(result))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        result.seconds = time.perf_counter() - started
        return result


async def run(url: str, pid: int | None, args: argparse.Namespace) -> dict:
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=args.max_in_flight)
    ) as client:
        domains = (await client.get(f"{url}/domains")).json()["domains"]
        chosen = next((d for d in domains if d["name"] == args.domain), None) if args.domain else domains[0]
        if chosen is None:
            raise SystemExit(
                f"error: unknown domain {args.domain!r}; the bundle serves {[d['name'] for d in domains]}"
            )
        max_batch = (await client.get(f"{url}/model")).json()["max_batch_size"]
        load = Load(client, url, chosen["name"], sample_files(chosen["modalities"], size=args.image_size))
        rss_before = live_service.rss_bytes(pid) if pid else None
        cpu_before = time.process_time()

        log.info("measuring capacity with %d clients for %.0f s", 2 * max_batch, args.capacity_s)
        capacity = await load.closed_loop(2 * max_batch, args.capacity_s)
        capacity_per_s = capacity.statuses[200] / capacity.seconds
        if capacity_per_s <= 0:
            raise SystemExit(
                f"error: no request succeeded while measuring capacity: {dict(capacity.statuses)}"
            )
        target_rate = args.overload * capacity_per_s
        log.info(
            "capacity %.1f req/s; offering %.1f req/s for %.0f s",
            capacity_per_s,
            target_rate,
            args.duration_s,
        )
        overload = await load.open_loop(target_rate, args.duration_s, args.max_in_flight)
        # Near 1.0 the generator itself was saturated and its latencies include its own backlog.
        client_cpu_share = (time.process_time() - cpu_before) / (capacity.seconds + overload.seconds)
        rss_after = live_service.rss_bytes(pid) if pid else None
        ready_after = (await client.get(f"{url}/readyz")).status_code == 200

    unexpected = {
        str(k): v
        for phase in (capacity, overload)
        for k, v in phase.statuses.items()
        if k not in EXPECTED_STATUSES
    }
    return {
        "domain": chosen["name"],
        "max_batch_size": max_batch,
        "capacity": {**capacity.summary(), "clients": 2 * max_batch},
        "overload": {
            **overload.summary(),
            "factor": args.overload,
            "target_per_s": round(target_rate, 1),
            "offered_per_s": round(
                (sum(overload.statuses.values()) + overload.client_dropped) / overload.seconds, 1
            ),
        },
        "service_rss_mb": {
            "before": round(rss_before / 2**20, 1) if rss_before else None,
            "after": round(rss_after / 2**20, 1) if rss_after else None,
        },
        "ready_after": ready_after,
        "client_cpu_share": round(client_cpu_share, 2),
        "unexpected_statuses": unexpected,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    live_service.add_target_arguments(parser)
    parser.add_argument("--pid", type=int, help="with --url: the service's pid, for its RSS")
    parser.add_argument("--domain", help="domain to send (default: the bundle's first)")
    parser.add_argument("--capacity-s", type=float, default=10.0, help="capacity phase length (default 10)")
    parser.add_argument("--duration-s", type=float, default=60.0, help="overload phase length (default 60)")
    parser.add_argument("--overload", type=float, default=4.0, help="offered load / capacity (default 4)")
    parser.add_argument("--max-in-flight", type=int, default=512, help="bound on outstanding requests")
    parser.add_argument(
        "--image-size", type=int, default=64, help="side of the synthetic images (default 64)"
    )
    args = parser.parse_args(argv)
    live_service.configure_logging()
    if (error := live_service.remote_url_error(args.url)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        if args.bundle is not None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unimmad-load-")))
            service = stack.enter_context(live_service.running(args.bundle, tmp / "service.log"))
            url, pid = service.url, service.pid
        else:
            url, pid = args.url, args.pid
        report = asyncio.run(run(url, pid, args))
    print(json.dumps(report, indent=2))
    return 0 if not report["unexpected_statuses"] and report["ready_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
