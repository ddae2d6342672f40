"""SimpleTuner's flow-matching families, model_family sd3 (SD3.5 medium/large) and flux (Flux.1 dev and its
fine-tunes): [model], the LoRA targets, and the flow options of [loss]. Read from SimpleTuner's code (snapshot
2026-08): helpers/models/sd3/model.py and flux/model.py (flavours, check_user_config, LoRA targets, guidance),
helpers/models/common.py (sample_flow_sigmas, the loss), helpers/training/custom_schedule.py
(apply_flow_schedule_shift), helpers/training/default_settings/safety_check.py, and the field registry.

How SimpleTuner draws sigma (sample_flow_sigmas): sigmoid(flow_sigmoid_scale x N(0, 1)) by default; U(0, 1)
with flow_use_uniform_schedule; Beta(alpha, beta) with flow_use_beta_schedule; a fixed list with
flux_fast_schedule; then shifted, s sigma / (1 + (s - 1) sigma), by flow_schedule_shift (> 0), or with
flow_schedule_auto_shift by Flux's resolution-dependent s = e^mu (mu linear in the latent patches, from the
scheduler config: 0.5 at 256 patches, 1.15 at 4096; safety_check zeroes flow_schedule_shift when auto-shift
is on: dbspec's loss.flow_dynamic_shift, the same e^mu). The draw is continuous and timesteps = 1000 sigma:
dbspec's loss.flow_draw = "continuous" (or flow_dynamic_shift, continuous too).
The loss is the plain MSE against noise - latents (no weighting); its SNR weighting and
noise offset are for DDPM models only.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

Cfg = dict[str, Legacy]
FLOW_FAMILIES = ("sd3", "flux")
# Flux.flux_lora_target -> its target_modules (Flux.get_lora_target_layers, lora_type standard); peft matches
# by suffix, and the fused names (to_qkv, add_qkv_proj) match nothing unless fuse_qkv_projections fuses them.
FLUX_TARGETS: dict[str, list[str]] = {
    "mmdit": ["to_k", "to_q", "to_v", "to_out.0", "to_qkv"],  # its DEFAULT_LORA_TARGET
    "all": [
        *("to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "add_k_proj", "add_q_proj", "add_v_proj"),
        *("to_out.0", "to_add_out"),
    ],
    "context": ["add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj", "to_add_out"],
    "context+ffs": [
        *("add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj", "to_add_out"),
        *("ff_context.net.0.proj", "ff_context.net.2"),
    ],
    "all+ffs": [
        *("to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "add_k_proj", "add_q_proj", "add_v_proj"),
        *("to_out.0", "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
        *("proj_mlp", "proj_out"),
    ],
    "ai-toolkit": [
        *("to_q", "to_k", "to_qkv", "add_qkv_proj", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"),
        *("to_out.0", "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
        *("norm.linear", "norm1.linear", "norm1_context.linear", "proj_mlp", "proj_out"),
    ],
    "tiny": ["single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"],
    "nano": ["single_transformer_blocks.7.proj_out"],
    "all+ffs+embedder": [
        *("x_embedder", "to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "to_out.0", "add_k_proj"),
        *("add_q_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj"),
        *("ff_context.net.2", "proj_mlp", "proj_out"),
    ],
}
SD3_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # SD3.DEFAULT_LORA_TARGET
FLUX_T5_TOKENS = 512  # Flux.check_user_config forces tokenizer_max_length (schnell 256, refused below)
SD3_T5_TOKENS = 154  # SD3.check_user_config: the default, and the cap without i_know_what_i_am_doing
# Flux flavours SimpleTuner has that dbspec cannot train, with the reason.
FLUX_REFUSED = {
    "schnell": "SimpleTuner trains schnell through an assistant LoRA "
    "(ostris/FLUX.1-schnell-training-adapter) and flux_fast_schedule; dbspec has neither (it trains "
    "guidance-distilled Flux.1 dev models)",
    "kontext": "Kontext trains image edits from a conditioning image stream; dbspec trains text-to-image",
    "libreflux": "LibreFlux needs attention-masked training (SimpleTuner forces "
    "flux_attention_masked_training), which is not dbspec's model.t5_attention_mask (see that key)",
}
# Flow-only SimpleTuner options that change training and that dbspec cannot express.
REFUSED = {
    "flux_fast_schedule": "its fixed sigma list (seven 1.0s, 0.75, 0.5, 0.25) is not a dbspec density",
    "flow_cubic_schedule_weights": "a cubic-spline timestep density is not a dbspec timestep density",
    "flow_custom_timesteps": "a fixed list of timesteps is not a dbspec timestep density",
    "mixflow_enabled": "MixFlow's slowed interpolation has no dbspec option",
    "flux_attention_masked_training": "SimpleTuner encodes T5 without the mask and passes the 0/1 mask to "
    "SDPA as a float tensor, which SDPA adds to the attention logits (prompt keys +1, padded keys +0) "
    "instead of removing the padded keys; dbspec's model.t5_attention_mask is kohya's (T5 masked, padded "
    "keys removed)",
    "diff2flow_enabled": "dbspec trains the model's own objective",
}
INERT = {
    "fuse_qkv_projections": "fused attention projections: the same maths",
    "fused_qkv_projections": "fused attention projections: the same maths",
    "flow_timesteps_mode": "only flow_custom_timesteps reads it",
    "flux_guidance_min": "only flux_guidance_mode random-range reads it",
    "flux_guidance_max": "only flux_guidance_mode random-range reads it",
    "flow_beta_schedule_alpha": "only flow_use_beta_schedule reads it",
    "flow_beta_schedule_beta": "only flow_use_beta_schedule reads it",
    "disable_assistant_lora": "only schnell loads an assistant LoRA",
}


def is_flow(cfg: Cfg) -> bool:
    return cfg["model_family"].value in FLOW_FAMILIES


def flag(legacy: Legacy) -> bool:
    value = legacy.value
    return value.strip().lower() in ("1", "true", "yes", "y", "on") if isinstance(value, str) else bool(value)


def _opt(cfg: Cfg, key: str, default) -> Legacy:
    """A flow option: given in the config, or SimpleTuner's field-registry default."""
    return cfg[key] if key in cfg else Legacy(key=key, value=default, source="default")


def map_flow_model(cfg: Cfg, conv: Conversion) -> None:
    """[model] prediction and T5 length; the flavour's own rules (check_user_config)."""
    family, flavour = cfg["model_family"].value, cfg["model_flavour"]
    conv.put(
        ("model", "prediction"),
        "flow_matching",
        f"SimpleTuner's {family} trains flow matching (its PREDICTION_TYPE)",
    )
    prediction = cfg["prediction_type"]
    if prediction.given:
        conv.ignored(prediction, f"SimpleTuner's {family} trains flow matching whatever prediction_type says")
    if flavour.value in FLUX_REFUSED and family == "flux":  # check_user_config reads it, path or not
        conv.unsupported(flavour, FLUX_REFUSED[str(flavour.value)])
    length = cfg["tokenizer_max_length"] if "tokenizer_max_length" in cfg else None
    if family == "flux":
        note = "SimpleTuner's Flux encodes 512 T5 tokens (check_user_config)"
        conv.put(("model", "t5_max_length"), FLUX_T5_TOKENS, note)
        if length is not None:
            conv.ignored(length, "SimpleTuner's Flux forces 512 tokens")
    elif length is None:
        conv.put(("model", "t5_max_length"), SD3_T5_TOKENS, "SimpleTuner's SD3 default: 154 T5 tokens")
    else:
        tokens = int(float(length.value))
        knows = "i_know_what_i_am_doing" in cfg and flag(cfg["i_know_what_i_am_doing"])
        if tokens > 512 and knows:
            conv.unsupported(length, "dbspec's model.t5_max_length is at most 512 (T5's trained length)")
        elif tokens > SD3_T5_TOKENS and not knows:
            conv.mapped(
                length,
                ("model", "t5_max_length"),
                SD3_T5_TOKENS,
                note=f"SimpleTuner caps SD3 at {SD3_T5_TOKENS} tokens",
                comment=conv.comment(length, f"capped at {SD3_T5_TOKENS} (SimpleTuner's SD3)"),
            )
        else:
            conv.mapped(length, ("model", "t5_max_length"), tokens)
    padding = _opt(cfg, "t5_padding", "unmodified")
    if padding.value == "zero":
        conv.unsupported(padding, "dbspec keeps T5's padding tokens as the encoder outputs them")
    elif padding.given:
        conv.record(padding, "mapped", "model.t5_max_length")
    for key in ("sd3_clip_uncond_behaviour", "sd3_t5_uncond_behaviour"):
        if key in cfg and cfg[key].value == "zero":
            conv.unsupported(cfg[key], "dbspec encodes a dropped caption as the empty string")
        elif key in cfg:
            conv.record(
                cfg[key], "mapped", "datasets.caption_dropout_rate", "a dropped caption is the empty string"
            )
    vae = cfg["pretrained_vae_model_name_or_path"]
    if vae.given and family == "sd3":  # SD3.check_user_config clears it
        conv.ignored(cfg["pretrained_vae_model_name_or_path"], "SimpleTuner's SD3 uses the model's VAE")


def flow_vae_ignored(cfg: Cfg) -> bool:
    return cfg["model_family"].value == "sd3"


def flux_targets(cfg: Cfg, conv: Conversion) -> None:
    """lora_type standard: peft_lora_target_modules when given (its _get_peft_lora_target_modules wins), else
    the family's target modules (flux_lora_target for Flux)."""
    manual = cfg["peft_lora_target_modules"] if "peft_lora_target_modules" in cfg else None
    if manual is not None and manual.value not in (None, "", "None"):
        names = manual.value if isinstance(manual.value, list) else None
        if names is None or not all(isinstance(n, str) for n in names):
            conv.invalid(manual.key, manual.value, manual.source, "must be a list of module names")
            return
        targets = [n.strip() for n in names if n.strip() and n.strip() != "None"]
        conv.mapped(manual, ("adapter", "denoiser_targets"), targets)
        if "flux_lora_target" in cfg:
            conv.inert(cfg["flux_lora_target"], "peft_lora_target_modules decides")
        return
    if cfg["model_family"].value == "sd3":
        conv.put(("adapter", "denoiser_targets"), SD3_TARGETS, "SimpleTuner's SD3 LoRA targets")
        return
    target = _opt(cfg, "flux_lora_target", "all")
    if target.value == "controlnet" or str(target.value).endswith("+controlnet"):
        conv.unsupported(target, "dbspec trains no ControlNet")
    elif target.value not in FLUX_TARGETS:
        conv.invalid(
            target.key, target.value, target.source, f"not a flux_lora_target ({', '.join(FLUX_TARGETS)})"
        )
    else:
        conv.mapped(target, ("adapter", "denoiser_targets"), FLUX_TARGETS[str(target.value)])


def map_flow_loss(cfg: Cfg, conv: Conversion) -> None:
    """[loss]: the timestep density, the shift, the guidance, and the DDPM-only options SimpleTuner skips."""
    dynamic = _shift(cfg, conv)
    _density(cfg, conv, continuous=dynamic)
    if cfg["model_family"].value == "flux":
        _guidance(cfg, conv)
    conv.put(("loss", "flow_weighting"), "none", "SimpleTuner weights its flow-matching loss by nothing")
    snr = cfg["snr_gamma"]
    if snr.given:
        (conv.ignored if snr.value else conv.inert)(snr, "SimpleTuner weights by SNR only for DDPM models")
    for key in ("offset_noise", "noise_offset", "noise_offset_probability"):
        legacy = cfg[key]
        if legacy.given:
            on = key == "offset_noise" and flag(legacy)
            (conv.ignored if on else conv.inert)(legacy, "SimpleTuner offsets noise only for DDPM models")
    kind = cfg["loss_type"]
    if kind.value != "l2":
        conv.unsupported(
            kind, "dbspec trains flow matching with the MSE loss only (its Huber schedules are DDPM's)"
        )
    else:
        conv.record(kind, "mapped", "loss.kind")
    for key in ("huber_schedule", "huber_c"):
        if cfg[key].given and kind.value == "l2":
            conv.inert(cfg[key], "used by loss_type huber and smooth_l1 only")
    rescale = cfg["rescale_betas_zero_snr"]
    if rescale.given:
        (conv.ignored if flag(rescale) else conv.inert)(rescale, "flow matching has no DDPM betas to rescale")
    for key, why in REFUSED.items():
        if key in cfg and flag(cfg[key]) and key not in conv.reports:
            conv.unsupported(cfg[key], why)
    family = cfg["model_family"].value
    other = "sd3_" if family == "flux" else "flux_"
    for key, legacy in cfg.items():
        # flux_fast_schedule is read by every flow family (sample_flow_sigmas): REFUSED when on
        if key.startswith(other) and key != "flux_fast_schedule" and legacy.given and key not in conv.reports:
            conv.ignored(legacy, f"SimpleTuner's {family} does not read it")
    for key, why in INERT.items():
        if key in cfg and key not in conv.reports:
            conv.inert(cfg[key], why)


def _density(cfg: Cfg, conv: Conversion, continuous: bool) -> None:
    scale = _opt(cfg, "flow_sigmoid_scale", 1.0)
    uniform = _opt(cfg, "flow_use_uniform_schedule", False)
    beta = _opt(cfg, "flow_use_beta_schedule", False)
    fast = _opt(cfg, "flux_fast_schedule", False)
    alpha, beta_b = _opt(cfg, "flow_beta_schedule_alpha", 2.0), _opt(cfg, "flow_beta_schedule_beta", 2.0)
    if flag(uniform):  # sample_flow_sigmas: uniform wins over beta and the fast schedule
        conv.mapped(uniform, ("loss", "flow_timesteps"), "uniform")
        chosen = uniform
        for legacy in (beta, fast, scale):
            if legacy.given:
                conv.inert(legacy, "flow_use_uniform_schedule decides")
    elif flag(beta):
        if float(alpha.value) == 1.0 and float(beta_b.value) == 1.0:
            conv.mapped(beta, ("loss", "flow_timesteps"), "uniform", note="Beta(1, 1) is uniform")
            conv.record(alpha, "mapped", "loss.flow_timesteps")
            conv.record(beta_b, "mapped", "loss.flow_timesteps")
        else:
            conv.unsupported(
                beta,
                f"a Beta({float(alpha.value):g}, {float(beta_b.value):g}) timestep density; dbspec's are "
                "uniform, logit_normal and mode",
            )
            return
        chosen = beta
        for legacy in (fast, scale):
            if legacy.given:
                conv.inert(legacy, "flow_use_beta_schedule decides")
    elif flag(fast):
        return  # refused with REFUSED
    else:
        value = float(scale.value)
        if value == 0:
            conv.unsupported(scale, "0 draws sigma 0.5 every step; dbspec's logit_normal needs a spread")
            return
        conv.put(
            ("loss", "flow_timesteps"), "logit_normal", conv.comment(scale, "sigmoid of scale x N(0, 1)")
        )
        conv.put(("loss", "flow_logit_mean"), 0.0, conv.comment(scale, "a centred logit-normal"))
        conv.mapped(scale, ("loss", "flow_logit_std"), abs(value))
        chosen = scale
    if continuous:  # with the image-size shift dbspec draws sigma continuously anyway
        return
    # dbspec's continuous sigma is shift(1 - u): for U(0, 1) and a centred logit-normal the same law as
    # SimpleTuner's shift(u)
    conv.put(
        ("loss", "flow_draw"),
        "continuous",
        conv.comment(chosen, "SimpleTuner draws sigma continuously, timestep 1000 sigma"),
    )


def _shift(cfg: Cfg, conv: Conversion) -> bool:
    """flow_schedule_shift / flow_schedule_auto_shift -> loss.flow_shift / flow_dynamic_shift; True when the
    image-size shift applies (dbspec then draws sigma continuously, as SimpleTuner does)."""
    shift, auto = _opt(cfg, "flow_schedule_shift", 3.0), _opt(cfg, "flow_schedule_auto_shift", False)
    if flag(auto):  # safety_check zeroes a static shift when auto-shift is on
        if shift.given:
            conv.inert(shift, "flow_schedule_auto_shift decides (SimpleTuner zeroes the static shift)")
        conv.mapped(
            auto,
            ("loss", "flow_dynamic_shift"),
            True,
            comment=conv.comment(auto, "e^mu by each batch's latent patches, mu 0.5 at 256 to 1.15 at 4096"),
        )
        return True
    value = float(shift.value)
    if value > 0:
        conv.mapped(shift, ("loss", "flow_shift"), value)
    else:
        conv.mapped(
            shift,
            ("loss", "flow_shift"),
            1.0,
            note="0 shifts nothing",
            comment=conv.comment(shift, "0 shifts nothing: flow_shift 1"),
        )
    if auto.given:
        conv.inert(auto, "off")
    return False


def _guidance(cfg: Cfg, conv: Conversion) -> None:
    mode = _opt(cfg, "flux_guidance_mode", "constant")
    value = _opt(cfg, "flux_guidance_value", 1.0)
    low, high = _opt(cfg, "flux_guidance_min", 0.0), _opt(cfg, "flux_guidance_max", 4.0)
    flavour = cfg["model_flavour"].value
    if flavour == "fluxbooru":  # check_user_config reads the flavour, path or not
        _put_guidance(value, 3.5, conv, "SimpleTuner forces 3.5 for FluxBooru")
        conv.record(mode, "mapped", "loss.flow_guidance")
        conv.record(cfg["model_flavour"], "mapped", "loss.flow_guidance", "FluxBooru forces guidance 3.5")
        return
    if mode.value == "random-range":
        if float(low.value) == float(high.value):
            _put_guidance(low, float(low.value), conv, "flux_guidance_min = flux_guidance_max: one value")
            conv.record(high, "mapped", "loss.flow_guidance")
            conv.record(mode, "mapped", "loss.flow_guidance")
        else:
            conv.unsupported(
                mode,
                f"a guidance drawn per sample from U({float(low.value):g}, {float(high.value):g}); dbspec "
                "gives the guidance embedding one value (loss.flow_guidance)",
            )
        if value.given:
            conv.inert(value, "flux_guidance_mode random-range does not read it")
        return
    if mode.value != "constant":
        conv.invalid(mode.key, mode.value, mode.source, "not a flux_guidance_mode (constant, random-range)")
        return
    _put_guidance(value, float(value.value), conv, "the guidance embedding's value in training")
    if mode.given:
        conv.record(mode, "mapped", "loss.flow_guidance")


def _put_guidance(legacy: Legacy, value: float, conv: Conversion, note: str) -> None:
    if value <= 0:  # dbspec's flow_guidance 0 keeps the family's 3.5
        conv.unsupported(
            legacy, "guidance 0 in training; dbspec's loss.flow_guidance 0 means the family's 3.5"
        )
        return
    conv.mapped(legacy, ("loss", "flow_guidance"), value, comment=conv.comment(legacy, note))
