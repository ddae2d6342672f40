"""SimpleTuner configs for its flow-matching families (model_family flux and sd3) -> specs that pass `dbspec
check` and plan SimpleTuner's draw: the timestep density, the shift (static or Flux's resolution-dependent
one), the training guidance, T5 length and LoRA targets (read from SimpleTuner's models/flux, models/sd3,
common.py sample_flow_sigmas and custom_schedule.apply_flow_schedule_shift).
"""

from __future__ import annotations

import json

from convert_kit import (  # noqa: F401 (empty_hub_cache is a pytest fixture)
    empty_hub_cache,
    errors,
    fate,
    images,
    messages,
    plan_of,
    simpletuner,
    write,
)


def _convert(tmp_path, config: dict, *, side: int = 1024, crop: bool = True, allow: bool = False, **backend):
    images(tmp_path / "data" / "subject", 3, (side, side) if crop else (side, side * 3 // 4))
    subject = {
        "id": "subject",
        "type": "local",
        "instance_data_dir": "data/subject",
        "caption_strategy": "instanceprompt",
        "instance_prompt": "a photo of sks dog",
        "resolution": side,
        "resolution_type": "pixel_area",
        **({"crop": True, "crop_aspect": "square"} if crop else {"crop": False}),
        **backend,
    }
    embeds = {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True}
    base = {"--output_dir": "output", "--max_train_steps": 100, "--num_train_epochs": 0}
    write(tmp_path / "config" / "config.json", json.dumps({**base, **config}))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps([subject, embeds]))
    return simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json", allow=allow)


def test_flux_dev_lora_with_auto_shift(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "flux",
            "model_flavour": "dev",
            "lora_rank": 16,
            "learning_rate": "1e-4",
            "base_model_precision": "int8-torchao",
            "flux_guidance_value": 1.0,
            "flow_schedule_auto_shift": True,
            "flow_schedule_shift": 3.0,  # safety_check zeroes it: auto-shift decides
        },
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and plan.loss.target == "flow_matching"
    flow = plan.loss.flow
    assert (flow.timesteps, flow.logit_mean, flow.logit_std, flow.weighting) == (
        "logit_normal",
        0.0,
        1.0,
        "none",
    )
    # FLUX.1-dev's scheduler config: mu from 0.5 at 256 latent patches to 1.15 at 4096, continuous draw
    assert (flow.shift, flow.base_shift, flow.max_shift, flow.guidance) == (0.0, 0.5, 1.15, 1.0)
    assert plan.model.t5_max_length == 512
    assert {"add_q_proj", "to_add_out", "to_out.0"} <= set(plan.adapter.denoiser_targets)
    assert (plan.adapter.rank, plan.adapter.dropout, plan.optimizer.lr) == (16, 0.1, 1e-4)
    assert any(c.quantized == "int8" for c in plan.precision.components)
    assert (
        fate(outcome, "flow_schedule_shift") == "inert"
        and fate(outcome, "flow_schedule_auto_shift") == "mapped"
    )
    assert fate(outcome, "flow_sigmoid_scale") == "defaulted"  # continuous draws in both: no DBS404


def test_flux_default_flavour_is_krea_with_simpletuners_guidance_and_shift(tmp_path):
    outcome = _convert(tmp_path, {"model_type": "lora", "model_family": "flux", "flow_sigmoid_scale": 1.5})
    plan = plan_of(outcome, tmp_path)
    assert plan.model.base == "black-forest-labs/flux.1-krea-dev"  # its DEFAULT_MODEL_FLAVOUR
    flow = plan.loss.flow
    # the field registry's flow_schedule_shift 3.0 and flux_guidance_value 1.0
    assert (flow.logit_std, flow.shift, flow.guidance) == (1.5, 3.0, 1.0)


def test_sd35_medium_lora_defaults(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sd3",
            "lora_rank": 32,
            "lora_alpha": 32,
            "snr_gamma": 5.0,  # SimpleTuner weights by SNR for DDPM models only
            "prediction_type": "epsilon",
        },
        side=512,
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.base == "stabilityai/stable-diffusion-3.5-medium"  # the default flavour
    assert (plan.model.family, plan.loss.target) == ("sd3", "flow_matching")
    assert plan.model.t5_max_length == 154  # SD3.check_user_config's default
    assert set(plan.adapter.denoiser_targets) == {"to_k", "to_q", "to_v", "to_out.0"}
    flow = plan.loss.flow
    assert (flow.timesteps, flow.logit_std, flow.shift, flow.guidance) == ("logit_normal", 1.0, 3.0, 0.0)
    assert plan.loss.min_snr_gamma == 0
    assert fate(outcome, "snr_gamma") == "inert" and "DBS405" in {d.code for d in outcome.diagnostics}
    assert fate(outcome, "prediction_type") == "inert"


def test_sd35_large_full_caps_t5_and_uniform_unshifted_schedule(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "full",
            "model_family": "sd3",
            "model_flavour": "large",
            "tokenizer_max_length": 300,
            "flow_use_uniform_schedule": True,
            "flow_sigmoid_scale": 2.0,
            "flow_schedule_shift": 0,
            "optimizer": "adamw_bf16",
            "learning_rate": 1e-6,
        },
        side=512,
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.base == "stabilityai/stable-diffusion-3.5-large" and plan.adapter.kind == "none"
    assert plan.model.t5_max_length == 154  # capped without i_know_what_i_am_doing
    flow = plan.loss.flow
    assert (flow.timesteps, flow.shift, flow.draw) == ("uniform", 1.0, "continuous")  # shift 0: none
    assert (
        fate(outcome, "flow_sigmoid_scale") == "inert"
        and fate(outcome, "flow_use_uniform_schedule") == "mapped"
    )


def test_sd3_long_t5_with_i_know_what_i_am_doing(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sd3",
            "tokenizer_max_length": 256,
            "i_know_what_i_am_doing": True,
            "flow_use_beta_schedule": True,
            "flow_beta_schedule_alpha": 1.0,
            "flow_beta_schedule_beta": 1.0,
        },
        side=512,
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.t5_max_length == 256 and plan.loss.flow.timesteps == "uniform"  # Beta(1, 1)


def test_flux_lycoris_lokr_preset_targets_the_joint_attention(tmp_path):
    write(
        tmp_path / "config" / "lycoris_config.json",
        json.dumps(
            {
                "algo": "lokr",
                "multiplier": 1.0,
                "linear_dim": 10000,
                "linear_alpha": 1,
                "factor": 16,
                "apply_preset": {"target_module": ["Attention", "FeedForward"]},
            }
        ),
    )
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "lora_type": "lycoris",
            "lycoris_config": "config/lycoris_config.json",
            "model_family": "flux",
            "model_flavour": "dev",
            "flux_lora_target": "all+ffs",  # standard LoRA only
        },
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "lokr" and plan.adapter.factor == 16
    targets = set(plan.adapter.denoiser_targets)
    assert {"to_q", "add_k_proj", "to_add_out", "ff.net.2", "ff_context.net.0.proj"} <= targets
    assert fate(outcome, "flux_lora_target") == "inert"  # LyCORIS takes its own targets


def test_auto_shift_follows_each_bucket_on_sd3_and_aspect_buckets(tmp_path):
    config = {"model_type": "lora", "model_family": "sd3", "flow_schedule_auto_shift": True}
    outcome = _convert(tmp_path, config, crop=False, side=512)
    flow = plan_of(outcome, tmp_path).loss.flow
    assert (flow.shift, flow.base_shift, flow.max_shift) == (0.0, 0.5, 1.15)  # no static 3.0 beside it
    assert fate(outcome, "flow_schedule_auto_shift") == "mapped"


def test_flux_guidance_modes(tmp_path):
    ranged = {"model_type": "lora", "model_family": "flux", "model_flavour": "dev"}
    outcome = _convert(tmp_path, {**ranged, "flux_guidance_mode": "random-range", "flux_guidance_max": 4.0})
    assert not outcome.written and "U(0, 4)" in messages(outcome, "DBS403")
    same = {
        **ranged,
        "flux_guidance_mode": "random-range",
        "flux_guidance_min": 2.5,
        "flux_guidance_max": 2.5,
    }
    assert plan_of(_convert(tmp_path, same), tmp_path).loss.flow.guidance == 2.5
    zero = _convert(tmp_path, {**ranged, "flux_guidance_value": 0})
    assert not zero.written and "means the family's 3.5" in messages(zero, "DBS403")
    booru = _convert(tmp_path, {"model_type": "lora", "model_family": "flux", "model_flavour": "fluxbooru"})
    assert plan_of(booru, tmp_path).loss.flow.guidance == 3.5  # SimpleTuner forces it


def test_refused_flow_settings_name_their_reason(tmp_path):
    flux = {"model_type": "lora", "model_family": "flux", "model_flavour": "dev"}
    cases = {
        "flux_fast_schedule": {**flux, "flux_fast_schedule": True},
        "flow_use_beta_schedule": {**flux, "flow_use_beta_schedule": True},
        "loss_type": {**flux, "loss_type": "huber"},
        "model_flavour": {"model_type": "lora", "model_family": "flux", "model_flavour": "schnell"},
        "t5_padding": {**flux, "t5_padding": "zero"},
        "flux_attention_masked_training": {**flux, "flux_attention_masked_training": True},
    }
    for key, config in cases.items():
        outcome = _convert(tmp_path, config)
        assert not outcome.written and fate(outcome, key) == "unsupported", (key, errors(outcome))
    bad = _convert(
        tmp_path, {"model_type": "lora", "model_family": "sd3", "base_model_precision": "fp8-quanto"}
    )
    assert not bad.written and fate(bad, "base_model_precision") == "invalid"


def test_sd3_ddpm_only_keys_are_reported_not_written(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sd3",
            "offset_noise": True,
            "noise_offset": 0.1,
            "rescale_betas_zero_snr": True,
            "validation_prompt": "a photo of sks dog",
            "validation_noise_scheduler": "euler",
            "flux_guidance_value": 3.5,  # SimpleTuner's SD3 does not read it
            "gradient_checkpointing_interval": 2,  # memory placement
        },
        side=512,
    )
    assert (
        fate(outcome, "flux_guidance_value") == "inert"
        and fate(outcome, "gradient_checkpointing_interval") == "inert"
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.noise_offset == 0 and not plan.loss.zero_terminal_snr
    assert {fate(outcome, k) for k in ("offset_noise", "rescale_betas_zero_snr")} == {"inert"}
    assert (
        plan.validation.scheduler == "flow_euler" and fate(outcome, "validation_noise_scheduler") == "mapped"
    )


def test_manual_peft_targets_and_flavour_rules_with_a_path(tmp_path):
    outcome = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "flux",
            "pretrained_model_name_or_path": "terminusresearch/fluxbooru-v0.3",
            "model_flavour": "fluxbooru",  # its check_user_config reads the flavour whatever the path
            "flux_guidance_value": 1.0,
            "peft_lora_target_modules": ["to_q", "to_v", "proj_out"],
            "flux_lora_target": "all+ffs",
        },
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.denoiser_targets == ("to_q", "to_v", "proj_out")
    assert fate(outcome, "flux_lora_target") == "inert" and plan.loss.flow.guidance == 3.5
    schnell = _convert(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "flux",
            "model_flavour": "schnell",
            "pretrained_model_name_or_path": "x/y",
        },
    )
    assert not schnell.written and "assistant LoRA" in messages(schnell, "DBS403")


def test_flow_numbers_are_checked_as_simpletuner_parses_them(tmp_path):
    flux = {"model_type": "lora", "model_family": "flux", "model_flavour": "dev"}
    outcome = _convert(tmp_path, {**flux, "flow_sigmoid_scale": "wide", "flux_guidance_value": "2.5"})
    assert not outcome.written and fate(outcome, "flow_sigmoid_scale") == "invalid"
    parsed = _convert(tmp_path, {**flux, "flux_guidance_value": "2.5"})  # argparse turns "2.5" into 2.5
    assert plan_of(parsed, tmp_path).loss.flow.guidance == 2.5


def test_simpletuners_flux_example_config_converts(tmp_path):
    """The keys of SimpleTuner's examples/flux.peft-lora/config.json (its data on a local folder)."""
    outcome = _convert(
        tmp_path,
        {
            "base_model_precision": "int8-quanto",
            "checkpoint_step_interval": 10,
            "controlnet": False,
            "disable_bucket_pruning": True,
            "flow_schedule_shift": 3,
            "fuse_qkv_projections": False,
            "grad_clip_method": "value",
            "gradient_checkpointing": True,
            "hub_model_id": "simpletuner-example-flux-peft-lora",
            "learning_rate": 1e-4,
            "lora_alpha": 16,
            "lora_rank": 16,
            "lora_type": "standard",
            "lr_scheduler": "constant",
            "max_train_steps": 100,
            "mixed_precision": "bf16",
            "model_family": "flux",
            "model_type": "lora",
            "num_eval_images": 25,
            "num_train_epochs": 0,
            "optimizer": "adamw_bf16",
            "quantize_via": "cpu",
            "report_to": "none",
            "seed": 42,
            "train_batch_size": 1,
            "use_ema": False,
            "validation_guidance": 4.0,
            "validation_num_inference_steps": 16,
            "validation_prompt": "a photo of sks dog holding a sign",
            "validation_steps": 50,
        },
        side=512,
    )
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    assert (flow.timesteps, flow.shift, flow.guidance, flow.base_shift) == ("logit_normal", 3.0, 1.0, 0.0)
    assert (plan.adapter.rank, plan.adapter.alpha, plan.optimizer.max_grad_norm) == (16, 16.0, 2.0)
    # SimpleTuner's default grad_clip_method "value" clips each element: clip_mode = "value"
    assert fate(outcome, "grad_clip_method") == "mapped" and plan.optimizer.clip_mode == "value"
    assert {fate(outcome, k) for k in ("num_eval_images", "fuse_qkv_projections", "controlnet")} == {"inert"}
    norm = _convert(
        tmp_path, {"model_type": "lora", "model_family": "sd3", "grad_clip_method": "norm"}, side=512
    )
    normed = plan_of(norm, tmp_path).optimizer
    assert fate(norm, "grad_clip_method") == "mapped" and (normed.max_grad_norm, normed.clip_mode) == (
        2.0,
        "norm",
    )
    prodigy = _convert(
        tmp_path, {"model_type": "lora", "model_family": "sd3", "optimizer": "prodigy"}, side=512
    )
    assert plan_of(prodigy, tmp_path).optimizer.max_grad_norm == 0  # its trainer does not clip for prodigy


def test_text_encoder_training_trains_the_clips_never_t5(tmp_path):
    outcome = _convert(
        tmp_path,
        {"model_type": "lora", "model_family": "sd3", "train_text_encoder": True, "text_encoder_lr": 5e-6},
        side=512,
    )
    plan = plan_of(outcome, tmp_path)
    trained = {c.name for c in plan.precision.components if c.trainable != "frozen"}
    assert plan.train_text_encoder and trained == {
        "unet",
        "text_encoder",
        "text_encoder_2",
    }  # T5 stays frozen
    assert plan.optimizer.text_encoder_lr == 5e-6
