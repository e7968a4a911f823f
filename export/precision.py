"""Optional fp16 weights and activations inside a graph whose inputs and outputs stay float32."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass
from onnxruntime.transformers.float16 import convert_float_to_float16

from export.onnx_graph import external_data_files


def convert_to_fp16(path: Path) -> None:
    """Rewrite the graph at `path` (and its external data) in float16; I/O keep float32 so callers do not change.

    The top-k and blur stay numerically fine in fp16 at these map sizes; verify reports the drift.
    """
    model = onnx.load(str(path))
    for data in external_data_files(path):
        data.unlink()
    converted = ir.from_proto(convert_float_to_float16(model, keep_io_types=True))
    # The converter appends the float32 -> float16 casts of the inputs after the nodes that read them.
    TopologicalSortPass()(converted)
    onnx.save(ir.to_proto(converted), str(path), save_as_external_data=True, location=f"{path.name}.data")
