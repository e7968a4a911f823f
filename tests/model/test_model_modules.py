"""Stem and FCM: shapes at tiny widths, the shared-tensor layout, and the paper's parameter counts."""

from __future__ import annotations

import pytest
import torch

from model.fcm import FCM, AlignBlock, BottleneckK, Decoder, OutFuse
from model.stem import InputStem, shared_input


def test_head_shared_input_concatenates_slots_and_pads_to_12_channels() -> None:
    images = torch.arange(2 * 2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 2, 3, 4, 4)
    shared = shared_input(images, "head")
    assert shared.shape == (2, 12, 4, 4)
    torch.testing.assert_close(shared[:, 3:6], images[:, 1])
    assert (shared[:, 6:] == 0).all()


def test_v1_shared_input_is_one_channel_per_slot() -> None:
    images = torch.randn(2, 3, 3, 4, 4)
    shared = shared_input(images, "v1")
    assert shared.shape == (2, 4, 4, 4)
    torch.testing.assert_close(shared[:, 2], images[:, 2].mean(dim=1))
    assert (shared[:, 3] == 0).all()


@pytest.mark.parametrize(("variant", "channels", "params"), [("head", 12, 800_946), ("v1", 4, 393_381)])
def test_stem_output_and_paper_parameter_count(variant: str, channels: int, params: int) -> None:
    with torch.device("meta"):
        paper_stem = InputStem(256, variant)
    assert sum(p.numel() for p in paper_stem.parameters()) == params
    stem = InputStem(16, variant, widths=(4, 8))
    assert stem(torch.randn(2, channels, 16, 16)).shape == (2, 3, 16, 16)


def test_head_embedding_init_scale() -> None:
    torch.manual_seed(0)
    assert InputStem(64, "head").input_embedding.std().item() == pytest.approx(0.02, rel=0.05)
    assert InputStem(64, "v1").input_embedding.std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(("mode", "in_size", "out_size"), [("down", 16, 8), ("same", 8, 8), ("up", 4, 8)])
def test_align_block_lands_on_the_alignment_grid(mode: str, in_size: int, out_size: int) -> None:
    block = AlignBlock(6, 10, mode)
    assert block(torch.randn(2, 6, in_size, in_size)).shape == (2, 10, out_size, out_size)


def test_bottleneck_outfuse_decoder_shapes() -> None:
    aligned = [torch.randn(2, 12, 8, 8) for _ in range(3)]
    squeezed = BottleneckK(12, 4, 3)(aligned)
    assert squeezed.shape == (2, 12, 4, 4)
    code = OutFuse(36, 12, 32)(torch.cat([squeezed] * 3, dim=1))
    assert code.shape == (2, 32, 2, 2)
    levels = Decoder(32, (8, 4, 2), (2, 1, 1))(code)
    assert [tuple(level.shape) for level in levels] == [(2, 32, 4, 4), (2, 16, 8, 8), (2, 8, 16, 16)]


def test_fcm_maps_encoder_levels_to_unit_norm_prior_shaped_features() -> None:
    fcm = FCM(
        (6, 10, 14),
        (5, 7, 9),
        width=12,
        branch_width=4,
        code_channels=32,
        decoder_planes=(8, 4, 2),
        decoder_blocks=(1, 1, 1),
    )
    levels = [torch.randn(2, 6, 16, 16), torch.randn(2, 10, 8, 8), torch.randn(2, 14, 4, 4)]
    features = fcm(levels)
    assert [tuple(f.shape) for f in features] == [(2, 5, 16, 16), (2, 7, 8, 8), (2, 9, 4, 4)]
    for feature in features:
        torch.testing.assert_close(feature.norm(dim=1), torch.ones_like(feature[:, 0]))


def test_paper_fcm_parameter_counts_match_the_spec() -> None:
    with torch.device("meta"):
        fcm = FCM((256, 512, 1024), (256, 512, 1024))

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(fcm) == 56_760_308
    assert [count(fcm.conv_x1), count(fcm.conv_x2), count(fcm.conv_x3)] == [3_672_064, 4_982_784, 12_847_616]
    assert [count(fcm.bn1), count(fcm.bn3), count(fcm.bn5)] == [1_309_692, 1_321_980, 1_346_556]
    assert count(fcm.out_bn3) == 4_985_856
    assert [count(fcm.decoder.layer1), count(fcm.decoder.layer2), count(fcm.decoder.layer3)] == [
        17_840_128,
        5_317_632,
        1_759_744,
    ]
    assert count(fcm.final) == 1_376_256


def test_decoder_init_follows_rd_convs_kaiming_transposed_default() -> None:
    torch.manual_seed(0)
    decoder = Decoder(64, (32, 16, 8), (1, 1, 1))
    conv = decoder.layer1[0].conv1  # 1x1 64->64, Kaiming-normal fan_out: std sqrt(2 / 64)
    assert conv.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    transposed = decoder.layer1[0].conv2  # PyTorch default: uniform within +-1/sqrt(fan_in)
    bound = 1 / (transposed.weight.shape[1] * 4) ** 0.5
    assert transposed.weight.abs().max().item() <= bound
