"""kohya's text-encoder module mode on Flux/SD3 converted (train_network.py ~L901-915, inherited by
flux_train_network.py and sd3_train_network.py): every text encoder in train() mode under
--gradient_checkpointing, in eval() mode without it, trained or not. Only T5-XXL has dropout, so
train.text_encoder_mode is written only where T5 encodes at every step and dbspec's default differs."""

from __future__ import annotations

import pytest
from convert_kit import codes, component_file, images, kohya, plan_of  # noqa: F401

FLUX = "black-forest-labs/FLUX.1-dev"
SD35 = "stabilityai/stable-diffusion-3.5-large"
# sd-scripts' Flux LoRA command line (docs/flux_train_network.md), without --gradient_checkpointing and the
# text-encoder output cache: the test adds them
FLUX_COMMAND = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 flux_train_network.py "
    f"--pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors "
    "--ae ae.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --save_model_as "
    "safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 "
    "--mixed_precision bf16 --save_precision bf16 --network_module networks.lora_flux --network_dim 4 "
    "--optimizer_type adamw8bit --learning_rate 1e-4 --highvram --max_train_steps 400 "
    "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0"
)
UNET_ONLY = "--network_train_unet_only"
GC = "--gradient_checkpointing"
CACHE = "--cache_text_encoder_outputs"
T5 = '--network_args "train_t5xxl=True"'


def _flux(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, command=f"{FLUX_COMMAND} {extra}")


def _t5_mode(plan) -> bool:
    """Whether T5-XXL is in train mode in a training step (runtime/prepare.py set_train_mode)."""
    t5 = next(c for c in plan.precision.components if c.name == "text_encoder_2")
    return plan.text_encoder_mode == "train" or (
        plan.text_encoder_mode == "trained" and t5.trainable != "frozen"
    )


@pytest.mark.parametrize(
    ("extra", "mode", "t5_train_mode", "cached"),
    [
        # T5 frozen and encoded every step: kohya's train() under gradient checkpointing turns its dropout on
        (f"{UNET_ONLY} {GC}", "train", True, False),
        (f"{GC}", "train", True, False),  # a CLIP LoRA too: CLIP has no dropout, T5 as above
        (f"{UNET_ONLY}", "trained", False, True),  # eval(): dbspec's default, T5 frozen
        # train_t5xxl: train mode under gradient checkpointing is dbspec's default; eval() without it is not
        (f"{GC} {T5}", "trained", True, False),
        (f"{T5}", "eval", False, False),
        # the cache holds T5's outputs, encoded in eval mode before train() (kohya refuses train_t5xxl there)
        (f"{UNET_ONLY} {GC} {CACHE}", "trained", False, True),
        (f"{GC} {CACHE}_to_disk", "trained", False, False),  # CLIP trains: dbspec encodes it all per step
    ],
)
def test_flux_text_encoder_mode_is_kohyas(tmp_path, extra, mode, t5_train_mode, cached):
    outcome = _flux(tmp_path, extra)
    plan = plan_of(outcome, tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome)
    assert plan.text_encoder_mode == mode
    assert _t5_mode(plan) == t5_train_mode
    assert plan.cache.text_embeddings == cached
    if mode == "train" and UNET_ONLY in extra:  # the cache's only reason to be off: the plan says so
        assert any("T5-XXL encodes in train mode" in n for n in plan.cache.notes)


def test_sd3_without_cache_under_gradient_checkpointing_trains_t5s_dropout(tmp_path):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    command = (
        f"accelerate launch --mixed_precision bf16 sd3_train_network.py --pretrained_model_name_or_path "
        f"{SD35} --clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl "
        "sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --seed 42 "
        "--gradient_checkpointing --save_precision bf16 --network_module networks.lora_sd3 --network_dim 4 "
        "--network_train_unet_only --optimizer_type adamw8bit --learning_rate 1e-4 --max_train_steps 400"
    )
    plan = plan_of(kohya(tmp_path, command=command), tmp_path)
    assert plan.text_encoder_mode == "train" and not plan.cache.text_embeddings


@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        # T5 in train mode in training steps: kohya's validation loss and samples encode with its dropout
        (f"{UNET_ONLY} {GC}", "training"),
        (f"{GC} {T5}", "training"),
        (f"{UNET_ONLY}", "eval"),  # eval() in training and validation alike
        (f"{UNET_ONLY} {GC} {CACHE}", "eval"),  # T5's outputs come from the cache, encoded in eval mode
    ],
)
def test_validation_encodes_in_kohyas_text_encoder_mode(tmp_path, extra, mode):
    """train_network.py's validation puts only its network in eval mode (switch_rng_state seeds the draws
    with --validation_seed), and flux_train_utils.sample_images switches no mode (each prompt's seed):
    validation.text_encoder_mode = "training" where T5 is in train mode in training steps."""
    (tmp_path / "prompts.txt").write_text(
        "a photo of ohwx dog on a beach --w 512 --h 512\n", encoding="utf-8"
    )
    samples = "--sample_prompts prompts.txt --sample_every_n_steps 100 --validation_split 0.25"
    plan = plan_of(_flux(tmp_path, f"{extra} {samples}"), tmp_path)
    assert plan.validation.text_encoder_mode == mode
    assert plan.validation.prompts and plan.evaluation.metrics  # both encode their prompts
    plain = plan_of(_flux(tmp_path, extra), tmp_path)  # no validation: nothing written
    assert plain.validation.text_encoder_mode == "eval"
