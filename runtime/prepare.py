"""Preparing loaded components for training as the plan says: freezing, quantising, LoRA adapters, dtypes,
gradient checkpointing, train/eval mode, and the frozen teacher copy."""

from __future__ import annotations

import copy

import torch

from dbspec.families import family_spec, t5_text_encoders
from dbspec.plan.model import Plan
from dbspec.runtime import adapters
from dbspec.runtime.mixed_kinds import mixed
from dbspec.runtime.models import Components, set_attention, to_dtype, trained_text_encoders


def component_dtype(plan: Plan, name: str) -> torch.dtype:
    return to_dtype(next(c.dtype for c in plan.precision.components if c.name == name))


def configure_models(plan: Plan, comps: Components, device: torch.device) -> tuple[list, list]:
    """Freeze, quantise, attach adapters, set dtypes and checkpointing as each ComponentPlan says;
    return (unet params, text params per text encoder) that train."""
    for module in (comps.unet, comps.vae, *comps.text_encoders):
        adapters.freeze(module)
    comps.vae.to(device, dtype=component_dtype(plan, "vae"))
    set_attention(comps.unet, plan.precision.attention, plan.model.family)
    unet_params = _prepare(
        comps.unet, "unet", plan, device, plan.adapter.denoiser_targets, plan.schedule.seed
    )
    text_params: list[list] = []
    t5 = set(t5_text_encoders(plan.model.family))
    for i, (name, enc) in enumerate(
        zip(family_spec(plan.model.family).text_encoder_names, comps.text_encoders)
    ):
        # T5-XXL (train.t5) takes kohya's T5 targets; the CLIP encoders adapter.text_encoder_targets, the
        # second (text_encoder_2: OpenCLIP bigG) its own where the plan gives them
        targets = plan.adapter.t5_targets if name in t5 else text_targets(plan.adapter, name)
        text_params.append(_prepare(enc, name, plan, device, targets, plan.schedule.seed + 1 + i))
    return unet_params, text_params


def text_targets(adapter, name: str) -> tuple[str, ...]:
    """The adapted layers of the CLIP text encoder named `name` (a pipeline component)."""
    if name == "text_encoder_2" and adapter.text_encoder_2_targets is not None:
        return adapter.text_encoder_2_targets
    return adapter.text_encoder_targets


def text_norms(adapter, name: str) -> tuple[str, ...]:
    """LyCORIS train_norm's LayerNorms of the CLIP text encoder named `name` (a pipeline component)."""
    if name == "text_encoder_2" and adapter.text_encoder_2_norms is not None:
        return adapter.text_encoder_2_norms
    return adapter.text_encoder_norms


def _prepare(
    module: torch.nn.Module, name: str, plan: Plan, device: torch.device, targets: tuple[str, ...], seed: int
) -> list:
    comp = next(c for c in plan.precision.components if c.name == name)
    backend = plan.precision.quantize_backend
    if comp.quantized != "none" and backend == "cast" and name == "unet":
        from dbspec.runtime.quantize import quantize_frozen

        # kohya's fp8_base casts the U-Net as loaded (fp32) straight to float8 (one rounding, not two through
        # the planned dtype); its text encoders it casts after moving them to the device in the mixed dtype
        # (the general path below). The weights are read, and the rest held, in the planned dtype. Layers
        # of LyCORIS's full algo stay float (blocks.full_layer_paths: kohya casts after apply_to has taken
        # their weights into FullModule's copies).
        from dbspec.runtime.blocks import full_layer_paths

        whole = full_layer_paths(module, targets, plan.adapter) if comp.trainable == "lora" else []
        module.to(device)
        quantize_frozen(module, comp.quantized, backend=backend, exclude=whole, dtype=to_dtype(comp.dtype))
    else:
        # The dtype is settled before quantising: quantised weights cannot change dtype afterwards.
        module.to(device, dtype=to_dtype(comp.dtype))
    if comp.quantized != "none" and not (backend == "cast" and name == "unet"):
        from dbspec.runtime.quantize import quantize_frozen  # a backend's library only when quantising

        quantize_frozen(module, comp.quantized, backend=backend)
    if comp.trainable == "lora":
        # the plan names the denoiser's component "unet" in every family (Flux's and SD3's transformer too):
        # its convolution targets, per-block ranks ([[adapter.blocks]]) and fused projections apply
        denoiser = name == "unet"
        clip = not denoiser and name not in t5_text_encoders(plan.model.family)
        # LyCORIS train_norm: CLIP's LayerNorm offsets, the U-Net's GroupNorm / LayerNorm offsets
        norms = text_norms(plan.adapter, name) if clip else plan.adapter.denoiser_norms if denoiser else ()
        convs = denoiser and plan.adapter.conv_rank and plan.adapter.conv_targets
        if targets or convs or not norms:  # LyCORIS train_norm alone: no adapter
            from dbspec.runtime.lycoris_boft import fused_parts_deferred

            # a fused BOFT's parts take the fused width's split (_tie_fused), whether or not their own splits
            boft = plan.adapter.kind == "boft" or any(b.kind == "boft" for b in plan.adapter.blocks)
            with fused_parts_deferred(bool(plan.adapter.fused) and denoiser and boft):
                adapters.add_lora(module, plan.adapter, targets, seed, conv=denoiser, component=name)
        if norms:
            from dbspec.runtime.norm_offsets import add_norm_offsets

            a = plan.adapter
            # one list names every CLIP encoder's: SDXL's CLIP-L may have none of bigG's later layers
            t5 = t5_text_encoders(plan.model.family)
            several = (
                len([e for e in family_spec(plan.model.family).text_encoders if e.component not in t5]) > 1
            )
            # the offsets' own rank dropout (None: a plan before it, the adapter's)
            rank = a.rank_dropout if a.norm_rank_dropout is None else a.norm_rank_dropout
            add_norm_offsets(module, norms, a.module_dropout, rank, required=not (clip and several))
        if denoiser:  # LyCORIS's row masks and bypass Dropout over a swapped Linear's rows: in kohya's order
            from dbspec.runtime.kohya_rows import mark_swapped_rows

            mark_swapped_rows(module, swapped_rows(module))
        # LyCORIS's LoKr / LoHa on fused Linears are tied in add_lora, before its switches wrap the parts
        # (IA^3's and full's parts keep their own rows: their fused layers share the dropout draws alone)
        if plan.adapter.fused and denoiser and plan.adapter.kind not in ("lokr", "loha", "ia3", "full"):
            _tie_fused(module, plan.adapter)
        elif plan.adapter.fused and denoiser and mixed(plan.adapter):  # a LoKr / LoHa adapter's LoRA blocks
            from dbspec.runtime.fused import tie_fused_projections

            tie_fused_projections(module, plan.adapter.fused)
        if plan.adapter.fused and denoiser and mixed(plan.adapter):  # other kinds' blocks' fused layers
            _tie_fused_kinds(module, plan.adapter)
        if plan.adapter.fused and denoiser and own_input_side(plan.adapter):  # an IA^3 adapter's own blocks'
            from dbspec.runtime.lycoris_ia3 import tie_fused_ia3_inputs

            tie_fused_ia3_inputs(module, plan.adapter.fused)
        a = plan.adapter
        lycoris_drops = a.rank_dropout or a.module_dropout or a.output_dropout
        if a.fused and denoiser and a.kind in ("lokr", "loha") and lycoris_drops:
            from dbspec.runtime.fused_lycoris_dropout import (  # one draw per layer
                add_fused_lycoris_dropout,
                lokr_rows,
            )

            rates = (a.module_dropout, a.rank_dropout, a.rank_dropout_scale, a.output_dropout)
            # a LoHa adapter's LoKr blocks draw no row mask (LokrModule's bypass forward never reads it), nor
            # a LoKr adapter's layers in its bypass form (rank_dropout_form "lycoris_bypass")
            add_fused_lycoris_dropout(module, a.fused, *rates, lokr_rows=lokr_rows(a))
        if a.kind == "boft" and a.module_dropout and not mixed(a):  # after the fused parts are tied
            from dbspec.runtime.lycoris_boft import add_boft_module_dropout

            add_boft_module_dropout(module, a.module_dropout)
        # DiagOFTModule's / IA3Module's / FullModule's / TLoraModule's draws per layer, a fused Linear's parts
        # (tied above) sharing theirs
        if a.kind in ("diag-oft", "ia3", "full", "tlora") and a.module_dropout and not mixed(a):
            from dbspec.runtime.mixed_kinds import add_own_module_dropout

            add_own_module_dropout(module, a.module_dropout, a.fused if denoiser else ())
        if a.kind == "full" and a.rank_dropout and not mixed(a):  # FullModule's mask over the output rows
            from dbspec.runtime.lycoris_full import add_full_rank_dropout  # a fused Linear's parts: one

            fused, swapped = (a.fused, swapped_rows(module)) if denoiser else ((), None)
            add_full_rank_dropout(module, a.rank_dropout, fused, swapped)
        if a.kind == "diag-oft" and a.rank_dropout:  # its rotations' dropout (beside BOFT blocks too: theirs
            # none, add_oft_rank_dropout takes the Diag-OFT layers alone)
            from dbspec.runtime.lycoris_oft import add_oft_rank_dropout

            add_oft_rank_dropout(module, a.rank_dropout, adapters.ADAPTER_NAME)
        if a.rank_dropout and mixed(a) and a.kind in _ROW_MASKS:  # full / Diag-OFT layers' own draws
            from dbspec.runtime.mixed_kinds import add_kinds_rank_dropout

            fused, swapped = (a.fused, swapped_rows(module)) if denoiser else ((), None)
            add_kinds_rank_dropout(module, a.rank_dropout, fused, swapped)
        # a LoHa adapter's LoCon blocks' row masks too (rank_dropout_form "lycoris": add_module_dropout), and
        # on fused Linears the LoHa / LoCon blocks' one mask per fused layer
        # (a lokr adapter's LoCon blocks in its bypass form LoConModule's bypass rank mask, with or without
        # output_dropout)
        locon_rows = (
            a.kind != "lora" and a.rank_dropout_form in ("lycoris", "lycoris_bypass") and a.rank_dropout
        )
        fused_rows = bool(a.fused) and denoiser and bool(a.rank_dropout)
        # each kind's layers draw as its LyCORIS class does, once per fused layer (a LoHa / LoKr adapter's
        # LoRA blocks their bypass dropout too)
        if (a.module_dropout or locon_rows or fused_rows or a.output_dropout) and mixed(a):
            from dbspec.runtime.mixed_kinds import add_module_dropout

            add_module_dropout(module, a, a.fused if denoiser else ())
        drops = a.rank_dropout or a.module_dropout or a.down_dropout or a.output_dropout
        if a.kind == "lora" and (drops or a.multiplier != 1.0):
            from dbspec.runtime.lora_dropout import add_lora_dropout  # kohya networks.lora's forward

            rates = (a.rank_dropout, a.module_dropout, a.multiplier, a.down_dropout)
            forms = (a.rank_dropout_form, a.output_dropout)
            if plan.adapter.fused and denoiser and drops:
                from dbspec.runtime.fused_dropout import add_fused_dropout  # one draw per fused layer

                add_fused_dropout(module, plan.adapter.fused, *rates, *forms)
            if plan.adapter.split_fused and denoiser:
                from dbspec.runtime.fused_dropout import add_split_dropout  # kohya's split_qkv draws

                add_split_dropout(module, plan.adapter.split_fused, *rates)
            add_lora_dropout(module, *rates, *forms)
        # LyCORIS's bypass dropout on the other LoHa / LoKr layers (a lora adapter's LoHa / LoKr blocks' too,
        # each its own draw as LohaModule / LokrModule in bypass_mode), after the fused layers' shared draws
        # (above, add_module_dropout) so that a fused Linear's parts keep their one mask
        # LyCORIS's bypass forward with rank_dropout and no `dropout` (its `drop` nn.Identity, drawing
        # nothing): the same draws less the output's, the LoKr layers none (peft's LoKr would draw rows)
        bypass_ranks = a.rank_dropout_form == "lycoris_bypass" and a.rank_dropout and mixed(a)
        if (a.output_dropout or bypass_ranks) and (a.kind in ("lokr", "loha") or mixed(a)):
            from dbspec.runtime.fused_lycoris_dropout import add_lycoris_layer_dropout, lokr_rows

            rates = (a.module_dropout, a.rank_dropout, a.rank_dropout_scale, a.output_dropout)
            # a lora adapter's LoKr blocks draw no row mask (LokrModule's bypass forward never reads it), nor
            # a LoKr adapter's layers in its bypass form
            add_lycoris_layer_dropout(module, *rates, lokr_rows=lokr_rows(a))
        # adapter weights train in fp32 beside a half-precision or quantised base, or in bf16 or fp16 where
        # precision.weights says so (kohya's full_bf16 / full_fp16 cast the LoRA network)
        adapter_dtype = to_dtype(plan.precision.weights)
        for p in adapters.trainable_parameters(module):
            p.data = p.data.to(adapter_dtype)
        if adapters.norm_scalars(a):  # LyCORIS max norm's fixed scalars: in the adapter weights' dtype
            from dbspec.runtime.lycoris_switches import layer_scalar

            for layer in module.modules():
                if (scalar := layer_scalar(layer)) is not None:
                    scalar.data = scalar.data.to(adapter_dtype)
        if a.freeze_down:  # LoRA-FA (kohya networks.lora_fa): the downs stay at their own init
            from dbspec.runtime.lora_fa import freeze_down

            freeze_down(module, seed + 7919, grads=a.frozen_down_grad == "kohya")
        if a.kind == "lora" and a.ggpo_sigma is not None:
            from dbspec.runtime.ggpo import add_ggpo  # kohya lora_flux's LoRA-GGPO perturbation

            add_ggpo(module, a, a.fused if denoiser else ())
    elif comp.trainable == "full":
        module.requires_grad_(True)
    if comp.gradient_checkpointing:
        if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
            module.enable_gradient_checkpointing()
        else:  # transformers 5 renamed it; older releases only have the second name
            getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)()
    return adapters.trainable_parameters(module) if comp.trainable != "frozen" else []


# the adapters beside whose blocks of other kinds LyCORIS's rank_dropout is drawn by each kind's layers
# (compiler rules.lycoris_row_masks)
_ROW_MASKS = ("lora", "loha", "full", "ia3", "glora", "dylora", "tlora")


def _tie_fused(module: torch.nn.Module, adapter) -> None:
    """The parts of each fused Linear of the original model (plan.adapter.fused) share what the one module
    on the fused layer holds: kohya's LoRA, or LyCORIS's Diag-OFT, BOFT, DyLoRA, GLoRA, T-LoRA."""
    if adapter.kind == "boft":
        from dbspec.runtime.lycoris_boft import tie_fused_boft

        tie_fused_boft(module, adapter.fused, adapters.ADAPTER_NAME, swapped_rows(module))
    elif adapter.kind == "diag-oft":
        from dbspec.runtime.lycoris_oft import fit_fused_oft

        fit_fused_oft(module, adapter.fused, adapters.ADAPTER_NAME)
    elif adapter.kind == "dylora":
        from dbspec.runtime.dylora import tie_fused_dylora

        tie_fused_dylora(module, adapter.fused, adapters.ADAPTER_NAME)
    elif adapter.kind == "glora":
        from dbspec.runtime.lycoris_glora import tie_fused_glora

        tie_fused_glora(module, adapter.fused, adapters.ADAPTER_NAME)
    elif adapter.kind == "tlora":  # one SVD of the stacked weight: Q and λ shared, P the parts' rows
        from dbspec.runtime.lycoris_tlora import fit_fused_tlora

        fit_fused_tlora(module, adapter.fused, adapters.ADAPTER_NAME, swapped_rows(module))
    else:
        from dbspec.runtime.fused import tie_fused_projections

        tie_fused_projections(module, adapter.fused)


def own_input_side(adapter) -> bool:
    """An IA^3 adapter whose own blocks (a LyCORIS map entry's train_on_input) put some layers on their input
    side: LyCORIS's one IA3Module per fused Linear, one scale its parts share (tie_fused_ia3_inputs)."""
    return adapter.kind == "ia3" and any(b.kind == "adapter" and b.on_input for b in adapter.blocks)


def swapped_rows(module: torch.nn.Module):
    """path -> whether kohya's model holds that Linear's halves of rows the other way round (the inputs of
    diffusers' AdaLayerNormContinuous, (scale, shift) where kohya's Flux and SD3 read (shift, scale):
    runtime/sd3_kohya.py swapped, as lycoris_export.py writes them)."""
    from dbspec.runtime.sd3_kohya import swapped

    return lambda path: swapped(path, module)


def _tie_fused_kinds(module: torch.nn.Module, adapter) -> None:
    """In a run of several kinds (runtime/mixed_kinds.py), the fused Linears its Diag-OFT / BOFT / GLoRA /
    DyLoRA / input-side IA^3 blocks hold (a DyLoRA adapter's LoRA blocks too) as that kind's one module on the
    fused layer (each
    kind's parts only: the others are left alone; the adapter's own kind's are _tie_fused's)."""
    kinds = {b.kind for b in adapter.blocks if b.kind != adapter.kind}
    if "boft" in kinds:  # one ButterflyOFTModule per fused Linear: its blocks shared
        from dbspec.runtime.lycoris_boft import tie_fused_boft

        tie_fused_boft(module, adapter.fused, adapters.ADAPTER_NAME, swapped_rows(module))
    if "dylora" in kinds:  # one DyLoraModule per fused Linear: its down blocks and draw shared
        from dbspec.runtime.dylora import tie_fused_dylora

        tie_fused_dylora(module, adapter.fused, adapters.ADAPTER_NAME)
    if "lora" in kinds and adapter.kind in ("dylora", "glora", "tlora"):  # LoConModule's one down per fused
        # Linear
        from dbspec.runtime.fused import tie_fused_projections

        tie_fused_projections(module, adapter.fused)
    if "diag-oft" in kinds:
        from dbspec.runtime.lycoris_oft import fit_fused_oft

        fit_fused_oft(module, adapter.fused, adapters.ADAPTER_NAME)
    if "glora" in kinds:
        from dbspec.runtime.lycoris_glora import tie_fused_glora

        tie_fused_glora(module, adapter.fused, adapters.ADAPTER_NAME)
    if "ia3" in kinds:  # an IA^3 block's input side (on_input): one scale per input column the parts share
        from dbspec.runtime.lycoris_ia3 import tie_fused_ia3_inputs

        tie_fused_ia3_inputs(module, adapter.fused)
    if "tlora" in kinds:  # one SVD of the stacked weight per fused Linear: Q and λ shared, P the parts' rows
        from dbspec.runtime.lycoris_tlora import fit_fused_tlora

        fit_fused_tlora(module, adapter.fused, adapters.ADAPTER_NAME, swapped_rows(module))


def raises_dylora_ups(adapter) -> bool:
    """LoRA+ on a DyLoRA adapter's own ups: kohya networks.dylora's LoRA+ raises them (its `lora_B`), a
    LyCORIS-form DyLoRA network's never (prepare_optimizer_params raises `lora_up` parameters only: its
    LoCon entries' alone)."""
    return adapter.kind == "dylora" and adapter.dylora_form != "lycoris"


def lora_up_ids(comps: Components, dylora: bool = True) -> frozenset[int]:
    """LoRA+: the ids of the trained LoRA up matrices (peft `lora_B`, kohya's `lora_up`; with `dylora`,
    a DyLoRA adapter's, DyLoRA's blocks of it, `lora_dylora_up`, kohya networks.dylora's `lora_B`) of every
    model. DyLoRA blocks beside an adapter of another kind (LyCORIS's DyLoraModule entries), and a
    LyCORIS-form DyLoRA adapter's own ups (raises_dylora_ups: only its LoCon blocks' `lora_B` rise), stay
    out: LyCORIS's prepare_optimizer_params raises parameters named `lora_up` only, never DyLoraModule's
    `up_list`."""
    ups = (".lora_B.", ".lora_dylora_up.") if dylora else (".lora_B.",)
    return frozenset(
        id(p)
        for module in (comps.unet, *comps.text_encoders)
        for name, p in module.named_parameters()
        if p.requires_grad and any(up in f".{name}." for up in ups)
    )


def set_train_mode(comps: Components, plan: Plan) -> None:
    """The modules' mode for training steps: the denoiser's by whether it trains, the text encoders' as
    train.text_encoder_mode says (kohya's LoRA scripts: every one in train mode under gradient checkpointing,
    in eval mode otherwise; only T5-XXL has dropout, drawn from torch's global generator)."""
    comps.unet.train(plan.train_denoiser)
    trained = trained_text_encoders(plan, comps).values()
    for enc in comps.text_encoders:
        if plan.text_encoder_mode == "trained":
            enc.train(any(enc is t for t in trained))
        else:
            enc.train(plan.text_encoder_mode == "train")


def make_teacher(plan: Plan, comps: Components, device: torch.device) -> torch.nn.Module | None:
    """The frozen base UNet copy the plan asks for (`loss.teacher`; its memory is in the plan's estimate)."""
    if "unet" not in plan.loss.teacher:
        return None
    teacher = copy.deepcopy(comps.unet).requires_grad_(False).eval()
    dtype = torch.float32 if plan.precision.mixed == "no" else to_dtype(plan.precision.mixed)
    return teacher.to(device, dtype=dtype)
