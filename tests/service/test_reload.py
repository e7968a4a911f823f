"""POST /admin/reload: a new bundle replaces the old one while requests keep being answered."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient
from service_helpers import copy_bundle, make_settings, rewrite_manifest, uploads, wait_ready

from service import create_app

KEY = "reload-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
OLD_DOMAINS = ("synthetic/parts", "synthetic/boards")
ADDED = "synthetic/tiles"


def served_version(client: TestClient) -> str:
    return client.get("/model", headers=AUTH).json()["model_version"]


def reload_counts(client: TestClient) -> dict[str, float]:
    lines = client.get("/metrics").text.splitlines()
    return {
        outcome: float(line.rsplit(" ", 1)[1])
        for line in lines
        for outcome in ("success", "failure")
        if line.startswith(f'unimmad_reloads_total{{outcome="{outcome}"}}')
    }


def test_reload_swaps_bundles_and_model_shows_the_active_version(pair_bundle: Path, tmp_path: Path) -> None:
    old = copy_bundle(pair_bundle, tmp_path / "a")
    new = copy_bundle(pair_bundle, tmp_path / "b")
    rewrite_manifest(new, lambda manifest: manifest.update(model_version="v2"))
    with TestClient(create_app(make_settings(old, api_key=KEY))) as client:
        wait_ready(client)
        before = served_version(client)
        response = client.post("/admin/reload", json={"bundle": "b"}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v2" and response.json()["previous_version"] == before
        assert served_version(client) == "v2"
        assert reload_counts(client) == {"success": 1.0}  # a label appears with its first count
        files = uploads(OLD_DOMAINS[0])
        response = client.post("/detect", data={"domain": OLD_DOMAINS[0]}, files=files, headers=AUTH)
        assert response.status_code == 200


def test_a_bundle_that_fails_to_load_leaves_the_old_one_serving(pair_bundle: Path, tmp_path: Path) -> None:
    old = copy_bundle(pair_bundle, tmp_path / "a")
    broken = copy_bundle(pair_bundle, tmp_path / "broken")
    with (broken / "model.onnx.data").open("ab") as data:
        data.write(b"corrupt")
    with TestClient(create_app(make_settings(old, api_key=KEY))) as client:
        wait_ready(client)
        before = served_version(client)
        response = client.post("/admin/reload", json={"bundle": "broken"}, headers=AUTH)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "reload_failed"
        assert f"still serving {before}" in response.json()["error"]["message"]
        assert served_version(client) == before
        assert reload_counts(client) == {"failure": 1.0}
        outside = client.post("/admin/reload", json={"bundle": "../../etc"}, headers=AUTH)
        assert outside.status_code == 403 and outside.json()["error"]["code"] == "forbidden_path"
        wrong_key = client.post("/admin/reload", json={"bundle": "a"}, headers={"X-API-Key": "x" * 20})
        assert wrong_key.status_code == 401


def test_reload_is_disabled_without_an_api_key(pair_bundle: Path) -> None:
    with TestClient(create_app(make_settings(pair_bundle))) as client:
        wait_ready(client)
        response = client.post("/admin/reload", json={"bundle": "anything"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"


def test_reload_under_load_to_a_bundle_with_an_added_domain(
    pair_bundle: Path, extended_bundle: Path, tmp_path: Path
) -> None:
    """Steady /detect traffic on the old domains while the service swaps to the extended bundle: no request
    fails, the old domains' scores do not move, the added domain answers afterwards."""
    old = copy_bundle(pair_bundle, tmp_path / "old")
    copy_bundle(extended_bundle, tmp_path / "extended")
    statuses: list[int] = []
    scores: dict[str, set[float]] = {domain: set() for domain in OLD_DOMAINS}
    stop = threading.Event()

    def steady_load(client: TestClient, domain: str) -> None:
        files = uploads(domain, index=1)
        while not stop.is_set():
            response = client.post(
                "/detect", data={"domain": domain, "heatmap": "none"}, files=files, headers=AUTH
            )
            statuses.append(response.status_code)
            if response.status_code == 200:
                scores[domain].add(response.json()["image_score"])

    with TestClient(create_app(make_settings(old, api_key=KEY))) as client:
        wait_ready(client)
        workers = [threading.Thread(target=steady_load, args=(client, domain)) for domain in OLD_DOMAINS]
        for worker in workers:
            worker.start()
        try:
            response = client.post("/admin/reload", json={"bundle": "extended"}, headers=AUTH)
            served = len(statuses)
            while len(statuses) < served + 4:  # traffic continues on the new bundle
                stop.wait(0.05)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert response.status_code == 200, response.text
        assert ADDED in response.json()["domains"]
        added = client.post("/detect", data={"domain": ADDED}, files=uploads(ADDED), headers=AUTH)
        assert added.status_code == 200, added.text
    assert statuses and set(statuses) == {200}
    assert all(len(values) == 1 for values in scores.values())  # bit-identical scores before and after
