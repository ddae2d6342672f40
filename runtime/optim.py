"""Optimizers and LR schedules, as the plan chose them."""

from __future__ import annotations

import contextlib
import math

import torch
from diffusers.optimization import get_scheduler

from dbspec.plan.model import TORCH_CLASS_SCHEDULES, OptimizerPlan, SchedulePlan


class OptimizerError(Exception):
    """The chosen optimizer cannot run here (missing package or device)."""


def param_groups(
    denoiser_params: list, text_params: list[list], opt: OptimizerPlan, lora_up: frozenset[int] = frozenset()
) -> list[dict]:
    """One group for the denoiser and one for the text encoders; the second text encoder gets its own group
    only when the plan gives it another rate (so runs without one keep their optimizer state layout); the
    third (SD3's T5-XXL with train.t5) likewise, else it joins the second's group (kohya's [a, b, b]).
    LoRA+: with a ratio in the plan, the parameters whose id is in `lora_up` (peft lora_B) move to a
    "<name>_lora_up" group right after their own, at lr x ratio (kohya's "plus" group); a ratio 0 in
    `opt.loraplus_held` leaves them out (kohya skips the plus group at rate 0). The denoiser's
    groups come first, or last with optimizer.group_order = "text_encoders_first" (kohya's networks'
    order, which DAdaptLion's estimate of d sums the groups in)."""
    denoiser = []
    if denoiser_params:
        denoiser = _with_lora_up(
            "denoiser", denoiser_params, opt.lr, opt.loraplus_denoiser_ratio, lora_up, opt.loraplus_held
        )
    groups: list[dict] = []
    own = opt.text_encoder_2_lr is not None and len(text_params) > 1 and text_params[1]
    # the third (SD3's T5-XXL, train.t5) has its own group with its own rate, else joins the second's
    third_own = opt.text_encoder_3_lr is not None and len(text_params) > 2 and text_params[2]
    third = [] if third_own else [p for params in text_params[2:3] for p in params]
    shared = [p for params in (text_params[:1] if own else text_params[:2]) for p in params]
    shared += [] if own else third
    ratio = opt.loraplus_text_encoder_ratio
    if shared:
        groups += _with_lora_up(
            "text_encoder", shared, opt.text_encoder_lr, ratio, lora_up, opt.loraplus_held
        )
    if own:
        groups += _with_lora_up(
            "text_encoder_2",
            [*text_params[1], *third],
            opt.text_encoder_2_lr,
            ratio,
            lora_up,
            opt.loraplus_held,
        )
    if third_own:
        groups += _with_lora_up(
            "text_encoder_3", text_params[2], opt.text_encoder_3_lr, ratio, lora_up, opt.loraplus_held
        )
    return groups + denoiser if opt.group_order == "text_encoders_first" else denoiser + groups


def _with_lora_up(
    name: str, params: list, lr: float, ratio: float, lora_up: frozenset[int], held: tuple[str, ...] = ()
) -> list[dict]:
    if not ratio and name.startswith(held or ("\0",)):  # kohya's plus group at rate 0, skipped: the ups
        # stay out of the optimizer (their gradients kept: runtime/optimizer_blocks.py held_gradients)
        rest = [p for p in params if id(p) not in lora_up]
        return [{"params": rest, "lr": lr, "name": name}] if rest else []
    if not ratio:
        return [{"params": params, "lr": lr, "name": name}]
    up = [p for p in params if id(p) in lora_up]
    rest = [p for p in params if id(p) not in lora_up]
    groups = [{"params": rest, "lr": lr, "name": name}] if rest else []
    if up:
        groups.append({"params": up, "lr": lr * ratio, "name": f"{name}_lora_up"})
    return groups


# plan kind -> bitsandbytes.optim class. The paged ones page their state to host memory on CUDA only; on the
# CPU they warn once and run unpaged (the plan's DBS314 says so), their updates equal the unpaged class's.
BITSANDBYTES_CLASSES = {
    "adamw8bit": "AdamW8bit",
    "paged_adamw": "PagedAdamW",
    "paged_adamw8bit": "PagedAdamW8bit",
}


def make_optimizer(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    kind = opt.kind
    if kind == "adamw":
        return torch.optim.AdamW(
            groups,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            amsgrad=opt.amsgrad,
            **implementation(opt),
        )
    if kind == "sgd":
        return torch.optim.SGD(
            groups,
            momentum=opt.momentum,
            dampening=opt.dampening,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
            **implementation(opt),
        )
    if kind == "radam":
        return torch.optim.RAdam(
            groups,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            decoupled_weight_decay=opt.decoupled_weight_decay,
        )
    if kind == "adafactor":
        return _adafactor(groups, opt)
    if kind.startswith("dadapt_"):
        return _dadapt(groups, opt)
    if kind in BITSANDBYTES_CLASSES:
        bnb = _import("bitsandbytes", "pip install 'dbspec[quant]' (bitsandbytes)")
        optimizer_class = getattr(bnb.optim, BITSANDBYTES_CLASSES[kind])
        return optimizer_class(
            groups,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            min_8bit_size=opt.min_8bit_size,
        )
    if kind == "prodigy":
        prodigy = _import("prodigyopt", "pip install prodigyopt")
        return prodigy.Prodigy(groups, **prodigy_kwargs(opt))
    if kind == "lion":
        lion = _import("lion_pytorch", "pip install lion-pytorch")
        return lion.Lion(groups, betas=opt.betas, weight_decay=opt.weight_decay)
    if kind in BITSANDBYTES_LION_CLASSES:
        return _bnb_lion(groups, opt)
    if opt.ademamix is not None:
        return _ademamix(groups, opt)
    if opt.schedulefree is not None:
        return _schedulefree(groups, opt)
    if kind == "came":
        return _came(groups, opt)
    if kind == "pytorch_optimizer_came":
        return _pytorch_optimizer_came(groups, opt)
    if opt.prodigy_plus is not None:
        return _prodigy_plus(groups, opt)
    raise OptimizerError(f"unknown optimizer {kind!r}")


# plan kind -> bitsandbytes.optim Lion class (kohya's Lion8bit, PagedLion8bit, bitsandbytes.optim.PagedLion):
# Lion's one moment in 8 bits block-wise, or paged (CUDA only; the CPU runs them unpaged, DBS314).
BITSANDBYTES_LION_CLASSES = {
    "lion8bit": "Lion8bit",
    "paged_lion": "PagedLion",
    "paged_lion8bit": "PagedLion8bit",
}


def _bnb_lion(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """bitsandbytes' Lion classes as kohya builds them, `cls(params, lr=lr, **optimizer_args)` with betas,
    weight_decay (bitsandbytes' Lion has no eps) and min_8bit_size (the plan's 4096 for paged_lion, whose
    32-bit state never reads it)."""
    bnb = _import("bitsandbytes", "pip install 'dbspec[quant]' (bitsandbytes)")
    optimizer_class = getattr(bnb.optim, BITSANDBYTES_LION_CLASSES[opt.kind])
    return optimizer_class(
        groups, betas=tuple(opt.betas), weight_decay=opt.weight_decay, min_8bit_size=opt.min_8bit_size
    )


def _ademamix(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """bitsandbytes' AdEMAMix, AdEMAMix8bit, PagedAdEMAMix, PagedAdEMAMix8bit, as kohya builds them from
    `bitsandbytes.optim.<class>` with optimizer_args."""
    bnb = _import("bitsandbytes", "pip install 'dbspec[quant]' (bitsandbytes)")
    a = opt.ademamix
    cls = ("Paged" if a.paged else "") + ("AdEMAMix8bit" if a.eight_bit else "AdEMAMix")
    return getattr(bnb.optim, cls)(
        groups,
        betas=tuple(opt.betas),
        alpha=a.alpha,
        t_alpha=a.t_alpha,
        t_beta3=a.t_beta3,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        min_8bit_size=opt.min_8bit_size,
    )


def _came(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """came_pytorch's CAME, as kohya builds `came_pytorch.CAME(params, lr=lr, **optimizer_args)`. Its
    state per parameter: a Python int `step`, the tensor `RMS` of the parameter, exp_avg, and the factored
    (>= 2-D) or full (1-D) statistics; all of it loads with torch.load(weights_only=True)."""
    came = _import("came_pytorch", "pip install came-pytorch")
    c = opt.came
    return came.CAME(
        groups,
        lr=opt.lr,
        eps=(c.eps[0], c.eps[1]),
        clip_threshold=c.clip_threshold,
        betas=tuple(opt.betas),
        weight_decay=opt.weight_decay,
    )


def _pytorch_optimizer_came(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """pytorch_optimizer's CAME, as kohya builds `pytorch_optimizer.CAME(params, lr=lr, **optimizer_args)`
    (its other arguments at their defaults: decoupled weight decay scaled by the lr, no AMS bound; foreach
    as its default, which computes the loop's update). Its state: the group's int `step`, per parameter
    exp_avg, the factored (>= 2-D) or full (1-D) statistics and a 0-d tensor `RMS`; all of it loads with
    torch.load(weights_only=True)."""
    module = _import("pytorch_optimizer", "pip install pytorch_optimizer")
    c = opt.came
    return module.CAME(
        groups,
        lr=opt.lr,
        betas=tuple(opt.betas),
        weight_decay=opt.weight_decay,
        clip_threshold=c.clip_threshold,
        eps1=c.eps[0],
        eps2=c.eps[1],
    )


def _prodigy_plus(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """prodigy-plus-schedule-free's ProdigyPlusScheduleFree, as kohya builds
    `prodigyplus.ProdigyPlusScheduleFree(params, lr=lr, **optimizer_args)`: each group its own d (its
    split_groups default), its other options at their defaults; it starts in train mode. Its state: per
    group d and its sums (floats, two 0-d tensors), the step count k and the mode; per parameter z, the
    second moment (factored, or full where no side reaches 32) and p0, s over every 11th element (bf16); all
    of it loads with torch.load(weights_only=True)."""
    module = _import("prodigyplus", "pip install prodigy-plus-schedule-free")
    p = opt.prodigy_plus
    return module.ProdigyPlusScheduleFree(
        groups,
        lr=opt.lr,
        betas=tuple(opt.betas),
        beta3=p.beta3,
        weight_decay=opt.weight_decay,
        eps=opt.eps,
        d0=p.d0,
        d_coef=p.d_coef,
        use_bias_correction=p.use_bias_correction,
    )


SCHEDULEFREE_CLASSES = {
    "adamw_schedulefree": "AdamWScheduleFree",
    "sgd_schedulefree": "SGDScheduleFree",
    "radam_schedulefree": "RAdamScheduleFree",
}


def _schedulefree(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """The schedulefree package's optimizers (kohya's *ScheduleFree types), put in train mode as kohya's
    get_optimizer leaves them."""
    sf = _import("schedulefree", "pip install schedulefree")
    a = opt.schedulefree
    kwargs: dict = {"weight_decay": opt.weight_decay, "r": a.r, "weight_lr_power": a.weight_lr_power}
    if opt.kind == "sgd_schedulefree":
        kwargs.update(momentum=opt.momentum, warmup_steps=a.warmup_steps)
    else:
        kwargs.update(betas=tuple(opt.betas), eps=opt.eps)
    if opt.kind == "adamw_schedulefree":
        kwargs["warmup_steps"] = a.warmup_steps
    if opt.kind == "radam_schedulefree":
        kwargs["silent_sgd_phase"] = a.silent_sgd_phase
    optimizer = getattr(sf, SCHEDULEFREE_CLASSES[opt.kind])(groups, **kwargs)
    optimizer.train()
    return optimizer


def _innermost(optimizer):
    """The optimizer inside accelerate's and the stochastic-rounding wrappers."""
    while hasattr(optimizer, "optimizer") or hasattr(optimizer, "inner"):
        optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer.inner
    return optimizer


def _schedule_free(opt: OptimizerPlan) -> bool:
    """An optimizer with train/eval modes (the parameters hold the averaged weights in eval mode): the
    schedulefree package's and ProdigyPlusScheduleFree."""
    return opt.schedulefree is not None or opt.prodigy_plus is not None


def resume_training_mode(optimizer, opt: OptimizerPlan) -> None:
    """Schedule-free: after a resume the weights are the averaged ones a checkpoint holds (saved in eval
    mode); train mode moves them back to the training point from the restored state (as kohya's first
    optimizer_train_fn does)."""
    if _schedule_free(opt):
        _innermost(optimizer).train()


@contextlib.contextmanager
def averaged_weights(optimizer, opt: OptimizerPlan):
    """Schedule-free: the optimizer in eval mode (the parameters hold the averaged weights) for what runs
    inside, then back in train mode, as kohya's optimizer_eval_fn / optimizer_train_fn around sampling, saving
    and validation. A no-op for other optimizers."""
    if not _schedule_free(opt):
        yield
        return
    inner = _innermost(optimizer)
    inner.eval()
    try:
        yield
    finally:
        inner.train()


def implementation(opt: OptimizerPlan) -> dict:
    """The torch optimizer's kernel keyword as the plan settled it; {} leaves torch's default."""
    return {} if opt.implementation == "default" else {opt.implementation: True}


def _adafactor(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    """transformers' Adafactor as kohya builds it: with relative_step the optimizer computes the LR (lr=None;
    the groups' rates are then unused) and the scheduler is AdafactorSchedule; else a fixed LR that the plan's
    schedule drives. Plans written before the options existed (adafactor None) had all three off."""
    from transformers.optimization import Adafactor

    a = opt.adafactor
    relative = bool(a and a.relative_step)
    return Adafactor(
        groups,
        lr=None if relative else opt.lr,
        relative_step=relative,
        scale_parameter=bool(a and a.scale_parameter),
        warmup_init=bool(a and a.warmup_init),
        weight_decay=opt.weight_decay,
        beta1=a.beta1 if a else None,
        clip_threshold=a.clip_threshold if a else 1.0,
        decay_rate=a.decay_rate if a else -0.8,
        eps=tuple(a.eps) if a else (1e-30, 1e-3),
    )


# plan kind -> (module, class) in the dadaptation package (kohya's DAdapt* optimizer types)
DADAPT_CLASSES = {
    "dadapt_adam": ("dadaptation", "DAdaptAdam"),
    "dadapt_adam_preprint": ("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadapt_adagrad": ("dadaptation", "DAdaptAdaGrad"),
    "dadapt_adan": ("dadaptation", "DAdaptAdan"),
    "dadapt_adan_ip": ("dadaptation.experimental", "DAdaptAdanIP"),
    "dadapt_lion": ("dadaptation", "DAdaptLion"),
    "dadapt_sgd": ("dadaptation", "DAdaptSGD"),
}


def dadapt_kwargs(opt: OptimizerPlan) -> dict:
    """The keyword arguments the plan gives the D-Adaptation class (besides the groups and their rates)."""
    d = opt.dadapt
    if d is None:
        raise OptimizerError(f"the plan has no D-Adaptation settings for {opt.kind}")
    kwargs: dict = {"weight_decay": opt.weight_decay, "d0": d.d0}
    if opt.kind != "dadapt_lion" and d.growth_rate is not None:
        kwargs["growth_rate"] = d.growth_rate
    if opt.kind in ("dadapt_sgd", "dadapt_adagrad"):
        kwargs["momentum"] = opt.momentum
    else:
        kwargs["betas"] = tuple(opt.betas)
    if opt.kind in ("dadapt_adam", "dadapt_adam_preprint", "dadapt_adan", "dadapt_adan_ip", "dadapt_adagrad"):
        kwargs["eps"] = opt.eps
    if opt.kind in ("dadapt_adam", "dadapt_adam_preprint"):
        kwargs["decouple"] = d.decouple
    if opt.kind == "dadapt_adam":
        kwargs["use_bias_correction"] = d.use_bias_correction
    if opt.kind in ("dadapt_adan", "dadapt_adan_ip"):
        kwargs["no_prox"] = d.no_prox
    return kwargs


def prodigy_kwargs(opt: OptimizerPlan) -> dict:
    """The keyword arguments the plan gives prodigyopt's Prodigy (besides the groups and their rates), as
    kohya builds it from optimizer_args. A plan written before the options existed (prodigy None) ran
    Prodigy's defaults, eps included."""
    p = opt.prodigy
    kwargs: dict = {"betas": tuple(opt.betas), "weight_decay": opt.weight_decay}
    if p is None:
        return kwargs
    return {
        **kwargs,
        "eps": opt.eps,
        "beta3": p.beta3,
        "d0": p.d0,
        "d_coef": p.d_coef,
        "growth_rate": float("inf") if p.growth_rate is None else p.growth_rate,
        "decouple": p.decouple,
        "use_bias_correction": p.use_bias_correction,
        "safeguard_warmup": p.safeguard_warmup,
        "slice_p": p.slice_p,
    }


def _dadapt(groups: list[dict], opt: OptimizerPlan) -> torch.optim.Optimizer:
    module_name, cls_name = DADAPT_CLASSES[opt.kind]
    module = _import(module_name, "pip install dadaptation")
    return getattr(module, cls_name)(groups, lr=opt.lr, **dadapt_kwargs(opt))


def step_size_metrics(optimizer) -> dict[str, float]:
    """D-Adaptation's and Prodigy's effective step size of the first group, d x lr (kohya logs it as
    lr/d*lr); empty for other optimizers."""
    group = optimizer.param_groups[0]
    return {"d*lr": float(group["d"] * group["lr"])} if "d" in group else {}


def _import(name: str, hint: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise OptimizerError(f"optimizer needs the `{name}` package: {hint}") from exc


def make_lr_scheduler(optimizer: torch.optim.Optimizer, s: SchedulePlan):
    """The plan's LR schedule, built as kohya's get_scheduler_fix builds it (dbspec's `lr_at` is its
    curve)."""
    if s.lr_schedule == "adafactor":
        from transformers.optimization import AdafactorSchedule

        # Reports Adafactor's own LR (relative steps); its initial value is the first group's rate, as kohya
        # passes learning_rate.
        return AdafactorSchedule(optimizer, initial_lr=optimizer.param_groups[0]["lr"])
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
            warmup_type=s.warmup_type,
            decay_type=s.decay_type,
        )
    # kohya's lr_scheduler_type: torch classes, stepped once per optimizer step
    if s.torch is not None and s.lr_schedule in TORCH_CLASS_SCHEDULES:
        return _torch_scheduler(optimizer, s)
    if s.lr_schedule == "cosine_annealing":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "cosine_annealing_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s.t_max, T_mult=s.t_mult, eta_min=s.eta_min
        )
    if s.lr_schedule == "cosine" and s.cosine_cycles != 0.5:  # kohya's lr_scheduler_args num_cycles
        from transformers.optimization import get_cosine_schedule_with_warmup

        return get_cosine_schedule_with_warmup(
            optimizer,
            num_warmup_steps=s.warmup_steps,
            num_training_steps=s.total_steps,
            num_cycles=s.cosine_cycles,
        )
    if s.lr_schedule == "simpletuner_cosine":
        return SimpleTunerCosine(optimizer, t_0=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "simpletuner_sine":
        return SimpleTunerSine(optimizer, t_0=s.t_max, eta_min=s.eta_min)
    if s.lr_schedule == "polynomial":
        from transformers.optimization import get_polynomial_decay_schedule_with_warmup

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


def _torch_scheduler(optimizer: torch.optim.Optimizer, s: SchedulePlan):
    """torch's StepLR ... OneCycleLR, CyclicLR, PolynomialLR with the plan's arguments (kohya builds
    `cls(optimizer, **args)`)."""
    a, lr_scheduler = s.torch, torch.optim.lr_scheduler
    if s.lr_schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=a.step_size, gamma=a.gamma)
    if s.lr_schedule == "multi_step":
        return lr_scheduler.MultiStepLR(optimizer, milestones=list(a.milestones), gamma=a.gamma)
    if s.lr_schedule == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=a.gamma)
    if s.lr_schedule == "linear_lr":
        return lr_scheduler.LinearLR(
            optimizer, start_factor=a.start_factor, end_factor=a.end_factor, total_iters=a.total_iters
        )
    if s.lr_schedule == "constant_lr":
        return lr_scheduler.ConstantLR(optimizer, factor=a.factor, total_iters=a.total_iters)
    if s.lr_schedule == "polynomial_lr":
        return lr_scheduler.PolynomialLR(optimizer, total_iters=a.total_iters, power=s.power)
    bounds = _group_bounds(optimizer, a)
    # max_lr 0: each group's own rate, or a peak of 0 (plan max_lr_zero "literal"), as TorchSchedulePlan.peak
    peaks = [
        a.peak(b.max_lr if bounds else a.max_lr, group["lr"])
        for b, group in zip(bounds or [None] * len(optimizer.param_groups), optimizer.param_groups)
    ]
    if s.lr_schedule == "cyclic":  # base_lr replaces every group's rate
        return lr_scheduler.CyclicLR(
            optimizer,
            base_lr=[b.base_lr for b in bounds] if bounds else a.base_lr,
            max_lr=peaks if bounds or not a.max_lr else a.max_lr,
            step_size_up=a.step_size_up,
            step_size_down=a.step_size_down or None,
            mode=a.cyclic_mode,
            gamma=a.gamma,
            cycle_momentum=a.cycle_momentum,
            base_momentum=[b.base_momentum for b in bounds] if bounds else a.base_momentum,
            max_momentum=[b.max_momentum for b in bounds] if bounds else a.max_momentum,
        )
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peaks if bounds or not a.max_lr else a.max_lr,
        total_steps=s.t_max,
        pct_start=a.pct_start,
        anneal_strategy=a.anneal_strategy,
        cycle_momentum=a.cycle_momentum,
        base_momentum=[b.base_momentum for b in bounds] if bounds else a.base_momentum,
        max_momentum=[b.max_momentum for b in bounds] if bounds else a.max_momentum,
        div_factor=a.div_factor,
        final_div_factor=a.final_div_factor,
        three_phase=a.three_phase,
    )


def _group_bounds(optimizer: torch.optim.Optimizer, a) -> list:
    """The plan's per-group bounds in the optimizer's group order (torch's lists), [] for one bound for
    every group. The plan named the groups as param_groups builds them; a mismatch is a dbspec bug."""
    if not a.groups:
        return []
    by_name = {b.name: b for b in a.groups}
    names = [group.get("name", "") for group in optimizer.param_groups]
    missing = [n for n in names if n not in by_name]
    # block groups (denoiser_block<i>, denoiser_x<scale>, denoiser_lr<rate>, a block's own `_<group>`;
    # text_encoder_lr<rate>, text_encoder_2_x<scale>: [[adapter.text_encoder_blocks]])
    split = {_component(n) for n in [*names, *by_name] if _block_group(n)}
    if missing and all(_component(n) in split for n in missing):
        whose = "the denoiser's" if _component(missing[0]) == "denoiser" else "the text encoders'"
        raise OptimizerError(
            f"{whose} blocks leave parameters in the `{missing[0]}` group, which the schedule's "
            "per-group tables do not name: give it a table entry"
        )
    # a group of a split component the plan names may be empty in the loaded model (a block that matches no
    # parameter; a text-encoder block's rate beside each encoder's group); the denoiser's always may
    extra = [
        n for n in by_name if n not in names and not n.startswith("denoiser") and _component(n) not in split
    ]
    if missing or extra or len(set(names)) != len(names):
        raise OptimizerError(
            f"the plan's per-group schedule bounds name the groups {', '.join(sorted(by_name))}, "
            f"the optimizer has {', '.join(names)} (a dbspec bug: please report it)"
        )
    return [by_name[name] for name in names]


# the groups param_groups builds before any block splits them (each with its LoRA+ `_lora_up`)
_BASE_GROUPS = ("denoiser", "text_encoder", "text_encoder_2", "text_encoder_3")


def _component(name: str) -> str:
    return (
        "denoiser"
        if name.startswith("denoiser")
        else "text_encoder"
        if name.startswith("text_encoder")
        else ""
    )


def _block_group(name: str) -> bool:
    return bool(_component(name)) and name.removesuffix("_lora_up") not in _BASE_GROUPS


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
