"""Step-based training schedules: warm-up + cosine learning rate, balance-loss annealing, time budgets.

Everything is a function of ``progress = step / planned_steps``, so a run always ends annealed, whether
it runs its configured epochs or stops at a wall-clock budget. The official code steps a cosine per epoch
over the configured epochs and anneals the balance weight over a hard-coded 200 epochs (spec 6.2, 7.1);
for its own 200-epoch recipe that is the same curve, but a shorter run would stop mid-cosine with the
balance weight still near 1 (the gates then stay uniform). With a time budget the planned step count is
re-estimated from the measured step time, so the cosine reaches zero when the budget runs out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

# Step times are averaged over roughly this many recent steps (exponential moving average).
STEP_TIME_WINDOW = 50
# Steps timed before the first estimate (the first ones fill the prior cache and are slower).
MIN_TIMED_STEPS = 5


@dataclass
class CosineWithWarmup:
    """LR factor of LambdaLR: linear warm-up to 1 over ``warmup_fraction`` of the planned steps, then a
    cosine to 0 at ``planned_steps``. A callable object (not a lambda), so LambdaLR.state_dict() saves
    the plan and a resumed run continues the same curve."""

    planned_steps: int
    warmup_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.planned_steps, self.warmup_fraction)


def lr_factor(step: int, planned_steps: int, warmup_fraction: float) -> float:
    """Multiplier of the base LR at 0-based ``step``: warm-up (step+1)/W for step < W, then
    0.5 * (1 + cos(pi * (step - W) / (planned - W))), and 0 from ``planned_steps`` on."""
    planned = max(planned_steps, 1)
    warmup = math.floor(warmup_fraction * planned)
    if step < warmup:
        return (step + 1) / warmup
    if step >= planned:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(planned - warmup, 1)))


def balance_weight(progress: float, anneal_fraction: float = 1.0, floor: float = 0.001) -> float:
    """Linear annealing of the balance loss over the run: max(1 - progress / anneal_fraction, floor)."""
    return max(1.0 - progress / anneal_fraction, floor)


class BudgetPlanner:
    """How many steps fit in a wall-clock budget, re-estimated from the measured time per step.

    ``planned(step)`` = min(max_steps, step + remaining_seconds / seconds_per_step); without a deadline it
    is always ``max_steps``. Time spent outside steps (checkpoints, evaluations) simply shrinks the
    remaining time, so the plan stays honest.
    """

    def __init__(self, max_steps: int, deadline: float | None, clock=time.monotonic) -> None:
        self.max_steps = max_steps
        self.deadline = deadline
        self.clock = clock
        self.seconds_per_step: float | None = None
        self.timed_steps = 0

    def record(self, seconds: float) -> None:
        """Add one step's duration to the moving average."""
        self.timed_steps += 1
        if self.seconds_per_step is None:
            self.seconds_per_step = seconds
        else:
            alpha = 1 / min(self.timed_steps, STEP_TIME_WINDOW)
            self.seconds_per_step += alpha * (seconds - self.seconds_per_step)

    def planned(self, step: int) -> int:
        """Total steps the run should reach, given that ``step`` steps are done."""
        if self.deadline is None or self.seconds_per_step is None or self.timed_steps < MIN_TIMED_STEPS:
            return self.max_steps
        remaining = max(self.deadline - self.clock(), 0.0)
        return min(self.max_steps, step + math.floor(remaining / self.seconds_per_step))
