"""A seeded multimodal anomaly generator: no files, deterministic, fast at any size.

Four domains with different modality sets. Every defect is visible in only some modalities and its mask
is exact (the changed pixels), so a detector that ignores a modality misses its defects:

| domain            | modalities                  | defects (the modality that shows them)                |
|-------------------|-----------------------------|-------------------------------------------------------|
| synthetic/tiles   | rgb                         | stain (rgb)                                           |
| synthetic/parts   | rgb, depth                  | stain (rgb), dent (depth)                             |
| synthetic/boards  | rgb, infrared, depth        | stain (rgb), hot spot (infrared), dent (depth)        |
| synthetic/brain   | flair, t1, t1ce, t2 (gray)  | oedema (flair + t2), enhancing lesion (t1ce)          |

Normal samples vary in texture, pose, size and lighting. Each sample is drawn from its own generator
seeded by (seed, domain, split, index), so any sample can be regenerated alone, in any order; the
defect draws from a second stream, so an index renders the same scene with or without its defect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from modalities import ModalitySpec
from model.data.sample import Domain, Sample, SampleRef, Source, Split

RGB = ModalitySpec("rgb", "rgb")
DEPTH = ModalitySpec("depth", "depth")
INFRARED = ModalitySpec("infrared", "gray")
MRI_SEQUENCES = tuple(ModalitySpec(name, "gray") for name in ("flair", "t1", "t1ce", "t2"))

DOMAINS: tuple[Domain, ...] = (
    Domain("synthetic/tiles", (RGB,)),
    Domain("synthetic/parts", (RGB, DEPTH)),
    Domain("synthetic/boards", (RGB, INFRARED, DEPTH)),
    Domain("synthetic/brain", MRI_SEQUENCES),
)
# Which modalities each defect type changes, cycled over a domain's defective test samples.
DEFECT_MODALITIES: dict[str, tuple[str, ...]] = {
    "synthetic/tiles": ("rgb",),
    "synthetic/parts": ("rgb", "depth"),
    "synthetic/boards": ("rgb", "infrared", "depth"),
    "synthetic/brain": ("flair+t2", "t1ce"),
}
_SPLIT_CODE = {"train": 0, "test": 1}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and counts per domain; defaults suit the lite preset (128 px)."""

    seed: int = 0
    size: int = 128
    train_per_domain: int = 60
    test_normal_per_domain: int = 20
    test_defective_per_domain: int = 20

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"synthetic size must be >= 16 pixels, got {self.size}")
        counts = (self.train_per_domain, self.test_normal_per_domain, self.test_defective_per_domain)
        if min(counts) < 0:
            raise ValueError(f"synthetic sample counts must be >= 0, got {counts}")


# ---------------------------------------------------------------------------------------------- fields


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in [-1, 1], each ``(size, size)``."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit std; ``scale`` is the blob size as a fraction of the image."""
    field = ndimage.gaussian_filter(
        rng.standard_normal((size, size)), sigma=max(scale * size, 0.5), mode="wrap"
    )
    return field / (field.std() + 1e-12)


def _rotated(
    y: np.ndarray, x: np.ndarray, centre: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred on ``centre`` (y, x) and rotated by ``angle`` radians."""
    dy, dx = y - centre[0], x - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dy - sin * dx, sin * dy + cos * dx


def _ellipse_radius(y: np.ndarray, x: np.ndarray, centre, axes, angle: float) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse with semi-axes ``axes`` (ay, ax)."""
    v, u = _rotated(y, x, centre, angle)
    return np.sqrt((v / axes[0]) ** 2 + (u / axes[1]) ** 2)


def _lighting(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, strength: float) -> np.ndarray:
    """A random linear illumination gradient around 1."""
    gy, gx = rng.uniform(-strength, strength, 2)
    return 1 + gy * y + gx * x


def _stripes(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Oriented sinusoidal grain in [-1, 1] with random direction, frequency and phase."""
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(3, 8)
    return np.sin(np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))


def _blob(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """An irregular defect region (bool) inside ``allowed``, never empty."""
    size = y.shape[0]
    candidates = np.argwhere(ndimage.binary_erosion(allowed, iterations=max(size // 16, 1)))
    if candidates.size == 0:
        candidates = np.argwhere(allowed)
    for _ in range(8):
        row, col = candidates[rng.integers(len(candidates))]
        radius = rng.uniform(0.07, 0.15)
        centre = (y[row, col], x[row, col])
        distance = _ellipse_radius(
            y, x, centre, (radius, radius * rng.uniform(0.5, 1.5)), rng.uniform(0, np.pi)
        )
        blob = (distance + 0.3 * _smooth_noise(rng, size, 0.03) < 1) & allowed
        if blob.sum() >= max(4, size * size // 2000):
            return blob
    return blob | ((np.abs(y - centre[0]) < 0.05) & (np.abs(x - centre[1]) < 0.05) & allowed)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _stain(rng: np.random.Generator, rgb: np.ndarray, region: np.ndarray) -> None:
    """Blend a random dark tint into ``rgb`` (float (H, W, 3) in [0, 1]) inside ``region``, in place."""
    tint = rng.uniform(0.1, 0.5, 3)
    alpha = rng.uniform(0.45, 0.7)
    rgb[region] = (1 - alpha) * rgb[region] + alpha * tint


# --------------------------------------------------------------------------------------------- domains


def _tiles(
    rng: np.random.Generator, defect_rng: np.random.Generator, size: int, defect: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Textured ceramic-like tile filling the image; rgb only."""
    y, x = _grid(size)
    base = np.array([0.62, 0.52, 0.42]) + rng.uniform(-0.06, 0.06, 3)
    grain = (
        0.06 * _stripes(rng, y, x)
        + 0.05 * _smooth_noise(rng, size, 0.02)
        + 0.03 * _smooth_noise(rng, size, 0.2)
    )
    rgb = (base[None, None, :] + grain[..., None]) * _lighting(rng, y, x, 0.15)[..., None]
    mask = np.zeros((size, size), dtype=bool)
    if defect == "rgb":
        mask = _blob(defect_rng, y, x, np.ones_like(mask))
        _stain(defect_rng, rgb, mask)
    return {"rgb": _to_uint8(rgb)}, mask


def _parts(
    rng: np.random.Generator, defect_rng: np.random.Generator, size: int, defect: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A brushed elliptic dome on a dark background, seen in rgb and as a depth map (0 = no data)."""
    y, x = _grid(size)
    centre = tuple(rng.uniform(-0.1, 0.1, 2))
    axes = (rng.uniform(0.5, 0.65), rng.uniform(0.6, 0.8))
    angle = rng.uniform(0, np.pi)
    radius = _ellipse_radius(y, x, centre, axes, angle)
    body = radius < 1
    height = rng.uniform(0.025, 0.04) * np.sqrt(np.clip(1 - radius**2, 0, 1))
    depth = np.where(body, 0.6 - height + 0.0004 * _smooth_noise(rng, size, 0.05), 0.0)

    shade = 0.55 + 0.25 * np.sqrt(np.clip(1 - radius**2, 0, 1)) + 0.05 * _stripes(rng, y, x)
    metal = np.array([0.7, 0.72, 0.78]) + rng.uniform(-0.05, 0.05, 3)
    background = 0.12 + 0.03 * _smooth_noise(rng, size, 0.1)
    rgb = np.where(body[..., None], metal * shade[..., None], background[..., None])
    rgb = rgb * _lighting(rng, y, x, 0.15)[..., None]

    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _blob(defect_rng, y, x, body)
        if defect == "rgb":
            _stain(defect_rng, rgb, mask)
        else:
            depth[mask] += defect_rng.uniform(0.004, 0.008) * (
                1 + 0.3 * _smooth_noise(defect_rng, size, 0.05)[mask].clip(-1, 1)
            )
    return {"rgb": _to_uint8(rgb), "depth": depth.astype(np.float32)}, mask


def _boards(
    rng: np.random.Generator, defect_rng: np.random.Generator, size: int, defect: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A circuit board with components: rgb, a thermal (infrared) image and a depth map."""
    y, x = _grid(size)
    angle = rng.uniform(-0.15, 0.15)
    v, u = _rotated(y, x, tuple(rng.uniform(-0.05, 0.05, 2)), angle)
    board = (np.abs(v) < 0.85) & (np.abs(u) < 0.85)
    components = np.zeros((size, size), dtype=bool)
    heat = np.zeros((size, size))
    for _ in range(rng.integers(3, 7)):
        cv, cu = rng.uniform(-0.6, 0.6, 2)
        hv, hu = rng.uniform(0.06, 0.18, 2)
        components |= (np.abs(v - cv) < hv) & (np.abs(u - cu) < hu)
        heat += rng.uniform(0.2, 0.5) * np.exp(
            -((v - cv) ** 2 + (u - cu) ** 2) / (2 * rng.uniform(0.1, 0.2) ** 2)
        )

    green = np.array([0.1, 0.42, 0.2]) + rng.uniform(-0.04, 0.04, 3)
    chip = np.array([0.15, 0.15, 0.17])
    traces = 0.04 * (_stripes(rng, y, x) > 0.9)
    rgb = np.where(
        components[..., None],
        chip,
        green + traces[..., None] + 0.02 * _smooth_noise(rng, size, 0.05)[..., None],
    )
    rgb = np.where(board[..., None], rgb, 0.05) * _lighting(rng, y, x, 0.2)[..., None]
    infrared = np.where(board, 0.2 + heat + 0.02 * _smooth_noise(rng, size, 0.08), 0.1)
    depth = np.where(board, 0.5 - 0.012 * components + 0.0003 * _smooth_noise(rng, size, 0.05), 0.0)

    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _blob(defect_rng, y, x, board)
        if defect == "rgb":
            _stain(defect_rng, rgb, mask)
        elif defect == "infrared":
            infrared[mask] += defect_rng.uniform(0.25, 0.4)
        else:
            depth[mask] += defect_rng.uniform(0.004, 0.008)
    return {"rgb": _to_uint8(rgb), "infrared": _to_uint8(infrared), "depth": depth.astype(np.float32)}, mask


# Tissue intensities (white matter, grey matter, CSF) per sequence, roughly as the MRI contrasts look.
_TISSUE_CONTRAST = {
    "flair": (0.55, 0.68, 0.08),
    "t1": (0.85, 0.6, 0.18),
    "t1ce": (0.8, 0.58, 0.2),
    "t2": (0.42, 0.6, 0.95),
}
# Lesion intensity change per sequence: oedema is bright in FLAIR/T2, an enhancing core only in T1ce.
_LESION_CHANGE = {"flair+t2": {"flair": 0.32, "t2": 0.3}, "t1ce": {"t1ce": 0.38}}


def _brain(
    rng: np.random.Generator, defect_rng: np.random.Generator, size: int, defect: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """An axial brain slice in four co-registered sequences (BraTS names)."""
    y, x = _grid(size)
    centre = tuple(rng.uniform(-0.05, 0.05, 2))
    axes = (rng.uniform(0.78, 0.9), rng.uniform(0.62, 0.74))
    angle = rng.uniform(-0.2, 0.2)
    head = _ellipse_radius(y, x, centre, axes, angle)
    folds = 0.08 * _smooth_noise(rng, size, 0.04)
    brain = head < 1
    white = (head + folds) < rng.uniform(0.65, 0.75)
    ventricle_axes = (rng.uniform(0.12, 0.22), rng.uniform(0.05, 0.09))
    ventricles = np.zeros_like(brain)
    for side in (-1, 1):
        ventricle_centre = (centre[0] - 0.05, centre[1] + side * rng.uniform(0.08, 0.13))
        ventricles |= _ellipse_radius(y, x, ventricle_centre, ventricle_axes, angle + side * 0.3) < 1
    tissue_noise = 0.03 * _smooth_noise(rng, size, 0.015)
    bias = _lighting(rng, y, x, 0.12)

    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        mask = _blob(defect_rng, y, x, brain & ~ventricles)
    sequences = {}
    for name, (wm, gm, csf) in _TISSUE_CONTRAST.items():
        image = np.where(white, wm, gm) + tissue_noise
        image = np.where(ventricles, csf, image)
        if defect is not None:
            image[mask] += _LESION_CHANGE[defect].get(name, 0.0)
        sequences[name] = _to_uint8(np.where(brain, image * bias, 0.0))
    return sequences, mask


_GENERATORS: dict[
    str,
    Callable[
        [np.random.Generator, np.random.Generator, int, str | None],
        tuple[dict[str, np.ndarray], np.ndarray],
    ],
] = {
    "synthetic/tiles": _tiles,
    "synthetic/parts": _parts,
    "synthetic/boards": _boards,
    "synthetic/brain": _brain,
}
_DOMAIN_CODE = {domain.name: code for code, domain in enumerate(DOMAINS)}


def generate(domain: str, split: Split, index: int, defect: str | None, config: SyntheticConfig) -> Sample:
    """One sample; ``defect`` is None (normal) or an entry of :data:`DEFECT_MODALITIES` for the domain."""
    if domain not in _GENERATORS:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {', '.join(_GENERATORS)}")
    if defect is not None and defect not in DEFECT_MODALITIES[domain]:
        raise ValueError(
            f"{domain}: no defect shown in {defect!r}; known: {', '.join(DEFECT_MODALITIES[domain])}"
        )
    key = [config.seed, _DOMAIN_CODE[domain], _SPLIT_CODE[split], index]
    # Separate streams: the scene of an index is the same with or without its defect.
    scene_rng, defect_rng = np.random.default_rng(key + [0]), np.random.default_rng(key + [1])
    arrays, mask = _GENERATORS[domain](scene_rng, defect_rng, config.size, defect)
    spec = next(candidate for candidate in DOMAINS if candidate.name == domain)
    return Sample(
        domain=domain,
        modalities=arrays,
        specs=list(spec.modalities),
        mask=mask,
        label=int(defect is not None),
        id=f"{domain}/{split}/{index:04d}",
        meta={"defect_modality": defect},
    )


class SyntheticSource(Source):
    """The ``synthetic`` / ``synthetic:SEED`` entry of a data spec."""

    def __init__(
        self,
        spec: str = "synthetic",
        config: SyntheticConfig | None = None,
        names: tuple[str, ...] | None = None,
    ) -> None:
        """names: the domains to keep, without the ``synthetic/`` prefix (None: all of them)."""
        super().__init__(spec)
        self.config = config or SyntheticConfig()
        known = [domain.name.removeprefix("synthetic/") for domain in DOMAINS]
        if names is not None and (unknown := sorted(set(names) - set(known))):
            raise ValueError(
                f"{spec!r}: unknown synthetic domain(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        self._domains = tuple(d for d, name in zip(DOMAINS, known) if names is None or name in names)

    def domains(self) -> tuple[Domain, ...]:
        return self._domains

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        if split == "train":
            defects: list[str | None] = [None] * self.config.train_per_domain
        else:
            kinds = DEFECT_MODALITIES[domain]
            defects = [None] * self.config.test_normal_per_domain + [
                kinds[i % len(kinds)] for i in range(self.config.test_defective_per_domain)
            ]
        return [
            SampleRef(
                domain,
                f"{domain}/{split}/{index:04d}",
                int(defect is not None),
                index,
                meta={
                    "split": split,
                    "defect_modality": defect,
                },
            )
            for index, defect in enumerate(defects)
        ]

    def load(self, ref: SampleRef) -> Sample:
        return generate(ref.domain, ref.meta["split"], ref.index, ref.meta["defect_modality"], self.config)
