"""Parameter and MAC counts of a UniMMAD config, computed on the meta device (instant, no weights needed).

Conventions (spec 10): params_total counts every parameter built (the frozen prior included; layers that
never influence the output are not built); params_active counts each C-MoE base-expert bank at K/nb
(only the K composed leader kernels are applied per sample, the paper's "ActPar" convention);
gmacs = FlopCounterMode flops / 2 / 1e9 for one sample (batch 1) with the given number of modalities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.config import UniMMADConfig
from model.unimmad import UniMMAD

GIGA = 1e9
FLOPS_PER_MAC = 2


def build_meta_model(config: UniMMADConfig) -> UniMMAD:
    """The model's structure without any weights: meta device, no weight files read."""
    with torch.device("meta"):
        return UniMMAD(config.replace(prior_weights=None, encoder_weights=None), allow_random_prior=True)


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def inactive_bank_parameters(model: UniMMAD) -> int:
    """Base-bank parameters one sample does not use: each bank counted at K/nb instead of in full."""
    config = model.config
    banks = sum(bank.numel() for cmoe in model.c_moes for bank in cmoe.expert_bases)
    return round(banks * (1 - config.top_k / config.base_experts))


def breakdown_modules(model: UniMMAD) -> dict[str, nn.Module]:
    """The top-level parts reported separately, by their parameter-name prefix."""
    parts: dict[str, nn.Module] = {
        "prior": model.prior,
        "stem": model.stem,
        "encoder": model.encoder,
        "fcm": model.fcm,
    }
    parts.update({f"c_moes.{level}": cmoe for level, cmoe in enumerate(model.c_moes)})
    return parts


def count_macs(model: UniMMAD, modalities: int) -> tuple[int, dict[str, int]]:
    """MACs of one forward of one sample with `modalities` slots: total and per top-level part.

    Counted with the official grouped routed conv (spec 10), not the training default: the fused one
    computes the same output with fewer MACs, so its count would not be comparable with the paper's."""
    size = model.config.image_size
    images = torch.zeros(1, modalities, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images, kernel_mode="grouped")
    flops_by_module = counter.get_flop_counts()
    root = type(model).__name__
    per_part = {
        name: sum(flops_by_module.get(f"{root}.{name}", {}).values()) // FLOPS_PER_MAC
        for name in breakdown_modules(model)
    }
    return counter.get_total_flops() // FLOPS_PER_MAC, per_part


def model_complexity(config: UniMMADConfig, modalities: list[str]) -> dict[str, Any]:
    """The `model info` report: counts, GMACs, input size and a per-module breakdown."""
    model = build_meta_model(config)
    total = parameter_count(model)
    macs, macs_per_part = count_macs(model, len(modalities))
    return {
        "preset": config.preset,
        "modalities": modalities,
        "input_size": [len(modalities), 3, config.image_size, config.image_size],
        "params_total": total,
        "params_active": total - inactive_bank_parameters(model),
        "params_trainable": sum(parameter.numel() for parameter in model.trainable_parameters()),
        "gmacs": macs / GIGA,
        "modules": {
            name: {"params": parameter_count(module), "gmacs": macs_per_part[name] / GIGA}
            for name, module in breakdown_modules(model).items()
        },
    }
