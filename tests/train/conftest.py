"""Fixtures of the training tests: the tiny UniMMAD config of tests/conftest.py at 32 px, and tiny synthetic data."""

from __future__ import annotations

import pytest

from model.config import UniMMADConfig
from model.data import SyntheticConfig

TINY_SIZE = 32


@pytest.fixture(scope="session")
def tiny_config(tiny_config: UniMMADConfig) -> UniMMADConfig:
    """The shared tiny config at 32 px with batches of 4 and two epochs, so whole training runs take seconds."""
    return tiny_config.replace(image_size=TINY_SIZE, batch_size=4, epochs=2)


@pytest.fixture(scope="session")
def tiny_synthetic() -> SyntheticConfig:
    """Six training and 3 + 3 test samples per synthetic domain, generated at 32 px."""
    return SyntheticConfig(
        size=TINY_SIZE, train_per_domain=6, test_normal_per_domain=3, test_defective_per_domain=3
    )
