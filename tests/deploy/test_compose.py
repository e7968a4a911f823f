"""docker-compose.yml and its CPU override: valid Compose, and the properties a GPU host relies on."""

from __future__ import annotations

import re

import jsonschema
import pytest
from deploy_files import (
    COMPOSE_CPU_FILE,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    compose_schema,
    load_compose,
    merge_compose,
    strip_tags,
)

from service.settings import Settings


def compose_documents() -> dict[str, dict]:
    base = load_compose(COMPOSE_FILE)
    override = load_compose(COMPOSE_CPU_FILE)
    return {
        "docker-compose.yml": strip_tags(base),
        "docker-compose.cpu.yml": strip_tags(override),
        "merged (GPU + CPU override)": merge_compose(base, override),
    }


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.mark.parametrize("name", list(compose_documents()))
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    jsonschema.Draft202012Validator(compose_schema()).validate(compose_documents()[name])


def test_the_schema_check_rejects_a_broken_compose_file() -> None:
    broken = compose_documents()["docker-compose.yml"]
    broken["services"]["unimmad"]["healthcheck"]["retries"] = "three"
    broken["services"]["unimmad"]["gpus_please"] = True
    errors = list(jsonschema.Draft202012Validator(compose_schema()).iter_errors(broken))
    assert errors, "a non-integer retries and an unknown service key must fail validation"


def test_service_reserves_a_gpu_and_mounts_the_bundle_read_only() -> None:
    service = compose_documents()["docker-compose.yml"]["services"]["unimmad"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    bundle_mounts = [v for v in service["volumes"] if v["target"] == service["environment"]["UNIMMAD_BUNDLE"]]
    assert len(bundle_mounts) == 1 and bundle_mounts[0]["read_only"] is True
    assert "/healthz" in " ".join(service["healthcheck"]["test"])


def test_cpu_override_drops_the_gpu_and_lets_the_service_run_on_cpu() -> None:
    merged = compose_documents()["merged (GPU + CPU override)"]["services"]["unimmad"]
    assert "devices" not in merged["deploy"]["resources"]["reservations"]
    assert merged["environment"]["UNIMMAD_REQUIRE_GPU"] == "false"
    # Everything else of the service survives the merge.
    base = compose_documents()["docker-compose.yml"]["services"]["unimmad"]
    assert merged["volumes"] == base["volumes"] and merged["healthcheck"] == base["healthcheck"]


def test_every_published_port_binds_a_configurable_address_that_defaults_to_loopback() -> None:
    for name, service in compose_documents()["docker-compose.yml"]["services"].items():
        for port in service.get("ports", []):
            assert port.startswith(("127.0.0.1:", "${HOST_BIND_ADDRESS:-127.0.0.1}:")), (name, port)
    assert env_example()["HOST_BIND_ADDRESS"] == "127.0.0.1"


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, service in compose_documents()["docker-compose.yml"]["services"].items():
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_bind_mounts_point_at_files_in_the_repository() -> None:
    for service in compose_documents()["docker-compose.yml"]["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind" and "${" not in volume["source"]:
                assert (REPO / volume["source"]).exists(), volume["source"]


def test_env_example_documents_every_compose_variable() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8") + COMPOSE_CPU_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used <= set(env_example()), used - set(env_example())


def test_env_example_service_settings_are_real_settings_with_valid_values(monkeypatch, tmp_path) -> None:
    service_settings = {k: v for k, v in env_example().items() if k.startswith("UNIMMAD_")}
    fields = {f"UNIMMAD_{name.upper()}" for name in Settings.model_fields}
    assert set(service_settings) <= fields, set(service_settings) - fields
    for key, value in service_settings.items():
        monkeypatch.setenv(key, value)
    settings = Settings(bundle=tmp_path)
    assert settings.max_batch_size == int(service_settings["UNIMMAD_MAX_BATCH_SIZE"])


def test_env_example_serves_each_domain_on_the_graph_its_threshold_was_calibrated_on() -> None:
    # frozen or dynamic would be refused at startup by any bundle where `verify --fallback` moved a domain.
    assert env_example()["UNIMMAD_GRAPH"] == "manifest"


def test_uploads_spool_to_a_disk_volume_not_to_ram() -> None:
    service = compose_documents()["docker-compose.yml"]["services"]["unimmad"]
    assert "tmpfs" not in service
    (spool,) = [v for v in service["volumes"] if v["target"] == "/tmp"]
    assert (
        spool["type"] == "volume" and spool["source"] in compose_documents()["docker-compose.yml"]["volumes"]
    )
