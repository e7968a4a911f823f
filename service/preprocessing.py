"""Multipart uploads -> one ``[M, 3, S, S]`` float32 sample, through the shared ``modalities`` package."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from starlette.datastructures import FormData, UploadFile

from bundle.manifest import DomainSpec, Manifest
from modalities.decode import decode_bytes
from modalities.errors import ModalityError
from modalities.prepare import stack_sample
from service.errors import ServiceError, from_modality_error
from service.postprocessing import overlay_base

HEATMAP_MODES = ("none", "png", "overlay")
HEATMAP_SIZES = ("input", "model")
CONTROL_FIELDS = ("domain", "heatmap", "heatmap_size", "allow_missing")
BOOLEAN_VALUES = {"true": True, "false": False}


def _single_text(form: FormData, name: str, default: str | None = None) -> str:
    values = form.getlist(name)
    if not values:
        if default is None:
            raise ServiceError(422, "missing_field", f"form field {name!r} is required")
        return default
    if len(values) > 1:
        raise ServiceError(422, "duplicated_field", f"form field {name!r} was sent {len(values)} times")
    if not isinstance(values[0], str):
        raise ServiceError(422, "invalid_field", f"form field {name!r} must be text, not a file")
    return values[0]


def parse_controls(form: FormData, manifest: Manifest) -> tuple[str | None, str]:
    """The optional ``domain`` (None: the service infers it) and the ``heatmap`` field, validated against the
    manifest before any work is queued."""
    domain = _single_text(form, "domain") if "domain" in form else None
    if domain is not None and domain not in manifest.domains:
        known = ", ".join(sorted(manifest.domains))
        raise ServiceError(422, "unknown_domain", f"unknown domain {domain!r}; this bundle serves: {known}")
    heatmap = _single_text(form, "heatmap", default="png")
    if heatmap not in HEATMAP_MODES:
        raise ServiceError(422, "invalid_heatmap", f"heatmap must be one of {', '.join(HEATMAP_MODES)}")
    return domain, heatmap


def check_overlay(spec: DomainSpec, heatmap: str) -> None:
    """Refuse ``heatmap=overlay`` for a modality set without an rgb or gray picture to blend onto."""
    if heatmap == "overlay" and overlay_base(spec) is None:
        raise ServiceError(
            422, "overlay_unavailable", "overlay needs an rgb or gray modality; use heatmap=png"
        )


def parse_allow_missing(form: FormData, default: bool) -> bool:
    """The ``allow_missing`` field (true | false): may a calibrated subset of the modalities be scored."""
    value = _single_text(form, "allow_missing", default=str(default).lower())
    if value not in BOOLEAN_VALUES:
        raise ServiceError(422, "invalid_allow_missing", "allow_missing must be true or false")
    return BOOLEAN_VALUES[value]


def uploaded_names(form: FormData) -> frozenset[str]:
    """The form's modality field names (everything that is not a control field)."""
    return frozenset(form.keys()) - set(CONTROL_FIELDS)


def parse_heatmap_size(form: FormData) -> str:
    """The ``heatmap_size`` field: heatmaps at the upload's resolution (``input``, default) or the model's."""
    size = _single_text(form, "heatmap_size", default="input")
    if size not in HEATMAP_SIZES:
        raise ServiceError(
            422, "invalid_heatmap_size", f"heatmap_size must be one of {', '.join(HEATMAP_SIZES)}"
        )
    return size


async def read_modality_files(
    form: FormData, domain: str, spec: DomainSpec, max_bytes: int
) -> dict[str, bytes]:
    """Exactly one non-empty file per modality of the domain, each at most ``max_bytes``."""
    expected = [m.name for m in spec.modalities]
    extra = sorted(set(form.keys()) - set(expected) - set(CONTROL_FIELDS))
    if extra:
        raise ServiceError(
            422,
            "unexpected_modality",
            f"domain {domain!r} takes {', '.join(expected)}; unexpected field(s): {', '.join(extra)}",
        )
    missing = [name for name in expected if name not in form]
    if missing:
        raise ServiceError(422, "missing_modality", f"domain {domain!r} also needs: {', '.join(missing)}")
    files: dict[str, bytes] = {}
    for name in expected:
        values = form.getlist(name)
        if len(values) > 1:
            raise ServiceError(422, "duplicated_modality", f"modality {name!r} was sent {len(values)} times")
        upload = values[0]
        if not isinstance(upload, UploadFile):
            raise ServiceError(422, "not_a_file", f"modality {name!r} must be sent as a file part")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ServiceError(413, "file_too_large", f"modality {name!r} exceeds {max_bytes} bytes")
        if not data:
            raise ServiceError(422, "empty_file", f"modality {name!r} is an empty file")
        files[name] = data
    return files


def decode_files(files: Mapping[str, bytes], max_pixels: int, reduce_to: int) -> dict[str, np.ndarray]:
    """One file after the other, each reduced while decoding to what a ``reduce_to`` model input needs."""
    arrays = {}
    for name, data in files.items():
        try:
            arrays[name] = decode_bytes(data, max_pixels=max_pixels, reduce_to=reduce_to)
        except ModalityError as exc:
            raise from_modality_error(exc, name) from None
    return arrays


def prepare_sample(arrays: Mapping[str, np.ndarray], spec: DomainSpec, manifest: Manifest) -> np.ndarray:
    """``float32 [M, 3, S, S]`` in the manifest's modality order, normalised with the manifest's constants."""
    norm = manifest.normalization
    try:
        return stack_sample(arrays, spec.modality_specs, manifest.input_size, mean=norm.mean, std=norm.std)
    except ModalityError as exc:
        raise from_modality_error(exc) from None
