"""`adapter.init_weights` (kohya `--network_weights`): the LoRA file a run starts from, checked against the
adapter at plan time from its header (and its alpha bytes), without torch.

kohya loads the file into its network with `load_state_dict(strict=False)`: a tensor whose shape differs
fails, a layer the network lacks is ignored silently, and the network keeps its own alpha for the scale
(networks/lora.py computes `alpha / dim` at construction) while saving the file's. dbspec asks for the file's
layers, ranks and alphas to be the adapter's, so what trains and what is saved cannot diverge; only the layers
of a model that does not train are ignored (a warning), as kohya drops those networks in `apply_to`. That
every adapted layer has its tensors in the file is checked when the runtime loads it (the module list
needs the model)."""

from __future__ import annotations

import math
import re

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.lora_file import LoraFile, LoraModule, kohya_suffix, read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.families import family_spec
from dbspec.spec.model import LoraAdapter

KEY = ("adapter", "init_weights")


def kohya_component_prefixes(family: str) -> dict[str, str]:
    """kohya's module-name prefix -> the component it adapts (networks/lora.py: `lora_te` for one text
    encoder, `lora_te1` / `lora_te2` for SDXL's two)."""
    spec = family_spec(family)
    names = spec.text_encoder_names
    text = {"lora_te_": names[0]} if len(names) == 1 else {f"lora_te{i + 1}_": n for i, n in enumerate(names)}
    return {"lora_unet_": spec.denoiser, **text}


def plan_init_weights(ctx: Context, family: str, components) -> tuple[str, int]:
    """(the file's absolute path, layers that load), or ("", 0) without one or when it does not fit (the
    problems reported)."""
    adapter = ctx.spec.adapter
    if not isinstance(adapter, LoraAdapter) or not adapter.init_weights:
        return "", 0
    path = ctx.resolve(adapter.init_weights)
    if adapter.dora:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}` is a plain LoRA; a DoRA adapter (adapter.dora = true) needs magnitudes it does "
            "not hold",
            KEY,
            help="set adapter.dora = false to continue the LoRA",
        )
        return "", 0
    if not path.is_file():
        ctx.report("DBS357", "error", f"LoRA file `{path}` not found", KEY, help="check the path")
        return "", 0
    if family_spec(family).fused_projections:  # kohya's lora_flux / lora_sd3: the original model's names
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: dbspec cannot start a {family_spec(family).title} LoRA from a kohya file yet (kohya "
            "names the original model's fused layers, which are not split into diffusers' parts here)",
            KEY,
            help="remove adapter.init_weights",
        )
        return "", 0
    try:
        file = read_lora_file(path)
    except ModelFileError as exc:
        ctx.report("DBS357", "error", f"`{exc.path}` cannot start the LoRA: {exc.reason}", KEY)
        return "", 0
    trained = {c.name for c in components if c.trainable == "lora"}
    prefixes = kohya_component_prefixes(family)
    used = 0
    ignored: dict[str, int] = {}
    for module in file.modules.values():
        prefix = next((p for p in prefixes if module.name.startswith(p)), None)
        if prefix is None:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}`: tensor `{module.name}.lora_down.weight` belongs to no model of this {family} run "
                f"(kohya prefixes here: {', '.join(prefixes)})",
                KEY,
            )
            return "", 0
        component = prefixes[prefix]
        if component not in trained:
            ignored[component] = ignored.get(component, 0) + 1
            continue
        denoiser = component == family_spec(family).denoiser
        if denoiser and family_spec(family).kohya.original_unet_names:
            module = attrs.evolve(module, name=diffusers_tail(module.name))
        problem = _mismatch(module, adapter, denoiser)
        if problem:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: {problem}",
                KEY,
                help="make the adapter's rank, alpha and targets the file's (kohya --dim_from_weights "
                "reads them from the file), or start from another file",
            )
            return "", 0
        used += 1
    for component, count in ignored.items():
        ctx.report(
            "DBS358",
            "warning",
            f"`{path}` holds {count} LoRA layer(s) of `{component}`, which does not train: they are ignored",
            KEY,
        )
    if not used:
        ctx.report("DBS356", "error", f"`{path}` holds no layer of a model this run trains", KEY)
        return "", 0
    return str(path), used


# kohya's SDXL LoRA names follow the original UNet layout: the ResNet, downsampler and upsampler layers end in
# other words than the diffusers names dbspec's targets use (attention layers end alike).
_ORIGINAL_TAILS = (
    (re.compile(r"_in_layers_2$"), "_conv1"),
    (re.compile(r"_out_layers_3$"), "_conv2"),
    (re.compile(r"_emb_layers_1$"), "_time_emb_proj"),
    (re.compile(r"_skip_connection$"), "_conv_shortcut"),
    (re.compile(r"^(lora_unet_input_blocks_\d+_0)_op$"), r"\1_downsamplers_0_conv"),
    (re.compile(r"^(lora_unet_output_blocks_\d+_\d+)_conv$"), r"\1_upsamplers_0_conv"),
)


def diffusers_tail(name: str) -> str:
    """A kohya original-layout module name with its last words as diffusers names them (for target checks)."""
    for pattern, tail in _ORIGINAL_TAILS:
        if pattern.search(name):
            return pattern.sub(tail, name)
    return name


def _mismatch(module: LoraModule, adapter: LoraAdapter, denoiser: bool) -> str:
    """Why the file's module does not fit the adapter, or ""."""
    tensor = f"`{module.name}.lora_down.weight`"
    if module.conv:
        targets = adapter.conv_targets if denoiser and adapter.conv_rank else []
        rank, alpha, what = adapter.conv_rank, adapter.conv_alpha, "conv_rank"
    else:
        targets = adapter.denoiser_targets if denoiser else adapter.text_encoder_targets
        rank, alpha, what = adapter.rank, adapter.alpha, "rank"
    if not any(module.name.endswith(kohya_suffix(t)) for t in targets):
        listed = (
            "conv_targets" if module.conv else ("denoiser_targets" if denoiser else "text_encoder_targets")
        )
        kind = "convolution" if module.conv else "layer"
        return (
            f"tensor {tensor} adapts a {kind} adapter.{listed} does not name ({', '.join(targets) or 'none'})"
        )
    if denoiser and adapter.blocks:
        # per-block ranks: kohya's flattened names cannot be matched against the blocks' path patterns here;
        # the run checks every tensor's shape against its layer when it loads the file
        return ""
    if module.rank != rank:
        return f"tensor {tensor} has rank {module.rank} (shape {list(module.down)}); adapter.{what} is {rank}"
    if module.alpha is not None and not math.isclose(module.alpha, alpha, rel_tol=1e-3):
        name = "conv_alpha" if module.conv else "alpha"
        return f"tensor `{module.name}.alpha` is {module.alpha:g}; adapter.{name} is {alpha:g}"
    return ""


def file_ranks(file: LoraFile) -> dict[str, tuple[int, float]]:
    """kohya --dim_from_weights: {"rank"|"conv_rank": (rank, alpha)} when every linear (every convolution)
    module of the file shares one rank and alpha; ValueError naming the first that differs. A module without
    alpha takes its rank as alpha (networks/lora.py create_network_from_weights)."""
    out: dict[str, tuple[int, float]] = {}
    for module in file.modules.values():
        key = "conv_rank" if module.conv else "rank"
        pair = (module.rank, module.alpha if module.alpha is not None else float(module.rank))
        first = out.setdefault(key, pair)
        if pair[0] != first[0] or not math.isclose(pair[1], first[1], rel_tol=1e-3):
            raise ValueError(
                f"module `{module.name}` has rank {pair[0]} / alpha {pair[1]:g}, others {first[0]} / "
                f"{first[1]:g} (per-layer ranks)"
            )
    return out
