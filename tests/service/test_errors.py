"""Every bad input gets a 4xx with {"error": {"code", "message"}}; a real fault is a 500 and the process lives on."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import (
    RGB_DEPTH_DOMAIN,
    RGB_DOMAIN,
    RGB_INFRARED_DEPTH_DOMAIN,
    make_settings,
    npy_bytes,
    png_bytes,
    uploads,
    wait_ready,
)

from service import create_app


def _expect(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and "\n" not in error["message"]
    return error["message"]


def _rgb_depth(client, **files):
    """A valid rgb + depth request with some files replaced."""
    return client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN}, files=uploads(RGB_DEPTH_DOMAIN) | files)


def _huge_png(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of zeros: tiny on the wire, ``width*height`` pixels once decoded."""
    raw = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_unknown_domain(client) -> None:
    misspelt = RGB_DOMAIN.replace("tiles", "tyles")
    message = _expect(
        client.post("/detect", data={"domain": misspelt}, files=uploads(RGB_DOMAIN)), 422, "unknown_domain"
    )
    assert RGB_DOMAIN in message


def test_no_domain_and_no_domain_taking_the_files(client) -> None:
    """Without `domain`, some domain must take exactly the uploaded modalities."""
    files = {"thermal": uploads(RGB_DOMAIN)["rgb"]}
    message = _expect(client.post("/detect", files=files), 422, "no_matching_domain")
    assert "thermal" in message


def test_missing_modality(client) -> None:
    message = _expect(
        client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN}, files=uploads(RGB_DOMAIN)),
        422,
        "missing_modality",
    )
    assert "depth" in message


def test_extra_modality(client) -> None:
    files = uploads(RGB_DOMAIN) | {"infrared": uploads(RGB_INFRARED_DEPTH_DOMAIN)["infrared"]}
    message = _expect(
        client.post("/detect", data={"domain": RGB_DOMAIN}, files=files), 422, "unexpected_modality"
    )
    assert "infrared" in message


def test_duplicated_modality(client) -> None:
    rgb = uploads(RGB_DOMAIN)["rgb"]
    response = client.post("/detect", data={"domain": RGB_DOMAIN}, files=[("rgb", rgb), ("rgb", rgb)])
    _expect(response, 422, "duplicated_modality")


def test_modality_sent_as_text(client) -> None:
    # A part without a filename is a text field; nothing else is wrong with the request.
    response = client.post(
        "/detect", files=[("domain", (None, RGB_DOMAIN.encode())), ("rgb", (None, b"not a file"))]
    )
    assert "rgb" in _expect(response, 422, "not_a_file")


def test_invalid_heatmap_mode(client) -> None:
    response = client.post(
        "/detect", data={"domain": RGB_DOMAIN, "heatmap": "jpeg"}, files=uploads(RGB_DOMAIN)
    )
    _expect(response, 422, "invalid_heatmap")


def test_empty_file(client) -> None:
    _expect(_rgb_depth(client, rgb=("rgb.png", b"", "image/png")), 422, "empty_file")


def test_non_image_bytes(client) -> None:
    _expect(
        _rgb_depth(client, rgb=("rgb.png", b"hello, this is text", "image/png")), 415, "unsupported_format"
    )


def test_truncated_png(client) -> None:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    message = _expect(
        _rgb_depth(client, rgb=("rgb.png", data[: len(data) // 2], "image/png")), 422, "truncated_image"
    )
    assert message.startswith("rgb")


def test_unreadable_tiff(client) -> None:
    _expect(
        _rgb_depth(client, depth=("d.tiff", b"II*\0" + b"\xff" * 64, "image/tiff")), 422, "unreadable_tiff"
    )


def test_nan_in_rgb_array(client) -> None:
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    image[0, 0, 0] = np.nan
    _expect(
        _rgb_depth(client, rgb=("rgb.npy", npy_bytes(image), "application/octet-stream")),
        422,
        "non_finite_values",
    )


def test_bad_array_rank(client) -> None:
    _expect(
        _rgb_depth(client, depth=("d.npy", npy_bytes(np.ones(16, np.float32)), "application/octet-stream")),
        422,
        "bad_array_rank",
    )


def test_bad_array_dtype(client) -> None:
    _expect(
        _rgb_depth(
            client, depth=("d.npy", npy_bytes(np.ones((4, 4), np.complex64)), "application/octet-stream")
        ),
        422,
        "bad_array_dtype",
    )


def test_wrong_content_type(client) -> None:
    _expect(client.post("/detect", json={"domain": RGB_DOMAIN}), 415, "unsupported_media_type")
    _expect(client.post("/detect", data={"domain": RGB_DOMAIN}), 415, "unsupported_media_type")


def test_unknown_route_and_method(client) -> None:
    _expect(client.get("/nowhere"), 404, "not_found")
    _expect(client.get("/detect"), 405, "method_not_allowed")


@pytest.fixture()
def limited_client(tiny_bundle):
    settings = make_settings(tiny_bundle, max_upload_bytes=32_768, max_pixels=100_000)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def test_decompression_bomb_is_refused_before_decoding(limited_client) -> None:
    bomb = _huge_png(4000, 4000)
    assert len(bomb) < 32_768  # small on the wire, 16 Mpx decoded
    _expect(_rgb_depth(limited_client, rgb=("rgb.png", bomb, "image/png")), 413, "too_many_pixels")


def test_file_over_upload_limit(limited_client) -> None:
    big = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    _expect(_rgb_depth(limited_client, rgb=("rgb.png", png_bytes(big), "image/png")), 413, "file_too_large")


def test_body_over_limit_is_cut_while_streaming(limited_client) -> None:
    def chunks():
        boundary = b'--b\r\nContent-Disposition: form-data; name="rgb"; filename="x"\r\n\r\n'
        yield boundary
        for _ in range(100):
            yield b"\0" * 8192

    response = limited_client.post(
        "/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    _expect(response, 413, "payload_too_large")


def test_server_fault_is_500_and_service_survives(tiny_bundle) -> None:
    # As a real server does: answer the fault instead of re-raising it into the test.
    with TestClient(create_app(make_settings(tiny_bundle)), raise_server_exceptions=False) as client:
        wait_ready(client)
        _assert_fault_then_recovery(client)


def _assert_fault_then_recovery(client: TestClient) -> None:
    engine = client.app.state.runtime.engine
    original = engine.run

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    engine.run = broken
    try:
        _expect(_rgb_depth(client), 500, "internal_error")
    finally:
        engine.run = original
    assert _rgb_depth(client).status_code == 200
