"""The training loop: `train` = `setup` (setup.py) then `fit`, which reads top to bottom. Every choice was
made in the plan."""

from __future__ import annotations

import hashlib
import contextlib
import math
import signal
import time
from pathlib import Path

import attrs
import torch
from rich.console import Console

from dbspec.plan.io import legacy_run_hashes, plan_to_json, run_hash
from dbspec.plan.model import Plan
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime import faults
from dbspec.runtime.compiling import eager
from dbspec.runtime.data import BucketBatchSampler
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.distributed import full_optimizer_state, gathered
from dbspec.runtime.dtypes import mixed_dtype
from dbspec.runtime.evaluate import Evaluator
from dbspec.runtime.logs import MetricsLog, train_progress
from dbspec.runtime.max_norm import apply_max_norm, max_norm_metrics
from dbspec.runtime.mixed_kinds import draws_blocks
from dbspec.runtime.wandb_log import require_wandb, wandb_config
from dbspec.runtime.optim import averaged_weights, step_size_metrics
from dbspec.runtime.optim_split import chunk_step_sizes, step_first_chunk
from dbspec.runtime.prepare import set_train_mode
from dbspec.runtime.text_mode import adapters_eval
from dbspec.runtime.generate import validate
from dbspec.runtime.setup import Run, freeze_text_encoders, setup
from dbspec.runtime.start import last_step
from dbspec.runtime.state import TrainState, gather_generators
from dbspec.runtime.step import run_batch
from dbspec.runtime.weights import save_weights, write_final


@attrs.frozen
class RunResult:
    status: str  # "finished" | "interrupted"
    steps: int
    output: str
    final: str  # folder of the final weights ("" when interrupted)
    last_checkpoint: str
    seconds: float
    steps_per_second: float
    losses: tuple[float, ...]  # loss of every optimizer step this process ran
    components: object = attrs.field(default=None, eq=False, repr=False)  # the trained models (keep_models)


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float, files: tuple[str, ...]):
        self.step, self.value, self.files = step, value, files
        super().__init__(f"loss became {value} at step {step}; batch files: {', '.join(files)}")


def train(
    plan: Plan,
    *,
    overwrite: bool = False,
    resume: bool = False,
    console=None,
    stop_after: int | None = None,
    keep_models: bool = False,
) -> RunResult:
    """Run the plan. `stop_after` ends early after that many steps as if interrupted; `keep_models`
    returns the trained models in the result (for callers that go on using them, and tests)."""
    started = time.perf_counter()
    if plan.logging.wandb:
        require_wandb()  # DBS379 before anything loads, not at the first step
    accelerator = make_accelerator(plan)
    plan_json = plan_to_json(plan)
    # With several processes only the first writes outputs; it holds the output folder's
    # lock for the whole run.
    claim = (
        ckpt.prepare_output(
            Path(plan.checkpoints.dir),
            plan_json,
            run_hash(plan),
            overwrite=overwrite,
            resume=resume,
            legacy=legacy_run_hashes(plan),
        )
        if accelerator.is_main_process
        else contextlib.nullcontext()
    )
    with claim:
        for note in getattr(claim, "recovered", ()):
            (console or Console(stderr=True)).print(f"note: {note}", markup=False, highlight=False)
        run = setup(plan, accelerator, plan_json, resume=resume, console=console)
        return fit(run, started, console=console, stop_after=stop_after, keep_models=keep_models)


def fit(run: Run, started: float, *, console, stop_after: int | None, keep_models: bool) -> RunResult:
    """Step `run` from `run.step` to the plan's last step: train, log, validate, checkpoint; stop early
    (after a checkpoint) on Ctrl-C, SIGTERM or `stop_after`; then write the final weights."""
    plan, s, out = run.plan, run.plan.schedule, run.out
    step = run.step
    log = MetricsLog(
        out,
        plan.logging,
        start_step=step,
        enabled=run.main,
        wandb_config=wandb_config(plan) if plan.logging.wandb and run.main else None,
    )
    interrupted = _InterruptFlag()
    losses: list[float] = []
    last_checkpoint = ""
    evaluator = (
        Evaluator(plan, out, run.parts.device, record=run.eval_record)
        if plan.evaluation.metrics and run.main
        else None
    )
    scores: dict = {}  # the latest evaluation's metrics row, for the checkpoint saved at its step

    end = last_step(s)  # the run's steps, or where a later start's epochs run out (schedule.start)
    with interrupted, train_progress(console, end, step) as progress:
        while step < end:
            step_loss, terms = _optimizer_step(run, step)
            step += 1
            if run.ema is not None:
                run.ema.update(step)
            losses.append(step_loss)
            if step == s.text_encoder_stop_step:
                freeze_text_encoders(run)
            if run.parts.tokens is not None and step == run.plan.pivotal.stop_step:
                run.parts.tokens.stop()
            lr = float(run.lr_scheduler.get_last_lr()[0])  # a tensor under AdafactorSchedule (RMS-scaled)
            log.write(
                step,
                {
                    "loss": step_loss,
                    **terms,
                    "lr": lr,
                    **step_size_metrics(run.optimizer),
                    **chunk_step_sizes(run.optimizer),
                    "epoch": run.sampler.epoch,
                    "seconds": time.perf_counter() - started,
                },
            )
            progress.update(step=step, loss=step_loss, lr=lr)

            # schedule-free optimizers: validation, evaluation and checkpoints see the averaged weights (one
            # eval/train switch per step on every process, as kohya switches around sampling and saving)
            with averaged_weights(run.optimizer, plan.optimizer):
                if step in plan.validation.steps and run.main:
                    _validate(run, step, log)
                if evaluator is not None and step in plan.evaluation.steps:
                    scores = {"step": step, **_evaluate(run, evaluator, step, log)}
                stopping = _all_agree(
                    run.accelerator, interrupted.requested or (stop_after is not None and step >= stop_after)
                )
                if step in plan.checkpoints.steps or stopping:
                    generators = gather_generators(run)  # all processes take part
                    # FSDP: every process gathers the whole weights and optimizer state; the first writes them
                    with gathered(run.sharded):
                        optimizer_state = full_optimizer_state(run.optimizer) if run.sharded else None
                        if run.main:
                            last_checkpoint = str(
                                _save_checkpoint(
                                    run,
                                    step,
                                    scores if scores.get("step") == step else {},
                                    optimizer_state,
                                    generators,
                                )
                            )
                    run.accelerator.wait_for_everyone()  # no process runs ahead of a checkpoint being written
            if stopping and step < end:
                log.close()
                _write_report(run, console)
                return _result(
                    "interrupted",
                    plan,
                    step,
                    "",
                    last_checkpoint,
                    started,
                    losses,
                    run.comps if keep_models else None,
                )

    final = out / "final"
    run.accelerator.wait_for_everyone()
    with gathered(run.sharded):  # FSDP: whole weights on every process (the first writes them)
        if run.main:
            # Ctrl-C or SIGTERM now waits for the final weights (a second Ctrl-C does not)
            with _InterruptFlag(), averaged_weights(run.optimizer, plan.optimizer):
                write_final(final, run.pipeline, run.comps, plan, run.ema)
    log.close()
    _write_report(run, console)
    return _result(
        "finished",
        plan,
        step,
        str(final),
        last_checkpoint,
        started,
        losses,
        run.comps if keep_models else None,
    )


def _optimizer_step(run: Run, step: int) -> tuple[float, dict[str, float]]:
    """One optimizer step over up to `accumulation` micro-batches; returns its mean loss and loss terms."""
    accelerator, optimizer = run.accelerator, run.optimizer
    batches = _next_step_batches(run.sampler, run.plan.schedule.accumulation)
    optimizer.zero_grad(set_to_none=True)
    step_loss, terms = 0.0, {}
    for index, batch in enumerate(batches):
        if run.plan.schedule.noise_streams == "micro_batch":
            reseed_micro_batch(run.generator, run.plan, step, index, accelerator.process_index)
        if draws_blocks(run.plan.adapter):  # the block each DyLoRA layer trains in this micro-batch
            from dbspec.runtime.dylora import draw_blocks

            draw_blocks([run.comps.unet, *run.comps.text_encoders], run.generator)
        faults.reached("micro_batch")
        with accelerator.autocast():
            result = run_batch(run.parts, batch, step=step, epoch=run.sampler.epoch + 1)
        loss = faults.poisoned("loss", result.loss)
        value = loss.item()  # CPU-GPU sync point, once per micro-batch: catches NaN early
        if not math.isfinite(value):
            raise NonFiniteLoss(step + 1, value, result.files)
        accelerator.backward(loss / len(batches))
        if index < len(batches) - 1 and run.plan.optimizer.split_first_step == "micro_batch":
            step_first_chunk(optimizer)  # kohya's first fused optimizer group steps every micro-batch
        step_loss += value / len(batches)
        terms = {k: terms.get(k, 0.0) + float(v) / len(batches) for k, v in result.terms.items()}
        if run.norm_modules and index < len(batches) - 1:  # kohya rescales after every micro-batch too
            apply_max_norm(run.norm_modules, run.plan.adapter.max_norm)
    o = run.plan.optimizer
    if o.max_grad_norm > 0 and run.plan.distributed.deepspeed is None:  # DeepSpeed clips
        accelerator.unscale_gradients(optimizer)  # a no-op unless fp16 gradients are scaled
        clip_gradients(run.params, o.clip_mode, o.max_grad_norm)
    if run.plan.adapter.ggpo_sigma is not None:  # kohya's GGPO norms: after clipping, before the step
        from dbspec.runtime.ggpo import update_norms

        update_norms([run.comps.unet, *run.comps.text_encoders])
    optimizer.step()  # skipped by the grad scaler when fp16 gradients overflowed
    if run.norm_modules:  # adapter.max_norm (kohya's scale_weight_norms), logged as kohya logs it
        terms.update(max_norm_metrics(apply_max_norm(run.norm_modules, run.plan.adapter.max_norm)))
    if run.parts.tokens is not None and run.parts.tokens.active:
        run.parts.tokens.after_step()  # pivotal tuning: only the new token rows change
    run.lr_scheduler.step()
    return step_loss, terms


def clip_gradients(params: list, mode: str, limit: float) -> None:
    """optimizer.clip_mode: the total norm (torch, kohya, diffusers), each element (SimpleTuner's default), or
    each parameter's norm on its own (kohya's fused backward pass)."""
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, limit)
    elif mode == "norm_per_tensor":
        for param in params:
            torch.nn.utils.clip_grad_norm_([param], limit)
    else:
        torch.nn.utils.clip_grad_norm_(params, limit)


def micro_batch_index(plan: Plan, step: int, index: int, rank: int) -> int:
    """The global index of micro-batch `index` of optimizer step `step` (0-based) on process `rank`: each
    step's micro-batches are numbered accumulation-major, process-minor, so N processes with accumulation a
    number theirs as one process with accumulation N*a does (and take the same batches, see data.py)."""
    s = plan.schedule
    return (step * s.accumulation + index) * s.processes + rank


def reseed_micro_batch(generator: torch.Generator, plan: Plan, step: int, index: int, rank: int) -> None:
    """noise_streams = "micro_batch": the training generator restarts from (seed, global micro-batch
    index)."""
    global_index = micro_batch_index(plan, step, index, rank)
    digest = hashlib.blake2b(f"dbspec-noise:{plan.schedule.seed}:{global_index}".encode(), digest_size=8)
    generator.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))


def _validate(run: Run, step: int, log: MetricsLog) -> None:
    """Sample the validation prompts (with the EMA weights when there are any), then back to training mode."""
    with run.ema.swap() if run.ema is not None else contextlib.nullcontext(), eager():
        validate(
            run.pipeline,
            run.plan.validation,
            run.out,
            step,
            autocast_dtype=_mixed_dtype(run.plan),
            prompt_inputs=run.prompt_inputs,
        )
    log.images(step, run.out / "samples" / f"step-{step:06d}" / "grid.png")
    set_train_mode(run.comps, run.plan)


def _evaluate(run: Run, evaluator: Evaluator, step: int, log: MetricsLog) -> dict:
    """The evaluation metrics at `step` (with the EMA weights when there are any), in eval mode (no dropout
    draws; with validation.text_encoder_mode "training" the text encoders stay in their training-step mode,
    their adapters in eval mode: runtime/text_mode.py), logged as one metrics.jsonl row; then back to
    training mode."""
    unet = getattr(run.parts.unet, "module", run.parts.unet)  # DDP-wrapped under several processes
    keep_text = run.plan.validation.text_encoder_mode == "training"
    with run.ema.swap() if run.ema is not None else contextlib.nullcontext():
        for module in (unet, *(() if keep_text else run.comps.text_encoders)):
            module.eval()
        adapters_eval(run.comps.text_encoders if keep_text else ())
        with run.accelerator.autocast(), eager():
            row = evaluator.evaluate(attrs.evolve(run.parts, unet=unet), step, run.sampler.epoch)
    set_train_mode(run.comps, run.plan)
    log.evaluation(step, row)
    return row


def _write_report(run: Run, console) -> None:
    """<out>/report.html (dbspec report), unless the plan turns it off; a report that cannot be written is a
    note, never a failed run."""
    if not run.main or not run.plan.logging.report:
        return
    from dbspec.report import write_report

    try:
        write_report(run.out)
    except Exception as exc:  # noqa: BLE001 - the weights are written; the report is a convenience
        (console or Console(stderr=True)).print(
            f"note: report.html not written: {type(exc).__name__}: {exc}", markup=False, highlight=False
        )


def _save_checkpoint(
    run: Run, step: int, scores: dict, optimizer_state: dict | None, generators: list | None
) -> Path:
    state = TrainState.capture(run, step, optimizer_state, generators)
    select = run.plan.checkpoints.select
    return ckpt.save_checkpoint(
        run.out,
        step,
        weights=lambda f: save_weights(f, run.comps, run.plan, run.ema),
        state=state.to_checkpoint(),
        keep=run.plan.checkpoints.keep,
        keep_state=run.plan.checkpoints.keep_state,
        scores=scores,
        select=select,
        select_weights=run.plan.checkpoints.select_weights,
    )


def _next_step_batches(sampler: BucketBatchSampler, accumulation: int) -> list:
    """The batches of one optimizer step: up to `accumulation`, never crossing an epoch's end."""
    state = sampler.state_dict()
    if state["position"] >= len(sampler):
        sampler.load_state_dict({"epoch": state["epoch"] + 1, "position": 0})
    n = min(accumulation, len(sampler) - sampler.state_dict()["position"])
    batches = iter(sampler)
    return [next(batches) for _ in range(n)]


def _all_agree(accelerator, stop: bool) -> bool:
    """With several processes, one Ctrl-C (or SIGTERM) stops all of them at the same step,
    or DDP would hang."""
    if accelerator.num_processes == 1:
        return stop
    flag = torch.tensor([int(stop)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item())  # a sync point, once per step


def _mixed_dtype(plan: Plan) -> torch.dtype | None:
    return mixed_dtype(plan.precision.mixed)


class _InterruptFlag:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to checkpoint at the next step boundary and stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _result(status, plan, step, final, last_checkpoint, started, losses, comps) -> RunResult:
    seconds = time.perf_counter() - started
    return RunResult(
        status=status,
        steps=step,
        output=plan.checkpoints.dir,
        final=final,
        last_checkpoint=last_checkpoint,
        seconds=seconds,
        steps_per_second=len(losses) / seconds if seconds else 0.0,
        losses=tuple(losses),
        components=comps,
    )
