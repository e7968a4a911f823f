"""torch -> ONNX with the dynamo exporter, then prove the file is usable: onnx.checker and an ORT session.

Both serving graphs take images float32 [batch, modalities, 3, S, S] with symbolic `batch` and
`modalities`, and domain int64 [1]; the signature graph takes the images alone. torch 2.13's exporter keeps the weights in an external
data file beside the .onnx (`<file>.data`); the bundle ships it and records its sha256.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from torch import nn

from bundle import file_sha256
from export.frozen import GRAPH_OUTPUT_NAMES
from export.signature import SIGNATURE_OUTPUT

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAMES = ("images", "domain")
MAX_BATCH = 4096
DTYPE_NAMES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
}


class ExportError(RuntimeError):
    """The exported graph failed a check; the message is one line."""


def export_graph(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """Export `module` (eval mode) to `path` (+ external data), opset OPSET, dynamic batch and modalities.

    example (images, domain): a serving graph, forward(images, domain) -> GRAPH_OUTPUT_NAMES;
    example (images,): the signature graph, forward(images) -> signature.
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    modalities = torch.export.Dim("modalities", min=1, max=4)
    serving = len(example) == len(INPUT_NAMES)
    dynamic = {"images": {0: batch, 1: modalities}} | ({"domain": None} if serving else {})
    program = torch.onnx.export(
        module.eval(),
        example,
        dynamo=True,
        opset_version=OPSET,
        input_names=list(INPUT_NAMES[: len(example)]),
        output_names=list(GRAPH_OUTPUT_NAMES if serving else (SIGNATURE_OUTPUT,)),
        dynamic_shapes=dynamic,
        verbose=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)
    logger.info("exported %s", path)


def external_data_files(path: Path) -> list[Path]:
    """The external data files an .onnx refers to (paths beside it), in first-use order."""
    model = onnx.load(str(path), load_external_data=False)
    names: list[str] = []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if location not in names:
                names.append(location)
    return [path.parent / name for name in names]


def check_graph(path: Path) -> ort.InferenceSession:
    """onnx.checker (full, with the external data) and an onnxruntime CPU session; ExportError otherwise."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"{path.name} fails onnx.checker: {str(error).splitlines()[0]}") from None
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 -- onnxruntime raises private types that share no base
        raise ExportError(f"onnxruntime cannot load {path.name}: {str(error).splitlines()[0]}") from None


def _tensor_spec(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    return {
        "dtype": DTYPE_NAMES[tensor.elem_type],
        "shape": [dim.dim_param or dim.dim_value for dim in tensor.shape.dim],
    }


def graph_spec(path: Path, root: Path) -> dict:
    """The manifest's GraphSpec fields for the graph at `path` inside the bundle folder `root`."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        "file": path.relative_to(root).as_posix(),
        "sha256": file_sha256(path),
        "external_data": [
            {"file": data.relative_to(root).as_posix(), "sha256": file_sha256(data)}
            for data in external_data_files(path)
        ],
        "inputs": {value.name: _tensor_spec(value) for value in model.graph.input},
        "outputs": {value.name: _tensor_spec(value) for value in model.graph.output},
    }
