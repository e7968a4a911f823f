"""Schemathesis fuzzes every operation of the served OpenAPI document: no input may cause a 5xx.

Forms generated from the schema alone almost never name a domain's exact modality set, so they stop at
the form checks. A second run fills the right file fields of a real domain with hostile bytes (noise,
and valid PNG/JPEG/TIFF/BMP/.npy files truncated or overwritten) so the decoders are fuzzed too.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from service_helpers import RGB_DOMAIN, npy_bytes, pillow_bytes

MAX_EXAMPLES = 25
DECODE_EXAMPLES = 60
CHECKS = [not_a_server_error, response_schema_conformance]
FUZZ_SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb")
    return buffer.getvalue()


def _seed_files() -> list[bytes]:
    """Small valid files of every supported format, the starting points for mutation."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 1.0, (8, 8)).astype(np.float32)
    return [
        pillow_bytes(rgb, "PNG"),
        pillow_bytes(rng.integers(0, 65536, (8, 8), dtype=np.uint16), "PNG"),
        pillow_bytes(rgb, "JPEG"),
        pillow_bytes(rgb, "BMP"),
        _tiff(np.dstack([depth, depth, depth])),  # MVTec-3D style xyz
        npy_bytes(depth),
        npy_bytes(np.full((2, 2), np.nan, dtype=np.float32)),
    ]


SEED_FILES = _seed_files()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(SEED_FILES))
    at = draw(st.integers(1, len(seed) - 1))
    if draw(st.booleans()):
        return seed[:at]
    patch = draw(st.binary(min_size=1, max_size=16))
    return seed[:at] + patch + seed[at + len(patch) :]


# Intact seeds keep whole-domain forms decodable often enough to reach preprocessing and inference too.
hostile_file = st.one_of(
    st.binary(min_size=1, max_size=64), st.sampled_from(SEED_FILES), _mutated(), _mutated()
)


def _served_schema(client):
    return schemathesis.openapi.from_dict(client.get("/openapi.json").json())


def test_no_server_errors_under_fuzzing(client) -> None:
    operations = [result.ok() for result in _served_schema(client).get_all_operations()]
    assert {op.path for op in operations} >= {
        "/detect",
        "/domains",
        "/model",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES)
        def fuzz(case) -> None:
            response = client.request(**case.as_transport_kwargs(base_url="http://testserver"))
            case.validate_response(response, checks=CHECKS)

        fuzz()


def test_no_server_errors_when_decoders_get_hostile_files(client) -> None:
    detect = _served_schema(client)["/detect"]["POST"]
    domains = {
        d["name"]: [m["name"] for m in d["modalities"]] for d in client.get("/domains").json()["domains"]
    }
    statuses: set[int] = set()

    @st.composite
    def detect_forms(draw: st.DrawFn) -> dict[str, str | bytes]:
        domain = draw(st.sampled_from(sorted(domains)))
        files = {name: draw(hostile_file) for name in domains[domain]}
        return {"domain": domain, "heatmap": draw(st.sampled_from(["none", "png"])), **files}

    @given(form=detect_forms())
    @settings(FUZZ_SETTINGS, max_examples=DECODE_EXAMPLES)
    def fuzz(form: dict[str, str | bytes]) -> None:
        case = detect.Case(body=form, media_type="multipart/form-data")
        response = client.request(**case.as_transport_kwargs(base_url="http://testserver"))
        case.validate_response(response, checks=CHECKS)
        statuses.add(response.status_code)
        # A 422 naming a form field would mean the bytes never reached a decoder.
        if response.status_code == 422:
            assert response.json()["error"]["code"] not in {
                "missing_modality",
                "not_a_file",
                "unexpected_modality",
            }

    fuzz()
    # Hostile bytes must be refused for what they are, not by the form checks.
    assert statuses & {413, 415, 422}, statuses


@pytest.mark.parametrize("seed", SEED_FILES[:-1], ids=["png8", "png16", "jpeg", "bmp", "tiff_xyz", "npy"])
def test_every_seed_file_is_accepted_unmodified(client, seed: bytes) -> None:
    """The mutation seeds must be valid uploads, or the fuzzing above would only test rejection."""
    response = client.post(
        "/detect",
        data={"domain": RGB_DOMAIN, "heatmap": "none"},
        files={"rgb": ("upload", seed, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
