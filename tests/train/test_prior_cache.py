"""The prior cache returns exactly the features the model computes itself, in its pair order."""

from __future__ import annotations

import pytest
import torch

from model import prior_cache
from model.prior_cache import PriorCache
from model.unimmad import UniMMAD


@pytest.mark.parametrize("initial_rows", [64, 1])  # 1: the store grows while it fills
def test_cached_priors_equal_the_uncached_path(tiny_config, monkeypatch, initial_rows: int) -> None:
    monkeypatch.setattr(prior_cache, "INITIAL_ROWS", initial_rows)
    torch.manual_seed(0)
    model = UniMMAD(tiny_config, allow_random_prior=True).eval()
    size = tiny_config.image_size
    pool = torch.randn(5, 4, 3, size, size)
    counts = torch.tensor([1, 3, 2, 4, 2])
    cache = PriorCache(model)
    first = [0, 1, 2]
    cache.priors(pool[first], counts[first], first)  # fills samples 0-2
    assert (cache.hits, cache.misses, len(cache)) == (0, 6, 6)

    order = [3, 1, 4, 0]  # mixes cached and new samples, in another order and batch size
    cached = cache.priors(pool[order], counts[order], order)
    assert cache.hits == 4 and cache.misses == 6 + 6
    per_pair = sum(level[0].numel() * level.element_size() for level in cached)
    assert cache.nbytes() == len(cache) * per_pair
    with torch.no_grad():
        reference = model(pool[order], counts[order])
        from_cache = model(pool[order], counts[order], priors=cached)
    for got, want in zip(cached, reference.priors):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(from_cache.predictions, reference.predictions):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
