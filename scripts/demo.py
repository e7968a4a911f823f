"""`make demo`: the whole product on the embedded synthetic data, end to end, on a laptop CPU.

Stages (each prints its own progress): train the lite preset for a few minutes -> evaluate -> export a bundle
with frozen routing -> verify it -> start the torch-free service -> POST /detect for a normal and a defective
sample of every synthetic modality set -> save heatmap overlays under demo_out/ -> print a summary -> stop.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import live_service  # scripts/ is on sys.path when this file runs as a script
import numpy as np
from PIL import Image

from model.data import parse_data_spec

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300


def run_stage(title: str, command: list[str], stdout_path: Path | None = None) -> None:
    """Run one CLI stage with its progress on the terminal; any failure stops the demo with its exit code."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(stdout_path, "w") if stdout_path else open(os.devnull, "w") as sink:
        result = subprocess.run(command, cwd=ROOT, stdout=sink if stdout_path else None, check=False)
    if result.returncode != 0:
        sys.exit(f"demo: stage '{title}' failed with exit code {result.returncode}")
    print(f"--- {title}: done in {time.perf_counter() - started:.0f} s", flush=True)


def encode_upload(array: np.ndarray) -> tuple[str, bytes, str]:
    """A modality array as the file a client would send: 8-bit images as PNG, float maps as .npy."""
    if array.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return "array.npy", buffer.getvalue(), "application/octet-stream"


def pick_demo_samples(source) -> list:
    """One normal and one defective test sample per domain, plus one defect per modality that shows it."""
    picked = []
    for domain in source.domains():
        refs = source.refs("test", domain.name)
        samples = [source.load(ref) for ref in refs]
        normal = next(sample for sample in samples if sample.label == 0)
        picked.append(normal)
        seen: set[str] = set()
        for sample in samples:
            where = sample.meta.get("defect_modality")
            if sample.label == 1 and where not in seen:
                seen.add(where)
                picked.append(sample)
    return picked


def detect(client: httpx.Client, base_url: str, sample) -> tuple[dict, float]:
    files = [(name, encode_upload(array)) for name, array in sample.modalities.items()]
    started = time.perf_counter()
    response = client.post(
        f"{base_url}/detect", data={"domain": sample.domain, "heatmap": "overlay"}, files=files, timeout=60
    )
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        sys.exit(f"demo: /detect answered {response.status_code}: {response.text[:300]}")
    return response.json(), latency_ms


def save_heatmaps(result: dict, sample, out_dir: Path) -> None:
    """Decode the base64 PNG heatmaps of one answer (fused and per modality) into files a person can open."""
    heatmaps = result.get("heatmaps") or {}
    stem = sample.id.replace("/", "_")
    images = {"fused": heatmaps.get("fused"), **(heatmaps.get("modalities") or {})}
    for name, encoded in images.items():
        if encoded:
            (out_dir / f"{stem}_{name}.png").write_bytes(base64.b64decode(encoded))


def serve_and_query(args: argparse.Namespace, bundle: Path, out_dir: Path) -> list[dict]:
    """Start the torch-free service on the bundle, send every demo sample, stop it; one summary row each."""
    print(f"\n=== serve: {args.serve_python} -m service --bundle {bundle}", flush=True)
    heatmap_dir = out_dir / "heatmaps"
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    source = parse_data_spec("synthetic")[0]
    rows = []
    log_path = out_dir / "service.log"
    with live_service.running(
        bundle, log_path, ready_timeout_s=READY_TIMEOUT_S, python=args.serve_python
    ) as service:
        print(f"--- service ready at {service.url} (log: {log_path})", flush=True)
        with httpx.Client() as client:
            domains = client.get(f"{service.url}/domains", timeout=30.0).json()["domains"]
            graph_of = {domain["name"]: domain["graph"] for domain in domains}
            for sample in pick_demo_samples(source):
                result, latency_ms = detect(client, service.url, sample)
                save_heatmaps(result, sample, heatmap_dir)
                rows.append(
                    {
                        "sample": sample.id,
                        "modalities": "+".join(sample.modalities),
                        "graph": graph_of[sample.domain],
                        "truth": "defect in " + sample.meta["defect_modality"] if sample.label else "normal",
                        "score": result["image_score"],
                        "normalized": result["normalized_score"],
                        "threshold": result["threshold"],
                        "decision": "ANOMALY" if result["is_anomalous"] else "normal",
                        "latency_ms": latency_ms,
                    }
                )
    return rows


def print_summary(rows: list[dict]) -> None:
    header = (
        f"{'sample':32} {'modalities':20} {'graph':8} {'truth':20} {'score':>8} {'thresh':>8} {'norm':>5} "
        f"{'decision':9} {'ms':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(
            f"{row['sample']:32} {row['modalities']:20} {row['graph']:8} {row['truth']:20} {row['score']:8.4f} "
            f"{row['threshold']:8.4f} {row['normalized']:5.2f} {row['decision']:9} {row['latency_ms']:7.1f}"
        )
    correct = sum((row["decision"] == "ANOMALY") == (row["truth"] != "normal") for row in rows)
    print(f"\n{correct}/{len(rows)} decisions match the ground truth")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/demo", help="training run directory (default: runs/demo)")
    parser.add_argument("--bundle", default="bundles/demo", help="bundle directory (default: bundles/demo)")
    parser.add_argument("--out", default="demo_out", help="where heatmaps and reports go (default: demo_out)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=6.0,
        help="training budget; the schedule is sized to it and ends annealed (default: 6)",
    )
    parser.add_argument(
        "--serve-python", default=sys.executable, help="python of the torch-free serving venv"
    )
    args = parser.parse_args()

    python = sys.executable
    out_dir = ROOT / args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir, bundle = ROOT / args.run, ROOT / args.bundle
    demo_started = time.perf_counter()

    shutil.rmtree(run_dir, ignore_errors=True)
    run_stage(
        "train (lite preset, synthetic data)",
        [
            python,
            "-m",
            "model",
            "train",
            "--preset",
            "lite",
            "--data",
            "synthetic",
            "--out",
            str(run_dir),
            "--max-minutes",
            str(args.minutes),
        ],
    )
    run_stage(
        "evaluate",
        [
            python,
            "-m",
            "model",
            "evaluate",
            "--checkpoint",
            str(run_dir),
            "--data",
            "synthetic",
            "--out",
            str(out_dir / "evaluation"),
        ],
    )
    shutil.rmtree(bundle, ignore_errors=True)
    run_stage(
        "export (frozen routing per domain)",
        [
            python,
            "-m",
            "export",
            "bundle",
            "--checkpoint",
            str(run_dir),
            "--out",
            str(bundle),
            "--data",
            "synthetic",
        ],
    )
    run_stage(
        "verify (parity, frozen-vs-per-sample accuracy and false-positive rates on test; domains whose frozen "
        "graph strays from per-sample routing on the held-out normals fall back to it)",
        [
            python,
            "-m",
            "export",
            "verify",
            str(bundle),
            "--checkpoint",
            str(run_dir),
            "--data",
            "synthetic",
            "--fallback",
            "--json",
        ],
        stdout_path=out_dir / "verify.json",
    )
    rows = serve_and_query(args, bundle, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    last = ROOT / "bundles" / "last"
    if last.is_symlink() or last.exists():
        last.unlink()
    last.symlink_to(bundle.resolve())
    print_summary(rows)
    print(f"\nheatmaps: {out_dir / 'heatmaps'}  verify report: {out_dir / 'verify.json'}")
    print(
        f"demo finished in {(time.perf_counter() - demo_started) / 60:.1f} min; `make serve` serves {bundle}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
