"""The Plan: everything a run needs, resolved. Frozen, JSON-serialisable, versioned.

The runtime reads a Plan and nothing else, so every choice the spec implies is made here:
paths are absolute, counts are integers, dtypes are per component, and `origins` says where each
value came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Literal

import attrs

from dbspec.families import Family

PLAN_VERSION = 4  # 2: checkpoint and validation steps are a StepRange; 3: loss.teacher, class-image sampling;
# 4: train_unet -> train_denoiser, adapter.unet_targets -> adapter.denoiser_targets (io.LEGACY_RUN_NAMES);
#    kohya noise and loss options (loss.noise, huber schedule, timestep weights, prior_reduction);
#    DatasetPlan.caption_processing
frozen = attrs.frozen(kw_only=True)

Size = tuple[int, int]  # (width, height) in pixels
Dtype = Literal["fp32", "fp16", "bf16"]


@frozen
class TargetEnv:
    """What the plan is compiled for: probed by the CLI, or given with --target."""

    device: Literal["cuda", "mps", "cpu"]
    memory_bytes: int = 0  # device memory (CUDA/MPS); 0 = unknown
    bf16: bool = False
    compute_capability: str = ""  # CUDA only, e.g. "8.9"
    measure_disk: bool = False  # this machine (probed): the compiler measures free disk at the run's folders
    free_disk_bytes: int = (
        0  # at output.dir (its nearest existing folder), as the compiler measured; 0 = unknown
    )
    cache_free_disk_bytes: int = 0  # at cache.dir, likewise; 0 = unknown
    shared_disk: bool = False  # output.dir and cache.dir are on one device: their needs add up
    processes: int = 1
    description: str = ""


@frozen
class Origin:
    kind: Literal["spec", "--set", "default", "derived", "converted"]
    where: str = ""  # "spec.toml:12:1" for spec/--set values
    note: str = ""  # for derived values: what they were derived from


@frozen
class MergePlan:
    """A kohya-layout LoRA file merged into the base weights before training (model.merge_adapters)."""

    path: str  # absolute
    multiplier: float
    fingerprint: str  # the file's content fingerprint (part of the merged components' identities)
    components: tuple[str, ...]  # the plan's component names the file's layers merge into
    layers: int  # modules the file holds for those components (each rounded to precision.mixed's dtype)


@frozen
class ModelPlan:
    base: str
    source: Literal["builtin", "diffusers", "single_file", "ckpt", "hub"]
    path: str  # resolved absolute path; "" when a hub id is not in the local cache
    resolved: bool
    family: Family
    prediction: Literal["epsilon", "v_prediction", "flow_matching"]
    revision: str
    config: str  # configs for a single-file base (resolved path or hub id); "" = diffusers' default
    vae: str  # replacement VAE (resolved path or hub id); "" keeps the base model's
    allow_pickle: bool
    clip_skip: int
    identity: str  # stable id of the weights, part of every cache key
    vae_identity: str  # the VAE that encodes latents (replacement VAE or the base model's)
    text_identity: str  # the text encoder(s) and tokenizer(s)
    params: dict[str, int]  # component -> parameter count
    variant: str = ""  # diffusers weight variant, e.g. "fp16"
    notes: tuple[str, ...] = ()
    max_tokens: int = 75  # prompt tokens: 75 = one CLIP window; 150/225 = 2/3 windows joined
    t5_max_length: int = 256  # T5 tokens (families with a T5 text encoder: SD3)
    t5_attention_mask: bool = False  # T5 encodes with its padding mask; Flux masks padded text keys too
    clip_attention_mask: bool = False  # SD3: CLIP-L/G encode with their padding mask (apply_lg_attn_mask)
    aesthetic_score: float = 6.0  # the SDXL refiner's aesthetic-score conditioning in training
    negative_aesthetic_score: float = 2.5  # its negative branch in refining validation
    weighted_captions: bool = False  # A1111 attention syntax scales token hidden states (kohya)
    # Per-component weight files (resolved paths) over the base model's weights: the denoiser's; one per text
    # encoder in the family's order ("" keeps the base's). The identities include them.
    denoiser_file: str = ""
    text_encoder_files: tuple[str, ...] = ()
    # model.scaled_pos_embed: kohya's latent sides (round(sqrt(w x h)) // 8 of each dataset resolution,
    # sorted, distinct) whose scaled sin-cos position tables replace the denoiser's stored one in the run
    # (runtime/scaled_pos.py); () = off
    scaled_pos_embed: tuple[int, ...] = ()
    # LoRA files merged into the base weights before training, in order (kohya --base_weights)
    merge_adapters: tuple[MergePlan, ...] = ()


# the block kinds whose LyCORIS bypass forward differs from their default one (a lora / loha / lokr adapter's
# `bypass`): Diag-OFT and BOFT rotate the bias too, DyLoRA adds its update unscaled, IA^3 scales the bias too
BYPASS_KINDS = ("diag-oft", "boft", "dylora", "ia3")
# the block kinds whose LyCORIS bypass forward drops its update by the network's dropout (LoConModule,
# LohaModule, LokrModule, GLoRAModule, TLoraModule): an IA^3 / DyLoRA adapter's `dropout` reaches them alone
BYPASS_DROPOUT_KINDS = ("lora", "loha", "lokr", "glora", "tlora")


def own_bypass_fits(adapter: str, block: str) -> bool:
    """A block of kind `block` ("adapter": the adapter's own) on an `adapter` adapter may take a bypass of its
    own (a LyCORIS map entry's bypass_mode): its layers are Diag-OFT, BOFT, DyLoRA or IA^3 ones (their bypass
    forward differs; runtime/mixed_kinds.py set_block_bypass), whichever the adapter's kind (a full adapter's
    own layers have none), or a T-LoRA adapter's own (TLoraModule's bypass forward,
    runtime/lycoris_tlora.py). The spec rule (compiler rules.block_own_bypass, DBS592) and plan files
    (plan/validate.py) alike."""
    if adapter == "tlora" and block in ("adapter", "tlora"):
        return True
    return (adapter if block in ("adapter", adapter) else block) in BYPASS_KINDS


@frozen
class BlockPlan:
    """The denoiser modules whose path `pattern` matches (re.search; the first block wins): their ranks and
    alphas (rank 0: not adapted) and the learning-rate scale of their adapters."""

    pattern: str
    # the matched layers' algorithm in place of the adapter's kind (LyCORIS preset maps' `algo`): "adapter"
    # (the adapter's), "lora", "loha", "lokr", "full", "ia3" (LyCORIS's full algo, IA^3: the rank only
    # switches them on), "diag-oft", "boft" (the rank its block-size hint, the alpha its constraint), "glora",
    # "dylora" (LyCORIS's DyLoraModule, the rank in blocks of `unit`), "tlora" (LyCORIS's TLoraModule: each
    # layer's SVD start at the rank)
    kind: Literal[
        "adapter", "lora", "loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"
    ] = "adapter"
    rank: int
    alpha: float
    conv_rank: int = 0
    conv_alpha: float = 1.0
    lr_scale: float = 1.0
    lr: float = 0.0  # the adapters' own rate in place of the denoiser's times lr_scale; 0: not set
    group: str = ""  # an optimizer group of their own: the group's name + "_" + this; "": none
    factor: int = 0  # LoKr: the layers' Kronecker split factor in place of the adapter's; 0: the adapter's
    # LoKr: the layers' decompose_both / full_matrix / tucker / unbalanced_factorization, "on" or "off" where
    # they differ from the adapter's (full_matrix settles decompose_both and tucker off); "adapter": the
    # adapter's
    decompose_both: Literal["adapter", "on", "off"] = "adapter"
    full_matrix: Literal["adapter", "on", "off"] = "adapter"
    tucker: Literal["adapter", "on", "off"] = "adapter"
    unbalanced_factorization: Literal["adapter", "on", "off"] = "adapter"
    # LoKr: LyCORIS's rs_lora on the layers whose two factors are full (sqrt(rank) in place of 1), "on" or
    # "off" where it differs from the adapter's lokr_rank_stabilized; "adapter": the adapter's
    rank_stabilized: Literal["adapter", "on", "off"] = "adapter"
    # LoHa / LoKr, LoRA with LyCORIS's rank-dropout forms: the layers' rank-dropout rescale where it differs
    # from the adapter's (LyCORIS map entries)
    rank_dropout_scale: Literal["adapter", "on", "off"] = "adapter"
    # LoRA/LoCon, LoHa, LoKr: LyCORIS's trained scalar on the layers, "on" / "off" where it differs from the
    # adapter's `scalar`; "adapter": the adapter's
    scalar: Literal["adapter", "on", "off"] = "adapter"
    # LoRA/LoCon, LoHa, LoKr: LyCORIS's weight decomposition (runtime/lycoris_dora.py) on the layers, "on" /
    # "off" where it differs from the adapter's `dora`; "adapter": the adapter's
    dora: Literal["adapter", "on", "off"] = "adapter"
    # the layers' LyCORIS weight-decomposition axis where it differs from the adapter's `dora_axis` (LyCORIS
    # map entries' wd_on_out; only on layers that decompose); "adapter": the adapter's
    dora_axis: Literal["adapter", "output", "input"] = "adapter"
    # Diag-OFT: the layers' trained row rescale, "on" / "off" where it differs from the adapter's
    # oft_rescaled (LyCORIS map entries' own `rescaled`; their own constraint is the block's alpha)
    rescaled: Literal["adapter", "on", "off"] = "adapter"
    # DyLoRA: the layers' ranks per block in place of the adapter's dylora_unit (LyCORIS map entries' own
    # `block_size`); 0: the adapter's. A block of kind "dylora" on another kind's adapter: its unit (>= 1)
    unit: int = 0
    # LyCORIS bypass_mode of the layers, settled: the block's own (a preset file's map entry's bypass_mode),
    # else the adapter's `bypass`; it acts on Diag-OFT, BOFT, DyLoRA and IA^3 layers (runtime/blocks.py
    # set_block_bypass), whose bypass forward differs from their default one; None (plan files written
    # before it): the adapter's
    bypass: bool | None = None
    # DyLoRA: the layers' update scaled by 0 (LyCORIS's alpha buffer a file set to 0): built, drawing their
    # module_dropout, adding nothing, zero gradients
    zero_scale: bool = False
    # T-LoRA: the weight's singular triplets the layers start from (LyCORIS's sig_type: "principal", "last",
    # "middle"; a preset file's map entry's own)
    sig_type: Literal["principal", "last", "middle"] = "principal"
    # T-LoRA: False where the layers start from the SVD of a random matrix drawn from torch's generator as
    # the adapter is built (LyCORIS's use_data_init; a preset file's map entry's own), not their weight's
    data_init: bool = True
    # IA^3 beside another kind: True where the layers scale their input channels (LyCORIS's train_on_input;
    # a preset file's map entry's own), peft's rank INPUT_SIDE_RANK (runtime/blocks.py)
    on_input: bool = False


def denoiser_held(blocks) -> bool:
    """Whether `blocks` (the spec's or the plan's [[adapter.blocks]]) hold every denoiser adapter at
    lr_scale 0: each block that adapts layers ahead of one whose empty pattern matches every path (that
    one included) is held, no own rate (kohya's U-Net modules at unet_lr 0, convert/kohya/held_unet.py):
    the adapter is built, loaded from init_weights and run under grad, but nothing of it trains."""
    for block in blocks:  # OFT blocks have no rank (their block size): they adapt
        adapts = getattr(block, "rank", 1) or getattr(block, "conv_rank", 0)
        if adapts and (getattr(block, "lr", 0.0) or getattr(block, "lr_scale", 1.0)):
            return False
        if block.pattern == "":
            return True
    return False


@frozen
class FusedPlan:
    """One fused Linear of the original model whose diffusers parts share a LoRA down-projection
    (adapter.fused_projections): in every block of `blocks`, the adapted modules of `parts` share one
    `lora_A`."""

    name: str  # kohya's module name inside a block (img_attn_qkv)
    blocks: str  # the diffusers ModuleList of the blocks (transformer_blocks)
    parts: tuple[str, ...]  # the diffusers children inside a block, in the original layer's row order


@frozen
class AdapterPlan:
    kind: Literal[
        "none", "lora", "loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"
    ]
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0  # lora: dropout on the adapter's input
    denoiser_targets: tuple[str, ...] = ()
    text_encoder_targets: tuple[str, ...] = ()
    # the second CLIP encoder's (component text_encoder_2: SDXL's and SD3's OpenCLIP bigG) targets; None
    # (plans before it): text_encoder_targets
    text_encoder_2_targets: tuple[str, ...] | None = None
    # train.t5: the T5 encoders' adapted Linears (kohya's T5Attention and T5DenseGatedActDense children); ()
    # when no T5 trains
    t5_targets: tuple[str, ...] = ()
    # LyCORIS train_norm: the CLIP encoders' LayerNorms (suffixes) whose weight and bias train added offsets
    # (runtime/norm_offsets.py); () when none
    text_encoder_norms: tuple[str, ...] = ()
    # the second CLIP encoder's (component text_encoder_2) norms; None (plans before it): text_encoder_norms
    text_encoder_2_norms: tuple[str, ...] | None = None
    # LyCORIS train_norm: the U-Net's GroupNorms and LayerNorms (suffixes) whose weight and bias train added
    # offsets (runtime/norm_offsets.py); () when none
    denoiser_norms: tuple[str, ...] = ()
    # the norm offsets' rank dropout (NormModule's `torch.rand(width) < rate`, kept offsets unscaled), the
    # adapter's layers never reading it (adapter.norm_rank_dropout); 0.0 without norm offsets; None (plans
    # before it): rank_dropout
    norm_rank_dropout: float | None = None
    # Convolutions (LoCon): denoiser module suffixes adapted at conv_rank / conv_alpha; () when conv_rank is
    # 0.
    conv_rank: int = 0
    conv_alpha: float = 0.0
    conv_targets: tuple[str, ...] = ()
    dora: bool = False  # a learned magnitude beside the update (DoRA): peft's or LyCORIS's (dora_form)
    # with dora: the magnitude per output row ("output") or input column ("input"), LyCORIS's wd_on_output
    dora_axis: Literal["output", "input"] = "output"
    # with dora: "lycoris" trains LyCORIS's weight decomposition (runtime/lycoris_dora.py: LoHa, LoKr, and
    # LoRA per input column, with the Tucker form or with dora_form "lycoris"), "peft" peft's DoRA
    dora_form: Literal["peft", "lycoris"] = "peft"
    factor: int = -1  # lokr: the Kronecker split (-1: near the square root)
    decompose_both: bool = False  # lokr: the small factor low-rank too
    # lokr: how each dimension is split into the two Kronecker factors: "lycoris" as LyCORIS's LokrModule
    # (lycoris.functional.factorization: the smaller part first, also when the factor exceeds the square
    # root; the compiler's, for kind lokr); "peft" (plans before, other kinds) peft's factorization, the
    # factor first whatever its size. The two differ only for a factor above 1 (runtime/lokr_factor.py).
    lokr_factorization: Literal["peft", "lycoris"] = "peft"
    # lokr: the output split swapped, its larger part in the first factor (LyCORIS unbalanced_factorization)
    unbalanced_factorization: bool = False
    # lokr: a module whose two factors are both full matrices (the rank at least half the larger factor's
    # size) trains at scale 1, alpha unused, as LyCORIS's LokrModule does; False (plans before): alpha / rank
    lokr_unit_scale: bool = False
    # lokr: with lokr_unit_scale, those modules train at scale sqrt(their rank) instead (LyCORIS rs_lora)
    lokr_rank_stabilized: bool = False
    # lokr: both Kronecker factors full on every layer, whatever the rank (LyCORIS full_matrix), at scale 1
    full_matrix: bool = False
    # lora, loha, lokr: a trained scalar (from 0) multiplies each layer's update (LyCORIS use_scalar)
    scalar: bool = False
    # ia3: the targets whose scale acts on their input channels (LyCORIS train_on_input); () for none
    input_targets: tuple[str, ...] = ()
    # diag-oft, boft: LyCORIS's lora_dim (the block-size hint), COFT constraint, trained row rescale
    oft_block_size: int = 0
    oft_constraint: float = 0.0
    oft_rescaled: bool = False
    # diag-oft: "lycoris" (LyCORIS's DiagOFTModule: oft_block_size the block-size hint) or "kohya" (kohya's
    # networks.oft OFTModule: oft_blocks blocks per layer, always clamped to oft_constraint x width, the
    # layer run on the whole rotated weight; runtime/lycoris_oft.py KohyaOftLayer)
    oft_form: Literal["lycoris", "kohya"] = "lycoris"
    oft_blocks: int = 0  # oft_form "kohya": kohya's network_dim, the number of blocks per layer
    tucker: bool = False  # k x k convolutions as a Tucker core (LyCORIS use_tucker; lora: lora_mid)
    rank_dropout: float = 0.0  # loha, lokr, diag-oft (its rotations' dropout), glora in bypass
    # loha, lokr with rank_dropout: the kept rows divided by the kept share (LyCORIS rank_dropout_scale)
    rank_dropout_scale: bool = False
    module_dropout: float = 0.0  # loha, lokr
    # lora with rank_dropout: whose mask (adapter.rank_dropout_form): "kohya" (networks.lora, per sample and
    # rank, rescaled), "lycoris" (LoCon: torch.rand(out), output rows), "lycoris_bypass" (torch.rand(rank));
    # loha, full, ia3 with rank_dropout and blocks of kind lora: "lycoris", those blocks' LoCon layers' (else
    # "kohya"); lokr: "lycoris_bypass" (LokrModule's bypass forward: its LoKr layers none, its lora / loha
    # blocks LoConModule's rank mask / LohaModule's row mask), else "kohya" (each LoKr layer's row mask)
    rank_dropout_form: Literal["kohya", "lycoris", "lycoris_bypass"] = "kohya"
    # lora: the kohya_lora export's module names, kohya's network's or LyCORIS's (Flux / Chroma T5-XXL)
    kohya_names: Literal["kohya", "lycoris"] = "kohya"
    # lora: dropout on the down projection's output (kohya networks.lora network_dropout); 0 = off
    down_dropout: float = 0.0
    # lora: dropout on the update's output (LyCORIS LoCon's bypass `dropout`); 0 = off
    output_dropout: float = 0.0
    # glora, diag-oft, boft: LyCORIS bypass_mode (the update computed on activations: OFT rotates the output,
    # its bias too); glora with bypass: torch's dropout on each pair's output (LyCORIS dropout)
    bypass: bool = False
    bypass_dropout: float = 0.0
    # lora: the kohya-layout file the adapter starts from (absolute; "" for peft's random init) and how many
    # of its layers load (those of components that train).
    init_weights: str = ""
    init_layers: int = 0
    # lora: init_weights loaded as kohya loads it (strict=False): layers the file lacks keep their init, file
    # layers the adapter lacks are ignored (adapter.init_partial); False: both refused when the run loads it
    init_partial: bool = False
    # lora: init_weights' alpha tensors "match" the layers' (checked), or "ignore"d: the layers train at the
    # adapter's alpha / rank on the file's weights, as kohya's networks.lora does (adapter.init_alpha)
    init_alpha: Literal["match", "ignore"] = "match"
    # full: init_weights' diff / diff_b times this start the copies (kohya --dim_from_weights: 2)
    init_scale: float = 1.0
    multiplier: float = 1.0  # lora: the update's scale in this run (kohya's network multiplier); alpha kept
    # lora: kohya's max-norm regularisation (--scale_weight_norms) after each micro-batch and optimizer step;
    # 0 = off (runtime/max_norm.py)
    max_norm: float = 0.0
    # with max_norm: "kohya" (networks.lora: up and down each times the square root of the ratio) or
    # "lycoris" (lycoris.kohya's per-module apply_max_norm: LoCon's and LoHa's scalar times the ratio, LoKr's
    # factors each times its n-th root; runtime/max_norm.py)
    max_norm_form: Literal["kohya", "lycoris"] = "kohya"
    # max_norm_form "kohya" with init_weights: the alpha the file holds for each of its modules, by the file's
    # (kohya's) module name, which kohya's max-norm scales that module's update by (load_weights put it in the
    # module's alpha buffer, which apply_max_norm_regularization reads; under init_alpha "ignore" the layer
    # trains at its own alpha); layers the file lacks use their own. {} otherwise
    max_norm_alphas: dict[str, float] = attrs.field(factory=dict)
    # lora: LoRA-FA (kohya networks.lora_fa), the downs frozen at their init; their gradient "none", or
    # "kohya" (computed, accumulated, counted in the clip norm; runtime/lora_fa.py)
    freeze_down: bool = False
    frozen_down_grad: Literal["none", "kohya"] = "none"
    # lora: per-block ranks, alphas and learning-rate scales of the denoiser's adapters (kohya block_dims,
    # block_alphas, conv_block_dims, conv_block_alphas, down/mid/up_lr_weight); () for one rank everywhere.
    blocks: tuple[BlockPlan, ...] = ()
    # lora: per-module ranks and alphas of the text encoders' adapters, patterns searched in
    # `<component>.<module path>` (CLIP paths with `text_model.`); () for the adapter's rank everywhere
    text_encoder_blocks: tuple[BlockPlan, ...] = ()
    # lora: the fused layers whose parts share one down-projection (adapter.fused_projections); () for none
    fused: tuple[FusedPlan, ...] = ()
    # dylora: ranks per block (kohya networks.dylora `unit`, LyCORIS `block_size`); 0 for other kinds
    dylora_unit: int = 0
    # dylora: whose training forward (runtime/dylora.py): "kohya" (every rank, alpha / rank x
    # sqrt(rank / ((b + 1) unit))) or "lycoris" (blocks 0..b, alpha / (b + 1)); "" for other kinds
    dylora_form: Literal["", "kohya", "lycoris"] = ""
    # lora: the fused layers whose separate parts (fused_projections false, kohya's split_qkv) draw their
    # dropouts once per layer (adapter.fused_dropout); () for none
    split_fused: tuple[FusedPlan, ...] = ()
    # lora: LoRA-GGPO's weight- and gradient-norm shares (kohya lora_flux ggpo_sigma, ggpo_beta;
    # runtime/ggpo.py); None for off
    ggpo_sigma: float | None = None
    ggpo_beta: float | None = None
    # Adapter parameters the run trains, per component (the compiler's count from the family's facts).
    params: dict[str, int] = attrs.field(factory=dict)


@frozen
class ImagePlan:
    path: str  # absolute
    rel: str  # relative to the dataset folder
    sha: str  # content hash
    size: Size  # as trained: upright (EXIF orientation applied) unless the dataset ignores EXIF orientation
    orientation: int  # the file's EXIF orientation tag (1 if none)
    caption: str
    repeats: int  # samples per epoch drawn from this image
    bucket: Size
    resized: Size
    crop: tuple[int, int]  # nominal (centre) crop offset inside `resized`
    mask: str = ""  # absolute mask path, "alpha" for the alpha channel, "" for none
    mask_sha: str = ""
    latent_keys: tuple[str, ...] = ()  # one per flip state cached; () when latents are not cached
    text_key: str = ""  # "" when text embeddings are not cached

    def source_files(self) -> tuple[tuple[str, str], ...]:
        """(path, content hash) of the files this image is read from: the image and a mask file. Class images
        the run generates are made from the plan, so they have none to check."""
        if self.sha.startswith("generated:"):
            return ()
        files = [(self.path, self.sha)]
        if self.mask and self.mask != "alpha":
            files.append((self.mask, self.mask_sha))
        return tuple(files)


@frozen
class GeneratePlan:
    """Class images to make before training."""

    folder: str
    count: int  # images to generate now (the others of `seeds` exist); not part of the run hash
    prompt: str
    resolution: Size
    seeds: tuple[int, ...]  # every generated class image's seed, made already or not
    manifest_key: (
        str  # hash of (base model identity, prompt, resolution, sampling settings): a change regenerates
    )
    scheduler: Literal["ddpm", "ddim", "euler", "euler_a", "dpmpp", "unipc", "pndm", "flow_euler"]
    steps: int  # inference steps per image
    guidance: float
    batch_size: int  # images per pipeline call; the images do not depend on it (one generator per seed)


@frozen
class CaptionPlan:
    """kohya's caption processing for one dataset, settled: the options (kohya's names), then the decisions.

    `dbspec.plan.captions` applies it: the runtime draws each sample's caption from it every step, with a
    generator seeded by the sample (so a resumed run draws the same captions).
    """

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str = ""
    enable_wildcard: bool = False
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0  # epochs counted from 1, as kohya counts them
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0  # resolved: a ratio below 1 is already floor(ratio x total steps); 0 = off
    # Decisions. Varying images draw a new caption every step (shuffle, tag dropout, wildcards, warm-up):
    # their text embeddings cannot be cached and the text encoder runs forward for each of their samples.
    varying_images: int = 0
    varying_samples_per_epoch: int = 0
    empty_text_key: str = ""  # the dropped (empty) caption's cache key; "" without dropout or a text cache

    @property
    def active(self) -> bool:
        """Whether any option differs from kohya's defaults (captions are used as written otherwise)."""
        return self != CaptionPlan(
            varying_images=self.varying_images,
            varying_samples_per_epoch=self.varying_samples_per_epoch,
            empty_text_key=self.empty_text_key,
        )

    @property
    def dropout(self) -> bool:
        return self.caption_dropout_rate > 0 or self.caption_dropout_every_n_epochs > 0


@frozen
class FolderPlan:
    """One kohya `N_class tokens` sub-folder of a `layout = "kohya_folders"` dataset, as the plan found it."""

    name: str  # the sub-folder's name, e.g. "10_sks dog"
    repeats: int  # N x the dataset's repeats
    prompt: str  # the caption fallback: the words after `N_` (or the dataset's prompt)
    images: int


@frozen
class FaceBox:
    """One image's face box, read from its file name `name_cx_cy_w_h.ext` (pixels of the stored image)."""

    image: str  # the image's `rel` (its path in the dataset folder)
    cx: int
    cy: int
    w: int
    h: int


@frozen
class FaceCropPlan:
    """kohya's face-crop augmentation of one dataset (`dbspec.plan.face_crop` applies it per sample and step).

    Images with a box are scaled and cut around the face into the dataset's square resolution; the others
    keep the plan's cover-resize and crop. The dataset's latents are not cached (the window moves each step).
    """

    range: tuple[float, float]  # kohya's face_crop_aug_range: the face spans 1/hi .. 1/lo of the resolution
    faces: tuple[FaceBox, ...]


@frozen
class DatasetPlan:
    name: str
    role: Literal["instance", "class"]
    path: str
    resolution: int
    crop: Literal["center", "random"]
    flip: bool
    mask_source: Literal["none", "folder", "alpha"]
    images: tuple[ImagePlan, ...]
    skipped: tuple[str, ...] = ()  # "file: reason" for each left-out file
    folders: tuple[FolderPlan, ...] = ()  # layout = "kohya_folders": the sub-folders found
    samples_per_epoch: int = 0
    generate: GeneratePlan | None = None
    caption_processing: CaptionPlan = CaptionPlan()
    group: str = ""  # its [[groups]] name; "" = the default group (schedule.batch_size)
    color_aug: bool = False  # kohya colour augmentation per sample (runtime/color_aug.py); no latent cache
    face_crop: FaceCropPlan | None = None  # kohya face-crop augmentation; None = off
    resolution_height: int = 0  # a non-square resolution x resolution_height (kohya's W,H); 0 = square
    # the loss target of its samples is the base model's own prediction (adapter off, no gradient; kohya's
    # diff_output_preservation): one extra denoiser forward over those rows per step (runtime/preserve.py)
    preserve_output: bool = False
    # apply: EXIF-tagged images (and mask files) train upright; ignore: as stored (kohya). Image sizes are
    # those trained.
    exif_orientation: Literal["apply", "ignore"] = "apply"
    # cover: resized to cover the bucket, then cropped; none: the resolution cut from the unresized image
    # (kohya with buckets and cache_latents off); each image's `resized` is then its own size
    resize: Literal["cover", "none"] = "cover"
    # how a mask file becomes the loss mask: its luminance, or its red channel (kohya's conditioning masks);
    # "luminance" without mask files
    mask_channel: Literal["luminance", "red"] = "luminance"


@frozen
class BucketPlan:
    size: Size
    instance_samples: int
    class_samples: int
    batches_per_epoch: int
    short: bool = False  # fewer samples than the batch size: one smaller batch
    group: str = ""  # the group whose datasets fill it ("" = the default group); batches never mix groups


@frozen
class GroupPlan:
    """One dataset group (kohya's [[datasets]]): its batch size, bucket settings and samples per epoch.

    Plan.groups is empty when the spec has no [[groups]] (one group: schedule.batch_size and [buckets]);
    otherwise it has one entry per group used, the default group ("") first when a dataset has no `group`.
    """

    name: str
    batch_size: int
    bucket_mode: Literal["aspect", "square", "no_upscale"]
    bucket_min_size: int  # resolved per dataset when 0 (half its resolution); unused unless aspect
    bucket_max_size: int  # likewise (twice its resolution)
    bucket_step: int
    datasets: tuple[str, ...]
    instance_samples: int  # per epoch
    class_samples: int  # per epoch, after balancing against this group's instance samples
    batches_per_epoch: int  # over all processes: per bucket ceil(samples / batch_size)


@frozen
class StepRange:
    """Steps `every`, 2 x `every`, ... below `end`, then `end` itself: the same size for any run length.

    every = 0 gives only `end`; end = 0 gives no step at all (validation without prompts).
    """

    every: int
    end: int

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int) or not 0 < step <= self.end:
            return False
        return step == self.end or (self.every > 0 and step % self.every == 0)

    def __len__(self) -> int:
        if self.end <= 0:
            return 0
        return 1 if self.every <= 0 else (self.end - 1) // self.every + 1

    def __iter__(self) -> Iterator[int]:
        if self.end <= 0:
            return
        if self.every > 0:
            yield from range(self.every, self.end, self.every)
        yield self.end

    def first(self, n: int) -> tuple[int, ...]:
        return tuple(islice(self, n))

    def spread(self, n: int) -> tuple[int, ...]:
        """At most `n` of the steps, evenly spread, the last always included (for summaries and LR points)."""
        count = len(self)
        if count <= n:
            return tuple(self)
        picks = sorted({i * (count - 1) // (n - 1) for i in range(n)})  # integers: exact for any run length
        return tuple(self.end if i == count - 1 else (i + 1) * self.every for i in picks)


# Optimizer kinds that are bitsandbytes classes (the runtime keeps bitsandbytes visible for them).
BNB_OPTIMIZER_KINDS = (
    "adamw8bit",
    "paged_adamw",
    "paged_adamw8bit",
    "ademamix",
    "ademamix8bit",
    "paged_ademamix",
    "paged_ademamix8bit",
    "lion8bit",
    "paged_lion",
    "paged_lion8bit",
)


# Schedules the runtime builds as torch scheduler classes from `SchedulePlan.torch` (the compiler computes
# their curve without torch: compiler/torch_schedules.py)
TORCH_CLASS_SCHEDULES = (
    "one_cycle",
    "step",
    "multi_step",
    "exponential",
    "linear_lr",
    "constant_lr",
    "cyclic",
    "polynomial_lr",
)


@frozen
class GroupBoundsPlan:
    """One optimizer parameter group's bounds for torch's CyclicLR / OneCycleLR, from the spec's per-group
    tables (schedule.base_lr, schedule.max_lr): the runtime passes torch one list entry per group."""

    name: str  # the group's name (runtime/optim.py param_groups: denoiser, text_encoder, ..., pivotal)
    rate: float  # the group's own rate (max_lr 0 stands for it)
    base_lr: float  # cyclic: the cycle's low point (the lr table's value, or base_lr's number)
    max_lr: float  # cyclic, one_cycle: the peak; 0 = the group's own rate
    base_momentum: float  # with cycle_momentum: the momentum (beta1) at the LR's peak
    max_momentum: float  # ... and at its low points


@frozen
class TorchSchedulePlan:
    """The arguments of torch's StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR and OneCycleLR (the
    one the plan's lr_schedule names uses its own; the rest keep their defaults). OneCycleLR's total_steps is
    the plan's t_max."""

    step_size: int
    gamma: float
    milestones: tuple[int, ...]
    start_factor: float
    end_factor: float
    total_iters: int
    factor: float
    max_lr: float  # one_cycle: 0 = each group's own rate
    pct_start: float
    anneal_strategy: str
    div_factor: float
    final_div_factor: float
    three_phase: bool
    cycle_momentum: bool
    base_momentum: float
    max_momentum: float
    # torch's CyclicLR (cyclic): the cycle from base_lr (it replaces every group's rate) to max_lr (0 = each
    # group's own rate), step_size_down 0 = step_size_up; cyclic's gamma, momenta and cycle_momentum above
    base_lr: float = 0.0
    step_size_up: float = 2000  # a whole number as an int (compiler/torch_schedules.py _steps)
    step_size_down: float = 0
    cyclic_mode: str = "triangular"
    # per-group bounds (a table in schedule.base_lr or max_lr), every optimizer group in the runtime's order;
    # () = base_lr and max_lr above hold for every group (the number form)
    groups: tuple[GroupBoundsPlan, ...] = ()
    # what a max_lr of 0 (the number, or a group's) stands for: "own_lr" each group's own rate, "literal" a
    # peak of 0 as torch reads it (schedule.max_lr_zero; kohya's max_lr=0)
    max_lr_zero: str = "own_lr"

    def peak(self, max_lr: float, rate: float) -> float:
        """The peak torch receives for a group whose max_lr is `max_lr` and whose own rate is `rate`."""
        return max_lr if max_lr or self.max_lr_zero == "literal" else rate


@frozen
class StartPlan:
    """Where a run that starts later starts (schedule.start_step / start_epoch / skip_data / start_lr, kohya's
    initial_step / initial_epoch / skip_until_initial_step): the step counter's first value, the data's epoch
    (0-based) and the batches of it already taken (per process), the LR schedule's position and the step
    counter's value when the run ends."""

    requested: int  # the start step asked for (start_epoch resolved)
    skip_data: bool
    step: int  # the counter's value before the first trained step (requested with skip_data, else 0)
    epoch: int  # 0-based data epoch of the first trained step
    position: int  # batches of that epoch already taken before the first trained step (per process)
    lr_step: int  # LR scheduler steps taken before the first trained step
    end_step: int  # the counter's value at the end: total_steps, or earlier when the epochs run out first


@frozen
class SchedulePlan:
    total_steps: int  # optimizer steps
    epochs: int
    batch_size: int
    accumulation: int
    processes: int
    batches_per_epoch: int  # per process
    steps_per_epoch: int
    instance_samples_per_epoch: int
    class_samples_per_epoch: int
    lr_schedule: str
    warmup_steps: int
    cycles: int
    power: float  # polynomial
    min_lr_ratio: float  # cosine_with_min_lr, warmup_stable_decay
    decay_steps: int  # warmup_stable_decay
    t_max: int  # cosine_annealing (the run's steps unless the spec gives it)
    eta_min: float  # cosine_annealing, cosine_annealing_warm_restarts
    t_mult: int  # cosine_annealing_warm_restarts
    text_encoder_stop_step: int  # 0 = trains the whole run (or never, when the text encoder is frozen)
    checkpoint_steps: StepRange
    validation_steps: StepRange
    lr_points: tuple[tuple[int, float], ...]  # (step, lr) at 0, warm-up end, up to 16 checkpoints and the end
    seed: int
    torch: TorchSchedulePlan | None = None  # the torch schedulers one_cycle ... constant_lr only
    # transformers' arguments kohya's lr_scheduler_args can pass to its named schedules
    cosine_cycles: float = 0.5  # cosine
    lr_end: float = 1e-7  # polynomial
    warmup_type: str = "linear"  # warmup_stable_decay
    decay_type: str = "cosine"  # warmup_stable_decay
    # one_cycle or cyclic with cycle_momentum: (step, momentum or beta1) at the lr_points' steps
    momentum_points: tuple[tuple[int, float], ...] = ()
    # per-group bounds (torch.groups): each group's (name, lr_points), lr_points then the first group's
    group_lr_points: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    # ... and with cycle_momentum each group's (name, momentum_points), momentum_points then the first group's
    group_momentum_points: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    # "process": one noise generator per process across steps; "micro_batch": reseeded per micro-batch from
    # (seed, global micro-batch index): partition-invariant over processes, resumable on every process
    noise_streams: str = "process"
    # schedule.start_step / start_epoch (kohya's initial_step / initial_epoch); None = from the beginning
    start: StartPlan | None = None


@frozen
class NoisePlan:
    """How a step draws its noise and timesteps (kohya's get_noise_noisy_latents_and_timesteps), in draw
    order: the noise, the offset (random strength, adaptive scale), multi-resolution levels, timesteps in
    [min_timestep, max_timestep), then the input perturbation the noisy latents get and
    the target does not."""

    offset: float  # loss.noise_offset; 0 = off
    offset_random_strength: bool
    adaptive_scale: float  # 0 = off
    multires_iterations: int  # 0 = off
    multires_discount: float
    ip_gamma: float  # 0 = off
    ip_random_strength: bool
    min_timestep: int
    max_timestep: int  # exclusive, unless equal to min_timestep (one timestep)


@frozen
class HuberPlan:
    """kohya's pseudo-Huber threshold c(t) for kind pseudo_huber / smooth_l1."""

    schedule: Literal["constant", "exponential", "snr"]
    c: float
    scale: float


@frozen
class RolloutPlan:
    """Scheduled sampling (`[scheduled_sampling]`): per sample, with probability `probability_at(step)`, an
    offset k drawn uniformly from 0..max_step_offset; the model denoises from timestep min(t + k, T - 1) down
    to t with `sampler`, one training timestep a step, without gradients; the training step then runs on
    those latents with the target that leads back to the clean latents (docs/techniques.md)."""

    max_step_offset: int
    probability: float
    ramp_steps: int  # 0: the full probability from the first step
    sampler: Literal["ddim", "euler", "unipc"]
    extra_forwards: float  # expected extra denoiser forwards per sample once ramped: probability * k / 2

    def probability_at(self, step: int) -> float:
        """The rollout probability at optimizer step `step` (0-based): a linear ramp from 0."""
        if self.ramp_steps <= 0:
            return self.probability
        return self.probability * min(1.0, step / self.ramp_steps)


@frozen
class FlowPlan:
    """Flow matching (SD3): how a step draws sigma and weights the loss (diffusers' SD3 training scripts)."""

    timesteps: Literal["uniform", "logit_normal", "mode"]  # the density u of the timestep index
    logit_mean: float  # logit_normal
    logit_std: float  # logit_normal
    mode_scale: float  # mode
    weighting: Literal["none", "sigma_sqrt", "cosmap"]  # per-sample loss weight of sigma
    shift: float  # the sigma shift of the scheduler; 0 keeps the model's scheduler config
    guidance: float = 0.0  # the guidance a guidance-distilled denoiser is given in training (Flux.1 dev: 3.5)
    # what the loss compares with ε − x₀: raw v̂, sigma_scaled x_t − σ v̂, additive v̂ + x_t (kohya's Flux);
    # preconditioned: x_t − σ v̂ with x₀ (kohya's SD3)
    prediction: Literal["raw", "sigma_scaled", "additive", "preconditioned"] = "raw"
    # Flux's resolution-dependent shift of σ (kohya flux_shift): μ from base_shift at 256 latent patches to
    # max_shift at 4096; (0, 0) when off (flow_shift applies instead)
    base_shift: float = 0.0
    max_shift: float = 0.0
    # σ from u: table (the scheduler's 1000 steps at floor(1000 u)), continuous (σ = shift(1 − u); Flux's
    # time shift too), floored (t = floor(shift(u) (max − min) + min) of loss.noise's timestep bounds,
    # σ = t / 1000)
    draw: Literal["table", "continuous", "floored"] = "table"


@frozen
class LossPlan:
    kind: Literal["mse", "huber", "l1", "pseudo_huber", "smooth_l1"]
    huber_delta: float
    target: Literal["epsilon", "v_prediction", "flow_matching"]
    min_snr_gamma: float
    noise_offset: float
    zero_terminal_snr: bool
    masked: bool
    prior: Literal["none", "images", "base_model"]
    prior_weight: float
    # kohya's options: None / 0 / False where off
    huber: HuberPlan | None  # set for kind pseudo_huber / smooth_l1
    noise: NoisePlan
    debiased_estimation: bool
    scale_v_like_epsilon: bool  # loss.scale_v_pred_loss_like_noise_pred
    v_pred_like_loss: float
    prior_reduction: Literal["separate", "per_sample"]
    formula: str
    # Components kept as a frozen base copy for prior = "base_model" in a full fine-tune (LoRA runs switch
    # their adapters off instead): decided here once, counted by the memory estimate, made by the runtime.
    teacher: tuple[Literal["unet"], ...]
    rollout: RolloutPlan | None = None  # scheduled sampling; None = off
    flow: FlowPlan | None = None  # flow-matching families (prediction flow_matching); None for DDPM ones
    # masked samples: "mask" divides the masked sum by the mask's area, "image" averages loss x mask over the
    # whole latent image (kohya); "mask" when no dataset has masks
    mask_mean: Literal["mask", "image"] = "mask"
    # loss.text_encoder_dropout: per text encoder (the family's order), the probability a training sample's
    # output of it is zeroed (kohya's SD3 clip_l/clip_g/t5 dropout); () = off (also when every rate is 0)
    text_encoder_dropout: tuple[float, ...] = ()
    # loss.pos_embed_random_crop_rate: per training forward, the probability of a random window of the
    # denoiser's position-embedding table (kohya's SD3 pos_emb_random_crop_rate); 0 = off
    pos_embed_random_crop_rate: float = 0.0


@frozen
class ComponentPlan:
    name: str  # unet, text_encoder, text_encoder_2, vae
    dtype: Dtype  # dtype the weights are held in
    trainable: Literal["full", "lora", "frozen"]
    quantized: Literal["none", "int8", "int4", "fp8", "nf4"] = "none"
    gradient_checkpointing: bool = False
    params: int = 0


@frozen
class CompilePlan:
    """torch.compile of the trained networks (precision.compile). `nn.Module.compile()` compiles each module's
    call in place, so parameter names, checkpoints and exports stay those of the plain module.

    mode "default": "reduce-overhead" adds CUDA graphs (nothing on the CPU, and static shapes only) and
    "max-autotune" benchmarks kernels, minutes more of start-up. dynamic None is torch's automatic
    dynamic shapes: the first input shape compiles static (the fastest kernels, and a one-bucket run never
    compiles again); a second shape recompiles once with the changed sizes symbolic, so a run with many
    buckets compiles about twice instead of once per bucket (dynamic=False would hit torch's recompile limit,
    then fall back to eager), and a batch of one compiles its own (torch specialises sizes 0 and 1)."""

    components: tuple[str, ...]  # the denoiser ("unet") and the text encoders that train
    backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # the cheap ones exist for tests
    mode: Literal["default"] = "default"
    dynamic: bool | None = None  # None: automatic (static first, dynamic after a shape change)


# The dynamic grad scaler of fp16 trained weights (precision.weights = "fp16", kohya's full_fp16): torch's
# GradScaler defaults, which accelerate (and so kohya) uses: the loss is multiplied by the scale, a step whose
# gradients hold inf/NaN is skipped and the scale multiplied by backoff_factor; after growth_interval finite
# steps in a row it is multiplied by growth_factor. runtime/fp16_weights.py builds it;
# the plan summary shows it.
FP16_GRAD_SCALER = {
    "init_scale": 2.0**16,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
}


@frozen
class PrecisionPlan:
    mixed: Literal["no", "fp16", "bf16"]
    reason: str
    attention: Literal["sdpa", "eager"]
    tf32: bool
    components: tuple[ComponentPlan, ...]
    # Trained weights held in bf16 or fp16 (kohya's full_bf16 / full_fp16): a full fine-tune's components, or
    # the adapter weights of a LoRA/LyCORIS run; "fp32" = off. fp16 weights train under fp16 autocast with a
    # grad scaler that unscales fp16 gradients (FP16_GRAD_SCALER, runtime/fp16_weights.py).
    weights: Literal["fp32", "bf16", "fp16"]
    # bf16 weights: True, the optimizer step rounds fp32 updates to bf16 with a seeded generator; False
    # (precision.weights_rounding = "nearest", kohya's; fp16 weights always), the optimizer steps the
    # half-precision parameters directly.
    stochastic_rounding: bool
    # The library that quantises the components whose `quantized` is not "none" (runtime/quantize.py).
    quantize_backend: Literal["quanto", "torchao", "bitsandbytes", "cast"] = "quanto"
    compile: CompilePlan | None = None  # torch.compile of the trained networks; None: eager
    # fp16 mixed precision: "scaled" = the optimizer steps from the gradients still multiplied by the grad
    # scaler's initial scale, never unscaled, updated or skipped (kohya's --fused_backward_pass, no clip);
    # "scaled_first" = optimizer.split's first chunk so, the later ones each through the grad scaler in
    # backward's order (kohya's --fused_optimizer_groups, no clip)
    fp16_gradients: Literal["unscaled", "scaled", "scaled_first"] = "unscaled"


@frozen
class DAdaptPlan:
    """A D-Adaptation optimizer's settings: each step moves by d x lr (x the group's lr share), d estimated
    from the gradients, starting at d0 and growing by at most growth_rate per step (None: unbounded)."""

    d0: float
    growth_rate: float | None
    decouple: bool  # dadapt_adam(_preprint)
    use_bias_correction: bool  # dadapt_adam
    no_prox: bool  # dadapt_adan(_ip)


@frozen
class ProdigyPlan:
    """prodigyopt's Prodigy settings beside the plan's betas, eps and weight_decay: each step moves by d x lr,
    d estimated from the gradients (times d_coef), starting at d0 and growing by at most growth_rate per step
    (None: unbounded); beta3 decays the sums behind that estimate, which reads every slice_p-th element."""

    d0: float
    d_coef: float
    growth_rate: float | None
    decouple: bool  # decoupled weight decay (AdamW-style); false: added to the gradient
    use_bias_correction: bool
    safeguard_warmup: bool
    beta3: float
    slice_p: int


@frozen
class ProdigyPlusPlan:
    """prodigy-plus-schedule-free's ProdigyPlusScheduleFree settings beside the plan's betas, eps and
    weight_decay (decoupled, times d x lr): each group's step is its own d x lr, d estimated from the
    gradients (times d_coef) from d0, its running sums decayed by beta3 over every 11th element; the
    iterates averaged schedule-free (train/eval modes). Its other options stay at the package's defaults."""

    d0: float
    d_coef: float
    beta3: float
    use_bias_correction: bool  # RAdam's rectification and warm-up


@frozen
class AdafactorPlan:
    """transformers' Adafactor options. relative_step: the optimizer computes the LR, min(1e-2, 1/sqrt(t))
    (warmup_init: min(1e-6 t, 1/sqrt(t))) at its step t, and the LR schedule is transformers'
    AdafactorSchedule (which only reports it); scale_parameter: each parameter's LR is multiplied by
    max(1e-3, RMS(param))."""

    relative_step: bool
    scale_parameter: bool
    warmup_init: bool
    # transformers' other Adafactor arguments (their defaults: no first moment, clip 1.0, decay -0.8)
    beta1: float | None = None
    clip_threshold: float = 1.0
    decay_rate: float = -0.8
    eps: tuple[float, float] = (1e-30, 1e-3)


@frozen
class AdEMAMixPlan:
    """bitsandbytes' AdEMAMix options: the slow EMA's weight alpha, and the steps over which alpha and beta3
    warm up (None: none). The plan's betas are its three (beta1, beta2, beta3); eight_bit: 8-bit state;
    paged: the state is paged to CPU memory when the device runs short."""

    alpha: float
    t_alpha: int | None
    t_beta3: int | None
    eight_bit: bool
    paged: bool


@frozen
class ScheduleFreePlan:
    """The schedulefree package's options: the optimizer's own LR warm-up (AdamW/SGD), the average's
    polynomial weighting r and weight_lr_power, RAdam's silent SGD phase. The optimizer is in train mode while
    training and in eval mode (the averaged weights) for checkpoints, exports, validation and evaluation."""

    warmup_steps: int
    r: float
    weight_lr_power: float
    silent_sgd_phase: bool


@frozen
class CAMEPlan:
    """CAME's options (came_pytorch's; pytorch_optimizer's, whose eps1, eps2 are `eps`) beyond the plan's
    betas (its three: the first moment's, the squared gradient's and the instability's decays) and
    weight_decay (decoupled: p -= lr x weight_decay x p)."""

    clip_threshold: float  # the update's RMS is clipped to this
    eps: tuple[float, float]  # regularisers of the squared gradient and of the instability


@frozen
class SplitChunk:
    """One optimizer of optimizer.split: how many trained tensors it holds, their rate, the components they
    belong to ("unet" the denoiser; with optimizer.blocks the denoiser's block groups, `denoiser_block<i>`,
    "unet" then the tensors no block matches)."""

    tensors: int
    lr: float
    spans: tuple[str, ...]


@frozen
class OptimizerBlockPlan:
    """One [[optimizer.blocks]] entry: the denoiser parameters whose path `pattern` matches (re.search; the
    first block wins) train at `lr` in their own optimizer group (`name`); at lr 0 they are in no group (kohya
    leaves them out of the optimizer) but keep their gradients, which the clip norm counts."""

    name: str  # the optimizer group's name: denoiser_block<position in the list>
    pattern: str
    lr: float


# bitsandbytes' min_8bit_size default: tensors with fewer elements keep 32-bit optimizer state
BNB_MIN_8BIT_SIZE = 4096


@frozen
class OptimizerPlan:
    kind: str
    lr: float
    text_encoder_lr: float
    weight_decay: float
    betas: tuple[float, ...]  # two; three for dadapt_adan(_ip), ademamix*, came
    eps: float
    momentum: float
    max_grad_norm: float
    text_encoder_2_lr: float | None = (
        None  # the second text encoder's rate when it differs (SDXL); None: the same
    )
    # the third text encoder's rate (SD3's T5-XXL with train.t5) when it trains and differs from the second's
    # (text_encoder_2_lr, else text_encoder_lr); None: it trains in the second's group
    text_encoder_3_lr: float | None = None
    nesterov: bool = False  # SGD with Nesterov momentum
    # LoRA+: the LoRA up matrices (peft lora_B) train at lr x ratio in their own groups; 0 = off (one group)
    loraplus_denoiser_ratio: float = 0.0
    loraplus_text_encoder_ratio: float = 0.0
    # LoRA+ at ratio 0 as kohya runs it (adapter.loraplus_zero "held"): the groups ("denoiser",
    # "text_encoder") whose up matrices stay out of the optimizer, their gradients kept; () for none
    loraplus_held: tuple[str, ...] = ()
    dadapt: DAdaptPlan | None = None  # dadapt_* kinds only
    prodigy: ProdigyPlan | None = None  # kind prodigy only
    adafactor: AdafactorPlan | None = None  # kind adafactor only
    # a text encoder at rate 0: "hold" (it stays still) or "keep" (its group at rate 0 moves as the optimizer
    # and schedule move it, kohya networks.lora_fa's; the spec rule DBS606 says how); runtime groups alike
    text_encoder_at_zero: str = "hold"
    # the denoiser at rate 0: "hold" (it stays still) or "keep" (its group at rate 0 moves as the optimizer
    # and schedule move it, kohya train_db.py's U-Net at learning_rate 0; DBS606 says how); runtime alike
    denoiser_at_zero: str = "hold"
    # optimizer.group_order: "denoiser_first" (dbspec's) or "text_encoders_first" (kohya's networks'); the
    # runtime's param_groups builds them so
    group_order: str = "denoiser_first"
    ademamix: AdEMAMixPlan | None = None  # the ademamix kinds only
    schedulefree: ScheduleFreePlan | None = None  # the *_schedulefree kinds only
    came: CAMEPlan | None = None  # kind came only
    prodigy_plus: ProdigyPlusPlan | None = None  # kind prodigy_plus_schedulefree only
    clip_mode: Literal["norm", "value"] = "norm"  # max_grad_norm bounds the total norm or each element
    # torch's kernel for the update (adamw, sgd; optimizer.implementation): "fused" is one kernel over all
    # tensors, "default" torch's own choice (foreach on CUDA, a per-tensor loop on the CPU)
    implementation: Literal["default", "foreach", "fused"] = "default"
    # radam: torch RAdam's decoupled_weight_decay (weights decay by lr x weight_decay, not via the gradient)
    decoupled_weight_decay: bool = False
    amsgrad: bool = False  # adamw: torch AdamW's amsgrad
    dampening: float = 0.0  # sgd: torch SGD's dampening
    # the bitsandbytes 8-bit kinds: tensors under this many elements keep 32-bit state (bitsandbytes' default)
    min_8bit_size: int = BNB_MIN_8BIT_SIZE
    # optimizer.split: one optimizer (and LR schedule) per chunk of the trained tensors (dbspec/plan/split.py,
    # kohya's --fused_optimizer_groups); 1 = one optimizer
    split: int = 1
    # the order of the denoiser's tensors in that sequence: "original" = the original (SAI/LDM) layout's
    # registration order (kohya's SDXL UNet; runtime/families/original_order.py), "registration" = the model's
    split_order: Literal["registration", "original"] = "registration"
    # the chunks, one optimizer each, when the plan can count the trained tensors (dbspec/compiler/split.py);
    # () = cut at run time (the run notes them)
    split_chunks: tuple[SplitChunk, ...] = ()
    # optimizer.split_train: "first" = only the first chunk's optimizer steps (kohya's --fused_backward_pass
    # with --fused_optimizer_groups); the later chunks' tensors keep their weights
    split_train: Literal["all", "first"] = "all"
    # optimizer.split_first_step: "micro_batch" = the first chunk's optimizer steps after every micro-batch
    # from that micro-batch's gradient and clears it (kohya's --fused_optimizer_groups with accumulation)
    split_first_step: Literal["step", "micro_batch"] = "step"
    # optimizer.blocks (kohya sdxl_train.py --block_lr): the denoiser's parameters at per-block rates, the
    # first pattern that matches a parameter's path wins; () = one rate
    blocks: tuple[OptimizerBlockPlan, ...] = ()


@frozen
class CachePlan:
    dir: str
    latents: bool
    text_embeddings: bool
    latent_hits: int = 0
    latent_misses: int = 0
    text_hits: int = 0
    text_misses: int = 0
    notes: tuple[str, ...] = ()


@frozen
class PreviewPlan:
    """Live previews while validation images are sampled (runtime/preview.py)."""

    every: int  # decode every N sampling steps
    sampling_steps: tuple[int, ...]  # the sampling steps (1-based) whose latents are decoded
    model: str  # the Tiny AutoEncoder as the spec (or the family default) names it
    source: Literal["builtin", "diffusers", "hub"]
    path: str  # resolved folder; "" for a built-in or a hub id not in the local cache
    resolved: bool
    revision: str
    webhook: str  # "" sends nothing
    webhook_timeout: float


@frozen
class RefinePlan:
    """Validation of an img2img family (the SDXL refiner): the dataset images it refines, each with its
    caption, and the img2img strength and aesthetic scores (model.aesthetic_score and
    model.negative_aesthetic_score)."""

    images: tuple[str, ...]  # absolute paths, in plan order
    captions: tuple[str, ...]
    strength: float
    aesthetic_score: float
    negative_aesthetic_score: float


@frozen
class ValidationPlan:
    prompts: tuple[str, ...]
    negative_prompt: str
    steps: StepRange  # optimizer steps after which to validate
    scheduler: str
    inference_steps: int
    guidance: float
    images_per_prompt: int
    seed: int
    size: Size
    preview: PreviewPlan | None = None  # None: no live previews
    refine: RefinePlan | None = None  # img2img families: refine these dataset images instead of the prompts
    # validation.text_encoder_mode: "training" keeps the text encoders' training-step mode (adapters in eval
    # mode) for validation images and the evaluation loss (kohya's T5 dropout; runtime/text_mode.py)
    text_encoder_mode: Literal["eval", "training"] = "eval"


@frozen
class CheckpointPlan:
    dir: str  # output folder (absolute)
    name: str
    steps: StepRange
    keep: int
    save_precision: Dtype
    exports: tuple[str, ...]
    select: Literal["none", "eval_loss", "clip_t", "clip_i", "dino", "weighted"] = (
        "none"  # best-checkpoint rule
    )
    # select = "weighted": (metric, weight) with a non-zero weight, in metric order; score = sum of weight x
    # value, eval_loss negated (runtime/checkpoints.py selection_score)
    select_weights: tuple[tuple[str, float], ...] = ()
    # the newest N kept checkpoints keep training_state.pt, older ones only their weights; 0: all keep it
    keep_state: int = 0
    export_format: Literal["safetensors", "ckpt", "pt"] = "safetensors"  # of `exports`; ckpt/pt: torch.save


@frozen
class MetricModelPlan:
    """A model an evaluation metric loads (CLIP, DINO), resolved like a base model: offline by default."""

    id: str  # as the spec names it
    source: Literal["builtin", "folder", "hub"]
    path: str  # the folder transformers loads (a hub snapshot, a local folder); "" for a built-in


@frozen
class EvaluationPlan:
    """What the run evaluates at each step of `steps` (its validation steps), on which images and with which
    models. The default is evaluation off (plans written before it existed)."""

    metrics: tuple[Literal["eval_loss", "clip_t", "clip_i", "dino"], ...] = ()
    steps: StepRange = StepRange(every=0, end=0)
    dataset: int = -1  # eval_loss: index into plan.datasets of the dataset the holdout came from
    holdout: tuple[ImagePlan, ...] = ()  # held out of training (not in plan.datasets), scored by eval_loss
    seed: int = 0  # the holdout split's and the evaluation noise's seed
    timesteps: tuple[int, ...] = ()  # fixed timesteps, evenly spaced over the noise schedule
    bands: tuple[int, ...] = ()  # the first index into `timesteps` of each band (low to high noise)
    identifier: str = ""
    class_word: str = ""
    clip_t_prompts: tuple[
        str, ...
    ] = ()  # one per validation prompt: the identifier replaced by the class word
    subject_prompts: tuple[int, ...] = ()  # validation prompts (indices) whose images show the subject
    references: tuple[str, ...] = ()  # the real instance images clip_i and dino compare against (paths)
    reference_shas: tuple[str, ...] = ()
    clip_model: MetricModelPlan | None = None
    dino_model: MetricModelPlan | None = None
    cost: tuple[str, ...] = ()  # the estimate the plan shows (time and memory per evaluation)
    # kohya's validation split (evaluation.split): how the holdout was drawn, and what kohya's rounding keeps
    selection: Literal["sample", "kohya_split"] = "sample"  # sample: `seed` picks `holdout` images
    split: float = 0.0  # kohya_split: the fraction
    split_draw: Literal["reseed", "stream"] = "reseed"
    holdout_datasets: tuple[int, ...] = ()  # kohya_split: each held-out image's index into plan.datasets
    also_trained: tuple[bool, ...] = ()  # kohya_split: each held-out image that still trains (rounding)
    timestep_spacing: Literal["midpoints", "linspace"] = "midpoints"
    max_images: int = 0  # score only the first N held-out images; 0: all
    scored: bool = (
        True  # False: the holdout is only kept out of training (evaluation.score = false), never scored
    )
    dataset_splits: tuple[
        float, ...
    ] = ()  # kohya_split: each plan.datasets entry's split fraction (0: unsplit)
    dataset_seeds: tuple[
        int, ...
    ] = ()  # kohya_split: each plan.datasets entry's split seed (-1: unsplit, or split_draw's stream)
    order: Literal["split", "kohya_loader"] = "split"  # the order held-out images are scored in
    max_batches: int = 0  # order kohya_loader: the first N batches of kohya's validation loader; 0: all
    scored_order: tuple[
        int, ...
    ] = ()  # order kohya_loader: indices into holdout, scored in this order (an image per repeat)
    # what eval_loss logs: the mean of each evaluation, or kohya's validation loss recorder's running mean
    log: Literal["mean", "kohya_running_mean"] = "mean"


@frozen
class EmaPlan:
    enabled: bool
    decay: float
    warmup: bool
    update_every: int
    offload: bool


@frozen
class LoggingPlan:
    every: int
    tensorboard: bool
    report: bool = True  # report.html at the end of the run (dbspec report OUT writes it at any time)
    # Weights & Biases: off, or the project, run name (the output folder's name when the spec leaves it empty)
    # and entity ("": the login's default). Where a run logs never changes what it trains (io._VOLATILE).
    wandb: bool = False
    wandb_project: str = ""
    wandb_run_name: str = ""
    wandb_entity: str = ""


@frozen
class MemoryPlan:
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int
    ema: int
    teacher: int  # frozen copy for a base-model prior in full fine-tunes
    total: int
    available: int  # device memory, 0 = unknown
    fits: bool
    notes: tuple[str, ...] = ()


@frozen
class PivotalTokenPlan:
    """One new token of pivotal tuning: the token a prompt writes and the tokenizer entries it adds (itself,
    then `tok_1` .. for more vectors, as diffusers' load_textual_inversion names them)."""

    token: str
    added: tuple[str, ...]


@frozen
class PivotalPlan:
    """Pivotal tuning (`[pivotal]`): new tokens in every tokenizer and text encoder of the model; only their
    embedding rows train (the other rows are put back after each optimizer step), in their own optimizer group
    at `lr` (the run's LR schedule scales it), until `stop_step` (0: the whole run)."""

    tokens: tuple[PivotalTokenPlan, ...]
    vectors: int
    init_word: str  # "" = random, N(0, std of the embedding matrix)
    lr: float
    stop_step: int
    encoders: tuple[str, ...]  # the text encoders that get the tokens
    params: int  # trained embedding values, all encoders together (the family's text widths)


@frozen
class FsdpPlan:
    """FSDP2 (torch's fully_shard) through accelerate's FullyShardedDataParallelPlugin."""

    sharding: Literal["full_shard", "shard_grad_op"]  # reshard after forward: True / False
    cpu_offload: bool
    wrap: str = "transformer_based_wrap"  # one shard unit per block the model names in `_no_split_modules`
    state_dict: str = "full"  # checkpoints hold full (gathered) weights and optimizer state, as under DDP


@frozen
class DeepSpeedPlan:
    """DeepSpeed ZeRO through accelerate's DeepSpeedPlugin."""

    zero_stage: Literal[2, 3]
    offload_optimizer: bool
    offload_params: bool


@frozen
class DistributedPlan:
    """How the processes share the work (`[distributed]`); one process trains alike under every strategy."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    timeout_s: int = 1800  # bound on every wait between processes (InitProcessGroupKwargs)
    fsdp: FsdpPlan | None = None  # strategy fsdp only
    deepspeed: DeepSpeedPlan | None = None  # strategy deepspeed only


@frozen
class Plan:
    plan_version: int
    dbspec_version: str
    spec_file: str
    spec_dir: str
    target: TargetEnv
    model: ModelPlan
    adapter: AdapterPlan
    train_denoiser: bool
    train_text_encoder: bool
    # train.text_encoder_mode: the text encoders' module mode in training steps ("trained": train mode for
    # those that train, eval for the frozen; "train"/"eval": every one); only T5-XXL's dropout sees it
    text_encoder_mode: Literal["trained", "train", "eval"] = "trained"
    # train.text_encoder_idle = "kohya" (the CLIP text encoders) and train.t5_idle = "kohya" (T5-XXL): the
    # components that carry the adapter without training (kohya's modules at text_encoder_lr 0), in the
    # family's order: their components are "lora", their adapter weights stay out of the optimizer, their
    # gradients add up uncleared and count in the clip
    idle_text_encoders: tuple[str, ...] = ()
    datasets: tuple[DatasetPlan, ...]
    buckets: tuple[BucketPlan, ...]
    schedule: SchedulePlan
    loss: LossPlan
    precision: PrecisionPlan
    optimizer: OptimizerPlan
    cache: CachePlan
    validation: ValidationPlan
    checkpoints: CheckpointPlan
    ema: EmaPlan
    logging: LoggingPlan
    memory: MemoryPlan
    origins: dict[str, Origin]
    warnings: tuple[str, ...] = ()  # rendered warnings from compiling
    groups: tuple[GroupPlan, ...] = ()  # () = one group (no [[groups]] in the spec)
    evaluation: EvaluationPlan = EvaluationPlan()  # off: no metric runs
    pivotal: PivotalPlan | None = None  # pivotal tuning; None = off
    distributed: DistributedPlan = DistributedPlan()  # several processes: ddp, fsdp or deepspeed
