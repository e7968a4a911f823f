"""UNIMMAD_GRAPH never pairs a domain with a threshold calibrated on the other graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import RGB_DOMAIN, RGB_INFRARED_DEPTH_DOMAIN, copy_bundle, rewrite_manifest

from bundle import BundleError, load_bundle
from bundle.manifest import Manifest
from service.inference import serving_graphs

REPO = Path(__file__).parents[2]


def _with_graph(manifest: Manifest, domain: str, graph: str) -> Manifest:
    domains = dict(manifest.domains)
    domains[domain] = domains[domain].model_copy(update={"graph": graph})
    return manifest.model_copy(update={"domains": domains})


@pytest.fixture()
def mixed_manifest(tiny_bundle: Path) -> Manifest:
    """The tiny bundle's manifest with one domain moved to the dynamic graph, as `verify --fallback` does."""
    return _with_graph(load_bundle(tiny_bundle).manifest, RGB_INFRARED_DEPTH_DOMAIN, "dynamic")


def test_manifest_mode_serves_each_domain_on_its_calibrated_graph(mixed_manifest: Manifest) -> None:
    graphs = serving_graphs(mixed_manifest, "manifest")
    assert graphs == {name: spec.graph for name, spec in mixed_manifest.domains.items()}
    assert graphs[RGB_INFRARED_DEPTH_DOMAIN] == "dynamic" and graphs[RGB_DOMAIN] == "frozen"


@pytest.mark.parametrize("override", ["frozen", "dynamic"])
def test_an_override_that_contradicts_a_domain_is_refused_naming_it(
    mixed_manifest: Manifest, override: str
) -> None:
    with pytest.raises(BundleError, match=r"^UNIMMAD_GRAPH=") as refused:
        serving_graphs(mixed_manifest, override)
    message = str(refused.value)
    assert "\n" not in message and "UNIMMAD_GRAPH=manifest" in message
    contradicted = [name for name, spec in mixed_manifest.domains.items() if spec.graph != override]
    assert contradicted and all(name in message for name in contradicted)


def test_an_override_every_domain_agrees_with_is_served(mixed_manifest: Manifest) -> None:
    all_dynamic = mixed_manifest
    for name in mixed_manifest.domains:
        all_dynamic = _with_graph(all_dynamic, name, "dynamic")
    assert set(serving_graphs(all_dynamic, "dynamic").values()) == {"dynamic"}


def test_cli_refuses_the_override_with_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "mixed")
    rewrite_manifest(bundle, lambda m: m["domains"][RGB_INFRARED_DEPTH_DOMAIN].update(graph="dynamic"))
    result = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "UNIMMAD_GRAPH": "frozen",
            "UNIMMAD_PROVIDERS": '["CPUExecutionProvider"]',
        },
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNIMMAD_GRAPH=frozen") and result.stderr.count("\n") == 1
    assert RGB_INFRARED_DEPTH_DOMAIN in result.stderr
