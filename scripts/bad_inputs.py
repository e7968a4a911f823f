"""Bad-input corpus: generate malformed requests, send them to a live service, expect 4xx JSON for each.

    python scripts/bad_inputs.py --bundle bundles/demo          # starts its own service on 127.0.0.1
    python scripts/bad_inputs.py --url http://127.0.0.1:8000 --max-upload-bytes 33554432 --max-pixels 40000000

Every answer must carry the status its case expects (a 4xx) and a JSON body {"error": {"code", "message"}};
afterwards /readyz must still be ready and a good request must still score. Prints a table; exits 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import live_service
import numpy as np
from PIL import Image

log = logging.getLogger("bad_inputs")

Files = list[tuple[str, tuple[str, bytes, str]]]


@dataclass(frozen=True)
class Target:
    """What the corpus needs to know about the live service."""

    url: str
    single: str  # a domain with one `rgb` modality
    pair: tuple[str, list[str]]  # a domain with at least two modalities, and their names
    max_upload_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class BadRequest:
    kind: str
    expected_status: int
    send: Callable[[httpx.Client, Target], httpx.Response]


def png(size: tuple[int, int] = (32, 32), mode: str = "RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90 if mode in {"L", "1"} else (90, 120, 30)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` 1-bit pixels, with one tiny IDAT (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def one_file(content: bytes, field: str = "rgb", mime: str = "application/octet-stream") -> Files:
    return [(field, ("sample.bin", content, mime))]


def post(
    files: Files, domain: str | None = "single", **form: str
) -> Callable[[httpx.Client, Target], httpx.Response]:
    """A multipart POST /detect; ``domain="single"``/``"pair"`` picks the target's domain of that kind."""

    def send(client: httpx.Client, target: Target) -> httpx.Response:
        fields = dict(form)
        if domain is not None:
            fields["domain"] = {"single": target.single, "pair": target.pair[0]}.get(domain, domain)
        # Text fields as file-less parts keep the body multipart even when no file is sent.
        parts = [(name, (None, value.encode())) for name, value in fields.items()] + files
        return client.post(f"{target.url}/detect", files=parts)

    return send


def post_lazy(
    build: Callable[[Target], Files], pair: bool = False
) -> Callable[[httpx.Client, Target], httpx.Response]:
    """Like :func:`post` for files built from the service's limits or the pair domain's modality names."""

    def send(client: httpx.Client, target: Target) -> httpx.Response:
        domain = target.pair[0] if pair else target.single
        return client.post(f"{target.url}/detect", data={"domain": domain}, files=build(target))

    return send


def raw(method: str, path: str, content: bytes = b"", content_type: str | None = None):
    def send(client: httpx.Client, target: Target) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return client.request(method, f"{target.url}{path}", content=content, headers=headers)

    return send


def pair_missing_one(target: Target) -> Files:
    return one_file(png(), target.pair[1][0])


def pair_duplicated(target: Target) -> Files:
    return [(name, ("a.png", png(), "image/png")) for name in target.pair[1]] + one_file(
        png(), target.pair[1][0]
    )


def oversize_upload(target: Target) -> Files:
    return one_file(png() + b"\x00" * (target.max_upload_bytes + 1))


def too_many_pixels(target: Target) -> Files:
    side = int(target.max_pixels**0.5) + 16
    return one_file(png((side, side), mode="1"))


def decompression_bomb(target: Target) -> Files:
    return one_file(png_header_only(60_000, 60_000))


_GOOD_PNG = png()
CORPUS: list[BadRequest] = [
    BadRequest("unknown domain", 422, post(one_file(_GOOD_PNG), domain="no/such-domain")),
    BadRequest("no domain, none takes the field", 422, post(one_file(_GOOD_PNG, "thermal"), domain=None)),
    BadRequest("empty domain", 422, post(one_file(_GOOD_PNG), domain="")),
    BadRequest("missing modality", 422, post_lazy(pair_missing_one, pair=True)),
    BadRequest("extra modality", 422, post(one_file(_GOOD_PNG) + one_file(_GOOD_PNG, "depth"))),
    BadRequest("unknown modality field", 422, post(one_file(_GOOD_PNG) + one_file(_GOOD_PNG, "xray"))),
    BadRequest("duplicated modality", 422, post_lazy(pair_duplicated, pair=True)),
    BadRequest("no files at all", 422, post([], heatmap="none")),
    BadRequest("modality sent as a text field", 422, post([], rgb="not a file")),
    BadRequest("empty file", 422, post(one_file(b""))),
    BadRequest("non-image bytes", 415, post(one_file(b"hello, this is plain text\n" * 20))),
    BadRequest("HTML disguised as PNG (mime)", 415, post(one_file(b"<html></html>", mime="image/png"))),
    BadRequest("truncated PNG", 422, post(one_file(_GOOD_PNG[: len(_GOOD_PNG) // 2]))),
    BadRequest("PNG header only", 422, post(one_file(_GOOD_PNG[:8]))),
    BadRequest("corrupted PNG data", 422, post(one_file(_GOOD_PNG[:40] + b"\xff" * 40 + _GOOD_PNG[80:]))),
    BadRequest("truncated JPEG", 422, post(one_file(jpeg()[:120]))),
    BadRequest("unreadable TIFF", 422, post(one_file(b"II*\x00" + b"\x08\x00\x00\x00" + b"\xff" * 64))),
    BadRequest("decompression bomb PNG", 413, post_lazy(decompression_bomb)),
    BadRequest("over max pixels", 413, post_lazy(too_many_pixels)),
    BadRequest("oversize upload", 413, post_lazy(oversize_upload)),
    BadRequest("NaN in rgb array", 422, post(one_file(npy(np.full((32, 32, 3), np.nan, np.float32))))),
    BadRequest("inf in rgb array", 422, post(one_file(npy(np.full((32, 32, 3), np.inf, np.float32))))),
    BadRequest("array of rank 4", 422, post(one_file(npy(np.zeros((2, 32, 32, 3), np.float32))))),
    BadRequest("array of rank 1", 422, post(one_file(npy(np.zeros(1024, np.float32))))),
    BadRequest("zero-size array", 422, post(one_file(npy(np.zeros((0, 32), np.float32))))),
    BadRequest("complex array", 422, post(one_file(npy(np.zeros((32, 32), np.complex64))))),
    BadRequest("object (pickle) array", 422, post(one_file(npy(np.array([{"a": 1}], dtype=object))))),
    BadRequest("truncated npy header", 422, post(one_file(npy(np.zeros((32, 32), np.float32))[:20]))),
    BadRequest("unknown heatmap mode", 422, post(one_file(_GOOD_PNG), heatmap="jpeg")),
    BadRequest("JSON body", 415, raw("POST", "/detect", b'{"domain": "x"}', "application/json")),
    BadRequest(
        "urlencoded body", 415, raw("POST", "/detect", b"domain=x", "application/x-www-form-urlencoded")
    ),
    BadRequest("multipart without boundary", 400, raw("POST", "/detect", b"--x\r\n", "multipart/form-data")),
    BadRequest(
        "malformed multipart",
        400,
        raw(
            "POST",
            "/detect",
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
            "multipart/form-data; boundary=b",
        ),
    ),
    BadRequest(
        "too many form parts", 400, post([("rgb", (f"{i}.png", _GOOD_PNG, "image/png")) for i in range(40)])
    ),
    BadRequest("GET on /detect", 405, raw("GET", "/detect")),
    BadRequest("unknown route", 404, raw("GET", "/no-such-route")),
]


@dataclass
class Verdict:
    kind: str
    expected_status: int
    status: int
    code: str
    passed: bool


def judge(bad: BadRequest, response: httpx.Response) -> Verdict:
    """Passed: the case's expected status and an error JSON body."""
    try:
        error = response.json()["error"]
        code, json_ok = str(error["code"]), bool(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        code, json_ok = "(not an error JSON)", False
    passed = response.status_code == bad.expected_status and json_ok
    return Verdict(bad.kind, bad.expected_status, response.status_code, code, passed)


def discover(url: str, max_upload_bytes: int, max_pixels: int) -> Target:
    domains = httpx.get(f"{url}/domains", timeout=10.0).json()["domains"]
    names = {d["name"]: [m["name"] for m in d["modalities"]] for d in domains}
    single = next((d for d, mods in names.items() if mods == ["rgb"]), None)
    pair = next(((d, mods) for d, mods in names.items() if len(mods) >= 2), None)
    if single is None or pair is None:
        raise SystemExit(
            "error: the bundle needs a domain with only `rgb` and one with two or more modalities"
        )
    return Target(url, single, pair, max_upload_bytes, max_pixels)


def good_request_scores(client: httpx.Client, target: Target) -> bool:
    response = post(one_file(_GOOD_PNG, mime="image/png"), heatmap="none")(client, target)
    return response.status_code == 200 and "image_score" in response.json()


def run_corpus(target: Target) -> tuple[list[Verdict], bool]:
    """Send every bad request, then check that the service is still ready and still scores."""
    with httpx.Client(timeout=30.0) as client:
        verdicts = [judge(bad, bad.send(client, target)) for bad in CORPUS]
        healthy = client.get(f"{target.url}/readyz").status_code == 200 and good_request_scores(
            client, target
        )
    return verdicts, healthy


def print_table(verdicts: list[Verdict], healthy: bool) -> None:
    width = max(len(v.kind) for v in verdicts)
    print(f"{'bad input':<{width}}  expected  status  result  error code")
    for v in verdicts:
        result = "PASS" if v.passed else "FAIL"
        print(f"{v.kind:<{width}}  {v.expected_status:<8}  {v.status:<6}  {result:<6}  {v.code}")
    passed = sum(v.passed for v in verdicts)
    print(
        f"\n{passed}/{len(verdicts)} kinds answered their expected 4xx with an error JSON; "
        f"service ready and scoring afterwards: {healthy}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    live_service.add_target_arguments(parser)
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=1 << 20,
        help="UNIMMAD_MAX_UPLOAD_BYTES of the service (set on the one --bundle starts)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=1_000_000,
        help="UNIMMAD_MAX_PIXELS of the service (set on the one --bundle starts)",
    )
    args = parser.parse_args(argv)
    live_service.configure_logging()
    if (error := live_service.remote_url_error(args.url)) is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.url is not None:
        verdicts, healthy = run_corpus(discover(args.url, args.max_upload_bytes, args.max_pixels))
    else:
        limits = {
            "UNIMMAD_MAX_UPLOAD_BYTES": str(args.max_upload_bytes),
            "UNIMMAD_MAX_PIXELS": str(args.max_pixels),
        }
        with tempfile.TemporaryDirectory(prefix="unimmad-bad-inputs-") as tmp:
            with live_service.running(args.bundle, Path(tmp) / "service.log", limits) as service:
                log.info("service ready at %s", service.url)
                verdicts, healthy = run_corpus(discover(service.url, args.max_upload_bytes, args.max_pixels))
                still_running = service.process.poll() is None
            healthy = healthy and still_running
    print_table(verdicts, healthy)
    return 0 if healthy and all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
