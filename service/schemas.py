"""Typed response bodies; the examples appear in the OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bundle.manifest import ModalityEntry, RoutingSummary, ThresholdMethod

_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC"


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unknown_domain"])
    message: str = Field(examples=["unknown domain 'mvtec/bottel'; this bundle serves: mvtec/bottle"])
    request_id: str | None = Field(
        description="the answer's X-Request-ID (the client's, or one made for the request)",
        examples=["3f2b8c1e9d4a4b7f8e6c5d4a3b2c1d0e"],
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Heatmaps(BaseModel):
    """Base64 PNGs of the anomaly maps: at the upload's resolution (heatmap_size=input, at most 2048 x 2048
    pixels, aspect kept) or the model's input size (heatmap_size=model); modality maps are in units of
    their normal variation (calibrated fusion), so sensors compare."""

    fused: str = Field(examples=[_PNG])
    modalities: dict[str, str] = Field(examples=[{"rgb": _PNG, "depth": _PNG}])
    height: int = Field(description="pixel rows of every PNG", examples=[600])
    width: int = Field(description="pixel columns of every PNG", examples=[800])


class DomainMatchInfo(BaseModel):
    """How well the sample's domain signature fits the domain it was scored as (README: Domain inference)."""

    distance: float = Field(
        ge=0,
        description="distance to the domain's normal signatures in units of its out-of-distribution bound: "
        "at most 1 is in distribution",
        examples=[0.42],
    )
    nearest_other: str | None = Field(
        description="the best-fitting other domain with the same modalities (null when there is none)",
        examples=["mvtec3d/tire"],
    )
    nearest_other_distance: float | None = Field(examples=[3.1])
    confidence: float = Field(
        ge=0,
        le=1,
        description="1 - distance / nearest_other_distance: 0 for a tie, near 1 when the domain is unambiguous; "
        "1 when no other domain takes these modalities",
        examples=[0.86],
    )


class Timings(BaseModel):
    """Milliseconds per stage; ``infer_ms`` is the run of the whole batch the request was part of."""

    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    infer_ms: float
    postprocess_ms: float
    domain_match_ms: float = Field(
        default=0.0, description="the signature pass that infers the domain (0 when the request names it)"
    )
    total_ms: float
    batch_size: int = Field(description="samples in the ORT run that served this request")


class DetectResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "domain": "mvtec3d/tire",
                    "domain_inferred": True,
                    "domain_match": {
                        "distance": 0.42,
                        "nearest_other": "synthetic/tiles",
                        "nearest_other_distance": 3.1,
                        "confidence": 0.86,
                    },
                    "out_of_distribution": False,
                    "warnings": [],
                    "modalities_used": ["rgb", "depth"],
                    "degraded": False,
                    "image_score": 1.37,
                    "normalized_score": 0.86,
                    "threshold": 0.92,
                    "is_anomalous": True,
                    "modality_scores": {"rgb": 1.1, "depth": 0.8},
                    "heatmaps": {
                        "fused": _PNG,
                        "modalities": {"rgb": _PNG, "depth": _PNG},
                        "height": 600,
                        "width": 800,
                    },
                    "model_version": "lite-2025-01-01",
                    "timings": {
                        "decode_ms": 3.1,
                        "preprocess_ms": 2.4,
                        "queue_ms": 1.9,
                        "infer_ms": 41.0,
                        "postprocess_ms": 4.2,
                        "domain_match_ms": 6.5,
                        "total_ms": 53.0,
                        "batch_size": 2,
                    },
                }
            ]
        }
    )

    domain: str
    domain_inferred: bool = Field(description="the request sent no domain; the service chose it")
    domain_match: DomainMatchInfo | None = Field(
        description="how well the sample fits `domain` (null for a bundle without domain statistics)"
    )
    out_of_distribution: bool = Field(
        description="the sample fits no domain; only true when the service is set to score such samples "
        "(UNIMMAD_OOD_ACTION=flag), otherwise they get 422 out_of_distribution"
    )
    warnings: list[str] = Field(
        description="e.g. the given domain fits the sample much worse than another domain does"
    )
    modalities_used: list[str] = Field(description="the modalities scored, in the domain's order")
    degraded: bool = Field(
        description="scored with a calibrated subset of the domain's modalities (a missing sensor)"
    )
    image_score: float = Field(description="top-fraction mean of the fused anomaly map")
    normalized_score: float = Field(
        ge=0,
        le=1,
        description="image_score on [0, 1] with the threshold at 0.5 (anomalib's convention): 0 for a typical "
        "normal image, 1 as far above the threshold as the threshold is above a typical normal",
    )
    threshold: float
    is_anomalous: bool = Field(description="image_score > threshold")
    modality_scores: dict[str, float]
    heatmaps: Heatmaps | None = Field(description="null when heatmap=none")
    model_version: str
    timings: Timings


class DomainInfo(BaseModel):
    name: str = Field(examples=["mvtec3d/tire"])
    index: int
    modalities: list[ModalityEntry]
    threshold: float
    threshold_method: ThresholdMethod
    image_score_reduction: str = Field(examples=["top_fraction_mean"])
    routing: RoutingSummary
    subsets: list[str] = Field(
        description="calibrated modality subsets ('rgb+infrared'), served when a request allows missing modalities"
    )
    inferable: bool = Field(
        description="the bundle holds this domain's signature statistics: requests may leave `domain` out"
    )
    graph: Literal["frozen", "dynamic"] = Field(
        description="the graph serving this domain: frozen routing, or per-sample routing where the frozen "
        "routing missed its accuracy budget (or the service was told to)"
    )


class DomainsResponse(BaseModel):
    domains: list[DomainInfo]


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: str = Field(examples=["lite-2025-01-01"])
    preset: str = Field(examples=["lite"])
    format_version: int
    created_at: str
    input_size: int = Field(examples=[256])
    graphs: list[Literal["frozen", "dynamic"]] = Field(
        description="the bundle graphs this service runs (see each domain's `graph` in GET /domains)"
    )
    provider: str = Field(examples=["CPUExecutionProvider"])
    domains: list[str]
    versions: dict[str, str | int | None]
    max_batch_size: int


class Health(BaseModel):
    status: Literal["ok", "ready"] = Field(examples=["ok"])
