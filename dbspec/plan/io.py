"""Plan <-> JSON. The file carries `plan_version` and a content hash that loading verifies."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import cattrs

from dbspec.plan.model import PLAN_VERSION, EvaluationPlan, Plan
from dbspec.plan.validate import plan_problems
from dbspec.util.atomic import write_text_atomic

_CONVERTER = cattrs.Converter(forbid_extra_keys=True)


class _WrongType(TypeError):
    """A plan value of the wrong JSON type; cattrs alone would coerce "5" or 2.7 to 5 or 2 silently."""


def _strict(kind: type, accepts: tuple[type, ...]):
    def structure(value, _type):
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, accepts):
            raise _WrongType(f"expected {kind.__name__}, found {json.dumps(value)[:40]}")
        return kind(value)

    return structure


for _kind, _accepts in ((int, (int,)), (float, (int, float)), (bool, (bool,)), (str, (str,))):
    _CONVERTER.register_structure_hook(_kind, _strict(_kind, _accepts))


class PlanFileError(Exception):
    """A plan file that cannot be used: unreadable, another version, or edited/corrupted."""


def plan_to_data(plan: Plan) -> dict:
    return _CONVERTER.unstructure(plan)


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan_hash(plan: Plan) -> str:
    return "sha256:" + hashlib.sha256(_canonical(plan_to_data(plan)).encode()).hexdigest()


# Parts of a plan that describe the machine or the disk at compile time, not the training run: two plans
# that differ only here train identically, so a run may resume under either.
_VOLATILE = {
    "target": (
        "free_disk_bytes",
        "cache_free_disk_bytes",
        "shared_disk",
        "measure_disk",
        "memory_bytes",
        "description",
    ),
    "cache": ("latent_hits", "latent_misses", "text_hits", "text_misses", "notes"),
    "distributed": ("timeout_s",),  # how long a process waits for a dead peer; trains alike
    # where W&B logs, whether report.html is written at the end: trains alike
    "logging": ("wandb", "wandb_project", "wandb_run_name", "wandb_entity", "report"),
}
_VOLATILE_TOP = ("memory", "warnings", "origins", "dbspec_version")


def run_hash(plan: Plan) -> str:
    """Identity of what a plan trains (for resume and output-folder checks); see _VOLATILE."""
    return _per_plan("run_hash", plan, _run_hash)


def _run_hash(plan: Plan) -> str:
    return "sha256:" + hashlib.sha256(_canonical(_run_data(plan_to_data(plan))).encode()).hexdigest()


# The last plan's hash and JSON, by identity: a Plan is frozen, so the same object always gives the same text,
# and a run asks for both at every checkpoint (the JSON is written beside its weights).
_LAST: dict[str, tuple[Plan, str]] = {}


def _per_plan(what: str, plan: Plan, make: Callable[[Plan], str]) -> str:
    last = _LAST.get(what)
    if last is None or last[0] is not plan:
        last = _LAST[what] = (plan, make(plan))
    return last[1]


# Plan versions whose only change to what a run trains was renaming fields: the version before -> {field path
# in the current plan: its name then}. A run saved under that version recorded the run hash of the old names;
# the same run hashed that way (`legacy_run_hashes`) lets it resume after the upgrade.
LEGACY_RUN_NAMES: dict[int, dict[tuple[str, ...], str]] = {
    3: {("train_denoiser",): "train_unet", ("adapter", "denoiser_targets"): "unet_targets"},  # spec_version 2
}
# Fields added to the plan since that version, with the value that trains as that version did ("*" stands for
# every item of a list; a callable computes the value from the run data). A plan holding that value hashes as
# the old run did without the field; any other value is a run the old version could not make, so its hash
# differs and an old checkpoint is refused.
LEGACY_ADDED_FIELDS: dict[int, dict[tuple[str, ...], object]] = {
    3: {
        ("model", "max_tokens"): 75,
        ("optimizer", "text_encoder_at_zero"): "hold",  # a text encoder kept at rate 0, added since
        ("optimizer", "denoiser_at_zero"): "hold",  # the denoiser kept at rate 0, added since
        ("adapter", "dylora_unit"): 0,  # DyLoRA (adapter kind dylora), added since
        ("adapter", "dylora_form"): "",
        ("adapter", "dora_axis"): "output",  # DoRA's magnitude per input column (LyCORIS), added since
        ("adapter", "dora_form"): "peft",  # LyCORIS's weight decomposition, added since (peft's DoRA then)
        (
            "model",
            "merge_adapters",
        ): [],  # LoRA files merged into the base (kohya --base_weights), added since
        ("adapter", "init_scale"): 1.0,  # full: init_weights' diff times it (kohya --dim_from_weights)
        ("adapter", "max_norm"): 0.0,  # kohya's max-norm regularisation, added since (off then)
        ("adapter", "max_norm_form"): "kohya",  # LyCORIS's max-norm form, added since (kohya's then)
        ("adapter", "rank_dropout_form"): "kohya",  # LyCORIS LoCon's rank dropout, added since
        ("adapter", "kohya_names"): "kohya",  # LyCORIS's T5-XXL names in the export, added since (kohya's)
        ("adapter", "output_dropout"): 0.0,  # LyCORIS LoCon's bypass dropout, added since (off then)
        ("adapter", "freeze_down"): False,  # LoRA-FA (kohya networks.lora_fa), added since (off then)
        ("adapter", "frozen_down_grad"): "none",
        # the second CLIP encoder's own targets, added since (text_encoder_targets then; None: the same)
        ("adapter", "text_encoder_2_targets"): lambda run: (
            None
            if run["adapter"].get("text_encoder_2_targets") is None
            else run["adapter"]["text_encoder_targets"]
        ),
        ("adapter", "text_encoder_norms"): [],  # LyCORIS train_norm's CLIP LayerNorms, added since (none)
        # the second CLIP encoder's own norms, added since (text_encoder_norms then; None: the same)
        ("adapter", "text_encoder_2_norms"): lambda run: (
            None
            if run["adapter"].get("text_encoder_2_norms") is None
            else run["adapter"].get("text_encoder_norms", [])
        ),
        ("adapter", "denoiser_norms"): [],  # LyCORIS train_norm's U-Net norms, added since (none)
        ("adapter", "t5_targets"): [],  # train.t5 (LoRA on T5-XXL), added since (T5 never trained then)
        ("text_encoder_mode",): "trained",  # train.text_encoder_mode (kohya's T5 dropout), added since
        ("idle_text_encoders",): [],  # train.text_encoder_idle (kohya's modules at rate 0), added since
        ("model", "t5_max_length"): 256,
        ("model", "t5_attention_mask"): False,  # kohya's text attention masks, added since
        ("model", "clip_attention_mask"): False,
        ("model", "aesthetic_score"): 6.0,  # the SDXL refiner family
        ("model", "negative_aesthetic_score"): 2.5,
        ("validation", "refine"): None,
        ("validation", "text_encoder_mode"): "eval",  # kohya's validation text-encoder mode, added since
        ("model", "weighted_captions"): False,
        ("model", "denoiser_file"): "",  # per-component weight files, added since
        ("model", "text_encoder_files"): [],
        ("checkpoints", "select_weights"): [],
        ("datasets", "*", "color_aug"): False,
        ("datasets", "*", "face_crop"): None,
        ("datasets", "*", "resolution_height"): 0,
        ("datasets", "*", "preserve_output"): False,  # output preservation (kohya's DOP), added since
        ("datasets", "*", "exif_orientation"): "apply",  # EXIF orientation ignored (kohya), added since
        ("datasets", "*", "resize"): "cover",  # crops without resizing (kohya, buckets off), added since
        ("loss", "flow"): None,
        ("optimizer", "text_encoder_2_lr"): None,
        ("optimizer", "text_encoder_3_lr"): None,  # SD3's T5-XXL rate (train.t5), added since
        ("optimizer", "nesterov"): False,
        ("optimizer", "loraplus_denoiser_ratio"): 0.0,
        ("optimizer", "loraplus_text_encoder_ratio"): 0.0,
        ("optimizer", "dadapt"): None,  # D-Adaptation optimizers, added since
        ("optimizer", "adafactor"): None,  # Adafactor's options, added since (a fixed LR then)
        # transformers' other Adafactor arguments, AdEMAMix and schedule-free optimizers, torch's CyclicLR
        ("optimizer", "adafactor", "beta1"): None,
        ("optimizer", "adafactor", "clip_threshold"): 1.0,
        ("optimizer", "adafactor", "decay_rate"): -0.8,
        ("optimizer", "adafactor", "eps"): [1e-30, 1e-3],
        ("optimizer", "ademamix"): None,
        ("optimizer", "schedulefree"): None,
        ("optimizer", "came"): None,  # came_pytorch's CAME, added since
        ("optimizer", "prodigy_plus"): None,  # ProdigyPlusScheduleFree, added since
        ("optimizer", "split"): 1,  # one optimizer, the only kind then
        ("optimizer", "split_order"): "registration",
        ("optimizer", "split_chunks"): [],
        ("schedule", "torch", "base_lr"): 0.0,
        ("schedule", "torch", "step_size_up"): 2000,
        ("schedule", "torch", "step_size_down"): 0,
        ("schedule", "torch", "cyclic_mode"): "triangular",
        # kohya's schedule and precision options (schedules and precision users set)
        ("schedule", "power"): 1.0,
        ("schedule", "min_lr_ratio"): 0.0,
        ("schedule", "decay_steps"): 0,
        ("schedule", "t_max"): 0,
        ("schedule", "eta_min"): 0.0,
        ("schedule", "t_mult"): 1,
        ("schedule", "torch"): None,  # torch's StepLR ... OneCycleLR, added since
        ("schedule", "momentum_points"): [],
        ("schedule", "cosine_cycles"): 0.5,  # kohya's lr_scheduler_args to named schedules, added since
        ("schedule", "lr_end"): 1e-7,
        ("schedule", "warmup_type"): "linear",
        ("schedule", "decay_type"): "cosine",
        ("precision", "weights"): "fp32",
        ("schedule", "noise_streams"): "process",  # several processes drew from per-process generators
        ("precision", "stochastic_rounding"): False,
        ("precision", "quantize_backend"): "quanto",  # quantisation backends, added since (quanto only then)
        ("precision", "compile"): None,  # torch.compile (precision.compile), added since
        ("optimizer", "implementation"): "default",  # torch's own kernel choice then
        ("optimizer", "decoupled_weight_decay"): False,  # RAdam's decoupled decay, added since
        ("optimizer", "min_8bit_size"): 4096,  # bitsandbytes' default, the only one then
        ("optimizer", "group_order"): "denoiser_first",  # kohya's group order, added since (dbspec's then)
        # Prodigy's options, added since: its defaults then (eps too: the runtime never passed the plan's)
        ("optimizer", "prodigy"): lambda run: _legacy_prodigy(run["optimizer"]),
        ("optimizer", "amsgrad"): False,  # torch AdamW's amsgrad, added since (off then)
        ("optimizer", "dampening"): 0.0,  # torch SGD's dampening, added since (none then)
        ("loss", "huber"): None,
        ("loss", "rollout"): None,  # scheduled sampling
        ("pivotal",): None,  # pivotal tuning
        ("loss", "noise"): lambda run: {
            "offset": run["loss"]["noise_offset"],
            "offset_random_strength": False,
            "adaptive_scale": 0.0,
            "multires_iterations": 0,
            "multires_discount": 0.0,
            "ip_gamma": 0.0,
            "ip_random_strength": False,
            "min_timestep": 0,
            "max_timestep": 1000,
        },
        ("loss", "debiased_estimation"): False,
        ("loss", "scale_v_like_epsilon"): False,
        ("loss", "v_pred_like_loss"): 0.0,
        ("loss", "prior_reduction"): "separate",
        ("groups",): [],  # dataset groups
        ("datasets", "*", "group"): "",
        ("buckets", "*", "group"): "",
        ("datasets", "*", "folders"): [],  # kohya folder datasets
        # adapter kinds beyond plain LoRA (LoCon, DoRA, LoHa, LoKr): all off then
        ("adapter", "conv_rank"): 0,
        ("adapter", "conv_alpha"): 0.0,
        ("adapter", "conv_targets"): [],
        ("adapter", "dora"): False,
        ("adapter", "factor"): -1,
        ("adapter", "decompose_both"): False,
        ("adapter", "lokr_unit_scale"): False,  # peft's alpha / rank on full LoKr factors
        ("adapter", "tucker"): False,
        ("adapter", "rank_dropout"): 0.0,
        ("adapter", "module_dropout"): 0.0,
        # LoHa's rank dropout rescaled the kept rows (peft's LoHa), LoKr's did not: as the plan says now
        ("adapter", "rank_dropout_scale"): lambda run: (
            run["adapter"]["kind"] == "loha" and run["adapter"].get("rank_dropout", 0.0) > 0
        ),
        # a LoRA started from a saved file (kohya --network_weights): none then
        ("adapter", "init_weights"): "",
        ("adapter", "init_layers"): 0,
        ("adapter", "multiplier"): 1.0,
        ("adapter", "blocks"): [],  # per-block ranks and learning rates: none then
        ("adapter", "blocks", "*", "lr"): 0.0,  # a block's own rate (kohya network_reg_lrs), added since
        ("adapter", "blocks", "*", "group"): "",  # a block's own optimizer group, added since
        ("adapter", "text_encoder_blocks", "*", "group"): "",
        ("adapter", "blocks", "*", "factor"): 0,  # a block's own LoKr factor, added since
        ("adapter", "blocks", "*", "kind"): "adapter",  # a block's own algorithm, added since (none then)
        ("adapter", "text_encoder_blocks", "*", "kind"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "factor"): 0,
        # a block's own LoKr decompose_both / full_matrix / tucker (LyCORIS map entries), added since
        ("adapter", "blocks", "*", "decompose_both"): "adapter",
        ("adapter", "blocks", "*", "full_matrix"): "adapter",
        ("adapter", "blocks", "*", "tucker"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "decompose_both"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "full_matrix"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "tucker"): "adapter",
        # a block's own LoKr unbalanced_factorization (LyCORIS map entries), added since
        ("adapter", "blocks", "*", "unbalanced_factorization"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "unbalanced_factorization"): "adapter",
        # a block's own LoKr rs_lora on full factors (LyCORIS map entries), added since
        ("adapter", "blocks", "*", "rank_stabilized"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "rank_stabilized"): "adapter",
        # a block's own LoHa / LoKr rank_dropout_scale (LyCORIS map entries), added since
        ("adapter", "blocks", "*", "rank_dropout_scale"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "rank_dropout_scale"): "adapter",
        # a block's own LyCORIS use_scalar (map entries), added since
        ("adapter", "blocks", "*", "scalar"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "scalar"): "adapter",
        # a block's own LyCORIS weight decomposition (map entries' weight_decompose), added since
        ("adapter", "blocks", "*", "dora"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "dora"): "adapter",
        # a block's own weight-decomposition axis (LyCORIS map entries' wd_on_out), added since (none then)
        ("adapter", "blocks", "*", "dora_axis"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "dora_axis"): "adapter",
        # a block's own Diag-OFT rescaled (map entries), added since
        ("adapter", "blocks", "*", "rescaled"): "adapter",
        ("adapter", "text_encoder_blocks", "*", "rescaled"): "adapter",
        # a block's own DyLoRA unit (map entries' block_size), added since
        ("adapter", "blocks", "*", "unit"): 0,
        ("adapter", "text_encoder_blocks", "*", "unit"): 0,
        # a block's settled LyCORIS bypass_mode (map entries' own), added since: the adapter's then
        ("adapter", "blocks", "*", "bypass"): lambda run: run["adapter"].get("bypass", False),
        ("adapter", "text_encoder_blocks", "*", "bypass"): lambda run: run["adapter"].get("bypass", False),
        ("adapter", "init_partial"): False,  # kohya's strict=False start, added since (exact files then)
        (
            "adapter",
            "init_alpha",
        ): "match",  # the file's alphas ignored as kohya does, added since (checked then)
        # kohya's max-norm at the starting file's alphas (init_alpha "ignore"), added since (refused then)
        ("adapter", "max_norm_alphas"): {},
        ("optimizer", "loraplus_held"): [],  # LoRA+ up matrices held at ratio 0, added since (refused then)
        ("adapter", "split_fused"): [],  # split fused layers' shared dropout draws, added since (none then)
        # kohya lora_flux's LoRA-GGPO perturbation: off then
        ("adapter", "ggpo_sigma"): None,
        ("adapter", "ggpo_beta"): None,
        # the adapter's parameter count is an estimate shown in the summary; it never changes what trains
        ("adapter", "params"): lambda run: run["adapter"].get("params"),
        ("datasets", "*", "caption_processing"): {
            "shuffle_caption": False,
            "caption_separator": ",",
            "keep_tokens": 0,
            "keep_tokens_separator": "",
            "secondary_separator": "",
            "enable_wildcard": False,
            "caption_dropout_rate": 0.0,
            "caption_dropout_every_n_epochs": 0,
            "caption_tag_dropout_rate": 0.0,
            "token_warmup_min": 1,
            "token_warmup_step": 0.0,
            "varying_images": 0,
            "varying_samples_per_epoch": 0,
            "empty_text_key": "",
        },
        # evaluation metrics and the best checkpoint: off then
        ("evaluation",): lambda run: json.loads(json.dumps(_CONVERTER.unstructure(EvaluationPlan()))),
        ("checkpoints", "select"): "none",
        ("validation", "preview"): None,  # live validation previews: off
        # kohya's Flux prediction types and time shift: raw, fixed shift then (flow plans only)
        ("loss", "flow", "prediction"): "raw",
        ("loss", "flow", "base_shift"): 0.0,
        ("loss", "flow", "max_shift"): 0.0,
        # how σ comes from u: the scheduler table then, continuous with Flux's time shift (max_shift set)
        ("loss", "flow", "draw"): lambda run: (
            "continuous" if (run["loss"].get("flow") or {}).get("max_shift") else "table"
        ),
        # [distributed]: DDP then (its timeout_s is volatile, see _VOLATILE)
        ("distributed",): {"strategy": "ddp", "fsdp": None, "deepspeed": None},
        ("optimizer", "clip_mode"): "norm",  # clip_grad_norm_, the only kind then
        # torch's CyclicLR / OneCycleLR bounds per optimizer group (tables): one bound for every group then
        ("schedule", "torch", "groups"): [],
        ("schedule", "group_lr_points"): [],
        ("schedule", "group_momentum_points"): [],
        # masked loss averaged over the mask's area, the only way then
        ("loss", "mask_mean"): "mask",
        # kohya networks.lora's dropout on the down projection's output: off then
        ("adapter", "down_dropout"): 0.0,
        # mask files read as luminance, the only way then
        ("datasets", "*", "mask_channel"): "luminance",
        # kohya's validation split, timesteps and batch cap (after ("evaluation",): a run without them)
        ("evaluation", "selection"): "sample",
        ("evaluation", "split"): 0.0,
        ("evaluation", "split_draw"): "reseed",
        ("evaluation", "holdout_datasets"): [],
        ("evaluation", "also_trained"): [],
        ("evaluation", "timestep_spacing"): "midpoints",
        ("evaluation", "max_images"): 0,
        # kohya's per-dataset split fractions and a holdout that is never scored (evaluation.score)
        ("evaluation", "scored"): True,
        ("evaluation", "dataset_splits"): [],
        # kohya's per-dataset validation_seed and its validation loader's batch order (max_validation_steps)
        ("evaluation", "dataset_seeds"): [],
        ("evaluation", "order"): "split",
        ("evaluation", "max_batches"): 0,
        ("evaluation", "scored_order"): [],
        ("evaluation", "log"): "mean",  # kohya's running-mean validation loss, added since (the mean then)
        # kohya's save_last_n_*_state and pickle exports (save_model_as ckpt/pt): every checkpoint kept its
        # state, exports were safetensors then
        ("checkpoints", "keep_state"): 0,
        ("checkpoints", "export_format"): "safetensors",
        ("adapter", "fused"): [],  # adapter.fused_projections, added since
        ("adapter", "text_encoder_blocks"): [],  # the text encoders' per-module ranks, added since
        # LyCORIS's LoKr full_matrix and use_scalar: off then
        ("adapter", "full_matrix"): False,
        # LoKr's Kronecker split as LyCORIS's factorization, added since (peft's order then); a factor of 1 or
        # less (-1: near the square root) splits the same either way, so either value trains as then
        ("adapter", "lokr_factorization"): lambda run: (
            run["adapter"]["lokr_factorization"] if run["adapter"].get("factor", -1) <= 1 else "peft"
        ),
        ("adapter", "unbalanced_factorization"): False,
        ("adapter", "scalar"): False,
        ("adapter", "lokr_rank_stabilized"): False,  # LyCORIS's rs_lora on LoKr, added since (off then)
        ("adapter", "input_targets"): [],  # LyCORIS's IA^3, added since
        ("adapter", "oft_block_size"): 0,  # LyCORIS's Diag-OFT, added since
        ("adapter", "oft_constraint"): 0.0,
        ("adapter", "oft_rescaled"): False,
        ("adapter", "oft_form"): "lycoris",  # kohya's networks.oft (Diag-OFT's kohya form), added since
        ("adapter", "oft_blocks"): 0,
        ("loss", "text_encoder_dropout"): [],  # per-encoder conditioning dropout (SD3), added since
        ("loss", "pos_embed_random_crop_rate"): 0.0,  # SD3's random position-embedding window, added since
        # kohya's fused-step combinations (only the first chunk steps / steps per micro-batch; fp16 weights
        # stepped from still-scaled gradients), added since: every chunk once per step, unscaled then
        ("optimizer", "split_train"): "all",
        ("optimizer", "split_first_step"): "step",
        ("precision", "fp16_gradients"): "unscaled",
        ("model", "scaled_pos_embed"): [],  # kohya's scaled SD3 position tables, added since
        ("schedule", "start"): None,  # runs that start later (kohya's initial_step), added since
        ("optimizer", "blocks"): [],  # per-block denoiser rates (kohya sdxl_train.py block_lr), added since
        ("adapter", "bypass"): False,  # LyCORIS bypass_mode for GLoRA / OFT, added since
        ("adapter", "bypass_dropout"): 0.0,
        ("schedule", "torch", "max_lr_zero"): "own_lr",  # a max_lr of 0 always each group's rate then
        # a DyLoRA block scaled by 0 (a file's alpha 0 with module_dropout), added since (refused then)
        ("adapter", "blocks", "*", "zero_scale"): False,
        ("adapter", "text_encoder_blocks", "*", "zero_scale"): False,
        # a T-LoRA block's own SVD start (LyCORIS's sig_type), added since (the principal one then)
        ("adapter", "blocks", "*", "sig_type"): "principal",
        ("adapter", "text_encoder_blocks", "*", "sig_type"): "principal",
        # a T-LoRA block's random SVD start (LyCORIS's use_data_init false), added since (refused then)
        ("adapter", "blocks", "*", "data_init"): True,
        ("adapter", "text_encoder_blocks", "*", "data_init"): True,
        # an IA^3 block's input side (LyCORIS's train_on_input), added since (refused then)
        ("adapter", "blocks", "*", "on_input"): False,
        ("adapter", "text_encoder_blocks", "*", "on_input"): False,
        # the norm offsets' own rank dropout, added since: they drew the adapter's rank_dropout then
        ("adapter", "norm_rank_dropout"): lambda run: _legacy_norm_rank_dropout(run["adapter"]),
    },
}


def _legacy_prodigy(optimizer: dict) -> dict | str | None:
    """The plan's Prodigy settings a run before them trained with: None for other kinds; for prodigy the
    class's defaults, while its eps is prodigyopt's 1e-8 (the runtime passed none); a plan with another eps
    ran that default, so no value matches it (its hash differs and an old checkpoint is refused)."""
    if optimizer["kind"] != "prodigy":
        return None
    if optimizer["eps"] != 1e-8:
        return "eps other than 1e-8 was never passed"
    return {
        "d0": 1e-6,
        "d_coef": 1.0,
        "growth_rate": None,
        "decouple": True,
        "use_bias_correction": False,
        "safeguard_warmup": False,
        "beta3": math.sqrt(optimizer["betas"][1]),
        "slice_p": 1,
    }


def _legacy_norm_rank_dropout(adapter: dict) -> float:
    """The rate a run's norm offsets drew before adapter.norm_rank_dropout: the plan's rank_dropout where
    it has norm offsets, and 0.0 (the plan's value) without them."""
    norms = ("denoiser_norms", "text_encoder_norms", "text_encoder_2_norms")
    return adapter.get("rank_dropout", 0.0) if any(adapter.get(key) for key in norms) else 0.0


def legacy_run_hashes(plan: Plan) -> tuple[str, ...]:
    """The run hashes `plan` had under the plan versions of LEGACY_RUN_NAMES, newest first."""
    return tuple(
        "sha256:"
        + hashlib.sha256(_canonical(legacy_run_data(plan_to_data(plan), version)).encode()).hexdigest()
        for version in sorted(LEGACY_RUN_NAMES, reverse=True)
    )


def legacy_run_data(data: dict, version: int) -> dict:
    """The run data (see `_run_data`) of plan data `data` as plan_version `version` named it."""
    out = json.loads(json.dumps(_run_data(data)))  # a deep copy of plain JSON data
    for newer in sorted((v for v in LEGACY_RUN_NAMES if v >= version), reverse=True):
        for path, value in LEGACY_ADDED_FIELDS.get(newer, {}).items():
            old = value(out) if callable(value) else value
            for parent in _parents(out, path[:-1]):
                if path[-1] in parent and parent[path[-1]] == old:
                    del parent[path[-1]]
        for path, old in LEGACY_RUN_NAMES[newer].items():
            parent = out
            for part in path[:-1]:
                parent = parent[part]
            parent[old] = parent.pop(path[-1])
    out["plan_version"] = version
    return out


def _parents(data, path: tuple[str, ...]) -> list[dict]:
    """The dicts at `path` in `data`, "*" taking every item of a list."""
    if not path:
        return [data] if isinstance(data, dict) else []
    head, rest = path[0], path[1:]
    if head == "*":
        return [found for item in data for found in _parents(item, rest)] if isinstance(data, list) else []
    return _parents(data[head], rest) if isinstance(data, dict) and head in data else []


def _run_data(data: dict) -> dict:
    data = {key: value for key, value in data.items() if key not in (*_VOLATILE_TOP, "plan_hash")}
    for table, keys in _VOLATILE.items():
        if isinstance(data.get(table), dict):  # noqa: SIM401 - plan data, not config
            data[table] = {key: value for key, value in data[table].items() if key not in keys}
    if isinstance(data.get("datasets"), list):  # noqa: SIM401 - plan data, not config
        data["datasets"] = [_without_generate_count(d) for d in data["datasets"]]
    return data


def _without_generate_count(dataset):
    """How many class images are still to make says how far generation got, not what the run trains: the
    images themselves (their seeds and manifest key) stay in the plan, made or not."""
    gen = dataset.get("generate") if isinstance(dataset, dict) else None  # noqa: SIM401 - plan data
    if not isinstance(gen, dict):
        return dataset
    return {**dataset, "generate": {key: value for key, value in gen.items() if key != "count"}}


def run_differences(old_json: str, new_json: str, limit: int = 5) -> list[str]:
    """`key: old -> new` for the plan fields that make two plan files train differently (at most `limit`),
    to say why a checkpoint of one cannot continue under the other."""
    old, new = (_flatten(_run_data(json.loads(text))) for text in (old_json, new_json))
    keys = [
        key
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]
    shown = [f"{key}: {_short(old, key)} -> {_short(new, key)}" for key in keys[:limit]]
    return shown + ([f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def _flatten(value, prefix: str = "") -> dict:
    """{"a.b[0].c": leaf} for nested dicts and lists."""
    if isinstance(value, dict):
        items = ((f"{prefix}.{key}" if prefix else key, item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{prefix}[{i}]", item) for i, item in enumerate(value))
    else:
        return {prefix: value}
    return {k: v for path, item in items for k, v in _flatten(item, path).items()}


def _short(values: dict, key: str) -> str:
    if key not in values:
        return "(absent)"
    text = json.dumps(values[key], ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def plan_to_json(plan: Plan) -> str:
    return _per_plan("json", plan, _plan_json)


def _plan_json(plan: Plan) -> str:
    data = plan_to_data(plan)
    digest = "sha256:" + hashlib.sha256(_canonical(data).encode()).hexdigest()
    return json.dumps({**data, "plan_hash": digest}, indent=1, ensure_ascii=False) + "\n"


def write_plan(plan: Plan, path: Path) -> None:
    write_text_atomic(path, plan_to_json(plan))


def plan_from_json(text: str, source: str = "plan") -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("plan_version") != PLAN_VERSION:  # noqa: SIM401 - file data, not config
        version = data.get("plan_version") if isinstance(data, dict) else None
        raise PlanFileError(
            f"{source} has plan_version {version!r}; this dbspec reads {PLAN_VERSION}: "
            "compile the spec again with `dbspec plan`"
        )
    stated = data.pop("plan_hash", None)
    actual = "sha256:" + hashlib.sha256(_canonical(data).encode()).hexdigest()
    if stated != actual:
        raise PlanFileError(f"{source} was edited or corrupted (hash mismatch): compile the spec again")
    try:
        plan = _CONVERTER.structure(data, Plan)
    except Exception as exc:  # noqa: BLE001 - any structuring failure means an unusable file
        raise PlanFileError(
            f"{source} does not match the plan format: {'; '.join(_type_errors(exc))}"
        ) from None
    problems = plan_problems(plan)
    if problems:
        raise PlanFileError(
            f"{source} holds values dbspec cannot run: {'; '.join(problems)}; compile the spec "
            "again with `dbspec plan`"
        )
    return plan


def _type_errors(exc: Exception) -> list[str]:
    """`expected int, found "5" @ schedule.batch_size` for each bad value."""

    def describe(error: BaseException, type_) -> str:
        return str(error) if isinstance(error, _WrongType) else cattrs.v.format_exception(error, type_)

    return [line.replace("@ $.", "@ ") for line in cattrs.transform_error(exc, format_exception=describe)]


def read_plan(path: Path) -> Plan:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PlanFileError(
            f"{path} is not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
            "plan files are UTF-8 JSON; compile the spec again with `dbspec plan`"
        ) from None
    return plan_from_json(text, str(path))
