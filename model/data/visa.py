"""VisA with its split file: ``<root>/split_csv/1cls.csv`` (columns ``object, split, label, image, mask``;
paths relative to the root, e.g. ``candle/Data/Images/Anomaly/000.JPG``). Domains ``visa/<object>``,
rgb only. Labels are ``normal``/``anomaly``; a mask pixel is a defect when above 0."""

from __future__ import annotations

import csv
from pathlib import Path

from modalities import ModalitySpec
from model.data.layout import require_dir, select_categories
from model.data.sample import SPLITS, Domain, SampleRef, Source, Split

DATASET = "visa"
SPLIT_FILE = Path("split_csv") / "1cls.csv"
REQUIRED_COLUMNS = {"object", "split", "label", "image", "mask"}


class VisASource(Source):
    def __init__(self, spec: str, root: Path, categories: tuple[str, ...] | None = None) -> None:
        super().__init__(spec)
        self.root = require_dir(root, "VisA root")
        self._rows = _read_split(root / SPLIT_FILE)
        found = sorted({row["object"] for row in self._rows})
        self.categories = select_categories(found, categories, root)

    def domains(self) -> tuple[Domain, ...]:
        return tuple(
            Domain(f"{DATASET}/{category}", (ModalitySpec("rgb", "rgb"),)) for category in self.categories
        )

    def refs(self, split: Split, domain: str) -> list[SampleRef]:
        self.domain(domain)
        category = domain.split("/", 1)[1]
        rows = [row for row in self._rows if row["object"] == category and row["split"] == split]
        refs = []
        for row in rows:
            label = int(row["label"] == "anomaly")
            image = self.root / row["image"]
            refs.append(
                SampleRef(
                    domain,
                    f"{category}/{split}/{Path(row['image']).stem}-{row['label']}",
                    label,
                    len(refs),
                    files={"rgb": image},
                    mask_file=self.root / row["mask"] if label and row["mask"] else None,
                    meta={"defect_type": row["label"]},
                )
            )
        return refs


def _read_split(path: Path) -> list[dict[str, str]]:
    """Rows of the split CSV, validated: known splits and labels, every needed column."""
    if not path.is_file():
        raise ValueError(f"VisA split file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = REQUIRED_COLUMNS - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS or row["label"] not in ("normal", "anomaly"):
            raise ValueError(f"{path}:{number}: split must be train/test and label normal/anomaly, got {row}")
    return rows
