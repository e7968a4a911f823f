"""Apply a different static kernel to each modality slot of a slot-major batch of pairs.

The frozen graph holds, per branch, a kernel per (domain, slot). A batch holds one domain and M slots,
so the pairs [N = M*B, E, H, W] need M different kernels [M, E, E, k, k] taken from the bank at run time
by `domain`. ONNX `Conv.group` is a static attribute, so "one grouped conv with groups=M" cannot follow
a dynamic M. The candidates, all exportable with dynamic B and M:

- "unfold":      im2col of the pairs + one batched MatMul per slot ([M,1,E,Ekk] @ [M,B,Ekk,HW]);
                 exactly the needed MACs, but the column tensor is k*k times the input.
- "block_diag":  one dense conv of all pairs with every slot's kernel stacked as output channels, then
                 keep each pair's own block; M times the needed MACs (none wasted at M = 1).
- "per_slot":    one conv per possible slot (max_modalities of them) on that slot's slice of the pairs;
                 the slices of absent slots are empty and cost nothing: exactly the needed MACs, and the
                 graph needs no branch on M.
- "padded":      pad the slots to max_modalities and run one grouped conv with groups=max_modalities;
                 max_modalities / M times the needed MACs, plus the pad/transposes.

Measured with `python -m export.candidates --min-seconds 1.5` (whole frozen graph, lite preset, 128 px,
onnxruntime 1.31.1 CPU, the 2-core development machine, quiet; images/s, one image = all M modalities
of a sample):

    candidate    M=1 B=1  M=1 B=8  M=3 B=1  M=3 B=8
    unfold         77.3     85.7     34.3     35.9
    block_diag    116.7    144.4     45.4     51.2
    per_slot      108.0    141.4     70.6     79.7
    padded         74.6     88.1     63.4     66.9

Choice: "per_slot". At M = 1 it is within measurement noise of block_diag (the same single conv plus
three empty ones); at M = 3 it is 55 % faster than block_diag and 20 % faster than padded, because it
does no wasted MACs. The unfold/MatMul path loses everywhere (the k*k-times column tensor; MLAS's conv
beats a batched GEMM here). All candidates gather the weights at run time, so none gets ORT's
constant-weight pre-packing; per-domain static weights would, but only by duplicating the C-MoE weights
per domain behind a branch on the domain.

`frozen.py` uses :data:`DEFAULT_SLOT_CONV`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SLOT_CONV = "per_slot"


def unfold_slot_conv(pairs: Tensor, kernels: Tensor, slots: int) -> Tensor:
    """pairs [M*B, E, H, W] (slot-major, M = slots), kernels [S_max, E_out, E, k, k] -> [M*B, E_out, H, W]."""
    _, out_channels, in_channels, size, _ = kernels.shape
    height, width = pairs.shape[-2:]
    if size == 1:
        columns = pairs.reshape(slots, -1, in_channels, height * width)
    else:
        columns = F.unfold(pairs, size, padding=size // 2)
        columns = columns.reshape(slots, -1, in_channels * size * size, height * width)
    weight = kernels[:slots].reshape(slots, 1, out_channels, in_channels * size * size)
    return torch.matmul(weight, columns).reshape(-1, out_channels, height, width)


def block_diag_slot_conv(pairs: Tensor, kernels: Tensor, slots: int) -> Tensor:
    """pairs [M*B, E, H, W] (slot-major, M = slots), kernels [S_max, E_out, E, k, k] -> [M*B, E_out, H, W]."""
    _, out_channels, in_channels, size, _ = kernels.shape
    height, width = pairs.shape[-2:]
    stacked = kernels[:slots].reshape(slots * out_channels, in_channels, size, size)
    every = F.conv2d(pairs, stacked, padding=size // 2)
    every = every.reshape(slots, -1, slots, out_channels, height, width)  # [pair slot, B, kernel slot, ...]
    own = torch.arange(slots, device=pairs.device)
    return every[own, :, own].reshape(-1, out_channels, height, width)


def per_slot_slot_conv(pairs: Tensor, kernels: Tensor, slots: int) -> Tensor:
    """pairs [M*B, E, H, W] (slot-major, M = slots), kernels [S_max, E_out, E, k, k] -> [M*B, E_out, H, W].

    One conv per possible slot on that slot's B pairs; the slices of slots >= M are empty, and a conv of an
    empty batch costs nothing, so the graph needs no branch on M.
    """
    batch = pairs.shape[0] // slots
    size = kernels.shape[-1]
    outputs = [
        F.conv2d(pairs[slot * batch : (slot + 1) * batch], kernels[slot], padding=size // 2)
        for slot in range(kernels.shape[0])
    ]
    return torch.cat(outputs)


def padded_slot_conv(pairs: Tensor, kernels: Tensor, slots: int) -> Tensor:
    """pairs [M*B, E, H, W] (slot-major, M = slots), kernels [S_max, E_out, E, k, k] -> [M*B, E_out, H, W]."""
    max_slots, out_channels, in_channels, size, _ = kernels.shape
    height, width = pairs.shape[-2:]
    by_slot = pairs.reshape(slots, -1, in_channels, height, width)
    padding = by_slot.new_zeros(max_slots - slots, *by_slot.shape[1:])
    grouped = (
        torch.cat([by_slot, padding]).transpose(0, 1).reshape(-1, max_slots * in_channels, height, width)
    )
    weight = kernels.reshape(max_slots * out_channels, in_channels, size, size)
    out = F.conv2d(grouped, weight, padding=size // 2, groups=max_slots)
    out = out.reshape(-1, max_slots, out_channels, height, width)[:, :slots].transpose(0, 1)
    return out.reshape(-1, out_channels, height, width)


SLOT_CONV_FUNCTIONS = {
    "unfold": unfold_slot_conv,
    "block_diag": block_diag_slot_conv,
    "per_slot": per_slot_slot_conv,
    "padded": padded_slot_conv,
}
SLOT_CONVS = tuple(SLOT_CONV_FUNCTIONS)


def slot_conv(pairs: Tensor, kernels: Tensor, slots: int, method: str = DEFAULT_SLOT_CONV) -> Tensor:
    """Slot-wise static convolution by the named method (stride 1, zero padding k//2, no bias)."""
    try:
        function = SLOT_CONV_FUNCTIONS[method]
    except KeyError:
        raise ValueError(f"unknown slot conv {method!r}; valid: {', '.join(SLOT_CONVS)}") from None
    return function(pairs, kernels, slots)
