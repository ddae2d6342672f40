"""train_db.py's `learning_rate 0` with `learning_rate_te` (issue 12) beyond AdamW: kohya puts the U-Net in
an optimizer group at rate 0 and the text encoder at learning_rate_te, and whether the U-Net stays put is
the optimizer's and scheduler's business. Schedule-free optimizers and torch schedulers that multiply each
group's own rate hold it (dbspec's `optimizer.lr = 0`, exact); DAdaptLion and Adafactor's relative step move
it anyway (both train); D-Adaptation's other classes, Prodigy, CAME and lion_pytorch's Lion refuse the
lr=learning_rate=0 kohya passes their constructor (kohya stops: DBS402)."""

from __future__ import annotations

import pytest

from convert_kit import (
    SD15,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "train"
reg_data_dir = "reg"
prior_loss_weight = 1.0
resolution = "512"
output_dir = "out"
learning_rate = 0
learning_rate_te = 5e-6
max_grad_norm = 1.0
lr_scheduler = "constant"
max_train_steps = 400
train_batch_size = 1
mixed_precision = "bf16"
{extra}"""


def _convert(tmp_path, extra: str):
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    write(tmp_path / "config.toml", CONFIG.format(model=SD15, extra=extra))
    return kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")


def _no_difference(outcome) -> None:
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "learning_rate") == "mapped"
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]


@pytest.mark.parametrize(
    ("optimizer", "kind"),
    [
        ('optimizer_type = "AdamWScheduleFree"\n', "adamw_schedulefree"),
        ('optimizer_type = "RAdamScheduleFree"\n', "radam_schedulefree"),
        ('optimizer_type = "SGDScheduleFree"\noptimizer_args = ["momentum=0.9", "warmup_steps=10"]\n', None),
    ],
)
def test_schedulefree_holds_the_unet_at_rate_zero(tmp_path, optimizer, kind):
    """The schedulefree classes give a group at rate 0 an averaging weight of 0 (weight / weight_sum is
    0 / 0, which they catch as 0) and step it by 0 x its gradient: the U-Net stays put, its gradients in the
    clip norm. dbspec's optimizer.lr = 0 with the denoiser training, exact."""
    outcome = _convert(tmp_path, optimizer)
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == (kind or "sgd_schedulefree")
    assert plan.train_denoiser and plan.optimizer.lr == 0 and plan.optimizer.text_encoder_lr == 5e-6
    assert plan.optimizer.max_grad_norm == 1.0 and plan.schedule.lr_schedule == "constant"
    if kind is None:
        assert plan.optimizer.schedulefree.warmup_steps == 10 and plan.optimizer.momentum == 0.9
    assert any("DBS229" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("scheduler", "schedule"),
    [
        ('lr_scheduler_type = "StepLR"\nlr_scheduler_args = ["step_size=100", "gamma=0.5"]\n', "step"),
        (
            'lr_scheduler_type = "torch.optim.lr_scheduler.ExponentialLR"\n'
            'lr_scheduler_args = ["gamma=0.99"]\n',
            "exponential",
        ),
        ('lr_scheduler_type = "CosineAnnealingLR"\nlr_scheduler_args = ["T_max=400"]\n', "cosine_annealing"),
    ],
)
def test_a_torch_scheduler_that_multiplies_the_rates_holds_the_unet(tmp_path, scheduler, schedule):
    """torch's StepLR, ExponentialLR, CosineAnnealingLR (eta_min 0), ... scale each group's own rate: a group
    at 0 stays at 0. optimizer.lr = 0 with the schedule, exact."""
    outcome = _convert(tmp_path, 'optimizer_type = "AdamW"\n' + scheduler)
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.lr_schedule == schedule
    assert plan.train_denoiser and plan.optimizer.lr == 0 and plan.optimizer.text_encoder_lr == 5e-6
    if schedule == "step":
        assert plan.schedule.torch.step_size == 100 and plan.schedule.torch.gamma == 0.5


@pytest.mark.parametrize(
    ("scheduler", "schedule", "why"),
    [
        (
            'lr_scheduler_type = "CosineAnnealingLR"\nlr_scheduler_args = ["T_max=400", "eta_min=1e-7"]\n',
            "cosine_annealing",
            "eta_min 1e-07",
        ),
        (
            'lr_scheduler_type = "OneCycleLR"\nlr_scheduler_args = ["max_lr=1e-5", "total_steps=400"]\n',
            "one_cycle",
            "max_lr 1e-05",
        ),
    ],
)
def test_a_torch_scheduler_that_lifts_a_zero_rate_keeps_the_unet_moving(tmp_path, scheduler, schedule, why):
    """eta_min > 0 or a scheduler that sets every group's rate itself: kohya's U-Net moves on that schedule
    (was DBS403): optimizer.lr = 0 with optimizer.denoiser_at_zero = "keep", the same groups in the same
    order (U-Net first) under the same schedule, DBS606 in the plan naming what moves it."""
    outcome = _convert(tmp_path, 'optimizer_type = "AdamW"\n' + scheduler)
    _no_difference(outcome)
    assert "train_db.py keeps the U-Net in the optimizer" in outcome.conversion.reports["learning_rate"].note
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert plan.schedule.lr_schedule == schedule and plan.train_denoiser and plan.train_text_encoder
    assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero, o.text_encoder_at_zero) == (0, 5e-6, "keep", "hold")
    said = [w for w in plan.warnings if "DBS606" in w]
    assert said and "the denoiser" in said[0] and why in said[0], plan.warnings
    assert not any("DBS229" in w for w in plan.warnings)
    if schedule == "one_cycle":
        assert plan.schedule.torch.max_lr == 1e-5 and plan.schedule.t_max == 400
    else:
        assert plan.schedule.eta_min == 1e-7 and plan.schedule.t_max == 400


def _command(tmp_path, extra: str):
    """A realistic train_db.py command line at learning_rate 0 with learning_rate_te, kohya's default clip."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    command = (
        f'accelerate launch train_db.py --pretrained_model_name_or_path="{SD15}" --train_data_dir=train '
        "--reg_data_dir=reg --prior_loss_weight=1.0 --resolution=512 --output_dir=out "
        "--train_batch_size=1 --learning_rate=0 --learning_rate_te=2e-6 --max_train_steps=300 "
        f'--mixed_precision="bf16" --optimizer_type="AdamW8bit" {extra}'
    )
    return kohya(tmp_path, command=command)


def test_command_lines_whose_schedule_moves_the_unet_keep_it_at_rate_zero(tmp_path):
    """Command lines that were DBS403: CyclicLR with per-group bounds (the U-Net's first), OneCycleLR with one
    max_lr for both groups, CosineAnnealingWarmRestarts with eta_min: denoiser_at_zero = "keep", exact."""
    cases = [
        (
            '--lr_scheduler_type CyclicLR --lr_scheduler_args "base_lr=[1e-7,1e-7]" "max_lr=[1e-5,2e-6]" '
            '"step_size_up=50" "cycle_momentum=False"',
            "cyclic",
        ),
        (
            '--lr_scheduler_type torch.optim.lr_scheduler.OneCycleLR --lr_scheduler_args "max_lr=4e-6" '
            '"total_steps=300" "pct_start=0.1"',
            "one_cycle",
        ),
        (
            '--lr_scheduler_type CosineAnnealingWarmRestarts --lr_scheduler_args "T_0=100" "eta_min=1e-8"',
            "cosine_annealing_warm_restarts",
        ),
    ]
    for index, (extra, schedule) in enumerate(cases):
        outcome = _command(tmp_path / str(index), extra)
        _no_difference(outcome)
        plan = plan_of(outcome, tmp_path / str(index))
        o, s = plan.optimizer, plan.schedule
        assert (o.kind, o.lr, o.text_encoder_lr, o.denoiser_at_zero) == ("adamw8bit", 0, 2e-6, "keep")
        assert s.lr_schedule == schedule and plan.train_denoiser and o.max_grad_norm == 1.0
        assert any("DBS606" in w for w in plan.warnings), plan.warnings
        if schedule == "cyclic":
            bounds = {g.name: (g.base_lr, g.max_lr) for g in s.torch.groups}
            assert bounds == {"denoiser": (1e-7, 1e-5), "text_encoder": (1e-7, 2e-6)}
            assert s.torch.step_size_up == 50 and not s.torch.cycle_momentum
        elif schedule == "one_cycle":
            assert (s.torch.max_lr, s.torch.pct_start, s.t_max) == (4e-6, 0.1, 300)
        else:
            assert (s.t_max, s.eta_min) == (100, 1e-8)


def test_a_schedule_whose_bounds_are_zero_for_the_unet_holds_it(tmp_path):
    """OneCycleLR with max_lr 0 for the U-Net's group (the first of a per-group list) holds it at 0 from the
    first step: the held U-Net (optimizer.lr = 0, DBS229), no "keep"."""
    outcome = _command(
        tmp_path,
        '--lr_scheduler_type OneCycleLR --lr_scheduler_args "max_lr=[0,3e-6]" "total_steps=300"',
    )
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero) == (0, 2e-6, "hold")
    assert {g.name: g.max_lr for g in plan.schedule.torch.groups} == {"denoiser": 0, "text_encoder": 3e-6}
    assert any("DBS229" in w for w in plan.warnings) and not any("DBS606" in w for w in plan.warnings)


def _alone(tmp_path, extra: str):
    """train_db.py at learning_rate 0 with no learning_rate_te and `extra`."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    command = (
        f'accelerate launch train_db.py --pretrained_model_name_or_path="{SD15}" --train_data_dir=train '
        f"--resolution=512 --output_dir=out --learning_rate=0 --max_train_steps=300 {extra}"
    )
    return kohya(tmp_path, command=command)


def test_with_the_text_encoder_at_rate_zero_too_a_lifting_schedule_trains_both(tmp_path):
    """learning_rate 0 without learning_rate_te (the U-Net and text encoder one group at rate 0) or with
    learning_rate_te 0 (two groups at 0, the U-Net's first), under OneCycleLR with one max_lr: the schedule
    lifts every group, both train on it (was DBS403): optimizer.lr = text_encoder_lr = 0 with
    denoiser_at_zero and text_encoder_at_zero = "keep", dbspec's [denoiser, text encoder] groups at 0 with
    the same bound, DBS606 naming what moves each (tests/runtime/test_denoiser_rate_zero.py replays such a
    run on torch's AdamW and OneCycleLR over kohya's one group and over its two, bit for bit)."""
    one_cycle = '--lr_scheduler_type OneCycleLR --lr_scheduler_args "max_lr=1e-5" "total_steps=300"'
    for name, extra, group in (
        ("one", one_cycle, "in the U-Net's group (no learning_rate_te)"),
        ("zero", one_cycle + " --learning_rate_te=0", "at learning_rate_te 0"),
    ):
        outcome = _alone(tmp_path / name, extra)
        assert outcome.exit_code == 0, errors(outcome)
        assert fate(outcome, "learning_rate") == "mapped"
        assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
        assert group in outcome.conversion.reports["learning_rate"].note
        plan = plan_of(outcome, tmp_path / name)
        o, s = plan.optimizer, plan.schedule
        assert plan.train_denoiser and plan.train_text_encoder and s.lr_schedule == "one_cycle"
        assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero, o.text_encoder_at_zero) == (0, 0, "keep", "keep")
        assert (s.torch.max_lr, s.t_max, s.torch.groups) == (1e-5, 300, ())
        said = [w for w in plan.warnings if "DBS606" in w]
        assert len(said) == 2 and all("max_lr 1e-05" in w for w in said), plan.warnings
        assert "the denoiser" in said[0] and "the text encoder" in said[1]
        assert not any("DBS229" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("bounds", "unet", "text", "kept"),
    [
        ('"base_lr=[1e-7,1e-8]" "max_lr=[1e-5,2e-6]"', (1e-7, 1e-5), (1e-8, 2e-6), ("keep", "keep")),
        # the text encoder's bounds 0: held at rate 0, its gradients in the clip
        ('"base_lr=[1e-7,0]" "max_lr=[1e-5,0]"', (1e-7, 1e-5), (0, 0), ("keep", "hold")),
        ('"base_lr=[0,1e-8]" "max_lr=[0,2e-6]"', (0, 0), (1e-8, 2e-6), ("hold", "keep")),  # the U-Net's
    ],
)
def test_per_group_bounds_at_learning_rate_te_zero_keep_each_lifted_group(tmp_path, bounds, unet, text, kept):
    """learning_rate 0 and learning_rate_te 0 under CyclicLR with a bound list per group (U-Net first): each
    group the schedule lifts trains on its own bounds, a group whose bounds are 0 stays put with its
    gradients in kohya's clip (was DBS403): denoiser_at_zero / text_encoder_at_zero = "keep" for the lifted
    ones, the per-group bounds in the plan's schedule groups, DBS606 for a kept part and DBS229 for a held
    one."""
    extra = (
        f'--lr_scheduler_type CyclicLR --lr_scheduler_args {bounds} "step_size_up=50" "cycle_momentum=False"'
    )
    outcome = _alone(tmp_path, f"{extra} --learning_rate_te=0")
    assert outcome.exit_code == 0, errors(outcome)
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert plan.train_denoiser and plan.train_text_encoder and plan.schedule.lr_schedule == "cyclic"
    assert (o.lr, o.text_encoder_lr, o.denoiser_at_zero, o.text_encoder_at_zero) == (0, 0, *kept)
    groups = {g.name: (g.base_lr, g.max_lr) for g in plan.schedule.torch.groups}
    assert groups == {"denoiser": unet, "text_encoder": text}
    warned = {"DBS606": kept.count("keep"), "DBS229": kept.count("hold")}
    assert {code: sum(code in w for w in plan.warnings) for code in warned} == warned, plan.warnings


def test_a_schedule_that_lifts_neither_group_at_rate_zero_trains_nothing(tmp_path):
    """learning_rate 0 and learning_rate_te 0 under a schedule that multiplies each group's rate: nothing
    trains, kohya's run changes nothing (DBS403 as before)."""
    outcome = _alone(
        tmp_path, '--lr_scheduler_type StepLR --lr_scheduler_args "step_size=10" --learning_rate_te=0'
    )
    assert outcome.exit_code == 1 and fate(outcome, "learning_rate") == "unsupported"
    assert "a run that changes nothing" in outcome.conversion.reports["learning_rate"].note


@pytest.mark.parametrize(
    ("extra", "schedule", "why"),
    [
        (
            '--lr_scheduler_type OneCycleLR --lr_scheduler_args "max_lr=1e-5" "total_steps=300"',
            "one_cycle",
            "max_lr 1e-05",
        ),
        (
            '--lr_scheduler_type CyclicLR --lr_scheduler_args "base_lr=1e-7" "max_lr=1e-5" "step_size_up=50" '
            '"cycle_momentum=False"',
            "cyclic",
            "base_lr 1e-07, max_lr 1e-05",
        ),
        (
            '--lr_scheduler_type CosineAnnealingLR --lr_scheduler_args "T_max=300" "eta_min=1e-7"',
            "cosine_annealing",
            "eta_min 1e-07",
        ),
    ],
)
@pytest.mark.parametrize("stop", ["-1", "0"])
def test_without_a_text_encoder_a_lifting_schedule_trains_the_unet_alone(
    tmp_path, extra, schedule, why, stop
):
    """learning_rate 0 with the text encoder out of training (stop_text_encoder_training -1: not in the
    optimizer; 0: in it, but never given a gradient): the U-Net's group at rate 0, which the schedule lifts,
    trains alone on it (was DBS403): optimizer.lr = 0 with denoiser_at_zero = "keep" and no text encoder,
    DBS606 naming what moves it (tests/runtime/test_denoiser_rate_zero.py replays such a run on torch's
    AdamW and OneCycleLR bit for bit)."""
    outcome = _alone(tmp_path, f"{extra} --stop_text_encoder_training={stop} --learning_rate_te=3e-6")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "learning_rate") == "mapped" and fate(outcome, "learning_rate_te") == "inert"
    assert "train_db.py keeps the U-Net in the optimizer" in outcome.conversion.reports["learning_rate"].note
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert plan.train_denoiser and not plan.train_text_encoder and plan.schedule.lr_schedule == schedule
    assert (o.lr, o.denoiser_at_zero) == (0, "keep")
    said = [w for w in plan.warnings if "DBS606" in w]
    assert said and why in said[0], plan.warnings
    points = [lr for _, lr in plan.schedule.lr_points]
    assert points[0] >= 0 and max(points) > 0  # lifted off rate 0


def test_adafactor_relative_step_trains_the_unet_anyway(tmp_path):
    """kohya removes the groups' rates for Adafactor's relative step: the U-Net trains at Adafactor's own
    step like the text encoder. dbspec's relative-step Adafactor ignores the rates as well, so the run is the
    denoiser and text encoder training, optimizer.lr = learning_rate_te (only the logged initial rate)."""
    outcome = _convert(tmp_path, 'optimizer_type = "Adafactor"\n')
    _no_difference(outcome)
    assert "relative step" in outcome.conversion.reports["learning_rate"].note
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adafactor" and plan.optimizer.adafactor.relative_step
    assert plan.train_denoiser and plan.optimizer.lr == 5e-6 and plan.optimizer.text_encoder_lr == 5e-6
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert trainable["unet"] == "full" and trainable["text_encoder"] == "full"


def test_dadapt_lion_trains_the_unet_at_the_text_encoders_rate(tmp_path):
    """DAdaptLion accepts a group at rate 0 but steps every group by d x the largest group rate: kohya's
    U-Net trains as if both groups had learning_rate_te. dbspec: lr = text_encoder_lr = learning_rate_te."""
    outcome = _convert(tmp_path, 'optimizer_type = "DAdaptLion"\n')
    _no_difference(outcome)
    assert "DAdaptLion" in outcome.conversion.reports["learning_rate"].note
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "dadapt_lion" and plan.train_denoiser
    assert plan.optimizer.lr == 5e-6 and plan.optimizer.text_encoder_lr == 5e-6


@pytest.mark.parametrize(
    ("optimizer", "says"),
    [
        ("Prodigy", "raises ValueError"),
        ("DAdaptAdam", "raises ValueError"),
        ("DAdaptation", "raises ValueError"),
        ("DAdaptAdaGrad", "raises ValueError"),
        ("Lion", "asserts lr > 0"),
        ("came_pytorch.CAME", "asserts lr > 0"),
    ],
)
def test_an_optimizer_that_refuses_lr_zero_stops_kohya(tmp_path, optimizer, says):
    """kohya passes lr=learning_rate (0) to the constructor besides the groups' rates: these refuse it, so
    kohya's run stops before the first step (DBS402, not the stated difference the conversion gave before)."""
    outcome = _convert(tmp_path, f'optimizer_type = "{optimizer}"\n')
    assert outcome.exit_code == 1 and fate(outcome, "learning_rate") == "invalid"
    assert says in messages(outcome, "DBS402") and "lr=learning_rate (0)" in messages(outcome, "DBS402")
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs"]


def test_schedulefree_from_the_command_line(tmp_path):
    """A realistic command line: AdamWScheduleFree, kohya's default clip 1.0."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    command = (
        f'accelerate launch train_db.py --pretrained_model_name_or_path="{SD15}" --train_data_dir=train '
        "--resolution=512 --output_dir=out --train_batch_size=1 --learning_rate=0 --learning_rate_te=2e-6 "
        '--optimizer_type="AdamWScheduleFree" --optimizer_args "weight_decay=0.01" "warmup_steps=20" '
        '--max_train_steps=200 --mixed_precision="bf16"'
    )
    outcome = kohya(tmp_path, command=command)
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_denoiser and plan.optimizer.lr == 0 and plan.optimizer.text_encoder_lr == 2e-6
    assert plan.optimizer.kind == "adamw_schedulefree" and plan.optimizer.schedulefree.warmup_steps == 20
    assert plan.optimizer.weight_decay == 0.01 and plan.optimizer.max_grad_norm == 1.0


def test_a_polynomial_schedule_stops_kohya_at_learning_rate_zero(tmp_path):
    """transformers' polynomial schedule checks the optimizer's default rate (kohya's lr=learning_rate) is
    above lr_end: with learning_rate 0 it raises ValueError when kohya builds it (DBS402)."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    config = CONFIG.format(model=SD15, extra='optimizer_type = "AdamW"\n')
    write(
        tmp_path / "config.toml", config.replace('lr_scheduler = "constant"', 'lr_scheduler = "polynomial"')
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")
    assert outcome.exit_code == 1 and fate(outcome, "lr_scheduler") == "invalid"
    assert "must be smaller than initial lr (0)" in messages(outcome, "DBS402")


def test_an_absolute_min_lr_stops_kohya_at_learning_rate_zero(tmp_path):
    """cosine_with_min_lr's `min_lr` argument: transformers divides it by the optimizer's default rate,
    kohya's lr=learning_rate = 0, a ZeroDivisionError when kohya builds the scheduler (DBS402, not a
    converter crash)."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    config = CONFIG.format(
        model=SD15, extra='optimizer_type = "AdamW"\nlr_scheduler_args = ["min_lr=1e-7"]\n'
    )
    write(
        tmp_path / "config.toml",
        config.replace('lr_scheduler = "constant"', 'lr_scheduler = "cosine_with_min_lr"'),
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")
    assert outcome.exit_code == 1 and fate(outcome, "lr_scheduler_args") == "invalid"
    assert "ZeroDivisionError" in messages(outcome, "DBS402")


def _convert_no_te(tmp_path, extra: str, te: str = ""):
    """CONFIG with learning_rate_te replaced by `te` (absent when empty)."""
    images(tmp_path / "train" / "40_ohwx man", 4, (512, 512))
    images(tmp_path / "reg" / "1_man", 8, (512, 512))
    text = CONFIG.format(model=SD15, extra=extra).replace("learning_rate_te = 5e-6\n", te)
    write(tmp_path / "config.toml", text)
    return kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_db.py")


@pytest.mark.parametrize(
    ("extra", "te", "rate", "text"),
    [
        ('optimizer_type = "Adafactor"\n', "", 1e-2, True),  # one flat list: U-Net and text encoder
        ('optimizer_type = "Adafactor"\n', "learning_rate_te = 0.0\n", 1e-2, True),  # both groups at 0
        (  # the text encoder never trains: the U-Net alone, warmup_init's first rate
            'optimizer_type = "Adafactor"\noptimizer_args = ["warmup_init=True"]\n'
            "stop_text_encoder_training = -1\n",
            "",
            1e-6,
            False,
        ),
    ],
)
def test_relative_step_adafactor_trains_without_a_positive_rate(tmp_path, extra, te, rate, text):
    """learning_rate 0 without a positive learning_rate_te (was DBS403): Adafactor's relative step pops
    every group's rate, so every tensor in kohya's optimizer trains at Adafactor's own step. dbspec writes
    the relative step's first rate, only the logged initial one."""
    outcome = _convert_no_te(tmp_path, extra, te)
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adafactor" and plan.optimizer.adafactor.relative_step
    assert plan.train_denoiser and plan.optimizer.lr == rate
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert trainable["unet"] == "full" and trainable["text_encoder"] == ("full" if text else "frozen")
    if text:
        assert plan.optimizer.text_encoder_lr == rate


def test_dadapt_lion_steps_the_unet_by_a_text_encoder_group_that_never_trains(tmp_path):
    """stop_text_encoder_training 0: train_db.py still builds the text encoder's group at learning_rate_te
    (0 >= 0) but never gives it a gradient; DAdaptLion steps every group by d x the largest rate, so the
    U-Net trains at learning_rate_te alone (was DBS403)."""
    outcome = _convert(tmp_path, 'optimizer_type = "DAdaptLion"\nstop_text_encoder_training = 0\n')
    _no_difference(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "dadapt_lion" and plan.train_denoiser and plan.optimizer.lr == 5e-6
    assert {c.name: c.trainable for c in plan.precision.components}["text_encoder"] == "frozen"


@pytest.mark.parametrize(
    ("extra", "te"),
    [
        ("stop_text_encoder_training = -1\n", "learning_rate_te = 5e-6\n"),  # no text-encoder group
        ("", ""),  # one flat list at learning_rate 0
    ],
)
def test_dadapt_lion_with_every_rate_at_zero_trains_nothing(tmp_path, extra, te):
    outcome = _convert_no_te(tmp_path, 'optimizer_type = "DAdaptLion"\n' + extra, te)
    assert outcome.exit_code == 1 and "nothing trains" in messages(outcome, "DBS403")
