"""Anomaly maps (spec 8.2): cosine distance, fusions (official, paper and calibrated by normal statistics),
Gaussian blur with zero padding, top-fraction score; fitting the normal statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.anomaly_map import (
    NormalStatistics,
    anomaly_maps,
    gaussian_blur,
    gaussian_kernel1d,
    top_pixels_mean,
)
from model.calibration import fit_normal_statistics
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


def statistics(location: list[list[float]], scale: list[list[float]]) -> NormalStatistics:
    """One domain's statistics [M, L] as the [1, M, L] a batch takes."""
    return NormalStatistics(torch.tensor(location), torch.tensor(scale)).as_batch()


def test_calibrated_fusion_standardises_each_level_and_fuses_modalities_late(config: UniMMADConfig) -> None:
    # one sample, two modalities; distances per level (m0, m1): (0.3, 0.4) (0.1, 0.2) (0.0, 0.5)
    output = synthetic_output([[0.3, 0.4], [0.1, 0.2], [0.0, 0.5]], count=[2], slots=2)
    normal = statistics([[0.2, 0.1, 0.0], [0.3, 0.3, 0.3]], [[0.1, 0.1, 0.5], [0.1, 0.2, 0.1]])
    z = [
        [(0.3 - 0.2) / 0.1, (0.1 - 0.1) / 0.1, 0.0],
        [(0.4 - 0.3) / 0.1, (0.2 - 0.3) / 0.2, (0.5 - 0.3) / 0.1],
    ]
    means = [sum(levels) / 3 for levels in z]  # [1/3, 2.5/3]
    centre = SIZE // 2
    for fusion, fused in (("calibrated_max", max(means)), ("calibrated_mean", sum(means) / 2)):
        maps = anomaly_maps(output, config.replace(anomaly_fusion=fusion), normal)
        assert maps.fused[0, centre, centre].item() == pytest.approx(fused, rel=1e-4)
        for slot, value in enumerate(means):
            assert maps.per_modality[0, slot, centre, centre].item() == pytest.approx(value, rel=1e-4)


def test_calibrated_fusion_finds_a_defect_one_quiet_sensor_sees(config: UniMMADConfig) -> None:
    """The loud modality (baseline 0.6, spread 0.2) hides a 5-sigma defect of the quiet one (0.1, 0.01) under
    root-sum-square; standardised by their normal statistics the defect stands out."""
    normal = statistics([[0.6] * 3, [0.1] * 3], [[0.2] * 3, [0.01] * 3])
    # Pairs are slot-major (s0, m0), (s1, m0), (s0, m1), (s1, m1). Sample 0: the quiet sensor 5 sigma up,
    # the loud one normal; sample 1: the loud sensor half a sigma up, the quiet one normal.
    output = synthetic_output([[0.6, 0.7, 0.15, 0.1]] * 3, count=[2, 2], slots=2)
    raw = anomaly_maps(output, config.replace(anomaly_fusion="code"))
    calibrated = anomaly_maps(output, config.replace(anomaly_fusion="calibrated_max"), normal)
    assert raw.image_score[0] < raw.image_score[1]
    assert calibrated.image_score[0] > calibrated.image_score[1]
    assert calibrated.modality_scores[0, 1] == pytest.approx(5.0, rel=1e-3)  # in units of normal spread


def test_calibrated_fusion_ignores_absent_modalities(config: UniMMADConfig) -> None:
    # sample 0 has one modality, sample 1 two; slot 1's statistics would make an absent slot look hot
    output = synthetic_output([[0.5, 0.5, 0.5]] * 3, count=[1, 2], slots=2)
    normal = statistics([[0.5] * 3, [-10.0] * 3], [[0.1] * 3, [1.0] * 3])
    for fusion in ("calibrated_max", "calibrated_mean"):
        maps = anomaly_maps(output, config.replace(anomaly_fusion=fusion), normal)
        assert (maps.per_modality[0, 1] == 0).all() and maps.modality_scores[0, 1].item() == 0.0
        assert maps.image_score[0].item() == pytest.approx(0.0, abs=1e-5)
        assert maps.image_score[1].item() > 1.0


def test_calibrated_fusion_needs_statistics(config: UniMMADConfig) -> None:
    output = synthetic_output([[0.2], [0.2], [0.2]], count=[1], slots=1)
    with pytest.raises(ValueError, match="needs the domain's normal statistics"):
        anomaly_maps(output, config.replace(anomaly_fusion="calibrated_max"))


def test_normal_statistics_are_the_mean_and_spread_of_every_normal_pixel() -> None:
    # Three images in batches of 2 and 1; per level the two slots' distances differ by image.
    per_image = [[[0.1, 0.5], [0.2, 0.6], [0.3, 0.7]], [[0.3, 0.5], [0.2, 0.6], [0.1, 0.9]], [[0.2, 0.5]] * 3]

    def model(images: torch.Tensor) -> UniMMADOutput:
        chosen = per_image[: images.shape[0]] if images[0, 0, 0, 0, 0] == 0 else per_image[2:]
        levels = [[image[level][slot] for slot in range(2) for image in chosen] for level in range(3)]
        return synthetic_output(levels, count=[2] * len(chosen), slots=2)

    batches = [torch.zeros(2, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4)]
    fitted = fit_normal_statistics(model, batches)
    values = torch.tensor(per_image)  # [image, level, slot], every pixel of a level equal
    torch.testing.assert_close(fitted.location, values.mean(0).T)
    torch.testing.assert_close(fitted.scale, values.std(0, unbiased=False).T.clamp(min=1e-6))
