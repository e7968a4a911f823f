"""UniMMADConfig: the paper preset holds the spec's numbers, round-trips through JSON, rejects bad input."""

from __future__ import annotations

import json

import pytest

from model.config import PRESETS, UniMMADConfig, group_norm_groups, preset


def test_paper_preset_has_the_spec_numbers() -> None:
    config = preset("paper")
    assert (config.image_size, config.max_modalities, config.stem) == (256, 4, "head")
    assert (config.prior_trunk, config.encoder_trunk) == ("wide_resnet50_2", "wide_resnet50_2")
    assert (config.fcm_width, config.fcm_branch_width, config.code_channels) == (512, 170, 2048)
    assert config.decoder_blocks == (3, 4, 6) and config.decoder_planes == (256, 128, 64)
    assert (config.moe_width, config.base_experts, config.leaders, config.top_k) == (256, 8, 32, 2)
    assert config.kernel_sizes == (1, 3, 5)
    assert (config.blur_kernel, config.blur_sigma, config.top_pixels) == (15, 4.0, 65)
    assert (config.focal_gamma, config.z_loss_weight) == (2.0, 1e-4)
    assert (config.balance_anneal_fraction, config.balance_floor, config.warmup_fraction) == (1.0, 0.001, 0.0)
    assert config.prediction_activation == "relu"
    assert (config.lr, config.epochs, config.batch_size, config.depth_scale) == (1e-3, 200, 10, 100.0)
    assert config.loss_reduction == "per_sample" and config.anomaly_fusion == "code"


def test_lite_preset_keeps_the_cmoe_structure_with_package_weights() -> None:
    lite = preset("lite")
    paper = preset("paper")
    assert (lite.base_experts, lite.leaders, lite.top_k, lite.kernel_sizes) == (
        paper.base_experts,
        paper.leaders,
        paper.top_k,
        paper.kernel_sizes,
    )
    assert lite.prior_weights == lite.encoder_weights == "package:efficientnet_lite0"
    assert lite.image_size == 128 and lite.moe_width < paper.moe_width


@pytest.mark.parametrize("name", list(PRESETS))
def test_dict_round_trip_through_json(name: str) -> None:
    config = PRESETS[name]
    assert UniMMADConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_keys_are_rejected() -> None:
    data = PRESETS["paper"].to_dict() | {"moe_widht": 3}
    with pytest.raises(ValueError, match="unknown config keys: moe_widht"):
        UniMMADConfig.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stem": "v2"}, "stem='v2' is not one of head, v1"),
        ({"anomaly_fusion": "max"}, "anomaly_fusion"),
        ({"loss_reduction": "mean"}, "loss_reduction"),
        ({"image_size": 100}, "multiple of 32"),
        ({"max_modalities": 5}, "max_modalities"),
        ({"top_k": 33}, "top_k"),
        ({"kernel_sizes": (1, 2)}, "odd"),
    ],
)
def test_invalid_values_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PRESETS["paper"].replace(**changes)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid presets: paper, lite"):
        preset("huge")


@pytest.mark.parametrize(
    ("channels", "groups"), [(256, 32), (170, 2), (42, 2), (24, 8), (40, 8), (112, 16), (7, 1)]
)
def test_group_norm_groups_is_the_largest_dividing_candidate(channels: int, groups: int) -> None:
    assert group_norm_groups(channels) == groups
