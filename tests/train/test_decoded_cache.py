"""The decoded cache gives training exactly the batches the decoding Dataset + collate give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalities import ModalitySpec
from model.config import TF_LITE_MEAN, TF_LITE_STD
from model.data import Domain, Sample, SampleRef, Source, SyntheticConfig, parse_data_spec
from model.data.loader import DecodedCache, MultiDomainDataset, code_table, collate, encode_plane

SIZE = 32


def assert_same_batch(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, expected in want.items():
        if isinstance(expected, torch.Tensor):
            assert got[key].dtype == expected.dtype, key
            assert torch.equal(got[key], expected), key
        else:
            assert got[key] == expected, key


@pytest.mark.parametrize(
    ("mean", "std"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), (TF_LITE_MEAN, TF_LITE_STD)]
)
def test_cached_batches_equal_the_decoding_path_bit_for_bit(mean, std) -> None:
    """All four synthetic domains (rgb, gray, float depth; 1 to 4 modalities), train and test (masks)."""
    sizes = SyntheticConfig(
        size=SIZE, train_per_domain=3, test_normal_per_domain=1, test_defective_per_domain=2
    )
    sources = parse_data_spec("synthetic", synthetic=sizes)
    for split in ("train", "test"):
        dataset = MultiDomainDataset(sources, split, SIZE, mean=mean, std=std)
        cache = DecodedCache(dataset)
        assert len(cache) == len(dataset)
        assert cache.codes.shape[0] > 1 and cache.floats.shape[0] > 1  # 8-bit planes as codes, depth as float
        order = [5, 0, len(dataset) - 1, 5, 2]  # repeats and any order
        assert_same_batch(cache.collate(order), collate([dataset[i] for i in order]))


class MixedDepthSource(Source):
    """One domain whose rgb is 16-bit (not an 8-bit lookup) and whose gray is 8-bit."""

    def __init__(self) -> None:
        super().__init__("mixed")
        self.domain_ = Domain("mixed/part", (ModalitySpec("rgb", "rgb"), ModalitySpec("ir", "gray")))

    def domains(self) -> tuple[Domain, ...]:
        return (self.domain_,)

    def refs(self, split, domain: str) -> list[SampleRef]:
        return [SampleRef(domain, f"s{index}", 0, index) for index in range(2)]

    def load(self, ref: SampleRef) -> Sample:
        rng = np.random.default_rng(ref.index)
        arrays = {
            "rgb": rng.integers(0, 65536, (40, 48, 3), dtype=np.uint16),
            "ir": rng.integers(0, 256, (40, 48), dtype=np.uint8),
        }
        return Sample(ref.domain, arrays, list(self.domain_.modalities), None, ref.label, ref.id)


def test_planes_that_are_not_8_bit_lookups_are_kept_as_float_and_still_exact() -> None:
    dataset = MultiDomainDataset([MixedDepthSource()], "train", SIZE)
    cache = DecodedCache(dataset)
    assert_same_batch(cache.collate([1, 0]), collate([dataset[1], dataset[0]]))
    # 2 samples: rgb as three float planes each; gray as one shared code plane each (+ the zero rows)
    assert cache.floats.shape[0] == 1 + 2 * 3 and cache.codes.shape[0] == 1 + 2


def test_encode_plane_accepts_only_exact_lookups() -> None:
    table = code_table((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(encode_plane(table[1][codes], table[1]), codes)
    nudged = table[1][codes].copy()
    nudged[3, 4] = np.nextafter(nudged[3, 4], np.float32(10))
    assert encode_plane(nudged, table[1]) is None
