"""Append a domain learned by `model adapt` to a bundle; every old domain stays bit-identical.

    old bundle (never written) --copy--> dynamic and signature graphs, old manifest entries
    old model.onnx: initializers gathered by the `domain` input (kernel, aggregation, statistics banks)
                    [D, ...] --append the new domain's row--> [D + 1, ...]; every other initializer kept
    adapted checkpoint --calibrate, fold (export.build's steps)--> the new domain's rows
    new model.onnx --held-out normals--> the new domain's threshold, ranges (and signature statistics)
    manifest: old entries + the new one (index D), rows_sha256 per set, lineage, a new model_version

The graph's nodes are not re-exported: only bank rows are appended, so an old domain runs the same
operators on the same weights as before. That is checked, not assumed: the old rows keep their hashes,
both graphs give every old set bit-identical outputs, and the adapted model, holding the graph's banks,
gives the old graph's scores (else adapt changed a weight all domains share, or the bundle comes from
another model, and a full export is needed).
The new domain is served by the frozen graph; the dynamic graph (the parent model with per-sample routing)
keeps serving and verifying the old domains only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import Tensor

from bundle import file_sha256
from bundle.loader import MANIFEST_NAME, load_bundle, write_manifest
from bundle.manifest import DomainSpec, Manifest, SubsetSpec
from export.build import (
    CALIBRATION_FILE,
    FROZEN_FILE,
    BundleOptions,
    DomainStatistics,
    calibrated_entry,
    domain_signatures,
    domain_statistics,
    domain_threshold,
    split_normals,
)
from export.calibration import Calibration, calibrate
from export.fold import kernel_banks
from export.frozen import AggregationBank, FrozenCMoE, FrozenUniMMAD
from export.frozen import DomainStatistics as StatisticsBank
from export.onnx_graph import check_graph, graph_spec
from export.samples import DomainData, batches, select_domains
from export.signature import SIGNATURE_OUTPUT
from model.calibration import RecordedHoldout, stack_statistics
from model.checkpoint import load_checkpoint
from model.config import CALIBRATED_FUSIONS
from model.data import SyntheticConfig, parse_data_spec
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

DOMAIN_INPUT = "domain"
# Ops that pass the domain index on unchanged in value (the exporter reshapes it before every Gather).
INDEX_PASSTHROUGH = ("Reshape", "Squeeze", "Unsqueeze", "Cast", "Identity")
CHECK_BATCH = 2  # random inputs per old domain that both graphs must answer identically
# torch vs onnxruntime on the same weights differ by float rounding (export verify: ~1e-5 relative).
PARITY_TOLERANCE = 1e-3


class AddDomainError(ValueError):
    """A refusal of `export add-domain`; the message is one line that says what to do instead."""


@dataclass(frozen=True)
class GraphRows:
    """The frozen graph's per-set banks: initializer name -> [D, ...], gathered by `domain`."""

    per_set: dict[str, np.ndarray]

    @property
    def sets(self) -> int:
        return next(iter(self.per_set.values())).shape[0]


def domain_gathered(graph: onnx.GraphProto) -> set[str]:
    """Names of the initializers that a Gather indexes with the `domain` input (the graph's banks)."""
    derived = {DOMAIN_INPUT}
    for node in graph.node:  # topologically sorted
        if node.op_type in INDEX_PASSTHROUGH and node.input and node.input[0] in derived:
            derived.update(node.output)
    initializers = {tensor.name for tensor in graph.initializer}
    return {
        node.input[0]
        for node in graph.node
        if node.op_type == "Gather" and node.input[0] in initializers and node.input[1] in derived
    }


def graph_rows(model: onnx.ModelProto) -> GraphRows:
    """model: loaded with its external data."""
    banks = domain_gathered(model.graph)
    if not banks:
        raise AddDomainError("the bundle's frozen graph gathers nothing by domain; export it again")
    return GraphRows(
        {
            tensor.name: numpy_helper.to_array(tensor)
            for tensor in model.graph.initializer
            if tensor.name in banks
        }
    )


def rows_sha256(per_set: Mapping[str, np.ndarray], index: int) -> str:
    """sha256 of one set's rows of every bank (name, dtype, shape and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(per_set):
        row = np.ascontiguousarray(per_set[name][index])
        digest.update(f"{name}:{row.dtype.str}:{row.shape}".encode())
        digest.update(row.tobytes())
    return digest.hexdigest()


def per_set_buffers(module: FrozenUniMMAD) -> dict[str, Tensor]:
    """The buffers of a frozen network that the graph holds per calibrated set (its banks)."""
    owners = (FrozenCMoE, AggregationBank, StatisticsBank)
    return {
        f"{prefix}.{name}" if prefix else name: value
        for prefix, owner in module.named_modules()
        if isinstance(owner, owners)
        for name, value in owner.named_buffers(recurse=False)
    }


def as_stored(value: Tensor, like: np.ndarray) -> np.ndarray:
    """A torch tensor in the dtype the graph stores (float16 bundles keep float16)."""
    return value.detach().cpu().numpy().astype(like.dtype)


def appended_graph(model: onnx.ModelProto, rows: GraphRows, module: FrozenUniMMAD) -> onnx.ModelProto:
    """The frozen graph with the module's single set appended to every bank (nodes untouched)."""
    new_rows = per_set_buffers(module)
    if set(new_rows) != set(rows.per_set):
        missing = sorted(set(new_rows) ^ set(rows.per_set))
        raise AddDomainError(
            f"the bundle's per-domain banks differ from this exporter's ({missing[0]}): it predates "
            "per-domain aggregation banks; export it again with `python -m export bundle`"
        )
    for tensor in model.graph.initializer:
        if tensor.name in rows.per_set:
            old = rows.per_set[tensor.name]
            row = as_stored(new_rows[tensor.name], old)
            if row.shape[1:] != old.shape[1:]:
                raise AddDomainError(
                    f"bank {tensor.name}: the new row is {row.shape[1:]}, the bundle's {old.shape[1:]}"
                )
            tensor.CopyFrom(numpy_helper.from_array(np.concatenate([old, row]), tensor.name))
    for value in model.graph.value_info:  # the exporter records every initializer's shape
        if value.name in rows.per_set:
            value.type.tensor_type.shape.dim[0].dim_value = rows.sets + 1
    return model


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write a graph with its weights in one external data file beside it (as export_graph does)."""
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
    )


def random_inputs(spec: DomainSpec | SubsetSpec, size: int) -> dict[str, np.ndarray]:
    """CHECK_BATCH random images of a calibrated set's modality count, seeded by its index, and the index."""
    images = np.random.default_rng(spec.index).standard_normal(
        (CHECK_BATCH, len(spec.modalities), 3, size, size)
    )
    return {"images": images.astype(np.float32), DOMAIN_INPUT: np.array([spec.index], dtype=np.int64)}


def load_rows(module: FrozenUniMMAD, per_set: Mapping[str, np.ndarray]) -> None:
    """Replace the module's banks (in place) by the graph's, every set's rows."""
    for name, value in per_set.items():
        prefix, _, buffer = name.rpartition(".")
        owner = module.get_submodule(prefix) if prefix else module
        owner.register_buffer(buffer, torch.from_numpy(value.astype(np.float32)))


@torch.no_grad()
def check_old_answers(
    old: ort.InferenceSession, new: ort.InferenceSession, module: FrozenUniMMAD, manifest: Manifest
) -> None:
    """Per old calibrated set, on random inputs: the new graph answers bit for bit as the old one, and the
    adapted model holding the graph's banks answers as the old graph up to float rounding. The exporter
    folds and renames weights (BatchNorm into convs), so comparing the model with the graph's behaviour,
    not its initializers, is what proves that everything the sets share is the bundle's own."""
    names = [output.name for output in old.get_outputs()]
    for name, spec in manifest.served_sets():
        inputs = random_inputs(spec, manifest.input_size)
        before = old.run(None, inputs)
        if any(a.tobytes() != b.tobytes() for a, b in zip(before, new.run(None, inputs))):
            raise AddDomainError(f"the set {name} would answer differently in the new graph; nothing written")
        answers = module(torch.from_numpy(inputs["images"]), torch.from_numpy(inputs[DOMAIN_INPUT]))
        if SIGNATURE_OUTPUT in names and not close(answers[-1], before[names.index(SIGNATURE_OUTPUT)]):
            raise AddDomainError(
                "the bundle comes from another model: its frozen prior differs from the checkpoint's; add "
                "domains with a checkpoint adapted (`model adapt`) from the bundle's own run"
            )
        if not close(answers[names.index("image_score")], before[names.index("image_score")]):
            raise AddDomainError(
                f"the checkpoint does not reproduce the bundle's {name} scores: adapt changed weights every "
                "domain shares, or the bundle comes from another run; export the whole bundle again "
                "(`python -m export bundle`), or adapt from the bundle's own run"
            )


def close(torch_value: Tensor, graph_value: np.ndarray) -> bool:
    return np.allclose(torch_value.numpy(), graph_value, rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE)


def iter_sets(domains: dict) -> Iterator[dict]:
    """Every calibrated set's entry of a manifest's ``domains`` (as dicts): domains, then their subsets."""
    for entry in domains.values():
        yield entry
        yield from entry.get("subsets", {}).values()


def check_recorded_rows(manifest_domains: dict, rows: GraphRows) -> None:
    """The old bundle's recorded rows_sha256 (from an earlier add-domain) must still match its graph."""
    for entry in iter_sets(manifest_domains):
        recorded = entry.get("rows_sha256")
        if recorded is not None and recorded != rows_sha256(rows.per_set, entry["index"]):
            raise AddDomainError(
                f"set at index {entry['index']}: its rows in model.onnx no longer match the manifest's "
                "rows_sha256; the bundle was modified"
            )


def check_same_model(manifest: Manifest, model: UniMMAD) -> None:
    config = model.config
    recorded = (
        manifest.preset,
        manifest.input_size,
        tuple(manifest.normalization.mean),
        manifest.anomaly_map.fusion,
    )
    expected = (config.preset, config.image_size, tuple(config.mean), config.anomaly_fusion)
    if recorded != expected:
        raise AddDomainError(
            f"the bundle comes from another model: preset, input size, normalisation and fusion {recorded} "
            f"vs the checkpoint's {expected}"
        )


@dataclass(frozen=True)
class NewDomain:
    """The added domain's frozen network (its banks hold that one set) and what was fitted for it."""

    module: FrozenUniMMAD
    calibration: Calibration
    statistics: DomainStatistics | None


def new_domain(model: UniMMAD, data: DomainData, options: BundleOptions) -> NewDomain:
    """Calibrate and fold `data` with the adapted model, as export.build does for every domain."""
    train, _ = split_normals(data, options)
    if not train:
        raise AddDomainError(f"domain {data.name} has no normal training samples to calibrate its routing")
    images = (batch.images for batch in batches(data, train, model.config, options.batch_size))
    calibration = calibrate(model, images, options.routing)
    statistics = None
    if model.config.anomaly_fusion in CALIBRATED_FUSIONS:
        statistics = domain_statistics(model, data, options)
    bank = (
        None if statistics is None else stack_statistics([statistics.statistics], model.config.max_modalities)
    )
    module = FrozenUniMMAD(model, kernel_banks(model, [calibration.routing]), bank).eval()
    return NewDomain(module, calibration, statistics)


def add_domain(
    bundle: Path,
    checkpoint: Path,
    domain: str,
    out: Path,
    model_version: str | None = None,
    batch_size: int = 8,
    prior_weights: str | None = None,
    synthetic: SyntheticConfig | None = None,
) -> Manifest:
    """Write `bundle` + `domain` (learned by the adapted run in `checkpoint`, from its data spec) into the
    new folder `out`; returns the new manifest. Raises AddDomainError (one line) when it must refuse.
    synthetic sizes the ``synthetic`` entries of the checkpoint's data spec (tests)."""
    bundle, out = Path(bundle).resolve(), Path(out).resolve()
    if out == bundle or out.exists():
        raise AddDomainError(f"--out {out} exists; add-domain writes a new bundle and never modifies one")
    manifest = load_bundle(bundle).manifest
    if domain in manifest.domains:
        raise AddDomainError(f"domain {domain} already exists in the bundle {bundle}")
    model, run_config = load_checkpoint(checkpoint, prior_weights=prior_weights)
    check_same_model(manifest, model)
    (data,) = select_domains(parse_data_spec(run_config["data"]["spec"], synthetic=synthetic), [domain])
    old_entries = manifest.model_dump(mode="json")["domains"]
    first = next(iter(manifest.domains.values()))
    options = BundleOptions(
        holdout=RecordedHoldout.from_run_config(run_config),
        batch_size=batch_size,
        target_fpr=first.threshold_method.target_fpr or BundleOptions().target_fpr,
        routing=first.routing.mode or BundleOptions().routing,
    )

    graph = onnx.load(str(bundle / manifest.graphs.frozen.file))
    rows = graph_rows(graph)
    check_recorded_rows(old_entries, rows)
    added = new_domain(model, data, options)
    index = rows.sets
    logger.info("appending %s as set %d of the frozen graph", data.name, index)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for spec in (manifest.graphs.dynamic, *([manifest.signature.graph] if manifest.signature else [])):
            for name in (spec.file, *(extra.file for extra in spec.external_data)):
                shutil.copy2(bundle / name, staging / name)
        save_graph(appended_graph(graph, rows, added.module), staging / FROZEN_FILE)
        session = check_graph(staging / FROZEN_FILE)
        appended = graph_rows(onnx.load(str(staging / FROZEN_FILE)))
        load_rows(added.module, appended.per_set)
        check_old_answers(check_graph(bundle / manifest.graphs.frozen.file), session, added.module, manifest)
        threshold, ranges = domain_threshold(session, data, index, model, options)
        names = list(data.domain.modality_names)
        entry = calibrated_entry(
            added.calibration, threshold, ranges, added.statistics, names, model.config.kernel_sizes
        ) | {
            "index": index,
            "modalities": [spec.to_dict() for spec in data.domain.modalities],
            "loss_weight": data.domain.loss_weight,
            "subsets": {},
        }
        if manifest.signature is not None:
            entry["signature"] = domain_signatures(model, [data], options)[0].entry
        domains = {**old_entries, data.name: entry}
        for set_entry in iter_sets(domains):
            set_entry["rows_sha256"] = rows_sha256(appended.per_set, set_entry["index"])
        new_manifest = Manifest.model_validate(
            manifest.model_dump(mode="json")
            | {
                "model_version": model_version or f"{manifest.model_version}+{data.name}",
                "created_at": datetime.now(UTC).isoformat(),
                "graphs": {
                    "frozen": graph_spec(staging / FROZEN_FILE, staging),
                    "dynamic": manifest.graphs.dynamic.model_dump(mode="json"),
                },
                "domains": domains,
                "lineage": {
                    "parent_model_version": manifest.model_version,
                    "parent_manifest_sha256": file_sha256(bundle / MANIFEST_NAME),
                    "domains_added": [data.name],
                    "checkpoint": str(Path(checkpoint).resolve()),
                    "parent_lineage": manifest.lineage.model_dump(mode="json") if manifest.lineage else None,
                },
            }
        )
        write_manifest(staging, new_manifest)
        calibration = json.loads((bundle / CALIBRATION_FILE).read_text(encoding="utf-8"))
        calibration[data.name] = added.calibration.summary(model.config.kernel_sizes)
        (staging / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2), encoding="utf-8")
        load_bundle(staging)  # the service's own integrity check
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("bundle %s written: %s added to %s", out, data.name, bundle)
    return new_manifest
