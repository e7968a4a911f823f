"""Scrape config and Grafana dashboard: valid, and built only on metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_files import (
    COMPOSE_FILE,
    DASHBOARD,
    PROMETHEUS_CONFIG,
    PROVISIONING,
    exported_sample_names,
    load_compose,
)

# Grafana replaces its macros before the query reaches Prometheus; promtool needs a concrete value.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panel_queries() -> dict[str, list[str]]:
    return {
        panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard()["panels"]
    }


def as_promql(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bunimmad_[a-z0-9_]+\b", expr))


def provisioned(kind: str) -> dict:
    (path,) = (PROVISIONING / kind).glob("*.yml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_panel_queries_only_metrics_the_service_exports() -> None:
    exported = exported_sample_names()
    for title, queries in panel_queries().items():
        assert queries, f"panel {title!r} has no query"
        for expr in queries:
            used = referenced_metrics(expr)
            assert used, f"{title!r}: {expr} reads no unimmad metric"
            assert used <= exported, f"{title!r} reads {used - exported}, not exported by service.metrics"


def test_metric_name_check_catches_a_typo() -> None:
    assert (
        not referenced_metrics("rate(unimmad_request_duration_second_count[1m])") <= exported_sample_names()
    )


def test_dashboard_covers_what_an_operator_watches() -> None:
    queries = " ".join(q for qs in panel_queries().values() for q in qs)
    for quantile in ("0.5", "0.95", "0.99"):
        stage = "sum by (le, stage) (rate(unimmad_inference_duration_seconds_bucket"
        request = "sum by (le) (rate(unimmad_request_duration_seconds_bucket"
        assert f"histogram_quantile({quantile}, {stage}" in queries
        assert f"histogram_quantile({quantile}, {request}" in queries
    for needle in (
        "unimmad_batch_size",
        "unimmad_queue_depth",
        'status=~"4..|5.."',
        "sum by (domain) (rate(unimmad_anomalies_total",
        "sum by (domain) (rate(unimmad_requests_total",
        "sum by (route, status) (rate(unimmad_request_duration_seconds_count",
    ):
        assert needle in queries, needle


def test_dashboard_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    board = dashboard()
    (datasource,) = provisioned("datasources")["datasources"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert (
            set(panel["gridPos"]) == {"x", "y", "w", "h"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert board["uid"] and board["title"]


def test_provisioning_matches_the_compose_mounts() -> None:
    (datasource,) = provisioned("datasources")["datasources"]
    assert provisioned("datasources")["apiVersion"] == 1 and datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = provisioned("dashboards")["providers"]
    assert provider["type"] == "file"
    grafana = load_compose(COMPOSE_FILE)["services"]["grafana"]
    mounts = {v["source"].removeprefix("./"): v["target"] for v in grafana["volumes"] if isinstance(v, dict)}
    assert mounts["deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_scrape_config_targets_the_compose_service() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "unimmad"]
    assert job["metrics_path"] == "/metrics"
    services = load_compose(COMPOSE_FILE)["services"]
    assert job["static_configs"][0]["targets"] == ["unimmad:8000"] and "unimmad" in services
    assert "deploy/prometheus/prometheus.yml" in json.dumps(services["prometheus"]["volumes"])


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; scripts/install_test_tools.sh)")
    return found


def test_promtool_accepts_the_scrape_config() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS_CONFIG)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = [as_promql(q) for qs in panel_queries().values() for q in qs]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
