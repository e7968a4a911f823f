"""`export verify --fallback`: domains over the accuracy budget move to the dynamic graph with thresholds of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle.loader import load_bundle
from export.__main__ import main
from export.build import graph_outputs, split_normals
from export.fallback import apply_fallback, chosen_graph
from export.onnx_graph import check_graph
from export.samples import select_domains
from export.threshold import MIN_HOLDOUT_IMAGES
from export.verify import auroc_entry
from model.checkpoint import load_checkpoint

MOVED, KEPT = "synthetic/boards", "synthetic/parts"


def report(missed: dict[str, str | None]) -> dict:
    """A verify report whose domains miss the named metric ("image_auroc", "pixel_auroc" or None)."""
    return {
        "domains": {
            name: {metric: {"within_goal": metric != miss} for metric in ("image_auroc", "pixel_auroc")}
            for name, miss in missed.items()
        }
    }


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
        ({"image_auroc": {"within_goal": True}, "pixel_auroc": {"within_goal": True}}, "frozen"),
        ({"image_auroc": {"within_goal": False}, "pixel_auroc": {"within_goal": True}}, "dynamic"),
        ({"image_auroc": {"within_goal": True}, "pixel_auroc": {"within_goal": False}}, "dynamic"),
        ({"image_auroc": {"within_goal": True}, "pixel_auroc": {"within_goal": None}}, "frozen"),
        ({"test_samples": 0}, "frozen"),
    ],
)
def test_a_domain_falls_back_only_when_a_budget_is_missed(entry: dict, graph: str) -> None:
    assert chosen_graph(entry) == graph


def test_fallback_moves_the_missing_domain_with_a_threshold_of_its_new_graph(
    tiny_bundle: Path, tiny_checkpoint: Path, tiny_export_setup, tmp_path: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    before = load_bundle(bundle).manifest
    model, _ = load_checkpoint(tiny_checkpoint)
    source, options = tiny_export_setup
    domains = select_domains([source], [MOVED, KEPT])

    choices = apply_fallback(bundle, report({MOVED: "image_auroc", KEPT: None}), model, domains, options)

    after = load_bundle(bundle).manifest  # still a valid bundle: checksums untouched, schema holds
    assert choices == {MOVED: "dynamic", KEPT: "frozen"}
    assert after.domains[MOVED].graph == "dynamic" and after.domains[KEPT] == before.domains[KEPT]
    # the threshold is the (1 - target FPR) quantile of the dynamic graph's scores on the normals the
    # bundle used (the tiny holdout is too small, so the training normals, as for the frozen threshold)
    spec = after.domains[MOVED]
    calibration_refs, holdout = split_normals(domains[0], options)
    normals = holdout if len(holdout) >= MIN_HOLDOUT_IMAGES else calibration_refs
    assert spec.threshold_method.split == before.domains[MOVED].threshold_method.split
    dynamic = check_graph(load_bundle(bundle).graph("dynamic").model)
    scores = graph_outputs(dynamic, domains[0], normals, spec.index, model, 4).image_scores
    want = np.quantile(scores, 1 - spec.threshold_method.target_fpr, method="higher")
    assert spec.threshold == pytest.approx(float(want), rel=1e-6)
    assert spec.threshold_method.n_images == len(normals)

    # a later verify that finds the domain within budget moves it back, to the original frozen threshold
    apply_fallback(bundle, report({MOVED: None}), model, domains[:1], options)
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
