"""kohya's saving, sampling, logging and seed -> [checkpoints], [validation], [output],
[logging], schedule.seed.

None of these change the trained weights; they convert exactly where dbspec can say the same, and otherwise
produce a difference note. Epoch intervals become step intervals with kohya's steps per epoch.
"""

from __future__ import annotations

import tomli

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.common.wandb import ENTITY, PROJECT, RUN_NAME, WANDB, api_key_not_written

Args = dict[str, Legacy]
SAMPLERS = {
    "ddim": "ddim",
    "pndm": "pndm",
    "euler": "euler",
    "k_euler": "euler",
    "euler_a": "euler_a",
    "k_euler_a": "euler_a",
    "dpmsolver++": "dpmpp",
}
SAVE_DTYPES = {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}
_FILE_FORMATS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def map_outputs(
    a: Args,
    script: str,
    lora: bool,
    steps_per_epoch: int | None,
    paths: PathMapper,
    conv: Conversion,
    total_steps: int | None = None,
) -> None:
    out, name = a["output_dir"], a["output_name"]
    if out.value:
        conv.mapped(out, ("output", "dir"), paths.for_spec(out.value))
    conv.mapped(
        name,
        ("output", "name"),
        name.value or "last",
        comment="" if name.value else conv.comment(name, "kohya names the final file `last`"),
    )
    _exports(a, script, lora, conv)
    every = _every(
        a, "save_every_n_steps", "save_every_n_epochs", steps_per_epoch, ("checkpoints", "every"), conv
    )
    if every:
        by_epochs = bool(a["save_every_n_epochs"].value) and not a["save_every_n_steps"].value
        _keep(a, every, by_epochs, total_steps, conv)
    if a["save_n_epoch_ratio"].value:
        conv.differs(a["save_n_epoch_ratio"], "dbspec saves at a step interval; the ratio was not converted")
    seed = a["seed"]
    if seed.value is not None:
        conv.mapped(seed, ("schedule", "seed"), seed.value)
    else:
        conv.record(seed, "defaulted", "schedule.seed", "kohya draws a random seed; dbspec uses 0")
    logs, tracker = a["logging_dir"], a["log_with"]
    tensorboard = bool(logs.value) and tracker.value in (None, "tensorboard", "all")
    conv.mapped(
        logs,
        ("logging", "tensorboard"),
        tensorboard,
        comment=conv.comment(
            logs,
            "log_with = wandb: no TensorBoard"
            if tracker.value == "wandb"
            else "kohya logs only when logging_dir is set",
        ),
    )
    if tracker.value in ("tensorboard", "all") and not logs.value:  # train_util.prepare_accelerator
        conv.invalid(
            "log_with",
            tracker.value,
            tracker.source,
            "kohya requires logging_dir for TensorBoard (ValueError before training)",
            help="add logging_dir, or use log_with = wandb",
        )
    if tracker.value in ("wandb", "all"):
        _wandb(a, script, paths, conv)
    _sampling(a, steps_per_epoch, paths, conv, flow=script in ("flux_train_network", "sd3_train_network"))


# accelerator.init_trackers' project name (the W&B project) when log_tracker_name is unset, per script
KOHYA_TRACKER_NAMES = {"train_db": "dreambooth", "sdxl_train": "finetuning"}  # the rest: "network_train"


def _wandb(a: Args, script: str, paths: PathMapper, conv: Conversion) -> None:
    """log_with = "wandb" or "all": accelerate's W&B tracker, opened by the main process with the project
    `log_tracker_name` (else the script's name for it), `wandb_run_name` as its name, or the init arguments
    of the `log_tracker_config` TOML file (its [wandb] table) instead."""
    conv.mapped(a["log_with"], WANDB, True)
    project = a["log_tracker_name"]
    default = KOHYA_TRACKER_NAMES.get(script, "network_train")
    conv.mapped(
        project,
        PROJECT,
        project.value or default,
        comment="" if project.value else conv.comment(project, f"kohya {script}.py's tracker name"),
    )
    config, run_name = a["log_tracker_config"], a["wandb_run_name"]
    if config.value:
        if run_name.value:
            conv.ignored(run_name, "log_tracker_config's init arguments replace the run name")
        _tracker_config(config, paths, conv)
    elif run_name.value:
        conv.mapped(run_name, RUN_NAME, run_name.value)
    api_key_not_written(a["wandb_api_key"], conv)


def _tracker_config(config: Legacy, paths: PathMapper, conv: Conversion) -> None:
    """kohya's `log_tracker_config`: a TOML file of accelerate init_kwargs; its [wandb] table goes to
    wandb.init. `name` and `entity` convert; other W&B arguments (tags, notes, group, ...) do not."""
    local = paths.local(str(config.value))
    try:
        data = tomli.loads(local.read_text(encoding="utf-8")) if local is not None else None
    except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError) as exc:
        conv.differs(
            config,
            f"the file cannot be read here ({type(exc).__name__}); its W&B settings were not converted",
        )
        return
    if data is None:
        conv.differs(config, "the file is on another machine; its W&B settings were not converted")
        return
    table = data.get("wandb") if isinstance(data.get("wandb"), dict) else {}  # noqa: SIM401 - file data
    if isinstance(table.get("name"), str) and table["name"]:
        conv.mapped(config, RUN_NAME, table["name"], comment=conv.comment(config, "its [wandb] name"))
    if isinstance(table.get("entity"), str) and table["entity"]:
        conv.mapped(config, ENTITY, table["entity"], comment=conv.comment(config, "its [wandb] entity"))
    rest = sorted(k for k in table if k not in ("name", "entity"))
    if rest:
        conv.differs(
            config, f"its W&B arguments {', '.join(rest)} have no dbspec option and were not converted"
        )
    elif not table.get("name") and not table.get("entity"):
        conv.inert(config, "no [wandb] name or entity in it")


def _exports(a: Args, script: str, lora: bool, conv: Conversion) -> None:
    fmt, precision = a["save_model_as"], a["save_precision"]
    if lora:  # Flux and SD3 too: kohya's lora_flux / lora_sd3 layouts (runtime/flux_kohya.py, sd3_kohya.py)
        conv.mapped(fmt, ("checkpoints", "exports"), ["kohya_lora"])
        if fmt.value in ("ckpt", "pt"):  # networks' save_weights: torch.save of the state dict
            conv.mapped(
                fmt,
                ("checkpoints", "export_format"),
                fmt.value,
                comment=conv.comment(fmt, f"a pickle .{fmt.value} file: torch.save of the LoRA state dict"),
            )
    else:
        base = a["pretrained_model_name_or_path"].value or ""
        single = fmt.value in ("ckpt", "safetensors") or (
            fmt.value is None and base.lower().endswith(_FILE_FORMATS)
        )
        # kohya's suffix: .safetensors with use_safetensors or save_model_as "safetensors", else .ckpt (a
        # single-file base without save_model_as keeps the single-file format, not the file's suffix)
        flag = "use_safetensors" in a and bool(a["use_safetensors"].value)
        pickled = single and not (flag or fmt.value == "safetensors")
        if single:
            conv.mapped(
                fmt,
                ("checkpoints", "exports"),
                ["single_file"],
                comment=conv.comment(fmt, "the base model's format" if fmt.value is None else ""),
            )
        else:
            conv.record(fmt, "mapped", "checkpoints", "a diffusers folder, as dbspec saves")
        if pickled:
            why = "without use_safetensors" + (" or save_model_as" if fmt.value is None else "")
            if base.lower().endswith((".ckpt", ".pt", ".pth")):  # counters no loader reads
                why += (
                    " (kohya adds the base file's epoch and global_step to its counters; dbspec counts this "
                    "run)"
                )
            conv.mapped(
                fmt,
                ("checkpoints", "export_format"),
                "ckpt",
                comment=conv.comment(
                    fmt, f"{why}: a pickle .ckpt, torch.save of {{state_dict, epoch, global_step}}"
                ),
            )
        if "use_safetensors" in a and a["use_safetensors"].given:
            if single:
                conv.record(a["use_safetensors"], "mapped", "checkpoints.export_format")
            else:
                conv.inert(a["use_safetensors"], "dbspec always writes diffusers folders as safetensors")
    value = SAVE_DTYPES[precision.value] if precision.value in SAVE_DTYPES else None
    if value and value != "fp32":
        conv.mapped(precision, ("checkpoints", "save_precision"), value)
    else:
        conv.record(
            precision,
            "mapped",
            "checkpoints.save_precision",
            "" if precision.value else "kohya saves in the training dtype (fp32)",
        )


def _every(
    a: Args, steps_key: str, epochs_key: str, per_epoch: int | None, path: tuple, conv: Conversion
) -> int:
    """A step interval from kohya's step and epoch intervals (kohya honours both; dbspec has one)."""
    steps, epochs = a[steps_key], a[epochs_key]
    if epochs.value and steps.value and path[0] == "checkpoints":
        conv.differs(
            epochs,
            f"kohya saves every {steps.value} steps and every {epochs.value} epochs; dbspec keeps "
            "the step interval",
        )
    if epochs.value and (path[0] == "validation" or not steps.value):
        if per_epoch is None:
            conv.depends(
                epochs.key,
                "the images could not be counted here, so the epoch interval could not become "
                "a step interval; only the end of the run is covered",
            )
            conv.record(epochs, "differs", ".".join(path))
            return 0
        every = epochs.value * per_epoch
        conv.mapped(
            epochs, path, every, comment=conv.comment(epochs, f"{epochs.value} x {per_epoch} steps per epoch")
        )
        if steps.value:
            conv.inert(steps, f"{epochs_key} takes precedence")
        return every
    if steps.value:
        conv.mapped(steps, path, steps.value)
        return steps.value
    return 0


def kohya_kept(last_n: int | None, every: int, by_epochs: bool) -> int | None:
    """How many of kohya's interval saves survive (None: all). Epochs: saving epoch e removes epoch
    e - save_every_n_epochs x N, i.e. the save N intervals back, so N survive. Steps: saving step s removes
    the interval multiple at or below s - N - 1, i.e. the save ceil((N + 1) / every) intervals back."""
    if last_n is None:
        return None
    return last_n if by_epochs else -(-(last_n + 1) // every)


def _keep(a: Args, every: int, by_epochs: bool, total: int | None, conv: Conversion) -> None:
    """checkpoints.keep and keep_state from kohya's save_last_n_* and save_last_n_*_state: dbspec keeps the
    newest `keep` step folders, the newest `keep_state` of them with their training state, and always saves
    one at the last step (its weights are `final`'s)."""
    unit = "epochs" if by_epochs else "steps"
    other = "steps" if by_epochs else "epochs"
    model_key, state_key = a[f"save_last_n_{unit}"], a[f"save_last_n_{unit}_state"]
    why = (
        "it prunes kohya's epoch saves, which dbspec does not make (see save_every_n_epochs)"
        if a["save_every_n_epochs"].value
        else f"kohya makes no {other[:-1]} saves without save_every_n_{other}"
    )
    for key in (f"save_last_n_{other}", f"save_last_n_{other}_state"):
        if a[key].given:
            conv.inert(a[key], why)
    if by_epochs:
        at_end = False  # kohya's epoch saves skip the last epoch: its `last` file is the end
    elif total is None:
        given = model_key if model_key.given else state_key
        if given.given:
            conv.depends(
                given.key,
                "the total steps could not be counted here, so whether kohya's last interval save falls "
                "on the last step is unknown; checkpoints.keep assumes it does not",
            )
        at_end = False
    else:
        at_end = total % every == 0  # kohya saves at every multiple, the last step included
    saving_state = bool(a["save_state"].value)
    state_n = (state_key.value or model_key.value) if saving_state else None
    if state_key.given and not saving_state:
        conv.inert(state_key, "kohya saves no state without save_state")
    kept_model = kohya_kept(model_key.value, every, by_epochs)
    kept_state = kohya_kept(state_n, every, by_epochs) if saving_state else kept_model
    # dbspec's folder at the last step is kohya's `last` file (and `last-state` folder) when kohya's
    # interval saves miss the last step, so it is one more to keep
    extra = 0 if at_end else 1
    keep_model = 0 if kept_model is None else kept_model + extra
    keep_state = 0 if kept_state is None else kept_state + extra
    keep = 0 if 0 in (keep_model, keep_state) else max(keep_model, keep_state)
    if keep_model == keep_state:
        legacy = model_key if model_key.given else state_key
        if keep == 0:
            conv.put(("checkpoints", "keep"), 0, f"{conv.tool} keeps every saved checkpoint")
            if state_key.given and saving_state:
                conv.record(state_key, "mapped", "checkpoints.keep")
            return
        what = f"kohya keeps its last {kept_model} {unit[:-1]} saves" + (
            " and states" if saving_state else ""
        )
        if extra:
            what += (
                " and its `last` file; dbspec's folder at the last step is that one (while training, dbspec "
                "holds one checkpoint more than kohya)"
            )
        conv.mapped(legacy, ("checkpoints", "keep"), keep, comment=conv.comment(legacy, what))
        if legacy is model_key and state_key.given and saving_state:
            conv.record(state_key, "mapped", "checkpoints.keep")
        return

    def count(n: int | None) -> str:
        return "all" if n is None else f"the last {n}"

    state_unit = f"{unit[:-1]} states (save_last_n_{unit}_state)"
    at_last = " (dbspec's checkpoint at the last step)"
    last = f" and its `last` file{at_last}" if extra else ""
    last_state = f" and its `last-state` folder{at_last}" if extra else ""
    if keep_state and (keep_model == 0 or keep_state < keep_model):
        # fewer states than model files: the older kept checkpoints are pruned to their weights
        if model_key.given:
            conv.mapped(
                model_key,
                ("checkpoints", "keep"),
                keep_model,
                comment=conv.comment(model_key, f"kohya keeps {count(kept_model)} {unit[:-1]} saves{last}"),
            )
        else:
            conv.put(("checkpoints", "keep"), 0, f"{conv.tool} keeps every model file it saves")
        conv.mapped(
            state_key,
            ("checkpoints", "keep_state"),
            keep_state,
            comment=conv.comment(
                state_key,
                f"kohya keeps {count(kept_state)} {state_unit}{last_state}; older checkpoints keep their "
                "weights only",
            ),
        )
        return
    # more states than model files: kohya's state folders hold the weights too (accelerate's save_state), so
    # dbspec keeps a full checkpoint for each; the same training, more usable weight files
    conv.mapped(
        state_key,
        ("checkpoints", "keep"),
        keep,
        comment=conv.comment(
            state_key,
            f"kohya keeps {count(kept_state)} {state_unit}{last_state} but {count(kept_model)} model files; "
            "its state folders hold the weights too, so each is a whole dbspec checkpoint",
        ),
    )
    if model_key.given:
        conv.record(model_key, "mapped", "checkpoints.keep")


def _sampling(
    a: Args, per_epoch: int | None, paths: PathMapper, conv: Conversion, flow: bool = False
) -> None:
    prompts_arg = a["sample_prompts"]
    keys = ("sample_every_n_steps", "sample_every_n_epochs", "sample_sampler", "sample_at_first")
    if not prompts_arg.value:
        for key in keys:
            if a[key].given:
                conv.inert(a[key], "no sample_prompts")
        return
    if not (
        a["sample_every_n_steps"].value or a["sample_every_n_epochs"].value or a["sample_at_first"].value
    ):
        conv.inert(prompts_arg, "kohya samples only with sample_every_n_steps/epochs or sample_at_first")
        return
    if not _prompts(prompts_arg, paths, conv):
        for key in keys:
            if a[key].given:
                conv.inert(a[key], "the sample prompts did not convert")
        return
    _every(a, "sample_every_n_steps", "sample_every_n_epochs", per_epoch, ("validation", "every"), conv)
    if a["sample_at_first"].given:
        conv.inert(a["sample_at_first"], "dbspec validates at its interval and at the end")
    sampler = a["sample_sampler"]
    if flow:  # flux/sd3 sample_images run their own flow-matching Euler loop
        conv.put(("validation", "scheduler"), "flow_euler", "kohya's Flux/SD3 sampling: flow-matching Euler")
        if sampler.given:
            conv.ignored(sampler, "the Flux/SD3 scripts sample with their own Euler loop")
    elif sampler.value in SAMPLERS and SAMPLERS[sampler.value] != "ddim":
        conv.mapped(sampler, ("validation", "scheduler"), SAMPLERS[sampler.value])
    elif sampler.value != "ddim":
        conv.differs(sampler, "dbspec has no such sampler; validation uses ddim")
    else:
        conv.record(sampler, "mapped", "validation.scheduler")


def _prompts(legacy: Legacy, paths: PathMapper, conv: Conversion) -> bool:
    local = paths.local(legacy.value)
    if local is None or not local.is_file() or local.suffix.lower() != ".txt":
        conv.differs(
            legacy, "only .txt prompt files that can be read here convert; the spec has no validation"
        )
        return False
    parsed = [
        _prompt_line(line)
        for line in local.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not parsed:
        conv.inert(legacy, "the prompt file is empty")
        return False
    conv.mapped(legacy, ("validation", "prompts"), [p for p, _ in parsed])
    conv.put(("validation", "steps"), 30, f"{conv.tool} samples with 30 steps unless a prompt says --s")
    for flag, key, cast in (
        ("n", "negative_prompt", str),
        ("s", "steps", int),
        ("l", "guidance", float),
        ("d", "seed", int),
    ):
        values = {opts[flag] for _, opts in parsed if flag in opts}
        if len(values) == 1 and all(flag in opts for _, opts in parsed):
            conv.put(
                ("validation", key), cast(values.pop()), conv.comment(legacy, f"--{flag} in the prompt file")
            )
        elif values:
            conv.differs(legacy, f"prompts set different --{flag}; dbspec has one {key} for all")
    if any(flag in opts for _, opts in parsed for flag in ("w", "h", "ss")):
        conv.differs(
            legacy,
            "per-prompt sizes and samplers (--w/--h/--ss) do not convert: validation images use the "
            "first dataset's resolution",
        )
    return True


def _prompt_line(line: str) -> tuple[str, dict[str, str]]:
    """kohya's sample prompt syntax: `prompt --n negative --w 512 --s 28 ...` (split at " --")."""
    parts = line.strip().split(" --")
    options = {}
    for part in parts[1:]:
        flag, _, value = part.strip().partition(" ")
        options[flag.lower()] = value.strip()
    return parts[0].strip(), options
