"""What every feature trunk promises: three feature levels with known channels and strides."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FeatureSpec:
    """Channels and strides (relative to the input) of a trunk's three output levels, shallow to deep.

    signed: whether the levels take negative values (taps after a linear layer, e.g. EfficientNet's
    bottlenecks) or not (taps after a ReLU, e.g. WideResNet's stages). A prediction head that ends in a
    ReLU can only match non-negative targets.
    """

    channels: tuple[int, int, int]
    strides: tuple[int, int, int]
    signed: bool = False


def init_torchvision_style(module: nn.Module) -> None:
    """Random init as torchvision's classifiers do it: Kaiming-normal (fan_out) convs, norms at (1, 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
