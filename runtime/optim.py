"""Optimizers and LR schedules, as the plan chose them."""

from __future__ import annotations

import math

import torch
from diffusers.optimization import get_scheduler

from dbspec.plan.model import OptimizerPlan, SchedulePlan


class OptimizerError(Exception):
    """The chosen optimizer cannot run here (missing package or device)."""


def param_groups(
    denoiser_params: list, text_params: list[list], opt: OptimizerPlan, lora_up: frozenset[int] = frozenset()
) -> list[dict]:
    """One group for the denoiser and one for the text encoders; the second text encoder gets its own group
    only when the plan gives it another rate (so runs without one keep their optimizer state layout).
    LoRA+: with a ratio in the plan, the parameters whose id is in `lora_up` (peft lora_B) move to a
    "<name>_lora_up" group right after their own, at lr x ratio (kohya's "plus" group)."""
    groups = []
    if denoiser_params:
        groups += _with_lora_up("denoiser", denoiser_params, opt.lr, opt.loraplus_denoiser_ratio, lora_up)
    own = opt.text_encoder_2_lr is not None and len(text_params) > 1 and text_params[1]
    shared = [p for params in (text_params[:1] if own else text_params) for p in params]
    ratio = opt.loraplus_text_encoder_ratio
    if shared:
        groups += _with_lora_up("text_encoder", shared, opt.text_encoder_lr, ratio, lora_up)
    if own:
        groups += _with_lora_up("text_encoder_2", text_params[1], opt.text_encoder_2_lr, ratio, lora_up)
    return groups


def _with_lora_up(name: str, params: list, lr: float, ratio: float, lora_up: frozenset[int]) -> list[dict]:
    if not ratio:
        return [{"params": params, "lr": lr, "name": name}]
    up = [p for p in params if id(p) in lora_up]
    rest = [p for p in params if id(p) not in lora_up]
    groups = [{"params": rest, "lr": lr, "name": name}] if rest else []
    if up:
        groups.append({"params": up, "lr": lr * ratio, "name": f"{name}_lora_up"})
    return groups


def make_optimizer(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    kind = opt.kind
    if kind == "adamw":
        return torch.optim.AdamW(groups, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(
            groups, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov
        )
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed LR (relative_step off) so the plan's LR schedule is the one that applies.
        return Adafactor(
            groups,
            lr=opt.lr,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=opt.weight_decay,
        )
    if kind == "adamw8bit":
        bnb = _import("bitsandbytes", "pip install bitsandbytes (CUDA only)")
        return bnb.optim.AdamW8bit(groups, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    if kind == "prodigy":
        prodigy = _import("prodigyopt", "pip install prodigyopt")
        return prodigy.Prodigy(groups, betas=opt.betas, weight_decay=opt.weight_decay)
    if kind == "lion":
        lion = _import("lion_pytorch", "pip install lion-pytorch")
        return lion.Lion(groups, betas=opt.betas, weight_decay=opt.weight_decay)
    raise OptimizerError(f"unknown optimizer {kind!r}")


def _import(name: str, hint: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise OptimizerError(f"optimizer needs the `{name}` package: {hint}") from exc


def make_lr_scheduler(optimizer: torch.optim.Optimizer, s: SchedulePlan):
    """The plan's LR schedule, built as kohya's get_scheduler_fix builds it (dbspec's `lr_at` is its
    curve)."""
    if s.lr_schedule == "cosine_with_min_lr":
        from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=s.warmup_steps,
            num_training_steps=s.total_steps,
            num_cycles=s.cycles / 2,  # kohya's lr_scheduler_num_cycles counts half-waves
            min_lr_rate=s.min_lr_ratio,
        )
    if s.lr_schedule == "warmup_stable_decay":
        from transformers.optimization import get_wsd_schedule

        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=s.warmup_steps,
            num_stable_steps=s.total_steps - s.warmup_steps - s.decay_steps,
            num_decay_steps=s.decay_steps,
            num_cycles=s.cycles / 2,
            min_lr_ratio=s.min_lr_ratio,
        )
    # kohya's lr_scheduler_type: torch classes, stepped once per optimizer step
    if s.lr_schedule == "cosine_annealing":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "cosine_annealing_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s.t_max, T_mult=s.t_mult, eta_min=s.eta_min
        )
    if s.lr_schedule == "simpletuner_cosine":
        return SimpleTunerCosine(optimizer, t_0=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "simpletuner_sine":
        return SimpleTunerSine(optimizer, t_0=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "polynomial":  # get_scheduler keeps diffusers' lr_end 1e-7; SimpleTuner sets its own
        from diffusers.optimization import get_polynomial_decay_schedule_with_warmup

        return get_polynomial_decay_schedule_with_warmup(
            optimizer,
            num_warmup_steps=s.warmup_steps,
            num_training_steps=s.total_steps,
            lr_end=s.lr_end,
            power=s.power,
        )
    return get_scheduler(
        s.lr_schedule,
        optimizer,
        num_warmup_steps=s.warmup_steps,
        num_training_steps=s.total_steps,
        num_cycles=s.cycles,
        power=s.power,
    )


class SimpleTunerCosine(torch.optim.lr_scheduler.LRScheduler):
    """SimpleTuner's `Cosine` as its trainer builds it (T_mult 1, steps_per_epoch -1, so T_cur = -step): the
    closed-form cosine from step 0, falling over t_0 steps and rising over the next t_0, each LR floored to a
    multiple of 1e-9. dbspec's `lr_at` computes the same values without torch."""

    def __init__(self, optimizer: torch.optim.Optimizer, t_0: int, eta_min: float):
        self.t_0, self.eta_min = t_0, eta_min
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        t_cur = (step // -1) + (step % -1) / -1
        return [
            math.floor(
                (self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t_cur / self.t_0)) / 2) * 1e9
            )
            / 1e9
            for base in self.base_lrs
        ]


class SimpleTunerSine(torch.optim.lr_scheduler.LRScheduler):
    """SimpleTuner's `Sine` (T_mult 1): eta_min + (lr - eta_min) x 0.5 (1 + sin(pi step / t_0)) from step 0,
    each LR floored to a multiple of 1e-9. dbspec's `lr_at` computes the same values without torch."""

    def __init__(self, optimizer: torch.optim.Optimizer, t_0: int, eta_min: float):
        self.t_0, self.eta_min = t_0, eta_min
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        wave = 0.5 * (1 + math.sin(math.pi * self.last_epoch / self.t_0))
        return [
            math.floor((self.eta_min + (base - self.eta_min) * wave) * 1e9) / 1e9 for base in self.base_lrs
        ]
