"""`dbspec convert kohya`: kohya-ss sd-scripts (train_db, sdxl_train, train_network, sdxl_train_network,
flux_train_network, sd3_train_network)."""

from __future__ import annotations

from pathlib import Path

from dbspec.convert.common.core import UNSUPPORTED as UNSUPPORTED_CODE
from dbspec.convert.common.core import Conversion, Legacy, require_minimums
from dbspec.convert.common.epochs import dbspec_epoch, kohya_epoch
from dbspec.convert.kohya.data import (
    KDataset,
    folder_config,
    metadata_config,
    load_dataset_config,
    optional,
    resolve,
    validate,
)
from dbspec.convert.kohya.evaluation import map_validation
from dbspec.convert.kohya.datasets import Layout, map_datasets
from dbspec.convert.kohya.subsets import preservation_needs_denoiser
from dbspec.convert.kohya.args import MINIMUM, arg_table
from dbspec.convert.kohya.inputs import KohyaArgs, KohyaRequest, kohya_args
from dbspec.convert.kohya.flow import FLOW_SCRIPTS, flow_loss_args, map_flow_loss
from dbspec.convert.kohya.group_lists import lift_kept_rates
from dbspec.convert.kohya.held_unet import UNET_PREFIX
from dbspec.convert.kohya.idle_text import file_has_clip, file_held, file_holds, file_idle
from dbspec.convert.kohya.loss import map_loss
from dbspec.convert.kohya.model import (
    file_has_first_text,
    file_has_second_text,
    file_has_text,
    map_adapter,
    map_file_text_encoders,
    map_model,
    map_precision,
)
from dbspec.convert.kohya.outputs import map_outputs
from dbspec.convert.kohya.block_lr import map_block_lr
from dbspec.convert.kohya.start import map_start
from dbspec.convert.kohya.t5_mode import map_text_encoder_mode, map_validation_text_mode
from dbspec.convert.kohya.train import (
    map_learning_rates,
    map_length,
    map_lr_schedule,
    map_optimizer,
    map_text_encoder,
    text_outputs_cached,
)
from dbspec.convert.common.launcher import report_launcher
from dbspec.convert.common.paths import PathMapper
from dbspec.diagnostics import error

# Options that never change what trains.
INERT = {
    **{
        k: "logging or console output"
        for k in (
            "console_log_level",
            "console_log_file",
            "console_log_simple",
            "log_prefix",
            "log_tracker_name",
            "wandb_run_name",
            "log_tracker_config",
            "wandb_api_key",
            "log_config",
        )
    },
    **{
        k: "attention kernel: the same maths"
        for k in ("mem_eff_attn", "xformers", "sdpa", "diffusers_xformers")
    },
    **{
        k: "caching: dbspec caches latents and text embeddings itself"
        for k in (
            "cache_latents",
            "cache_latents_to_disk",
            "vae_batch_size",
            "skip_cache_check",
            "cache_text_encoder_outputs",
            "cache_text_encoder_outputs_to_disk",
        )
    },
    **{
        k: "data loading or memory placement"
        for k in (
            "max_data_loader_n_workers",
            "persistent_data_loader_workers",
            "lowram",
            "highvram",
            "disable_mmap_load_safetensors",
            "tokenizer_cache_dir",
            "torch_compile",
            "dynamo_backend",
            "fused_backward_pass",
            "fused_optimizer_groups",
            "ddp_timeout",
            "ddp_gradient_as_bucket_view",
            "ddp_static_graph",
            "deepspeed",
            "zero_stage",
            "offload_optimizer_device",
            "offload_optimizer_nvme_path",
            "offload_param_device",
            "offload_param_nvme_path",
            "zero3_init_flag",
            "zero3_save_16bit_model",
            "fp16_master_weights_and_gradients",
        )
    },
    **{
        k: "model metadata or uploads"
        for k in (
            "metadata_title",
            "metadata_author",
            "metadata_description",
            "metadata_license",
            "metadata_tags",
            "metadata_reso",
            "metadata_arch",
            "metadata_trigger_phrase",
            "metadata_usage_hint",
            "huggingface_repo_id",
            "huggingface_repo_type",
            "huggingface_path_in_repo",
            "huggingface_token",
            "huggingface_repo_visibility",
            "save_state_to_huggingface",
            "resume_from_huggingface",
            "async_upload",
            "no_metadata",
            "training_comment",
        )
    },
    **{
        k: "dbspec checkpoints always hold the resumable training state"
        for k in (
            "save_state",
            "save_state_on_train_end",
            "save_last_n_epochs_state",
            "save_last_n_steps_state",
        )
    },
    "resume": "resuming is a run-time choice: `dbspec run spec.toml --resume`",
    "caption_extention": "the legacy spelling of caption_extension",
}
# Options that change training and have no dbspec equivalent (when set to anything but their default).
UNSUPPORTED = {
    "debug_dataset": "kohya only shows the dataset and exits",
    "output_config": "kohya writes a config and exits",
    "dataset_class": "a custom dataset class",
}


def convert_kohya(
    req: KohyaRequest, out: Path, allow_unsupported: bool = False
) -> tuple[Conversion, list[str]]:
    """The conversion and the spec's header lines. Raises InputError when an input cannot be read."""
    conv = Conversion(tool="kohya", allow_unsupported=allow_unsupported)
    paths = PathMapper(cwd=req.cwd.resolve(), out_dir=out.resolve().parent)
    ka = kohya_args(req, conv)
    a, script = ka.args, ka.script
    if not require_minimums(a, MINIMUM, conv):
        return conv, _header(ka)  # kohya stops at these; mapping on would only add noise
    lora = script in ("train_network", "sdxl_train_network", *FLOW_SCRIPTS)
    family = map_model(a, script, paths, conv)
    if lora and not map_adapter(a, paths, conv, family, script):
        _no_network(a, script, conv)
    config = _dataset_source(ka, paths, conv)
    layout = _layout(ka, config, paths, conv) if config is not None else None
    kohya_batches, dbspec_batches = _batches(layout, conv)
    length = map_length(a, kohya_batches, dbspec_batches, conv)
    if (
        lora
    ):  # networks.lora_fa / networks.oft groups at rate 0 that CyclicLR / OneCycleLR lift (group_lists.py)
        a = lift_kept_rates(a, conv)
    map_lr_schedule(a, length.total_steps, conv, script)
    map_start(a, length.steps_per_epoch, conv, _processes(ka.launcher))
    has_text, has_first = (file_has_text(a, paths), file_has_first_text(a, paths)) if lora else (True, True)
    has_second = file_has_second_text(a, paths) if lora else True
    idle_file = lora and file_idle(a, paths, script)  # a file's text-encoder modules kept at rate 0
    clip = not lora or file_has_clip(a, paths, script)  # a Flux / SD3 file of T5-XXL's modules alone
    held_file = lora and file_held(a, paths)  # networks.lora_fa's, held in the optimizer at rate 0
    text_encoder = map_text_encoder(
        a,
        script,
        length.total_steps,
        conv,
        has_text,
        has_first,
        idle_file=idle_file,
        second_modules=has_second,
        clip_modules=clip,
        held_file=held_file,
    )
    # T5-XXL's modules read the text encoders' rate too (LyCORIS's one text group), with CLIP's or alone
    t5 = bool(conv.values.get(("train", "t5"), (False, ""))[0])
    unet_file = lora and file_holds(a, paths, UNET_PREFIX)  # U-Net modules held at unet_lr 0
    map_learning_rates(
        a, script, text_encoder or t5, conv, idle_file, clip_g_modules=has_second, unet_file=unet_file
    )
    if lora:
        map_file_text_encoders(a, script, paths, conv, text_encoder, idle_file)
    if layout is not None:
        preservation_needs_denoiser(layout.parts, a, conv)
    map_optimizer(a, conv)
    if layout is not None:
        loss_args = flow_loss_args(a, script, arg_table(script), conv) if script in FLOW_SCRIPTS else a
        map_loss(loss_args, script, layout.has_class, conv)
    if script in FLOW_SCRIPTS:
        map_flow_loss(a, script, conv)
    map_precision(a, script, lora, conv)
    map_block_lr(a, script, conv)  # after the optimizer and precision: reads their optimizer.split
    if script in FLOW_SCRIPTS:
        map_text_encoder_mode(a, conv)
    map_outputs(a, script, lora, length.steps_per_epoch, paths, conv, length.total_steps)
    map_validation(a, script, layout, length.steps_per_epoch, conv)
    if script in FLOW_SCRIPTS:
        map_validation_text_mode(a, conv)
    report_launcher(ka.launcher, conv, script_sets_precision=True)
    _sweep(a, conv)
    if config is not None:
        _sweep_config(config[0], config[1], conv)
    return conv, _header(ka)


def _dataset_source(ka: KohyaArgs, paths: PathMapper, conv: Conversion) -> tuple[dict, str] | None:
    a = ka.args
    dc = a["dataset_config"]
    if dc.value:
        for key in ("train_data_dir", "reg_data_dir", "in_json"):
            if key in a and a[key].value is not None:
                conv.ignored(a[key], "dataset_config is given: kohya ignores it (and warns)")
        local = paths.local(dc.value)
        config = load_dataset_config(local, conv) if local is not None else None
        if local is None:
            conv.unreadable(dc, "a Windows path, and this machine is not Windows")
        conv.record(dc, "mapped", "datasets")
        return (config, "dataset_config") if config is not None else None
    if "in_json" in a and a["in_json"].value is not None:
        return metadata_config(a, conv), "command line"
    if a["train_data_dir"].value is None:
        conv.invalid(
            "train_data_dir", None, "command line", "kohya needs --dataset_config or --train_data_dir"
        )
        return None
    config = folder_config(a, paths, conv)
    for key in ("train_data_dir", "reg_data_dir"):
        if a[key].value is not None:
            conv.record(a[key], "mapped", "datasets")
    return (config, "folder name") if config is not None else None


def _layout(ka: KohyaArgs, config: tuple[dict, str], paths: PathMapper, conv: Conversion) -> Layout | None:
    a = ka.args
    masked = a["masked_loss"]
    kinds = validate(config[0], ka.script, bool(masked.value), conv, config[1])
    if kinds is None:
        return None
    datasets: tuple[KDataset, ...] = resolve(config[0], kinds, ka.dataset_args, config[1])
    layout = map_datasets(datasets, ka.script, bool(a["cache_latents"].value), paths, conv)
    if layout is not None:
        _text_cache_refused(a, layout, conv)
    if masked.given:
        controlnet = layout is not None and any(d.kind == "controlnet" for d, _, _ in layout.parts)
        conv.record(
            masked,
            "mapped" if controlnet else "inert",
            "datasets.masks" if controlnet else "",
            "" if controlnet else "no subset has conditioning_data_dir masks",
        )
    if a["conditioning_data_dir"].given:
        conv.inert(a["conditioning_data_dir"], "masks come from the subsets' conditioning_data_dir")
    return layout


def _text_cache_refused(a, layout: Layout, conv: Conversion) -> None:
    """The SDXL scripts assert that text-encoder outputs are not cached with captions that change per step."""
    cached = text_outputs_cached(a)
    if cached is None:
        return
    keys = ("caption_dropout_rate", "shuffle_caption", "token_warmup_step", "caption_tag_dropout_rate")
    for _, subset, _ in layout.parts:
        on = [subset.values[k] for k in keys if k in subset.values and (subset.values[k].value or 0) > 0]
        if on:
            conv.invalid(
                cached.key,
                True,
                cached.source,
                f"kohya asserts text-encoder outputs are not cached with `{on[0].key}` "
                "(captions that change per step)",
                help="drop cache_text_encoder_outputs: dbspec decides the text cache per image in the plan",
            )
            return


def _batches(layout: Layout | None, conv: Conversion) -> tuple[int | None, int | None]:
    parts = layout.epoch_parts() if layout is not None else None
    if layout is not None and parts is None and layout.has_class:
        # folders not read here; kohya balances per [[datasets]], and so does each converted dataset group
        conv.put(
            ("schedule", "balance_classes"),
            True,
            "kohya repeats reg images to match the training images of their dataset",
        )
    if not parts:
        return None, None
    kohya = kohya_epoch(parts, layout.batches)
    dbspec = dbspec_epoch(parts, layout.batches)
    if layout.has_class:
        _balance_notes(kohya, dbspec, layout, conv)
    return kohya.batches, dbspec.batches


def _balance_notes(kohya, dbspec, layout: Layout, conv: Conversion) -> None:
    conv.put(
        ("schedule", "balance_classes"),
        True,
        f"kohya repeats reg images to match the training images of their [[datasets]] "
        f"({kohya.class_samples} per epoch)",
    )
    conv.notes.append(
        "kohya: with reg images an epoch holds twice the training samples, so each step sees half "
        "as many training images as diffusers' DreamBooth; dbspec keeps kohya's step count"
    )


def _sweep(a: dict[str, Legacy], conv: Conversion) -> None:
    """Every given option that no mapping looked at: inert, or unsupported when it would change training."""
    for key, legacy in a.items():
        if not legacy.given or key in conv.reports:
            continue
        if key in UNSUPPORTED and legacy.value not in (None, False, 0, ""):
            conv.unsupported(legacy, UNSUPPORTED[key])
        elif key in INERT:
            conv.inert(legacy, INERT[key])
        else:
            conv.inert(legacy, "not used with these settings")


def _sweep_config(config: dict, source: str, conv: Conversion) -> None:
    """Every key of the dataset config gets a row, also those every subset overrides."""
    if source != "dataset_config":
        return
    general = optional(config, "general", None)
    tables = [("general", general)] if isinstance(general, dict) else []
    datasets = optional(config, "datasets", [])
    for i, d in enumerate(datasets if isinstance(datasets, list) else []):
        if isinstance(d, dict):
            tables.append((f"datasets[{i}]", d))
            subsets = optional(d, "subsets", [])
            tables += [
                (f"datasets[{i}].subsets[{j}]", s)
                for j, s in enumerate(subsets if isinstance(subsets, list) else [])
                if isinstance(s, dict)
            ]
    for where, table in tables:
        for key, value in table.items():
            name = f"{where}.{key}"
            if key != "subsets" and not key.startswith("_") and name not in conv.reports:
                conv.inert(Legacy(key=name, value=value, source=source), "overridden where it would apply")


def _header(ka: KohyaArgs) -> list[str]:
    return [
        f"Converted by `dbspec convert kohya` ({ka.script}.py) from: {'; '.join(ka.inputs) or 'defaults'}.",
        "Each value's comment names the kohya key it came from; `--report` lists what became of every key.",
    ]


def _processes(launcher: dict) -> int:
    """The process count an `accelerate launch --num_processes N` (or torchrun) line asks for; 1 without."""
    for name in ("num_processes", "nproc_per_node"):
        if name in launcher and str(launcher[name].value).isdigit():
            return int(launcher[name].value)
    return 1


def _no_network(a, script: str, conv: Conversion) -> None:
    """A network script whose network did not convert (reported) and left no adapter kind: with
    --allow-unsupported the spec would be a full fine-tune, another run than any kohya makes (and its
    exports are refused as one), so the conversion stops here, whatever --allow-unsupported says."""
    if not conv.allow_unsupported or conv.has_errors() or ("adapter", "kind") in conv.values:
        return
    module = a["network_module"]
    conv.diagnostics.append(
        error(
            UNSUPPORTED_CODE,
            f"{script}.py trains the network `{module.key}` = {module.value!r}, which did not convert (the "
            "warnings above): without it the spec would be a full fine-tune, so nothing is written",
            path=module.key,
            help="change what the warnings name, e.g. the preset file's entries, and convert again",
        )
    )
