"""optimizer.lr = 0 with train.denoiser = true (kohya train_db.py's learning_rate 0 with learning_rate_te):
the denoiser sits in the optimizer at rate 0. Its weights never move, but its gradients count in the clip
norm, so the text encoder's step is clipped by the norm over both. One-step SGD runs (no momentum or decay)
move each trained weight by exactly minus its (clipped) gradient times its rate: the steps show the clip."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

TOL = 1e-3  # relative: fp32 weights round each applied update (the difference is taken in fp64)
TE = "[train]\ntext_encoder = true\n"
SGD = ['optimizer.kind="sgd"', "optimizer.momentum=0.0", "optimizer.weight_decay=0.0"]


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in module.parameters()])


def _step(tmp_path, name: str, overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the U-Net's step, the text encoder's step) of a one-step run."""
    plan = compile_spec(write_spec(tmp_path / name, steps=1, extra=TE), [*SGD, *overrides])
    result = execute(plan, keep_models=True)
    before = build_pipeline("builtin:tiny-sd1")
    c = result.components
    return _flat(c.unet) - _flat(before.unet), _flat(c.text_encoders[0]) - _flat(before.text_encoder)


def test_the_denoiser_at_rate_zero_stays_bit_identical_and_its_gradients_clip_the_text_encoders(tmp_path):
    # both at rate 1, unclipped: the steps are minus the raw gradients
    g_unet, g_te = _step(tmp_path, "raw", ["optimizer.lr=1.0", "optimizer.max_grad_norm=0"])
    g_unet, g_te = -g_unet, -g_te
    total = torch.sqrt(g_unet.square().sum() + g_te.square().sum())
    limit = float(total) / 4  # the clip binds: the steps shrink 4-fold, and stay far above fp32's rounding
    clip = [f"optimizer.max_grad_norm={limit!r}", "optimizer.text_encoder_lr=1.0"]
    # the denoiser at rate 0: frozen weights, but its gradients count in the norm (torch's clip_grad_norm_
    # scales by max_norm / (total + 1e-6))
    plan = compile_spec(write_spec(tmp_path / "zero", steps=1, extra=TE), [*SGD, *clip, "optimizer.lr=0"])
    assert plan.optimizer.lr == 0 and plan.train_denoiser
    assert "lr 0 (the denoiser held: gradients computed and clipped, weights still)" in summary_text(plan)
    result = execute(plan, keep_models=True)
    before = build_pipeline("builtin:tiny-sd1")
    for a, b in zip(result.components.unet.parameters(), before.unet.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach())
    te_zero = _flat(result.components.text_encoders[0]) - _flat(before.text_encoder)
    expected = -g_te * (limit / (total + 1e-6))
    assert torch.linalg.vector_norm(te_zero - expected) <= TOL * torch.linalg.vector_norm(expected)
    # the denoiser frozen: the text encoder's gradient is clipped by its own norm, a longer step
    _, te_alone = _step(tmp_path, "frozen", [*clip, "train.denoiser=false"])
    te_norm = torch.linalg.vector_norm(g_te)
    alone = -g_te * min(1.0, limit / (te_norm + 1e-6))
    assert torch.linalg.vector_norm(te_alone - alone) <= TOL * torch.linalg.vector_norm(alone)
    # the two runs' steps differ exactly by the ratio of the clip factors
    ratio = torch.linalg.vector_norm(te_zero) / torch.linalg.vector_norm(te_alone)
    assert abs(ratio - min(1.0, limit / (total + 1e-6)) / min(1.0, limit / (te_norm + 1e-6))) < TOL * ratio
    assert ratio < 0.99  # the U-Net's gradients made the text encoder's step shorter


def test_the_denoiser_at_rate_zero_holds_still_and_resumes_bit_exact(tmp_path):
    """Schedule-free AdamW with weight decay (the checkpoint saved in eval mode, resumed in train mode): the
    denoiser stays bit-identical to the base while the text encoder moves; an interrupted run resumes to the
    uninterrupted run's weights. (AdamW with weight decay holds the denoiser in a run in
    test_a_torch_schedule_moves_the_denoiser_at_rate_zero_as_kohyas[step]; its state, a group at rate 0 or
    not, resumes bit-exact in many tests.)"""
    spec = write_spec(tmp_path, steps=4, extra=TE)
    settings = ['optimizer.kind="adamw_schedulefree"', "optimizer.schedulefree_warmup_steps=2"]
    settings += ["optimizer.lr=0", "optimizer.text_encoder_lr=1e-3", "optimizer.weight_decay=0.1"]
    whole = execute(compile_spec(spec, [*settings, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*settings, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = build_pipeline("builtin:tiny-sd1")
    for x, y in zip(whole.components.unet.parameters(), base.unet.parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach())
    assert not torch.equal(_flat(whole.components.text_encoders[0]), _flat(base.text_encoder))


@pytest.mark.parametrize(
    "kind",
    ["adamw8bit", "adafactor", "radam", "lion", "lion8bit", "ademamix", "sgd"],
)
def test_every_optimizer_allowed_at_rate_zero_holds_the_denoiser_bit_identical(tmp_path, kind):
    """The kinds DBS200 lets through scale both their step and their decoupled weight decay by the group's
    rate: runtime/optim.py's optimizer on the plan's groups [denoiser at 0, text encoder at 1e-3] (the run
    puts them in as they are: the tiny runs above and below hold the denoiser so) steps six times with decay
    (and momentum for sgd) and leaves the denoiser bit-identical while the text encoder moves. Tensors of
    64 x 80 reach the 8-bit kinds' quantised state (bitsandbytes' min_8bit_size 4096)."""
    from dbspec.runtime.optim import make_optimizer, param_groups
    from tests.runtime.optim_kit import same, step_alike

    settings = [f'optimizer.kind="{kind}"', "optimizer.lr=0", "optimizer.weight_decay=0.1"]
    settings += ["optimizer.text_encoder_lr=1e-3", *(["optimizer.momentum=0.9"] if kind == "sgd" else [])]
    o = compile_spec(write_spec(tmp_path, steps=1, extra=TE), settings).optimizer
    assert o.lr == 0 and o.text_encoder_lr == 1e-3
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 80, generator=g)) for _ in range(4)]
    start = [p.detach().clone() for p in params]
    groups = param_groups(params[:2], [params[2:]], o)
    assert [(group["name"], group["lr"]) for group in groups] == [("denoiser", 0.0), ("text_encoder", 1e-3)]
    step_alike([make_optimizer(groups, o)], [params])
    assert same([p.detach() for p in params[:2]], start[:2])  # the denoiser held
    assert not same([p.detach() for p in params[2:]], start[2:])  # the text encoder trained


# --- schedule-free optimizers and torch schedulers at rate 0 (issue 12) ------------------------------------
# The run's own optimizer steps are replayed on a hand-built optimizer, the class kohya's get_optimizer
# builds, `cls([{U-Net, lr 0}, {text encoder, lr X}], lr=learning_rate=0, **optimizer_args)`, over copies of
# the weights the run started from, stepping the gradients the run stepped (clipped over both groups).


def _recording(monkeypatch) -> dict:
    """Patch setup's make_optimizer to keep the groups' parameters, their starting values and every step's
    gradients."""
    import dbspec.runtime.setup as setup
    from dbspec.runtime.optim import make_optimizer

    seen: dict = {"grads": []}

    def recording(groups, opt):
        optimizer = make_optimizer(groups, opt)
        seen["groups"] = [(g.get("name"), g["lr"], list(g["params"])) for g in groups]
        seen["start"] = [[p.detach().clone() for p in g["params"]] for g in groups]
        optimizer.register_step_pre_hook(
            lambda o, args, kwargs: seen["grads"].append(
                [
                    [None if p.grad is None else p.grad.detach().clone() for p in g["params"]]
                    for g in o.param_groups
                ]
            )
        )
        return optimizer

    monkeypatch.setattr(setup, "make_optimizer", recording)
    return seen


def _replay(seen: dict, build, between=None, scheduler=None) -> list:
    """`build([U-Net parameters, text encoder parameters])`, the hand-built optimizer, over copies of the
    run's starting weights, stepping the run's gradients; `between(optimizer)` after each step and once more
    at the end (the run's eval/train switches around each step's checkpoint check and the final save),
    `scheduler(optimizer)` the LR scheduler stepped after each step. Its parameters, per group."""
    params = [[torch.nn.Parameter(x.clone()) for x in group] for group in seen["start"]]
    reference = build(params)
    if hasattr(reference, "train"):
        reference.train()
    lrs = scheduler(reference) if scheduler else None
    for grads in seen["grads"]:
        for ps, gs in zip(params, grads, strict=True):
            for p, g in zip(ps, gs, strict=True):
                p.grad = None if g is None else g.clone()
        reference.step()
        if between:
            between(reference)
        if lrs is not None:
            lrs.step()
    if between:
        between(reference)
    return params


def _kohya_groups(params: list, rates: list[float]) -> list[dict]:
    """train_db.py's trainable_params with learning_rate_te: [{U-Net, learning_rate}, {text encoder,
    learning_rate_te}]."""
    return [{"params": ps, "lr": rate} for ps, rate in zip(params, rates, strict=True)]


def _held_and_equal(seen: dict, params: list) -> None:
    """The run's denoiser group is bit-identical to its start, its text encoder moved, and every weight
    equals the replay's."""
    (d_name, d_rate, denoiser), (t_name, t_rate, text) = seen["groups"]
    assert (d_name, d_rate, t_name) == ("denoiser", 0.0, "text_encoder") and t_rate > 0
    assert all(torch.equal(p.detach(), x) for p, x in zip(denoiser, seen["start"][0], strict=True))
    assert not all(torch.equal(p.detach(), x) for p, x in zip(text, seen["start"][1], strict=True))
    for run_group, ref_group in zip((denoiser, text), params, strict=True):
        assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(run_group, ref_group, strict=True))


SCHEDULEFREE = {
    "adamw_schedulefree": ("AdamWScheduleFree", ["optimizer.schedulefree_warmup_steps=2"]),
    "sgd_schedulefree": (
        "SGDScheduleFree",
        ["optimizer.schedulefree_warmup_steps=2", "optimizer.momentum=0.8"],
    ),
    # silent_sgd_phase = false: RAdam's first steps (before rectification) take SGD steps instead of none
    "radam_schedulefree": ("RAdamScheduleFree", ["optimizer.silent_sgd_phase=false"]),
}


@pytest.mark.parametrize("kind", list(SCHEDULEFREE))
def test_a_schedulefree_run_holds_the_denoiser_at_rate_zero_as_the_class_on_two_groups(
    tmp_path, monkeypatch, kind
):
    """schedulefree's classes give a group at rate 0 an averaging weight lr_max^weight_lr_power = 0 (their
    weight / weight_sum is 0 / 0, caught as 0) and step it by 0 x its gradient, warm-up or not: the denoiser
    stays bit-identical through the steps and the eval/train switches, the text encoder trains, and the run
    equals the class built on [denoiser at 0, text encoder at 1e-3] stepping the same (jointly clipped)
    gradients."""
    import schedulefree

    cls, extra = SCHEDULEFREE[kind]
    settings = [f'optimizer.kind="{kind}"', "optimizer.lr=0", "optimizer.text_encoder_lr=1e-3"]
    settings += ["optimizer.weight_decay=0.1", "optimizer.schedulefree_r=0.5", "optimizer.max_grad_norm=0.5"]
    plan = compile_spec(write_spec(tmp_path, steps=3, extra=TE), [*settings, *extra])
    o = plan.optimizer
    assert plan.train_denoiser and o.lr == 0 and o.schedulefree is not None
    seen = _recording(monkeypatch)
    result = execute(plan, keep_models=True)
    assert result.status == "finished" and len(seen["grads"]) == 3
    kwargs = {"weight_decay": 0.1, "r": 0.5, "weight_lr_power": o.schedulefree.weight_lr_power}
    if kind == "sgd_schedulefree":
        kwargs.update(momentum=0.8, warmup_steps=2)
    else:
        kwargs.update(betas=tuple(o.betas), eps=o.eps)
    if kind == "adamw_schedulefree":
        kwargs["warmup_steps"] = 2
    if kind == "radam_schedulefree":
        kwargs["silent_sgd_phase"] = o.schedulefree.silent_sgd_phase

    def switch(optimizer):  # the loop's eval/train switch around every step's checkpoint check
        optimizer.eval()
        optimizer.train()

    sf = getattr(schedulefree, cls)
    params = _replay(seen, lambda ps: sf(_kohya_groups(ps, [0.0, 1e-3]), lr=0.0, **kwargs), between=switch)
    _held_and_equal(seen, params)
    base = build_pipeline("builtin:tiny-sd1")
    for x, y in zip(result.components.unet.parameters(), base.unet.parameters(), strict=True):
        assert torch.equal(x.detach(), y.detach())


# (dbspec [schedule] settings, torch's scheduler as kohya's lr_scheduler_type builds it with its args)
TORCH_SCHEDULES = {
    "step": (
        ['schedule.lr_schedule="step"', "schedule.step_size=1", "schedule.gamma=0.5"],
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    ),
    # optimizer.denoiser_at_zero = "keep": OneCycleLR lifts the U-Net's group off rate 0 to max_lr
    "one_cycle": (
        ['schedule.lr_schedule="one_cycle"', "schedule.t_max=3", "schedule.max_lr=2e-3"],
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=2e-3, total_steps=3),
    ),
}


@pytest.mark.parametrize("schedule", list(TORCH_SCHEDULES))
def test_a_torch_schedule_moves_the_denoiser_at_rate_zero_as_kohyas(tmp_path, monkeypatch, schedule):
    """torch's StepLR multiplies each group's own rate by gamma: a group at 0 stays at 0 (held). OneCycleLR's
    max_lr lifts it: with optimizer.denoiser_at_zero = "keep" the denoiser trains on that schedule from rate
    0 (was refused; kohya train_db.py's U-Net at learning_rate 0 under lr_scheduler_type OneCycleLR). Either
    way the run equals torch's AdamW on [denoiser at 0, text encoder at 1e-3] with the scheduler stepped
    after each optimizer step, as kohya builds them, bit for bit."""
    settings, build = TORCH_SCHEDULES[schedule]
    kept = schedule != "step"
    settings = [*settings, "optimizer.lr=0", "optimizer.text_encoder_lr=1e-3", "optimizer.weight_decay=0.1"]
    settings += ['optimizer.denoiser_at_zero="keep"'] if kept else []
    plan = compile_spec(write_spec(tmp_path, steps=3, extra=TE), settings)
    assert plan.optimizer.kind == "adamw" and plan.optimizer.denoiser_at_zero == ("keep" if kept else "hold")
    said = "kept in the optimizer at rate 0" if kept else "the denoiser held"
    assert said in summary_text(plan) and any("DBS606" in w for w in plan.warnings) == kept
    seen = _recording(monkeypatch)
    assert execute(plan).status == "finished" and len(seen["grads"]) == 3
    o = plan.optimizer
    kwargs = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": 0.1}
    adamw = torch.optim.AdamW
    params = _replay(
        seen, lambda ps: adamw(_kohya_groups(ps, [0.0, 1e-3]), lr=0.0, **kwargs), scheduler=build
    )
    if not kept:
        _held_and_equal(seen, params)
        return
    (_, d_rate, denoiser), (_, _, text) = seen["groups"]
    assert d_rate == 0.0
    for run_group, ref_group, start in zip((denoiser, text), params, seen["start"], strict=True):
        assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(run_group, ref_group, strict=True))
        assert not all(torch.equal(p.detach(), x) for p, x in zip(run_group, start, strict=True))  # moved


def test_the_denoiser_at_rate_zero_trains_on_the_schedule_alone_without_a_text_encoder(tmp_path, monkeypatch):
    """kohya train_db.py with learning_rate 0 and no text encoder under OneCycleLR: one optimizer group, the
    U-Net at rate 0, which the scheduler lifts to its own rate. optimizer.denoiser_at_zero = "keep" with no
    text encoder trains it so (was refused, DBS200): torch's AdamW on [{U-Net, lr 0}] with OneCycleLR
    stepped after each step, as kohya builds them, gives the run's weights bit for bit."""
    settings, build = TORCH_SCHEDULES["one_cycle"]
    settings = [*settings, "optimizer.lr=0", "optimizer.weight_decay=0.1"]
    settings += ['optimizer.denoiser_at_zero="keep"']
    plan = compile_spec(write_spec(tmp_path, steps=2), settings)
    assert plan.optimizer.denoiser_at_zero == "keep" and any("DBS606" in w for w in plan.warnings)
    seen = _recording(monkeypatch)
    assert execute(plan).status == "finished" and len(seen["grads"]) == 2
    [(name, rate, denoiser)] = seen["groups"]
    assert (name, rate) == ("denoiser", 0.0)
    o = plan.optimizer
    kwargs = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": 0.1}
    [reference] = _replay(
        seen, lambda ps: torch.optim.AdamW(_kohya_groups(ps, [0.0]), lr=0.0, **kwargs), scheduler=build
    )
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(denoiser, reference, strict=True))
    assert not all(torch.equal(p.detach(), x) for p, x in zip(denoiser, seen["start"][0], strict=True))


def test_a_relative_step_adafactor_run_trains_both_as_kohyas_rateless_groups(tmp_path, monkeypatch):
    """kohya's train_db.py learning_rate 0 with Adafactor's relative step: get_optimizer removes the groups'
    rates and Adafactor computes its own step, so the U-Net trains. dbspec's run with the denoiser and text
    encoder training (optimizer.lr = text_encoder_lr, which the relative step ignores as well) equals
    transformers' Adafactor on kohya's two rateless groups stepping the same gradients."""
    from transformers.optimization import Adafactor

    settings = ['optimizer.kind="adafactor"', "optimizer.relative_step=true", "optimizer.lr=1e-3"]
    plan = compile_spec(write_spec(tmp_path, steps=3, extra=TE), [*settings, "optimizer.weight_decay=0.1"])
    assert plan.train_denoiser and plan.optimizer.adafactor.relative_step
    seen = _recording(monkeypatch)
    assert execute(plan).status == "finished" and len(seen["grads"]) == 3
    a = plan.optimizer.adafactor
    kwargs = {"scale_parameter": a.scale_parameter, "warmup_init": a.warmup_init, "weight_decay": 0.1}
    kwargs.update(beta1=a.beta1, clip_threshold=a.clip_threshold, decay_rate=a.decay_rate, eps=tuple(a.eps))

    def kohya_adafactor(params):  # the groups' "lr" popped, lr=None, relative_step=True
        return Adafactor([{"params": ps} for ps in params], lr=None, relative_step=True, **kwargs)

    params = _replay(seen, kohya_adafactor)
    (_, _, denoiser), (_, _, text) = seen["groups"]
    for run_group, ref_group, start in zip((denoiser, text), params, seen["start"], strict=True):
        assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(run_group, ref_group, strict=True))
        assert not all(
            torch.equal(p.detach(), x) for p, x in zip(run_group, start, strict=True)
        )  # it trained


def test_dadapt_lion_steps_a_group_at_rate_zero_as_one_at_the_largest_rate(tmp_path):
    """dadaptation's DAdaptLion accepts a group at rate 0 but steps every group by d x the largest group
    rate: kohya's [U-Net at 0, text encoder at X] is dbspec's plan with both at X (what the converter writes;
    optimizer.lr = 0 with dadapt_lion is refused, DBS200)."""
    import dadaptation

    from dbspec.runtime.optim import make_optimizer, param_groups
    from tests.runtime.optim_kit import same, step_alike

    settings = ['optimizer.kind="dadapt_lion"', "optimizer.lr=1e-3", "optimizer.weight_decay=0.1"]
    o = compile_spec(write_spec(tmp_path, steps=1, extra=TE), settings).optimizer
    assert o.lr == o.text_encoder_lr == 1e-3

    def params() -> list:
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(6, 5, generator=g)) for _ in range(3)]

    ours, theirs = params(), params()
    optimizer = make_optimizer(param_groups(ours[:2], [ours[2:]], o), o)
    kohya = dadaptation.DAdaptLion(
        [{"params": theirs[:2], "lr": 0.0}, {"params": theirs[2:], "lr": 1e-3}], lr=0.0, weight_decay=0.1
    )
    step_alike([optimizer, kohya], [ours, theirs])
    assert same(ours, theirs) and not same(theirs[:2], params()[:2])  # kohya's U-Net group moved


@pytest.mark.parametrize(
    "kind",
    [
        "adamw",
        "came",
        "adamw_schedulefree",
        "lion",
        "lion8bit",
        "adafactor",
        "radam",
        "adamw8bit",
        "sgd",
        "dadapt_adam",
        "dadapt_adam_preprint",
        "dadapt_sgd",
        "prodigy",
    ],
)
def test_every_optimizer_allowed_holds_a_text_encoder_group_at_rate_zero(tmp_path, kind):
    """optimizer.text_encoder_lr = 0 (kohya networks.lora_fa's text-encoder group kept at rate 0): the kinds
    DBS200 lets through, built by runtime/optim.py on the plan's groups [denoiser at 1e-3, text encoder at 0]
    (CAME at the denoiser's positive lr), step the denoiser and leave the text encoder bit-identical through
    six steps with weight decay and momentum; D-Adaptation's classes and Prodigy where they leave a group at
    rate 0 out of d (dadapt_adam's decay coupled, dadapt_adam_preprint's decoupled, dadapt_sgd without
    momentum, prodigy without weight decay: compiler/zero_group.py); the others are refused
    (tests/unit/test_rules.py, tests/runtime/test_optim_zero_group.py)."""
    from dbspec.runtime.optim import make_optimizer, param_groups
    from tests.runtime.optim_kit import same, step_alike

    settings = [f'optimizer.kind="{kind}"', "optimizer.lr=1e-3", "optimizer.text_encoder_lr=0"]
    settings += [f"optimizer.weight_decay={0 if kind == 'prodigy' else 0.1}"]
    settings += ["optimizer.momentum=0.9"] if kind == "sgd" else []
    settings += ["optimizer.decouple=true"] if kind == "dadapt_adam_preprint" else []
    o = compile_spec(write_spec(tmp_path, steps=1, extra=TE), settings).optimizer
    assert o.lr == 1e-3 and o.text_encoder_lr == 0
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 80, generator=g)) for _ in range(4)]
    start = [p.detach().clone() for p in params]
    groups = param_groups(params[:2], [params[2:]], o)
    assert [(group["name"], group["lr"]) for group in groups] == [("denoiser", 1e-3), ("text_encoder", 0.0)]
    optimizer = make_optimizer(groups, o)
    if hasattr(optimizer, "train"):
        optimizer.train()
    step_alike([optimizer], [params])
    if hasattr(optimizer, "eval"):
        optimizer.eval()  # the averaged weights a checkpoint holds
    assert same([p.detach() for p in params[2:]], start[2:])  # the text encoder held
    assert not same([p.detach() for p in params[:2]], start[:2])  # the denoiser trained


@pytest.mark.parametrize(
    ("settings", "kohya"),
    [
        (
            ['optimizer.kind="prodigy"', "optimizer.lr=1.0", "optimizer.weight_decay=0.1"],
            ("prodigyopt", "Prodigy", {"weight_decay": 0.1}),
        ),
        (
            ['optimizer.kind="dadapt_adam"', "optimizer.lr=1.0", "optimizer.weight_decay=0.1"]
            + ["optimizer.decouple=true"],
            ("dadaptation", "DAdaptAdam", {"weight_decay": 0.1, "decouple": True}),
        ),
        (
            ['optimizer.kind="dadapt_sgd"', "optimizer.lr=1.0", "optimizer.momentum=0.9"]
            + ["optimizer.weight_decay=0"],
            ("dadaptation", "DAdaptSGD", {"momentum": 0.9}),
        ),
    ],
)
def test_a_text_encoder_kept_at_rate_zero_moves_as_kohyas_group(tmp_path, settings, kohya):
    """optimizer.text_encoder_at_zero = "keep": the plan's optimizer (runtime/optim.py on the plan's groups,
    the denoiser's first) steps as the class kohya's networks.lora_fa builds (`lr=learning_rate`, its
    text-encoder group at rate 0 first) on the same gradients, the group at rate 0 moved alike, bit for bit
    (the group adds nothing to the estimate of d, so the order does not matter)."""
    import importlib

    from dbspec.runtime.optim import make_optimizer, param_groups
    from tests.runtime.optim_kit import same, step_alike

    keep = ["optimizer.text_encoder_lr=0", 'optimizer.text_encoder_at_zero="keep"']
    o = compile_spec(write_spec(tmp_path, steps=1, extra=TE), [*settings, *keep]).optimizer
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 80, generator=g) + 1.0 for _ in range(4)]
    ours, theirs = ([torch.nn.Parameter(p.clone()) for p in start] for _ in range(2))
    module, name, kwargs = kohya
    kohya_groups = [{"params": theirs[2:], "lr": 0.0}, {"params": theirs[:2], "lr": 1.0}]
    optimizers = [
        make_optimizer(param_groups(ours[:2], [ours[2:]], o), o),
        getattr(importlib.import_module(module), name)(kohya_groups, lr=1.0, **kwargs),
    ]
    step_alike(optimizers, [ours, theirs], n=8)
    assert same(ours, theirs)
    assert not same([p.detach() for p in ours[2:]], start[2:])  # the text encoder moved


def test_both_groups_at_rate_zero_train_on_the_schedule_as_kohyas_one_group_and_two(tmp_path, monkeypatch):
    """kohya train_db.py at learning_rate 0 with the text encoder at rate 0 too, under OneCycleLR: without
    learning_rate_te the U-Net and text encoder are one group at 0 (`itertools.chain`), with
    learning_rate_te 0 two, the U-Net's first; the scheduler lifts them to max_lr. optimizer.lr =
    text_encoder_lr = 0 with denoiser_at_zero and text_encoder_at_zero = "keep" (was refused, DBS200):
    torch's AdamW with OneCycleLR stepped after each step, on kohya's two groups and on its one, gives the
    run's weights bit for bit, both parts moved."""
    settings, build = TORCH_SCHEDULES["one_cycle"]
    settings = [*settings, "optimizer.lr=0", "optimizer.text_encoder_lr=0", "optimizer.weight_decay=0.1"]
    settings += ['optimizer.denoiser_at_zero="keep"', 'optimizer.text_encoder_at_zero="keep"']
    plan = compile_spec(write_spec(tmp_path, steps=3, extra=TE), settings)
    o = plan.optimizer
    assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero, o.text_encoder_at_zero) == (0, 0, "keep", "keep")
    seen = _recording(monkeypatch)
    assert execute(plan).status == "finished" and len(seen["grads"]) == 3
    (d_name, d_rate, denoiser), (t_name, t_rate, text) = seen["groups"]
    assert (d_name, d_rate, t_name, t_rate) == ("denoiser", 0.0, "text_encoder", 0.0)
    kwargs = {"betas": tuple(o.betas), "eps": o.eps, "weight_decay": 0.1}
    two = _replay(
        seen, lambda ps: torch.optim.AdamW(_kohya_groups(ps, [0.0, 0.0]), lr=0.0, **kwargs), scheduler=build
    )
    one = _replay(  # one group over both parts' tensors, the U-Net's first: its parameters, split back
        seen,
        lambda ps: torch.optim.AdamW([{"params": [*ps[0], *ps[1]], "lr": 0.0}], lr=0.0, **kwargs),
        scheduler=build,
    )
    for run_group, start, *references in zip((denoiser, text), seen["start"], two, one, strict=True):
        for reference in references:
            assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(run_group, reference, strict=True))
        assert not all(torch.equal(p.detach(), x) for p, x in zip(run_group, start, strict=True))  # moved
