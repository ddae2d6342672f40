"""kohya's --initial_step / --initial_epoch / --skip_until_initial_step (train_network.py) converted to
schedule.start_step / start_epoch / skip_data / start_lr, and the plan's start compared with
train_network.py's arithmetic restated below (epoch_to_start, the skipped batches, global_step's first
value, the epochs left)."""

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
    kohya_lora,
    messages,
    plan_of,
    write,
)


def kohya_start(initial_step: int, batches: int, accumulation: int, max_steps: int, skip: bool) -> dict:
    """train_network.py's start, one process: the epoch the loop starts at (0-based), the batches of it it
    skips, global_step's first value, and the optimizer steps the remaining epochs hold."""
    per_epoch = math.ceil(batches / accumulation)
    epochs = math.ceil(max_steps / per_epoch)
    step = initial_step
    if skip:
        step *= accumulation
        epoch_to_start = step // per_epoch
        for _ in range(epoch_to_start):
            step -= batches
        skipped, counter = max(step, 0), step
    else:
        epoch_to_start, skipped, counter = step // per_epoch, 0, 0
    return {
        "epoch": epoch_to_start,
        "skipped": skipped,
        "counter": counter,
        "steps_left": (epochs - epoch_to_start) * per_epoch,
    }


CONFIG = f"""
[model]
pretrained_model_name_or_path = "{SDXL}"
[dataset]
train_data_dir = "img"
resolution = "1024,1024"
enable_bucket = true
train_batch_size = 2
[network]
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
network_train_unet_only = true
[training]
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 20
max_train_steps = 400
mixed_precision = "bf16"
optimizer_type = "AdamW"
"""


def _sdxl(tmp_path, extra: str, command: str = "accelerate launch sdxl_train_network.py"):
    images(tmp_path / "img" / "10_ohwx dog", 7, (1024, 1024))  # 70 samples, batch 2: 35 batches an epoch
    write(tmp_path / "cfg.toml", CONFIG + extra)
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=command)


def test_initial_step_with_skipping_starts_where_kohya_does(tmp_path, empty_hub_cache):  # noqa: F811
    outcome = _sdxl(tmp_path, "initial_step = 30\nskip_until_initial_step = true\n")
    assert not errors(outcome) and fate(outcome, "initial_step") == "mapped"
    assert fate(outcome, "skip_until_initial_step") == "mapped"
    plan = plan_of(outcome, tmp_path)
    s = plan.schedule
    assert (s.batches_per_epoch, s.steps_per_epoch, s.epochs) == (35, 35, 12)
    k = kohya_start(30, s.batches_per_epoch, s.accumulation, s.total_steps, skip=True)
    start = s.start
    assert (
        (start.epoch, start.position, start.step) == (k["epoch"], k["skipped"], k["counter"]) == (0, 30, 30)
    )
    assert start.lr_step == 0 and start.end_step == s.total_steps == 400  # kohya: the scheduler from step 0
    assert "DBS404" not in codes(outcome)


def test_initial_epoch_moves_only_the_epoch(tmp_path, empty_hub_cache):  # noqa: F811
    outcome = _sdxl(tmp_path, "initial_epoch = 4\n")
    plan = plan_of(outcome, tmp_path)
    s = plan.schedule
    initial_step = (4 - 1) * math.ceil(
        s.batches_per_epoch / 1 / s.accumulation
    )  # train_network.py, 1 process
    k = kohya_start(initial_step, s.batches_per_epoch, s.accumulation, s.total_steps, skip=False)
    start = s.start
    assert start.requested == initial_step == 105 and (start.epoch, start.position, start.step) == (3, 0, 0)
    assert k["epoch"] == 3 and k["counter"] == 0
    assert start.end_step == min(s.total_steps, k["steps_left"]) == 9 * 35


def test_initial_epoch_with_skipping_is_kohyas_no_skip(tmp_path, empty_hub_cache):  # noqa: F811
    """Skipping whole epochs leaves kohya's counter at 0 and skips no batch: the same start as without."""
    outcome = _sdxl(tmp_path, "initial_epoch = 4\nskip_until_initial_step = true\n")
    s = plan_of(outcome, tmp_path).schedule
    k = kohya_start(3 * s.steps_per_epoch, s.batches_per_epoch, 1, s.total_steps, skip=True)
    assert (k["epoch"], k["skipped"], k["counter"]) == (3, 0, 0)
    assert (s.start.skip_data, s.start.epoch, s.start.position, s.start.step) == (False, 3, 0, 0)


def test_initial_step_wins_over_initial_epoch(tmp_path, empty_hub_cache):  # noqa: F811
    outcome = _sdxl(tmp_path, "initial_step = 50\ninitial_epoch = 3\n")
    assert fate(outcome, "initial_epoch") == "inert" and "initial_step" in messages(outcome, "DBS405")
    s = plan_of(outcome, tmp_path).schedule
    assert (s.start.requested, s.start.epoch, s.start.step, s.start.skip_data) == (50, 1, 0, False)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ("--initial_step 40 --skip_until_initial_step", "restarts its step counter at 10"),
        ("--initial_step 5 --skip_until_initial_step --gradient_accumulation_steps 2", "micro-batch count"),
    ],
)
def test_where_kohyas_skip_miscounts_the_difference_is_stated(tmp_path, args, why):
    outcome = kohya_lora(tmp_path, args)  # 30 batches an epoch
    assert not errors(outcome) and why in messages(outcome, "DBS404")
    assert plan_of(outcome, tmp_path).schedule.start.skip_data


def test_skip_without_a_start_is_inert(tmp_path):
    outcome = kohya_lora(tmp_path, "--skip_until_initial_step --initial_epoch 1")
    assert fate(outcome, "skip_until_initial_step") == "inert" and fate(outcome, "initial_epoch") == "inert"
    assert plan_of(outcome, tmp_path).schedule.start is None


def test_scripts_without_the_options_still_refuse_them(tmp_path):
    images(tmp_path / "d" / "5_ohwx", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path {SD15} --train_data_dir d --initial_step 3",
    )
    assert fate(outcome, "initial_step") == "unsupported"


def test_initial_epoch_on_several_processes_states_kohyas_count(tmp_path):
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    launch = "accelerate launch --num_processes 2 train_network.py"
    model = f"--pretrained_model_name_or_path {SD15} --network_module networks.lora"
    rest = "--train_data_dir d --resolution 512 --max_train_steps 300 --initial_epoch 3"
    outcome = kohya(tmp_path, command=f"{launch} {model} {rest}")
    assert "divides the per-process batches by the process count again" in messages(outcome, "DBS404")
    assert plan_of(outcome, tmp_path).schedule.start.requested == 2 * 30
