"""BMAD-style medical sets: ``<set>/train/good/img/*.png``, ``<set>/test/<good|Ungood>/img/*.png`` and
``<set>/test/Ungood/label/<same name>``; folders without the ``img`` level are accepted too.

Domains ``bmad/<set in lower case>``. A set is ``rgb`` when its first training image has colour
channels (endoscopy), else ``gray`` (CT, OCT, MRI). Loss weights follow spec 1.5: liver CT 10, else 1.
"""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec, read_file
from model.data.layout import image_files, require_dir, select_categories, subdirs
from model.data.sample import Domain, SampleRef, Source, Split

DATASET = "bmad"
ABNORMAL_FOLDER = "Ungood"
HEAVY_SETS = ("liver",)  # spec 1.5: LiverAD's loss weight is 10


def label_folders(set_dir: Path, split: Split) -> list[tuple[int, Path, Path | None]]:
    """(label, image folder, mask folder or None) for ``good`` and ``Ungood`` under ``set_dir/split``."""
    folders = []
    for name, label in (("good", 0), (ABNORMAL_FOLDER, 1)):
        base = set_dir / split / name
        if not base.is_dir():
            continue
        images = base / "img" if (base / "img").is_dir() else base
        folders.append((label, images, base / "label" if label else None))
    return folders


class BMADSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "BMAD root")
        found = [d.name for d in subdirs(root) if (d / "train" / "good").is_dir()]
        self.sets = select_categories(found, categories, root)
        self._domains = tuple(self._domain(name) for name in self.sets)

    def _domain(self, set_name: str) -> Domain:
        (_, images, _), *_ = label_folders(self.root / set_name, "train")
        first = image_files(images)
        if not first:
            raise ValueError(f"{self.root / set_name}: no training images")
        kind = "rgb" if read_file(first[0]).ndim == 3 else "gray"
        weight = 10.0 if any(heavy in set_name.lower() for heavy in HEAVY_SETS) else 1.0
        return Domain(f"{DATASET}/{set_name.lower()}", (ModalitySpec("image", kind),), weight)

    def domains(self) -> tuple[Domain, ...]:
        return self._domains

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        set_name = self.sets[[d.name for d in self._domains].index(domain)]
        refs = []
        for label, images, masks in label_folders(self.root / set_name, split):
            for image in image_files(images):
                mask = masks / image.name if masks is not None else None
                refs.append(
                    SampleRef(
                        domain,
                        f"{set_name}/{split}/{images.relative_to(self.root / set_name / split)}/{image.stem}",
                        label,
                        len(refs),
                        files={"image": image},
                        mask_file=mask if mask is not None and mask.is_file() else None,
                    )
                )
        return refs
