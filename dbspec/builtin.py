"""Built-in tiny models: `[model] base = "builtin:tiny-sd1"` trains offline, in seconds, on CPU.

This module is the registry only: names, families and the exact component configs as plain dicts, plus
parameter counts the compiler uses for memory estimates. It never imports torch; `dbspec.runtime.tiny`
builds the randomly initialised diffusers pipelines from these configs (a runtime test proves the counts).

The shapes mirror the real families at toy scale, so the same code paths run: SD1 (epsilon, CLIP text
encoder, quick_gelu), SD2 (v-prediction, OpenCLIP-shaped gelu encoder, linear projections, pad "!"),
SDXL (two text encoders, concatenated cross-attention, pooled projection + 6 time ids). The VAE downsamples
x8 like the real ones, so 64 px images give 8x8 latents.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from dbspec.families import Family

BUILTIN_PREFIX = "builtin:"
# Bump when any config, the tokenizer or the initialisation changes: caches key on `identity`.
BUILTIN_VERSION = 1

Prediction = Literal["epsilon", "v_prediction", "flow_matching"]

# --- tokenizer -------------------------------------------------------------------------------------------
# A CLIP byte-level BPE vocabulary: every byte symbol, alone and word-final, so any text tokenizes without
# unknown tokens; a few merges of common English pairs so BPE really merges. Order matters: each merge may
# only use symbols that exist before it.
TOKENIZER_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"), ("r", "e"), ("o", "r"), ("e", "n"),
    ("a", "t"), ("s", "t"), ("o", "u"), ("a", "r"), ("h", "e"), ("p", "h"), ("d", "o"), ("t", "o</w>"),
    ("a", "t</w>"), ("th", "e</w>"), ("o", "f</w>"), ("i", "s</w>"), ("e", "d</w>"), ("e", "s</w>"),
    ("e", "r</w>"), ("o", "n</w>"), ("an", "d</w>"), ("in", "g</w>"), ("ph", "o"), ("pho", "to</w>"),
    ("do", "g</w>"), ("c", "at</w>"),
)  # fmt: skip
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
END_OF_WORD = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP map from the 256 byte values to printable unicode symbols (no whitespace/control)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_values = list(printable)
    code_points = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + shifted)
            shifted += 1
    return {byte: chr(point) for byte, point in zip(byte_values, code_points)}


def tokenizer_vocab() -> dict[str, int]:
    """vocab.json of the built-in tokenizer: bytes, word-final bytes, merge results, then the two specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(symbol + END_OF_WORD for symbol in symbols)]
    tokens += [left + right for left, right in TOKENIZER_MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


VOCAB_SIZE = 2 * 256 + len(TOKENIZER_MERGES) + 2
BOS_ID = VOCAB_SIZE - 2
EOS_ID = VOCAB_SIZE - 1
BANG_ID = 0  # "!" is the first printable byte symbol; SD2 and SDXL's OpenCLIP tokenizer pad with it


def _tokenizer(pad_token: str) -> dict[str, Any]:
    return {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "model_max_length": MODEL_MAX_LENGTH,
    }


# --- component configs ------------------------------------------------------------------------------------
def _text_encoder(*, hidden: int, hidden_act: str, pad_id: int, projection_dim: int) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 3,  # >= 2: SDXL (and clip-skip) read the penultimate hidden state
        "num_attention_heads": 4,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": pad_id,
    }


def _vae(scaling_factor: float) -> dict[str, Any]:
    # Four blocks = three x2 downsamples = x8, as in the real SD VAEs.
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 32, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": scaling_factor,
    }


def _sd_unet(
    *, cross_attention_dim: int, attention_head_dim: int | list[int], linear: bool
) -> dict[str, Any]:
    # Attention at the high-resolution block and in the middle, like SD1/SD2 (which have it in 3 of 4 blocks).
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": attention_head_dim,
        "use_linear_projection": linear,
    }


SDXL_TIME_EMBED_DIM = 8
SDXL_TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)
SD1_TEXT_HIDDEN = 32
OPENCLIP_TEXT_HIDDEN = 64


def _sdxl_unet() -> dict[str, Any]:
    # SDXL: no attention in the first block, cross-attention over te1 ++ te2 hidden states, and an added
    # embedding of te2's pooled projection concatenated with the 6 time ids.
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "transformer_layers_per_block": [1, 2],
        "cross_attention_dim": SD1_TEXT_HIDDEN + OPENCLIP_TEXT_HIDDEN,
        "attention_head_dim": [2, 4],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": SDXL_TIME_IDS * SDXL_TIME_EMBED_DIM + OPENCLIP_TEXT_HIDDEN,
    }


_SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def _ddpm(prediction: Prediction) -> dict[str, Any]:
    return {
        "_class_name": "DDPMScheduler",
        **_SD_BETAS,
        "prediction_type": prediction,
        "clip_sample": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def _sdxl_euler() -> dict[str, Any]:
    return {
        "_class_name": "EulerDiscreteScheduler",
        **_SD_BETAS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


# --- registry ---------------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class BuiltinModel:
    """One built-in model: everything needed to build it and to plan for it without loading it.

    Configs are plain JSON-shaped dicts in the keyword spelling of the diffusers/transformers classes
    (`scheduler["_class_name"]` names the scheduler class). Treat them as read-only; copy before editing.
    """

    name: str
    family: Family
    prediction: Prediction
    pipeline_class: str  # diffusers pipeline class written to model_index.json
    resolution: int  # native image side in pixels
    latent_channels: int
    latent_downsample: int  # image side / latent side
    vae_scaling_factor: float
    unet: dict[str, Any]  # the denoiser's config (SD3: an SD3Transformer2DModel's)
    vae: dict[str, Any]
    text_encoder: dict[str, Any] | None  # the CLIP text encoder (None: Chroma has none)
    text_encoder_2: dict[str, Any] | None  # SDXL, SD3
    tokenizer: dict[str, Any] | None
    tokenizer_2: dict[str, Any] | None  # SDXL, SD3
    # The T5 encoder (a transformers T5Config) and its tokenizer settings (vocabulary: `t5_vocab`): SD3's
    # third text encoder, Flux's second, Chroma's only one.
    text_encoder_3: dict[str, Any] | None = None
    tokenizer_3: dict[str, Any] | None = None
    scheduler: dict[str, Any]
    params: dict[str, int]  # exact parameter count per component
    identity: str  # e.g. "builtin:tiny-sd1@v1"; part of every cache key derived from this model
    # The identity of the built-in whose VAE this one has (same config, same seed: the same weights), so the
    # two share latent-cache entries; "" = its own.
    vae_of: str = ""

    @property
    def vae_identity(self) -> str:
        return self.vae_of or self.identity


def _model(name: str, **fields: Any) -> BuiltinModel:
    return BuiltinModel(
        name=name,
        identity=f"{name}@v{BUILTIN_VERSION}",
        resolution=64,
        latent_downsample=8,
        **{"latent_channels": 4, **fields},
    )


_SD1 = _model(
    "builtin:tiny-sd1",
    family="sd1",
    prediction="epsilon",
    pipeline_class="StableDiffusionPipeline",
    vae_scaling_factor=0.18215,
    unet=_sd_unet(cross_attention_dim=SD1_TEXT_HIDDEN, attention_head_dim=4, linear=False),
    vae=_vae(0.18215),
    text_encoder=_text_encoder(
        hidden=SD1_TEXT_HIDDEN, hidden_act="quick_gelu", pad_id=EOS_ID, projection_dim=32
    ),
    text_encoder_2=None,
    tokenizer=_tokenizer(pad_token=EOS_TOKEN),
    tokenizer_2=None,
    scheduler=_ddpm("epsilon"),
    params={"unet": 792_964, "vae": 316_695, "text_encoder": 45_568},
)

_SD2 = _model(
    "builtin:tiny-sd2",
    family="sd2",
    prediction="v_prediction",
    pipeline_class="StableDiffusionPipeline",
    vae_scaling_factor=0.18215,
    unet=_sd_unet(cross_attention_dim=OPENCLIP_TEXT_HIDDEN, attention_head_dim=[2, 4], linear=True),
    vae=_vae(0.18215),
    text_encoder=_text_encoder(
        hidden=OPENCLIP_TEXT_HIDDEN, hidden_act="gelu", pad_id=BANG_ID, projection_dim=64
    ),
    text_encoder_2=None,
    tokenizer=_tokenizer(pad_token="!"),
    tokenizer_2=None,
    scheduler=_ddpm("v_prediction"),
    params={"unet": 803_204, "vae": 316_695, "text_encoder": 140_288},
)

_SDXL = _model(
    "builtin:tiny-sdxl",
    family="sdxl",
    prediction="epsilon",
    pipeline_class="StableDiffusionXLPipeline",
    vae_scaling_factor=0.13025,
    unet=_sdxl_unet(),
    vae=_vae(0.13025),
    text_encoder=_text_encoder(
        hidden=SD1_TEXT_HIDDEN, hidden_act="quick_gelu", pad_id=EOS_ID, projection_dim=32
    ),
    text_encoder_2=_text_encoder(
        hidden=OPENCLIP_TEXT_HIDDEN, hidden_act="gelu", pad_id=BANG_ID, projection_dim=OPENCLIP_TEXT_HIDDEN
    ),
    tokenizer=_tokenizer(pad_token=EOS_TOKEN),
    tokenizer_2=_tokenizer(pad_token="!"),
    scheduler=_sdxl_euler(),
    params={"unet": 2_029_764, "vae": 316_695, "text_encoder": 45_568, "text_encoder_2": 144_384},
)

# --- SDXL refiner ------------------------------------------------------------------------------------------
# One text encoder (the OpenCLIP-shaped one, in the registry's first and only slot: `text_encoder` here is its
# text_encoder_2), context = its width, and 5 time ids (original size, crop, aesthetic score). The VAE is
# tiny-sdxl's, built from the same config and seed: latent caches are shared with it, as with the real pair.
SDXL_REFINER_TIME_IDS = 5


def _sdxl_refiner_unet() -> dict[str, Any]:
    return {
        **_sdxl_unet(),
        "cross_attention_dim": OPENCLIP_TEXT_HIDDEN,
        "projection_class_embeddings_input_dim": SDXL_REFINER_TIME_IDS * SDXL_TIME_EMBED_DIM
        + OPENCLIP_TEXT_HIDDEN,
    }


_SDXL_REFINER = _model(
    "builtin:tiny-sdxl-refiner",
    family="sdxl_refiner",
    prediction="epsilon",
    pipeline_class="StableDiffusionXLImg2ImgPipeline",
    vae_scaling_factor=0.13025,
    unet=_sdxl_refiner_unet(),
    vae=_vae(0.13025),
    vae_of=_SDXL.identity,
    text_encoder=_text_encoder(
        hidden=OPENCLIP_TEXT_HIDDEN, hidden_act="gelu", pad_id=BANG_ID, projection_dim=OPENCLIP_TEXT_HIDDEN
    ),
    text_encoder_2=None,
    tokenizer=_tokenizer(pad_token="!"),
    tokenizer_2=None,
    scheduler=_sdxl_euler(),
    params={"unet": 1_979_588, "vae": 316_695, "text_encoder_2": 144_384},
)

# --- SD3 ---------------------------------------------------------------------------------------------------
# A sentencepiece-free T5 vocabulary (transformers' T5Tokenizer takes a Unigram vocabulary of (piece, score)):
# the specials, the word-start marker, every printable ASCII character alone and word-initial, a few words.
T5_WORD_START = "\u2581"
T5_WORDS = ("photo", "dog", "cat", "of", "a", "the", "sks", "in")


def t5_vocab() -> list[tuple[str, float]]:
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (T5_WORD_START, -2.0)]
    pieces += [(c, -5.0) for c in chars] + [(T5_WORD_START + c, -4.0) for c in chars]
    return pieces + [(T5_WORD_START + w, -3.0) for w in T5_WORDS]


SD3_T5_HIDDEN = 128  # above CLIP-L + CLIP-G hidden (32 + 64): the CLIP states are zero-padded as in SD3
SD3_INNER = 16  # transformer heads x head dim; also its caption projection


def _t5() -> dict[str, Any]:
    return {
        "vocab_size": len(t5_vocab()),
        "d_model": SD3_T5_HIDDEN,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "is_encoder_decoder": False,
        "use_cache": False,
    }


def _sd3_transformer() -> dict[str, Any]:
    return {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": SD3_T5_HIDDEN,
        "caption_projection_dim": SD3_INNER,
        "pooled_projection_dim": 2 * SD1_TEXT_HIDDEN,  # CLIP-L and CLIP-G projections (32 each)
        "pos_embed_max_size": 32,  # patches per side: up to 512 px images
        "qk_norm": "rms_norm",  # as SD3.5
    }


def _sd3_vae() -> dict[str, Any]:
    # SD3's VAE: 16 latent channels, no quant convs, a shift before the scale.
    return {
        **_vae(1.5305),
        "latent_channels": 16,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }


_SD3 = _model(
    "builtin:tiny-sd3",
    family="sd3",
    prediction="flow_matching",
    pipeline_class="StableDiffusion3Pipeline",
    vae_scaling_factor=1.5305,
    latent_channels=16,
    unet=_sd3_transformer(),
    vae=_sd3_vae(),
    text_encoder=_text_encoder(
        hidden=SD1_TEXT_HIDDEN, hidden_act="quick_gelu", pad_id=EOS_ID, projection_dim=SD1_TEXT_HIDDEN
    ),
    text_encoder_2=_text_encoder(
        hidden=OPENCLIP_TEXT_HIDDEN, hidden_act="gelu", pad_id=BANG_ID, projection_dim=SD1_TEXT_HIDDEN
    ),
    text_encoder_3=_t5(),
    tokenizer=_tokenizer(pad_token=EOS_TOKEN),
    tokenizer_2=_tokenizer(pad_token="!"),
    tokenizer_3={"model_max_length": 256, "extra_ids": 0},
    scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    params={
        "unet": 26_400,
        "vae": 326_995,
        "text_encoder": 46_592,
        "text_encoder_2": 142_336,
        "text_encoder_3": 108_192,
    },
)

# --- Flux ---------------------------------------------------------------------------------------------------
FLUX_T5_HIDDEN = 64


def _flux_transformer() -> dict[str, Any]:
    # 2x2 packing: 16 latent channels x 4 = 64 inputs per token; rope axes sum to the head dim.
    return {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": FLUX_T5_HIDDEN,
        "pooled_projection_dim": SD1_TEXT_HIDDEN,  # CLIP-L's pooled output
        "guidance_embeds": True,  # as Flux.1 dev
        "axes_dims_rope": [2, 2, 4],
    }


_FLUX = _model(
    "builtin:tiny-flux",
    family="flux",
    prediction="flow_matching",
    pipeline_class="FluxPipeline",
    vae_scaling_factor=0.3611,
    latent_channels=16,
    unet=_flux_transformer(),
    vae={**_sd3_vae(), "scaling_factor": 0.3611, "shift_factor": 0.1159},
    text_encoder=_text_encoder(
        hidden=SD1_TEXT_HIDDEN, hidden_act="quick_gelu", pad_id=EOS_ID, projection_dim=SD1_TEXT_HIDDEN
    ),
    text_encoder_2=None,
    text_encoder_3={**_t5(), "d_model": FLUX_T5_HIDDEN},
    tokenizer=_tokenizer(pad_token=EOS_TOKEN),
    tokenizer_2=None,
    tokenizer_3={"model_max_length": 512, "extra_ids": 0},
    scheduler={
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    params={"unet": 27_040, "vae": 326_995, "text_encoder": 45_568, "text_encoder_2": 54_112},
)

# --- Chroma -------------------------------------------------------------------------------------------------
# Flux's shapes without CLIP-L and the guidance embedding; the approximator (in: 4 x approximator channels)
# computes the modulation of 3 x 1 single + 12 x 1 double blocks + 2 = 17 vectors.


def _chroma_transformer() -> dict[str, Any]:
    return {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": FLUX_T5_HIDDEN,
        "axes_dims_rope": [2, 2, 4],
        "approximator_num_channels": 16,
        "approximator_hidden_dim": 32,
        "approximator_layers": 2,
    }


_CHROMA = _model(
    "builtin:tiny-chroma",
    family="chroma",
    prediction="flow_matching",
    pipeline_class="ChromaPipeline",
    vae_scaling_factor=0.3611,
    latent_channels=16,
    unet=_chroma_transformer(),
    vae=_FLUX.vae,
    vae_of=_FLUX.identity,  # the same config and seed: tiny-flux's weights
    text_encoder=None,
    text_encoder_2=None,
    text_encoder_3={**_t5(), "d_model": FLUX_T5_HIDDEN},
    tokenizer=None,
    tokenizer_2=None,
    tokenizer_3={"model_max_length": 512, "extra_ids": 0},
    scheduler=_FLUX.scheduler,
    params={"unet": 18_208, "vae": 326_995, "text_encoder": 54_112},
)

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model for model in (_SD1, _SD2, _SDXL, _SDXL_REFINER, _SD3, _FLUX, _CHROMA)
}


# Tiny random evaluation models (runtime/tiny.py builds them): a CLIPModel for clip_t / clip_i and a ViT
# shaped like DINO ViT-S/16 for dino, so the metrics run offline in tests.
BUILTIN_METRIC_MODELS = ("builtin:tiny-clip", "builtin:tiny-dino")


def is_builtin(base: str) -> bool:
    """True when `base` asks for a built-in model (known or not; `builtin_model` says which exist)."""
    return base.startswith(BUILTIN_PREFIX)


def builtin_model(base: str) -> BuiltinModel:
    """The registry entry for `base`; KeyError naming the known built-ins when there is none."""
    if base not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_MODELS)
        raise KeyError(f"unknown built-in model {base!r}; known: {known}")
    return BUILTIN_MODELS[base]


# --- built-in Tiny AutoEncoders (live validation previews) -------------------------------------------------
# diffusers AutoencoderTiny configs (TAESD-shaped at toy scale: x8 like the tiny VAEs, 4 latent channels);
# `dbspec.runtime.tiny.build_preview_vae` builds them, randomly initialised from a fixed seed.
BUILTIN_PREVIEW_MODELS: dict[str, dict[str, Any]] = {
    "builtin:tiny-taesd": {
        "in_channels": 3,
        "out_channels": 3,
        "encoder_block_out_channels": [8, 8, 8, 8],
        "decoder_block_out_channels": [8, 8, 8, 8],
        "num_encoder_blocks": [1, 1, 1, 1],
        "num_decoder_blocks": [1, 1, 1, 1],
        "latent_channels": 4,
        "upsampling_scaling_factor": 2,
        "scaling_factor": 1.0,
    },
}
