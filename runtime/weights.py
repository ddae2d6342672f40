"""Which weights a run trains, how they are restored on resume, and how they are written as diffusers/peft
folders (final/ and each checkpoint's weights). Other tools' layouts are exports.py's; checkpoint folders are
checkpoints.py's."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dbspec.families import ALL_TEXT_ENCODERS, FAMILIES, Family, family_spec, t5_text_encoders
from dbspec.plan.io import plan_to_json
from dbspec.plan.model import Plan
from dbspec.runtime import checkpoints as ckpt
from dbspec.runtime import faults
from dbspec.runtime.adapters import any_scalar, any_tucker, is_adapter_weight, lycoris_dora, norm_scalars
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.mixed_kinds import KIND_CONFIGS, config_as, mixed
from dbspec.runtime.exports import exports_for_plan
from dbspec.runtime.models import Components, trained_text_encoders
from dbspec.runtime.outdir import replace_folder
from dbspec.util.atomic import write_text_atomic


def _trained_modules(comps: Components, plan: Plan) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {}
    if plan.train_denoiser:
        modules["unet"] = comps.unet
    modules.update(trained_text_encoders(plan, comps))
    return modules


def _with_adapters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """The modules carrying a peft adapter (a CLIP encoder training LyCORIS train_norm's offsets alone has
    none: runtime/norm_offsets.py)."""
    from dbspec.runtime.adapters import lora_adapter

    return {name: m for name, m in modules.items() if lora_adapter(m) is not None}


def _selected(name: str, plan: Plan) -> bool:
    return plan.adapter.kind == "none" or is_adapter_weight(name)


def trainable_state(comps: Components, plan: Plan) -> dict[str, torch.Tensor]:
    """Every weight the run trains (also after the text encoder stopped), at full precision, for resume."""
    return {
        f"{prefix}.{name}": p.detach().to("cpu", copy=True)
        for prefix, module in _trained_modules(comps, plan).items()
        for name, p in module.named_parameters()
        if _selected(name, plan)
    }


def restore_trainable(comps: Components, state: dict[str, torch.Tensor]) -> None:
    modules = {"unet": comps.unet, **dict(zip(ALL_TEXT_ENCODERS, comps.text_encoders))}
    params = {f"{prefix}.{name}": p for prefix, m in modules.items() for name, p in m.named_parameters()}
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(
            f"checkpoint holds weights this run does not have (e.g. {missing[0]}): was it made by "
            "another plan?"
        )
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value.to(params[key].device, params[key].dtype))


def save_weights(folder: Path, comps: Components, plan: Plan, ema=None) -> None:
    """LoRA runs: diffusers LoRA safetensors. Full runs: the trained components as diffusers folders.
    The plan that produced them is written beside them, and the EMA weights in `ema/` when enabled."""
    folder = Path(folder)
    if ema is not None:
        with ema.swap():
            _save_trained(folder / "ema", comps, plan)
    _save_trained(folder, comps, plan)
    if plan.pivotal is not None:  # pivotal tuning: the new tokens as embedding files
        from dbspec.runtime.tokens_ti import save_embeddings

        save_embeddings(folder, plan, comps.text_encoders, comps.tokenizers)


def _save_trained(folder: Path, comps: Components, plan: Plan) -> None:
    write_text_atomic(folder / "plan.json", plan_to_json(plan))
    dtype = plan.checkpoints.save_precision
    trained = _trained_modules(comps, plan)
    norms = (
        plan.adapter.text_encoder_norms or plan.adapter.text_encoder_2_norms or plan.adapter.denoiser_norms
    )
    if norms:  # LyCORIS train_norm's offsets: beside the adapters, not in them
        _save_norms(folder, trained, dtype)
        trained = _with_adapters(trained)  # a model that trains its norm offsets alone has none
        if not trained:  # the network's NormModules alone: no adapter file
            return
    if (plan.adapter.kind == "dylora" and not mixed(plan.adapter)) or (  # DyLoRA at every rank: a LoRA
        plan.adapter.kind == "lora"
        and not any_tucker(plan.adapter)
        and not lycoris_dora(plan.adapter)
        and not any_scalar(plan.adapter)
        and not norm_scalars(plan.adapter)  # LyCORIS max norm's scalars: saved by peft's layout
        and not mixed(plan.adapter)  # other kinds too: peft's layout
    ):
        encoders = trained_text_encoders(plan, comps)
        if norms:  # a model may train its norm offsets alone
            encoders = _with_adapters(encoders)
        # T5-XXL's LoRA (train.t5): diffusers' Flux LoRA file has no place for it, so peft's layout beside it
        # (<folder>/text_encoder_2/); the kohya_lora export holds it as lora_te3_*
        t5 = {n: m for n, m in encoders.items() if n in t5_text_encoders(plan.model.family)}
        encoders = {n: m for n, m in encoders.items() if n not in t5}
        save_lora_weights(
            folder,
            trained.get("unet"),
            encoders.get("text_encoder"),
            dtype,
            family=plan.model.family,
            text_encoder_2=encoders.get("text_encoder_2"),
        )
        if t5:
            save_peft_adapters(folder, t5, dtype)
        return
    if plan.adapter.kind != "none":  # LoHa, LoKr, LoCon's Tucker form, LyCORIS's DoRA (not diffusers')
        save_peft_adapters(folder, trained, dtype)
        return
    text = {name: m for name, m in trained.items() if name != "unet"}
    denoiser = family_spec(plan.model.family).denoiser  # its folder: unet, or SD3's transformer
    save_full_weights(folder, trained.get("unet"), text, dtype, denoiser=denoiser)


# LyCORIS train_norm's offsets beside a run's adapter files: the CLIP encoders' and the U-Net's
NORM_FILES = {"text_encoder_norms.safetensors": False, "denoiser_norms.safetensors": True}


def _save_norms(folder: Path, trained: dict[str, torch.nn.Module], dtype: str) -> None:
    """`text_encoder_norms.safetensors` (the CLIP encoders') and `denoiser_norms.safetensors` (the U-Net's):
    each offset norm layer's `<component>.<path>.w_norm` / `.b_norm` (runtime/norm_offsets.py), which
    neither peft's nor diffusers' adapter files have a place for."""
    from safetensors.torch import save_file

    from dbspec.runtime.norm_offsets import norm_state

    cast = to_dtype(dtype)
    for file, denoiser in NORM_FILES.items():
        tensors = {
            f"{name}.{key}": value.detach().to("cpu", cast, copy=True).contiguous()
            for name, module in trained.items()
            if (name == "unet") == denoiser
            for key, value in norm_state(module).items()
        }
        if tensors:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(folder / file))


def load_norms(folder: Path, modules: dict[str, torch.nn.Module]) -> int:
    """The offsets `_save_norms` wrote in `folder` copied onto `modules` (component name -> model, each
    carrying the plan's offsets: runtime/norm_offsets.py); how many tensors. KeyError for a file tensor that
    no module holds, or a module offset the files lack."""
    from safetensors.torch import load_file

    from dbspec.runtime.norm_offsets import norm_state

    wanted = {f"{name}.{key}": p for name, m in modules.items() for key, p in norm_state(m).items()}
    found: dict[str, torch.Tensor] = {}
    for file in NORM_FILES:
        if (folder / file).is_file():
            found.update(load_file(str(folder / file)))
    if found.keys() != wanted.keys():
        odd = sorted(found.keys() ^ wanted.keys())
        raise KeyError(f"train_norm offsets in {folder} do not fit the model: {odd[:3]}")
    with torch.no_grad():
        for key, p in wanted.items():
            p.copy_(found[key].to(p.dtype))
    return len(found)


def save_pipeline(folder: Path, pipeline, comps: Components, plan: Plan, ema=None) -> None:
    """A complete diffusers folder (full runs): the pipeline, with the trained parts cast
    to save_precision."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    save_weights(folder, comps, plan, ema)


def write_final(final: Path, pipeline, comps: Components, plan: Plan, ema=None) -> None:
    """The run's result and its exports, written beside and then renamed into place (a crash never leaves
    half a `final`, and an earlier `final` is deleted only once the new one is in place). With EMA, the
    exports hold the EMA weights (what validation showed)."""
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if plan.adapter.kind == "none":
            save_pipeline(staging, pipeline, comps, plan, ema)
        else:
            save_weights(staging, comps, plan, ema)
        with ema.swap() if ema is not None else contextlib.nullcontext():
            exports_for_plan(plan, staging, comps)
        faults.reached("final.staged")
        replace_folder(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if ckpt.is_write_failure(exc):
            raise ckpt.OutputError(ckpt.write_failure("the final weights", final.parent, exc)) from exc
        raise


# --- writers: diffusers and peft formats --------------------------------------------------------------------
def save_full_weights(
    folder: Path,
    unet: nn.Module | None,
    text_encoders: dict[str, nn.Module] | None,
    dtype: str | torch.dtype,
    *,
    denoiser: str = "unet",
) -> None:
    """`save_pretrained` (safetensors) of each trained component into `folder/<name>/`, cast to `dtype`.

    Saving never needs a second copy of the model in accelerator memory; the live modules are untouched.
    """
    components = {denoiser: unet, **(text_encoders or {})}
    for name, module in components.items():
        if module is not None:
            _cast_copy(module, to_dtype(dtype)).save_pretrained(Path(folder) / name, safe_serialization=True)


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A save-only copy: built on the meta device, filled from a cast CPU state dict. Non-persistent
    buffers (CLIP's position_ids) stay on meta: save_pretrained writes the state dict only."""
    cast = {
        key: value.detach().to("cpu", dtype if value.is_floating_point() else value.dtype, copy=True)
        for key, value in module.state_dict().items()
    }
    build = getattr(
        type(module), "from_config", type(module)
    )  # diffusers: from_config; transformers: __init__
    with torch.device("meta"):
        copy = build(module.config)
    copy.load_state_dict(cast, assign=True, strict=True)
    return copy


def save_lora_weights(
    folder: Path,
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    dtype: str | torch.dtype,
    *,
    family: Family,
    text_encoder_2: nn.Module | None = None,
) -> Path:
    """`pytorch_lora_weights.safetensors` in diffusers' format (as
    examples/dreambooth/train_dreambooth_lora.py writes it), with each adapter's LoraConfig as metadata so
    `pipe.load_lora_weights(folder)` restores rank, alpha and targets exactly. Modules are peft-adapted
    (`inject_lora` or `get_peft_model`) or None."""
    import diffusers

    spec = family_spec(family)
    given = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}  # by component name
    for name, module in given.items():
        if module is not None and name not in spec.text_encoder_names:
            having = ", ".join(n for n, f in FAMILIES.items() if name in f.text_encoder_names)
            raise ValueError(f"{name} LoRA given for family {family!r}; only {having} has a {name}")
    layers = {spec.denoiser: unet, **{name: given.get(name) for name in spec.text_encoder_names}}
    kwargs: dict[str, Any] = {}
    for name, module in layers.items():
        if module is not None:
            kwargs[f"{name}_lora_layers"], kwargs[f"{name}_lora_adapter_metadata"] = _diffusers_lora_layers(
                module, dtype, convert=not spec.lora_peft_keys
            )
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    pipeline_class.save_lora_weights(Path(folder), safe_serialization=True, **kwargs)
    return Path(folder) / "pytorch_lora_weights.safetensors"


def _diffusers_lora_layers(
    module: nn.Module, dtype: str | torch.dtype, *, convert: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter's weights in diffusers' key layout, cast to `dtype`, and its LoraConfig as a dict."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from dbspec.runtime.adapters import lora_adapter

    found = lora_adapter(module)
    if found is None:
        raise ValueError("no LoRA adapter to save: the module carries no peft adapter")
    module, adapter = found
    state = get_peft_model_state_dict(module, adapter_name=adapter)
    from dbspec.runtime.dylora import dylora_as_lora

    state = dylora_as_lora(state)  # DyLoRA's blocks joined: every rank, the LoRA it saves
    # a copy per key: parts of a fused layer share one lora_A (adapter.fused_projections), written per part
    cast = {k: v.detach().to("cpu", to_dtype(dtype), copy=True).contiguous() for k, v in state.items()}
    config = module.peft_config[adapter].to_dict()
    if not convert:
        return cast, config
    converted = convert_state_dict_to_diffusers(cast)
    # diffusers renames only the attention projections (to_q.lora_A -> to_q.lora.down); other layers (conv_in,
    # proj_in, ResNet convolutions, CLIP's fc1) keep peft's names. Its U-Net loader tells the layout by the
    # file's FIRST key alone (loaders/peft.py: `"lora_A" not in first_key`): a mixed file whose first key is a
    # peft one (conv_in, add_embedding, a proj_in before its block's attentions) has every converted key
    # dropped, with a warning only. One layout per file: diffusers' where it renames every key, else peft's.
    if any(key in converted for key in cast):
        return cast, config
    return converted, config


def save_peft_adapters(folder: Path, modules: dict[str, nn.Module], dtype: str | torch.dtype) -> list[Path]:
    """LoHa, LoKr and LoCon Tucker adapters (diffusers' LoRA format has no place for them) in peft's own
    layout, one folder per component: `<folder>/<component>/adapter_model.safetensors` +
    `adapter_config.json`, what `peft.set_peft_model_state_dict` and `PeftModel.from_pretrained` read (Tucker
    LoRA needs `locon_tucker.with_tucker` on the config: load_peft_adapters does that). The kohya_lora export
    holds the same weights in the LyCORIS layout A1111 and ComfyUI load."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dbspec.runtime.adapters import lora_adapter

    written = []
    for name, module in modules.items():
        found = lora_adapter(module)
        if found is None:
            raise ValueError(f"no adapter to save: {name} carries no peft adapter")
        plain, adapter = found
        kinds = getattr(plain, KIND_CONFIGS, {})  # other kinds' layers (mixed_kinds.py): a folder each
        target = Path(folder) / name
        for sub, config in [("", plain.peft_config[adapter]), *kinds.items()]:
            with config_as(plain, config):
                state = get_peft_model_state_dict(plain, adapter_name="default")
            if kinds:  # peft's LoHa / LoKr readers take every layer of the adapter name: this kind's only
                state = {
                    k: v for k, v in state.items() if _of_kind(config, k) and _oft_fits(plain, config, k)
                }
            cast = {
                k: v.detach().to("cpu", to_dtype(dtype), copy=True).contiguous() for k, v in state.items()
            }
            (target / sub).mkdir(parents=True, exist_ok=True)
            save_file(cast, str(target / sub / "adapter_model.safetensors"), metadata={"format": "pt"})
            config.save_pretrained(str(target / sub))
        written.append(target)
    return written


def _prefix(config) -> str:
    """peft's key prefix of the weights of `config`'s kind."""
    return _PREFIXES[getattr(config.peft_type, "value", config.peft_type)]


def _oft_fits(module: nn.Module, config, key: str) -> bool:
    """Diag-OFT's and BOFT's layers (a run with blocks of both kinds) share their `lora_oft_*` keys: a key
    of an OFT config's kind is a weight of a layer of its own class (DiagOftLayer, or BOFT's subclass)."""
    from dbspec.runtime.lycoris_oft import DiagOftLayer, is_oft

    if not is_oft(config) or ".lora_oft_" not in key:
        return True
    dispatch = next(iter(config._custom_modules.values()))
    own = getattr(dispatch, "keywords", {}).get("layer") or DiagOftLayer
    return type(module.get_submodule(key[: key.index(".lora_oft_")])) is own


def _of_kind(config, key: str) -> bool:
    """`key` is a weight of `config`'s kind: its peft prefix, LyCORIS's full, IA^3, Diag-OFT, GLoRA, DyLoRA
    and T-LoRA layers' `lora_full*` / `lora_ia3` / `lora_oft_*` / `lora_glora_*` / `lora_dylora_*` /
    `lora_tlora_*` told from LoRA's `lora_A` / `lora_B` (all LoraConfigs)."""
    from dbspec.runtime.dylora import is_dylora
    from dbspec.runtime.lycoris_full import is_full
    from dbspec.runtime.lycoris_glora import is_glora
    from dbspec.runtime.lycoris_ia3 import is_ia3
    from dbspec.runtime.lycoris_oft import is_oft
    from dbspec.runtime.lycoris_tlora import is_tlora

    if _prefix(config) not in key:
        return False
    markers = {".lora_full": is_full, ".lora_ia3": is_ia3, ".lora_oft_": is_oft, ".lora_glora_": is_glora}
    markers[".lora_dylora_"] = is_dylora
    markers[".lora_tlora_"] = is_tlora  # T-LoRA's beside a LoCon kind's (both LoraConfigs, `lora_` keys)
    own = next((marker for marker, test in markers.items() if test(config)), "")
    return own in key if own else not any(marker in key for marker in markers)


def load_peft_adapters(
    folder: Path,
    modules: dict[str, nn.Module],
    lokr_unit_scale: bool = False,
    bypass: bool = False,
    oft_form: str = "lycoris",
    fused_lokr: Any = None,
    lokr_rank_stabilized: bool = False,
    *,
    kind_only: bool = False,
    blocks: Any = None,
) -> list[str]:
    """Attach what `save_peft_adapters` wrote to the matching modules (by component name), and the other
    kinds' layers of a run with several (`<component>/<kind>/`, runtime/mixed_kinds.py); the names
    loaded. `kind_only`: the module already carries other kinds' layers, whose weights the folder lacks.
    `lokr_unit_scale`: the run's plan (`adapter.lokr_unit_scale`) trained full LoKr factors at scale 1.
    `bypass`: the plan's LyCORIS bypass_mode (Diag-OFT / BOFT rotate the output, its bias too, IA^3 scales
    it; DyLoRA blocks beside other kinds add their one block unscaled).
    `oft_form`: the plan's adapter.oft_form ("kohya": kohya's networks.oft layers, r their block count).
    `fused_lokr`: the plan's adapter when it trained LoKr or LoHa on fused layers (runtime/fused_lokr.py,
    fused_loha.py): the denoiser's parts share the fused factors the folder holds under each part's name;
    or LoCon on fused layers (its per-column weight decomposition's one magnitude per fused layer); or BOFT
    on fused layers (runtime/lycoris_boft.py: the parts share the fused module's blocks).
    `lokr_rank_stabilized`: the plan's adapter.lokr_rank_stabilized (those factors at sqrt(rank)); `blocks`:
    the plan's adapter, whose blocks may set their own (`rank_stabilized`, LyCORIS map entries' rs_lora;
    `bypass`, their bypass_mode; each T-LoRA layer's as training gives it: lycoris_tlora.py
    set_trained_tlora_bypass)."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from dbspec.runtime.locon_tucker import has_tucker, tucker_layers, with_tucker
    from dbspec.runtime.lycoris_dora import has_dora_scales, restore_lycoris_dora
    from dbspec.runtime.mixed_kinds import own_bypass, set_block_bypass

    # blocks' own bypass_mode (LyCORIS map entries'): the layers built in the default forward, each then
    # given its block's (mixed_kinds.set_block_bypass), as training builds them
    per_block = blocks is not None and not kind_only and own_bypass(blocks)
    bypass = bypass and not per_block
    loaded = []
    for name, module in modules.items():
        source = Path(folder) / name
        if not (source / "adapter_config.json").exists():
            continue
        config = PeftConfig.from_pretrained(str(source))
        state = load_file(str(source / "adapter_model.safetensors"))
        if has_tucker(state):  # LoCon's Tucker layers (some, with blocks' own): not in peft's JSON config
            config = with_tucker(config, tucker_layers(module, state), default=False)
        from dbspec.runtime.lycoris_full import has_full, with_full

        if has_full(state):  # LyCORIS's full algo: its layers are not in peft's JSON config either
            config = with_full(config)
        from dbspec.runtime.lycoris_ia3 import has_ia3, with_ia3

        if has_ia3(
            state
        ):  # LyCORIS's IA^3 (its sides ride on the config's rank_pattern; bypass: the bias too)
            config = with_ia3(config, bypass)
        from dbspec.runtime.lycoris_oft import has_oft, has_rescale, with_oft

        from dbspec.runtime.lycoris_glora import glora_scalar_layers, has_glora, with_glora

        if has_glora(state):  # LyCORIS's GLoRA (ranks and alphas in peft's config; its use_scalar's scalars)
            config = with_glora(config, scalars=glora_scalar_layers(module, state))
        from dbspec.runtime.lycoris_tlora import has_tlora, with_tlora

        if has_tlora(state):  # LyCORIS's T-LoRA (rank and alpha in peft's config; its frozen start saved,
            # at each block's sig_type, and loaded over the layer's own SVD start), in the plan's bypass_mode
            config = with_tlora(config, bypass=bypass)
        from dbspec.runtime.dylora import has_dylora, with_state_units

        if has_dylora(state):  # DyLoRA beside other kinds (mixed_kinds.py): each layer's blocks as saved
            config = with_state_units(config, module, state, bypass)
        from dbspec.runtime.lycoris_boft import BoftLayer, has_boft

        if has_boft(state):  # LyCORIS's BOFT: 4-D oft_blocks (the rest as Diag-OFT, each layer's rescale)
            from dbspec.runtime.lycoris_oft import rescale_layers

            own = rescale_layers(module, state)
            config = with_oft(config, has_rescale(state), BoftLayer, bypass, own_rescaled=own)
        elif has_oft(state) and oft_form == "kohya":  # kohya's networks.oft (dim and alpha: r and alpha)
            from dbspec.runtime.lycoris_oft import KohyaOftLayer

            config = with_oft(config, False, KohyaOftLayer)
        elif has_oft(state):  # LyCORIS's Diag-OFT (lora_dim and constraint ride on the config's r and alpha)
            from dbspec.runtime.lycoris_oft import rescale_layers

            # each layer's row rescale as saved (blocks may set their own: LyCORIS map entries)
            config = with_oft(
                config, has_rescale(state), bypass=bypass, own_rescaled=rescale_layers(module, state)
            )
        training = module.training
        boft_fused = bool(  # the denoiser's, or in a run of several kinds its BOFT kind's folder
            fused_lokr is not None
            and fused_lokr.kind == "boft"
            and fused_lokr.fused
            and (name == "unet" or kind_only)
        )
        if (
            getattr(config, "peft_type", None) == "LOKR"
        ):  # LyCORIS's Kronecker split or peft's (lokr_factor.py)
            from dbspec.runtime.lokr_factor import (
                lycoris_factors,
                options_of_state,
                shapes_of_state,
                split_of_state,
            )

            split, unbalanced = split_of_state(module, state, config.decompose_factor)
            if split != "peft":  # "layers": blocks' own factors, each layer's splits read off its weights
                shapes = shapes_of_state(module, state) if split == "layers" else None
                options = options_of_state(state, config)  # blocks' own decompose_both / tucker
                with lycoris_factors(unbalanced, shapes=shapes, options=options):
                    inject_adapter_in_model(config, module, adapter_name="default")
            else:
                inject_adapter_in_model(config, module, adapter_name="default")
        elif getattr(config, "peft_type", None) == "LOHA":  # blocks' own Tucker form: per layer
            from dbspec.runtime.loha_weight import loha_tucker_layers, tucker_of_state

            with loha_tucker_layers(tucker_of_state(state, config)):
                inject_adapter_in_model(config, module, adapter_name="default")
        else:
            from dbspec.runtime.lycoris_boft import fused_parts_deferred

            with fused_parts_deferred(boft_fused):  # a fused BOFT's parts: the fused split, tied below
                inject_adapter_in_model(config, module, adapter_name="default")
        if boft_fused:  # one ButterflyOFTModule per fused Linear, as in training (lycoris_boft.py)
            from dbspec.runtime.lycoris_boft import tie_fused_boft
            from dbspec.runtime.prepare import swapped_rows

            tie_fused_boft(module, fused_lokr.fused, "default", swapped_rows(module))
        from dbspec.runtime.lycoris_switches import apply_switches_for_state

        # the denoiser's (or, in a run of several kinds, its LoKr / LoHa kind's folder: kind_only)
        fused = (
            fused_lokr is not None and fused_lokr.kind in ("lokr", "loha") and (name == "unet" or kind_only)
        )
        if fused:  # the parts' fused factors (LoHa: w1_b / w2_b), tied as in training: before the switches
            from dbspec.runtime.adapters import tie_fused_lycoris

            tie_fused_lycoris(module, fused_lokr, 0)
        apply_switches_for_state(module, state)  # LoKr full_matrix, use_scalar: not in peft's config either
        if fused:  # one scalar per fused layer
            from dbspec.runtime.fused import tie_fused_scalars

            tie_fused_scalars(module, fused_lokr.fused)
        module.train(training)  # new layers start in training mode: rank/module dropout would stay on
        if has_oft(state):  # a fused Linear's Diag-OFT parts: the fused module's block size (lycoris_oft.py)
            from dbspec.runtime.lycoris_oft import fit_oft_to_state

            fit_oft_to_state(module, state, "default")
            from dbspec.runtime.kohya_rows import mark_swapped_rows
            from dbspec.runtime.prepare import swapped_rows

            # SD3 / Flux's swapped modulation with an odd count of blocks rotates kohya's rows, as in training
            mark_swapped_rows(module, swapped_rows(module))
        if has_dora_scales(state):  # LyCORIS's weight decomposition: peft's config does not record it
            restore_lycoris_dora(module, "default", state)
            # per input column: one magnitude per fused layer's column (tie_fused_doras), a LoCon's too
            locon = (  # the denoiser's, or in a run of several kinds its LoRA kind's folder
                fused_lokr is not None
                and fused_lokr.kind == "lora"
                and fused_lokr.fused
                and (name == "unet" or kind_only)
            )
            if fused or locon:
                from dbspec.runtime.lycoris_dora import tie_fused_doras

                tie_fused_doras(module, fused_lokr.fused)
        from dbspec.runtime.peft_draw import use_lycoris_lokr

        use_lycoris_lokr(module, "default")  # LoKr layers draw as in training (runtime/peft_draw.py)
        result = set_peft_model_state_dict(module, state)
        if lokr_unit_scale:
            from dbspec.runtime.adapters import unit_scale_full_lokr

            own = {}
            if blocks is not None:  # the denoiser's [[adapter.blocks]], a text encoder's own
                from dbspec.runtime.blocks import block_rank_stabilized

                own = block_rank_stabilized(module, blocks, name if name in ALL_TEXT_ENCODERS else "")
            unit_scale_full_lokr(module, lokr_rank_stabilized, own)
        if kind_only:  # the other kinds' layers lack this folder's weights
            missing = [k for k in result.missing_keys if _of_kind(config, k)]
            missing = [k for k in missing if _oft_fits(module, config, k)]
        else:
            missing = [k for k in result.missing_keys if any(m in k for m in _PREFIXES.values())]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{source}: adapter weights do not fit the model ({(result.unexpected_keys or missing)[0]})"
            )
        _load_kinds(source, module, lokr_rank_stabilized, fused_lokr if name == "unet" else None, bypass)
        if per_block:
            set_block_bypass(module, blocks, name if name in ALL_TEXT_ENCODERS else "")
        if blocks is not None and not kind_only:  # T-LoRA layers in training's bypass_mode (their blocks')
            from dbspec.runtime.lycoris_tlora import set_trained_tlora_bypass

            set_trained_tlora_bypass(module, blocks, name if name in ALL_TEXT_ENCODERS else "")
        loaded.append(name)
    return loaded


# peft's key prefix of each kind's weights
_PREFIXES = {"LORA": "lora_", "LOHA": "hada_", "LOKR": "lokr_"}


def _load_kinds(
    source: Path, module: nn.Module, lokr_rank_stabilized: bool, fused: Any = None, bypass: bool = False
) -> None:
    """The other kinds' layers of a run with several (`<component>/<kind>/` beside the adapter's own, each
    LoKr at LyCORIS's scale), their configs kept aside as training keeps them (runtime/mixed_kinds.py);
    `fused`: the plan's adapter when the denoiser's fused layers (Flux, SD3) hold them, a LoKr / LoHa kind's
    parts then tied to the fused factors as training ties them; `bypass`: the plan's (the Diag-OFT, BOFT
    and DyLoRA kinds' bypass forward)."""
    from dbspec.runtime.mixed_kinds import kind_adapter

    configs = {}
    for kind in sorted(p.name for p in source.iterdir() if (p / "adapter_config.json").exists()):
        own = module.peft_config
        del module.peft_config  # the kind's injection starts a config of its own
        sub = kind_adapter(fused, kind) if fused is not None and fused.fused else None
        load_peft_adapters(
            source,
            {kind: module},
            True,
            bypass,
            fused_lokr=sub,
            lokr_rank_stabilized=lokr_rank_stabilized,
            kind_only=True,
        )
        configs[kind] = module.peft_config["default"]
        module.peft_config = own
    if configs:
        setattr(module, KIND_CONFIGS, configs)
