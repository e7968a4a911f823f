"""Checkpoints round-trip weights, config, optimiser, schedule and RNG; the prior is checked by sha256."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import CheckpointError, load_checkpoint, load_train_state, save_checkpoint
from model.unimmad import UniMMAD


def trained_model(config, steps: int = 2):
    torch.manual_seed(0)
    model = UniMMAD(config, allow_random_prior=config.prior_weights is None)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    images = torch.randn(2, 2, 3, config.image_size, config.image_size)
    for _ in range(steps):
        output = model(images, torch.tensor([2, 1]))
        loss = sum(prediction.square().mean() for prediction in output.predictions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler, images


def test_round_trip_weights_config_optimiser_and_rng(tiny_config, tmp_path) -> None:
    model, optimizer, scheduler, images = trained_model(tiny_config)
    save_checkpoint(
        tmp_path, model, {"data": {"spec": "synthetic"}}, optimizer, scheduler, {"epoch": 2, "step": 7}
    )
    expected_draw = torch.rand(3)

    loaded, config = load_checkpoint(tmp_path)
    assert config["data"]["spec"] == "synthetic" and config["model"] == tiny_config.to_dict()
    assert not loaded.training
    model.eval()
    with torch.no_grad():
        for got, want in zip(loaded(images).predictions, model(images).predictions):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    fresh_optimizer = torch.optim.Adam(loaded.trainable_parameters(), lr=1e-3)
    fresh_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_optimizer, T_max=4)
    torch.manual_seed(123)  # scrambled; the checkpoint's RNG state must come back
    progress = load_train_state(tmp_path, fresh_optimizer, fresh_scheduler)
    assert progress == {"epoch": 2, "step": 7}
    assert torch.equal(torch.rand(3), expected_draw)
    assert fresh_scheduler.last_epoch == 2 and fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    saved, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, state in saved["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(restored["state"][index][name], value, rtol=0, atol=0)


def test_no_pickle_and_prior_left_out_when_it_has_a_file(tiny_config, tmp_path) -> None:
    torch.manual_seed(0)
    prior_file = tmp_path / "prior.safetensors"
    random_prior = UniMMAD(tiny_config, allow_random_prior=True).prior
    save_file({k: v.contiguous() for k, v in random_prior.state_dict().items()}, str(prior_file))
    config = tiny_config.replace(prior_weights=str(prior_file))
    model, optimizer, scheduler, images = trained_model(config, steps=1)
    run = tmp_path / "run"
    save_checkpoint(run, model, {"data": {}}, optimizer, scheduler, {"epoch": 1})
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "model.safetensors",
        "train_state.json",
        "train_state.safetensors",
    ]
    recorded = json.loads((run / "config.json").read_text())["prior"]
    assert recorded["source"] == str(prior_file) and len(recorded["sha256"]) == 64

    loaded, _ = load_checkpoint(run)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(images).predictions[2], model(images).predictions[2], rtol=0, atol=0
        )

    moved = tmp_path / "moved.safetensors"
    prior_file.rename(moved)
    assert load_checkpoint(run, prior_weights=str(moved))[0] is not None
    state = random_prior.state_dict()
    first = next(iter(state))
    save_file({k: (v + 1 if k == first else v).contiguous() for k, v in state.items()}, str(moved))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(run, prior_weights=str(moved))


def test_unreadable_checkpoints_fail_with_one_line(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
