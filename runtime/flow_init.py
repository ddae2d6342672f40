"""Start a Flux / SD3 LoRA from a file in kohya's layout (`plan.adapter.init_weights`, kohya
`--network_weights` with networks.lora_flux / lora_sd3): the original model's module names, split back onto
diffusers' layers.

A fused Linear of the original model (Flux's `img_attn.qkv`, `linear1`; SD3's `x_block.attn.qkv`) is several
diffusers layers (to_q, to_k, to_v, Flux's proj_mlp). kohya's file holds its LoRA in one of two forms:

- one down-projection (rank r) shared by the parts, the parts' ups stacked by rows (kohya without split_qkv;
  dbspec's export with adapter.fused_projections). The down goes to every adapted part's `lora_A` (one tied
  Parameter with fused_projections), each part's up rows to its `lora_B`;
- split_qkv: the parts' downs stacked (rank n r) and their ups on the block diagonal (kohya's writer with
  split_qkv; dbspec's export without fused_projections). As kohya's LoRANetwork.load_state_dict splits it, the
  down in n equal chunks and each part's up as its rows of its own column block.

The tensors are copied, as kohya's load_state_dict copies them into a network that keeps its own alpha (the
plan checked the file's alpha: the adapter's, or for a split layer the adapter's times the parts, which
dbspec's export writes so loaders that read alpha / rows of lora_down keep each part's scale). Where dbspec's
export folded a scale into lora_up (Flux's final layer, alpha = rank; split parts of different scales) it is
unfolded, so an export loads back to the same adapter (with `plan.adapter.init_alpha` "ignore" the file's
alphas are not read and nothing is unfolded: kohya's modules keep network_alpha's scale). The adaLN layers
whose diffusers form holds (scale, shift) where the original holds (shift, scale) have their up rows swapped
back. A file module no adapted layer matches, or an adapted layer missing from the file, is an error naming
the file and tensor, unless `plan.adapter.init_partial` (kohya's `load_state_dict(strict=False)`): then the
layers the file lacks keep their init and its other modules are ignored. SD3's patch convolution in LoCon's
Tucker form (lycoris.kohya with use_tucker) takes the file's `lora_mid` too."""

from __future__ import annotations

import math
from importlib import import_module

import torch

from dbspec.runtime.weight_files import load_weights
from dbspec.families import family_spec, flow_text_prefixes, lycoris_text_prefixes
from dbspec.plan.model import Plan
from dbspec.runtime.adapters import ADAPTER_NAME, lora_adapter
from dbspec.runtime.exports import _kohya_lora_layers, clip_path

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_MID = ".lora_mid.weight"


def load_flow_init_weights(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> int:
    """Copy the plan's kohya-layout Flux / SD3 LoRA into the adapters; returns the file modules set."""
    path = plan.adapter.init_weights
    family = plan.model.family
    state = load_weights(path)
    modules = {key[: -len(s)] for key in state for s in (_DOWN, _UP, _ALPHA) if key.endswith(s)}
    partial = plan.adapter.init_partial  # kohya's load_state_dict(strict=False)
    if plan.adapter.init_alpha == "ignore":  # kohya's modules keep network_alpha's scale: no alpha read,
        # no scale unfolded from lora_up; the tensors load as they are
        state = {k: v for k, v in state.items() if not k.endswith(_ALPHA)}
    done: set[str] = set()
    skipped: list[str] = []
    with torch.no_grad():
        if lora_adapter(unet) is None:
            skipped.append("lora_unet_")
        else:
            done |= _load_denoiser(path, family, unet, state, modules if partial else None)
        # a LyCORIS LoCon's file (adapter.kohya_names): T5-XXL under LyCORIS's prefix (lora_te2_ on Flux)
        named = lycoris_text_prefixes if plan.adapter.kohya_names == "lycoris" else flow_text_prefixes
        for prefix, encoder in zip(named(family), text_encoders):
            if lora_adapter(encoder) is None:
                skipped.append(prefix)
                continue
            for name, down, up, _rank, alpha in _kohya_lora_layers(encoder):
                key = f"{prefix}{clip_path(name).replace('.', '_')}"
                bare = (
                    f"{prefix}{name.replace('.', '_')}"  # CLIPTextModel without text_model (transformers 5)
                )
                if key + _DOWN not in state and bare + _DOWN in state:
                    key = bare
                if partial and key not in modules:
                    continue  # kohya's network keeps this layer's own init
                file_down, file_up = _tensors(path, state, key, (tuple(down.shape), tuple(up.shape)))
                _check_alpha(path, state, key, (alpha,))
                down.copy_(file_down.to(down))
                up.copy_(file_up.to(up))
                _load_dora(path, state, key, {0: lora_adapter(encoder)[0].get_submodule(name)}, None, False)
                done.add(key)
    extra = sorted(m for m in modules if m not in done and not m.startswith(tuple(skipped)))
    if extra and not partial:
        raise ValueError(f"{path}: tensor `{extra[0]}{_DOWN}` matches no LoRA layer of this run")
    return len(done)


def _load_denoiser(path: str, family: str, unet: torch.nn.Module, state: dict, in_file=None) -> set[str]:
    """The denoiser's layers set from the file (`in_file`: the file's modules, where layers it lacks keep
    their init: adapter.init_partial; None: every adapted layer needs its tensors)."""
    # the family's kohya layout (runtime/flux_kohya.py for networks.lora_flux: Flux and Chroma; sd3_kohya.py);
    # the adaLN Linears feeding an AdaLayerNormContinuous hold (scale, shift) where the original holds
    # (shift, scale)
    network = family_spec(family).kohya.network.removeprefix("networks.lora_")
    layout = import_module(f"dbspec.runtime.{network}_kohya")
    original_name = layout.original_name

    def swapped(_kohya: str, module_path: str) -> bool:
        parent = plain.get_submodule(module_path.rsplit(".", 1)[0]) if "." in module_path else plain
        return type(parent).__name__ == "AdaLayerNormContinuous"

    from dbspec.runtime.flux_kohya import _widths

    plain = lora_adapter(unet)[0]
    widths = _widths(plain)
    groups = {g.kohya_name: g.parts for g in family_spec(family).fused_projections}
    layers: dict[str, dict[int | None, tuple]] = {}
    for name, down, up, rank, alpha in _kohya_lora_layers(unet):
        kohya, part = original_name(name)
        layers.setdefault(kohya, {})[part] = (name, down, up, rank, alpha)
    done = set()
    for kohya, present in sorted(layers.items()):
        key = f"lora_unet_{kohya}"
        if in_file is not None and key not in in_file:
            continue  # kohya's strict=False load: the layer keeps its init
        if None in present:
            name, down, up, rank, alpha = present[None]
            file_down, file_up = _tensors(path, state, key, (tuple(down.shape), tuple(up.shape)))
            file_alpha = _check_alpha(
                path, state, key, (alpha, float(rank)) if kohya.startswith("final_") else (alpha,)
            )
            if not math.isclose(
                file_alpha, alpha, rel_tol=1e-3
            ):  # the scale folded into lora_up (alpha = rank)
                file_up = file_up * (file_alpha / alpha)
            if swapped(kohya, name):
                first, second = file_up.chunk(2, dim=0)
                file_up = torch.cat([second, first], dim=0)
            down.copy_(file_down.to(down))
            up.copy_(file_up.to(up))
            _load_mid(path, state, key, plain.get_submodule(name))
            _load_dora(path, state, key, {0: plain.get_submodule(name)}, None, swapped(kohya, name))
        else:
            block = ".".join(next(iter(present.values()))[0].split(".")[:2])
            children = groups[kohya.split("_", 3)[-1]]  # double_blocks_{i}_img_attn_qkv -> img_attn_qkv
            _load_fused(path, state, key, block, children, present, widths)
            parts = {index: plain.get_submodule(p[0]) for index, p in present.items()}
            _load_dora(path, state, key, parts, [widths[f"{block}.{child}"] for child in children], False)
        done.add(key)
    return done


def _load_mid(path: str, state: dict, key: str, layer: torch.nn.Module) -> None:
    """LyCORIS LoCon's Tucker core (`lora_mid.weight`, SD3's patch convolution with use_tucker) into the
    layer's (locon_tucker.TuckerConv2d); a file core for a layer without one, or the reverse, is an error."""
    mids = getattr(layer, "lora_mid", None)
    own = mids[ADAPTER_NAME].weight if mids is not None and ADAPTER_NAME in mids else None
    value = state.get(key + _MID)
    if own is None and value is None:
        return
    if own is None or value is None:
        held = "holds" if value is not None else "lacks"
        raise ValueError(
            f"{path}: module `{key}` {held} `{key}{_MID}` (LoCon's Tucker form), which the run's layer "
            f"{'has not' if own is None else 'needs'}"
        )
    if tuple(value.shape) != tuple(own.shape):
        raise ValueError(
            f"{path}: tensor `{key}{_MID}` has shape {list(value.shape)}; the run's layer needs "
            f"{list(own.shape)}"
        )
    own.copy_(value.to(own))


def _load_dora(path: str, state: dict, key: str, parts: dict, rows: list[int] | None, swap: bool) -> None:
    """LyCORIS's LoConModule with weight_decompose: the file's `dora_scale` (one magnitude per output row of
    kohya's Linear) into the adapted parts' magnitudes (runtime/lycoris_dora.py; a fused Linear's rows split
    by its parts' widths, the adaLN rows' halves swapped back; per input column, wd_on_out=False, the one
    (1, in) magnitude the parts share). Nothing without one (strict=False keeps the
    init) or without the weight decomposition (the plan refused such a file)."""
    from dbspec.runtime.lycoris_dora import dora_scale_of

    value = state.get(key + ".dora_scale")
    scales = {index: dora_scale_of(layer, ADAPTER_NAME) for index, layer in parts.items()}
    if value is None or any(scale is None for scale in scales.values()):
        return
    from dbspec.runtime.lycoris_dora import axis_of

    if any(axis_of(scale.shape) == "input" for scale in scales.values()):
        # per input column: one (1, in) magnitude of the fused Linear, the Parameter its parts share
        # (lycoris_dora.tie_fused_doras), loaded as it is (LoConModule's load_state_dict)
        for scale in scales.values():
            if tuple(value.shape) != tuple(scale.shape):
                raise ValueError(
                    f"{path}: tensor `{key}.dora_scale` has shape {list(value.shape)}; the run's layer's "
                    f"magnitudes (one per input column) need {list(scale.shape)}"
                )
            scale.copy_(value.to(scale))
        return
    if swap:
        first, second = value.chunk(2, dim=0)
        value = torch.cat([second, first], dim=0)
    blocks = value.split(rows, dim=0) if rows else [value]
    for index, scale in scales.items():
        if tuple(blocks[index].shape) != tuple(scale.shape):
            raise ValueError(
                f"{path}: tensor `{key}.dora_scale` has shape {list(value.shape)}; the run's layer's "
                f"magnitudes need {list(scale.shape)} per part"
            )
        scale.copy_(blocks[index].to(scale))


def _load_fused(path: str, state: dict, key: str, block: str, children, present: dict, widths) -> None:
    """Split the fused layer `key`'s file tensors onto its adapted parts (`present`: part index ->
    (path, lora_A weight, lora_B weight, rank, alpha))."""
    first = present[min(present)]
    rank, in_width = first[3], first[1].shape[1]
    rows = [widths[f"{block}.{child}"] for child in children]
    n = len(children)
    down_shape = state.get(key + _DOWN)
    if down_shape is None:
        raise ValueError(f"{path}: the run's LoRA layer `{key}` has no tensor `{key}{_DOWN}`")
    shared = down_shape.shape[0] == rank
    total = rank if shared else rank * n
    file_down, file_up = _tensors(path, state, key, ((total, in_width), (sum(rows), total)))
    tied = len(present) > 1 and all(p[1] is first[1] for p in present.values())
    if tied and not shared:
        raise ValueError(
            f"{path}: tensor `{key}{_DOWN}` stacks {n} separate downs (split_qkv); the run's parts of it "
            "share one down (adapter.fused_projections): set adapter.fused_projections = false"
        )
    _check_alpha(path, state, key, (first[4],) if shared else (first[4], first[4] * n))
    ups = file_up.split(rows, dim=0)
    for index, (_name, down, up, r, alpha) in sorted(present.items()):
        if r != rank:
            raise ValueError(f"{path}: `{key}`'s parts have ranks {rank} and {r}; one fused layer needs one")
        if shared:
            down.copy_(file_down.to(down))
            up.copy_(ups[index].to(up))
        else:  # kohya's split: equal chunks of the down, each part's up from its own column block
            down.copy_(file_down[index * rank : (index + 1) * rank].to(down))
            # dbspec's export scaled a part's up by its scale over the first part's (1 when they agree)
            ratio = (first[4] / first[3]) / (alpha / r)
            up.copy_((ups[index][:, index * rank : (index + 1) * rank] * ratio).to(up))


def _tensors(path: str, state: dict, key: str, shapes) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for suffix, shape in zip((_DOWN, _UP), shapes):
        value = state.get(key + suffix)
        if value is None:
            raise ValueError(f"{path}: the run's LoRA layer `{key}` has no tensor `{key}{suffix}`")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{path}: tensor `{key}{suffix}` has shape {list(value.shape)}; the run's layer needs "
                f"{list(shape)}"
            )
        out.append(value.float())
    return out[0], out[1]


def _check_alpha(path: str, state: dict, key: str, allowed: tuple[float, ...]) -> float:
    """The file's alpha for `key` (the first allowed value when it holds none: kohya keeps the network's)."""
    stored = state.get(key + _ALPHA)
    if stored is None:
        return allowed[0]
    value = float(stored)
    if not any(math.isclose(value, a, rel_tol=1e-3) for a in allowed):
        raise ValueError(
            f"{path}: tensor `{key}{_ALPHA}` is {value:g}; the run's layer needs "
            + " or ".join(f"{a:g}" for a in allowed)
        )
    return value
