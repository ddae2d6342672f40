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
    """One text encoder: its component and tokenizer folder names, its transformers class, its token length."""

    component: str  # "text_encoder", "text_encoder_2"
    tokenizer: str  # "tokenizer", "tokenizer_2"
    model_class: str  # transformers class name
    max_length: int = 77


@attrs.frozen
class FamilySpec:
    name: Family
    pipeline_class: str  # diffusers pipeline class (as model_index.json's `_class_name`)
    safety_checker: bool  # the pipeline takes safety_checker/feature_extractor (else add_watermarker)
    denoiser: str  # component name of the trained network
    denoiser_class: str  # diffusers class name
    text_encoders: tuple[TextEncoderSpec, ...]
    latent_channels: int
    vae_scaling_factor: float
    resolution: int  # native image side in pixels
    prediction: Prediction  # the default objective when the model does not say
    pooled_embeddings: bool  # extra conditioning: pooled text embeddings (SDXL's add_text_embeds)
    time_ids: int  # extra conditioning: number of micro-conditioning time ids (SDXL: 6), 0 for none
    lora_targets: tuple[str, ...]  # the default denoiser LoRA targets (attention projections)
    text_lora_targets: tuple[str, ...]  # the default text-encoder LoRA targets
    # Parameter counts of the family's public models per component (from their diffusers/transformers configs),
    # for the memory estimate of a hub model not downloaded yet.
    public_params: dict[str, int]
    # LoRA parameters per unit of rank with the default targets (rank x (in + out) per projection), per trained
    # component, counted on the public models.
    lora_params_per_rank: dict[str, int]
    # Convolution-adapter (LoCon) parameters per unit of conv rank with the default conv targets (the 3x3
    # convolutions of ResNet blocks, downsamplers, upsamplers: rank x (in x 9 + out) each), counted likewise.
    conv_params_per_rank: int = 0

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(t.component for t in self.text_encoders)

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return tuple(t.tokenizer for t in self.text_encoders)

    @property
    def extra_conditioning(self) -> bool:
        return self.pooled_embeddings or self.time_ids > 0


_CLIP_L = TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel")
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

FAMILIES: dict[str, FamilySpec] = {
    "sd1": FamilySpec(
        name="sd1",
        pipeline_class="StableDiffusionPipeline",
        safety_checker=True,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        text_encoders=(_CLIP_L,),
        latent_channels=4,
        vae_scaling_factor=0.18215,
        resolution=512,
        prediction="epsilon",
        pooled_embeddings=False,
        time_ids=0,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        public_params={"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
        lora_params_per_rank={"unet": 199_296, "text_encoder": 73_728},
        conv_params_per_rank=544_000,
    ),
    "sd2": FamilySpec(
        name="sd2",
        pipeline_class="StableDiffusionPipeline",
        safety_checker=True,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel"),),  # OpenCLIP ViT-H
        latent_channels=4,
        vae_scaling_factor=0.18215,
        resolution=768,
        prediction="v_prediction",
        pooled_embeddings=False,
        time_ids=0,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        # SD2's text encoder is OpenCLIP ViT-H without its last layer.
        public_params={"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
        lora_params_per_rank={"unet": 207_488, "text_encoder": 188_416},
        conv_params_per_rank=544_000,
    ),
    "sdxl": FamilySpec(
        name="sdxl",
        pipeline_class="StableDiffusionXLPipeline",
        safety_checker=False,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        text_encoders=(
            _CLIP_L,
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection"),
        ),
        latent_channels=4,
        vae_scaling_factor=0.13025,
        resolution=1024,
        prediction="epsilon",
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
        conv_params_per_rank=355_840,
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
