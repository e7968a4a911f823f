"""The exported graphs run in onnxruntime and match torch; the `domain` input picks that domain's kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_fold import mixed_routing, random_routing

from bundle.loader import load_bundle
from export.calibration import DEFAULT_ROUTING_MODE, ROUTING_MODES
from export.fold import kernel_banks
from export.frozen import OUTPUT_NAMES, FrozenUniMMAD
from export.onnx_graph import OPSET, ExportError, check_graph, export_graph, external_data_files
from export.routing import forced_routing, routing_from_manifest, slot_major_pairs
from model.anomaly_map import anomaly_maps
from model.checkpoint import load_checkpoint
from model.unimmad import UniMMAD

PARITY_TOLERANCE = 5e-5


def torch_maps(model: UniMMAD, images: torch.Tensor, routing=None) -> list[np.ndarray]:
    with torch.no_grad():
        if routing is None:
            output = model(images)
        else:
            output = model(images, routing=forced_routing(routing, slot_major_pairs(*images.shape[:2])[1]))
        maps = anomaly_maps(output, model.config)
    return [
        value.numpy() for value in (maps.fused, maps.per_modality, maps.image_score, maps.modality_scores)
    ]


def test_domain_input_selects_that_domains_kernels(tiny_export_model: UniMMAD, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(11)
    routings = [random_routing(2, 6, generator), mixed_routing(2, 6, generator)]
    path = tmp_path / "frozen.onnx"
    frozen = FrozenUniMMAD(tiny_export_model, kernel_banks(tiny_export_model, routings))
    export_graph(frozen, (torch.zeros(2, 2, 3, 64, 64), torch.tensor([0])), path, with_domain=True)
    session = check_graph(path)
    images = torch.randn(3, 2, 3, 64, 64, generator=generator)
    outputs = []
    for domain, routing in enumerate(routings):
        got = session.run(list(OUTPUT_NAMES), {"images": images.numpy(), "domain": np.array([domain])})
        for name, value, want in zip(OUTPUT_NAMES, got, torch_maps(tiny_export_model, images, routing)):
            assert np.abs(value - want).max() <= PARITY_TOLERANCE, name
        outputs.append(got)
    # The two domains' maps are told apart far beyond the parity tolerance.
    assert np.abs(outputs[0][0] - outputs[1][0]).max() > 10 * PARITY_TOLERANCE


@pytest.mark.parametrize("bundle_fixture", ["tiny_bundle", "other_mode_bundle"])
def test_bundle_graphs_match_torch_for_every_domain(
    bundle_fixture: str, tiny_checkpoint: Path, request: pytest.FixtureRequest
) -> None:
    bundle = load_bundle(request.getfixturevalue(bundle_fixture))
    (mode,) = {spec.routing.mode for spec in bundle.manifest.domains.values()}
    assert mode in ROUTING_MODES and (mode == DEFAULT_ROUTING_MODE) == (bundle_fixture == "tiny_bundle")
    model, _ = load_checkpoint(tiny_checkpoint)
    frozen = check_graph(bundle.graph("frozen").model)
    dynamic = check_graph(bundle.graph("dynamic").model)
    generator = torch.Generator().manual_seed(5)
    for spec in bundle.manifest.domains.values():
        images = torch.randn(2, len(spec.modalities), 3, 64, 64, generator=generator)
        routing = routing_from_manifest(spec, model.config)
        got_frozen = frozen.run(
            list(OUTPUT_NAMES), {"images": images.numpy(), "domain": np.array([spec.index])}
        )
        got_dynamic = dynamic.run(list(OUTPUT_NAMES), {"images": images.numpy()})
        for name, ort_frozen, ort_dynamic, want_frozen, want_dynamic in zip(
            OUTPUT_NAMES,
            got_frozen,
            got_dynamic,
            torch_maps(model, images, routing),
            torch_maps(model, images),
        ):
            assert ort_frozen.shape == want_frozen.shape
            assert np.abs(ort_frozen - want_frozen).max() <= PARITY_TOLERANCE, name
            assert np.abs(ort_dynamic - want_dynamic).max() <= PARITY_TOLERANCE, name


def test_bundle_graphs_declare_the_design_io(tiny_bundle: Path) -> None:
    graphs = load_bundle(tiny_bundle).manifest.graphs
    assert graphs.frozen.inputs["images"].shape == ["batch", "modalities", 3, 64, 64]
    assert graphs.frozen.inputs["domain"].model_dump() == {"dtype": "int64", "shape": [1]}
    assert set(graphs.dynamic.inputs) == {"images"}
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
