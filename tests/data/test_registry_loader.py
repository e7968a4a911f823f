"""Data specs, the class-balanced sampler and the collate."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from model.data import SyntheticConfig, parse_data_spec
from model.data.loader import DomainBalancedSampler, MultiDomainDataset, balanced_weights, collate

TINY = SyntheticConfig(size=32, train_per_domain=3, test_normal_per_domain=1, test_defective_per_domain=2)


def test_synthetic_specs_and_seeds() -> None:
    (default,) = parse_data_spec("synthetic", synthetic=TINY)
    (seeded,) = parse_data_spec("synthetic:7", synthetic=TINY)
    assert default.config.seed == 0 and seeded.config.seed == 7 and seeded.config.size == 32
    assert [d.name for d in default.domains()][:2] == ["synthetic/tiles", "synthetic/parts"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty entry"),
        ("synthetic,,synthetic", "empty entry"),
        ("synthetic:abc", "seed must be a non-negative integer"),
        ("pictures:/tmp", "unknown source 'pictures'"),
        ("shared:nothing", "unknown shared set 'nothing'"),
        ("mvtec3d", "give the dataset root"),
        ("mvtec3d:/definitely/not/here", "not a directory"),
        ("synthetic,synthetic:3", "appears in both"),
    ],
)
def test_bad_specs_raise_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_data_spec(spec, synthetic=TINY)
    assert "\n" not in str(raised.value)


def test_shared_root_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNIMMAD_SHARED_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=str(tmp_path / "magnetic_tile")):
        parse_data_spec("shared:magnetic_tile")


def test_dataset_items_and_collate_layout() -> None:
    sources = parse_data_spec("synthetic", synthetic=TINY)
    dataset = MultiDomainDataset(sources, "test", size=32)
    assert len(dataset) == 4 * 3
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["images"].shape == (12, 4, 3, 32, 32) and batch["images"].dtype == torch.float32
    counts = dict(zip(batch["domains"], batch["modality_count"].tolist(), strict=True))
    assert counts == {"synthetic/tiles": 1, "synthetic/parts": 2, "synthetic/boards": 3, "synthetic/brain": 4}
    for row, count in enumerate(batch["modality_count"].tolist()):
        assert batch["images"][row, count:].abs().sum() == 0, "slots after the domain's modalities are zero"
        assert batch["images"][row, :count].abs().sum(dim=(1, 2, 3)).min() > 0
    assert batch["masks"].dtype == torch.bool and batch["masks"].shape == (12, 32, 32)
    assert torch.equal(batch["labels"] == 1, batch["masks"].flatten(1).any(1))
    assert batch["loss_weight"].dtype == torch.float32 and torch.all(batch["loss_weight"] == 1)


def test_domain_filter_and_unknown_domain() -> None:
    sources = parse_data_spec("synthetic", synthetic=TINY)
    dataset = MultiDomainDataset(sources, "train", 32, domains=["synthetic/brain"])
    assert {item.ref.domain for item in dataset.items} == {"synthetic/brain"}
    with pytest.raises(ValueError, match="unknown domain"):
        MultiDomainDataset(sources, "train", 32, domains=["synthetic/moon"])


def test_sampler_makes_domains_equally_likely_whatever_their_size() -> None:
    big = SyntheticConfig(size=32, train_per_domain=40)
    sources = parse_data_spec("synthetic", synthetic=big)
    dataset = MultiDomainDataset(sources, "train", 32)
    # Shrink one domain to a tenth: it must still be drawn a quarter of the time.
    dataset.items = [i for i in dataset.items if i.ref.domain != "synthetic/tiles" or i.ref.index < 4]
    weights = balanced_weights(dataset)
    assert weights[0].item() == pytest.approx(1 / 4) and weights[-1].item() == pytest.approx(1 / 40)
    sampler = DomainBalancedSampler(dataset, num_samples=8000, seed=3)
    drawn = collections.Counter(dataset.items[i].ref.domain for i in sampler)
    assert all(abs(count / 8000 - 0.25) < 0.03 for count in drawn.values())
    assert list(sampler) == list(sampler), "the same epoch draws the same indices"
    sampler.set_epoch(1)
    assert len(sampler) == 8000


def test_dataloader_runs_with_the_sampler() -> None:
    dataset = MultiDomainDataset(parse_data_spec("synthetic", synthetic=TINY), "train", 32)
    loader = DataLoader(
        dataset, batch_size=5, sampler=DomainBalancedSampler(dataset, seed=0), collate_fn=collate
    )
    batch = next(iter(loader))
    assert batch["images"].shape == (5, 4, 3, 32, 32) and len(batch["ids"]) == 5
