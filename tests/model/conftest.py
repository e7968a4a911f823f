"""Shared fixtures of the model tests: a tiny UniMMAD config (64 px, narrow widths) and model."""

from __future__ import annotations

import pytest
import torch

from model.config import PRESETS, UniMMADConfig
from model.unimmad import UniMMAD

TINY_SIZE = 64


@pytest.fixture(scope="session")
def tiny_config() -> UniMMADConfig:
    """Lite trunks (random init), every width shrunk; the C-MoE keeps the paper's structure at E=8."""
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
        decoder_blocks=(2, 1, 1),
        moe_width=8,
        base_experts=3,
        leaders=6,
    )


@pytest.fixture
def tiny_model(tiny_config: UniMMADConfig) -> UniMMAD:
    torch.manual_seed(0)
    return UniMMAD(tiny_config, allow_random_prior=True)
