"""The model-family registry: what dbspec knows about each family, as data, in one place.

One frozen `FamilySpec` per family; the compiler, plan, runtime and CLI ask `FAMILIES` (or `family_spec`)
instead of testing a family name. Torch-free: the runtime turns names into classes itself, e.g.
`getattr(diffusers, spec.pipeline_class)`. Adding a family starts with an entry here (docs/architecture.md,
"Adding a family"); tests/unit/test_families.py lists the places that still test family names.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import attrs

from dbspec import denoiser_layout as layouts
from dbspec.denoiser_layout import PublicLayout

Family = Literal["sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "chroma"]
Prediction = Literal["epsilon", "v_prediction", "flow_matching"]
Objective = Literal["ddpm", "flow"]


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
    trainable: bool = True  # train.text_encoder trains it (SD3's T5 only with train.t5, kohya's train_t5xxl)
    # Its key in an A1111/ComfyUI textual-inversion file (pivotal tuning's exports): SD1/SD2 "emb_params",
    # SDXL "clip_l" / "clip_g" (the refiner's only encoder is OpenCLIP bigG: "clip_g").
    embedding_key: str = "emb_params"
    # Its layers (num_hidden_layers; T5's num_layers) in the public model: CLIP-L 12, SD2's OpenCLIP ViT-H
    # 23 (without its last), OpenCLIP bigG 32, T5-XXL 24 (denoiser_layout.text_encoder_paths)
    layers: int = 12


@attrs.frozen
class KohyaFacts:
    """How kohya sd-scripts names the family in LoRA files it writes (ss_* metadata, key paths)."""

    base_version: str  # ss_base_model_version
    v2: bool  # ss_v2
    v_suffix: bool  # "_v" appended to base_version for v-prediction models
    original_unet_names: bool  # LoRA keys follow the original UNet layout (input_blocks...), not diffusers'
    # kohya_lora writes LoCon/DoRA/LoHa/LoKr in the LyCORIS layout too (Flux: plain LoRA only)
    lycoris_layout: bool = True
    ggpo: bool = False  # kohya's network for the family has LoRA-GGPO (adapter.ggpo: networks.lora_flux)
    network: str = "networks.lora"  # kohya's LoRA network module for the family
    # kohya's own OFT network for the family (diag-oft's kohya form, its kohya_lora export); "" for none
    oft_network: str = "networks.oft"
    # the denoiser modules (kohya name prefixes) its network from weights builds; () = every one in the file
    weights_scan: tuple[str, ...] = ()


@attrs.frozen
class FusedProjection:
    """One Linear of the family's original model that diffusers splits into parts (Flux's `img_attn.qkv` into
    attn.to_q, to_k, to_v): kohya's LoRA on it has one down-projection shared by the parts
    (`adapter.fused_projections`)."""

    kohya_name: str  # kohya's module name inside a block, `.` as `_` (img_attn_qkv, linear1)
    blocks: str  # the diffusers ModuleList holding the blocks (transformer_blocks, single_transformer_blocks)
    parts: tuple[str, ...]  # the diffusers children inside a block, in the original layer's row order
    # One part's down-projection parameters per unit of rank over all blocks of the public model (input width
    # x blocks): what sharing the down saves per extra part (the plan's parameter count).
    down_per_rank: int = 0


@attrs.frozen
class TokenActivation:
    """Transformer denoisers (SD3, Flux): activation bytes per token of the joint sequence (one per 2x2
    latent patch, plus the text tokens) per sample at 16-bit autocast with SDPA, (plain, checkpointed),
    measured per public model at real width (docs/memory.md, "The flow families";
    tests/bench/bench_flow_activations.py)."""

    patch: int  # latent pixels per token side
    clip_tokens: int  # text tokens in the joint sequence besides T5's (SD3: 77 CLIP tokens; Flux: none)
    # (denoiser parameters, plain bytes per token, checkpointed bytes per token) of each public model; the
    # model whose denoiser size is nearest (by ratio) applies
    variants: tuple[tuple[int, int, int], ...]

    def per_token(self, denoiser_params: int, checkpointed: bool) -> int:
        size = max(denoiser_params, 1)
        _, plain, ckpt = min(self.variants, key=lambda v: abs(math.log(v[0] / size)))
        return ckpt if checkpointed else plain


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
    # The same convolutions' (sum of input channels, count): LoCon's Tucker form (lora_down 1x1, lora_mid 3x3,
    # lora_up 1x1) has rank x (in + out) + rank^2 x 9 parameters per convolution, not rank x (in x 9 + out).
    conv_tucker_facts: tuple[int, int] = (0, 0)
    # The Tiny AutoEncoder (diffusers AutoencoderTiny, hub id) that decodes live validation previews.
    preview_vae: str = "madebyollin/taesd"
    # The training objective: "ddpm" (integer timesteps, the scheduler's alphas; epsilon or v targets) or
    # "flow" (flow matching: sigma in [0, 1], x_t = (1 - sigma) x + sigma noise, target noise - x).
    objective: Objective = "ddpm"
    # A tensor-name prefix that identifies the family in original-layout single files ("" = detected by its
    # text encoders and cross-attention width).
    single_file_marker: str = ""
    # The VAE's latent shift (latents = (x - shift_factor) * scaling_factor); 0 for none.
    vae_shift_factor: float = 0.0
    # The pipeline takes `add_watermarker` (SDXL); families without a safety checker or watermarker say False.
    watermarker: bool = False
    # The extra export formats (checkpoints.exports) its runtime writes; the diffusers layouts always are.
    extra_exports: tuple[str, ...] = ("single_file", "kohya_lora")
    long_prompts: bool = True  # model.max_tokens beyond one CLIP window (kohya's windows) is supported
    # The diffusers LoRA file keeps peft's key names (lora_A/lora_B), as diffusers' SD3 script writes it;
    # False: converted to diffusers' (lora.down/lora.up) as its SD1/SDXL scripts do.
    lora_peft_keys: bool = False
    # The guidance the denoiser is given while training (Flux.1 dev's guidance embedding: 3.5, as diffusers'
    # train_dreambooth_lora_flux.py); 0 for families without one.
    train_guidance: float = 0.0
    # The denoiser reads a guidance value without a guidance embedding (Chroma's approximator input, which
    # diffusers fixes at 0): loss.flow_guidance sets it as kohya's --guidance_scale does; 0 by default.
    approximator_guidance: bool = False
    # Hub models whose parameter counts differ from `public_params` (SD3.5 medium within the SD3 family): hub
    # id -> the components that differ; the memory estimate of such a model not downloaded yet uses them.
    hub_params: dict[str, dict[str, int]] = attrs.field(factory=dict)
    # Key prefixes one of which a file holding the denoiser alone has (model.denoiser_file: original and
    # diffusers layouts, after an optional `model.diffusion_model.`), for the plan's plausibility check.
    denoiser_file_keys: tuple[str, ...] = ("input_blocks.", "down_blocks.")
    # LoRA parameters per unit of rank of each denoiser target (suffix) on the public model (in + out of
    # every module the suffix names); {} when only the default targets are counted (lora_params_per_rank).
    lora_params_per_target: dict[str, int] = attrs.field(factory=dict)
    # The original model's fused Linears that diffusers splits (adapter.fused_projections); () for none.
    fused_projections: tuple[FusedProjection, ...] = ()
    # Blocks of several adapter kinds (runtime/mixed_kinds.py) train and export on this family's fused layers
    # (Flux, SD3, Chroma: one LyCORIS module of one kind per fused Linear); the U-Net families have none to
    # fuse.
    mixed_fused_kinds: bool = False
    # kohya's LoRA network for the family (networks.lora_flux): its denoiser targets in diffusers names
    # (suffixes, as adapter.denoiser_targets) and the paths (regular expressions) those suffixes also match
    # that kohya leaves alone; () when the converter has no such network.
    kohya_lora_targets: tuple[str, ...] = ()
    kohya_lora_excluded: tuple[str, ...] = ()
    # Convolutions (adapter.conv_targets) the family's kohya LoRA layout names (SD3: the patch convolution,
    # kohya's x_embedder.proj, which LyCORIS's full preset adapts): a LoCon on them is written there.
    kohya_conv_targets: tuple[str, ...] = ()
    # loss.text_encoder_dropout (per-encoder conditioning dropout, kohya's SD3 --clip_l_dropout_rate ...): its
    # runtime zeroes each encoder's part of the text conditioning (FamilyRuntime.drop_text_encoders).
    text_encoder_dropout: bool = False
    # loss.pos_embed_random_crop_rate (kohya's SD3 --pos_emb_random_crop_rate): the denoiser's diffusers
    # PatchEmbed crops a stored position-embedding table (pos_embed_max_size); runtime/pos_crop.py moves it.
    pos_embed_crop: bool = False
    # model.clip_attention_mask (kohya's --apply_lg_attn_mask): "hidden" where CLIP's masked hidden states
    # condition the denoiser (SD3), "pooled" where only CLIP's pooled output does, which causal attention
    # computes before any padding (Flux: the mask changes nothing), "" where dbspec does not mask CLIP.
    clip_attention_mask: str = ""
    # model.t5_attention_mask: the denoiser's attention also masks the padded text keys (Flux's
    # txt_attention_mask), not only T5's own encoding.
    t5_mask_in_denoiser: bool = False
    # The family is defined with T5's padding mask (Chroma): the plan's model.t5_attention_mask is always on.
    t5_mask_always: bool = False
    # Padding tokens the denoiser still attends after the prompt's under the T5 mask (Chroma: 1, kohya's
    # attn_padding and ChromaPipeline's `mask_indices <= seq_lengths`); Flux: 0.
    t5_mask_padding: int = 0
    # train.t5 (kohya's train_t5xxl): LoRA on the T5 encoder can train, with its own rate and kohya export
    # (Flux: text_encoder_2_lr; SD3's third text encoder: text_encoder_3_lr)
    t5_lora: bool = False
    # precision.attention = "eager": the plain (non-SDPA) attention of the denoiser. A diffusers attention
    # processor class (diffusers.models.attention_processor) for denoisers built on its `Attention`, or a
    # diffusers attention-dispatch backend for denoisers whose processors dispatch (Flux's FluxAttnProcessor:
    # "_native_math", torch's reference attention); neither (SD3's joint processors call SDPA directly, and
    # AttnProcessor cannot run a joint attention): "eager" is refused (DBS547).
    eager_attention_processor: str = "AttnProcessor"
    eager_attention_backend: str = ""

    # The public models' denoiser layouts (dbspec/denoiser_layout.py): a hub model's own (`hub_ids`), else
    # every one of them; adapter targets and block patterns naming no layer of them match nothing (DBS607).
    # The first is the model `lora_params_per_target` counts (its block-indexed targets are counted on it).
    denoiser_layouts: tuple[PublicLayout, ...] = ()

    def layouts_of(self, base: str) -> tuple[PublicLayout, ...]:
        """The layouts the spec's base can have: its own for a public hub model, else all the family's."""
        own = tuple(layout for layout in self.denoiser_layouts if base in layout.hub_ids)
        return own or self.denoiser_layouts

    def params_of(self, base: str) -> dict[str, int]:
        """The parameter counts of hub model `base` (the family's public counts unless it has its own)."""
        return {**self.public_params, **self.hub_params.get(base, {})}

    # Aesthetic-score micro-conditioning (the SDXL refiner): its time ids are (original size, crop, aesthetic
    # score) instead of (original size, crop, target size); the pipeline takes `requires_aesthetics_score`.
    aesthetic_score: bool = False
    # Validation refines dataset images (img2img) instead of sampling from prompts alone (the refiner).
    refines_images: bool = False
    # Pipeline components the family lacks, passed as None (the refiner has no first text encoder).
    absent_components: tuple[str, ...] = ()
    # Share of the denoiser's parameters outside Linear layers (convolutions, norms, biases): what
    # Linear-only quantisation backends (torchao, bitsandbytes) leave in float; counted on the real configs
    # (docs/memory.md).
    # SD3's and Flux's transformers are Linear but for a small patch embedding.
    non_linear_denoiser_share: float = 0.01
    # Transformer families: the activation estimate counts tokens, not activation_bytes_per_latent_pixel.
    token_activation: TokenActivation | None = None

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(t.component for t in self.text_encoders)

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        return tuple(t.tokenizer for t in self.text_encoders)

    @property
    def clip_text_encoders(self) -> tuple[TextEncoderSpec, ...]:
        """The CLIP (BPE) encoders: what `dbspec tokens` and the identifier rules read (not T5)."""
        return tuple(t for t in self.text_encoders if t.tokenizer_class == "CLIPTokenizer")

    @property
    def extra_conditioning(self) -> bool:
        return self.pooled_embeddings or self.time_ids > 0


_CLIP_L = TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "cond_stage_model.transformer.")
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Black Forest Labs' MM-DiT (Flux, Chroma): the double blocks fuse q, k, v per stream; the single blocks q, k,
# v and the MLP input (diffusers splits each into parts).
_BFL_FUSED = (
    FusedProjection("img_attn_qkv", "transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v"), 3072 * 19),
    FusedProjection(
        "txt_attn_qkv",
        "transformer_blocks",
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        3072 * 19,
    ),
    FusedProjection(
        "linear1", "single_transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), 3072 * 38
    ),
)
# the double blocks' attention and MLP Linears of both streams, by diffusers' names
_BFL_BLOCK_LINEARS = (
    *("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    *("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
    *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
)

FAMILIES: dict[str, FamilySpec] = {
    "sd1": FamilySpec(
        name="sd1",
        non_linear_denoiser_share=0.69,  # 68.6%: ResNet and 1x1 proj_in/proj_out convolutions
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
        conv_tucker_facts=(55_360, 50),
        denoiser_layouts=(PublicLayout("SD1.5", layouts.SD_UNET),),
    ),
    "sd2": FamilySpec(
        name="sd2",
        non_linear_denoiser_share=0.66,  # 65.2%: linear projections
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
            TextEncoderSpec(
                "text_encoder", "tokenizer", "CLIPTextModel", "cond_stage_model.model.", layers=23
            ),
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
        conv_tucker_facts=(55_360, 50),
        denoiser_layouts=(PublicLayout("SD2", layouts.SD_UNET),),  # SD1's block layout
    ),
    "sdxl": FamilySpec(
        name="sdxl",
        non_linear_denoiser_share=0.14,  # 13.0%
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
                "text_encoder",
                "tokenizer",
                "CLIPTextModel",
                "conditioner.embedders.0.transformer.",
                embedding_key="clip_l",
            ),
            TextEncoderSpec(
                "text_encoder_2",
                "tokenizer_2",
                "CLIPTextModelWithProjection",
                "conditioner.embedders.1.model.",
                layers=32,
                embedding_key="clip_g",
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
        conv_tucker_facts=(36_160, 38),
        preview_vae="madebyollin/taesdxl",
        watermarker=True,
        denoiser_layouts=(PublicLayout("SDXL base", layouts.SDXL_UNET),),
    ),
    # The SDXL refiner: an img2img UNet (384 base channels, context 1280) conditioned on OpenCLIP bigG only
    # (its text_encoder_2; no CLIP-L), with 5 time ids: original size, crop, aesthetic score. Same VAE as
    # SDXL base, so latent caches are shared; text-embedding caches are its own (another encoder set).
    "sdxl_refiner": FamilySpec(
        name="sdxl_refiner",
        title="SDXL refiner",
        runtime="sdxl_refiner",
        non_linear_denoiser_share=0.14,  # SDXL base's share, not counted on the refiner's own config
        pipeline_class="StableDiffusionXLImg2ImgPipeline",
        safety_checker=False,
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        noise_scheduler="DDPMScheduler",
        context_dim=1280,
        text_encoders=(
            TextEncoderSpec(
                "text_encoder_2",
                "tokenizer_2",
                "CLIPTextModelWithProjection",
                "conditioner.embedders.0.model.",
                layers=32,
                embedding_key="clip_g",
            ),
        ),
        latent_channels=4,
        vae_scaling_factor=0.13025,
        resolution=1024,
        prediction="epsilon",
        prediction_hint="",
        hub_models={"stabilityai/stable-diffusion-xl-refiner-1.0": "epsilon"},
        pooled_embeddings=True,
        time_ids=5,
        lora_targets=_UNET_TARGETS,
        text_lora_targets=_TEXT_TARGETS,
        # The refiner's UNet counted from its config on the meta device; OpenCLIP bigG and the VAE as SDXL's.
        public_params={"unet": 2_259_526_660, "text_encoder_2": 694_659_840, "vae": 83_653_863},
        lora_params_per_rank={"unet": 843_776, "text_encoder_2": 327_680},
        activation_bytes_per_latent_pixel=(600_000, 60_000),  # not measured: SDXL base's
        # kohya has no refiner training script; these are SDXL's words (dbspec writes no kohya refiner files).
        kohya=KohyaFacts(
            base_version="sdxl_refiner_v1-0", v2=False, v_suffix=False, original_unet_names=True
        ),
        conv_params_per_rank=652_800,
        conv_tucker_facts=(66_432, 50),
        preview_vae="madebyollin/taesdxl",
        watermarker=True,
        extra_exports=(),
        aesthetic_score=True,
        refines_images=True,
        absent_components=("text_encoder", "tokenizer"),
        denoiser_layouts=(PublicLayout("the SDXL refiner", layouts.SDXL_REFINER_UNET),),
    ),
    # Stable Diffusion 3.5 (medium, large): an MM-DiT over 16-channel latents, trained by flow matching;
    # conditioned on CLIP-L and CLIP-G hidden states (concatenated, padded to T5's width) joined with
    # T5-XXL's, and on the two CLIPs' pooled projections.
    "sd3": FamilySpec(
        mixed_fused_kinds=True,
        name="sd3",
        title="SD3",
        runtime="sd3",
        preview_vae="madebyollin/taesd3",
        pipeline_class="StableDiffusion3Pipeline",
        safety_checker=False,
        denoiser="transformer",
        denoiser_class="SD3Transformer2DModel",
        noise_scheduler="FlowMatchEulerDiscreteScheduler",
        context_dim=4096,  # joint_attention_dim: T5-XXL's width
        text_encoders=(
            TextEncoderSpec(
                "text_encoder",
                "tokenizer",
                "CLIPTextModelWithProjection",
                "text_encoders.clip_l.transformer.",
            ),
            TextEncoderSpec(
                "text_encoder_2",
                "tokenizer_2",
                "CLIPTextModelWithProjection",
                "text_encoders.clip_g.transformer.",
                layers=32,
            ),
            TextEncoderSpec(
                "text_encoder_3",
                "tokenizer_3",
                "T5EncoderModel",
                "text_encoders.t5xxl.transformer.",
                tokenizer_class="T5TokenizerFast",
                layers=24,
                max_length=256,  # StableDiffusion3Pipeline's max_sequence_length default
                trainable=False,
            ),
        ),
        latent_channels=16,
        vae_scaling_factor=1.5305,
        vae_shift_factor=0.0609,
        resolution=1024,
        prediction="flow_matching",
        prediction_hint="",
        hub_models={
            "stabilityai/stable-diffusion-3.5-large": "flow_matching",
            "stabilityai/stable-diffusion-3.5-large-turbo": "flow_matching",
            "stabilityai/stable-diffusion-3.5-medium": "flow_matching",
            "stabilityai/stable-diffusion-3-medium-diffusers": "flow_matching",
        },
        pooled_embeddings=True,
        time_ids=0,
        text_encoder_dropout=True,
        pos_embed_crop=True,
        clip_attention_mask="hidden",
        eager_attention_processor="",
        t5_lora=True,  # kohya lora_sd3's train_t5xxl: T5-XXL at text_encoder_lr's third value
        # diffusers' train_dreambooth_lora_sd3.py default: the joint attention's image and text projections.
        lora_targets=(
            "attn.add_k_proj",
            "attn.add_q_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "attn.to_k",
            "attn.to_out.0",
            "attn.to_q",
            "attn.to_v",
        ),
        text_lora_targets=_TEXT_TARGETS,
        # SD3.5 large (counted from its configs on the meta device; medium's transformer has 2.24e9);
        # CLIP-L and CLIP-G with projections, the T5-XXL encoder, the 16-channel VAE.
        public_params={
            "unet": 8_056_627_520,
            "text_encoder": 123_650_304,
            "text_encoder_2": 694_659_840,
            "text_encoder_3": 4_762_310_656,
            "vae": 83_819_683,
        },
        # text_encoder_3: T5-XXL's LoRA with train.t5, as Flux's text_encoder_2 (the same T5-XXL encoder)
        lora_params_per_rank={
            "unet": 1_473_792,
            "text_encoder": 73_728,
            "text_encoder_2": 327_680,
            "text_encoder_3": 1_818_624,
        },
        # SD3.5 large, width 2432 (MLP 9728), 38 joint blocks, the last one's context stream pre-only (no
        # output projection or MLP; its modulation 2 x 2432 wide, the others' 6 x 2432); no attn2
        lora_params_per_target={
            **dict.fromkeys(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"), 4864 * 38),
            **dict.fromkeys(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), 4864 * 38),
            "attn.to_add_out": 4864 * 37,
            **dict.fromkeys(("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"), 0),
            **dict.fromkeys(("ff.net.0.proj", "ff.net.2"), 12160 * 38),
            **dict.fromkeys(("ff_context.net.0.proj", "ff_context.net.2"), 12160 * 37),
            "norm1.linear": 17024 * 38,
            "norm1_context.linear": 17024 * 37 + 7296,
        },
        # SD3.5 medium / SD3 medium: 24 MMDiT blocks of width 1536 (SD3.5 medium: 13 dual-attention blocks,
        # counted from its transformer config on the meta device); the text encoders and VAE are large's.
        hub_params={
            "stabilityai/stable-diffusion-3.5-medium": {"unet": 2_243_171_520},
            "stabilityai/stable-diffusion-3-medium-diffusers": {"unet": 2_028_328_000},
        },
        activation_bytes_per_latent_pixel=(0, 0),  # unused: token_activation
        # Measured at real width on the CPU, per token (medium at 128-1024 px: 1.59 MB plain, 165-172 KB
        # checkpointed; large at 512 and 1024 px: 3.79 MB, 329-342 KB), rounded up (docs/memory.md).
        token_activation=TokenActivation(
            patch=2,
            clip_tokens=77,
            variants=((2_243_171_520, 1_650_000, 180_000), (8_056_627_520, 3_950_000, 360_000)),
        ),
        # kohya's sd3_train_network.py writes its model type ("5-large", "5-medium", "medium") as the base
        # version, read from the weights (runtime/sd3_kohya.py model_type); plain LoRA only in its layout.
        kohya=KohyaFacts(
            base_version="sd3",
            v2=False,
            v_suffix=False,
            original_unet_names=False,
            lycoris_layout=False,
            network="networks.lora_sd3",
            oft_network="",
        ),
        objective="flow",
        single_file_marker="model.diffusion_model.joint_blocks.",
        denoiser_file_keys=("joint_blocks.", "pos_embed.proj.weight"),
        # Stability's joint blocks fuse q, k, v of each stream's attention (SD3.5 medium's second image
        # attention too: x_block.attn2)
        fused_projections=(
            FusedProjection(
                "x_block_attn_qkv", "transformer_blocks", ("attn.to_q", "attn.to_k", "attn.to_v"), 2432 * 38
            ),
            FusedProjection(
                "context_block_attn_qkv",
                "transformer_blocks",
                ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                2432 * 38,
            ),
            FusedProjection(  # SD3.5 large (the counted model) has no attn2
                "x_block_attn2_qkv", "transformer_blocks", ("attn2.to_q", "attn2.to_k", "attn2.to_v"), 0
            ),
        ),
        # networks/lora_sd3.py: every Linear of each joint block's context_block and x_block (attn.qkv,
        # attn.proj, attn2 where SD3.5 medium has it, mlp.fc1, mlp.fc2, adaLN_modulation.1)
        kohya_lora_targets=(
            *("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
            *("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
            *("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
            *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
            *("norm1.linear", "norm1_context.linear"),
        ),
        kohya_conv_targets=("pos_embed.proj",),
        denoiser_layouts=(
            PublicLayout(
                "SD3.5 large",
                layouts.SD35_LARGE,
                ("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo"),
            ),
            PublicLayout("SD3.5 medium", layouts.SD35_MEDIUM, ("stabilityai/stable-diffusion-3.5-medium",)),
            PublicLayout(
                "SD3 medium", layouts.SD3_MEDIUM, ("stabilityai/stable-diffusion-3-medium-diffusers",)
            ),
        ),
        extra_exports=("kohya_lora",),  # kohya's networks/lora_sd3.py layout (runtime/sd3_kohya.py)
        long_prompts=False,
        lora_peft_keys=True,
    ),
    # Flux.1 dev: a guidance-distilled MM-DiT over 2x2-packed 16-channel latents, flow matching; conditioned
    # on T5-XXL's hidden states and CLIP-L's pooled output, with a guidance embedding.
    "flux": FamilySpec(
        mixed_fused_kinds=True,
        name="flux",
        clip_attention_mask="pooled",
        t5_mask_in_denoiser=True,
        t5_lora=True,
        eager_attention_processor="",
        eager_attention_backend="_native_math",
        title="Flux",
        runtime="flux",
        preview_vae="madebyollin/taef1",
        pipeline_class="FluxPipeline",
        safety_checker=False,
        denoiser="transformer",
        denoiser_class="FluxTransformer2DModel",
        noise_scheduler="FlowMatchEulerDiscreteScheduler",
        context_dim=4096,  # joint_attention_dim: T5-XXL's width
        text_encoders=(
            TextEncoderSpec(
                "text_encoder", "tokenizer", "CLIPTextModel", "text_encoders.clip_l.transformer."
            ),
            TextEncoderSpec(
                "text_encoder_2",
                "tokenizer_2",
                "T5EncoderModel",
                "text_encoders.t5xxl.transformer.",
                tokenizer_class="T5TokenizerFast",
                layers=24,
                max_length=512,  # FluxPipeline's max_sequence_length default
                trainable=False,
            ),
        ),
        latent_channels=16,
        vae_scaling_factor=0.3611,
        vae_shift_factor=0.1159,
        resolution=1024,
        prediction="flow_matching",
        prediction_hint="",
        hub_models={"black-forest-labs/FLUX.1-dev": "flow_matching"},
        pooled_embeddings=True,
        time_ids=0,
        # diffusers' train_dreambooth_lora_flux.py default: attention and feed-forward projections.
        lora_targets=(
            "attn.to_k",
            "attn.to_q",
            "attn.to_v",
            "attn.to_out.0",
            "attn.add_k_proj",
            "attn.add_q_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "ff.net.0.proj",
            "ff.net.2",
            "ff_context.net.0.proj",
            "ff_context.net.2",
        ),
        text_lora_targets=_TEXT_TARGETS,
        # FLUX.1 dev (counted from its configs on the meta device): transformer, CLIP-L, T5-XXL, the VAE.
        public_params={
            "unet": 11_901_408_320,
            "text_encoder": 123_060_480,
            "text_encoder_2": 4_762_310_656,
            "vae": 83_819_683,
        },
        # text_encoder_2: T5-XXL's LoRA with train.t5 (kohya's targets, T5_LORA_TARGETS: 24 layers x
        # (4 x (4096 + 4096) + 2 x (4096 + 10240) + (10240 + 4096)))
        lora_params_per_rank={"unet": 2_801_664, "text_encoder": 73_728, "text_encoder_2": 1_818_624},
        # FLUX.1 dev, width 3072 (MLP 12288), 19 double and 38 single blocks: rank x (in + out) per suffix;
        # proj_out also names the final layer (3072 -> 64)
        lora_params_per_target={
            **dict.fromkeys(("attn.to_q", "attn.to_k", "attn.to_v"), 6144 * 57),
            **dict.fromkeys(("attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj"), 6144 * 19),
            **dict.fromkeys(("attn.add_v_proj", "attn.to_add_out"), 6144 * 19),
            **dict.fromkeys(
                ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"), 15360 * 19
            ),
            **dict.fromkeys(("norm1.linear", "norm1_context.linear"), 21504 * 19),
            "proj_mlp": 15360 * 38,
            "proj_out": 18432 * 38 + 3136,
            "norm.linear": 12288 * 38,
        },
        activation_bytes_per_latent_pixel=(0, 0),  # unused: token_activation
        # Measured at real width on the CPU (1 double + 1 single block, extrapolated to 19 + 38): 6.81-6.85 MB
        # plain, 537 KB (512 px) and 601 KB (1024 px) checkpointed per token, rounded up (docs/memory.md).
        token_activation=TokenActivation(
            patch=2, clip_tokens=0, variants=((11_901_408_320, 7_100_000, 605_000),)
        ),
        kohya=KohyaFacts(
            base_version="flux1",
            v2=False,
            v_suffix=False,
            original_unet_names=False,
            lycoris_layout=False,
            ggpo=True,
            network="networks.lora_flux",
            oft_network="networks.oft_flux",  # networks/oft_flux.py (runtime/flux_oft.py)
            weights_scan=("lora_unet_double_blocks_", "lora_unet_single_blocks_"),
        ),
        objective="flow",
        single_file_marker="model.diffusion_model.double_blocks.",
        denoiser_file_keys=("double_blocks.", "single_transformer_blocks."),
        extra_exports=("kohya_lora",),  # kohya's networks/lora_flux.py layout (runtime/flux_kohya.py)
        long_prompts=False,
        lora_peft_keys=True,
        train_guidance=3.5,
        fused_projections=_BFL_FUSED,
        # networks/lora_flux.py: every Linear of the double blocks (qkv, proj, mlp.0, mlp.2, mod.lin of both
        # streams) and the single blocks (linear1, linear2, modulation.lin); the suffix proj_out also names
        # the final layer's Linear (final_layer.linear), which kohya does not adapt.
        kohya_lora_targets=(
            *_BFL_BLOCK_LINEARS,
            *("norm1.linear", "norm1_context.linear", "proj_mlp", "proj_out", "norm.linear"),
        ),
        kohya_lora_excluded=("^proj_out$",),
        denoiser_layouts=(PublicLayout("FLUX.1 dev", layouts.FLUX_DEV),),
    ),
    # Chroma (lodestones' Chroma1-HD / Chroma1-Base): Flux.1 schnell's MM-DiT without CLIP-L and without the
    # guidance and time embeddings; one approximator MLP computes every block's modulation from the timestep
    # (and a guidance of 0). Conditioned on T5-XXL alone, encoded with its padding mask, and the transformer
    # attends to the prompt's tokens plus one padding token (diffusers' ChromaPipeline; kohya
    # flux_train_network.py --model_type chroma, which requires --apply_t5_attn_mask).
    "chroma": FamilySpec(
        name="chroma",
        t5_mask_in_denoiser=True,
        t5_mask_always=True,
        t5_mask_padding=1,
        t5_lora=True,
        eager_attention_processor="",
        eager_attention_backend="_native_math",
        title="Chroma",
        runtime="chroma",
        preview_vae="madebyollin/taef1",
        pipeline_class="ChromaPipeline",
        safety_checker=False,
        denoiser="transformer",
        denoiser_class="ChromaTransformer2DModel",
        noise_scheduler="FlowMatchEulerDiscreteScheduler",
        context_dim=4096,  # joint_attention_dim: T5-XXL's width
        text_encoders=(
            TextEncoderSpec(
                "text_encoder",
                "tokenizer",
                "T5EncoderModel",
                "text_encoders.t5xxl.transformer.",
                tokenizer_class="T5TokenizerFast",
                layers=24,
                max_length=512,  # ChromaPipeline's max_sequence_length default (kohya: 512, not schnell)
                trainable=False,
            ),
        ),
        latent_channels=16,  # Flux's autoencoder
        vae_scaling_factor=0.3611,
        vae_shift_factor=0.1159,
        resolution=1024,
        prediction="flow_matching",
        prediction_hint="",
        hub_models={"lodestones/Chroma1-HD": "flow_matching", "lodestones/Chroma1-Base": "flow_matching"},
        pooled_embeddings=False,
        time_ids=0,
        # Flux's default (diffusers' train_dreambooth_lora_flux.py): Chroma's blocks have the same Linears.
        lora_targets=(
            "attn.to_k",
            "attn.to_q",
            "attn.to_v",
            "attn.to_out.0",
            "attn.add_k_proj",
            "attn.add_q_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "ff.net.0.proj",
            "ff.net.2",
            "ff_context.net.0.proj",
            "ff_context.net.2",
        ),
        text_lora_targets=_TEXT_TARGETS,
        # Chroma1-HD (ChromaTransformer2DModel's default config counted on the meta device), T5-XXL, the VAE.
        public_params={"unet": 8_899_983_424, "text_encoder": 4_762_310_656, "vae": 83_819_683},
        # text_encoder: T5-XXL's LoRA with train.t5 (kohya's T5 targets, as Flux's text_encoder_2)
        lora_params_per_rank={"unet": 2_801_664, "text_encoder": 1_818_624},
        # Flux's blocks (width 3072, 19 double and 38 single) without the modulation Linears; proj_out also
        # names the final layer (3072 -> 64)
        lora_params_per_target={
            **dict.fromkeys(("attn.to_q", "attn.to_k", "attn.to_v"), 6144 * 57),
            **dict.fromkeys(("attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj"), 6144 * 19),
            **dict.fromkeys(("attn.add_v_proj", "attn.to_add_out"), 6144 * 19),
            **dict.fromkeys(
                ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"), 15360 * 19
            ),
            "proj_mlp": 15360 * 38,
            "proj_out": 18432 * 38 + 3136,
        },
        activation_bytes_per_latent_pixel=(0, 0),  # unused: token_activation
        # Flux's blocks at Flux's width (not measured separately): Flux.1 dev's per-token figures
        token_activation=TokenActivation(
            patch=2, clip_tokens=0, variants=((8_899_983_424, 7_100_000, 605_000),)
        ),
        # flux_train_network.py --model_type chroma: networks.lora_flux on library/chroma_models.py, whose
        # blocks are named as Flux's; ss_base_model_version "chroma" (flux_utils.MODEL_VERSION_CHROMA)
        kohya=KohyaFacts(
            base_version="chroma",
            v2=False,
            v_suffix=False,
            original_unet_names=False,
            lycoris_layout=False,
            ggpo=True,
            network="networks.lora_flux",
            # networks/oft_flux.py on Chroma: its modules by class, as on Flux (no modulation Linear)
            oft_network="networks.oft_flux",
            weights_scan=("lora_unet_double_blocks_", "lora_unet_single_blocks_"),
        ),
        objective="flow",
        single_file_marker="model.diffusion_model.distilled_guidance_layer.",
        # the approximator: named so in the original (lodestones) and diffusers layouts alike
        denoiser_file_keys=("distilled_guidance_layer.",),
        extra_exports=("kohya_lora",),  # kohya's networks/lora_flux.py layout (runtime/flux_kohya.py)
        long_prompts=False,
        lora_peft_keys=True,
        train_guidance=0.0,  # no guidance embedding: diffusers' approximator input is guidance 0
        approximator_guidance=True,  # kohya feeds --guidance_scale to it (its Chroma docs: 0.0)
        # Chroma's original layout is Black Forest Labs', as Flux's
        fused_projections=_BFL_FUSED,
        mixed_fused_kinds=True,  # Flux's fused Linears: one LyCORIS module of one kind each
        # networks/lora_flux.py on Chroma: every Linear of the double blocks (qkv, proj, mlp.0, mlp.2 of both
        # streams; Chroma's blocks have no mod.lin) and the single blocks (linear1, linear2); the suffix
        # proj_out also names the final layer's Linear, which kohya does not adapt.
        kohya_lora_targets=(
            *_BFL_BLOCK_LINEARS,
            *("proj_mlp", "proj_out"),
        ),
        kohya_lora_excluded=("^proj_out$",),
        denoiser_layouts=(PublicLayout("Chroma1-HD", layouts.CHROMA),),
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


def reaches_patch_conv(family: str, targets) -> bool:
    """Whether denoiser `targets` (suffixes) reach the family's patch convolution (kohya_conv_targets: SD3's
    2x2 stride-2 pos_embed.proj; family "auto" or unknown: any family's), where LyCORIS's TLoraModule takes
    its bypass path in either mode and so applies its `dropout` (runtime/lycoris_tlora.py)."""
    spec = FAMILIES.get(family)
    convs = spec.kohya_conv_targets if spec else [c for f in FAMILIES.values() for c in f.kohya_conv_targets]
    return any(t == c or c.endswith("." + t) for t in targets for c in convs)


# Every text-encoder component name any family uses, in order (for tables keyed by component).
ALL_TEXT_ENCODERS: tuple[str, ...] = tuple(
    dict.fromkeys(n for f in FAMILIES.values() for n in f.text_encoder_names)
)


def trainable_text_encoders(name: str) -> tuple[str, ...]:
    """The text encoders of family `name` that train.text_encoder trains."""
    return tuple(e.component for e in family_spec(name).text_encoders if e.trainable)


# kohya's LoRA on T5-XXL (networks/lora_flux.py, lora_sd3.py with train_t5xxl=True): every Linear inside the
# T5Attention and T5DenseGatedActDense modules, by their transformers names (train.t5).
T5_LORA_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def t5_text_encoders(name: str) -> tuple[str, ...]:
    """The T5 text encoders of family `name` (Flux's text_encoder_2, SD3's text_encoder_3): train.t5 trains
    them with LoRA."""
    return tuple(e.component for e in family_spec(name).text_encoders if e.tokenizer_class.startswith("T5"))


def family_list(names: tuple[str, ...] = FAMILY_NAMES, *, quote: bool = True) -> str:
    """ "sd1", "sd2" or "sdxl": the families as a message lists them."""
    shown = [f'"{n}"' if quote else n for n in names]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def hub_model(base: str) -> tuple[str, Prediction] | None:
    """(family, prediction) of a well-known hub id, None for others."""
    return next(((f.name, f.hub_models[base]) for f in FAMILIES.values() if base in f.hub_models), None)


def flow_text_prefixes(family: str) -> tuple[str, ...]:
    """kohya's prefixes of the family's text encoders, in its order: lora_flux / lora_sd3 number CLIP-L 1,
    CLIP-G 2 and T5-XXL 3 (Flux: lora_te1, lora_te3)."""
    encoders = family_spec(family).text_encoders
    return tuple(
        "lora_te3_" if e.tokenizer_class.startswith("T5") else f"lora_te{i + 1}_"
        for i, e in enumerate(encoders)
    )


def lycoris_text_prefixes(family: str) -> tuple[str, ...]:
    """LyCORIS's prefixes of the family's text encoders, in its order (lycoris.kohya numbers the list the
    kohya script hands it from 1): flux_train_network.py hands [CLIP-L, T5-XXL] (Chroma's CLIP-L a dummy
    dbspec does not load), so T5-XXL is `lora_te2_` on Flux and Chroma, where kohya's lora_flux says
    `lora_te3_`; sd3_train_network.py hands [CLIP-L, CLIP-G, T5-XXL] (`lora_te3_` in both)."""
    encoders = family_spec(family).text_encoders
    clips = max(1, sum(not e.tokenizer_class.startswith("T5") for e in encoders))
    return tuple(
        f"lora_te{clips + 1}_" if e.tokenizer_class.startswith("T5") else f"lora_te{i + 1}_"
        for i, e in enumerate(encoders)
    )
