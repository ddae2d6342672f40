"""diffusers' checkpoints, validation, logging, output folder and seed -> the matching spec tables."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.common.wandb import PROJECT, WANDB

Args = dict[str, Legacy]


def map_outputs(
    a: Args, script: str, lora: bool, per_epoch: int | None, paths: PathMapper, conv: Conversion
) -> None:
    out = a["output_dir"]
    conv.mapped(out, ("output", "dir"), paths.for_spec(out.value))
    every, limit = a["checkpointing_steps"], a["checkpoints_total_limit"]
    conv.mapped(every, ("checkpoints", "every"), every.value)
    conv.mapped(
        limit,
        ("checkpoints", "keep"),
        limit.value or 0,
        comment=conv.comment(limit, "None keeps every checkpoint") if limit.value is None else "",
    )
    if lora and "output_kohya_format" in a and a["output_kohya_format"].value:
        conv.mapped(a["output_kohya_format"], ("checkpoints", "exports"), ["kohya_lora"])
    seed = a["seed"]
    if seed.value is not None:
        conv.mapped(seed, ("schedule", "seed"), seed.value)
    else:
        conv.record(seed, "defaulted", "schedule.seed", "diffusers draws a random seed; dbspec uses 0")
    _validation(a, script, per_epoch, conv)
    _report_to(a, script, conv)


# accelerator.init_trackers' project name (the W&B project) per script
TRACKER_NAMES = {
    "train_dreambooth": "dreambooth",
    "train_dreambooth_lora": "dreambooth-lora",
    "train_dreambooth_lora_sdxl": "dreambooth-lora-sd-xl",
    "train_dreambooth_lora_flux": "dreambooth-flux-dev-lora",
    "train_dreambooth_lora_sd3": "dreambooth-sd3-lora",
    "train_dreambooth_sd3": "dreambooth-sd3",
}


def _report_to(a: Args, script: str, conv: Conversion) -> None:
    """accelerate's trackers: tensorboard, wandb, or "all" (every tracker installed)."""
    report = a["report_to"]
    conv.mapped(report, ("logging", "tensorboard"), report.value in ("tensorboard", "all"))
    if report.value in ("wandb", "all"):
        conv.mapped(report, WANDB, True)
        project = TRACKER_NAMES[script]
        if script == "train_dreambooth_lora_sdxl" and "playground" in str(
            a["pretrained_model_name_or_path"].value
        ):
            project = "dreambooth-lora-playground"
        conv.put(PROJECT, project, f"diffusers {script}.py's tracker name")
    if report.value == "wandb" and a["hub_token"].value is not None:
        conv.invalid(
            "hub_token",
            "(a token)",
            a["hub_token"].source,
            "diffusers refuses --report_to=wandb with --hub_token (the token would be exposed)",
            help="remove --hub_token (log in with `hf auth login`)",
        )
    if report.value == "all":
        conv.differs(
            report,
            "accelerate's all also logs to any other tracker installed (Comet, MLflow, ...); dbspec logs to "
            "TensorBoard and Weights & Biases",
        )
    elif report.value not in ("tensorboard", "wandb"):
        conv.differs(report, "dbspec logs to TensorBoard and Weights & Biases only")


def _validation(a: Args, script: str, per_epoch: int | None, conv: Conversion) -> None:
    prompt = a["validation_prompt"]
    interval = a["validation_steps"] if "validation_steps" in a else a["validation_epochs"]
    if not prompt.value:
        for key in ("validation_steps", "validation_epochs", "num_validation_images", "validation_scheduler"):
            if key in a and a[key].given:
                conv.inert(a[key], "no --validation_prompt")
        return
    conv.mapped(prompt, ("validation", "prompts"), [prompt.value])
    conv.mapped(
        a["num_validation_images"], ("validation", "images_per_prompt"), a["num_validation_images"].value
    )
    if interval.key == "validation_steps":
        conv.mapped(interval, ("validation", "every"), interval.value)
    elif per_epoch is not None:
        conv.mapped(
            interval,
            ("validation", "every"),
            interval.value * per_epoch,
            comment=conv.comment(interval, f"{interval.value} x {per_epoch} steps per epoch"),
        )
        if interval.value > 1:
            first = [per_epoch * (1 + k * interval.value) for k in range(3)]
            conv.differs(
                interval,
                f"{script}.py validates at the end of every epoch whose 0-based index is a multiple of "
                f"{interval.value} (after the 1st, {_nth(interval.value + 1)}, "
                f"{_nth(2 * interval.value + 1)} epoch: "
                f"steps {', '.join(map(str, first))}, ...) and once more after training; dbspec every "
                f"{interval.value * per_epoch} steps and at the end",
            )
    else:
        conv.depends(
            interval.key,
            "the images could not be counted: epochs could not become steps; validation runs at the end only",
        )
        conv.record(interval, "differs", "validation.every")
    scheduler = a["validation_scheduler"] if "validation_scheduler" in a else None
    if scheduler is not None and scheduler.value == "DDPMScheduler":
        conv.differs(scheduler, "dbspec validates with DPM-Solver++ here, not DDPM")
    else:
        conv.put(
            ("validation", "scheduler"), "dpmpp", f"{conv.tool} validates with DPMSolverMultistepScheduler"
        )
        if scheduler is not None:
            conv.record(scheduler, "mapped", "validation.scheduler")
    conv.put(("validation", "steps"), 25, f"{conv.tool} validates with 25 inference steps")
    if script.endswith("sdxl"):
        conv.put(("validation", "guidance"), 5.0, "the SDXL pipeline's default guidance")
    seed = a["seed"]
    if seed.value:
        conv.put(("validation", "seed"), seed.value, f"{conv.tool} seeds validation with --seed")


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
