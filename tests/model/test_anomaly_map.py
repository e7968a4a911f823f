"""Anomaly maps (spec 8.2): cosine distance, fusions, Gaussian blur with zero padding, top-fraction score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.anomaly_map import anomaly_maps, gaussian_blur, gaussian_kernel1d, top_pixels_mean
from model.config import PRESETS, UniMMADConfig
from model.unimmad import UniMMADOutput

SIZE = 64
CHANNELS = 4
LEVEL_SIDES = (16, 8, 4)


def pair_features(distances: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior/prediction pairs whose cosine distance is `distances` [N] everywhere ([N, C, side, side])."""
    angle = torch.acos(1 - distances)
    prior = torch.zeros(len(distances), CHANNELS, side, side)
    prior[:, 0] = 1
    prediction = torch.zeros_like(prior)
    prediction[:, 0] = torch.cos(angle)[:, None, None]
    prediction[:, 1] = torch.sin(angle)[:, None, None]
    return prior, 3 * prediction  # predictions are not unit norm; only the direction counts


def synthetic_output(level_distances: list[list[float]], count: list[int], slots: int) -> UniMMADOutput:
    present = torch.arange(slots)[None] < torch.tensor(count)[:, None]
    pair_index = present.t().reshape(-1).nonzero().squeeze(1)
    priors, predictions = [], []
    for distances, side in zip(level_distances, LEVEL_SIDES):
        prior, prediction = pair_features(torch.tensor(distances), side)
        priors.append(prior)
        predictions.append(prediction)
    batch = len(count)
    zero = torch.zeros(())
    return UniMMADOutput(priors, predictions, pair_index % batch, pair_index // batch, present, [], zero)


@pytest.fixture
def config() -> UniMMADConfig:
    return PRESETS["paper"].replace(image_size=SIZE)


def test_gaussian_kernel_matches_kornia_definition() -> None:
    taps = gaussian_kernel1d(15, 4.0)
    offsets = torch.arange(15) - 7
    expected = torch.exp(-(offsets.float() ** 2) / 32)
    torch.testing.assert_close(taps, expected / expected.sum())
    assert taps.sum().item() == pytest.approx(1.0)


def test_blur_equals_2d_conv_with_zero_padding_7() -> None:
    image = torch.rand(2, 3, 20, 20)
    taps = gaussian_kernel1d(15, 4.0)
    kernel = torch.outer(taps, taps)[None, None]
    expected = F.conv2d(image.reshape(6, 1, 20, 20), kernel, padding=7).reshape(2, 3, 20, 20)
    torch.testing.assert_close(gaussian_blur(image, 15, 4.0), expected)
    constant = gaussian_blur(torch.ones(1, 40, 40), 15, 4.0)
    assert constant[0, 20, 20].item() == pytest.approx(1.0, abs=1e-6)
    assert constant[0, 0, 0].item() < 0.5  # zero padding attenuates the border


def test_top_pixels_mean() -> None:
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :3] = torch.tensor([3.0, 2.0, 1.0])
    assert top_pixels_mean(maps, 2).tolist() == [2.5, 0.0]


def test_paper_top_pixels_is_65_of_256_squared() -> None:
    assert PRESETS["paper"].top_pixels == math.floor(256 * 256 / 1000) == 65


def test_code_fusion_is_root_sum_square_over_levels_and_modalities(config: UniMMADConfig) -> None:
    # one sample with two modalities; levels give distances (0.3, 0.4) (0.1, 0.2) (0.0, 0.5)
    output = synthetic_output([[0.3, 0.4], [0.1, 0.2], [0.0, 0.5]], count=[2], slots=2)
    maps = anomaly_maps(output, config)
    centre = SIZE // 2
    expected_fused = math.sqrt(0.3**2 + 0.4**2 + 0.1**2 + 0.2**2 + 0.5**2)
    assert maps.fused.shape == (1, SIZE, SIZE) and maps.per_modality.shape == (1, 2, SIZE, SIZE)
    assert maps.fused[0, centre, centre].item() == pytest.approx(expected_fused, rel=1e-4)
    assert maps.per_modality[0, 0, centre, centre].item() == pytest.approx(
        math.sqrt(0.3**2 + 0.1**2), rel=1e-4
    )
    assert maps.per_modality[0, 1, centre, centre].item() == pytest.approx(
        math.sqrt(0.4**2 + 0.2**2 + 0.5**2), rel=1e-4
    )
    assert maps.image_score[0].item() == pytest.approx(
        expected_fused, rel=1e-4
    )  # interior plateau is the top


def test_paper_fusion_is_the_level_mean_of_rss_over_modalities(config: UniMMADConfig) -> None:
    output = synthetic_output([[0.3, 0.4], [0.1, 0.2], [0.0, 0.5]], count=[2], slots=2)
    maps = anomaly_maps(output, config.replace(anomaly_fusion="paper"))
    centre = SIZE // 2
    expected = (0.5 + math.sqrt(0.05) + 0.5) / 3
    assert maps.fused[0, centre, centre].item() == pytest.approx(expected, rel=1e-4)
    assert maps.per_modality[0, 0, centre, centre].item() == pytest.approx((0.3 + 0.1 + 0.0) / 3, rel=1e-4)


def test_samples_are_fused_separately_and_absent_modalities_are_zero(config: UniMMADConfig) -> None:
    # pairs slot-major: (s0, m0), (s1, m0), (s1, m1); sample 0 is perfectly reconstructed
    output = synthetic_output([[0.0, 0.2, 0.6], [0.0, 0.2, 0.6], [0.0, 0.2, 0.6]], count=[1, 2], slots=2)
    maps = anomaly_maps(output, config)
    assert maps.fused[0].abs().max().item() == pytest.approx(0.0, abs=1e-6)
    assert maps.image_score[0].item() == pytest.approx(0.0, abs=1e-6)
    assert (maps.per_modality[0, 1] == 0).all() and maps.modality_scores[0, 1].item() == 0.0
    assert maps.modality_scores[1, 1].item() == pytest.approx(math.sqrt(3) * 0.6, rel=1e-4)
    assert maps.modality_scores[1, 0].item() < maps.modality_scores[1, 1].item()


def test_upsampling_uses_align_corners_true(config: UniMMADConfig) -> None:
    output = synthetic_output([[0.2], [0.0], [0.0]], count=[1], slots=1)
    # a single hot corner pixel at level 1: with align_corners=True it maps exactly onto the map's corner
    output.predictions[0][0, :, 0, 0] = output.priors[0][0, :, 0, 0] * -1
    unblurred = anomaly_maps(output, config.replace(blur_kernel=1))
    assert unblurred.fused[0, 0, 0].item() == pytest.approx(2.0, rel=1e-5)
