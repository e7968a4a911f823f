"""The exported bundle: manifest valid against the committed schema, calibration, normal statistics and
thresholds recorded (the statistics and thresholds exactly as `model evaluate` fits them), and a tampered
bundle refused by the loader with one clear line per fault."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from bundle.loader import BundleError, load_bundle
from bundle.manifest import CALIBRATED_FUSIONS as MANIFEST_CALIBRATED_FUSIONS
from export.build import statistics_from_manifest, threshold_normals
from export.calibration import DEFAULT_ROUTING_MODE, Calibration, calibrate, expected_weights, gate_tensors
from export.routing import routing_from_weights
from export.samples import select_domains
from export.threshold import NormalOutputs, choose_threshold, colour_range
from model.calibration import (
    MIN_HOLDOUT_IMAGES,
    RecordedHoldout,
    normalized_scores,
    quantile_threshold,
    score_range,
)
from model.checkpoint import load_checkpoint
from model.config import CALIBRATED_FUSIONS
from model.evaluate import fit_validation

SCHEMA = Path(__file__).parents[2] / "bundle" / "manifest.schema.json"


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_manifest_validates_against_the_schema(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    assert set(manifest["domains"]) == {
        "synthetic/tiles",
        "synthetic/parts",
        "synthetic/boards",
        "synthetic/brain",
    }
    boards = manifest["domains"]["synthetic/boards"]
    assert [m["name"] for m in boards["modalities"]] == ["rgb", "infrared", "depth"]
    # 3 slots x 3 levels x 3 branches, leader weights summing to 1 (at least top-2 of them)
    assert boards["routing"]["mode"] == DEFAULT_ROUTING_MODE
    assert len(boards["routing"]["leaders"]) == 27
    assert all(abs(sum(gate["scores"]) - 1) < 1e-5 for gate in boards["routing"]["leaders"])
    assert all(len(gate["experts"]) >= 2 for gate in boards["routing"]["leaders"])


def test_thresholds_fall_back_to_training_normals_when_the_holdout_is_small(tiny_bundle: Path) -> None:
    # 8 normal training samples, 25 % held out = 2 < MIN_HOLDOUT_IMAGES: the fallback must be stated.
    for domain in json.loads((tiny_bundle / "manifest.json").read_text())["domains"].values():
        method = domain["threshold_method"]
        assert method["method"] == "normal_quantile" and method["target_fpr"] == 0.05
        assert method["split"].startswith("train (fallback") and method["n_images"] == 6
        assert np.isfinite(domain["threshold"])
        low, high = domain["score_range"]
        assert (domain["threshold"] - low) / (high - low) == pytest.approx(0.5)


def test_calibrated_fusion_names_agree_between_model_and_manifest() -> None:
    assert MANIFEST_CALIBRATED_FUSIONS == CALIBRATED_FUSIONS


def test_bundle_statistics_are_the_ones_evaluate_fits(
    tiny_bundle: Path, tiny_checkpoint: Path, tiny_export_setup
) -> None:
    """Export and `model evaluate` fit the same normal statistics on the same normals, so a report's
    score is the graphs' score (here the training normals: the tiny holdout is too small)."""
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest.anomaly_map.fusion in CALIBRATED_FUSIONS
    model, _ = load_checkpoint(tiny_checkpoint)
    source, options = tiny_export_setup
    names = ["synthetic/boards", "synthetic/tiles"]
    fitted = fit_validation(model, [source], names, options.holdout, 0.05, 3, torch.device("cpu"))
    for name in names:
        spec = manifest.domains[name]
        recorded = spec.normal_statistics
        assert recorded is not None and recorded.split == fitted[name].split
        assert recorded.split.startswith("train (fallback: only 2 held-out normals")
        assert recorded.n_images == fitted[name].images == 6  # 8 - 25 % held out
        statistics = statistics_from_manifest(spec)
        torch.testing.assert_close(
            statistics.location, fitted[name].statistics.location, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(statistics.scale, fitted[name].statistics.scale, rtol=1e-5, atol=1e-6)
        assert (statistics.scale > 0).all()


def test_threshold_normals_are_the_held_out_ones_when_there_are_enough(tiny_export_setup) -> None:
    source, options = tiny_export_setup
    (data,) = select_domains([source], ["synthetic/parts"])
    refs, split = threshold_normals(data, options)
    assert split.startswith("train (fallback: only 2 held-out normals") and len(refs) == 6
    generous = replace(options, holdout=RecordedHoldout(ids={"synthetic/parts": [r.id for r in refs[:5]]}))
    held, split = threshold_normals(data, generous)
    assert [r.id for r in held] == [r.id for r in refs[:5]] and split == generous.holdout.describe()


def test_calibration_json_reports_agreement_per_gate(tiny_bundle: Path) -> None:
    report = json.loads((tiny_bundle / "calibration.json").read_text())
    tiles = report["synthetic/tiles"]
    assert tiles["samples"] == 6 and 0 <= tiles["agreement"] <= 1 and tiles["mode"] == DEFAULT_ROUTING_MODE
    assert len(tiles["gates"]) == 9 and all(len(gate["mean_probs"]) == 6 for gate in tiles["gates"])


def _normal_outputs(image_scores: np.ndarray, size: int = 4) -> NormalOutputs:
    n = image_scores.size
    return NormalOutputs(
        image_scores, image_scores[:, None], np.zeros((n, size, size)), np.zeros((n, 1, size, size))
    )


def test_quantile_threshold_keeps_the_false_positive_rate() -> None:
    scores = np.arange(100, dtype=np.float64)
    threshold = quantile_threshold(scores, 0.05)
    assert (scores > threshold).mean() <= 0.05 and threshold == 95
    threshold = choose_threshold(_normal_outputs(np.arange(MIN_HOLDOUT_IMAGES, dtype=float)), 0.0, "h")
    assert threshold.split == "h" and threshold.value == MIN_HOLDOUT_IMAGES - 1 and threshold.n_images == 5


def test_normalised_score_puts_the_threshold_at_one_half_and_a_typical_normal_at_zero() -> None:
    normals = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    bounds = score_range(normals, threshold=5.0)
    assert bounds == (3.0, 7.0)  # centred on the threshold, half-width threshold - median
    scores = np.array([3.0, 4.0, 5.0, 6.0, 20.0, -1.0])
    assert normalized_scores(scores, bounds).tolist() == [0, 0.25, 0.5, 0.75, 1, 0]
    flat_low, flat_high = score_range(np.full(4, 2.0), threshold=2.0)
    assert flat_low < 2.0 < flat_high and (2.0 - flat_low) == pytest.approx(flat_high - 2.0)


def test_tiny_bundle_records_heatmap_ranges_per_map(tiny_bundle: Path) -> None:
    for domain in json.loads((tiny_bundle / "manifest.json").read_text())["domains"].values():
        ranges = domain["heatmap_range"]
        assert set(ranges["modalities"]) == {m["name"] for m in domain["modalities"]}
        for low, high in [ranges["fused"], *ranges["modalities"].values()]:
            assert np.isfinite([low, high]).all() and low < high
        # The fused range is anchored on the normal baseline and puts the decision threshold mid-ramp.
        low, high = ranges["fused"]
        assert low < domain["threshold"] and (domain["threshold"] - low) / (high - low) == pytest.approx(0.5)


def test_colour_range_starts_at_the_normal_baseline_and_survives_constant_maps() -> None:
    rng = np.random.default_rng(0)
    maps = 10.0 + rng.random((8, 16, 16))  # baseline 10, normal spread 1
    scores = np.sort(maps.reshape(8, -1), axis=1)[:, -5:].mean(axis=1)
    low, high = colour_range(maps, scores, 0.05)
    assert low == pytest.approx(10.5, abs=0.05)
    assert high == pytest.approx(low + 2 * (scores.max() - low))
    flat_low, flat_high = colour_range(np.full((3, 4, 4), 7.0), np.full(3, 7.0), 0.05)
    assert flat_low == 7.0 and flat_high > flat_low


def test_calibration_freezes_the_top_k_of_the_mean_gate(tiny_export_model) -> None:
    import torch

    images = [
        torch.randn(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) for seed in range(2)
    ]
    calibration = calibrate(tiny_export_model, images, "topk")
    assert calibration.samples == 4
    assert calibration.routing.idx.shape == (2, 3, 3, 2)
    expected = calibration.mean_probs.topk(2, dim=-1).indices
    assert torch.equal(calibration.routing.idx, expected)
    assert torch.allclose(calibration.routing.scores.sum(-1), torch.ones(2, 3, 3))


def test_expected_routing_weights_are_the_mean_of_the_samples_routed_scores() -> None:
    # One gate, 4 leaders, top-2, three samples: leader 3 is never picked.
    idx = torch.tensor([[0, 1], [1, 2], [0, 1]])
    scores = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    weights = expected_weights(idx, scores, leaders=4)
    by_hand = torch.tensor([(0.6 + 0.5) / 3, (0.4 + 0.7 + 0.5) / 3, 0.3 / 3, 0.0])
    assert torch.allclose(weights, by_hand)
    # A second gate where all samples agree keeps only its two leaders; the routing pads it with a zero score.
    routing = routing_from_weights(
        torch.stack([weights, torch.tensor([0.0, 0.0, 0.25, 0.75])])[:, None, None]
    )
    assert routing.idx[0, 0, 0].tolist() == [1, 0, 2] and torch.allclose(
        routing.scores[0, 0, 0], by_hand[[1, 0, 2]]
    )
    assert routing.idx[1, 0, 0, :2].tolist() == [3, 2] and routing.scores[1, 0, 0].tolist() == [
        0.75,
        0.25,
        0.0,
    ]
    agreement = torch.ones(2, 1, 1)
    gates = Calibration("expected", routing, torch.zeros(2, 1, 1, 4), agreement, 3, {}).summary((3,))["gates"]
    assert [gate["experts"] for gate in gates] == [[1, 0, 2], [3, 2]]  # zero-weight padding is not recorded


def test_expected_calibration_averages_each_samples_own_routing(tiny_export_model) -> None:
    import torch

    images = [
        torch.randn(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) for seed in range(2)
    ]
    calibration = calibrate(tiny_export_model, images, "expected")
    per_sample = []
    for batch in images:
        for sample in batch.split(1):
            with torch.no_grad():
                output = tiny_export_model(sample, kernel_mode="bank")
            _, idx, scores = gate_tensors(output.routes, 1, 2)
            dense = torch.zeros(*idx.shape[1:-1], 6).scatter_(-1, idx[0], scores[0])
            per_sample.append(dense)
    want = torch.stack(per_sample).mean(0)  # [M, L, nb, R]
    got = torch.zeros_like(want).scatter_add_(-1, calibration.routing.idx, calibration.routing.scores)
    assert calibration.samples == 6 and calibration.mode == "expected"
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    ("break_bundle", "message"),
    [
        (lambda root: (root / "model.onnx.data").unlink(), "lacks the file model.onnx.data"),
        (lambda root: (root / "model.onnx").write_bytes(b"corrupt"), "sha256 mismatch for model.onnx"),
        (
            lambda root: (root / "model_dynamic.onnx.data").write_bytes(b"\0" * 16),
            "sha256 mismatch for model_dynamic.onnx.data",
        ),
        (
            lambda root: (root / "manifest.json").write_text(
                json.dumps({**json.loads((root / "manifest.json").read_text()), "format_version": 99})
            ),
            "unsupported format_version 99",
        ),
    ],
    ids=["missing-data-file", "corrupt-onnx", "sha256-mismatch", "unknown-version"],
)
def test_loader_refuses_a_tampered_bundle(bundle_copy: Path, break_bundle, message: str) -> None:
    load_bundle(bundle_copy)
    break_bundle(bundle_copy)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_copy)
    assert message in str(caught.value) and "\n" not in str(caught.value)
