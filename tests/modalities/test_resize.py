"""The numpy bilinear resize equals torch's interpolate(mode="bilinear", align_corners=False)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalities.resize import resize_bilinear


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [
        ((32, 32), (8, 8)),
        ((600, 800), (256, 256)),
        ((7, 5), (16, 16)),
        ((13, 29), (13, 29)),
        ((1, 9), (4, 3)),
    ],
    ids=["downscale-4x", "mvtec3d-to-256", "upscale", "identity", "single-row"],
)
def test_matches_torch_interpolate(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
    image = np.random.default_rng(3).random(in_shape, dtype=np.float32)
    reference = F.interpolate(
        torch.from_numpy(image)[None, None],
        size=out_shape,
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[0, 0].numpy()
    out = resize_bilinear(image, *out_shape)
    assert out.shape == out_shape
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)


def test_identity_size_is_exact() -> None:
    image = np.random.default_rng(4).standard_normal((6, 9))
    np.testing.assert_array_equal(resize_bilinear(image, 6, 9), image)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2-D"):
        resize_bilinear(np.zeros((2, 2, 3)), 4, 4)
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(np.zeros((2, 2)), 0, 4)
