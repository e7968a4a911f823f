"""Input preprocessing: learned modality embedding + stem that turns all modalities into one 3-channel image.

Spec section 2. Two variants:
- "head" (official HEAD): the slots' 3-channel images concatenated and zero-padded to 12 channels,
  plus a learned 12xSxS embedding (N(0, 0.02^2)), then conv3x3 12->24->48->3 (BN+ReLU between) plus a
  1x1 shortcut 12->3.
- "v1" (first release / paper): a 6xSxS embedding (N(0, 1)) whose first 4 channels receive a 4-channel
  shared image, then one conv3x3 6->3. v1 built that image from the modality kinds (rgb 3 channels, gray
  and depth 1); the model does not see kinds, so here each slot contributes one channel, the mean of its
  three channels (exact for gray and depth, a luminance-like reduction for rgb).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HEAD_CHANNELS = 12
V1_CHANNELS = 6
V1_SHARED_CHANNELS = 4
HEAD_EMBEDDING_STD = 0.02
V1_EMBEDDING_STD = 1.0


def shared_input(images: Tensor, variant: str) -> Tensor:
    """Shared tensor of the general encoder (absent slots must already be zero).

    images [B, M, 3, S, S] -> head: [B, 12, S, S] (slot m in channels 3m..3m+2), v1: [B, 4, S, S].
    """
    batch, slots, _, height, width = images.shape
    if variant == "head":
        stacked = images.reshape(batch, slots * 3, height, width)
        return torch.nn.functional.pad(stacked, (0, 0, 0, 0, 0, HEAD_CHANNELS - slots * 3))
    per_slot = images.mean(dim=2)
    return torch.nn.functional.pad(per_slot, (0, 0, 0, 0, 0, V1_SHARED_CHANNELS - slots))


class InputStem(nn.Module):
    """Learned per-pixel modality embedding + stem. Official parameter names: input_embedding, stem.*, shortcut.*.

    forward(shared [B, C_shared, S, S]) -> [B, 3, S, S]; C_shared = 12 (head) or 4 (v1).
    """

    def __init__(self, image_size: int, variant: str = "head", widths: tuple[int, int] = (24, 48)) -> None:
        super().__init__()
        self.variant = variant
        if variant == "head":
            self.input_embedding = nn.Parameter(
                torch.randn(HEAD_CHANNELS, image_size, image_size) * HEAD_EMBEDDING_STD
            )
            first, second = widths
            self.stem = nn.Sequential(
                nn.Conv2d(HEAD_CHANNELS, first, 3, padding=1),
                nn.BatchNorm2d(first),
                nn.ReLU(),
                nn.Conv2d(first, second, 3, padding=1),
                nn.BatchNorm2d(second),
                nn.ReLU(),
                nn.Conv2d(second, 3, 3, padding=1),
            )
            self.shortcut: nn.Module | None = nn.Conv2d(HEAD_CHANNELS, 3, 1)
        elif variant == "v1":
            self.input_embedding = nn.Parameter(
                torch.randn(V1_CHANNELS, image_size, image_size) * V1_EMBEDDING_STD
            )
            self.stem = nn.Sequential(nn.Conv2d(V1_CHANNELS, 3, 3, padding=1))
            self.shortcut = None
        else:
            raise ValueError(f"unknown stem variant {variant!r}; valid: head, v1")

    def forward(self, shared: Tensor) -> Tensor:
        if self.variant == "head":
            embedded = shared + self.input_embedding
            return self.stem(embedded) + self.shortcut(embedded)
        pad = V1_CHANNELS - shared.shape[1]
        embedded = torch.nn.functional.pad(shared, (0, 0, 0, 0, 0, pad)) + self.input_embedding
        return self.stem(embedded)
