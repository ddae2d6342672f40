"""kohya's DAdapt* optimizers and Adafactor's relative step (issue 12): sd-scripts library/train_util.py
get_optimizer builds `cls(params, lr=learning_rate, **optimizer_args)` with dadaptation's class, and for
Adafactor sets relative_step=True unless optimizer_args give it, then get_scheduler_fix builds
transformers' AdafactorSchedule instead of --lr_scheduler."""

from __future__ import annotations

import math

import pytest

from convert_kit import SD15, codes, empty_hub_cache, fate, images, kohya, messages, plan_of  # noqa: F401

LORA = (
    f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora "
    "--train_data_dir d --resolution 512 --max_train_steps 100"
)
# kohya's optimizer_type (any case) -> the dadaptation class get_optimizer picks, as dbspec names it
KOHYA_DADAPT = {
    "DAdaptation": "dadapt_adam_preprint",
    "DAdaptAdamPreprint": "dadapt_adam_preprint",
    "DAdaptAdaGrad": "dadapt_adagrad",
    "DAdaptAdam": "dadapt_adam",
    "dadaptadam": "dadapt_adam",
    "DAdaptAdan": "dadapt_adan",
    "DAdaptAdanIP": "dadapt_adan_ip",
    "DAdaptLion": "dadapt_lion",
    "DAdaptSGD": "dadapt_sgd",
}
# dadaptation's constructor defaults (inspect.signature of each class), which kohya keeps unless given
DADAPT_DEFAULTS = {
    "dadapt_adam_preprint": {"weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
    "dadapt_adam": {"weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
    "dadapt_adagrad": {"weight_decay": 0.0, "momentum": 0.0, "eps": 1e-6},
    "dadapt_adan": {"weight_decay": 0.02, "betas": (0.98, 0.92, 0.99), "eps": 1e-8},
    "dadapt_adan_ip": {"weight_decay": 0.02, "betas": (0.98, 0.92, 0.99), "eps": 1e-8},
    "dadapt_lion": {"weight_decay": 0.0, "betas": (0.9, 0.99)},
    "dadapt_sgd": {"weight_decay": 0.0, "momentum": 0.0},
}


@pytest.mark.parametrize("name", list(KOHYA_DADAPT))
def test_each_dadapt_optimizer_converts_with_its_class_defaults(tmp_path, name):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --optimizer_type {name} --learning_rate 1.0")
    assert fate(outcome, "optimizer_type") == "mapped" and "DBS403" not in codes(outcome)
    o = plan_of(outcome, tmp_path).optimizer
    kind = KOHYA_DADAPT[name]
    assert o.kind == kind and o.lr == 1.0
    for key, value in DADAPT_DEFAULTS[kind].items():
        assert getattr(o, key) == pytest.approx(value), key
    assert o.dadapt is not None and o.dadapt.d0 == 1e-6 and o.dadapt.growth_rate is None


def test_a_realistic_dadapt_adam_config_keeps_its_arguments(tmp_path):
    """The common kohya recipe: DAdaptAdam, lr 1, decouple, weight decay, bias correction, bounded growth."""
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --optimizer_type DAdaptAdam --learning_rate 1.0 --unet_lr 1.0 --text_encoder_lr 1.0 "
        '--optimizer_args "decouple=True" "weight_decay=0.01" "use_bias_correction=True" "betas=0.9,0.99" '
        '"d0=1e-5" "growth_rate=1.02" "log_every=0" --lr_scheduler cosine',
    )
    assert "DBS403" not in codes(outcome) and fate(outcome, "optimizer_args") == "mapped"
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.kind, o.weight_decay, o.betas) == ("dadapt_adam", 0.01, (0.9, 0.99))
    d = o.dadapt
    assert (d.d0, d.growth_rate, d.decouple, d.use_bias_correction, d.no_prox) == (
        1e-5,
        1.02,
        True,
        True,
        False,
    )
    assert plan.schedule.lr_schedule == "cosine"


def test_a_dadapt_lr_far_below_one_is_warned_as_kohya_does(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --optimizer_type DAdaptAdam --learning_rate 1e-4")
    assert outcome.exit_code == 0 and "DBS271" in codes(outcome)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ('"use_bias_correction=True"', "`use_bias_correction`"),  # DAdaptLion has no such argument
        ('"betas=0.9,0.99,0.999"', "expected a pair of numbers"),
    ],
)
def test_dadapt_arguments_kohya_would_crash_on_are_invalid(tmp_path, args, why):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --optimizer_type DAdaptLion --optimizer_args {args}")
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_args") == "invalid"
    assert why in messages(outcome, "DBS402")


def test_dadapt_adan_takes_three_betas(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f'{LORA} --optimizer_type DAdaptAdan --learning_rate 1 --optimizer_args "betas=0.9,0.9,0.99" '
        '"no_prox=True"',
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert o.betas == (0.9, 0.9, 0.99) and o.dadapt.no_prox is True


# --- Adafactor ----------------------------------------------------------------------------------------------


def _relative(step: int, warmup_init: bool = False) -> float:
    """transformers Adafactor._get_lr's relative step at the optimizer step with index `step` (its count is
    step + 1), before parameter scaling."""
    t = step + 1
    return min(1e-6 * t if warmup_init else 1e-2, 1.0 / math.sqrt(t))


@pytest.mark.parametrize(
    ("args", "relative", "scale", "warmup_init"),
    [
        ("", True, True, False),  # kohya's default: relative_step=True, transformers' scale_parameter=True
        ('--optimizer_args "scale_parameter=False"', True, False, False),
        ('--optimizer_args "warmup_init=True" "relative_step=False"', True, True, True),  # kohya turns it on
    ],
)
def test_adafactor_relative_step_converts_and_plans_its_own_lr(tmp_path, args, relative, scale, warmup_init):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --optimizer_type Adafactor --learning_rate 1e-3 --lr_scheduler cosine "
        f"--save_every_n_steps 25 {args}",
    )
    assert "DBS403" not in codes(outcome) and outcome.exit_code == 0
    assert fate(outcome, "lr_scheduler") == "inert"  # kohya replaces it by adafactor:<lr>
    plan = plan_of(outcome, tmp_path)
    a = plan.optimizer.adafactor
    assert (a.relative_step, a.scale_parameter, a.warmup_init) == (relative, scale, warmup_init)
    s = plan.schedule
    assert s.lr_schedule == "adafactor" and s.warmup_steps == 0
    assert s.lr_points == tuple((step, _relative(step, warmup_init)) for step, _ in s.lr_points)
    assert len(s.lr_points) > 2


def test_adafactor_with_a_fixed_lr_keeps_the_schedule(tmp_path):
    """kohya's fixed-LR Adafactor (relative_step=False, scale_parameter=False, warmup_init=False)."""
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --optimizer_type Adafactor --learning_rate 1e-4 "
        "--lr_scheduler constant_with_warmup --lr_warmup_steps 10 "
        ' --optimizer_args "relative_step=False" "scale_parameter=False" "warmup_init=False"',
    )
    assert "DBS403" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.optimizer.adafactor
    assert not (a.relative_step or a.scale_parameter or a.warmup_init)
    assert plan.schedule.lr_schedule == "constant_with_warmup" and plan.schedule.warmup_steps == 10


def test_adafactor_relative_step_with_a_warmup_is_invalid_as_in_kohya(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --optimizer_type Adafactor --lr_warmup_steps 10")
    assert outcome.exit_code == 1 and fate(outcome, "lr_warmup_steps") == "invalid"
    assert "does not require num_warmup_steps" in messages(outcome, "DBS402")


def test_dadapt_adam_with_two_learning_rates_is_invalid_as_dadaptation_raises(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --optimizer_type DAdaptAdam --learning_rate 1.0 --unet_lr 1.0 --text_encoder_lr 0.5",
    )
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_type") == "invalid"
    assert "different learning rates" in messages(outcome, "DBS402")
    adan = kohya(
        tmp_path / "b",
        command=f"{LORA} --optimizer_type DAdaptAdan --learning_rate 1.0 --unet_lr 1.0 --text_encoder_lr 0.5",
    )  # dadaptation's Adan steps every group at the first rate: kohya warns, and so does dbspec
    assert "DBS274" in codes(adan) and adan.exit_code == 0
