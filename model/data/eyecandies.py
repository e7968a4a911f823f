"""Eyecandies: ``<Category>/{train,test_public}/data/<id>_image_<light>.png`` with ``<id>_mask.png``.

Domains ``eyecandies/<Category>`` with one ``rgb`` modality, the image under light ``light`` (default 5,
all lamps on; which of the six images UniMMAD used is unverified, spec 1.1). A sample is anomalous when
its mask has a defect pixel (the public test set ships masks, no separate labels); training images are
normal. Loss weight 0.5 (spec 1.5). The ``<id>_depth.exr`` depth is not read: :mod:`modalities` has no
OpenEXR decoder, so this adapter is RGB-only until one exists.
"""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec, read_file
from model.data.layout import require_dir, select_categories, subdirs
from model.data.sample import Domain, SampleRef, Source, Split

DATASET = "eyecandies"
SPLIT_FOLDERS = {"train": "train", "test": "test_public"}
LOSS_WEIGHT = 0.5


class EyecandiesSource(Source):
    def __init__(
        self, spec: str, root: Path, categories: tuple[str, ...] | None = None, light: int = 5
    ) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "Eyecandies root")
        found = [d.name for d in subdirs(root) if (d / "train" / "data").is_dir()]
        self.categories = select_categories(found, categories, root)
        self.light = light

    def domains(self) -> tuple[Domain, ...]:
        return tuple(
            Domain(f"{DATASET}/{category}", (ModalitySpec("rgb", "rgb"),), LOSS_WEIGHT)
            for category in self.categories
        )

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        category = domain.split("/", 1)[1]
        data_dir = self.root / category / SPLIT_FOLDERS[split] / "data"
        suffix = f"_image_{self.light}.png"
        images = sorted(p for p in data_dir.glob(f"*{suffix}") if p.is_file()) if data_dir.is_dir() else []
        refs = []
        for image in images:
            identifier = image.name.removesuffix(suffix)
            mask = data_dir / f"{identifier}_mask.png"
            has_mask = split == "test" and mask.is_file()
            # Reading the mask here is what labels a test sample (Eyecandies has no label file).
            label = int(has_mask and bool((read_file(mask) > 0).any()))
            refs.append(
                SampleRef(
                    domain,
                    f"{category}/{split}/{identifier}",
                    label,
                    len(refs),
                    files={"rgb": image},
                    mask_file=mask if label else None,
                )
            )
        return refs
