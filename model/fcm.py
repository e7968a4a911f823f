"""Feature Compression Module: alignment, multi-scale bottleneck, de-ResNet decoder and 1x1 heads (spec 4.3-4.7).

Encoder levels e_1..e_3 (strides 4, 8, 16) are aligned to one [B, W, S/8, S/8] grid, squeezed by three
Bottleneck-K (K = 1, 3, 5) and the outer bottleneck into a [B, code, S/32, S/32] code, decoded by an
RD-style de-WideResNet back to strides 16, 8, 4, and mapped by bare 1x1 heads to the prior's channels.
Module names follow the official `FCM` so its checkpoints map key by key (spec 7.4).
At the paper widths (W = 512, code 2048) this holds 56,760,308 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import group_norm_groups

DECODER_EXPANSION = 4
DECODER_WIDTH_FACTOR = 2


def gn_relu(channels: int) -> nn.Sequential:
    """GroupNorm with the official group rule, then ReLU (the official `na` block)."""
    return nn.Sequential(nn.GroupNorm(group_norm_groups(channels), channels), nn.ReLU())


class AlignBlock(nn.Module):
    """ResNet BasicBlock that lands a level on the alignment grid (`a_1`, `a_2`, `a_3`).

    mode "down": conv3x3/2 main path, 1x1/2 shortcut without BN;  [B, C, 2h, 2w] -> [B, W, h, w]
    mode "same": conv3x3/1 main path, 1x1 shortcut without BN;    [B, C, h, w]   -> [B, W, h, w]
    mode "up":   transposed conv k2/2 main path, transposed conv k4/2 (pad 1, bias) shortcut;
                 [B, C, h/2, w/2] -> [B, W, h, w]
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode == "down":
            self.conv1: nn.Module = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
            shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        elif mode == "same":
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
            shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        elif mode == "up":
            self.conv1 = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
            shortcut = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        else:
            raise ValueError(f"unknown alignment mode {mode!r}")
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Official attribute names: `upsample` for the transposed shortcut, `downsample` otherwise.
        self.shortcut_name = "upsample" if mode == "up" else "downsample"
        self.add_module(self.shortcut_name, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.get_submodule(self.shortcut_name)(x))


class SeparableBranch(nn.Module):
    """Depthwise KxK -> pointwise 1x1 -> GN -> ReLU: [B, W, h, w] -> [B, branch_width, h, w]."""

    def __init__(self, channels: int, branch_width: int, kernel_size: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.pw = nn.Conv2d(channels, branch_width, 1, bias=False)
        self.na = gn_relu(branch_width)

    def forward(self, x: Tensor) -> Tensor:
        return self.na(self.pw(self.dw(x)))


class BottleneckK(nn.Module):
    """Inner multi-scale bottleneck with kernel K: three aligned levels -> [B, W, h/2, w/2].

    Each level gets its own separable branch; the concatenation [B, 3*branch, h, w] is halved by a
    k2/2 conv with bias, then GN + ReLU.
    """

    def __init__(self, channels: int, branch_width: int, kernel_size: int) -> None:
        super().__init__()
        self.b1 = SeparableBranch(channels, branch_width, kernel_size)
        self.b2 = SeparableBranch(channels, branch_width, kernel_size)
        self.b3 = SeparableBranch(channels, branch_width, kernel_size)
        self.post = nn.Sequential(nn.Conv2d(3 * branch_width, channels, 2, stride=2), gn_relu(channels))

    def forward(self, aligned: list[Tensor]) -> Tensor:
        branches = [self.b1(aligned[0]), self.b2(aligned[1]), self.b3(aligned[2])]
        return self.post(torch.cat(branches, dim=1))


class OutFuse(nn.Module):
    """Outer bottleneck: concat of the Bottleneck-K outputs [B, n*W, h, w] -> 1x1 -> k2/2 -> [B, code, h/2, w/2]."""

    def __init__(self, in_channels: int, channels: int, code_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), gn_relu(channels))
        self.head = nn.Sequential(
            nn.Conv2d(channels, code_channels, 2, stride=2, bias=False), gn_relu(code_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.proj(x))


class DeBottleneck(nn.Module):
    """RD's de-ResNet bottleneck (width 2*planes, output 4*planes, BN, non-inplace ReLU).

    upsample=True: the 3x3 is a transposed conv k2/2 and the identity a transposed conv k2/2 + BN;
    [B, C, h, w] -> [B, 4*planes, 2h, 2w]. Otherwise identity shortcut, same resolution.
    """

    def __init__(self, in_channels: int, planes: int, upsample: bool) -> None:
        super().__init__()
        width = planes * DECODER_WIDTH_FACTOR
        out_channels = planes * DECODER_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if upsample:
            self.conv2: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.upsample = (
            nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if upsample
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class Decoder(nn.Module):
    """de-WideResNet: code [B, code, h, w] -> [d1 at 2h, d2 at 4h, d3 at 8h] with 4*planes channels each.

    `layer1` is the deepest stage (official naming). Conv2d weights Kaiming-normal (fan_out), BN (1, 0);
    transposed convs keep PyTorch's default init, exactly as RD's init loop leaves them (spec 4.7).
    """

    def __init__(
        self, code_channels: int, planes: tuple[int, int, int], blocks: tuple[int, int, int]
    ) -> None:
        super().__init__()
        in_channels = code_channels
        for stage, (stage_planes, stage_blocks) in enumerate(zip(planes, blocks)):
            layers = [DeBottleneck(in_channels, stage_planes, upsample=True)]
            in_channels = stage_planes * DECODER_EXPANSION
            layers += [
                DeBottleneck(in_channels, stage_planes, upsample=False) for _ in range(stage_blocks - 1)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        for module in self.modules():
            if type(module) is nn.Conv2d:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, code: Tensor) -> list[Tensor]:
        d1 = self.layer1(code)
        d2 = self.layer2(d1)
        d3 = self.layer3(d2)
        return [d1, d2, d3]


class FCM(nn.Module):
    """Encoder levels -> L2-normalised general features, one per prior level.

    forward([e_1 [B,C1,S/4,S/4], e_2 [B,C2,S/8,S/8], e_3 [B,C3,S/16,S/16]])
      -> [f_1 [B,P1,S/4,S/4], f_2 [B,P2,S/8,S/8], f_3 [B,P3,S/16,S/16]], unit norm over channels,
    where (C1, C2, C3) are the encoder's and (P1, P2, P3) the prior's channels.
    """

    def __init__(
        self,
        encoder_channels: tuple[int, int, int],
        prior_channels: tuple[int, int, int],
        width: int = 512,
        branch_width: int = 170,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
        code_channels: int = 2048,
        decoder_planes: tuple[int, int, int] = (256, 128, 64),
        decoder_blocks: tuple[int, int, int] = (3, 4, 6),
    ) -> None:
        super().__init__()
        self.conv_x1 = nn.Sequential(AlignBlock(encoder_channels[0], width, "down"))
        self.conv_x2 = nn.Sequential(AlignBlock(encoder_channels[1], width, "same"))
        self.conv_x3 = nn.Sequential(AlignBlock(encoder_channels[2], width, "up"))
        self.kernel_sizes = kernel_sizes
        for size in kernel_sizes:
            self.add_module(f"bn{size}", BottleneckK(width, branch_width, size))
        self.out_bn3 = OutFuse(len(kernel_sizes) * width, width, code_channels)
        self.decoder = Decoder(code_channels, decoder_planes, decoder_blocks)
        decoded = [planes * DECODER_EXPANSION for planes in decoder_planes]  # deep to shallow
        # final[l] maps the decoder stage at level l's stride to the prior's channels of level l.
        self.final = nn.ModuleList(
            nn.Conv2d(decoded[2 - level], prior_channels[level], 1, bias=False) for level in range(3)
        )

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        aligned = [self.conv_x1(levels[0]), self.conv_x2(levels[1]), self.conv_x3(levels[2])]
        squeezed = [getattr(self, f"bn{size}")(aligned) for size in self.kernel_sizes]
        code = self.out_bn3(torch.cat(squeezed, dim=1))
        d1, d2, d3 = self.decoder(code)
        decoded = [d3, d2, d1]
        return [F.normalize(head(feature), dim=1) for head, feature in zip(self.final, decoded)]
