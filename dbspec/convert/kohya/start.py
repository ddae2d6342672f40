"""kohya's `--initial_step`, `--initial_epoch` and `--skip_until_initial_step` (train_network.py and the
scripts built on it) to `schedule.start_step` / `start_epoch` / `skip_data` / `start_lr`.

train_network.py: initial_step wins over initial_epoch (whose step is (epoch - 1) x steps per epoch); nothing
happens unless that step is above 0. Without skip_until_initial_step only the epoch moves: the loop starts
at epoch step // steps per epoch with the step counter at 0 and ends with the last epoch. With it the batches
before the step are skipped and the counter starts there. Either way the LR scheduler starts at its first
step (only --resume restores one).
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

Args = dict[str, Legacy]


def map_start(a: Args, steps_per_epoch: int | None, conv: Conversion, processes: int = 1) -> None:
    if (
        "initial_step" not in a
    ):  # scripts without the options (train_db.py, sdxl_train.py): argparse refuses them
        return
    step, epoch, skip = a["initial_step"], a["initial_epoch"], a["skip_until_initial_step"]
    start: Legacy | None = None
    if step.value is not None:
        if epoch.value is not None:
            conv.ignored(epoch, "initial_step is given, and kohya takes it instead")
        if step.value > 0:
            conv.mapped(step, ("schedule", "start_step"), step.value)
            start = step
        else:
            conv.inert(step, "a start at step 0 or below is the beginning")
    elif epoch.value is not None:
        if epoch.value > 1 and processes > 1:
            conv.differs(
                epoch,
                f"with {processes} processes kohya's initial_epoch step divides the per-process batches "
                f"by the process count again ((initial_epoch - 1) x ceil(batches / {processes} / "
                "accumulation)); dbspec starts at the epoch's first step",
                ("schedule", "start_epoch"),
                epoch.value,
            )
            start = epoch
        elif epoch.value > 1:
            conv.mapped(epoch, ("schedule", "start_epoch"), epoch.value)
            start = epoch
        else:
            conv.inert(epoch, "epoch 1 or below is the beginning")
    if start is None:
        if skip.value:
            conv.inert(skip, "kohya skips nothing without initial_step or initial_epoch")
        return
    conv.put(
        ("schedule", "start_lr"),
        "first",
        f"kohya: {start.key} leaves the LR scheduler at its first step (only --resume restores one)",
    )
    if not skip.value:
        conv.record(
            skip, "mapped", "schedule.skip_data", "false: only the epoch moves, the counter starts at 0"
        )
        return
    accumulation = a["gradient_accumulation_steps"].value
    if start.key == "initial_epoch" and accumulation == 1:
        # (epoch - 1) x steps per epoch batches skip whole epochs: kohya's counter is left at 0, as without
        conv.record(
            skip,
            "mapped",
            "schedule.skip_data",
            "false: from an epoch's first batch kohya's step counter stays at 0, as without skipping",
        )
        return
    conv.mapped(skip, ("schedule", "skip_data"), True)
    _skip_differences(start, skip, accumulation, steps_per_epoch, conv)


def _skip_differences(
    start: Legacy, skip: Legacy, accumulation: int, steps_per_epoch: int | None, conv: Conversion
) -> None:
    """Where train_network.py's skip arithmetic miscounts, dbspec counts as an uninterrupted run would."""
    if accumulation > 1:
        conv.differs(
            skip,
            f"with gradient_accumulation_steps = {accumulation} kohya divides the skipped micro-batches by "
            "the optimizer steps per epoch and leaves its step counter at a micro-batch count; dbspec skips "
            f"{accumulation} batches per step and counts optimizer steps",
        )
        return
    if steps_per_epoch and start.value >= steps_per_epoch:
        conv.differs(
            skip,
            f"initial_step {start.value} lies past the first epoch ({steps_per_epoch} steps): kohya skips to "
            f"the same batch but restarts its step counter at {start.value % steps_per_epoch} (the step "
            f"within the epoch); dbspec counts from {start.value}",
        )
