"""A tiny but real bundle built with onnx.helper that honours the export I/O contract (docs/DESIGN.md).

The graph is deliberately simple yet depends on every input: a modality map is the channel mean of
|images| times a per-domain gain (gathered with the `domain` input), the fused map is the
root-sum-square over modalities, and the scores are top-fraction means, exactly as the manifest says.
Swap :func:`make_test_bundle` for ``python -m export bundle`` once the exporter lands.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bundle import file_sha256
from bundle.manifest import FORMAT_VERSION, Manifest
from modalities.kinds import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 16
TOP_FRACTION = 0.05
OPSET = 18

# name -> (index, modalities [(name, kind)], gain of the frozen graph, threshold)
TEST_DOMAINS: dict[str, tuple[int, list[tuple[str, str]], float, float]] = {
    "mvtec/bottle": (0, [("rgb", "rgb")], 1.0, 1.2),
    "mvtec3d/tire": (1, [("rgb", "rgb"), ("depth", "depth")], 0.5, 0.8),
    "mulsen/capsule": (2, [("rgb", "rgb"), ("infrared", "gray"), ("depth", "depth")], 2.0, 1.5),
    "brats/brain": (3, [("flair", "gray"), ("t1", "gray"), ("t1ce", "gray"), ("t2", "gray")], 0.25, 0.6),
}
DEPTH_SCALE = 10.0


def _top_fraction_mean(values: str, flat_shape: list[int], output: str, k: int, tag: str) -> list:
    """Nodes reducing the last axes of ``values`` (reshaped to ``flat_shape``) to the mean of their top k."""
    return [
        helper.make_node("Reshape", [values, f"{tag}_flat_shape"], [f"{tag}_flat"]),
        helper.make_node("TopK", [f"{tag}_flat", "top_k"], [f"{tag}_top", f"{tag}_top_idx"], axis=-1),
        helper.make_node("ReduceMean", [f"{tag}_top", "last_axis"], [output], keepdims=0),
    ], [numpy_helper.from_array(np.array(flat_shape, dtype=np.int64), f"{tag}_flat_shape")]


def _graph(gains: np.ndarray | None, size: int) -> onnx.ModelProto:
    """The model; with ``gains`` it takes a ``domain`` input (frozen graph), without it a fixed gain (dynamic)."""
    k = max(1, math.floor(size * size * TOP_FRACTION))
    nodes = [
        helper.make_node("Abs", ["images"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude", "channel_axis"], ["channel_mean"], keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "channel_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "modality_axis"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([k], dtype=np.int64), "top_k"),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", "modalities", 3, size, size])]
    if gains is None:
        initializers.append(numpy_helper.from_array(np.array([0.75], dtype=np.float32), "gain"))
    else:
        inputs.append(helper.make_tensor_value_info("domain", TensorProto.INT64, [1]))
        initializers.append(numpy_helper.from_array(gains.astype(np.float32), "gain_bank"))
        nodes.append(helper.make_node("Gather", ["gain_bank", "domain"], ["gain"], axis=0))
    nodes += [
        helper.make_node("Mul", ["channel_mean", "gain"], ["modality_maps"]),
        helper.make_node("Mul", ["modality_maps", "modality_maps"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "modality_axis"], ["sum_squares"], keepdims=0),
        helper.make_node("Sqrt", ["sum_squares"], ["anomaly_map"]),
    ]
    for values, flat, output, tag in (
        ("anomaly_map", [0, -1], "image_score", "fused"),
        ("modality_maps", [0, 0, -1], "modality_scores", "per_modality"),
    ):
        more_nodes, more_inits = _top_fraction_mean(values, flat, output, k, tag)
        nodes += more_nodes
        initializers += more_inits
    outputs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", size, size]),
        helper.make_tensor_value_info("modality_maps", TensorProto.FLOAT, ["batch", "modalities", size, size]),
        helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("modality_scores", TensorProto.FLOAT, ["batch", "modalities"]),
    ]
    graph = helper.make_graph(nodes, "unimmad_test", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _io(model: onnx.ModelProto, values) -> dict:
    dtypes = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}
    return {
        value.name: {
            "dtype": dtypes[value.type.tensor_type.elem_type],
            "shape": [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim],
        }
        for value in values
    }


def make_test_bundle(root: Path) -> Path:
    """Write a complete, valid bundle with the four test domains into ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    gains = np.zeros(len(TEST_DOMAINS), dtype=np.float32)
    for index, _, gain, _ in TEST_DOMAINS.values():
        gains[index] = gain
    graphs = {}
    for kind, file, model in (
        ("frozen", "model.onnx", _graph(gains, INPUT_SIZE)),
        ("dynamic", "model_dynamic.onnx", _graph(None, INPUT_SIZE)),
    ):
        onnx.save(model, root / file)
        graphs[kind] = {
            "file": file,
            "sha256": file_sha256(root / file),
            "external_data": [],
            "inputs": _io(model, model.graph.input),
            "outputs": _io(model, model.graph.output),
        }
    domains = {
        name: {
            "index": index,
            "modalities": [
                {"name": m, "kind": kind, **({"depth_scale": DEPTH_SCALE} if kind == "depth" else {})}
                for m, kind in modalities
            ],
            "threshold": threshold,
            "threshold_method": {"method": "normal_quantile", "target_fpr": 0.05, "n_images": 20, "split": "train"},
            "routing": {
                "agreement": 0.9,
                "leaders": [{"level": 0, "branch": "a", "slot": 0, "experts": [1, 3], "scores": [0.6, 0.4]}],
            },
        }
        for name, (index, modalities, _, threshold) in TEST_DOMAINS.items()
    }
    manifest = Manifest.model_validate(
        {
            "format_version": FORMAT_VERSION,
            "model_version": "test-0.1",
            "preset": "test",
            "created_at": datetime(2025, 1, 1, tzinfo=UTC).isoformat(),
            "input_size": INPUT_SIZE,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "image_score": {"reduction": "top_fraction_mean", "fraction": TOP_FRACTION},
            "anomaly_map": {"fusion": "rss", "blur_sigma": 0.0, "blur_kernel": 1},
            "versions": {"torch": "none", "onnx": onnx.__version__, "opset": OPSET},
            "graphs": graphs,
            "domains": domains,
        }
    )
    (root / "manifest.json").write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return root


def rewrite_manifest(root: Path, edit) -> None:
    """Apply ``edit(dict)`` to the raw manifest JSON (for tests that break a bundle on purpose)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
