"""POST /detect without a domain, out-of-distribution samples, missing sensors, and format 2 bundles.

The tiny bundle has one domain per modality set; the subset bundle (tests/conftest.py) has parts and
boards, both taking rgb + depth once the boards' calibrated rgb + depth subset is allowed. In-distribution
uploads are training scenes of the bundles' data (the signature statistics were fitted on them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import (
    RGB_DEPTH_DOMAIN,
    RGB_DOMAIN,
    RGB_INFRARED_DEPTH_DOMAIN,
    as_format_2,
    copy_bundle,
    make_settings,
    npy_bytes,
    png_bytes,
    rewrite_manifest,
    wait_ready,
)

from bundle import load_bundle
from model.data.synthetic import SyntheticConfig, generate
from service import Settings, create_app

TINY_SIZE = 64


def training_uploads(domain: str, index: int = 0, names: tuple[str, ...] | None = None) -> dict:
    """Training scene `index` of a synthetic domain (as the tiny bundles were fitted on) as /detect files."""
    scene = generate(domain, "train", index, None, SyntheticConfig(size=TINY_SIZE))
    files = {}
    for spec in scene.specs:
        if names is not None and spec.name not in names:
            continue
        array = scene.modalities[spec.name]
        if spec.kind == "depth":
            files[spec.name] = (f"{spec.name}.npy", npy_bytes(array), "application/octet-stream")
        else:
            files[spec.name] = (f"{spec.name}.png", png_bytes(array), "image/png")
    return files


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


@pytest.fixture()
def make_client() -> Iterator:
    """Ready clients on any bundle and settings, closed at the end of the test."""
    opened = []

    def make(bundle: Path, **settings) -> TestClient:
        client = TestClient(create_app(make_settings(bundle, **settings)))
        opened.append(client.__enter__())
        wait_ready(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def test_the_domain_is_inferred_when_left_out(client) -> None:
    response = client.post("/detect", data={"heatmap": "none"}, files=training_uploads(RGB_DOMAIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["domain"], body["domain_inferred"], body["out_of_distribution"]) == (RGB_DOMAIN, True, False)
    assert body["domain_match"]["distance"] <= 1
    # The only domain of the bundle taking rgb alone: nothing to confuse it with.
    assert body["domain_match"]["nearest_other"] is None and body["domain_match"]["confidence"] == 1.0
    assert (body["modalities_used"], body["degraded"], body["warnings"]) == (["rgb"], False, [])
    assert body["timings"]["domain_match_ms"] > 0
    assert f'unimmad_domain_inferred_total{{domain="{RGB_DOMAIN}"}} 1.0' in client.get("/metrics").text


def test_a_named_domain_reports_its_fit_at_no_extra_pass(client) -> None:
    files = training_uploads(RGB_DEPTH_DOMAIN)
    body = client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN, "heatmap": "none"}, files=files).json()
    assert body["domain_inferred"] is False and body["domain_match"]["distance"] <= 1
    assert body["timings"]["domain_match_ms"] == 0


def test_inferred_and_named_answers_are_the_same_scores(client) -> None:
    files = training_uploads(RGB_INFRARED_DEPTH_DOMAIN)
    named = client.post("/detect", data={"domain": RGB_INFRARED_DEPTH_DOMAIN, "heatmap": "none"}, files=files)
    inferred = client.post("/detect", data={"heatmap": "none"}, files=files)
    assert named.json()["image_score"] == pytest.approx(inferred.json()["image_score"], rel=1e-5)
    assert named.json()["domain_match"]["distance"] == pytest.approx(
        inferred.json()["domain_match"]["distance"]
    )


def _tight_bounds(manifest: dict) -> None:
    for domain in manifest["domains"].values():
        domain["signature"]["bound"] = 1e-6


@pytest.fixture()
def tight_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with every out-of-distribution bound near zero: every sample is beyond it."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "tight")
    rewrite_manifest(bundle, _tight_bounds)
    return bundle


def test_out_of_distribution_is_refused_by_default(tight_bundle: Path, make_client) -> None:
    assert Settings(bundle=tight_bundle).ood_action == "reject"
    client = make_client(tight_bundle, ood_action="reject")
    files = training_uploads(RGB_DOMAIN)
    message = _error(client.post("/detect", files=files), 422, "out_of_distribution")
    assert "fits none of the domains" in message and RGB_DOMAIN in message
    message = _error(
        client.post("/detect", data={"domain": RGB_DOMAIN}, files=files), 422, "out_of_distribution"
    )
    assert f"fits neither domain '{RGB_DOMAIN}' nor any other domain" in message
    metrics = client.get("/metrics").text
    assert 'unimmad_out_of_distribution_total{action="rejected",route="/detect"} 2.0' in metrics


def test_out_of_distribution_is_scored_and_flagged_when_set(tight_bundle: Path, make_client) -> None:
    client = make_client(tight_bundle, ood_action="flag")
    response = client.post("/detect", data={"heatmap": "none"}, files=training_uploads(RGB_DOMAIN))
    assert response.status_code == 200, response.text
    assert response.json()["out_of_distribution"] is True and response.json()["domain_match"]["distance"] > 1
    assert (
        'unimmad_out_of_distribution_total{action="flagged",route="/detect"} 1.0'
        in client.get("/metrics").text
    )


def test_a_format_2_bundle_serves_named_domains_and_explains_inference(
    tiny_bundle: Path, tmp_path: Path, make_client
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "format2")
    rewrite_manifest(bundle, as_format_2)
    client = make_client(bundle)
    files = training_uploads(RGB_DOMAIN)
    served = client.post("/detect", data={"domain": RGB_DOMAIN, "heatmap": "none"}, files=files)
    assert served.status_code == 200 and served.json()["domain_match"] is None
    message = _error(client.post("/detect", files=files), 422, "domain_inference_unavailable")
    assert "re-export" in message
    assert client.get("/domains").json()["domains"][0]["inferable"] is False


BOARDS = RGB_INFRARED_DEPTH_DOMAIN
RGB_AND_DEPTH = ("rgb", "depth")


def test_a_missing_sensor_is_refused_unless_allowed(pair_bundle: Path, make_client) -> None:
    client = make_client(pair_bundle)
    files = training_uploads(BOARDS, names=RGB_AND_DEPTH)
    message = _error(client.post("/detect", data={"domain": BOARDS}, files=files), 422, "missing_modality")
    assert "infrared" in message and "allow_missing=true" in message
    response = client.post(
        "/detect", data={"domain": BOARDS, "allow_missing": "true", "heatmap": "png"}, files=files
    )
    assert response.status_code == 200, response.text
    body = response.json()
    subset = load_bundle(pair_bundle).manifest.domains[BOARDS].subsets["rgb+depth"]
    assert (body["degraded"], body["modalities_used"], body["threshold"]) == (
        True,
        ["rgb", "depth"],
        subset.threshold,
    )
    assert set(body["modality_scores"]) == set(body["heatmaps"]["modalities"]) == {"rgb", "depth"}
    assert f'unimmad_degraded_answers_total{{domain="{BOARDS}"}} 1.0' in client.get("/metrics").text


def test_the_service_setting_allows_subsets_for_every_request(pair_bundle: Path, make_client) -> None:
    client = make_client(pair_bundle, allow_missing_modalities=True)
    files = training_uploads(BOARDS, names=RGB_AND_DEPTH)
    assert client.post("/detect", data={"domain": BOARDS}, files=files).json()["degraded"] is True
    refused = client.post("/detect", data={"domain": BOARDS, "allow_missing": "false"}, files=files)
    _error(refused, 422, "missing_modality")
    _error(
        client.post("/detect", data={"domain": BOARDS, "allow_missing": "maybe"}, files=files),
        422,
        "invalid_allow_missing",
    )


def test_a_subset_without_calibration_is_refused(pair_bundle: Path, make_client) -> None:
    client = make_client(pair_bundle, allow_missing_modalities=True)
    files = training_uploads(RGB_DEPTH_DOMAIN, names=("rgb",))
    message = _error(
        client.post("/detect", data={"domain": RGB_DEPTH_DOMAIN}, files=files), 422, "missing_modality"
    )
    assert "depth" in message


@pytest.mark.parametrize(
    ("scene", "expected", "degraded"), [(RGB_DEPTH_DOMAIN, RGB_DEPTH_DOMAIN, False), (BOARDS, BOARDS, True)]
)
def test_inference_picks_among_domains_and_subsets_with_the_same_modalities(
    pair_bundle: Path, make_client, scene: str, expected: str, degraded: bool
) -> None:
    client = make_client(pair_bundle, allow_missing_modalities=True, ood_action="flag")
    files = training_uploads(scene, names=RGB_AND_DEPTH)
    body = client.post("/detect", data={"heatmap": "none"}, files=files).json()
    assert (body["domain"], body["degraded"], body["domain_inferred"]) == (expected, degraded, True)
    assert body["domain_match"]["nearest_other"] in {RGB_DEPTH_DOMAIN, BOARDS} - {expected}
    assert body["domain_match"]["distance"] < body["domain_match"]["nearest_other_distance"]


def test_a_wrong_domain_is_scored_with_a_warning(pair_bundle: Path, make_client) -> None:
    """A mislabelled sample fits another domain: not out of distribution, but the answer says so."""
    client = make_client(pair_bundle, allow_missing_modalities=True)
    files = training_uploads(RGB_DEPTH_DOMAIN)
    body = client.post("/detect", data={"domain": BOARDS, "heatmap": "none"}, files=files).json()
    assert (body["domain"], body["degraded"], body["out_of_distribution"]) == (BOARDS, True, False)
    assert body["domain_match"]["nearest_other"] == RGB_DEPTH_DOMAIN
    assert len(body["warnings"]) == 1 and f"fits '{RGB_DEPTH_DOMAIN}'" in body["warnings"][0]
    assert f'unimmad_domain_mismatch_warnings_total{{domain="{BOARDS}"}} 1.0' in client.get("/metrics").text


def test_domains_list_subsets_and_the_schema_documents_an_optional_domain(
    pair_bundle: Path, make_client
) -> None:
    client = make_client(pair_bundle)
    domains = {d["name"]: d for d in client.get("/domains").json()["domains"]}
    assert domains[BOARDS]["subsets"] == ["rgb+depth"] and domains[BOARDS]["inferable"] is True
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "domain" not in form.get("required", [])
    assert "infers" in form["properties"]["domain"]["description"]
    assert form["properties"]["allow_missing"]["enum"] == ["true", "false"]
    answer = schema["components"]["schemas"]["DetectResponse"]["properties"]
    assert {"domain_inferred", "domain_match", "out_of_distribution", "modalities_used", "degraded"} <= set(
        answer
    )
