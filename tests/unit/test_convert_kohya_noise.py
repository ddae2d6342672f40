"""kohya's noise and loss options converted (no --allow-unsupported), checked, and asserted on the plan.

Expected values are kohya's arguments as train_util.get_noise_noisy_latents_and_timesteps,
get_huber_threshold_if_needed and the scripts' loss code use them (sd-scripts 48d368fa); the formulas
themselves are tested against kohya's functions in tests/runtime/test_kohya_noise_loss.py.
"""

from __future__ import annotations

import pytest

from convert_kit import (
    SD15,
    SD21,
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


def test_kohya_ss_gui_lora_config_with_multires_and_adaptive_offset(tmp_path):
    images(tmp_path / "img" / "10_ohwx woman", 4, (512, 768))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512,512"
enable_bucket = true
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
learning_rate = 0.0001
max_train_steps = 1000
noise_offset = 0.0357
noise_offset_random_strength = true
adaptive_noise_scale = 0.00357
multires_noise_iterations = 8
multires_noise_discount = 0.3
min_snr_gamma = 5
""",
    )
    outcome = kohya(
        tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py"
    )
    n = plan_of(outcome, tmp_path).loss.noise
    assert (n.offset, n.offset_random_strength, n.adaptive_scale) == (0.0357, True, 0.00357)
    assert (n.multires_iterations, n.multires_discount, n.min_timestep, n.max_timestep) == (8, 0.3, 0, 1000)
    for key in ("noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations"):
        assert fate(outcome, key) == "mapped"


def test_sdxl_lora_pseudo_huber_snr_schedule_with_debiased_estimation(tmp_path):
    images(tmp_path / "x" / "5_zwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} \
        --train_data_dir=x --resolution=1024 --network_module=networks.lora --network_dim=16 \
        --learning_rate=1e-4 --max_train_steps=200 --loss_type huber --huber_schedule snr --huber_c 0.1 \
        --debiased_estimation_loss --min_snr_gamma 5 --mixed_precision bf16""",
    )
    loss = plan_of(outcome, tmp_path).loss
    assert loss.kind == "pseudo_huber" and loss.huber is not None
    assert (loss.huber.schedule, loss.huber.c, loss.huber.scale) == ("snr", 0.1, 1.0)
    assert loss.debiased_estimation and loss.min_snr_gamma == 5.0 and loss.target == "epsilon"
    assert "debiased(t)" in loss.formula and "pseudo_huber{snr c=0.1}" in loss.formula


def test_train_db_with_reg_images_uses_kohyas_per_sample_reduction_and_input_perturbation(tmp_path):
    images(tmp_path / "train" / "20_sks dog", 4, (512, 512))
    images(tmp_path / "reg" / "1_dog", 80, (512, 512), prefix="r")
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir train \
        --reg_data_dir reg --resolution 512 --train_batch_size 4 --prior_loss_weight 0.75 \
--learning_rate 1e-6 \
        --max_train_steps 800 --ip_noise_gamma 0.1 --ip_noise_gamma_random_strength --min_snr_gamma 5""",
    )
    plan = plan_of(outcome, tmp_path)
    loss = plan.loss
    assert (loss.prior, loss.prior_weight, loss.prior_reduction) == ("images", 0.75, "per_sample")
    assert (loss.noise.ip_gamma, loss.noise.ip_random_strength) == (0.1, True)
    assert "w_i = 0.75 for class samples" in loss.formula
    assert "DBS404" not in codes(outcome)  # nothing about the prior term differs any more
    assert 'prior_reduction = "per_sample"' in outcome.text


def test_sd2_v_model_smooth_l1_exponential_schedule_scaled_like_noise_prediction(tmp_path):
    images(tmp_path / "t" / "10_sks", 3, (768, 768))
    outcome = kohya(
        tmp_path,
        command=f"""train_network.py --v2 --v_parameterization --pretrained_model_name_or_path={SD21} \
        --train_data_dir=t --resolution 768 --network_module networks.lora --learning_rate 1e-4 \
        --max_train_steps 300 --loss_type smooth_l1 --huber_schedule exponential --huber_c \
0.2 --huber_scale 1.5 \
        --scale_v_pred_loss_like_noise_pred --zero_terminal_snr --max_timestep 900""",
    )
    loss = plan_of(outcome, tmp_path).loss
    assert loss.target == "v_prediction" and loss.scale_v_like_epsilon and loss.zero_terminal_snr
    assert loss.kind == "smooth_l1" and (loss.huber.schedule, loss.huber.c, loss.huber.scale) == (
        "exponential",
        0.2,
        1.5,
    )
    assert (loss.noise.min_timestep, loss.noise.max_timestep) == (0, 900)


def test_sdxl_full_v_pred_like_loss_timestep_window_and_unweighted_reg_images(tmp_path):
    images(tmp_path / "d" / "2_zwx man", 2, (1024, 1024))
    images(tmp_path / "r" / "1_man", 4, (1024, 1024), prefix="r")
    outcome = kohya(
        tmp_path,
        command=f"""sdxl_train.py --pretrained_model_name_or_path {SDXL} --train_data_dir d --reg_data_dir r \
        --resolution 1024 --train_batch_size 2 --learning_rate 4e-6 --max_train_steps 100 \
        --v_pred_like_loss 0.2 --min_timestep 200 --max_timestep 800 --noise_offset 0.05 \
        --optimizer_type adafactor --optimizer_args relative_step=False scale_parameter=False \
warmup_init=False""",
    )
    loss = plan_of(outcome, tmp_path).loss
    assert loss.v_pred_like_loss == 0.2 and loss.target == "epsilon"
    assert (loss.noise.min_timestep, loss.noise.max_timestep, loss.noise.offset) == (200, 800, 0.05)
    # sdxl_train.py applies no loss_weights: reg samples weigh 1 in kohya's per-sample mean
    assert (loss.prior_weight, loss.prior_reduction) == (1.0, "per_sample")


def test_train_db_ignores_v_pred_like_loss_and_off_values_are_inert(tmp_path):
    images(tmp_path / "t" / "5_ohwx", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir t --resolution 512 \
        --v_pred_like_loss 0.3 --noise_offset 0 --noise_offset_random_strength --multires_noise_discount 0.5 \
        --ip_noise_gamma_random_strength --min_timestep 0 --max_timestep 1000 --huber_c 0.3""",
    )
    loss = plan_of(outcome, tmp_path).loss
    assert loss.v_pred_like_loss == 0.0 and loss.noise.offset == 0.0 and loss.huber is None
    assert "never adds the v-prediction-like loss" in messages(outcome, "DBS405")
    for key in (
        "noise_offset",
        "noise_offset_random_strength",
        "multires_noise_discount",
        "ip_noise_gamma_random_strength",
        "min_timestep",
        "max_timestep",
        "huber_c",
    ):
        assert fate(outcome, key) == "inert", key


def test_min_timestep_above_max_trains_max_timestep_as_kohya_does(tmp_path):
    images(tmp_path / "t" / "5_ohwx", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_network.py --pretrained_model_name_or_path {SD15} --train_data_dir \
t --resolution 512 \
        --network_module networks.lora --min_timestep 700 --max_timestep 500""",
    )
    noise = plan_of(outcome, tmp_path).loss.noise
    assert (noise.min_timestep, noise.max_timestep) == (500, 500)


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        ("--adaptive_noise_scale 0.1", "adaptive_noise_scale requires noise_offset"),
        ("--scale_v_pred_loss_like_noise_pred", "only with v_parameterization"),
        ("--v2 --v_parameterization --v_pred_like_loss 0.1", "cannot be enabled with v_parameterization"),
    ],
)
def test_what_kohya_refuses_is_refused(tmp_path, flags, why):
    images(tmp_path / "t" / "5_ohwx", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"train_network.py --pretrained_model_name_or_path {SD21 if '--v2' in flags else SD15} "
        f"--train_data_dir t --resolution 512 --network_module networks.lora {flags}",
    )
    assert outcome.exit_code == 1 and not outcome.written
    assert any(why in e for e in errors(outcome)), errors(outcome)
