"""Magnetic-tile surface defects (Huang et al. 2018): ``MT_<class>/Imgs/<name>.jpg`` + ``<name>.png`` mask.

Grayscale, one domain ``magnetic_tile/tile``. The dataset has no split, so this adapter fixes one:
an ``MT_Free`` image goes to training when the SHA-256 of its file name maps below ``train_fraction``
(0.8), which is stable under re-listing and independent of file order; the other normal images and every
defective image (all other ``MT_*`` classes) form the test set. Masks are soft 0-255; a pixel is a
defect when its value is above 127.
"""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec
from model.data.layout import hash_fraction, image_files, require_dir, subdirs
from model.data.sample import Domain, SampleRef, Source, Split

DOMAIN = Domain("magnetic_tile/tile", (ModalitySpec("gray", "gray"),))
NORMAL_CLASS = "MT_Free"


class MagneticTileSource(Source):
    mask_threshold = 127

    def __init__(self, spec: str, root: Path, train_fraction: float = 0.8) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "magnetic_tile root")
        if not (root / NORMAL_CLASS / "Imgs").is_dir():
            raise ValueError(f"{root}: not a magnetic-tile folder (no {NORMAL_CLASS}/Imgs)")
        self.train_fraction = train_fraction

    def domains(self) -> tuple[Domain, ...]:
        return (DOMAIN,)

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        refs = []
        for class_dir in subdirs(self.root):
            if not class_dir.name.startswith("MT_"):
                continue
            label = int(class_dir.name != NORMAL_CLASS)
            for image in image_files(class_dir / "Imgs", (".jpg",)):
                in_train = label == 0 and hash_fraction(image.name) < self.train_fraction
                if in_train != (split == "train"):
                    continue
                mask = image.with_suffix(".png")
                refs.append(
                    SampleRef(
                        DOMAIN.name,
                        f"{class_dir.name}/{image.stem}",
                        label,
                        len(refs),
                        files={"gray": image},
                        mask_file=mask if label and mask.is_file() else None,
                        meta={"defect_type": class_dir.name.removeprefix("MT_")},
                    )
                )
        return refs
