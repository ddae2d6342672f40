"""LyCORIS's `train_norm` on the CLIP text encoders (plan.adapter.text_encoder_norms) and the U-Net
(plan.adapter.denoiser_norms): each named LayerNorm's or GroupNorm's weight and bias get a trained offset.

lycoris-lora's NormModule (lycoris/modules/norms.py) holds `w_norm` and `b_norm`, zeros at the start, and
returns the layer's own output plus layer_norm(x, w_norm x multiplier, b_norm x multiplier) (a GroupNorm:
group_norm(x, num_groups, ...) with the layer's groups and eps): the layer with weight + w_norm and bias +
b_norm. Here the offsets are parameters of the norm layer itself,
`lora_w_norm` / `lora_b_norm` (peft's `lora_` marker: the trainable-weight filter and checkpoints hold them;
no adapter name in them, so peft's own state dicts and diffusers' LoRA files leave them out), and a forward
hook adds the same term. The module tree and every other parameter name stay as they were. `disabled`
switches the term off (a base-model prediction, adapters.adapters_disabled), as LyCORIS's multiplier 0 does.
While training, the network's `module_dropout` / `rank_dropout` draw as NormModule.forward draws (`_added`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT, BIAS = "lora_w_norm", "lora_b_norm"


_NORMS = (nn.LayerNorm, nn.GroupNorm)


def _added(layer: nn.LayerNorm | nn.GroupNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    if getattr(layer, "norm_offsets_disabled", False):
        return output
    x = args[0]
    w, b = getattr(layer, WEIGHT), getattr(layer, BIAS, None)
    module_dropout, rank_dropout = layer.norm_dropouts
    # NormModule.forward's draws, from torch's global generator as the adapters' (lora_dropout.py): the
    # layer skipped with one CPU `torch.rand(1)`, then make_weight's `torch.rand(dim) < rank_dropout` on the
    # input's device, which keeps (not drops) the offsets it marks, unscaled
    if layer.training and module_dropout and bool(torch.rand(1) < module_dropout):
        return output
    if layer.training and rank_dropout:
        keep = torch.rand(w.numel(), device=x.device) < rank_dropout
        w, b = w * keep, None if b is None else b * keep
    w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
    if isinstance(layer, nn.GroupNorm):  # NormModule's op for a GroupNorm: F.group_norm, its groups and eps
        added = F.group_norm(x, layer.num_groups, w, b, layer.eps)
    else:
        added = F.layer_norm(x, layer.normalized_shape, w, b, layer.eps)
    return output + added.to(output.dtype)


def _named(path: str, suffixes: tuple[str, ...]) -> bool:
    return any(path == s or path.endswith("." + s) for s in suffixes)


def add_norm_offsets(
    module: nn.Module,
    suffixes: tuple[str, ...],
    module_dropout: float = 0.0,
    rank_dropout: float = 0.0,
    required: bool = True,
) -> int:
    """The offsets on every LayerNorm or GroupNorm of `module` whose path ends in one of `suffixes`; how many
    layers. One without weight (elementwise_affine / affine off) is refused, as LyCORIS's NormModule fails
    on it. `required`: none named is a ValueError (SDXL's CLIP-L may have none of the names that pick
    OpenCLIP bigG's later layers: not required there).
    `module_dropout` / `rank_dropout`: the network's, which LyCORIS hands every NormModule too (the rank
    dropout plan.adapter.norm_rank_dropout, which the adapter's own layers may not read)."""
    count = 0
    for path, layer in module.named_modules():
        if not (isinstance(layer, _NORMS) and _named(path, suffixes)):
            continue
        if layer.weight is None:
            kind = type(layer).__name__
            raise ValueError(f"train_norm: `{path}` is a {kind} without weight or bias to offset")
        setattr(layer, WEIGHT, nn.Parameter(torch.zeros_like(layer.weight, dtype=torch.float32)))
        if layer.bias is not None:
            setattr(layer, BIAS, nn.Parameter(torch.zeros_like(layer.bias, dtype=torch.float32)))
        layer.norm_dropouts = (module_dropout, rank_dropout)
        layer.register_forward_hook(_added)
        count += 1
    if not count and required:
        raise ValueError(f"train_norm: no LayerNorm or GroupNorm of the model is named {list(suffixes)}")
    return count


def norm_layers(module: nn.Module | None) -> list[tuple[str, nn.Module]]:
    """(path, layer) of each LayerNorm / GroupNorm carrying offsets."""
    if module is None:
        return []
    return [(path, layer) for path, layer in module.named_modules() if hasattr(layer, WEIGHT)]


def set_disabled(module: nn.Module, disabled: bool) -> None:
    for _, layer in norm_layers(module):
        layer.norm_offsets_disabled = disabled


def norm_state(module: nn.Module | None) -> dict[str, torch.nn.Parameter]:
    """`<path>.w_norm` / `<path>.b_norm`: NormModule's names of each offset norm layer's offsets."""
    out = {}
    for path, layer in norm_layers(module):
        out[f"{path}.w_norm"] = getattr(layer, WEIGHT)
        if hasattr(layer, BIAS):
            out[f"{path}.b_norm"] = getattr(layer, BIAS)
    return out


def lycoris_norms(prefix: str, module: nn.Module, to_path, cast: torch.dtype) -> dict[str, torch.Tensor]:
    """NormModule's tensors under its kohya name (`<prefix>_<path>.w_norm` / `.b_norm`), cast to `cast`."""
    out = {}
    for key, value in norm_state(module).items():
        path, kind = key.rsplit(".", 1)
        name = f"{prefix}_{to_path(path).replace('.', '_')}.{kind}"
        out[name] = value.detach().to("cpu", cast, copy=True).contiguous()
    return out
