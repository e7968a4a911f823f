"""Feature trunks: ImageNet CNNs cut after their stride-16 stage, returning three feature levels.

Every trunk is an `nn.Module` with class attributes `feature_spec` (channels and strides of its three
levels) and `input_mean`/`input_std` (the per-channel normalisation of [0, 1] RGB its ImageNet weights
expect), and `forward(x: [B, 3, H, W]) -> list[Tensor]` (shallow to deep). `build_trunk(name)` builds a
randomly initialised one; `model.backbones.weights.load_trunk_weights` fills it with ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from model.backbones.efficientnet_lite import EfficientNetLite0Trunk, efficientnet_lite0
from model.backbones.spec import FeatureSpec
from model.backbones.wide_resnet import WideResNet50Trunk, wide_resnet50_2

TRUNKS: dict[str, Callable[[], nn.Module]] = {
    "wide_resnet50_2": wide_resnet50_2,
    "efficientnet_lite0": efficientnet_lite0,
}


def build_trunk(name: str) -> nn.Module:
    """Build the named trunk with random torchvision-style init; unknown names raise ValueError."""
    try:
        factory = TRUNKS[name]
    except KeyError:
        raise ValueError(f"unknown trunk {name!r}; valid trunks: {', '.join(sorted(TRUNKS))}") from None
    return factory()


__all__ = [
    "TRUNKS",
    "EfficientNetLite0Trunk",
    "FeatureSpec",
    "WideResNet50Trunk",
    "build_trunk",
]
