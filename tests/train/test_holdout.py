"""split_holdout: deterministic by id, independent of order, per domain, never empties a domain."""

from __future__ import annotations

import random

import pytest

from model.data.holdout import split_holdout
from model.data.sample import SampleRef


def refs(domain: str, count: int) -> list[SampleRef]:
    return [SampleRef(domain, f"{domain}/{index:03d}", 0, index) for index in range(count)]


def ids(samples: list[SampleRef]) -> set[str]:
    return {sample.id for sample in samples}


def test_same_split_whatever_the_order() -> None:
    samples = refs("a/x", 40) + refs("b/y", 7)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    train, holdout = split_holdout(samples, 0.2, seed=1)
    train_shuffled, holdout_shuffled = split_holdout(shuffled, 0.2, seed=1)
    assert ids(holdout) == ids(holdout_shuffled) and ids(train) == ids(train_shuffled)
    assert [s.id for s in train] == [s.id for s in samples if s.id in ids(train)]  # input order kept


def test_counts_per_domain_and_seed_changes_choice() -> None:
    samples = refs("a/x", 40) + refs("b/y", 7) + refs("c/z", 1)
    train, holdout = split_holdout(samples, 0.1, seed=0, minimum=0)
    per_domain = {d: sum(s.domain == d for s in holdout) for d in ("a/x", "b/y", "c/z")}
    assert per_domain == {"a/x": 4, "b/y": 1, "c/z": 0}  # ceil(0.1 n), at least 1, never a whole domain
    assert ids(train) | ids(holdout) == ids(samples) and not ids(train) & ids(holdout)
    _, other = split_holdout(samples, 0.1, seed=1)
    assert ids(other) != ids(holdout)


def test_floor_holds_out_enough_normals_for_a_quantile_but_caps_small_domains() -> None:
    samples = refs("big/x", 400) + refs("mid/y", 90) + refs("small/z", 12)
    _, holdout = split_holdout(samples, 0.1, seed=0, minimum=20)
    per_domain = {d: sum(s.domain == d for s in holdout) for d in ("big/x", "mid/y", "small/z")}
    # 10 % of 400 is above the floor; 10 % of 90 is raised to 20; 12 samples give up at most a quarter.
    assert per_domain == {"big/x": 40, "mid/y": 20, "small/z": 3}


def test_adding_a_sample_keeps_the_others_in_place() -> None:
    base = refs("a/x", 50)
    _, holdout = split_holdout(base, 0.1)
    _, grown = split_holdout(base + [SampleRef("a/x", "a/x/new", 0)], 0.1)
    assert len(ids(holdout) ^ ids(grown)) <= 2


def test_zero_fraction_and_bad_input() -> None:
    samples = refs("a/x", 5)
    assert split_holdout(samples, 0.0) == (samples, [])
    with pytest.raises(ValueError, match="within"):
        split_holdout(samples, 1.0)
    with pytest.raises(ValueError, match="repeats"):
        split_holdout(samples + samples[:1], 0.2)
