"""Pydantic models of ``manifest.json``: the single definition the exporter writes and the service reads.

Every model forbids unknown keys so that a typo in an exporter, or a bundle from a newer format,
fails loudly instead of being half-understood. ``bundle/manifest.schema.json`` is generated from
these models (``python -m bundle schema``) and a test keeps it in sync.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from bundle.domain_match import BOUND_RULE
from modalities.errors import ModalityError
from modalities.kinds import KINDS, ModalitySpec

# 2: both graphs take `domain`; calibrated fusion with per-domain normal statistics; score_range and
# heatmap_range required.
# 3: the graphs also output `signature`; per-domain signature statistics and out-of-distribution bounds,
# the signature graph, calibrated modality subsets. Format 2 bundles still load (no domain inference).
FORMAT_VERSION = 3
SUPPORTED_FORMAT_VERSIONS = (2, 3)

GraphKind = Literal["frozen", "dynamic"]
GRAPH_KINDS: tuple[str, ...] = get_args(GraphKind)
MAX_MODALITIES = 4

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256 of the file")]


def _check_bundle_relative(name: str) -> str:
    """A file named in the manifest must stay inside the bundle folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ValueError(f"file {name!r} must be a relative path inside the bundle without '..'")
    return name


BundleFile = Annotated[str, AfterValidator(_check_bundle_relative)]


def _check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_check_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """Per-channel constants applied to rgb/gray modalities after scaling to [0, 1]."""

    mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat]
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]


class ImageScore(_Strict):
    """How the graph reduces an anomaly map to one image score (spec 8.2, step 5)."""

    reduction: Literal["top_fraction_mean"] = "top_fraction_mean"
    fraction: float = Field(gt=0, le=1, description="share of the highest pixels that are averaged")


CalibratedFusion = Literal["calibrated_max", "calibrated_mean"]
CALIBRATED_FUSIONS: tuple[str, ...] = get_args(CalibratedFusion)


class AnomalyMap(_Strict):
    """How the graph builds the fused map: fusion rule, then a normalised Gaussian blur."""

    fusion: Literal["code", "paper", CalibratedFusion] = Field(
        description="code: root-sum-square over levels and modalities; paper: RSS over modalities per level, "
        "mean over levels; calibrated_max / calibrated_mean: every (modality, level) map standardised by the "
        "domain's normal_statistics, mean over levels, then the maximum / mean over modalities"
    )
    blur_sigma: float = Field(ge=0)
    blur_kernel: int = Field(ge=1, description="odd kernel side in pixels")

    @model_validator(mode="after")
    def _odd_kernel(self) -> AnomalyMap:
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")
        return self


class Versions(_Strict):
    """Library versions the bundle was produced with (provenance, not requirements)."""

    torch: str
    onnx: str
    opset: int = Field(ge=1)
    onnxscript: str | None = None
    onnxruntime: str | None = None
    unimmad: str | None = None


class TensorSpec(_Strict):
    """An ONNX graph input or output; symbolic dimensions are names such as ``"batch"``."""

    dtype: Literal["float32", "float16", "int64", "int32", "bool"]
    shape: list[Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)]]


class ExternalData(_Strict):
    file: BundleFile
    sha256: Sha256


class GraphSpec(_Strict):
    """One ONNX file of the bundle with everything needed to verify and call it."""

    file: BundleFile
    sha256: Sha256
    external_data: list[ExternalData] = Field(default_factory=list)
    inputs: dict[str, TensorSpec] = Field(min_length=1)
    outputs: dict[str, TensorSpec] = Field(min_length=1)


class Graphs(_Strict):
    frozen: GraphSpec = Field(description="per-domain folded C-MoE kernels indexed by the `domain` input")
    dynamic: GraphSpec = Field(description="per-sample routing: the parity reference and fallback")


class ModalityEntry(_Strict):
    """Manifest form of :class:`modalities.kinds.ModalitySpec`, which stays the one definition of a kind."""

    name: str
    kind: Literal[KINDS]  # type: ignore[valid-type]
    depth_scale: float | None = Field(default=None, description="only for kind 'depth'")

    @model_validator(mode="after")
    def _valid_spec(self) -> ModalityEntry:
        if self.depth_scale is not None and self.kind != "depth":
            raise ValueError(f"modality {self.name!r}: depth_scale is only meaningful for kind 'depth'")
        if self.kind == "depth" and self.depth_scale is None:
            raise ValueError(f"modality {self.name!r}: kind 'depth' needs depth_scale")
        try:
            self.to_spec()
        except ModalityError as exc:
            raise ValueError(exc.message) from exc
        return self

    def to_spec(self) -> ModalitySpec:
        if self.depth_scale is None:
            return ModalitySpec(name=self.name, kind=self.kind)
        return ModalitySpec(name=self.name, kind=self.kind, depth_scale=self.depth_scale)

    @classmethod
    def from_spec(cls, spec: ModalitySpec) -> ModalityEntry:
        return cls(**spec.to_dict())


class ThresholdMethod(_Strict):
    """How the decision threshold was chosen, so a reader can judge it."""

    method: str = Field(min_length=1, examples=["normal_quantile"])
    target_fpr: float | None = Field(default=None, ge=0, le=1)
    n_images: int = Field(ge=0, description="images the threshold was computed from")
    split: str = Field(min_length=1, examples=["train", "validation"])


class RoutingLeaders(_Strict):
    """The frozen leader experts of one (level, branch, modality slot) and their weights (summing to 1).

    K of them with "topk" routing; every leader some calibration sample picked with "expected" routing.
    """

    level: int = Field(ge=0)
    branch: str = Field(min_length=1)
    slot: int = Field(ge=0)
    experts: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    scores: list[Annotated[float, Field(gt=0, le=1)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _paired(self) -> RoutingLeaders:
        if len(self.experts) != len(self.scores):
            raise ValueError(f"{len(self.experts)} experts but {len(self.scores)} scores")
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts repeated: {self.experts}")
        return self


class RoutingSummary(_Strict):
    """Frozen routing of a domain and how often per-sample routing agreed with it at calibration."""

    mode: Literal["topk", "expected"] | None = Field(
        default=None,
        description="topk: top-K of the mean gate probabilities, renormalised; expected: mean over calibration "
        "samples of each sample's routed scores over all leaders (absent in older bundles: topk)",
    )
    agreement: float | None = Field(default=None, ge=0, le=1)
    leaders: list[RoutingLeaders] = Field(default_factory=list)


def _check_increasing(bounds: tuple[float, float]) -> tuple[float, float]:
    if not bounds[0] < bounds[1]:
        raise ValueError(f"colour range needs low < high, got {list(bounds)}")
    return bounds


ColourRange = Annotated[
    tuple[FiniteFloat, FiniteFloat],
    AfterValidator(_check_increasing),
    Field(description="[low, high]: map values shown at the bottom and the top of the colour ramp"),
]


def _check_paired(values: list[float], scales: list[float], what: str) -> None:
    """A location-and-scale pair of lists must be equally long (one scale per value)."""
    if len(values) != len(scales):
        raise ValueError(f"{len(values)} {what} but {len(scales)} scales")


class LevelStatistics(_Strict):
    """Location and scale (mean and standard deviation) of one modality's normal distance, per level."""

    location: list[FiniteFloat] = Field(min_length=1)
    scale: list[Annotated[FiniteFloat, Field(gt=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_levels(self) -> LevelStatistics:
        _check_paired(self.location, self.scale, "locations")
        return self


class NormalStatistics(_Strict):
    """What calibrated fusion standardises each map by (held as tensors inside both graphs; recorded here
    so a reader can see them), fitted on the normal images named by `split`."""

    split: str = Field(min_length=1, examples=["holdout(fraction=0.1, seed=0)"])
    n_images: int = Field(ge=1)
    modalities: dict[str, LevelStatistics]


class HeatmapRanges(_Strict):
    """Colour ranges chosen from normal images' maps; modality maps have their own scale."""

    fused: ColourRange
    modalities: dict[str, ColourRange]


class _Calibrated(_Strict):
    """What a served modality set needs besides its graph: decision threshold, score and colour ranges,
    fusion statistics and frozen routing, all calibrated on that set's held-out normal images."""

    threshold: FiniteFloat = Field(description="image_score above this is anomalous")
    threshold_method: ThresholdMethod
    score_range: ColourRange = Field(
        description="[low, high] of the normalised score clip((image_score - low) / (high - low), 0, 1): "
        "centred on the threshold (normalised 0.5), half-width threshold - median normal image score"
    )
    heatmap_range: HeatmapRanges
    normal_statistics: NormalStatistics | None = Field(
        default=None, description="present exactly when anomaly_map.fusion is calibrated"
    )
    routing: RoutingSummary = Field(default_factory=RoutingSummary)
    rows_sha256: Sha256 | None = Field(
        default=None,
        description="sha256 of this set's rows of the frozen graph's per-set tensors (kernel, aggregation and "
        "statistics banks), written by `export add-domain`, which refuses a bundle whose rows no longer match",
    )

    def _check_calibration(self, names: list[str]) -> None:
        for field, named in (
            ("heatmap_range", self.heatmap_range),
            ("normal_statistics", self.normal_statistics),
        ):
            if named is not None and set(named.modalities) != set(names):
                listed = ", ".join(sorted(named.modalities))
                raise ValueError(
                    f"{field}.modalities has [{listed}], the modalities are [{', '.join(names)}]"
                )
        low, high = self.score_range
        if not low < self.threshold < high:
            raise ValueError(
                f"score_range {list(self.score_range)} must contain the threshold {self.threshold}"
            )

    def normalized_score(self, image_score: float) -> float:
        """The image score on [0, 1] with the threshold at 0.5 (anomalib's convention; see score_range)."""
        low, high = self.score_range
        return min(max((image_score - low) / (high - low), 0.0), 1.0)


class ModalitySignature(_Strict):
    """Mean and (shrunk) standard deviation of one modality's domain signatures over normal images."""

    mean: list[FiniteFloat] = Field(min_length=1)
    scale: list[Annotated[FiniteFloat, Field(gt=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_features(self) -> ModalitySignature:
        _check_paired(self.mean, self.scale, "means")
        return self


class DomainSignature(_Strict):
    """A domain's signature statistics (fitted on `split`) and its out-of-distribution bound (from the
    distances of the held-out `bound_split` images; rule in the manifest's ``signature.bound_rule``)."""

    split: str = Field(min_length=1)
    n_images: int = Field(ge=2)
    bound_split: str = Field(min_length=1)
    bound_images: int = Field(ge=1)
    bound: Annotated[FiniteFloat, Field(gt=0)] = Field(
        description="a sample farther than this from the domain does not belong to it"
    )
    modalities: dict[str, ModalitySignature]

    def statistics(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale), each [len(names), F], in the order of `names`."""
        entries = [self.modalities[name] for name in names]
        return np.array([e.mean for e in entries]), np.array([e.scale for e in entries])


class SubsetSpec(_Calibrated):
    """A calibrated subset of a domain's modalities (a sensor may fail): served with its own frozen routing
    and fusion statistics (graph index `index`), threshold and ranges, on the frozen graph."""

    index: int = Field(ge=0, description="value of the frozen graph's `domain` input for this subset")
    modalities: list[str] = Field(min_length=1, description="in the domain's order")
    signature_bound: Annotated[FiniteFloat, Field(gt=0)] | None = Field(
        default=None, description="out-of-distribution bound over the subset's modalities"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SubsetSpec:
        self._check_calibration(self.modalities)
        return self


def subset_key(names: list[str] | tuple[str, ...]) -> str:
    """The manifest key of a modality subset: its names joined by '+', e.g. 'rgb+infrared'."""
    return "+".join(names)


class DomainSpec(_Calibrated):
    index: int = Field(ge=0, description="value of the frozen graph's `domain` input")
    modalities: list[ModalityEntry] = Field(min_length=1, max_length=MAX_MODALITIES)
    loss_weight: float | None = Field(default=None, ge=0)
    graph: GraphKind = Field(
        default="frozen",
        description="the graph that serves this domain: 'dynamic' (per-sample routing) where `export verify "
        "--fallback` measured the frozen routing over its accuracy budget; threshold and heatmap_range are "
        "those of this graph",
    )
    signature: DomainSignature | None = Field(
        default=None, description="present exactly when the manifest has `signature` (format 3 bundles)"
    )
    subsets: dict[str, SubsetSpec] = Field(
        default_factory=dict, description="calibrated modality subsets, keyed by their names joined by '+'"
    )

    @model_validator(mode="after")
    def _consistent_modalities(self) -> DomainSpec:
        names = self.modality_names
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"modality names repeated: {', '.join(duplicated)}")
        self._check_calibration(names)
        if self.signature is not None and set(self.signature.modalities) != set(names):
            listed = ", ".join(sorted(self.signature.modalities))
            raise ValueError(f"signature.modalities has [{listed}], the modalities are [{', '.join(names)}]")
        for key, subset in self.subsets.items():
            in_order = [name for name in names if name in subset.modalities]
            if key != subset_key(subset.modalities) or in_order != subset.modalities:
                raise ValueError(
                    f"subset {key!r} must name its modalities in the domain's order, joined by '+'"
                )
            if len(subset.modalities) >= len(names) or set(subset.modalities) - set(names):
                raise ValueError(f"subset {key!r} must be a proper subset of [{', '.join(names)}]")
        return self

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def modality_specs(self) -> list[ModalitySpec]:
        return [m.to_spec() for m in self.modalities]

    def subset_view(self, key: str) -> DomainSpec:
        """The domain as its subset `key` serves it: the subset's modalities, graph index, threshold, ranges,
        statistics and signature bound, on the frozen graph."""
        subset = self.subsets[key]
        signature = None
        if self.signature is not None and subset.signature_bound is not None:
            signature = self.signature.model_copy(
                update={
                    "bound": subset.signature_bound,
                    "modalities": {name: self.signature.modalities[name] for name in subset.modalities},
                }
            )
        return self.model_copy(
            update={
                "index": subset.index,
                "modalities": [m for m in self.modalities if m.name in subset.modalities],
                "threshold": subset.threshold,
                "threshold_method": subset.threshold_method,
                "score_range": subset.score_range,
                "heatmap_range": subset.heatmap_range,
                "normal_statistics": subset.normal_statistics,
                "routing": subset.routing,
                "graph": "frozen",
                "signature": signature,
                "subsets": {},
            }
        )


class SignatureSpec(_Strict):
    """How a sample's domain is recognised (bundle.domain_match): the graphs' `signature` output, the small
    graph that computes it before the domain is known, and the rule of each domain's bound."""

    output: Literal["signature"] = "signature"
    source: Literal["prior_mean"] = Field(
        default="prior_mean",
        description="per modality, the spatial mean of each L2-normalised frozen prior level, concatenated",
    )
    features: int = Field(ge=1, description="F, the signature's length per modality")
    distance: Literal["rms_standardised"] = Field(
        default="rms_standardised",
        description="root mean square over modalities and features of (signature - mean) / scale",
    )
    bound_rule: str = Field(min_length=1, examples=[BOUND_RULE])
    graph: GraphSpec = Field(description="the prior alone: images -> signature [batch, modalities, F]")


DomainName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")]


class Lineage(_Strict):
    """Where an extended bundle came from: its parent bundle, untouched, and what was appended."""

    parent_model_version: str = Field(min_length=1)
    parent_manifest_sha256: Sha256
    domains_added: list[str] = Field(min_length=1)
    checkpoint: str = Field(min_length=1, description="the adapted run the added domains come from")
    parent_lineage: Lineage | None = None


class Manifest(_Strict):
    """``manifest.json`` of a bundle (format version :data:`FORMAT_VERSION`)."""

    format_version: Literal[2, 3] = FORMAT_VERSION
    model_version: str = Field(min_length=1)
    preset: str = Field(min_length=1)
    created_at: AwareDatetime
    input_size: int = Field(ge=1, description="side S of the square model input")
    normalization: Normalization
    image_score: ImageScore
    anomaly_map: AnomalyMap
    versions: Versions
    graphs: Graphs
    domains: dict[DomainName, DomainSpec] = Field(min_length=1)
    signature: SignatureSpec | None = Field(
        default=None, description="domain inference and out-of-distribution rejection (format 3)"
    )
    lineage: Lineage | None = Field(
        default=None,
        description="the bundle `export add-domain` extended into this one (absent: a full export)",
    )

    @model_validator(mode="after")
    def _unique_indices(self) -> Manifest:
        seen: dict[int, str] = {}
        for name, calibrated_set in self.served_sets():
            if calibrated_set.index in seen:
                raise ValueError(
                    f"{seen[calibrated_set.index]!r} and {name!r} share index {calibrated_set.index}"
                )
            seen[calibrated_set.index] = name
        calibrated = self.anomaly_map.fusion in CALIBRATED_FUSIONS
        for name, calibrated_set in self.served_sets():
            if (calibrated_set.normal_statistics is not None) != calibrated:
                raise ValueError(
                    f"{name!r}: normal_statistics must be present exactly when the fusion is calibrated "
                    f"(fusion {self.anomaly_map.fusion!r})"
                )
        self._check_signatures()
        return self

    def _check_signatures(self) -> None:
        if self.format_version < 3 and (self.signature is not None or self.subsets_present):
            raise ValueError("signature and subsets need format_version 3")
        has_signature = self.signature is not None
        for name, domain in self.domains.items():
            if (domain.signature is not None) != has_signature:
                raise ValueError(
                    f"domain {name!r}: signature must be present exactly when the manifest has one"
                )
            for key, subset in domain.subsets.items():
                if (subset.signature_bound is not None) != has_signature:
                    raise ValueError(
                        f"{name}:{key}: signature_bound must be present exactly when the manifest has a signature"
                    )
            if domain.signature is not None and self.signature is not None:
                lengths = {len(m.mean) for m in domain.signature.modalities.values()}
                if lengths != {self.signature.features}:
                    raise ValueError(
                        f"domain {name!r}: signature lengths {sorted(lengths)}, expected {self.signature.features}"
                    )

    @property
    def subsets_present(self) -> bool:
        return any(domain.subsets for domain in self.domains.values())

    def served_sets(self) -> list[tuple[str, _Calibrated]]:
        """Every calibrated modality set: each domain, then each subset as 'domain:subset'."""
        return [(name, domain) for name, domain in self.domains.items()] + [
            (f"{name}:{key}", subset)
            for name, domain in self.domains.items()
            for key, subset in domain.subsets.items()
        ]

    def graph(self, kind: str) -> GraphSpec:
        if kind not in GRAPH_KINDS:
            raise KeyError(f"unknown graph {kind!r}; expected one of {', '.join(GRAPH_KINDS)}")
        return getattr(self.graphs, kind)


def manifest_json_schema() -> dict:
    """The JSON schema committed as ``bundle/manifest.schema.json``."""
    return Manifest.model_json_schema(mode="validation")


__all__ = [
    "CALIBRATED_FUSIONS",
    "FORMAT_VERSION",
    "GRAPH_KINDS",
    "MAX_MODALITIES",
    "SUPPORTED_FORMAT_VERSIONS",
    "AnomalyMap",
    "DomainSignature",
    "DomainSpec",
    "ExternalData",
    "GraphSpec",
    "Graphs",
    "HeatmapRanges",
    "ImageScore",
    "LevelStatistics",
    "Lineage",
    "Manifest",
    "ModalityEntry",
    "ModalitySignature",
    "NormalStatistics",
    "Normalization",
    "RoutingLeaders",
    "RoutingSummary",
    "SignatureSpec",
    "SubsetSpec",
    "TensorSpec",
    "ThresholdMethod",
    "Versions",
    "manifest_json_schema",
    "subset_key",
]
