"""Model pass: what the base model is (family, prediction, parameter counts, identity), without torch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs

from dbspec.builtin import builtin_model, is_builtin
from dbspec.compiler.fused import block_dora
from dbspec.compiler.component_files import with_component_files
from dbspec.compiler.merge_adapters import with_merged_adapters
from dbspec.compiler.context import Context
from dbspec.compiler.modelinfo import ModelFacts, ModelFileError, inspect_model
from dbspec.compiler.safetensors_header import file_fingerprint
from dbspec.families import FAMILIES, family_list, family_spec, hub_model
from dbspec.plan.model import ModelPlan
from dbspec.spec.model import (
    Adapter,
    BoftAdapter,
    GloraAdapter,
    DiagOftAdapter,
    DyloraAdapter,
    FullAdapter,
    Ia3Adapter,
    LohaAdapter,
    LokrAdapter,
    LoraAdapter,
    TloraAdapter,
)

BASE = ("model", "base")
# Parameter counts of each family's public models, for the memory estimate of a hub model not downloaded yet.
FAMILY_PARAMS = {name: dict(f.public_params) for name, f in FAMILIES.items()}


def plan_model(ctx: Context) -> ModelPlan | None:
    m = ctx.spec.model
    if is_builtin(m.base):
        return _builtin(ctx)
    try:
        facts = inspect_model(m.base, ctx.spec_dir, revision=m.revision)
    except ModelFileError as exc:
        ctx.report(
            "DBS310",
            "error",
            f"cannot read the base model: {exc.reason}",
            BASE,
            help=f"check `{exc.path}`; a diffusers folder needs model_index.json",
        )
        return None
    assert facts is not None
    facts = _missing_folder_note(ctx, _known_hub(facts))
    if facts.source == "ckpt" and not m.allow_pickle:
        ctx.report(
            "DBS311",
            "warning",
            f"`{m.base}` is a pickle checkpoint: it will load with "
            "torch.load(weights_only=True), which refuses anything but tensors",
            BASE,
            help="convert it to .safetensors; set model.allow_pickle = true only for a file you trust",
        )
    family = _family(ctx, facts)
    # An unknown hub id not downloaded: setting model.family settles the prediction too (sd1/sdxl); one error.
    prediction = _prediction(ctx, facts, family) if family is not None or facts.resolved else None
    if family is None or prediction is None:
        return None
    identity = facts.identity or f"unresolved:{m.base}@{m.revision}"
    params, notes = dict(facts.params), facts.notes
    if not facts.resolved and not params and family in FAMILY_PARAMS:
        own = m.base in family_spec(family).hub_params
        params = family_spec(family).params_of(m.base)
        notes += (
            f"parameter counts are those of {m.base if own else f'the public {family} models'} (the weights "
            "are not downloaded)",
        )
    text_parts = [part for e in family_spec(family).text_encoders for part in (e.component, e.tokenizer)]
    text_identity = "+".join(facts.component_ids.get(c, f"{identity}/{c}") for c in text_parts)
    vae_identity = _vae_identity(ctx, facts.component_ids.get("vae", f"{identity}/vae"))
    plan = ModelPlan(
        base=m.base,
        source=facts.source,
        path=facts.path,
        resolved=facts.resolved,
        family=family,
        prediction=prediction,
        revision=m.revision,
        config=_config(ctx),
        vae=_vae(ctx),
        allow_pickle=m.allow_pickle,
        clip_skip=m.clip_skip,
        max_tokens=m.max_tokens,
        t5_max_length=m.t5_max_length,
        t5_attention_mask=m.t5_attention_mask or family_spec(family).t5_mask_always,
        clip_attention_mask=m.clip_attention_mask,
        aesthetic_score=m.aesthetic_score,
        negative_aesthetic_score=m.negative_aesthetic_score,
        weighted_captions=m.weighted_captions,
        identity=identity,
        vae_identity=vae_identity,
        text_identity=text_identity,
        params=params,
        variant=facts.variant,
        notes=notes,
    )
    return with_merged_adapters(ctx, with_component_files(ctx, plan))


def _missing_folder_note(ctx: Context, facts: ModelFacts) -> ModelFacts:
    """`models/sd15` reads as a hub id when the folder is missing: say that it is no folder either."""
    base = ctx.spec.model.base
    if facts.source != "hub" or facts.resolved or not (ctx.spec_dir / base.split("/")[0]).is_dir():
        return facts
    note = (
        f"nor is it a folder: `{ctx.resolve(base)}` does not exist "
        "(relative paths resolve against the spec's folder)"
    )
    return attrs.evolve(facts, notes=(*facts.notes, note))


def _known_hub(facts: ModelFacts) -> ModelFacts:
    """An unresolved hub id of a well-known base model: its family and prediction from the registry."""
    known = hub_model(facts.base) if facts.source == "hub" and not facts.resolved else None
    if known is None:
        return facts
    family, prediction = known
    note = (
        f"family {family} and prediction {prediction} are those of the published {facts.base}; "
        "plan again after downloading it to read them from its files"
    )
    return attrs.evolve(facts, family=family, prediction=prediction, notes=(*facts.notes, note))


def _builtin(ctx: Context) -> ModelPlan | None:
    m = ctx.spec.model
    try:
        b = builtin_model(m.base)
    except KeyError as exc:
        ctx.report("DBS310", "error", f"unknown built-in model `{m.base}`", BASE, help=str(exc.args[0]))
        return None
    for key, stated, actual in (("family", m.family, b.family), ("prediction", m.prediction, b.prediction)):
        if stated not in ("auto", actual):
            ctx.report(
                "DBS312",
                "error",
                f'model.{key} is "{stated}" but {m.base} is {actual}',
                ("model", key),
                help="remove the key to use the detected value",
            )
    folder = ctx.cache_dir / "models" / b.identity.replace(":", "-").replace("@", "-")
    plan = ModelPlan(
        base=m.base,
        source="builtin",
        path=str(folder),
        resolved=True,
        family=b.family,
        prediction=b.prediction,
        revision="",
        config="",
        vae=_vae(ctx),
        allow_pickle=False,
        clip_skip=m.clip_skip,
        max_tokens=m.max_tokens,
        t5_max_length=m.t5_max_length,
        t5_attention_mask=m.t5_attention_mask or family_spec(b.family).t5_mask_always,
        clip_attention_mask=m.clip_attention_mask,
        aesthetic_score=m.aesthetic_score,
        negative_aesthetic_score=m.negative_aesthetic_score,
        weighted_captions=m.weighted_captions,
        identity=b.identity,
        vae_identity=_vae_identity(ctx, f"{b.vae_identity}/vae"),
        text_identity=f"{b.identity}/text",
        params=dict(b.params),
        notes=(f"built on first use into {folder}",),
    )
    return with_merged_adapters(ctx, with_component_files(ctx, plan))


def _family(ctx: Context, facts: ModelFacts) -> str | None:
    stated = ctx.spec.model.family
    if stated != "auto":
        if facts.family not in ("unknown", stated):
            ctx.report(
                "DBS312",
                "warning",
                f'model.family is "{stated}" but the weights look like {facts.family}',
                ("model", "family"),
                help="remove the key to use the detected family",
            )
        return stated
    if facts.family == "unknown":
        reason = "; ".join(facts.notes) or ("" if facts.resolved else "the model is not in the local cache")
        ctx.report(
            "DBS313",
            "error",
            f"cannot tell the family of `{facts.base}`{': ' + reason if reason else ''}",
            ("model", "family"),
            help=f"set model.family = {family_list()}",
        )
        return None
    return facts.family


def _prediction(ctx: Context, facts: ModelFacts, family: str | None) -> str | None:
    stated = ctx.spec.model.prediction
    if family is not None and not _fits_objective(ctx, family, stated):
        return None
    if family is not None and family_spec(family).objective == "flow":
        return "flow_matching"  # the family's objective; DDPM scheduler configs say nothing about it
    if stated != "auto":
        return stated
    if facts.prediction != "unknown":
        return facts.prediction
    if not facts.resolved and family is not None and not family_spec(family).prediction_hint:
        # an unresolved hub id of a family with one prediction: `run` re-checks after the download
        return family_spec(family).prediction
    ctx.report(
        "DBS313",
        "error",
        f"cannot tell the prediction type of `{facts.base}`",
        ("model", "prediction"),
        help='set model.prediction = "epsilon" or "v_prediction" (SD 2.x 768 px models use v_prediction)',
    )
    return None


def _fits_objective(ctx: Context, family: str, stated: str) -> bool:
    """model.prediction fits the family's objective (DBS380): flow_matching for flow families only."""
    flow = family_spec(family).objective == "flow"
    if stated == "auto" or (stated == "flow_matching") == flow:
        return True
    ctx.report(
        "DBS380",
        "error",
        f'model.prediction is "{stated}" but {family_spec(family).title} models are trained by '
        + ("flow matching" if flow else "DDPM (epsilon or v_prediction)"),
        ("model", "prediction"),
        help="remove model.prediction (auto picks the family's)",
    )
    return False


def sampler(ctx: Context, model: ModelPlan | None, value: str, path: tuple) -> str:
    """The sampling scheduler a validation or class-image plan uses: flow-matching families sample with
    flow_euler (picked when unset), the others with a DDPM-family scheduler (DBS382)."""
    if model is None:
        return value
    flow = family_spec(model.family).objective == "flow"
    if flow and value != "flow_euler" and not ctx.raw.given(path):
        return "flow_euler"
    if flow != (value == "flow_euler"):
        ctx.report(
            "DBS382",
            "error",
            f'{".".join(map(str, path))} is "{value}", a '
            + ("DDPM scheduler; the model is trained by flow matching" if flow else "flow-matching scheduler")
            + ("" if flow else f"; {family_spec(model.family).title} models are DDPM models"),
            path,
            help="remove the option to use the family's scheduler",
        )
    return value


def check_weighted_captions(ctx: Context, model: ModelPlan | None) -> None:
    """model.weighted_captions on a family whose prompts are not CLIP windows alone (DBS352): kohya weights
    SD 1.x/2.x/SDXL token hidden states only."""
    if model is None or not model.weighted_captions:
        return
    spec = family_spec(model.family)
    if not spec.long_prompts:
        ctx.report(
            "DBS352",
            "error",
            f"model.weighted_captions is true, but {spec.title} prompts are not CLIP windows alone "
            "(weighted captions scale CLIP hidden states, as kohya does for SD 1.x, SD 2.x and SDXL)",
            ("model", "weighted_captions"),
            help="remove model.weighted_captions (write captions without attention syntax)",
        )


def check_exports(ctx: Context, model: ModelPlan | None) -> None:
    """checkpoints.exports the family has no writer for (DBS381); prompts longer than one CLIP window on a
    family that encodes one (DBS383)."""
    if model is None:
        return
    spec = family_spec(model.family)
    if model.max_tokens > 75 and not spec.long_prompts:
        ctx.report(
            "DBS383",
            "error",
            f"model.max_tokens is {model.max_tokens}, but {spec.title} prompts are encoded as one CLIP "
            "window (and T5 tokens, model.t5_max_length)",
            ("model", "max_tokens"),
            help="remove model.max_tokens; raise model.t5_max_length for longer prompts",
        )
    for i, fmt in enumerate(ctx.spec.checkpoints.exports):
        if fmt not in spec.extra_exports:
            ctx.report(
                "DBS381",
                "error",
                f'checkpoints.exports has "{fmt}", which dbspec does not write for {spec.title} models '
                f"(it writes {_written(spec.extra_exports)} for them)",
                ("checkpoints", "exports", i),
                help="remove it: the diffusers folder (or diffusers LoRA file) is always written",
            )
        elif (
            fmt == "kohya_lora"
            and not spec.kohya.lycoris_layout
            and (kind := _lycoris_kind(ctx.spec.adapter))
            and not _fused_lokr(ctx.spec.adapter, ctx.spec.train.denoiser)  # runtime/lycoris_export.py
            # LyCORIS's full algo: the parts' diffs stacked under kohya's names (runtime/lycoris_export.py)
            and not (isinstance(ctx.spec.adapter, FullAdapter) and spec.fused_projections)
            and not _layout_convs(ctx.spec.adapter, spec.kohya_conv_targets)
            and not _kohya_oft(ctx.spec.adapter, spec.kohya.oft_network)  # networks.oft_flux's file
            # LyCORIS's Diag-OFT on the fused layers: the parts' blocks stacked (runtime/lycoris_export.py)
            # ... or on the text encoders alone (LyCORIS's attn-only on SD3): their own modules, kohya's names
            and not _fused_oft(ctx.spec.adapter, ctx.spec.train.denoiser)
            and not (_fused_dora(ctx.spec.adapter) and spec.fused_projections)  # flux_kohya.py, sd3_kohya.py
            # IA^3's output rows under kohya's fused names (runtime/lycoris_export.py)
            and not (isinstance(ctx.spec.adapter, Ia3Adapter) and spec.fused_projections)
        ):
            ctx.report(
                "DBS381",
                "error",
                f'checkpoints.exports has "kohya_lora" for a {kind} run: dbspec writes {spec.title} kohya '
                "files for plain LoRA only (kohya's networks/lora_flux.py and lora_sd3.py layouts)",
                ("checkpoints", "exports", i),
                help='train plain LoRA (adapter.kind = "lora", no dora or conv_rank) for a kohya file, or '
                "remove the export: the diffusers LoRA file is always written",
            )


def _fused_lokr(adapter: Adapter, denoiser: bool) -> bool:
    """lycoris.kohya algo=lokr / loha on kohya's fused Flux / SD3 layers (their fused_projections), or on
    the text encoders alone (LyCORIS's attn-only on SD3): LyCORIS's file under kohya's module names
    (compiler/fused.py refuses fused layers in other families)."""
    lokr = isinstance(adapter, (LohaAdapter, LokrAdapter))
    return lokr and (adapter.fused_projections or not denoiser)


def _layout_convs(adapter: Adapter, named: tuple[str, ...]) -> bool:
    """A LoRA whose only LyCORIS part is LoCon on convolutions the family's kohya layout names (SD3's patch
    convolution: runtime/sd3_kohya.py writes it beside the Linears)."""
    plain = isinstance(adapter, LoraAdapter) and not adapter.dora and not block_dora(adapter)
    return plain and adapter.conv_rank > 0 and set(adapter.conv_targets) <= set(named)


def _kohya_oft(adapter: Adapter, network: str) -> bool:
    """Diag-OFT's kohya form where kohya has an OFT network for the family (Flux.1: networks.oft_flux, its
    file under kohya's Flux module names, runtime/flux_oft.py)."""
    return isinstance(adapter, DiagOftAdapter) and adapter.form == "kohya" and bool(network)


def _fused_oft(adapter: Adapter, denoiser: bool) -> bool:
    """lycoris.kohya algo=diag-oft, boft, glora, dylora or tlora on kohya's fused Flux / SD3 layers
    (fused_projections; compiler/fused.py refuses it elsewhere), or on the text encoders alone (LyCORIS's
    attn-only on SD3: CLIP-L's and CLIP-G's attention Linears, each its own module): LyCORIS's file under
    kohya's module names (runtime/lycoris_export.py)."""
    oft = isinstance(adapter, DiagOftAdapter) and adapter.form == "lycoris"
    kinds = (BoftAdapter, GloraAdapter, DyloraAdapter, TloraAdapter)
    return (oft or isinstance(adapter, kinds)) and (adapter.fused_projections or not denoiser)


def _fused_dora(adapter: Adapter) -> bool:
    """lycoris.kohya's LoCon with dora_wd on kohya's fused Flux / SD3 layers: the family's writer adds each
    fused layer's `dora_scale` (compiler/fused.py holds it to LyCORIS's per-row form, DBS509)."""
    return (
        isinstance(adapter, LoraAdapter)
        and adapter.fused_projections
        and (adapter.dora or block_dora(adapter))
    )


def _written(formats: tuple[str, ...]) -> str:
    return " and ".join(f'"{f}"' for f in formats) if formats else "only the diffusers layouts"


def _lycoris_kind(adapter: Adapter) -> str:
    """The adapter's LyCORIS-layout kind ("LoHa", "DoRA", ...), "" for plain LoRA or no adapter."""
    if isinstance(
        adapter,
        LohaAdapter
        | LokrAdapter
        | FullAdapter
        | Ia3Adapter
        | DiagOftAdapter
        | BoftAdapter
        | GloraAdapter
        | DyloraAdapter
        | TloraAdapter,
    ):
        names = {
            "loha": "LoHa",
            "lokr": "LoKr",
            "full": "LyCORIS full",
            "ia3": "IA^3",
            "diag-oft": "Diag-OFT",
            "boft": "BOFT",
            "glora": "GLoRA",
            "dylora": "DyLoRA",
            "tlora": "T-LoRA",
        }
        return names[adapter.kind]
    if not isinstance(adapter, LoraAdapter):
        return ""
    if adapter.dora or block_dora(adapter):  # a block's own too (LyCORIS map entries' weight_decompose)
        return "DoRA"
    return "LoCon (adapter.conv_rank)" if adapter.conv_rank else ""


def _config(ctx: Context) -> str:
    config = ctx.spec.model.config
    if config and ctx.resolve(config).is_dir():
        return str(ctx.resolve(config))
    return config


def _vae(ctx: Context) -> str:
    vae = ctx.spec.model.vae
    if not vae:
        return ""
    local = ctx.resolve(vae)
    return str(local) if local.exists() else vae


def _vae_identity(ctx: Context, base_vae_id: str) -> str:
    """Identity of the VAE that encodes latents: the replacement VAE if any, else the base model's."""
    vae = _vae(ctx)
    if not vae:
        return base_vae_id
    path = Path(vae)
    if path.is_file():
        return "file:" + file_fingerprint(path)
    if path.is_dir():
        digest = hashlib.blake2b(digest_size=16)
        for f in sorted(path.rglob("*")):
            if f.is_file():
                digest.update(f"{f.relative_to(path)}:{file_fingerprint(f)}".encode())
        return "dir:" + digest.hexdigest()
    return f"hub:{vae}"  # model.revision is the base model's, not the VAE's
