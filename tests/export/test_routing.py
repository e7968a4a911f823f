"""Frozen routing read back from a manifest: topk and expected routings, and bundles older than the mode field."""

from __future__ import annotations

import pytest
import torch
from test_fold import mixed_routing

from bundle.manifest import DomainSpec
from export.calibration import Calibration
from export.routing import routing_from_manifest
from model.unimmad import UniMMAD


def domain_spec(calibration: Calibration, mode: str | None) -> DomainSpec:
    gates = calibration.summary((1, 3, 5))["gates"]
    return DomainSpec.model_validate(
        {
            "index": 0,
            "modalities": [{"name": "rgb", "kind": "rgb"}, {"name": "ir", "kind": "gray"}],
            "threshold": 1.0,
            "threshold_method": {"method": "normal_quantile", "n_images": 1, "split": "train"},
            "score_range": [0.5, 1.5],
            "heatmap_range": {"fused": [0.0, 2.0], "modalities": {"rgb": [0.0, 2.0], "ir": [0.0, 2.0]}},
            "routing": {
                "mode": mode,
                "leaders": [
                    {k: g[k] for k in ("level", "branch", "slot", "experts", "scores")} for g in gates
                ],
            },
        }
    )


def calibration_of(routing) -> Calibration:
    return Calibration("expected", routing, torch.zeros(2, 3, 3, 6), torch.ones(2, 3, 3), 1, {})


def test_expected_routing_round_trips_through_the_manifest(tiny_export_model: UniMMAD) -> None:
    routing = mixed_routing(2, 6, torch.Generator().manual_seed(0))
    back = routing_from_manifest(domain_spec(calibration_of(routing), "expected"), tiny_export_model.config)
    assert torch.equal(back.scores > 0, routing.scores > 0)
    assert torch.equal(back.idx[back.scores > 0], routing.idx[routing.scores > 0])
    assert torch.allclose(back.scores, routing.scores)


def test_topk_manifest_needs_top_k_leaders_even_without_a_mode(tiny_export_model: UniMMAD) -> None:
    spec = domain_spec(calibration_of(mixed_routing(2, 6, torch.Generator().manual_seed(0))), None)
    with pytest.raises(ValueError, match="top-K routing has .* experts per gate, the model uses top-2"):
        routing_from_manifest(spec, tiny_export_model.config)
