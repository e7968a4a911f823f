"""The one exception type raised for a modality that cannot become model input.

Callers map ``ModalityError.code`` to their own surface (an HTTP 4xx in the service, a one-line CLI
message in training tools); the codes are stable, the messages are for humans.
"""

from __future__ import annotations

from enum import StrEnum

_MAX_MESSAGE = 300


class ErrorCode(StrEnum):
    """Stable machine-readable reasons; values are the slugs clients see."""

    FILE_NOT_FOUND = "file_not_found"
    UNREADABLE_FILE = "unreadable_file"
    EMPTY_FILE = "empty_file"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNREADABLE_TIFF = "unreadable_tiff"
    BAD_NPY = "bad_npy"
    BAD_ARRAY_DTYPE = "bad_array_dtype"
    BAD_ARRAY_RANK = "bad_array_rank"
    BAD_CHANNEL_COUNT = "bad_channel_count"
    EMPTY_ARRAY = "empty_array"
    NON_FINITE_VALUES = "non_finite_values"
    BAD_VALUE_RANGE = "bad_value_range"
    BAD_SIZE = "bad_size"
    BAD_NORMALISATION = "bad_normalisation"
    INVALID_SPEC = "invalid_spec"
    MISSING_MODALITY = "missing_modality"
    UNEXPECTED_MODALITY = "unexpected_modality"


class ModalityError(ValueError):
    """A modality file or array was rejected.

    A ``ValueError`` so that config validators (pydantic, argparse types) report it as a bad value.
    ``code`` is one of :class:`ErrorCode` (an unknown code is a programming error and raises at once).
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = ErrorCode(code)
        # Decoder exceptions are folded into messages; keep them one bounded line for logs and clients.
        single_line = " ".join(str(message).split())
        self.message = (
            single_line if len(single_line) <= _MAX_MESSAGE else single_line[: _MAX_MESSAGE - 3] + "..."
        )
        super().__init__(f"{self.code.value}: {message}")

    def __reduce__(self) -> tuple[type[ModalityError], tuple[str, str]]:
        # Worker processes (data loaders, process pools) pickle exceptions; rebuild from both fields.
        return type(self), (self.code.value, self.message)

    def to_dict(self) -> dict[str, str]:
        """``{"code", "message"}`` as the service's error body carries it."""
        return {"code": self.code.value, "message": self.message}
