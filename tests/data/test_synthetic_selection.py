"""`synthetic@NAME+NAME` keeps the named embedded domains (the continual-learning runs leave one out)."""

from __future__ import annotations

import pytest

from model.data import SyntheticConfig, parse_data_spec

TINY = SyntheticConfig(size=16, train_per_domain=2, test_normal_per_domain=1, test_defective_per_domain=1)


def test_selection_keeps_the_named_domains_and_their_samples() -> None:
    (everything,) = parse_data_spec("synthetic", synthetic=TINY)
    (kept,) = parse_data_spec("synthetic:0@tiles+boards", synthetic=TINY)
    assert [d.name for d in kept.domains()] == ["synthetic/tiles", "synthetic/boards"]
    ref = kept.refs("train", "synthetic/boards")[0]
    assert (kept.load(ref).modalities["rgb"] == everything.load(ref).modalities["rgb"]).all()


def test_unknown_synthetic_domain_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown synthetic domain.*moon.*known: tiles"):
        parse_data_spec("synthetic@tiles+moon", synthetic=TINY)
