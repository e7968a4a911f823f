"""Measure the slot-conv candidates (export.slot_conv) inside the whole frozen graph of a preset.

    python -m export.candidates [--preset lite] [--min-seconds 2]   (prints JSON)

For every candidate: export the frozen graph of a random-init model of the preset with two domains
(the weights do not change the cost), then time onnxruntime at batch 1 and 8 with 1 and 3 modalities.
The figures and the resulting choice are in export/slot_conv.py's docstring and README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from export.bench import throughput
from export.fold import kernel_banks
from export.frozen import OUTPUT_NAMES, FrozenUniMMAD
from export.onnx_graph import check_graph, export_graph
from export.routing import DomainRouting
from export.slot_conv import SLOT_CONVS
from model.anomaly_map import NormalStatistics
from model.config import CALIBRATED_FUSIONS, UniMMADConfig, preset
from model.unimmad import LEVELS, UniMMAD


def uniform_routing(slots: int, levels: int, branches: int, top_k: int) -> DomainRouting:
    idx = torch.arange(top_k).expand(slots, levels, branches, top_k).clone()
    return DomainRouting(idx, torch.full((slots, levels, branches, top_k), 1 / top_k))


def neutral_statistics(config: UniMMADConfig, domains: int) -> NormalStatistics | None:
    """Statistics that leave distances as they are (location 0, scale 1) when the fusion needs some."""
    if config.anomaly_fusion not in CALIBRATED_FUSIONS:
        return None
    shape = (domains, config.max_modalities, LEVELS)
    return NormalStatistics(torch.zeros(shape), torch.ones(shape))


def measure(preset_name: str, min_seconds: float) -> dict:
    config = preset(preset_name).replace(prior_weights=None, encoder_weights=None)
    torch.manual_seed(0)
    model = UniMMAD(config, allow_random_prior=True).eval()
    routing = uniform_routing(config.max_modalities, LEVELS, len(config.kernel_sizes), config.top_k)
    banks = kernel_banks(model, [routing, routing])
    size = config.image_size
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in SLOT_CONVS:
            path = Path(folder) / f"{method}.onnx"
            export_graph(
                FrozenUniMMAD(model, banks, neutral_statistics(config, domains=2), method=method),
                (torch.zeros(2, 2, 3, size, size), torch.tensor([0])),
                path,
            )
            session = check_graph(path)
            for slots in (1, 3):
                for batch in (1, 8):
                    feed = {
                        "images": np.random.default_rng(0).standard_normal(
                            (batch, slots, 3, size, size), np.float32
                        ),
                        "domain": np.array([1]),
                    }
                    rate = throughput(partial(session.run, list(OUTPUT_NAMES), feed), batch, min_seconds)
                    results.setdefault(method, {})[f"M{slots}_B{batch}"] = rate
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m export.candidates", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lite", help="model preset (default lite)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each case at least this long")
    args = parser.parse_args()
    try:
        print(json.dumps(measure(args.preset, args.min_seconds), indent=2))
    except ValueError as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
