"""kohya's `--apply_t5_attn_mask` (flux_train_network.py, sd3_train_network.py) and `--apply_lg_attn_mask`
(sd3_train_network.py) -> model.t5_attention_mask / model.clip_attention_mask: Flux masks wherever it encodes;
SD3 masks only the text-encoder outputs it caches (its training step calls encode_tokens, whose defaults turn
the masks off)."""

from __future__ import annotations

from convert_kit import component_file, fate, images, kohya, messages, out_path, plan_of
from dbspec.plan.summary import render_summary
from rich.console import Console
import io

FLUX = "black-forest-labs/FLUX.1-dev"
SD35 = "stabilityai/stable-diffusion-3.5-large"


def _flux(
    tmp_path, extra: str, cache: str = "--cache_text_encoder_outputs --cache_text_encoder_outputs_to_disk"
):
    images(tmp_path / "img" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / "models" / name)
    return kohya(
        tmp_path,
        command="accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 "
        f"flux_train_network.py --pretrained_model_name_or_path {FLUX} --clip_l models/clip_l.safetensors "
        "--t5xxl models/t5xxl_fp16.safetensors --ae models/ae.safetensors --train_data_dir img "
        "--resolution 512,512 --cache_latents_to_disk --save_model_as safetensors --sdpa "
        "--persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 --gradient_checkpointing "
        "--mixed_precision bf16 --save_precision bf16 --network_module networks.lora_flux --network_dim 16 "
        "--network_train_unet_only --optimizer_type adamw8bit --learning_rate 1e-4 "
        f"{cache} --fp8_base --highvram "
        "--max_train_epochs 4 --save_every_n_epochs 1 --timestep_sampling shift --discrete_flow_shift 3.1582 "
        f"--model_prediction_type raw --guidance_scale 1.0 {extra}",
    )


def _sd3(tmp_path, extra: str, unet_only: str = "--network_train_unet_only"):
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
        "--learning_rate 1e-4 --max_train_epochs 4 --save_every_n_epochs 1 --weighting_scheme logit_normal "
        "--training_shift 3.0 "
        f"{unet_only} {extra}",
    )


def _summary(plan) -> str:
    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    return console.file.getvalue()


def test_kohya_flux_t5_mask_is_the_t5_attention_mask(tmp_path):
    outcome = _flux(tmp_path, "--apply_t5_attn_mask --t5xxl_max_token_length 512")
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and plan.model.t5_attention_mask and not plan.model.clip_attention_mask
    assert fate(outcome, "apply_t5_attn_mask") == "mapped"
    assert "t5_attention_mask = true" in out_path(tmp_path).read_text()
    assert "T5 encodes with its padding mask (model.t5_attention_mask); the transformer masks" in _summary(
        plan
    )


def test_kohya_flux_t5_mask_maps_without_cached_outputs_too(tmp_path):
    """flux_train_network.py's encoding strategy applies the mask wherever it encodes (per step here)."""
    outcome = _flux(tmp_path, "--apply_t5_attn_mask", cache="")
    assert plan_of(outcome, tmp_path).model.t5_attention_mask
    assert fate(outcome, "apply_t5_attn_mask") == "mapped"


def test_kohya_flux_without_the_flag_leaves_the_mask_off(tmp_path):
    plan = plan_of(_flux(tmp_path, ""), tmp_path)
    assert not plan.model.t5_attention_mask and "padding mask" not in _summary(plan)


def test_kohya_sd3_masks_of_cached_outputs_map(tmp_path):
    outcome = _sd3(tmp_path, "--cache_text_encoder_outputs --apply_t5_attn_mask --apply_lg_attn_mask")
    plan = plan_of(outcome, tmp_path)
    assert plan.model.t5_attention_mask and plan.model.clip_attention_mask
    assert fate(outcome, "apply_t5_attn_mask") == fate(outcome, "apply_lg_attn_mask") == "mapped"
    summary = _summary(plan)
    assert "CLIP encodes with its padding mask" in summary and "transformer masks" not in summary


def test_kohya_sd3_to_disk_caching_is_caching(tmp_path):
    outcome = _sd3(tmp_path, "--cache_text_encoder_outputs_to_disk --apply_t5_attn_mask")
    assert plan_of(outcome, tmp_path).model.t5_attention_mask


def test_kohya_sd3_masks_without_the_cache_are_inert(tmp_path):
    """Without cached outputs kohya's SD3 step encodes with encode_tokens' defaults: no mask (DBS405)."""
    outcome = _sd3(tmp_path, "--apply_t5_attn_mask --apply_lg_attn_mask")
    plan = plan_of(outcome, tmp_path)
    assert not plan.model.t5_attention_mask and not plan.model.clip_attention_mask
    assert fate(outcome, "apply_t5_attn_mask") == fate(outcome, "apply_lg_attn_mask") == "inert"
    assert "masks only the text-encoder outputs it caches" in messages(outcome, "DBS405")


def test_kohya_sd3_clip_mask_is_inert_while_clip_trains(tmp_path):
    """kohya's SD3 re-encodes CLIP each step (unmasked) while it trains over its cached outputs, so only T5's
    cached output is masked: the CLIP flag is inert, the T5 one maps."""
    flags = "--cache_text_encoder_outputs --apply_t5_attn_mask --apply_lg_attn_mask"
    outcome = _sd3(tmp_path, flags, unet_only="")
    assert fate(outcome, "apply_lg_attn_mask") == "inert" and fate(outcome, "apply_t5_attn_mask") == "mapped"
    assert "anew each step while they train" in messages(outcome, "DBS405")
