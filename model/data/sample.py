"""The common currency of every data adapter: domains, cheap sample references and decoded samples.

An adapter (a :class:`Source`) lists its domains and, per split, a list of :class:`SampleRef` (paths and
labels only, cheap to hold for thousands of items); :meth:`Source.load` turns one reference into a
:class:`Sample` with decoded arrays. Decoding goes through :mod:`modalities` only, so training,
export calibration and the service read files the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modalities import ModalitySpec, read_file

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class Domain:
    """One dataset category: ``name`` is ``dataset/category``; modalities in slot order.

    loss_weight: the dataset's multiplier of the reconstruction loss (spec 1.5), 1 unless the spec says.
    """

    name: str
    modalities: tuple[ModalitySpec, ...]
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.name.count("/") != 1 or not all(self.name.split("/")):
            raise ValueError(f"domain name {self.name!r} must look like 'dataset/category'")
        if not 1 <= len(self.modalities) <= 4:
            raise ValueError(f"domain {self.name}: 1 to 4 modalities, got {len(self.modalities)}")

    @property
    def dataset(self) -> str:
        return self.name.split("/")[0]

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.modalities)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives, without decoding it.

    files: modality name -> file, in the domain's modality order (empty for generated data).
    mask_file: the ground-truth mask, or None (normal, or a defect without a pixel mask).
    index: position within its domain and split (generated data is addressed by it).
    """

    domain: str
    id: str
    label: int
    index: int = 0
    files: Mapping[str, Path] = field(default_factory=dict)
    mask_file: Path | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One decoded sample.

    modalities: name -> array as decoded (uint8/uint16 images ``(H, W[, 3])``, float depth/xyz).
    specs: the domain's modality specs, in slot order.
    mask: bool ``(H, W)`` defect pixels, or None when the sample has no pixel mask.
    meta: adapter facts an evaluation may group by (``defect_modality``, ``blank_depth``, ...).
    """

    domain: str
    modalities: dict[str, np.ndarray]
    specs: list[ModalitySpec]
    mask: np.ndarray | None
    label: int
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


def binarise_mask(mask: np.ndarray, threshold: int = 0) -> np.ndarray:
    """Decoded mask ``(H, W[, C])`` -> bool ``(H, W)``: first channel ``> threshold``."""
    plane = mask[:, :, 0] if mask.ndim == 3 else mask
    return plane > threshold


class Source(ABC):
    """One entry of a data spec: a set of domains and their train/test samples.

    mask_threshold: a mask pixel is a defect when its value is above it (0 for binary or class-id masks).
    """

    mask_threshold: int = 0

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abstractmethod
    def domains(self) -> tuple[Domain, ...]:
        """Every domain of this source, in a stable order."""

    @abstractmethod
    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        """The samples of ``domain`` in ``split``, in a stable order."""

    def domain(self, name: str) -> Domain:
        for candidate in self.domains():
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.spec}: no domain {name!r}")

    def load(self, ref: SampleRef) -> Sample:
        """Decode the files of ``ref`` (raises :class:`modalities.ModalityError` on a bad file)."""
        domain = self.domain(ref.domain)
        arrays = {name: read_file(ref.files[name]) for name in domain.modality_names}
        mask = None
        if ref.mask_file is not None:
            mask = binarise_mask(read_file(ref.mask_file), self.mask_threshold)
        return Sample(
            domain=ref.domain,
            modalities=arrays,
            specs=list(domain.modalities),
            mask=mask,
            label=ref.label,
            id=ref.id,
            meta=dict(ref.meta),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
