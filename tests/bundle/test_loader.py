"""The loader accepts a good bundle and rejects every broken one with one line that names the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_bundle import TEST_DOMAINS, make_test_bundle, rewrite_manifest

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


def test_good_bundle_resolves_every_graph(bundle_dir: Path) -> None:
    loaded = load_bundle(bundle_dir)
    assert set(loaded.manifest.domains) == set(TEST_DOMAINS)
    assert loaded.graph("frozen").model == bundle_dir.resolve() / "model.onnx"
    assert loaded.graph("dynamic").model.name == "model_dynamic.onnx"
    depth = loaded.manifest.domains["mvtec3d/tire"].modality_specs[1]
    assert (depth.name, depth.kind, depth.depth_scale) == ("depth", "depth", 10.0)


def test_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nowhere")


def test_missing_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    assert "no manifest.json" in _error(bundle_dir)


def test_manifest_not_json(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in _error(bundle_dir)


def test_unknown_format_version(bundle_dir: Path) -> None:
    rewrite_manifest(bundle_dir, lambda m: m.update(format_version=2))
    assert "unsupported format_version 2" in _error(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m["domains"]["mvtec/bottle"]["modalities"][0].update(kind="thermal"), "kind"),
        (lambda m: m["domains"]["mvtec3d/tire"].update(index=0), "share index 0"),
        (lambda m: m["graphs"]["frozen"].update(file="../model.onnx"), "relative path"),
        (lambda m: m["domains"]["mvtec/bottle"].update(threshold="NaN"), "finite"),
        (lambda m: m["domains"]["mvtec3d/tire"]["modalities"][1].pop("depth_scale"), "needs depth_scale"),
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
    rewrite_manifest(bundle_dir, lambda m: m["graphs"]["frozen"]["external_data"].append(
        {"file": "model.onnx.data", "sha256": "0" * 64}))
    assert "lacks the file model.onnx.data" in _error(bundle_dir)


def test_sha256_mismatch_names_the_file(bundle_dir: Path) -> None:
    with (bundle_dir / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    message = _error(bundle_dir)
    assert message.startswith("sha256 mismatch for model.onnx:")


def test_manifest_round_trips(bundle_dir: Path) -> None:
    manifest = load_bundle(bundle_dir).manifest
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == json.loads(render_schema()), (
        "bundle/manifest.schema.json is stale: run `python -m bundle schema --write`"
    )


def test_check_cli_reports_one_line(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    result = subprocess.run([sys.executable, "-m", "bundle", "check", str(bundle_dir)],
                            capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no manifest.json" in result.stderr
    good = subprocess.run([sys.executable, "-m", "bundle", "check", str(make_test_bundle(bundle_dir.parent / "good"))],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert good.returncode == 0 and good.stdout.startswith("ok:")

