"""Paths of the deployment files, Compose YAML with its merge tags, and the metrics the service exports."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CPU_FILE = REPO / "docker-compose.cpu.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "unimmad.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"


class Reset:
    """Compose's ``!reset`` tag: the override removes the value it is attached to."""


class Override:
    """Compose's ``!override`` tag: the override replaces the value instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """A safe YAML loader that understands the two merge tags of the Compose specification."""


def _construct(loader: ComposeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: Override(_construct(loader, node)))


def load_compose(path: Path) -> dict:
    """The Compose file as written (tags kept as :class:`Reset`/:class:`Override` markers)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)


def strip_tags(value: Any) -> Any:
    """The file as a plain document: ``!reset`` drops the key, ``!override`` keeps its value."""
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [strip_tags(v) for v in value if not isinstance(v, Reset)]
    if isinstance(value, Override):
        return strip_tags(value.value)
    return value


def merge_compose(base: dict, override: dict) -> dict:
    """``docker compose -f base -f override`` for the parts these files use.

    Mappings merge key by key, ``!reset`` removes, ``!override`` replaces, and any other value of the
    override wins. (Compose appends some sequences, e.g. ports; no override here touches one.)
    """
    return strip_tags(_merge(base, override))


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            key: _merge(base.get(key), override[key]) if key in override else value
            for key, value in {**base, **override}.items()
        }
    return copy.deepcopy(override)


def exported_sample_names() -> set[str]:
    """Every series name the service's metrics module can expose, from its own registry."""
    from service.metrics import Metrics

    suffixes = {
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    return {
        family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes[family.type]
    }


def compose_schema() -> dict:
    """The Compose Specification JSON schema, as vendored (with its licence) by check-jsonschema."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
