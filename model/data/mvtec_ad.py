"""MVTec AD: ``<category>/train/good/*.png``, ``<category>/test/<good|defect>/*.png`` and
``<category>/ground_truth/<defect>/<stem>_mask.png``. Domains ``mvtec/<category>``, rgb only."""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec
from model.data.layout import image_files, require_dir, select_categories, subdirs
from model.data.sample import Domain, SampleRef, Source, Split

DATASET = "mvtec"
RGB = ModalitySpec("rgb", "rgb")


class MVTecADSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "MVTec AD root")
        found = [d.name for d in subdirs(root) if (d / "train" / "good").is_dir()]
        self.categories = select_categories(found, categories, root)

    def domains(self) -> tuple[Domain, ...]:
        return tuple(Domain(f"{DATASET}/{category}", (RGB,)) for category in self.categories)

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        category_dir = self.root / domain.split("/", 1)[1]
        refs = []
        for defect_dir in subdirs(category_dir / split):
            defect = defect_dir.name
            for image in image_files(defect_dir):
                mask = category_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
                refs.append(
                    SampleRef(
                        domain,
                        f"{category_dir.name}/{split}/{defect}/{image.stem}",
                        int(defect != "good"),
                        len(refs),
                        files={"rgb": image},
                        mask_file=mask if defect != "good" and mask.is_file() else None,
                        meta={"defect_type": defect},
                    )
                )
        return refs
