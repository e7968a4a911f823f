"""Fault checks: a broken bundle stops `python -m service` with one clear line (also when it only fails at
warm-up); readiness waits for warm-up.

    python scripts/fault_checks.py --bundle bundles/demo

Each broken bundle is a copy of --bundle in a temporary folder (the original is never touched). The
script prints a table and exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import live_service

log = logging.getLogger("fault_checks")


@dataclass
class Outcome:
    case: str
    passed: bool
    detail: str


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _garble_onnx(bundle: Path) -> None:
    model = bundle / "model.onnx"
    model.write_bytes(b"\x08\x07garbage, not a protobuf" + model.read_bytes()[: model.stat().st_size // 3])


def _garble_onnx_keep_checksum(bundle: Path) -> None:
    """Corrupt the graph and record its new checksum, so the failure must come from ONNX parsing itself."""
    _garble_onnx(bundle)
    with (bundle / "model.onnx").open("rb") as model:
        sha = hashlib.file_digest(model, "sha256").hexdigest()
    _edit_manifest(bundle, lambda m: m["graphs"]["frozen"].update(sha256=sha))


# name -> how to break a copy of the bundle (None: point the service at a folder that does not exist)
BROKEN_BUNDLES: dict[str, Callable[[Path], None] | None] = {
    "missing bundle": None,
    "corrupt ONNX (checksum mismatch)": _garble_onnx,
    "corrupt ONNX (checksum updated)": _garble_onnx_keep_checksum,
    "manifest format_version mismatch": lambda b: _edit_manifest(b, lambda m: m.update(format_version=999)),
    "manifest is not JSON": lambda b: (b / "manifest.json").write_text("{ not json", encoding="utf-8"),
    "graph file missing": lambda b: (b / "model.onnx").unlink(),
    # Loads, then fails its first run: the warm-up failure must stop the process, not leave it "healthy".
    "manifest input_size disagrees with the graphs": lambda b: _edit_manifest(
        b, lambda m: m.update(input_size=m["input_size"] + 8)
    ),
}


def check_startup_failure(case: str, bundle: Path, workdir: Path, timeout_s: float) -> Outcome:
    """The process must exit by itself, non-zero, with exactly one line on stderr and no traceback."""
    target = workdir / case.replace(" ", "_").replace("(", "").replace(")", "")
    breaker = BROKEN_BUNDLES[case]
    if breaker is not None:
        shutil.copytree(bundle, target)
        breaker(target)
    port = live_service.free_port()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "service",
                "--bundle",
                str(target),
                "--host",
                live_service.LOOPBACK,
                "--port",
                str(port),
            ],
            cwd=live_service.REPO,
            env=live_service.child_env(),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Outcome(case, False, f"still running after {timeout_s:.0f} s")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    first = lines[0] if lines else "(no message)"
    passed = result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr
    return Outcome(case, passed, f"exit {result.returncode}, {len(lines)} line(s): {first[:140]}")


def _warmup_done_at(service: live_service.LiveService) -> float | None:
    for line in service.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("message") == "warm-up done":
            return datetime.fromisoformat(record["time"]).timestamp()
    return None


def check_readiness(bundle: Path, workdir: Path, timeout_s: float, max_batch_size: int) -> Outcome:
    """Poll /readyz from the moment the port answers: 503 until the "warm-up done" log line, then 200."""
    case = "/readyz waits for warm-up"
    service = live_service.start(
        bundle, workdir / "readiness.log", {"UNIMMAD_MAX_BATCH_SIZE": str(max_batch_size)}
    )
    answers: list[tuple[float, int, str]] = []
    try:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline and service.process.poll() is None:
                try:
                    response = client.get(f"{service.url}/readyz")
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
                answers.append((time.time(), response.status_code, code))
                if response.status_code == 200:
                    break
                time.sleep(0.05)
        time.sleep(0.2)  # let the log line reach the file
        warm_at = _warmup_done_at(service)
    finally:
        live_service.stop(service)
    if not answers or answers[-1][1] != 200 or warm_at is None:
        return Outcome(case, False, f"never ready within {timeout_s:.0f} s ({len(answers)} answers)")
    early = [a for a in answers if a[0] < warm_at]
    wrong = [a for a in early if (a[1], a[2]) != (503, "not_ready")] + [
        a for a in answers if a[1] == 200 and a[0] < warm_at
    ]
    detail = f"{len(early)} x 503 not_ready during warm-up, then 200 ({max_batch_size} batch sizes warmed)"
    return Outcome(case, not wrong, detail if not wrong else f"answered {wrong[0][1]} before warm-up ended")


def print_table(outcomes: list[Outcome]) -> None:
    width = max(len(o.case) for o in outcomes)
    print(f"{'check':<{width}}  result  detail")
    for outcome in outcomes:
        print(f"{outcome.case:<{width}}  {'PASS' if outcome.passed else 'FAIL':<6}  {outcome.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True, help="a good bundle to copy and break")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="bound on each start-up (default 180)")
    parser.add_argument(
        "--warmup-batch",
        type=int,
        default=16,
        help="UNIMMAD_MAX_BATCH_SIZE for the readiness check: more shapes, longer warm-up (default 16)",
    )
    args = parser.parse_args(argv)
    live_service.configure_logging()
    if not (args.bundle / "manifest.json").is_file():
        print(f"error: {args.bundle} is not a bundle (no manifest.json)", file=sys.stderr)
        return 2
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="unimmad-faults-") as tmp:
        workdir = Path(tmp)
        for case in BROKEN_BUNDLES:
            log.info("checking %s", case)
            outcomes.append(check_startup_failure(case, args.bundle, workdir, args.timeout_s))
        log.info("checking readiness during warm-up")
        outcomes.append(check_readiness(args.bundle, workdir, args.timeout_s, args.warmup_batch))
    print_table(outcomes)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
