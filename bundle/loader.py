"""Read a bundle folder and prove it is complete and untouched before anything runs it.

Every problem is one :class:`BundleError` whose message is a single line naming the file at fault,
so a CLI can print it and exit non-zero without a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from bundle.manifest import GRAPH_KINDS, SUPPORTED_FORMAT_VERSIONS, GraphSpec, Manifest

MANIFEST_NAME = "manifest.json"
SIGNATURE_GRAPH = "signature"
_HASH_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be used; ``str(error)`` is one line meant for the operator."""


@dataclass(frozen=True)
class GraphFiles:
    """Absolute paths of one ONNX graph and its external-data files."""

    spec: GraphSpec
    model: Path
    external_data: tuple[Path, ...]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: the parsed manifest and the resolved files of each graph (the serving graphs by
    kind, and ``signature`` when the manifest has one)."""

    root: Path
    manifest: Manifest
    graphs: dict[str, GraphFiles]

    def graph(self, kind: str) -> GraphFiles:
        if kind not in self.graphs:
            raise BundleError(f"bundle {self.root} has no {kind!r} graph")
        return self.graphs[kind]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large external-data files do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _first_validation_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{extra}"


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` in one step (a temporary file renamed over it), so no reader sees half a file."""
    target = root / MANIFEST_NAME
    partial = target.with_name(f".{MANIFEST_NAME}.tmp")
    partial.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    os.replace(partial, target)


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ``manifest.json``; the format version is checked before the schema."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST_NAME}")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise BundleError(
            f"{manifest_path}: unsupported format_version {version!r} (this code reads {readable})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(
            f"{manifest_path} does not match the manifest schema: {_first_validation_problem(exc)}"
        ) from None


def _verified(root: Path, name: str, expected_sha256: str, *, verify_hashes: bool) -> Path:
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise BundleError(f"bundle file {name} resolves outside the bundle {root}")
    if not path.is_file():
        raise BundleError(f"bundle {root} lacks the file {name} named in the manifest")
    if verify_hashes:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise BundleError(
                f"sha256 mismatch for {name}: manifest says {expected_sha256[:12]}..., file has {actual[:12]}..."
            )
    return path


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Load the bundle at ``path``: manifest, then every graph and external-data file with its sha256."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise BundleError(f"bundle folder {root} does not exist")
    if not root.is_dir():
        raise BundleError(f"bundle path {root} is not a folder")
    manifest = read_manifest(root)
    specs = {kind: manifest.graph(kind) for kind in GRAPH_KINDS}
    if manifest.signature is not None:
        specs[SIGNATURE_GRAPH] = manifest.signature.graph
    graphs: dict[str, GraphFiles] = {}
    for kind, spec in specs.items():
        model = _verified(root, spec.file, spec.sha256, verify_hashes=verify_hashes)
        data = tuple(
            _verified(root, item.file, item.sha256, verify_hashes=verify_hashes)
            for item in spec.external_data
        )
        graphs[kind] = GraphFiles(spec=spec, model=model, external_data=data)
    return Bundle(root=root, manifest=manifest, graphs=graphs)
