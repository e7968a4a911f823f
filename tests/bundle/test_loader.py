"""The loader accepts the tiny real bundle and rejects every broken copy of it with one line naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import RGB_DEPTH_DOMAIN, RGB_DOMAIN, as_format_2, rewrite_manifest

from bundle import BundleError, load_bundle
from bundle.__main__ import SCHEMA_PATH, render_schema
from bundle.manifest import Manifest

REPO = Path(__file__).parents[2]


def _error(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_bundle_resolves_every_graph(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    loaded = load_bundle(tiny_bundle)
    assert list(loaded.manifest.domains) == list(raw["domains"])
    for kind in ("frozen", "dynamic"):
        graph = loaded.graph(kind)
        assert graph.model == tiny_bundle.resolve() / raw["graphs"][kind]["file"]
        assert [p.name for p in graph.external_data] == [
            d["file"] for d in raw["graphs"][kind]["external_data"]
        ]
        assert all(p.is_file() for p in (graph.model, *graph.external_data))
    rgb, depth = loaded.manifest.domains[RGB_DEPTH_DOMAIN].modality_specs
    assert (rgb.name, rgb.kind) == ("rgb", "rgb")
    raw_depth = raw["domains"][RGB_DEPTH_DOMAIN]["modalities"][1]
    assert (depth.name, depth.kind, depth.depth_scale) == ("depth", "depth", raw_depth["depth_scale"])


def test_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nowhere")


def test_missing_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    assert "no manifest.json" in _error(bundle_dir)


def test_manifest_not_json(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in _error(bundle_dir)


@pytest.mark.parametrize("version", [1, 4])
def test_older_and_newer_format_versions_are_refused(bundle_dir: Path, version: int) -> None:
    """Format 1 bundles lack what the graphs now need (the dynamic graph's `domain`, score ranges)."""
    rewrite_manifest(bundle_dir, lambda m: m.update(format_version=version))
    assert f"unsupported format_version {version} (this code reads 2, 3)" in _error(bundle_dir)


def test_format_2_bundles_still_load(bundle_dir: Path) -> None:
    rewrite_manifest(bundle_dir, as_format_2)
    loaded = load_bundle(bundle_dir)
    assert loaded.manifest.signature is None
    assert sorted(loaded.graphs) == ["dynamic", "frozen"]


def test_signature_statistics_need_format_3(bundle_dir: Path) -> None:
    rewrite_manifest(bundle_dir, lambda m: m.update(format_version=2))
    assert "signature and subsets need format_version 3" in _error(bundle_dir)


def test_the_signature_graph_is_verified_like_the_others(bundle_dir: Path) -> None:
    signature_file = json.loads((bundle_dir / "manifest.json").read_text())["signature"]["graph"]["file"]
    (bundle_dir / signature_file).write_bytes(b"not the graph")
    assert f"sha256 mismatch for {signature_file}" in _error(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m["domains"][RGB_DOMAIN]["modalities"][0].update(kind="thermal"), "kind"),
        (lambda m: m["domains"][RGB_DEPTH_DOMAIN].update(index=0), "share index 0"),
        (lambda m: m["graphs"]["frozen"].update(file="../model.onnx"), "relative path"),
        (lambda m: m["domains"][RGB_DOMAIN].update(threshold="NaN"), "finite"),
        (lambda m: m["domains"][RGB_DEPTH_DOMAIN]["modalities"][1].pop("depth_scale"), "needs depth_scale"),
        (lambda m: m["domains"][RGB_DOMAIN]["heatmap_range"].update(fused=[2.0, 1.0]), "low < high"),
        (
            lambda m: m["domains"][RGB_DEPTH_DOMAIN]["heatmap_range"]["modalities"].pop("depth"),
            "heatmap_range",
        ),
        (lambda m: m["domains"][RGB_DOMAIN]["routing"].update(mode="mean"), "routing.mode"),
        (lambda m: m["domains"][RGB_DOMAIN].pop("score_range"), "score_range"),
        (lambda m: m["domains"][RGB_DOMAIN].pop("heatmap_range"), "heatmap_range"),
        (lambda m: m["domains"][RGB_DOMAIN].update(score_range=[-2.0, -1.0]), "contain the threshold"),
        (lambda m: m["domains"][RGB_DOMAIN].pop("normal_statistics"), "normal_statistics must be present"),
        (
            lambda m: m["domains"][RGB_DEPTH_DOMAIN]["normal_statistics"]["modalities"].pop("depth"),
            "normal_statistics.modalities",
        ),
        (
            lambda m: m["domains"][RGB_DOMAIN]["normal_statistics"]["modalities"]["rgb"].update(scale=[1.0]),
            "locations but 1 scales",
        ),
        (
            lambda m: m["domains"][RGB_DOMAIN]["normal_statistics"]["modalities"]["rgb"].update(
                scale=[1.0, 0.0, 1.0]
            ),
            "greater than 0",
        ),
        (
            lambda m: m["domains"][RGB_DOMAIN]["routing"]["leaders"][0].update(
                experts=[1, 1], scores=[0.5, 0.5]
            ),
            "experts repeated",
        ),
        (
            lambda m: m["domains"][RGB_DOMAIN]["routing"]["leaders"][0].update(
                experts=[1, 2], scores=[1.0, 0.0]
            ),
            "greater than 0",
        ),
    ],
)
def test_schema_violations(bundle_dir: Path, edit, where: str) -> None:
    rewrite_manifest(bundle_dir, edit)
    message = _error(bundle_dir)
    assert "does not match the manifest schema" in message
    assert where in message


def test_missing_graph_file(bundle_dir: Path) -> None:
    (bundle_dir / "model_dynamic.onnx").unlink()
    assert "lacks the file model_dynamic.onnx" in _error(bundle_dir)


def test_missing_external_data(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx.data").unlink()
    assert "lacks the file model.onnx.data" in _error(bundle_dir)


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data"])
def test_sha256_mismatch_names_the_file(bundle_dir: Path, name: str) -> None:
    with (bundle_dir / name).open("ab") as handle:
        handle.write(b"\0")
    assert _error(bundle_dir).startswith(f"sha256 mismatch for {name}:")


def test_manifest_round_trips(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == json.loads(render_schema()), (
        "bundle/manifest.schema.json is stale: run `python -m bundle schema --write`"
    )


def test_check_cli_reports_one_line(bundle_dir: Path, tiny_bundle: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "bundle", "check", str(bundle_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no manifest.json" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "bundle", "check", str(tiny_bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert good.returncode == 0 and good.stdout.startswith("ok:")
