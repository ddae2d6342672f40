"""A run that starts later (plan.schedule.start; kohya's initial_step, initial_epoch and
skip_until_initial_step): the step counter, the data order's position and the LR schedule set before the first
step of a fresh run (a resumed run restores all three from its checkpoint instead)."""

from __future__ import annotations

import warnings

from dbspec.plan.model import SchedulePlan, StartPlan


def last_step(s: SchedulePlan) -> int:
    """The step counter's value when the run ends: the run's steps, or earlier when a run that starts at a
    later epoch without skipping data runs out of epochs first (kohya's loop over the remaining epochs)."""
    return s.start.end_step if s.start is not None else s.total_steps


def start_later(run, start: StartPlan) -> None:
    """Put a fresh run where the plan starts it: the counter, the sampler at (epoch, batches already taken),
    the LR schedule stepped `lr_step` times (kohya leaves its scheduler at its first step: lr_step = 0)."""
    run.step = start.step
    run.sampler.load_state_dict({"epoch": start.epoch, "position": start.position})
    with warnings.catch_warnings():
        # torch warns that the scheduler steps before the optimizer did: here it only catches up
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start.lr_step):
            run.lr_scheduler.step()
