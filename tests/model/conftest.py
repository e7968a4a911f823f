"""Shared fixtures of the model tests: the tiny UniMMAD config of tests/conftest.py and a model of it."""

from __future__ import annotations

import pytest
import torch

from model.config import UniMMADConfig
from model.unimmad import UniMMAD


@pytest.fixture(scope="session")
def tiny_config(tiny_config: UniMMADConfig) -> UniMMADConfig:
    """The shared tiny config (64 px) with two blocks in the first decoder stage, so a stage repeats a block,
    and the uncalibrated fusion: these tests have no held-out normals to fit statistics on (calibrated
    fusion is tested in test_anomaly_map.py and through the exported bundle)."""
    return tiny_config.replace(decoder_blocks=(2, 1, 1), anomaly_fusion="code")


@pytest.fixture
def tiny_model(tiny_config: UniMMADConfig) -> UniMMAD:
    torch.manual_seed(0)
    return UniMMAD(tiny_config, allow_random_prior=True)
