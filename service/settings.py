"""Service settings: every field can come from an ``UNIMMAD_*`` environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# A key shorter than this is guessable (and an empty one would let an empty header in): refused at startup.
MIN_API_KEY_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIMMAD_", extra="ignore")

    bundle: Path = Field(description="bundle folder written by `python -m export bundle`")
    graph: Literal["manifest", "frozen", "dynamic"] = Field(
        default="manifest",
        description="which graph serves each domain: `manifest` = the domain's own choice (frozen unless "
        "`export verify --fallback` moved it to per-sample routing); `frozen` or `dynamic` = every domain, "
        "refused at startup when a domain's threshold was calibrated on the other graph",
    )
    providers: list[str] = Field(
        default=[CUDA_PROVIDER, CPU_PROVIDER], description="ORT providers in order of preference"
    )
    require_gpu: bool = Field(default=False, description="refuse to start without the CUDA provider")
    intra_op_threads: int = Field(default=0, ge=0, description="ORT intra-op threads; 0 lets ORT decide")
    intra_op_spinning: bool = Field(
        default=False,
        description="let idle ORT intra-op threads spin: lower latency per batch, but they burn CPU the HTTP "
        "side needs when cores are few",
    )
    max_batch_size: int = Field(default=8, ge=1, le=256, description="samples of one domain per ORT run")
    max_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="how long the first request of a batch waits for companions; with 0, a batch is what "
        "queued while the previous one ran",
    )
    queue_size: int = Field(default=64, ge=1, description="requests admitted but not yet running")
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="POST /detect requests being worked on at once, from their last body byte to the start of "
        "their answer; while that many are, more get 503 before their body is read. "
        "Default: queue_size + max_batch_size",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="a request still waiting for its result after this gets 504"
    )
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1, description="per uploaded file")
    max_pixels: int = Field(default=40_000_000, ge=1, description="per decoded image")
    decode_threads: int | None = Field(
        default=None,
        ge=1,
        description="threads that decode, preprocess and render heatmaps, each holding one upload's decode at a "
        "time (this bounds decode memory, see README Reliability). Default: the CPU cores this process may use",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection that has not sent a complete request line and headers this long after "
        "connecting (or after its previous answer) gets 408 and is closed",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a request whose body has not fully arrived this long after its headers gets 408; a slow "
        "upload holds no /detect slot meanwhile",
    )
    max_connections: int = Field(
        default=1024, ge=1, description="open connections at most; one beyond that gets 503 and is closed"
    )
    api_key: SecretStr | None = Field(
        default=None,
        description=f"when set (at least {MIN_API_KEY_LENGTH} characters), required on every route but the "
        "health routes and /metrics, including /docs and /openapi.json unless public_docs is set",
    )
    reload_root: Path | None = Field(
        default=None,
        description="folder POST /admin/reload may load bundles from (default: the folder holding `bundle`)",
    )
    public_docs: bool = Field(
        default=False, description="serve /docs and /openapi.json without the API key (they list the domains)"
    )
    ood_action: Literal["reject", "flag"] = Field(
        default="reject",
        description="a sample that fits no domain (its signature beyond every candidate's bound): `reject` "
        "answers 422 out_of_distribution, `flag` scores it and sets out_of_distribution in the answer",
    )
    allow_missing_modalities: bool = Field(
        default=False,
        description="score a request that sends a calibrated subset of its domain's modalities (a failed "
        "sensor) with that subset's calibration; a request's `allow_missing` field overrides it",
    )
    domain_mismatch_factor: float = Field(
        default=2.0,
        gt=1,
        description="a request's `domain` gets a warning when another domain with the same modalities fits "
        "the sample (within its bound) and the given one does not, or fits this many times worse",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log threshold"
    )
    log_format: Literal["json", "text"] = Field(default="text", description="json: one object per line")
    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=1, le=65535, description="port to listen on")

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"the API key must have at least {MIN_API_KEY_LENGTH} characters (unset it to run without a key)"
            )
        return key

    @property
    def decode_thread_count(self) -> int:
        """``decode_threads``, else the cores this process may run on (its CPU affinity where the OS has one)."""
        if self.decode_threads is not None:
            return self.decode_threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def detect_in_flight_limit(self) -> int:
        """Room for a full batcher queue plus the running batch; a request beyond that could only wait."""
        return self.max_in_flight if self.max_in_flight is not None else self.queue_size + self.max_batch_size
