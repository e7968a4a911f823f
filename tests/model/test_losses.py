"""Losses (spec 6): focal cosine values and gradient, per-sample vs HEAD reduction, balance annealing."""

from __future__ import annotations

import pytest
import torch

from model.config import PRESETS
from model.losses import decompression_loss, focal_cosine, unimmad_loss
from model.schedule import balance_weight
from model.unimmad import UniMMADOutput


def rotated(distance: float, side: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A prior/prediction pair at cosine distance `distance` everywhere: [1, 2, side, side] each."""
    angle = torch.acos(torch.tensor(1 - distance))
    prior = torch.zeros(1, 2, side, side)
    prior[:, 0] = 1
    prediction = torch.stack([torch.cos(angle), torch.sin(angle)]).view(1, 2, 1, 1).expand(1, 2, side, side)
    return prior, prediction.clone()


def output_with_pair_distances(
    distances: list[float], pair_sample: list[int], pair_slot: list[int], batch: int, slots: int
) -> UniMMADOutput:
    """Every level reproduces the same per-pair distances."""
    priors, predictions = zip(*(rotated(d) for d in distances))
    prior, prediction = torch.cat(priors), torch.cat(predictions)
    present = torch.zeros(batch, slots, dtype=torch.bool)
    present[pair_sample, pair_slot] = True
    return UniMMADOutput(
        [prior] * 3,
        [prediction] * 3,
        torch.tensor(pair_sample),
        torch.tensor(pair_slot),
        present,
        [],
        torch.tensor(0.25),
    )


@pytest.mark.parametrize(("distance", "expected"), [(0.0, 0.0), (0.5, 0.125), (1.0, 1.0), (2.0, 8.0)])
def test_focal_cosine_is_distance_cubed_for_gamma_2(distance: float, expected: float) -> None:
    prior, prediction = rotated(distance)
    assert focal_cosine(prior, prediction, 2.0).item() == pytest.approx(expected, abs=1e-5)


def test_focal_weight_is_a_stop_gradient() -> None:
    prior, prediction = rotated(0.5)
    prediction.requires_grad_(True)
    focal_cosine(prior, prediction, 2.0).backward()
    focal_grad = prediction.grad.clone()
    prediction.grad = None
    (1 - torch.cosine_similarity(prior, prediction, dim=1)).mean().backward()
    torch.testing.assert_close(focal_grad, 0.25 * prediction.grad)  # d(A * sg(A)^2) = A^2 dA, A = 0.5


def test_per_sample_reduction_weights_each_pair_by_its_own_sample() -> None:
    # samples: 0 has two modalities, 1 has one; pairs slot-major (0,0) (1,0) (0,1)
    output = output_with_pair_distances([1.0, 0.5, 1.0], [0, 1, 0], [0, 0, 1], batch=2, slots=2)
    per_pair = [3 * 1.0, 3 * 0.125, 3 * 1.0]  # summed over 3 levels
    weights = torch.tensor([1.0, 10.0])
    expected = (1 * per_pair[0] + 10 * per_pair[1] + 1 * per_pair[2]) / (2 * 2)
    assert decompression_loss(output, weights).item() == pytest.approx(expected, rel=1e-5)
    expected_head = sum(per_pair) / 3 * 5.5
    assert decompression_loss(output, weights, reduction="head").item() == pytest.approx(
        expected_head, rel=1e-5
    )


def test_reductions_agree_without_weights_when_all_samples_are_complete() -> None:
    output = output_with_pair_distances([1.0, 0.5, 0.2, 0.7], [0, 1, 0, 1], [0, 0, 1, 1], batch=2, slots=2)
    per_sample = decompression_loss(output, torch.tensor([2, 2]))  # integer weights are accepted
    head = decompression_loss(output, torch.tensor([2, 2]), reduction="head")
    torch.testing.assert_close(per_sample, head)


def test_bad_weights_and_reduction_are_rejected() -> None:
    output = output_with_pair_distances([1.0], [0], [0], batch=1, slots=1)
    with pytest.raises(ValueError, match=r"shape \[1\]"):
        decompression_loss(output, torch.ones(3))
    with pytest.raises(ValueError, match="unknown loss reduction 'sum'"):
        decompression_loss(output, reduction="sum")


@pytest.mark.parametrize(
    ("progress", "fraction", "weight"),
    [
        (0, 1, 1.0),
        (0.25, 1, 0.75),
        (0.5, 1, 0.5),
        (0.995, 1, 0.005),
        (1, 1, 0.001),
        (0.15, 0.3, 0.5),
        (0.3, 0.3, 0.001),
    ],
)
def test_balance_weight_anneals_linearly_to_the_floor_over_its_share_of_the_run(
    progress: float, fraction: float, weight: float
) -> None:
    assert balance_weight(progress, fraction, 0.001) == pytest.approx(weight)


def test_total_loss_adds_the_annealed_balance_term() -> None:
    output = output_with_pair_distances([0.5], [0], [0], batch=1, slots=1)
    terms = unimmad_loss(output, PRESETS["paper"], progress=0.5)
    assert terms.balance_weight == pytest.approx(0.5)
    assert terms.decompression.item() == pytest.approx(3 * 0.125, rel=1e-5)
    assert terms.total.item() == pytest.approx(3 * 0.125 + 0.5 * 0.25, rel=1e-5)
