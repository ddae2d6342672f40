"""LyCORIS LoCon's Tucker form (`use_tucker`, `plan.adapter.tucker` with kind "lora") as a peft LoRA layer.

LyCORIS (lycoris/modules/locon.py, LoConModule with use_tucker) adapts a k x k convolution with three
convolutions: `lora_down`, 1x1 (in -> rank); `lora_mid`, k x k (rank -> rank, the layer's stride and padding);
`lora_up`, 1x1 (rank -> out); the update is scaled by alpha / rank. Its weight is rebuilt as
ΔW[o, i, ...] = Σ_ab mid[a, b, ...] up[o, a] down[b, i] (lycoris.functional.general.rebuild_tucker), which is
what the chain up(mid(down(x))) computes: the 1x1 convolutions have no bias, so padding before or after
`lora_down` is the same. Init (LyCORIS's, so a run starts as kohya's does): `lora_down` and `lora_mid`
kaiming-uniform (a = sqrt 5), `lora_up` zero. LyCORIS saves them as `lora_down.weight`, `lora_mid.weight`,
`lora_up.weight` and `alpha`.

peft's LoRA has no middle factor: `TuckerConv2d` is peft's LoRA Conv2d with a `lora_mid` ModuleDict (peft's
custom-module mechanism, `LoraConfig._register_custom_module`); `lora_A` is the 1x1 down, `lora_B` the 1x1 up.
Only k x k convolutions take this form (LyCORIS's rule: 1x1 convolutions and linears keep plain LoRA)."""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.lora.layer import Conv2d as LoraConv2d
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import AddedOutput


class TuckerConv2d(AddedOutput, LoraConv2d):
    """peft LoRA on a k x k Conv2d as LyCORIS LoCon's Tucker form: lora_A (1x1), lora_mid (k x k), lora_B
    (1x1). No DoRA, LoRA bias or grouped convolution (refused at build time)."""

    _holds = "lora_mid"
    _title = "LoCon's Tucker form"

    adapter_layer_names = (*LoraLayer.adapter_layer_names, "lora_mid")

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs: Any) -> None:
        base = self.get_base_layer()
        if config.use_dora or config.lora_bias:
            raise ValueError("LoCon's Tucker form has no DoRA or LoRA bias")
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(
                f"LoCon's Tucker form needs an ungrouped, zero-padded convolution (groups {base.groups}, "
                f"padding_mode {base.padding_mode!r})"
            )
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if "lora_mid" not in self._modules:  # peft's LoraLayer.__init__ made the others
            self.lora_mid = nn.ModuleDict()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        dropout = config.lora_dropout
        self.lora_dropout[adapter_name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Conv2d(self.in_features, r, 1, bias=False)
        self.lora_mid[adapter_name] = nn.Conv2d(
            r, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False
        )
        self.lora_B[adapter_name] = nn.Conv2d(r, self.out_features, 1, bias=False)
        self.lora_bias[adapter_name] = False
        self.use_rslora[adapter_name] = config.use_rslora
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        self.use_dora[adapter_name] = False
        self.reset_tucker(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_tucker(self, adapter_name: str) -> None:
        """LyCORIS's init, in its order: down kaiming-uniform, up zero, mid kaiming-uniform."""
        nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[adapter_name].weight)
        nn.init.kaiming_uniform_(self.lora_mid[adapter_name].weight, a=math.sqrt(5))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """ΔW = scale x the Tucker rebuild (LyCORIS's einsum), shaped as the layer's weight."""
        down, mid, up = (getattr(self, n)[adapter].weight for n in ("lora_A", "lora_mid", "lora_B"))
        dtype = down.dtype
        cast = down.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)  # as peft's layers do
        if cast:
            down, mid, up = down.float(), mid.float(), up.float()
        delta = (
            torch.einsum("ab...,oa,bi->oi...", mid, up.flatten(1), down.flatten(1)) * self.scaling[adapter]
        )
        return delta.to(dtype) if cast else delta

    def lora_path(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """The down and middle factors on (dropped-out) input: what lora_B maps to the update."""
        return self.lora_mid[adapter](self.lora_A[adapter](x))

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        lora_b = self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_b.weight.dtype)
        return lora_b(self.lora_path(adapter, self.lora_dropout[adapter](x))) * self.scaling[adapter]


def dispatch_tucker(target: nn.Module, adapter_name: str, config, **kwargs: Any) -> nn.Module | None:
    """peft's custom dispatcher for nn.Conv2d: the Tucker layer for k x k kernels, None (peft's own LoRA
    Conv2d) for 1x1."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if any(k != 1 for k in base.kernel_size):
        return TuckerConv2d(target, adapter_name, config=config, **kwargs)
    return None


def with_tucker(config, own: dict[int, bool] | None = None, default: bool = True):
    """`config` (a LoraConfig) with k x k convolutions in LoCon's Tucker form. peft keeps the registration on
    the config object only (not in its JSON, and dataclasses.replace drops it): register on the config that
    is injected. `own`: {id(convolution): Tucker form} of the layers whose block sets its own (LyCORIS map
    entries' use_tucker), the others `default`."""
    if not own:
        if default:
            config._register_custom_module({nn.Conv2d: dispatch_tucker})
        return config

    def dispatch(target: nn.Module, adapter_name: str, config, **kwargs: Any) -> nn.Module | None:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if own.get(id(base), default):
            return dispatch_tucker(target, adapter_name, config, **kwargs)
        return None

    config._register_custom_module({nn.Conv2d: dispatch})
    return config


def tucker_layers(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[int, bool]:
    """{id(convolution): True} of `module`'s layers a peft LoRA state dict holds in LoCon's Tucker form (their
    `lora_mid`): with_tucker's `own` for a folder whose blocks gave some convolutions the form."""
    paths = {key.split(".lora_mid.")[0] for key in state if ".lora_mid." in key}
    return {id(module.get_submodule(path)): True for path in paths}


def has_tucker(state: dict[str, torch.Tensor]) -> bool:
    """A peft LoRA state dict with LoCon Tucker layers (their `lora_mid` weights)."""
    return any(".lora_mid." in key for key in state)
