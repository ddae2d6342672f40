"""kohya sd-scripts' flow-matching LoRA scripts, flux_train_network.py and sd3_train_network.py (sd-scripts
main, 2026-02): their own arguments (library/flux_train_utils.py add_flux_train_arguments,
library/sd3_train_utils.py add_sd3_training_arguments, train_util.add_dit_training_arguments) -> [model],
[adapter] and the flow options of [loss].

How kohya draws sigma (read from its code, get_noisy_model_input_and_timesteps):
- Flux, timestep_sampling "sigma": u from the weighting_scheme density (diffusers'
  compute_density_for_timestep_sampling), indexed into FlowMatchEulerDiscreteScheduler(shift=
  discrete_flow_shift)'s table: dbspec's draw.
- Flux "uniform" / "sigmoid": sigma = u or sigmoid(sigmoid_scale N(0, 1)), unshifted, continuous; "shift":
  that sigmoid draw shifted by discrete_flow_shift: loss.flow_draw "continuous", whose sigma is shift(1 - u)
  of dbspec's density u. For uniform u, 1 - u is uniform; for the sigmoid draw, 1 - sigmoid(N(0, s)) =
  sigmoid(N(0, s)) (the mean is 0, written as such): the same law as kohya's sigma, drawn from dbspec's
  generator.
- Flux "flux_shift": the sigmoid draw shifted by the image size (Flux's time shift, mu from 0.5 at 256 to
  1.15 at 4096 latent patches), continuous: loss.flow_dynamic_shift.
- Flux model_prediction_type (apply_model_prediction_type): "raw" regresses the velocity noise - latents;
  "sigma_scaled" (the default) compares x_t - sigma v with that same target and weights the loss by
  weighting_scheme; "additive" compares v + x_t: loss.flow_prediction.
- SD3: u from the density, shifted by training_shift (not the model's shift 3.0), t = floor(shift(u)
  (max_timestep - min_timestep) + min_timestep), sigma = t / 1000 rising with u: loss.flow_draw "floored"
  (its u is kohya's, so the logit-normal mean and the mode density are kohya's as given) with
  loss.min_timestep / max_timestep (reversed ones as given: kohya's expression then draws from min_timestep
  down toward max_timestep, and so does the floored draw). The preconditioned prediction x_t - sigma v is
  compared with the latents
  (sigma^2 |v - (noise - x)|^2) times the weighting_scheme's weight: loss.flow_prediction "preconditioned"
  with flow_weighting. With sigma_sqrt and t = 0 (min_timestep 0) kohya's loss is 0 * inf = NaN; the mse
  loss then maps to raw / none, the same loss wherever kohya's is a number.
"""

from __future__ import annotations

import attrs

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper, model_path

Args = dict[str, Legacy]
FLOW_SCRIPTS = ("flux_train_network", "sd3_train_network")
FAMILY = {"flux_train_network": "flux", "sd3_train_network": "sd3"}
TITLE = {"flux": "Flux.1", "sd3": "SD3", "chroma": "Chroma (--model_type chroma)"}
NETWORK_MODULES = {"flux_train_network": "networks.lora_flux", "sd3_train_network": "networks.lora_sd3"}

_DENSITIES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")
# train_util.add_dit_training_arguments
DIT_ARGS: dict[str, tuple] = {
    "cache_text_encoder_outputs": ("flag", False),
    "cache_text_encoder_outputs_to_disk": ("flag", False),
    "text_encoder_batch_size": ("int", None),
    "disable_mmap_load_safetensors": ("flag", False),
    "weighting_scheme": ("str", "uniform", _DENSITIES),
    "logit_mean": ("float", 0.0),
    "logit_std": ("float", 1.0),
    "mode_scale": ("float", 1.29),
    "blocks_to_swap": ("int", None),
}
FLUX_ARGS: dict[str, tuple] = {
    "clip_l": ("str", None),
    "t5xxl": ("str", None),
    "ae": ("str", None),
    "controlnet_model_name_or_path": ("str", None),
    "t5xxl_max_token_length": ("int", None),
    "apply_t5_attn_mask": ("flag", False),
    "guidance_scale": ("float", 3.5),
    "timestep_sampling": ("str", "sigma", ("sigma", "uniform", "sigmoid", "shift", "flux_shift")),
    "sigmoid_scale": ("float", 1.0),
    "model_prediction_type": ("str", "sigma_scaled", ("raw", "additive", "sigma_scaled")),
    "discrete_flow_shift": ("float", 3.0),
    "model_type": ("str", "flux", ("flux", "chroma")),
    "split_mode": ("flag", False),
}
SD3_ARGS: dict[str, tuple] = {
    "clip_l": ("str", None),
    "clip_g": ("str", None),
    "t5xxl": ("str", None),
    "save_clip": ("flag", False),
    "save_t5xxl": ("flag", False),
    "t5xxl_device": ("str", None),
    "t5xxl_dtype": ("str", None),
    "t5xxl_max_token_length": ("int", 256),
    "apply_lg_attn_mask": ("flag", False),
    "apply_t5_attn_mask": ("flag", False),
    "clip_l_dropout_rate": ("float", 0.0),
    "clip_g_dropout_rate": ("float", 0.0),
    "t5_dropout_rate": ("float", 0.0),
    "pos_emb_random_crop_rate": ("float", 0.0),
    "enable_scaled_pos_embed": ("flag", False),
    "training_shift": ("float", 1.0),
}
# Keys these scripts read that change nothing dbspec trains.
FLOW_INERT = {
    "text_encoder_batch_size": "caching: dbspec caches text embeddings itself",
    "blocks_to_swap": "memory placement (kohya swaps transformer blocks to the CPU; the same maths)",
    "split_mode": "deprecated memory placement (kohya: use blocks_to_swap)",
    "t5xxl_device": "memory placement of T5",
    "t5xxl_dtype": "T5's dtype while caching: dbspec runs text encoders in the mixed-precision dtype",
    "save_clip": "kohya's full fine-tuning saves; this LoRA script ignores it",
    "save_t5xxl": "kohya's full fine-tuning saves; this LoRA script ignores it",
}


def flow_family(a: Args, script: str) -> str:
    """The family a flow script trains: flux_train_network.py's --model_type chroma builds Chroma
    (flux_utils.load_flow_model: chroma_models.Chroma), else Flux.1."""
    if script == "flux_train_network" and a["model_type"].value == "chroma":
        return "chroma"
    return FAMILY[script]


def map_flow_model(a: Args, script: str, conv: Conversion, paths: PathMapper) -> str:
    """[model] family, prediction, T5 tokens and the separate component files; returns the family."""
    family = flow_family(a, script)
    conv.put(("model", "family"), family, f"kohya {script}.py trains {TITLE[family]}")
    conv.put(("model", "prediction"), "flow_matching", f"kohya {script}.py trains flow matching")
    for key in ("v2", "v_parameterization"):
        if a[key].value:
            conv.ignored(a[key], f"{script}.py builds its own architecture and trains flow matching")
        else:
            conv.record(a[key], "mapped", "model.family")
    map_component_files(a, script, paths, conv)
    tokens = a["t5xxl_max_token_length"]
    length = tokens.value if tokens.value is not None else 512  # dev; schnell 256 (dbspec trains dev)
    conv.mapped(
        tokens,
        ("model", "t5_max_length"),
        length,
        comment=conv.comment(tokens, f"{TITLE[family]}: 512") if tokens.value is None else "",
    )
    if a["max_token_length"].given:
        conv.ignored(a["max_token_length"], f"{script}.py reads t5xxl_max_token_length instead (it warns)")
    map_text_masks(a, family, conv)
    if family != "sd3":
        _flux_only(a, conv, family)
    else:
        _sd3_only(a, conv)
    for key, why in FLOW_INERT.items():
        if key in a and a[key].given:
            conv.inert(a[key], why)
    return family


def map_text_masks(a: Args, family: str, conv: Conversion) -> None:
    """--apply_t5_attn_mask / --apply_lg_attn_mask -> model.t5_attention_mask / clip_attention_mask.

    Flux (FluxTextEncodingStrategy, flux_models.py): T5 encodes with its padding mask and the transformer
    masks the padded text keys, wherever the text is encoded (cached, per step, sample prompts). SD3: kohya
    applies its masks only where it caches text-encoder outputs (Sd3TextEncoderOutputsCachingStrategy, the
    cached sample prompts); its training step and samples call encode_tokens, whose defaults turn both masks
    off, and its MMDiT takes no mask. So without `--cache_text_encoder_outputs` (or `_to_disk`) the flags are
    inert, and the CLIP mask also while CLIP trains (no `--network_train_unet_only`: kohya encodes CLIP anew
    each step and for samples, unmasked, over its cached outputs)."""
    cached = any(
        key in a and a[key].value for key in DIT_ARGS if key.startswith("cache_text_encoder_outputs")
    )
    clip_trains = "network_train_unet_only" in a and not a["network_train_unet_only"].value
    for key, option in (
        ("apply_t5_attn_mask", "t5_attention_mask"),
        ("apply_lg_attn_mask", "clip_attention_mask"),
    ):
        if key not in a or not a[key].value:
            continue
        if family == "sd3" and not cached:
            conv.ignored(
                a[key],
                "sd3_train_network.py masks only the text-encoder outputs it caches "
                "(--cache_text_encoder_outputs); its training step encodes the prompts without the mask",
            )
        elif family == "sd3" and option == "clip_attention_mask" and clip_trains:
            conv.ignored(
                a[key],
                "sd3_train_network.py encodes CLIP-L and CLIP-G anew each step while they train "
                "(no --network_train_unet_only), without the mask",
            )
        else:
            conv.mapped(a[key], ("model", option), True)


# The encoders' kohya flags in each family's order (dbspec/families.py text_encoders).
ENCODER_FLAGS = {"flux": ("clip_l", "t5xxl"), "sd3": ("clip_l", "clip_g", "t5xxl"), "chroma": ("t5xxl",)}
# model.base when kohya's --pretrained_model_name_or_path is a transformer file: a hub model of the family
# whose configs and tokenizers describe it (kohya builds them from its own constants).
REFERENCE = {
    "flux": "black-forest-labs/FLUX.1-dev",
    "sd3": "stabilityai/stable-diffusion-3.5-large",
    "chroma": "lodestones/Chroma1-HD",
}
_SD3_BY_DEPTH = {  # joint blocks (and SD3.5 medium's dual-attention blocks) -> the published model
    (24, True): "stabilityai/stable-diffusion-3.5-medium",
    (24, False): "stabilityai/stable-diffusion-3-medium-diffusers",
    (38, False): "stabilityai/stable-diffusion-3.5-large",
}
_WEIGHT_FILES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")


def is_weights_file(value: str, paths: PathMapper) -> bool:
    """kohya's --pretrained_model_name_or_path names one file (not a diffusers folder or hub id)."""
    local = paths.local(value)
    if local is not None and local.is_dir():
        return False
    return value.lower().endswith(_WEIGHT_FILES) or (local is not None and local.is_file())


def map_component_files(a: Args, script: str, paths: PathMapper, conv: Conversion) -> None:
    """kohya's separate component files -> model.denoiser_file, model.text_encoder_files and model.vae, exact:
    flux_train_network.py loads the transformer from --pretrained_model_name_or_path, CLIP-L, T5-XXL and the
    autoencoder from --clip_l, --t5xxl, --ae; sd3_train_network.py loads the MMDiT from its file, CLIP-G and
    T5-XXL from that file when it holds them (sd3_utils.load_clip_g / load_t5xxl read the checkpoint first),
    else from --clip_g / --t5xxl, and CLIP-L and the autoencoder from --clip_l / --vae when given, else from
    the file (load_clip_l, load_vae)."""
    family = flow_family(a, script)
    base = a["pretrained_model_name_or_path"]
    as_file = bool(base.value) and is_weights_file(base.value, paths)
    checkpoint = model_path(base.value, paths) if as_file else ""
    held = _held(base.value, paths) if as_file else None  # what the file holds, where readable here
    if as_file:
        reference = _reference(family, held)
        conv.mapped(
            base,
            ("model", "denoiser_file"),
            checkpoint,
            note=f"model.base = {reference}: the configs and tokenizers",
        )
        conv.put(
            ("model", "base"),
            reference,
            f"configs and tokenizers of {conv.comment(base)}'s model (kohya builds them itself)",
        )
        conv.warn_unless_set(
            ("model", "base"),
            "DBS418",
            f"kohya `pretrained_model_name_or_path` = {base.value} is a {family.upper()} transformer file; "
            f"its configs and tokenizers come from model.base = {reference}, which the run downloads "
            "(configs and tokenizers only) unless it is in the Hugging Face cache",
            base.key,
            help="pass --set model.base=<a local diffusers folder of the same model> to dbspec convert to "
            "plan and train offline",
        )
    files = []
    for i, flag in enumerate(ENCODER_FLAGS[family]):
        legacy = a[flag]
        inside = family == "sd3" and as_file and _holds_encoder(held, i)
        if legacy.value and not (inside and flag != "clip_l" and held is not None):
            conv.mapped(legacy, ("model", "text_encoder_files"), model_path(legacy.value, paths))
            files.append(model_path(legacy.value, paths))
        elif legacy.value:  # sd3: the checkpoint holds this encoder, and kohya reads it from there
            conv.ignored(legacy, f"{script}.py loads {flag} from the checkpoint, which holds one")
            files.append(checkpoint)
        elif _missing_encoder(a, family, as_file, held, i):
            files.append("")
            _report_missing_encoder(legacy, script, family, base.value, conv)
        elif family == "sd3" and as_file:
            files.append(checkpoint)  # kohya reads it from the checkpoint (the plan checks it is there)
            conv.record(legacy, "mapped", "model.text_encoder_files")
        else:
            files.append("")
            conv.record(legacy, "mapped", "model.text_encoder_files")
    if any(files):
        conv.put(
            ("model", "text_encoder_files"),
            files,
            f"kohya {', '.join(f'--{f}' for f in ENCODER_FLAGS[family])}"
            + (" (the checkpoint's where it holds them)" if family == "sd3" and as_file else ""),
        )
    _map_autoencoder(a, script, family, checkpoint, held, paths, conv)


def _missing_encoder(a: Args, family: str, as_file: bool, held: dict | None, index: int) -> bool:
    """kohya has no text encoder `index` to load (its flag not given): flux_train_network.py always loads
    CLIP-L and T5-XXL from --clip_l / --t5xxl (flux_utils.load_clip_l / load_t5xxl open the path, None
    included; Chroma's CLIP-L is a dummy, not in its encoder list); sd3_train_network.py falls back to the
    checkpoint, where readable here known to lack it (sd3_utils.load_* then return None, and the script's
    `.eval()` on it fails)."""
    if family != "sd3":
        return True
    return as_file and held is not None and not _holds_encoder(held, index)


def _report_missing_encoder(legacy: Legacy, script: str, family: str, base: str, conv: Conversion) -> None:
    name = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}[legacy.key]
    where = (
        f"{script}.py loads {name} from --{legacy.key} only (flux_utils.load_{legacy.key} opens the path)"
        if family != "sd3"
        else f"{script}.py reads {name} from --{legacy.key}, else from the checkpoint `{base}`, which "
        f"holds no {name} (sd3_utils.load_{legacy.key} returns None and the script fails on it)"
    )
    conv.invalid(
        legacy.key,
        None,
        legacy.source,
        f"--{legacy.key} is missing: {where}",
        help=f"give --{legacy.key} <the {name} .safetensors file> (kohya's own weights layout)",
    )


def _map_autoencoder(
    a: Args, script: str, family: str, checkpoint: str, held: dict | None, paths: PathMapper, conv: Conversion
) -> None:
    vae = a["vae"] if "vae" in a else None
    if family != "sd3":
        ae = a["ae"]
        if ae.value:
            conv.mapped(ae, ("model", "vae"), model_path(ae.value, paths))
        if vae is not None and vae.value:
            conv.ignored(vae, "flux_train_network.py reads the autoencoder from --ae")
        return
    inside = held is not None and any(k.startswith("first_stage_model.") for k in held)
    if vae is not None and vae.value:
        conv.mapped(vae, ("model", "vae"), model_path(vae.value, paths))
    elif checkpoint and (held is None or inside):
        conv.put(("model", "vae"), checkpoint, f"kohya {script}.py: the checkpoint's autoencoder (no --vae)")


def _held(value: str, paths: PathMapper) -> dict | None:
    """The tensor names and shapes of a .safetensors file on this machine; None where it cannot be read."""
    from dbspec.compiler.safetensors_header import ModelFileError, read_safetensors_header

    local = paths.local(value)
    if local is None or not local.is_file() or local.suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        return {k: v.shape for k, v in read_safetensors_header(local).items()}
    except (ModelFileError, OSError):
        return None


def _holds_encoder(held: dict | None, index: int) -> bool:
    """An SD3 checkpoint holds text encoder `index` (None: unknown, kohya's file usually does not)."""
    from dbspec.families import family_spec
    from dbspec.weightfiles import encoder_prefixes

    if held is None:
        return False
    encoder = family_spec("sd3").text_encoders[index]
    return encoder.single_file_prefix in encoder_prefixes(held, encoder)


def _reference(family: str, held: dict | None) -> str:
    """The published model whose configs fit the file, where readable: SD3's size from its joint blocks;
    Flux.1 schnell without a guidance embedding (as kohya's flux_utils.analyze_checkpoint_state tells)."""
    if held is None or family == "chroma":
        return REFERENCE[family]
    if family == "flux":
        guided = any(k.removeprefix("model.diffusion_model.").startswith("guidance_in.") for k in held)
        return REFERENCE[family] if guided else "black-forest-labs/FLUX.1-schnell"
    prefix = "model.diffusion_model." if any(k.startswith("model.diffusion_model.") for k in held) else ""
    blocks = {k[len(prefix) :].split(".")[1] for k in held if k.startswith(f"{prefix}joint_blocks.")}
    dual = any(".x_block.attn2." in k for k in held)
    return _SD3_BY_DEPTH.get((len(blocks), dual), REFERENCE[family])


def _flux_only(a: Args, conv: Conversion, family: str) -> None:
    conv.record(a["model_type"], "mapped", "model.family")
    controlnet = a["controlnet_model_name_or_path"]
    if controlnet.value:  # flux_train_utils.add_flux_train_arguments parses it for every Flux script
        conv.ignored(
            controlnet,
            "flux_train_network.py parses it but never reads it (only kohya's flux_train_control_net.py "
            "loads a ControlNet): the LoRA trains without one",
        )
    guidance = a["guidance_scale"]
    chroma = family == "chroma"
    conv.mapped(
        guidance,
        ("loss", "flow_guidance"),
        float(guidance.value),
        comment=conv.comment(
            guidance,
            "the approximator's guidance input (kohya's Chroma docs: 0.0)"
            if chroma
            else "the guidance embedding's value in training",
        ),
    )
    if chroma:
        _chroma_only(a, conv)


def _chroma_only(a: Args, conv: Conversion) -> None:
    """flux_train_network.py --model_type chroma: no CLIP-L (flux_utils.dummy_clip_l stands in, --clip_l
    unread), and assert_extra_args asserts --apply_t5_attn_mask (dbspec's Chroma always masks T5)."""
    clip = a["clip_l"]
    if clip.value:
        conv.ignored(clip, "Chroma has no CLIP-L: flux_train_network.py loads a dummy in its place")
    mask = a["apply_t5_attn_mask"]
    if not mask.value:
        conv.invalid(
            mask.key,
            mask.value,
            mask.source,
            "flux_train_network.py asserts apply_t5_attn_mask for Chroma (assert_extra_args)",
            help="add --apply_t5_attn_mask, as kohya's Chroma training requires",
        )


def _sd3_only(a: Args, conv: Conversion) -> None:
    _encoder_dropout(a, conv)
    crop = a["pos_emb_random_crop_rate"]
    rate = _rate(crop.value)  # MMDiT.forward: rate == 0 draws nothing, else rand() < rate
    if rate:
        note = f"acts as {rate:g}" if float(crop.value) != rate else ""
        conv.mapped(crop, ("loss", "pos_embed_random_crop_rate"), rate, note=note)
    else:
        conv.record(crop, "mapped", "loss.pos_embed_random_crop_rate")
    scaled = a["enable_scaled_pos_embed"]  # MMDiT.enable_scaled_pos_embed: per-resolution sin-cos tables
    if scaled.value:
        conv.mapped(scaled, ("model", "scaled_pos_embed"), True)
    else:
        conv.record(scaled, "mapped", "model.scaled_pos_embed")


# kohya's per-encoder dropout flags, in the SD3 family's text-encoder order (CLIP-L, CLIP-G, T5-XXL).
DROPOUT_FLAGS = ("clip_l_dropout_rate", "clip_g_dropout_rate", "t5_dropout_rate")


def _encoder_dropout(a: Args, conv: Conversion) -> None:
    """kohya's Sd3TextEncodingStrategy draws `rate > 0 and random() < rate` per sample and encoder and zeroes
    a dropped encoder's hidden states and pooled part: loss.text_encoder_dropout, exact. Below 0 (or NaN) it
    never drops, from 1 on it always does: the bound that acts the same."""
    rates = [_rate(a[key].value) for key in DROPOUT_FLAGS]
    if not any(rates):
        for key in DROPOUT_FLAGS:
            conv.record(a[key], "mapped", "loss.text_encoder_dropout")
        return
    for key, rate in zip(DROPOUT_FLAGS, rates):
        value = a[key].value
        note = f"acts as {rate:g}" if a[key].given and float(value) != rate else ""
        conv.mapped(a[key], ("loss", "text_encoder_dropout"), rate, note=note)
    conv.put(
        ("loss", "text_encoder_dropout"),
        rates,
        f"{conv.tool} --clip_l_dropout_rate, --clip_g_dropout_rate, --t5_dropout_rate (outputs zeroed)",
    )


def _rate(value) -> float:
    rate = float(value or 0.0)
    return min(1.0, rate) if rate > 0 else 0.0  # nan > 0 is False: never drops


def map_flow_loss(a: Args, script: str, conv: Conversion) -> None:
    """[loss] flow_timesteps, its parameters, flow_weighting and flow_shift."""
    if script == "flux_train_network":
        _flux_loss(a, conv)
    else:
        _sd3_loss(a, conv)


def _density(a: Args, conv: Conversion) -> str:
    scheme = a["weighting_scheme"]
    kind = scheme.value if scheme.value in ("logit_normal", "mode") else "uniform"
    conv.mapped(scheme, ("loss", "flow_timesteps"), kind)
    mean, std, mode = a["logit_mean"], a["logit_std"], a["mode_scale"]
    if kind == "logit_normal":
        conv.mapped(mean, ("loss", "flow_logit_mean"), float(mean.value))
        conv.mapped(std, ("loss", "flow_logit_std"), float(std.value))
    if kind == "mode":
        conv.mapped(mode, ("loss", "flow_mode_scale"), float(mode.value))
    for key, used in (("logit_mean", "logit_normal"), ("logit_std", "logit_normal"), ("mode_scale", "mode")):
        if kind != used and a[key].given:
            conv.inert(a[key], f"only weighting_scheme {used} reads it")
    return kind


def _flux_loss(a: Args, conv: Conversion) -> None:
    sampling, shift, scale = a["timestep_sampling"], a["discrete_flow_shift"], a["sigmoid_scale"]
    scheme = a["weighting_scheme"]
    if sampling.value == "sigma":
        _density(a, conv)
        conv.mapped(shift, ("loss", "flow_shift"), float(shift.value))
        conv.record(sampling, "mapped", "loss.flow_timesteps")
        if scale.given:
            conv.inert(scale, "timestep_sampling sigma does not read it")
    elif sampling.value == "flux_shift":
        _sigmoid(sampling, scale, conv)
        conv.mapped(
            sampling,
            ("loss", "flow_dynamic_shift"),
            True,
            note="sigmoid(sigmoid_scale N(0, 1)) shifted by the image size (Flux's time shift), continuous",
        )
        conv.put(("loss", "flow_shift"), 0.0, conv.comment(sampling, "the shift is the image size's"))
        if shift.given:
            conv.inert(shift, "timestep_sampling flux_shift shifts by the image size, not by it")
        _not_read(a, sampling, conv)
    else:
        if sampling.value == "uniform":
            conv.mapped(sampling, ("loss", "flow_timesteps"), "uniform")
            if scale.given:
                conv.inert(scale, "timestep_sampling uniform does not read it")
        else:
            _sigmoid(sampling, scale, conv)
        kept = sampling.value == "shift"
        conv.mapped(
            shift,
            ("loss", "flow_shift"),
            float(shift.value) if kept else 1.0,
            note="" if kept else f"timestep_sampling {sampling.value} draws unshifted sigmas: flow_shift 1",
        )
        conv.put(
            ("loss", "flow_draw"),
            "continuous",
            conv.comment(sampling, "sigma = shift(1 - u), continuous: kohya's sigma has the law of 1 - u"),
        )
        _not_read(a, sampling, conv)
    _flux_prediction(a, conv)
    if sampling.value != "sigma" and scheme.given and a["model_prediction_type"].value != "sigma_scaled":
        conv.inert(scheme, f"timestep_sampling {sampling.value} does not read it")


def _sigmoid(sampling, scale, conv: Conversion) -> None:
    """kohya's sigmoid(sigmoid_scale N(0, 1)) draw: dbspec's logit_normal(0, sigmoid_scale)."""
    conv.mapped(sampling, ("loss", "flow_timesteps"), "logit_normal")
    conv.put(("loss", "flow_logit_mean"), 0.0, conv.comment(scale, "sigmoid of N(0, sigmoid_scale)"))
    conv.mapped(scale, ("loss", "flow_logit_std"), float(scale.value))


def _not_read(a: Args, sampling, conv: Conversion) -> None:
    for key in ("logit_mean", "logit_std", "mode_scale"):
        if a[key].given:
            conv.inert(a[key], f"timestep_sampling {sampling.value} does not read it")


def _flux_prediction(a: Args, conv: Conversion) -> None:
    """model_prediction_type -> loss.flow_prediction; kohya weights the loss by weighting_scheme only with
    sigma_scaled (apply_model_prediction_type), so flow_weighting follows it there and is none otherwise."""
    pred, scheme = a["model_prediction_type"], a["weighting_scheme"]
    conv.mapped(pred, ("loss", "flow_prediction"), pred.value)
    if pred.value != "sigma_scaled":
        conv.put(
            ("loss", "flow_weighting"), "none", conv.comment(pred, f"no loss weighting with {pred.value}")
        )
        return
    weighting = scheme.value if scheme.value in ("sigma_sqrt", "cosmap") else "none"
    conv.put(
        ("loss", "flow_weighting"),
        weighting,
        conv.comment(scheme, "sigma_scaled weights the loss by it (compute_loss_weighting_for_sd3)"),
    )
    if a["timestep_sampling"].value != "sigma":
        conv.record(scheme, "mapped", "loss.flow_weighting")


def _sd3_loss(a: Args, conv: Conversion) -> None:
    """kohya's SD3 draw (floored, kohya's direction of u) and its preconditioned loss."""
    _density(a, conv)
    scheme, shift = a["weighting_scheme"], a["training_shift"]
    conv.mapped(
        shift,
        ("loss", "flow_shift"),
        float(shift.value),
        comment=conv.comment(shift, "kohya shifts by training_shift, not the model's 3.0"),
    )
    conv.put(
        ("loss", "flow_draw"),
        "floored",
        "kohya sd3_train_network.py: t = floor(shift(u) (max - min) + min), sigma = t / 1000 rising with u",
    )
    if (mixed := a["mixed_precision"].value) in ("bf16", "fp16"):
        conv.notes.append(
            f"kohya sd3_train_network.py casts the integer timesteps and sigma to the {mixed} weight dtype "
            "(bf16 rounds timesteps above 256 to steps of 2, above 512 to steps of 4: 998 and 999 become "
            "1000, sigma 1); dbspec keeps them float32"
        )
    weighting = scheme.value if scheme.value in ("sigma_sqrt", "cosmap") else "none"
    # the smaller bound: reversed ones (min above max) draw down to max_timestep
    low = min(
        a["min_timestep"].value or 0, 1000 if a["max_timestep"].value is None else a["max_timestep"].value
    )
    if weighting == "sigma_sqrt" and low == 0 and a["loss_type"].value == "l2":
        conv.put(
            ("loss", "flow_prediction"),
            "raw",
            conv.comment(scheme, "sigma^-2 cancels the sigma^2 of kohya's preconditioned loss"),
        )
        conv.put(("loss", "flow_weighting"), "none", "the unweighted velocity loss")
        conv.notes.append(
            "kohya sd3_train_network.py with weighting_scheme sigma_sqrt compares x_t - sigma v with the "
            "latents weighted by sigma^-2: the velocity loss, except at timestep 0 (sigma 0), where kohya's "
            "loss is 0 * inf = NaN; dbspec trains the velocity loss there too"
        )
        return
    if weighting == "sigma_sqrt" and low == 0:
        conv.unsupported(
            scheme,
            f"with loss_type {a['loss_type'].value} and min_timestep 0 kohya's sigma^-2 weight is infinite "
            "at timestep 0 (a NaN loss); dbspec refuses it (DBS236)",
            "add --min_timestep 1",
        )
        return
    conv.put(
        ("loss", "flow_prediction"),
        "preconditioned",
        "kohya sd3_train_network.py compares x_t - sigma v with the latents",
    )
    conv.put(
        ("loss", "flow_weighting"),
        weighting,
        conv.comment(scheme, "kohya weights the preconditioned loss by it (compute_loss_weighting_for_sd3)"),
    )


# train_network.py options these scripts never read: they draw noise with randn_like and their
# post_process_loss returns the loss unweighted (no Min-SNR or v-prediction terms).
_NOT_READ = {
    "min_snr_gamma": "their loss is not Min-SNR weighted (post_process_loss returns it as is)",
    "scale_v_pred_loss_like_noise_pred": "their loss is not v-prediction scaled (post_process_loss)",
    "v_pred_like_loss": "their loss has no v-prediction-like term (post_process_loss)",
    "debiased_estimation_loss": "their loss is not debiased (post_process_loss)",
    "noise_offset": "they draw noise with randn_like (no offset)",
    "noise_offset_random_strength": "they draw noise with randn_like (no offset)",
    "adaptive_noise_scale": "they draw noise with randn_like (no offset)",
    "multires_noise_iterations": "they draw noise with randn_like (no pyramid noise)",
    "multires_noise_discount": "they draw noise with randn_like (no pyramid noise)",
    "zero_terminal_snr": "their flow-matching scheduler has no DDPM betas to rescale",
}


def flow_loss_args(a: Args, script: str, defaults: dict, conv: Conversion) -> Args:
    """The arguments train_network.py's loss mapping should see: those these scripts never read are reported
    (ignored when given) and reset to their defaults (`defaults`: the script's argument table)."""
    out = dict(a)
    reasons = dict(_NOT_READ)
    if script == "flux_train_network":
        for key in ("min_timestep", "max_timestep"):
            reasons[key] = "flux_train_network.py's timestep draw does not read it"
    else:
        reasons["ip_noise_gamma"] = "sd3_train_network.py does not perturb the noisy input"
        reasons["ip_noise_gamma_random_strength"] = reasons["ip_noise_gamma"]
        low, high = a["min_timestep"], a["max_timestep"]
        if low.value is not None and high.value is not None and int(low.value) > int(high.value) == 0:
            # reversed bounds convert as given (loss.py _timesteps), but dbspec's max_timestep is at least 1
            conv.unsupported(
                high,
                "max_timestep 0 below min_timestep: sd3_train_network.py then draws t from min_timestep down "
                "to 0, and dbspec's loss.max_timestep is at least 1",
                help="give --max_timestep 1 or more",
            )
            out["min_timestep"] = attrs.evolve(low, value=defaults["min_timestep"].default, source="default")
    for key, why in reasons.items():
        legacy = a[key]
        if legacy.given and key not in conv.reports:
            if legacy.value not in (None, False, 0, 0.0) and key != "multires_noise_discount":
                conv.ignored(legacy, f"{script}.py does not read it: {why}")
            else:
                conv.inert(legacy, f"{script}.py does not read it")
        out[key] = attrs.evolve(legacy, value=defaults[key].default, source="default")
    return out
