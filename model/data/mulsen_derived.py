"""The derived MulSen-AD copy in ``../shared/data/mulsen_ad_derived``.

Layout ``<category>/<train|test>/<good|defect>/<idx>/{rgb.png, ir_normalized.png, pc_depth.png,
gt_mask.png, meta.json}``, all 256x256. Domains ``mulsen_derived/<category>`` with ``rgb``,
``infrared`` (gray kind) and ``depth`` (the rendered point-cloud depth, 0 = background).

Known artifacts (SOURCES.md): the masks come from RGB only, and in some defect groups the rendered
depth is one constant value, which no normal sample has. :meth:`load` marks those samples with
``meta["blank_depth"] = True`` so evaluations can report with and without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalities import ModalitySpec
from model.data.layout import require_dir, select_categories, subdirs
from model.data.sample import Domain, Sample, SampleRef, Source, Split

DATASET = "mulsen_derived"
MODALITY_FILES = {"rgb": "rgb.png", "infrared": "ir_normalized.png", "depth": "pc_depth.png"}
MODALITIES = (ModalitySpec("rgb", "rgb"), ModalitySpec("infrared", "gray"), ModalitySpec("depth", "depth"))


def is_blank(depth: np.ndarray) -> bool:
    """True when a depth image holds a single value (nothing was rendered)."""
    return bool(depth.size == 0 or np.ptp(depth) == 0)


class MulSenDerivedSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "mulsen_ad_derived root")
        found = [d.name for d in subdirs(root)]
        self.categories = select_categories(found, categories, root)

    def domains(self) -> tuple[Domain, ...]:
        return tuple(Domain(f"{DATASET}/{category}", MODALITIES) for category in self.categories)

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        category = domain.split("/", 1)[1]
        refs = []
        for label_dir in subdirs(self.root / category / split):
            for sample_dir in subdirs(label_dir):
                if not (sample_dir / MODALITY_FILES["rgb"]).is_file():
                    continue
                mask = sample_dir / "gt_mask.png"
                label = int(label_dir.name != "good")
                refs.append(
                    SampleRef(
                        domain,
                        f"{category}/{split}/{label_dir.name}/{sample_dir.name}",
                        label,
                        len(refs),
                        files={name: sample_dir / file for name, file in MODALITY_FILES.items()},
                        mask_file=mask if label and mask.is_file() else None,
                        meta={"defect_type": label_dir.name},
                    )
                )
        return refs

    def load(self, ref: SampleRef) -> Sample:
        sample = super().load(ref)
        sample.meta["blank_depth"] = is_blank(sample.modalities["depth"])
        return sample
