"""Arguments of diffusers' `examples/dreambooth` scripts (diffusers 58eb52c, checked option by option):
train_dreambooth.py, train_dreambooth_lora.py, train_dreambooth_lora_sdxl.py (the flow-matching scripts:
flow.py). Defaults differ per script (learning rate, resolution, output folder); options newer than a user's
copy of a script are simply never given."""

from __future__ import annotations

from dbspec.convert.common.argv import Arg
from dbspec.convert.diffusers.flow import FLOW_SCRIPTS, OWN as FLOW_OWN

# torchvision's InterpolationMode names, lower-cased (the scripts' choices)
_INTERPOLATION = ("nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
SDXL_LORA = "train_dreambooth_lora_sdxl"  # the script whose dataset has SDXL-only behaviour
SCRIPTS = (
    "train_dreambooth",
    "train_dreambooth_lora",
    "train_dreambooth_lora_sdxl",
    *FLOW_SCRIPTS,
)

_COMMON: dict[str, tuple] = {
    "pretrained_model_name_or_path": ("str", None),
    "revision": ("str", None),
    "variant": ("str", None),
    "instance_data_dir": ("str", None),
    "class_data_dir": ("str", None),
    "instance_prompt": ("str", None),
    "class_prompt": ("str", None),
    "with_prior_preservation": ("flag", False),
    "prior_loss_weight": ("float", 1.0),
    "num_class_images": ("int", 100),
    "output_dir": ("str", None),
    "seed": ("int", None),
    "resolution": ("int", 512),
    "center_crop": ("flag", False),
    "train_text_encoder": ("flag", False),
    "train_batch_size": ("int", 4),
    "sample_batch_size": ("int", 4),
    "num_train_epochs": ("int", 1),
    "max_train_steps": ("int", None),
    "checkpointing_steps": ("int", 500),
    "checkpoints_total_limit": ("int", None),
    "resume_from_checkpoint": ("str", None),
    "gradient_accumulation_steps": ("int", 1),
    "gradient_checkpointing": ("flag", False),
    "learning_rate": ("float", 5e-6),
    "scale_lr": ("flag", False),
    "lr_scheduler": ("str", "constant"),
    "lr_warmup_steps": ("int", 500),
    "lr_num_cycles": ("int", 1),
    "lr_power": ("float", 1.0),
    "use_8bit_adam": ("flag", False),
    "dataloader_num_workers": ("int", 0),
    "adam_beta1": ("float", 0.9),
    "adam_beta2": ("float", 0.999),
    "adam_weight_decay": ("float", 1e-2),
    "adam_epsilon": ("float", 1e-8),
    "max_grad_norm": ("float", 1.0),
    "push_to_hub": ("flag", False),
    "hub_token": ("str", None),
    "hub_model_id": ("str", None),
    "logging_dir": ("str", "logs"),
    "allow_tf32": ("flag", False),
    "report_to": ("str", "tensorboard"),
    "validation_prompt": ("str", None),
    "num_validation_images": ("int", 4),
    "mixed_precision": ("str", None, (None, "no", "fp16", "bf16")),
    "prior_generation_precision": ("str", None, (None, "no", "fp32", "fp16", "bf16")),
    "local_rank": ("int", -1),
    "enable_xformers_memory_efficient_attention": ("flag", False),
}
_OWN: dict[str, dict[str, tuple]] = {
    "train_dreambooth": {
        "output_dir": ("str", "dreambooth-model"),
        "tokenizer_name": ("str", None),
        "validation_steps": ("int", 100),
        "set_grads_to_none": ("flag", False),
        "offset_noise": ("flag", False),
        "snr_gamma": ("float", None),
        "pre_compute_text_embeddings": ("flag", False),
        "tokenizer_max_length": ("int", None),
        "text_encoder_use_attention_mask": ("flag", False),
        "skip_save_text_encoder": ("flag", False),
        "validation_images": ("list", None),
        "class_labels_conditioning": ("str", None),
        "validation_scheduler": (
            "str",
            "DPMSolverMultistepScheduler",
            ("DPMSolverMultistepScheduler", "DDPMScheduler"),
        ),
    },
    "train_dreambooth_lora": {
        "output_dir": ("str", "lora-dreambooth-model"),
        "tokenizer_name": ("str", None),
        "learning_rate": ("float", 5e-4),
        "validation_epochs": ("int", 50),
        "rank": ("int", 4),
        "lora_dropout": ("float", 0.0),
        "image_interpolation_mode": ("str", "lanczos", _INTERPOLATION),
        "pre_compute_text_embeddings": ("flag", False),
        "tokenizer_max_length": ("int", None),
        "text_encoder_use_attention_mask": ("flag", False),
        "validation_images": ("list", None),
        "class_labels_conditioning": ("str", None),
    },
    "train_dreambooth_lora_sdxl": {
        "output_dir": ("str", "lora-dreambooth-model"),
        "learning_rate": ("float", 1e-4),
        "resolution": ("int", 1024),
        "validation_epochs": ("int", 50),
        "rank": ("int", 4),
        "lora_dropout": ("float", 0.0),
        "pretrained_vae_model_name_or_path": ("str", None),
        "dataset_name": ("str", None),
        "dataset_config_name": ("str", None),
        "image_column": ("str", "image"),
        "caption_column": ("str", None),
        "repeats": ("int", 1),
        "random_flip": ("flag", False),
        "text_encoder_lr": ("float", 5e-6),
        "snr_gamma": ("float", None),
        "optimizer": ("str", "AdamW"),
        "prodigy_beta3": ("float", None),
        "prodigy_decouple": ("str", True),
        "adam_weight_decay": ("float", 1e-4),
        "adam_weight_decay_text_encoder": ("float", 1e-3),
        # type=bool in the script: any given text (even "False") is True
        "prodigy_use_bias_correction": ("str", True),
        "prodigy_safeguard_warmup": ("str", True),
        "do_edm_style_training": ("flag", False),
        "use_dora": ("flag", False),
        "output_kohya_format": ("flag", False),
        "image_interpolation_mode": ("str", "lanczos", _INTERPOLATION),
        "cache_dir": ("str", None),
    },
    **FLOW_OWN,
}


def arg_table(script: str) -> dict[str, Arg]:
    merged = {**_COMMON, **_OWN[script]}
    if script in FLOW_SCRIPTS:  # their argparse has no xformers option
        del merged["enable_xformers_memory_efficient_attention"]
    out = {}
    for name, spec in merged.items():
        kind, default, *rest = spec
        out[name] = Arg(name=name, kind=kind, default=default, choices=tuple(rest[0]) if rest else ())
    return out


def script_of(file_name: str) -> str | None:
    stem = file_name[:-3] if file_name.lower().endswith(".py") else file_name
    return stem if stem in SCRIPTS else None
