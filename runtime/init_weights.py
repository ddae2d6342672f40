"""Start a LoRA from a kohya-layout file (`plan.adapter.init_weights`, kohya `--network_weights`).

The plan checked the file's layers, ranks and alphas against the adapter (the alphas unless
`plan.adapter.init_alpha` is "ignore": then every layer keeps the adapter's alpha, as kohya's network keeps
network_alpha's scale); here every peft LoRA layer is named as kohya names it (the `kohya_lora` exporter's
names, so an export loads back exactly) and its `lora_A` / `lora_B` are set from the file's `lora_down` /
`lora_up` before step 0. Layers of models that do not train are skipped; a trained layer missing from the
file, or a file layer no trained layer matches, is an error naming the file and the tensor, unless
`plan.adapter.init_partial` (kohya's `load_state_dict(strict=False)`): then the layers and tensors the file
lacks keep their init and the file's other layers are ignored. A LyCORIS LoCon with use_tucker
(plan.adapter.tucker) also takes each k x k convolution's `lora_mid` into its Tucker layer's middle
convolution (runtime/locon_tucker.py), as LoConModule's load_state_dict does.

A DyLoRA (plan.adapter.kind "dylora", kohya networks.dylora's `load_weights`) loads the same layout: each
layer's `lora_down` rows and `lora_up` columns are cut into its blocks of `unit` ranks, as kohya's
DyLoRAModule cuts them into its one-rank parameters.

kohya's own OFT (plan.adapter.kind "diag-oft", oft_form "kohya"; networks/oft.py, on FLUX.1
and Chroma networks/oft_flux.py, OFTNetwork.load_weights) loads its `oft_unet_*` modules' `oft_blocks` into
each layer's blocks, named as the kohya export names them.

LyCORIS's train_norm NormModules (plan.adapter.denoiser_norms / text_encoder_norms) take the file's
`w_norm` / `b_norm` into the norms' offsets, whatever the adapter's kind."""

from __future__ import annotations

import math

import torch

from dbspec.runtime.weight_files import load_weights
from dbspec.families import family_spec
from dbspec.plan.model import Plan
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.exports import _kohya_lora_layers, kohya_parts

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_MID = ".lora_mid.weight"  # LyCORIS LoCon's Tucker form (runtime/locon_tucker.py)
_DORA = ".dora_scale"  # LyCORIS LoCon's weight decomposition (dora_wd; runtime/lycoris_dora.py)


def load_init_weights(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> int:
    """Copy the plan's starting LoRA into the adapters; returns the number of layers set. With LyCORIS's
    use_scalar (plan.adapter.scalar, or a block's own) every layer's scalar then becomes 1, as LyCORIS's
    modules' load hook sets it on every module (those the file lacks too): the file's factors hold it folded
    in. On Flux / SD3 a fused layer's parts share one scalar (runtime/fused.py), which becomes 1 alike."""
    from dbspec.runtime.adapters import any_scalar

    loaded = _load(plan, unet, text_encoders) + _load_norms(plan, unet, text_encoders)
    if any_scalar(plan.adapter):  # the adapter's use_scalar, or a block's own (a LyCORIS map entry's)
        _scalars_to_one([unet, *text_encoders])
    return loaded


def _load_norms(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> int:
    """LyCORIS's train_norm NormModules (runtime/norm_offsets.py): each offset norm's `w_norm` / `b_norm`
    from the file under its kohya name, as lycoris.kohya's load_weights (`load_state_dict(strict=False)`)
    loads them into the NormModules. A file holding no norm tensor leaves every offset at zero; otherwise,
    with `init_partial`, a norm the file lacks keeps its zero offsets. Returns the number of norms set."""
    from dbspec.runtime.norm_offsets import norm_state

    a = plan.adapter
    keys = ("denoiser_norms", "text_encoder_norms", "text_encoder_2_norms")
    if not any(getattr(a, key, ()) for key in keys):
        return 0
    path = a.init_weights
    state = load_weights(path)
    if not any(key.endswith((".w_norm", ".b_norm")) for key in state):
        return 0  # a file of the adapters alone: the offsets start at zero
    loaded = 0
    with torch.no_grad():
        for prefix, module, to_path in kohya_parts(
            unet=unet, text_encoders=list(text_encoders), family=plan.model.family
        ):
            for key, param in sorted(norm_state(module).items()):
                layer, tensor = key.rsplit(".", 1)
                name = f"{prefix}_{to_path(layer).replace('.', '_')}.{tensor}"
                value = state.get(name)
                if value is None and a.init_partial:
                    continue  # strict=False: the offset keeps its zeros
                if value is None:
                    raise ValueError(f"{path}: the run's offset norm has no tensor `{name}`")
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"{path}: tensor `{name}` has shape {list(value.shape)}; the run's norm has "
                        f"{list(param.shape)}"
                    )
                param.copy_(value.to(device=param.device, dtype=param.dtype))
                loaded += tensor == "w_norm"
    return loaded


def _scalars_to_one(modules: list) -> None:
    """LoConModule's / LohaModule's / LokrModule's / GLoRAModule's load_weight_hook: scalar = 1."""
    from dbspec.runtime.lycoris_switches import layer_scalar

    with torch.no_grad():
        for module in modules:
            found = lora_adapter(module) if module is not None else None
            if found is None:
                continue
            inner, adapter = found
            for layer in inner.modules():
                glora = layer._modules.get("lora_glora_scalar")
                scalar = (
                    glora[adapter] if glora is not None and adapter in glora else layer_scalar(layer, adapter)
                )
                if scalar is not None:
                    scalar.fill_(1.0)


def _load(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> int:
    if plan.adapter.kind == "diag-oft" and plan.adapter.oft_form == "kohya":  # kohya's networks.oft
        return _load_kohya_oft(plan, unet)
    from dbspec.runtime.mixed_kinds import mixed

    if mixed(plan.adapter):  # blocks of several kinds: lycoris.kohya's one file of their modules
        from dbspec.runtime.mixed_init import load_mixed_init

        return load_mixed_init(plan, unet, text_encoders)
    # lycoris.kohya's file on kohya's Flux / SD3 (full, IA3, Diag-OFT, BOFT, GLoRA, T-LoRA on SD 1.x/2.x /
    # SDXL)
    if plan.adapter.kind in ("lokr", "loha", "full", "ia3", "diag-oft", "boft", "glora", "tlora"):
        from dbspec.runtime.lycoris_init import load_fused_lycoris_init

        return load_fused_lycoris_init(plan, unet, text_encoders)
    if family_spec(plan.model.family).fused_projections:  # kohya's Flux / SD3 layout: fused layers to split
        from dbspec.runtime.flow_init import load_flow_init_weights

        return load_flow_init_weights(plan, unet, text_encoders)
    path = plan.adapter.init_weights
    state = load_weights(path)
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    mids: dict[str, torch.Tensor] = {}  # LoCon's Tucker layers: their lora_mid weight
    scales: dict[str, torch.Tensor] = {}  # LoCon's weight-decomposed layers: their dora_scale
    skipped: list[str] = []  # prefixes of models without an adapter (not trained)
    for prefix, module, to_path in kohya_parts(
        unet=unet, text_encoders=list(text_encoders), family=plan.model.family
    ):
        if lora_adapter(module) is None:
            skipped.append(prefix + "_")
            continue
        found = _dylora_layers(module) if plan.adapter.kind == "dylora" else _kohya_lora_layers(module)
        for name, down, up, _rank, alpha in found:
            layers[f"{prefix}_{to_path(name).replace('.', '_')}"] = (down, up, alpha)
        mids |= {f"{prefix}_{to_path(n).replace('.', '_')}": w for n, w in _tucker_mids(module)}
        scales |= {f"{prefix}_{to_path(n).replace('.', '_')}": w for n, w in _dora_scales(module)}
    suffixes = (_DOWN, _UP, _ALPHA, _MID, _DORA)
    modules = {key[: -len(s)] for key in state for s in suffixes if key.endswith(s)}
    partial = plan.adapter.init_partial  # kohya's load_state_dict(strict=False)
    extra = sorted(m for m in modules if m not in layers and not m.startswith(tuple(skipped)))
    if extra and not partial:
        raise ValueError(f"{path}: tensor `{extra[0]}{_DOWN}` matches no LoRA layer of this run")
    loaded = 0
    with torch.no_grad():
        for key, (down, up, alpha) in sorted(layers.items()):
            if partial and key not in modules:
                continue  # kohya's network keeps this layer's own init
            loaded += 1
            # adapter.init_alpha "ignore": the layer keeps its alpha, as kohya's LoRAModule keeps the scale it
            # built from network_alpha when load_weights overwrites its alpha buffer
            stored = state.get(key + _ALPHA) if plan.adapter.init_alpha == "match" else None
            if stored is not None and not math.isclose(float(stored), alpha, rel_tol=1e-3):
                raise ValueError(
                    f"{path}: tensor `{key}{_ALPHA}` is {float(stored):g}; the run's layer has {alpha:g}"
                )
            mid = mids.get(key)
            if mid is None and key + _MID in state and not partial:  # strict=False: an unexpected key
                raise ValueError(
                    f"{path}: tensor `{key}{_MID}` has no place in the run's layer (no Tucker form)"
                )
            scale = scales.get(key)
            if scale is None and key + _DORA in state and not partial:
                raise ValueError(
                    f"{path}: tensor `{key}{_DORA}` has no place in the run's layer (no weight decomposition)"
                )
            extra_params = (
                *(((_MID, mid),) if mid is not None else ()),
                *(((_DORA, scale),) if scale is not None else ()),
            )
            for suffix, param in ((_DOWN, down), (_UP, up), *extra_params):
                value = state.get(key + suffix)
                if value is None and partial:
                    continue  # strict=False: the tensor keeps its init
                if value is None:
                    raise ValueError(f"{path}: the run's LoRA layer `{key}` has no tensor `{key}{suffix}`")
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"{path}: tensor `{key}{suffix}` has shape {list(value.shape)}; the run's layer "
                        f"has {list(param.shape)}"
                    )
                param.copy_(value.to(device=param.device, dtype=param.dtype))
    return loaded


def _dora_scales(module: torch.nn.Module):
    """(module path, dora_scale) of each weight-decomposed LoCon layer of the adapter (LoConModule with
    weight_decompose loads `dora_scale` as it is: load_state_dict; its load hook only sets the scalar)."""
    from dbspec.runtime.lycoris_dora import dora_scale_of

    found = lora_adapter(module)
    if found is None:
        return
    inner, adapter = found
    for name, layer in inner.named_modules():
        scale = dora_scale_of(layer, adapter)
        if scale is not None:
            yield name, scale


def _tucker_mids(module: torch.nn.Module):
    """(module path, lora_mid weight) of each LoCon Tucker layer of the adapter (LoConModule with
    use_tucker loads `lora_mid.weight` as it loads lora_down / lora_up: load_state_dict, no hook)."""
    from dbspec.runtime.locon_tucker import TuckerConv2d

    found = lora_adapter(module)
    if found is None:
        return
    inner, adapter = found
    for name, layer in inner.named_modules():
        if isinstance(layer, TuckerConv2d) and adapter in layer.lora_mid:
            yield name, layer.lora_mid[adapter].weight


class _Blocks:
    """A DyLoRA layer's blocks as the one kohya tensor they make: the downs stacked (dim 0) or the ups side
    by side (dim 1); `copy_` cuts a tensor of that shape back into the blocks."""

    def __init__(self, blocks, dim: int):
        self.blocks, self.dim = list(blocks), dim
        first = self.blocks[0]
        self.shape = torch.Size(
            [*first.shape[:dim], sum(b.shape[dim] for b in self.blocks), *first.shape[dim + 1 :]]
        )
        self.device, self.dtype = first.device, first.dtype

    def copy_(self, value: torch.Tensor) -> None:
        sizes = [b.shape[self.dim] for b in self.blocks]
        for block, part in zip(self.blocks, value.split(sizes, dim=self.dim)):
            block.copy_(part)


def _dylora_layers(module: torch.nn.Module | None):
    """(module path, downs, ups, rank, kohya alpha) for each DyLoRA layer of the adapter."""
    from dbspec.runtime.dylora import DyloraLayer

    found = lora_adapter(module)
    if found is None:
        return
    module, adapter = found
    for name, layer in module.named_modules():
        if isinstance(layer, DyloraLayer) and adapter in layer.lora_dylora_down:
            rank = layer.r[adapter]
            downs = _Blocks(layer.lora_dylora_down[adapter], 0)
            ups = _Blocks(layer.lora_dylora_up[adapter], 1)
            yield name, downs, ups, rank, float(layer.scaling[adapter]) * rank


def _load_kohya_oft(plan: Plan, unet: torch.nn.Module) -> int:
    """OFTNetwork.load_weights (load_state_dict(strict=False) of the file): each adapted layer's
    `oft_unet_<kohya name>.oft_blocks` (networks.oft_flux on FLUX.1 / Chroma:
    `oft_unet_<Flux name>.oft_blocks.<part>`, a fused layer's part its own entry, runtime/flux_oft.py), a
    shape that differs refused as torch refuses it; with init_partial a layer the file lacks keeps its zero
    blocks and a file module no layer matches is ignored (else both are errors naming the file and the
    tensor). No alpha is read: the layers keep the adapter's constraint, as OFTModule keeps the one it was
    built with (the plan checked that the file's equal it, unless plan.adapter.init_alpha is "ignore")."""
    path = plan.adapter.init_weights
    state = load_weights(path)
    layers = _kohya_oft_layers(plan, unet)  # tensor key -> the layer's blocks
    partial = plan.adapter.init_partial
    ours = {key.split(".oft_blocks")[0] for key in layers}
    modules = {key.split(".oft_blocks")[0].removesuffix(".alpha") for key in state}
    extra = sorted(m for m in modules if m not in ours)
    if extra and not partial:
        raise ValueError(f"{path}: tensor `{extra[0]}.oft_blocks` matches no OFT layer of this run")
    loaded = 0
    with torch.no_grad():
        for key, param in sorted(layers.items()):
            value = state.get(key)
            if value is None:
                if partial:
                    continue  # kohya's network keeps this layer's zero blocks
                raise ValueError(f"{path}: the run's OFT layer has no tensor `{key}`")
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{path}: tensor `{key}` has shape {list(value.shape)}; the run's layer has "
                    f"{list(param.shape)}"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))
            loaded += 1
    return loaded


def _kohya_oft_layers(plan: Plan, unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The file's tensor key of each kohya OFT layer's blocks: kohya's networks.oft names (the kohya
    export's), or on FLUX.1 / Chroma networks.oft_flux's Flux names with the fused layer's part
    (flux_oft.py)."""
    from dbspec.runtime.flux_kohya import original_name
    from dbspec.runtime.lycoris_oft import KohyaOftLayer

    flux = family_spec(plan.model.family).kohya.oft_network == "networks.oft_flux"
    layers: dict[str, torch.nn.Parameter] = {}
    for _prefix, module, to_path in kohya_parts(unet=unet, text_encoders=[], family=plan.model.family):
        found = lora_adapter(module)
        if found is None:
            continue
        module, adapter = found
        for name, layer in module.named_modules():
            if not (isinstance(layer, KohyaOftLayer) and adapter in layer.lora_oft_blocks):
                continue
            if flux:
                kohya, part = original_name(name)
                layers[f"oft_unet_{kohya}.oft_blocks.{part or 0}"] = layer.lora_oft_blocks[adapter]
            else:
                layers[f"oft_unet_{to_path(name).replace('.', '_')}.oft_blocks"] = layer.lora_oft_blocks[
                    adapter
                ]
    return layers
