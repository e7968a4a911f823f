"""Unified multi-domain training (spec 7): one UniMMAD over every domain of a data spec.

Adam with a per-step warm-up + cosine LR sized to the run (model.schedule; spec 7.1 steps a cosine per
epoch, the same curve for a run that completes), domain-balanced sampling with replacement (spec 1.5), focal cosine
+ annealed balance loss (spec 6), bf16 autocast on CUDA and fp32 on CPU. The frozen prior's features
come from a :class:`PriorCache` (no augmentation, so they never change). A deterministic fraction of
each domain's normal training samples is held out (never trained on) and recorded in the checkpoint for
threshold calibration. The run folder always holds the latest resumable checkpoint; a run stopped by
its time budget is resumed mid-epoch exactly where it stopped. With ``--max-minutes`` the number of steps
is planned from the measured step time, so the schedule ends annealed when the budget runs out. Gate
statistics (model.routing_stats) go to the log, ``routing.json`` and the train state after every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.calibration import RecordedHoldout
from model.checkpoint import has_train_state, load_train_state, read_config, restore_weights, save_checkpoint
from model.config import UniMMADConfig, preset
from model.data import SyntheticConfig, parse_data_spec
from model.data.holdout import split_holdout
from model.data.loader import DecodedCache, DomainBalancedSampler, MultiDomainDataset, collate
from model.data.sample import Domain, Source
from model.evaluate import evaluate_model, summary_line
from model.losses import unimmad_loss
from model.prior_cache import PriorCache
from model.routing_stats import RoutingMonitor
from model.routing_stats import summary_line as routing_summary_line
from model.schedule import BudgetPlanner, CosineWithWarmup
from model.unimmad import UniMMAD

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
EVAL_FOLDER = "eval"
ROUTING_FILE = "routing.json"
# Gate statistics are gathered from every n-th step (they cost a host copy of the gate probabilities).
ROUTING_SAMPLE_EVERY = 4
# The loss is read on the host every n-th step (and at the end of an epoch): a read waits for the device.
LOSS_READ_EVERY = 10


@dataclass(frozen=True)
class TrainOptions:
    """One training run. ``epochs``/``batch_size``/``lr`` None take the preset's values."""

    data: str
    out: Path
    preset: str = "lite"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    resume: bool = False
    # Epochs between evaluations on the test split (each also runs at the end); 0 = never,
    # None = at the end only.
    eval_every: int | None = 10
    holdout_fraction: float = 0.1
    max_minutes: float | None = None
    device: str = "cpu"
    precision: str = "fp32"
    prior_weights: str | None = None
    prior_cache: bool = True
    workers: int = 0
    data_cache: bool = True
    # Config fields changed for this run (ablations: `--set moe_min_group_channels=2`); recorded in the
    # run's config like every other field.
    config_overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if (self.eval_every is not None and self.eval_every < 0) or self.workers < 0:
            raise ValueError("--eval-every and --workers must be >= 0")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"--holdout-fraction must be within [0, 1), got {self.holdout_fraction}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if self.precision == "bf16" and self.device != "cuda":
            raise ValueError("--precision bf16 needs --device cuda (CPU training runs in fp32)")


@dataclass
class TrainingRun:
    """What the training loop trains: the built model, its training set, the parameters that move and
    the run config saved with every checkpoint. ``train`` tunes every trainable parameter on a data
    spec; ``model.adapt`` a few of them on new domains plus a replay of the old ones."""

    model: UniMMAD
    config: UniMMADConfig
    dataset: MultiDomainDataset
    sources: list[Source]  # evaluation reads the test split of every domain of the dataset from these
    description: dict[str, Any]
    parameters: list[nn.Parameter]


@dataclass
class TrainResult:
    """What a finished (or budget-stopped) run reports."""

    out: Path
    epochs_done: int
    step: int
    finished: bool
    last_loss: float
    history: list[dict[str, Any]]
    cache_stats: dict[str, Any]


# ---------------------------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_for(options: TrainOptions, base: UniMMADConfig | None = None) -> UniMMADConfig:
    """The preset (or ``base``) with the run's overrides applied."""
    config = base or preset(options.preset)
    changes: dict[str, Any] = {}
    for name in ("epochs", "batch_size", "lr"):
        if getattr(options, name) is not None:
            changes[name] = getattr(options, name)
    if options.batch_size is not None and options.lr is None:
        changes["lr"] = scaled_lr(config.lr, options.batch_size, config.batch_size)
    if options.prior_weights is not None:
        changes["prior_weights"] = options.prior_weights
    changes.update(options.config_overrides)
    return config.replace(**changes) if changes else config


def scaled_lr(lr: float, batch_size: int, preset_batch_size: int) -> float:
    """The large-batch rule: Adam's learning rate times sqrt(batch / the preset's batch)."""
    return lr * math.sqrt(batch_size / preset_batch_size)


def domain_record(domain: Domain, train: int, holdout: int) -> dict[str, Any]:
    return {
        "name": domain.name,
        "modalities": [dataclasses.asdict(spec) for spec in domain.modalities],
        "loss_weight": domain.loss_weight,
        "train_samples": train,
        "holdout_samples": holdout,
    }


def build_train_set(
    sources: list[Source], config: UniMMADConfig, fraction: float, seed: int
) -> tuple[MultiDomainDataset, dict[str, Any]]:
    """The training dataset without its holdout, and the ``data`` section of the run config."""
    dataset = MultiDomainDataset(sources, "train", config.image_size, mean=config.mean, std=config.std)
    if len(dataset) == 0:
        raise ValueError("the data spec has no training samples")
    refs = [item.ref for item in dataset.items]
    _, holdout = split_holdout(refs, fraction, seed)
    held = {(ref.domain, ref.id) for ref in holdout}
    dataset.items = [item for item in dataset.items if (item.ref.domain, item.ref.id) not in held]
    train_sizes = dataset.domain_sizes()
    holdout_ids: dict[str, list[str]] = {name: [] for name in dataset.domains}
    for ref in holdout:
        holdout_ids[ref.domain].append(ref.id)
    empty = sorted(name for name, size in train_sizes.items() if size == 0)
    if empty:
        raise ValueError(f"domain(s) without training samples: {', '.join(empty)}")
    record = {
        "domains": [
            domain_record(domain, train_sizes[name], len(holdout_ids[name]))
            for name, domain in dataset.domains.items()
        ],
        "holdout": {"fraction": fraction, "seed": seed, "ids": holdout_ids},
    }
    return dataset, record


def run_config(options: TrainOptions, data_record: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"spec": options.data, **data_record},
        "training": {
            "seed": options.seed,
            "precision": options.precision,
            "prior_cache": options.prior_cache,
            "holdout_fraction": options.holdout_fraction,
        },
    }


def check_resume(options: TrainOptions) -> dict[str, Any]:
    """The recorded config of the run to resume; refuses a different data spec or seed."""
    if not has_train_state(options.out):
        raise ValueError(f"--resume: {options.out} holds no resumable checkpoint")
    recorded = read_config(options.out)
    if recorded["data"]["spec"] != options.data:
        raise ValueError(
            f"--resume: the run was trained on --data {recorded['data']['spec']!r}, not {options.data!r}"
        )
    if recorded["training"]["seed"] != options.seed:
        raise ValueError(f"--resume: the run used --seed {recorded['training']['seed']}, not {options.seed}")
    return recorded


# ---------------------------------------------------------------------------------------------- loop


def train_mode(model: UniMMAD) -> None:
    """Training mode for what trains: a BatchNorm whose weights are frozen stays in eval mode, so a run
    that tunes a few modules (model.adapt) cannot move the others through their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            parameter.requires_grad for parameter in module.parameters(recurse=False)
        ):
            module.eval()


def batch_loader(
    dataset: MultiDomainDataset,
    sampler: DomainBalancedSampler,
    batch_size: int,
    skip_batches: int,
    workers: int,
    decoded: DecodedCache | None = None,
) -> Iterable[dict[str, Any]]:
    """This epoch's batches (the sampler's draw), minus the first ``skip_batches`` already trained on;
    gathered from ``decoded`` when given, else decoded by the Dataset."""
    indices = list(sampler)[skip_batches * batch_size :]
    if decoded is not None:
        starts = range(0, len(indices) - batch_size + 1, batch_size)  # drop_last
        return (decoded.collate(indices[start : start + batch_size]) for start in starts)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        collate_fn=collate,
        drop_last=True,
        num_workers=workers,
    )


def train(
    options: TrainOptions,
    base_config: UniMMADConfig | None = None,
    synthetic: SyntheticConfig | None = None,
    allow_random_prior: bool = False,
) -> TrainResult:
    """Train (or resume) the run described by ``options``; returns when done or out of time.

    base_config replaces the named preset (tests use a tiny one); synthetic sizes the ``synthetic``
    entries of the data spec; allow_random_prior lets a config without prior weights train (tests).
    """
    started = time.monotonic()
    if options.resume:
        recorded = check_resume(options)
    elif has_train_state(options.out):
        raise ValueError(f"{options.out} already holds a checkpoint; pass --resume or choose another --out")
    else:
        recorded = None
    config = model_config_for(options, base_config)
    if recorded is not None:
        config = UniMMADConfig.from_dict(recorded["model"])
        if options.epochs is not None:
            config = config.replace(epochs=options.epochs)
        if options.prior_weights is not None:
            config = config.replace(prior_weights=options.prior_weights)
    seed_everything(options.seed)

    sources = parse_data_spec(options.data, synthetic=synthetic)
    if recorded is not None:  # the resumed run keeps its own training set
        options = dataclasses.replace(options, holdout_fraction=recorded["training"]["holdout_fraction"])
    dataset, data_record = build_train_set(sources, config, options.holdout_fraction, options.seed)
    if len(dataset) < config.batch_size:
        raise ValueError(f"{len(dataset)} training samples are fewer than one batch of {config.batch_size}")
    description = run_config(options, data_record)
    model = UniMMAD(config, allow_random_prior=allow_random_prior)
    run = TrainingRun(model, config, dataset, sources, description, model.trainable_parameters())
    return fit(run, options, started)


def fit(run: TrainingRun, options: TrainOptions, started: float) -> TrainResult:
    """The training loop over ``run`` (resumed from ``options.out`` with ``options.resume``); returns
    when the schedule is done or ``options.max_minutes`` after ``started`` (time.monotonic())."""
    config, dataset, sources, description = run.config, run.dataset, run.sources, run.description
    device = torch.device(options.device)
    model = run.model.to(device)
    # No channels_last: Module.to(memory_format=...) refuses the C-MoE's 5-D kernel banks, and converting
    # the 4-D conv weights alone changed the encoder's gradients by ~5 % on CPU (NCHW vs NHWC, same batch;
    # far beyond rounding), which could not be checked on a GPU here.
    decoded = DecodedCache(dataset, device, options.workers) if options.data_cache else None
    optimizer = torch.optim.Adam(run.parameters, lr=config.lr)
    sampler = DomainBalancedSampler(dataset, seed=options.seed)
    steps_per_epoch = len(sampler) // config.batch_size
    max_steps = steps_per_epoch * config.epochs
    lr_plan = CosineWithWarmup(max_steps, config.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_plan)
    progress: dict[str, Any] = {"epoch": 0, "batches_done": 0, "step": 0, "train_seconds": 0.0, "history": []}
    if options.resume:
        restore_weights(options.out, model)
        progress = load_train_state(options.out, optimizer, scheduler)
        logger.info("resuming %s at epoch %d, step %d", options.out, progress["epoch"], progress["step"])
    # The plan is re-made on every (re)start: a new --epochs or --max-minutes re-sizes the rest of the run.
    deadline = started + options.max_minutes * 60 if options.max_minutes else None
    planner = BudgetPlanner(max_steps, deadline)
    lr_plan.planned_steps = max_steps
    cache = PriorCache(model, storage_device=device) if options.prior_cache else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.precision == "bf16")
    logger.info(
        "training %s: %d samples in %d domains, %d steps/epoch, up to %d epochs, batch %d, lr %g, device %s/%s"
        + (", time budget %.1f min (the schedule is sized to it)" if deadline else "%s"),
        config.preset,
        len(dataset),
        len(dataset.domains),
        steps_per_epoch,
        config.epochs,
        config.batch_size,
        config.lr,
        device,
        options.precision,
        options.max_minutes if deadline else "",
    )

    def checkpoint() -> None:
        save_checkpoint(options.out, model, description, optimizer, scheduler, progress)

    out_of_time = False
    last_loss = float("nan")
    planned = lr_plan.planned_steps
    bar = tqdm(total=planned, initial=progress["step"], desc="train", unit="step", dynamic_ncols=True)
    while progress["epoch"] < config.epochs and progress["step"] < planned and not out_of_time:
        epoch = progress["epoch"]
        sampler.set_epoch(epoch)
        train_mode(model)
        monitor = RoutingMonitor()
        epoch_started, epoch_samples, epoch_batches = time.monotonic(), 0, 0
        loss_sum = torch.zeros((), device=device)
        loader = batch_loader(
            dataset, sampler, config.batch_size, progress["batches_done"], options.workers, decoded
        )
        for batch in loader:
            step_started = time.monotonic()
            images = batch["images"].to(device, non_blocking=True)
            count = batch["modality_count"].to(device)
            priors = (
                cache.priors(images, count, list(zip(batch["domains"], batch["ids"])))
                if cache is not None
                else None
            )
            run_progress = progress["step"] / max(planned, 1)
            with autocast:
                output = model(images, count, priors=priors)
                terms = unimmad_loss(output, config, run_progress, batch["loss_weight"].to(device))
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            if progress["step"] % ROUTING_SAMPLE_EVERY == 0:
                monitor.add(output.routes, [batch["domains"][i] for i in output.pair_sample.tolist()])
            loss_sum += terms.total.detach()
            if progress["step"] % LOSS_READ_EVERY == 0:
                last_loss = terms.total.item()
            progress["step"] += 1
            progress["batches_done"] += 1
            epoch_samples += images.shape[0]
            epoch_batches += 1
            planner.record(time.monotonic() - step_started)
            planned = planner.planned(progress["step"])
            lr_plan.planned_steps = planned
            scheduler.step()
            rate = epoch_samples / max(time.monotonic() - epoch_started, 1e-9)
            bar.total = planned
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{last_loss:.4f}",
                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                balance_w=f"{terms.balance_weight:.3f}",
                samples_s=f"{rate:.1f}",
            )
            bar.update()
            if progress["step"] >= planned:
                break
            if deadline is not None and time.monotonic() > deadline:
                out_of_time = True
                break
        progress["train_seconds"] += time.monotonic() - epoch_started
        if epoch_batches:
            last_loss = terms.total.item()
        routing = monitor.summary()
        progress["routing"] = routing
        epoch_complete = progress["batches_done"] >= steps_per_epoch
        schedule_done = progress["step"] >= planned
        if epoch_complete or schedule_done:
            progress["history"].append(
                {
                    "epoch": epoch + 1,
                    "steps": epoch_batches,
                    "mean_loss": loss_sum.item() / max(epoch_batches, 1),
                    "lr": scheduler.get_last_lr()[0],
                    "balance_weight": terms.balance_weight if epoch_batches else None,
                    "seconds": time.monotonic() - epoch_started,
                    "samples_per_second": epoch_samples / max(time.monotonic() - epoch_started, 1e-9),
                    "routing": routing["overall"],
                }
            )
            logger.info("epoch %d: %s", epoch + 1, json.dumps(progress["history"][-1]))
            logger.info("routing after epoch %d: %s", epoch + 1, routing_summary_line(routing))
        if epoch_complete:
            progress["epoch"] += 1
            progress["batches_done"] = 0
        elif out_of_time:
            logger.info("time budget of %s min reached in epoch %d", options.max_minutes, epoch + 1)
        checkpoint()
        (Path(options.out) / ROUTING_FILE).write_text(json.dumps(routing, indent=2) + "\n")
        if (
            options.eval_every != 0
            and (schedule_done or (options.eval_every and progress["epoch"] % options.eval_every == 0))
            and (progress["batches_done"] == 0 or schedule_done)
        ):
            report = evaluate_model(
                model,
                sources,
                batch_size=config.batch_size,
                device=device,
                domains=list(dataset.domains),
                holdout=RecordedHoldout.from_run_config(description),
            )
            eval_dir = Path(options.out) / EVAL_FOLDER
            eval_dir.mkdir(exist_ok=True)
            (eval_dir / f"step_{progress['step']:06d}.json").write_text(json.dumps(report, indent=2) + "\n")
            logger.info("evaluation at step %d: %s", progress["step"], summary_line(report))
    bar.close()
    cache_stats = {}
    if cache is not None:
        cache_stats = {
            "pairs": len(cache),
            "megabytes": cache.nbytes() / 2**20,
            "hits": cache.hits,
            "misses": cache.misses,
        }
        logger.info("prior cache: %s", json.dumps(cache_stats))
    return TrainResult(
        out=Path(options.out),
        epochs_done=progress["epoch"],
        step=progress["step"],
        finished=progress["step"] >= planned,
        last_loss=last_loss,
        history=progress["history"],
        cache_stats=cache_stats,
    )
