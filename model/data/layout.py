"""Small helpers shared by the file-layout adapters: listing, split hashing, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else ``ValueError`` naming what was expected there."""
    if not path.is_dir():
        raise ValueError(f"{what} not found: {path} is not a directory")
    return path


def image_files(directory: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in ``directory`` (sorted by name); empty when it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def subdirs(directory: Path) -> list[Path]:
    """Sub-directories of ``directory`` sorted by name, hidden ones skipped; empty when absent."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def hash_fraction(name: str) -> float:
    """A stable pseudo-random number in [0, 1) from a file name (split assignment that survives re-listing)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def select_categories(found: list[str], wanted: tuple[str, ...] | None, where: Path) -> list[str]:
    """``wanted`` (validated against ``found``) or every category found; ``ValueError`` on none/unknown."""
    if not found:
        raise ValueError(f"no category folders found under {where}")
    if wanted is None:
        return found
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise ValueError(f"unknown category {', '.join(unknown)} under {where}; found: {', '.join(found)}")
    return list(wanted)
