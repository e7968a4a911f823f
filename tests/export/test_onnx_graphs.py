"""The exported graphs run in onnxruntime and match torch; the `domain` input picks that domain's kernels
and normal statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bundle.loader import load_bundle
from export.build import statistics_from_manifest
from export.calibration import DEFAULT_ROUTING_MODE, ROUTING_MODES
from export.frozen import OUTPUT_NAMES
from export.onnx_graph import OPSET, ExportError, check_graph, external_data_files
from export.routing import forced_routing, routing_from_manifest, slot_major_pairs
from model.anomaly_map import NormalStatistics, anomaly_maps
from model.checkpoint import load_checkpoint
from model.unimmad import UniMMAD

PARITY_TOLERANCE = 5e-5


def torch_maps(
    model: UniMMAD, images: torch.Tensor, statistics: NormalStatistics | None, routing=None
) -> list[np.ndarray]:
    """The four outputs of the torch model (per-sample routing, or `routing` forced) with a domain's
    statistics [M, L] (None: uncalibrated)."""
    batched = None if statistics is None else statistics.as_batch()
    with torch.no_grad():
        if routing is None:
            output = model(images)
        else:
            output = model(images, routing=forced_routing(routing, slot_major_pairs(*images.shape[:2])[1]))
        maps = anomaly_maps(output, model.config, batched)
    return [
        value.numpy() for value in (maps.fused, maps.per_modality, maps.image_score, maps.modality_scores)
    ]


@pytest.mark.parametrize("bundle_fixture", ["tiny_bundle", "pair_bundle"])
def test_bundle_graphs_match_torch_for_every_calibrated_set(
    bundle_fixture: str, tiny_checkpoint: Path, request: pytest.FixtureRequest
) -> None:
    """Every domain and subset, in both graphs, matches torch with that set's routing and statistics; and
    the `domain` input selects them: sets fed the same images answer differently."""
    bundle = load_bundle(request.getfixturevalue(bundle_fixture))
    manifest = bundle.manifest
    (mode,) = {spec.routing.mode for spec in manifest.domains.values()}
    assert mode in ROUTING_MODES and (mode == DEFAULT_ROUTING_MODE) == (bundle_fixture == "tiny_bundle")
    model, _ = load_checkpoint(tiny_checkpoint)
    frozen = check_graph(bundle.graph("frozen").model)
    dynamic = check_graph(bundle.graph("dynamic").model)
    generator = torch.Generator().manual_seed(5)
    images_by_slots: dict[int, torch.Tensor] = {}
    fused_by_slots: dict[int, list[np.ndarray]] = {}
    served = [
        view
        for domain in manifest.domains.values()
        for view in (domain, *map(domain.subset_view, domain.subsets))
    ]
    for spec in served:
        slots = len(spec.modalities)
        if slots not in images_by_slots:
            images_by_slots[slots] = torch.randn(2, slots, 3, 64, 64, generator=generator)
        images = images_by_slots[slots]
        routing = routing_from_manifest(spec, model.config)
        statistics = statistics_from_manifest(spec)
        feeds = {"images": images.numpy(), "domain": np.array([spec.index])}
        got_frozen = frozen.run(list(OUTPUT_NAMES), feeds)
        got_dynamic = dynamic.run(list(OUTPUT_NAMES), feeds)
        fused_by_slots.setdefault(slots, []).append(got_frozen[0])
        for name, ort_frozen, ort_dynamic, want_frozen, want_dynamic in zip(
            OUTPUT_NAMES,
            got_frozen,
            got_dynamic,
            torch_maps(model, images, statistics, routing),
            torch_maps(model, images, statistics),
        ):
            assert ort_frozen.shape == want_frozen.shape
            assert np.abs(ort_frozen - want_frozen).max() <= PARITY_TOLERANCE, name
            assert np.abs(ort_dynamic - want_dynamic).max() <= PARITY_TOLERANCE, name
    shared = [maps for maps in fused_by_slots.values() if len(maps) > 1]
    # pair_bundle: parts (index 0) and boards:rgb+depth (index 2) both take two modalities.
    assert bool(shared) == (bundle_fixture == "pair_bundle")
    for first, second in shared:
        assert np.abs(first - second).max() > 10 * PARITY_TOLERANCE


def test_bundle_graphs_declare_the_design_io(tiny_bundle: Path) -> None:
    graphs = load_bundle(tiny_bundle).manifest.graphs
    assert graphs.frozen.inputs["images"].shape == ["batch", "modalities", 3, 64, 64]
    for graph in (graphs.frozen, graphs.dynamic):
        assert set(graph.inputs) == {"images", "domain"}
        assert graph.inputs["domain"].model_dump() == {"dtype": "int64", "shape": [1]}
    for graph in (graphs.frozen, graphs.dynamic):
        assert graph.outputs["anomaly_map"].shape == ["batch", 64, 64]
        assert graph.outputs["modality_maps"].shape == ["batch", "modalities", 64, 64]
        assert graph.outputs["image_score"].shape == ["batch"]
        assert graph.outputs["modality_scores"].shape == ["batch", "modalities"]
        assert [item.file for item in graph.external_data] == [f"{graph.file}.data"]
    model = onnx.load(str(tiny_bundle / graphs.frozen.file), load_external_data=False)
    assert max(opset.version for opset in model.opset_import if opset.domain == "") >= OPSET
    assert external_data_files(tiny_bundle / graphs.frozen.file) == [tiny_bundle / "model.onnx.data"]


def test_corrupt_onnx_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not a protobuf")
    with pytest.raises(ExportError) as caught:
        check_graph(path)
    assert "broken.onnx" in str(caught.value) and "\n" not in str(caught.value)
