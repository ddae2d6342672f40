"""Weights a practitioner loads elsewhere: one-file checkpoints and kohya-format LoRA.

`export_single_file` writes the original Stable Diffusion key layout that A1111, ComfyUI and diffusers'
`from_single_file` load: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.*` (SD1 CLIP), `cond_stage_model.model.*` (SD2 OpenCLIP, q/k/v merged into
`in_proj`), `conditioner.embedders.0.transformer.*` + `conditioner.embedders.1.model.*` (SDXL). The block
tables are built from each model's config (the inverse of diffusers' `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`), so any block count maps, the tiny models too.

`export_kohya_lora` writes `lora_unet_*` / `lora_te*_*` keys with `.lora_down`, `.lora_up` and `.alpha`,
named as kohya sd-scripts' networks/lora.py names them: diffusers module paths for SD1/SD2 (kohya trains them
on a diffusers-layout UNet), original `input_blocks`/`middle_block`/`output_blocks` paths for SDXL (kohya's
SDXL UNet has the original layout); text encoders by their transformers `text_model.*` paths.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dbspec import __version__
from dbspec.families import family_spec, flow_text_prefixes, lycoris_text_prefixes, t5_text_encoders
from dbspec.plan.io import plan_hash
from dbspec.plan.model import Plan
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.families import family_runtime
from dbspec.families import Family
from dbspec.runtime.dtypes import to_dtype
from dbspec.unet_layout import Table, rename, unet_table

# --- VAE ------------------------------------------------------------------------------------------------
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_ATTENTION = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")  # 1x1 convs in the original


def adapted_text(plan: Plan) -> bool:
    """Whether a text encoder carries an adapter the exports hold: one trains, or train.text_encoder_idle's
    encoders carry theirs untrained (kohya's network saves its text-encoder modules at rate 0 too)."""
    return plan.train_text_encoder or bool(plan.idle_text_encoders)


def vae_table(config: Mapping[str, Any]) -> Table:
    """The original VAE numbers decoder blocks from the bottom: diffusers up_blocks.0 is up.{n-1}."""
    blocks, per_block = len(config["down_block_types"]), config["layers_per_block"]
    table: Table = {
        f"{coder}.{name}": (f"{coder}.{name}", {})
        for coder in ("encoder", "decoder")
        for name in ("conv_in", "conv_out")
    }
    table.update({name: (name, {}) for name in ("quant_conv", "post_quant_conv")})
    for coder in ("encoder", "decoder"):
        table[f"{coder}.conv_norm_out"] = (f"{coder}.norm_out", {})
        table[f"{coder}.mid_block.resnets.0"] = (f"{coder}.mid.block_1", _VAE_RESNET)
        table[f"{coder}.mid_block.resnets.1"] = (f"{coder}.mid.block_2", _VAE_RESNET)
        table[f"{coder}.mid_block.attentions.0"] = (f"{coder}.mid.attn_1", _VAE_ATTENTION)
    for i in range(blocks):
        for j in range(per_block):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        table[f"encoder.down_blocks.{i}.downsamplers.0"] = (f"encoder.down.{i}.downsample", {})
        for j in range(per_block + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = (
                f"decoder.up.{blocks - 1 - i}.block.{j}",
                _VAE_RESNET,
            )
        table[f"decoder.up_blocks.{i}.upsamplers.0"] = (f"decoder.up.{blocks - 1 - i}.upsample", {})
    return table


# --- text encoders --------------------------------------------------------------------------------------
_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}


def clip_path(name: str) -> str:
    """transformers >= 5.6 drops CLIPTextModel's `text_model.` level; the original layout keeps it."""
    return name if name.startswith(("text_model.", "text_projection")) else f"text_model.{name}"


def openclip_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP -> OpenCLIP (SD2, SDXL's second encoder): resblocks, q/k/v as one in_proj, x
    @ text_projection."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], list[torch.Tensor | None]] = {}
    for key, value in state.items():
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif (match := _CLIP_LAYER.match(key)) and match.group(2) in _QKV:
            parts = qkv.setdefault((match.group(1), match.group(3)), [None, None, None])
            parts[_QKV[match.group(2)]] = value
        elif match and match.group(2) in _OPENCLIP_LAYER:
            out[
                f"transformer.resblocks.{match.group(1)}.{_OPENCLIP_LAYER[match.group(2)]}.{match.group(3)}"
            ] = value
        else:
            raise ValueError(f"`{key}` has no place in the OpenCLIP layout")
    for (layer, kind), parts in qkv.items():
        if any(part is None for part in parts):
            raise ValueError(f"text encoder layer {layer} lacks one of q/k/v_proj.{kind}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts)  # type: ignore[arg-type]
    return out


def _text_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # position_ids is a buffer some transformers versions save; the tools rebuild it.
    return {clip_path(k): v for k, v in module.state_dict().items() if not k.endswith("position_ids")}


# --- single file ----------------------------------------------------------------------------------------
def single_file_state(
    *,
    unet: nn.Module,
    vae: nn.Module,
    text_encoders: list,
    family: Family,
    prediction: str = "epsilon",
    zero_terminal_snr: bool = False,
) -> dict[str, torch.Tensor]:
    """Every weight under its original key (views of the modules' tensors where nothing is merged)."""
    prefixes = tuple(e.single_file_prefix for e in family_spec(family).text_encoders)
    if len(text_encoders) != len(prefixes):
        raise ValueError(f"{family} has {len(prefixes)} text encoder(s); got {len(text_encoders)}")
    unet_names, vae_names = unet_table(unet.config), vae_table(vae.config)
    state = {f"model.diffusion_model.{rename(k, unet_names)}": v for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        original = rename(key, vae_names)
        conv = _VAE_CONV_ATTENTION.search(original) and value.ndim == 2
        state[f"first_stage_model.{original}"] = value[:, :, None, None] if conv else value
    for prefix, encoder in zip(prefixes, text_encoders):
        encoder_state = _text_state(encoder)
        if prefix.endswith(".model."):
            encoder_state = openclip_state(encoder_state)
        state.update({prefix + k: v for k, v in encoder_state.items()})
    if prediction == "v_prediction":  # markers ComfyUI reads for SDXL (SD2 v-prediction is told from weights)
        state["v_pred"] = torch.tensor([])
        if zero_terminal_snr:
            state["ztsnr"] = torch.tensor([])
    return state


def export_single_file(
    path: Path,
    *,
    unet: nn.Module,
    vae: nn.Module,
    text_encoders: list,
    family: Family,
    dtype: str,
    metadata: dict[str, str],
    prediction: str = "epsilon",
    zero_terminal_snr: bool = False,
) -> Path:
    """One `.safetensors` with UNet, VAE and text encoder(s) in the original layout,
    floats cast to `dtype`."""
    state = single_file_state(
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        family=family,
        prediction=prediction,
        zero_terminal_snr=zero_terminal_snr,
    )
    return write_single_file(Path(path), state, dtype, metadata)


def write_single_file(
    path: Path,
    state: dict[str, torch.Tensor],
    dtype: str,
    metadata: dict[str, str],
    *,
    counters: tuple[int, int] = (0, 0),
) -> Path:
    """A single-file state (any family's layout) as one `.safetensors`, floats cast to `dtype`; a `.ckpt` /
    `.pt` path writes kohya's pickle checkpoint instead, `{"state_dict", "epoch", "global_step"}` with
    `counters` = (epoch, global_step)."""
    cast = to_dtype(dtype)
    tensors = {
        k: v.detach().to("cpu", cast if v.is_floating_point() else v.dtype, copy=True).contiguous()
        for k, v in state.items()
    }
    return _write(Path(path), tensors, {**metadata, "format": "pt"}, counters=counters)


# --- kohya LoRA -----------------------------------------------------------------------------------------
_TEXT_PREFIXES = {1: ("lora_te",), 2: ("lora_te1", "lora_te2")}


def kohya_lora_state(
    *, unet: nn.Module | None, text_encoders: list, family: Family, dtype: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """kohya tensors (up/down in `dtype`, alpha in fp32 so a fractional alpha keeps its exact scale) and
    the ss_network_dim / ss_network_alpha they imply. `text_encoders`: none, or one entry per encoder of the
    family (None or adapter-less for one that did not train)."""
    cast = to_dtype(dtype)
    tensors: dict[str, torch.Tensor] = {}
    ranks: set[int] = set()
    alphas: set[float] = set()
    for prefix, module, to_path in kohya_parts(unet=unet, text_encoders=text_encoders, family=family):
        for name, down, up, rank, alpha in _kohya_lora_layers(module, folded=True):
            key = f"{prefix}_{to_path(name).replace('.', '_')}"
            tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", cast, copy=True).contiguous()
            tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", cast, copy=True).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            ranks.add(rank)
            alphas.add(alpha)
    return checked_layers(tensors, ranks, alphas)


def checked_layers(tensors: dict, ranks: set, alphas: set) -> tuple[dict, dict[str, str]]:
    """The kohya LoRA tensors and kohya's ss_network_dim / ss_network_alpha (the one rank and alpha, or
    "Dynamic" when layers differ); an export without a LoRA layer is an error."""
    if not tensors:
        raise ValueError("no LoRA layers to export: the modules carry no peft adapter")
    dims = {
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic",
    }
    return tensors, dims


def kohya_parts(
    *, unet: nn.Module | None, text_encoders: list, family: Family, lycoris: bool = False
) -> list:
    """(kohya key prefix, module, module path -> kohya path) for each adapted model, as kohya names them;
    the LoRA and the LyCORIS writers share it. `lycoris`: the names lycoris.kohya gives (T5-XXL's prefix on
    Flux and Chroma, families.lycoris_text_prefixes), else kohya's own network's."""
    spec = family_spec(family)
    expected = len(spec.text_encoders)
    if len(text_encoders) not in (0, expected):
        raise ValueError(f"{family} has {expected} text encoder(s); got {len(text_encoders)}")
    # kohya's flow networks (lora_flux, lora_sd3) number CLIP-L 1, CLIP-G 2, T5-XXL 3; LyCORIS its list
    named = lycoris_text_prefixes if lycoris else flow_text_prefixes
    flow = tuple(p.rstrip("_") for p in named(family)) if spec.kohya_lora_targets else ()
    prefixes = flow or _TEXT_PREFIXES[expected]
    t5 = t5_text_encoders(family)
    names = [e.component for e in spec.text_encoders]
    # T5-XXL's modules keep transformers' paths (lora_te3_encoder_block_...); CLIP's the original layout's
    parts = [
        (prefix, module, _same if name in t5 else clip_path)
        for prefix, module, name in zip(prefixes, text_encoders, names)
    ]
    if unet is not None:
        original = unet_table(unet.config) if spec.kohya.original_unet_names else None
        parts.append(("lora_unet", unet, (lambda n: rename(n, original)) if original else (lambda n: n)))
    return parts


def _same(name: str) -> str:
    return name


def _kohya_lora_layers(module: nn.Module | None, folded: bool = False):
    """(module path, lora_A weight, lora_B weight, rank, kohya alpha) for each LoRA layer of the adapter;
    `folded` (what a file holds): lora_B times the layer's scalar where it has one (use_scalar's, or LyCORIS
    max norm's fixed one, runtime/max_norm.py), as LyCORIS's custom_state_dict saves `lora_up.weight`."""
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.lycoris_switches import layer_scalar

    found = lora_adapter(module)
    if found is None:
        return
    module, adapter = found
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer) or adapter not in layer.r:
            continue
        if adapter not in layer.lora_A or layer.use_dora.get(adapter) or layer.lora_bias.get(adapter):
            raise ValueError(
                f"`{name}`: only plain LoRA on Linear/Conv2d layers has a kohya form "
                "(no DoRA, LoRA bias or embedding adapters)"
            )
        rank = layer.r[adapter]
        # kohya scales by alpha / rank; peft by `scaling` (alpha / rank, or / sqrt(rank) with rsLoRA).
        alpha = float(layer.scaling[adapter]) * rank
        up, scalar = layer.lora_B[adapter].weight, layer_scalar(layer, adapter) if folded else None
        yield name, layer.lora_A[adapter].weight, up if scalar is None else up * scalar, rank, alpha


def export_kohya_lora(
    path: Path,
    *,
    unet: nn.Module | None,
    text_encoders: list,
    family: Family,
    dtype: str,
    metadata: dict[str, str],
    prediction: str = "epsilon",
) -> Path:
    """kohya/A1111 LoRA `.safetensors` of the peft adapters on `unet` and `text_encoders` (None entries and
    adapter-less modules are skipped), with the ss_* metadata A1111's extra-networks page reads."""
    tensors, dims = kohya_lora_state(unet=unet, text_encoders=text_encoders, family=family, dtype=dtype)
    return write_kohya_lora(Path(path), tensors, dims, kohya_family_metadata(family, prediction), metadata)


def write_kohya_lora(
    path: Path, tensors: dict, dims: dict[str, str], family_metadata: dict[str, str], metadata: dict[str, str]
) -> Path:
    kohya = {"ss_network_module": "networks.lora", **dims, **family_metadata}
    return _write(Path(path), tensors, {**metadata, **kohya})


def kohya_family_metadata(family: Family, prediction: str) -> dict[str, str]:
    """The ss_* keys kohya writes about the base model (A1111's extra-networks page filters by them)."""
    facts = family_spec(family).kohya
    v = prediction == "v_prediction"
    return {
        "ss_base_model_version": facts.base_version + ("_v" if v and facts.v_suffix else ""),
        "ss_v2": str(facts.v2),
        "ss_v_parameterization": str(v),
    }


# --- writing and plan glue ------------------------------------------------------------------------------
PICKLE_SUFFIXES = (
    ".ckpt",
    ".pt",
)  # checkpoints.export_format "ckpt" / "pt": torch.save, as kohya writes them


def _write(
    path: Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    counters: tuple[int, int] | None = None,
) -> Path:
    """Written beside and renamed into place: a crash never leaves half a file under the final name.
    `.safetensors` with `metadata`; a `.ckpt` / `.pt` path is a pickle file as kohya's save_model_as "ckpt" /
    "pt" writes it (`torch.save`, no metadata): the bare state dict (networks/lora.py save_weights), or with
    `counters` = (epoch, global_step) a full model's `{"state_dict", "epoch", "global_step"}`
    (model_util.save_stable_diffusion_checkpoint)."""
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be strings; {bad[0]!r} is not")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix in PICKLE_SUFFIXES:
            payload: dict = tensors
            if counters is not None:
                payload = {"state_dict": tensors, "epoch": counters[0], "global_step": counters[1]}
            torch.save(payload, staging)
        else:
            save_file(tensors, str(staging), metadata=metadata)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def plan_metadata(plan: Plan, step: int = 0) -> dict[str, str]:
    """What made these weights: dbspec version, plan hash, base model and a training summary."""
    a, s, o = plan.adapter, plan.schedule, plan.optimizer
    training = {
        "step": step or s.total_steps,
        "total_steps": s.total_steps,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "accumulation": s.accumulation,
        "seed": s.seed,
        "optimizer": o.kind,
        "lr": o.lr,
        "text_encoder_lr": o.text_encoder_lr,
        "lr_schedule": s.lr_schedule,
        "adapter": a.kind,
        "rank": a.rank,
        "alpha": a.alpha,
        "mixed_precision": plan.precision.mixed,
        "train_denoiser": plan.train_denoiser,
        "train_text_encoder": plan.train_text_encoder,
        "save_precision": plan.checkpoints.save_precision,
        "datasets": [
            {
                "name": d.name,
                "role": d.role,
                "images": len(d.images),
                "samples_per_epoch": d.samples_per_epoch,
            }
            for d in plan.datasets
        ],
    }
    return {
        "dbspec.version": __version__,
        "dbspec.plan_hash": plan_hash(plan),
        "dbspec.base_model": plan.model.base,
        "dbspec.family": plan.model.family,
        "dbspec.prediction": plan.model.prediction,
        "dbspec.training": json.dumps(training, sort_keys=True),
    }


def _kohya_training(plan: Plan, step: int) -> dict[str, str]:
    instance = sum(img.repeats for d in plan.datasets if d.role == "instance" for img in d.images)
    regularisation = sum(len(d.images) for d in plan.datasets if d.role == "class")
    return {
        "ss_sd_model_name": plan.model.base,
        "ss_output_name": plan.checkpoints.name,
        "ss_steps": str(step or plan.schedule.total_steps),
        "ss_max_train_steps": str(plan.schedule.total_steps),
        "ss_learning_rate": str(plan.optimizer.lr),
        "ss_text_encoder_lr": str(plan.optimizer.text_encoder_lr),
        "ss_num_train_images": str(instance),
        "ss_num_reg_images": str(regularisation),
        "ss_seed": str(plan.schedule.seed),
        "ss_mixed_precision": plan.precision.mixed,
        "ss_training_comment": f"dbspec {__version__}",
    }


def exports_for_plan(plan: Plan, folder: Path, comps, step: int = 0) -> list[Path]:
    """Write the plan's `checkpoints.exports` into `folder`: `<name>.safetensors` (single_file, full runs)
    and `<name>.kohya.safetensors` (kohya_lora, LoRA runs), or `.ckpt` / `.pt` pickle files of the same
    tensors (`checkpoints.export_format`). `step` 0 means the finished run."""
    folder, name, written = Path(folder), plan.checkpoints.name, []
    ext = plan.checkpoints.export_format  # the suffix; `_write` picks the writer by it
    metadata = plan_metadata(plan, step)
    dtype, prediction = plan.checkpoints.save_precision, plan.model.prediction
    family = family_runtime(plan.model.family).exports  # the family's key layouts
    from dbspec.runtime.lycoris_export import export_lycoris, needs_lycoris_layout

    for fmt in plan.checkpoints.exports:
        if fmt == "single_file":
            state = family.single_file_state(
                denoiser=comps.unet,
                vae=comps.vae,
                text_encoders=list(comps.text_encoders),
                prediction=prediction,
                zero_terminal_snr=plan.loss.zero_terminal_snr,
            )
            path = folder / f"{name}.{ext}"
            written.append(
                write_single_file(path, state, dtype, metadata, counters=kohya_counters(plan, step))
            )
        elif fmt == "kohya_lora" and needs_lycoris_layout(plan.adapter, plan.model.family):  # LoCon, LoKr...
            written.append(
                export_lycoris(
                    folder / f"{name}.kohya.{ext}",
                    plan,
                    comps,
                    {**metadata, **_kohya_training(plan, step)},
                )
            )
        elif fmt == "kohya_lora":
            tensors, dims = family.kohya_lora_state(
                denoiser=comps.unet if plan.train_denoiser else None,
                text_encoders=list(comps.text_encoders) if adapted_text(plan) else [],
                dtype=dtype,
            )
            tensors.update(kohya_norms(plan, comps))  # LyCORIS train_norm's NormModules
            path = folder / f"{name}.kohya.{ext}"
            training = {**metadata, **_kohya_training(plan, step)}
            facts = family.kohya_metadata(prediction)
            if plan.adapter.kohya_names == "lycoris":  # lycoris.kohya's LoCon: its names (T5-XXL's prefix)
                tensors = lycoris_names(tensors, plan.model.family)
                facts = {**facts, "ss_network_module": "lycoris.kohya"}
            written.append(write_kohya_lora(path, tensors, dims, facts, training))
        else:
            raise ValueError(f"unknown export format {fmt!r}")
    return written


def lycoris_names(tensors: dict[str, torch.Tensor], family: Family) -> dict[str, torch.Tensor]:
    """kohya's flow-network tensors under LyCORIS's module names: the text encoders' prefixes where
    lycoris.kohya numbers them otherwise (Flux / Chroma T5-XXL: lora_te3_ -> lora_te2_)."""
    renamed = {
        ours: theirs
        for ours, theirs in zip(flow_text_prefixes(family), lycoris_text_prefixes(family))
        if ours != theirs
    }
    out = {}
    for key, value in tensors.items():
        prefix = next((p for p in renamed if key.startswith(p)), None)
        out[renamed[prefix] + key[len(prefix) :] if prefix else key] = value
    return out


def kohya_norms(plan: Plan, comps) -> dict[str, torch.Tensor]:
    """LyCORIS's NormModule tensors (`w_norm` / `b_norm`) of the CLIP LayerNorms and U-Net norms train_norm
    offsets (runtime/norm_offsets.py), under the text encoders' and the U-Net's kohya names (`lora_unet_`,
    SDXL's in the original layout)."""
    a = plan.adapter
    clip = bool((a.text_encoder_norms or a.text_encoder_2_norms) and adapted_text(plan))
    unet = bool(plan.adapter.denoiser_norms and plan.train_denoiser)
    if not (clip or unet):
        return {}
    from dbspec.runtime.norm_offsets import lycoris_norms

    cast = to_dtype(plan.checkpoints.save_precision)
    parts = kohya_parts(
        unet=comps.unet if unet else None,
        text_encoders=list(comps.text_encoders) if clip else [],
        family=plan.model.family,
    )
    return {
        k: v
        for prefix, module, to_path in parts
        for k, v in lycoris_norms(prefix, module, to_path, cast).items()
    }


def kohya_counters(plan: Plan, step: int = 0) -> tuple[int, int]:
    """The `epoch` and `global_step` kohya's full-model .ckpt holds. At the end of training kohya passes its
    epoch loop's variable, the 0-based index of the last epoch (train_db.py, sdxl_train.py:
    save_sd_model_on_train_end), and the steps run; `step` 0 means the finished run."""
    s = plan.schedule
    done = step or s.total_steps
    return max(-(-done // s.steps_per_epoch) - 1, 0), done
