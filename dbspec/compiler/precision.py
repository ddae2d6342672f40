"""Precision pass: the mixed-precision mode resolved against the target, and per-component dtypes."""

from __future__ import annotations


from dbspec import codes
from dbspec.compiler.context import Context
from dbspec.families import family_spec, t5_text_encoders, trainable_text_encoders
from dbspec.plan.model import CompilePlan, ComponentPlan, ModelPlan, PrecisionPlan
from dbspec.spec.model import LowRankAdapter

FP8_MIN_CC = (8, 9)


def resolve_mixed(ctx: Context) -> tuple[str, str]:
    """(mode, reason) for precision.mixed on the target device."""
    want, env = ctx.spec.precision.mixed, ctx.env
    if want == "auto" and ctx.spec.precision.weights == "bf16" and env.bf16:
        return "bf16", "auto: the weights are bf16 (precision.weights), so autocast computes in bf16 too"
    if want == "auto" and ctx.spec.precision.weights == "fp16":
        if env.device == "cpu":
            _warn_fp16_on_cpu(ctx)
        return "fp16", "auto: the weights are fp16 (precision.weights), so autocast computes in fp16 too"
    if want == "auto":
        if env.device == "cpu":
            return "no", "auto: the CPU trains in fp32 (bf16 autocast is slower there)"
        if env.bf16:
            return "bf16", f"auto: {env.device} supports bf16"
        return "fp16", f"auto: {env.device} lacks bf16, fp16 with a grad scaler"
    if want == "bf16" and not env.bf16:
        if ctx.spec.precision.bf16_fallback == "fp16":
            return "fp16", f"bf16 asked, but {env.description or env.device} lacks it: fp16 (bf16_fallback)"
        ctx.report(
            "DBS340",
            "error",
            f'precision.mixed is "bf16" but the target ({env.description or env.device}) '
            "does not support bf16",
            ("precision", "mixed"),
            help='use mixed = "fp16", or set bf16_fallback = "fp16"',
        )
        return "fp16", "bf16 unsupported"
    if want == "fp16" and env.device == "cpu":
        _warn_fp16_on_cpu(ctx)
    return want, "as the spec says"


def _warn_fp16_on_cpu(ctx: Context) -> None:
    fp16_weights = ctx.spec.precision.weights == "fp16"
    ctx.report(
        "DBS341",
        "warning",
        "fp16 mixed precision on the CPU is slow and unsupported by some ops"
        + (' (precision.weights = "fp16" needs it)' if fp16_weights else ""),
        ("precision", "mixed"),
        help='use weights = "fp32" and mixed = "auto" (fp32 on the CPU)'
        if fp16_weights
        else 'use mixed = "auto" (fp32 on the CPU)',
    )


def _check_quantization(ctx: Context, key: str, kind: str) -> None:
    # the cast backend's fp8 is storage only (upcast before each use): it needs no fp8 kernels
    if kind != "fp8" or ctx.spec.precision.quantize_backend == "cast":
        return
    env = ctx.env
    cc = tuple(int(x) for x in env.compute_capability.split(".")) if env.compute_capability else (0, 0)
    if env.device != "cuda" or cc < FP8_MIN_CC:
        where = f"{env.device} {env.compute_capability}".strip()
        ctx.report(
            "DBS342",
            "error",
            f'precision.{key} = "fp8" needs a CUDA GPU with compute capability >= 8.9 (target: {where})',
            ("precision", key),
            help='use "int8" (works everywhere)',
        )


# Devices each quantisation backend runs on (what was proven: docs/memory.md, "Quantisation backends").
BACKEND_DEVICES = {
    "quanto": ("cuda", "cpu", "mps"),
    "torchao": ("cuda", "cpu"),
    "bitsandbytes": ("cuda", "cpu"),
    "cast": ("cuda", "cpu", "mps"),  # only dtype casts: no fp8 kernels
}


def _check_backend_device(ctx: Context, key: str) -> None:
    backend, device = ctx.spec.precision.quantize_backend, ctx.env.device
    if device in BACKEND_DEVICES[backend]:
        return
    ctx.report(
        "DBS318",
        "error",
        f'precision.quantize_backend = "{backend}" does not run on {device} (precision.{key} asks for it); '
        f"it runs on {' and '.join(BACKEND_DEVICES[backend])}",
        ("precision", "quantize_backend"),
        help='use quantize_backend = "quanto" on this device, or plan for a GPU with --target cuda:24GB',
    )


def text_encoder_trains(spec, name: str) -> bool:
    """Whether the text encoder `name` trains: SDXL's second one with train.text_encoder_2 (which defaults to
    train.text_encoder), every other with train.text_encoder."""
    return spec.train.text_encoder_2 if name == "text_encoder_2" else spec.train.text_encoder


def idle_text_encoders(spec, family: str | None) -> tuple[str, ...]:
    """The text encoders (components) of `family` that carry the adapter without training, kohya's modules
    at text_encoder_lr 0, in the family's order (kohya's network order): train.text_encoder_idle = "kohya"'s
    CLIP encoders (every family text encoder that train.text_encoder trains, where the spec does not train
    it) and train.t5_idle = "kohya"'s T5-XXL (where train.t5 does not train it); () without an adapter."""
    if not isinstance(spec.adapter, LowRankAdapter):
        return ()
    idle: set[str] = set()
    if spec.train.text_encoder_idle == "kohya":
        names = trainable_text_encoders(family) if family else ("text_encoder",)
        idle |= {n for n in names if not text_encoder_trains(spec, n) and _adapts(spec.adapter, n)}
    if spec.train.t5_idle == "kohya" and not spec.train.t5 and family and family_spec(family).t5_lora:
        idle |= set(t5_text_encoders(family))
    order = family_spec(family).text_encoder_names if family else ("text_encoder",)
    return tuple(n for n in order if n in idle)


def _adapts(adapter, name: str) -> bool:
    """Whether the adapter has layers on the CLIP encoder `name`: targets or LyCORIS train_norm's norms
    (text-encoder blocks set the ranks of targeted layers only; a LyCORIS preset or a --dim_from_weights
    file may leave one of SDXL's encoders without any: kohya's network then has no module there, and
    nothing is left idle)."""
    second = name == "text_encoder_2"
    targets = getattr(adapter, "text_encoder_2_targets" if second else "text_encoder_targets", ())
    norms = getattr(adapter, "text_encoder_2_norms" if second else "text_encoder_norms", ())
    return bool(targets or norms)


def text_encoder_runs_trained(spec) -> bool:
    """A text encoder runs as a trained one (under grad, its outputs not cached), before the family is
    known: one trains, or train.text_encoder_idle may give an untrained one the adapter."""
    idle = spec.train.text_encoder_idle == "kohya" or spec.train.t5_idle == "kohya"
    return any_text_encoder_trains(spec) or (idle and isinstance(spec.adapter, LowRankAdapter))


def any_text_encoder_trains(spec) -> bool:
    """A text encoder may train (before the family is known): train.text_encoder, SDXL's second one alone
    (kohya sdxl_train.py with learning_rate_te1 = 0), or T5-XXL (train.t5)."""
    return spec.train.text_encoder or spec.train.text_encoder_2 or spec.train.t5


def _t5_trains(ctx: Context, model: ModelPlan | None) -> tuple[str, ...]:
    """The T5 encoders train.t5 trains with LoRA (kohya's train_t5xxl): Flux's and SD3's; DBS397 for other
    families."""
    if model is None:
        return ()
    f = family_spec(model.family)
    _check_third_text_encoder_lr(ctx, f)
    _check_text_encoder_trains(ctx, f)
    if not ctx.spec.train.t5:
        return ()
    if not f.t5_lora:
        has = "its T5-XXL is not trained yet" if t5_text_encoders(f.name) else "it has no T5 text encoder"
        ctx.report(
            "DBS397",
            "error",
            f"train.t5 needs a Flux or SD3 model: the base model is {f.title} ({has})",
            ("train", "t5"),
            help="remove train.t5, or train a Flux or SD3 model",
        )
        return ()
    return t5_text_encoders(model.family)


def _check_third_text_encoder_lr(ctx: Context, f) -> None:
    """DBS399: optimizer.text_encoder_3_lr on a family without a third text encoder (SD3's T5-XXL)."""
    path = ("optimizer", "text_encoder_3_lr")
    if len(f.text_encoders) > 2 or not ctx.raw.given(path):
        return
    t5 = t5_text_encoders(f.name)
    rate = f"optimizer.{t5[0]}_lr" if t5 else ""  # Flux: text_encoder_2_lr; Chroma: text_encoder_lr
    flux = f" (its T5-XXL trains at {rate})" if t5 else ""
    ctx.report(
        "DBS399",
        "warning",
        f"optimizer.text_encoder_3_lr has no effect: {f.title} has no third text encoder{flux}",
        path,
        help="remove optimizer.text_encoder_3_lr" + (f", set {rate}" if t5 else ""),
    )


def _check_text_encoder_trains(ctx: Context, f) -> None:
    """DBS398: train.text_encoder on a family whose only text encoder is T5 (Chroma): train.t5 trains it."""
    path = ("train", "text_encoder")
    if trainable_text_encoders(f.name) or not ctx.spec.train.text_encoder or not ctx.raw.given(path):
        return
    ctx.report(
        "DBS398",
        "warning",
        f"train.text_encoder has no effect: {f.title}'s only text encoder is T5-XXL, which train.t5 trains",
        path,
        help="remove train.text_encoder; set train.t5 = true to train T5-XXL with LoRA",
    )


def _check_second_text_encoder(ctx: Context, text_parts: tuple[str, ...] | None) -> None:
    path = ("train", "text_encoder_2")
    if text_parts is None or "text_encoder_2" in text_parts or not ctx.raw.given(path):
        return
    if not any_text_encoder_trains(ctx.spec):
        return  # DBS206 already says train.text_encoder_2 has no effect
    ctx.report(
        "DBS263",
        "warning",
        f"train.text_encoder_2 has no effect: the model has one text encoder ({', '.join(text_parts)})",
        path,
        help="remove this key (only SDXL has a second text encoder)",
    )


def plan_precision(ctx: Context, model: ModelPlan | None) -> PrecisionPlan:
    p, spec = ctx.spec.precision, ctx.spec
    mixed, reason = resolve_mixed(ctx)
    _check_micro_batch_split_step(ctx, mixed)
    _check_quantization(ctx, "quantize_denoiser", p.quantize_denoiser)
    _check_quantization(ctx, "quantize_text_encoder", p.quantize_text_encoder)
    quantized = [k for k in ("quantize_denoiser", "quantize_text_encoder") if getattr(p, k) != "none"]
    if quantized:
        _check_backend_device(ctx, quantized[0])
    lora = isinstance(spec.adapter, LowRankAdapter)
    frozen_dtype = "fp32" if mixed == "no" else mixed
    text_parts = family_spec(model.family).text_encoder_names if model else ("text_encoder",)
    _check_second_text_encoder(ctx, text_parts if model else None)
    params = model.params if model else {}
    # with an adapter, bf16 or fp16 applies to the adapter weights (runtime/prepare.py)
    weights = p.weights
    if weights == "fp16" and mixed == "fp16":
        _warn_fp16_weights(ctx)

    def component(name: str, trains: bool, quant: str) -> ComponentPlan:
        mode = "frozen" if not trains else ("lora" if lora else "full")
        # Fully trained weights stay fp32 (autocast computes in the mixed dtype) unless precision.weights says
        # bf16 or fp16 (kohya's full_bf16 / full_fp16); frozen ones are held in the mixed dtype.
        dtype = weights if mode == "full" else frozen_dtype
        return ComponentPlan(
            name=name,
            dtype=dtype,
            trainable=mode,
            quantized=quant if mode != "full" else "none",
            gradient_checkpointing=p.gradient_checkpointing and trains,
            params=params.get(name, 0),
        )

    parts = [component("unet", spec.train.denoiser, p.quantize_denoiser)]
    trainable = trainable_text_encoders(model.family) if model else text_parts  # T5 only with train.t5
    t5 = _t5_trains(ctx, model)
    idle = idle_text_encoders(spec, model.family if model else None)  # they carry the adapter, run trained
    _check_idle(ctx, idle, model)
    parts += [
        component(
            n,
            n in t5 or n in idle or (text_encoder_trains(spec, n) and n in trainable),
            p.quantize_text_encoder,
        )
        for n in text_parts
    ]
    parts.append(
        ComponentPlan(name="vae", dtype=p.vae_dtype, trainable="frozen", params=params.get("vae", 0))
    )
    return PrecisionPlan(
        mixed=mixed,
        reason=reason,
        attention=p.attention,
        tf32=p.tf32 and ctx.env.device == "cuda",
        components=tuple(parts),
        weights=weights,
        # weights_rounding = "nearest" (kohya's full_bf16, and fp16 weights always): the optimizer steps the
        # half-precision parameters itself
        stochastic_rounding=weights == "bf16" and p.weights_rounding == "stochastic",
        quantize_backend=p.quantize_backend,
        compile=_compile_plan(p.compile, parts),
        fp16_gradients=_fp16_gradients(ctx, mixed),
    )


def _check_idle(ctx: Context, idle: tuple[str, ...], model: ModelPlan | None) -> None:
    """DBS598: train.text_encoder_idle = "kohya" where every CLIP text encoder trains (or there is none)."""
    spec, path = ctx.spec, ("train", "text_encoder_idle")
    clip = [n for n in idle if n not in t5_text_encoders(model.family)] if model else list(idle)
    _check_t5_idle(ctx, model)
    if spec.train.text_encoder_idle != "kohya" or clip or not isinstance(spec.adapter, LowRankAdapter):
        return
    ctx.report(
        "DBS598",
        "warning",
        'train.text_encoder_idle = "kohya" has no effect: no CLIP text encoder is left untrained (each one '
        "trains, or the model has none)",
        path,
        help=codes.help("DBS598"),
    )


def _check_t5_idle(ctx: Context, model: ModelPlan | None) -> None:
    """DBS600: train.t5_idle = "kohya" on a family without a T5-XXL that dbspec adapts (train.t5's: Flux,
    SD3, Chroma); the spec rule t5_idle_needs_t5_layers checks the rest."""
    if model is None or ctx.spec.train.t5_idle != "kohya" or family_spec(model.family).t5_lora:
        return
    f = family_spec(model.family)
    ctx.report(
        "DBS600",
        "error",
        f'train.t5_idle = "kohya" needs a Flux, SD3 or Chroma model: the base model is {f.title} (it has no '
        "T5-XXL dbspec adapts)",
        ("train", "t5_idle"),
        help=codes.help("DBS600"),
    )


def _fp16_gradients(ctx: Context, mixed: str) -> str:
    """precision.fp16_gradients: still-scaled gradients need the grad scaler of fp16 mixed precision (settled
    here); the spec rule scaled_fp16_gradients checks the rest (DBS555)."""
    value = ctx.spec.precision.fp16_gradients
    if value == "unscaled" or ctx.spec.precision.weights == "bf16" or mixed == "fp16":
        return value if mixed == "fp16" else "unscaled"
    ctx.report(
        "DBS555",
        "error",
        f'precision.fp16_gradients = "{value}" under {mixed} mixed precision: only fp16 mixed precision '
        "scales the loss, so there is no scaled gradient to step from",
        ("precision", "fp16_gradients"),
        help='use precision.mixed = "fp16", or remove precision.fp16_gradients',
    )
    return "unscaled"


def _check_micro_batch_split_step(ctx: Context, mixed: str) -> None:
    """optimizer.split_first_step = "micro_batch" steps the first chunk's optimizer between micro-batches,
    outside the grad scaler, which fp16 mixed precision needs (the mixed precision is settled here), unless
    that chunk steps from the still-scaled gradients anyway (fp16_gradients = "scaled_first", kohya's)."""
    o = ctx.spec.optimizer
    if mixed != "fp16" or o.split <= 1 or o.split_first_step != "micro_batch":
        return
    if ctx.spec.precision.fp16_gradients in ("scaled_first", "scaled"):
        return
    ctx.report(
        "DBS389",
        "error",
        'optimizer.split_first_step = "micro_batch" under fp16 mixed precision: the first chunk\'s optimizer '
        "would step from gradients the grad scaler has not unscaled yet (dbspec does not run that)",
        ("optimizer", "split_first_step"),
        help='set precision.fp16_gradients = "scaled_first" (kohya\'s), use precision.mixed = "bf16" or '
        '"no", or split_first_step = "step"',
    )


def _warn_fp16_weights(ctx: Context) -> None:
    """What fp16 trained weights (kohya's full_fp16) cost: precision lost, overflowing steps skipped."""
    ctx.report(
        "DBS368",
        "warning",
        'precision.weights = "fp16" (kohya\'s full_fp16) loses every update under 2^-11 of a weight '
        "(round-to-nearest) and overflows past 65504; a step whose scaled fp16 gradients overflow is skipped "
        "and the grad scale halved",
        ("precision", "weights"),
        help='use weights = "bf16" (stochastic rounding) on a target with bf16, or fp32 weights, to keep '
        "small updates",
    )


def _compile_plan(wanted: bool, parts: list[ComponentPlan]) -> CompilePlan | None:
    """precision.compile: the networks that train (the denoiser, and each text encoder that trains); frozen
    ones run once per sample at most (or not at all with caches), so compiling them buys little."""
    trained = tuple(c.name for c in parts if c.trainable != "frozen")
    return CompilePlan(components=trained) if wanted and trained else None
