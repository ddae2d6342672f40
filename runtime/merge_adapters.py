"""`plan.model.merge_adapters` (kohya `--base_weights`): LoRA files merged into the base weights before the
run's own adapter is made, with kohya's arithmetic (networks/lora.py `create_network_from_weights` and
`LoRAInfModule.merge_to`).

kohya builds a network from the file's modules over its LoRA targets (the Linear and Conv2d layers inside
the UNet's Transformer2DModel, ResnetBlock2D, Downsample2D and Upsample2D blocks and the text encoders'
attention and MLP blocks; a file module outside them is ignored), then per layer, on the CPU in fp32: weight
+ multiplier x (up @ down) x alpha / rank (a 1x1 convolution as a matrix product, a k x k one as the down
kernel through the up matrix), rounded to the mixed-precision dtype and loaded back into the layer. A
missing alpha is the rank. The plan checked the files' headers; here the layers are named as kohya names
them (the names the kohya exporter writes)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from dbspec.families import family_spec
from dbspec.plan.model import MergePlan, Plan
from dbspec.runtime.dtypes import mixed_dtype
from dbspec.runtime.exports import kohya_parts

# the module classes whose Linear / Conv2d children kohya's LoRA network adapts (networks/lora.py)
_SCOPES = {
    "lora_unet": ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"),
    "text": ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"),
}


def merge_adapters(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> list[str]:
    """Merge every file of the plan, in order; one note per file (layers merged, file modules ignored)."""
    dtype = mixed_dtype(plan.precision.mixed) or torch.float32
    if family_spec(plan.model.family).fused_projections:  # Flux, SD3: kohya's lora_flux / lora_sd3 layout
        from dbspec.runtime.flow_merge import merge_flow_adapters

        return merge_flow_adapters(plan, unet, text_encoders, dtype)
    layers = kohya_layers(plan, unet, text_encoders)
    return [merge_file(merge, layers, dtype) for merge in plan.model.merge_adapters]


def kohya_layers(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> dict[str, torch.nn.Module]:
    """kohya's LoRA module name -> the Linear or Conv2d layer it merges into."""
    found: dict[str, torch.nn.Module] = {}
    for prefix, model, to_path in kohya_parts(
        unet=unet, text_encoders=text_encoders, family=plan.model.family
    ):
        scopes = _SCOPES["lora_unet" if prefix == "lora_unet" else "text"]
        for name, module in model.named_modules():
            if type(module).__name__ not in scopes:
                continue
            for child_name, child in module.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    path = f"{name}.{child_name}" if child_name else name
                    found[f"{prefix}_{to_path(path).replace('.', '_')}"] = child
    return found


def merge_file(merge: MergePlan, layers: dict[str, torch.nn.Module], dtype: torch.dtype) -> str:
    state = load_file(merge.path)
    names = sorted({key.split(".")[0] for key in state if key.endswith(".lora_down.weight")})
    merged = [name for name in names if name in layers]
    with torch.no_grad():
        for name in merged:
            alpha = state.get(f"{name}.alpha")
            merge_layer(
                layers[name],
                state[f"{name}.lora_up.weight"],
                state[f"{name}.lora_down.weight"],
                alpha,
                merge.multiplier,
                dtype,
            )
    ignored = len(names) - len(merged)
    return f"merged {len(merged)} layers of {merge.path} x {merge.multiplier:g}" + (
        f"; {ignored} of its modules match no kohya LoRA target here and are ignored, as kohya ignores them"
        if ignored
        else ""
    )


def merge_layer(layer, up, down, alpha, multiplier: float, dtype: torch.dtype) -> None:
    """kohya's merge_to of one layer: weight + multiplier x update x alpha / rank in fp32 on the CPU, rounded
    to `dtype`, copied back into the layer's weight (in its own dtype)."""
    up, down = up.to(torch.float), down.to(torch.float)
    rank = down.size()[0]
    # kohya keeps alpha as float32 (a missing one, or 0, is the rank: scale 1)
    value = alpha.detach().float() if alpha is not None else None
    scale = value / rank if value is not None and float(value) != 0 else rank / rank
    weight = layer.weight.detach().to("cpu").to(torch.float)
    if weight.dim() == 2:
        weight = weight + multiplier * (up @ down) * scale
    elif down.size()[2:4] == (1, 1):
        weight = (
            weight
            + multiplier
            * (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
            * scale
        )
    else:
        conved = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        weight = weight + multiplier * conved * scale
    layer.weight.copy_(weight.to(dtype))
