"""diffusers' flow-matching DreamBooth scripts (diffusers 58eb52c): train_dreambooth_lora_flux.py,
train_dreambooth_lora_sd3.py and train_dreambooth_sd3.py. Their dataset is the SDXL LoRA script's
(DreamBoothDataset with --repeats, --random_flip and fixed draws); their own options are the flow draw and
the text length.

The draw is dbspec's (runtime/families/flow.py follows these scripts): u from compute_density_for_timestep_
sampling(weighting_scheme), the model scheduler's timestep at u * 1000, the loss weighted by
compute_loss_weighting_for_sd3(weighting_scheme). The SD3 scripts with --precondition_outputs 1 (their
default) compare x_t - sigma v with the latents: the velocity loss times sigma^2, loss.flow_prediction
"preconditioned" (with sigma_sqrt, whose sigma^-2 cancels it: the plain velocity loss). The Flux script
regresses noise - latents and gives the guidance embedding --guidance_scale.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.families import family_spec

Args = dict[str, Legacy]
FLUX_LORA = "train_dreambooth_lora_flux"
SD3_LORA = "train_dreambooth_lora_sd3"
SD3_FULL = "train_dreambooth_sd3"
FLOW_SCRIPTS = (FLUX_LORA, SD3_LORA, SD3_FULL)
SD3_SCRIPTS = (SD3_LORA, SD3_FULL)

_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap")
# Shared with train_dreambooth_lora_sdxl.py (its dataset, optimizer and text-encoder options).
_SDXL_LIKE: dict[str, tuple] = {
    "learning_rate": ("float", 1e-4),
    "validation_epochs": ("int", 50),
    "dataset_name": ("str", None),
    "dataset_config_name": ("str", None),
    "image_column": ("str", "image"),
    "caption_column": ("str", None),
    "repeats": ("int", 1),
    "random_flip": ("flag", False),
    "text_encoder_lr": ("float", 5e-6),
    "optimizer": ("str", "AdamW"),
    "prodigy_beta3": ("float", None),
    "prodigy_decouple": ("str", True),
    "adam_weight_decay": ("float", 1e-4),
    "adam_weight_decay_text_encoder": ("float", 1e-3),
    "prodigy_use_bias_correction": ("str", True),
    "prodigy_safeguard_warmup": ("str", True),
    "cache_dir": ("str", None),
    "logit_mean": ("float", 0.0),
    "logit_std": ("float", 1.0),
    "mode_scale": ("float", 1.29),
}
OWN: dict[str, dict[str, tuple]] = {
    FLUX_LORA: {
        **_SDXL_LIKE,
        "output_dir": ("str", "flux-dreambooth-lora"),
        "max_sequence_length": ("int", 512),
        "rank": ("int", 4),
        "lora_alpha": ("int", 4),
        "lora_dropout": ("float", 0.0),
        "guidance_scale": ("float", 3.5),
        "weighting_scheme": ("str", "none", (*_SCHEMES, "none")),
        "lora_layers": ("str", None),
        "cache_latents": ("flag", False),
        "upcast_before_saving": ("flag", False),
        "enable_npu_flash_attention": ("flag", False),
    },
    SD3_LORA: {
        **_SDXL_LIKE,
        "output_dir": ("str", "sd3-dreambooth"),
        "max_sequence_length": ("int", 77),
        "rank": ("int", 4),
        "lora_dropout": ("float", 0.0),
        "weighting_scheme": ("str", "logit_normal", _SCHEMES),
        "precondition_outputs": ("int", 1),
        "lora_layers": ("str", None),
        "lora_blocks": ("str", None),
        "cache_latents": ("flag", False),
        "upcast_before_saving": ("flag", False),
    },
    SD3_FULL: {
        **_SDXL_LIKE,
        "output_dir": ("str", "sd3-dreambooth"),
        "max_sequence_length": ("int", 77),
        "weighting_scheme": ("str", "logit_normal", _SCHEMES),
        "precondition_outputs": ("int", 1),
    },
}
INERT = {
    "cache_latents": "caching: dbspec caches latents itself",
    "enable_npu_flash_attention": "attention kernel: the same maths",
}


def map_flow_model(a: Args, script: str, conv: Conversion) -> None:
    """[model] family, prediction and T5 length."""
    family = "flux" if script == FLUX_LORA else "sd3"
    conv.put(
        ("model", "family"),
        family,
        f"{conv.tool} {script}.py trains {'Flux.1' if family == 'flux' else 'SD3'}",
    )
    conv.put(("model", "prediction"), "flow_matching", f"{conv.tool} {script}.py trains flow matching")
    length = a["max_sequence_length"]
    conv.mapped(length, ("model", "t5_max_length"), length.value)
    if family == "flux":
        guidance = a["guidance_scale"]
        conv.mapped(
            guidance,
            ("loss", "flow_guidance"),
            float(guidance.value),
            comment=conv.comment(guidance, "the guidance embedding's value in training"),
        )


def map_flow_adapter(a: Args, script: str, conv: Conversion) -> None:
    """lora_alpha (Flux; the SD3 script sets alpha = rank), lora_layers and lora_blocks."""
    if "lora_alpha" in a:
        conv.mapped(a["lora_alpha"], ("adapter", "alpha"), float(a["lora_alpha"].value))
    layers = a["lora_layers"]
    given = [t.strip() for t in str(layers.value).split(",") if t.strip()] if layers.value else []
    blocks = a["lora_blocks"] if "lora_blocks" in a and a["lora_blocks"].value else None
    if blocks is not None:
        _map_lora_blocks(blocks, given, conv)
        inside = "these layers" if given else "the script's default layers (the family's)"
        conv.record(layers, "mapped", "adapter.denoiser_targets", f"{inside} in each of lora_blocks")
    elif given:
        conv.mapped(layers, ("adapter", "denoiser_targets"), given)
    else:
        conv.record(layers, "mapped", "adapter.denoiser_targets", "the family's defaults are the script's")


def _map_lora_blocks(blocks: Legacy, layers: list[str], conv: Conversion) -> None:
    """train_dreambooth_lora_sd3.py's --lora_blocks: its LoraConfig target_modules become
    `transformer_blocks.<block>.<layer>` for every listed block and every layer (--lora_layers, else its
    default list, the family's). peft matches a listed name as the module path or a `.`-suffix of it, as
    dbspec's targets are matched: the LoRA lands on the same modules. A block number int() cannot read stops
    the script (ValueError); a block or layer the model lacks matches nothing, in both."""
    try:
        numbers = [int(b.strip()) for b in str(blocks.value).split(",")]
    except ValueError:
        conv.invalid(
            blocks.key,
            blocks.value,
            blocks.source,
            "int() cannot read a block number (the script stops with ValueError)",
            help="list transformer block numbers separated by commas, as --lora_blocks 12,30",
        )
        return
    layers = layers or list(family_spec("sd3").lora_targets)  # the script's default target_modules
    targets = [f"transformer_blocks.{n}.{layer}" for n in numbers for layer in layers]
    conv.mapped(
        blocks,
        ("adapter", "denoiser_targets"),
        list(dict.fromkeys(targets)),  # peft keeps target_modules as a set: repeats change nothing
        comment=conv.comment(blocks, "the script's target_modules: these layers in these blocks only"),
    )


def map_flow_loss(a: Args, script: str, conv: Conversion) -> None:
    """weighting_scheme (density and weighting), its parameters, precondition_outputs."""
    scheme = a["weighting_scheme"]
    density = scheme.value if scheme.value in ("logit_normal", "mode") else "uniform"
    weighting = scheme.value if scheme.value in ("sigma_sqrt", "cosmap") else "none"
    conv.put(("loss", "flow_timesteps"), density, conv.comment(scheme))
    mean, std, mode = a["logit_mean"], a["logit_std"], a["mode_scale"]
    if density == "logit_normal":
        conv.mapped(mean, ("loss", "flow_logit_mean"), float(mean.value))
        conv.mapped(std, ("loss", "flow_logit_std"), float(std.value))
    elif density == "mode":
        conv.mapped(mode, ("loss", "flow_mode_scale"), float(mode.value))
    for legacy, reads in ((mean, "logit_normal"), (std, "logit_normal"), (mode, "mode")):
        if density != reads and legacy.given:
            conv.inert(legacy, f"only weighting_scheme {reads} reads it")
    pre = a["precondition_outputs"] if "precondition_outputs" in a else None
    if pre is None or not pre.value:
        conv.mapped(scheme, ("loss", "flow_weighting"), weighting)
        if pre is not None:
            conv.record(pre, "mapped", "loss.flow_weighting")
        return
    if weighting == "sigma_sqrt":
        conv.mapped(
            scheme,
            ("loss", "flow_weighting"),
            "none",
            comment=conv.comment(scheme, "sigma^-2 cancels the sigma^2 of precondition_outputs"),
        )
        conv.record(pre, "mapped", "loss.flow_weighting")
        return
    conv.put(("loss", "flow_weighting"), weighting, conv.comment(scheme))
    conv.record(scheme, "mapped", "loss.flow_weighting")
    conv.mapped(
        pre,
        ("loss", "flow_prediction"),
        "preconditioned",
        comment=conv.comment(pre, "x_t - sigma v compared with the latents: sigma^2 times the velocity loss"),
    )


def map_flow_outputs(a: Args, script: str, conv: Conversion) -> None:
    """upcast_before_saving, and the validation pipeline's defaults (28 flow-Euler steps)."""
    upcast = a["upcast_before_saving"] if "upcast_before_saving" in a else None
    if upcast is not None:
        mixed = a["mixed_precision"].value
        if not upcast.value and mixed in ("fp16", "bf16"):
            conv.mapped(
                upcast,
                ("checkpoints", "save_precision"),
                mixed,
                comment=conv.comment(upcast, f"no --upcast_before_saving: the LoRA is saved in {mixed}"),
            )
        else:
            conv.record(upcast, "mapped", "checkpoints.save_precision")
    if a["validation_prompt"].value:
        guidance = 3.5 if script == FLUX_LORA else 7.0
        conv.put(
            ("validation", "scheduler"), "flow_euler", f"{conv.tool} validates with the pipeline's scheduler"
        )
        conv.put(("validation", "steps"), 28, f"{conv.tool} validates with the pipeline's 28 steps")
        conv.put(("validation", "guidance"), guidance, "the pipeline's default guidance")
