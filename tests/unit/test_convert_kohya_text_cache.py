"""kohya's --cache_text_encoder_outputs (and _to_disk, which turns it on in every script that has it) with a
text-encoder LoRA: sdxl_train_network.py asserts --network_train_unet_only; flux_train_network.py and
sd3_train_network.py do not: they cache partially and encode CLIP anew each step over the cache, so only
T5-XXL's outputs (never trained) come from the cache, which is dbspec's train.text_encoder with its own
text cache."""

from __future__ import annotations

import pytest

from convert_kit import (
    SDXL,
    codes,
    component_file,
    errors,
    expressible,
    fate,
    images,
    kohya,
    messages,
    plan_of,
)
from dbspec.families import trainable_text_encoders

FLUX = "black-forest-labs/FLUX.1-dev"
SD35 = "stabilityai/stable-diffusion-3.5-large"


def _flux(tmp_path, extra: str):
    images(tmp_path / "img" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / "models" / name)
    return kohya(
        tmp_path,
        command="accelerate launch --mixed_precision bf16 flux_train_network.py "
        f"--pretrained_model_name_or_path {FLUX} --clip_l models/clip_l.safetensors "
        "--t5xxl models/t5xxl_fp16.safetensors --ae models/ae.safetensors --train_data_dir img "
        "--resolution 512,512 --cache_latents_to_disk --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_flux --network_dim 16 --optimizer_type adamw8bit --learning_rate 1e-4 "
        "--max_train_epochs 4 --timestep_sampling shift --discrete_flow_shift 3.1582 "
        f"--model_prediction_type raw --guidance_scale 1.0 {extra}",
    )


def _sd3(tmp_path, extra: str):
    images(tmp_path / "img" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir img --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_sd3 --network_dim 16 --network_alpha 8 --optimizer_type adamw8bit "
        f"--learning_rate 1e-4 --max_train_epochs 4 --weighting_scheme logit_normal {extra}",
    )


@pytest.mark.parametrize("cache", ["--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"])
def test_flux_clip_lora_with_cached_outputs_trains_clip(tmp_path, cache):
    outcome = expressible(_flux(tmp_path, f"{cache} --text_encoder_lr 5e-5"))
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder
    assert plan.adapter.text_encoder_targets  # CLIP-L's LoRA, as kohya's lora_flux builds it
    assert trainable_text_encoders("flux") == ("text_encoder",)  # T5-XXL stays frozen, as kohya's default
    assert fate(outcome, cache.removeprefix("--")) == "inert"


def test_sd3_clip_lora_with_cached_outputs_trains_clip(tmp_path):
    outcome = expressible(_sd3(tmp_path, "--cache_text_encoder_outputs --cache_text_encoder_outputs_to_disk"))
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder
    assert "text_encoder_3" not in trainable_text_encoders("sd3")


def test_sd3_t5_lora_with_cached_outputs_is_refused(tmp_path):
    """kohya raises (T5XXL is trained, so cache_text_encoder_outputs cannot be used): DBS402."""
    outcome = _sd3(tmp_path, "--cache_text_encoder_outputs --network_args train_t5xxl=True")
    assert "train_t5xxl" in "\n".join(errors(outcome))


@pytest.mark.parametrize("cache", ["--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"])
def test_sdxl_lora_with_cached_outputs_needs_unet_only(tmp_path, cache):
    images(tmp_path / "x" / "8_ohwx", 3, (1024, 1024))
    command = (
        f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x "
        "--resolution=1024 --network_module=networks.lora --network_dim=32 --learning_rate=1e-4 "
        f"--max_train_steps=300 --mixed_precision=bf16 {cache}"
    )
    outcome = kohya(tmp_path, command=command)
    assert "sdxl_train_network.py asserts network_train_unet_only" in messages(outcome, "DBS402")
    unet_only = expressible(kohya(tmp_path, command=f"{command} --network_train_unet_only"))
    assert not plan_of(unet_only, tmp_path).train_text_encoder


def test_sdxl_full_fine_tune_refuses_cache_to_disk_with_text_encoders(tmp_path):
    images(tmp_path / "x" / "8_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x --resolution=1024 "
        "--learning_rate=1e-5 --max_train_steps=300 --train_text_encoder "
        "--cache_text_encoder_outputs_to_disk",
    )
    assert "DBS402" in codes(outcome)
    assert "not cached while the text encoders train" in messages(outcome, "DBS402")


def test_flux_fp8_base_with_a_clip_lora_over_cached_outputs_differs(tmp_path):
    """train_network.py casts the text encoders left on the GPU (CLIP-L, which trains) to fp8 after caching;
    T5-XXL filled the cache un-cast from the CPU. dbspec casts both: CLIP-L as kohya, T5-XXL's cache
    differs."""
    outcome = _flux(tmp_path, "--cache_text_encoder_outputs --fp8_base")
    plan = plan_of(outcome, tmp_path)
    quantized = {c.name: c.quantized for c in plan.precision.components}
    assert quantized["text_encoder"] == "fp8" and quantized["unet"] == "fp8"
    assert "un-cast T5-XXL" in messages(outcome, "DBS404")
    unet_only = _flux(tmp_path, "--cache_text_encoder_outputs --fp8_base --network_train_unet_only")
    assert "DBS404" not in codes(unet_only)
    assert {c.name: c.quantized for c in plan_of(unet_only, tmp_path).precision.components}[
        "text_encoder"
    ] == "none"
