"""Continual learning (spec 9): add domains to a trained run by tuning a small part of the model.

    parent run (config.json + model.safetensors) --load--> UniMMAD, every parameter frozen ...
      ... but the spec-9 groups: MoE leaders, condition router (conv_cond + gates), aggregation conv
    new domains' training items (their own holdout kept aside)  --+
    replay: a fraction of each old domain's training items      --+--> model.train.fit (the train loop)
    --> runs/NEW: a checkpoint of every domain (old + new), its lineage in config.json

Everything adapt leaves frozen is bit-identical to the parent (BatchNorm running statistics included:
model.train.train_mode keeps frozen BatchNorms in eval mode), which is what lets `export add-domain`
append the new domains to the parent's bundle without touching the old ones: the leaders and the
routing fold into per-domain kernels, the aggregation conv becomes a per-domain bank, the router is not
in the frozen graph at all.

Replay: ``ceil(replay * n)`` (at least one while replay > 0) of each old domain's n training items, the
same items on every resume (ranked by the holdout hash of the run's seed), drawn through the usual
domain-balanced sampler (spec 9 keeps it), so every old domain still weighs as much as a new one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from model.backbones.weights import sha256_file
from model.checkpoint import MODEL_FILE, has_train_state, load_checkpoint, read_config
from model.config import DEFAULT_REPLAY
from model.data import SyntheticConfig, parse_data_spec
from model.data.holdout import holdout_rank
from model.data.loader import Item, MultiDomainDataset
from model.data.sample import Domain
from model.train import TrainingRun, TrainOptions, TrainResult, build_train_set, fit, model_config_for
from model.unimmad import UniMMAD

# Spec 9's tuned groups, as patterns over UniMMAD parameter names.
TUNED_GROUPS: dict[str, str] = {
    "moe_leaders": r"c_moes\.\d+\.MoEs\.\d+\.experts",
    "condition_router": r"c_moes\.\d+\.(conv_cond|MoEs\.\d+\.gate)\.",
    "aggregation_conv": r"c_moes\.\d+\.conv_out_first\.",
}
LINEAGE_KEY = "lineage"


@dataclass(frozen=True)
class TunedParameters:
    """How much of the model adapt tunes: per group of TUNED_GROUPS and against every trainable parameter
    (the prior, frozen anyway, is not counted)."""

    groups: dict[str, int]
    total: int

    @property
    def tuned(self) -> int:
        return sum(self.groups.values())

    @property
    def share(self) -> float:
        return self.tuned / self.total

    def record(self) -> dict[str, Any]:
        return {"groups": self.groups, "parameters": self.tuned, "of": self.total, "share": self.share}


def tuned_group(name: str) -> str | None:
    """The TUNED_GROUPS group a parameter name belongs to, None when adapt leaves it frozen."""
    return next((group for group, pattern in TUNED_GROUPS.items() if re.match(pattern, name)), None)


def count_tuned(model: UniMMAD) -> TunedParameters:
    """Parameter counts of the tuned groups (works on a meta-device model: no weights needed)."""
    groups = dict.fromkeys(TUNED_GROUPS, 0)
    total = 0
    for name, parameter in model.named_parameters():
        if name.startswith("prior."):
            continue
        total += parameter.numel()
        if (group := tuned_group(name)) is not None:
            groups[group] += parameter.numel()
    return TunedParameters(groups, total)


def select_tuned(model: UniMMAD) -> list[nn.Parameter]:
    """Freeze every parameter but the tuned groups (in place) and return those, for the optimiser."""
    tuned = []
    for name, parameter in model.named_parameters():
        keep = tuned_group(name) is not None
        parameter.requires_grad_(keep)
        if keep:
            tuned.append(parameter)
    return tuned


# ---------------------------------------------------------------------------------------------- checks


def check_new_domains(new: Sequence[Domain], parent: Mapping[str, Any], max_modalities: int) -> None:
    """Refuse, in one line, a domain the parent knows or whose modalities the model cannot take: more than
    its modality slots, or a kind (rgb, gray, depth) none of its domains had, since adapt does not tune
    the trunk that would have to learn it."""
    known = {domain["name"]: domain for domain in parent["data"]["domains"]}
    for domain in new:
        if domain.name in known:
            raise ValueError(
                f"domain {domain.name} already exists in the parent run; adapt adds new domains only "
                "(retrain, or rename the domain)"
            )
    kinds = {modality["kind"] for domain in known.values() for modality in domain["modalities"]}
    for domain in new:
        if len(domain.modalities) > max_modalities:
            raise ValueError(
                f"domain {domain.name} has {len(domain.modalities)} modalities; the model takes at most "
                f"{max_modalities}"
            )
        unseen = sorted({spec.kind for spec in domain.modalities} - kinds)
        if unseen:
            raise ValueError(
                f"domain {domain.name} has modalities of kind {', '.join(unseen)}, unknown to the model (its "
                f"domains have {', '.join(sorted(kinds))}); adapt tunes only the C-MoE routing and cannot "
                "learn a new kind: train a full model"
            )


# ---------------------------------------------------------------------------------------------- replay


def replay_items(
    dataset: MultiDomainDataset, holdout_ids: Mapping[str, Sequence[str]], fraction: float, seed: int
) -> list[Item]:
    """Of each domain of ``dataset`` (training split), ``ceil(fraction * n)`` (at least 1 when fraction >
    0) of the n items the parent trained on (its holdout left out), chosen by the holdout hash of ``seed``."""
    chosen: list[Item] = []
    for name in dataset.domains:
        held = set(holdout_ids.get(name, ()))
        trained = [item for item in dataset.items if item.ref.domain == name and item.ref.id not in held]
        count = min(len(trained), max(math.ceil(fraction * len(trained)), 1)) if fraction > 0 else 0
        chosen += sorted(trained, key=lambda item: holdout_rank(item.ref.id, seed))[:count]
    return chosen


# ---------------------------------------------------------------------------------------------- run


def lineage_record(
    parent_dir: Path,
    parent: Mapping[str, Any],
    new_spec: str,
    added: Sequence[str],
    tuned: TunedParameters,
    replay: float,
    replayed: Mapping[str, int],
) -> dict[str, Any]:
    """The config.json ``lineage`` of an adapted run: where it came from and what adapt changed."""
    return {
        "parent": str(parent_dir.resolve()),
        "parent_model_sha256": sha256_file(parent_dir / MODEL_FILE),
        "parent_lineage": parent.get(LINEAGE_KEY),
        "new_spec": new_spec,
        "domains_added": list(added),
        "tuned": {"patterns": TUNED_GROUPS, **tuned.record()},
        "replay": {"fraction": replay, "items": dict(replayed)},
    }


def check_adapt_resume(out: Path, parent_dir: Path, new_spec: str) -> None:
    recorded = read_config(out)
    lineage = recorded.get(LINEAGE_KEY) or {}
    if lineage.get("parent") != str(parent_dir.resolve()) or lineage.get("new_spec") != new_spec:
        raise ValueError(
            f"--resume: {out} adapted {lineage.get('parent')!r} to --data {lineage.get('new_spec')!r}, "
            f"not {str(parent_dir)!r} to {new_spec!r}"
        )


def adapt(
    checkpoint: Path,
    options: TrainOptions,
    replay: float = DEFAULT_REPLAY,
    synthetic: SyntheticConfig | None = None,
) -> TrainResult:
    """Adapt the run in ``checkpoint`` to the new domains of ``options.data`` into ``options.out``.

    options: as for train (``preset`` is ignored: the parent's model is kept; epochs, batch size and lr
    override the parent's config); synthetic sizes the ``synthetic`` entries of both data specs (tests).
    """
    started = time.monotonic()
    if not 0 <= replay <= 1:
        raise ValueError(f"--replay must be within [0, 1], got {replay}")
    checkpoint, out = Path(checkpoint), Path(options.out)
    if options.resume:
        if not has_train_state(out):
            raise ValueError(f"--resume: {out} holds no resumable checkpoint")
        check_adapt_resume(out, checkpoint, options.data)
    elif has_train_state(out):
        raise ValueError(f"{out} already holds a checkpoint; pass --resume or choose another --out")
    model, parent = load_checkpoint(checkpoint, options.prior_weights)
    config = model_config_for(options, model.config)
    new_sources = parse_data_spec(options.data, synthetic=synthetic)
    check_new_domains(
        [domain for source in new_sources for domain in source.domains()], parent, config.max_modalities
    )
    old_sources = parse_data_spec(parent["data"]["spec"], synthetic=synthetic)
    dataset, new_record = build_train_set(new_sources, config, options.holdout_fraction, options.seed)
    old_holdout = parent["data"]["holdout"]
    old = MultiDomainDataset(old_sources, "train", config.image_size, mean=config.mean, std=config.std)
    replayed = replay_items(old, old_holdout.get("ids") or {}, replay, options.seed)
    if len(dataset) + len(replayed) < config.batch_size:
        raise ValueError(
            f"{len(dataset) + len(replayed)} training samples are fewer than one batch of {config.batch_size}"
        )
    dataset.domains = {**old.domains, **dataset.domains}  # old domains first: their bundle indices stay
    dataset.items = replayed + dataset.items
    counts = {name: sum(item.ref.domain == name for item in replayed) for name in old.domains}

    model.config = config  # epochs, batch size and lr only: the structure stays the parent's
    parameters = select_tuned(model)
    added = [domain["name"] for domain in new_record["domains"]]
    lineage = lineage_record(checkpoint, parent, options.data, added, count_tuned(model), replay, counts)
    description = {
        "data": {
            "spec": f"{parent['data']['spec']},{options.data}",
            "domains": parent["data"]["domains"] + new_record["domains"],
            "holdout": {
                **new_record["holdout"],
                "ids": {**(old_holdout.get("ids") or {}), **new_record["holdout"]["ids"]},
            },
        },
        "training": {
            **parent["training"],
            "seed": options.seed,
            "precision": options.precision,
            "prior_cache": options.prior_cache,
        },
        LINEAGE_KEY: lineage,
    }
    run = TrainingRun(model, config, dataset, old_sources + new_sources, description, parameters)
    return fit(run, dataclasses.replace(options, data=description["data"]["spec"]), started)
