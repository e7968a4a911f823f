"""Checkpoints as a folder of safetensors + JSON, never pickle (DESIGN.md, "Checkpoint").

    runs/NAME/config.json              run config: {"format_version", "model": UniMMADConfig dict,
                                       "prior": {"source", "sha256"}, "data": {...}, "training": {...}}
    runs/NAME/model.safetensors        trainable weights and BN buffers (plus the prior only when it has
                                       no weights file, i.e. a random test prior that cannot be rebuilt)
    runs/NAME/train_state.safetensors  optimiser tensors (Adam moments, steps) and RNG states
    runs/NAME/train_state.json         optimiser hyper-parameters, LR schedule, epoch/step, Python RNG

The frozen prior is rebuilt from its weights source and refused when the file's sha256 differs from the
one recorded at training time, so a checkpoint can never silently run on different prior features.
Every file is written beside its final name and renamed into place, so an interrupted save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from model.backbones.weights import resolve_source, sha256_file
from model.config import UniMMADConfig
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "train_state.safetensors"
STATE_JSON_FILE = "train_state.json"
OPTIMIZER_PREFIX = "optimizer."
RNG_PREFIX = "rng."


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read or does not match the code; the message is one line."""


# ------------------------------------------------------------------------------------------- writing


def _replace_into(path: Path, write: Any) -> None:
    """Call ``write(temporary_path)`` then atomically rename the result to ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    _replace_into(
        path, lambda target: target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    )


def _write_tensors(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    _replace_into(path, lambda target: save_file(contiguous, str(target), metadata=metadata))


def model_tensors(model: UniMMAD) -> dict[str, Tensor]:
    """What model.safetensors holds: everything but a prior that is rebuilt from its weights file."""
    if model.prior_weights_info is None:
        return dict(model.state_dict())
    return model.state_dict_without_prior()


def prior_record(model: UniMMAD) -> dict[str, str | None]:
    """Where the frozen prior's weights came from; ``source`` None means random (saved with the model)."""
    info = model.prior_weights_info
    return {"source": info.source, "sha256": info.sha256} if info else {"source": None, "sha256": None}


def save_model(directory: str | Path, model: UniMMAD, run_config: Mapping[str, Any]) -> Path:
    """Write config.json and model.safetensors into ``directory`` (created); returns the folder.

    run_config: the run's description (data, training, ...); ``model`` and ``prior`` are filled in here
    from the model itself so they cannot disagree with the weights.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(run_config)
    config.update(format_version=FORMAT_VERSION, model=model.config.to_dict(), prior=prior_record(model))
    _write_tensors(folder / MODEL_FILE, model_tensors(model), metadata={"format": "pt"})
    _write_json(folder / CONFIG_FILE, config)
    return folder


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimiser state_dict -> (tensors keyed ``optimizer.<param>.<name>``, JSON rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, Tensor]:
    tensors = {f"{RNG_PREFIX}torch": torch.get_rng_state()}
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    tensors[f"{RNG_PREFIX}numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    tensors[f"{RNG_PREFIX}numpy_extra"] = torch.tensor([position, has_gauss], dtype=torch.int64)
    tensors[f"{RNG_PREFIX}numpy_gauss"] = torch.tensor([cached_gauss], dtype=torch.float64)
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG_PREFIX}cuda{device}"] = state
    return tensors


def save_checkpoint(
    directory: str | Path,
    model: UniMMAD,
    run_config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Mapping[str, Any],
) -> Path:
    """A resumable checkpoint: the model files plus optimiser, schedule, ``progress`` (JSON-safe: epoch,
    step, ...) and every RNG state. The JSON state is written last, so its presence marks a full save."""
    folder = save_model(directory, model, run_config)
    optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer)
    _write_tensors(folder / STATE_TENSORS_FILE, {**optimizer_tensors, **_rng_tensors()})
    python_state = random.getstate()
    _write_json(
        folder / STATE_JSON_FILE,
        {
            "progress": dict(progress),
            "optimizer": optimizer_json,
            "scheduler": scheduler.state_dict(),
            "python_rng": [python_state[0], list(python_state[1]), python_state[2]],
        },
    )
    return folder


# ------------------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a checkpoint: {path.name} is missing")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return payload


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a checkpoint: {path.name} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read {path}: {str(error).strip().splitlines()[0]}") from None


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json, with its format version checked."""
    config = _read_json(Path(directory) / CONFIG_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {config.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return config


def _model_config(config: Mapping[str, Any], prior_weights: str | None) -> UniMMADConfig:
    """The recorded UniMMADConfig, with the prior source relocated and a missing encoder file dropped
    (the encoder's trained weights come from model.safetensors; its start point no longer matters)."""
    try:
        model_config = UniMMADConfig.from_dict(config["model"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"config.json has no valid 'model' section ({error})") from None
    changes: dict[str, Any] = {}
    if prior_weights is not None:
        changes["prior_weights"] = prior_weights
    encoder = model_config.encoder_weights
    if (
        encoder is not None
        and not encoder.startswith("package:")
        and not Path(encoder).expanduser().is_file()
    ):
        changes["encoder_weights"] = None
    return model_config.replace(**changes) if changes else model_config


def _check_prior(config: Mapping[str, Any], model_config: UniMMADConfig) -> None:
    recorded = config.get("prior") or {}
    if recorded.get("sha256") is None:
        return
    path = resolve_source(model_config.prior_weights, "pass its location with --prior-weights PATH")
    digest = sha256_file(path)
    if digest != recorded["sha256"]:
        raise CheckpointError(
            f"prior weights {path} have sha256 {digest[:12]}..., the checkpoint was trained with "
            f"{recorded['sha256'][:12]}... ({recorded.get('source')})"
        )


def restore_weights(directory: str | Path, model: UniMMAD) -> None:
    """Load model.safetensors into ``model`` in place; every saved key must match the model exactly."""
    path = Path(directory) / MODEL_FILE
    tensors = _read_tensors(path)
    expected = set(model_tensors(model))
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{path} does not fit the {model.config.preset} model: {len(missing)} keys missing "
            f"(first: {missing[:1]}), {len(unexpected)} unexpected (first: {unexpected[:1]})"
        )
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(
    directory: str | Path, prior_weights: str | None = None, device: str | torch.device = "cpu"
) -> tuple[UniMMAD, dict[str, Any]]:
    """Rebuild the trained model (eval mode, on ``device``) and return it with the run config.

    prior_weights: where the prior's weights file lives now, when it moved since training; its sha256
    must still match. Raises CheckpointError (a ValueError) with one line on any mismatch.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = read_config(folder)
    model_config = _model_config(config, prior_weights)
    random_prior = (config.get("prior") or {}).get("sha256") is None
    if random_prior:
        model_config = model_config.replace(prior_weights=None)
    else:
        _check_prior(config, model_config)
    model = UniMMAD(model_config, allow_random_prior=random_prior)
    restore_weights(folder, model)
    logger.info("loaded checkpoint %s (preset %s)", folder, model_config.preset)
    return model.to(device).eval(), config


def has_train_state(directory: str | Path) -> bool:
    """True when ``directory`` holds a complete resumable checkpoint."""
    folder = Path(directory)
    return all(
        (folder / name).is_file() for name in (CONFIG_FILE, MODEL_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE)
    )


def _restore_rng(tensors: Mapping[str, Tensor], python_rng: list[Any]) -> None:
    torch.set_rng_state(tensors[f"{RNG_PREFIX}torch"])
    position, has_gauss = tensors[f"{RNG_PREFIX}numpy_extra"].tolist()
    keys = tensors[f"{RNG_PREFIX}numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, position, has_gauss, float(tensors[f"{RNG_PREFIX}numpy_gauss"][0])))
    random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
    cuda_states = [tensors[key] for key in sorted(tensors) if key.startswith(f"{RNG_PREFIX}cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def load_train_state(
    directory: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore optimiser, schedule and RNG states in place; returns the saved ``progress`` dict."""
    folder = Path(directory)
    payload = _read_json(folder / STATE_JSON_FILE)
    tensors = _read_tensors(folder / STATE_TENSORS_FILE)
    try:
        saved = payload["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                index, name = key.removeprefix(OPTIMIZER_PREFIX).split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for index, values in saved["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        # JSON turned tuples (Adam's betas) into lists; "params" is the one list a group really holds.
        groups = [
            {
                name: tuple(value) if isinstance(value, list) and name != "params" else value
                for name, value in group.items()
            }
            for group in saved["param_groups"]
        ]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        scheduler.load_state_dict(payload["scheduler"])
        _restore_rng(tensors, payload["python_rng"])
        return dict(payload["progress"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder}: train state does not fit this run ({error})") from None
