"""prepare / prepare_mask / stack_sample: the per-kind recipes of docs/DESIGN.md and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modalities import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModalityError,
    ModalitySpec,
    prepare,
    prepare_mask,
    stack_sample,
)

RGB = ModalitySpec("rgb", "rgb")
GRAY = ModalitySpec("infrared", "gray")
DEPTH = ModalitySpec("depth", "depth")
MEAN = np.array(IMAGENET_MEAN)[:, None, None]
STD = np.array(IMAGENET_STD)[:, None, None]
RNG = np.random.default_rng(42)
RGB8 = RNG.integers(0, 256, (20, 16, 3), dtype=np.uint8)


def normalised(unit: np.ndarray) -> np.ndarray:
    """ImageNet normalisation of a ``(3, H, W)`` image in [0, 1]."""
    return (unit - MEAN) / STD


def assert_error(code: str, call, *args, **kwargs) -> ModalityError:
    with pytest.raises(ModalityError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


# --- rgb and gray -------------------------------------------------------------------------------


def test_rgb_at_native_size_is_exactly_scaled_and_normalised() -> None:
    out = prepare(RGB8[:16], RGB, 16)
    assert out.dtype == np.float32 and out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, normalised(RGB8[:16].transpose(2, 0, 1) / 255.0), atol=1e-6)


def test_rgb_resize_is_pil_bilinear() -> None:
    # torchvision's Resize on a PIL image is exactly this call; training used it (spec 1.3).
    expected = np.asarray(Image.fromarray(RGB8).resize((8, 8), Image.Resampling.BILINEAR)) / 255.0
    np.testing.assert_allclose(prepare(RGB8, RGB, 8), normalised(expected.transpose(2, 0, 1)), atol=1e-6)


def test_constant_colour_maps_to_its_normalised_value_at_any_size() -> None:
    constant = np.broadcast_to(np.array([255, 128, 0], np.uint8), (31, 17, 3)).copy()
    out = prepare(constant, RGB, 12)
    expected = normalised(np.array([1.0, 128 / 255, 0.0])[:, None, None])
    np.testing.assert_allclose(out, np.broadcast_to(expected, (3, 12, 12)), atol=1e-6)


def test_rgb_replicates_gray_and_drops_alpha() -> None:
    gray = RGB8[:, :, 0]
    np.testing.assert_array_equal(prepare(gray, RGB, 8), prepare(np.dstack([gray] * 3), RGB, 8))
    rgba = np.dstack([RGB8, RNG.integers(0, 256, RGB8.shape[:2], dtype=np.uint8)])
    np.testing.assert_array_equal(prepare(rgba, RGB, 8), prepare(RGB8, RGB, 8))


def test_16_bit_and_float_rgb_scale_to_the_same_input_as_8_bit() -> None:
    as_16_bit = RGB8.astype(np.uint16) * 257  # 255 -> 65535
    as_float = RGB8.astype(np.float32) / 255.0
    native = prepare(RGB8[:16], RGB, 16)
    np.testing.assert_allclose(prepare(as_16_bit[:16], RGB, 16), native, atol=1e-5)
    np.testing.assert_allclose(prepare(as_float[:16], RGB, 16), native, atol=1e-5)
    # Resized, 8-bit PIL rounds to whole levels after each of its two passes; float keeps fractions.
    one_level = 1.0 / 255 / min(IMAGENET_STD)
    np.testing.assert_allclose(prepare(as_16_bit, RGB, 7), prepare(RGB8, RGB, 7), atol=one_level)


def test_gray_kind_uses_luminance_then_replicates() -> None:
    colour = np.broadcast_to(np.array([200, 100, 50], np.uint8), (10, 10, 3)).copy()
    luminance = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114) / 255.0
    out = prepare(colour, GRAY, 5)
    np.testing.assert_allclose(
        out, np.broadcast_to(normalised(np.full((3, 1, 1), luminance)), (3, 5, 5)), atol=1e-6
    )
    colour_16 = colour.astype(np.uint16) * 257
    np.testing.assert_allclose(prepare(colour_16, GRAY, 5), out, atol=0.5 / 255 / min(IMAGENET_STD))


def test_gray_image_gives_the_same_input_under_both_image_kinds() -> None:
    gray = RGB8[:, :, 1]
    np.testing.assert_array_equal(prepare(gray, GRAY, 9), prepare(gray, RGB, 9))


def test_custom_normalisation_constants_are_applied() -> None:
    out = prepare(np.full((4, 4), 255, np.uint8), RGB, 4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    np.testing.assert_allclose(out[:, 0, 0], [2.0, 1.0, 0.5], atol=1e-6)


def test_float_images_outside_unit_range_are_rejected() -> None:
    error = assert_error("bad_value_range", prepare, RGB8.astype(np.float32), RGB, 8)
    assert "'rgb'" in error.message and "uint8" in error.message
    assert_error("bad_value_range", prepare, np.full((4, 4), -0.1, np.float32), GRAY, 8)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_image_values_are_rejected(bad_value: float) -> None:
    image = np.zeros((4, 4, 3), np.float32)
    image[1, 2, 0] = bad_value
    assert_error("non_finite_values", prepare, image, RGB, 8)
    assert_error("non_finite_values", prepare, image[:, :, 0], GRAY, 8)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.int8])
def test_integer_images_other_than_8_or_16_bit_are_rejected(dtype: type) -> None:
    assert_error("bad_array_dtype", prepare, np.zeros((4, 4), dtype), RGB, 8)


@pytest.mark.parametrize(
    ("array", "code"),
    [
        (np.zeros((4, 4, 2), np.uint8), "bad_channel_count"),
        (np.zeros((4,), np.uint8), "bad_array_rank"),
        (np.zeros((4, 4), bool), "bad_array_dtype"),
        (np.zeros((4, 4), np.complex64), "bad_array_dtype"),
        (np.zeros((0, 4), np.uint8), "empty_array"),
        ([[0, 1], [1, 0]], "bad_array_dtype"),
    ],
    ids=["two-channels", "rank-1", "bool", "complex", "empty", "list"],
)
def test_arrays_outside_the_contract_are_rejected(array: object, code: str) -> None:
    assert_error(code, prepare, array, RGB, 8)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "256"])
def test_bad_output_size(size: object) -> None:
    assert_error("bad_size", prepare, RGB8, RGB, size)


def test_bad_normalisation_constants() -> None:
    assert_error("bad_normalisation", prepare, RGB8, RGB, 8, mean=(0.5, 0.5))
    assert_error("bad_normalisation", prepare, RGB8, RGB, 8, std=(0.2, 0.0, 0.2))


# --- depth --------------------------------------------------------------------------------------


def test_depth_hand_computed_case() -> None:
    # Foreground {1, 2, 3}: mean 2. Background (0) takes the mean, so after centring it is exactly 0.
    depth = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    out = prepare(depth, DEPTH, 2)
    expected = np.array([[0.0, -100.0], [0.0, 100.0]])
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    for channel in out:
        np.testing.assert_array_equal(channel, expected)


def test_depth_scale_is_applied() -> None:
    depth = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    out = prepare(depth, ModalitySpec("depth", "depth", depth_scale=2.5), 2)
    np.testing.assert_allclose(out[0], [[0.0, -2.5], [0.0, 2.5]])


def test_xyz_uses_z_and_non_finite_points_are_background() -> None:
    z = np.array([[0.0, 1.0, np.nan], [2.0, 3.0, np.inf], [0.0, 0.0, -np.inf]], np.float32)
    xyz = np.dstack([np.full_like(z, 7.0), np.full_like(z, -9.0), z])  # x and y must be ignored
    expected = np.array([[0.0, -100.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 0.0]])
    out = prepare(xyz, DEPTH, 3)
    for channel in out:
        np.testing.assert_array_equal(channel, expected)
    assert np.isfinite(prepare(xyz, DEPTH, 7)).all()


@pytest.mark.parametrize(
    "depth",
    [np.full((6, 5), 3.25, np.float32), np.zeros((6, 5), np.float32), np.full((6, 5), np.nan, np.float32)],
    ids=["constant", "all-background", "all-nan"],
)
def test_depth_without_relief_gives_zeros_not_nan(depth: np.ndarray) -> None:
    np.testing.assert_array_equal(prepare(depth, DEPTH, 4), np.zeros((3, 4, 4), np.float32))


def test_integer_depth_is_a_fraction_of_full_scale() -> None:
    as_float = RNG.random((9, 7)).astype(np.float32)
    as_16_bit = np.round(as_float * 65535).astype(np.uint16)
    np.testing.assert_allclose(
        prepare(as_16_bit, DEPTH, 5), prepare(as_16_bit.astype(np.float64) / 65535, DEPTH, 5), atol=1e-4
    )
    as_8_bit = np.array([[0, 51], [102, 153]], np.uint8)  # 0.2, 0.4, 0.6 of full scale
    np.testing.assert_allclose(prepare(as_8_bit, DEPTH, 2)[0], [[0.0, -20.0], [0.0, 20.0]], atol=1e-4)


def test_depth_resize_matches_torch_interpolate() -> None:
    depth = RNG.random((37, 23)).astype(np.float32) + 0.5
    depth[:5] = 0.0  # some background
    foreground = depth > 0
    centred = np.where(foreground, depth - depth[foreground].astype(np.float64).mean(), 0.0) * 100.0
    for size in (8, 16, 64):
        reference = F.interpolate(
            torch.from_numpy(centred.astype(np.float32))[None, None],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        out = prepare(depth, DEPTH, size)
        for channel in out:
            np.testing.assert_allclose(channel, reference, rtol=1e-5, atol=1e-4)


def test_depth_rejects_four_channels_and_wide_integers() -> None:
    assert_error("bad_channel_count", prepare, np.ones((4, 4, 4), np.float32), DEPTH, 4)
    assert_error("bad_array_dtype", prepare, np.ones((4, 4), np.int32), DEPTH, 4)


# --- determinism and purity ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", [RGB, GRAY, DEPTH], ids=lambda spec: spec.kind)
def test_prepare_is_deterministic_and_leaves_input_untouched(spec: ModalitySpec) -> None:
    image = RNG.random((13, 11, 3)).astype(np.float32)
    before = image.copy()
    first, second = prepare(image, spec, 10), prepare(image, spec, 10)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(image, before)
    assert first.flags.writeable and first.flags.c_contiguous


# --- masks --------------------------------------------------------------------------------------


def test_mask_at_native_size_is_binarised() -> None:
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 1:3] = 255
    out = prepare_mask(mask, 6)
    assert out.dtype == np.bool_ and out.shape == (6, 6)
    np.testing.assert_array_equal(out, mask > 0)


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[0, 255], [0, 0]], np.uint8),
        np.array([[False, True], [False, False]]),
        np.array([[0, 253], [0, 0]], np.uint8),
        np.array([[0.0, 1.0], [0.0, 0.0]], np.float32),
        np.dstack([np.array([[0, 7], [0, 0]], np.uint8)] + [np.full((2, 2), 9, np.uint8)] * 2),
    ],
    ids=["0-255", "bool", "class-id", "float", "first-channel"],
)
def test_mask_encodings_agree(mask: np.ndarray) -> None:
    expected = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(prepare_mask(mask, 4), expected)


def test_mask_resize_dilates_like_bilinear_then_threshold() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[5, 9] = 255
    reference = F.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None],
        size=(7, 7),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    np.testing.assert_array_equal(prepare_mask(mask, 7), reference > 0)
    assert not prepare_mask(np.zeros((16, 16), np.uint8), 7).any()


def test_mask_errors() -> None:
    assert_error("non_finite_values", prepare_mask, np.full((3, 3), np.nan), 4)
    assert_error("bad_array_rank", prepare_mask, np.zeros(9), 4)
    assert_error("bad_array_dtype", prepare_mask, np.zeros((3, 3), np.complex64), 4)
    assert_error("bad_size", prepare_mask, np.zeros((3, 3)), 0)


# --- samples ------------------------------------------------------------------------------------


def test_stack_sample_follows_spec_order() -> None:
    arrays = {"depth": RNG.random((9, 9)).astype(np.float32), "rgb": RGB8}
    stacked = stack_sample(arrays, [RGB, DEPTH], 8)
    assert stacked.shape == (2, 3, 8, 8) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[0], prepare(RGB8, RGB, 8))
    np.testing.assert_array_equal(stacked[1], prepare(arrays["depth"], DEPTH, 8))


def test_stack_sample_names_missing_and_unexpected_modalities() -> None:
    missing = assert_error("missing_modality", stack_sample, {"rgb": RGB8}, [RGB, DEPTH], 8)
    assert "depth" in missing.message
    extra = assert_error("unexpected_modality", stack_sample, {"rgb": RGB8, "thermal": RGB8}, [RGB], 8)
    assert "thermal" in extra.message
    assert_error("invalid_spec", stack_sample, {"rgb": RGB8}, [RGB, RGB], 8)
    assert_error("invalid_spec", stack_sample, {}, [], 8)


def test_stack_sample_errors_name_the_modality() -> None:
    error = assert_error("non_finite_values", stack_sample, {"infrared": np.full((4, 4), np.nan)}, [GRAY], 8)
    assert "'infrared'" in error.message
