"""LyCORIS's weight decomposition (DoRA, `dora_wd`) on peft's LoHa, LoKr and LoRA layers: what peft cannot
train (`plan.adapter.dora` with `dora_form = "lycoris"`: always on loha / lokr; on lora with `dora_axis =
"input"`, LoCon's Tucker form, or asked for, as `dbspec convert kohya` does for lycoris.kohya's LoCon).

LyCORIS (lycoris/modules/locon.py, loha.py, lokr.py, with weight_decompose; lycoris.functional.general
`weight_decompose`) keeps a learned `dora_scale` beside the factors and runs each adapted layer as

    W' = (W + ΔW) * dora_scale / (‖W + ΔW‖ + eps),    y = base(x) + op(x, W' - W)

where ΔW is the adapter's usual update (alpha / rank included, rank dropout applied while training), W the
frozen base weight, eps float32's machine epsilon and the norm taken per output row (`wd_on_out`, LyCORIS's
default: over each row's input x kernel elements; `dora_scale` shaped (out, 1, ...)) or per input column
(`wd_on_output = False`: over each column's output x kernel elements; shaped (1, in, 1, ...)). The norm is
not detached (peft's DoRA detaches it), and `dora_scale` starts at the base weight's norms on the same axis,
computed in float32 on the CPU as LyCORIS does. Module dropout skips the whole update, as LyCORIS's forward
(LoHa / LoKr: peft's rate; LoRA / LoCon: `dbspec_dora_module_dropout`, set by runtime/lora_dropout.py), and
a LoRA / LoCon layer's rank dropout (`dbspec_dora_rank_dropout`, LoConModule.make_weight's row mask) masks ΔW
before the decomposition renormalises it; peft's input dropout has no place (LyCORIS ignores it with dora_wd;
the compiler refuses it, DBS515).

The layers are peft's own (LoHa/LoKr Linear and Conv2d, LoRA Linear and Conv2d, LoCon's TuckerConv2d), their
class switched after injection to a subclass with this module's mixin and a `<prefix>dora_scale`
ParameterDict (`lora_dora_scale`, `hada_dora_scale`, `lokr_dora_scale`: peft's prefix marks it as an adapter
weight, saved and loaded by peft's state-dict functions and trained like the factors). Each `dora_scale` is
stored in LyCORIS's shape, so the LyCORIS export writes it as it is."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Axis = Literal["output", "input"]
_CLASSES: dict[type, type] = {}


def weight_decompose(weight: torch.Tensor, scale: torch.Tensor, axis: Axis) -> torch.Tensor:
    """LyCORIS's `_weight_decompose` at multiplier 1: `weight` (in `scale`'s dtype) renormalised to `scale`
    along `axis`, the norm plus float eps."""
    weight = weight.to(scale.dtype)
    ones = [1] * (weight.dim() - 1)
    if axis == "output":
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *ones)
    else:
        norm = (
            weight.transpose(0, 1)
            .reshape(weight.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight.shape[1], *ones)
            .transpose(0, 1)
        )
    return weight * (scale.to(weight.device) / (norm + torch.finfo(weight.dtype).eps))


def initial_scale(weight: torch.Tensor, axis: Axis) -> torch.Tensor:
    """LyCORIS's initial `dora_scale`: the base weight's norms along `axis` (float32, computed on the CPU),
    in LyCORIS's shape: (out, 1, ...) or (1, in, 1, ...)."""
    w = weight.detach().cpu().clone().float()
    ones = [1] * (w.dim() - 1)
    if axis == "output":
        return w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True).reshape(w.shape[0], *ones)
    return (
        w.transpose(1, 0)
        .reshape(w.shape[1], -1)
        .norm(dim=1, keepdim=True)
        .reshape(w.shape[1], *ones)
        .transpose(1, 0)
    )


def axis_of(scale_shape: torch.Size | tuple[int, ...]) -> Axis:
    """The axis a stored `dora_scale` spans, from its LyCORIS shape: (1, in > 1, ...) is per input column,
    anything else per output row (with one input and one output channel both axes norm the same numbers)."""
    return "input" if len(scale_shape) > 1 and scale_shape[0] == 1 and scale_shape[1] != 1 else "output"


class LycorisDora:
    """Mixin put first in front of a peft adapter layer's class (`convert`): LyCORIS's weight decomposition
    around the layer's own update."""

    dora_scale_name: str = ""  # set on each generated subclass

    def dora_scales(self) -> nn.ParameterDict:
        return getattr(self, self.dora_scale_name)

    def init_dora(self, adapter: str, axis: Axis) -> None:
        base = self.get_base_layer()
        if getattr(self, "fan_in_fan_out", False):
            raise ValueError("LyCORIS's weight decomposition needs (out, in) weights (no fan_in_fan_out)")
        if not isinstance(base, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            raise ValueError(
                f"LyCORIS's weight decomposition adapts linears and convolutions, not {type(base)}"
            )
        if self.dora_scale_name not in self._modules:
            setattr(self, self.dora_scale_name, nn.ParameterDict())
        weight = base.weight
        scale = initial_scale(weight, axis).to(weight.device)
        self.dora_scales()[adapter] = nn.Parameter(scale)

    def _update(self, adapter: str, own_rank_dropout: bool = True) -> torch.Tensor:
        """The adapter's own ΔW (peft's delta weight: alpha / rank in; LoHa/LoKr rank dropout while
        training unless `own_rank_dropout` is False; with use_scalar times the layer's scalar,
        lycoris_switches.py's class below this one)."""
        parent = super()
        rank_dropout = getattr(self, "rank_dropout", None)
        if isinstance(rank_dropout, dict):  # peft's LoHa / LoKr
            apply = own_rank_dropout and self.training and bool(rank_dropout.get(adapter))
            if hasattr(self, "hada_w1_a"):  # LoHa: LyCORIS's update (runtime/loha_weight.py)
                from dbspec.runtime.loha_weight import loha_delta
                from dbspec.runtime.lycoris_switches import layer_scalar

                delta = loha_delta(self, adapter, apply)
                scalar = layer_scalar(self, adapter)  # use_scalar: LyCORIS scales ΔW before decomposing
                return delta if scalar is None else delta * scalar
            return parent.get_delta_weight(adapter, apply_rank_dropout=apply)
        delta = parent.get_delta_weight(adapter)
        rate = self.__dict__.get("dbspec_dora_rank_dropout", 0.0)  # LoRA / LoCon: lora_dropout.py sets it
        if own_rank_dropout and self.training and rate:
            from dbspec.runtime.kohya_rows import in_kohya_rows
            from dbspec.runtime.lora_dropout import rescaled

            # LoConModule.make_weight: ΔW's output rows kept above the rate (a 0 / 1 mask, so masking after
            # peft's alpha / rank and the scalar is bit-equal to LyCORIS's masking before them), unscaled
            # unless the layer's block rescales (`drop / drop.mean()`)
            keep = (torch.rand(delta.shape[0], device=delta.device) > rate).to(delta.dtype)
            keep = in_kohya_rows(keep, self)  # SD3 / Flux's swapped modulation rows (runtime/kohya_rows.py)
            keep = keep / keep.mean() if rescaled(self) else keep
            delta = delta * keep.view(-1, *[1] * (delta.dim() - 1))
        return delta

    def dora_delta(
        self, adapter: str, row_mask: torch.Tensor | None = None, whole_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """W' - W: the decomposed weight minus the base weight (LyCORIS's `delta_weight`). `row_mask`: a
        rank-dropout mask drawn elsewhere (a fused layer's shared draw, runtime/fused_lycoris_dropout.py)
        over ΔW's output rows, in place of the layer's own, before the decomposition as LyCORIS's
        get_weight applies it; `whole_mask`: that draw over every part's rows (part order), which a fused
        layer's column norm spans."""
        base = self.get_base_layer().weight
        if row_mask is None:
            update = self._update(adapter)
        else:
            rows = row_mask.to(base.device).view(-1, *[1] * (base.dim() - 1))
            update = self._update(adapter, own_rank_dropout=False) * rows
        merged = base + update.to(base.dtype)
        parts = self.__dict__.get("dbspec_dora_parts")
        if parts is not None and self.dora_axis(adapter) == "input":  # a fused layer's one column norm
            return self._fused_column_delta(adapter, merged, parts, whole_mask) - base
        return weight_decompose(merged, self.dora_scales()[adapter], self.dora_axis(adapter)) - base

    def _fused_column_delta(
        self, adapter: str, merged: torch.Tensor, parts: tuple, whole_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """This part's rows of LyCORIS's decomposition per input column of the fused Linear
        (tie_fused_doras): every part's merged weight stacked in part order, renormalised to the shared
        `dora_scale` by the whole stacked column norms, as LokrModule / LohaModule / LoConModule with
        wd_on_out=False on kohya's fused Linear; with `whole_mask` (the fused layer's shared rank-dropout
        draw, LoConModule.make_weight's one mask over every row) each other part's update masked by its
        rows of it, as the fused module masks its whole update before decomposing it."""
        stacked, start = [], 0
        for part in parts:
            first = sum(w.shape[0] for w in stacked)
            if part is self:
                start = first
                stacked.append(merged)
                continue
            other = part.get_base_layer().weight
            if whole_mask is None:
                update = part._update(adapter)
            else:
                rows = whole_mask[first : first + other.shape[0]].to(other.device)
                update = part._update(adapter, own_rank_dropout=False) * rows.view(
                    -1, *[1] * (other.dim() - 1)
                )
            stacked.append(other + update.to(other.dtype))
        whole = weight_decompose(torch.cat(stacked), self.dora_scales()[adapter], "input")
        return whole[start : start + merged.shape[0]]

    def dora_axis(self, adapter: str) -> Axis:
        return axis_of(self.dora_scales()[adapter].shape)

    def get_delta_weight(self, adapter: str, **kwargs: Any) -> torch.Tensor:
        """What merging adds to the base weight: W' - W (eval-mode update)."""
        if adapter not in self.dora_scales():
            return super().get_delta_weight(adapter, **kwargs)
        return self.dora_delta(adapter)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        from peft.tuners.tuners_utils import check_adapters_to_merge

        base = self.get_base_layer()
        stash = self.__dict__.setdefault("_dora_merged", {})
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.dora_scales():
                continue
            delta = self.get_delta_weight(adapter).to(base.weight.dtype)
            if safe_merge and not torch.isfinite(base.weight + delta).all():
                raise ValueError(f"NaNs detected in the merged weights of adapter {adapter}")
            base.weight.data += delta
            stash[adapter] = delta
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        stash = self.__dict__.setdefault("_dora_merged", {})
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in stash:
                base.weight.data -= stash.pop(adapter)

    def _dora_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            return F.linear(x, weight)
        return base._conv_forward(x, weight, None)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("LyCORIS's weight decomposition does not mix adapters in one batch")
        kwargs.pop("alora_offsets", None)  # peft's variant argument; never given to a base layer
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        module_dropout = getattr(self, "module_dropout", None)
        for adapter in self.active_adapters:
            if adapter not in self.dora_scales():
                continue
            # peft's LoHa / LoKr table; a LoRA / LoCon layer's rate set by lora_dropout.py
            p = (
                module_dropout.get(adapter, 0.0)
                if isinstance(module_dropout, dict)
                else self.__dict__.get("dbspec_dora_module_dropout", 0.0)
            )
            if self.training and p and torch.rand(1) < p:  # LyCORIS: the whole update skipped
                continue
            delta = self.dora_delta(adapter).to(x.dtype)
            result = result + self._dora_op(x, delta)
        return result


def _prefix(cls: type) -> str:
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    for layer, prefix in ((LoraLayer, "lora_"), (LoHaLayer, "hada_"), (LoKrLayer, "lokr_")):
        if issubclass(cls, layer):
            return prefix
    raise ValueError(f"{cls.__name__} is not a peft LoRA, LoHa or LoKr layer")


def dora_class(cls: type) -> type:
    """The subclass of peft layer class `cls` with LyCORIS's weight decomposition."""
    if issubclass(cls, LycorisDora):
        return cls
    if cls not in _CLASSES:
        prefix = _prefix(cls)
        name = f"{prefix}dora_scale"
        made = type(
            f"LycorisDora_{prefix}{cls.__name__}",
            (LycorisDora, cls),
            {
                "dora_scale_name": name,
                "adapter_layer_names": (*cls.adapter_layer_names, name),
                "__module__": __name__,
            },
        )
        _CLASSES[cls] = made
        globals()[made.__name__] = made  # pickled by reference, as a module-level class
    return _CLASSES[cls]


def __getattr__(name: str) -> type:
    """The generated classes by name (a fresh process unpickling a converted layer): peft's LoRA, LoHa and
    LoKr Linear and Conv2d and LoCon's TuckerConv2d."""
    if not name.startswith("LycorisDora_"):
        raise AttributeError(name)
    from peft.tuners import loha, lokr, lora

    from dbspec.runtime.locon_tucker import TuckerConv2d
    from dbspec.runtime.loha_weight import loha_class

    lycoris_loha = (loha_class(loha.Linear), loha_class(loha.Conv2d))  # runtime/loha_weight.py
    for cls in (lora.Linear, lora.Conv2d, TuckerConv2d, loha.Linear, loha.Conv2d, lokr.Linear, lokr.Conv2d):
        dora_class(cls)
    for cls in lycoris_loha:
        dora_class(cls)
    if name not in globals():
        raise AttributeError(name)
    return globals()[name]


def convert(layer: nn.Module, adapter: str, axis: Axis) -> None:
    """Give peft adapter layer `layer` LyCORIS's weight decomposition for `adapter`, its `dora_scale` at the
    base weight's norms along `axis`."""
    layer.__class__ = dora_class(type(layer))
    layer.init_dora(adapter, axis)


def adapter_layers(module: nn.Module, adapter: str) -> list[nn.Module]:
    """The peft LoRA / LoHa / LoKr layers in `module` carrying `adapter`."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    return [
        m
        for m in module.modules()
        if isinstance(m, LoraLayer | LoHaLayer | LoKrLayer) and adapter in getattr(m, "r", {})
    ]


def add_lycoris_dora(
    module: nn.Module,
    adapter: str,
    axis: Axis,
    own: dict[str, bool] | None = None,
    default: bool = True,
    axes: dict[str, Axis] | None = None,
) -> int:
    """The adapted layers of `module` with LyCORIS's weight decomposition: those `own` ({path: on}, a block's
    own switch, a LyCORIS map entry's weight_decompose) sets on, the rest when `default`; each along its
    `axes` entry ({path: axis}, a block's own, a map entry's wd_on_out), else `axis`; how many."""
    own, axes = own or {}, axes or {}
    adapted = {id(m) for m in adapter_layers(module, adapter)}
    layers = [
        (name, layer)
        for name, layer in module.named_modules()
        if id(layer) in adapted and own.get(name, default)
    ]
    for name, layer in layers:
        convert(layer, adapter, axes.get(name, axis))
    return len(layers)


def tie_fused_doras(module: nn.Module, fused) -> int:
    """LyCORIS's weight decomposition per input column on a fused LoKr / LoHa / LoCon Linear (LokrModule /
    LohaModule / LoConModule with wd_on_out=False on kohya's fused Linear): one `dora_scale` of (1, in) for
    the stacked weight, the first part's Parameter shared by every part and starting at the stacked base
    weight's column norms; each part holds the others (`dbspec_dora_parts`, part order) so its forward takes
    the norms of the whole merged weight (_fused_column_delta; a LoCon part's update is its rows of the
    shared down's, B_p A x alpha / rank). Per output row each part decomposes its own rows already. A fused
    layer tied already (each kind of a run of several ties its own, runtime/mixed_kinds.py; their folders
    load one after another, runtime/weights.py) keeps its magnitude. How many fused layers."""
    from dbspec.runtime.fused import _lora_part, _lycoris_part, fused_parts

    def part(layer) -> bool:  # a fused LoKr / LoHa part, or a LoCon part (decomposed or not: checked below)
        return _lycoris_part(layer) or _lora_part(layer)

    tied = 0
    for _, _, found in fused_parts(module, fused, part):
        layers = [layer for _, _, layer in found]
        names = [layer.dora_scale_name if isinstance(layer, LycorisDora) else None for layer in layers]
        if len(layers) < 2 or None in names:  # a fused layer not decomposed (a block's own dora elsewhere)
            continue
        if all("dbspec_dora_parts" in layer.__dict__ for layer in layers):
            tied += 1  # tied by an earlier kind's pass or folder (a run of several kinds): its values kept
            continue
        adapters = [
            a for a in layers[0].dora_scales() if axis_of(layers[0].dora_scales()[a].shape) == "input"
        ]
        for adapter in adapters:
            base = torch.cat([layer.get_base_layer().weight for layer in layers])
            first = layers[0].dora_scales()[adapter]
            with torch.no_grad():
                first.data = initial_scale(base, "input").to(first.device, first.dtype)
            for layer in layers[1:]:
                layer.dora_scales()[adapter] = first
        if adapters:
            for layer in layers:
                layer.__dict__["dbspec_dora_parts"] = tuple(layers)  # not submodules: no second registration
            tied += 1
    return tied


def has_dora_scales(state: dict[str, torch.Tensor]) -> bool:
    """A peft state dict (adapter names removed) holding this module's `dora_scale` weights."""
    return any(key.rsplit(".", 1)[-1].endswith("dora_scale") for key in state)


def restore_lycoris_dora(module: nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> int:
    """Before loading a saved state dict: the layers whose `<prefix>dora_scale` it holds get LyCORIS's weight
    decomposition, on the axis each saved shape says (the values then load over the initial ones)."""
    converted = 0
    adapted = {id(m) for m in adapter_layers(module, adapter)}
    for name, layer in module.named_modules():
        if id(layer) not in adapted or isinstance(layer, LycorisDora):
            continue
        key = f"{name}.{_prefix(type(layer))}dora_scale"
        if key in state:
            convert(layer, adapter, axis_of(state[key].shape))
            converted += 1
    return converted


def dora_scale_of(layer: nn.Module, adapter: str) -> torch.Tensor | None:
    """The layer's LyCORIS `dora_scale` (its shape LyCORIS's), None without the weight decomposition."""
    if isinstance(layer, LycorisDora) and adapter in layer.dora_scales():
        return layer.dora_scales()[adapter]
    return None
