"""Step-based schedules: warm-up + cosine to zero at the planned end, and a plan sized to a time budget."""

from __future__ import annotations

import itertools

import pytest

from model.schedule import MIN_TIMED_STEPS, BudgetPlanner, CosineWithWarmup, lr_factor


def test_lr_warms_up_linearly_then_follows_a_cosine_to_zero_at_the_planned_end() -> None:
    factors = [lr_factor(step, 100, 0.1) for step in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5)  # half-way through the cosine part
    assert factors[99] < 1e-3 and factors[100] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))  # monotone after warm-up


def test_the_schedule_object_keeps_its_plan_through_a_state_dict() -> None:
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(40, 0.0))
    scheduler.lr_lambdas[0].planned_steps = 20
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, CosineWithWarmup(40, 0.0))
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.lr_lambdas[0].planned_steps == 20 and fresh.last_epoch == 10
    assert fresh.get_last_lr() == pytest.approx([0.5])


def test_a_time_budget_plans_the_steps_that_fit_and_ends_the_schedule_with_it() -> None:
    now = [0.0]
    planner = BudgetPlanner(max_steps=10_000, deadline=60.0, clock=lambda: now[0])
    assert planner.planned(0) == 10_000  # nothing timed yet
    for step in range(MIN_TIMED_STEPS):
        now[0] += 0.5
        planner.record(0.5)
    # 57.5 s left at 0.5 s per step: 115 more steps.
    assert planner.planned(MIN_TIMED_STEPS) == MIN_TIMED_STEPS + 115
    now[0] = 60.0
    assert planner.planned(120) == 120  # no time left: the plan ends here, so the LR is already 0
    assert lr_factor(120, planner.planned(120), 0.0) == 0.0


def test_without_a_deadline_the_plan_is_the_configured_epochs() -> None:
    planner = BudgetPlanner(max_steps=300, deadline=None)
    for _ in range(20):
        planner.record(1.0)
    assert planner.planned(20) == 300
