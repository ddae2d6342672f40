"""dbspec/denoiser_layout.py against the real classes: each public model built on the meta device (no
memory, no download) from its public config has exactly the layout's module paths (the layers that hold
parameters) and the registry's parameter count (families.py public_params / hub_params, counted from the
same configs when they were written), so the configs below are the public ones and the layout generator
follows diffusers and transformers."""

from __future__ import annotations

import pytest
import torch

from dbspec.denoiser_layout import block_linear_in_out, denoiser_paths, text_encoder_paths
from dbspec.families import FAMILIES, family_spec

_CROSS, _PLAIN = "CrossAttnDownBlock2D", "DownBlock2D"
_SD_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json (its structural and width keys)
    "down_block_types": [_CROSS] * 3 + [_PLAIN],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
_XL_TIME = {
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "use_linear_projection": True,
}
UNETS = {
    "runwayml/stable-diffusion-v1-5": _SD_UNET,
    # stabilityai/stable-diffusion-2-1: OpenCLIP-H's width, linear projections
    "stabilityai/stable-diffusion-2-1": {
        **_SD_UNET,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
    },
    "stabilityai/stable-diffusion-xl-base-1.0": {
        "down_block_types": [_PLAIN, _CROSS, _CROSS],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280],
        "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": 2048,
        "attention_head_dim": [5, 10, 20],
        "projection_class_embeddings_input_dim": 2816,
        **_XL_TIME,
    },
    "stabilityai/stable-diffusion-xl-refiner-1.0": {
        "down_block_types": [_PLAIN, _CROSS, _CROSS, _PLAIN],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [384, 768, 1536, 1536],
        "transformer_layers_per_block": 4,
        "cross_attention_dim": 1280,
        "attention_head_dim": [6, 12, 24, 24],
        "projection_class_embeddings_input_dim": 2560,
        **_XL_TIME,
    },
}
_SD3 = {
    "num_layers": 24,
    "num_attention_heads": 24,
    "caption_projection_dim": 1536,
    "pos_embed_max_size": 192,
}
TRANSFORMERS = {
    "stabilityai/stable-diffusion-3-medium-diffusers": ("SD3Transformer2DModel", _SD3),
    "stabilityai/stable-diffusion-3.5-medium": (
        "SD3Transformer2DModel",
        {**_SD3, "qk_norm": "rms_norm", "dual_attention_layers": tuple(range(13)), "pos_embed_max_size": 384},
    ),
    "stabilityai/stable-diffusion-3.5-large": (
        "SD3Transformer2DModel",
        {
            **_SD3,
            "num_layers": 38,
            "num_attention_heads": 38,
            "caption_projection_dim": 2432,
            "qk_norm": "rms_norm",
        },
    ),
    "black-forest-labs/FLUX.1-dev": ("FluxTransformer2DModel", {"in_channels": 64, "guidance_embeds": True}),
    "lodestones/Chroma1-HD": ("ChromaTransformer2DModel", {}),
}


def _family_of(hub_id: str):
    return next(f for f in FAMILIES.values() if hub_id in f.hub_models)


def _layout_of(hub_id: str):
    return next(layout for layout in _family_of(hub_id).denoiser_layouts if hub_id in layout.hub_ids or not
                layout.hub_ids)  # fmt: skip


def _built(cls_name: str, config: dict) -> torch.nn.Module:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config)


def _layer_paths(module: torch.nn.Module) -> set[str]:
    return {name for name, m in module.named_modules() if name and any(True for _ in m.parameters(False))}


@pytest.mark.parametrize("hub_id", [*UNETS, *TRANSFORMERS])
def test_each_public_denoiser_has_the_layout_paths_and_the_registry_count(hub_id):
    cls_name, config = ("UNet2DConditionModel", UNETS[hub_id]) if hub_id in UNETS else TRANSFORMERS[hub_id]
    model = _built(cls_name, config)
    family = _family_of(hub_id)
    assert sum(p.numel() for p in model.parameters()) == family.params_of(hub_id)["unet"]
    layout = _layout_of(hub_id)
    assert denoiser_paths(layout.shape) == _layer_paths(model), layout.title
    # each block Linear's in + out (the per-block LoRA count of compiler/adapters.py); None elsewhere and
    # on the UNets
    for path, m in model.named_modules() if hub_id in TRANSFORMERS else ():
        widths = (m.in_features + m.out_features) if isinstance(m, torch.nn.Linear) else None
        if path.startswith(("transformer_blocks.", "single_transformer_blocks.")) or widths is None:
            assert block_linear_in_out(layout.shape, path) == widths, path


_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
TEXT = {  # (family, component) -> the public encoder's config (transformers' CLIPTextConfig / T5Config)
    ("sd1", "text_encoder"): _CLIP_L,
    # SD2's OpenCLIP ViT-H without its last layer: 23
    ("sd2", "text_encoder"): {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "projection_dim": 512,
    },
    ("sdxl", "text_encoder_2"): {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "projection_dim": 1280,
    },
    ("sd3", "text_encoder"): {**_CLIP_L, "projection_dim": 768},
    ("flux", "text_encoder_2"): {
        "d_model": 4096,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "d_kv": 64,
        "feed_forward_proj": "gated-gelu",
        "vocab_size": 32128,
    },
}


@pytest.mark.parametrize(("family", "component"), list(TEXT))
def test_each_public_text_encoder_has_the_layout_paths_and_the_registry_count(family, component):
    import transformers

    spec = next(e for e in family_spec(family).text_encoders if e.component == component)
    cls = getattr(transformers, spec.model_class)
    config_cls = transformers.T5Config if spec.model_class.startswith("T5") else transformers.CLIPTextConfig
    with torch.device("meta"):
        model = cls(config_cls(**TEXT[family, component]))
    assert sum(p.numel() for p in model.parameters()) == family_spec(family).public_params[component]
    from dbspec.runtime.exports import clip_path

    named = _layer_paths(model)
    if not spec.model_class.startswith("T5"):
        named = {clip_path(p) for p in named}
    expected = text_encoder_paths(spec.model_class, spec.layers)
    # transformers ties T5's encoder.embed_tokens to `shared` (one module, listed once)
    assert named <= expected and expected - named <= {"encoder.embed_tokens"}
