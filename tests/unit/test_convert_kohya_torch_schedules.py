"""kohya's --lr_scheduler_type with torch's OneCycleLR, StepLR, MultiStepLR, ExponentialLR, LinearLR and
ConstantLR (issue 12): get_scheduler_fix builds `cls(optimizer, **lr_scheduler_args)` and steps it once per
optimizer step. The converted spec passes `dbspec check`; the plan's points are checked against the closed
forms of torch's documentation (float for float against torch: tests/runtime/test_torch_schedules.py)."""

from __future__ import annotations

import math

import pytest

from convert_kit import SD15, codes, empty_hub_cache, errors, fate, images, kohya, plan_of  # noqa: F401

BASE = (
    f"train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 "
    "--network_module=networks.lora --learning_rate=1e-4 --max_train_steps=300"
)


def _convert(tmp_path, args: str):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(tmp_path, command=f"{BASE} {args}")
    assert "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "lr_scheduler_type") == "mapped" and fate(outcome, "lr_scheduler_args") == "mapped"
    return plan_of(outcome, tmp_path, ["checkpoints.every=50"]).schedule


def test_one_cycle_with_its_momentum_cycle(tmp_path):
    s = _convert(
        tmp_path,
        "--lr_scheduler_type OneCycleLR --lr_scheduler_args max_lr=1e-3 total_steps=300 pct_start=0.2",
    )
    assert (s.lr_schedule, s.t_max, s.torch.max_lr, s.torch.pct_start) == ("one_cycle", 300, 1e-3, 0.2)
    points = dict(s.lr_points)
    initial = 1e-3 / 25.0  # max_lr / div_factor
    assert points[0] == pytest.approx(initial, rel=1e-12)
    # the peak at step pct_start x total - 1 = 59; at 150 the cosine from max_lr to initial/final_div_factor
    pct = (150 - 59) / (299 - 59)
    low = initial / 1e4
    assert points[150] == pytest.approx(low + (1e-3 - low) / 2 * (math.cos(math.pi * pct) + 1), rel=1e-12)
    momenta = dict(s.momentum_points)  # AdamW's beta1, 0.95 at the ends, 0.85 at the peak
    assert momenta[0] == 0.95
    assert momenta[150] == pytest.approx(0.95 + (0.85 - 0.95) / 2 * (math.cos(math.pi * pct) + 1), rel=1e-12)


def test_one_cycle_from_epochs_and_steps_per_epoch(tmp_path):
    s = _convert(
        tmp_path,
        "--lr_scheduler_type torch.optim.lr_scheduler.OneCycleLR --lr_scheduler_args max_lr=2e-4 epochs=3 "
        "steps_per_epoch=100 cycle_momentum=False \"anneal_strategy='linear'\"",
    )
    assert (s.t_max, s.torch.cycle_momentum, s.torch.anneal_strategy, s.momentum_points) == (
        300,
        False,
        "linear",
        (),
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("StepLR --lr_scheduler_args step_size=100 gamma=0.5", lambda n: 1e-4 * 0.5 ** (n // 100)),
        (
            "MultiStepLR --lr_scheduler_args milestones=[200,100] gamma=0.1",
            lambda n: 1e-4 * 0.1 ** ((n >= 100) + (n >= 200)),
        ),
        ("ExponentialLR --lr_scheduler_args gamma=0.99", lambda n: 1e-4 * 0.99**n),
        (
            "LinearLR --lr_scheduler_args start_factor=0.1 total_iters=100",
            lambda n: 1e-4 * (0.1 + 0.9 * min(n, 100) / 100),
        ),
        (
            "ConstantLR --lr_scheduler_args factor=0.5 total_iters=100",
            lambda n: 1e-4 * (0.5 if n < 100 else 1.0),
        ),
    ],
)
def test_recursive_torch_schedules(tmp_path, args, expected):
    s = _convert(tmp_path, f"--lr_scheduler_type {args}")
    assert s.torch is not None and len(s.lr_points) > 3
    for step, lr in s.lr_points:
        assert lr == pytest.approx(expected(step), rel=1e-9), step


def test_one_cycle_shorter_than_the_run_is_invalid(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --lr_scheduler_type OneCycleLR --lr_scheduler_args max_lr=1e-3 total_steps=200",
    )
    assert outcome.exit_code == 1 and any("fewer than the run's 300" in e for e in errors(outcome))


# --- lr_scheduler_args to kohya's named schedules (get_scheduler_fix forwards them to transformers) --------


def _named(tmp_path, args: str):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(tmp_path, command=f"{BASE} {args}")
    assert "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "lr_scheduler_args") == "mapped"
    return plan_of(outcome, tmp_path, ["checkpoints.every=50"]).schedule


def test_cosine_num_cycles(tmp_path):
    s = _named(tmp_path, "--lr_scheduler cosine --lr_warmup_steps 0 --lr_scheduler_args num_cycles=1")
    points = dict(s.lr_points)
    # transformers: 0.5 * (1 + cos(pi * num_cycles * 2 * progress)): one full wave is back at lr at the end
    assert s.cosine_cycles == 1.0 and points[150] == pytest.approx(0.0, abs=1e-12)
    assert points[300] == pytest.approx(1e-4, rel=1e-12)


def test_polynomial_lr_end(tmp_path):
    s = _named(
        tmp_path,
        "--lr_scheduler polynomial --lr_scheduler_power 2 --lr_scheduler_args lr_end=1e-6",
    )
    points = dict(s.lr_points)
    assert s.lr_end == 1e-6 and points[300] == pytest.approx(1e-6, rel=1e-12)
    assert points[150] == pytest.approx((1e-4 - 1e-6) * 0.5**2 + 1e-6, rel=1e-12)


def test_cosine_with_min_lr_from_an_absolute_min_lr(tmp_path):
    s = _named(tmp_path, "--lr_scheduler cosine_with_min_lr --lr_scheduler_args min_lr=1e-5")
    assert s.min_lr_ratio == 1e-5 / 1e-4  # transformers' min_lr / the optimizer's lr, the same division
    assert dict(s.lr_points)[300] == pytest.approx(1e-5, rel=1e-12)


def test_warmup_stable_decay_shapes(tmp_path):
    s = _named(
        tmp_path,
        "--lr_scheduler warmup_stable_decay --lr_warmup_steps 50 --lr_decay_steps 100 "
        "--lr_scheduler_min_lr_ratio 0 --lr_scheduler_args \"warmup_type='cosine'\" \"decay_type='linear'\"",
    )
    assert (s.warmup_type, s.decay_type) == ("cosine", "linear")
    points = dict(s.lr_points)
    assert points[250] == pytest.approx(1e-4 * (1 - 50 / 100), rel=1e-12)  # linear decay from step 200


def test_named_schedule_arguments_kohya_crashes_on_are_invalid(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    twice = kohya(tmp_path / "a", command=f"{BASE} --lr_scheduler polynomial --lr_scheduler_args power=2")
    assert twice.exit_code == 1 and any("takes no power" in e for e in errors(twice))
    both = kohya(
        tmp_path / "b",
        command=f"{BASE} --lr_scheduler cosine_with_min_lr --lr_scheduler_min_lr_ratio 0.1 "
        "--lr_scheduler_args min_lr=1e-6",
    )
    assert both.exit_code == 1 and any("Only one of min_lr or min_lr_rate" in e for e in errors(both))
