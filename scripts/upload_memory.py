"""Peak memory of a live service while it decodes huge uploads: concurrent /detect requests of 40 MP TIFFs.

    python scripts/upload_memory.py --bundle bundles/demo                  # starts its own service
    python scripts/upload_memory.py --url http://127.0.0.1:8000 --pid 1234 --requests 8

Every modality of a domain (the one whose uploads are largest once decoded, unless --domain) is sent as a tiled, deflated
TIFF of --megapixels: rgb as 8-bit RGB, gray as 16-bit, depth as an MVTec-3D float32 xyz map (decoded,
12 bytes per pixel). The service's peak RSS is reset (/proc/PID/clear_refs), --requests requests are sent at
once, and the peak growth over the resident size before is reported as JSON with the statuses. Exits 0 when
every request got 200 and the growth stayed under --budget-mb.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import live_service
import numpy as np
import tifffile

log = logging.getLogger("upload_memory")
TILE = 512
# kind -> (channels after the height and width, dtype, photometric, value)
KIND_LAYOUTS = {
    "rgb": ((3,), np.uint8, "rgb", 90),
    "gray": ((), np.uint16, "minisblack", 20_000),
    "depth": ((3,), np.float32, "rgb", 0.5),
}


def huge_tiff(kind: str, height: int, width: int) -> bytes:
    """A ``height x width`` TIFF of ``kind``'s layout, written tile by tile (small on the wire, huge decoded)."""
    channels, dtype, photometric, value = KIND_LAYOUTS[kind]
    tile = np.full((TILE, TILE, *channels), value, dtype=dtype)
    tiles = math.ceil(height / TILE) * math.ceil(width / TILE)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data=(tile for _ in range(tiles)),
        shape=(height, width, *channels),
        dtype=dtype,
        tile=(TILE, TILE),
        compression="zlib",
        photometric=photometric,
    )
    return buffer.getvalue()


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"error: no {field} for pid {pid}")


def reset_peak(pid: int) -> None:
    """Set VmHWM (peak RSS) back to the current RSS (Linux clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def bytes_per_pixel(kind: str) -> int:
    channels, dtype, _, _ = KIND_LAYOUTS[kind]
    return math.prod(channels) * np.dtype(dtype).itemsize


def pick_domain(url: str, wanted: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(domain, [(modality, kind)]): ``wanted`` or the domain whose uploads are largest once decoded."""
    domains = httpx.get(f"{url}/domains", timeout=10.0).json()["domains"]
    by_name = {d["name"]: [(m["name"], m["kind"]) for m in d["modalities"]] for d in domains}
    if wanted is not None and wanted not in by_name:
        raise SystemExit(f"error: unknown domain {wanted!r}; the service has {', '.join(sorted(by_name))}")
    name = wanted or max(by_name, key=lambda d: sum(bytes_per_pixel(kind) for _, kind in by_name[d]))
    return name, by_name[name]


def run(url: str, pid: int, domain: str | None, requests: int, megapixels: float) -> dict:
    name, modalities = pick_domain(url, domain)
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = int(megapixels * 1e6 // width)
    files = {m: (f"{m}.tiff", huge_tiff(kind, height, width), "image/tiff") for m, kind in modalities}
    decoded_bytes = sum(height * width * bytes_per_pixel(kind) for _, kind in modalities)

    def send(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/detect", data={"domain": name, "heatmap": "none"}, files=files, timeout=300.0
        )
        return response.status_code, time.perf_counter() - started

    reset_peak(pid)
    before_kib = memory_kib(pid, "VmRSS")
    with ThreadPoolExecutor(max_workers=requests) as pool:
        answers = list(pool.map(send, range(requests)))
    peak_kib = memory_kib(pid, "VmHWM")
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "domain": name,
        "image": f"{width}x{height} ({width * height / 1e6:.1f} MP) per modality, tiled deflate TIFF",
        "modalities": [f"{m} ({kind})" for m, kind in modalities],
        "upload_kb_per_request": round(sum(len(f[1]) for f in files.values()) / 1024),
        "decoded_mb_per_request_if_held_whole": round(decoded_bytes / 2**20),
        "concurrent_requests": requests,
        "statuses": statuses,
        "seconds_max": round(max(seconds for _, seconds in answers), 2),
        "rss_before_mb": round(before_kib / 1024),
        "peak_rss_mb": round(peak_kib / 1024),
        "peak_growth_mb": round((peak_kib - before_kib) / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    live_service.add_target_arguments(parser)
    parser.add_argument("--pid", type=int, help="process id of the --url service (its memory is read)")
    parser.add_argument("--domain", help="domain to send (default: the one with the most modalities)")
    parser.add_argument("--requests", type=int, default=4, help="requests sent at once (default 4)")
    parser.add_argument("--megapixels", type=float, default=39.9, help="per image (default 39.9)")
    parser.add_argument("--budget-mb", type=float, default=1024.0, help="allowed peak growth (default 1024)")
    args = parser.parse_args(argv)
    live_service.configure_logging()
    if (error := live_service.remote_url_error(args.url)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.url is not None and args.pid is None:
        print("error: --url needs --pid (the service's memory is read from /proc)", file=sys.stderr)
        return 2
    if args.url is not None:
        report = run(args.url, args.pid, args.domain, args.requests, args.megapixels)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="unimmad-upload-memory-") as tmp,
            live_service.running(args.bundle, Path(tmp) / "service.log") as service,
        ):
            report = run(service.url, service.pid, args.domain, args.requests, args.megapixels)
    report["budget_mb"] = args.budget_mb
    print(json.dumps(report, indent=2))
    within = report["peak_growth_mb"] <= args.budget_mb
    return 0 if report["statuses"] == {"200": args.requests} and within else 1


if __name__ == "__main__":
    sys.exit(main())
