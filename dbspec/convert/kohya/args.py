"""The command-line arguments of kohya-ss sd-scripts' four training scripts (sd-scripts main, 2026-02).

Sources: `library/train_util.py` (add_sd_models_arguments, add_dataset_arguments, add_training_arguments,
add_optimizer_arguments, add_sd_saving_arguments, add_masked_loss_arguments), `library/config_util.py`,
`library/custom_train_functions.py`, `library/deepspeed_utils.py`, `library/sai_model_spec.py`,
`library/sdxl_train_util.py`, and each script's own `setup_parser`.
"""

from __future__ import annotations

from dbspec.convert.common.argv import Arg

SCRIPTS = ("train_db", "sdxl_train", "train_network", "sdxl_train_network")
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
            "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
INTERPOLATIONS = (None, "lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")

# name: (kind, default[, choices]) — shared by all four scripts
_COMMON: dict[str, tuple] = {
    # logging, model, model-spec metadata
    "console_log_level": ("str", None), "console_log_file": ("str", None), "console_log_simple": ("flag", False),
    "v2": ("flag", False), "v_parameterization": ("flag", False), "pretrained_model_name_or_path": ("str", None),
    "tokenizer_cache_dir": ("str", None),
    **{f"metadata_{k}": ("str", None) for k in ("title", "author", "description", "license", "tags",
                                                 "reso", "arch", "trigger_phrase", "usage_hint")},
    # dataset
    "train_data_dir": ("str", None), "reg_data_dir": ("str", None), "dataset_config": ("str", None),
    "cache_info": ("flag", False), "shuffle_caption": ("flag", False), "caption_separator": ("str", ","),
    "caption_extension": ("str", ".caption"), "caption_extention": ("str", None), "keep_tokens": ("int", 0),
    "keep_tokens_separator": ("str", ""), "secondary_separator": ("str", None), "enable_wildcard": ("flag", False),
    "caption_prefix": ("str", None), "caption_suffix": ("str", None), "color_aug": ("flag", False),
    "flip_aug": ("flag", False), "face_crop_aug_range": ("str", None), "random_crop": ("flag", False),
    "debug_dataset": ("flag", False), "resolution": ("str", None), "cache_latents": ("flag", False),
    "vae_batch_size": ("int", 1), "cache_latents_to_disk": ("flag", False), "skip_cache_check": ("flag", False),
    "enable_bucket": ("flag", False), "min_bucket_reso": ("int", 256), "max_bucket_reso": ("int", 1024),
    "bucket_reso_steps": ("int", 64), "bucket_no_upscale": ("flag", False),
    "resize_interpolation": ("str", None, INTERPOLATIONS), "token_warmup_min": ("int", 1),
    "token_warmup_step": ("float", 0.0), "alpha_mask": ("flag", False), "dataset_class": ("str", None),
    "caption_dropout_rate": ("float", 0.0), "caption_dropout_every_n_epochs": ("int", 0),
    "caption_tag_dropout_rate": ("float", 0.0),
    "masked_loss": ("flag", False), "conditioning_data_dir": ("str", None),
    # training, saving, logging
    "output_dir": ("str", None), "output_name": ("str", None), "huggingface_repo_id": ("str", None),
    "huggingface_repo_type": ("str", None), "huggingface_path_in_repo": ("str", None),
    "huggingface_token": ("str", None), "huggingface_repo_visibility": ("str", None),
    "save_state_to_huggingface": ("flag", False), "resume_from_huggingface": ("flag", False),
    "async_upload": ("flag", False), "save_precision": ("str", None, (None, "float", "fp16", "bf16")),
    "save_every_n_epochs": ("int", None), "save_every_n_steps": ("int", None), "save_n_epoch_ratio": ("int", None),
    "save_last_n_epochs": ("int", None), "save_last_n_epochs_state": ("int", None),
    "save_last_n_steps": ("int", None), "save_last_n_steps_state": ("int", None), "save_state": ("flag", False),
    "save_state_on_train_end": ("flag", False), "resume": ("str", None), "train_batch_size": ("int", 1),
    "max_token_length": ("int", None, (None, 150, 225)), "mem_eff_attn": ("flag", False),
    "torch_compile": ("flag", False), "dynamo_backend": ("str", "inductor"), "xformers": ("flag", False),
    "sdpa": ("flag", False), "vae": ("str", None), "max_train_steps": ("int", 1600), "max_train_epochs": ("int", None),
    "max_data_loader_n_workers": ("int", 8), "persistent_data_loader_workers": ("flag", False),
    "seed": ("int", None), "gradient_checkpointing": ("flag", False), "gradient_accumulation_steps": ("int", 1),
    "mixed_precision": ("str", "no", ("no", "fp16", "bf16")), "full_fp16": ("flag", False),
    "full_bf16": ("flag", False), "fp8_base": ("flag", False), "ddp_timeout": ("int", None),
    "ddp_gradient_as_bucket_view": ("flag", False), "ddp_static_graph": ("flag", False), "clip_skip": ("int", None),
    "logging_dir": ("str", None), "log_with": ("str", None, (None, "tensorboard", "wandb", "all")),
    "log_prefix": ("str", None), "log_tracker_name": ("str", None), "wandb_run_name": ("str", None),
    "log_tracker_config": ("str", None), "wandb_api_key": ("str", None), "log_config": ("flag", False),
    "noise_offset": ("float", None), "noise_offset_random_strength": ("flag", False),
    "multires_noise_iterations": ("int", None), "ip_noise_gamma": ("float", None),
    "ip_noise_gamma_random_strength": ("flag", False), "multires_noise_discount": ("float", 0.3),
    "adaptive_noise_scale": ("float", None), "zero_terminal_snr": ("flag", False), "min_timestep": ("int", None),
    "max_timestep": ("int", None), "loss_type": ("str", "l2", ("l1", "l2", "huber", "smooth_l1")),
    "huber_schedule": ("str", "snr", ("constant", "exponential", "snr")), "huber_c": ("float", 0.1),
    "huber_scale": ("float", 1.0), "lowram": ("flag", False), "highvram": ("flag", False),
    "sample_every_n_steps": ("int", None), "sample_at_first": ("flag", False), "sample_every_n_epochs": ("int", None),
    "sample_prompts": ("str", None), "sample_sampler": ("str", "ddim", SAMPLERS), "config_file": ("str", None),
    "output_config": ("flag", False),
    # optimizer and schedule
    "optimizer_type": ("str", ""), "use_8bit_adam": ("flag", False), "use_lion_optimizer": ("flag", False),
    "learning_rate": ("float", 2e-6), "max_grad_norm": ("float", 1.0), "optimizer_args": ("list", None),
    "lr_scheduler_type": ("str", ""), "lr_scheduler_args": ("list", None), "lr_scheduler": ("str", "constant"),
    "lr_warmup_steps": ("int_or_float", 0), "lr_decay_steps": ("int_or_float", 0),
    "lr_scheduler_num_cycles": ("int", 1), "lr_scheduler_power": ("float", 1.0),
    "fused_backward_pass": ("flag", False), "lr_scheduler_timescale": ("int", None),
    "lr_scheduler_min_lr_ratio": ("float", None),
    # custom train functions, deepspeed
    "min_snr_gamma": ("float", None), "scale_v_pred_loss_like_noise_pred": ("flag", False),
    "v_pred_like_loss": ("float", None), "debiased_estimation_loss": ("flag", False),
    "weighted_captions": ("flag", False), "deepspeed": ("flag", False), "zero_stage": ("int", 2),
    "offload_optimizer_device": ("str", None), "offload_optimizer_nvme_path": ("str", None),
    "offload_param_device": ("str", None), "offload_param_nvme_path": ("str", None),
    "zero3_init_flag": ("flag", False), "zero3_save_16bit_model": ("flag", False),
    "fp16_master_weights_and_gradients": ("flag", False),
}
_FINE_TUNE_DATA = {"in_json": ("str", None), "dataset_repeats": ("int", 1)}
_SDXL = {"cache_text_encoder_outputs": ("flag", False), "cache_text_encoder_outputs_to_disk": ("flag", False),
         "disable_mmap_load_safetensors": ("flag", False)}
_SD_SAVING = {"save_model_as": ("str", None, (None, "ckpt", "safetensors", "diffusers", "diffusers_safetensors")),
              "use_safetensors": ("flag", False)}
_NETWORK = {
    "no_metadata": ("flag", False), "save_model_as": ("str", "safetensors", (None, "ckpt", "pt", "safetensors")),
    "unet_lr": ("float", None), "text_encoder_lr": ("list", None, (), "float"), "fp8_base_unet": ("flag", False),
    "network_weights": ("str", None), "network_module": ("str", None), "network_dim": ("int", None),
    "network_alpha": ("float", 1.0), "network_dropout": ("float", None), "network_args": ("list", None),
    "network_train_unet_only": ("flag", False), "network_train_text_encoder_only": ("flag", False),
    "training_comment": ("str", None), "dim_from_weights": ("flag", False), "scale_weight_norms": ("float", None),
    "base_weights": ("list", None), "base_weights_multiplier": ("list", None, (), "float"),
    "no_half_vae": ("flag", False),
    "skip_until_initial_step": ("flag", False), "initial_epoch": ("int", None), "initial_step": ("int", None),
    "validation_seed": ("int", None), "validation_split": ("float", 0.0), "validate_every_n_steps": ("int", None),
    "validate_every_n_epochs": ("int", None), "max_validation_steps": ("int", None),
    "prior_loss_weight": ("float", 1.0),
}
_OWN = {
    "train_db": {"learning_rate_te": ("float", None), "no_token_padding": ("flag", False),
                 "stop_text_encoder_training": ("int", None), "no_half_vae": ("flag", False),
                 "prior_loss_weight": ("float", 1.0), **_SD_SAVING},
    "sdxl_train": {"train_text_encoder": ("flag", False), "learning_rate_te1": ("float", None),
                   "learning_rate_te2": ("float", None), "diffusers_xformers": ("flag", False),
                   "no_half_vae": ("flag", False), "block_lr": ("str", None), "fused_optimizer_groups": ("int", None),
                   **_SDXL, **_SD_SAVING, **_FINE_TUNE_DATA},
    "train_network": {**_NETWORK, **_FINE_TUNE_DATA},
    "sdxl_train_network": {**_NETWORK, **_SDXL, **_FINE_TUNE_DATA},
}


def arg_table(script: str) -> dict[str, Arg]:
    """Every argument `script` accepts, by option name."""
    merged = {**_COMMON, **_OWN[script]}
    table = {}
    for name, spec in merged.items():
        kind, default, *rest = spec
        table[name] = Arg(name=name, kind=kind, default=default, choices=tuple(rest[0]) if rest else (),
                          item=rest[1] if len(rest) > 1 else "str")
    return table


# Values kohya cannot run with (it divides by them, or loops zero times): option -> smallest value.
MINIMUM = {"gradient_accumulation_steps": 1, "train_batch_size": 1, "max_train_steps": 1, "max_train_epochs": 1,
           "network_dim": 1, "lr_scheduler_num_cycles": 1, "save_every_n_steps": 1, "save_every_n_epochs": 1,
           "sample_every_n_steps": 1, "sample_every_n_epochs": 1, "bucket_reso_steps": 1, "vae_batch_size": 1,
           "clip_skip": 1, "learning_rate": 0}


def script_of(file_name: str) -> str | None:
    """"sdxl_train_network.py" -> "sdxl_train_network"; None for other scripts."""
    stem = file_name[:-3] if file_name.lower().endswith(".py") else file_name
    return stem if stem in SCRIPTS else None
