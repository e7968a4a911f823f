"""The fast training path (fused C-MoE kernels, batches from the DecodedCache, prior cache rows) trains
exactly like the reference path (grouped kernels, decoding Dataset + collate, prior recomputed)."""

from __future__ import annotations

import pytest
import torch

from model.data import SyntheticConfig, parse_data_spec
from model.data.loader import DecodedCache, MultiDomainDataset, collate
from model.losses import unimmad_loss
from model.prior_cache import PriorCache
from model.train import TrainOptions, model_config_for, scaled_lr
from model.unimmad import UniMMAD


def one_step(model: UniMMAD, config, batch: dict, kernel_mode: str, cache: PriorCache | None):
    """Loss and every parameter's gradient of one training step."""
    model.zero_grad(set_to_none=True)
    count = batch["modality_count"]
    priors = (
        None
        if cache is None
        else cache.priors(batch["images"], count, list(zip(batch["domains"], batch["ids"])))
    )
    output = model(batch["images"], count, priors=priors, kernel_mode=kernel_mode)
    loss = unimmad_loss(output, config, 0.0, batch["loss_weight"]).total
    loss.backward()
    return loss.detach(), {
        name: parameter.grad for name, parameter in model.named_parameters() if parameter.requires_grad
    }


def test_fast_path_gives_the_reference_loss_and_gradients(tiny_config) -> None:
    # 64 px, not the folder's 32 px: at 32 px the FCM's code is 1x1 and its norms amplify rounding ~1e14x.
    config = tiny_config.replace(image_size=64)
    torch.manual_seed(0)
    model = UniMMAD(config, allow_random_prior=True).train()
    sizes = SyntheticConfig(
        size=64, train_per_domain=2, test_normal_per_domain=0, test_defective_per_domain=0
    )
    dataset = MultiDomainDataset(
        parse_data_spec("synthetic", synthetic=sizes), "train", 64, mean=config.mean, std=config.std
    )
    order = [0, 3, 5, 6]  # one sample of each domain: 1 to 4 modalities
    reference = one_step(model, config, collate([dataset[i] for i in order]), "grouped", None)
    fast = one_step(model, config, DecodedCache(dataset).collate(order), "fused", PriorCache(model))

    torch.testing.assert_close(fast[0], reference[0], rtol=1e-5, atol=1e-6)
    assert fast[1].keys() == reference[1].keys()
    # Float rounding, measured against the largest gradient: a bias in front of a BatchNorm has a gradient
    # that is zero up to rounding, so its own relative error means nothing.
    scale = max(grad.abs().max() for grad in reference[1].values())
    for name, want in reference[1].items():
        torch.testing.assert_close(fast[1][name], want, rtol=1e-3, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize(
    ("batch_size", "lr", "expected"), [(None, None, 1e-3), (32, None, 2e-3), (32, 5e-4, 5e-4)]
)
def test_a_larger_batch_scales_the_learning_rate_by_its_square_root(
    tiny_config, batch_size, lr, expected
) -> None:
    base = tiny_config.replace(batch_size=8, lr=1e-3)
    options = TrainOptions(data="synthetic", out="unused", batch_size=batch_size, lr=lr)
    assert model_config_for(options, base).lr == pytest.approx(expected)
    assert scaled_lr(1e-3, 8, 8) == 1e-3
