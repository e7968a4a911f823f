"""Data specs: ``"synthetic,shared:magnetic_tile,mvtec3d:/data/mvtec3d"`` -> a list of :class:`Source`.

Entries, comma-separated:

- ``synthetic`` or ``synthetic:SEED`` - the embedded generator (:mod:`model.data.synthetic`);
  ``synthetic@tiles+boards`` keeps the named domains.
- ``shared:magnetic_tile``, ``shared:mvtec3d_tire``, ``shared:mulsen`` or
  ``shared:mulsen:CAT+CAT`` - the real data in ``../shared/data`` (beside the repository; the
  ``UNIMMAD_SHARED_DATA`` environment variable points elsewhere).
- ``LAYOUT:/path`` or ``LAYOUT:/path@CAT+CAT`` - a dataset in its published layout, where LAYOUT is one
  of :data:`LAYOUTS`; ``@`` keeps only the named categories.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from model.data.bmad import BMADSource
from model.data.brats import BraTSSource
from model.data.eyecandies import EyecandiesSource
from model.data.magnetic_tile import MagneticTileSource
from model.data.mulsen import MulSenSource
from model.data.mulsen_derived import MulSenDerivedSource
from model.data.mvtec3d import MVTec3DSource
from model.data.mvtec_ad import MVTecADSource
from model.data.sample import Source
from model.data.synthetic import SyntheticConfig, SyntheticSource
from model.data.visa import VisASource

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA_ENV = "UNIMMAD_SHARED_DATA"

LayoutFactory = Callable[[str, Path, "tuple[str, ...] | None"], Source]


def _without_categories(factory: Callable[[str, Path], Source]) -> LayoutFactory:
    def build(spec: str, root: Path, categories: tuple[str, ...] | None) -> Source:
        if categories is not None:
            raise ValueError(f"{spec!r}: this layout has a single domain; drop the '@' part")
        return factory(spec, root)

    return build


LAYOUTS: dict[str, LayoutFactory] = {
    "mvtec": MVTecADSource,
    "visa": VisASource,
    "mvtec3d": MVTec3DSource,
    "eyecandies": EyecandiesSource,
    "mulsen": MulSenSource,
    "brats": BraTSSource,
    "bmad": BMADSource,
    "mulsen_derived": MulSenDerivedSource,
    "magnetic_tile": _without_categories(MagneticTileSource),
}
# shared:NAME -> (layout, folder under the shared data root, categories)
SHARED: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "magnetic_tile": ("magnetic_tile", "magnetic_tile", None),
    "mvtec3d_tire": ("mvtec3d", "mvtec3d_ad", ("tire",)),
    "mulsen": ("mulsen_derived", "mulsen_ad_derived", None),
}


def shared_data_root() -> Path:
    """``$UNIMMAD_SHARED_DATA`` or ``../shared/data`` relative to the repository."""
    override = os.environ.get(SHARED_DATA_ENV)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def _categories(text: str, entry: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split("+"))
    if not all(names):
        raise ValueError(f"data spec entry {entry!r}: empty category name in {text!r}")
    return names


def _synthetic_entry(entry: str, synthetic: SyntheticConfig | None) -> SyntheticSource:
    """``synthetic[:SEED][@NAME+NAME]``: the embedded domains (``@`` keeps those named, without the
    ``synthetic/`` prefix: ``synthetic@tiles+boards``)."""
    head, at, wanted = entry.partition("@")
    _, _, seed = head.partition(":")
    config = synthetic or SyntheticConfig()
    if seed:
        if not seed.isdigit():
            raise ValueError(f"data spec entry {entry!r}: the synthetic seed must be a non-negative integer")
        config = replace(config, seed=int(seed))
    return SyntheticSource(entry, config, _categories(wanted, entry) if at else None)


def _parse_entry(entry: str, synthetic: SyntheticConfig | None) -> Source:
    kind, _, argument = entry.partition(":")
    kind = kind.strip()
    if kind.partition("@")[0].strip() == "synthetic":
        return _synthetic_entry(entry, synthetic)
    if kind == "shared":
        name, _, wanted = argument.partition(":")
        if name not in SHARED:
            raise ValueError(
                f"data spec entry {entry!r}: unknown shared set {name!r}; known: {', '.join(SHARED)}"
            )
        layout, folder, categories = SHARED[name]
        if wanted:
            if categories is not None or layout == "magnetic_tile":
                raise ValueError(f"data spec entry {entry!r}: shared:{name} takes no category list")
            categories = _categories(wanted, entry)
        root = shared_data_root() / folder
        if not root.is_dir():
            raise ValueError(
                f"data spec entry {entry!r}: {root} not found (set {SHARED_DATA_ENV} to the shared data)"
            )
        return LAYOUTS[layout](entry, root, categories)
    if kind in LAYOUTS:
        if not argument:
            raise ValueError(f"data spec entry {entry!r}: give the dataset root, e.g. {kind}:/path/to/root")
        path, at, wanted = argument.rpartition("@") if "@" in argument else (argument, "", "")
        categories = _categories(wanted, entry) if at else None
        return LAYOUTS[kind](entry, Path(path).expanduser(), categories)
    known = ", ".join(["synthetic", "shared", *LAYOUTS])
    raise ValueError(f"data spec entry {entry!r}: unknown source {kind!r}; known: {known}")


def parse_data_spec(spec: str, *, synthetic: SyntheticConfig | None = None) -> list[Source]:
    """Every source of ``spec``; ``ValueError`` with one line for anything wrong.

    synthetic: sizes and counts for the ``synthetic`` entries (their seed comes from the entry).
    Domain names must be unique across the sources.
    """
    entries = [entry.strip() for entry in spec.split(",")]
    if not spec.strip() or not all(entries):
        raise ValueError(f"data spec {spec!r} has an empty entry; separate sources with single commas")
    sources = [_parse_entry(entry, synthetic) for entry in entries]
    seen: dict[str, str] = {}
    for source in sources:
        for domain in source.domains():
            if domain.name in seen:
                raise ValueError(
                    f"domain {domain.name} appears in both {seen[domain.name]!r} and {source.spec!r}"
                )
            seen[domain.name] = source.spec
    return sources
