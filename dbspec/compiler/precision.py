"""Precision pass: the mixed-precision mode resolved against the target, and per-component dtypes."""

from __future__ import annotations

from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.plan.model import ComponentPlan, ModelPlan, PrecisionPlan
from dbspec.spec.model import LowRankAdapter

FP8_MIN_CC = (8, 9)


def resolve_mixed(ctx: Context) -> tuple[str, str]:
    """(mode, reason) for precision.mixed on the target device."""
    want, env = ctx.spec.precision.mixed, ctx.env
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
        ctx.report(
            "DBS341",
            "warning",
            "fp16 mixed precision on the CPU is slow and unsupported by some ops",
            ("precision", "mixed"),
            help='use mixed = "auto" (fp32 on the CPU)',
        )
    return want, "as the spec says"


def _check_quantization(ctx: Context, key: str, kind: str) -> None:
    if kind != "fp8":
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


def plan_precision(ctx: Context, model: ModelPlan | None) -> PrecisionPlan:
    p, spec = ctx.spec.precision, ctx.spec
    mixed, reason = resolve_mixed(ctx)
    _check_quantization(ctx, "quantize_denoiser", p.quantize_denoiser)
    _check_quantization(ctx, "quantize_text_encoder", p.quantize_text_encoder)
    lora = isinstance(spec.adapter, LowRankAdapter)
    frozen_dtype = "fp32" if mixed == "no" else mixed
    text_parts = family_spec(model.family).text_encoder_names if model else ("text_encoder",)
    params = model.params if model else {}

    def component(name: str, trains: bool, quant: str) -> ComponentPlan:
        mode = "frozen" if not trains else ("lora" if lora else "full")
        # Fully trained weights stay fp32 (autocast computes in the mixed dtype); frozen ones are held in it.
        dtype = "fp32" if mode == "full" else frozen_dtype
        return ComponentPlan(
            name=name,
            dtype=dtype,
            trainable=mode,
            quantized=quant if mode != "full" else "none",
            gradient_checkpointing=p.gradient_checkpointing and trains,
            params=params.get(name, 0),
        )

    parts = [component("unet", spec.train.denoiser, p.quantize_denoiser)]
    parts += [component(n, spec.train.text_encoder, p.quantize_text_encoder) for n in text_parts]
    parts.append(
        ComponentPlan(name="vae", dtype=p.vae_dtype, trainable="frozen", params=params.get("vae", 0))
    )
    return PrecisionPlan(
        mixed=mixed,
        reason=reason,
        attention=p.attention,
        tf32=p.tf32 and ctx.env.device == "cuda",
        components=tuple(parts),
    )
