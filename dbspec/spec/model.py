"""The spec language (spec_version 2; dbspec/spec/migrate.py reads version 1): one attrs class per TOML table,
one `option()` per key.

This file is the single source of truth for every option: its type, default and doc feed the strict
loader, the JSON Schema (`dbspec schema`), `docs/spec-reference.md` and `dbspec explain`. TOML keys equal
attribute names. Classes hold what the user wrote (after defaults), never derived values.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import attrs

from dbspec.families import Family as ModelFamily
from dbspec.spec.fields import option

SPEC_VERSION = 2  # 2: the trained network is the denoiser (train.unet -> train.denoiser, ...)

Family = Literal["auto", ModelFamily]  # the registry's families (dbspec/families.py), or detect
Prediction = Literal["auto", "epsilon", "v_prediction", "flow_matching"]
Quantization = Literal["none", "int8", "int4", "fp8", "nf4"]
QuantizeBackend = Literal["quanto", "torchao", "bitsandbytes", "cast"]
frozen = attrs.frozen(kw_only=True)


@frozen
class MergeAdapter:
    """A LoRA file merged into the base weights before the run's own adapter is made (kohya
    `--base_weights` with `--base_weights_multiplier`)."""

    path: str = option(
        doc="A LoRA `.safetensors` file in kohya's layout (`lora_unet_*` / `lora_te*_*` modules), relative "
        "to the spec file.",
        example="loras/style.safetensors",
    )
    multiplier: float = option(
        1.0,
        doc="The merged update's scale: weight + multiplier x alpha / rank x up @ down.",
        example=0.7,
    )


@frozen
class Model:
    base: str = option(
        doc="Base model: a hub id, a diffusers folder, a single-file .safetensors (or .ckpt) checkpoint, "
        "or a built-in tiny model (builtin:tiny-sd1, builtin:tiny-sd2, builtin:tiny-sdxl, "
        "builtin:tiny-sdxl-refiner, builtin:tiny-sd3, builtin:tiny-flux).",
        example="runwayml/stable-diffusion-v1-5",
    )
    family: Family = option(
        "auto", doc="Model family; auto detects it from the model's configs or tensor names."
    )
    prediction: Prediction = option(
        "auto",
        doc="What the denoiser predicts; auto reads the scheduler config. SD2 768 px "
        "models use v_prediction; flow_matching is the objective of flow-matching families (SD3), "
        "and theirs only.",
    )
    vae: str = option(
        "",
        doc="Replacement VAE (hub id, folder or file), e.g. an fp16-fixed SDXL VAE or Flux's "
        "`ae.safetensors` (kohya `--ae`, `--vae`); empty keeps the base model's. A file may be in the "
        "original (LDM) or diffusers layout, with or without `first_stage_model.`; its config is "
        "model.base's (or model.config's) vae.",
        example="madebyollin/sdxl-vae-fp16-fix",
    )
    denoiser_file: str = option(
        "",
        doc="A .safetensors file whose denoiser weights replace model.base's (kohya's Flux and SD3 "
        "`--pretrained_model_name_or_path`): a transformer or U-Net alone, or a full single-file checkpoint, "
        "in the original layout (Black Forest Labs' Flux, Stability's MMDiT, `model.diffusion_model.`) or "
        "diffusers'. Its config is model.base's (or, for a single-file base, model.config's); empty keeps "
        "model.base's weights.",
        example="models/flux1-dev.safetensors",
    )
    text_encoder_files: list[str] = option(
        factory=list,
        doc="One .safetensors file per text encoder, in the family's order (SD1, SD2: [CLIP]; SDXL: [CLIP-L, "
        "CLIP-G]; SD3: [CLIP-L, CLIP-G, T5-XXL]; Flux: [CLIP-L, T5-XXL]), each replacing that encoder's "
        'weights (kohya `--clip_l`, `--clip_g`, `--t5xxl`); "" keeps model.base\'s, and a shorter list keeps '
        "the rest. transformers key layout (with or without CLIP's `text_model.`) or OpenCLIP's original "
        "one, alone or under a checkpoint's prefix (an SD3 single file's "
        "`text_encoders.clip_l.transformer.`, an SDXL one's `conditioner.embedders.1.model.`); configs and "
        "tokenizers stay model.base's.",
        example=["models/clip_l.safetensors", "models/t5xxl_fp16.safetensors"],
    )
    merge_adapters: list[MergeAdapter] = option(
        factory=list,
        doc="LoRA files merged into the base model's weights, in order, before training "
        "([[model.merge_adapters]] tables, kohya `--base_weights` / `--base_weights_multiplier`): each "
        "layer the file names (kohya's LoRA targets: attention and ResNet blocks, the text encoders' "
        "attention and MLP) becomes weight + multiplier x alpha / rank x up @ down, computed in fp32 on "
        "the CPU and rounded to the mixed-precision dtype, as kohya's merge_to; other layers of the file "
        "are ignored, as kohya ignores them. Flux and SD3 files are in kohya's lora_flux / lora_sd3 layout "
        "(the original model's fused q/k/v layers): each diffusers part gets its rows of the fused update, "
        "as flux_train_network.py / sd3_train_network.py merge them (Flux: the double and single blocks' "
        "layers; T5-XXL only when the file has lora_te3 modules). The merged model is the run's base: "
        "validation, the "
        "base-model prior and the text cache (when a text encoder is merged) use it; exports hold only "
        "the trained adapter.",
    )
    revision: str = option("main", doc="Hub revision (branch, tag or commit) when base is a hub id.")
    config: str = option(
        "",
        doc="For a single-file base: a diffusers folder or hub id whose configs describe it (diffusers "
        "otherwise fetches the family's reference configs, which needs the network or the "
        "Hugging Face cache).",
        example="models/sd15-diffusers",
    )
    allow_pickle: bool = option(
        False,
        doc="Allow loading .ckpt (pickle) checkpoints, which can run arbitrary code. Prefer .safetensors.",
    )
    clip_skip: int = option(
        1,
        doc="Use the text encoder's n-th layer from the end (1 = last layer, 2 = penultimate).",
        minimum=1,
        maximum=12,
    )
    max_tokens: Literal[75, 150, 225] = option(
        75,
        doc="Prompt tokens the text encoders see. 75 is one CLIP window; 150 and 225 encode a prompt as 2 or "
        "3 windows of 75 tokens and join them (kohya's `max_token_length`), in training, text caches and "
        "validation samples.",
    )
    weighted_captions: bool = option(
        False,
        doc="Read A1111 attention syntax in captions as kohya's `--weighted_captions` does: `(word)` scales "
        "its tokens' text-encoder hidden states by 1.1, `[word]` by 1/1.1, `(word:1.5)` by 1.5 (nested "
        "factors multiply; `\\(` is a literal bracket), after caption processing; in training, text caches "
        "and the evaluation loss, not in validation prompts. SD 1.x, SD 2.x and SDXL.",
    )
    t5_max_length: int = option(
        256,
        doc="T5 tokens (SD3's third text encoder; StableDiffusion3Pipeline's max_sequence_length), in "
        "training, text caches and validation samples; inert for families without T5.",
        minimum=1,
        maximum=512,
        example=77,
    )
    t5_attention_mask: bool = option(
        False,
        doc="Mask T5's padding (SD3 and Flux; kohya's `--apply_t5_attn_mask`): T5 encodes the prompt with "
        "the tokenizer's attention mask, so the prompt's tokens do not attend to the padding, and Flux's "
        "transformer also masks the padded text tokens as attention keys in every joint and single block "
        "(no token attends to them); SD3's transformer takes no mask. In training, text caches (Flux's "
        "store the mask) and validation samples.",
    )
    clip_attention_mask: bool = option(
        False,
        doc="SD3: CLIP-L and CLIP-G encode the prompt with the tokenizer's attention mask (kohya "
        "sd3_train_network.py's `--apply_lg_attn_mask`). CLIP's attention is causal, so only the padded "
        "positions' hidden states change (the prompt's tokens and the pooled output do not). In training, "
        "text caches and validation samples.",
    )
    scaled_pos_embed: bool = option(
        False,
        doc="SD3: replace the denoiser's stored position-embedding table, for the whole run (training, the "
        "evaluation loss and validation samples), by kohya's scaled sin-cos tables (sd3_train_network.py "
        "`--enable_scaled_pos_embed`, which kohya meant for SD3.5 medium): one table per dataset resolution "
        "(latent side round(sqrt(w x h)) / 8, a grid 1.5 times its patched side, positions rescaled so the "
        "resolution's centre matches), each forward taking the table its patch area picks and a new one "
        "when the latent is taller or wider than that table. With loss.pos_embed_random_crop_rate the "
        "random window moves within the scaled table. The saved weights and `dbspec sample` keep the stored "
        "table. Not with precision.compile.",
    )
    aesthetic_score: float = option(
        6.0,
        doc="SDXL refiner: the aesthetic score its micro-conditioning trains with (every image), and the one "
        "validation refines towards (diffusers' default 6.0; SimpleTuner's data_aesthetic_score); inert "
        "for other families.",
        minimum=0,
        maximum=10,
        example=7.0,
    )
    negative_aesthetic_score: float = option(
        2.5,
        doc="SDXL refiner: the aesthetic score of the negative (unconditional) branch when validation "
        "refines images with guidance (diffusers' default 2.5); inert for other families.",
        minimum=0,
        maximum=10,
    )


@frozen
class NoAdapter:
    kind: Literal["none"] = option("none", doc="Adapter kind: none trains the base weights (full fine-tune).")


# --- adapters: LoRA, LoHa, LoKr (peft), each optionally on 3x3 convolutions (LoCon) ----------------------
# The options every low-rank kind shares are made by these functions, so each variant declares its own copy.
KOHYA_CONV_TARGETS = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]


def _rank(default: int, what: str, maximum: int = 1024, note: str = ""):
    doc = f"{what} rank (dimension of the low-rank factors).{note}"
    return option(default, doc=doc, minimum=1, maximum=maximum)


def _alpha():
    return option(
        attrs.Factory(lambda self: float(self.rank), takes_self=True),
        doc="Alpha; the update is scaled by alpha / rank.",
        derived="same as `rank` (scale 1.0)",
        exclusive_minimum=0,
        example=8.0,
    )


def _signed_lycoris_alpha():
    """A lora / loha / lokr adapter's alpha: any sign but 0 (LyCORIS's LoConModule, LohaModule and LokrModule,
    and kohya's LoRAModule, scale by alpha / rank with the sign kept)."""
    return option(
        attrs.Factory(lambda self: float(self.rank), takes_self=True),
        doc="Alpha; the update is scaled by alpha / rank. May be negative: LyCORIS's LoConModule, LohaModule "
        "and LokrModule (and kohya's LoRAModule) keep the sign (kohya `network_alpha` below 0), so the "
        "update trains with its sign flipped and the export saves the negative alpha; with `max_norm` in "
        "the `\"lycoris\"` form a negative scale makes LoConModule's norm (its unscaled update's times alpha "
        "/ rank) negative, clamped up to half the limit: those LoRA layers are never scaled, as in LyCORIS "
        "(LoHa's and LoKr's norms, of their scaled update, are not negative). Not 0 (DBS260).",
        derived="same as `rank` (scale 1.0)",
        example=8.0,
    )


def _signed_conv_alpha():
    """A lora / loha / lokr / dylora adapter's conv_alpha: any sign but 0, as its `alpha`."""
    return option(
        attrs.Factory(lambda self: float(self.conv_rank), takes_self=True),
        doc="Alpha of the convolution adapters; their update is scaled by conv_alpha / conv_rank (kohya "
        "`conv_alpha`); may be negative, as `alpha`.",
        derived="same as `conv_rank` (scale 1.0)",
        example=1.0,
    )


def _signed_dylora_alpha():
    """A dylora adapter's alpha: any sign but 0 (LyCORIS's DyLoraModule and kohya's DyLoRAModule keep it)."""
    return option(
        attrs.Factory(lambda self: float(self.rank), takes_self=True),
        doc="Alpha; the update is scaled by alpha / rank (in training as `dylora_form` says). May be "
        "negative: LyCORIS's DyLoraModule (alpha / (b + 1) with block b drawn) and kohya's DyLoRAModule "
        "(alpha / rank) keep the sign (kohya `network_alpha` below 0), so the update trains with its sign "
        "flipped and the export saves the negative alpha (DyLoRA layers have no max norm). Not 0 (DBS260).",
        derived="same as `rank` (scale 1.0)",
        example=8.0,
    )


def _denoiser_targets():
    return option(
        factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        doc="Denoiser module names (suffixes) that get adapters at `rank`; unset, the family's: the UNet's "
        "attention projections, and for SD3 also the joint attention's context projections (add_q_proj...). "
        "A name adapts each module whose path is it or ends in `.` and it (peft's rule), so a longer path "
        "names one block's: `transformer_blocks.12.attn.to_q`. A name no layer of the family's public model "
        "has warns (DBS607).",
    )


def _text_encoder_targets():
    return option(
        factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        doc="Text-encoder module names (suffixes) that get adapters when the text encoder trains.",
    )


def _text_encoder_2_targets():
    return option(
        attrs.Factory(lambda self: list(self.text_encoder_targets), takes_self=True),
        doc="The second CLIP text encoder's module names (suffixes) that get adapters when it trains "
        "(component text_encoder_2: SDXL's and SD3's OpenCLIP bigG, the SDXL refiner's only encoder; not "
        "Flux's T5-XXL): a LyCORIS preset file that adapts other layers in SDXL's two encoders (kohya "
        "`lora_te2_*` modules). `text_encoder_targets` then names the first encoder's.",
        derived="same as `text_encoder_targets`",
    )


def _text_encoder_norms():
    return option(
        factory=list,
        doc="LyCORIS `train_norm` on the CLIP text encoders: module names (suffixes) of their LayerNorms "
        "whose weight and bias each train an added offset, starting at 0 (LyCORIS's NormModule `w_norm` / "
        "`b_norm`; with `init_weights` the file's, under LyCORIS's names, where it holds them), with the "
        "text encoder's adapters, or alone where `text_encoder_targets` is empty; written under LyCORIS's "
        "names in the kohya_lora export.",
        example=["layer_norm1", "layer_norm2"],
    )


def _text_encoder_2_norms():
    return option(
        attrs.Factory(lambda self: list(self.text_encoder_norms), takes_self=True),
        doc="The second CLIP text encoder's LayerNorms (suffixes) whose weight and bias train LyCORIS "
        "`train_norm` offsets (component text_encoder_2: SDXL's and SD3's OpenCLIP bigG): a LyCORIS preset "
        "file that reaches other norms in the two encoders. `text_encoder_norms` then names the first "
        "encoder's.",
        derived="same as `text_encoder_norms`",
    )


def _denoiser_norms():
    return option(
        factory=list,
        doc="LyCORIS `train_norm` on the SD 1.x / 2.x / SDXL U-Net: module names (suffixes) of its GroupNorms"
        " and LayerNorms whose weight and bias each train an added offset, starting at 0 (LyCORIS's "
        "NormModule `w_norm` / `b_norm`; with `init_weights` the file's, under LyCORIS's names, where it "
        "holds them), with the U-Net's adapters and at their learning rate, or alone "
        "where `denoiser_targets` is empty; written under LyCORIS's names (`lora_unet_...`) in the "
        "kohya_lora export.",
        example=["norm1", "norm2", "norm3", "norm"],
    )


def _norm_rank_dropout(own: bool = True):
    """The norm offsets' rank dropout; `own`: the kind has a `rank_dropout` of its own to default to."""
    doc = (
        "The norm offsets' rank dropout (`denoiser_norms`, `text_encoder_norms`, `text_encoder_2_norms`): "
        "LyCORIS's NormModule draws the network's `rank_dropout` in every training forward, one "
        "`torch.rand(width) < rate` per norm layer after its `module_dropout` draw, from torch's global "
        "generator in forward order with the adapter's own draws, and keeps (not drops) the offsets it "
        "marks, unscaled. It is the norm offsets' alone: the adapter's layers never read it (kohya "
        "`lycoris.kohya` with `train_norm` beside an algo whose modules ignore the network's "
        "`rank_dropout`: BOFT, DyLoRA, T-LoRA, GLoRA outside `bypass_mode`). Without norm offsets it changes "
        "nothing."
    )
    if not own:
        return option(0.0, doc=doc, minimum=0, maximum=1)
    return option(
        attrs.Factory(lambda self: self.rank_dropout, takes_self=True),
        doc=doc,
        derived="same as `rank_dropout` (LyCORIS hands its modules and NormModules one rate)",
        minimum=0,
        maximum=1,
    )


def _conv_rank(maximum: int = 1024):
    return option(
        0,
        doc="Rank of the adapters on the denoiser's (UNet's) 3x3 convolutions named by `conv_targets` "
        "(kohya `conv_dim`, LyCORIS LoCon); 0 adapts no convolution.",
        minimum=0,
        maximum=maximum,
        example=8,
    )


def _conv_alpha():
    return option(
        attrs.Factory(lambda self: float(self.conv_rank), takes_self=True),
        doc="Alpha of the convolution adapters; their update is scaled by conv_alpha / conv_rank (kohya "
        "`conv_alpha`).",
        derived="same as `conv_rank` (scale 1.0)",
        minimum=0,
        example=1.0,
    )


def _conv_targets():
    return option(
        factory=lambda: list(KOHYA_CONV_TARGETS),
        doc="Denoiser (UNet) convolution names (suffixes) that get adapters at `conv_rank` when it is "
        "above 0; the default is kohya's LoCon set (the 3x3 convolutions of ResNet blocks, downsamplers and "
        "upsamplers).",
    )


def _tucker():
    return option(
        False,
        doc="LyCORIS `use_tucker` (LoHa/LoKr: peft's `use_effective_conv2d`): each k x k convolution's "
        "factors are a rank x rank x k x k core with an output and an input matrix (`hada_t1`/`hada_t2`, "
        "`lokr_t2`; LoRA: LoCon's 1x1 `lora_down`, k x k `lora_mid`, 1x1 `lora_up`, on its convolution "
        "adapters, `conv_rank` above 0) instead of one rank x (in x k x k) matrix; 1x1 convolutions and "
        "linears are unchanged. Beside blocks of another `kind`: every LoRA / LoHa / LoKr layer's, but where "
        "its block gives its own (LyCORIS's network `use_tucker`).",
    )


def _lycoris_dora(kind: str):
    return option(
        False,
        doc=f"DoRA on {kind} (LyCORIS `dora_wd`): the merged weight W + ΔW is renormalised to a learned "
        "magnitude, one number per output row (or per input column, `dora_axis`), initialised to the base "
        "weight's norms, as LyCORIS's weight decomposition; exported with LyCORIS's `dora_scale` keys.",
    )


def _dora_axis():
    return option(
        "output",
        doc="What DoRA's magnitude spans (LyCORIS `wd_on_output`): `output` keeps one per output row "
        "(`dora_scale` shaped (out, 1, ...), LyCORIS's default), `input` one per input column "
        "(shaped (1, in, ...), `wd_on_output = False`). Used with `dora = true`; LoRA with `input` (or with "
        "`tucker`) trains LyCORIS's weight decomposition instead of peft's DoRA.",
    )


def _loraplus_ratio(kohya: str):
    return option(
        0.0,
        doc="LoRA+: train the LoRA up matrices (peft `lora_B`, kohya `lora_up`; a DyLoRA adapter's up "
        'blocks too, but with `dylora_form = "lycoris"` only its LoCon blocks\' ups, as LyCORIS raises '
        "`lora_up` parameters alone) at the learning rate times "
        f'this ({kohya}, e.g. 16); 0 turns it off. Blocks of kind "dylora" beside another adapter kind '
        "keep their ups at the base rate (LyCORIS raises `lora_up` only, never DyLoraModule's `up_list`).",
        minimum=0,
        example=16.0,
    )


def _loraplus_zero():
    return option(
        "off",
        doc="What a LoRA+ ratio of 0 (`loraplus_ratio`, or the denoiser's / text encoders' own) means. off: "
        "no LoRA+, the up matrices train at the learning rate. held: kohya's LoRA+ group at rate 0 "
        "(`loraplus_lr_ratio = 0` in kohya's networks and LyCORIS's: the up group's rate is lr x 0, and "
        "prepare_optimizer_params skips a group at rate 0), so the up matrices stay out of the optimizer: "
        "they keep their initial values while their gradients are computed, never cleared and counted by "
        "the clip norm.",
        example="held",
    )


def _loraplus_denoiser_ratio():
    return option(
        attrs.Factory(lambda self: self.loraplus_ratio, takes_self=True),
        doc="LoRA+ ratio of the denoiser's adapters (kohya `loraplus_unet_lr_ratio`); 0 turns it off there.",
        derived="same as `loraplus_ratio`",
        minimum=0,
        example=16.0,
    )


def _loraplus_text_encoder_ratio():
    return option(
        attrs.Factory(lambda self: self.loraplus_ratio, takes_self=True),
        doc="LoRA+ ratio of the text encoders' adapters (kohya `loraplus_text_encoder_lr_ratio`); 0 turns it "
        "off there.",
        derived="same as `loraplus_ratio`",
        minimum=0,
        example=4.0,
    )


def _scalar():
    return option(
        False,
        doc="LyCORIS `use_scalar`: each adapted layer's update is multiplied by a trained scalar that starts "
        "at 0, and the factor LyCORIS otherwise starts at zero starts random instead (LoRA `lora_up`, LoHa "
        "`hada_w2_a`, LoKr `lokr_w2` / `lokr_w2_b`), so the run still starts at the base model. The exports "
        "fold the scalar into LyCORIS's factor (`lora_up`, `hada_w1_a`, `lokr_w1` / `lokr_w1_a`), as "
        "LyCORIS saves it. Beside blocks of another `kind`: every LoRA / LoHa / LoKr layer's, but where its "
        "block gives its own (LyCORIS's network `use_scalar`).",
    )


def _rank_dropout():
    return option(
        0.0,
        doc="Drop rows of the weight update while training (LyCORIS `rank_dropout`).",
        minimum=0,
        maximum=1,
    )


def _rank_dropout_scale():
    return option(
        False,
        doc="With `rank_dropout`: divide the kept rows by the share kept (LyCORIS `rank_dropout_scale`). "
        "Off (LyCORIS's default, and what kohya's `lycoris.kohya` network trains: it never passes the "
        "flag on) keeps them as they are.",
    )


def _module_dropout():
    return option(
        0.0,
        doc="Skip a layer's whole update with this probability while training (LyCORIS `module_dropout`).",
        minimum=0,
        maximum=1,
    )


@frozen
class OptimizerBlock:
    """The learning rate of the denoiser parameters one pattern names in a full fine-tune (kohya sdxl_train.py
    `--block_lr`)."""

    pattern: str = option(
        doc="Python regular expression searched in each denoiser parameter's path (diffusers names, e.g. "
        "`down_blocks.1.attentions.0.proj_in.weight`); the first block whose pattern matches a parameter "
        "sets its learning rate.",
        example="^down_blocks\\.1\\.",
    )
    lr: float = option(
        doc="The learning rate of the matched parameters; 0 = they never change (kohya leaves them out of "
        "the optimizer: their gradients are still computed, add up over the steps uncleared and count in the "
        "max_grad_norm clip).",
        minimum=0,
        example=1e-5,
    )


def _signed_block_alpha():
    return option(
        doc="Alpha of the matched linear layers (scale alpha / rank); below 0 for GLoRA, T-LoRA, LoRA/LoCon, "
        "LoHa, LoKr or DyLoRA layers (LyCORIS's GLoRAModule, TLoraModule, LoConModule, LohaModule, "
        "LokrModule and DyLoraModule keep the sign, so their update trains with its sign flipped and is "
        "saved with that alpha; a LyCORIS preset file's entry's own negative `alpha`; DBS581 for other "
        "kinds)."
    )


def _signed_block_conv_alpha():
    return option(
        1.0,
        doc="Alpha of the matched 3x3 convolutions; below 0 only for the layers whose `alpha` may be, as "
        "`alpha`.",
    )


def _block_factor():
    return option(
        0,
        doc="LoKr: the matched layers' Kronecker split factor in place of the adapter's `factor` (a LyCORIS "
        "preset file's `module_algo_map` / `name_algo_map` entry's `factor`); -1 splits near the square "
        "root; 0 = the adapter's `factor`.",
        minimum=-1,
        maximum=65536,
        example=8,
    )


BlockSwitch = Literal["adapter", "on", "off"]
# the layers a block's own rank_dropout_scale rescales (the kept rank-dropout rows divided by their share)
_RESCALED_KINDS = "LoHa / LoKr with `rank_dropout`, LoRA with a LyCORIS `rank_dropout_form`"

# The rank / conv_rank of [[adapter.blocks]] / [[adapter.text_encoder_blocks]] (LyCORIS preset files' dims):
# a block of any kind but LoKr trains a pair (or more) at the rank itself, up to BLOCK_RANK_MAX (spec/check.py
# block_rank_bound); a LoKr block's factors stop at the layer's width (each full from half its larger part),
# where the rank only sets LokrModule's rs_lora scale of a full layer, sqrt(rank): any TOML integer, as a
# preset file's full-matrix `dim = 10000000000000`
BLOCK_RANK_MAX = 100_000
LOKR_BLOCK_RANK_MAX = 2**63 - 1
_LOKR_RANK = (
    "; a LoKr block's (its `kind`, or the adapter's) up to 2^63 - 1: its factors stop at the layer's width, "
    "the rank then only sets a full layer's `rank_stabilized` scale, sqrt(rank) (LyCORIS's full-matrix "
    "`dim = 10000000000000` with rs_lora)"
)
BlockKind = Literal[
    "adapter", "lora", "loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"
]


def _block_scalar():
    return option(
        "adapter",
        doc="LoRA/LoCon, LoHa, LoKr: whether the matched layers' updates are multiplied by LyCORIS's trained "
        "scalar (`scalar` of the adapter, in place of it; a LyCORIS preset file's `module_algo_map` / "
        "`name_algo_map` entry's `use_scalar`): on, off, or `adapter` (the adapter's). On a glora "
        "adapter's own blocks and blocks of kind glora: their GLoRA layers' (each layer its block's).",
        example="on",
    )


def _block_data_init():
    return option(
        True,
        doc="Whether the matched T-LoRA layers (a T-LoRA adapter's, or a block of kind `tlora` beside a "
        "lora, loha, lokr, full, ia3, glora or dylora adapter's layers) start from their weight's SVD "
        "(LyCORIS's `use_data_init`, a preset file's map entry's own). false: from "
        "the SVD of a random matrix, as TLoraModule draws it from torch's generator while the adapter is "
        "built (its two factors' "
        "own init, then torch.normal(0, 1 / rank) of the weight's out x in x kernel size), seeded with "
        "`[schedule] seed` (the denoiser's; text encoder i's: seed + 1 + i; beside other kinds, the T-LoRA "
        "layers' own pass: that seed plus the kind's place among the adapter's kinds), `sig_type` picking "
        "its triplets; the frozen start is the same. Saved with the run's weights; LyCORIS's file holds no "
        "frozen start and its loaders rebuild one (create_network_from_weights from the base model's SVD, "
        "create_network from a new draw): such a file loads there at another update than the one trained. "
        "With `fused_projections` each fused Linear draws one matrix over its stacked rows in kohya's order, "
        "as TLoraModule on kohya's layer, from the generator state its first-built part drew at; each layer "
        "draws as TLoraModule does, while the order of draws over the model is peft's over diffusers' "
        "modules, not kohya's (whose other modules draw from the same generator in between). Other kinds' "
        "blocks: true only (DBS622).",
        example=False,
    )


def _block_sig_type():
    return option(
        "principal",
        doc="Which of the weight's singular triplets the matched T-LoRA layers (a T-LoRA adapter's, or a "
        "block of kind `tlora` beside a lora, loha, lokr, full, ia3, glora or dylora adapter's layers) "
        "start from "
        "(LyCORIS's `sig_type`, a preset file's map entry's own): `principal` the first `rank` (the largest "
        "singular values), `last` the last `rank`, `middle` the `rank` from (min(out, in) - rank) // 2 on, "
        "sliced as TLoraModule slices them; the frozen start is the same triplets. LyCORIS's own file loader "
        "rebuilds the frozen start as `principal`: a file trained otherwise loads there at another update "
        "(kohya's network from the same preset file loads it as trained). Other kinds' blocks: principal "
        "only (DBS622).",
        example="last",
    )


def _block_on_input():
    return option(
        False,
        doc="Whether the matched IA^3 layers (a block of kind `ia3` beside a lora, loha, lokr, dylora, "
        "glora, full or tlora adapter's layers; an ia3 adapter's own block) scale their input channels "
        "instead of their output channels (LyCORIS's `train_on_input`, a preset file's map entry's own): "
        "each layer computes "
        "W ((1 + s) x) + b with one s per input channel from 0, in either forward (bypass_mode alike), "
        "exported as IA3Module's `weight` of the input's width and `on_input` 1. With `fused_projections` "
        "(Flux, SD3, Chroma) the parts of a fused Linear share one scale over the input they all read "
        "(kohya's one IA3Module on the fused layer; an ia3 adapter's own blocks there need "
        "`fused_projections`). Other blocks: false only (DBS618); an ia3 adapter's own layers also take "
        "`input_targets`.",
        example=True,
    )


def _block_oft_rescaled():
    return option(
        "adapter",
        doc="Blocks of kind `diag-oft` / `boft` (LyCORIS's Diag-OFT / BOFT beside a lora, loha, lokr, "
        "dylora, glora, full or IA^3 adapter's layers): whether the matched layers also train a scale per "
        "output row, from 1 (LyCORIS `rescaled`: a preset file's `module_algo_map` / `name_algo_map` entry's "
        "own, a "
        "`--dim_from_weights` file's `rescale`; saved as `rescale`): on, off, or `adapter` (off: the "
        "adapter rescales nothing). Other kinds' blocks: `adapter` only (DBS591).",
        example="on",
    )


def _block_dora():
    return option(
        "adapter",
        doc="LoRA/LoCon, LoHa, LoKr: whether the matched layers train LyCORIS's weight decomposition (`dora` "
        'of the adapter, in place of it, `dora_form = "lycoris"` on LoRA, the adapter\'s `dora_axis`; a '
        "LyCORIS preset file's `module_algo_map` / `name_algo_map` entry's `weight_decompose`): on, off, or "
        "`adapter` (the adapter's). On a GLoRA or DyLoRA adapter (no `dora` of its own: off) the blocks of "
        "kind `lora`, `loha` or `lokr` (a LyCORIS network's `dora_wd` reaches their modules, never GLoRA's "
        "or DyLoRA's).",
        example="on",
    )


def _block_dora_axis():
    return option(
        "adapter",
        doc="LoRA/LoCon, LoHa, LoKr: what the matched layers' LyCORIS weight decomposition keeps a magnitude "
        "of, in place of the adapter's `dora_axis` (a LyCORIS preset file's `module_algo_map` / "
        "`name_algo_map` entry's `wd_on_out`): `output` (one per output row), `input` (one per input "
        "column), or `adapter` (the adapter's). Acts on layers that decompose (the adapter's `dora` or the "
        "block's).",
        example="input",
    )


def _block_rank_stabilized():
    return option(
        "adapter",
        doc="LoKr: the matched layers' `rank_stabilized` in place of the adapter's (a LyCORIS preset file's "
        "`module_algo_map` / `name_algo_map` entry's `rs_lora`): a layer whose two Kronecker factors are "
        "full trains at sqrt(rank) instead of 1 (the low-rank layers' rs_lora is in the block's alpha); "
        "on, off, or `adapter` (the adapter's).",
        example="on",
    )


def _blocks_bypass_dropout(kind: str, module: str):
    return option(
        0.0,
        doc=f"LyCORIS's network `dropout`, which its {module} never reads: with `bypass`, torch's dropout "
        "(kept values scaled by 1 / (1 - p)) of the update of its blocks of kind lora, loha, lokr, glora and "
        "tlora while training, as those LyCORIS modules' bypass forward applies it after their "
        f"`module_dropout` draw; without `bypass` or such blocks it changes nothing (DBS632). {kind}.",
        minimum=0,
        maximum=1,
    )


def _block_switch(key: str, what: str, kinds: str = "LoKr"):
    return option(
        "adapter",
        doc=f"{kinds}: the matched layers' `{key}` in place of the adapter's (a LyCORIS preset file's "
        f"`module_algo_map` / `name_algo_map` entry's `{what}`): on, off, or `adapter` (the adapter's).",
        example="on",
    )


def _block_tucker():
    """A block's own Tucker form: AdapterBlock's and ScaleBlock's (a full / IA^3 adapter's blocks of another
    kind) one field."""
    return _block_switch(
        "tucker",
        "use_tucker",
        "LoKr, LoRA/LoCon and LoHa (k x k convolutions; also on a block of that `kind` beside other kinds, "
        "LoHa / LoKr ones on SD 1.x/2.x and SDXL, a full / IA^3 adapter's there and on SD3's patch "
        "convolution too, a DyLoRA / GLoRA adapter's alike)",
    )


def _block_unit():
    return option(
        0,
        doc="DyLoRA: ranks per block of the matched layers in place of the adapter's `unit` (a LyCORIS "
        "preset file's `module_algo_map` / `name_algo_map` entry's own `block_size`, else the network's); "
        "their rank must be a multiple of it. 0: the adapter's (a DyLoRA adapter's). A block of `kind = "
        '"dylora"` beside another adapter kind needs its own.',
        minimum=0,
        maximum=100_000,
        example=2,
    )


def _block_bypass():
    return option(
        "adapter",
        doc="LyCORIS `bypass_mode` of the matched layers in place of the adapter's `bypass` (a LyCORIS "
        "preset file's `module_algo_map` / `name_algo_map` entry's own `bypass_mode`): `on` gives a block "
        'of `kind = "diag-oft"` / `"boft"` (the output rotated, its bias included), `"ia3"` (the output '
        'scaled, its bias included) or `"dylora"` (one block per layer, added unscaled) LyCORIS\'s bypass '
        "forward, `off` its default forward, `adapter` the adapter's `bypass`. Blocks of those kinds on "
        "an adapter of any other kind, and a diag-oft, boft (LyCORIS's form), dylora (LyCORIS's form) or "
        "ia3 adapter's own blocks (entries of the network's own algorithm), only (DBS592; the other kinds "
        "compute the same update either way, a full adapter's own layers have no bypass forward); "
        "on Flux, SD3 and Chroma's fused Linears each part computes its rows of the one LyCORIS module's "
        "forward in the block's mode. The exports are the same tensors.",
        example="on",
    )


def _block_zero_scale():
    return option(
        False,
        doc="Scale the matched DyLoRA layers' update by 0: LyCORIS's DyLoraModule whose alpha buffer a "
        "`--network_weights` file set to 0 after the build (kohya lycoris.kohya algo=dylora). The layers are "
        "built and saved (alpha 0, their ups at zero) and draw the adapter's `module_dropout` in every "
        "training forward, but add nothing to the output and get zero gradients. Without `module_dropout` "
        "rank 0 (no layer) is the same run, cheaper. DyLoRA layers only (DBS617).",
    )


def _block_lr_scale(kinds: str):
    """`lr_scale` of the blocks of an adapter kind without kohya's block rates (DyloraBlock, GloraBlock,
    OftBlock): AdapterBlock's scale and hold, one field."""
    return option(
        1.0,
        doc=f"The matched {kinds} layers train at their learning rate (the denoiser's, a text encoder's) "
        "times this. 0 holds them at their "
        "initial values, as `[[adapter.blocks]]` lr_scale 0 holds a LoRA's: they are built, saved and "
        "exported and draw their dropouts, but stay out of the optimizer (no group), their gradients "
        "computed, never cleared and counted by the clip norm (kohya's lycoris.kohya and networks.dylora "
        "at `unet_lr` 0, whose U-Net modules its optimizer leaves out).",
        minimum=0,
    )


@frozen
class AdapterBlock:
    """Ranks, alphas and a learning-rate scale for the denoiser modules one pattern names (kohya networks.lora
    `block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas` and per-block learning rates)."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted denoiser module's path (diffusers names, "
        "e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); the first block whose pattern "
        "matches a module sets its rank, alpha and learning-rate scale; one that matches no layer of the "
        "family's public model warns (DBS607).",
        example="^down_blocks\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (the adapter's `kind`), or `lora`, `loha`, "
        "`lokr`, `full`, `ia3` in its place (a LyCORIS preset file's `module_algo_map` / `name_algo_map` "
        "entry's `algo`, e.g. LoKr on the attention and LoCon on the ResNets; `full`: LyCORIS's full algo, a "
        "trained copy of each matched layer's weight and bias; `ia3`: LyCORIS's IA^3, a trained scale per "
        "output channel; their rank only switches them on; `diag-oft`: LyCORIS's Diag-OFT, the rank its "
        "block-size hint and the alpha its constraint, `boft` alike; `glora`: LyCORIS's GLoRA, both pairs at "
        "the rank; `dylora`: LyCORIS's DyLoRA, the rank in blocks of the block's `unit`, one block drawn per "
        "layer and step; `tlora`: LyCORIS's T-LoRA, each matched Linear / 1x1 layer started from its "
        "weight's SVD at the rank, on SD 1.x/2.x and SDXL); "
        "the adapter's options "
        "apply to every layer, as LyCORIS hands its network's to every module (`module_dropout`: each layer "
        "draws as its LyCORIS class does, on SD 1.x/2.x and SDXL). Another kind needs an adapter "
        "of kind lora, loha, lokr, dylora or glora (full or ia3 on SD 1.x/2.x and SDXL, their blocks' "
        "`kind`) without options one kind lacks "
        "(DBS578; on Flux, SD3 and Chroma "
        "`fused_projections`); on SD 1.x/2.x and SDXL such a run starts from `init_weights`, LyCORIS's file "
        "of its modules, each in its kind's keys (a DyLoRA layer's module in kohya's LoRA layout: only "
        "its `alpha` loads, which must be the block's, as LyCORIS's DyLoraModule takes nothing else).",
        example="loha",
    )
    rank: int = option(
        doc="Rank of the matched linear (and 1x1) layers; 0 adapts none of them. Up to 100000: a LyCORIS "
        "preset file's dims (LoRA/LoCon and LoHa train a pair at the rank itself, wider than the layer if "
        "so)" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = _signed_block_alpha()
    conv_rank: int = option(
        0,
        doc="Rank of the matched 3x3 convolutions (when `conv_rank` of the adapter is above 0); 0 adapts "
        "none. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    conv_alpha: float = _signed_block_conv_alpha()
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    tucker: BlockSwitch = _block_tucker()
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()
    rank_dropout_scale: BlockSwitch = _block_switch(
        "rank_dropout_scale", "rank_dropout_scale", _RESCALED_KINDS
    )
    scalar: BlockSwitch = _block_scalar()
    dora: BlockSwitch = _block_dora()
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    rescaled: BlockSwitch = _block_oft_rescaled()
    unit: int = _block_unit()
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()  # a block of kind tlora's
    data_init: bool = _block_data_init()  # a block of kind tlora (its entry's use_data_init)
    on_input: bool = _block_on_input()  # a block of kind ia3 (its entry's train_on_input)
    bypass: BlockSwitch = _block_bypass()
    lr_scale: float = option(
        1.0,
        doc="The matched adapters train at the learning rate times this (kohya `down_lr_weight`, "
        "`mid_lr_weight`, `up_lr_weight`). 0 holds them at their initial values: they are built, saved and "
        "exported and draw their dropouts, but stay out of the optimizer (no group), their gradients "
        "computed, never cleared and counted by the clip norm (kohya Flux `network_reg_lrs` rate 0, and "
        "the modules none of its regexes match at `unet_lr` 0).",
        minimum=0,
    )
    lr: float = option(
        0.0,
        doc="The matched adapters' own learning rate, in place of the denoiser's rate times `lr_scale` "
        "(kohya Flux `network_reg_lrs`); LoRA+'s up matrices train at it times the ratio. 0 = not set.",
        minimum=0,
        example=1e-3,
    )
    group: str = option(
        "",
        doc="An optimizer group of their own for the matched adapters, at the same rate: the name of the "
        "group they would train in (`denoiser`, `denoiser_x<lr_scale>`, `denoiser_lr<lr>`; LoRA+'s up "
        "matrices `denoiser_lora_up...`) followed by `_<group>`, e.g. `denoiser_x0.5_unet_block4`, which "
        "schedule.base_lr / max_lr tables name to give it bounds of its own (kohya networks.lora's per-block "
        "groups); blocks with one group name and rate share the group. Empty: no group of their own.",
        example="unet_block4",
    )


@frozen
class TextEncoderBlock:
    """Rank, alpha and learning rate of the text-encoder modules one pattern names (kohya `--dim_from_weights`
    files whose text-encoder modules differ in rank, Flux `network_reg_dims` / `network_reg_lrs`)."""

    pattern: str = option(
        doc="Python regular expression searched in `<component>.<module path>` of each adapted text-encoder "
        "module, CLIP paths with their `text_model.` level (e.g. "
        "`text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj`), T5-XXL's as transformers names "
        "them (Flux's `text_encoder_2.encoder.block.0.layer.0.SelfAttention.q`); the first block whose "
        "pattern "
        "matches a module sets its rank and alpha.",
        example="^text_encoder\\.text_model\\.encoder\\.layers\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (the adapter's `kind`), or `lora`, `loha`, "
        "`lokr`, `full`, `ia3`, `diag-oft`, `boft`, `glora`, `dylora` in its place (a LyCORIS preset file's "
        "map entry's `algo`), as `[[adapter.blocks]]` `kind`.",
        example="lora",
    )
    rank: int = option(
        doc="Rank of the matched layers; 0 adapts none of them. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = option(
        doc="Alpha of the matched layers (scale alpha / rank); below 0 for GLoRA, T-LoRA, LoRA/LoCon, LoHa, "
        "LoKr or DyLoRA layers (their LyCORIS modules keep the sign: a preset file's CLIP entry's own "
        "negative `alpha`; DBS581 for other kinds)."
    )
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()
    rank_dropout_scale: BlockSwitch = _block_switch(
        "rank_dropout_scale", "rank_dropout_scale", _RESCALED_KINDS
    )
    scalar: BlockSwitch = _block_scalar()
    dora: BlockSwitch = _block_dora()
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    rescaled: BlockSwitch = _block_oft_rescaled()
    unit: int = _block_unit()
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()  # a block of kind tlora's
    data_init: bool = _block_data_init()  # a block of kind tlora (its entry's use_data_init)
    on_input: bool = _block_on_input()  # a block of kind ia3 (its entry's train_on_input)
    bypass: BlockSwitch = _block_bypass()
    lr_scale: float = option(
        1.0,
        doc="The matched adapters train at their text encoder's learning rate times this. 0 holds them at "
        "their initial values: they are built, saved and exported and draw their dropouts, but stay out of "
        "the optimizer (no group), their gradients computed, never cleared and counted by the clip norm "
        "(kohya Flux `network_reg_lrs` rate 0 on a CLIP-L or T5-XXL module).",
        minimum=0,
    )
    lr: float = option(
        0.0,
        doc="The matched adapters' own learning rate, in place of their text encoder's rate times `lr_scale` "
        "(kohya Flux `network_reg_lrs` on CLIP-L's `lora_te1_` and T5-XXL's `lora_te3_` modules); LoRA+'s "
        "up matrices train at it times the text encoder's ratio. Each rate is an optimizer group of its "
        "encoder's group, `<group>_lr<lr>` (`text_encoder_lr0.0001`), as a scale is `<group>_x<lr_scale>`. "
        "0 = not set.",
        minimum=0,
        example=1e-4,
    )
    group: str = option(
        "",
        doc="An optimizer group of their own for the matched adapters, at the same rate, as "
        "`[[adapter.blocks]]` `group`: the name of the group they would train in (`text_encoder_lr<lr>`, "
        "`text_encoder_2_x<lr_scale>`, ...) followed by `_<group>`, e.g. `text_encoder_lr0.0002_reg_lr_0`, "
        "which schedule.base_lr / max_lr tables name to give it bounds of its own (kohya Flux "
        "`network_reg_lrs` regexes at one rate, each its own group). Empty: no group of their own.",
        example="reg_lr_0",
    )
    zero_scale: bool = _block_zero_scale()


def _adapter_blocks():
    return option(
        factory=list,
        doc="Per-block ranks, alphas and learning-rate scales or own rates of the denoiser's adapters "
        "([[adapter.blocks]] tables, kohya `block_dims` / `block_alphas` / `conv_block_dims` / "
        "`conv_block_alphas` and `down/mid/up_lr_weight`, Flux `network_reg_dims` / `network_reg_lrs`, "
        "LyCORIS preset files' `module_algo_map` / `name_algo_map` dims and algorithms: a block's `kind`, "
        "e.g. LoCon on the ResNets of a LoKr adapter): modules no block matches keep `rank`, `alpha`, "
        "`conv_rank`, `conv_alpha`, the learning rate and the adapter's kind.",
    )


def _text_encoder_blocks():
    return option(
        factory=list,
        doc="Per-module ranks and alphas of the text encoders' adapters ([[adapter.text_encoder_blocks]] "
        "tables, kohya `--dim_from_weights` files whose text-encoder modules differ in rank, LyCORIS preset "
        "files' `module_algo_map` / `name_algo_map` dims, Flux `network_reg_dims` / `network_reg_lrs` on "
        "CLIP-L's and T5-XXL's modules, with their learning rates): modules no block matches keep `rank`, "
        "`alpha` and their text encoder's learning rate.",
    )


@frozen
class DyloraBlock:
    """Rank and alpha of the denoiser modules one pattern names in a DyLoRA (kohya networks.dylora
    `--dim_from_weights`: each module of the file at its own rank and alpha; LyCORIS algo=dylora
    `--network_weights`: each module the file names at the file's alpha)."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted denoiser module's path (diffusers names, "
        "e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); the first block whose pattern "
        "matches a module sets its rank and alpha.",
        example="^down_blocks\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (DyLoRA), or `lora`, `loha`, `lokr`, `full`, "
        "`ia3`, `diag-oft`, `boft`, `glora` in its place (a LyCORIS preset file's `module_algo_map` / "
        "`name_algo_map` entry's `algo` on an `algo=dylora` network), as `[[adapter.blocks]]` `kind`; its "
        "rank is then not cut into blocks (a LoKr block's own `factor`, switches and `rank_stabilized`, a "
        "LoRA / LoHa / LoKr block's own `scalar` and `tucker`, a Diag-OFT / BOFT block's own `rescaled`, its "
        "`alpha` the constraint).",
        example="lora",
    )
    rank: int = option(
        doc="Rank of the matched linear (and 1x1) layers, a multiple of the block's `unit` (else the "
        "adapter's); 0 adapts none of them. Up to 100000 (a LyCORIS preset file's dims)" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = _signed_block_alpha()
    conv_rank: int = option(
        0,
        doc="Rank of the matched 3x3 convolutions (when `conv_rank` of the adapter is above 0), a multiple "
        "of the block's `unit` (else the adapter's); 0 adapts none. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    conv_alpha: float = _signed_block_conv_alpha()
    unit: int = option(
        0,
        doc="Ranks per block of the matched layers in place of the adapter's `unit` (a LyCORIS preset "
        "file's `module_algo_map` / `name_algo_map` entry's own `block_size`): each of them draws one of "
        "its rank / unit blocks per step. 0: the adapter's.",
        minimum=0,
        maximum=100_000,
        example=2,
    )
    bypass: BlockSwitch = _block_bypass()
    # a block of kind lokr: a LyCORIS map entry's own split, switches and rs_lora; of kind lora / loha /
    # lokr: its own use_scalar (each kind's layers built alone, runtime/mixed_kinds.py kind_adapter)
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()
    scalar: BlockSwitch = _block_scalar()
    tucker: BlockSwitch = _block_tucker()  # a block of kind lora / loha / lokr (its entry's use_tucker)
    rescaled: BlockSwitch = _block_oft_rescaled()  # a block of kind diag-oft / boft (its entry's rescaled)
    on_input: bool = _block_on_input()  # a block of kind ia3 (its entry's train_on_input)
    dora: BlockSwitch = _block_dora()  # a block of kind lora / loha / lokr (DyLoraModule never decomposes)
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    # a block of kind tlora (its entry's sig_type / use_data_init; SD 1.x/2.x, SDXL: DBS622 elsewhere)
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()
    data_init: bool = _block_data_init()
    lr_scale: float = _block_lr_scale("DyLoRA (or the block's `kind`)")
    zero_scale: bool = _block_zero_scale()


def _lycoris_output_dropout(what: str):
    return option(
        0.0,
        doc=f"LyCORIS {what}'s `dropout` in `bypass_mode` (kohya's lycoris.kohya network): torch's dropout "
        "of each layer's update (x scalar) while training, after `module_dropout`'s draw and the "
        "`rank_dropout` mask (drawn in that order, per layer and forward), the kept values scaled by "
        "1 / (1 - output_dropout); with `fused_projections` one draw over the whole fused layer's output, "
        "each part taking its rows. Beside `[[adapter.blocks]]` of kind lora / loha / lokr (without "
        "`rank_dropout`) every block's layer drops its own update alike (with `fused_projections` each "
        "fused layer one draw, whatever its kind). "
        "Not with `dora` (LyCORIS's bypass forward has no weight decomposition). 0 turns it off.",
        minimum=0,
        maximum=1,
    )


def _mixed_bypass():
    return option(
        False,
        doc="LyCORIS `bypass_mode` for the layers of `[[adapter.blocks]]` / "
        "`[[adapter.text_encoder_blocks]]` of another kind (a LyCORIS preset file's entries on a network "
        'in bypass_mode): `kind = "diag-oft"` and `"boft"` layers rotate (and rescale) their output '
        "channels, their bias included; "
        '`"dylora"` layers (one block each: `rank`, and `conv_rank` if set, equal to the block\'s `unit`) '
        "add up (down x) unscaled, as LyCORIS's bypass forward does, in training, validation and sampling; "
        '`"ia3"` layers scale their output channels, their bias included; '
        "`glora` layers and the adapter's own compute the same update either way. The exports are the "
        "same tensors, kohya's file records `bypass_mode`. No effect without such blocks (DBS216). With "
        "`fused_projections` each part of a fused Linear computes its own rows of LyCORIS's one module's "
        "bypass forward on it (BOFT's butterfly over every part's output, DyLoRA's shared down).",
    )


def _full_blocks_init_scale():
    return option(
        1.0,
        doc="With `init_weights`: the multiple of the file's `diff` / `diff_b` each layer of a `kind = "
        "\"full\"` block starts from (the layer's weight and bias plus init_scale x the file's; the full "
        "adapter's `init_scale` for a run of several kinds). 2 is kohya's start with `--dim_from_weights` "
        "from a LyCORIS file of several kinds: create_network_from_weights builds each FullModule at W + "
        "diff and load_weights adds the file's diff again. Unused without full blocks and init_weights "
        "(DBS588).",
    )


# kohya's LoRAModule fixes its scale (network_alpha / rank) and its OFTModule its constraint (network_alpha x
# width, a Python float) at construction; load_weights then overwrites only the `alpha` buffer, which
# save_weights writes back
def _init_alpha():
    return option(
        "match",
        doc="What `init_weights`' `alpha` tensors mean. match: they must be the adapter's `alpha` "
        "(`conv_alpha`, a block's own; kohya's OFT: `constraint`; checked at plan time), so what trains and "
        "what is saved agree. ignore: they are not read; every layer trains at the adapter's alpha / rank "
        "on the file's `lora_down` / `lora_up`, as kohya's networks.lora (lora_flux, lora_sd3) trains from a "
        "`--network_weights` file saved at another alpha (its modules' scale is fixed from "
        "`network_alpha` when the network is built; the file's alpha only overwrites a buffer); kohya's "
        'OFT (`kind = "diag-oft"`, `form = "kohya"`: networks.oft, oft_flux) likewise trains the '
        "file's `oft_blocks` at the adapter's `constraint` (LyCORIS's form never reads the file's alpha: "
        "either value), and kohya's networks.dylora (`dylora_form = \"kohya\"`: DyLoRAModule's scale) its "
        "blocks at the adapter's alpha / rank (LyCORIS's DyLoRA reads the alpha buffer: not with "
        '`dylora_form = "lycoris"`). LyCORIS\'s LoCon, LoHa and LoKr modules (lycoris.kohya) also fix '
        "their scale when built: a LoHa / LoKr start, and a run of several kinds (blocks of their own "
        "`kind`), trains each such layer at its block's alpha; a run of several kinds still checks its "
        "DyLoRA layers' alphas (LyCORIS's DyLoraModule scales by the loaded buffer: the file's alpha is the "
        "one it trains at). Full, IA^3, GLoRA and BOFT layers never read the file's alpha. dbspec's "
        "exports then carry the alpha the run trained at, where kohya's saved file carries the starting "
        "file's beside weights trained at network_alpha's scale. With `max_norm` in kohya's form each "
        "layer's norm is taken at the file's alpha, as kohya's max-norm reads the alpha buffer load_weights "
        "set (the layer still trains at the adapter's).",
    )


@frozen
class LoraAdapter:
    kind: Literal["lora"] = option(
        doc="Adapter kind: lora trains low-rank adapters and freezes the base weights."
    )
    rank: int = _rank(16, "LoRA")
    alpha: float = _signed_lycoris_alpha()
    dropout: float = option(0.0, doc="Dropout on the LoRA path.", minimum=0, maximum=1)
    rank_dropout: float = option(
        0.0,
        doc="Drop ranks of the LoRA update while training (kohya networks.lora `rank_dropout`): the down "
        "projection's output is masked per sample and rank, the update scaled by 1 / (1 - rank_dropout). "
        "`rank_dropout_form` picks LyCORIS LoCon's rules instead.",
        minimum=0,
        maximum=0.99,
    )
    rank_dropout_form: Literal["kohya", "lycoris", "lycoris_bypass"] = option(
        "kohya",
        doc="With `rank_dropout`: whose rule draws the mask. `kohya` (networks.lora): per sample and rank, "
        "rescaled, as `rank_dropout` says. `lycoris` (LyCORIS LoCon's default forward, lycoris.kohya "
        "`algo=lora`/`locon`): one `torch.rand(out)` per layer and training forward on the input's device, "
        "the update's output rows (channels) drawn at or under the rate dropped, the kept ones not "
        "rescaled. `lycoris_bypass` (its `bypass_mode` forward): one `torch.rand(rank)` per layer and "
        "forward, the ranks drawn at or under the rate dropped for the whole batch, not rescaled. All "
        "draw from torch's global generator after `module_dropout`'s, so a resume is bit-exact. With "
        'LyCORIS\'s weight decomposition (`dora`, `dora_form = "lycoris"`) only `lycoris`: the masked '
        "update renormalised with the weight, as LoConModule with `dora_wd`.",
        example="lycoris",
    )
    kohya_names: Literal["kohya", "lycoris"] = option(
        "kohya",
        doc="Whose module names the `kohya_lora` export writes where kohya's own LoRA network and LyCORIS's "
        "differ: on Flux and Chroma T5-XXL's modules (train.t5) are `lora_te3_` in kohya's lora_flux and "
        "`lora_te2_` in LyCORIS's lycoris.kohya (the second of the encoders the script hands it, which "
        "lycoris-lora's create_network_from_weights loads), its ss_network_module `lycoris.kohya`; "
        "`init_weights` is read under the same names. Elsewhere the names agree.",
        example="lycoris",
    )
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's whole LoRA update with this probability while training (kohya networks.lora "
        "and LyCORIS LoCon `module_dropout`: one `torch.rand(1)` per layer and training forward; with "
        'LyCORIS\'s weight decomposition, `dora_form = "lycoris"`, the whole decomposed update).',
        minimum=0,
        maximum=1,
    )
    down_dropout: float = option(
        0.0,
        doc="Dropout on the down projection's output while training (kohya networks.lora `network_dropout`: "
        "torch's dropout after `lora_down`, before rank dropout and `lora_up`); `dropout` acts on the LoRA "
        "input instead (peft's `lora_dropout`). 0 turns it off.",
        minimum=0,
        maximum=1,
    )
    output_dropout: float = option(
        0.0,
        doc="Dropout on the LoRA update's output while training (LyCORIS LoCon's `dropout` in "
        "`bypass_mode`, kohya's lycoris.kohya network): torch's dropout of up(down(x)) x scale, after rank "
        "dropout, the kept values scaled by 1 / (1 - output_dropout); with `fused_projections` one draw over "
        "the whole fused layer's output, each part taking its rows. Beside `[[adapter.blocks]]` of kind "
        "loha / lokr (without `rank_dropout`) their layers drop their own update alike (with "
        "`fused_projections` each fused layer one draw, whatever its kind). 0 turns it off.",
        minimum=0,
        maximum=1,
    )
    bypass: bool = _mixed_bypass()
    multiplier: float = option(
        1.0,
        doc="Scale the LoRA update by this while the run trains and validates (kohya's network multiplier, "
        "`set_multiplier`); the saved alpha stays `alpha`, so the weights load elsewhere at full strength.",
        exclusive_minimum=0,
        example=0.5,
    )
    # kohya --scale_weight_norms: max-norm regularisation of each layer's update after every optimizer step
    max_norm: float = option(
        0.0,
        doc="Max-norm regularisation (kohya `--scale_weight_norms`): after each optimizer step, a layer "
        "whose update (alpha / rank) x up @ down has a Frobenius norm above this gets its up and down "
        "weights multiplied by the square root of max_norm / norm, so the update's norm becomes max_norm, as "
        "kohya's `apply_max_norm_regularization` does (a fused layer's parts count as one layer; with "
        "gradient accumulation also after each micro-batch, as kohya calls it); the number of layers "
        "scaled and the mean and largest norm are logged. 0 turns it off.",
        minimum=0,
        example=1.0,
    )
    max_norm_form: Literal["kohya", "lycoris"] = option(
        "kohya",
        doc="With `max_norm`: whose max-norm regularisation runs. kohya (networks.lora): the up and down "
        "weights each times the square root of max_norm / norm. lycoris (LyCORIS's lycoris.kohya network, "
        "`apply_max_norm_regularization`): the norm is taken of LyCORIS's own update (its Tucker form "
        "included; with `rank_dropout` its output rows masked by a draw on the weights' device, as "
        "LoConModule takes it in training mode) and the layer's scalar (use_scalar's, or a fixed one at 1 "
        "without it) is multiplied by max_norm / norm; 0 is logged for the mean and largest norm when no "
        "layer is scaled.",
        example="lycoris",
    )
    # kohya networks.lora_fa (LoRA-FA): the down projections stay at their init, only the up ones train
    freeze_down: bool = option(
        False,
        doc="LoRA-FA (kohya `networks.lora_fa`): each layer's down projection (peft `lora_A`, kohya "
        "`lora_down`) is drawn from a normal distribution with std sqrt(2 / (in + rank)) (in: the layer's "
        "input features or channels) and never trained; the up projection starts at zero and is the only "
        "one the optimizer steps.",
    )
    frozen_down_grad: Literal["none", "kohya"] = option(
        "none",
        doc="With `freeze_down`: `none` computes no gradient for the frozen down projections; `kohya` "
        "computes it as kohya's networks.lora_fa does (its network's requires_grad_(True) reaches them): "
        "never cleared, it accumulates over the run and counts in the gradient-clipping norm "
        "(`optimizer.max_grad_norm`), so it shrinks the up projections' clipped steps; checkpoints keep it, "
        "so a resume is exact. Without clipping both train alike.",
    )
    dora: bool = option(
        False,
        doc="DoRA: learn each output row's (or input column's, `dora_axis`) magnitude apart from the LoRA "
        'direction (peft `use_dora`, or LyCORIS `dora_wd` with `dora_form = "lycoris"`); exported with '
        "kohya's `dora_scale` keys.",
    )
    dora_axis: Literal["output", "input"] = _dora_axis()
    dora_form: Literal["peft", "lycoris"] = option(
        "peft",
        doc="Whose DoRA trains with `dora = true`: `peft` (peft's `use_dora`: the weight norm detached from "
        "the gradient, as the DoRA paper suggests, and `dropout` on the LoRA input) or `lycoris` (LyCORIS's "
        "`dora_wd`, what kohya's `lycoris.kohya` network trains: the norm of W + ΔW differentiated, plus "
        'float eps, no input dropout). The forward is the same; the gradients differ. `dora_axis = "input"` '
        "and `tucker` always train LyCORIS's.",
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    norm_rank_dropout: float = _norm_rank_dropout()
    conv_rank: int = _conv_rank()
    conv_alpha: float = _signed_conv_alpha()
    conv_targets: list[str] = _conv_targets()
    tucker: bool = _tucker()
    scalar: bool = _scalar()
    # LoRA+ (kohya networks.lora): the "up" matrices train at a multiple of the learning rate.
    loraplus_ratio: float = _loraplus_ratio("kohya `loraplus_lr_ratio`")
    loraplus_denoiser_ratio: float = _loraplus_denoiser_ratio()
    loraplus_text_encoder_ratio: float = _loraplus_text_encoder_ratio()
    loraplus_zero: Literal["off", "held"] = _loraplus_zero()
    blocks: list[AdapterBlock] = _adapter_blocks()
    text_encoder_blocks: list[TextEncoderBlock] = _text_encoder_blocks()
    # kohya --network_weights: the run starts from a saved LoRA instead of peft's random init.
    init_weights: str = option(
        "",
        doc="Start the LoRA from this `.safetensors` or torch.save file (`.pt`, `.ckpt`, `.bin`: told "
        "apart by its first bytes; kohya `--network_weights`; a pickle read without running it, loaded with "
        "weights_only), relative to the spec file: kohya's LoRA layout, as kohya saves it and dbspec's "
        "`kohya_lora` export writes it. Its layers, ranks and alphas must be the adapter's (checked at "
        "plan time); layers of a model that does not train are ignored. Flux and SD3 files name the "
        "original model's fused layers (kohya's lora_flux / lora_sd3): a fused layer's down is shared by"
        " its parts (or, a `split_qkv` file, split among them) and its up rows go to each part. With "
        "`tucker = true` (LyCORIS LoCon's Tucker form, SD 1.x/2.x and SDXL) each k x k convolution's "
        "`lora_mid` loads too, its `lora_down` / `lora_up` 1x1. With `scalar` (LyCORIS's use_scalar; a "
        "block's own too) every layer's scalar starts at 1 after the file loads, as LyCORIS's load hook "
        "sets it (the file's `lora_up` holds it folded; a fused layer's parts share one). A resumed run "
        "takes the checkpoint's weights instead. Empty: peft's random init.",
        example="previous-run/final/lora.kohya.safetensors",
    )
    init_partial: bool = option(
        False,
        doc="Load `init_weights` as kohya loads `--network_weights` (`load_state_dict(strict=False)`): an "
        "adapted layer the file lacks keeps its random init, and a file layer the adapter does not adapt is "
        "ignored (a warning at plan time when its name shows it). A tensor of the wrong shape still fails. "
        "false: the run refuses a file that does not cover the adapter exactly, naming the file and the "
        "first layer.",
    )
    init_alpha: Literal["match", "ignore"] = _init_alpha()
    init_scale: float = _full_blocks_init_scale()
    # kohya networks.lora_flux without split_qkv: one LoRA on each fused Linear of the original model.
    fused_projections: bool = option(
        False,
        doc="One down-projection per original fused layer, shared by its parts: the parts diffusers splits "
        "a layer of the original model into (Flux: attn.to_q, to_k, to_v of each double-block stream, and "
        "the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each joint block's q, k, v per attention) "
        "share one `lora_A` (rank `rank`), each keeps its own `lora_B` rows: kohya's LoRA on the fused "
        "Linear (networks.lora_flux and lora_sd3 without `split_qkv`); `down_dropout`, `rank_dropout` and "
        "`module_dropout` are drawn once per fused layer, as kohya draws them; with LyCORIS's `scalar`, "
        '`dora` (its form, per output row) and `max_norm_form = "lycoris"` the fused layer is one '
        "LoConModule (lycoris.kohya on kohya's Flux): one scalar, each part its rows' magnitudes, one norm. "
        "false: each part has its own LoRA. Families without fused layers refuse it.",
    )
    # kohya's lora_flux / lora_sd3 with split_qkv: separate LoRAs on the parts, one draw per fused layer.
    fused_dropout: bool = option(
        False,
        doc="With `fused_projections = false`: the separate LoRAs of each original fused layer's parts draw "
        "the dropouts once per fused layer and forward, as kohya's LoRA on a fused Linear with `split_qkv` "
        "draws them: one `module_dropout` draw skips all the parts together, and the parts' `down_dropout` "
        "(and `rank_dropout`) masks are drawn together, in the original layer's part order (q, k, v, then "
        "Flux's MLP input). false: each part's LoRA draws its own. Needs a family with fused layers.",
    )
    # kohya networks.lora_flux's LoRA-GGPO (network_args ggpo_sigma / ggpo_beta): runtime/ggpo.py.
    ggpo: bool = option(
        False,
        doc="LoRA-GGPO (kohya networks.lora_flux `ggpo_sigma` with `ggpo_beta`): while training, each LoRA "
        "layer adds x @ Pᵀ to its output, P a fresh standard-normal draw of the base weight's shape whose "
        "row i is scaled by (ggpo_sigma * ‖w_i‖ + ggpo_beta * ‖g_i‖²) / sqrt(out rows): ‖w_i‖ combines the "
        "base rows' mean norm (a sample of up to 1000 rows) with row i of up @ down, ‖g_i‖ is row i of the "
        "update's approximate gradient, both taken after each optimizer step's backward (clipped), before "
        "the step. The first optimizer step runs unperturbed; validation never is. With "
        "`fused_projections` a fused layer's parts share one draw (kohya's module on the fused Linear); "
        "without, each part is perturbed as its own Linear. Flux only (networks.lora_flux).",
    )
    ggpo_sigma: float = option(
        0.03,
        doc="With `ggpo`: the weight-norm share of the perturbation (kohya `ggpo_sigma`).",
        minimum=0,
    )
    ggpo_beta: float = option(
        0.01,
        doc="With `ggpo`: the gradient-norm share of the perturbation (kohya `ggpo_beta`).",
        minimum=0,
    )


def _fused_init_weights(what: str):
    # lycoris.kohya --network_weights on kohya's Flux / SD3 and SD 1.x/2.x / SDXL: runtime/lycoris_init.py
    return option(
        "",
        doc=f"Start the {what} from this `.safetensors` file (lycoris.kohya `--network_weights` with "
        "flux_train_network.py / sd3_train_network.py), relative to the spec file: LyCORIS's layout under "
        "kohya's Flux / SD3 module names, one module per fused Linear, as LyCORIS saves it and dbspec's "
        "`kohya_lora` export writes it; a fused layer's tensors go to its parts as they share them. Needs "
        "`fused_projections` on Flux / SD3. On SD 1.x/2.x and SDXL (train_network.py / "
        "sdxl_train_network.py) one module per layer under kohya's names (SDXL's U-Net in the original "
        "layout). Its modules' factor shapes must be the adapter's (checked when the run loads it). A "
        "resumed run takes the checkpoint's weights instead. Empty: LyCORIS's random init.",
        example="previous-run/final/lora.kohya.safetensors",
    )


def _whole_init_weights(what: str, sd: bool = False):
    # lycoris.kohya --network_weights with algo=full / ia3 on kohya's Flux / SD3 and SD 1.x/2.x / SDXL:
    # runtime/lycoris_init.py
    where = (
        "; on SD 1.x/2.x and SDXL (train_network.py / sdxl_train_network.py) one module per layer under "
        "kohya's names (SDXL's U-Net in the original layout)"
        if sd
        else ". Flux and SD3 only"
    )
    return option(
        "",
        doc=f"Start the {what} from this `.safetensors` file (lycoris.kohya `--network_weights` with "
        "flux_train_network.py / sd3_train_network.py), relative to the spec file: LyCORIS's layout under "
        "kohya's Flux / SD3 module names, one module per fused Linear, as LyCORIS saves it and dbspec's "
        "`kohya_lora` export writes it; each diffusers part takes its rows of a fused module's tensors"
        f"{where}. Its shapes must be the layers' (checked when the run loads it). A resumed run "
        "takes the checkpoint's weights instead. Empty: LyCORIS's init.",
        example="previous-run/final/lora.kohya.safetensors",
    )


def _fused_init_partial(full: bool = False):
    lacks = (
        "a file module the adapter has not is ignored, but a layer the file lacks fails as in kohya "
        "(LyCORIS's FullModule load hook pops its `diff`: KeyError)"
        if full
        else "a layer the file lacks keeps its random init and a file module the adapter has not is ignored"
    )
    return option(
        False,
        doc="Load `init_weights` as lycoris.kohya's load_weights does (`load_state_dict(strict=False)`): "
        f"{lacks}. A tensor of the wrong shape still fails. false: the run refuses a file that does not "
        "cover the adapter exactly, naming the file and the first module.",
    )


def _blocks_max_norm(what: str):
    """`max_norm` of an adapter whose own LyCORIS module keeps the base apply_max_norm (GLoRA, DyLoRA)."""
    return option(
        0.0,
        doc="Max-norm regularisation as LyCORIS's lycoris.kohya network runs it (kohya "
        "`--scale_weight_norms`) on the layers of the `[[adapter.blocks]]` / "
        "`[[adapter.text_encoder_blocks]]` of kind lora, loha, lokr, diag-oft or boft (a LyCORIS preset "
        "file's entries of those algorithms): "
        "after each optimizer step (and micro-batch) each such layer is scaled as that kind's `max_norm` in "
        f"LyCORIS's form scales it. The {what} layers themselves, and full / IA^3 / GLoRA / DyLoRA blocks, "
        f"are never scaled (LyCORIS's {what} module keeps the base `apply_max_norm`) and count in neither "
        "the layers scaled nor the logged norms (0 and 0 when none is scaled). 0 turns it off.",
        minimum=0,
        example=1.0,
    )


def _lycoris_max_norm(what: str):
    return option(
        0.0,
        doc=f"Max-norm regularisation as LyCORIS's lycoris.kohya network runs it (kohya "
        f"`--scale_weight_norms`): after each optimizer step (and micro-batch) a {what} layer whose "
        + (
            "update has a Frobenius norm above this gets its scalar (use_scalar's, or a fixed one at 1 "
            "without it) multiplied by max_norm / norm"
            if what == "LoHa"
            else "update has a Frobenius norm above this gets each of its factors multiplied by the n-th "
            "root of max_norm / norm (n factors)"
            if what == "LoKr"
            else "update, its norm times alpha / rank once more (TLoraModule.apply_max_norm scales it "
            "twice), is above this gets its trained singular values λ multiplied by max_norm / norm (the "
            "frozen start's are not, so the norm does not fall to max_norm)"
            if what == "T-LoRA"
            else "trained blocks (`oft_blocks` themselves, not the rotation they make) have a Frobenius norm "
            "above this gets those blocks multiplied by max_norm / norm"
        )
        + "; the number of layers scaled and the mean and largest norm are logged (0 and 0 when none "
        "is scaled). 0 turns it off.",
        minimum=0,
        example=1.0,
    )


@frozen
class LohaAdapter:
    kind: Literal["loha"] = option(
        doc="Adapter kind: loha trains LyCORIS LoHa (the Hadamard product of two low-rank updates) and "
        "freezes the base weights."
    )
    rank: int = _rank(8, "LoHa")
    alpha: float = _signed_lycoris_alpha()
    rank_dropout: float = _rank_dropout()
    rank_dropout_form: Literal["lycoris", "lycoris_bypass"] = option(
        "lycoris",
        doc="With `rank_dropout` beside `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of kind "
        "lora: whose LyCORIS forward those blocks draw it by (the LoHa layers draw LohaModule's row mask, "
        "`torch.rand(out)`, in either). `lycoris` (LoConModule's default forward): their output rows drawn "
        "at or under the rate dropped (`torch.rand(out)`). `lycoris_bypass` (kohya's lycoris.kohya "
        "`bypass_mode`): LoConModule's bypass forward, one `torch.rand(rank)` per layer and forward, the "
        "ranks at or under it dropped, unscaled, after its module dropout draw and before `output_dropout`'s "
        "(if any). A nonzero `output_dropout` (LyCORIS's bypass dropout) implies `lycoris_bypass`.",
        example="lycoris_bypass",
    )
    rank_dropout_scale: bool = _rank_dropout_scale()
    module_dropout: float = _module_dropout()
    output_dropout: float = _lycoris_output_dropout("LoHa")
    bypass: bool = _mixed_bypass()
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    norm_rank_dropout: float = _norm_rank_dropout()
    conv_rank: int = _conv_rank()
    conv_alpha: float = _signed_conv_alpha()
    conv_targets: list[str] = _conv_targets()
    tucker: bool = _tucker()
    dora: bool = _lycoris_dora("LoHa")
    dora_axis: Literal["output", "input"] = _dora_axis()
    scalar: bool = _scalar()
    max_norm: float = _lycoris_max_norm("LoHa")
    blocks: list[AdapterBlock] = _adapter_blocks()
    text_encoder_blocks: list[TextEncoderBlock] = _text_encoder_blocks()
    # kohya lycoris.kohya algo=loha on kohya's Flux: one LoHa on each fused Linear (runtime/fused_loha.py).
    fused_projections: bool = option(
        False,
        doc="One LoHa per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block stream, "
        "and the single blocks' to_q, to_k, to_v and proj_mlp): LyCORIS's LohaModule on kohya's fused "
        "Linear, whose Hadamard update's rows are the parts': each part keeps its rows of `hada_w1_a` / "
        "`hada_w2_a` and the parts share `hada_w1_b` / `hada_w2_b` (lycoris.kohya `algo=loha` with "
        "flux_train_network.py); exported under kohya's Flux module names. Every part of a fused layer must "
        "be adapted, at one rank and alpha; `scalar`, `max_norm`, `dora` (per output row) and the dropouts "
        "act on the fused layer (one scalar, one norm, one draw, the masked update decomposed). false: "
        "each part has its own LoHa. Families without fused layers refuse it.",
    )
    init_weights: str = _fused_init_weights("LoHa")
    init_partial: bool = _fused_init_partial()
    init_scale: float = _full_blocks_init_scale()
    init_alpha: Literal["match", "ignore"] = _init_alpha()


@frozen
class LokrAdapter:
    kind: Literal["lokr"] = option(
        doc="Adapter kind: lokr trains LyCORIS LoKr (a Kronecker product of a small and a low-rank factor) "
        "and freezes the base weights."
    )
    # LyCORIS recipes give a huge rank (network_dim = 10000) to train both Kronecker factors in full.
    rank: int = _rank(
        8,
        "LoKr",
        100_000,
        " A rank of half the larger second factor or more trains it in full; a layer whose two factors are "
        "both full trains at scale 1 (alpha unused; sqrt(rank) with `rank_stabilized`), as LyCORIS.",
    )
    alpha: float = _signed_lycoris_alpha()
    factor: int = option(
        -1,
        doc="Split each dimension into factor x (dimension / factor) (LyCORIS `factor`); -1 splits near the "
        "square root.",
        minimum=-1,
        maximum=65536,
        example=8,
    )
    tucker: bool = _tucker()
    decompose_both: bool = option(
        False, doc="Also make the small Kronecker factor low-rank (LyCORIS `decompose_both`)."
    )
    unbalanced_factorization: bool = option(
        False,
        doc="LyCORIS `unbalanced_factorization`: swap each layer's output split, so the first Kronecker "
        "factor takes the larger part of the output dimension and the second the smaller (the input split "
        "unchanged).",
    )
    rank_dropout: float = _rank_dropout()
    rank_dropout_form: Literal["lycoris", "lycoris_bypass"] = option(
        "lycoris",
        doc="With `rank_dropout`: whose LyCORIS forward draws it. `lycoris` (LokrModule's default forward): "
        "each LoKr layer's output rows drawn at or under the rate dropped (`torch.rand(out)`). "
        "`lycoris_bypass` (kohya's lycoris.kohya `bypass_mode`, whose LokrModule bypass forward never "
        "reads `rank_dropout`): the LoKr layers draw none; the rate is that of "
        "`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of kind lora (LoConModule's bypass "
        "forward: one `torch.rand(rank)` per layer and forward, the ranks at or under it dropped, unscaled) "
        "and loha (LohaModule's row mask), each after its module dropout draw and before `output_dropout`'s "
        "(if any).",
        example="lycoris_bypass",
    )
    rank_dropout_scale: bool = _rank_dropout_scale()
    module_dropout: float = _module_dropout()
    output_dropout: float = _lycoris_output_dropout("LoKr")
    bypass: bool = _mixed_bypass()
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    norm_rank_dropout: float = _norm_rank_dropout()
    conv_rank: int = _conv_rank(100_000)
    conv_alpha: float = _signed_conv_alpha()
    conv_targets: list[str] = _conv_targets()
    dora: bool = _lycoris_dora("LoKr")
    dora_axis: Literal["output", "input"] = _dora_axis()
    full_matrix: bool = option(
        False,
        doc="LyCORIS `full_matrix`: both Kronecker factors of every layer are full matrices whatever the "
        "rank (no low-rank split of the second factor, `decompose_both` and `tucker` then change nothing), "
        "trained at scale 1 (alpha unused), as LyCORIS's LokrModule does.",
    )
    rank_stabilized: bool = option(
        False,
        doc="LyCORIS `rs_lora` on LoKr: a layer whose two Kronecker factors are both full trains at scale "
        "sqrt(rank) (its block's rank, else `rank` or `conv_rank`) instead of 1, as LyCORIS's LokrModule "
        "does. The low-rank layers keep alpha / rank (LyCORIS's alpha / sqrt(rank) is alpha x sqrt(rank) "
        "here, which `dbspec convert` writes).",
    )
    scalar: bool = _scalar()
    max_norm: float = _lycoris_max_norm("LoKr")
    blocks: list[AdapterBlock] = _adapter_blocks()
    text_encoder_blocks: list[TextEncoderBlock] = _text_encoder_blocks()
    # kohya lycoris.kohya algo=lokr on kohya's Flux: one LoKr on each fused Linear (runtime/fused_lokr.py).
    fused_projections: bool = option(
        False,
        doc="One LoKr per original fused layer, shared by its parts (Flux: attn.to_q, to_k, to_v of each "
        "double-block stream, and the single blocks' to_q, to_k, to_v and proj_mlp): LyCORIS's LokrModule "
        "on kohya's fused Linear, its Kronecker factors split from the fused layer's dimensions and each "
        "part updated by its rows of the one Kronecker product (lycoris.kohya `algo=lokr` with "
        "flux_train_network.py); exported under kohya's Flux module names. Every part of a fused layer must "
        "be adapted, at one rank and alpha; `scalar`, `max_norm`, `dora` (per output row) and the dropouts "
        "act on the fused layer (one scalar, one norm, one draw, the masked update decomposed). false: "
        "each part has its own LoKr. Families without fused layers refuse it.",
    )
    init_weights: str = _fused_init_weights("LoKr")
    init_partial: bool = _fused_init_partial()
    init_scale: float = _full_blocks_init_scale()
    init_alpha: Literal["match", "ignore"] = _init_alpha()


def _exclude(what: str, tail: str):
    return option(
        factory=list,
        doc="Python regular expressions searched in each targeted layer's path (the denoiser's diffusers "
        "names, e.g. `single_transformer_blocks.3.proj_out`; a text encoder's `<component>.<path>`, e.g. "
        f"`text_encoder_2.encoder.block.3.layer.1.DenseReluDense.wi_0`): a layer one matches gets no {what}, "
        f"{tail}; empty excludes none.",
        example=["^single_transformer_blocks\\.(3|4)\\.proj_out$"],
    )


_EXCLUDED_LAYER = (
    "as a LyCORIS preset file that leaves the layer out builds no module on it (Flux's top-level `proj_out` "
    "target is a suffix of every single block's `proj_out`)"
)


@frozen
class ScaleBlock:
    """The learning-rate scale of the denoiser's full or IA^3 layers one pattern names (LyCORIS's full and
    IA^3 modules have no rank: a block holds or scales them; kohya lycoris.kohya algo=full / ia3 at
    `unet_lr` 0, whose U-Net modules its optimizer leaves out), or another kind in their place with its rank
    and alpha (a LyCORIS preset file's `module_algo_map` / `name_algo_map` entries of another algorithm)."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted denoiser module's path (diffusers names, "
        "e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); the first block whose pattern "
        "matches a module sets its learning-rate scale (`exclude` is searched first: an excluded layer has "
        "no module to scale); empty matches every module.",
        example="^down_blocks\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (the adapter's full or IA^3, at the block's "
        "`lr_scale`; `rank` and the other sizes unused), or `lora`, `loha`, `lokr`, `diag-oft`, `boft`, "
        "`glora`, `dylora` in its place (a LyCORIS preset file's `module_algo_map` / `name_algo_map` entry's "
        "`algo` on an `algo=full` / `algo=ia3` network; on Flux, SD3 and Chroma with `fused_projections`), "
        "at the block's `rank`, `alpha`, `conv_rank` and `conv_alpha`, as `[[adapter.blocks]]` `kind` (with "
        "a LoKr block's own `factor`, switches and `rank_stabilized`, a LoRA / LoHa / LoKr block's own "
        "`scalar`, a Diag-OFT / BOFT block's own `rescaled`, its `alpha` the constraint).",
        example="lora",
    )
    rank: int = option(
        0,
        doc="Rank of the matched linear (and 1x1) layers of a block of another `kind`; 0 adapts none of "
        "them. Unused by the adapter's own full / IA^3 layers (no rank). Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = option(
        1.0,
        doc="Alpha of the matched linear layers of a block of another `kind` (scale alpha / rank); below 0 "
        "for LoRA/LoCon, LoHa, LoKr, GLoRA, T-LoRA or DyLoRA layers (their LyCORIS modules keep the sign: a "
        "preset file's entry's own negative `alpha`; DBS581 for other kinds).",
    )
    conv_rank: int = option(
        0,
        doc="Rank of the matched 3x3 convolutions of a block of another `kind` (among `conv_targets`); 0 "
        "adapts none. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    conv_alpha: float = _signed_block_conv_alpha()
    unit: int = _block_unit()
    # a block of kind lokr: a LyCORIS map entry's own split and switches (DBS576)
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    tucker: BlockSwitch = _block_tucker()  # a block of kind lora / loha / lokr (k x k convolutions)
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()  # a block of kind lokr (its entry's rs_lora)
    scalar: BlockSwitch = _block_scalar()  # a block of kind lora / loha / lokr (its entry's use_scalar)
    rescaled: BlockSwitch = _block_oft_rescaled()  # a block of kind diag-oft / boft (its entry's rescaled)
    dora: BlockSwitch = _block_dora()  # a block of kind lora / loha / lokr (full / IA^3 never decompose)
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    bypass: BlockSwitch = (
        _block_bypass()
    )  # an IA^3 adapter's own block, a Diag-OFT / BOFT / DyLoRA / IA^3 one
    # an IA^3 adapter's own block or a block of kind ia3 on a full adapter (its entry's train_on_input)
    on_input: bool = _block_on_input()
    # a block of kind tlora on a full / IA^3 adapter (its entry's sig_type / use_data_init; SD 1.x/2.x, SDXL)
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()
    data_init: bool = _block_data_init()
    lr_scale: float = _block_lr_scale("full or IA^3 (or the block's `kind`)")


def _scale_text_blocks():
    return option(
        factory=list,
        doc="The text encoders' layers of another kind ([[adapter.text_encoder_blocks]] tables of a `kind` "
        "other than `adapter`, with its rank and alpha: a LyCORIS preset file's `module_algo_map` / "
        "`name_algo_map` entries of another algorithm on an `algo=full` / `algo=ia3` network); modules no "
        "block matches keep the adapter's kind.",
    )


def _scale_blocks(what: str):
    return option(
        factory=list,
        doc=f"Learning-rate scales of the denoiser's {what} ([[adapter.blocks]] tables with a `pattern` and "
        "an `lr_scale`); modules no block matches train at the denoiser's rate. One block over every module "
        '(`pattern = ""`) at `lr_scale = 0` holds the denoiser\'s adapter whole: built, saved and run '
        "under grad, nothing of it trains (kohya's lycoris.kohya at `unet_lr` 0).",
    )


@frozen
class FullAdapter:
    kind: Literal["full"] = option(
        doc="Adapter kind: full trains LyCORIS's full-weight algo (`algo = full`): a trained copy of each "
        "targeted layer's whole weight and bias, starting at the layer's own values, the rest of the model "
        "frozen; exported as LyCORIS's `diff` / `diff_b` (the trained weight minus the base)."
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    conv_targets: list[str] = option(
        factory=list,
        doc="Denoiser convolution names (suffixes) trained in full too (LyCORIS adds the 3x3 convolutions "
        "with `conv_dim` above 0, kohya's LoCon set); empty trains no convolution.",
        example=list(KOHYA_CONV_TARGETS),
    )
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's trained copy with this probability while training, the base layer alone "
        "answering (LyCORIS `module_dropout`: FullModule.forward's one `torch.rand(1)` from torch's global "
        "generator per layer and training forward). Each adapted layer draws its own; with "
        "`fused_projections` one draw per fused layer, its parts skipping together (kohya's one module on "
        "the fused Linear); without it diffusers' split parts of Flux / SD3's fused Linears each draw. The "
        "norm offsets draw it too.",
        minimum=0,
        maximum=1,
    )
    rank_dropout: float = option(
        0.0,
        doc="Drop each output row of a layer's update (W' - W and b' - b) with this probability while "
        "training, the kept rows unscaled (LyCORIS `rank_dropout`: FullModule.make_weight's "
        "`torch.rand(out, device=x.device) > rank_dropout` per layer and training forward, after "
        "`module_dropout`'s draw); with `fused_projections` one mask over a fused layer's rows, each part "
        "taking its own rows (kohya's one module on the fused Linear). The norm offsets draw it too, and "
        "blocks of other kinds' layers as their LyCORIS modules do (LoCon's row masks, LoHa's, Diag-OFT's "
        "rotations' dropout; IA^3, BOFT, GLoRA and DyLoRA layers none).",
        minimum=0,
        maximum=1,
    )
    norm_rank_dropout: float = _norm_rank_dropout()
    # kohya lycoris.kohya algo=full on kohya's Flux / SD3: one FullModule per fused Linear (its one draw)
    fused_projections: bool = option(
        False,
        doc="One full copy per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block "
        "stream, and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): "
        "LyCORIS's FullModule on kohya's fused Linear, whose copy's rows are the parts' rows, so the parts "
        "keep their own copies and share the module's `module_dropout` draw and `rank_dropout` row mask "
        "(lycoris.kohya `algo=full` with flux_train_network.py / sd3_train_network.py; the export writes "
        "kohya's fused names either way). Every part of a fused layer must be adapted. false: each part "
        "draws its own. Families without fused layers refuse it.",
    )
    exclude: list[str] = _exclude(
        "trained copy",
        "as a LyCORIS full file without that layer's module builds none (Flux's top-level `proj_out` "
        "target is a suffix of every single block's `proj_out`; `train.t5` copies every T5-XXL Linear); "
        "the plan's adapter count and memory estimate leave their copies out where the base model is a "
        "diffusers folder whose safetensors headers list them (else the whole component bounds the count)",
    )
    init_weights: str = _whole_init_weights("trained copies (`diff` / `diff_b`)", sd=True)
    init_partial: bool = _fused_init_partial(full=True)
    init_scale: float = option(
        1.0,
        doc="The multiple of `init_weights`' `diff` / `diff_b` each copy starts from: the layer's weight "
        "and bias plus init_scale x the file's. 2 is kohya's start with `--dim_from_weights`: LyCORIS's "
        "create_network_from_weights builds each FullModule at W + diff, and train_network.py's "
        "load_weights adds the file's diff again. Unused without init_weights.",
    )
    init_alpha: Literal["match", "ignore"] = _init_alpha()
    max_norm: float = _blocks_max_norm("full")
    blocks: list[ScaleBlock] = _scale_blocks("trained copies")
    text_encoder_blocks: list[TextEncoderBlock] = _scale_text_blocks()


@frozen
class Ia3Adapter:
    kind: Literal["ia3"] = option(
        doc="Adapter kind: ia3 trains LyCORIS's IA^3 (`algo = ia3`): one learned scale per output channel of "
        "each targeted layer (per input channel for `input_targets`), the weight becoming W x (1 + s) with s "
        "starting at 0, the bias untouched; exported as LyCORIS's `weight` / `on_input`."
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    conv_targets: list[str] = option(
        factory=list,
        doc="Denoiser convolution names (suffixes) scaled too (LyCORIS adds the 3x3 convolutions with "
        "`conv_dim` above 0); empty scales no convolution.",
        example=list(KOHYA_CONV_TARGETS),
    )
    input_targets: list[str] = option(
        factory=list,
        doc="Targets (suffixes, among the three lists above) whose scale acts on the input channels instead "
        "(LyCORIS `train_on_input`, which its ia3 preset sets for `ff.net.2` and `mlp.fc2`).",
        example=["ff.net.2", "mlp.fc2"],
    )
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's scaling with this probability while training (LyCORIS `module_dropout`: "
        "IA3Module.forward's one `torch.rand(1)` from torch's global generator per layer and training "
        "forward, the base output alone below the rate). Each adapted layer draws its own; with "
        "`fused_projections` one draw per fused layer, its parts skipping together (kohya's one module on "
        "the fused Linear); without it diffusers' split parts of Flux / SD3's fused Linears each draw.",
        minimum=0,
        maximum=1,
    )
    rank_dropout: float = option(
        0.0,
        doc="The norm offsets' rank dropout (`denoiser_norms`, `text_encoder_norms`: LyCORIS's NormModule "
        "draws the network's `rank_dropout`, keeping the offsets it marks, unscaled). The IA^3 layers "
        "never draw it, as LyCORIS's IA3Module never reads it; blocks of other kinds' layers draw it as "
        "their LyCORIS modules do (LoCon's and full's row masks, LoHa's, Diag-OFT's rotations' dropout); "
        "without norm offsets or such blocks it changes nothing.",
        minimum=0,
        maximum=1,
    )
    norm_rank_dropout: float = _norm_rank_dropout()
    dropout: float = _blocks_bypass_dropout("IA^3 (kohya lycoris.kohya algo=ia3)", "IA3Module")
    bypass: bool = option(
        False,
        doc="LyCORIS `bypass_mode` (IA3Module's bypass forward): scale the layer's output channels, its "
        "bias included, by (1 + s) instead of the weight's rows (the default forward leaves the bias as it "
        "is); an `input_targets` layer reads its input scaled, the same update either way. The export is "
        "the same tensors; kohya's file records `bypass_mode`. On Flux / SD3 / Chroma a fused Linear's parts "
        "each scale their own rows: its whole output scaled, as IA3Module on kohya's fused layer.",
    )
    exclude: list[str] = _exclude("scale", _EXCLUDED_LAYER)
    # kohya lycoris.kohya algo=ia3 on kohya's Flux / SD3: one IA3Module per fused Linear (its one draw)
    fused_projections: bool = option(
        False,
        doc="One IA^3 per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block stream, and "
        "the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): LyCORIS's IA3Module "
        "on kohya's fused Linear, whose output-row scales are the parts' rows, so the parts keep their own "
        "scales and share the module's `module_dropout` draw (lycoris.kohya `algo=ia3` with "
        "flux_train_network.py / sd3_train_network.py; the export writes kohya's fused names either way). "
        "Every part of a fused layer must be adapted, none in `input_targets` (the fused module's input "
        "scale would be one for all parts). false: each part draws its own. Families without fused layers "
        "refuse it.",
    )
    init_weights: str = _whole_init_weights("scales (`weight` / `on_input`)", sd=True)
    init_partial: bool = _fused_init_partial()
    init_alpha: Literal["match", "ignore"] = _init_alpha()
    max_norm: float = _blocks_max_norm("IA^3")
    blocks: list[ScaleBlock] = _scale_blocks("IA^3 scales")
    text_encoder_blocks: list[TextEncoderBlock] = _scale_text_blocks()


def _oft_rescaled():
    return option(
        False,
        doc="Also train a scale per output row, from 1 (LyCORIS `rescaled`, saved as `rescale`).",
    )


def _oft_bypass():
    return option(
        False,
        doc="LyCORIS `bypass_mode`: rotate (and rescale) the layer's output channels, its bias included, "
        "as LyCORIS's bypass forward does, instead of the weight's rows (the default forward leaves the "
        "bias as it is). The export is the same tensors; kohya's file records `bypass_mode` in its "
        "metadata.",
    )


def _rotated_conv_targets():
    return option(
        factory=list,
        doc="Denoiser convolution names (suffixes) rotated too (LyCORIS adds the 3x3 convolutions with "
        "`conv_dim` above 0); empty rotates no convolution.",
        example=list(KOHYA_CONV_TARGETS),
    )


@frozen
class OftBlock:
    """LyCORIS Diag-OFT's or BOFT's block-size hint, constraint, rescale and bypass_mode for the modules one
    pattern names (a LyCORIS preset file's `module_algo_map` / `name_algo_map` entries with their own dim,
    `constraint`, `rescaled` or `bypass_mode` on an algo=diag-oft or algo=boft network)."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted module's path (the denoiser's diffusers "
        "names, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`; a text encoder's "
        "`<component>.<path>`, e.g. `text_encoder.text_model.encoder.layers.0.mlp.fc1`); the first block "
        "whose pattern matches a module sets its block size.",
        example="ff\\.net",
    )
    kind: Literal["adapter", "diag-oft", "boft"] = option(
        "adapter",
        doc="The matched layers' orthogonal algorithm: `adapter` (the adapter's), or on a diag-oft adapter "
        "of LyCORIS's form `boft` in its place (a LyCORIS preset file's BOFT entries on an algo=diag-oft "
        "network, or an algo=boft network's own layers beside Diag-OFT entries), built with the block's "
        "block size, constraint, rescale and bypass and the adapter's `module_dropout`; the Diag-OFT layers "
        "alone draw the adapter's `rank_dropout` (their rotations' dropout), as ButterflyOFTModule never "
        "reads it. `diag-oft` on a boft adapter: DBS578.",
        example="boft",
    )
    block_size: int = option(
        doc="The matched layers' `block_size` in place of the adapter's (LyCORIS's lora_dim, split as "
        "LyCORIS's factorization of each layer's width).",
        minimum=1,
        maximum=65536,
        example=8,
    )
    constraint: float = option(
        -1.0,
        doc="The matched layers' COFT `constraint` in place of the adapter's (a LyCORIS preset file's "
        "`module_algo_map` / `name_algo_map` entry's own `constraint`: their skew-symmetric blocks scaled "
        "down to norm constraint x (output width) when larger, saved as their `alpha`; 0 constrains "
        "nothing); a negative value (the default, -1): the adapter's.",
        minimum=-1,
        example=1e-3,
    )
    rescaled: BlockSwitch = option(
        "adapter",
        doc="Whether the matched layers also train a scale per output row (the adapter's `rescaled` in "
        "place of it; a LyCORIS preset file's `module_algo_map` / `name_algo_map` entry's own `rescaled`): "
        "on, off, or `adapter` (the adapter's).",
        example="on",
    )
    bypass: BlockSwitch = _block_bypass()
    lr_scale: float = _block_lr_scale("Diag-OFT or BOFT")


@frozen
class DiagOftAdapter:
    kind: Literal["diag-oft"] = option(
        doc="Adapter kind: diag-oft trains LyCORIS's Diag-OFT (`algo = diag-oft`): each targeted layer's "
        "output rows split into blocks, each rotated by a trained orthogonal matrix (Cayley transform of a "
        "skew-symmetric block, starting at the identity); exported as LyCORIS's `oft_blocks` / `rescale` / "
        "`alpha`."
    )
    block_size: int = option(
        4,
        doc="LyCORIS's `lora_dim` (kohya `network_dim`) for Diag-OFT: a layer of width w is split into "
        "blocks of min(block_size, w / block_size) rows when block_size divides w (LyCORIS's "
        "factorization; otherwise the nearest divisor pair it finds).",
        minimum=1,
        maximum=65536,
        example=8,
    )
    constraint: float = option(
        0.0,
        doc="COFT: the skew-symmetric blocks are scaled down to norm constraint x (output width) when larger "
        "(LyCORIS `constraint`, saved as `alpha`); 0 constrains nothing.",
        minimum=0,
    )
    rescaled: bool = _oft_rescaled()
    bypass: bool = _oft_bypass()
    form: Literal["lycoris", "kohya"] = option(
        "lycoris",
        doc="Whose OFT trains. `lycoris`: LyCORIS's DiagOFTModule (`block_size`, `constraint` 0 off, "
        "`rescaled`, `bypass`; the base output plus the rotation's delta). `kohya`: kohya sd-scripts' own "
        'OFT (`network_module = "networks.oft"`, OFTModule): each layer\'s rows split into '
        "`block_count` blocks (`block_size` unused), the skew blocks always scaled by (min(|Q|, constraint "
        "x width) + 1e-8) / (|Q| + 1e-8), the layer run on its whole rotated weight R^T W computed in "
        "fp32; no rescale, no bypass. Exported as kohya's networks.oft file (`oft_unet_*` keys: "
        "`oft_blocks`, `alpha`); on FLUX.1 and Chroma as networks.oft_flux's (each part of a fused q/k/v "
        "or linear1 layer its own blocks: `oft_blocks.<part>`).",
        example="kohya",
    )
    block_count: int = option(
        0,
        doc="With `form = \"kohya\"`: kohya's `network_dim`, the NUMBER of blocks each targeted layer's "
        "output rows split into (block size width / blocks, which must divide every targeted width); 0 "
        "with LyCORIS's form.",
        minimum=0,
        maximum=65536,
        example=4,
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    conv_targets: list[str] = _rotated_conv_targets()
    exclude: list[str] = _exclude("rotation", _EXCLUDED_LAYER)
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's whole rotation with this probability while training (LyCORIS `module_dropout`: "
        "DiagOFTModule.forward's one `torch.rand(1)` from torch's global generator per layer and training "
        "forward, the base output alone below the rate); with `fused_projections` one draw per fused "
        "layer, its parts skipping together. LyCORIS's form only.",
        minimum=0,
        maximum=1,
    )
    rank_dropout: float = option(
        0.0,
        doc="While training, zero each entry of a layer's block rotations with this probability and scale "
        "the kept ones by 1 / (1 - rate) (LyCORIS `rank_dropout`: DiagOFTModule.make_weight's "
        "`nn.Dropout(rank_dropout)` on its (blocks, size, size) rotations, drawn from torch's generator on "
        "the blocks' device once per layer and training forward, after `module_dropout`'s draw). The "
        "bypass forward never draws it (LyCORIS's reads `dropout` instead); the norm offsets "
        "(`denoiser_norms`, `text_encoder_norms`) draw it as LyCORIS's NormModule does. With "
        "`fused_projections` one mask over the fused layer's blocks, each part taking its own. LyCORIS's "
        "form only.",
        minimum=0,
        maximum=1,
    )
    norm_rank_dropout: float = _norm_rank_dropout()
    max_norm: float = _lycoris_max_norm("Diag-OFT")
    # kohya lycoris.kohya algo=diag-oft on kohya's Flux / SD3: one module per fused Linear (lycoris_oft.py)
    fused_projections: bool = option(
        False,
        doc="One Diag-OFT per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block "
        "stream, and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): "
        "LyCORIS's DiagOFTModule on kohya's fused Linear, whose blocks split the stacked rows (block size "
        "from the fused width and `block_size`); each part rotates its own rows in those blocks (where "
        "a block spans two parts, the parts share the fused module's blocks). lycoris.kohya "
        "`algo=diag-oft` with flux_train_network.py / sd3_train_network.py; exported under kohya's module "
        "names, the parts' blocks stacked. LyCORIS form only; `constraint` x the fused width bounds one "
        "norm over all the fused module's blocks and `max_norm` scales them all by one ratio of their "
        "norm. false: each part splits its own width. Families without fused layers refuse it.",
    )
    # kohya networks.oft / lycoris.kohya --network_weights: the run starts from a saved OFT's blocks
    init_weights: str = option(
        "",
        doc='Start the blocks from this `.safetensors` file, relative to the spec file. `form = "kohya"` '
        "(kohya networks.oft `--network_weights`): kohya's networks.oft layout (`oft_unet_*` "
        "modules' `oft_blocks` and `alpha`; on FLUX.1 and Chroma networks.oft_flux's, "
        "`oft_blocks.<part>`), as kohya's OFTNetwork and dbspec's kohya export save it; its "
        "block counts and alphas must be the adapter's `block_count` and `constraint` (checked at plan "
        'time; the alphas unread with `init_alpha = "ignore"`). `form = "lycoris"` (lycoris.kohya '
        "`--network_weights`): LyCORIS's layout under kohya's "
        "module names (SDXL's U-Net in the original layout; on Flux / SD3 with `fused_projections`, one "
        "module per fused Linear, whose blocks and rescale rows each part takes its own of), each module's "
        "`oft_blocks` and `rescale` loaded as they are (their shapes the layer's, checked when the run loads "
        "it); its "
        "`alpha` is not read (DiagOFTModule keeps the constraint it was built with). A resumed run takes "
        "the checkpoint's weights instead. Empty: the blocks start at zero (the identity rotation).",
        example="previous-run/final/oft.kohya.safetensors",
    )
    init_partial: bool = option(
        False,
        doc="Load `init_weights` as kohya's OFTNetwork.load_weights (or lycoris.kohya's) does "
        "(`load_state_dict(strict=False)`): an adapted layer the file lacks keeps its zero blocks (and "
        "its rescale of ones), and a file module or `rescale` the adapter does not have is ignored. "
        "false: the run refuses a file that does not cover the adapter exactly.",
    )
    init_alpha: Literal["match", "ignore"] = _init_alpha()
    blocks: list[OftBlock] = option(
        factory=list,
        doc="Per-module block sizes, constraints, rescales and bypass_mode of the denoiser's Diag-OFT "
        "layers ([[adapter.blocks]] tables: LyCORIS preset files' `module_algo_map` / `name_algo_map` "
        "entries); modules no block matches keep `block_size`, `constraint`, `rescaled` and `bypass`. "
        "LyCORIS's form; with `fused_projections` a block covers every part of a fused layer or none.",
    )
    text_encoder_blocks: list[OftBlock] = option(
        factory=list,
        doc="Per-module block sizes, constraints and rescales of the text encoders' Diag-OFT layers "
        "([[adapter.text_encoder_blocks]] tables); modules no block matches keep the adapter's.",
    )


@frozen
class BoftAdapter:
    kind: Literal["boft"] = option(
        doc="Adapter kind: boft trains LyCORIS's BOFT (`algo = boft`, butterfly orthogonal fine-tuning): "
        "each targeted layer's output rows rotated by a product of butterfly stages, each stage "
        "block-diagonal orthogonal matrices (Cayley transforms of skew-symmetric blocks, starting at the "
        "identity) over rows regrouped in growing strides; exported as LyCORIS's `oft_blocks` / `rescale` / "
        "`alpha`."
    )
    block_size: int = option(
        4,
        doc="LyCORIS's `lora_dim` (kohya `network_dim`) for BOFT: a layer of width w is split into "
        "w / b blocks of b rows, b the smallest even number up to block_size whose w / b is a power of two, "
        "rising while one fits (LyCORIS's power2factorization; a width with no such split is refused when "
        "the adapter is built); log2-many stages (popcount(w / b - 1) + 1).",
        minimum=2,
        maximum=65536,
        example=8,
    )
    constraint: float = option(
        0.0,
        doc="COFT: all the skew-symmetric blocks together are scaled down to norm constraint x "
        "(output width) when larger (LyCORIS `constraint`, saved as `alpha`); 0 constrains nothing.",
        minimum=0,
    )
    rescaled: bool = _oft_rescaled()
    bypass: bool = _oft_bypass()
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    norm_rank_dropout: float = _norm_rank_dropout(own=False)
    conv_targets: list[str] = _rotated_conv_targets()
    exclude: list[str] = _exclude("rotation", _EXCLUDED_LAYER)
    max_norm: float = _lycoris_max_norm("BOFT")
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's whole rotation with this probability while training (LyCORIS `module_dropout`: "
        "ButterflyOFTModule.forward's one `torch.rand(1)` from torch's global generator per layer and "
        "training forward, the base output alone below the rate); with `fused_projections` one draw per "
        "fused layer, its parts skipping together.",
        minimum=0,
        maximum=1,
    )
    # kohya lycoris.kohya algo=boft on kohya's Flux / SD3: one module per fused Linear (lycoris_boft.py)
    fused_projections: bool = option(
        False,
        doc="One BOFT per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block stream, "
        "and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): LyCORIS's "
        "ButterflyOFTModule on kohya's fused Linear, whose butterfly stages rotate the stacked rows "
        "together (rows of every part mixed): the parts share one set of blocks (split and stages from "
        "the fused width and `block_size`; `constraint` x the fused width, its norm over all of them, "
        "`max_norm` scaling them once), each part's weight its rows of the rotated stacked weight, times "
        "its own rows of the rescale. lycoris.kohya `algo=boft` with flux_train_network.py / "
        "sd3_train_network.py; exported under kohya's module names (the blocks once, the rescale "
        "stacked). With `bypass` each part's output is its rows of the rotated stacked outputs (every "
        "part's base output computed). A [[adapter.blocks]] table covers every part of a fused layer or "
        "none (its block size the fused module's). false: each part splits its own width. "
        "Families without fused layers refuse it.",
    )
    blocks: list[OftBlock] = option(
        factory=list,
        doc="Per-module block sizes, constraints, rescales and bypass_mode of the denoiser's BOFT layers "
        "([[adapter.blocks]] tables: LyCORIS preset files' `module_algo_map` / `name_algo_map` entries' own "
        "dim, `constraint`, `rescaled`, `bypass_mode`); each matched layer split by its block's `block_size` "
        "as `block_size` splits the others (a width it cannot split refused alike).",
    )
    text_encoder_blocks: list[OftBlock] = option(
        factory=list,
        doc="Per-module block sizes, constraints and rescales of the text encoders' BOFT layers "
        "([[adapter.text_encoder_blocks]] tables); modules no block matches keep the adapter's.",
    )
    # lycoris.kohya --network_weights with algo=boft (train_network.py / sdxl_train_network.py)
    init_weights: str = option(
        "",
        doc="Start the butterfly blocks from this `.safetensors` file (lycoris.kohya `--network_weights` "
        "with train_network.py / sdxl_train_network.py, and with flux_train_network.py / "
        "sd3_train_network.py), relative to the spec file: LyCORIS's layout under kohya's module names "
        "(SDXL's U-Net in the original layout; on Flux / SD3 with `fused_projections`, one module per "
        "fused Linear, whose blocks its parts share and whose rescale rows each part takes its own of), "
        "each module's 4-D `oft_blocks` and `rescale` loaded as they are (their shapes the layer's, checked "
        "when the run loads it); its `alpha` is not read (ButterflyOFTModule keeps the constraint it was "
        "built with). A resumed run takes the checkpoint's weights instead. Empty: the blocks start at "
        "zero (the identity rotation).",
        example="previous-run/final/boft.kohya.safetensors",
    )
    init_partial: bool = option(
        False,
        doc="Load `init_weights` as lycoris.kohya's load_weights does (`load_state_dict(strict=False)`): "
        "an adapted layer the file lacks keeps its zero blocks (and its rescale of ones), and a file "
        "module or `rescale` the adapter does not have is ignored. false: the run refuses a file that does "
        "not cover the adapter exactly.",
    )
    init_alpha: Literal["match", "ignore"] = _init_alpha()


def _signed_alpha(
    what: str, rank: str, module: str, default=attrs.NOTHING, derived: str = "", note: str = ""
):
    """A GLoRA or T-LoRA alpha: any sign (LyCORIS's GLoRAModule and TLoraModule scale by alpha / rank, the
    sign kept); `module`: the LyCORIS class and its algo, e.g. "GLoRAModule (algo=glora)"."""
    return option(
        default,
        doc=f"Alpha of {what}; the update is scaled by alpha / {rank}. May be negative: LyCORIS's {module} "
        "keeps the sign (kohya `network_alpha` / `conv_alpha` / a preset entry's `alpha` below 0), so the "
        "update trains with its sign flipped and the export saves the negative alpha, as LyCORIS does; 0 is "
        f"the rank (scale 1), as LyCORIS reads it.{note}",
        derived=derived,
        example=-4.0,
    )


@frozen
class GloraBlock:
    """Rank and alpha of the denoiser's GLoRA layers one pattern names (a LyCORIS preset file's
    `module_algo_map` / `name_algo_map` entries with their own dim / alpha on an algo=glora network)."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted denoiser module's path (diffusers names, "
        "e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); the first block whose pattern "
        "matches a module sets its rank and alpha.",
        example="^down_blocks\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (GLoRA), or `lora`, `loha`, `lokr`, `full`, "
        "`ia3`, `diag-oft`, `boft`, `dylora` in its place (a LyCORIS preset file's `module_algo_map` / "
        "`name_algo_map` entry's `algo` on an `algo=glora` network), as `[[adapter.blocks]]` `kind` (a LoKr "
        "block's own `factor`, switches and `rank_stabilized`, a LoRA / LoHa / LoKr block's own `scalar` and "
        "`tucker`, a Diag-OFT / BOFT block's own `rescaled`, its `alpha` the constraint).",
        example="lora",
    )
    rank: int = option(
        doc="Rank of both low-rank pairs of the matched linear (and 1x1) layers; 0 adapts none of them. Up "
        "to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = _signed_block_alpha()
    conv_rank: int = option(
        0,
        doc="Rank of the matched 3x3 convolutions (when `conv_rank` of the adapter is above 0); 0 adapts "
        "none. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    conv_alpha: float = _signed_block_conv_alpha()
    unit: int = _block_unit()
    bypass: BlockSwitch = _block_bypass()
    # a block of kind lokr: a LyCORIS map entry's own split, switches and rs_lora; of kind lora / loha /
    # lokr: its own use_scalar (each kind's layers built alone, runtime/mixed_kinds.py kind_adapter)
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()
    scalar: BlockSwitch = _block_scalar()
    tucker: BlockSwitch = _block_tucker()  # a block of kind lora / loha / lokr (its entry's use_tucker)
    rescaled: BlockSwitch = _block_oft_rescaled()  # a block of kind diag-oft / boft (its entry's rescaled)
    on_input: bool = _block_on_input()  # a block of kind ia3 (its entry's train_on_input)
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()  # a block of kind tlora's
    data_init: bool = _block_data_init()  # a block of kind tlora (DBS622 beside GLoRA layers)
    dora: BlockSwitch = _block_dora()  # a block of kind lora / loha / lokr (GLoRAModule never decomposes)
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    lr_scale: float = _block_lr_scale("GLoRA (or the block's `kind`)")


@frozen
class GloraAdapter:
    kind: Literal["glora"] = option(
        doc="Adapter kind: glora trains LyCORIS's GLoRA (`algo = glora`): two low-rank pairs per layer, "
        "the update (W a1 a2 + b1 b2) x alpha / rank (W the frozen weight; a2 and b2 start at zero); "
        "exported as LyCORIS's `a1.weight` / `a2.weight` / `b1.weight` / `b2.weight` / `alpha`."
    )
    rank: int = _rank(8, "GLoRA")
    alpha: float = _signed_alpha(
        "the GLoRA layers",
        "rank",
        "GLoRAModule (algo=glora)",
        attrs.Factory(lambda self: float(self.rank), takes_self=True),
        "same as `rank` (scale 1.0)",
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    conv_rank: int = _conv_rank()
    conv_alpha: float = _signed_alpha(
        "the convolution adapters",
        "conv_rank",
        "GLoRAModule (algo=glora)",
        attrs.Factory(lambda self: float(self.conv_rank), takes_self=True),
        "same as `conv_rank` (scale 1.0)",
    )
    conv_targets: list[str] = _conv_targets()
    # LyCORIS's GLoRAModule switches (runtime/lycoris_glora.py)
    scalar: bool = option(
        False,
        doc="LyCORIS `use_scalar` for GLoRA: the update is multiplied by a trained scalar that starts at 0, "
        "and a2 and b2 start kaiming-uniform instead of zero (so the run still starts at the base model); "
        "the export folds the scalar into `a2.weight` and `b2.weight`, as LyCORIS saves it. Beside blocks "
        "of kind lora / loha / lokr: their layers' too, but where a block gives its own.",
    )
    module_dropout: float = _module_dropout()
    bypass: bool = option(
        False,
        doc="LyCORIS `bypass_mode` for GLoRA: the forward runs on activations, W (x + a1 a2 x s) + bias + "
        "b1 b2 x s (s = alpha / rank), where it otherwise adds op(x, ΔW) to the base output: the same update "
        "(up to rounding), and the only forward in which LyCORIS applies `rank_dropout` and `dropout`.",
    )
    rank_dropout: float = option(
        0.0,
        doc="With `bypass`: LyCORIS GLoRA's rank mask, one `torch.rand(rank)` per pair and forward while "
        "training, on a2 x and b2 x; LyCORIS keeps the ranks whose draw is BELOW the value (so 0.1 keeps "
        "about a tenth of them), unscaled (kohya's network never passes `rank_dropout_scale`). The layers "
        "of `[[adapter.blocks]]` of kind lora, loha or lokr draw their own LyCORIS class's mask, in its "
        "bypass forward with `bypass`: LoCon one `torch.rand(rank)` whose ranks ABOVE the value are kept, "
        "LoHa its update's output rows (`torch.rand(out)`, kept above it), LoKr none.",
        minimum=0,
        maximum=1,
    )
    norm_rank_dropout: float = _norm_rank_dropout()
    dropout: float = option(
        0.0,
        doc="With `bypass`: torch's dropout (kept values scaled by 1 / (1 - p)) on each pair's output, "
        "a1 a2 x and b1 b2 x, while training (LyCORIS `dropout`, kohya's `network_dropout`); on the layers "
        "of `[[adapter.blocks]]` of kind lora, loha or lokr, LyCORIS's bypass dropout of their update.",
        minimum=0,
        maximum=1,
    )
    max_norm: float = _blocks_max_norm("GLoRA")
    # kohya lycoris.kohya algo=glora on kohya's Flux / SD3: one module per fused Linear (lycoris_glora.py)
    fused_projections: bool = option(
        False,
        doc="One GLoRA per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block stream, "
        "and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): LyCORIS's "
        "GLoRAModule on kohya's fused Linear, whose update's rows are the parts' (W_p a1 a2 + b1_p b2) x "
        "alpha / rank: the parts share `a1`, `a2`, `b2` (and `scalar`'s scalar), each keeps its rows of "
        "`b1` (lycoris.kohya `algo=glora` with flux_train_network.py / sd3_train_network.py); exported under "
        "kohya's module names, `b1` stacked. Every part of a fused layer adapted; no dropouts with it (one "
        "draw spans every part). false: each part has its own GLoRA. Families without fused layers refuse "
        "it.",
    )
    blocks: list[GloraBlock] = option(
        factory=list,
        doc="Per-module ranks and alphas of the denoiser's GLoRA layers ([[adapter.blocks]] tables: LyCORIS "
        "preset files' `module_algo_map` / `name_algo_map` dims): modules no block matches keep `rank`, "
        "`alpha`, `conv_rank` and `conv_alpha`.",
    )
    text_encoder_blocks: list[TextEncoderBlock] = option(
        factory=list,
        doc="Per-module ranks and alphas of the text encoders' GLoRA layers "
        "([[adapter.text_encoder_blocks]] tables): modules no block matches keep `rank` and `alpha`.",
    )
    # lycoris.kohya --network_weights with algo=glora (train_network.py / sdxl_train_network.py)
    init_weights: str = option(
        "",
        doc="Start the GLoRA pairs from this `.safetensors` file (lycoris.kohya `--network_weights`), "
        "relative to the spec file: LyCORIS's layout under kohya's module names (SDXL's U-Net in the "
        "original layout; on Flux / SD3 with `fused_projections` one module per fused Linear, its `a1`, "
        "`a2`, `b2` shared by the parts and its `b1` rows each part's), each module's `a1.weight`, "
        "`a2.weight`, `b1.weight` and `b2.weight` loaded as they are (their shapes the layer's, checked when "
        "the run loads it); its `alpha` is not read (GLoRAModule keeps the scale it was built with, "
        "alpha / rank). With `scalar` every layer's scalar starts at 1, as LyCORIS's "
        "load hook sets it (the file's a2 / b2 hold it folded). A resumed run takes the checkpoint's "
        "weights instead. Empty: LyCORIS's init.",
        example="previous-run/final/glora.kohya.safetensors",
    )
    init_partial: bool = _fused_init_partial()
    init_alpha: Literal["match", "ignore"] = _init_alpha()


@frozen
class DyloraAdapter:
    kind: Literal["dylora"] = option(
        doc="Adapter kind: dylora trains DyLoRA (kohya's `networks.dylora`, LyCORIS's `algo = dylora`): a "
        "LoRA whose ranks are blocks of `unit`; each training micro-batch, each layer draws one block "
        "uniformly (from the run's seeded training generator, so a resumed run draws the same) and only that "
        "block trains at that step (the others get no gradient, so the optimizer skips them). Validation, "
        "sampling and the exports use every rank at alpha / rank: the saved `lora_down` / `lora_up` / "
        "`alpha` file is a plain LoRA, as both tools save it."
    )
    rank: int = _rank(4, "DyLoRA", note=" A multiple of `unit`.")
    alpha: float = _signed_dylora_alpha()
    unit: int = option(
        1,
        doc="Ranks per block (kohya networks.dylora `unit`, LyCORIS `block_size`): the rank drawn each step "
        "is a multiple of it and the block above it trains; `rank` (and `conv_rank`) must be multiples.",
        minimum=1,
        maximum=1024,
        example=4,
    )
    dylora_form: Literal["kohya", "lycoris"] = option(
        "kohya",
        doc="Whose training forward, with block b (0-based) drawn: `kohya` (networks.dylora: every rank "
        "in the update, scaled by alpha / rank x sqrt(rank / ((b + 1) x unit))) or `lycoris` (LyCORIS's "
        "DyLoraModule: only blocks 0..b in the update, scaled by alpha / (b + 1)). Either way block b "
        "alone trains; outside training both use every rank at alpha / rank.",
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    rank_dropout: float = option(
        0.0,
        doc="LyCORIS's `rank_dropout`, which DyLoraModule never reads: drawn by the layers of this "
        "adapter's blocks of other kinds as their LyCORIS modules draw it (LoCon's and full's row masks, "
        "LoHa's, Diag-OFT's rotations' dropout; a preset file's entries, beside IA^3, BOFT, GLoRA and "
        "DyLoRA layers drawing none). Without such blocks it changes nothing (DBS621).",
        minimum=0,
        maximum=1,
    )
    norm_rank_dropout: float = _norm_rank_dropout(own=False)
    conv_rank: int = _conv_rank()
    conv_alpha: float = _signed_conv_alpha()
    conv_targets: list[str] = _conv_targets()
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's whole update with this probability while training (LyCORIS DyLoraModule's "
        "`module_dropout`: one `torch.rand(1)` from torch's global generator per layer and forward, before "
        "anything else; the layer's drawn block does not train in a forward it skips).",
        minimum=0,
        maximum=1,
    )
    bypass: bool = option(
        False,
        doc='With `dylora_form = "lycoris"`: LyCORIS `bypass_mode`, its bypass forward, W x + up (down x) '
        "unscaled (alpha and the block scale left out), in training, validation and sampling alike. "
        "LyCORIS runs it only with one block per layer (`rank`, and `conv_rank` if set, equal to `unit`); "
        "the exports are the same `lora_down` / `lora_up` / `alpha` file, read at alpha / rank.",
    )
    dropout: float = _blocks_bypass_dropout("DyLoRA (kohya lycoris.kohya algo=dylora)", "DyLoraModule")
    max_norm: float = _blocks_max_norm("DyLoRA")
    # kohya lycoris.kohya algo=dylora on kohya's Flux / SD3: one module per fused Linear (runtime/dylora.py)
    fused_projections: bool = option(
        False,
        doc="One DyLoRA per original fused layer (Flux: attn.to_q, to_k, to_v of each double-block stream, "
        "and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): LyCORIS's "
        "DyLoraModule on kohya's fused Linear, one block drawn per fused layer and step: the parts share the "
        "down blocks and the draw, each keeps its rows of the up blocks (lycoris.kohya `algo=dylora` with "
        "flux_train_network.py / sd3_train_network.py); exported under kohya's module names, `lora_up` "
        "stacked. Every part of a fused layer adapted at one rank and alpha; `module_dropout` one draw per "
        "fused layer and forward, its parts skipping together. false: each part has its own DyLoRA. "
        "Families without fused layers refuse it.",
    )
    loraplus_ratio: float = _loraplus_ratio("kohya networks.dylora `loraplus_lr_ratio`")
    loraplus_denoiser_ratio: float = _loraplus_denoiser_ratio()
    loraplus_text_encoder_ratio: float = _loraplus_text_encoder_ratio()
    loraplus_zero: Literal["off", "held"] = _loraplus_zero()
    blocks: list[DyloraBlock] = option(
        factory=list,
        doc="Per-module ranks and alphas of the denoiser's DyLoRA layers ([[adapter.blocks]] tables: kohya "
        "networks.dylora `--dim_from_weights` files whose modules differ in rank or alpha, LyCORIS "
        "algo=dylora `--network_weights` alphas): modules no block matches keep `rank`, `alpha`, "
        "`conv_rank` and `conv_alpha`. Each layer draws among its own blocks of `unit` ranks.",
    )
    text_encoder_blocks: list[TextEncoderBlock] = option(
        factory=list,
        doc="Per-module ranks, alphas and units of the text encoders' DyLoRA layers "
        "([[adapter.text_encoder_blocks]] tables; ranks multiples of the block's `unit`, else the "
        "adapter's): modules no block matches keep `rank`, `alpha` and `unit`.",
    )
    init_weights: str = option(
        "",
        doc="Start the DyLoRA from this `.safetensors` file (kohya networks.dylora `--network_weights`), "
        "relative to the spec file: kohya's LoRA layout (`lora_down` / `lora_up` / `alpha`), as both tools "
        "and dbspec's `kohya_lora` export save a DyLoRA; each layer's rows and columns are cut into its "
        "blocks of `unit` ranks. Its layers, ranks and alphas must be the adapter's (checked at plan time); "
        "layers of a model that does not train are ignored. SD 1.x/2.x/SDXL only. A resumed run takes the "
        "checkpoint's weights instead. Empty: the blocks' own init.",
        example="previous-run/final/lora.kohya.safetensors",
    )
    init_partial: bool = option(
        False,
        doc="Load `init_weights` as kohya's networks.dylora loads `--network_weights` "
        "(`load_state_dict(strict=False)`): an adapted layer the file lacks keeps its init, and a file "
        "layer the adapter does not adapt is ignored. false: the run refuses a file that does not cover the "
        "adapter exactly.",
    )
    init_alpha: Literal["match", "ignore"] = _init_alpha()


@frozen
class TloraBlock:
    """Rank and alpha of the T-LoRA layers one pattern names (a LyCORIS preset file's `module_algo_map` /
    `name_algo_map` entries with algo tlora and their own dim / alpha on an algo=tlora network): each such
    layer starts from its own weight's SVD at its own rank."""

    pattern: str = option(
        doc="Python regular expression searched in each adapted module's path: the denoiser's diffusers "
        "names in `[[adapter.blocks]]` (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), "
        "`<component>.<module path>` in `[[adapter.text_encoder_blocks]]` (CLIP paths with their "
        "`text_model.` level, e.g. `text_encoder.text_model.encoder.layers.0.self_attn.q_proj`); the first "
        "block whose pattern matches a module sets its rank and alpha.",
        example="^down_blocks\\.0\\.",
    )
    kind: BlockKind = option(
        "adapter",
        doc="The matched layers' adapter algorithm: `adapter` (T-LoRA), or `lora`, `loha`, `lokr`, `full`, "
        "`ia3`, `glora`, `diag-oft`, `boft`, `dylora` in its place on their Linear and 1x1 layers (k x k "
        "convolutions among `conv_targets` at `conv_rank` too; a LyCORIS "
        "preset file's `module_algo_map` / `name_algo_map` entry's `algo` on an `algo=tlora` network, SD "
        "1.x/2.x and SDXL), as `[[adapter.blocks]]` `kind`, built with that kind's defaults and the "
        "adapter's `module_dropout` (Diag-OFT / BOFT: the rank their block-size hint, the alpha their "
        "constraint, their `rescaled`; DyLoRA: the rank in blocks of the block's `unit`).",
        example="lokr",
    )
    rank: int = option(
        doc="Rank of the matched T-LoRA layers: the number of their weight's first singular triplets the "
        "layer starts from and trains (LyCORIS pads ranks above min(out, in) with zero vectors); 0 adapts "
        "none of them. Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    alpha: float = option(
        doc="Alpha of the matched layers (scale alpha / rank, as TLoraModule scales); not 0, except on a "
        "block of `kind` diag-oft or boft, where it is their constraint (0: none; DBS611); below 0 only on "
        "T-LoRA layers (`kind` adapter or tlora: TLoraModule keeps the sign, see the adapter's `alpha`; "
        "DBS581 for other kinds)."
    )
    conv_rank: int = option(
        0,
        doc="Rank of the matched k x k convolutions (among the adapter's `conv_targets`) of a block of "
        "another `kind` (a LyCORIS preset file's entry of another algorithm on them: its dim, else the "
        "network's conv_dim); 0 adapts none. T-LoRA layers take none (TLoraModule cannot run a k x k "
        "convolution: DBS633). Up to 100000" + _LOKR_RANK + ".",
        minimum=0,
        maximum=LOKR_BLOCK_RANK_MAX,
    )
    conv_alpha: float = _signed_block_conv_alpha()
    unit: int = _block_unit()
    rescaled: BlockSwitch = _block_oft_rescaled()
    sig_type: Literal["principal", "last", "middle"] = _block_sig_type()
    data_init: bool = _block_data_init()
    on_input: bool = _block_on_input()  # a block of kind ia3 (its entry's train_on_input)
    # a block of kind lokr: its LoKr split and switches (its entry's own, else the network's); of kind lora /
    # loha / lokr: LyCORIS's scalar (the T-LoRA adapter has none: "adapter" is off)
    factor: int = _block_factor()
    decompose_both: BlockSwitch = _block_switch("decompose_both", "decompose_both")
    full_matrix: BlockSwitch = _block_switch("full_matrix", "full_matrix")
    unbalanced_factorization: BlockSwitch = _block_switch(
        "unbalanced_factorization", "unbalanced_factorization"
    )
    rank_stabilized: BlockSwitch = _block_rank_stabilized()  # a block of kind lokr (its entry's rs_lora)
    tucker: BlockSwitch = _block_tucker()  # a block of kind lora / loha / lokr (k x k convolutions)
    scalar: BlockSwitch = _block_scalar()
    dora: BlockSwitch = _block_dora()  # a block of kind lora / loha / lokr (TLoraModule never decomposes)
    dora_axis: Literal["adapter", "output", "input"] = _block_dora_axis()
    bypass: BlockSwitch = option(
        "adapter",
        doc="LyCORIS `bypass_mode` of the matched T-LoRA layers in place of the adapter's `bypass` (a preset "
        "file's map entry's own): `on` TLoraModule's bypass forward (the update on activations), `off` its "
        "default one, `adapter` the adapter's. The same update up to rounding; the adapter's `dropout` "
        "acts on the layers in the bypass forward alone, as LyCORIS applies it.",
        example="on",
    )


@frozen
class TloraAdapter:
    kind: Literal["tlora"] = option(
        doc="Adapter kind: tlora trains LyCORIS's T-LoRA (`algo = tlora`) as kohya's scripts run it: "
        "each targeted layer starts from the SVD of its frozen weight, Q (rank x in) and P (out x rank) "
        "its first singular vectors and the trained singular values λ its first singular values, with a "
        "frozen copy Q0, P0, λ0 of that start; the update is (P diag(λ) Q - P0 diag(λ0) Q0) x alpha / "
        "rank, so the run starts at the base model. No timestep rank mask (kohya never sets LyCORIS's: "
        "every rank trains at every timestep). Linear and 1x1 convolution layers only (LyCORIS's T-LoRA "
        "cannot run a k x k convolution). Exported as LyCORIS's `q_layer.weight` / `p_layer.weight` / "
        "`lambda_layer` / `alpha`; a loader recomputes the frozen copy from the base model."
    )
    rank: int = _rank(8, "T-LoRA")
    alpha: float = _signed_alpha(
        "the T-LoRA layers",
        "rank",
        "TLoraModule (algo=tlora)",
        attrs.Factory(lambda self: float(self.rank), takes_self=True),
        "same as `rank` (scale 1.0)",
        " With `max_norm` a negative scale makes TLoraModule.apply_max_norm's norm (the update's times alpha "
        "/ rank) negative, clamped up to half the limit: those layers are never scaled, as in LyCORIS.",
    )
    denoiser_targets: list[str] = _denoiser_targets()
    text_encoder_targets: list[str] = _text_encoder_targets()
    text_encoder_2_targets: list[str] = _text_encoder_2_targets()
    text_encoder_norms: list[str] = _text_encoder_norms()
    text_encoder_2_norms: list[str] = _text_encoder_2_norms()
    denoiser_norms: list[str] = _denoiser_norms()
    # TLoraModule never reads the network's rank_dropout: the offsets' own (0 unless set), as DyLoRA's
    norm_rank_dropout: float = _norm_rank_dropout(own=False)
    conv_targets: list[str] = option(
        factory=list,
        doc="Denoiser k x k convolution names (suffixes) that `[[adapter.blocks]]` of another `kind` may "
        "adapt at their `conv_rank` (a LyCORIS preset file's entries of other algorithms on the ResNets' "
        "convolutions of an `algo=tlora` network); the T-LoRA layers never take one (TLoraModule cannot "
        "run a k x k convolution). Empty: no convolution.",
    )
    module_dropout: float = option(
        0.0,
        doc="Skip a layer's whole update with this probability while training (LyCORIS `module_dropout`: "
        "TLoraModule.forward's one `torch.rand(1)` from torch's global generator per layer and training "
        "forward, first, the base output alone below the rate).",
        minimum=0,
        maximum=1,
    )
    rank_dropout: float = option(
        0.0,
        doc="LyCORIS's `rank_dropout`, which TLoraModule never reads: drawn by the layers of this adapter's "
        "blocks of other kinds as their LyCORIS modules draw it (LoCon's and full's row masks, LoHa's, "
        "Diag-OFT's rotations' dropout; with `bypass` beside LoCon blocks alone LoConModule's bypass rank "
        "mask; a preset file's entries, beside IA^3, BOFT, GLoRA and DyLoRA layers drawing none), in "
        "forward order with every layer's `module_dropout` draw. Without such blocks it changes nothing "
        "(DBS624).",
        minimum=0,
        maximum=1,
    )
    max_norm: float = _lycoris_max_norm("T-LoRA")
    bypass: bool = option(
        False,
        doc="LyCORIS `bypass_mode` for T-LoRA: the update runs on activations, the base output plus "
        "(P (λ ⊙ Q x) - P0 (λ0 ⊙ Q0 x)) x alpha / rank, where it otherwise adds op(x, ΔW) to the base "
        "output: the same update (up to rounding), and the only forward in which LyCORIS applies `dropout`.",
    )
    dropout: float = option(
        0.0,
        doc="With `bypass`: torch's dropout (kept values scaled by 1 / (1 - p)) on the update's output while "
        "training, after `module_dropout`'s draw (LyCORIS `dropout`, kohya's `network_dropout`); on the "
        "layers in the bypass forward alone (the adapter's `bypass`, or a block's own `bypass = \"on\"`).",
        minimum=0,
        maximum=1,
    )
    # lycoris.kohya --network_weights with algo=tlora (train_network.py / sdxl_train_network.py)
    init_weights: str = option(
        "",
        doc="Start the T-LoRA layers from this `.safetensors` file (lycoris.kohya `--network_weights`), "
        "relative to the spec file: LyCORIS's layout under kohya's module names (SDXL's U-Net in the "
        "original layout; Flux / SD3 / Chroma with `fused_projections`: one module per fused Linear, its "
        "`p_layer.weight` cut into the parts' rows, `q_layer.weight` and `lambda_layer` into the Parameters "
        "they share), each module's `q_layer.weight`, `p_layer.weight` and `lambda_layer` loaded as "
        "they are (their shapes the layer's, checked when the run loads it); the frozen start Q0, P0, λ0 "
        "stays the base model's SVD, as TLoraModule keeps it, and the file's `alpha` is not read "
        "(TLoraModule keeps the scale it was built with, alpha / rank). A resumed run takes the "
        "checkpoint's weights instead. Empty: the SVD start.",
        example="previous-run/final/tlora.kohya.safetensors",
    )
    init_partial: bool = _fused_init_partial()
    # kohya lycoris.kohya algo=tlora on kohya's Flux / SD3 / Chroma: one module per fused Linear
    fused_projections: bool = option(
        False,
        doc="One T-LoRA per original fused layer (Flux / Chroma: attn.to_q, to_k, to_v of each double-block "
        "stream, and the single blocks' to_q, to_k, to_v and proj_mlp; SD3: each stream's q, k, v): "
        "LyCORIS's TLoraModule on kohya's fused Linear starts from ONE SVD of the stacked weight (the parts' "
        "rows in the original order), so the parts share Q and the trained singular values λ (and the "
        "frozen Q0, λ0), each keeping its rows of P and P0; `module_dropout` one draw per fused layer "
        "(lycoris.kohya `algo=tlora` with flux_train_network.py / sd3_train_network.py); exported under "
        "kohya's module names, `p_layer.weight` stacked. Every part of a fused layer adapted at one rank, "
        "alpha and `sig_type`; `max_norm` one norm of the stacked update, the shared λ scaled once; "
        "`bypass`'s `dropout` one mask over the stacked output, each part its rows. false: each part starts "
        "from its own SVD. Families without fused layers refuse it.",
    )
    blocks: list[TloraBlock] = option(
        factory=list,
        doc="Per-module ranks and alphas of the denoiser's T-LoRA layers ([[adapter.blocks]] tables: LyCORIS "
        "preset files' `module_algo_map` / `name_algo_map` entries' own dim / alpha): modules no block "
        "matches keep `rank` and `alpha`.",
    )
    text_encoder_blocks: list[TloraBlock] = option(
        factory=list,
        doc="Per-module ranks and alphas of the text encoders' T-LoRA layers "
        "([[adapter.text_encoder_blocks]] tables): modules no block matches keep `rank` and `alpha`.",
    )


Adapter = Union[
    NoAdapter,
    LoraAdapter,
    LohaAdapter,
    LokrAdapter,
    FullAdapter,
    Ia3Adapter,
    DiagOftAdapter,
    BoftAdapter,
    GloraAdapter,
    DyloraAdapter,
    TloraAdapter,
]
ADAPTER_VARIANTS: dict[str, type] = {
    "none": NoAdapter,
    "lora": LoraAdapter,
    "loha": LohaAdapter,
    "lokr": LokrAdapter,
    "full": FullAdapter,
    "ia3": Ia3Adapter,
    "diag-oft": DiagOftAdapter,
    "boft": BoftAdapter,
    "glora": GloraAdapter,
    "dylora": DyloraAdapter,
    "tlora": TloraAdapter,
}
# The adapter kinds that train added weights on a frozen base (everything but a full fine-tune); LyCORIS's
# full algo trains a copy of its layers' weights beside the frozen ones.
LowRankAdapter = (
    LoraAdapter,
    LohaAdapter,
    LokrAdapter,
    FullAdapter,
    Ia3Adapter,
    DiagOftAdapter,
    BoftAdapter,
    GloraAdapter,
    DyloraAdapter,
    TloraAdapter,
)


@frozen
class Train:
    denoiser: bool = option(True, doc="Train the denoiser (the UNet of SD1, SD2 and SDXL).")
    text_encoder: bool = option(
        False,
        doc="Also train the text encoder(s) (SDXL's second one as `text_encoder_2` says); improves likeness "
        "(HF study) at the cost of memory.",
    )
    text_encoder_2: bool = option(
        attrs.Factory(lambda self: self.text_encoder, takes_self=True),
        doc="Train the second text encoder (SDXL's OpenCLIP-bigG); false freezes it while the first trains "
        "(kohya's sdxl_train.py with learning_rate_te2 = 0), true with `text_encoder = false` trains it "
        "alone (learning_rate_te1 = 0), at `optimizer.text_encoder_2_lr`.",
        derived="same as `text_encoder`",
    )
    t5: bool = option(
        False,
        doc="Also train the T5-XXL text encoder (Flux, SD3, Chroma) with the adapter on its attention "
        "q/k/v/o and gated MLP wi_0/wi_1/wo projections (LoRA: kohya's lora_flux / lora_sd3 "
        "`train_t5xxl=True`; LyCORIS's kinds: the modules lycoris.kohya builds there), at the adapter's rank "
        "and alpha (full: trained copies of those Linears); its outputs are then not cached. "
        "Needs an adapter (kohya's networks.oft and networks.dylora forms have no T5 layers).",
    )
    text_encoder_stop_step: int = option(
        0,
        doc="Freeze the text encoder after this many optimizer steps; 0 trains it for the whole run.",
        minimum=0,
    )
    text_encoder_idle: Literal["none", "kohya"] = option(
        "none",
        doc="What a CLIP text encoder that does not train (train.text_encoder / text_encoder_2 false) holds. "
        '"none": nothing, it runs as loaded. "kohya": the adapter anyway, as kohya\'s LoRA scripts build '
        "it at text_encoder_lr 0 (train_network.py's apply_to reads no rate), on each such encoder it has "
        "layers for (targets, norms or blocks; SD 1.x/2.x's and SDXL's CLIP, Flux's CLIP-L, SD3's CLIP-L and "
        "CLIP-G; T5-XXL: `train.t5_idle`): fresh (the encoder's output "
        "the base's) or `adapter.init_weights`' modules for it. The encoder then runs as a trained one "
        "(under grad, in training mode, its outputs not cached), but its adapter weights stay out of the "
        "optimizer and never move; their gradients, never cleared, add up step after step and count in "
        "`optimizer.max_grad_norm`'s clip (which scales that sum in place), as kohya's. Checkpoints keep "
        'them, and the exported file holds the encoder\'s modules. Needs an adapter (not `kind = "none"`).',
    )
    t5_idle: Literal["none", "kohya"] = option(
        "none",
        doc="What T5-XXL (Flux, SD3, Chroma) holds when it does not train (train.t5 false). "
        '"none": nothing, it runs as loaded. "kohya": the adapter anyway, as kohya builds it at T5\'s '
        "text_encoder_lr 0 (lora_flux / lora_sd3 with `train_t5xxl=True`; lycoris.kohya's modules a preset "
        "or file puts on T5, in its one text group), on train.t5's layers (attention q/k/v/o, gated MLP "
        "wi_0/wi_1/wo, at the adapter's rank or `text_encoder_blocks`'): fresh, or `adapter.init_weights`' "
        "modules for it. T5 then runs as train.text_encoder_idle's encoders do: under grad, its outputs "
        "not cached, its adapter weights out of the optimizer and never moving, their gradients added up "
        "uncleared and counted in `optimizer.max_grad_norm`'s clip (after the CLIP encoders', kohya's "
        "network order), kept in checkpoints, its modules in the exported file. Needs `adapter.kind` "
        '"lora", "lokr", "loha" or "full", and train.t5 false.',
    )
    text_encoder_mode: Literal["trained", "train", "eval"] = option(
        "trained",
        doc="The text encoders' module mode in training steps, which switches their dropout: trained puts "
        'each one that trains in train mode and the frozen ones in eval mode; "train" puts every text '
        'encoder in train mode, trained or frozen, and "eval" every one in eval mode (kohya\'s LoRA scripts: '
        "train with --gradient_checkpointing, eval without). Only T5-XXL (Flux, SD3) has dropout (rate 0.1): "
        'with "train" it encodes with dropout at every step, drawn from the run\'s seeded generator, so its '
        "outputs are not cached. Validation and evaluation encode in eval mode unless "
        'validation.text_encoder_mode = "training".',
    )


@frozen
class Dataset:
    name: str = option(doc="A short unique name, used in the plan and in messages.", example="subject")
    path: str = option(doc="Image folder, relative to the spec file.", example="data/ohwx-dog")
    role: Literal["instance", "class", "eval"] = option(
        "instance",
        doc="instance: the subject to learn; class: regularisation images for prior preservation; eval: "
        "images of the subject never trained, scored by the evaluation loss (docs/evaluation.md).",
    )
    recursive: bool = option(False, doc="Also scan sub-folders.")
    group: str = option(
        "",
        doc="The `[[groups]]` entry (by name) whose batch size and bucket settings this dataset trains with; "
        "empty = the default group ([schedule] batch_size and [buckets]). Batches never mix groups, and "
        "class "
        "images are balanced against the instance images of their own group (kohya's `[[datasets]]`).",
        example="closeups",
    )
    layout: Literal["folder", "kohya_folders"] = option(
        "folder",
        doc="folder: `path` holds the images. kohya_folders: `path` holds kohya's `N_class tokens` "
        "sub-folders (e.g. `10_sks dog`), listed at plan time: each sub-folder's images repeat N x `repeats` "
        'times and the words after `N_` are its `prompt` (the caption fallback with captions = "textfile", '
        "where `name_x_y_w_h.png` also finds `name.txt` as kohya does); loose files and names without a "
        "number are skipped with a warning; a folder named only `N` gives an empty caption, with a warning. "
        "A `masks` folder holds the same sub-folders.",
    )
    metadata: str = option(
        "",
        doc="kohya's fine-tuning metadata file (`--in_json`, a subset's `metadata_file`), relative to the "
        "spec file: a JSON object `{image key: {caption, tags, image_size, ...}}` as kohya's "
        "finetune/merge_captions_to_metadata.py and merge_dd_tags_to_metadata.py write it, or a `.jsonl` "
        "file of `{image_path, caption, tags, image_size}` lines. The images it lists train, in its order, "
        "each `repeats` times, and `captions` is not read: each caption is its `caption` and `tags` "
        "joined with `caption_separator` (the tags alone without a caption; with `enable_wildcard` the "
        "tags follow every caption line), as kohya's FineTuningDataset joins them. An absolute key is the "
        "image; a relative key is joined to `path`, and a key without its extension (the merge scripts "
        "write the file stem unless `--full_path`) finds `path/<key>.png` (.jpg, .jpeg, .webp, .bmp). "
        "Buckets come from the images' sizes as for a folder (kohya's `train_resolution` and `npz` "
        "latents are not read; dbspec caches its own latents). Empty: the images of `path`.",
        example="data/meta_lat.json",
    )
    captions: Literal["prompt", "textfile", "filename"] = option(
        "prompt",
        doc="Caption source: prompt gives every image `prompt`; textfile reads a sidecar file with "
        "`caption_extension`; filename uses the file name (without extension, underscores as spaces).",
    )
    prompt: str = option(
        "",
        doc='Caption used by captions = "prompt", and the prompt for generated class images.',
        example="a photo of ohwx dog",
    )
    caption_extension: str = option(".txt", doc='Sidecar caption extension for captions = "textfile".')
    missing_captions: Literal["error", "empty"] = option(
        "error",
        doc='captions = "textfile" without a `prompt`: an image with no caption file stops the plan (error), '
        "or trains with an empty caption (`caption_prefix` / `caption_suffix` still added), with one warning "
        "for the dataset (empty: kohya's DreamBooth subsets without class tokens).",
    )
    caption_prefix: str = option("", doc="Text put before every caption (joined with a space).")
    caption_suffix: str = option("", doc="Text put after every caption (joined with a space).")
    repeats: int = option(1, doc="How many times each image is seen per epoch.", minimum=1, maximum=10_000)
    resolution: int = option(
        512, doc="Training resolution: buckets keep this pixel area.", minimum=64, maximum=4096
    )
    resolution_height: int = option(
        0,
        doc='A non-square resolution `resolution` x `resolution_height` (kohya\'s `resolution = "W,H"`): '
        "aspect buckets keep the area W*H (kohya's max area) with the range checked against both sides, "
        "no_upscale shrinks to that area, square mode (buckets off) cuts W x H. 0 = `resolution` (square).",
        minimum=0,
        maximum=4096,
        example=512,
    )
    crop: Literal["center", "random"] = option(
        "center", doc="Crop placement after the cover-resize into a bucket."
    )
    flip: bool = option(False, doc="Random horizontal flips.")
    exif_orientation: Literal["apply", "ignore"] = option(
        "apply",
        doc="apply: images (and mask files) with an EXIF orientation tag train upright, as viewers show them "
        "(diffusers does the same); ignore: they train as the pixels are stored (kohya), so a tag that "
        "turns by 90 degrees swaps the width and height used for the bucket. Their cached latents differ.",
    )
    resize: Literal["cover", "none"] = option(
        "cover",
        doc="cover: each image is resized to cover its bucket, then cropped (`crop`); none: the image is "
        "cropped to the resolution without resizing, as kohya does with buckets and cache_latents off "
        '(needs buckets.mode = "square"; an image smaller than the resolution is an error, DBS414; '
        "images with a `face_crop` box keep their face crop).",
    )
    color_aug: bool = option(
        False,
        doc="kohya's colour augmentation (`color_aug`): a third of the samples get a hue shift of up to 8 "
        "(OpenCV's 0-179 hue) or a gamma in [0.95, 1.05], drawn per sample and step; latents of the dataset "
        "are then not cached (as kohya refuses the cache with it).",
    )
    face_crop: list[float] = option(
        factory=list,
        doc="kohya's face-crop augmentation (`face_crop_aug_range`): two numbers [lo, hi]; an image named "
        "`name_cx_cy_w_h.ext` (its face centre and size in pixels) is scaled so the face spans 1/hi to 1/lo "
        "of the resolution (a scale drawn per sample and step), then cut around the face (with crop = "
        '"random", shifted as kohya shifts it). Needs buckets.mode = "square" (kohya applies it only with '
        "buckets off); images without a face box keep the square crop; the dataset's latents are not cached. "
        "A reversed pair runs as kohya's dataset config runs it: the one scale of [hi, hi], no draw, the "
        "shift of a range kept (DBS616). Empty = off.",
        example=[2.0, 4.0],
    )
    masks: str = option(
        "",
        doc="Folder of masks paired with images by file stem (white = train, black = "
        "ignore); empty for none.",
    )
    mask_from_alpha: bool = option(False, doc="Use each image's alpha channel as its loss mask.")
    mask_channel: Literal["luminance", "red"] = option(
        "luminance",
        doc="How a `masks` file becomes the loss mask: its luminance (Pillow's grayscale, "
        "0.299 R + 0.587 G + 0.114 B) or its red channel (kohya's masked loss with conditioning_data_dir "
        "reads red). The same for grayscale masks; inert without `masks`.",
    )
    preserve_output: bool = option(
        False,
        doc="Output preservation (kohya's `diff_output_preservation`): the loss target of this dataset's "
        "samples is the frozen base model's own prediction (the adapter switched off) on the same noisy "
        "input, timestep and caption, so training on them keeps the model's output there unchanged. "
        "Costs one extra no-grad denoiser forward over these samples per step. Needs an `[adapter]` on "
        "the denoiser. Flow families compare it in the form the loss compares (after "
        "`loss.flow_prediction`); timestep weights (min-SNR, debiased, ...), masks and, on a class "
        "dataset, `loss.prior_weight` apply as usual; caches are unaffected.",
    )
    generate: int = option(
        0,
        doc="Class datasets: make the folder hold at least this many images, generating the missing ones "
        "with the base model from `prompt`, encoded as training encodes it (`model.max_tokens`, "
        "`t5_max_length` and the attention masks). The plan lists every generated image by its seed, made "
        "already or not, so a run interrupted after making them resumes with the same spec (`--resume`).",
        minimum=0,
        maximum=100_000,  # the plan lists one seed per image to generate
    )
    # Class-image sampling. Defaults follow diffusers' DreamBooth example (the pipeline's own defaults, a DDPM
    # scheduler); steps, guidance and scheduler change the images, so they are part of the manifest key.
    generate_scheduler: Literal[
        "ddpm", "ddim", "euler", "euler_a", "dpmpp", "unipc", "pndm", "flow_euler"
    ] = option("ddpm", doc="Sampling scheduler for generated class images.")
    generate_steps: int = option(
        50, doc="Inference steps per generated class image.", minimum=1, maximum=1000
    )
    generate_guidance: float = option(
        7.5, doc="Classifier-free guidance scale for generated class images.", minimum=0
    )
    generate_batch: int = option(
        4,
        doc="Class images generated per pipeline call (memory only: each image has its own seed).",
        minimum=1,
        maximum=256,
    )
    min_image_size: int = option(
        64,
        doc="Images whose short side is below this many pixels are problems (see on_bad_image).",
        minimum=1,
    )
    on_bad_image: Literal["error", "skip"] = option(
        "error",
        doc="What to do with unreadable, truncated or too-small images: stop with an error, or skip them.",
    )
    # Caption processing: kohya's per-subset options, their names and meaning (dbspec/plan/captions.py applies
    # them in kohya's order). Captions that change per step cannot use the text-embedding cache.
    shuffle_caption: bool = option(
        False, doc="Shuffle the caption's tags (split at `caption_separator`) every time a sample is drawn."
    )
    caption_separator: str = option(
        ",",
        doc="What separates tags for shuffling, tag dropout and warm-up (kohya caption_separator); with "
        "`metadata`, also what joins an image's caption and tags.",
    )
    keep_tokens: int = option(
        0,
        doc="The first N tags stay in front, never shuffled or dropped (when no `keep_tokens_separator` is "
        "in the caption).",
        minimum=0,
        maximum=1000,
    )
    keep_tokens_separator: str = option(
        "",
        doc="Marks the fixed part of a caption: tags before it (and after a second one) stay fixed, the tags "
        'between are shuffled/dropped; e.g. "|||". It stays in the text when nothing '
        "shuffles, drops or warms up.",
        example="|||",
    )
    secondary_separator: str = option(
        "",
        doc="A separator inside a tag (kept together when shuffling), replaced by "
        "`caption_separator` at the end.",
        example=";;;",
    )
    enable_wildcard: bool = option(
        False,
        doc="`{a|b|c}` in a caption becomes one choice per step, and a multi-line caption file gives one "
        "random line per step (otherwise only its first line is read).",
    )
    caption_dropout_rate: float = option(
        0.0, doc="Probability that a sample trains with an empty caption.", minimum=0, maximum=1
    )
    caption_dropout_every_n_epochs: int = option(
        0,
        doc="Train every N-th epoch (counted from 1) with empty captions; 0 never.",
        minimum=0,
        maximum=1_000_000,
    )
    caption_tag_dropout_rate: float = option(
        0.0,
        doc="Probability that each tag (outside the fixed ones) is left out when a sample is drawn.",
        minimum=0,
        maximum=1,
    )
    token_warmup_min: int = option(
        1, doc="Tags used at step 0 by the token warm-up.", minimum=0, maximum=1000
    )
    token_warmup_step: float = option(
        0.0,
        doc="Token warm-up: the tags used grow from `token_warmup_min` to all by this step; below 1 it is a "
        "fraction of the run's steps; 0 turns it off.",
        minimum=0,
        example=0.2,
    )
    # kohya's per-dataset validation_split (evaluation.split's fraction for this dataset)
    eval_split: float = option(
        0.0,
        doc="This instance dataset's own `evaluation.split` fraction (kohya's dataset-level "
        "`validation_split`, which each `[[datasets]]` of a kohya config sets for itself): the dataset is "
        "split with it, drawn and rounded as `evaluation.split` describes; 0: `evaluation.split`. Needs "
        "`evaluation.split` and a dataset it splits.",
        minimum=0.0,
        maximum=1.0,
        example=0.5,
    )
    # kohya's per-dataset validation_seed
    eval_seed: int = option(
        -1,
        doc="This instance dataset's own seed for `evaluation.split` (kohya's dataset-level "
        "`validation_seed`, which each `[[datasets]]` of a kohya config sets for itself): its shuffles are "
        "drawn from `random.seed(eval_seed)`, reseeded before each and never drawing on the `split_draw = "
        '"stream"` stream; -1: `evaluation.seed` and `split_draw`. Needs `evaluation.split` and a dataset it '
        "splits.",
        minimum=-1,
        example=42,
    )


@frozen
class Buckets:
    mode: Literal["aspect", "square"] = option(
        "aspect",
        doc="aspect: kohya-compatible aspect-ratio buckets; square: every image is cover-resized and cropped "
        "to resolution x resolution.",
    )
    # Bounded: the compiler enumerates every side from min to max (twice the largest resolution is 8192).
    min_size: int = option(
        0, doc="Smallest bucket side in pixels; 0 = half the dataset resolution.", minimum=0, maximum=16384
    )
    max_size: int = option(
        0, doc="Largest bucket side in pixels; 0 = twice the dataset resolution.", minimum=0, maximum=16384
    )
    step: int = option(64, doc="Bucket sides are multiples of this.", minimum=8)
    no_upscale: bool = option(
        False, doc="Never upscale: small images get a bucket of their own size (kohya bucket_no_upscale)."
    )


@frozen
class Group:
    """One kohya `[[datasets]]` entry: datasets that share a batch size and bucket settings."""

    name: str = option(doc="A short unique name, referred to by `group` in [[datasets]].", example="closeups")
    batch_size: int = option(
        0,
        doc="Images per batch (per process) for this group's datasets; 0 = schedule.batch_size.",
        minimum=0,
        derived="same as `schedule.batch_size`",
    )
    # Bucket keys not written in the group take [buckets]' values (the compiler reads which were written).
    bucket_mode: Literal["aspect", "square"] = option(
        "aspect",
        doc="buckets.mode for this group's datasets; not written = buckets.mode.",
        derived="same as `buckets.mode`",
    )
    bucket_min_size: int = option(
        0,
        doc="buckets.min_size for this group's datasets (0 = half the dataset resolution); not written = "
        "buckets.min_size.",
        minimum=0,
        maximum=16384,
        derived="same as `buckets.min_size`",
    )
    bucket_max_size: int = option(
        0,
        doc="buckets.max_size for this group's datasets (0 = twice the dataset resolution); not written = "
        "buckets.max_size.",
        minimum=0,
        maximum=16384,
        derived="same as `buckets.max_size`",
    )
    bucket_step: int = option(
        64,
        doc="buckets.step for this group's datasets; not written = buckets.step.",
        minimum=8,
        derived="same as `buckets.step`",
    )
    bucket_no_upscale: bool = option(
        False,
        doc="buckets.no_upscale for this group's datasets; not written = buckets.no_upscale.",
        derived="same as `buckets.no_upscale`",
    )


LossKind = Literal["mse", "huber", "l1", "pseudo_huber", "smooth_l1"]


@frozen
class Loss:
    kind: LossKind = option(
        "mse",
        doc="Element-wise loss. mse, l1; huber: torch's Huber with `huber_delta`; pseudo_huber: kohya's "
        "loss_type huber, 2c(sqrt(x^2 + c^2) - c); smooth_l1: kohya's loss_type smooth_l1, 2(sqrt(x^2 + c^2) "
        "- c) (not torch's SmoothL1Loss); c follows `huber_schedule`.",
    )
    huber_delta: float = option(0.1, doc='Huber threshold (kind = "huber").', exclusive_minimum=0)
    prior: Literal["images", "base_model"] = option(
        "images",
        doc="Prior-preservation target for class datasets: images trains on class images; base_model uses "
        "the frozen base model's prediction on the same noisy latents as the target.",
    )
    prior_weight: float = option(1.0, doc="Weight of the prior-preservation term.", minimum=0)
    mask_mean: Literal["mask", "image"] = option(
        "mask",
        doc="How a masked sample's loss is averaged (datasets with `masks` or `mask_from_alpha`). mask: the "
        "sum of loss x mask over the mask's area, so a small mask does not shrink the loss; image: the mean "
        "of loss x mask over the whole latent image (kohya's `apply_masked_loss`, then the mean).",
    )
    min_snr_gamma: float = option(
        0.0, doc="Min-SNR weighting gamma (5 is common); 0 turns it off.", minimum=0, example=5.0
    )
    noise_offset: float = option(
        0.0, doc="Offset noise strength (0.05-0.1 typical); 0 turns it off.", minimum=0
    )
    zero_terminal_snr: bool = option(
        False, doc="Rescale the noise schedule to zero terminal SNR (use with v_prediction)."
    )
    # kohya-ss sd-scripts' noise and loss options (train_util.get_noise_noisy_latents_and_timesteps,
    # get_huber_threshold_if_needed, custom_train_functions); each is off by default.
    prior_reduction: Literal["separate", "per_sample"] = option(
        "separate",
        doc="How instance and class samples of a batch combine. separate: the instance mean (timestep "
        "weights applied) plus prior_weight times the class mean (diffusers' DreamBooth); per_sample: "
        "kohya's mean over the batch of each sample's loss times prior_weight (class samples) and the "
        "timestep weights (all samples).",
    )
    huber_schedule: Literal["constant", "exponential", "snr"] = option(
        "snr",
        doc="How c of pseudo_huber/smooth_l1 follows the timestep (kohya): constant c * huber_scale; "
        "exponential huber_scale * exp(t ln(c) / T); snr (1 - c) / (1 + sqrt((1 - ac_t) / ac_t))^2 + c.",
    )
    huber_c: float = option(
        0.1,
        doc="kohya's huber_c: the pseudo-Huber threshold (or its floor, by schedule).",
        exclusive_minimum=0,
    )
    huber_scale: float = option(
        1.0,
        doc="kohya's huber_scale: multiplies c in the constant and exponential schedules.",
        exclusive_minimum=0,
    )
    noise_offset_random_strength: bool = option(
        False, doc="Draw each step's offset strength uniformly in [0, noise_offset) (kohya)."
    )
    adaptive_noise_scale: float = option(
        0.0,
        doc="Add this times |mean of each latent channel| to the noise offset (kohya); 0 turns it off. "
        "Needs noise_offset.",
        example=0.5,
    )
    multires_noise_iterations: int = option(
        0,
        doc="Multi-resolution (pyramid) noise levels added to the noise, 6-10 typical "
        "(kohya); 0 turns it off.",
        minimum=0,
        maximum=64,
        example=6,
    )
    multires_noise_discount: float = option(
        0.3, doc="Weight ratio between successive multi-resolution noise levels.", minimum=0, maximum=1
    )
    ip_noise_gamma: float = option(
        0.0,
        doc="Input-perturbation noise (arXiv 2301.11706): the noisy latents get noise + gamma * N(0, 1) "
        "while the target keeps the noise; 0.1 typical, 0 turns it off.",
        minimum=0,
        example=0.1,
    )
    ip_noise_gamma_random_strength: bool = option(
        False, doc="Draw each step's input-perturbation strength uniformly in [0, ip_noise_gamma) (kohya)."
    )
    min_timestep: int = option(
        0,
        doc='Smallest training timestep (inclusive). Above max_timestep only with flow_draw = "floored", '
        "which then draws t = floor(shift(u) (max_timestep − min_timestep) + min_timestep) from min_timestep "
        "down toward max_timestep (kohya's sd3_train_network.py with reversed bounds).",
        minimum=0,
        maximum=999,
    )
    max_timestep: int = option(
        1000,
        doc="Training timesteps are drawn below this (exclusive; 1000 = the whole schedule); equal to "
        "min_timestep trains that one timestep.",
        minimum=1,
        maximum=1000,
    )
    debiased_estimation: bool = option(
        False,
        doc="Weight each sample by 1/sqrt(snr) (epsilon) or 1/(snr + 1) (v_prediction), snr capped at 1000 "
        "(kohya debiased_estimation_loss, arXiv 2310.08442).",
    )
    scale_v_pred_loss_like_noise_pred: bool = option(
        False,
        doc="v_prediction models: weight each sample by snr/(snr + 1), snr capped at 1000, so the loss "
        "scales like an epsilon loss (kohya).",
    )
    v_pred_like_loss: float = option(
        0.0,
        doc="epsilon models: add this times loss * (snr + 1)/snr, a v-prediction-like term "
        "(kohya); 0 turns it off.",
        minimum=0,
        example=0.1,
    )
    # Flow matching (SD3): diffusers' train_dreambooth_lora_sd3.py options, its one `weighting_scheme` split
    # into the timestep density and the loss weighting.
    flow_timesteps: Literal["uniform", "logit_normal", "mode"] = option(
        "logit_normal",
        doc="Flow-matching models: how sigma is drawn. uniform; logit_normal: sigmoid of N(flow_logit_mean, "
        "flow_logit_std) (diffusers' SD3 default); mode: the SD3 paper's mode density with flow_mode_scale.",
    )
    flow_logit_mean: float = option(0.0, doc="Mean of the logit_normal flow timestep density.")
    flow_logit_std: float = option(
        1.0, doc="Standard deviation of the logit_normal flow timestep density.", exclusive_minimum=0
    )
    flow_mode_scale: float = option(
        1.29, doc="Scale of the mode flow timestep density (SD3 paper).", minimum=-1, maximum=2
    )
    flow_weighting: Literal["none", "sigma_sqrt", "cosmap"] = option(
        "none",
        doc="Flow-matching models: per-sample loss weight of sigma. none; sigma_sqrt: sigma^-2; cosmap: "
        "2 / (pi (1 - 2 sigma + 2 sigma^2)) (diffusers' compute_loss_weighting_for_sd3).",
    )
    flow_shift: float = option(
        0.0,
        doc="Flow-matching models: a fixed sigma shift, shift s / (1 + (shift - 1) s); 0 keeps the model's "
        "scheduler config (SD3.5: 3.0; Flux's resolution-dependent config trains unshifted, as diffusers' "
        "script).",
        minimum=0,
        example=3.0,
    )
    flow_prediction: Literal["raw", "sigma_scaled", "additive", "preconditioned"] = option(
        "raw",
        doc="Flow-matching models: what the loss compares (kohya flux_train_network.py's "
        "model_prediction_type; sd3_train_network.py). raw: the model output v̂ with the velocity "
        "ε − x₀ (diffusers' scripts); sigma_scaled: x_t − σ v̂ with ε − x₀ (kohya's Flux default); "
        "additive: v̂ + x_t with ε − x₀; preconditioned: x_t − σ v̂ with the latents x₀ (kohya's SD3 "
        "loss, σ² |v̂ − (ε − x₀)|² before flow_weighting). A base-model prior's target is transformed "
        "as the prediction is.",
    )
    flow_dynamic_shift: bool = option(
        False,
        doc="Flow-matching models: shift σ by the image size instead of by flow_shift: "
        "e^μ / (e^μ + 1/σ − 1), μ rising linearly from 0.5 at 256 latent patches ((h/2)(w/2)) "
        "to 1.15 at 4096 (Flux's time shift; diffusers' use_dynamic_shifting; kohya's "
        "timestep_sampling flux_shift). σ before the shift is 1 − u of the flow_timesteps "
        "density (continuous, as kohya draws it). Needs flow_shift 0.",
    )
    flow_draw: Literal["table", "continuous", "floored"] = option(
        "table",
        doc="Flow-matching models: how u from flow_timesteps becomes σ. table: the scheduler's 1000-step "
        "table at index floor(1000 u), σ = shift(1 − floor(1000 u)/1000) (diffusers' scripts; kohya Flux "
        "timestep_sampling sigma); continuous: σ = shift(1 − u), timestep 1000 σ (kohya Flux uniform, "
        "sigmoid, shift); floored: timestep t = floor(shift(u) (max_timestep − min_timestep) + "
        "min_timestep), σ = t/1000 (kohya sd3_train_network.py): σ rises with u here, so a logit_normal "
        "mean or a mode density means the mirror image of the other draws', and loss.min_timestep / "
        "max_timestep bound it. shift is flow_shift, or the model's (1 for Flux's dynamic config) when 0. "
        "flow_dynamic_shift draws continuously: the plan settles table to continuous there, and floored "
        "is refused.",
    )
    flow_guidance: float = option(
        0.0,
        doc="Guidance-distilled flow models (Flux.1 dev): the guidance value the denoiser's guidance "
        "embedding is given in training; 0 keeps the family's (Flux.1 dev: 3.5, as diffusers' script; "
        "kohya's recommended Flux LoRA setting is 1.0). Chroma: the guidance input of its approximator "
        "(0 unless set; kohya's --guidance_scale, whose Chroma docs ask for 0). Inert for other models "
        "without a guidance embedding.",
        minimum=0,
        example=1.0,
    )
    text_encoder_dropout: list[float] = option(
        factory=list,
        doc="Per-text-encoder conditioning dropout (kohya's SD3 `--clip_l_dropout_rate`, "
        "`--clip_g_dropout_rate`, `--t5_dropout_rate`): one probability per text encoder, in the family's"
        " order (SD3: [CLIP-L, CLIP-G, T5-XXL]), that a sample's output of that encoder is replaced by "
        "zeros in a training step (its hidden states and its part of the pooled embedding; not the empty "
        "caption's encoding, which datasets[].caption_dropout_rate gives). Drawn per sample and step from"
        " the sample's seed, encoder by encoder, a rate of 0 drawing nothing, so a resumed run drops what"
        " an uninterrupted one would; applied after the text cache (cached embeddings stay valid), in "
        "training steps only (not the evaluation loss or validation samples). Empty = off. SD3 only.",
        example=[0.0, 0.0, 0.2],
    )
    pos_embed_random_crop_rate: float = option(
        0.0,
        doc="SD3: the probability that a training forward of the denoiser adds a randomly placed window of "
        "its position-embedding table to the patches instead of the centred one (kohya's "
        "sd3_train_network.py `--pos_emb_random_crop_rate`, which kohya meant for SD3.5 medium): per "
        "forward, `rand() < rate` then the window's top and left row uniform over the table, drawn from "
        "the run's generator (resume draws the same). Training forwards only (the output-preservation and"
        " prior forwards included; not the evaluation loss or validation samples). 0 = off. Not with "
        "precision.compile.",
        minimum=0,
        maximum=1,
        example=0.2,
    )


# D-Adaptation optimizers (the `dadaptation` package, as kohya's DAdapt* optimizer types build them).
DADAPT_KINDS = (
    "dadapt_adam",
    "dadapt_adam_preprint",
    "dadapt_adagrad",
    "dadapt_adan",
    "dadapt_adan_ip",
    "dadapt_lion",
    "dadapt_sgd",
)
ADAN_BETAS = [0.98, 0.92, 0.99]  # dadaptation's Adan defaults (three betas)
# bitsandbytes' AdEMAMix optimizers (kohya's `bitsandbytes.optim.AdEMAMix*` optimizer types): three betas.
ADEMAMIX_KINDS = ("ademamix", "ademamix8bit", "paged_ademamix", "paged_ademamix8bit")
ADEMAMIX_BETAS = [0.9, 0.999, 0.9999]
# bitsandbytes' Lion optimizers (kohya's Lion8bit, PagedLion8bit, `bitsandbytes.optim.PagedLion`): one moment.
BNB_LION_KINDS = ("lion8bit", "paged_lion", "paged_lion8bit")
BNB_LION_BETAS = [0.9, 0.99]  # bitsandbytes' Lion defaults
# bitsandbytes' optimizers with 8-bit state: tensors under optimizer.min_8bit_size elements keep 32 bits.
BNB_8BIT_KINDS = (
    "adamw8bit",
    "paged_adamw8bit",
    "lion8bit",
    "paged_lion8bit",
    "ademamix8bit",
    "paged_ademamix8bit",
)
# Meta's schedule-free optimizers (the `schedulefree` package, kohya's *ScheduleFree optimizer types).
SCHEDULEFREE_KINDS = ("adamw_schedulefree", "sgd_schedulefree", "radam_schedulefree")
# CAME (the came_pytorch package, kohya's `came_pytorch.CAME`): three betas, an eps pair.
CAME_BETAS = [0.9, 0.999, 0.9999]
CAME_EPS = [1e-30, 1e-16]
# CAME's two implementations: came_pytorch's, and the pytorch_optimizer package's (kohya's
# `pytorch_optimizer.CAME`), the same algorithm with their own float arithmetic
CAME_KINDS = ("came", "pytorch_optimizer_came")
# prodigy-plus-schedule-free's ProdigyPlusScheduleFree (kohya's `prodigyplus.ProdigyPlusScheduleFree`):
# Prodigy's estimate of d with schedule-free averaging (train/eval modes, as the schedulefree package's)
PRODIGY_PLUS_KIND = "prodigy_plus_schedulefree"
PRODIGY_PLUS_BETAS = [0.9, 0.99]


def _sqrt_second_beta(betas: list[float]) -> float:
    """prodigyopt's beta3 default, math.sqrt(betas[1]) (0 for betas DBS1xx/DBS2xx refuse)."""
    return math.sqrt(betas[1]) if len(betas) > 1 and betas[1] >= 0 else 0.0


def _default_betas(o) -> list[float]:
    if o.kind in ADEMAMIX_KINDS:
        return list(ADEMAMIX_BETAS)
    if o.kind in CAME_KINDS:
        return list(CAME_BETAS)
    if o.kind == PRODIGY_PLUS_KIND:
        return list(PRODIGY_PLUS_BETAS)
    if o.kind in BNB_LION_KINDS or o.kind == "lion":  # lion_pytorch's Lion has bitsandbytes' defaults
        return list(BNB_LION_BETAS)
    return list(ADAN_BETAS) if "adan" in o.kind else [0.9, 0.999]


@frozen
class Optimizer:
    kind: Literal[
        "adamw",
        "adamw8bit",
        "paged_adamw",
        "paged_adamw8bit",
        "adafactor",
        "sgd",
        "radam",
        "prodigy",
        "lion",
        "lion8bit",
        "paged_lion",
        "paged_lion8bit",
        "dadapt_adam",
        "dadapt_adam_preprint",
        "dadapt_adagrad",
        "dadapt_adan",
        "dadapt_adan_ip",
        "dadapt_lion",
        "dadapt_sgd",
        "ademamix",
        "ademamix8bit",
        "paged_ademamix",
        "paged_ademamix8bit",
        "adamw_schedulefree",
        "sgd_schedulefree",
        "radam_schedulefree",
        "came",
        "pytorch_optimizer_came",
        "prodigy_plus_schedulefree",
    ] = option(
        "adamw",
        doc="Optimizer. adamw8bit is bitsandbytes' AdamW8bit (CUDA or the CPU); paged_adamw and "
        "paged_adamw8bit are its PagedAdamW (32-bit state) and PagedAdamW8bit, whose state CUDA pages to "
        "host memory under pressure (the CPU runs them unpaged, DBS314). dadapt_* are the "
        "`dadaptation` package's "
        "D-Adaptation optimizers (kohya's DAdaptAdam, DAdaptation = dadapt_adam_preprint, DAdaptAdaGrad, "
        "DAdaptAdan, DAdaptAdanIP, DAdaptLion, DAdaptSGD): they estimate the step size d and step by d x lr, "
        "so lr is a multiplier around 1.0. ademamix, ademamix8bit, paged_ademamix, paged_ademamix8bit are "
        "bitsandbytes' AdEMAMix, AdEMAMix8bit, PagedAdEMAMix, PagedAdEMAMix8bit (Adam with a second, slow "
        "EMA of the gradient mixed in by `alpha`; three betas). adamw_schedulefree, sgd_schedulefree, "
        "radam_schedulefree are the `schedulefree` package's AdamWScheduleFree, SGDScheduleFree, "
        "RAdamScheduleFree: they average the iterates instead of following an LR schedule (the schedule "
        "must stay constant), and checkpoints, exports, validation and evaluation use the averaged weights "
        "(the optimizer's eval mode, as kohya switches it). radam is torch's RAdam (kohya's optimizer_type "
        "RAdam). came is the `came_pytorch` package's CAME (kohya's optimizer_type came_pytorch.CAME): "
        "Adafactor-like factored second moments plus a factored confidence (instability) estimate that "
        "scales the first moment; three betas, the eps pair came_eps, clip_threshold, decoupled "
        "weight_decay. pytorch_optimizer_came is the `pytorch_optimizer` package's CAME (kohya's "
        "optimizer_type pytorch_optimizer.CAME): the same algorithm and settings (its eps1, eps2 are "
        "came_eps) with its own arithmetic (floats differ from came_pytorch's in the last bits), its state "
        "in the parameters' dtype (so not with fp16 weights, DBS249). prodigy_plus_schedulefree is the "
        "`prodigy-plus-schedule-free` package's ProdigyPlusScheduleFree (kohya's optimizer_type "
        "prodigyplus.ProdigyPlusScheduleFree): Prodigy's estimate of the step size d (each optimizer group "
        "its own; lr a multiplier around 1.0; d0, d_coef, beta3, use_bias_correction) with schedule-free "
        "averaging, so no LR schedule and the averaged weights in checkpoints, exports and validation, as "
        "for the schedulefree kinds; fp32 weights only (DBS620). lion8bit, paged_lion, paged_lion8bit "
        "are bitsandbytes' Lion8bit, PagedLion (32-bit "
        "state) and PagedLion8bit (kohya's Lion8bit, PagedLion8bit): Lion's sign update with its one moment "
        "kept block-wise in 8 bits (tensors under 4096 elements keep 32 bits) or paged by CUDA to host "
        "memory under pressure (the CPU runs them unpaged, DBS314); betas and weight_decay as lion's.",
    )
    lr: float = option(
        2e-6,
        doc="Learning rate. Full fine-tunes: 1e-6 to 5e-6; LoRA: around 1e-4. 0 holds the denoiser still "
        "while the text encoder(s) train at `text_encoder_lr` (kohya train_db.py's learning_rate 0 with "
        "learning_rate_te): its gradients are still computed and clipped together with the text encoder's "
        "(DBS229; DBS200 lists what it needs).",
        minimum=0,
    )
    text_encoder_lr: float = option(
        attrs.Factory(lambda self: self.lr, takes_self=True),
        doc="Learning rate of the text encoder(s). 0 holds a training text encoder still while the denoiser "
        "trains (kohya networks.lora_fa's text-encoder group at text_encoder_lr 0, which it keeps in the "
        "optimizer): its gradients are still computed and clipped together with the denoiser's (DBS229; "
        "DBS200 lists what it needs).",
        derived="same as `lr`",
        minimum=0,
        example=1e-6,
    )
    text_encoder_2_lr: float = option(
        attrs.Factory(lambda self: self.text_encoder_lr, takes_self=True),
        doc="Learning rate of the second text encoder (SDXL's OpenCLIP-bigG), as kohya's learning_rate_te2; "
        "0 holds it still as `text_encoder_lr` 0 does.",
        derived="same as `text_encoder_lr`",
        minimum=0,
        example=5e-7,
    )
    text_encoder_3_lr: float = option(
        attrs.Factory(lambda self: self.text_encoder_2_lr, takes_self=True),
        doc="Learning rate of the third text encoder, SD3's T5-XXL when `train.t5` trains it "
        "(kohya lora_sd3's "
        "third `text_encoder_lr` value; two values [a, b] give T5 b, as kohya's).",
        derived="same as `text_encoder_2_lr`",
        exclusive_minimum=0,
        example=5e-5,
    )
    text_encoder_at_zero: Literal["hold", "keep"] = option(
        "hold",
        doc="What a text encoder at `text_encoder_lr` (`text_encoder_2_lr`) 0 beside a training denoiser "
        "(at a rate above 0, or at `lr` 0 too, as kohya train_db.py's groups at learning_rate 0 with "
        "learning_rate_te 0 or none) is. hold: it stays still, so DBS200 refuses an optimizer or schedule "
        "that would move it. keep: its group stays in the optimizer at rate 0 and moves as they move it, as "
        "kohya networks.lora_fa's text-encoder group at text_encoder_lr 0 does: D-Adaptation's and "
        "Prodigy's decoupled weight decay, Prodigy with betas[0] = 0, DAdaptSGD's momentum averaging, "
        "Adafactor's relative step, a positive `schedule.eta_min`, OneCycleLR / CyclicLR (DBS606 says how). "
        "Still refused (DBS200) where dbspec's group order (the denoiser's first; lora_fa's text encoder "
        "first) would change the run: dadapt_adagrad, dadapt_adan, dadapt_adan_ip, dadapt_lion (with "
        '`group_order = "text_encoders_first"`, kohya\'s order, dadapt_lion is allowed).',
    )
    group_order: Literal["denoiser_first", "text_encoders_first"] = option(
        "denoiser_first",
        doc="The order of the optimizer's parameter groups. denoiser_first: the denoiser's groups, then the "
        "text encoders'. text_encoders_first: the text encoders' ahead of the denoiser's, as kohya's "
        "networks order them (networks.lora_fa's text-encoder group before the U-Net's). Most optimizers "
        "step each group on its own, so the order changes nothing but the optimizer state's layout; "
        "DAdaptLion sums every group into its estimate of d in the groups' order, so with a text encoder "
        "kept at rate 0 (`text_encoder_at_zero = \"keep\"`) only kohya's order is kohya's run. Not with "
        "`split` above 1 (DBS602).",
    )
    denoiser_at_zero: Literal["hold", "keep"] = option(
        "hold",
        doc="What the denoiser at `lr` 0 beside a training text encoder is. hold: it stays still, so "
        "DBS200 refuses a schedule that would move it. keep: its group stays in the optimizer at rate 0 and "
        "moves as the schedule moves it, as kohya train_db.py's U-Net at learning_rate 0 does: a positive "
        "`schedule.eta_min` lifts it, OneCycleLR / CyclicLR set its rate from their bounds where one above 0 "
        "is its (DBS606 says how); DAdaptLion and Adafactor's relative step move it too. With no text "
        "encoder training, a schedule that lifts it trains the denoiser on that schedule alone "
        "(train_db.py's U-Net at learning_rate 0 without the text encoder); with the text encoder at rate 0 "
        "too, each part the schedule lifts needs its own keep (`text_encoder_at_zero` for the text encoder). "
        "The classes that "
        "refuse a rate of 0 when built (D-Adaptation's but DAdaptLion, Prodigy, CAME) stay refused, as "
        "kohya's run stops there.",
    )
    weight_decay: float = option(1e-2, doc="Decoupled weight decay.", minimum=0)
    betas: list[float] = option(
        attrs.Factory(_default_betas, takes_self=True),
        doc="Adam/Lion betas (two numbers); dadapt_adan, dadapt_adan_ip, the ademamix kinds and the came "
        "kinds take three (AdEMAMix's third is the slow EMA's beta3; CAME's are the first moment's, the "
        "squared gradient's and the instability's decays).",
        derived="[0.9, 0.999]; [0.98, 0.92, 0.99] for dadapt_adan(_ip); [0.9, 0.999, 0.9999] for ademamix* "
        "and the came kinds; [0.9, 0.99] for lion, lion8bit, paged_lion, paged_lion8bit (the Lion defaults "
        "of lion_pytorch and bitsandbytes)",
        example=[0.9, 0.999],
    )
    eps: float = option(1e-8, doc="Adam epsilon.", exclusive_minimum=0)
    momentum: float = option(
        attrs.Factory(lambda self: 0.9 if self.kind == "sgd_schedulefree" else 0.0, takes_self=True),
        doc="SGD momentum (sgd_schedulefree: the interpolation between the averaged and the current point).",
        derived="0.0; 0.9 for sgd_schedulefree (SGDScheduleFree's default)",
        minimum=0,
        maximum=1,
        example=0.9,
    )
    nesterov: bool = option(
        False,
        doc="SGD with Nesterov momentum (torch SGD's nesterov; kohya's SGDNesterov); needs momentum > 0.",
    )
    max_grad_norm: float = option(1.0, doc="Clip the gradient norm to this; 0 turns clipping off.", minimum=0)
    clip_mode: Literal["norm", "value", "norm_per_tensor"] = option(
        "norm",
        doc="How max_grad_norm clips: norm scales all gradients together so their total norm is at most "
        "max_grad_norm (torch clip_grad_norm_; kohya, diffusers); value clamps each gradient element to "
        "+-max_grad_norm (torch clip_grad_value_; SimpleTuner's default grad_clip_method); norm_per_tensor "
        "scales each parameter's gradient on its own to a norm of at most max_grad_norm (kohya's "
        "--fused_backward_pass and --fused_optimizer_groups clip in each parameter's gradient hook).",
    )
    split: int = option(
        1,
        doc="Several optimizers over consecutive chunks of the trained tensors, as kohya's sdxl_train.py "
        "--fused_optimizer_groups: the tensors in sequence (the denoiser's, in the original layout's order "
        "for SDXL as kohya's own UNet registers them, by [[optimizer.blocks]] in the blocks' order when "
        "given, then the text encoders'), cut into chunks of "
        "ceil(tensors / split), a new chunk also wherever the learning rate changes; one optimizer and one "
        "LR schedule per chunk, all stepped every optimizer step (unless split_train or split_first_step "
        "say otherwise). The same updates as one optimizer for optimizers that update each tensor on its "
        "own (adamw, lion, adafactor, ...); prodigy and dadapt_* estimate their step size d over their own "
        "chunk. 1 = one optimizer.",
        minimum=1,
        example=4,
    )
    split_train: Literal["all", "first"] = option(
        "all",
        doc="Which chunks of optimizer.split step: all, or first: only the first chunk's optimizer steps, "
        "the tensors of the later chunks keep their weights (they still get gradients, counted by clip_mode "
        "norm), as kohya's sdxl_train.py with --fused_backward_pass and --fused_optimizer_groups together "
        "hooks its fused step to its first optimizer alone. Needs split > 1.",
    )
    split_first_step: Literal["step", "micro_batch"] = option(
        "step",
        doc="When the first chunk's optimizer of optimizer.split steps: step, once per optimizer step as "
        "the others; micro_batch, after every micro-batch's backward pass from that micro-batch's gradient "
        "alone (the loss divided by the step's micro-batches, schedule.accumulation), its gradients then "
        "cleared, at the current step's learning rate; gradient clipping (on the last micro-batch) and the "
        "other chunks stay once per optimizer step. kohya's sdxl_train.py --fused_optimizer_groups with "
        "gradient_accumulation_steps > 1: its first optimizer is not accelerate's wrapper, which holds the "
        "others back until the last micro-batch. Needs split > 1.",
    )
    # kohya sdxl_train.py --block_lr: the denoiser's parameters at per-block rates (full fine-tunes).
    blocks: list[OptimizerBlock] = option(
        factory=list,
        doc="Per-block learning rates of the denoiser in a full fine-tune ([[optimizer.blocks]] tables, "
        "kohya sdxl_train.py `block_lr`): each denoiser parameter trains at the rate of the first block "
        "whose pattern matches its path, in an optimizer group of its own per block (in the blocks' order; "
        "a block at rate 0 has none); parameters no block matches keep `lr`. For LoRA use "
        "`[[adapter.blocks]]` `lr_scale`.",
    )
    # D-Adaptation and Prodigy settings (kohya passes them in optimizer_args); each is inert for the kinds its
    # doc does not name (DBS270).
    d0: float = option(
        1e-6,
        doc="dadapt_*, prodigy, prodigy_plus_schedulefree: the initial estimate of the step size d "
        "(dadaptation's, prodigyopt's and prodigy-plus-schedule-free's d0).",
        exclusive_minimum=0,
    )
    growth_rate: float = option(
        0.0,
        doc="dadapt_* (not dadapt_lion), prodigy: d grows at most by this factor per step; 0 = unbounded "
        "(dadaptation's and prodigyopt's default, inf).",
        minimum=0,
        example=1.02,
    )
    decouple: bool = option(
        attrs.Factory(lambda self: self.kind == "prodigy", takes_self=True),
        doc="dadapt_adam, dadapt_adam_preprint, prodigy: AdamW-style decoupled weight decay, each weight "
        "shrunk by weight_decay x the step (d x lr), instead of weight_decay x weight added to the gradient "
        "(dadaptation's and prodigyopt's decouple).",
        derived="false; true for prodigy (prodigyopt's default; dadaptation's is false)",
    )
    use_bias_correction: bool = option(
        False,
        doc="dadapt_adam, prodigy, prodigy_plus_schedulefree: Adam's bias correction of the step "
        "(dadaptation's, prodigyopt's and prodigy-plus-schedule-free's use_bias_correction; the last: "
        "RAdam's, with its automatic warm-up).",
    )
    no_prox: bool = option(
        False, doc="dadapt_adan(_ip): weight decay as a plain multiplier, not the proximal update (no_prox)."
    )
    d_coef: float = option(
        1.0,
        doc="prodigy, prodigy_plus_schedulefree: the estimate of d is multiplied by this (prodigyopt's "
        "d_coef; its authors' preferred knob, 0.5 to 2 typical).",
        exclusive_minimum=0,
        example=2.0,
    )
    safeguard_warmup: bool = option(
        False,
        doc="prodigy: leave lr out of the denominator of the estimate of d, so a warm-up's small rates do "
        "not inflate d (prodigyopt's safeguard_warmup).",
    )
    beta3: float = option(
        attrs.Factory(lambda self: _sqrt_second_beta(self.betas), takes_self=True),
        doc="prodigy, prodigy_plus_schedulefree: the decay of the running sums behind the estimate of d "
        "(their beta3).",
        derived="the square root of betas[1] (prodigyopt's beta3 None)",
        minimum=0,
        example=0.999,
    )
    slice_p: int = option(
        1,
        doc="prodigy: the estimate of d reads every slice_p-th element of each tensor (prodigyopt's slice_p; "
        "above 1 it approximates Prodigy with less memory, about 11 suggested); 1 = every element.",
        minimum=1,
        example=11,
    )
    # torch AdamW's and SGD's own options; inert for other kinds (DBS270).
    amsgrad: bool = option(
        False,
        doc="adamw: AMSGrad, the step divided by the largest second moment seen so far (torch AdamW's "
        "amsgrad).",
    )
    dampening: float = option(
        0.0,
        doc="sgd: the share of each gradient held back from the momentum buffer (torch SGD's dampening); "
        "Nesterov momentum needs 0.",
        minimum=0,
        maximum=1,
        example=0.1,
    )
    # Adafactor's own LR (kohya's default for Adafactor); inert for other kinds (DBS270).
    relative_step: bool = option(
        False,
        doc="adafactor: Adafactor computes the LR itself, min(1e-2, 1/sqrt(step)) (transformers' "
        "relative_step, kohya's default for Adafactor with its adafactor scheduler); lr is then only the "
        "logged initial value and the schedule must be constant without warm-up.",
    )
    scale_parameter: bool = option(
        False,
        doc="adafactor: multiply each parameter's LR by its RMS (at least 1e-3) (transformers' "
        "scale_parameter).",
    )
    warmup_init: bool = option(
        False,
        doc="adafactor with relative_step: the LR warms up as min(1e-6 x step, 1/sqrt(step)) (warmup_init).",
    )
    beta1: float = option(
        0.0,
        doc="adafactor: the decay of a first moment (transformers' beta1); 0 = no first moment "
        "(transformers' None, the default; beta1 = 0 would give the same updates).",
        minimum=0,
        maximum=1,
        example=0.9,
    )
    clip_threshold: float = option(
        1.0,
        doc="adafactor, came, pytorch_optimizer_came: the update's RMS is clipped to this (transformers', "
        "came_pytorch's and pytorch_optimizer's clip_threshold).",
        exclusive_minimum=0,
    )
    decay_rate: float = option(
        -0.8,
        doc="adafactor: the second moment's decay is 1 - t^decay_rate at step t (transformers' decay_rate).",
        maximum=0,
    )
    adafactor_eps: list[float] = option(
        factory=lambda: [1e-30, 1e-3],
        doc="adafactor: transformers' eps pair: the regulariser of the squared gradient, then the floor of "
        "the parameter scale (scale_parameter and relative_step).",
        example=[1e-30, 1e-3],
    )
    came_eps: list[float] = option(
        factory=lambda: list(CAME_EPS),
        doc="came: came_pytorch's eps pair: the regulariser of the squared gradient, then the regulariser "
        "of the instability (the squared difference of the update and its average); "
        "pytorch_optimizer_came: its eps1 and eps2.",
        example=[1e-30, 1e-16],
    )
    # AdEMAMix settings (bitsandbytes; kohya passes them in optimizer_args); inert for other kinds (DBS270).
    alpha: float = option(
        5.0, doc="ademamix*: the weight of the slow EMA in the update (bitsandbytes' alpha).", minimum=0
    )
    t_alpha: int = option(
        0,
        doc="ademamix*: steps over which alpha warms up from 0 (bitsandbytes' t_alpha); 0 = no warm-up "
        "(None).",
        minimum=0,
    )
    t_beta3: int = option(
        0,
        doc="ademamix*: steps over which beta3 warms up from beta1 (bitsandbytes' t_beta3); 0 = no warm-up "
        "(None).",
        minimum=0,
    )
    # Schedule-free settings (the schedulefree package); inert for other kinds (DBS270).
    schedulefree_warmup_steps: int = option(
        0,
        doc="adamw_schedulefree, sgd_schedulefree: the optimizer's own linear LR warm-up (their "
        "warmup_steps; schedule.warmup_steps must stay 0, as kohya's schedule-free runs have no scheduler).",
        minimum=0,
    )
    schedulefree_r: float = option(
        0.0,
        doc="*_schedulefree: the polynomial weighting power of the average (schedulefree's r).",
        minimum=0,
    )
    weight_lr_power: float = option(
        2.0,
        doc="*_schedulefree: the average weights step t by lr^weight_lr_power (schedulefree's "
        "weight_lr_power).",
        minimum=0,
    )
    silent_sgd_phase: bool = option(
        True,
        doc="radam_schedulefree: no update while RAdam's variance is not yet tractable (schedulefree's "
        "silent_sgd_phase).",
    )
    decoupled_weight_decay: bool = option(
        False,
        doc="radam: AdamW-style weight decay, each weight multiplied by 1 - lr x weight_decay before the "
        "update, instead of weight_decay x weight added to the gradient (torch RAdam's "
        "decoupled_weight_decay; kohya's RAdam optimizer_args).",
    )
    min_8bit_size: int = option(
        4096,  # bitsandbytes' default, the plan's BNB_MIN_8BIT_SIZE (spec cannot import plan)
        doc="adamw8bit, paged_adamw8bit, lion8bit, paged_lion8bit, ademamix8bit, paged_ademamix8bit: "
        "tensors with fewer elements than this keep their optimizer state in 32 bits (bitsandbytes' "
        "min_8bit_size); 0 keeps every tensor's state in 8 bits.",
        minimum=0,
        example=16384,
    )
    implementation: Literal["default", "foreach", "fused"] = option(
        "default",
        doc="adamw, sgd: torch's kernel for the update. fused (one kernel over all tensors) measured 1.3x "
        "faster per step than default on the CPU with the built-in tiny model (docs/performance.md); the "
        "result equals default's to float rounding, not bitwise. default is torch's choice (foreach on "
        "CUDA, a loop over tensors on the CPU).",
    )


# A schedule bound given for every optimizer parameter group at once (a number) or per group (a table from
# the group's name, as the plan lists them, to its value): torch's CyclicLR and OneCycleLR take either.
GroupRates = Union[float, dict[str, float]]

# The first six are diffusers' get_scheduler names; then kohya's (transformers) and two torch schedulers.
LrSchedule = Literal[
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "cosine_annealing",
    "cosine_annealing_warm_restarts",
    "one_cycle",
    "step",
    "multi_step",
    "exponential",
    "linear_lr",
    "constant_lr",
    "cyclic",
    "polynomial_lr",
    "simpletuner_cosine",
    "simpletuner_sine",
]


@frozen
class Schedule:
    # Upper bounds keep plans and checks fast; far above any real run (thousands of steps, a
    # few hundred epochs).
    steps: int = option(
        0, doc="Optimizer steps to train; set this or `epochs`.", minimum=0, maximum=10_000_000, example=800
    )
    epochs: int = option(0, doc="Epochs to train; set this or `steps`.", minimum=0, maximum=1_000_000)
    batch_size: int = option(1, doc="Images per batch (per process).", minimum=1)
    accumulation: int = option(1, doc="Batches accumulated per optimizer step.", minimum=1)
    lr_schedule: LrSchedule = option(
        "constant",
        doc="Learning-rate schedule: the first six are diffusers' get_scheduler, cosine_with_min_lr and "
        "warmup_stable_decay transformers' (as kohya calls them); then torch's classes, stepped once "
        "per optimizer step (kohya's lr_scheduler_type): cosine_annealing CosineAnnealingLR, "
        "cosine_annealing_warm_restarts CosineAnnealingWarmRestarts, one_cycle OneCycleLR, step StepLR, "
        "multi_step MultiStepLR, exponential ExponentialLR, linear_lr LinearLR, constant_lr ConstantLR, "
        "cyclic CyclicLR, polynomial_lr PolynomialLR; "
        "simpletuner_cosine is SimpleTuner's cosine: no warm-up, "
        "eta_min + (lr - eta_min)(1 + cos(pi step / t_max))/2 from step 0, so it falls over t_max steps and "
        "rises over the next t_max, the LR floored to 1e-9; simpletuner_sine is SimpleTuner's sine: "
        "eta_min + (lr - eta_min)(1 + sin(pi step / t_max))/2 from step 0 (it starts half-way), floored to "
        "1e-9.",
    )
    warmup_steps: int = option(0, doc="Linear warm-up steps.", minimum=0)
    cycles: int = option(
        1,
        doc="Restarts for cosine_with_restarts; for cosine_with_min_lr and warmup_stable_decay, half-waves "
        "of the cosine (kohya's lr_scheduler_num_cycles: 1 decays once).",
        minimum=1,
    )
    # Schedule settings added with kohya's scheduler options; each is inert outside its schedules (DBS255).
    power: float = option(
        1.0, doc="Power of the polynomial schedule (kohya's lr_scheduler_power).", exclusive_minimum=0
    )
    min_lr_ratio: float = option(
        0.0,
        doc="cosine_with_min_lr and warmup_stable_decay end at lr x this (kohya's "
        "lr_scheduler_min_lr_ratio).",
        minimum=0,
        maximum=1,
    )
    decay_steps: int = option(
        0,
        doc="warmup_stable_decay: steps of the final decay (kohya's lr_decay_steps); the LR holds between "
        "the "
        "warm-up and them.",
        minimum=0,
        example=200,
    )
    t_max: int = option(
        0,
        doc="cosine_annealing, simpletuner_cosine, simpletuner_sine: torch's T_max in optimizer steps (the "
        "half period); cosine_annealing_warm_restarts: its T_0 (steps to the first restart); one_cycle: its "
        "total_steps. 0 = the run's steps.",
        minimum=0,
    )
    t_mult: int = option(
        1,
        doc="cosine_annealing_warm_restarts: torch's T_mult, each period this many times the last.",
        minimum=1,
    )
    eta_min: float = option(
        0.0,
        doc="cosine_annealing(_warm_restarts), simpletuner_cosine/_sine: torch's eta_min, the lowest LR "
        "(absolute).",
        minimum=0,
    )
    # SimpleTuner's polynomial end LR (its lr_end); diffusers' get_scheduler keeps 1e-7.
    lr_end: float = option(
        1e-7,
        doc="polynomial: the LR the decay ends at (diffusers' lr_end; get_scheduler's 1e-7, SimpleTuner's "
        "lr_end 4e-7); it must be below optimizer.lr.",
        minimum=0,
    )
    # kohya's lr_scheduler_args to its named schedules (transformers' functions); inert elsewhere (DBS255).
    cosine_cycles: float = option(
        0.5,
        doc="cosine: cosine waves over the decay (transformers' num_cycles, which kohya's lr_scheduler_args "
        "can pass); 0.5 decays once to 0.",
        exclusive_minimum=0,
    )
    warmup_type: Literal["linear", "cosine", "1-sqrt"] = option(
        "linear", doc="warmup_stable_decay: the warm-up's shape (transformers' warmup_type)."
    )
    decay_type: Literal["cosine", "linear", "1-sqrt"] = option(
        "cosine", doc="warmup_stable_decay: the decay's shape (transformers' decay_type)."
    )
    # torch schedulers (kohya's lr_scheduler_type + lr_scheduler_args); each is inert elsewhere (DBS255).
    step_size: int = option(
        1, doc="step: torch StepLR's step_size, the LR x gamma every this many optimizer steps.", minimum=1
    )
    gamma: float = option(
        attrs.Factory(lambda self: 1.0 if self.lr_schedule == "cyclic" else 0.1, takes_self=True),
        doc="step, multi_step, exponential: torch's gamma, the LR's factor per decay; cyclic (exp_range): "
        "CyclicLR's gamma, the cycle's height x gamma^step.",
        derived="0.1 (StepLR's); 1.0 for cyclic (CyclicLR's)",
        exclusive_minimum=0,
        example=0.5,
    )
    milestones: list[int] = option(
        factory=list, doc="multi_step: torch MultiStepLR's milestones, the optimizer steps where LR x gamma."
    )
    start_factor: float = option(
        1 / 3,
        doc="linear_lr: torch LinearLR's start_factor, the LR's first multiple.",
        exclusive_minimum=0,
        maximum=1,
    )
    end_factor: float = option(
        1.0,
        doc="linear_lr: torch LinearLR's end_factor, the multiple reached after total_iters.",
        minimum=0,
        maximum=1,
    )
    total_iters: int = option(
        5,
        doc="linear_lr, constant_lr, polynomial_lr: torch's total_iters, the steps until the factor ends "
        "(polynomial_lr: the LR falls as (1 - step/total_iters)^power, then stays at 0).",
        minimum=0,
    )
    factor: float = option(
        1 / 3,
        doc="constant_lr: torch ConstantLR's factor, the LR's multiple before total_iters.",
        exclusive_minimum=0,
        maximum=1,
    )
    max_lr: GroupRates = option(
        0.0,
        doc="one_cycle: torch OneCycleLR's max_lr, the peak for every parameter group (it replaces their "
        'rates, as kohya passes it); 0 = each group\'s own rate (max_lr_zero = "literal": a peak of 0). '
        "one_cycle's total_steps is t_max. cyclic: CyclicLR's peak. A table gives each optimizer group its "
        "own (torch's per-group list), e.g. `{ denoiser = 1e-4, text_encoder = 5e-5 }`: every group the run "
        "trains, once; the groups are denoiser, text_encoder (SDXL's second, Flux's T5-XXL, SD3's CLIP-G and "
        "T5-XXL too unless their rate differs or a table names their own group), text_encoder_2, "
        "text_encoder_3, each one's LoRA+ group `<name>_lora_up`, each [[adapter.blocks]] "
        'lr_scale s as "denoiser_x<s>" (and "denoiser_lora_up_x<s>") and own lr r as "denoiser_lr<r>" (a '
        'block\'s `group` g appended: "denoiser_x<s>_<g>", "denoiser_<g>"), each '
        "[[optimizer.blocks]] entry i at a rate above 0 as denoiser_block<i> (denoiser then holds only the "
        "parameters no block matches: leave it out where they cover the denoiser), and pivotal (DBS416 "
        "lists a run's).",
        minimum=0,
        example={"denoiser": 1e-4, "text_encoder": 5e-5},
    )
    max_lr_zero: Literal["own_lr", "literal"] = option(
        "own_lr",
        doc="one_cycle, cyclic: what a max_lr of 0 (the number, or a table's value) stands for: own_lr "
        "(dbspec's shorthand) each group's own rate, literal a peak of 0, as torch reads it (kohya's "
        "max_lr=0: OneCycleLR then holds every rate at 0, CyclicLR cycles down from base_lr to 0).",
    )
    pct_start: float = option(0.3, doc="one_cycle: share of the steps spent rising.", minimum=0, maximum=1)
    anneal_strategy: Literal["cos", "linear"] = option("cos", doc="one_cycle: the annealing shape.")
    div_factor: float = option(
        25.0, doc="one_cycle: the start LR is max_lr / div_factor.", exclusive_minimum=0
    )
    final_div_factor: float = option(
        1e4, doc="one_cycle: the last LR is the start LR / final_div_factor.", exclusive_minimum=0
    )
    three_phase: bool = option(
        False, doc="one_cycle: rise, fall back to the start LR, then anneal to the end."
    )
    cycle_momentum: bool = option(
        True,
        doc="one_cycle, cyclic: cycle the optimizer's momentum (beta1 for Adam-like optimizers) inversely "
        "to the LR, between base_momentum and max_momentum (torch's default; it overrides betas[0] / "
        "momentum).",
    )
    base_momentum: GroupRates = option(
        attrs.Factory(lambda self: 0.8 if self.lr_schedule == "cyclic" else 0.85, takes_self=True),
        doc="one_cycle, cyclic: the momentum (or beta1) at the LR's peak; a table gives each optimizer group "
        "its own, keyed as base_lr's.",
        derived="0.85 (OneCycleLR's); 0.8 for cyclic (CyclicLR's)",
        minimum=0,
        maximum=1,
        example=0.85,
    )
    max_momentum: GroupRates = option(
        attrs.Factory(lambda self: 0.9 if self.lr_schedule == "cyclic" else 0.95, takes_self=True),
        doc="one_cycle, cyclic: the momentum (or beta1) at the LR's low points; a table gives each optimizer "
        "group its own, keyed as base_lr's.",
        derived="0.95 (OneCycleLR's); 0.9 for cyclic (CyclicLR's)",
        minimum=0,
        maximum=1,
        example=0.95,
    )
    # torch's CyclicLR (kohya's lr_scheduler_type CyclicLR); inert elsewhere (DBS255). It also uses max_lr,
    # gamma (exp_range), cycle_momentum, base_momentum and max_momentum.
    base_lr: GroupRates = option(
        0.0,
        doc="cyclic: CyclicLR's base_lr, the cycle's lowest LR; it replaces every parameter group's rate (as "
        "torch does), max_lr is the peak (0 = each group's own lr, see max_lr_zero). A table gives each "
        "optimizer group its own, keyed as max_lr's, e.g. `{ denoiser = 1e-5, text_encoder = 1e-6 }` "
        "(torch's per-group list).",
        minimum=0,
        example=1e-5,
    )
    # floats, as torch's CyclicLR takes them (total_size = up + down, step_ratio = up / total_size)
    step_size_up: float = option(
        2000.0,
        doc="cyclic: CyclicLR's step_size_up, optimizer steps from base_lr up to max_lr; a fraction as torch "
        "takes it (kohya's `step_size_up=2.5`).",
        exclusive_minimum=0,
    )
    step_size_down: float = option(
        0.0,
        doc="cyclic: CyclicLR's step_size_down, optimizer steps back down (a fraction as torch takes it); "
        "0 = step_size_up (torch's None).",
        minimum=0,
    )
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = option(
        "triangular",
        doc="cyclic: CyclicLR's mode: triangular (the same height each cycle), triangular2 (halved each "
        "cycle), exp_range (height x gamma^step).",
    )
    balance_classes: bool = option(
        True,
        doc="Each epoch draws as many class samples as instance samples (kohya's rule); false uses the class "
        "datasets' own repeats.",
    )
    seed: int = option(
        0, doc="Seed for weights init of adapters, noise, timesteps, data order and augmentation.", minimum=0
    )
    noise_streams: Literal["auto", "process", "micro_batch"] = option(
        "auto",
        doc="Where training noise and timesteps are drawn from: process = one generator per process, "
        "carried across steps (as every run drew before this option); micro_batch = a generator seeded "
        "afresh for each micro-batch from (seed, its index over all processes), so N processes with batch "
        "b draw what one process with batch b and N-fold accumulation draws, and every process resumes "
        "bit-exactly; "
        "auto = micro_batch when several processes run, else process.",
    )
    # Starting later (kohya's initial_step / initial_epoch / skip_until_initial_step): docs/converting.md.
    start_step: int = option(
        0,
        doc="Start the run at this optimizer step instead of 0 (kohya's initial_step): with `skip_data`, the "
        "step counter starts here (checkpoint and validation steps, token warm-up, the text-encoder stop see "
        "it) and the data continues where an uninterrupted run would be at this step; without it only the "
        "epoch moves, as kohya: the data starts at the first batch of the epoch holding this step, the step "
        "counter at 0, and the run ends at its last step or at the end of its last epoch, whichever comes "
        "first. Must be below the run's steps. 0 = start at the beginning.",
        minimum=0,
        maximum=10_000_000,
    )
    start_epoch: int = option(
        0,
        doc="Start the run at this epoch (1 = the first, as kohya's initial_epoch): the same as "
        "`start_step` = (start_epoch - 1) x the plan's steps per epoch. 0 = unset. Give `start_step` or "
        "this, not both.",
        minimum=0,
        maximum=1_000_000,
    )
    skip_data: bool = option(
        False,
        doc="With `start_step` / `start_epoch`: the step counter starts there and the batches an "
        "uninterrupted run would have trained before it are skipped (kohya's skip_until_initial_step); "
        "false moves only the epoch.",
    )
    start_lr: Literal["first", "start_step"] = option(
        "first",
        doc="Where the LR schedule is at the first trained step of a run that starts later: first = its "
        "first step, as kohya (initial_step does not move its scheduler; only --resume restores one); "
        "start_step = where an uninterrupted run's schedule would be at the start step.",
    )


@frozen
class Precision:
    mixed: Literal["auto", "no", "fp16", "bf16"] = option(
        "auto",
        doc="Mixed precision; auto picks bf16 where the device has it, fp16 elsewhere on GPUs, no on CPU.",
    )
    bf16_fallback: Literal["error", "fp16"] = option(
        "error", doc='When mixed = "bf16" and the device lacks bf16: stop with an error, or use fp16.'
    )
    quantize_denoiser: Quantization = option(
        "none", doc="Quantise the frozen denoiser (UNet) base weights (LoRA runs)."
    )
    quantize_text_encoder: Quantization = option("none", doc="Quantise the frozen text-encoder base weights.")
    quantize_backend: QuantizeBackend = option(
        "quanto",
        doc="Library that quantises the frozen base: quanto (optimum-quanto: int8, int4, fp8; deprecated "
        "upstream), torchao (int8, fp8 weight-only) or bitsandbytes (nf4, int8 as LLM.int8). fp8 needs a "
        "CUDA GPU of compute capability >= 8.9 (but with cast). torchao and bitsandbytes quantise Linear "
        "layers only (convolutions stay in float). cast (fp8 only; kohya's fp8_base): every weight stored as "
        "float8_e4m3fn by a plain cast (no scale) and upcast to the compute dtype at each use; runs on every "
        "device, embeddings stay in float, and so do the layers of the denoiser's `full` [[adapter.blocks]] "
        "(kohya casts after LyCORIS's FullModule has taken their weights into its trained copies). See "
        "docs/memory.md.",
    )
    gradient_checkpointing: bool = option(
        False, doc="Recompute activations in the backward pass to save memory."
    )
    attention: Literal["sdpa", "eager"] = option(
        "sdpa",
        doc="Attention implementation: `sdpa` (torch's scaled_dot_product_attention, diffusers' default) or "
        "`eager`, the plain attention: diffusers' AttnProcessor for U-Nets, torch's reference attention "
        "(diffusers' `_native_math` backend) for Flux; SD3 has none (DBS547).",
    )
    tf32: bool = option(True, doc="Allow TF32 matmuls on CUDA.")
    vae_dtype: Literal["fp32", "fp16", "bf16"] = option(
        "fp32", doc="VAE dtype when encoding; fp32 avoids the SDXL fp16 VAE overflow."
    )
    weights: Literal["fp32", "bf16", "fp16"] = option(
        "fp32",
        doc="dtype of the trained weights (kohya's full_bf16 / full_fp16): a full fine-tune's networks, or "
        "the adapter weights of a LoRA/LyCORIS run (the frozen base is held in the mixed dtype anyway). "
        "bf16 halves weights and gradients (and optimizer state, see weights_rounding); needs mixed = bf16 "
        "(or auto picking it). fp16 (kohya's full_fp16) halves them too, needs mixed = fp16 (or auto) and "
        'weights_rounding = "nearest": the optimizer steps the fp16 weights directly, their fp16 gradients '
        "unscaled by a dynamic grad scaler that skips overflowing steps; updates under 2^-11 of a weight are "
        "lost. See docs/memory.md.",
    )
    weights_rounding: Literal["stochastic", "nearest"] = option(
        "stochastic",
        doc='How half-precision weights (weights = "bf16" or "fp16") are updated: stochastic (bf16 only) '
        "computes each update in fp32 and rounds it to bf16 at random, unbiased, one parameter at a time "
        "(per-parameter optimizers only); nearest is kohya's full_bf16: the optimizer steps the bf16 "
        "parameters directly (round-to-nearest, updates under half a bf16 step are lost), its state created "
        "as it creates it from bf16 parameters (bf16 for AdamW, Prodigy, D-Adaptation, Lion, SGD, "
        "schedulefree; fp32 for Adafactor, CAME and bitsandbytes), so any optimizer runs; fp16 weights "
        "(kohya's full_fp16) need it. See docs/memory.md.",
    )
    fp16_gradients: Literal["unscaled", "scaled", "scaled_first"] = option(
        "unscaled",
        doc="What the optimizer steps from under fp16 mixed precision (fp16 or fp32 trained weights): "
        "unscaled, the gradients divided by the dynamic grad scaler's scale, a step whose gradients "
        "overflowed skipped and the scale adjusted; scaled, the gradients as backward leaves them, still "
        "multiplied by the grad scaler's initial scale (2^16), which never changes, and no step is ever "
        "skipped (an overflowed gradient reaches the optimizer as inf): kohya's sdxl_train.py "
        "--fused_backward_pass with max_grad_norm 0 (fp16 weights with --full_fp16, fp32 without), whose "
        "gradient hooks step Adafactor (nearly invariant to the gradient's scale) inside backward, before "
        "accelerate's scaler; scaled_first (optimizer.split > 1, kohya's --fused_optimizer_groups with "
        "max_grad_norm 0): the first chunk's optimizer steps from the still-scaled gradients, never "
        "skipped, and each later chunk, in the order its last gradient arrives in backward, through the "
        "grad scaler on its own: unscaled by the scale at that moment, skipped (its LR schedule too) when "
        "its own gradients overflowed, the scale updated after each (halved on an overflow, doubled after "
        "2000 finite chunk steps). Needs optimizer.max_grad_norm = 0.",
    )
    compile: bool = option(
        False,
        doc="Compile the denoiser and the text encoders that train with torch.compile (inductor, "
        "default mode, automatic dynamic shapes): the first step compiles (seconds to minutes, cached on "
        "disk for the next run), the second bucket shape recompiles once with dynamic sizes; validation and "
        "evaluation run eager. Pays off on long runs; checkpoints and exports are unchanged. Refused on the "
        "CPU, where torch 2.13's inductor computes wrong UNet gradients (DBS336, docs/performance.md).",
    )


@frozen
class Cache:
    latents: bool = option(True, doc="Cache VAE latents on disk (content-addressed).")
    text_embeddings: bool = option(True, doc="Cache text embeddings while the text encoder is frozen.")
    dir: str = option(".dbspec-cache", doc="Cache folder, relative to the spec file.")


@frozen
class Validation:
    prompts: list[str] = option(
        factory=list,
        doc="Validation prompts; empty turns validation off.",
        example=["a photo of ohwx dog on a beach"],
    )
    negative_prompt: str = option("", doc="Negative prompt for every validation image.")
    every: int = option(
        0,
        doc="Validate (sample the prompts, run [evaluation]) every N steps; 0 validates only at the end.",
        minimum=0,
    )
    scheduler: Literal["ddim", "euler", "euler_a", "dpmpp", "unipc", "pndm", "flow_euler"] = option(
        "ddim",
        doc="Sampling scheduler (DDIM recommended by the HF DreamBooth study); flow-matching models (SD3) "
        "sample with flow_euler, and the plan picks it for them.",
    )
    steps: int = option(50, doc="Inference steps (~100 helps noisy results).", minimum=1)
    guidance: float = option(7.5, doc="Classifier-free guidance scale.", minimum=0)
    images_per_prompt: int = option(1, doc="Images per prompt.", minimum=1)
    seed: int = option(0, doc="Seed for validation images (fixed across the run).", minimum=0)
    preview_every: int = option(
        0,
        doc="Live previews: decode the image being sampled with a Tiny AutoEncoder every N sampling steps "
        "(frames and an animated WebP in each validation folder's previews/); 0 turns previews off.",
        minimum=0,
    )
    preview_model: str = option(
        "",
        doc='Tiny AutoEncoder for previews: a hub id, a diffusers folder or "builtin:tiny-taesd"; "" takes '
        "the family's (madebyollin/taesd for SD1/SD2, madebyollin/taesdxl for SDXL). Hub ids are read from "
        "the local cache; `dbspec plan --download` fetches them.",
    )
    webhook: str = option(
        "",
        doc="POST each preview to this http(s) URL as JSON with a base64 PNG; failures are logged and never "
        'stop training. "" sends nothing.',
        example="http://127.0.0.1:8000/preview",
    )
    webhook_timeout: float = option(
        2.0, doc="Seconds a webhook request may take before it is given up.", exclusive_minimum=0
    )
    refine_images: int = option(
        4,
        doc="SDXL refiner (img2img): validation refines this many instance images (the first in plan "
        "order; the plan lists them) with their captions, instead of sampling validation.prompts; 0 turns "
        "its validation off. Inert for other families.",
        minimum=0,
        maximum=64,
    )
    strength: float = option(
        0.3,
        doc="SDXL refiner: how much of each refined image is re-noised and denoised again (img2img "
        "strength; diffusers' refiner default 0.3: the last 30% of the steps).",
        exclusive_minimum=0,
        maximum=1,
    )
    text_encoder_mode: Literal["eval", "training"] = option(
        "eval",
        doc="The text encoders' module mode when validation images and the evaluation loss encode their "
        'prompts: "eval" (no dropout) or "training", the mode of training steps (train.text_encoder_mode) '
        "with the adapters' own dropouts off, as kohya's validation (which puts only its network in eval "
        "mode) and sample images do: under --gradient_checkpointing T5-XXL (Flux, SD3) encodes with its "
        "dropout. Its draws come from torch's global generators seeded at each evaluation (evaluation.seed) "
        "and each image (validation.seed + i), then restored: training draws the same, and a resume is "
        "bit-exact.",
    )


@frozen
class Checkpoints:
    every: int = option(0, doc="Save every N steps; 0 saves only at the end.", minimum=0)
    keep: int = option(3, doc="Keep the last K step checkpoints; 0 keeps all.", minimum=0)
    keep_state: int = option(
        0,
        doc="How many of the newest kept checkpoints keep their resume state (training_state.pt: optimizer, "
        "RNG and data position); older kept ones are pruned to their weights, and `--resume` continues from "
        "the newest one that has state. 0: every kept checkpoint keeps it (kohya's save_last_n_*_state).",
        minimum=0,
        example=1,
    )
    save_precision: Literal["fp32", "fp16", "bf16"] = option("fp32", doc="dtype of saved weights.")
    exports: list[Literal["single_file", "kohya_lora"]] = option(
        factory=list,
        doc="Extra formats: single_file (A1111/ComfyUI checkpoint, full runs), kohya_lora (adapter runs: "
        "LoRA in kohya's layout; LoCon, DoRA, LoHa and LoKr in the LyCORIS layout).",
    )
    export_format: Literal["safetensors", "ckpt", "pt"] = option(
        "safetensors",
        doc="File format of the `exports`: safetensors (the default, safe to load anywhere), or a pickle "
        'torch file as kohya writes it with save_model_as "ckpt" / "pt": single_file as `<name>.ckpt` '
        "(`{state_dict, epoch, global_step}`), kohya_lora as `<name>.kohya.ckpt` / `.pt` (the bare state "
        "dict, no metadata). Pickle files run code when an untrusted loader opens them; use them only for "
        "tools that need them.",
    )
    select: Literal["none", "eval_loss", "clip_t", "clip_i", "dino", "weighted"] = option(
        "none",
        doc="Pick the best checkpoint by this [evaluation] metric (eval_loss: lowest; the others: highest): "
        "`checkpoints/best` names it, `best.json` holds its step and value, and keep-K pruning never deletes "
        'it. Only checkpoints saved at an evaluation step compete. "weighted": by the highest weighted sum '
        "of the `select_weight_*` metrics (eval_loss negated, the similarities as they are).",
    )
    select_weight_eval_loss: float = option(
        0.0,
        doc='With select = "weighted": the weight of the evaluation loss, which enters the sum negated '
        "(-weight x eval_loss: a lower loss scores higher).",
        minimum=0.0,
    )
    select_weight_clip_t: float = option(
        0.0,
        doc='With select = "weighted": the weight of CLIP-T (prompt-image cosine similarity, as computed).',
        minimum=0.0,
    )
    select_weight_clip_i: float = option(
        0.0,
        doc='With select = "weighted": the weight of CLIP-I (image-image cosine similarity, as computed).',
        minimum=0.0,
    )
    select_weight_dino: float = option(
        0.0,
        doc='With select = "weighted": the weight of DINO (image-image cosine similarity, as computed).',
        minimum=0.0,
        example=1.0,
    )


EvalMetric = Literal["clip_t", "clip_i", "dino"]


@frozen
class Evaluation:
    holdout: int = option(
        0,
        doc="Instance images held out of training (a seeded split the plan lists) and scored with a stable "
        "evaluation loss at every validation step; 0 turns the evaluation loss off.",
        minimum=0,
        maximum=10_000,
    )
    holdout_dataset: str = option(
        "",
        doc="The instance dataset the held-out images come from; empty: the first instance dataset without "
        "`preserve_output`.",
    )
    seed: int = option(
        0, doc="Seeds the holdout split and the evaluation noise (its own generator).", minimum=0
    )
    split: float = option(
        0.0,
        doc="kohya's `validation_split`: the holdout drawn as kohya draws it, instead of `holdout` images. "
        "Each split instance dataset (each kohya sub-folder of a `kohya_folders` one) is shuffled with "
        "Python's `random` (see `split_draw`); training keeps the first ceil(n x (1 - split)) images, the "
        "evaluation scores the last round(n x split), so through rounding an image can both train and be "
        "scored, as in kohya. 0 turns it off.",
        minimum=0.0,
        maximum=1.0,
        example=0.2,
    )
    split_datasets: list[str] = option(
        factory=list,
        doc="With `split`: the instance datasets split, by name, in dataset order; empty: every instance "
        "dataset (kohya splits every non-reg subset of a dataset with validation_split).",
    )
    split_draw: Literal["reseed", "stream"] = option(
        "reseed",
        doc="With `split`: \"reseed\" seeds Python's random with `seed` before each dataset's shuffle (kohya "
        'with `validation_seed`); "stream" seeds it once and the shuffles follow on from each other, every '
        "split dataset for the training part, then every one again for the scored part (kohya without "
        "`validation_seed`, `seed` being its training seed).",
    )
    score: bool = option(
        True,
        doc="Score the held-out images with the evaluation loss. false: they are only held out of "
        "training (kohya's train_db.py and sdxl_train.py with `validation_split`, which never compute a "
        "validation loss): no evaluation loss, no evaluation work, the plan still lists them.",
    )
    timestep_spacing: Literal["midpoints", "linspace"] = option(
        "midpoints",
        doc='Where the fixed timesteps lie: "midpoints" of `timesteps` equal slices of the training window; '
        '"linspace": kohya\'s, int(linspace(min_timestep, max_timestep, timesteps + 2))[1:-1] '
        "(repeats kept).",
    )
    max_images: int = option(
        0,
        doc="Score only the first N held-out images (the plan's order; kohya's `max_validation_steps` at "
        "batch size 1); 0 scores all.",
        minimum=0,
    )
    order: Literal["split", "kohya_loader"] = option(
        "split",
        doc="The order the held-out images are scored in: \"split\", the plan's (kohya's split order); "
        '"kohya_loader", the batches of kohya\'s validation loader with `max_data_loader_n_workers = 0` (its '
        "bucketed datasets, one per `[[groups]]` entry, each shuffled by `random.seed(0)` when its buckets "
        "are made), so `max_batches` scores the images kohya's first `max_validation_steps` batches hold. "
        "Needs `evaluation.split`.",
    )
    max_batches: int = option(
        0,
        doc='With `order = "kohya_loader"`: score only the images of the first N batches of kohya\'s '
        "validation loader (kohya's `max_validation_steps`); 0 scores all.",
        minimum=0,
    )
    log: Literal["mean", "kohya_running_mean"] = option(
        "mean",
        doc='The evaluation loss each evaluation logs: "mean", over its held-out images and timesteps; '
        '"kohya_running_mean", kohya\'s validation loss recorder: each (image, timestep) loss is an entry, '
        "appended in the first epoch (so the mean runs on over every evaluation so far) and, from the "
        "second epoch on, written over the entry of its position in the evaluation; the mean of all "
        "entries (kohya's `loss/validation/step_average` or `epoch_average` at batch size 1).",
    )
    timesteps: int = option(
        8,
        doc="Fixed timesteps, evenly spaced over the noise schedule, each held-out image is scored at.",
        minimum=1,
        maximum=1000,
    )
    bands: int = option(
        4,
        doc="Timestep bands the evaluation loss is also reported in (low to high noise); at most "
        "`timesteps`.",
        minimum=1,
        maximum=1000,
    )
    metrics: list[EvalMetric] = option(
        factory=list,
        doc="Metrics on the validation images (DreamBooth paper): clip_t (image-prompt CLIP similarity, the "
        "identifier replaced by the class word), clip_i and dino (similarity of images of the subject to the "
        "real instance images).",
        example=["clip_t", "clip_i", "dino"],
    )
    identifier: str = option(
        "",
        doc="The subject's identifier word in prompts (e.g. ohwx); empty: the one word an instance prompt "
        "has and the class prompt lacks.",
    )
    class_word: str = option(
        "",
        doc="The class noun that replaces the identifier for CLIP-T (e.g. dog); empty: the word after the "
        "identifier in the instance prompt, when the class prompt has it too.",
    )
    clip_model: str = option(
        "openai/clip-vit-base-patch32",
        doc="CLIP model for clip_t and clip_i: hub id, local folder or builtin:tiny-clip.",
    )
    dino_model: str = option(
        "facebook/dino-vits16",
        doc="DINO ViT for dino (the paper's ViT-S/16): hub id, local folder or builtin:tiny-dino.",
    )


@frozen
class Ema:
    enabled: bool = option(False, doc="Keep an exponential moving average of the trained weights.")
    decay: float = option(0.9999, doc="EMA decay.", minimum=0, maximum=1)
    warmup: bool = option(True, doc="Ramp the decay up as min(decay, (1 + step) / (10 + step)).")
    update_every: int = option(1, doc="Update the EMA every N optimizer steps.", minimum=1)
    offload: bool = option(False, doc="Keep the EMA weights on the CPU.")


@frozen
class ScheduledSampling:
    max_step_offset: int = option(
        0,
        doc="Scheduled sampling (rollout, SimpleTuner's `scheduled_sampling_*`): before a training step, the "
        "model denoises a sample from up to this many timesteps higher down to the drawn timestep (no "
        "gradients), and the step trains on its own partly denoised latents. 0 turns it off.",
        minimum=0,
        maximum=100,
    )
    probability: float = option(
        1.0,
        doc="Chance that a sample is rolled out (its offset drawn uniformly from 0..max_step_offset).",
        minimum=0,
        maximum=1,
    )
    ramp_steps: int = option(
        0,
        doc="Ramp the probability linearly from 0 to `probability` over the first N optimizer steps; 0 "
        "applies it from the first step.",
        minimum=0,
    )
    sampler: Literal["ddim", "euler", "unipc"] = option(
        "unipc", doc="The sampler of the rollout steps (one training timestep each)."
    )


@frozen
class Pivotal:
    tokens: list[str] = option(
        factory=list,
        doc="Pivotal tuning (textual inversion + DreamBooth, diffusers' advanced_diffusion_training): new "
        "tokens added to every tokenizer and text encoder of the model, whose embeddings train together with "
        "the denoiser; write them in the prompts (e.g. `a photo of <ohwx> dog`). Empty turns it off. The "
        "embeddings train without weight decay, and captions with them bypass the text-embedding cache.",
        example=["<ohwx>"],
    )
    vectors: int = option(
        1,
        doc="Embedding vectors per token: a token of N vectors is added as `tok`, `tok_1` .. `tok_{N-1}`, "
        "and `tok` in a prompt stands for all N (as diffusers' load_textual_inversion does).",
        minimum=1,
        maximum=16,
    )
    init_word: str = option(
        "",
        doc="Initialise each new vector from this word's token embeddings (vector j from the word's token "
        "j mod its token count); empty: random, N(0, std of the embedding matrix).",
    )
    lr: float = option(
        5e-4, doc="Learning rate of the new embeddings (their own optimizer group).", minimum=0
    )
    stop_step: int = option(
        0,
        doc="The optimizer step after which the embeddings stop training (diffusers' "
        "train_text_encoder_ti_frac as a step); 0: they train the whole run.",
        minimum=0,
    )


@frozen
class Output:
    dir: str = option(
        "output", doc="Output folder for checkpoints, samples and logs, relative to the spec file."
    )
    name: str = option("dbspec", doc="Base name of exported files.")


@frozen
class Logging:
    every: int = option(10, doc="Log metrics every N steps.", minimum=1)
    tensorboard: bool = option(True, doc="Write TensorBoard events.")
    report: bool = option(
        True,
        doc="Write `report.html` into the output folder when the run ends or stops (plots of every metric, "
        "validation grids, dataset thumbnails, the plan summary; about a second of CPU per run). Off: no "
        "report at the end; `dbspec report OUT` writes it from the run's files at any time.",
    )
    wandb: bool = option(
        False,
        doc="Also log to Weights & Biases (kohya's `--log_with wandb`, diffusers' `--report_to wandb`): the "
        "same metrics at the same steps as TensorBoard, and the validation grids, from the main process. "
        "The run's config is the plan. A resumed run continues the same W&B run (its id is kept in the "
        "output folder's wandb-run.json). Needs `pip install wandb` (the `wandb` extra); log in with "
        "`wandb login` or the WANDB_API_KEY environment variable (the spec never holds the key); "
        "WANDB_MODE=offline logs to the output folder's wandb/ for a later `wandb sync`.",
    )
    wandb_project: str = option(
        "dbspec", doc="`wandb = true`: the W&B project (kohya's `--log_tracker_name`)."
    )
    wandb_run_name: str = option(
        "",
        doc="`wandb = true`: the run's display name in W&B (kohya's `--wandb_run_name`); empty names it "
        "after the output folder.",
    )
    wandb_entity: str = option(
        "", doc="`wandb = true`: the W&B user or team that owns the project; empty uses the login's default."
    )


@frozen
class Distributed:
    strategy: Literal["ddp", "fsdp", "deepspeed"] = option(
        "ddp",
        doc="How several processes (`accelerate launch`, `torchrun`) share the work: ddp (every process "
        "holds the whole model and optimizer state; gradients averaged), fsdp (PyTorch FSDP2 through "
        "accelerate: the trained models' weights, gradients and optimizer state sharded across processes) "
        "or deepspeed "
        "(DeepSpeed ZeRO through accelerate; not installed with dbspec, see docs/distributed.md). One "
        "process trains the same under every strategy.",
    )
    timeout_s: int = option(
        1800,
        doc="Upper bound in seconds on every wait between processes (accelerate's InitProcessGroupKwargs "
        "timeout): a process whose peer died or hangs stops with an error after this long instead of waiting "
        "forever. It must exceed the longest work one process does while the others wait: the first process "
        "fills the caches, generates class images, samples validation images and writes checkpoints alone. "
        "1800 s (torch's default for gloo; its NCCL default is 600 s) covers that for typical runs; raise it "
        "for thousands of class images.",
        minimum=10,
        maximum=86400,
    )
    fsdp_sharding: Literal["full_shard", "shard_grad_op"] = option(
        "full_shard",
        doc='strategy = "fsdp": full_shard (ZeRO-3 like: weights, gradients and optimizer state sharded; '
        "each block's weights gathered for its forward and backward) or shard_grad_op (ZeRO-2 like: the "
        "weights stay gathered from the forward to the backward pass; less communication, more memory). "
        'Unsharded data parallelism is strategy = "ddp".',
    )
    fsdp_cpu_offload: bool = option(
        False,
        doc='strategy = "fsdp": keep the sharded weights, gradients and optimizer state in CPU memory (the '
        "optimizer steps on the CPU); each block is copied to the GPU for its forward and backward.",
    )
    zero_stage: Literal[2, 3] = option(
        2,
        doc='strategy = "deepspeed": ZeRO stage 2 (optimizer state and gradients sharded) or 3 (the '
        "weights too, gathered per layer as they run).",
    )
    zero_offload_optimizer: bool = option(
        False,
        doc='strategy = "deepspeed": keep the optimizer state (and its step) in CPU memory (ZeRO-Offload).',
    )
    zero_offload_params: bool = option(
        False,
        doc='strategy = "deepspeed", zero_stage = 3: keep the sharded weights in CPU memory too '
        "(ZeRO-Infinity to the CPU).",
    )


@frozen
class Spec:
    spec_version: int = option(
        doc="Spec language version; must be 2 (a version 1 file is upgraded when read; `dbspec "
        "upgrade` rewrites it).",
        example=2,
    )
    model: Model = option(doc="The base model.")
    datasets: list[Dataset] = option(doc="Image datasets ([[datasets]] tables).")
    adapter: Adapter = option(
        factory=NoAdapter,
        doc='Adapter: kind = "none" (full fine-tune), "lora", "loha", "lokr", "full", "ia3", '
        '"diag-oft", "boft", "glora" (LyCORIS\'s full-weight, IA^3, Diag-OFT, BOFT and GLoRA algos on '
        'the targeted layers), "dylora" (DyLoRA, kohya\'s or LyCORIS\'s) or "tlora" (LyCORIS\'s T-LoRA).',
    )
    train: Train = option(factory=Train, doc="What trains.")
    buckets: Buckets = option(factory=Buckets, doc="Aspect-ratio bucketing.")
    groups: list[Group] = option(
        factory=list,
        doc="Dataset groups ([[groups]] tables): each has its own batch size and bucket settings, like "
        "kohya's "
        "[[datasets]]; datasets without a `group` form the default group.",
    )
    loss: Loss = option(factory=Loss, doc="Loss terms.")
    optimizer: Optimizer = option(factory=Optimizer, doc="Optimizer.")
    schedule: Schedule = option(factory=Schedule, doc="Steps, batches and the learning-rate schedule.")
    precision: Precision = option(factory=Precision, doc="Precision, quantisation and memory savers.")
    cache: Cache = option(factory=Cache, doc="Latent and text-embedding caches.")
    validation: Validation = option(factory=Validation, doc="Validation images during training.")
    checkpoints: Checkpoints = option(factory=Checkpoints, doc="Checkpoints and exports.")
    evaluation: Evaluation = option(
        factory=Evaluation, doc="Evaluation metrics at validation steps and the best checkpoint."
    )
    ema: Ema = option(factory=Ema, doc="Exponential moving average of weights.")
    scheduled_sampling: ScheduledSampling = option(
        factory=ScheduledSampling, doc="Scheduled sampling (rollout): training on the model's own samples."
    )
    pivotal: Pivotal = option(
        factory=Pivotal, doc="Pivotal tuning: new token embeddings trained with the denoiser."
    )
    output: Output = option(factory=Output, doc="Where outputs go.")
    logging: Logging = option(factory=Logging, doc="Metrics logging.")
    distributed: Distributed = option(
        factory=Distributed,
        doc="Several processes: DDP, FSDP or DeepSpeed ZeRO, and the bound on their waits.",
    )


TABLE_CLASSES = (
    MergeAdapter,
    Model,
    NoAdapter,
    AdapterBlock,
    TextEncoderBlock,
    DyloraBlock,
    LoraAdapter,
    LohaAdapter,
    LokrAdapter,
    ScaleBlock,
    FullAdapter,
    Ia3Adapter,
    OftBlock,
    DiagOftAdapter,
    BoftAdapter,
    GloraBlock,
    GloraAdapter,
    DyloraAdapter,
    TloraBlock,
    TloraAdapter,
    Train,
    Dataset,
    Buckets,
    Group,
    Loss,
    OptimizerBlock,
    Optimizer,
    Schedule,
    Precision,
    Cache,
    Validation,
    Checkpoints,
    Evaluation,
    Ema,
    ScheduledSampling,
    Pivotal,
    Output,
    Logging,
    Distributed,
    Spec,
)
for _cls in TABLE_CLASSES:
    attrs.resolve_types(_cls, globals(), locals())


def table_classes() -> dict[str, tuple[type, ...]]:
    """Top-level table name -> the class(es) its table structures into (adapter: one per variant)."""
    out: dict[str, tuple[type, ...]] = {}
    for field in attrs.fields(Spec):
        if field.name == "adapter":
            out[field.name] = tuple(ADAPTER_VARIANTS.values())
        elif field.name == "datasets":
            out[field.name] = (Dataset,)
        elif field.name == "groups":
            out[field.name] = (Group,)
        elif attrs.has(field.type):
            out[field.name] = (field.type,)
    return out
