"""The model-family registry: what dbspec knows about each family, as data, in one place.

One frozen `FamilySpec` per family; the compiler, plan, runtime and CLI ask `FAMILIES` (or `family_spec`)
instead of testing a family name. Torch-free: the runtime turns names into classes itself, e.g.
`getattr(diffusers, spec.pipeline_class)`. Adding a family starts with an entry here (docs/architecture.md,
"Adding a family"); tests/unit/test_families.py lists the places that still test family names.
"""

from __future__ import annotations

from typing import Literal, get_args

import attrs

Family = Literal["sd1", "sd2", "sdxl"]
Prediction = Literal["epsilon", "v_prediction"]


@attrs.frozen
class TextEncoderSpec:
    """One text encoder: its component and tokenizer folder names, its transformers class,
    its token length."""

    component: str  # "text_encoder", "text_encoder_2"
    tokenizer: str  # "tokenizer", "tokenizer_2"
    model_class: str  # transformers class name
    single_file_prefix: str  # its keys' prefix in the original (single-file) checkpoint layout
    tokenizer_class: str = "CLIPTokenizer"
    max_length: int = 77


@attrs.frozen
class KohyaFacts:
    """How kohya sd-scripts names the family in LoRA files it writes (ss_* metadata, key paths)."""

    base_version: str  # ss_base_model_version
    v2: bool  # ss_v2
    v_suffix: bool  # "_v" appended to base_version for v-prediction models
    original_unet_names: bool  # LoRA keys follow the original UNet layout (input_blocks...), not diffusers'


@attrs.frozen
class FamilySpec:
    name: Family
    title: str  # as messages name it: "SD1", "SDXL"
    runtime: str  # its runtime module: dbspec.runtime.families.<runtime> (SD1 and SD2 share one)
    pipeline_class: str  # diffusers pipeline class (as model_index.json's `_class_name`)
    safety_checker: bool  # the pipeline takes safety_checker/feature_extractor (else add_watermarker)
    denoiser: str  # component name of the trained network
    denoiser_class: str  # diffusers class name
    noise_scheduler: str  # diffusers scheduler class of the training noise
    context_dim: int  # the denoiser's cross-attention width (detection reads it from configs and weights)
    text_encoders: tuple[TextEncoderSpec, ...]
    latent_channels: int
    vae_scaling_factor: float
    resolution: int  # native image side in pixels
    prediction: Prediction  # the default objective when the model does not say
    # Empty when every public model of the family uses `prediction` unless its weights say otherwise; else
    # why the weights cannot tell (SD2 has both 768-v and 512-base models).
    prediction_hint: str
    hub_models: dict[str, Prediction]  # well-known hub ids of the family -> their prediction
    pooled_embeddings: bool  # extra conditioning: pooled text embeddings (SDXL's add_text_embeds)
    time_ids: int  # extra conditioning: number of micro-conditioning time ids (SDXL: 6), 0 for none
    lora_targets: tuple[str, ...]  # the default denoiser LoRA targets (attention projections)
    text_lora_targets: tuple[str, ...]  # the default text-encoder LoRA targets
    # Parameter counts of the family's public models per component (from their diffusers/transformers
    # configs), for the memory estimate of a hub model not downloaded yet.
    public_params: dict[str, int]
    # LoRA parameters per unit of rank with the default targets (rank x (in + out) per projection), per
    # trained component, counted on the public models.
    lora_params_per_rank: dict[str, int]
    # Denoiser activation bytes per latent pixel per sample at 16-bit autocast with SDPA: (plain,
    # checkpointed). Measured on real diffusers UNets, cross-checked with a published T4
    # table (docs/memory.md).
    activation_bytes_per_latent_pixel: tuple[int, int]
    kohya: KohyaFacts
    # Convolution-adapter (LoCon) parameters per unit of conv rank with the default conv targets (the 3x3
    # convolutions of ResNet blocks, downsamplers, upsamplers: rank x (in x 9 + out) each), counted likewise.
    conv_params_per_rank: int = 0
    # The Tiny AutoEncoder (diffusers AutoencoderTiny, hub id) that decodes live validation previews.
    preview_vae: str = "madebyollin/taesd"

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(t.component for t in self.text_encoders)

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return tuple(t.tokenizer for t in self.text_encoders)

    @property
    def extra_conditioning(self) -> bool:
        return self.pooled_embeddings or self.time_ids > 0


_CLIP_L = TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "cond_stage_model.transformer.")
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

FAMILIES: dict[str, FamilySpec] = {
    "sd1": FamilySpec(
        name="sd1",
        title="SD1",
        runtime="sd",
        pipeline_class="StableDiffusionPipeline",
        safety_checker=True,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        noise_scheduler="DDPMScheduler",
        context_dim=768,
        text_encoders=(_CLIP_L,),
        latent_channels=4,
        vae_scaling_factor=0.18215,
        resolution=512,
        prediction="epsilon",
        prediction_hint="",
        hub_models={
            "runwayml/stable-diffusion-v1-5": "epsilon",
            "stable-diffusion-v1-5/stable-diffusion-v1-5": "epsilon",
            "CompVis/stable-diffusion-v1-4": "epsilon",
        },
        pooled_embeddings=False,
        time_ids=0,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        public_params={"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
        lora_params_per_rank={"unet": 199_296, "text_encoder": 73_728},
        activation_bytes_per_latent_pixel=(350_000, 100_000),
        kohya=KohyaFacts(base_version="sd_v1", v2=False, v_suffix=True, original_unet_names=False),
        conv_params_per_rank=544_000,
    ),
    "sd2": FamilySpec(
        name="sd2",
        title="SD2",
        runtime="sd",
        pipeline_class="StableDiffusionPipeline",
        safety_checker=True,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        noise_scheduler="DDPMScheduler",
        context_dim=1024,
        # OpenCLIP ViT-H, in transformers' CLIP form
        text_encoders=(
            TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "cond_stage_model.model."),
        ),
        latent_channels=4,
        vae_scaling_factor=0.18215,
        resolution=768,
        prediction="v_prediction",
        prediction_hint="768-v models use v_prediction, 512-base use epsilon",
        hub_models={
            "stabilityai/stable-diffusion-2": "v_prediction",
            "stabilityai/stable-diffusion-2-1": "v_prediction",
            "stabilityai/stable-diffusion-2-base": "epsilon",
            "stabilityai/stable-diffusion-2-1-base": "epsilon",
        },
        pooled_embeddings=False,
        time_ids=0,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        # SD2's text encoder is OpenCLIP ViT-H without its last layer.
        public_params={"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
        lora_params_per_rank={"unet": 207_488, "text_encoder": 188_416},
        activation_bytes_per_latent_pixel=(350_000, 100_000),  # SD2's UNet has SD1's widths
        kohya=KohyaFacts(base_version="sd_v2", v2=True, v_suffix=True, original_unet_names=False),
        conv_params_per_rank=544_000,
    ),
    "sdxl": FamilySpec(
        name="sdxl",
        title="SDXL",
        runtime="sdxl",
        pipeline_class="StableDiffusionXLPipeline",
        safety_checker=False,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        noise_scheduler="DDPMScheduler",
        context_dim=2048,
        text_encoders=(  # CLIP ViT-L and OpenCLIP ViT-bigG
            TextEncoderSpec(
                "text_encoder", "tokenizer", "CLIPTextModel", "conditioner.embedders.0.transformer."
            ),
            TextEncoderSpec(
                "text_encoder_2",
                "tokenizer_2",
                "CLIPTextModelWithProjection",
                "conditioner.embedders.1.model.",
            ),
        ),
        latent_channels=4,
        vae_scaling_factor=0.13025,
        resolution=1024,
        prediction="epsilon",
        prediction_hint="",
        hub_models={"stabilityai/stable-diffusion-xl-base-1.0": "epsilon"},
        pooled_embeddings=True,
        time_ids=6,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        public_params={
            "unet": 2_567_463_684,
            "text_encoder": 123_060_480,
            "text_encoder_2": 694_659_840,
            "vae": 83_653_863,
        },
        lora_params_per_rank={"unet": 1_451_520, "text_encoder": 73_728, "text_encoder_2": 327_680},
        activation_bytes_per_latent_pixel=(600_000, 60_000),
        kohya=KohyaFacts(base_version="sdxl_base_v1-0", v2=False, v_suffix=False, original_unet_names=True),
        conv_params_per_rank=355_840,
        preview_vae="madebyollin/taesdxl",
    ),
}

FAMILY_NAMES: tuple[str, ...] = get_args(Family)
assert tuple(FAMILIES) == FAMILY_NAMES, "FAMILIES and the Family type list the same families"


def family_spec(name: str) -> FamilySpec:
    """The registry entry for `name`; KeyError names the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


# Every text-encoder component name any family uses, in order (for tables keyed by component).
ALL_TEXT_ENCODERS: tuple[str, ...] = tuple(
    dict.fromkeys(n for f in FAMILIES.values() for n in f.text_encoder_names)
)


def family_list(names: tuple[str, ...] = FAMILY_NAMES, *, quote: bool = True) -> str:
    """ "sd1", "sd2" or "sdxl": the families as a message lists them."""
    shown = [f'"{n}"' if quote else n for n in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def hub_model(base: str) -> tuple[str, Prediction] | None:
    """(family, prediction) of a well-known hub id, None for others."""
    return next(((f.name, f.hub_models[base]) for f in FAMILIES.values() if base in f.hub_models), None)
