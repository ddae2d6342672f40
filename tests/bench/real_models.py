"""Full-size SD1.5 and SDXL model folders with random weights, written locally (nothing downloaded).

The configs are the public ones: diffusers' `UNet2DConditionModel` / `AutoencoderKL` configs of
runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0, and transformers'
`CLIPTextConfig` of openai/clip-vit-large-patch14 (SD1.5's and SDXL's first text encoder) and
laion/CLIP-ViT-bigG-14 (SDXL's second). Parameter counts match the checkpoints (`PARAMS`). The tokenizers
and scheduler come from the built-in tiny twin of the same family: their ids fit the real 49408-token
vocabulary, and a tokenizer has no effect on memory or speed.

Each component is built, saved and freed one at a time (the SDXL UNet alone is 10.3 GB in fp32), then
`model_index.json`, the tokenizers and the scheduler are copied from the materialised tiny twin.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}


def _vae(sample_size: int, scaling_factor: float) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "latent_channels": 4,
        "act_fn": "silu",
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
    }


CLIP_L = {  # openai/clip-vit-large-patch14 text model
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_BIGG = {  # laion/CLIP-ViT-bigG-14 text model (SDXL's text_encoder_2, with projection)
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

MODELS: dict[str, dict[str, Any]] = {
    "sd15": {
        "family": "sd1",
        "twin": "builtin:tiny-sd1",
        "unet": SD15_UNET,
        "vae": _vae(512, 0.18215),
        "text_encoder": ("CLIPTextModel", CLIP_L),
    },
    "sdxl": {
        "family": "sdxl",
        "twin": "builtin:tiny-sdxl",
        "unet": SDXL_UNET,
        "vae": _vae(1024, 0.13025),
        "text_encoder": ("CLIPTextModel", CLIP_L),
        "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIGG),
    },
}
# The released checkpoints' parameter counts: a built folder must match them.
PARAMS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}
MARKER = "bench_real_model.json"

# diffusers transformer configs of black-forest-labs/FLUX.1-dev, stabilityai/stable-diffusion-3.5-medium and
# stabilityai/stable-diffusion-3.5-large (8,056,627,520 parameters, the sd3 family's count): built reduced by
# tests/bench/bench_flow_activations.py, matched whole by tests/runtime/test_sd3_lora_blocks.py
FLUX = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
SD35M = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
SD35L = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)


def build_real_model(name: str, folder: Path, seed: int = 0) -> Path:
    """Write model `name` ("sd15" or "sdxl") as a diffusers folder at `folder`; reuse one already there."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dbspec.runtime.tiny import MARKER_FILE, materialize

    model = MODELS[name]
    folder = Path(folder)
    marker = {"model": name, "seed": seed, "unet": model["unet"]}
    if (folder / MARKER).is_file() and json.loads((folder / MARKER).read_text()) == marker:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    twin = materialize(model["twin"], folder.parent / f"{folder.name}-twin")
    shutil.copytree(twin, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", MARKER_FILE))
    torch.manual_seed(seed)
    counts = {}
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if component not in model:
            continue
        if component == "unet":
            module = UNet2DConditionModel(**model["unet"])
        elif component == "vae":
            module = AutoencoderKL(**model["vae"])
        else:
            cls, config = model[component]
            twin_config = json.loads((twin / component / "config.json").read_text())
            ids = {k: twin_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
            module = getattr(transformers, cls)(transformers.CLIPTextConfig(**config, **ids))
        counts[component] = sum(p.numel() for p in module.parameters())
        shutil.rmtree(folder / component, ignore_errors=True)
        module.save_pretrained(folder / component, safe_serialization=True)
        del module
        gc.collect()
    if counts != PARAMS[name]:
        raise RuntimeError(f"{name}: parameter counts {counts} differ from the checkpoints' {PARAMS[name]}")
    shutil.rmtree(twin, ignore_errors=True)
    (folder / MARKER).write_text(json.dumps(marker))
    return folder
