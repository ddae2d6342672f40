"""SimpleTuner training options -> [model], [adapter], [train], [schedule], [optimizer], [loss], [precision],
[checkpoints], [validation], [ema], [output] and [logging]."""

from __future__ import annotations

import math
from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.common.wandb import PROJECT, RUN_NAME, WANDB
from dbspec.convert.kohya.model import model_path
from dbspec.convert.simpletuner.flow import (
    flow_vae_ignored,
    flux_targets,
    is_flow,
    map_flow_loss,
    map_flow_model,
)
from dbspec.convert.simpletuner.lycoris import map_lycoris

Cfg = dict[str, Legacy]
FAMILIES = {"sd1x": "sd1", "sd2x": "sd2", "sdxl": "sdxl", "legacy": "auto", "sd3": "sd3", "flux": "flux"}
# SimpleTuner's model_flavour -> hub path tables (HUGGINGFACE_PATHS in helpers/models/sd1x/model.py, for
# StableDiffusion1 and StableDiffusion2, helpers/models/sdxl/model.py, sd3/model.py and flux/model.py), and
# each family's default flavour.
FLAVOURS = {
    "sd1x": {
        "1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "1.4": "CompVis/stable-diffusion-v1-4",
        "dreamshaper": "Lykon/dreamshaper-8",
        "realvis": "SG161222/RealVisXL_V5.0",
    },
    "sd2x": {
        "digitaldiffusion": "Junglerally/Digital-Diffusion",
        "pseudoflex-v2": "bghira/pseudo-flex-v2",
        "pseudojourney": "bghira/pseudo-journey-v2",
        "2.1": "stabilityai/stable-diffusion-2-1",
        "2.0": "stabilityai/stable-diffusion-2-0",
    },
    "sdxl": {
        "base-1.0": "stabilityai/stable-diffusion-xl-base-1.0",
        "refiner-1.0": "stabilityai/stable-diffusion-xl-refiner-1.0",
        "base-0.9": "stabilityai/stable-diffusion-xl-base-0.9",
        "refiner-0.9": "stabilityai/stable-diffusion-xl-refiner-0.9",
    },
    "sd3": {
        "medium": "stabilityai/stable-diffusion-3.5-medium",
        "large": "stabilityai/stable-diffusion-3.5-large",
    },
    "flux": {
        "dev": "black-forest-labs/flux.1-dev",
        "krea": "black-forest-labs/flux.1-krea-dev",
        "schnell": "black-forest-labs/flux.1-schnell",
        "kontext": "black-forest-labs/flux.1-kontext-dev",
        "fluxbooru": "terminusresearch/fluxbooru-v0.3",
        "libreflux": "jimmycarter/LibreFlux-SimpleTuner",
    },
}
DEFAULT_FLAVOURS = {
    "sd1x": "dreamshaper",
    "sd2x": "pseudoflex-v2",
    "sdxl": "base-1.0",
    "sd3": "medium",
    "flux": "krea",
}  # its DEFAULT_MODEL_FLAVOUR
# SimpleTuner's own names for its schedules (helpers/configuration/cli_utils.normalize_lr_scheduler_value).
SCHEDULE_ALIASES = {"cosine_with_warmup": "cosine"}
# The schedules its get_lr_scheduler hands to diffusers' get_scheduler unchanged.
GET_SCHEDULER = ("constant", "constant_with_warmup", "linear")
COSINE_DEFAULT_PERIOD = 1000  # its Cosine replaces a T_0 (lr_warmup_steps) of 0 by 1000

OPTIMIZERS = {
    "optimi-adamw": ("adamw", ""),
    "bnb-adamw": ("adamw", ""),
    "bnb-adamw8bit": ("adamw8bit", ""),
    "adamw_bf16": (
        "adamw",
        "SimpleTuner's adamw_bf16 keeps bf16 weights with stochastic rounding; dbspec's "
        "AdamW updates fp32 weights",
    ),
    "ao-adamw8bit": ("adamw8bit", "torchao's 8-bit AdamW; dbspec uses bitsandbytes' (the same algorithm)"),
    "optimi-lion": ("lion", ""),
    "bnb-lion": ("lion", ""),
    # bitsandbytes' Lion8bit, PagedLion, PagedLion8bit (its optimizer_param.py), built as cls(params, lr=lr,
    # **default_settings) as dbspec builds them
    "bnb-lion8bit": ("lion8bit", ""),
    "bnb-lion-paged": ("paged_lion", ""),
    "bnb-lion8bit-paged": ("paged_lion8bit", ""),
    "prodigy": ("prodigy", ""),
    "optimi-sgd": ("sgd", ""),
}
QUANTIZATION = {
    "no_change": "none",
    "int8-quanto": "int8",
    "int4-quanto": "int4",
    "fp8-quanto": "fp8",
    "int8-torchao": "int8",
    "fp8-torchao": "fp8",
    "nf4-bnb": "nf4",
}
# base_model_precision levels that name another library than quanto (dbspec's default backend)
QUANTIZE_BACKEND = {"int8-torchao": "torchao", "fp8-torchao": "torchao", "nf4-bnb": "bitsandbytes"}
SCHEDULERS = {"euler": "euler", "euler-a": "euler_a", "ddim": "ddim", "unipc": "unipc", "dpm++": "dpmpp"}
INERT = frozenset(
    {
        "hub_model_id",
        "push_to_hub",
        "push_checkpoints_to_hub",
        "tracker_project_name",
        "tracker_run_name",
        "attention_mechanism",
        "vae_batch_size",
        "disable_benchmark",
        "resume_from_checkpoint",
        "validation_torch_compile",
        "webhook_config",
        "logging_dir",
        "max_workers",
        "read_batch_size",
        "write_batch_size",
        "metadata_update_interval",
        "compress_disk_cache",
        "quantize_via",
        "offload_during_startup",
        "vae_cache_scan_behaviour",
        "aspect_bucket_rounding",
        "override_dataset_config",
        "dataloader_prefetch",
        "text_encoder_1_precision",
        "text_encoder_2_precision",
        "lora_init_type",
        "model_card_note",
        "user_prompt_library",
        "num_validation_images",
        "validation_resolution",
        "enable_xformers_memory_efficient_attention",
        "set_grads_to_none",
        "seed_for_each_device",
        "data_backend_config",
        "cache_dir_text",
        "cache_dir_vae",
        "disable_bucket_pruning",
        "aspect_bucket_alignment",
        "delete_problematic_images",
        "delete_unwanted_images",
        "ema_device",
        "ema_cpu_only",
        "checkpoint_epoch_interval",
        "allow_dataset_oversubscription",
        "validation_on_startup",
        "evaluation_type",
        "i_know_what_i_am_doing",  # a safety switch: what it unlocks is reported with its own key
        # memory placement and offloading: the same maths
        "gradient_checkpointing_interval",
        "musubi_blocks_to_swap",
        "ramtorch",
        "ramtorch_target_modules",
        "enable_group_offload",
        "group_offload_type",
    }
)


# SimpleTuner options that train something dbspec has no form of, with the reason.
REFUSED = {
    "controlnet": "dbspec trains no ControlNet (it trains the denoiser, adapters on it, or a full fine-tune)",
    "use_soft_min_snr": "dbspec's SNR weights are min-SNR, debiased estimation and v-prediction-like loss",
}


def num(legacy: Legacy) -> float:
    return float(legacy.value)


def flag(legacy: Legacy) -> bool:
    value = legacy.value
    return value.strip().lower() in ("1", "true", "yes", "y", "on") if isinstance(value, str) else bool(value)


def map_training(cfg: Cfg, data, lora: bool, paths: PathMapper, conv: Conversion) -> None:
    _model(cfg, paths, conv)
    if lora:
        _adapter(cfg, paths, conv)
    elif cfg["model_type"].value == "full":
        conv.record(cfg["model_type"], "mapped", "adapter.kind")
    else:
        conv.unsupported(cfg["model_type"], "dbspec trains LoRA or full fine-tunes")
    _schedule(cfg, data, conv)
    _optimizer(cfg, conv)
    _loss(cfg, data, lora, conv)
    _precision(cfg, lora, conv)
    _outputs(cfg, paths, conv)
    for key, why in REFUSED.items():
        if key in cfg and flag(cfg[key]) and key not in conv.reports:
            conv.unsupported(cfg[key], why)
    for key, legacy in cfg.items():
        if legacy.given and key not in conv.reports:
            if key in INERT or key.startswith(
                ("validation_", "tracker_", "hub_", "webhook", "eval_", "num_eval_")
            ):
                conv.inert(legacy, "no effect on what trains")
            elif legacy.value in (None, False, "", 0, "none", "no_change"):
                conv.inert(legacy, "off")
            else:
                conv.unsupported(legacy, "not a SimpleTuner option dbspec knows; it may change training")


def _model(cfg: Cfg, paths: PathMapper, conv: Conversion) -> None:
    base, family, flavour = cfg["pretrained_model_name_or_path"], cfg["model_family"], cfg["model_flavour"]
    if base.value:
        conv.mapped(base, ("model", "base"), model_path(str(base.value), paths))
        if flavour.given:
            conv.inert(flavour, "pretrained_model_name_or_path is given, so the flavour picks nothing")
    elif not flavour.value and family.value in DEFAULT_FLAVOURS:  # its setup_model_flavour's default
        hub = FLAVOURS[family.value][DEFAULT_FLAVOURS[family.value]]
        note = f"neither path nor flavour: {family.value}'s default flavour {DEFAULT_FLAVOURS[family.value]}"
        conv.mapped(base, ("model", "base"), hub, comment=conv.comment(base, note))
    elif flavour.value and family.value in FLAVOURS and flavour.value in FLAVOURS[family.value]:
        hub = FLAVOURS[family.value][str(flavour.value)]
        conv.mapped(flavour, ("model", "base"), hub, comment=conv.comment(flavour, "SimpleTuner's table"))
    elif flavour.value:
        names = ", ".join(FLAVOURS.get(str(family.value), {})) or "none for this family"
        conv.invalid(flavour.key, flavour.value, flavour.source, f"not a {family.value} flavour ({names})")
    else:
        conv.invalid(base.key, None, base.source, "SimpleTuner needs the base model (or model_flavour)")
    if family.value not in FAMILIES:
        conv.unsupported(
            family,
            "dbspec trains SD 1.x, SD 2.x, SDXL, SD3 and Flux.1 (model_family sd1x, sd2x, sdxl, legacy, sd3, "
            "flux)",
        )
    elif FAMILIES[family.value] != "auto":
        # SimpleTuner trains the SDXL refiner under model_family sdxl (its refiner flavours or a refiner
        # path); dbspec has it as a family of its own.
        named = f"{flavour.value or ''} {base.value or ''}".lower()
        refiner = family.value == "sdxl" and "refiner" in named
        conv.mapped(family, ("model", "family"), "sdxl_refiner" if refiner else FAMILIES[family.value])
    else:
        conv.record(family, "mapped", "model.family")
    for key, target in (("pretrained_vae_model_name_or_path", "vae"), ("revision", "revision")):
        if target == "vae" and flow_vae_ignored(cfg):
            continue  # SimpleTuner's SD3 clears it (map_flow_model reports it)
        if cfg[key].value:
            conv.mapped(
                cfg[key],
                ("model", target),
                model_path(str(cfg[key].value), paths) if target == "vae" else str(cfg[key].value),
            )
    if is_flow(cfg):
        map_flow_model(cfg, conv)
    else:
        _prediction(cfg, conv)


def _prediction(cfg: Cfg, conv: Conversion) -> None:
    """SimpleTuner's target: the family class's PREDICTION_TYPE (sd2x v_prediction, sd1x/sdxl epsilon) unless
    prediction_type is set; it never reads the model's scheduler config. sd2x forces rescale_betas_zero_snr
    (and trailing training timestep spacing, which changes no training draw: timesteps are sampled from
    [0, 1000) either way)."""
    prediction, family, rescale = cfg["prediction_type"], cfg["model_family"], cfg["rescale_betas_zero_snr"]
    if prediction.value in ("epsilon", "v_prediction"):
        conv.mapped(prediction, ("model", "prediction"), prediction.value)
    elif prediction.value is not None:
        conv.unsupported(prediction, "dbspec trains epsilon or v_prediction targets")
    elif family.value in ("sd1x", "sd2x", "sdxl"):
        target = "v_prediction" if family.value == "sd2x" else "epsilon"
        conv.put(
            ("model", "prediction"),
            target,
            f"SimpleTuner's {family.value} target (its PREDICTION_TYPE; prediction_type not set)",
        )
    if family.value == "sd2x":
        conv.put(
            ("loss", "zero_terminal_snr"),
            True,
            "SimpleTuner's sd2x forces rescale_betas_zero_snr (with trailing timestep spacing)",
        )
        if rescale.given:
            conv.record(rescale, "mapped", "loss.zero_terminal_snr")
    elif flag(rescale):
        conv.mapped(rescale, ("loss", "zero_terminal_snr"), True)
    if "training_scheduler_timestep_spacing" in cfg:
        conv.inert(
            cfg["training_scheduler_timestep_spacing"],
            "training draws timesteps from [0, 1000) whatever the spacing",
        )


def _adapter(cfg: Cfg, paths: PathMapper, conv: Conversion) -> None:
    kind = cfg["lora_type"]
    if kind.value == "lycoris":
        conv.record(cfg["model_type"], "mapped", "adapter.kind")
        map_lycoris(kind, cfg["lycoris_config"], paths, conv, flow=is_flow(cfg))
        for key in (
            "lora_rank",
            "lora_alpha",
            "lora_dropout",
            "use_dora",
            "flux_lora_target",
            "peft_lora_target_modules",
        ):
            if key in cfg and cfg[key].given:
                conv.inert(cfg[key], "LyCORIS reads its own settings from lycoris_config")
        return
    if kind.value != "standard":
        conv.unsupported(kind, "dbspec trains SimpleTuner's lora_type standard (PEFT LoRA) and lycoris")
        return
    if kind.given:
        conv.record(kind, "mapped", "adapter.kind")
    conv.put(("adapter", "kind"), "lora", conv.comment(cfg["model_type"]))
    conv.record(cfg["model_type"], "mapped", "adapter.kind")
    if is_flow(cfg):
        flux_targets(cfg, conv)
    rank = cfg["lora_rank"]
    conv.mapped(rank, ("adapter", "rank"), int(num(rank)))
    alpha = cfg["lora_alpha"]
    if alpha.value is not None:
        conv.mapped(alpha, ("adapter", "alpha"), num(alpha))
    dropout = cfg["lora_dropout"]
    if num(dropout):
        conv.mapped(dropout, ("adapter", "dropout"), num(dropout))
    if "use_dora" in cfg and cfg["use_dora"].value:  # peft's LoraConfig(use_dora=True), as adapter.dora
        conv.mapped(cfg["use_dora"], ("adapter", "dora"), True)
    if "init_lora" in cfg and cfg["init_lora"].value:
        conv.unsupported(cfg["init_lora"], "dbspec trains a fresh LoRA")


def _schedule(cfg: Cfg, data, conv: Conversion) -> None:
    steps, epochs = cfg["max_train_steps"], cfg["num_train_epochs"]
    if steps.value and int(num(steps)) > 0:
        conv.mapped(steps, ("schedule", "steps"), int(num(steps)))
    else:
        conv.mapped(epochs, ("schedule", "epochs"), int(num(epochs)))
    batch, accum = cfg["train_batch_size"], cfg["gradient_accumulation_steps"]
    conv.mapped(batch, ("schedule", "batch_size"), int(num(batch)))
    if data.datasets > 1:
        conv.differs(
            batch, "SimpleTuner draws every batch from one backend; dbspec pools datasets that share a bucket"
        )
    if int(num(accum)) != 1:
        conv.mapped(accum, ("schedule", "accumulation"), int(num(accum)))
    if data.has_class:
        conv.put(
            ("schedule", "balance_classes"),
            False,
            "SimpleTuner does not balance regularisation data: its repeats decide",
        )
    _lr_schedule(cfg, conv)
    seed = cfg["seed"]
    if seed.value is not None:
        conv.mapped(seed, ("schedule", "seed"), int(num(seed)))
    if data.square:
        conv.put(("buckets", "mode"), "square", "SimpleTuner backends crop squares (crop_aspect square)")


def _lr_schedule(cfg: Cfg, conv: Conversion) -> None:
    """SimpleTuner's get_lr_scheduler (helpers/training/custom_schedule.py), after its argument parsing
    renames cosine_with_warmup to cosine and constant with warm-up steps to constant_with_warmup."""
    name, warm, end, power = cfg["lr_scheduler"], cfg["lr_warmup_steps"], cfg["lr_end"], cfg["lr_power"]
    chosen = SCHEDULE_ALIASES.get(str(name.value).strip().lower(), str(name.value).strip().lower())
    warmup = int(num(warm))
    if chosen == "constant" and warmup > 0:
        chosen = "constant_with_warmup"
    why = f"SimpleTuner runs {chosen}" if chosen != name.value else ""
    if chosen in GET_SCHEDULER:
        conv.mapped(name, ("schedule", "lr_schedule"), chosen, comment=conv.comment(name, why))
        if warmup and chosen != "constant":
            conv.mapped(warm, ("schedule", "warmup_steps"), warmup)
    elif chosen == "polynomial":
        conv.mapped(name, ("schedule", "lr_schedule"), "polynomial")
        if warmup:
            conv.mapped(warm, ("schedule", "warmup_steps"), warmup)
        conv.mapped(power, ("schedule", "power"), num(power))
        conv.mapped(end, ("schedule", "lr_end"), num(end))
    elif chosen in ("cosine", "sine"):
        if chosen == "sine" and not warmup:
            conv.invalid(
                warm.key, warmup, warm.source, "SimpleTuner's sine raises without lr_warmup_steps (its T_0)"
            )
            return
        period = warmup or COSINE_DEFAULT_PERIOD
        kind = f"simpletuner_{chosen}"
        shape = (
            "no warm-up, a wave of period 2 x lr_warmup_steps"
            if chosen == "cosine"
            else "no warm-up, a sine from half-way, period 2 x lr_warmup_steps"
        )
        conv.mapped(
            name, ("schedule", "lr_schedule"), kind, comment=conv.comment(name, f"SimpleTuner's {shape}")
        )
        conv.mapped(
            warm,
            ("schedule", "t_max"),
            period,
            comment=conv.comment(warm, "the wave's half period" + ("" if warmup else "; 0 becomes 1000")),
        )
        if num(end):
            conv.mapped(end, ("schedule", "eta_min"), num(end))
        else:
            conv.record(end, "mapped", "schedule.eta_min")
    elif chosen == "cosine_with_restarts":
        # CosineAnnealingHardRestarts: T_cur = step % steps_per_epoch with steps_per_epoch -1 is always 0, so
        # the LR stays at floor(lr x 1e9) / 1e9 (its own warning: "currently misbehaving"); T_0 0 raises.
        if not warmup:
            conv.invalid(
                warm.key,
                warmup,
                warm.source,
                "SimpleTuner's cosine_with_restarts raises without lr_warmup_steps",
            )
            return
        conv.mapped(
            name,
            ("schedule", "lr_schedule"),
            "constant",
            comment=conv.comment(name, "its hard-restart cosine never leaves T_cur 0: a constant LR"),
        )
        conv.record(warm, "mapped", "schedule.lr_schedule")
        conv.record(end, "mapped", "schedule.lr_schedule")
    else:
        known = "constant, constant_with_warmup, linear, polynomial, cosine, sine and cosine_with_restarts"
        conv.unsupported(name, f"not a schedule dbspec has; dbspec expresses SimpleTuner's {known}")
        return
    for key in ("lr_end", "lr_power", "lr_num_cycles"):
        legacy = cfg[key]
        if legacy.given and legacy.key not in conv.reports:
            conv.inert(legacy, f"{chosen} does not use it")


def _optimizer(cfg: Cfg, conv: Conversion) -> None:
    name = cfg["optimizer"]
    # The rate is the run's whatever the optimizer: an unknown optimizer is refused once, not with its rate.
    rate = cfg["learning_rate"]
    if _floors_lr(cfg):
        floored = math.floor(num(rate) * 1e9) / 1e9
        conv.mapped(
            rate, ("optimizer", "lr"), floored, comment=conv.comment(rate, "its scheduler floors it to 1e-9")
        )
    else:
        conv.mapped(rate, ("optimizer", "lr"), num(rate))
    if name.value not in OPTIMIZERS:
        conv.unsupported(name, f"dbspec has no {name.value} optimizer")
        return
    kind, why = OPTIMIZERS[name.value]
    if why:
        conv.differs(name, why, ("optimizer", "kind"), kind)
    else:
        conv.mapped(name, ("optimizer", "kind"), kind)
    betas = [cfg[k] for k in ("optimizer_beta1", "optimizer_beta2") if cfg[k].value is not None]
    if name.value in LION:
        betas = _lion_defaults(cfg, betas, conv)
    if betas:
        values = [
            num(cfg["optimizer_beta1"]) if cfg["optimizer_beta1"].value is not None else 0.9,
            num(cfg["optimizer_beta2"]) if cfg["optimizer_beta2"].value is not None else 0.999,
        ]
        conv.put(("optimizer", "betas"), values, f"{conv.tool} optimizer_beta1/optimizer_beta2")
        for legacy in betas:
            conv.record(legacy, "mapped", "optimizer.betas")
    extra = cfg["optimizer_config"]
    if extra.value:
        _optimizer_config(extra, conv)
    _clipping(cfg, conv)
    lr_te = cfg["text_encoder_lr"]
    if lr_te.value is not None and flag(cfg["train_text_encoder"]):
        te_rate = math.floor(num(lr_te) * 1e9) / 1e9 if _floors_lr(cfg) else num(lr_te)
        conv.mapped(lr_te, ("optimizer", "text_encoder_lr"), te_rate)


# SimpleTuner's Lion entries, all with default_settings betas (0.9, 0.99) and weight_decay 0.0 (bitsandbytes'
# and optimi's own defaults; the bitsandbytes ones' min_8bit_size 4096 is bitsandbytes' default too)
LION = {
    "bnb-lion": "bitsandbytes Lion",
    "bnb-lion8bit": "bitsandbytes Lion8bit",
    "bnb-lion-paged": "bitsandbytes PagedLion",
    "bnb-lion8bit-paged": "bitsandbytes PagedLion8bit",
    "optimi-lion": "optimi Lion",
}
LION_DEFAULTS = {"betas": [0.9, 0.99], "weight_decay": 0.0}


def _lion_defaults(cfg: Cfg, betas: list[Legacy], conv: Conversion) -> list[Legacy]:
    """SimpleTuner starts from the entry's default_settings, replaces betas only when optimizer_beta1 and
    optimizer_beta2 are both given, and optimizer_config's keys on top (convert_arg_to_parameters). The betas
    that still apply."""
    name = cfg["optimizer"]
    for key, value in LION_DEFAULTS.items():
        conv.put(("optimizer", key), value, conv.comment(name, f"its {LION[name.value]} default"))
    if len(betas) == 1:
        conv.inert(
            betas[0], "SimpleTuner sets betas only when optimizer_beta1 and optimizer_beta2 are both given"
        )
        return []
    return betas


def _clipping(cfg: Cfg, conv: Conversion) -> None:
    """SimpleTuner's trainer clips with max_grad_norm > 0, except for prodigy and optimi-stableadamw, by
    grad_clip_method: "value" (its field-registry default: clip_grad_value_, each gradient element to
    +-max_grad_norm) or "norm" (clip_grad_norm_): dbspec's optimizer.clip_mode."""
    norm = cfg["max_grad_norm"]
    method = (
        cfg["grad_clip_method"]
        if "grad_clip_method" in cfg
        else Legacy(key="grad_clip_method", value="value", source="default")
    )
    if num(norm) <= 0 or cfg["optimizer"].value in ("prodigy", "optimi-stableadamw"):
        why = "" if num(norm) <= 0 else f"SimpleTuner does not clip gradients for {cfg['optimizer'].value}"
        conv.mapped(norm, ("optimizer", "max_grad_norm"), 0.0, note=why, comment=conv.comment(norm, why))
        if method.given:
            conv.inert(method, "no clipping")
        return
    if method.value in ("norm", "value"):
        conv.mapped(norm, ("optimizer", "max_grad_norm"), num(norm))
        conv.mapped(
            method,
            ("optimizer", "clip_mode"),
            method.value,
            note="" if method.given else "SimpleTuner's default: each gradient value clipped",
        )
    else:
        conv.invalid(method.key, method.value, method.source, "not a grad_clip_method (value, norm)")


def _floors_lr(cfg: Cfg) -> bool:
    """SimpleTuner's hard-restart cosine writes floor(lr x 1e9) / 1e9 into every group from step 0."""
    return str(cfg["lr_scheduler"].value).strip().lower() == "cosine_with_restarts"


def _optimizer_config(extra: Legacy, conv: Conversion) -> None:
    items = dict(item.split("=", 1) for item in str(extra.value).split(",") if "=" in item)
    known = {k: v for k, v in items.items() if k.strip() in ("weight_decay", "eps")}
    for key, value in known.items():
        conv.put(("optimizer", key.strip()), float(value), conv.comment(extra))
    rest = {k: v for k, v in items.items() if k not in known}
    if rest:
        conv.unsupported(extra, f"optimizer settings dbspec does not set: {rest}")
    else:
        conv.record(extra, "mapped", "optimizer")


def _loss(cfg: Cfg, data, lora: bool, conv: Conversion) -> None:
    if is_flow(cfg):
        map_flow_loss(cfg, conv)
    else:
        snr = cfg["snr_gamma"]
        if snr.value:
            conv.mapped(snr, ("loss", "min_snr_gamma"), num(snr))
        _noise_offset(cfg, conv)
        _huber(cfg, conv)
    if data.has_class:
        prior = "base_model" if lora else "images"
        conv.put(
            ("loss", "prior"),
            prior,
            "SimpleTuner's regularisation target: the base model's prediction"
            if lora
            else "SimpleTuner trains regularisation data like any data in full fine-tunes",
        )
        conv.warn(
            "DBS404",
            "SimpleTuner computes the regularisation loss on whole regularisation batches; dbspec "
            "adds prior_weight x the class mean of each pooled batch",
            "is_regularisation_data",
        )


def _noise_offset(cfg: Cfg, conv: Conversion) -> None:
    """SimpleTuner adds noise_offset x randn(B, C, 1, 1) only when offset_noise is true, and then on a
    noise_offset_probability share of steps (model_foundation's noise sampling)."""
    switch, offset, chance = cfg["offset_noise"], cfg["noise_offset"], cfg["noise_offset_probability"]
    if not flag(switch):
        for legacy in (switch, offset, chance):
            if legacy.given:
                conv.inert(legacy, "SimpleTuner applies noise_offset only with offset_noise = true")
        return
    if not num(offset):
        for legacy in (switch, offset, chance):
            conv.record(legacy, "mapped", "loss.noise_offset")
        return
    if num(chance) != 1.0:
        conv.unsupported(
            switch,
            f"SimpleTuner applies the offset on a share of steps (noise_offset_probability {num(chance):g}); "
            "dbspec applies it on every step",
            help="set noise_offset_probability = 1.0, or offset_noise = false",
        )
        return
    conv.mapped(offset, ("loss", "noise_offset"), num(offset))
    conv.record(switch, "mapped", "loss.noise_offset")
    conv.record(chance, "mapped", "loss.noise_offset")


def _huber(cfg: Cfg, conv: Conversion) -> None:
    """SimpleTuner's loss_type huber is 2c(sqrt(x^2 + c^2) - c), smooth_l1 2(sqrt(x^2 + c^2) - c), with c from
    huber_schedule (constant c; exponential exp(t ln(c) / T); snr (1 - c)/(1 + sigma_t)^2 + c): dbspec's
    pseudo_huber and smooth_l1 with huber_scale 1 (kohya's formulas)."""
    kind, schedule, c = cfg["loss_type"], cfg["huber_schedule"], cfg["huber_c"]
    kinds = {"l2": "mse", "huber": "pseudo_huber", "smooth_l1": "smooth_l1"}
    if kind.value not in kinds:
        conv.unsupported(kind, "dbspec expresses SimpleTuner's l2, huber and smooth_l1 losses")
        return
    if kind.value == "l2":
        conv.record(kind, "mapped", "loss.kind")
        for legacy in (schedule, c):
            if legacy.given:
                conv.inert(legacy, "used by loss_type huber and smooth_l1 only")
        return
    conv.mapped(kind, ("loss", "kind"), kinds[kind.value])
    if schedule.value not in ("constant", "exponential", "snr"):
        conv.unsupported(schedule, "dbspec's huber schedules are constant, exponential and snr")
        return
    conv.mapped(schedule, ("loss", "huber_schedule"), schedule.value)
    conv.mapped(c, ("loss", "huber_c"), num(c))


def _precision(cfg: Cfg, lora: bool, conv: Conversion) -> None:
    mixed = cfg["mixed_precision"]
    if mixed.value in ("no", "fp16", "bf16"):
        conv.mapped(mixed, ("precision", "mixed"), mixed.value)
    else:
        conv.unsupported(mixed, "dbspec's mixed precision is no, fp16 or bf16")
    quant = cfg["base_model_precision"]
    if quant.value == "fp8-quanto" and cfg["model_family"].value == "sd3":
        conv.invalid(
            quant.key, quant.value, quant.source, "SimpleTuner's SD3 refuses fp8-quanto (check_user_config)"
        )
    elif quant.value not in QUANTIZATION:
        conv.unsupported(
            quant, "dbspec quantises with quanto int8/int4/fp8, torchao int8/fp8 and bitsandbytes nf4 only"
        )
    elif QUANTIZATION[quant.value] != "none":
        conv.mapped(quant, ("precision", "quantize_denoiser"), QUANTIZATION[quant.value])
        if quant.value in QUANTIZE_BACKEND:
            conv.put(("precision", "quantize_backend"), QUANTIZE_BACKEND[quant.value], conv.comment(quant))
    grad = cfg["gradient_checkpointing"]
    if flag(grad):
        conv.mapped(grad, ("precision", "gradient_checkpointing"), True)
    if "disable_tf32" in cfg and flag(cfg["disable_tf32"]):
        conv.mapped(cfg["disable_tf32"], ("precision", "tf32"), False)
    if flag(cfg["train_text_encoder"]):
        conv.mapped(cfg["train_text_encoder"], ("train", "text_encoder"), True)


def _outputs(cfg: Cfg, paths: PathMapper, conv: Conversion) -> None:
    conv.mapped(cfg["output_dir"], ("output", "dir"), paths.for_spec(str(cfg["output_dir"].value)))
    every = _interval(cfg, "checkpoint_step_interval", "checkpointing_steps", conv)
    if every.value and int(num(every)) > 0:
        conv.mapped(every, ("checkpoints", "every"), int(num(every)))
        conv.mapped(
            cfg["checkpoints_total_limit"], ("checkpoints", "keep"), int(num(cfg["checkpoints_total_limit"]))
        )
    _validation(cfg, conv)
    if flag(cfg["use_ema"]):
        conv.mapped(cfg["use_ema"], ("ema", "enabled"), True)
        conv.mapped(cfg["ema_decay"], ("ema", "decay"), num(cfg["ema_decay"]))
    report = cfg["report_to"]
    if report.value is not None:
        conv.mapped(report, ("logging", "tensorboard"), report.value in ("tensorboard", "all"))
    if report.value in ("wandb", "all"):
        _wandb(cfg, conv)


# SimpleTuner's tracker names: its field registry's defaults, and the trainer's when one is given empty
TRACKER_DEFAULTS = {
    "tracker_project_name": ("simpletuner", "simpletuner-training"),
    "tracker_run_name": ("simpletuner-testing", "simpletuner-training-run"),
}


def _wandb(cfg: Cfg, conv: Conversion) -> None:
    """report_to = "wandb" (or "all"): accelerate's W&B tracker, project `tracker_project_name`, run name
    `tracker_run_name` (its W&B run id is a hash of the config; dbspec keeps its own in the output folder)."""
    conv.mapped(cfg["report_to"], WANDB, True)
    for key, path in (("tracker_project_name", PROJECT), ("tracker_run_name", RUN_NAME)):
        unset, empty = TRACKER_DEFAULTS[key]
        legacy = cfg.get(key)
        if legacy is None or not legacy.given:
            conv.put(path, unset, f"SimpleTuner's default {key}")
        else:
            conv.mapped(legacy, path, str(legacy.value).strip() or empty)
    if cfg["report_to"].value == "all":
        conv.differs(
            cfg["report_to"],
            "SimpleTuner's all also logs to its local report and any other tracker installed; dbspec logs to "
            "TensorBoard and Weights & Biases",
        )


def _interval(cfg: Cfg, name: str, legacy_name: str, conv: Conversion) -> Legacy:
    """SimpleTuner's step interval: its config loader turns the legacy name into the new option; the trainer
    reads the new one and falls back to the legacy one when it is unset or 0."""
    new, old = cfg[name], cfg[legacy_name]
    chosen = new if new.given and new.value not in ("", 0) else old if old.value else new
    for legacy in (new, old):
        if legacy is not chosen and legacy.given:
            conv.inert(legacy, f"{chosen.key} decides")
    return chosen


def _validation(cfg: Cfg, conv: Conversion) -> None:
    prompt = cfg["validation_prompt"]
    if not prompt.value:
        return
    conv.mapped(prompt, ("validation", "prompts"), [str(prompt.value)])
    every = _interval(cfg, "validation_step_interval", "validation_steps", conv)
    conv.mapped(every, ("validation", "every"), int(num(every)))
    pairs: list[tuple[str, str, Any]] = [
        ("validation_guidance", "guidance", float),
        ("validation_num_inference_steps", "steps", int),
        ("validation_negative_prompt", "negative_prompt", str),
        ("validation_seed", "seed", int),
    ]
    for key, target, cast in pairs:
        if cfg[key].value is not None:
            conv.mapped(
                cfg[key],
                ("validation", target),
                cast(float(cfg[key].value)) if cast is not str else cast(cfg[key].value),
            )
    sampler = cfg["validation_noise_scheduler"]
    if is_flow(cfg):
        conv.put(
            ("validation", "scheduler"),
            "flow_euler",
            "SimpleTuner samples flow models with flow-matching Euler",
        )
        if sampler.value in ("flow_matching", "flow_match_euler", "euler"):
            conv.record(sampler, "mapped", "validation.scheduler")
        elif sampler.given:
            conv.differs(sampler, "dbspec samples flow-matching models with flow-matching Euler")
        return
    if sampler.value is None and cfg["model_family"].value == "sd2x":  # its DEFAULT_NOISE_SCHEDULER
        conv.put(("validation", "scheduler"), "euler", "SimpleTuner's sd2x validation scheduler (euler)")
    if sampler.value in SCHEDULERS:
        conv.mapped(sampler, ("validation", "scheduler"), SCHEDULERS[sampler.value])
    elif sampler.value is not None:
        conv.differs(sampler, "dbspec has no such validation scheduler; ddim is used")
