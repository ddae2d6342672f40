"""LyCORIS's `algo = full` (plan.adapter.kind "full") as a peft LoRA custom layer.

LyCORIS's FullModule (lycoris/modules/full.py) trains a copy of each targeted layer's whole weight (and bias,
where the layer has one), starting at the layer's own values: its forward adds op(x, W' - W, b' - b) to the
frozen layer's output, and it saves `diff` = W' - W and `diff_b` = b' - b. The trained parameter is the weight
itself, not a difference, so an optimizer's decoupled weight decay pulls W' towards 0, as it would in a full
fine-tune of those layers.

`FullLayer` is that layer on peft's LoRA machinery (its custom-module mechanism, as locon_tucker.py): the
copies are `lora_full` / `lora_full_bias` ParameterDicts (peft's `lora_` prefix: its adapter state dicts,
dbspec's trainable-weight filter and checkpoints hold them), the base layer stays frozen, so disabling the
adapter (a base-model prior) runs the original layer. Linear and ungrouped Conv2d layers.

While training, `full_rank_dropout` (plan.adapter.rank_dropout, add_full_rank_dropout) masks the update's
output rows as FullModule.make_weight does: `torch.rand(out, device=x.device) > rank_dropout` from torch's
generator on the input's device, the kept rows of W' - W and b' - b unscaled (kohya's network never passes
`rank_dropout_scale`), drawn after module_dropout's draw (runtime/mixed_kinds.py add_own_module_dropout).
On Flux / SD3 / Chroma's fused Linears (`plan.adapter.fused`, adapter.fused_projections) kohya's one
FullModule draws one mask over the fused layer's rows: the parts share it (runtime/fused_lycoris_dropout.py
LycorisDraw, the fused LoKr's / LoHa's draw, each part its rows);
a Linear kohya holds with its halves of rows the other way round (SD3's last context modulation, feeding
diffusers' AdaLayerNormContinuous: (scale, shift) where kohya reads (shift, scale)) takes its mask's halves
swapped, so each row is dropped by kohya's draw for that row."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from dbspec.runtime.peft_layer import AddedOutput


class FullLayer(AddedOutput, nn.Module, LoraLayer):
    """A trained copy of the base layer's weight (and bias): LyCORIS's FullModule."""

    _holds = "lora_full"
    _title = "LyCORIS's full algo"

    adapter_layer_names = ("lora_full", "lora_full_bias")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config=None, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.lora_full = nn.ParameterDict()
        self.lora_full_bias = nn.ParameterDict()
        self._merged_deltas: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config, *args: Any, **kwargs: Any) -> None:
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's full algo: grouped or non-zero-padded convolutions are not supported")
        self.r[adapter_name] = 1  # peft's bookkeeping; the layer has no rank
        self.scaling[adapter_name] = 1.0
        self.lora_full[adapter_name] = nn.Parameter(base.weight.detach().clone())
        if base.bias is not None:
            self.lora_full_bias[adapter_name] = nn.Parameter(base.bias.detach().clone())
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W: LyCORIS's `diff`."""
        base = self.get_base_layer().weight
        return self.lora_full[adapter] - base.to(self.lora_full[adapter].dtype)

    def get_delta_bias(self, adapter: str) -> torch.Tensor | None:
        """b' - b: LyCORIS's `diff_b` (None for a layer without bias)."""
        if adapter not in self.lora_full_bias:
            return None
        bias = self.get_base_layer().bias
        return self.lora_full_bias[adapter] - bias.to(self.lora_full_bias[adapter].dtype)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d):
            return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation)
        return F.linear(x, weight, bias)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold W' - W (and b' - b) into the base layer; the differences are kept for unmerge (once merged,
        the base no longer holds W to take them from)."""
        base = self.get_base_layer()
        for adapter in adapter_names or self.active_adapters:
            if adapter not in self.lora_full or adapter in self.merged_adapters:
                continue
            with torch.no_grad():
                delta, delta_bias = self.get_delta_weight(adapter), self.get_delta_bias(adapter)
                base.weight.data += delta.to(base.weight.dtype)
                if delta_bias is not None:
                    base.bias.data += delta_bias.to(base.bias.dtype)
            self._merged_deltas[adapter] = (delta, delta_bias)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            delta, delta_bias = self._merged_deltas.pop(self.merged_adapters.pop())
            with torch.no_grad():
                base.weight.data -= delta.to(base.weight.dtype)
                if delta_bias is not None:
                    base.bias.data -= delta_bias.to(base.bias.dtype)

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        delta, delta_bias = self.get_delta_weight(adapter), self.get_delta_bias(adapter)
        rate = self.__dict__.get("full_rank_dropout", 0.0)
        if self.training and rate:  # FullModule.make_weight's mask over the output rows, weight and bias
            keep = self._kept_rows(delta.shape[0], x, rate).to(delta.dtype)
            delta = delta * keep.view(-1, *[1] * (delta.dim() - 1))
            delta_bias = None if delta_bias is None else delta_bias * keep
        return self._op(self._cast_input_dtype(x, delta.dtype), delta, delta_bias)

    def _kept_rows(self, rows: int, x: torch.Tensor, rate: float) -> torch.Tensor:
        """FullModule's `torch.rand(out, device) > rank_dropout`: the layer's own draw (its halves swapped
        where kohya holds them the other way round), or its rows of its fused layer's one draw."""
        fused = self.__dict__.get("full_fused_rows")
        if fused is not None:
            draw, start = fused
            _, mask, _ = draw.take(x, x.dtype)  # its row mask on x's device
            return mask[start : start + rows]
        keep = torch.rand(rows, device=x.device) > rate
        return keep.roll(rows // 2) if self.__dict__.get("full_swapped") else keep

    def __repr__(self) -> str:
        return "lycoris_full." + super().__repr__()


def add_full_rank_dropout(module: nn.Module, rate: float, fused: tuple = (), swapped=None) -> int:
    """LyCORIS FullModule's rank dropout on every FullLayer of `module` (the adapter's own layers): each
    layer its own mask, the adapted parts of a fused Linear (`fused`, plan.adapter.fused) one they share
    (LycorisDraw over every part's rows: no module_dropout, FusedSkip draws that first; a skipped forward
    reaches no part's update, so none draws, as FullModule draws no mask when it skips), the layers
    `swapped(path)` names (kohya's halves of rows the other way round) their mask's halves swapped. How many
    layers."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from dbspec.runtime.fused import fused_parts
    from dbspec.runtime.fused_lycoris_dropout import LycorisDraw

    def own(layer) -> bool:
        return isinstance(layer, FullLayer) and ADAPTER_NAME in layer.lora_full

    count = 0
    for path, layer in module.named_modules():
        if own(layer):
            layer.full_rank_dropout = rate
            layer.full_swapped = bool(swapped is not None and swapped(path))
            count += 1
    for group, index, found in fused_parts(module, fused, own):
        if len(found) < 2:
            continue
        block = module.get_submodule(group.blocks)[index]
        widths = [_rows(block.get_submodule(part)) for part in group.parts]  # adapted or not
        draw = LycorisDraw(len(found), sum(widths), 0.0, rate, scale=False)
        draw.on_device = True  # FullModule.make_weight's mask on the input's device
        for position, _, layer in found:
            layer.full_fused_rows = (draw, sum(widths[:position]))
    return count


def _rows(layer: nn.Module) -> int:
    base = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
    return int(base.weight.shape[0])


def dispatch_full(target: nn.Module, adapter_name: str, config, **kwargs: Any) -> nn.Module | None:
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return FullLayer(target, adapter_name, config=config)
    return None


def with_full(config):
    """`config` (a LoraConfig) building FullLayer on every target; as with_tucker, the registration lives on
    the config object only."""
    config._register_custom_module({nn.Linear: dispatch_full, nn.Conv2d: dispatch_full})
    return config


def is_full(config) -> bool:
    """`config` builds FullLayer (with_full): a LoraConfig whose keys are `lora_full*`, not `lora_A` /
    `lora_B` (a run of several kinds holds both under one adapter name, runtime/mixed_kinds.py)."""
    return dispatch_full in (getattr(config, "_custom_modules", None) or {}).values()


def has_full(state: dict[str, torch.Tensor]) -> bool:
    """A peft LoRA state dict of LyCORIS full layers."""
    return any(".lora_full" in key for key in state)
