"""Per-component weight files over the base model (model.denoiser_file, model.text_encoder_files, a
model.vae file): checked from their safetensors headers (DBS372-375) and folded into the model plan and its
identities, so changing a file (kohya's `--t5xxl`) changes the caches keyed by it."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from dbspec.builtin import builtin_model
from dbspec.compiler.context import Context
from dbspec.compiler.safetensors_header import (
    ModelFileError,
    count_params,
    file_fingerprint,
    read_safetensors_header,
)
from dbspec.families import FamilySpec, TextEncoderSpec, family_spec
from dbspec.plan.model import ModelPlan
from dbspec.spec.paths import dotted
from dbspec.weightfiles import (
    DENOISER_PREFIX,
    encoder_prefix,
    encoder_prefixes,
    holds_denoiser,
    is_openclip,
    marker,
    vae_latent_channels,
    vae_prefix,
    what_it_holds,
)

DENOISER = ("model", "denoiser_file")
TEXT = ("model", "text_encoder_files")
VAE = ("model", "vae")


def with_component_files(ctx: Context, plan: ModelPlan) -> ModelPlan:
    """`plan` with the spec's component files (resolved) and identities that include them."""
    m = ctx.spec.model
    family = family_spec(plan.family)
    identity, text_identity = plan.identity, plan.text_identity
    params = dict(plan.params)  # the files' own counts replace the base's (the memory estimate reads them)
    denoiser = ""
    if m.denoiser_file:
        tensors = _header(ctx, m.denoiser_file, DENOISER, f"the {family.title} denoiser")
        if tensors is not None:
            denoiser = str(ctx.resolve(m.denoiser_file))
            identity = f"{identity}+denoiser:file:{file_fingerprint(denoiser)}"
            params["unet"] = _denoiser_params(tensors) or params.get("unet", 0)
            if not holds_denoiser(tensors, family):
                _not_it(
                    ctx,
                    DENOISER,
                    m.denoiser_file,
                    f"a {family.title} denoiser (tensors under "
                    + " or ".join(f"`{k}`" for k in family.denoiser_file_keys)
                    + ", after an optional `model.diffusion_model.`)",
                    tensors,
                )
    files = _text_files(ctx, plan, family)
    for encoder, path in zip(family.text_encoders, files):
        if path:
            text_identity += f"+{encoder.component}:file:{file_fingerprint(path)}"
            params[encoder.component] = _encoder_params(path, encoder) or params.get(encoder.component, 0)
    vae_count = _check_vae_file(ctx, family)
    if vae_count:
        params["vae"] = vae_count
    if (denoiser or any(files) or _vae_file(ctx)) and plan.source == "hub" and not plan.resolved:
        ctx.report(
            "DBS375",
            "warning",
            f"`{plan.base}` supplies the configs and tokenizers of the component files but is not in the "
            "local Hugging Face cache: the run downloads them (it cannot with HF_HUB_OFFLINE set)",
            ("model", "base"),
            help="run `dbspec plan --download` (it fetches the configs and tokenizers, not the weights the "
            "files replace), or set model.base to a local diffusers folder of the family",
        )
    return attrs.evolve(
        plan,
        identity=identity,
        text_identity=text_identity,
        params=params,
        denoiser_file=denoiser,
        text_encoder_files=tuple(files) if any(files) else (),
    )


def _text_files(ctx: Context, plan: ModelPlan, family: FamilySpec) -> list[str]:
    given = ctx.spec.model.text_encoder_files
    encoders = family.text_encoders
    if len(given) > len(encoders):
        ctx.report(
            "DBS374",
            "error",
            f"model.text_encoder_files has {len(given)} entries, but {family.title} models have "
            f"{len(encoders)} text encoder(s): "
            + ", ".join(f"{e.component} ({e.model_class})" for e in encoders),
            (*TEXT, len(encoders)),
            help='give one file per text encoder in this order; "" keeps the base model\'s',
        )
    out = []
    for i, (encoder, value) in enumerate(zip(encoders, given)):
        if not value:
            out.append("")
            continue
        tensors = _header(ctx, value, (*TEXT, i), f"{encoder.component} ({encoder.model_class})")
        if tensors is None:
            out.append("")
            continue
        out.append(str(ctx.resolve(value)))
        _check_encoder(ctx, plan, encoder, value, (*TEXT, i), tensors)
    return out + [""] * (len(encoders) - len(out))


def _check_encoder(
    ctx: Context, plan: ModelPlan, encoder: TextEncoderSpec, value: str, path: tuple, tensors: dict
) -> None:
    what = f"{encoder.component} ({encoder.model_class})"
    prefix = encoder_prefix(tensors, encoder)
    if prefix is None:
        found = encoder_prefixes(tensors, encoder)
        if found:
            under = ", ".join(f"`{p}`" for p in found)
            holds = f"several such encoders (under {under}), none under `{encoder.single_file_prefix}`"
        else:
            holds = what_it_holds(tensors)
        ctx.report(
            "DBS373",
            "error",
            f"`{value}` given for {what} does not hold one: no `{marker(encoder)}` tensor "
            f"(with or without a prefix); it holds {holds}",
            path,
            help=f"give each encoder's file in {family_spec(plan.family).title}'s order: "
            + ", ".join(f"{e.component} ({e.model_class})" for e in family_spec(plan.family).text_encoders),
        )
        return
    width = _width(tensors, prefix, encoder)
    expected = _config_width(plan, encoder)
    if width is not None and expected is not None and width != expected:
        ctx.report(
            "DBS373",
            "error",
            f"`{value}` holds a {width}-wide {encoder.model_class.removesuffix('WithProjection')}, but the "
            f"{encoder.component} of `{plan.base}` is {expected} wide",
            path,
            help="give the file of this encoder (kohya: --clip_l is 768 wide, --clip_g 1280, --t5xxl 4096)",
        )


def _width(tensors: dict, prefix: str, encoder: TextEncoderSpec) -> int | None:
    if is_openclip(tensors, prefix):
        info = tensors.get(f"{prefix}token_embedding.weight")
        return info.shape[1] if info is not None and len(info.shape) == 2 else None
    for key, info in tensors.items():
        if key.startswith(prefix) and key.endswith(marker(encoder)) and len(info.shape) == 2:
            return info.shape[1]
    return None


def _config_width(plan: ModelPlan, encoder: TextEncoderSpec) -> int | None:
    """The encoder's width in the base model's config: a built-in's, or a folder's on this machine."""
    if plan.source == "builtin":
        config = _builtin_config(plan, encoder)
    elif not plan.path:
        return None
    else:
        try:
            config = json.loads((Path(plan.path) / encoder.component / "config.json").read_text())
        except (OSError, ValueError):
            return None
    if not isinstance(config, dict):
        return None
    width = config.get("d_model", config.get("hidden_size"))
    return width if isinstance(width, int) else None


def _builtin_config(plan: ModelPlan, encoder: TextEncoderSpec) -> dict | None:
    """A built-in's encoder config, as runtime/tiny.py builds them: CLIPs from text_encoder and
    text_encoder_2 in the family's order, T5 from text_encoder_3."""
    b = builtin_model(plan.base)
    if encoder.model_class.startswith("T5"):
        return b.text_encoder_3
    index = family_spec(plan.family).text_encoders.index(encoder)
    return (b.text_encoder, b.text_encoder_2)[index] if index < 2 else None


def _vae_file(ctx: Context) -> str:
    vae = ctx.spec.model.vae
    return vae if vae.lower().endswith(".safetensors") else ""


def _denoiser_params(tensors: dict) -> int:
    """The denoiser's parameters in its file: under `model.diffusion_model.` in a full checkpoint."""
    prefixed = [(k, t) for k, t in tensors.items() if k.startswith(DENOISER_PREFIX)]
    return count_params(prefixed or list(tensors.items()))


def _encoder_params(path: str, encoder: TextEncoderSpec) -> int:
    tensors = read_safetensors_header(path)
    prefix = encoder_prefix(tensors, encoder)
    if prefix is None:
        return 0
    part = [(k, t) for k, t in tensors.items() if k.startswith(prefix)]
    if any(k == f"{prefix}shared.weight" for k, _ in part):  # T5's tied embedding, stored twice by some
        part = [(k, t) for k, t in part if k != f"{prefix}encoder.embed_tokens.weight"]
    return count_params(part)


def _check_vae_file(ctx: Context, family: FamilySpec) -> int:
    """Checks a model.vae file; its parameter count (0 when there is none to count)."""
    vae = _vae_file(ctx)
    if not vae:
        return 0
    tensors = _header(ctx, vae, VAE, "the autoencoder")
    if tensors is None:
        return 0
    prefix = vae_prefix(tensors)
    if prefix is None:
        _not_it(ctx, VAE, vae, "an autoencoder (`encoder.down.` or `encoder.down_blocks.` tensors)", tensors)
        return 0
    channels = vae_latent_channels({k: v.shape for k, v in tensors.items()}, prefix)
    if channels is not None and channels != family.latent_channels:
        ctx.report(
            "DBS373",
            "error",
            f"`{vae}` is an autoencoder with {channels} latent channels, but {family.title} models have "
            f"{family.latent_channels}",
            VAE,
            help="give the family's autoencoder (kohya --ae for Flux: ae.safetensors)",
        )
    owned = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    return count_params(
        [(k, t) for k, t in tensors.items() if k.startswith(tuple(prefix + o for o in owned))]
    )


def _header(ctx: Context, value: str, path: tuple, what: str) -> dict | None:
    local = ctx.resolve(value)
    problem = ""
    if not local.exists():
        problem = f"`{local}` does not exist (relative paths resolve against the spec's folder)"
    elif not local.is_file():
        problem = f"`{local}` is not a file"
    elif local.suffix.lower() != ".safetensors":
        problem = f"`{local}` is not a .safetensors file"
    else:
        try:
            return read_safetensors_header(local)
        except (ModelFileError, OSError) as exc:
            problem = f"`{local}` is not a readable .safetensors file: {getattr(exc, 'reason', exc)}"
    ctx.report(
        "DBS372",
        "error",
        f"{dotted(path)} names the weights of {what}, but {problem}",
        path,
        help="check the path; convert .ckpt/.pt files to .safetensors",
    )
    return None


def _not_it(ctx: Context, path: tuple, value: str, wanted: str, tensors: dict) -> None:
    ctx.report(
        "DBS373",
        "error",
        f"`{value}` ({dotted(path)}) does not hold {wanted}; it holds {what_it_holds(tensors)}",
        path,
    )
