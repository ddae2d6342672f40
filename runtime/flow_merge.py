"""`plan.model.merge_adapters` for Flux and SD3 (kohya `--base_weights` with flux_train_network.py /
sd3_train_network.py): a LoRA file in kohya's lora_flux / lora_sd3 layout merged into diffusers' model.

kohya builds a network from the file over the original model (networks/lora_flux.py, lora_sd3.py
`create_network_from_weights`, never split_qkv) and merges each module into its original Linear:
weight + multiplier x (up @ down) x alpha / rank, in fp32 on the CPU, rounded to the mixed-precision dtype
(`LoRAInfModule.merge_to`). A fused Linear of the original (Flux's `img_attn.qkv`, `linear1`; SD3's
`attn.qkv`) is several diffusers Linears whose weights are its rows; so the fused update is computed once, as
kohya computes it, and each diffusers part receives its rows of it (the rows split as runtime/flow_init.py
splits a fused layer's ups: the family's part order, each part's output width). A split_qkv file (downs
stacked, ups block diagonal) merges as kohya merges it: the same product, rows of lora_down as its rank.
Elementwise, a part's merged weight is bit-identical to the rows of kohya's merged fused weight.

Scope, as kohya's network from weights has it: Flux merges the modules inside its double and single blocks
(and the text encoders' attention / MLP Linears; T5-XXL only when the file has a `lora_te3_` module), its
other modules (img_in, final_layer, ...) are ignored with a note; SD3 merges the joint blocks and, from the
file, the embedders and the final layer (a module dbspec cannot place is an error: the plan refused
x_embedder, DBS392). The adaLN Linears whose diffusers form holds (scale, shift) where the original holds
(shift, scale) (AdaLayerNormContinuous) get the update's halves swapped."""

from __future__ import annotations

from importlib import import_module

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.families import family_spec, flow_text_prefixes
from dbspec.plan.model import MergePlan
from dbspec.runtime.exports import clip_path
from dbspec.runtime.merge_adapters import merge_layer

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_TEXT_SCOPES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP", "T5Attention", "T5DenseGatedActDense")


def merge_flow_adapters(plan, unet: torch.nn.Module, text_encoders: list, dtype: torch.dtype) -> list[str]:
    family = plan.model.family
    denoiser = denoiser_layers(family, unet)
    return [
        merge_flow_file(merge, family, denoiser, text_layers(family, text_encoders, merge.path), dtype)
        for merge in plan.model.merge_adapters
    ]


def denoiser_layers(family: str, unet: torch.nn.Module) -> dict[str, list]:
    """kohya module name (`lora_unet_...`) -> [(diffusers path, Linear, part index or None, whether its
    parent is an AdaLayerNormContinuous)], the parts of a fused layer in their row order."""
    layout = import_module(f"dbspec.runtime.{family_spec(family).runtime}_kohya")
    found: dict[str, list] = {}
    for path, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        try:
            name, part = layout.original_name(path)
        except ValueError:
            continue
        parent = unet.get_submodule(path.rsplit(".", 1)[0]) if "." in path else unet
        swapped = type(parent).__name__ == "AdaLayerNormContinuous"
        found.setdefault(f"lora_unet_{name}", []).append((path, module, part, swapped))
    for parts in found.values():
        parts.sort(key=lambda p: -1 if p[2] is None else p[2])
    return found


def text_layers(family: str, text_encoders: list, path: str) -> dict[str, torch.nn.Module]:
    """kohya module name -> Linear of the text encoders kohya's network from this file adapts (T5-XXL only
    when the file holds a `lora_te3_` module: kohya's train_t5xxl detection)."""
    with safe_open(path, "pt") as file:  # the names only (the header)
        names = {key.split(".")[0] for key in file.keys()}
    with_t5 = any(n.startswith("lora_te3_") for n in names)
    found: dict[str, torch.nn.Module] = {}
    for prefix, encoder in zip(flow_text_prefixes(family), text_encoders):
        if prefix == "lora_te3_" and not with_t5:
            continue
        for name, module in encoder.named_modules():
            if type(module).__name__ not in _TEXT_SCOPES:
                continue
            for child_name, child in module.named_modules():
                if isinstance(child, torch.nn.Linear):
                    full = f"{name}.{child_name}" if child_name else name
                    kohya = full if prefix == "lora_te3_" else clip_path(full)
                    found[prefix + kohya.replace(".", "_")] = child
                    found.setdefault(prefix + full.replace(".", "_"), child)  # text_model-less CLIP
    return found


def merge_flow_file(merge: MergePlan, family: str, denoiser: dict, text: dict, dtype: torch.dtype) -> str:
    state = load_file(merge.path)
    names = sorted({key.split(".")[0] for key in state if key.endswith(_DOWN)})
    merged, ignored = 0, 0
    scan = family_spec(family).kohya.weights_scan  # Flux: the double and single blocks only
    with torch.no_grad():
        for name in names:
            up, down, alpha = state[name + _UP], state[name + _DOWN], state.get(name + _ALPHA)
            if name in text:
                merge_layer(text[name], up, down, alpha, merge.multiplier, dtype)
            elif name.startswith("lora_unet_") and (not scan or name.startswith(scan)):
                parts = denoiser.get(name)
                if parts is None:
                    raise ValueError(
                        f"{merge.path}: tensor `{name}{_DOWN}` names no layer of this {family} model that "
                        "kohya's network merges"
                    )
                merge_parts(merge.path, name, parts, up, down, alpha, merge.multiplier, dtype)
            else:
                ignored += 1
                continue
            merged += 1
    return f"merged {merged} layers of {merge.path} x {merge.multiplier:g}" + (
        f"; {ignored} of its modules are outside kohya's network from weights and are ignored, as kohya "
        "ignores them"
        if ignored
        else ""
    )


def merge_parts(path: str, name: str, parts: list, up, down, alpha, multiplier: float, dtype) -> None:
    """kohya's merge of one original Linear (fused or not) into its diffusers parts."""
    up, down = up.to(torch.float), down.to(torch.float)
    rank = down.size()[0]
    value = alpha.detach().float() if alpha is not None else None
    scale = value / rank if value is not None and float(value) != 0 else rank / rank
    widths = [int(module.weight.shape[0]) for _, module, _, _ in parts]
    if up.shape[0] != sum(widths) or down.shape[1] != parts[0][1].weight.shape[1] or up.shape[1] != rank:
        raise ValueError(
            f"{path}: `{name}` has lora_up {list(up.shape)} and lora_down {list(down.shape)}; the model's "
            f"layer is {sum(widths)} x {parts[0][1].weight.shape[1]}"
        )
    # kohya's product over the whole fused layer, then each part's rows of it
    delta = multiplier * (up @ down) * scale
    for (_path, module, _part, swapped), rows in zip(parts, delta.split(widths, dim=0)):
        if swapped:
            first, second = rows.chunk(2, dim=0)
            rows = torch.cat([second, first], dim=0)
        weight = module.weight.detach().to("cpu").to(torch.float)
        module.weight.copy_((weight + rows).to(dtype))
