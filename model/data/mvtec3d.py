"""MVTec 3D-AD: ``<category>/{train,validation,test}/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}``.

Domains ``mvtec3d/<category>`` with ``rgb`` and, when every sample of the category has its ``xyz``
TIFF, ``depth`` (the xyz float TIFF as read by :mod:`modalities`, whose depth kind takes z and treats
missing points, z = 0 or non-finite, as background). ``gt`` masks hold class ids; a pixel is a defect
when its id is above 0. ``validation`` is not used (spec 1.2).
"""

from __future__ import annotations

import logging
from pathlib import Path

from modalities import ModalitySpec
from model.data.layout import image_files, require_dir, select_categories, subdirs
from model.data.sample import SPLITS, Domain, SampleRef, Source, Split

logger = logging.getLogger(__name__)
DATASET = "mvtec3d"


class MVTec3DSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        require_dir(root, "MVTec 3D-AD root")
        found = [d.name for d in subdirs(root) if (d / "train").is_dir() and (d / "test").is_dir()]
        self.root = root
        self._items = {name: self._list(root / name) for name in select_categories(found, categories, root)}
        self._domains = tuple(self._domain(name) for name in self._items)

    def _list(self, category_dir: Path) -> dict[Split, list[tuple[str, Path, Path | None]]]:
        """(defect type, rgb file, gt file or None) per split."""
        items: dict[Split, list[tuple[str, Path, Path | None]]] = {}
        for split in SPLITS:
            items[split] = []
            for defect_dir in subdirs(category_dir / split):
                for rgb in image_files(defect_dir / "rgb", (".png",)):
                    gt = defect_dir / "gt" / rgb.name
                    items[split].append(
                        (defect_dir.name, rgb, gt if defect_dir.name != "good" and gt.is_file() else None)
                    )
        return items

    def _domain(self, category: str) -> Domain:
        rgb_files = [rgb for split in SPLITS for _, rgb, _ in self._items[category][split]]
        with_xyz = sum(_xyz_file(rgb).is_file() for rgb in rgb_files)
        modalities = [ModalitySpec("rgb", "rgb")]
        if rgb_files and with_xyz == len(rgb_files):
            modalities.append(ModalitySpec("depth", "depth"))
        elif with_xyz:
            logger.warning(
                "%s/%s: %d of %d xyz files missing; using rgb only",
                DATASET,
                category,
                len(rgb_files) - with_xyz,
                len(rgb_files),
            )
        return Domain(f"{DATASET}/{category}", tuple(modalities))

    def domains(self) -> tuple[Domain, ...]:
        return self._domains

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        spec = self.domain(domain)
        category = domain.split("/", 1)[1]
        refs = []
        for index, (defect, rgb, gt) in enumerate(self._items[category][split]):
            files = {"rgb": rgb}
            if "depth" in spec.modality_names:
                files["depth"] = _xyz_file(rgb)
            refs.append(
                SampleRef(
                    domain,
                    f"{category}/{split}/{defect}/{rgb.stem}",
                    int(defect != "good"),
                    index,
                    files=files,
                    mask_file=gt,
                    meta={"defect_type": defect},
                )
            )
        return refs


def _xyz_file(rgb: Path) -> Path:
    return rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
