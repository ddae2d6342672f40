"""The device and accelerate's Accelerator a run trains on, checked against the plan's target."""

from __future__ import annotations

from dbspec.plan.model import Plan


class DeviceError(Exception):
    """The plan was compiled for a device this machine lacks."""


def make_accelerator(plan: Plan):
    """accelerate owns devices, mixed precision (autocast, fp16 grad scaling) and multi-process wrapping."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one global state per process; a process may run several plans (notebooks, tests,
    # `dbspec sample` after a run), so each run starts from a fresh one. The distributed state stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    from dbspec.runtime.distributed import accelerator_kwargs, enable_fsdp_on_cpu

    want = plan.target.device
    accelerator = Accelerator(
        mixed_precision=plan.precision.mixed, cpu=want == "cpu", **accelerator_kwargs(plan)
    )
    enable_fsdp_on_cpu(accelerator, plan)
    got = accelerator.device.type
    if got != want:
        raise DeviceError(
            f"the plan was compiled for {plan.target.description or want}, but this machine runs "
            f"on {got}: compile it here with `dbspec plan` (or `dbspec run spec.toml`)"
        )
    if accelerator.num_processes != plan.schedule.processes:
        raise DeviceError(
            f"the plan was compiled for {plan.schedule.processes} process(es), but "
            f"{accelerator.num_processes} are running: compile it with the same launcher"
        )
    # kohya's full_fp16: fp16 gradients need an unscaling grad scaler; still-scaled gradients (its fused
    # hooks, fp16 or fp32 weights) a scaler that leaves them so
    if plan.precision.weights == "fp16" or plan.precision.fp16_gradients != "unscaled":
        from dbspec.runtime.fp16_weights import use_fp16_weights_scaler

        use_fp16_weights_scaler(accelerator, plan.precision.fp16_gradients)
    return accelerator
