"""Modality kinds and the per-modality spec that travels in checkpoints and bundle manifests."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from modalities.errors import ModalityError

KINDS: tuple[str, ...] = ("rgb", "gray", "depth")

# ImageNet statistics: the frozen prior backbone was trained with them (spec 1.3).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DEFAULT_DEPTH_SCALE = 100.0

# Names become multipart field names and JSON keys, so keep them to a safe, unambiguous alphabet.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of a domain.

    name: the field name the modality arrives under (``rgb``, ``depth``, ``t1ce`` ...).
    kind: how it becomes model input, one of :data:`KINDS`.
    depth_scale: factor applied to mean-centred depth (spec 1.3); only meaningful for ``depth``.
    """

    name: str
    kind: str
    depth_scale: float = DEFAULT_DEPTH_SCALE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.fullmatch(self.name):
            raise ModalityError(
                "invalid_spec",
                f"modality name {self.name!r} must be 1-64 characters of letters, digits, '_', '.' or '-'",
            )
        if self.kind not in KINDS:
            raise ModalityError(
                "invalid_spec", f"modality {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}"
            )
        scale = self.depth_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ModalityError(
                "invalid_spec",
                f"modality {self.name!r}: depth_scale must be a finite number > 0, got {scale!r}",
            )
        object.__setattr__(self, "depth_scale", float(scale))

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``depth_scale`` is written only for depth modalities, where it means something."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "depth":
            data["depth_scale"] = self.depth_scale
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModalitySpec:
        """Inverse of :meth:`to_dict`; unknown keys are rejected so that typos do not pass silently."""
        if not isinstance(data, dict):
            raise ModalityError(
                "invalid_spec", f"a modality spec must be an object, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {"name", "kind", "depth_scale"})
        if unknown:
            raise ModalityError("invalid_spec", f"unknown modality spec keys: {', '.join(map(str, unknown))}")
        missing = [key for key in ("name", "kind") if key not in data]
        if missing:
            raise ModalityError("invalid_spec", f"modality spec lacks {', '.join(missing)}")
        return cls(
            name=data["name"], kind=data["kind"], depth_scale=data.get("depth_scale", DEFAULT_DEPTH_SCALE)
        )
