"""Start a fused LoKr / LoHa from LyCORIS's file (full, IA^3, Diag-OFT, BOFT, GLoRA:
runtime/lycoris_whole_init.py)
(`plan.adapter.init_weights` with kind lokr / loha and `fused_projections`: lycoris.kohya `--network_weights`
with flux_train_network.py / sd3_train_network.py).

train_network.py builds LyCORIS's network, applies it, then calls its `load_weights`:
`load_state_dict(strict=False)` of the file into the modules, one per fused Linear, named as kohya's Flux (or
SD3) names them (`lora_unet_double_blocks_0_img_attn_qkv.lokr_w1` ..., `lora_te1_*` for CLIP-L). The modules
keep the scale their network_dim / network_alpha gave them (the file's `alpha` fills a buffer the training
forward does not read), so the file's alpha must be the adapter's (a LoKr whose two factors are full trains at
scale 1 whatever it is), unless `plan.adapter.init_alpha` is "ignore": then the layers train at their own, as
LyCORIS's do (a DyLoRA layer of a run of several kinds still checked: its module scales by the buffer). Here
each module's tensors go where dbspec's export takes them from (runtime/lycoris_export.py): a fused LoKr's
factors into the Parameters its parts share (runtime/fused_lokr.py), a fused LoHa's `hada_w1_b` / `hada_w2_b`
into the shared ones and its `hada_w1_a` / `hada_w2_a` rows to each part (runtime/fused_loha.py), in the fused
layer's row order (with LyCORIS's weight decomposition its `dora_scale` rows to each part's magnitudes,
runtime/lycoris_dora.py); a LoKr's full `lokr_w1` beside a full `lokr_w2` loads as it is (LyCORIS's module
keeps its scale 1, sqrt(rank) with rs_lora). On SD3 the last block's context modulation holds (scale, shift)
where kohya's Linear holds (shift, scale): the file's row factors (`lokr_w1` / `lokr_w1_a`, `hada_w1_a` /
`hada_w2_a`, `dora_scale`) have their halves swapped back, as the export swapped them
(runtime/lycoris_export.py; a LoKr's first factor of odd rows has no such form: an error). A tensor of another
shape (a file of another rank, factor or decomposition) is an error naming the file and the tensor; a module
or tensor the file lacks, or a file module no layer matches, too, unless `plan.adapter.init_partial`
(LyCORIS's strict=False): then the layers keep their init and the file's other modules are ignored; a full
layer the file lacks (or its `diff`) fails even then, as FullModule's load hook pops `diff` (KeyError)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dbspec.runtime.weight_files import load_weights
from dbspec.families import family_spec
from dbspec.plan.model import Plan
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.exports import kohya_parts
from dbspec.runtime.lycoris_export import _later_part, _original_name, _swapped

# with their Tucker cores (use_tucker on a k x k convolution: SD3's patch convolution)
_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_LOHA_TUCKER = ("hada_t1", "hada_t2")
Slot = tuple[tuple[int, ...], Callable[[torch.Tensor], None]]  # (the file tensor's shape, its copy)
# LyCORIS's FullModule.load_weight_prehook pops each module's `diff` from the state dict: strict=False or not,
# load_weights raises KeyError for a module the file lacks (lycoris-lora 4.1.3)
_FULL_POPS = (
    " (LyCORIS's FullModule load hook pops `{key}.diff`: kohya's load_weights raises KeyError even with "
    "strict=False)"
)
# the tensors holding the update's rows (LyCORIS's weight decomposition: one magnitude per output row)
_ROW_FACTORS = ("lokr_w1", "lokr_w1_a", "hada_w1_a", "hada_w2_a", "dora_scale")


def load_fused_lycoris_init(
    plan: Plan, unet: torch.nn.Module, text_encoders: list, layers: dict | None = None
) -> int:
    """Copy the plan's LyCORIS LoKr / LoHa file into the adapters; returns the file modules set. `layers`:
    the slots to fill (kohya name -> (slots, alpha)) where not the adapter kind's (a run of several kinds:
    runtime/mixed_init.py)."""
    path = plan.adapter.init_weights
    state = load_weights(path)
    layers = _layers(plan, unet, text_encoders) if layers is None else layers
    a = plan.adapter  # train_norm's NormModules' tensors: runtime/init_weights.py loads them
    norms = any(getattr(a, k, ()) for k in ("denoiser_norms", "text_encoder_norms", "text_encoder_2_norms"))
    modules = {_module(key) for key in state if not (norms and key.endswith((".w_norm", ".b_norm")))}
    partial = plan.adapter.init_partial  # LyCORIS's load_state_dict(strict=False)
    extra = sorted(modules - layers.keys())
    if extra and not partial:
        raise ValueError(f"{path}: module `{extra[0]}` matches no {plan.adapter.kind} layer of this run")
    loaded = 0
    with torch.no_grad():
        for key, (slots, alpha) in sorted(layers.items()):
            if key not in modules:
                if partial and "diff" not in slots:  # a FullModule's load hook pops its diff: KeyError
                    continue  # LyCORIS's module keeps its own init
                raise ValueError(
                    f"{path}: the run's {_kind(plan, slots)} layer `{key}` is not in the file"
                    + (_FULL_POPS.format(key=key) if partial else "")
                )
            stored = state.get(f"{key}.alpha")
            if (
                alpha is not None
                and stored is not None
                and _alpha_read(plan, slots)
                and not math.isclose(float(stored), alpha, rel_tol=1e-3)
            ):
                raise ValueError(
                    f"{path}: tensor `{key}.alpha` is {float(stored):g}; the run's layer has {alpha:g}"
                )
            for name in sorted(k.partition(".")[2] for k in state if _module(k) == key):
                if not slots:  # alpha alone loads (DyLoRA: its weights are up_list / down_list)
                    break
                if name == "dora_scale" and partial and name not in slots:
                    continue  # strict=False: a module built without weight_decompose leaves it unread
                if name != "alpha" and name not in slots:
                    raise ValueError(
                        f"{path}: tensor `{key}.{name}` has no place in the run's layer (its factors: "
                        f"{', '.join(sorted(slots))}): another rank, factor or decompose_both"
                    )
            for name, (shape, copy) in slots.items():
                value = state.get(f"{key}.{name}")
                if value is None and partial and name == "diff":
                    raise ValueError(
                        f"{path}: the run's full layer `{key}` has no tensor `{key}.diff`"
                        + _FULL_POPS.format(key=key)
                    )
                if value is None and partial:
                    continue  # strict=False: the tensor keeps its init
                if value is None:
                    raise ValueError(f"{path}: the run's layer `{key}` has no tensor `{key}.{name}`")
                if tuple(value.shape) != shape:
                    raise ValueError(
                        f"{path}: tensor `{key}.{name}` has shape {list(value.shape)}; the run's layer has "
                        f"{list(shape)}"
                    )
                try:
                    copy(value)
                except ValueError as exc:
                    if str(exc).startswith(str(path)):
                        raise
                    raise ValueError(f"{path}: tensor `{key}.{name}`: {exc}") from exc
            loaded += 1
    return loaded


def _module(key: str) -> str:
    """The module a file's tensor belongs to: its name up to the first dot (kohya's and LyCORIS's module
    names hold none: `lora_unet_..._to_q`), the rest the tensor's name within it, one level (`lokr_w1`,
    `alpha`) or two (GLoRA's `a1.weight`, LoCon's `lora_down.weight`)."""
    return key.split(".", 1)[0]


def _alpha_read(plan: Plan, slots: dict[str, Slot]) -> bool:
    """Whether the layer's file alpha must be the one it trains at: with `plan.adapter.init_alpha` "ignore"
    only a DyLoRA layer's (no slots: LyCORIS's DyLoraModule scales each forward by the alpha buffer the file
    fills); LoConModule, LohaModule and LokrModule fix their scale when built and the file's alpha only
    fills a buffer their forward never reads (lycoris-lora 4.1.3), so the layer keeps its own."""
    return plan.adapter.init_alpha == "match" or not slots


def _kind(plan: Plan, slots: dict[str, Slot]) -> str:
    """The kind a layer's slots are (full where it holds a `diff`), for messages."""
    return "full" if "diff" in slots else plan.adapter.kind


def _layers(plan: Plan, unet, text_encoders) -> dict[str, tuple[dict[str, Slot], float | None]]:
    """kohya module name -> (its tensors' slots, the alpha it trains at or None when unused), for every
    adapted layer (a fused layer once, under its first part's, the fused, name); LyCORIS's full algo and
    IA^3, Diag-OFT, BOFT, GLoRA and T-LoRA: runtime/lycoris_whole_init.py."""

    if plan.adapter.kind in ("full", "ia3", "diag-oft", "boft", "glora", "tlora"):
        from dbspec.runtime.lycoris_whole_init import whole_layer_slots

        return whole_layer_slots(plan, unet, text_encoders)
    return factor_slots(plan, unet, text_encoders, plan.adapter.lokr_unit_scale)


def factor_slots(
    plan: Plan, unet, text_encoders, unit_scale: bool
) -> dict[str, tuple[dict[str, Slot], float | None]]:
    """kohya module name -> (its tensors' slots, its alpha or None) of every LoKr / LoHa layer of the run;
    `unit_scale`: its LoKr layers keep LyCORIS's scale 1 with both factors full (plan.adapter.lokr_unit_scale;
    every LoKr layer of a run of several kinds, runtime/mixed_kinds.py)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    out: dict[str, tuple[dict[str, Slot], float | None]] = {}
    # SD 1.x/2.x, SDXL: one module per layer under kohya's names (kohya_parts: SDXL's original layout)
    fused = bool(family_spec(plan.model.family).fused_projections)
    for prefix, module, to_path in kohya_parts(  # LyCORIS's names (T5-XXL's lora_te2_ on Flux)
        unet=unet, text_encoders=list(text_encoders), family=plan.model.family, lycoris=True
    ):
        found = lora_adapter(module)
        if found is None:
            continue  # a model that does not train: its modules are ignored, as kohya drops its network
        flow = module is unet and fused
        if flow:
            to_path = _original_name(plan.model.family)  # kohya's Flux (or SD3) names
        inner, adapter = found
        for name, layer in inner.named_modules():
            if isinstance(layer, LoKrLayer) and adapter in layer.r:
                slots, alpha = _lokr_slots(layer, adapter, unit_scale)
            elif isinstance(layer, LoHaLayer) and adapter in layer.hada_w1_a:
                slots, alpha = _loha_slots(layer, adapter)
            else:
                continue
            if flow and _later_part(module, name):
                continue  # a fused layer's tensors go in through its first part
            slots |= _dora_slot(layer, adapter)
            key = f"{prefix}_{to_path(name).replace('.', '_')}"
            if flow and _swapped(module, name):
                slots = {
                    k: _halves_swapped(plan.adapter.init_weights, key, k, slot)
                    if k in _ROW_FACTORS and not (k == "dora_scale" and slot[0][0] == 1)  # a column's: whole
                    else slot
                    for k, slot in slots.items()
                }
            out[key] = (slots, alpha)
    return out


def _dora_slot(layer, adapter: str) -> dict[str, Slot]:
    """LyCORIS's `dora_scale` (weight_decompose, one magnitude per output row) of a LoKr / LoHa with
    LyCORIS's weight decomposition (runtime/lycoris_dora.py): a fused layer's its parts' rows stacked; per
    input column (wd_on_out=False) the one (1, in) magnitude its parts share (tie_fused_doras), as it is."""
    from dbspec.runtime.lycoris_dora import axis_of, dora_scale_of

    scale = dora_scale_of(layer, adapter)
    if scale is None:
        return {}
    parts = getattr(layer, "fused_lokr_parts", None) or getattr(layer, "fused_loha_parts", None)
    if parts and axis_of(scale.shape) == "output":
        return {"dora_scale": _rows([dora_scale_of(p, adapter) for p in parts])}
    return {"dora_scale": _into(scale)}


def _halves_swapped(path: str, key: str, name: str, slot: Slot) -> Slot:
    """A row factor of a Linear whose halves of rows kohya holds the other way round, swapped back."""
    shape, copy = slot

    def swap(value: torch.Tensor) -> None:
        if value.shape[0] % 2:
            raise ValueError(
                f"{path}: tensor `{key}.{name}` has {value.shape[0]} rows (odd): the update in diffusers' "
                "(scale, shift) row order has no Kronecker form; start from a file whose first factor's rows "
                "are even"
            )
        first, second = value.chunk(2, dim=0)
        copy(torch.cat([second, first], dim=0))

    return shape, swap


def _into(param: torch.Tensor, factor: float = 1.0) -> Slot:
    def copy(value: torch.Tensor) -> None:
        param.copy_((value.float() / factor if factor != 1.0 else value).to(param.device, param.dtype))

    return tuple(param.shape), copy


def _lokr_slots(layer, adapter: str, unit_scale: bool) -> tuple[dict[str, Slot], float | None]:
    """A (fused) LoKr's factors: the Parameters its parts share. Both factors full: no alpha check; with
    `unit_scale` (LyCORIS's LokrModule: scale 1, sqrt(rank) with rs_lora) the factors load as they are, as
    LyCORIS's load_state_dict copies them into a module keeping its own scale (a file that folded sqrt(rank)
    into `lokr_w1`, dbspec's rs_lora export, starts at rank x kron, as kohya starts it); peft's own form
    (plans without lokr_unit_scale) divides out the alpha / rank its export folded into `lokr_w1`."""
    params = {key: getattr(layer, key)[adapter] for key in _LOKR if adapter in getattr(layer, key)}
    scaling = float(layer.scaling[adapter])
    if "lokr_w1" in params and "lokr_w2" in params:
        fold = 1.0 if unit_scale else scaling
        slots = {key: _into(p, fold if key == "lokr_w1" else 1.0) for key, p in params.items()}
        return slots, None
    return {key: _into(p) for key, p in params.items()}, scaling * layer.r[adapter]


def _loha_slots(layer, adapter: str) -> tuple[dict[str, Slot], float | None]:
    """A LoHa's factors; a fused one's `hada_w1_a` / `hada_w2_a` cut into its parts' rows."""
    alpha = float(layer.scaling[adapter]) * layer.r[adapter]
    parts = getattr(layer, "fused_loha_parts", None)
    if parts is None:
        keys = _LOHA + (_LOHA_TUCKER if adapter in layer.hada_t1 else ())
        return {key: _into(getattr(layer, key)[adapter]) for key in keys}, alpha
    slots = {key: _into(getattr(layer, key)[adapter]) for key in ("hada_w1_b", "hada_w2_b")}
    for key in ("hada_w1_a", "hada_w2_a"):
        rows = [getattr(p, key)[adapter] for p in parts]
        slots[key] = _rows(rows)
    return slots, alpha


def _rows(params: list[torch.Tensor]) -> Slot:
    """The parts' row blocks as the one stacked tensor the file holds."""
    sizes = [p.shape[0] for p in params]

    def copy(value: torch.Tensor) -> None:
        for param, block in zip(params, value.split(sizes, dim=0)):
            param.copy_(block.to(param.device, param.dtype))

    return (sum(sizes), *params[0].shape[1:]), copy
