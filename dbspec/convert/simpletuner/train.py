"""SimpleTuner training options -> [model], [adapter], [train], [schedule], [optimizer], [loss], [precision],
[checkpoints], [validation], [ema], [output] and [logging]."""

from __future__ import annotations

from typing import Any

from dbspec.compiler.schedule import DIFFUSERS_SCHEDULES
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.model import model_path
from dbspec.convert.common.paths import PathMapper

Cfg = dict[str, Legacy]
FAMILIES = {"sd1x": "sd1", "sd2x": "sd2", "sdxl": "sdxl", "legacy": "auto"}
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
    "prodigy": ("prodigy", ""),
    "optimi-sgd": ("sgd", ""),
}
QUANTIZATION = {"no_change": "none", "int8-quanto": "int8", "int4-quanto": "int4", "fp8-quanto": "fp8"}
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
        "minimum_image_size",
        "delete_problematic_images",
        "delete_unwanted_images",
        "ema_device",
        "ema_cpu_only",
        "checkpoint_epoch_interval",
        "allow_dataset_oversubscription",
        "validation_on_startup",
        "evaluation_type",
        "lr_end",
    }
)


def num(legacy: Legacy) -> float:
    return float(legacy.value)


def flag(legacy: Legacy) -> bool:
    value = legacy.value
    return value.strip().lower() in ("1", "true", "yes", "y", "on") if isinstance(value, str) else bool(value)


def map_training(cfg: Cfg, data, lora: bool, paths: PathMapper, conv: Conversion) -> None:
    _model(cfg, paths, conv)
    if lora:
        _adapter(cfg, conv)
    elif cfg["model_type"].value == "full":
        conv.record(cfg["model_type"], "mapped", "adapter.kind")
    else:
        conv.unsupported(cfg["model_type"], "dbspec trains LoRA or full fine-tunes")
    _schedule(cfg, data, conv)
    _optimizer(cfg, conv)
    _loss(cfg, data, lora, conv)
    _precision(cfg, lora, conv)
    _outputs(cfg, paths, conv)
    for key, legacy in cfg.items():
        if legacy.given and key not in conv.reports:
            if key in INERT or key.startswith(("validation_", "tracker_", "hub_", "webhook")):
                conv.inert(legacy, "no effect on what trains")
            elif legacy.value in (None, False, "", 0, "none", "no_change"):
                conv.inert(legacy, "off")
            else:
                conv.unsupported(legacy, "not a SimpleTuner option dbspec knows; it may change training")


def _model(cfg: Cfg, paths: PathMapper, conv: Conversion) -> None:
    base, family = cfg["pretrained_model_name_or_path"], cfg["model_family"]
    if not base.value:
        conv.invalid(base.key, None, base.source, "SimpleTuner needs the base model")
    else:
        conv.mapped(base, ("model", "base"), model_path(str(base.value), paths))
    if family.value not in FAMILIES:
        conv.unsupported(
            family, "dbspec trains SD 1.x, SD 2.x and SDXL (model_family sd1x, sd2x, sdxl, legacy)"
        )
    elif FAMILIES[family.value] != "auto":
        conv.mapped(family, ("model", "family"), FAMILIES[family.value])
    else:
        conv.record(family, "mapped", "model.family")
    for key, target in (("pretrained_vae_model_name_or_path", "vae"), ("revision", "revision")):
        if cfg[key].value:
            conv.mapped(
                cfg[key],
                ("model", target),
                model_path(str(cfg[key].value), paths) if target == "vae" else str(cfg[key].value),
            )
    prediction = cfg["prediction_type"]
    if prediction.value in ("epsilon", "v_prediction"):
        conv.mapped(prediction, ("model", "prediction"), prediction.value)
    elif prediction.value is not None:
        conv.unsupported(prediction, "dbspec trains epsilon or v_prediction targets")


def _adapter(cfg: Cfg, conv: Conversion) -> None:
    kind = cfg["lora_type"]
    if kind.value != "standard":
        conv.unsupported(kind, "LyCORIS adapters have no dbspec equivalent (dbspec trains PEFT LoRA)")
    conv.put(("adapter", "kind"), "lora", conv.comment(cfg["model_type"]))
    conv.record(cfg["model_type"], "mapped", "adapter.kind")
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
    name, warm = cfg["lr_scheduler"], cfg["lr_warmup_steps"]
    if name.value not in DIFFUSERS_SCHEDULES:  # the others are kohya's
        conv.unsupported(name, f"dbspec's schedules for SimpleTuner are {', '.join(DIFFUSERS_SCHEDULES)}")
    else:
        conv.mapped(name, ("schedule", "lr_schedule"), name.value)
        if int(num(warm)) and name.value != "constant":
            conv.mapped(warm, ("schedule", "warmup_steps"), int(num(warm)))
        if name.value == "cosine_with_restarts":
            conv.mapped(cfg["lr_num_cycles"], ("schedule", "cycles"), int(num(cfg["lr_num_cycles"])))
    seed = cfg["seed"]
    if seed.value is not None:
        conv.mapped(seed, ("schedule", "seed"), int(num(seed)))
    if data.square:
        conv.put(("buckets", "mode"), "square", "SimpleTuner backends crop squares (crop_aspect square)")


def _optimizer(cfg: Cfg, conv: Conversion) -> None:
    name = cfg["optimizer"]
    if name.value not in OPTIMIZERS:
        conv.unsupported(name, f"dbspec has no {name.value} optimizer")
        return
    kind, why = OPTIMIZERS[name.value]
    if why:
        conv.differs(name, why, ("optimizer", "kind"), kind)
    else:
        conv.mapped(name, ("optimizer", "kind"), kind)
    conv.mapped(cfg["learning_rate"], ("optimizer", "lr"), num(cfg["learning_rate"]))
    betas = [cfg[k] for k in ("optimizer_beta1", "optimizer_beta2") if cfg[k].value is not None]
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
    norm = cfg["max_grad_norm"]
    if num(norm) != 1.0:
        conv.mapped(norm, ("optimizer", "max_grad_norm"), num(norm))
    lr_te = cfg["text_encoder_lr"]
    if lr_te.value is not None and flag(cfg["train_text_encoder"]):
        conv.mapped(lr_te, ("optimizer", "text_encoder_lr"), num(lr_te))


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
    snr = cfg["snr_gamma"]
    if snr.value:
        conv.mapped(snr, ("loss", "min_snr_gamma"), num(snr))
    offset, chance = cfg["noise_offset"], cfg["noise_offset_probability"]
    if offset.value is None:
        conv.warn(
            "DBS407",
            "noise_offset is not set: SimpleTuner's default changed between versions (0.1 applied to "
            "25% of steps in older ones, 0 in newer ones); converted as off",
            "noise_offset",
        )
    elif num(offset) and (chance.value is None or num(chance) != 1.0):
        conv.unsupported(
            offset,
            "SimpleTuner applies the offset to a fraction of steps (noise_offset_probability); "
            "dbspec applies it to every step",
            help="set noise_offset_probability = 1.0, or 0 offset",
        )
    elif num(offset):
        conv.mapped(offset, ("loss", "noise_offset"), num(offset))
        if chance.given:
            conv.record(chance, "mapped", "loss.noise_offset")
    if "caption_dropout_probability" in cfg and cfg["caption_dropout_probability"].value:
        conv.unsupported(cfg["caption_dropout_probability"], "dbspec has no caption dropout")
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


def _precision(cfg: Cfg, lora: bool, conv: Conversion) -> None:
    mixed = cfg["mixed_precision"]
    if mixed.value in ("no", "fp16", "bf16"):
        conv.mapped(mixed, ("precision", "mixed"), mixed.value)
    else:
        conv.unsupported(mixed, "dbspec's mixed precision is no, fp16 or bf16")
    quant = cfg["base_model_precision"]
    if quant.value not in QUANTIZATION:
        conv.unsupported(quant, "dbspec quantises with optimum-quanto int8/int4/fp8 only")
    elif QUANTIZATION[quant.value] != "none":
        conv.mapped(quant, ("precision", "quantize_denoiser"), QUANTIZATION[quant.value])
    grad = cfg["gradient_checkpointing"]
    if flag(grad):
        conv.mapped(grad, ("precision", "gradient_checkpointing"), True)
    if "disable_tf32" in cfg and flag(cfg["disable_tf32"]):
        conv.mapped(cfg["disable_tf32"], ("precision", "tf32"), False)
    if flag(cfg["train_text_encoder"]):
        conv.mapped(cfg["train_text_encoder"], ("train", "text_encoder"), True)


def _outputs(cfg: Cfg, paths: PathMapper, conv: Conversion) -> None:
    conv.mapped(cfg["output_dir"], ("output", "dir"), paths.for_spec(str(cfg["output_dir"].value)))
    every = (
        cfg["checkpointing_steps"]
        if cfg["checkpointing_steps"].value
        else cfg["checkpoint_step_interval"]
        if "checkpoint_step_interval" in cfg
        else None
    )
    if every is not None and every.value:
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


def _validation(cfg: Cfg, conv: Conversion) -> None:
    prompt = cfg["validation_prompt"]
    if not prompt.value:
        return
    conv.mapped(prompt, ("validation", "prompts"), [str(prompt.value)])
    pairs: list[tuple[str, str, Any]] = [
        ("validation_steps", "every", int),
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
    if sampler.value in SCHEDULERS:
        conv.mapped(sampler, ("validation", "scheduler"), SCHEDULERS[sampler.value])
    elif sampler.value is not None:
        conv.differs(sampler, "dbspec has no such validation scheduler; ddim is used")
