"""Each paper-layout adapter on a few tiny files laid out like the published dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.data import parse_data_spec
from model.data.loader import MultiDomainDataset, collate


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(value: int = 120) -> np.ndarray:
    return np.full((12, 16, 3), value, dtype=np.uint8)


def mask(ids: int = 255) -> np.ndarray:
    array = np.zeros((12, 16), dtype=np.uint8)
    array[3:6, 4:9] = ids
    return array


def load_all(spec: str, split: str):
    (source,) = parse_data_spec(spec)
    return source, [
        source.load(ref) for domain in source.domains() for ref in source.refs(split, domain.name)
    ]


def test_mvtec_ad(tmp_path: Path) -> None:
    png(tmp_path / "bottle/train/good/000.png", rgb())
    png(tmp_path / "bottle/test/good/000.png", rgb())
    png(tmp_path / "bottle/test/broken_large/000.png", rgb(200))
    png(tmp_path / "bottle/ground_truth/broken_large/000_mask.png", mask())
    png(tmp_path / "grid/train/good/000.png", rgb())
    source, test = load_all(f"mvtec:{tmp_path}@bottle", "test")
    assert [d.name for d in source.domains()] == ["mvtec/bottle"]
    assert [(s.label, s.mask is not None) for s in test] == [(1, True), (0, False)]
    assert test[0].mask.sum() == 15 and test[0].modalities["rgb"].shape == (12, 16, 3)


def test_visa_uses_its_split_file(tmp_path: Path) -> None:
    png(tmp_path / "candle/Data/Images/Normal/0000.JPG", rgb())
    png(tmp_path / "candle/Data/Images/Normal/0001.JPG", rgb())
    png(tmp_path / "candle/Data/Images/Anomaly/000.JPG", rgb(30))
    png(tmp_path / "candle/Data/Masks/Anomaly/000.png", mask(1))  # VisA masks hold small ids
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
    )
    source, test = load_all(f"visa:{tmp_path}", "test")
    assert [d.name for d in source.domains()] == ["visa/candle"]
    assert len(source.refs("train", "visa/candle")) == 1
    assert sorted(s.label for s in test) == [0, 1]
    assert next(s for s in test if s.label).mask.sum() == 15


def test_visa_rejects_a_bad_split_file(tmp_path: Path) -> None:
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(ValueError, match="missing column"):
        parse_data_spec(f"visa:{tmp_path}")


def test_mvtec3d_reads_xyz_tiff_as_depth_with_missing_points(tmp_path: Path) -> None:
    xyz = np.zeros((12, 16, 3), dtype=np.float32)
    xyz[..., 2] = 0.5
    xyz[0, :, 2] = 0.0  # missing points are stored as zeros
    xyz[1, 0, 2] = np.nan
    for split, defect in (("train", "good"), ("test", "good"), ("test", "cut")):
        png(tmp_path / f"tire/{split}/{defect}/rgb/000.png", rgb())
        (tmp_path / f"tire/{split}/{defect}/xyz").mkdir()
        tifffile.imwrite(tmp_path / f"tire/{split}/{defect}/xyz/000.tiff", xyz, photometric="minisblack")
        png(tmp_path / f"tire/{split}/{defect}/gt/000.png", mask(254 if defect == "cut" else 0))
    source, test = load_all(f"mvtec3d:{tmp_path}", "test")
    (domain,) = source.domains()
    assert domain.modality_names == ("rgb", "depth")
    cut = next(s for s in test if s.label)
    assert cut.modalities["depth"].shape == (12, 16, 3) and cut.mask.sum() == 15  # class id 254 -> defect
    batch = collate([MultiDomainDataset([source], "test", 16)[i] for i in range(2)])
    depth = batch["images"][:, 1]
    assert torch_isfinite(depth) and batch["modality_count"].tolist() == [2, 2]


def torch_isfinite(tensor) -> bool:
    return bool(tensor.isfinite().all())


def test_mvtec3d_without_xyz_is_rgb_only(tmp_path: Path) -> None:
    png(tmp_path / "tire/train/good/rgb/000.png", rgb())
    png(tmp_path / "tire/test/good/rgb/000.png", rgb())
    (source,) = parse_data_spec(f"mvtec3d:{tmp_path}")
    assert source.domains()[0].modality_names == ("rgb",)


def test_eyecandies_labels_from_masks(tmp_path: Path) -> None:
    data = tmp_path / "CandyCane/train/data"
    png(data / "000_image_5.png", rgb())
    png(data / "000_image_0.png", rgb(10))
    test = tmp_path / "CandyCane/test_public/data"
    png(test / "000_image_5.png", rgb())
    png(test / "000_mask.png", np.zeros((12, 16), np.uint8))
    png(test / "001_image_5.png", rgb(90))
    png(test / "001_mask.png", mask())
    source, samples = load_all(f"eyecandies:{tmp_path}", "test")
    (domain,) = source.domains()
    assert domain.name == "eyecandies/CandyCane" and domain.loss_weight == 0.5
    assert [s.label for s in samples] == [0, 1] and samples[1].mask.sum() == 15
    assert len(source.refs("train", domain.name)) == 1


def test_mulsen_raw_uses_infrared(tmp_path: Path) -> None:
    gray = np.full((12, 16), 80, np.uint8)
    png(tmp_path / "capsule/Infrared/train/good/0.png", gray)
    png(tmp_path / "capsule/Infrared/test/good/0.png", gray)
    png(tmp_path / "capsule/Infrared/test/crack/0.png", gray)
    png(tmp_path / "capsule/Infrared/GT/crack/0.png", mask())
    png(tmp_path / "capsule/RGB/train/good/0.png", rgb())
    source, samples = load_all(f"mulsen:{tmp_path}", "test")
    assert source.domains()[0].modality_names == ("infrared",)
    assert [(s.label, s.mask is not None) for s in samples] == [(1, True), (0, False)]


def test_brats_groups_four_sequences_per_slice(tmp_path: Path) -> None:
    gray = np.full((12, 16), 60, np.uint8)
    for name in ("flair", "t1", "t1ce", "t2"):
        png(tmp_path / f"train/good/img/00001_{name}.png", gray)
        png(tmp_path / f"test/good/img/00002_{name}.png", gray)
        png(tmp_path / f"test/Ungood/img/00003_{name}.png", gray + 50)
    png(tmp_path / "test/Ungood/label/00003.png", mask(1))
    source, samples = load_all(f"brats:{tmp_path}", "test")
    (domain,) = source.domains()
    assert domain.name == "brats/brain" and domain.loss_weight == 10
    assert [s.label for s in samples] == [0, 1] and samples[1].mask.sum() == 15
    assert list(samples[1].modalities) == ["flair", "t1", "t1ce", "t2"]
    (tmp_path / "test/good/img/00002_t2.png").unlink()
    with pytest.raises(ValueError, match="00002 lacks t2"):
        source.refs("test", domain.name)


def test_bmad_sets_detect_kind_and_weight(tmp_path: Path) -> None:
    png(tmp_path / "Liver/train/good/img/a.png", np.full((12, 16), 70, np.uint8))
    png(tmp_path / "Liver/test/Ungood/img/b.png", np.full((12, 16), 70, np.uint8))
    png(tmp_path / "Liver/test/Ungood/label/b.png", mask())
    png(tmp_path / "Liver/test/good/img/c.png", np.full((12, 16), 70, np.uint8))
    png(tmp_path / "Colon/train/good/a.png", rgb())  # folders without the img level
    source, samples = load_all(f"bmad:{tmp_path}", "test")
    domains = {d.name: d for d in source.domains()}
    assert domains["bmad/liver"].modalities[0].kind == "gray" and domains["bmad/liver"].loss_weight == 10
    assert domains["bmad/colon"].modalities[0].kind == "rgb" and domains["bmad/colon"].loss_weight == 1
    assert sorted((s.label, s.mask is not None) for s in samples) == [(0, False), (1, True)]


def test_unknown_category_and_missing_root(tmp_path: Path) -> None:
    png(tmp_path / "bottle/train/good/000.png", rgb())
    with pytest.raises(ValueError, match="unknown category cable"):
        parse_data_spec(f"mvtec:{tmp_path}@cable")
    with pytest.raises(ValueError, match="no category folders"):
        parse_data_spec(f"mvtec:{tmp_path / 'bottle'}")
