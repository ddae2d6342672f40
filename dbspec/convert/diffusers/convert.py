"""`dbspec convert diffusers`: diffusers' train_dreambooth.py, train_dreambooth_lora.py,
train_dreambooth_lora_sdxl.py, train_dreambooth_lora_flux.py, train_dreambooth_lora_sd3.py and
train_dreambooth_sd3.py command lines (the flow-matching scripts' own options: flow.py).

Their loss is dbspec's: instance MSE (Min-SNR weighted) + prior_loss_weight x class MSE per batch. Family and
prediction come from the model's configs in both, so they stay `auto`.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from dbspec.convert.common.argv import POSITIONAL, parse_argv
from dbspec.convert.common.core import Conversion, Legacy, map_schedule_name, require_minimums
from dbspec.convert.diffusers.args import SCRIPTS, arg_table, script_of
from dbspec.convert.diffusers.flow import (
    FLOW_SCRIPTS,
    INERT as FLOW_INERT,
    SD3_SCRIPTS,
    map_flow_adapter,
    map_flow_loss,
    map_flow_model,
    map_flow_outputs,
)
from dbspec.convert.diffusers.data import Data, map_data, quirk
from dbspec.convert.diffusers.model import SchedulerFacts, scheduler_facts
from dbspec.convert.diffusers.out import map_outputs
from dbspec.convert.kohya.model import model_path
from dbspec.convert.common.shell import Command
from dbspec.convert.common.launcher import (
    InputError,
    launcher_options,
    read_command,
    report_joined,
    report_launcher,
)
from dbspec.convert.common.paths import PathMapper

Args = dict[str, Legacy]
PINNED = "58eb52c"  # the diffusers commit whose scripts the tables and rules follow
MODEL_UNREAD = "DBS412"  # a check of the base model could not be made here
LORA_SCRIPTS = (
    "train_dreambooth_lora",
    "train_dreambooth_lora_sdxl",
    "train_dreambooth_lora_flux",
    "train_dreambooth_lora_sd3",
)
UNSUPPORTED = {
    "tokenizer_name": "a separate tokenizer",
    "tokenizer_max_length": "a tokenizer length other than the model's",
    "text_encoder_use_attention_mask": "text-encoder attention masks",
    "class_labels_conditioning": "IF class labels",
    "dataset_name": "Hugging Face datasets (dbspec trains from folders)",
    "dataset_config_name": "ditto",
    "caption_column": "captions from a Hugging Face dataset",
    "use_dora": "DoRA adapters",
    "validation_images": "image-conditioned validation",
}
# the scripts divide by these or loop over them
MINIMUM = {
    "train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_train_steps": 1,
    "num_train_epochs": 1,
    "checkpointing_steps": 1,
    "validation_steps": 1,
    "validation_epochs": 1,
    "rank": 1,
    "resolution": 8,
    "lr_num_cycles": 1,
    "num_class_images": 0,
    "repeats": 1,
    "learning_rate": 0,
}
INERT = {
    k: "no effect on what trains"
    for k in (
        "push_to_hub",
        "hub_token",
        "hub_model_id",
        "logging_dir",
        "local_rank",
        "dataloader_num_workers",
        "enable_xformers_memory_efficient_attention",
        "set_grads_to_none",
        "pre_compute_text_embeddings",
        "cache_dir",
        "skip_save_text_encoder",
        "image_column",
    )
}
INERT.update(FLOW_INERT)
INERT["resume_from_checkpoint"] = "resuming is a run-time choice: `dbspec run spec.toml --resume`"


@attrs.frozen(kw_only=True)
class DiffusersRequest:
    command: str
    cwd: Path


def convert_diffusers(req: DiffusersRequest, out: Path, allow_unsupported: bool = False):
    conv = Conversion(tool="diffusers", allow_unsupported=allow_unsupported)
    paths = PathMapper(cwd=req.cwd.resolve(), out_dir=out.resolve().parent)
    command, label = read_command(req.command, req.cwd, SCRIPTS)
    script = script_of(command.script) if command.script else None
    if script is None:
        raise InputError(
            f"the command runs `{command.script or 'no script'}`, not one of "
            f"{', '.join(s + '.py' for s in SCRIPTS)}"
        )
    report_joined(command, label, conv)
    a = _args(command, script, conv)
    launcher = launcher_options(command)
    if not require_minimums(a, MINIMUM, conv):
        return conv, []
    facts = _model(a, script, paths, conv)
    lora = script in LORA_SCRIPTS
    if lora:
        _adapter(a, script, conv)
    data = map_data(a, script, paths, conv)
    total, per_epoch = _length(a, data, conv)
    _lr(a, script, total, conv)
    _optimizer(a, script, conv)
    _loss(a, script, data, facts, conv)
    if script in FLOW_SCRIPTS:
        map_flow_loss(a, script, conv)
    _precision(a, script, launcher, conv)
    map_outputs(a, script, lora, per_epoch, paths, conv)
    if script in FLOW_SCRIPTS:
        map_flow_outputs(a, script, conv)
    report_launcher(launcher, conv, script_sets_precision=a["mixed_precision"].value is not None)
    _sweep(a, conv)
    source = label if label == "the command text" else f"command {label}"
    return conv, [
        f"Converted by `dbspec convert diffusers` ({script}.py) from: {source}.",
        "Each value's comment names the diffusers option it came from; `--report` lists every option.",
    ]


def _args(command: Command, script: str, conv: Conversion) -> Args:
    table = arg_table(script)
    parsed = parse_argv(command.args, table)
    positional = [text for _, text, why in parsed.problems if why.startswith(POSITIONAL)]
    if positional:
        _positional(positional, command, script, conv)
    for option, text, why in parsed.problems:
        key = option.lstrip("-")
        if why.startswith(POSITIONAL):
            continue
        if why.startswith(("unrecognized", "ambiguous")):
            conv.invalid(
                key,
                text or True,
                "command line",
                f"{why}: not an option of {script}.py (diffusers {PINNED}), so its argparse exits with "
                "`error: unrecognized arguments`; an option a fork or another version of the script added",
                help=f"remove it, or convert with the script that has it: dbspec knows {script}.py as "
                f"diffusers {PINNED} has it",
            )
        else:
            conv.invalid(key, text, "command line", why)
    args = {name: Legacy(key=name, value=arg.default, source="default") for name, arg in table.items()}
    args.update({k: Legacy(key=k, value=v, source="command line") for k, v in parsed.values.items()})
    return args


def _positional(words: list[str], command: Command, script: str, conv: Conversion) -> None:
    """Words that are no option: argparse rejects them; an unquoted multi-word variable is the usual cause."""
    why = (
        f"{script}.py takes no positional arguments: its argparse exits with `error: unrecognized arguments: "
        f"{' '.join(words)}`"
    )
    help = ""
    if command.split:
        shown = "; ".join(f"${name} = {value!r}" for name, value in command.split)
        why += (
            f". The shell split the unquoted variable(s) into words ({shown}): an option takes only the "
            "first word, the others become these arguments"
        )
        help = (
            'quote the variable in the legacy command, e.g. --instance_prompt="$' + command.split[0][0] + '"'
        )
    conv.invalid("arguments", " ".join(words), "command line", why, help=help)


def _model(a: Args, script: str, paths: PathMapper, conv: Conversion) -> SchedulerFacts | None:
    base = a["pretrained_model_name_or_path"]
    if not base.value:
        conv.invalid(base.key, None, base.source, "the script requires it")
        return None
    conv.mapped(base, ("model", "base"), model_path(base.value, paths))
    facts = scheduler_facts(base.value, a["revision"].value, paths)
    if script.endswith("sdxl"):
        _edm(a, facts, conv)
    if script.endswith("sdxl"):
        conv.put(("model", "family"), "sdxl", f"{conv.tool} {script}.py trains SDXL")
    if script in FLOW_SCRIPTS:
        map_flow_model(a, script, conv)
    revision = a["revision"]
    if revision.value:
        conv.mapped(revision, ("model", "revision"), revision.value)
    if a["variant"].value:
        conv.differs(a["variant"], "dbspec loads the model's default weight files, not a variant")
    if "pretrained_vae_model_name_or_path" in a and a["pretrained_vae_model_name_or_path"].value:
        vae = a["pretrained_vae_model_name_or_path"]
        conv.mapped(vae, ("model", "vae"), model_path(vae.value, paths))
    return facts


def _edm(a: Args, facts: SchedulerFacts, conv: Conversion) -> None:
    """train_dreambooth_lora_sdxl.py trains EDM-style with --do_edm_style_training, and whenever the model's
    model_index.json names an EDM scheduler (it then sets the flag itself): EDMEulerScheduler noise levels,
    preconditioned inputs and outputs, the clean latents as the target. dbspec trains DDPM-style only."""
    flag, snr = a["do_edm_style_training"], a["snr_gamma"]
    edm_model = facts.edm
    if edm_model:
        why = (
            f"the model's scheduler is {facts.scheduler} ({facts.where}): train_dreambooth_lora_sdxl.py then "
            "sets do_edm_style_training itself and trains EDM-style (EDMEulerScheduler noise levels, "
            "preconditioned inputs and outputs, the clean latents as the target); dbspec trains DDPM-style "
            "(noise or v targets at discrete timesteps) only"
        )
        legacy = flag if flag.value else Legacy(key=flag.key, value=True, source="model_index.json")
        conv.unsupported(legacy, why, help="train a DDPM-style model (e.g. SDXL base), or use diffusers")
    elif flag.value:
        conv.unsupported(
            flag,
            "EDM-style training (EulerDiscreteScheduler sigmas, preconditioned inputs and outputs, the clean "
            "latents as the target, weighted by sigma^-2); dbspec trains DDPM-style only",
        )
    elif edm_model is None:
        conv.warn(
            MODEL_UNREAD,
            f"the model's scheduler could not be read ({facts.where}), so it was not checked whether "
            "train_dreambooth_lora_sdxl.py would train it EDM-style (it does when model_index.json names an "
            "EDM scheduler, as Playground v2.5's does); converted as DDPM-style training",
            "pretrained_model_name_or_path",
            help=f"download it first (huggingface-cli download {a['pretrained_model_name_or_path'].value}) "
            "and convert again, or convert with a local pipeline folder",
        )
    if (edm_model or flag.value) and snr.value is not None:
        conv.invalid(
            snr.key,
            snr.value,
            snr.source,
            "the script raises: Min-SNR formulation is not supported when conducting EDM-style training"
            + (" (the model's EDM scheduler turns EDM-style training on)" if edm_model else ""),
        )


def _adapter(a: Args, script: str, conv: Conversion) -> None:
    conv.put(("adapter", "kind"), "lora", f"{conv.tool} LoRA script")
    rank = a["rank"]
    conv.mapped(rank, ("adapter", "rank"), rank.value)
    conv.put(("adapter", "alpha"), float(rank.value), f"{conv.tool} sets lora_alpha = rank")
    dropout = a["lora_dropout"]
    if dropout.value:
        conv.mapped(dropout, ("adapter", "dropout"), float(dropout.value))
    # the SDXL script's --use_dora is peft's LoraConfig(use_dora=True), as dbspec's adapter.dora
    if "use_dora" in arg_table(script) and a["use_dora"].value:
        conv.mapped(a["use_dora"], ("adapter", "dora"), True)
    if script in FLOW_SCRIPTS:
        map_flow_adapter(a, script, conv)


def _length(a: Args, data: Data | None, conv: Conversion) -> tuple[int | None, int | None]:
    accum, steps, epochs = a["gradient_accumulation_steps"], a["max_train_steps"], a["num_train_epochs"]
    if accum.value != 1:
        conv.mapped(accum, ("schedule", "accumulation"), accum.value)
    per_epoch = -(-data.diffusers_batches // accum.value) if data and data.diffusers_batches else None
    if steps.value:
        conv.mapped(steps, ("schedule", "steps"), steps.value)
        if epochs.given:
            conv.inert(epochs, "max_train_steps overrides it")
        return steps.value, per_epoch
    if per_epoch is None:
        conv.mapped(epochs, ("schedule", "epochs"), epochs.value)
        return None, None
    total = epochs.value * per_epoch
    if data.spec_batches == data.diffusers_batches:
        conv.mapped(epochs, ("schedule", "epochs"), epochs.value)
    else:
        conv.differs(
            epochs,
            f"diffusers' epoch has {data.diffusers_batches} batches, the spec's {data.spec_batches}: "
            f"the run keeps diffusers' {total} steps",
            ("schedule", "steps"),
            total,
        )
    return total, per_epoch


def _lr(a: Args, script: str, total: int | None, conv: Conversion) -> None:
    lr, name, warm = a["learning_rate"], a["lr_scheduler"], a["lr_warmup_steps"]
    value = lr.value
    if a["scale_lr"].value:
        value = lr.value * a["gradient_accumulation_steps"].value * a["train_batch_size"].value
        conv.record(a["scale_lr"], "mapped", "optimizer.lr", "x accumulation x batch size (one process)")
    conv.mapped(
        lr,
        ("optimizer", "lr"),
        float(value),
        comment=conv.comment(lr, "scaled by --scale_lr") if value != lr.value else "",
    )
    if not map_schedule_name(conv, name):
        return
    if name.value == "constant":
        if warm.given:
            conv.inert(warm, "the constant schedule has no warm-up")
    elif total is not None and warm.value == total and name.value == "polynomial":
        conv.invalid(
            warm.key,
            warm.value,
            warm.source,
            f"a {total}-step warm-up in a {total}-step run leaves the polynomial schedule 0 decay steps: "
            "diffusers' lr_lambda divides by them after the last step (ZeroDivisionError before the "
            "script saves the model)",
            help="shorten the warm-up by one step or more (or lengthen the run)",
        )
    elif total is not None and warm.value >= total:
        note = (
            f"not shorter than the {total}-step run: the LR climbs the whole run and never reaches "
            "learning_rate, as in diffusers (the plan warns, DBS238)"
        )
        conv.mapped(warm, ("schedule", "warmup_steps"), warm.value, note=note)
    elif warm.value:
        conv.mapped(warm, ("schedule", "warmup_steps"), warm.value)
    cycles, power = a["lr_num_cycles"], a["lr_power"]
    if name.value == "cosine_with_restarts":
        conv.mapped(cycles, ("schedule", "cycles"), cycles.value)
    if name.value == "polynomial" and power.value != 1.0:
        conv.mapped(power, ("schedule", "power"), power.value)  # get_scheduler(..., power=args.lr_power)


def _optimizer(a: Args, script: str, conv: Conversion) -> None:
    choice = a["optimizer"] if "optimizer" in a else None
    eight = a["use_8bit_adam"]
    if choice is not None and choice.value.lower() == "prodigy":
        _prodigy(a, conv)
        if eight.value:
            conv.ignored(eight, "the script warns that use_8bit_adam is ignored when optimizer is not AdamW")
        else:
            conv.record(eight, "inert", "", "8-bit AdamW only; the optimizer is Prodigy")
    else:
        kind = "adamw8bit" if eight.value else "adamw"
        conv.mapped(eight, ("optimizer", "kind"), kind, comment=conv.comment(eight))
        if choice is not None:
            conv.record(
                choice,
                "mapped",
                "optimizer.kind",
                "" if choice.value.lower() == "adamw" else "diffusers falls back to AdamW for other names",
            )
        for key in PRODIGY_OPTIONS:
            if key in a and a[key].given:
                conv.inert(a[key], "the script reads it only with --optimizer prodigy")
    betas = [float(a["adam_beta1"].value), float(a["adam_beta2"].value)]
    if betas != [0.9, 0.999]:
        conv.put(("optimizer", "betas"), betas, f"{conv.tool} adam_beta1, adam_beta2")
    for key in ("adam_beta1", "adam_beta2"):
        conv.record(a[key], "mapped", "optimizer.betas")
    for key, target, default in (
        ("adam_weight_decay", "weight_decay", 1e-2),
        ("adam_epsilon", "eps", 1e-8),
        ("max_grad_norm", "max_grad_norm", 1.0),
    ):
        if a[key].value != default:
            conv.mapped(a[key], ("optimizer", target), float(a[key].value))
        else:
            conv.record(a[key], "mapped", f"optimizer.{target}")
    te_decay = a["adam_weight_decay_text_encoder"] if "adam_weight_decay_text_encoder" in a else None
    if (
        te_decay is not None
        and a["train_text_encoder"].value
        and te_decay.value != a["adam_weight_decay"].value
    ):
        conv.differs(te_decay, "dbspec uses one weight decay for the U-Net and the text encoders")


def _loss(a: Args, script: str, data: Data | None, facts: SchedulerFacts | None, conv: Conversion) -> None:
    weight = a["prior_loss_weight"]
    if data and data.prior:
        if weight.value != 1.0:
            conv.mapped(weight, ("loss", "prior_weight"), float(weight.value))
        else:
            conv.record(weight, "mapped", "loss.prior_weight")
    elif weight.given:
        conv.inert(weight, "no --with_prior_preservation")
    snr = a["snr_gamma"] if "snr_gamma" in a else None
    if snr is not None and snr.value is not None:
        _min_snr(a, script, snr, data, facts, conv)
    if "offset_noise" in a and a["offset_noise"].value:
        conv.mapped(
            a["offset_noise"],
            ("loss", "noise_offset"),
            0.1,
            comment=conv.comment(a["offset_noise"], "diffusers' fixed strength 0.1"),
        )


def _min_snr(
    a: Args, script: str, snr: Legacy, data: Data | None, facts: SchedulerFacts | None, conv: Conversion
) -> None:
    """--snr_gamma (train_dreambooth.py and the SDXL LoRA script; train_dreambooth_lora.py has none).

    Both weight the per-sample instance loss by min(snr, gamma)/snr for epsilon models. For v-prediction
    train_dreambooth.py divides by snr + 1 (dbspec's form), the SDXL LoRA script adds 1 instead:
    min(snr, gamma)/snr + 1. Both compute the weights from the timesteps of the whole batch, class images
    included, while the instance loss has only the instance half: at train_batch_size 1 the broadcast makes
    the instance loss times the mean of the instance and class weights; above, the shapes do not broadcast
    and the first step raises."""
    conv.mapped(snr, ("loss", "min_snr_gamma"), float(snr.value))
    prediction = facts.prediction if facts is not None else None
    if script.endswith("sdxl") and prediction != "epsilon":
        why = (
            "train_dreambooth_lora_sdxl.py weights v-prediction losses by min(snr, gamma)/snr + 1, dbspec by "
            "min(snr, gamma)/(snr + 1) (as train_dreambooth.py does); epsilon weights are equal"
        )
        if prediction is None:
            why += " (the model's prediction type could not be read: this applies if it predicts v)"
        quirk(conv, snr, why)
    batch = a["train_batch_size"]
    if data is not None and data.prior and batch.value >= 2:
        conv.invalid(
            snr.key,
            snr.value,
            snr.source,
            f"with --with_prior_preservation at --train_batch_size {batch.value}, {script}.py fails at its "
            f"first step: its Min-SNR weights cover all {2 * batch.value} samples (class images included), "
            f"the instance losses only {batch.value}, and the shapes do not broadcast",
            help="the script trains this only at --train_batch_size 1, or without --snr_gamma",
        )
    elif data is not None and data.prior:
        quirk(
            conv,
            snr,
            f"with --with_prior_preservation, {script}.py multiplies the instance loss by the mean of the "
            "instance and the class sample's Min-SNR weights (its weights cover the whole batch of 2); "
            "dbspec weights the instance loss by its own sample's weight (the prior term is unweighted in "
            "both)",
        )


def _precision(a: Args, script: str, launcher: dict[str, Legacy], conv: Conversion) -> None:
    mixed = a["mixed_precision"]
    if mixed.value is None and "mixed_precision" in launcher:
        mixed = launcher["mixed_precision"]
    if mixed.value is None:
        conv.warn(
            "DBS407",
            "no --mixed_precision: diffusers takes it from the accelerate config; converted as "
            '"no" (accelerate\'s default)',
            "mixed_precision",
            help="pass --mixed_precision to be sure",
        )
        conv.mapped(
            mixed,
            ("precision", "mixed"),
            "no",
            comment=conv.comment(mixed, "accelerate's default; your accelerate config may differ"),
        )
    else:
        conv.mapped(mixed, ("precision", "mixed"), mixed.value)
    # the SDXL and SD3 scripts keep the VAE in fp32
    if mixed.value in ("fp16", "bf16") and not script.endswith("sdxl") and script not in SD3_SCRIPTS:
        conv.put(
            ("precision", "vae_dtype"), mixed.value, f"{conv.tool} casts the VAE to the mixed-precision dtype"
        )
    grad, tf32 = a["gradient_checkpointing"], a["allow_tf32"]
    if grad.value:
        conv.mapped(grad, ("precision", "gradient_checkpointing"), True)
    conv.mapped(tf32, ("precision", "tf32"), bool(tf32.value))
    text = a["train_text_encoder"]
    if text.value and "pre_compute_text_embeddings" in a and a["pre_compute_text_embeddings"].value:
        conv.invalid(
            "pre_compute_text_embeddings",
            True,
            "command line",
            "the script raises: `--train_text_encoder` cannot be used with `--pre_compute_text_embeddings`",
        )
    if text.value:
        conv.mapped(text, ("train", "text_encoder"), True)
        te_lr = a["text_encoder_lr"] if "text_encoder_lr" in a else None
        if te_lr is not None:
            _text_encoder_lr(a, te_lr, conv)
    elif "text_encoder_lr" in a and a["text_encoder_lr"].given:
        conv.inert(a["text_encoder_lr"], "the text encoder does not train")


# prodigyopt.Prodigy(params, betas=(adam_beta1, adam_beta2), beta3=prodigy_beta3,
# weight_decay=adam_weight_decay, eps=adam_epsilon, decouple=..., use_bias_correction=...,
# safeguard_warmup=...) in every script that offers it; d0, d_coef, growth_rate and slice_p stay
# prodigyopt's defaults, which are dbspec's.
PRODIGY_OPTIONS = (
    "prodigy_beta3",
    "prodigy_decouple",
    "prodigy_use_bias_correction",
    "prodigy_safeguard_warmup",
)
PRODIGY_FLAGS = {
    "prodigy_decouple": "decouple",
    "prodigy_use_bias_correction": "use_bias_correction",
    "prodigy_safeguard_warmup": "safeguard_warmup",
}


def _prodigy(a: Args, conv: Conversion) -> None:
    conv.mapped(a["optimizer"], ("optimizer", "kind"), "prodigy")
    beta3 = a["prodigy_beta3"]
    if beta3.value is not None:
        conv.mapped(beta3, ("optimizer", "beta3"), float(beta3.value))
    else:
        conv.record(beta3, "mapped", "optimizer.beta3", "None: the square root of adam_beta2, as dbspec's")
    for key, target in PRODIGY_FLAGS.items():
        # argparse type=bool: bool(text), so any non-empty text (even "False") is True
        on = bool(a[key].value)
        note = f"type=bool: {a[key].value!r} reads as {on}" if a[key].given else ""
        conv.mapped(a[key], ("optimizer", target), on, note=note, comment=conv.comment(a[key]))


def _text_encoder_lr(a: Args, te_lr: Legacy, conv: Conversion) -> None:
    """The text encoders' groups: `"lr": args.text_encoder_lr if args.text_encoder_lr else
    args.learning_rate`, and under Prodigy the script sets them to learning_rate (and warns)."""
    if a["optimizer"].value.lower() == "prodigy":
        why = "with --optimizer prodigy the script trains the text encoders at learning_rate"
        if te_lr.value and te_lr.given:
            conv.ignored(te_lr, why + " (it warns: only learning_rate is used as the initial learning rate)")
        else:
            conv.inert(te_lr, why)
    elif not te_lr.value:
        conv.inert(te_lr, "0 or unset: the script trains the text encoders at learning_rate")
    elif float(te_lr.value) != float(conv.values[("optimizer", "lr")][0]):
        conv.mapped(te_lr, ("optimizer", "text_encoder_lr"), float(te_lr.value))
    else:
        conv.record(te_lr, "mapped", "optimizer.text_encoder_lr", "equal to learning_rate, dbspec's default")


def _sweep(a: Args, conv: Conversion) -> None:
    for key, legacy in a.items():
        if not legacy.given or key in conv.reports:
            continue
        if key in ("caption_column", "dataset_config_name") and not a["dataset_name"].value:
            conv.inert(
                legacy, "read only with --dataset_name (DreamBoothDataset's Hugging Face dataset branch)"
            )
        elif key in UNSUPPORTED and legacy.value:
            conv.unsupported(legacy, f"dbspec has no {UNSUPPORTED[key]}")
        elif (
            key in ("class_data_dir", "class_prompt", "num_class_images")
            and not a["with_prior_preservation"].value
        ):
            conv.ignored(legacy, "no --with_prior_preservation: the script warns and ignores it")
        else:
            conv.inert(legacy, INERT[key] if key in INERT else "not used with these settings")
