"""BraTS as 2-D slices with four co-registered sequences, in the BMAD folder scheme:
``<root>/train/good/img/<id>_<seq>.png``, ``<root>/test/<good|Ungood>/img/<id>_<seq>.png`` and
``<root>/test/Ungood/label/<id>.png`` for ``seq`` in flair, t1, t1ce, t2 (the sequence name ends the
file name, as in the upstream code's path swaps; the exact upstream layout is unverified, spec 1.2).

One domain ``brats/brain`` with four gray modalities; loss weight 10 (spec 1.5). The abnormal region
is the union of all tumour labels, i.e. mask > 0. A slice missing any sequence is an error.
"""

from __future__ import annotations

from pathlib import Path

from modalities import ModalitySpec
from model.data.bmad import label_folders
from model.data.layout import image_files, require_dir
from model.data.sample import Domain, SampleRef, Source, Split

SEQUENCES = ("flair", "t1", "t1ce", "t2")
DOMAIN = Domain("brats/brain", tuple(ModalitySpec(name, "gray") for name in SEQUENCES), loss_weight=10.0)


def slice_id(path: Path) -> tuple[str, str] | None:
    """``(id, sequence)`` from ``<id>_<sequence>.<ext>``; None when the name ends with no sequence."""
    stem, _, sequence = path.stem.rpartition("_")
    return (stem, sequence) if stem and sequence in SEQUENCES else None


class BraTSSource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        if categories is not None:
            raise ValueError(f"{spec!r}: BraTS has a single domain; drop the '@' part")
        self.root = require_dir(root, "BraTS slice root")
        if not (root / "train" / "good").is_dir():
            raise ValueError(f"{root}: not a BraTS slice folder (no train/good)")

    def domains(self) -> tuple[Domain, ...]:
        return (DOMAIN,)

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        refs = []
        for label, images, masks in label_folders(self.root, split):
            slices: dict[str, dict[str, Path]] = {}
            for image in image_files(images):
                if parsed := slice_id(image):
                    slices.setdefault(parsed[0], {})[parsed[1]] = image
            for identifier, files in sorted(slices.items()):
                missing = [name for name in SEQUENCES if name not in files]
                if missing:
                    raise ValueError(f"{images}: slice {identifier} lacks {', '.join(missing)}")
                mask = masks / f"{identifier}.png" if masks is not None else None
                refs.append(
                    SampleRef(
                        domain,
                        f"brain/{split}/{images.parent.name if images.name == 'img' else images.name}/{identifier}",
                        label,
                        len(refs),
                        files={name: files[name] for name in SEQUENCES},
                        mask_file=mask if mask is not None and mask.is_file() else None,
                    )
                )
        return refs
