"""Fixtures of the training tests: a tiny UniMMAD config (32 px, random trunks) and tiny synthetic data."""

from __future__ import annotations

import pytest

from model.config import PRESETS, UniMMADConfig
from model.data import SyntheticConfig

TINY_SIZE = 32


@pytest.fixture(scope="session")
def tiny_config() -> UniMMADConfig:
    return PRESETS["lite"].replace(
        preset="tiny",
        image_size=TINY_SIZE,
        prior_weights=None,
        encoder_weights=None,
        stem_widths=(4, 8),
        fcm_width=16,
        fcm_branch_width=5,
        code_channels=32,
        decoder_planes=(8, 4, 2),
        decoder_blocks=(1, 1, 1),
        moe_width=8,
        base_experts=3,
        leaders=6,
        batch_size=4,
        epochs=2,
    )


@pytest.fixture(scope="session")
def tiny_synthetic() -> SyntheticConfig:
    """Six training and 3 + 3 test samples per synthetic domain, generated at 32 px."""
    return SyntheticConfig(
        size=TINY_SIZE, train_per_domain=6, test_normal_per_domain=3, test_defective_per_domain=3
    )
