"""The training loop: one function, read top to bottom. Every choice was made in the plan."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import attrs
import torch
from rich.console import Console

from dbspec.plan.io import plan_to_json, run_hash
from dbspec.plan.model import Plan
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime.data import BucketBatchSampler
from dbspec.runtime.ema import Ema
from dbspec.runtime.logs import MetricsLog, cache_progress, train_progress
from dbspec.runtime.models import load_components
from dbspec.runtime.optim import make_lr_scheduler, make_optimizer, param_groups
from dbspec.runtime.sample import generate_class_images, validate
from dbspec.runtime.setup import (
    configure_models, fill_caches, make_accelerator, make_teacher, pipeline_for, set_train_mode,
)
from dbspec.runtime.step import Parts, run_batch
from dbspec.runtime.weights import restore_trainable, save_weights, trainable_state, write_final


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


def train(plan: Plan, *, overwrite: bool = False, resume: bool = False, console=None,
          stop_after: int | None = None, keep_models: bool = False) -> RunResult:
    """Run the plan. `stop_after` ends early after that many steps as if interrupted; `keep_models`
    returns the trained models in the result (for callers that go on using them, and tests)."""
    started = time.perf_counter()
    accelerator = make_accelerator(plan)
    plan_json = plan_to_json(plan)
    # With several processes only the first writes outputs; it holds the output folder's lock for the whole run.
    claim = (ckpt.prepare_output(Path(plan.checkpoints.dir), plan_json, run_hash(plan), overwrite=overwrite,
                                 resume=resume) if accelerator.is_main_process else contextlib.nullcontext())
    with claim:
        for note in getattr(claim, "recovered", ()):
            (console or Console(stderr=True)).print(f"note: {note}", markup=False, highlight=False)
        return _train(plan, accelerator, plan_json, started, resume=resume, console=console,
                      stop_after=stop_after, keep_models=keep_models)


def _train(plan: Plan, accelerator, plan_json: str, started: float, *, resume: bool, console,
           stop_after: int | None, keep_models: bool) -> RunResult:
    out = Path(plan.checkpoints.dir)
    s = plan.schedule
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    # Read (and vet) the checkpoint before loading models: resuming another run's checkpoint fails at once.
    resumed = ckpt.resume_state(out, run_hash(plan), plan_json) if resume else None
    device = accelerator.device
    torch.manual_seed(s.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = plan.precision.tf32
        torch.backends.cudnn.allow_tf32 = plan.precision.tf32

    # Models: load, make class images with the untouched base model, then freeze/adapt for training.
    comps = load_components(plan)
    comps.unet.to(device)
    comps.vae.to(device)
    for enc in comps.text_encoders:
        enc.to(device)
    pipeline = pipeline_for(plan, comps)
    with accelerator.main_process_first():  # the others then find the images made
        for d in plan.datasets:
            if d.generate is not None:
                generate_class_images(pipeline, d.generate)
    teacher = make_teacher(plan, comps, device)
    unet_params, text_params = configure_models(plan, comps, device)
    with accelerator.main_process_first(), cache_progress(console) as progress:
        latent_cache, text_cache, _ = fill_caches(plan, comps, device, progress)

    # Optimizer, LR schedule, data order and the one generator that draws all training noise.
    optimizer = make_optimizer(param_groups(unet_params, text_params, plan.optimizer), plan.optimizer)
    ema = Ema.from_plan(plan.ema, unet_params + text_params) if plan.ema.enabled else None
    lr_scheduler = make_lr_scheduler(optimizer, s)
    # prepare: DDP wrapping when several processes run; the optimizer scales fp16 gradients.
    trained = [m for m in (comps.unet, *comps.text_encoders) if any(p.requires_grad for p in m.parameters())]
    *wrapped, optimizer = accelerator.prepare(*trained, optimizer)
    forward = {id(m): w for m, w in zip(trained, wrapped)}
    scaler = accelerator.scaler
    sampler = BucketBatchSampler.from_plan(plan, rank=accelerator.process_index)
    # Each process draws its own noise; one process reproduces single-GPU runs exactly.
    generator = torch.Generator().manual_seed(s.seed + 1_000_003 * accelerator.process_index)
    parts = Parts(plan=plan, unet=forward.get(id(comps.unet), comps.unet), vae=comps.vae,
                  text_encoders=[forward.get(id(e), e) for e in comps.text_encoders],
                  tokenizers=comps.tokenizers, noise_scheduler=comps.noise_scheduler, latent_cache=latent_cache,
                  text_cache=text_cache, device=device, generator=generator, text_trains=bool(text_params),
                  teacher=teacher)
    step = 0
    if resumed is not None:
        restore_trainable(comps, resumed["trainable"])
        optimizer.load_state_dict(resumed["optimizer"])
        lr_scheduler.load_state_dict(resumed["lr_scheduler"])
        if scaler is not None and resumed["scaler"] is not None:
            scaler.load_state_dict(resumed["scaler"])
        sampler.load_state_dict(resumed["sampler"])
        if main:
            generator.set_state(resumed["generator"])  # the others keep their own streams (see notes in docs)
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        ckpt.restore_rng_state(resumed["rng"])
        step = resumed["step"]
        resumed = None  # frees the CPU copy of the weights and optimizer state
    stop_text_at = s.text_encoder_stop_step
    if stop_text_at and step >= stop_text_at:
        freeze_text_encoders(parts, optimizer)
    set_train_mode(comps, plan)
    log = MetricsLog(out, plan.logging, start_step=step, enabled=main)
    interrupted = _InterruptFlag()
    losses: list[float] = []
    last_checkpoint = ""

    with interrupted, train_progress(console, s.total_steps, step) as progress:
        while step < s.total_steps:
            batches = _next_step_batches(sampler, s.accumulation)
            optimizer.zero_grad(set_to_none=True)
            step_loss, terms = 0.0, {}
            for batch in batches:
                with accelerator.autocast():
                    result = run_batch(parts, batch)
                value = result.loss.item()  # CPU-GPU sync point, once per micro-batch: catches NaN early
                if not math.isfinite(value):
                    raise NonFiniteLoss(step + 1, value, result.files)
                accelerator.backward(result.loss / len(batches))
                step_loss += value / len(batches)
                terms = {k: terms.get(k, 0.0) + float(v) / len(batches) for k, v in result.terms.items()}
            if plan.optimizer.max_grad_norm > 0:
                accelerator.unscale_gradients(optimizer)  # a no-op unless fp16 gradients are scaled
                torch.nn.utils.clip_grad_norm_(unet_params + text_params, plan.optimizer.max_grad_norm)
            optimizer.step()  # skipped by the grad scaler when fp16 gradients overflowed
            lr_scheduler.step()
            step += 1
            if ema is not None:
                ema.update(step)
            losses.append(step_loss)
            if stop_text_at and step == stop_text_at:
                freeze_text_encoders(parts, optimizer)
            log.write(step, {"loss": step_loss, **terms, "lr": lr_scheduler.get_last_lr()[0],
                             "epoch": sampler.epoch, "seconds": time.perf_counter() - started})
            progress.update(step=step, loss=step_loss, lr=lr_scheduler.get_last_lr()[0])

            if step in plan.validation.steps and main:
                with ema.swap() if ema is not None else contextlib.nullcontext():  # validate the EMA weights
                    validate(pipeline, plan.validation, out, step, autocast_dtype=_mixed_dtype(plan))
                log.images(step, out / "samples" / f"step-{step:06d}" / "grid.png")
                set_train_mode(comps, plan)
            stopping = _all_agree(accelerator, interrupted.requested or (stop_after is not None and step >= stop_after))
            if (step in plan.checkpoints.steps or stopping) and main:
                state = {"trainable": trainable_state(comps, plan), "optimizer": optimizer.state_dict(),
                         "lr_scheduler": lr_scheduler.state_dict(),
                         "scaler": scaler.state_dict() if scaler else None, "sampler": sampler.state_dict(),
                         "generator": generator.get_state(), "rng": ckpt.capture_rng_state(), "step": step,
                         "ema": ema.state_dict() if ema is not None else None,
                         "run_hash": run_hash(plan), "plan": plan_json}
                folder = ckpt.save_checkpoint(out, step, weights=lambda f: save_weights(f, comps, plan, ema),
                                              state=state, keep=plan.checkpoints.keep)
                last_checkpoint = str(folder)
            if step in plan.checkpoints.steps or stopping:
                accelerator.wait_for_everyone()  # no process runs ahead of a checkpoint being written
            if stopping and step < s.total_steps:
                log.close()
                return _result("interrupted", plan, step, "", last_checkpoint, started, losses,
                               comps if keep_models else None)

    final = out / "final"
    accelerator.wait_for_everyone()
    if main:
        with _InterruptFlag():  # Ctrl-C or SIGTERM now waits for the final weights (a second Ctrl-C does not)
            write_final(final, pipeline, comps, plan, ema)
    log.close()
    return _result("finished", plan, step, str(final), last_checkpoint, started, losses,
                   comps if keep_models else None)


def _next_step_batches(sampler: BucketBatchSampler, accumulation: int) -> list:
    """The batches of one optimizer step: up to `accumulation`, never crossing an epoch's end."""
    state = sampler.state_dict()
    if state["position"] >= len(sampler):
        sampler.load_state_dict({"epoch": state["epoch"] + 1, "position": 0})
    n = min(accumulation, len(sampler) - sampler.state_dict()["position"])
    batches = iter(sampler)
    return [next(batches) for _ in range(n)]


def freeze_text_encoders(parts: Parts, optimizer: torch.optim.Optimizer) -> None:
    """After the stop step the text encoder is frozen. Its parameters get no gradient, and optimizers skip
    parameters without one (no update, no weight decay)."""
    for enc in parts.text_encoders:
        enc.requires_grad_(False)
        enc.eval()
    parts.text_trains = False


def _all_agree(accelerator, stop: bool) -> bool:
    """With several processes, one Ctrl-C (or SIGTERM) stops all of them at the same step, or DDP would hang."""
    if accelerator.num_processes == 1:
        return stop
    flag = torch.tensor([int(stop)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item())  # a sync point, once per step


def _mixed_dtype(plan: Plan) -> torch.dtype | None:
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[plan.precision.mixed]


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
    return RunResult(status=status, steps=step, output=plan.checkpoints.dir, final=final,
                     last_checkpoint=last_checkpoint, seconds=seconds,
                     steps_per_second=len(losses) / seconds if seconds else 0.0, losses=tuple(losses),
                     components=comps)
