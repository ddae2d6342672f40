"""Optimizer and schedule settings real kohya configs use (issue 12), converted without --allow-unsupported,
checked, and asserted on the plan: Adafactor's beta1 / clip_threshold / decay_rate / eps, torch's CyclicLR and
PolynomialLR, `last_epoch`, a torch scheduler over Adafactor's relative step, bitsandbytes' AdEMAMix (class
paths), the schedule-free optimizers and other class paths.

Expected values follow sd-scripts library/train_util.py get_optimizer / get_scheduler_fix: optimizer_args and
lr_scheduler_args parsed with ast.literal_eval and passed as `cls(..., **args)`; a class path imported as
written; schedule-free optimizers get a dummy scheduler. Curves are checked against closed forms of torch's
documentation (float for float against torch: tests/runtime/test_torch_schedules.py).
"""

from __future__ import annotations

import math

import pytest

from convert_kit import (
    expressible,
    kohya_lora,
    SD15,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (an autouse fixture)
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    write,
)  # noqa: F401

# --- Adafactor's other arguments ----------------------------------------------------------------------------


def test_gui_sdxl_adafactor_with_beta1_clip_and_decay(tmp_path):
    """A bmaltais GUI SDXL fine-tune dump: fixed-LR Adafactor with a first moment, its own clip and decay."""
    images(tmp_path / "img" / "20_ohwx man", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
learning_rate = 4e-7
max_train_steps = 1600
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 100
optimizer_type = "Adafactor"
optimizer_args = [ "scale_parameter=False", "relative_step=False", "warmup_init=False", "beta1=0.9",
  "clip_threshold=1.5", "decay_rate=-0.6", "eps=(1e-30, 2e-3)" ]
mixed_precision = "bf16"
""",
    )
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    )
    assert fate(outcome, "optimizer_args") == "mapped"
    plan = plan_of(outcome, tmp_path)
    a = plan.optimizer.adafactor
    assert (a.relative_step, a.scale_parameter, a.beta1, a.clip_threshold, a.decay_rate, a.eps) == (
        False,
        False,
        0.9,
        1.5,
        -0.6,
        (1e-30, 2e-3),
    )
    assert plan.optimizer.weight_decay == 0.0  # transformers' Adafactor default
    assert plan.schedule.lr_schedule == "constant_with_warmup" and plan.schedule.warmup_steps == 100


def test_adafactor_defaults_are_transformers(tmp_path):
    plan = plan_of(
        expressible(
            kohya_lora(tmp_path, '--optimizer_type Adafactor --optimizer_args "relative_step=False"')
        ),
        tmp_path,
    )
    a = plan.optimizer.adafactor
    assert (a.beta1, a.clip_threshold, a.decay_rate, a.eps, a.scale_parameter) == (
        None,
        1.0,
        -0.8,
        (1e-30, 1e-3),
        True,
    )


def test_an_adafactor_eps_that_is_not_a_pair_is_invalid(tmp_path):
    outcome = kohya_lora(
        tmp_path, '--optimizer_type Adafactor --optimizer_args "relative_step=False" "eps=1e-30"'
    )
    assert outcome.exit_code == 1 and "indexes it" in messages(outcome, "DBS402")


# --- torch's CyclicLR and PolynomialLR (lr_scheduler_type) --------------------------------------------------


def _cyclic(step: int, base: float, peak: float, up: int, down: int, mode: str, gamma: float = 1.0) -> float:
    """torch's CyclicLR documentation: a triangle from base_lr to max_lr, scaled per cycle or iteration."""
    cycle = math.floor(1 + step / (up + down))
    position = step - (cycle - 1) * (up + down)
    rise = position / up if position <= up else 1 - (position - up) / down
    scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1), "exp_range": gamma**step}[mode]
    return base + (peak - base) * rise * scale


def test_lora_cyclic_lr_triangular2_with_its_momentum_cycle(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=1e-5 max_lr=1e-4 step_size_up=50 "
            "step_size_down=100 \"mode='triangular2'\" --save_every_n_steps 25",
        )
    )
    assert fate(outcome, "lr_scheduler_type") == "mapped" and fate(outcome, "lr_scheduler") == "inert"
    s = plan_of(outcome, tmp_path).schedule
    a = s.torch
    assert (s.lr_schedule, a.base_lr, a.max_lr, a.step_size_up, a.step_size_down, a.cyclic_mode) == (
        "cyclic",
        1e-5,
        1e-4,
        50,
        100,
        "triangular2",
    )
    assert (a.base_momentum, a.max_momentum, a.cycle_momentum, a.gamma) == (0.8, 0.9, True, 1.0)  # torch's
    # whole step sizes stay ints in the plan: its JSON, and a run's hash, as before fractions were taken
    assert type(a.step_size_up) is int and type(a.step_size_down) is int
    points = dict(s.lr_points)
    for step in (0, 25, 50, 100, 150, 175, 200, 300):
        assert points[step] == pytest.approx(_cyclic(step, 1e-5, 1e-4, 50, 100, "triangular2"), rel=1e-12)
    assert points[200] == pytest.approx(1e-5 + 9e-5 / 2, rel=1e-12)  # the second cycle's peak is half as high
    momenta = dict(s.momentum_points)  # AdamW's beta1 falls as the LR rises
    assert momenta[0] == 0.9 and momenta[50] == pytest.approx(0.8)


def test_cyclic_exp_range_and_default_down_steps(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--lr_scheduler_type torch.optim.lr_scheduler.CyclicLR --lr_scheduler_args base_lr=2e-5 "
            "max_lr=2e-4 step_size_up=30 \"mode='exp_range'\" gamma=0.99 cycle_momentum=False "
            "step_size_down=None \"scale_mode='iterations'\" --save_every_n_steps 20",
        )
    )
    s = plan_of(outcome, tmp_path).schedule
    assert s.torch.step_size_down == 0 and s.momentum_points == ()  # None: as long as the rise
    for step, lr in s.lr_points:
        assert lr == pytest.approx(_cyclic(step, 2e-5, 2e-4, 30, 30, "exp_range", 0.99), rel=1e-12)


def test_cyclic_fractional_step_sizes_are_torchs_floats(tmp_path):
    """torch's CyclicLR takes float(step_size_up) / float(step_size_down): a fraction is a fraction (was
    DBS403, "dbspec counts whole steps")."""
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=1e-5 max_lr=1e-4 step_size_up=12.5 "
            "step_size_down=37.5 cycle_momentum=False --save_every_n_steps 10",
        )
    )
    assert fate(outcome, "lr_scheduler_args") == "mapped"
    s = plan_of(outcome, tmp_path).schedule
    assert (s.torch.step_size_up, s.torch.step_size_down) == (12.5, 37.5)
    points = dict(s.lr_points)
    assert len(points) > 5
    for step, lr in points.items():  # a triangle of period 50 whose peak falls between two steps
        assert lr == pytest.approx(_cyclic(step, 1e-5, 1e-4, 12.5, 37.5, "triangular"), rel=1e-12)
    assert points[10] == pytest.approx(1e-5 + 9e-5 * 10 / 12.5, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ("step_size_up=20 step_size_down=0", "saw-tooth"),  # torch: total_size = up, step_ratio 1
        ("step_size_up=0", "rise above 0"),  # torch divides 0 by 0 at its first get_lr
    ],
)
def test_cyclic_step_sizes_dbspec_cannot_take_say_why(tmp_path, args, why):
    outcome = kohya_lora(
        tmp_path, f"--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=1e-5 max_lr=1e-4 {args}"
    )
    assert "DBS403" in codes(outcome)
    assert why in messages(outcome, "DBS403")


def test_polynomial_lr_falls_to_zero_after_total_iters(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--lr_scheduler_type PolynomialLR --lr_scheduler_args total_iters=200 power=2.0 "
            "--lr_scheduler_power 3 --save_every_n_steps 50",
        )
    )
    assert fate(outcome, "lr_scheduler_power") == "inert"  # kohya passes only lr_scheduler_args to the class
    s = plan_of(outcome, tmp_path).schedule
    assert (s.lr_schedule, s.torch.total_iters, s.power) == ("polynomial_lr", 200, 2.0)
    points = dict(s.lr_points)
    for step in (0, 50, 100, 150):
        assert points[step] == pytest.approx(1e-4 * (1 - step / 200) ** 2, rel=1e-9)
    assert points[200] == 0.0 and points[300] == 0.0


@pytest.mark.parametrize(
    "args",
    [
        "--lr_scheduler_type StepLR --lr_scheduler_args step_size=100 last_epoch=10",
        "--lr_scheduler cosine --lr_scheduler_args last_epoch=100",
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=1e-5 max_lr=1e-4 last_epoch=0",
    ],
)
def test_last_epoch_is_invalid_as_torch_raises_on_kohyas_groups(tmp_path, args):
    outcome = kohya_lora(tmp_path, args)
    assert outcome.exit_code == 1 and fate(outcome, "lr_scheduler_args") == "invalid"
    assert "initial_lr" in messages(outcome, "DBS402") and "DBS403" not in codes(outcome)


def test_last_epoch_minus_one_is_the_default(tmp_path):
    s = plan_of(
        expressible(
            kohya_lora(tmp_path, "--lr_scheduler_type PolynomialLR --lr_scheduler_args last_epoch=-1")
        ),
        tmp_path,
    )
    assert s.schedule.lr_schedule == "polynomial_lr" and s.schedule.torch.total_iters == 5  # torch's default


def test_cyclic_lr_cycling_adafactors_momentum_is_invalid(tmp_path):
    outcome = kohya_lora(
        tmp_path,
        "--optimizer_type Adafactor --optimizer_args relative_step=False --lr_scheduler_type CyclicLR "
        "--lr_scheduler_args base_lr=1e-5 max_lr=1e-4",
    )
    assert outcome.exit_code == 1 and "cycle_momentum" in messages(outcome, "DBS402")


def test_an_invalid_cyclic_mode_is_invalid(tmp_path):
    outcome = kohya_lora(
        tmp_path,
        "--lr_scheduler_type CyclicLR --lr_scheduler_args base_lr=1e-5 max_lr=1e-4 \"mode='cosine'\"",
    )
    assert outcome.exit_code == 1 and "mode is invalid" in messages(outcome, "DBS402")


# --- a torch scheduler over Adafactor's relative step -------------------------------------------------------


def test_cyclic_lr_over_adafactors_relative_step_changes_nothing(tmp_path):
    """kohya removes the groups' lr for the relative step; CyclicLR sets its own rates, which Adafactor then
    ignores: the run is Adafactor's relative step alone."""
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--optimizer_type Adafactor --lr_scheduler_type CyclicLR "
            "--lr_scheduler_args base_lr=1e-5 max_lr=1e-4 cycle_momentum=False",
        )
    )
    assert fate(outcome, "lr_scheduler_type") == "inert" and fate(outcome, "lr_scheduler_args") == "inert"
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.lr_schedule == "adafactor" and plan.optimizer.adafactor.relative_step
    assert plan.schedule.lr_points[0] == (0, 1e-2)  # min(1e-2, 1/sqrt(1))


@pytest.mark.parametrize(
    "args",
    [
        "--lr_scheduler_type CosineAnnealingLR --lr_scheduler_args T_max=300",
        "--lr_scheduler_type StepLR --lr_scheduler_args step_size=100",
        "--lr_scheduler_type LinearLR",
        "--lr_scheduler_type PolynomialLR --lr_scheduler_args total_iters=300",
    ],
)
def test_torch_schedulers_that_compute_with_the_removed_lr_are_invalid(tmp_path, args):
    outcome = kohya_lora(tmp_path, f"--optimizer_type Adafactor {args}")
    assert outcome.exit_code == 1 and fate(outcome, "lr_scheduler_type") == "invalid"
    assert "lr None" in messages(outcome, "DBS402")


def test_a_step_lr_that_never_steps_within_the_run_changes_nothing(tmp_path):
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--optimizer_type Adafactor --lr_scheduler_type StepLR --lr_scheduler_args step_size=1000",
        )
    )
    assert fate(outcome, "lr_scheduler_type") == "inert"
    assert plan_of(outcome, tmp_path).schedule.lr_schedule == "adafactor"


# --- AdEMAMix (bitsandbytes class paths) --------------------------------------------------------------------


def test_sdxl_lora_ademamix8bit_from_its_class_path(tmp_path):
    images(tmp_path / "img" / "10_ohwx woman", 3, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
network_module = "networks.lora"
network_dim = 16
learning_rate = 1e-4
max_train_steps = 1000
optimizer_type = "bitsandbytes.optim.AdEMAMix8bit"
optimizer_args = [ "betas=(0.9, 0.999, 0.9999)", "alpha=8.0", "t_alpha=1000", "t_beta3=1000",
  "weight_decay=0.01" ]
lr_scheduler = "cosine"
lr_warmup_steps = 50
""",
    )
    outcome = expressible(
        kohya(
            tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train_network.py"
        )
    )
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay, o.eps) == ("ademamix8bit", (0.9, 0.999, 0.9999), 0.01, 1e-8)
    m = o.ademamix
    assert (m.alpha, m.t_alpha, m.t_beta3, m.eight_bit, m.paged) == (8.0, 1000, 1000, True, False)
    assert plan.schedule.lr_schedule == "cosine" and plan.schedule.warmup_steps == 50


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("bitsandbytes.optim.AdEMAMix", "ademamix"),
        ("bitsandbytes.optim.AdEMAMix32bit", "ademamix"),
        ("bitsandbytes.optim.PagedAdEMAMix", "paged_ademamix"),
        ("bitsandbytes.optim.PagedAdEMAMix8bit", "paged_ademamix8bit"),
    ],
)
def test_each_ademamix_class_path_keeps_bitsandbytes_defaults(tmp_path, path, kind):
    plan = plan_of(expressible(kohya_lora(tmp_path, f"--optimizer_type {path}")), tmp_path)
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay, o.ademamix.alpha, o.ademamix.t_alpha) == (
        kind,
        (0.9, 0.999, 0.9999),
        0.01,
        5.0,
        None,
    )


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        ('--optimizer_type bitsandbytes.optim.AdEMAMix --optimizer_args "optim_bits=8"', "ademamix8bit"),
        (
            '--optimizer_type bitsandbytes.optim.AdEMAMix8bit --optimizer_args "is_paged=True"',
            "paged_ademamix8bit",
        ),
        (
            '--optimizer_type bitsandbytes.optim.PagedAdEMAMix --optimizer_args "optim_bits=32"',
            "paged_ademamix",
        ),
    ],
)
def test_ademamix_is_paged_and_optim_bits_pick_the_class(tmp_path, args, kind):
    plan = plan_of(expressible(kohya_lora(tmp_path, args)), tmp_path)
    assert plan.optimizer.kind == kind
    assert (plan.optimizer.ademamix.paged, plan.optimizer.ademamix.eight_bit) == (
        "paged" in kind,
        "8bit" in kind,
    )


@pytest.mark.parametrize("name", ["AdEMAMix8bit", "PagedAdEMAMix8bit", "AdEMAMix"])
def test_a_bare_ademamix_name_is_invalid_as_kohya_looks_it_up_in_torch_optim(tmp_path, name):
    outcome = kohya_lora(tmp_path, f"--optimizer_type {name}")
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_type") == "invalid"
    found = [d for d in outcome.diagnostics if d.code == "DBS402"]
    assert "torch.optim" in found[0].message and "bitsandbytes.optim." in found[0].help


def test_ademamix_with_two_betas_is_invalid(tmp_path):
    outcome = kohya_lora(
        tmp_path, '--optimizer_type bitsandbytes.optim.AdEMAMix8bit --optimizer_args "betas=(0.9,0.999)"'
    )
    assert outcome.exit_code == 1 and "three numbers" in messages(outcome, "DBS402")


# --- schedule-free ------------------------------------------------------------------------------------------


def test_adamw_schedulefree_ignores_the_schedule_as_kohya_does(tmp_path):
    """kohya's get_scheduler_fix gives schedule-free optimizers a dummy scheduler: the cosine and its warm-up
    never apply; the optimizer's own warmup_steps does."""
    images(tmp_path / "img" / "10_ohwx dog", 3, (512, 512))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512,512"
network_module = "networks.lora"
learning_rate = 1e-3
max_train_steps = 500
optimizer_type = "AdamWScheduleFree"
optimizer_args = [ "warmup_steps=100", "weight_decay=0.01", "betas=(0.95, 0.999)", "r=0.0", "foreach=True" ]
lr_scheduler = "cosine"
lr_warmup_steps = 50
""",
    )
    outcome = expressible(
        kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py")
    )
    assert fate(outcome, "lr_scheduler") == "inert" and fate(outcome, "lr_warmup_steps") == "inert"
    warned = messages(outcome, "DBS405")  # kohya ignores them: a likely mistake in the config
    assert "`lr_scheduler`" in warned and "`lr_warmup_steps`" in warned and "dummy scheduler" in warned
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("adamw_schedulefree", (0.95, 0.999), 0.01)
    assert (o.schedulefree.warmup_steps, o.schedulefree.r, o.schedulefree.weight_lr_power) == (100, 0.0, 2.0)
    s = plan.schedule
    assert (s.lr_schedule, s.warmup_steps) == ("constant", 0) and {lr for _, lr in s.lr_points} == {1e-3}
    assert "schedulefree_warmup_steps = 100  # kohya optimizer_args" in out_path(tmp_path).read_text()


@pytest.mark.parametrize(
    ("name", "kind", "momentum"),
    [
        ("SGDScheduleFree", "sgd_schedulefree", 0.9),
        ("schedulefree.SGDScheduleFree", "sgd_schedulefree", 0.9),
        ("radamschedulefree", "radam_schedulefree", 0.0),
    ],
)
def test_schedulefree_names_and_their_defaults(tmp_path, name, kind, momentum):
    plan = plan_of(expressible(kohya_lora(tmp_path, f"--optimizer_type {name}")), tmp_path)
    o = plan.optimizer
    assert (o.kind, o.weight_decay, o.momentum) == (kind, 0.0, momentum)  # schedulefree's defaults
    assert o.schedulefree.silent_sgd_phase == (kind == "radam_schedulefree")


def test_schedulefree_argument_it_does_not_take_is_invalid(tmp_path):
    outcome = kohya_lora(tmp_path, '--optimizer_type RAdamScheduleFree --optimizer_args "warmup_steps=10"')
    assert outcome.exit_code == 1 and "warmup_steps" in messages(outcome, "DBS402")


# --- other class paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("torch.optim.AdamW", "adamw"),
        ("torch.optim.SGD", "sgd"),
        ("bitsandbytes.optim.AdamW8bit", "adamw8bit"),
        ("prodigyopt.Prodigy", "prodigy"),
        ("lion_pytorch.Lion", "lion"),
        ("dadaptation.DAdaptAdam", "dadapt_adam"),
        ("dadaptation.experimental.DAdaptAdamPreprint", "dadapt_adam_preprint"),
    ],
)
def test_known_class_paths_map_to_their_kind(tmp_path, path, kind):
    lr = "--learning_rate 1.0" if kind in ("prodigy", "dadapt_adam", "dadapt_adam_preprint") else ""
    assert (
        plan_of(expressible(kohya_lora(tmp_path, f"--optimizer_type {path} {lr}")), tmp_path).optimizer.kind
        == kind
    )


def test_transformers_adafactor_class_path_needs_relative_step_false(tmp_path):
    """Built as given: no kohya fix-ups, so transformers' own defaults apply (scale_parameter=True), the named
    schedule stays, and without relative_step=False transformers refuses the lr kohya passes."""
    outcome = expressible(
        kohya_lora(
            tmp_path / "a",
            '--optimizer_type transformers.optimization.Adafactor --optimizer_args "relative_step=False" '
            "--lr_scheduler cosine --lr_warmup_steps 30",
        )
    )
    plan = plan_of(outcome, tmp_path / "a")
    a = plan.optimizer.adafactor
    assert (a.relative_step, a.scale_parameter) == (False, True)
    assert plan.schedule.lr_schedule == "cosine" and plan.schedule.warmup_steps == 30
    crash = kohya_lora(tmp_path / "b", "--optimizer_type transformers.optimization.Adafactor")
    assert crash.exit_code == 1 and "relative_step=True" in messages(crash, "DBS402")
    warm = kohya_lora(
        tmp_path / "c",
        '--optimizer_type transformers.Adafactor --optimizer_args "relative_step=False" "warmup_init=True"',
    )
    assert warm.exit_code == 1 and "warmup_init=True requires" in messages(warm, "DBS402")


def test_a_class_path_in_the_wrong_case_is_invalid(tmp_path):
    outcome = kohya_lora(tmp_path, "--optimizer_type torch.optim.adamw")
    assert outcome.exit_code == 1 and "torch.optim.AdamW" in messages(outcome, "DBS402")


def test_an_unknown_class_path_stays_refused_with_the_reason(tmp_path):
    outcome = kohya_lora(tmp_path, "--optimizer_type pytorch_optimizer.Ranger21")
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_type") == "unsupported"
    assert "no optimizer for the class pytorch_optimizer.Ranger21" in messages(outcome, "DBS403")


# --- torch's RAdam -----------------------------------------------------------------------------------------


def test_radam_is_torch_radam_with_its_defaults(tmp_path):
    """kohya builds any other optimizer_type as getattr(torch.optim, name)(params, lr=lr, **args): RAdam with
    torch's defaults (weight decay 0, betas 0.9/0.999), case-sensitive."""
    plan = plan_of(expressible(kohya_lora(tmp_path, "--optimizer_type RAdam")), tmp_path)
    o = plan.optimizer
    assert (o.kind, o.weight_decay, o.betas, o.eps) == ("radam", 0.0, (0.9, 0.999), 1e-8)
    dotted = expressible(
        kohya_lora(
            tmp_path / "d2",
            '--optimizer_type torch.optim.RAdam --optimizer_args "betas=0.9,0.99" weight_decay=0.1',
        )
    )
    o = plan_of(dotted, tmp_path / "d2").optimizer
    assert (o.kind, o.weight_decay, o.betas) == ("radam", 0.1, (0.9, 0.99))
    lower = kohya_lora(tmp_path / "d3", "--optimizer_type radam")
    assert fate(lower, "optimizer_type") == "invalid" and "case-sensitive" in messages(lower, "DBS402")
    decoupled = expressible(
        kohya_lora(tmp_path / "d4", '--optimizer_type RAdam --optimizer_args "decoupled_weight_decay=True"')
    )
    assert plan_of(decoupled, tmp_path / "d4").optimizer.decoupled_weight_decay  # was DBS403 (issue 12)


@pytest.mark.parametrize(
    "cls", ["LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"]
)
def test_torch_schedulers_kohya_cannot_run_are_invalid(tmp_path, cls):
    """A function or scheduler objects cannot come from lr_scheduler_args (ast.literal_eval), and kohya's loop
    steps the scheduler without ReduceLROnPlateau's metric: kohya fails before training."""
    outcome = kohya_lora(tmp_path, f"--lr_scheduler_type {cls}")
    assert fate(outcome, "lr_scheduler_type") == "invalid" and cls in messages(outcome, "DBS402")
    if cls in ("SequentialLR", "ChainedScheduler"):  # torch's failures: tests/runtime/test_torch_schedules.py
        assert "kohya cannot build it" in messages(outcome, "DBS402")


def test_sequential_lr_with_literal_schedulers_is_invalid(tmp_path):
    """A kohya user can only write literals: scheduler names as strings reach torch as strings."""
    outcome = kohya_lora(
        tmp_path,
        "--lr_scheduler_type torch.optim.lr_scheduler.SequentialLR --lr_scheduler_args "
        "\"schedulers=['LinearLR','CosineAnnealingLR']\" milestones=[10]",
    )
    assert fate(outcome, "lr_scheduler_type") == "invalid"
    assert "scheduler objects" in messages(outcome, "DBS402")
