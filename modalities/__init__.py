"""Torch-free modality handling: file bytes -> array -> model input, shared by training, export and serving."""

from __future__ import annotations

from modalities.decode import DEFAULT_MAX_PIXELS, decode_bytes, read_file, sniff_format
from modalities.errors import ErrorCode, ModalityError
from modalities.kinds import IMAGENET_MEAN, IMAGENET_STD, KINDS, ModalitySpec
from modalities.prepare import prepare, prepare_mask, stack_sample

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "ErrorCode",
    "ModalityError",
    "ModalitySpec",
    "decode_bytes",
    "prepare",
    "prepare_mask",
    "read_file",
    "sniff_format",
    "stack_sample",
]
