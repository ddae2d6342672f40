"""kohya's scheduler options and full_bf16 converted (no --allow-unsupported), checked, and
asserted on
the plan.

Expected values are what kohya's get_scheduler_fix passes (sd-scripts library/train_util.py): num_cycles / 2
for
cosine_with_min_lr and warmup_stable_decay, int(ratio * max_train_steps) for float warm-up and decay steps,
num_stable_steps = steps - warm-up - decay, torch classes built from lr_scheduler_args. The curves themselves
are
tested against transformers/diffusers/torch in tests/runtime/test_lr_schedule.py; here the end points are
checked
with closed forms.
"""

from __future__ import annotations


import math

import pytest

from convert_kit import (
    SD15,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)


def test_kohya_ss_gui_sdxl_full_bf16_with_cosine_min_lr(tmp_path):
    """A bmaltais GUI SDXL fine-tune: adafactor, full_bf16, cosine_with_min_lr to 10%, 5% warm-up ratio."""
    images(tmp_path / "img" / "20_ohwx man", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
learning_rate = 1e-5
max_train_steps = 2000
lr_scheduler = "cosine_with_min_lr"
lr_scheduler_min_lr_ratio = 0.1
lr_scheduler_num_cycles = 1
lr_warmup_steps = 0.05
mixed_precision = "bf16"
full_bf16 = true
optimizer_type = "Adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
gradient_checkpointing = true
""",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    plan = plan_of(outcome, tmp_path)
    s = plan.schedule
    assert (s.lr_schedule, s.min_lr_ratio, s.cycles, s.warmup_steps) == ("cosine_with_min_lr", 0.1, 1, 100)
    assert s.lr_points[-1] == (2000, pytest.approx(1e-5 * 0.1, rel=1e-12))  # cos(pi) = -1: the floor
    assert dict(s.lr_points)[100] == pytest.approx(1e-5)  # warm-up done: the top of the cosine
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding  # kohya's nearest
    for key in ("lr_scheduler_min_lr_ratio", "lr_scheduler_num_cycles", "full_bf16"):
        assert fate(outcome, key) == "mapped"


def test_lora_polynomial_with_power(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch train_network.py --pretrained_model_name_or_path={SD15} \
        --train_data_dir=x --resolution=512 --network_module=networks.lora --network_dim=8 \
        --learning_rate=1e-4 --max_train_steps=600 --lr_scheduler polynomial --lr_scheduler_power 2 \
        --lr_warmup_steps 60 --mixed_precision fp16""",
    )
    s = plan_of(outcome, tmp_path, ["checkpoints.every=100"]).schedule  # LR points at each checkpoint
    assert (s.lr_schedule, s.power, s.warmup_steps) == ("polynomial", 2.0, 60)
    points = dict(s.lr_points)
    assert points[600] == pytest.approx(1e-7, rel=1e-9)  # diffusers' lr_end at the end
    mid = next(step for step in points if 60 < step < 600)
    remaining = 1 - (mid - 60) / 540
    assert points[mid] == pytest.approx((1e-4 - 1e-7) * remaining**2 + 1e-7, rel=1e-12)
    assert fate(outcome, "lr_scheduler_power") == "mapped"


def test_sdxl_lora_torch_cosine_annealing_from_scheduler_args(tmp_path):
    images(tmp_path / "x" / "5_zwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} \
        --train_data_dir=x --resolution=1024 --network_module=networks.lora --network_dim=16 \
        --learning_rate=1e-4 --max_train_steps=800 --lr_scheduler_type CosineAnnealingLR \
        --lr_scheduler_args T_max=400 eta_min=1e-6 --mixed_precision bf16""",
    )
    s = plan_of(outcome, tmp_path, ["checkpoints.every=100"]).schedule
    assert (s.lr_schedule, s.t_max, s.eta_min, s.warmup_steps) == ("cosine_annealing", 400, 1e-6, 0)
    points = dict(s.lr_points)
    assert points[0] == 1e-4
    assert points[400] == pytest.approx(1e-6, rel=1e-9)  # half a period: eta_min
    assert points[800] == pytest.approx(1e-4, rel=1e-9)  # torch's cosine climbs back after T_max
    assert fate(outcome, "lr_scheduler_type") == "mapped" and fate(outcome, "lr_scheduler_args") == "mapped"


def test_full_db_warmup_stable_decay_with_a_decay_ratio(tmp_path):
    images(tmp_path / "img" / "40_ohwx toy", 5, (512, 512))
    images(tmp_path / "reg" / "1_toy", 5, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch train_db.py --pretrained_model_name_or_path={SD15} \
        --train_data_dir=img --reg_data_dir=reg --resolution=512 --learning_rate=2e-6 --max_train_steps=1000 \
        --lr_scheduler warmup_stable_decay --lr_warmup_steps 50 --lr_decay_steps 0.3 \
        --lr_scheduler_min_lr_ratio 0.05 --mixed_precision bf16""",
    )
    s = plan_of(outcome, tmp_path, ["checkpoints.every=100"]).schedule
    assert (s.lr_schedule, s.warmup_steps, s.decay_steps, s.min_lr_ratio) == (
        "warmup_stable_decay",
        50,
        300,
        0.05,
    )
    points = dict(s.lr_points)
    assert points[0] == pytest.approx(2e-6 * 0.05)  # the warm-up starts at the floor
    stable = [v for step, v in points.items() if 50 <= step <= 700]
    assert len(stable) == 8 and all(v == 2e-6 for v in stable)
    assert 2e-6 * 0.05 < points[800] < 2e-6  # 1000 - 50 - 300 = 650 stable steps
    assert points[1000] == pytest.approx(2e-6 * 0.05)
    assert fate(outcome, "lr_decay_steps") == "mapped"


def test_scheduler_options_kohya_rejects_or_dbspec_cannot_plan(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    base = f"""train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 \
    --network_module=networks.lora --learning_rate=1e-4 --max_train_steps=300"""
    cyclic = kohya(
        tmp_path / "a",
        command=base + " --lr_scheduler_type mypkg.schedulers.WarmupCosine --lr_scheduler_args t=3",
    )
    assert "DBS403" in codes(cyclic) and "OneCycleLR" in messages(cyclic, "DBS403")
    short = kohya(
        tmp_path / "e", command=base + " --lr_scheduler_type OneCycleLR --lr_scheduler_args max_lr=1e-3"
    )
    assert any("OneCycleLR needs total_steps" in e for e in errors(short))
    warm = kohya(
        tmp_path / "b",
        command=base
        + " --lr_scheduler_type CosineAnnealingLR --lr_scheduler_args T_max=300 --lr_warmup_steps 10",
    )
    assert any("does not require num_warmup_steps" in e for e in errors(warm))
    no_ratio = kohya(tmp_path / "c", command=base + " --lr_scheduler cosine_with_min_lr")
    assert any("min_lr_rate" in e for e in errors(no_ratio))
    function_args = kohya(
        tmp_path / "d", command=base + " --lr_scheduler polynomial --lr_scheduler_args last_epoch=5"
    )
    # torch's LambdaLR under transformers' function raises KeyError: kohya's groups have no initial_lr
    assert any("last_epoch=5" in e and "initial_lr" in e for e in errors(function_args))
    assert "DBS402" in codes(function_args) and "DBS403" not in codes(function_args)


def test_lora_cosine_annealing_warm_restarts_from_scheduler_args(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch train_network.py --pretrained_model_name_or_path={SD15} \
        --train_data_dir=x --resolution=512 --network_module=networks.lora --network_dim=8 \
        --learning_rate=1e-4 --max_train_steps=700 --lr_scheduler cosine \
        --lr_scheduler_type torch.optim.lr_scheduler.CosineAnnealingWarmRestarts \
        --lr_scheduler_args T_0=100 T_mult=2 eta_min=0""",
    )
    s = plan_of(outcome, tmp_path, ["checkpoints.every=100"]).schedule
    assert (s.lr_schedule, s.t_max, s.t_mult, s.eta_min) == ("cosine_annealing_warm_restarts", 100, 2, 0.0)
    points = dict(s.lr_points)
    assert points[100] == points[300] == points[700] == 1e-4  # restarts after 100, then 200, then 400 steps
    assert points[200] == pytest.approx(1e-4 * (1 + math.cos(math.pi * 100 / 200)) / 2)
    assert fate(outcome, "lr_scheduler") == "inert"  # kohya ignores it when lr_scheduler_type is set
