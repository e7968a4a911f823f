"""The install is exact: every documented extra combination provides each import of the packages it is
for, cpu and gpu conflict, the console scripts start, and the serving locks pin every package with hashes.

Checked statically against pyproject.toml and the package sources (no virtualenv is built here), plus
imports in the environments that exist: the development one running these tests and `make serve-venv`'s.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from deploy_files import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FIRST_PARTY = ("modalities", "bundle", "model", "export", "service")
ORT_DISTRIBUTIONS = {"onnxruntime", "onnxruntime-gpu"}  # one `onnxruntime` module, two builds
# The combinations README tells users to install, and the packages each is for.
DOCUMENTED = {
    "base": ((), ("modalities",)),
    "train": (("train",), ("modalities", "model")),
    "train,export,cpu": (("train", "export", "cpu"), ("modalities", "model", "bundle", "export")),
    "serve,cpu": (("serve", "cpu"), ("modalities", "bundle", "service")),
    "serve,gpu": (("serve", "gpu"), ("modalities", "bundle", "service")),
}
LOCKS = {"cpu": REPO / "requirements" / "serve-cpu.lock", "gpu": REPO / "requirements" / "serve-gpu.lock"}
SERVE_VENV_PYTHON = REPO / ".venv-serve" / "bin" / "python"


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared(extras: tuple[str, ...]) -> dict[str, Requirement]:
    """Base dependencies plus those of ``extras``, by canonical distribution name."""
    meta = project()
    lines = meta["dependencies"] + [line for extra in extras for line in meta["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def third_party_imports(package: str) -> set[str]:
    """Top-level names of every absolute import in ``package`` that is neither stdlib nor first party."""
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return {
        n for n in names if n not in FIRST_PARTY and n not in sys.stdlib_module_names and n != "__future__"
    }


def missing_imports(packages: tuple[str, ...], distributions: set[str]) -> set[str]:
    """Imports of ``packages`` that no distribution in ``distributions`` provides (per this environment)."""
    providers = metadata.packages_distributions()
    missing = set()
    for name in set().union(*map(third_party_imports, packages)):
        provided_by = {canonicalize_name(d) for d in providers.get(name, ())}
        if name == "onnxruntime":
            provided_by |= ORT_DISTRIBUTIONS
        if not provided_by & distributions:
            missing.add(name)
    return missing


@pytest.mark.parametrize("combination", list(DOCUMENTED))
def test_each_documented_combination_provides_every_import_of_its_packages(combination: str) -> None:
    extras, packages = DOCUMENTED[combination]
    assert missing_imports(packages, set(declared(extras))) == set(), combination


def test_the_import_check_catches_a_missing_dependency() -> None:
    # The old base install (numpy only) could not import modalities.
    assert missing_imports(("modalities",), {"numpy"}) == {"PIL", "tifffile"}


def test_cpu_and_gpu_are_the_only_runtimes_and_conflict() -> None:
    extras = project()["optional-dependencies"]
    runtimes = {
        extra: {canonicalize_name(Requirement(line).name) for line in lines} & ORT_DISTRIBUTIONS
        for extra, lines in extras.items()
    }
    assert runtimes.pop("cpu") == {"onnxruntime"} and runtimes.pop("gpu") == {"onnxruntime-gpu"}
    assert not any(runtimes.values()), "only the cpu and gpu extras may pull an onnxruntime build"
    conflicts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["conflicts"]
    assert [{"extra": "cpu"}, {"extra": "gpu"}] in conflicts


def installed_runtimes(python: Path | str) -> set[str]:
    code = (
        "import importlib.metadata as m\n"
        "for d in ('onnxruntime', 'onnxruntime-gpu'):\n"
        "    try: m.distribution(d); print(d)\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(result.stdout.split())


def test_this_environment_holds_exactly_one_onnxruntime_build() -> None:
    assert len(installed_runtimes(sys.executable)) == 1


def test_console_scripts_start() -> None:
    scripts = project()["scripts"]
    assert set(scripts) == {"unimmad-model", "unimmad-export", "unimmad-serve"}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        code = f"import sys; from {module} import {function}; sys.exit({function}(['--help']))"
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
        )
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr[-500:])


def lock_pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of a pip-compile lock; fails unless every entry is ``==``-pinned with a hash."""
    entries = re.split(
        r"\n(?=\S)",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    pins = {}
    for entry in filter(str.strip, entries):
        requirement = Requirement(entry.partition(" \\")[0].strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and "--hash=sha256:" in entry, entry.splitlines()[0]
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


@pytest.mark.parametrize("flavour", list(LOCKS))
def test_serving_lock_pins_every_declared_dependency_with_hashes(flavour: str) -> None:
    pins = lock_pins(LOCKS[flavour])
    for name, requirement in declared(("serve", flavour)).items():
        assert name in pins, f"{name} is declared but not locked (run `make lock`)"
        assert requirement.specifier.contains(pins[name]), f"{name}: lock {pins[name]} vs {requirement}"
    assert set(pins) & ORT_DISTRIBUTIONS == set(declared((flavour,))) & ORT_DISTRIBUTIONS
    assert "torch" not in pins


def test_serving_environments_install_from_the_locks_with_hashes() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements/serve-cpu.lock" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/serve-gpu.lock" in dockerfile
    assert re.search(r"uv pip install --python \S+ --no-deps \.", dockerfile)


def test_the_development_environment_imports_every_package() -> None:
    code = f"import {', '.join(FIRST_PARTY)}"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_the_serving_environment_imports_the_service_without_torch() -> None:
    if not SERVE_VENV_PYTHON.exists():
        pytest.skip("no .venv-serve here (`make serve-venv` builds it from requirements/serve-cpu.lock)")
    code = "import sys, service, service.__main__; assert 'torch' not in sys.modules"
    subprocess.run([str(SERVE_VENV_PYTHON), "-c", code], cwd=REPO, check=True, timeout=120)
    assert installed_runtimes(SERVE_VENV_PYTHON) == {"onnxruntime"}
