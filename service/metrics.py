"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Label values are bounded: routes are route templates, domains are manifest names or ``none``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Seconds, from 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "preprocess", "queue", "infer", "postprocess")
NO_DOMAIN = "none"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "unimmad_request_duration_seconds",
            "HTTP request latency",
            ("route", "domain", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "unimmad_inference_duration_seconds",
            "time spent per stage of /detect",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "unimmad_batch_size", "samples per ORT run", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "unimmad_queue_depth", "requests admitted and waiting for a batch", registry=self.registry
        )
        self.in_flight = Gauge(
            "unimmad_in_flight_requests",
            "POST /detect requests admitted and not yet answered",
            registry=self.registry,
        )
        self.requests = Counter(
            "unimmad_requests", "detections answered", ("domain",), registry=self.registry
        )
        self.anomalies = Counter(
            "unimmad_anomalies", "detections judged anomalous", ("domain",), registry=self.registry
        )
        self.domains_inferred = Counter(
            "unimmad_domain_inferred",
            "requests without a domain, by the domain inferred",
            ("domain",),
            registry=self.registry,
        )
        self.out_of_distribution = Counter(
            "unimmad_out_of_distribution",
            "samples that fit no domain, by route and what was done (rejected with 422, or scored and flagged)",
            ("route", "action"),
            registry=self.registry,
        )
        self.degraded = Counter(
            "unimmad_degraded_answers",
            "answers scored with a calibrated subset of the domain's modalities",
            ("domain",),
            registry=self.registry,
        )
        self.domain_warnings = Counter(
            "unimmad_domain_mismatch_warnings",
            "answers whose given domain fits the sample much worse than another domain",
            ("domain",),
            registry=self.registry,
        )
        self.reloads = Counter(
            "unimmad_reloads",
            "bundle reloads (POST /admin/reload) by outcome: success, or failure (the old bundle kept serving)",
            ("outcome",),
            registry=self.registry,
        )
        self.model_info = Info("unimmad_model", "served bundle and provider", registry=self.registry)
