"""MulSen-AD raw: ``<category>/Infrared/{train,test}/<good|defect>/<n>.png`` and
``<category>/Infrared/GT/<defect>/<n>.png``. UniMMAD uses the infrared images only (RGB and point
clouds are not calibrated to them, spec 1.1), so each domain ``mulsen/<category>`` has one ``infrared``
modality of gray kind. The GT folder location is unverified (spec 1.2); a defect without a mask file
keeps its image label and an empty mask."""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec
from model.data.layout import image_files, require_dir, select_categories, subdirs
from model.data.sample import Domain, SampleRef, Source, Split

DATASET = "mulsen"
SENSOR = "Infrared"


class MulSenSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "MulSen-AD root")
        found = [d.name for d in subdirs(root) if (d / SENSOR / "train").is_dir()]
        self.categories = select_categories(found, categories, root)

    def domains(self) -> tuple[Domain, ...]:
        return tuple(
            Domain(f"{DATASET}/{category}", (ModalitySpec("infrared", "gray"),))
            for category in self.categories
        )

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        sensor_dir = self.root / domain.split("/", 1)[1] / SENSOR
        refs = []
        for defect_dir in subdirs(sensor_dir / split):
            defect = defect_dir.name
            for image in image_files(defect_dir, (".png",)):
                mask = sensor_dir / "GT" / defect / image.name
                refs.append(
                    SampleRef(
                        domain,
                        f"{sensor_dir.parent.name}/{split}/{defect}/{image.stem}",
                        int(defect != "good"),
                        len(refs),
                        files={"infrared": image},
                        mask_file=mask if defect != "good" and mask.is_file() else None,
                        meta={"defect_type": defect},
                    )
                )
        return refs
