"""`TrainState`: what a checkpoint's training_state.pt holds, typed, and how a run captures and restores it.

The file stays a plain dict (torch.save, loaded with weights_only=True); its keys are the field names below,
in this order, so checkpoints written before this class existed still resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import torch

from dbspec.plan.io import run_hash
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime.distributed import gathered, load_optimizer_state
from dbspec.runtime.optimizer_blocks import held_gradients, restore_held_gradients
from dbspec.runtime.grad_state import restore_grads, saved_grads
from dbspec.runtime.rounding import load_keeping_state_dtypes
from dbspec.runtime.scaled_pos import added_sides, restore_sides
from dbspec.runtime.tokens_ti import split_state
from dbspec.runtime.weights import restore_trainable, trainable_state

if TYPE_CHECKING:
    from dbspec.runtime.setup import Run


@attrs.frozen
class TrainState:
    trainable: dict[str, Any]  # the trained weights (LoRA or full), see weights.trainable_state
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    scaler: dict[str, Any] | None  # fp16 gradient scaling; None without it
    sampler: dict[str, Any]  # data order: epoch and position
    generator: torch.Tensor  # the training-noise generator of the first process
    rng: dict[str, Any]  # python, numpy and torch RNGs (checkpoints.capture_rng_state)
    step: int
    ema: dict[str, Any] | None
    run_hash: str  # which run saved it (resume refuses another run's checkpoint)
    plan: str  # that run's plan JSON, to say what differs
    # Every process's training-noise generator, by rank (several processes; None for one, or a checkpoint
    # saved before they were kept): noise_streams = "process" resumes each process's own stream.
    generators: list[torch.Tensor] | None = None
    # model.scaled_pos_embed: the patched sides of the position tables the run added so far, in order (the
    # first process's; None when off, or a checkpoint saved before they were kept)
    scaled_pos_sides: list[int] | None = None
    # The gradients optimizer.blocks at rate 0 have added up (kohya's block_lr: out of the optimizer, never
    # cleared, counted by the clip norm), by denoiser parameter name; None without such blocks.
    held_grads: dict[str, torch.Tensor] | None = None
    # LoRA-FA with kohya's gradients: the frozen downs' accumulated gradients by name (None without them)
    frozen_down_grads: dict[str, torch.Tensor] | None = None
    # train.text_encoder_idle: the idle text encoders' accumulated gradients by name (None without them)
    idle_grads: dict[str, torch.Tensor] | None = None
    # LoRA-GGPO's running norms, by GGPO module in order (runtime/ggpo.py); None without GGPO
    ggpo: list[dict[str, Any]] | None = None
    # evaluation.log = "kohya_running_mean": the recorder's losses and total (None: nothing recorded)
    eval_record: dict[str, Any] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict training_state.pt stores."""
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """Fields with a default may be absent: checkpoints saved before they existed."""
        return cls(
            **{
                field.name: saved[field.name]
                for field in attrs.fields(cls)
                if field.name in saved or field.default is attrs.NOTHING
            }
        )

    @classmethod
    def capture(
        cls,
        run: Run,
        step: int,
        optimizer: dict[str, Any] | None = None,
        generators: list[torch.Tensor] | None = None,
    ) -> TrainState:
        """The state of `run` after `step` optimizer steps. `optimizer`: its optimizer state when already
        gathered (FSDP, distributed.full_optimizer_state), else read here; `generators`: every process's noise
        generator state (`gather_generators`, which all processes call), with several processes."""
        return cls(
            trainable=trainable_state(run.comps, run.plan)
            | (run.parts.tokens.state() if run.parts.tokens is not None else {}),
            optimizer=optimizer if optimizer is not None else run.optimizer.state_dict(),
            lr_scheduler=run.lr_scheduler.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler else None,
            sampler=run.sampler.state_dict(),
            generator=run.generator.get_state(),
            rng=ckpt.capture_rng_state(),
            step=step,
            ema=run.ema.state_dict() if run.ema is not None else None,
            run_hash=run_hash(run.plan),
            plan=run.plan_json,
            generators=generators,
            scaled_pos_sides=added_sides(run.comps.unet),
            held_grads=held_gradients(run),
            frozen_down_grads=saved_grads(run.frozen_down),
            idle_grads=saved_grads(run.idle),
            ggpo=_ggpo_state(run),
            eval_record=run.eval_record.state(),
        )

    def restore(self, run: Run) -> None:
        """Put `run` back where it was when this state was captured (its step is `self.step`)."""
        weights, rows = split_state(self.trainable)
        with gathered(run.sharded):  # FSDP: every process loads the whole weights, then keeps its shard
            restore_trainable(run.comps, weights)
        if run.parts.tokens is not None:
            run.parts.tokens.restore(rows)
        if run.sharded:
            load_optimizer_state(run.optimizer, self.optimizer)
        else:  # the state as saved: torch would cast fp32 state over bf16 weights to bf16 (full_bf16)
            load_keeping_state_dtypes(run.optimizer, self.optimizer)
        run.lr_scheduler.load_state_dict(self.lr_scheduler)
        if run.scaler is not None and self.scaler is not None:
            run.scaler.load_state_dict(self.scaler)
        run.sampler.load_state_dict(self.sampler)
        if self.generators is not None:  # each process its own stream
            run.generator.set_state(self.generators[run.accelerator.process_index])
        elif run.accelerator.is_main_process:
            run.generator.set_state(self.generator)  # an older checkpoint: only the first process's stream
        if run.ema is not None:
            run.ema.load_state_dict(self.ema)
        if run.accelerator.is_main_process:  # the sides it saved are its own
            restore_sides(run.comps.unet, self.scaled_pos_sides)
        restore_grads(run.frozen_down, self.frozen_down_grads)
        restore_grads(run.idle, self.idle_grads)
        ckpt.restore_rng_state(self.rng)
        if self.held_grads:
            restore_held_gradients(run, self.held_grads)
        if self.ggpo:
            from dbspec.runtime.ggpo import restore_ggpo

            restore_ggpo([run.comps.unet, *run.comps.text_encoders], self.ggpo)
        run.eval_record.restore(self.eval_record)


def _ggpo_state(run: Run) -> list[dict[str, Any]] | None:
    if run.plan.adapter.ggpo_sigma is None:
        return None
    from dbspec.runtime.ggpo import ggpo_state

    return ggpo_state([run.comps.unet, *run.comps.text_encoders])


def gather_generators(run: Run) -> list[torch.Tensor] | None:
    """Every process's training-noise generator state, by rank, for the checkpoint the first process writes;
    None for one process. A collective: every process calls it at the same step."""
    if run.accelerator.num_processes == 1:
        return None
    from accelerate.utils import gather_object

    return gather_object([run.generator.get_state()])
