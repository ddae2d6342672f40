"""`adapter.init_weights` for a run of several kinds (blocks whose `kind` is not the adapter's,
runtime/mixed_kinds.py): lycoris.kohya's file of one module per layer, each in its own algo's tensors
(`--network_weights` with a preset giving layers their own algo; the file of mixed kinds `--dim_from_weights`
rebuilds). Checked here from the header: every tensor is one of the run's kinds' (LoRA's `lora_down` /
`lora_up`, LoKr's / LoHa's factors, full's `diff`, IA^3's, OFT's, GLoRA's) and every module a model of the
run's; the shapes and alphas when the run loads it (runtime/mixed_init.py). On SD 1.x/2.x and SDXL (one
module per layer) and Flux / SD3 / Chroma (one module per kohya Linear, a fused one's tensors split into its
parts), with kinds whose file form the loader knows (DyLoRA's alpha alone loading, a fused DyLoraModule's one
alpha for all its parts)."""

from __future__ import annotations

from dbspec.compiler.context import Context
from dbspec.families import family_spec

_LORA = ("lora_down.weight", "lora_up.weight")  # LoConModule's


def run_kinds(adapter) -> tuple[str, ...]:
    """The adapter's kind and its blocks' other kinds; one entry when the run is of one kind."""
    own = adapter.kind
    found = [own]
    for table in ("blocks", "text_encoder_blocks"):
        for block in getattr(adapter, table, ()):
            kind = getattr(block, "kind", "adapter")
            if kind not in ("adapter", *found):
                found.append(kind)
    return tuple(found)


def _locon_tuckers(adapter) -> bool:
    """Some LoRA block of the run sets LoCon's Tucker form (`tucker = "on"`; LyCORIS's `lora_mid`)."""
    own = adapter.kind
    for block in getattr(adapter, "blocks", ()):
        kind = getattr(block, "kind", "adapter")
        if getattr(block, "tucker", "adapter") == "on" and (own if kind == "adapter" else kind) == "lora":
            return True
    return False


def _decomposes(adapter) -> bool:
    """Some layer of the run trains LyCORIS's weight decomposition (the adapter's `dora`, a block's own
    `dora = "on"`: a module with weight_decompose, whose `dora_scale` the file may hold)."""
    blocks = (*getattr(adapter, "blocks", ()), *getattr(adapter, "text_encoder_blocks", ()))
    return bool(getattr(adapter, "dora", False)) or any(getattr(b, "dora", "") == "on" for b in blocks)


def plan_mixed_init(ctx: Context, family: str, adapter, components) -> tuple[str, int]:
    """(the file's absolute path, its modules that load), or ("", 0) when it does not fit (reported)."""
    from dbspec.compiler.init_file import (
        FACTORS,
        KEY,
        has_norms,
        module_name,
        read_file,
        tally_modules,
        flow_component_prefixes,
        kohya_component_prefixes,
    )
    from dbspec.compiler.weight_file import read_weights_header

    path = ctx.resolve(adapter.init_weights)
    kinds = run_kinds(adapter)
    header = read_file(ctx, path, read_weights_header, "LyCORIS")
    if header is None:
        return "", 0
    # a DyLoRA layer's module in kohya's LoRA layout (DyLoraModule's custom_state_dict): its alpha loads
    tensors = tuple(
        dict.fromkeys(t for k in kinds for t in (_LORA if k in ("lora", "dylora") else FACTORS[k]))
    )
    if _locon_tuckers(adapter):  # a LoCon block's Tucker form: its convolutions' middle factor
        tensors += ("lora_mid.weight",)
    tensors += ("w_norm", "b_norm") if has_norms(adapter) else ()  # train_norm's NormModules
    if _decomposes(adapter):  # LyCORIS's weight decomposition on some LoRA / LoHa / LoKr layers
        tensors += ("dora_scale",)
    # the longest name first: IA^3's `weight` also ends LoCon's `lora_down.weight` and GLoRA's `a1.weight`
    tensors = tuple(sorted(tensors, key=len, reverse=True))
    modules = {module_name(key, tensors) for key in header} - {None}
    other = next((k for k in sorted(header) if module_name(k, (*tensors, "alpha")) is None), None)
    if other is not None:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: tensor `{other}` is none of this run's kinds' ({', '.join(kinds)}: "
            f"{', '.join(tensors)})",
            KEY,
            help="start from the lycoris.kohya file of a network with these kinds",
        )
        return "", 0
    prefixes = (  # LyCORIS's numbering of the encoders on Flux / SD3 / Chroma (T5-XXL's lora_te2_ / _te3_)
        flow_component_prefixes(family, lycoris=True)
        if family_spec(family).fused_projections
        else kohya_component_prefixes(family)
    )
    return tally_modules(ctx, path, family, modules, prefixes, components)
