"""compile(spec, env) -> Plan: one pass per concern, every diagnostic gathered, one failure at the end."""

from __future__ import annotations

from pathlib import Path

import attrs

from dbspec import __version__, codes
from dbspec.compiler import schedule as sched
from dbspec.compiler.adapters import adapter_plan
from dbspec.compiler.boft_widths import check_boft_widths, has_boft
from dbspec.compiler.init_weights import max_norm_file_alphas, plan_init_weights
from dbspec.compiler.caches import make_keyer, plan_cache
from dbspec.compiler.group_bounds import plan_group_bounds, table_names
from dbspec.compiler.pivotal import plan_pivotal
from dbspec.compiler.captions import settle as settle_captions
from dbspec.compiler.context import Context
from dbspec.compiler.datasets import plan_datasets
from dbspec.compiler.evaluation import hold_out, plan_evaluation
from dbspec.compiler.groups import balance_groups, batch_size_of, group_bucket_tables, plan_groups
from dbspec.compiler.disk import disk_needed, free_disk, shortfalls
from dbspec.compiler.losses import plan_loss
from dbspec.compiler.distributed import plan_distributed, sharding
from dbspec.compiler.memory import estimate_memory, prodigy_zero_start
from dbspec.compiler.cast_float import cast_float_params, keeps_float
from dbspec.compiler.modelinfo import layer_params
from dbspec.compiler.evaluation import select_weights
from dbspec.compiler.fused import fused_for
from dbspec.compiler.ggpo import check_ggpo
from dbspec.compiler.layout_names import check_layout_names
from dbspec.compiler.models import check_exports, check_weighted_captions, plan_model, sampler
from dbspec.compiler.scaled_pos import plan_scaled_pos_embed
from dbspec.compiler.text_masks import check_text_masks
from dbspec.compiler.preview import plan_preview
from dbspec.compiler.refine import check_refiner_options, plan_refine, refines
from dbspec.families import family_spec
from dbspec.compiler.optimizers import (
    adafactor_plan,
    ademamix_plan,
    came_plan,
    dadapt_plan,
    prodigy_plan,
    prodigy_plus_plan,
    min_8bit_size,
    relative_step,
    schedulefree_plan,
)
from dbspec.compiler.torch_schedules import torch_schedule_plan
from dbspec.compiler.split import with_split_chunks
from dbspec.compiler.start import requested_start, start_plan
from dbspec.compiler.optimizer_blocks import optimizer_blocks
from dbspec.compiler.origins import derived, spec_origins
from dbspec.compiler.precision import any_text_encoder_trains, idle_text_encoders, plan_precision
from dbspec.compiler.rules import (
    eager_attention_fits,
    denoiser_norms_need_a_unet,
    mixed_kinds_family,
    dadapt_group_rates,
    hit_to_diagnostic,
    kept_parts_move,
    run_environment_rules,
    run_plan_rules,
    steps_known,
)
from dbspec.diagnostics import Diagnostic, DiagnosticError, raise_if_errors, render_text
from dbspec.spec.migrate import user_spelling
from dbspec.plan.model import (
    PLAN_VERSION,
    denoiser_held,
    BucketPlan,
    CheckpointPlan,
    EmaPlan,
    LoggingPlan,
    LossPlan,
    OptimizerPlan,
    Plan,
    SchedulePlan,
    TargetEnv,
    PreviewPlan,
    ValidationPlan,
)
from dbspec.spec.check import Checked, anchor
from dbspec.spec.fields import spec_leaves
from dbspec.spec.model import DyloraAdapter, LoraAdapter, LowRankAdapter, Spec
from dbspec.spec.paths import dotted


def compile_plan(checked: Checked, env: TargetEnv) -> tuple[Plan, tuple[Diagnostic, ...]]:
    """Compile a checked spec for `env`: the plan and its warnings. Raises DiagnosticError holding every
    error and warning."""
    if checked.spec is None or checked.raw is None or any(d.severity == "error" for d in checked.diagnostics):
        raise DiagnosticError(checked.diagnostics)
    ctx = Context(spec=checked.spec, raw=checked.raw, env=env, diagnostics=list(checked.diagnostics))
    try:
        return _compile(ctx)
    except OSError as exc:  # a path the spec names cannot even be probed (name too long, no permission)
        ctx.diagnostics.append(path_error(ctx, exc))
        raise DiagnosticError(ctx.diagnostics) from None


def path_error(ctx: Context, exc: OSError) -> Diagnostic:
    """DBS309 on the spec key whose value is part of the failing path (the longest such value)."""
    name = str(exc.filename or "")
    given = [
        (path, value)
        for path, value, _ in spec_leaves(ctx.spec)
        if isinstance(value, str) and value and value in name and ctx.raw.given(path)
    ]
    path = max(given, key=lambda item: len(item[1]))[0] if given else ()
    shown = name if len(name) <= 80 else name[:77] + "..."
    span = (ctx.raw.value_span(path) if path else None) or anchor(ctx.raw, None)
    return Diagnostic(
        code="DBS309",
        severity="error",
        message=f"cannot use `{shown}` as a path: {exc.strerror or exc}",
        path=dotted(path),
        span=span,
        help="shorten the path, or check its permissions",
    )


def _compile(ctx: Context) -> tuple[Plan, tuple[Diagnostic, ...]]:
    model = plan_model(ctx)
    check_exports(ctx, model)
    check_refiner_options(ctx, model)
    check_weighted_captions(ctx, model)
    check_text_masks(ctx, model)
    precision = plan_precision(ctx, model)
    _check_eager_attention(ctx, model)
    _check_mixed_kinds_family(ctx, model)
    _check_group_rates(ctx, model)
    keyer = make_keyer(ctx, model, precision)
    held = hold_out(ctx, plan_datasets(ctx, model, keyer))
    datasets = balance_groups(ctx, held.datasets)
    buckets = group_bucket_tables(ctx, datasets)
    v = ctx.spec.validation
    schedule = _schedule(
        ctx, datasets, buckets, validate=v.refine_images > 0 if refines(model) else bool(v.prompts)
    )
    caption_notes: tuple[str, ...] = ()
    if schedule is not None:
        _plan_rules(ctx, schedule.total_steps)
        datasets, caption_notes = settle_captions(datasets, schedule.total_steps, keyer.empty_key())
    loss = plan_loss(ctx, model, datasets)
    model = plan_scaled_pos_embed(ctx, model, datasets, buckets)
    _environment_rules(ctx)
    cache = plan_cache(ctx, model, datasets, caption_notes)
    init = (
        plan_init_weights(ctx, model.family, precision.components, lambda: model_layers(model, precision))
        if model and precision
        else ("", 0)
    )
    evaluation = (
        plan_evaluation(ctx, held, datasets, schedule, loss.noise, len(ctx.spec.validation.prompts))
        if schedule is not None and loss is not None
        else None
    )
    preview = plan_preview(ctx, model)
    pivotal = plan_pivotal(ctx, model)
    if schedule is not None and model is not None:  # schedule.base_lr / max_lr tables: one value per group
        optimizer = optimizer_plan(ctx.spec, model, ctx.raw.given)
        schedule = plan_group_bounds(ctx, schedule, model, precision, optimizer, pivotal)
    if (
        model is not None and precision is not None and has_boft(ctx.spec.adapter)
    ):  # LyCORIS's block split (a BOFT adapter's layers, or a run's boft blocks')
        boft = adapter_plan(
            ctx.spec.adapter,
            model.family,
            precision.components,
            targets_given=ctx.raw.given(("adapter", "denoiser_targets")),
        )
        check_boft_widths(ctx, model, boft)
    raise_if_errors(ctx.diagnostics)
    assert model is not None and schedule is not None and evaluation is not None
    memory = _memory(ctx, model, precision, buckets, loss)
    if not memory.fits:
        ctx.report(
            "DBS350",
            "warning",
            f"estimated memory {_gib(memory.total)} exceeds the target's {_gib(memory.available)}",
            ("precision",),
            help="enable precision.gradient_checkpointing, lower schedule.batch_size, use LoRA or adamw8bit",
        )
    target = _check_disk(ctx, precision, memory, schedule, datasets, cache)
    plan = _assemble(
        ctx, target, model, datasets, buckets, schedule, loss, precision, cache, memory, init, preview
    )
    plan = attrs.evolve(
        plan, evaluation=evaluation, pivotal=pivotal, distributed=plan_distributed(ctx.spec.distributed)
    )
    refine = plan_refine(ctx, model, datasets)
    if refine is not None:
        plan = attrs.evolve(plan, validation=attrs.evolve(plan.validation, refine=refine))
    raise_if_errors(ctx.diagnostics)  # the checks while assembling (fused layers, GGPO, disk, refiner)
    return plan, tuple(sorted(ctx.diagnostics, key=Diagnostic.sort_key))


def _schedule(
    ctx: Context, datasets, buckets: tuple[BucketPlan, ...], *, validate: bool
) -> SchedulePlan | None:
    batches = sum(b.batches_per_epoch for b in buckets)
    if batches == 0:
        # Data errors (missing folders, bad images, captions or masks) already say why; this only adds noise.
        if not any(d.severity == "error" and d.code.startswith("DBS3") for d in ctx.diagnostics):
            ctx.report(
                "DBS332",
                "error",
                "no image will train: every dataset is empty after skipping problem files",
                ("datasets",),
            )
        return None
    for b in buckets:
        if b.short:
            n = b.instance_samples + b.class_samples
            where = f" of group `{b.group}`" if b.group else ""
            ctx.report(
                "DBS333",
                "warning",
                f"bucket {b.size[0]}x{b.size[1]}{where} holds {n} sample(s), fewer than "
                f"batch_size {batch_size_of(ctx, b.group)}: they train as one smaller batch each epoch "
                "(not dropped)",
                _batch_size_key(ctx, b.group),
            )
    try:
        return _compute(ctx, batches, buckets, validate)
    except ValueError as exc:
        ctx.report("DBS334", "error", f"the schedule cannot be computed: {exc}", ("schedule",))
        return None


def _batch_size_key(ctx: Context, group: str) -> tuple:
    """Where a group's batch size is written: its [[groups]] batch_size, or schedule.batch_size."""
    for index, g in enumerate(ctx.spec.groups):
        if group and g.name == group and g.batch_size:
            return ("groups", index, "batch_size")
    return ("schedule", "batch_size")


def _compute(ctx: Context, batches: int, buckets: tuple[BucketPlan, ...], validate: bool) -> SchedulePlan:
    s = ctx.spec.schedule
    streams = s.noise_streams
    if streams == "auto":
        streams = "micro_batch" if ctx.env.processes > 1 else "process"
    plan = attrs.evolve(_compute_schedule(ctx, batches, buckets, validate), noise_streams=streams)
    return _with_start(ctx, plan)


def _with_start(ctx: Context, plan: SchedulePlan) -> SchedulePlan:
    """schedule.start_step / start_epoch settled (DBS393: a start at or past the run's end, kohya's
    `max_train_steps should be greater than initial step`)."""
    s = ctx.spec.schedule
    start = requested_start(s, plan.steps_per_epoch)
    if start >= plan.total_steps:
        key = "start_step" if s.start_step else "start_epoch"
        given = (
            f"schedule.start_step = {s.start_step}"
            if s.start_step
            else f"schedule.start_epoch = {s.start_epoch}"
        )
        ctx.report(
            "DBS393",
            "error",
            f"{given} starts at step {start}, not below the run's {plan.total_steps} steps "
            f"({plan.steps_per_epoch} per epoch)",
            ("schedule", key),
            codes.help("DBS393"),
        )
        return plan
    return attrs.evolve(plan, start=start_plan(s, plan))


def _compute_schedule(
    ctx: Context, batches: int, buckets: tuple[BucketPlan, ...], validate: bool
) -> SchedulePlan:
    s, spec = ctx.spec.schedule, ctx.spec
    return sched.compute_schedule(
        batches_per_epoch=batches,
        instance_samples=sum(b.instance_samples for b in buckets),
        class_samples=sum(b.class_samples for b in buckets),
        batch_size=s.batch_size,
        largest_batch_size=max(batch_size_of(ctx, b.group) for b in buckets),
        accumulation=s.accumulation,
        processes=ctx.env.processes,
        steps=s.steps,
        epochs=s.epochs,
        lr=spec.optimizer.lr,
        lr_schedule=sched.ADAFACTOR_SCHEDULE if relative_step(spec.optimizer) else s.lr_schedule,
        warmup_init=spec.optimizer.warmup_init,
        warmup_steps=s.warmup_steps,
        cycles=s.cycles,
        power=s.power,
        min_lr_ratio=s.min_lr_ratio,
        decay_steps=s.decay_steps,
        t_max=s.t_max,
        torch=torch_schedule_plan(s),
        cosine_cycles=s.cosine_cycles,
        lr_end=s.lr_end,
        warmup_type=s.warmup_type,
        decay_type=s.decay_type,
        eta_min=s.eta_min,
        t_mult=s.t_mult,
        text_encoder_stop_step=spec.train.text_encoder_stop_step if any_text_encoder_trains(spec) else 0,
        checkpoint_every=spec.checkpoints.every,
        validate_every=spec.validation.every,
        validate=validate,
        seed=s.seed,
    )


def _plan_rules(ctx: Context, total_steps: int) -> None:
    """The "plan" rules, now that the step count is known, unless the check already ran them
    (spec gave steps)."""
    if steps_known(ctx.spec):
        return
    ctx.diagnostics += [
        hit_to_diagnostic(ctx.raw, hit) for hit in run_plan_rules(ctx.spec, ctx.raw.given, total_steps)
    ]


def _environment_rules(ctx: Context) -> None:
    ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in run_environment_rules(ctx.spec, ctx.env)]


def _excluded_layers(adapter, model, precision) -> dict[str, dict[str, int]]:
    """A full adapter with `exclude`: each adapted component's layer sizes from a diffusers folder's
    safetensors headers (modelinfo.layer_params), so its count leaves the excluded layers' copies out; empty
    otherwise (no files to read: the count stays the whole component's, an upper bound)."""
    if getattr(adapter, "kind", "") != "full" or not getattr(adapter, "exclude", ()):
        return {}
    return model_layers(model, precision)


def model_layers(model, precision) -> dict[str, dict[str, int]]:
    """Each adapted component's layer sizes by module path from a diffusers folder's safetensors headers
    (modelinfo.layer_params); empty where there are no such files to read."""
    if not model.resolved or model.source not in ("diffusers", "hub") or not model.path:
        return {}
    folders = {"unet": family_spec(model.family).denoiser}
    return {
        c.name: layer_params(Path(model.path) / folders.get(c.name, c.name))
        for c in precision.components
        if c.trainable == "lora"
    }


def _memory(ctx: Context, model, precision, buckets, loss: LossPlan):
    spec = ctx.spec
    trainable = {c.name: c.params for c in precision.components if c.trainable == "full"}
    held = zero = 0
    cast_float = (0, True)
    if isinstance(spec.adapter, LowRankAdapter):
        # the adapter's own count: its targets (the family's when unset) and shared down-projections
        planned = adapter_plan(
            spec.adapter,
            model.family,
            precision.components,
            targets_given=ctx.raw.given(("adapter", "denoiser_targets")),
            layers=_excluded_layers(spec.adapter, model, precision),
        )
        trainable["lora"] = sum(planned.params.values())
        if denoiser_held(
            getattr(spec.adapter, "blocks", ())
        ):  # kohya's U-Net modules at unet_lr 0: no optimizer state
            held = planned.params["unet"] if "unet" in planned.params else 0
        zero = prodigy_zero_start(spec.adapter, trainable["lora"] - held)
        cast_float = _cast_float(planned, model, precision)
    largest = max((b.size for b in buckets), key=lambda s: s[0] * s[1])
    return estimate_memory(
        components=precision.components,
        trainable_params=trainable,
        optimizer=spec.optimizer.kind,
        momentum=_first_moment(spec.optimizer),
        batch_size=max(batch_size_of(ctx, b.group) for b in buckets),  # the largest batch of any group
        max_bucket=largest,
        family=model.family,
        gradient_checkpointing=spec.precision.gradient_checkpointing,
        mixed=precision.mixed,
        ema=spec.ema.enabled,
        ema_offload=spec.ema.offload,
        teacher=loss.teacher,
        available=ctx.env.memory_bytes,
        quantize_backend=precision.quantize_backend,
        sharding=sharding(plan_distributed(spec.distributed), ctx.env.processes),
        t5_tokens=model.t5_max_length,
        stochastic_rounding=precision.stochastic_rounding,
        adapter_dtype=precision.weights,
        slice_p=spec.optimizer.slice_p if spec.optimizer.kind == "prodigy" else 1,
        held_params=held,
        zero_start=zero,
        cast_float=cast_float,
    )


def _cast_float(planned, model, precision) -> tuple[int, bool]:
    """The denoiser's full-algo layers the cast backend leaves float (compiler/cast_float.py), their sizes
    read from the model's files only where such layers exist."""
    unet = next((c for c in precision.components if c.name == "unet"), None)
    backend = precision.quantize_backend
    if not keeps_float(planned, unet, backend):  # nothing kept float: no files read
        return 0, True
    return cast_float_params(planned, unet, backend, model_layers(model, precision).get("unet", {}))


def _first_moment(o) -> float:
    """What decides whether the optimizer keeps a first moment (estimate_memory's `momentum`): SGD's
    momentum, Adafactor's beta1, Prodigy's betas[0] (prodigyopt keeps no exp_avg at 0)."""
    if o.kind == "adafactor":
        return o.beta1
    if o.kind == "prodigy":
        return o.betas[0]
    return o.momentum


def _check_disk(ctx: Context, precision, memory, schedule, datasets, cache) -> TargetEnv:
    """DBS351 per device lacking room; the target with what was measured (unchanged when disk is not
    measurable here, e.g. with --target: the plan is for another machine)."""
    if not ctx.env.measure_disk:
        return ctx.env
    c = ctx.spec.checkpoints
    need = disk_needed(
        precision=precision,
        memory=memory,
        schedule=schedule,
        keep=c.keep,
        keep_state=c.keep_state,
        save_precision=c.save_precision,
        lora=isinstance(ctx.spec.adapter, LowRankAdapter),
        datasets=datasets,
        cache=cache,
    )
    output, cached = free_disk(ctx.resolve(ctx.spec.output.dir)), free_disk(ctx.cache_dir)
    for short in shortfalls(need, output, cached):
        _report_disk(ctx, short, need)
    shared = output is not None and cached is not None and output.device == cached.device
    return attrs.evolve(
        ctx.env,
        free_disk_bytes=output.free if output else 0,
        cache_free_disk_bytes=cached.free if cached else 0,
        shared_disk=shared,
    )


_DISK_WRITES = {"output.dir": "checkpoints and final weights", "cache.dir": "latent cache"}
_DISK_HELP = {
    "output.dir": 'lower checkpoints.keep, use checkpoints.save_precision = "fp16"',
    "cache.dir": "set cache.latents = false",
}


def _report_disk(ctx: Context, short, need) -> None:
    parts = {"output.dir": need.output, "cache.dir": need.cache}
    keys = [key for key in short.keys if parts[key]]  # a shared disk: name only the folders that get bytes
    what = " + ".join(f"{_size(parts[key])} to {key} ({_DISK_WRITES[key]})" for key in keys)
    if len(keys) > 1:  # both folders on one device: their needs add up
        what += f" = {_size(short.needed)} on one disk"
    remedies = ", ".join(_DISK_HELP[key] for key in keys)
    ctx.report(
        "DBS351",
        "warning",
        f"the run may write {what}, but `{short.folder}` has {_size(short.free)} free",
        tuple(keys[0].split(".")),
        help=f"{remedies}, point {' and '.join(keys)} at a disk with more room, or free disk space",
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _size(n: int) -> str:
    """GiB, MiB or KiB: a small run's needs would all read "0.0 GiB"."""
    if n >= 2**30:
        return _gib(n)
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _origins(ctx: Context, precision) -> dict:
    """Spec origins, with the values the compiler computed (or resolved from "auto") marked derived."""
    spec = ctx.spec
    origins = spec_origins(spec, ctx.raw)
    origins["schedule.total_steps"] = derived(
        "schedule.steps" if spec.schedule.steps else "epochs x steps per epoch"
    )
    if spec.schedule.steps:
        origins["schedule.epochs"] = derived("total steps / steps per epoch")
    if spec.precision.mixed != precision.mixed:  # "auto", or a bf16 fallback
        origins["precision.mixed"] = derived(precision.reason)
    for key in ("family", "prediction"):
        if getattr(spec.model, key) == "auto":
            origins[f"model.{key}"] = derived("detected")
    return origins


def _assemble(
    ctx: Context,
    target: TargetEnv,
    model,
    datasets,
    buckets,
    schedule,
    loss,
    precision,
    cache,
    memory,
    init,
    preview: PreviewPlan | None = None,
) -> Plan:
    spec = ctx.spec
    adapter = adapter_plan(
        spec.adapter,
        model.family,
        precision.components,
        targets_given=ctx.raw.given(("adapter", "denoiser_targets")),
        layers=_excluded_layers(spec.adapter, model, precision),
    )
    if init[0]:
        partial = getattr(spec.adapter, "init_partial", False)
        scale = getattr(spec.adapter, "init_scale", 1.0)  # full: the file's diff times it
        alphas = getattr(spec.adapter, "init_alpha", "match")  # lora: the file's alphas ignored, as kohya
        adapter = attrs.evolve(
            adapter,
            init_weights=init[0],
            init_layers=init[1],
            init_partial=partial,
            init_scale=scale,
            init_alpha=alphas,
            # kohya's max-norm reads each module's alpha buffer, the file's under init_alpha "ignore"
            max_norm_alphas=max_norm_file_alphas(spec.adapter, init[0]),
        )
    adapter = fused_for(ctx, model, adapter)  # adapter.fused_projections: the shared down-projections
    check_ggpo(ctx, model, adapter)  # adapter.ggpo: Flux only (DBS396)
    check_layout_names(ctx, model)  # targets and block patterns naming no layer of the public model (DBS607)
    v, c, e = spec.validation, spec.checkpoints, spec.ema
    idle = idle_text_encoders(spec, model.family)  # train.text_encoder_idle: adapted, never stepped
    first = next(d for d in spec.datasets if d.role == "instance")
    origins = _origins(ctx, precision)
    warnings = tuple(
        render_text(user_spelling(d, ctx.raw.renamed), ctx.raw.sources)
        for d in sorted(ctx.diagnostics, key=lambda d: d.sort_key())
    )
    return Plan(
        plan_version=PLAN_VERSION,
        dbspec_version=__version__,
        spec_file=str(ctx.raw.path),
        spec_dir=str(ctx.spec_dir),
        target=target,
        model=model,
        adapter=adapter,
        train_denoiser=spec.train.denoiser,
        train_text_encoder=_text_encoders_train(model, precision, idle),
        text_encoder_mode=spec.train.text_encoder_mode,
        idle_text_encoders=idle,
        datasets=datasets,
        buckets=buckets,
        groups=plan_groups(ctx, datasets, buckets),
        schedule=schedule,
        loss=loss,
        precision=precision,
        optimizer=with_split_chunks(
            optimizer_plan(spec, model, ctx.raw.given), model, precision, bool(spec.pivotal.tokens)
        ),
        cache=cache,
        validation=ValidationPlan(
            prompts=tuple(v.prompts),
            negative_prompt=v.negative_prompt,
            steps=schedule.validation_steps,
            scheduler=sampler(ctx, model, v.scheduler, ("validation", "scheduler")),
            inference_steps=v.steps,
            guidance=v.guidance,
            images_per_prompt=v.images_per_prompt,
            seed=v.seed,
            size=(first.resolution, first.resolution_height or first.resolution),
            preview=preview,
            text_encoder_mode=v.text_encoder_mode,
        ),
        checkpoints=CheckpointPlan(
            dir=str(ctx.resolve(spec.output.dir)),
            name=spec.output.name,
            steps=schedule.checkpoint_steps,
            keep=c.keep,
            save_precision=c.save_precision,
            exports=tuple(c.exports),
            select=c.select,
            select_weights=select_weights(c),
            keep_state=c.keep_state,
            export_format=c.export_format,
        ),
        ema=EmaPlan(
            enabled=e.enabled, decay=e.decay, warmup=e.warmup, update_every=e.update_every, offload=e.offload
        ),
        logging=logging_plan(spec, ctx.resolve(spec.output.dir)),
        memory=memory,
        origins=origins,
        warnings=warnings,
    )


def logging_plan(spec: Spec, out: Path) -> LoggingPlan:
    g = spec.logging
    if not g.wandb:
        return LoggingPlan(every=g.every, tensorboard=g.tensorboard, report=g.report)
    return LoggingPlan(
        every=g.every,
        tensorboard=g.tensorboard,
        report=g.report,
        wandb=True,
        wandb_project=g.wandb_project,
        wandb_run_name=g.wandb_run_name or out.name,
        wandb_entity=g.wandb_entity,
    )


def optimizer_plan(spec: Spec, model, given) -> OptimizerPlan:
    """The optimizer's settings as the plan records them (`given`: whether the spec gives a key)."""
    o = spec.optimizer
    denoiser_moves, text_moves = kept_parts_move(spec, given)  # a kept part nothing moves is held
    named = table_names(spec.schedule)
    second = _second_text_encoder_lr(o, model, _second_trains(spec, model), "text_encoder_2" in named)
    return OptimizerPlan(
        kind=o.kind,
        lr=o.lr,
        text_encoder_lr=o.text_encoder_lr,
        text_encoder_2_lr=second,
        text_encoder_3_lr=_third_text_encoder_lr(spec, model, second, "text_encoder_3" in named),
        weight_decay=o.weight_decay,
        betas=tuple(o.betas),
        eps=o.eps,
        momentum=o.momentum,
        nesterov=o.nesterov,
        loraplus_denoiser_ratio=_loraplus(spec, "loraplus_denoiser_ratio"),
        loraplus_text_encoder_ratio=_loraplus(spec, "loraplus_text_encoder_ratio"),
        loraplus_held=_loraplus_held(spec),
        max_grad_norm=o.max_grad_norm,
        text_encoder_at_zero=o.text_encoder_at_zero if text_moves else "hold",
        denoiser_at_zero=o.denoiser_at_zero if denoiser_moves else "hold",
        group_order=o.group_order,
        clip_mode=o.clip_mode,
        dadapt=dadapt_plan(o),
        prodigy=prodigy_plan(o),
        adafactor=adafactor_plan(o),
        ademamix=ademamix_plan(o),
        schedulefree=schedulefree_plan(o),
        came=came_plan(o),
        prodigy_plus=prodigy_plus_plan(o),
        implementation=o.implementation,
        decoupled_weight_decay=o.decoupled_weight_decay and o.kind == "radam",
        amsgrad=o.amsgrad and o.kind == "adamw",
        dampening=o.dampening if o.kind == "sgd" else 0.0,
        min_8bit_size=min_8bit_size(o),
        split=o.split,
        split_order=_split_order(spec, model),
        split_train=o.split_train if o.split > 1 else "all",  # DBS554 refuses them without a split
        split_first_step=o.split_first_step if o.split > 1 else "step",
        blocks=optimizer_blocks(spec),
    )


def _split_order(spec: Spec, model) -> str:
    """optimizer.split: the denoiser's tensors in the original layout's order where kohya trains a UNet of
    that layout (SDXL) and the whole denoiser trains; else the model's own registration order."""
    original = model is not None and family_spec(model.family).kohya.original_unet_names
    full = spec.adapter.kind == "none" and spec.train.denoiser
    return "original" if spec.optimizer.split > 1 and original and full else "registration"


def _text_encoders_train(model, precision, idle: tuple[str, ...] = ()) -> bool:
    """Whether any text encoder trains (SDXL's second alone too): the per-component plan decides (the idle
    ones carry the adapter without training)."""
    names = set(family_spec(model.family).text_encoder_names) - set(idle)
    return any(c.trainable != "frozen" for c in precision.components if c.name in names)


def _second_trains(spec: Spec, model) -> bool:
    """Whether the family's second text encoder trains: train.t5 where it is T5-XXL (Flux), else
    train.text_encoder_2."""
    second = family_spec(model.family).text_encoders[1:2] if model is not None else ()
    if second and second[0].tokenizer_class.startswith("T5"):
        return spec.train.t5
    return spec.train.text_encoder_2


def _second_text_encoder_lr(o, model, trains: bool = True, named: bool = False) -> float | None:
    """The second text encoder's own rate: only for a family with two, when it trains, and when it differs
    or a schedule.base_lr / max_lr table names `text_encoder_2` (its own group at the same rate: kohya's
    per-group lists may give the encoders their own bounds)."""
    two = trains and model is not None and len(family_spec(model.family).text_encoders) > 1
    return o.text_encoder_2_lr if two and (named or o.text_encoder_2_lr != o.text_encoder_lr) else None


def _third_text_encoder_lr(spec: Spec, model, second: float | None, named: bool = False) -> float | None:
    """The third text encoder's own rate (SD3's T5-XXL with train.t5, kohya lora_sd3's text_encoder_lr[2]):
    only when it trains and differs from the rate of the second's group (text_encoder_2_lr when that has its
    own group, else text_encoder_lr), which it joins otherwise, or when a schedule table names
    `text_encoder_3`."""
    if model is None or not spec.train.t5:
        return None
    encoders = family_spec(model.family).text_encoders
    if len(encoders) < 3 or not family_spec(model.family).t5_lora:
        return None
    if not encoders[2].tokenizer_class.startswith("T5"):
        return None
    o = spec.optimizer
    shared = second if second is not None else o.text_encoder_lr
    return o.text_encoder_3_lr if named or o.text_encoder_3_lr != shared else None


def _loraplus(spec, name: str) -> float:
    """A LoRA+ ratio of the plan: the LoRA or DyLoRA adapter's, 0 (off) for other kinds."""
    return (
        float(getattr(spec.adapter, name)) if isinstance(spec.adapter, (LoraAdapter, DyloraAdapter)) else 0.0
    )


def _loraplus_held(spec) -> tuple[str, ...]:
    """The groups whose LoRA+ ratio is 0 with adapter.loraplus_zero "held" (kohya skips the up group at rate
    lr x 0): their up matrices stay out of the optimizer (runtime/optim.py)."""
    if getattr(spec.adapter, "loraplus_zero", "off") != "held":
        return ()
    names = (("denoiser", "loraplus_denoiser_ratio"), ("text_encoder", "loraplus_text_encoder_ratio"))
    return tuple(group for group, name in names if not _loraplus(spec, name))


def _check_mixed_kinds_family(ctx: Context, model) -> None:
    """Blocks of several kinds (DBS578) and U-Net norm offsets (DBS587) on a detected family (`dbspec check`
    checked a spelled-out one)."""
    if model is None or ctx.spec.model.family != "auto":
        return
    detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
    for check in (mixed_kinds_family, denoiser_norms_need_a_unet):
        ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in check(detected, ctx.raw.given)]


def _check_group_rates(ctx: Context, model) -> None:
    """D-Adaptation's and Prodigy's group rates (DBS274) over the detected family's text-encoder groups
    (`dbspec check` saw only what every family agrees on): its diagnostics replace the check's."""
    if model is None or ctx.spec.model.family != "auto":
        return
    detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
    before = [
        user_spelling(hit_to_diagnostic(ctx.raw, hit), ctx.raw.renamed)
        for hit in dadapt_group_rates(ctx.spec, ctx.raw.given)
    ]
    after = [hit_to_diagnostic(ctx.raw, hit) for hit in dadapt_group_rates(detected, ctx.raw.given)]
    if before != after:
        ctx.diagnostics[:] = [d for d in ctx.diagnostics if d not in before] + after


def _check_eager_attention(ctx: Context, model) -> None:
    """precision.attention = "eager" on a detected family (`dbspec check` checked a spelled-out one)."""
    if model is None or ctx.spec.precision.attention != "eager" or ctx.spec.model.family != "auto":
        return
    detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
    ctx.diagnostics += [
        hit_to_diagnostic(ctx.raw, hit) for hit in eager_attention_fits(detected, ctx.raw.given)
    ]
