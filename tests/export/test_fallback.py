"""`export verify --fallback`: domains whose frozen graph strays from the per-sample one on the validation
split (held-out normals, never test) move to the dynamic graph, with thresholds of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle.loader import load_bundle
from export.__main__ import main
from export.build import graph_outputs, threshold_normals
from export.fallback import (
    MAX_NORMALIZED_SCORE_GAP,
    MIN_MAP_CORRELATION,
    apply_fallback,
    chosen_graph,
    correlation,
    validation_agreement,
)
from export.onnx_graph import check_graph
from export.samples import select_domains
from export.verify import auroc_entry
from model.checkpoint import load_checkpoint

MOVED, KEPT = "synthetic/boards", "synthetic/parts"


def report(frozen_ok: dict[str, bool]) -> dict:
    """A verify report whose domains' validation check says whether the frozen graph may serve them."""
    return {"domains": {name: {"validation": {"frozen_ok": ok}} for name, ok in frozen_ok.items()}}


@pytest.mark.parametrize(
    ("per_sample", "frozen", "within"), [(0.755, 0.750, True), (0.755, 0.7475, False), (0.7, 0.71, True)]
)
def test_a_loss_equal_to_the_budget_is_within_it(per_sample: float, frozen: float, within: bool) -> None:
    entry = auroc_entry(per_sample, frozen, goal=0.005)
    assert entry["within_goal"] is within and entry["difference"] == pytest.approx(per_sample - frozen)
    assert auroc_entry(None, frozen, goal=0.005)["within_goal"] is None


@pytest.mark.parametrize(
    ("entry", "graph"),
    [
        ({"validation": {"frozen_ok": True}}, "frozen"),
        ({"validation": {"frozen_ok": False}}, "dynamic"),
        # a test-split AUROC loss alone never moves a domain: the test split chooses nothing
        ({"validation": {"frozen_ok": True}, "image_auroc": {"within_goal": False}}, "frozen"),
        ({"test_samples": 0, "validation": {"frozen_ok": False}}, "dynamic"),
    ],
)
def test_a_domain_falls_back_only_on_the_validation_verdict(entry: dict, graph: str) -> None:
    assert chosen_graph(entry) == graph


def test_map_correlation_handles_constant_maps() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    assert correlation(maps, 2 * maps + 1) == pytest.approx(1.0)
    assert correlation(maps, -maps) == pytest.approx(-1.0)
    assert correlation(np.ones(4), np.ones(4)) == 1.0 and correlation(np.ones(4), maps[0, 0, :4]) == 0.0


def test_validation_agreement_accepts_a_graph_that_matches_and_rejects_one_that_does_not(
    tiny_bundle: Path, tiny_checkpoint: Path, tiny_export_setup
) -> None:
    bundle = load_bundle(tiny_bundle)
    model, _ = load_checkpoint(tiny_checkpoint)
    source, options = tiny_export_setup
    (data,) = select_domains([source], [KEPT])
    index = bundle.manifest.domains[KEPT].index
    frozen = check_graph(bundle.graph("frozen").model)
    dynamic = check_graph(bundle.graph("dynamic").model)
    itself = validation_agreement(dynamic, dynamic, data, index, model, options)
    assert itself["normalized_score_gap"] == 0 and itself["map_correlation"] == pytest.approx(1.0)
    assert itself["frozen_ok"] and itself["split"] == threshold_normals(data, options)[1]
    other = validation_agreement(frozen, dynamic, data, index, model, options)
    want = other["normalized_score_gap"] <= MAX_NORMALIZED_SCORE_GAP and (
        other["map_correlation"] >= MIN_MAP_CORRELATION
    )
    assert other["frozen_ok"] is want and other["images"] == itself["images"] == 6


def test_fallback_moves_the_missing_domain_with_a_threshold_of_its_new_graph(
    tiny_bundle: Path, tiny_checkpoint: Path, tiny_export_setup, tmp_path: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    before = load_bundle(bundle).manifest
    model, _ = load_checkpoint(tiny_checkpoint)
    source, options = tiny_export_setup
    domains = select_domains([source], [MOVED, KEPT])

    choices = apply_fallback(bundle, report({MOVED: False, KEPT: True}), model, domains, options)

    after = load_bundle(bundle).manifest  # still a valid bundle: checksums untouched, schema holds
    assert choices == {MOVED: "dynamic", KEPT: "frozen"}
    assert after.domains[MOVED].graph == "dynamic" and after.domains[KEPT] == before.domains[KEPT]
    # the threshold is the (1 - target FPR) quantile of the dynamic graph's scores on the normals the
    # bundle used (the tiny holdout is too small, so the training normals, as for the frozen threshold)
    spec = after.domains[MOVED]
    normals, _ = threshold_normals(domains[0], options)
    assert spec.threshold_method.split == before.domains[MOVED].threshold_method.split
    dynamic = check_graph(load_bundle(bundle).graph("dynamic").model)
    scores = graph_outputs(dynamic, domains[0], normals, spec.index, model, 4).image_scores
    want = np.quantile(scores, 1 - spec.threshold_method.target_fpr, method="higher")
    assert spec.threshold == pytest.approx(float(want), rel=1e-6)
    assert spec.threshold_method.n_images == len(normals)
    assert spec.normalized_score(spec.threshold) == pytest.approx(0.5)

    # a later verify that finds the frozen graph faithful moves it back, to the original frozen threshold
    apply_fallback(bundle, report({MOVED: True}), model, domains[:1], options)
    restored = load_bundle(bundle).manifest.domains[MOVED]
    assert restored.graph == "frozen" and restored.threshold == pytest.approx(before.domains[MOVED].threshold)


def test_verify_cli_fallback_reports_who_serves_each_domain(
    tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    args = [
        "verify",
        str(bundle),
        "--checkpoint",
        str(tiny_checkpoint),
        "--domains",
        KEPT,
        "--max-samples",
        "2",
    ]
    assert main([*args, "--fallback", "--json"]) == 0
    served = json.loads(capsys.readouterr().out)["served_by"]
    entry = json.loads((bundle / "manifest.json").read_text())["domains"][KEPT]
    assert served == {KEPT: entry["graph"]} and entry["graph"] in {"frozen", "dynamic"}


def test_verify_tells_a_loss_confined_to_blank_depth_samples_apart() -> None:
    """A frozen map hot all over on one blank-depth defect (empty mask) sinks pixel AUROC over every sample;
    without that sample, the frozen graph matches per-sample routing."""
    from export.verify import auroc_entries

    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    per_sample = rng.uniform(0, 0.5, (4, 8, 8)) + 2 * masks
    frozen = per_sample.copy()
    frozen[3] += 5.0  # the blank-depth sample: hot everywhere under frozen routing
    values = {
        "labels": np.array([0, 1, 0, 1]),
        "masks": masks,
        "ps_score": per_sample.max(axis=(1, 2)),
        "fz_score": frozen.max(axis=(1, 2)),
        "ps_map": per_sample,
        "fz_map": frozen,
    }
    everything = auroc_entries(values, image_goal=0.005, pixel_goal=0.002)
    assert not everything["pixel_auroc"]["within_goal"]
    kept = {key: value[:3] for key, value in values.items()}
    clean = auroc_entries(kept, image_goal=0.005, pixel_goal=0.002)
    assert clean["pixel_auroc"]["within_goal"] and clean["image_auroc"]["within_goal"]
    assert clean["pixel_auroc"]["per_sample"] == clean["pixel_auroc"]["frozen"] == 1.0
