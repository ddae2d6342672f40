"""Runs that start later (schedule.start_step / start_epoch / skip_data / start_lr; kohya's initial_step,
initial_epoch and skip_until_initial_step, as train_network.py resolves them): the plan's `StartPlan`."""

from __future__ import annotations

from dbspec.plan.model import SchedulePlan, StartPlan
from dbspec.spec.model import Schedule


def requested_start(s: Schedule, steps_per_epoch: int) -> int:
    """The start step asked for: start_step, or start_epoch's first step (1 = the first epoch, step 0)."""
    if s.start_step:
        return s.start_step
    return max(s.start_epoch - 1, 0) * steps_per_epoch


def start_plan(s: Schedule, plan: SchedulePlan) -> StartPlan | None:
    """Where the run starts; None when it starts at the beginning. The caller has checked the start is
    below the run's steps (DBS393).

    With skip_data the step counter starts at the start step and the data at the batch an uninterrupted run
    would take next (the epoch's batches taken `accumulation` per optimizer step, as the loop takes them).
    Without it only the epoch moves (kohya: "only epoch no is skipped"): the data starts at the first batch
    of the epoch holding the start step, the counter at 0, and the run ends at its last step or when its
    last epoch ends, whichever comes first (kohya's loop over the remaining epochs).
    """
    start = requested_start(s, plan.steps_per_epoch)
    if start == 0:
        return None
    epoch, within = divmod(start, plan.steps_per_epoch)
    if s.skip_data:
        step, position, end = start, within * plan.accumulation, plan.total_steps
    else:
        step, position = 0, 0
        end = min(plan.total_steps, (plan.epochs - epoch) * plan.steps_per_epoch)
    return StartPlan(
        requested=start,
        skip_data=s.skip_data,
        step=step,
        epoch=epoch,
        position=position,
        lr_step=start if s.start_lr == "start_step" else 0,
        end_step=end,
    )
