"""WideResNet-50-2 feature trunk (stem + layer1..layer3), parameter names as in torchvision.

ResNet v1.5 (the stride sits on the 3x3 conv) with bottlenecks twice as wide as ResNet-50's. layer4 and
the classifier are not built: the model only reads layer1..layer3, so they would never influence the
output. Weights are torchvision's `wide_resnet50_2` state dicts (timm names this model identically).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from model.backbones.spec import FeatureSpec, init_torchvision_style

EXPANSION = 4
WIDTH_FACTOR = 2
STAGE_PLANES = (64, 128, 256)
STAGE_BLOCKS = (3, 4, 6)
STAGE_STRIDES = (1, 2, 2)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand, plus identity or projection shortcut.

    Shapes: [B, in_channels, H, W] -> [B, planes * 4, H / stride, W / stride].
    """

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        width = planes * WIDTH_FACTOR
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_stage(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage: the first block changes resolution/width, the rest keep them."""
    layers = [Bottleneck(in_channels, planes, stride)]
    layers += [Bottleneck(planes * EXPANSION, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNet50Trunk(nn.Module):
    """WideResNet-50-2 up to layer3.

    Shapes: [B, 3, H, W] -> [[B, 256, H/4, W/4], [B, 512, H/8, W/8], [B, 1024, H/16, W/16]].

    Each level is the stage's post-ReLU output. Random torchvision-style init; load ImageNet weights
    with `model.backbones.weights.load_trunk_weights`.
    """

    feature_spec: ClassVar[FeatureSpec] = FeatureSpec(channels=(256, 512, 1024), strides=(4, 8, 16))
    # Per-channel normalisation of [0, 1] RGB that torchvision's ImageNet weights were trained with.
    input_mean: ClassVar[tuple[float, float, float]] = (0.485, 0.456, 0.406)
    input_std: ClassVar[tuple[float, float, float]] = (0.229, 0.224, 0.225)
    # Parts of a full wide_resnet50_2 state dict that this trunk deliberately does not build.
    unbuilt_prefixes: ClassVar[tuple[str, ...]] = ("layer4.", "fc.")
    weights_hint: ClassVar[str] = (
        "download torchvision's wide_resnet50_2 IMAGENET1K_V2 weights "
        "(https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth) or timm's "
        "wide_resnet50_2.tv2_in1k model.safetensors and pass --prior-weights PATH"
    )

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, blocks, stride) in enumerate(zip(STAGE_PLANES, STAGE_BLOCKS, STAGE_STRIDES)):
            self.add_module(f"layer{index + 1}", make_stage(in_channels, planes, blocks, stride))
            in_channels = planes * EXPANSION
        init_torchvision_style(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        level1 = self.layer1(x)
        level2 = self.layer2(level1)
        level3 = self.layer3(level2)
        return [level1, level2, level3]


def wide_resnet50_2() -> WideResNet50Trunk:
    """Randomly initialised WideResNet-50-2 trunk (24,862,528 parameters)."""
    return WideResNet50Trunk()


__all__ = ["WideResNet50Trunk", "wide_resnet50_2"]
