"""`adapter.init_weights` (kohya `--network_weights`): the LoRA file a run starts from, checked against the
adapter at plan time from its header (and its alpha bytes), without torch.

kohya loads the file into its network with `load_state_dict(strict=False)`: a tensor whose shape differs
fails, a layer the network lacks is ignored silently, and the network keeps its own alpha for the scale
(networks/lora.py computes `alpha / dim` at construction) while saving the file's. dbspec asks for the file's
layers, ranks and alphas to be the adapter's, so what trains and what is saved cannot diverge, unless
`adapter.init_alpha = "ignore"` says the file's alphas are not the run's (kohya's training; the export then
carries the trained alpha; kohya's max-norm reads the file's: max_norm_file_alphas); only the layers
of a model that does not train are ignored (a warning), as kohya drops those networks in `apply_to`. That
every adapted layer has its tensors in the file is checked when the runtime loads it (the module list
needs the model). `adapter.init_partial` loads as kohya does: layers the file lacks keep their init, file
layers the adapter does not adapt are ignored (DBS387 where the name shows it, else at load)."""

from __future__ import annotations

import math

import attrs

from dbspec.compiler.dora_axes import own_axis_doras
from dbspec.compiler.fused import block_dora
from dbspec.compiler.context import Context
from dbspec.compiler.init_file import (
    FACTORS,
    KEY,
    flow_component_prefixes,
    has_norms,
    kohya_component_prefixes,
    module_name,
    other_axis_doras,
    read_file,
    tally,
    tally_modules,
)
from dbspec.compiler.lora_file import LoraFile, LoraModule, diffusers_tail, kohya_suffix, read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import read_weights_header
from dbspec.families import (
    T5_LORA_TARGETS,
    family_spec,
    t5_text_encoders,
)
from dbspec.spec.model import (
    BoftAdapter,
    DiagOftAdapter,
    DyloraAdapter,
    FullAdapter,
    GloraAdapter,
    Ia3Adapter,
    LohaAdapter,
    LokrAdapter,
    LoraAdapter,
    TloraAdapter,
)


def plan_init_weights(ctx: Context, family: str, components, layers=None) -> tuple[str, int]:
    """(the file's absolute path, layers that load), or ("", 0) without one or when it does not fit (the
    problems reported). `layers`: a callable giving the base model's layers per component (compile.py
    model_layers), read only where blocks set a dora_axis of their own."""
    adapter = ctx.spec.adapter
    from dbspec.compiler.mixed_init_file import plan_mixed_init, run_kinds

    if getattr(adapter, "init_weights", "") and len(run_kinds(adapter)) > 1:  # blocks of their own kind
        return plan_mixed_init(ctx, family, adapter, components)
    if isinstance(adapter, DiagOftAdapter) and adapter.form == "kohya" and adapter.init_weights:
        return _plan_kohya_oft(ctx, family, adapter, components)
    if isinstance(adapter, _LYCORIS_FILES) and adapter.init_weights:
        return _plan_fused_lycoris(ctx, family, adapter, components, layers)
    if not isinstance(adapter, (LoraAdapter, DyloraAdapter)) or not adapter.init_weights:
        return "", 0
    path = ctx.resolve(adapter.init_weights)
    if isinstance(adapter, DyloraAdapter) and family_spec(family).fused_projections:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: a DyLoRA starts from a file on SD 1.x/2.x/SDXL (kohya's networks.dylora), not on "
            f"{family_spec(family).title}",
            KEY,
            help='set adapter.init_weights = ""',
        )
        return "", 0
    if _ignored_alpha_read_by_lycoris(ctx, adapter):
        return "", 0
    tucker = isinstance(adapter, LoraAdapter) and adapter.tucker and adapter.conv_rank > 0
    # LyCORIS's LoCon with weight_decompose (dora_form "lycoris"): its file holds each module's dora_scale,
    # which runtime/init_weights.py (SD 1.x/2.x, SDXL) or runtime/flow_init.py (Flux / SD3) loads as it is
    # into the magnitudes, as LoConModule's load_state_dict does
    lycoris_dora_file = getattr(adapter, "dora_form", "") == "lycoris"
    if getattr(adapter, "dora", False) and not lycoris_dora_file:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}` is a plain LoRA; a DoRA adapter (adapter.dora = true) needs magnitudes it does "
            "not hold",
            KEY,
            help="set adapter.dora = false to continue the LoRA",
        )
        return "", 0

    # LyCORIS LoCon's Tucker form (`lora_mid`): runtime/init_weights.py on SD 1.x/2.x / SDXL,
    # runtime/flow_init.py on SD3's patch convolution
    # LyCORIS's train_norm NormModules: their `w_norm` / `b_norm` load into the norm offsets
    # (runtime/init_weights.py), as load_state_dict(strict=False) loads them into the NormModules
    # (with init_partial, strict=False, a file's NormModules the run has no norm for are skipped: a
    # --network_train_unet_only run, whose apply_to drops the text encoders' NormModules)
    norms = has_norms(adapter) or adapter.init_partial

    def reader(p):
        return read_lora_file(p, dora_scale=lycoris_dora_file, lora_mid=bool(tucker), norms=norms)

    file = read_file(ctx, path, reader, "LoRA")
    if file is None or (lycoris_dora_file and _other_axis_dora(ctx, path, adapter, None, family, layers)):
        return "", 0
    trained = {c.name for c in components if c.trainable == "lora"}
    if family_spec(family).fused_projections:  # kohya's lora_flux / lora_sd3: the original model's names
        return _plan_flow_file(ctx, path, file, family, adapter, trained)
    prefixes = kohya_component_prefixes(family)
    used = 0
    ignored: dict[str, int] = {}
    unadapted: list[str] = []
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
        if adapter.init_partial and not _targeted(module, adapter, denoiser):
            unadapted.append(module.name)  # kohya's strict=False load ignores it
            continue
        problem = _mismatch(module, adapter, denoiser)
        if problem:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: {problem}",
                KEY,
                help="make the adapter's rank, alpha and targets the file's (kohya --dim_from_weights "
                "reads them from the file), or start from another file" + _alpha_help(problem),
            )
            return "", 0
        used += 1
    _unadapted(ctx, path, unadapted)
    return tally(ctx, path, ignored, used)


def _other_axis_dora(ctx: Context, path, adapter, header=None, family: str = "", layers=None) -> bool:
    """DBS356 (and True) when the file's `dora_scale` tensors have the other axis's shape than the run's
    decomposed layers (LyCORIS's wd_on_output, adapter.dora_axis): LoConModule / LohaModule / LokrModule
    build theirs in the network's axis shape and load_state_dict fails with a size mismatch. Blocks with an
    axis of their own (a preset entry's wd_on_out): each module against its layer's axis where `layers` (a
    callable: the base model's layers per component, compile.py model_layers) lists it on SD 1.x/2.x /
    SDXL (`family`; dora_axes.py), else checked per layer when the run loads the file."""
    if not (getattr(adapter, "dora", False) or block_dora(adapter)):
        return False
    axis = getattr(adapter, "dora_axis", "output")
    blocks = (*getattr(adapter, "blocks", ()), *getattr(adapter, "text_encoder_blocks", ()))
    own = any(getattr(b, "dora_axis", "adapter") not in ("adapter", axis) for b in blocks)
    if own and (layers is None or not family or family_spec(family).fused_projections):
        return False
    try:
        header = header if header is not None else read_weights_header(path)
    except ModelFileError:
        return False  # reported by the reader
    shapes = {k: tuple(t.shape) for k, t in header.items()}
    found = own_axis_doras(shapes, adapter, family, layers) if own else other_axis_doras(shapes, axis)
    other = "input" if axis == "output" else "output"
    if found and own:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}` does not fit the adapter: {found[0]}"
            + (f"; {len(found) - 1} other module(s) likewise" if len(found) > 1 else "")
            + " (the layer's block's dora_axis, else adapter.dora_axis; LyCORIS's load_state_dict fails "
            "with a size mismatch)",
            KEY,
            help="set that block's dora_axis (LyCORIS's wd_on_out of the preset entry) to the file's, or "
            "start from another file",
        )
        return True
    if found:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}` does not fit the adapter: {found[0]}"
            + (f"; {len(found) - 1} other module(s) likewise" if len(found) > 1 else "")
            + f' (adapter.dora_axis = "{axis}"; LyCORIS\'s load_state_dict fails with a size mismatch)',
            KEY,
            help=f'set adapter.dora_axis = "{other}" (LyCORIS\'s wd_on_output={other == "output"}), the '
            "file's, or start from another file",
        )
        return True
    return False


def max_norm_file_alphas(adapter, path: str) -> dict[str, float]:
    """The alphas kohya's max-norm reads in a run from a file: each module's of the starting file, by its
    name (plan.adapter.max_norm_alphas; {} where the max-norm is off or LyCORIS's). kohya's LoRAModule keeps
    network_alpha's scale, but load_weights copies the file's `alpha` into the module's buffer, and
    apply_max_norm_regularization scales each update by that buffer over the rank (networks/lora.py,
    lora_flux.py: one implementation): with `init_alpha = "ignore"` another alpha than the trained one, with
    "match" the file's exact value (the check allows 1e-3). A module without an alpha keeps the network's."""
    if not getattr(adapter, "max_norm", 0.0) or getattr(adapter, "max_norm_form", "lycoris") != "kohya":
        return {}
    try:
        file = read_lora_file(path, norms=True)
    except (ModelFileError, OSError):
        return {}  # plan_init_weights said why
    return {
        m.name: m.alpha for m in sorted(file.modules.values(), key=lambda m: m.name) if m.alpha is not None
    }


def _ignored_alpha_read_by_lycoris(ctx: Context, adapter) -> bool:
    """DBS595 (and True): adapter.init_alpha = "ignore" on LyCORIS's DyLoRA. Its DyLoraModule scales each
    forward by its `alpha` buffer (get_weight's alpha / (b + 1)), which load_weights sets from the file: the
    file's alphas are the run's, so they cannot be ignored (kohya's networks.dylora fixes its scale)."""
    if (
        getattr(adapter, "init_alpha", "match") != "ignore"
        or getattr(adapter, "dylora_form", "") != "lycoris"
    ):
        return False
    ctx.report(
        "DBS595",
        "error",
        'adapter.init_alpha = "ignore" with adapter.dylora_form = "lycoris": LyCORIS\'s DyLoraModule scales '
        "each forward by its alpha buffer, which loading the file sets to the file's alphas, so the run "
        "trains at the file's alphas",
        ("adapter", "init_alpha"),
        help='set adapter.init_alpha = "match" with the file\'s alpha as adapter.alpha (or per block), or '
        'dylora_form = "kohya" (kohya networks.dylora, whose scale is fixed when it is built)',
    )
    return True


def _alpha_help(problem: str) -> str:
    """The DBS356 help's way out for a file of other alphas: kohya trains such a file at its own alpha."""
    if ".alpha`" not in problem:
        return ""
    return (
        "; or set adapter.init_alpha = \"ignore\" to train the file's weights at the adapter's alpha, as "
        "kohya's networks.lora does with a --network_weights file saved at another alpha"
    )


def _targeted(module: LoraModule, adapter: LoraAdapter, denoiser: bool) -> bool:
    if module.conv:
        targets = adapter.conv_targets if denoiser and adapter.conv_rank else []
    else:
        targets = _layer_targets(module, adapter, denoiser)
    return any(module.name.endswith(kohya_suffix(t)) for t in targets)


def _t5_module(module: LoraModule) -> bool:
    """A Flux / SD3 T5-XXL module: kohya's lora_te3 prefix (flow_text_prefixes)."""
    return module.name.startswith("lora_te3_")


def _layer_targets(
    module: LoraModule, adapter: LoraAdapter, denoiser: bool, t5: bool | None = None
) -> tuple[str, ...]:
    """The targets a file's Linear module must end in: T5-XXL's are kohya's T5 targets (train.t5); `t5`:
    whether it is T5-XXL's (None: by kohya's lora_te3 prefix)."""
    if denoiser:
        return tuple(adapter.denoiser_targets)
    if _t5_module(module) if t5 is None else t5:
        return T5_LORA_TARGETS
    # kohya's lora_te2 prefix: SDXL's and SD3's second CLIP encoder (OpenCLIP bigG), its own targets
    return tuple(adapter.text_encoder_2_targets if _te2_module(module) else adapter.text_encoder_targets)


def _te2_module(module: LoraModule) -> bool:
    return module.name.startswith("lora_te2_")


def _unadapted(ctx: Context, path, names: list[str]) -> None:
    """DBS387: adapter.init_partial's file layers of layers the adapter does not adapt, ignored."""
    if names:
        ctx.report(
            "DBS387",
            "warning",
            f"`{path}` holds {len(names)} LoRA layer(s) of layers the adapter does not adapt (first "
            f"`{names[0]}`): they are ignored, as kohya's load_state_dict(strict=False) ignores them "
            "(adapter.init_partial)",
            ("adapter", "init_partial"),
        )


def _mismatch(module: LoraModule, adapter: LoraAdapter, denoiser: bool, t5: bool | None = None) -> str:
    """Why the file's module does not fit the adapter, or "" (`t5`: as _layer_targets)."""
    t5 = _t5_module(module) if t5 is None else t5
    tensor = f"`{module.name}.lora_down.weight`"
    if module.conv:
        targets = adapter.conv_targets if denoiser and adapter.conv_rank else []
        rank, alpha, what = adapter.conv_rank, adapter.conv_alpha, "conv_rank"
    else:
        targets = _layer_targets(module, adapter, denoiser, t5)
        rank, alpha, what = adapter.rank, adapter.alpha, "rank"
    if not any(module.name.endswith(kohya_suffix(t)) for t in targets):
        listed = (
            "conv_targets" if module.conv else ("denoiser_targets" if denoiser else "text_encoder_targets")
        )
        listed = "t5_targets (train.t5)" if t5 else listed
        listed = "text_encoder_2_targets" if _te2_module(module) and not (denoiser or t5) else listed
        kind = "convolution" if module.conv else "layer"
        return (
            f"tensor {tensor} adapts a {kind} adapter.{listed} does not name ({', '.join(targets) or 'none'})"
        )
    if getattr(adapter, "blocks", ()) if denoiser else getattr(adapter, "text_encoder_blocks", ()):
        # per-block ranks: kohya's flattened names cannot be matched against the blocks' path patterns here;
        # the run checks every tensor's shape against its layer when it loads the file
        return ""
    if module.rank != rank:
        return f"tensor {tensor} has rank {module.rank} (shape {list(module.down)}); adapter.{what} is {rank}"
    if module.mid and len(module.down) == 2:  # LyCORIS builds no Tucker core on a Linear
        return f"module `{module.name}` holds a Tucker core `lora_mid` on a Linear"
    if module.conv and denoiser and getattr(adapter, "tucker", False) and not module.mid:
        return (  # LoConModule's 1x1 lora_down: a k x k one does not fit (torch's size mismatch)
            f"tensor {tensor} has shape {list(module.down)} and the module no `lora_mid`; adapter.tucker = "
            "true (LoCon's Tucker form) builds each k x k convolution's lora_down 1x1 with a lora_mid"
        )
    if (
        _alphas_read(adapter)
        and module.alpha is not None
        and not math.isclose(module.alpha, alpha, rel_tol=1e-3)
    ):
        name = "conv_alpha" if module.conv else "alpha"
        return f"tensor `{module.name}.alpha` is {module.alpha:g}; adapter.{name} is {alpha:g}"
    return ""


def _alphas_read(adapter) -> bool:
    """Whether the file's alphas must be the adapter's (adapter.init_alpha "match"); "ignore": kohya's
    networks.lora scales at network_alpha / rank (networks.oft constrains at network_alpha x width) whatever
    the file's alpha buffer holds."""
    return getattr(adapter, "init_alpha", "match") == "match"


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


# --- kohya's Flux / SD3 LoRA files (networks/lora_flux.py, lora_sd3.py) -------------------------------------
# Flux's final layer: dbspec's export folds its scale into lora_up and writes alpha = rank (diffusers'
# converter ignores that alpha), so the file's alpha may be its rank there.
FLOW_FOLDED = ("lora_unet_final_layer_adaLN_modulation_1", "lora_unet_final_layer_linear")


def fused_layer_of(family: str, name: str):
    """The family's fused layer (FusedProjection) kohya's denoiser module `name` is, or None."""
    return next((g for g in family_spec(family).fused_projections if name.endswith("_" + g.kohya_name)), None)


def _plan_flow_file(ctx: Context, path, file: LoraFile, family: str, adapter, trained) -> tuple[str, int]:
    """A Flux / SD3 LoRA file in kohya's layout (the original model's module names; a fused Linear's LoRA
    either one down-projection shared by its parts, or with split_qkv the parts' downs stacked and their ups
    on the block diagonal). Ranks and alphas are checked here; that each module names a layer the run adapts
    (and each adapted layer has its tensors) is checked when the run loads it (the names need the model)."""
    # a LyCORIS LoCon's file (adapter.kohya_names): T5-XXL under LyCORIS's prefix (lora_te2_ on Flux)
    lycoris = isinstance(adapter, LoraAdapter) and adapter.kohya_names == "lycoris"
    prefixes = flow_component_prefixes(family, lycoris=lycoris)
    spec = family_spec(family)
    used = 0
    ignored: dict[str, int] = {}
    for module in file.modules.values():
        prefix = next((p for p in prefixes if module.name.startswith(p)), None)
        if prefix is None:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}`: tensor `{module.name}.lora_down.weight` belongs to no model of this {family} run "
                f"(kohya's {spec.title} prefixes: {', '.join(prefixes)})",
                KEY,
                help="start from a LoRA file of this model family",
            )
            return "", 0
        component = prefixes[prefix]
        if component not in trained:
            ignored[component] = ignored.get(component, 0) + 1
            continue
        if component == "unet":
            problem = _flow_mismatch(module, adapter, family)
        else:
            problem = _mismatch(module, adapter, False, component in t5_text_encoders(family))
        if problem:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: {problem}",
                KEY,
                help="make the adapter's rank, alpha and fused_projections the file's (kohya's "
                "split_qkv=True is fused_projections = false), or start from another file"
                + _alpha_help(problem),
            )
            return "", 0
        used += 1
    return tally(ctx, path, ignored, used)


def _flow_mismatch(module: LoraModule, adapter: LoraAdapter, family: str) -> str:
    """Why the file's transformer module does not fit the adapter, or "" (per-block ranks: the run checks
    every tensor's shape against its layer when it loads the file)."""
    tensor = f"`{module.name}.lora_down.weight`"
    if (
        module.conv
        and module.name == "lora_unet_x_embedder_proj"
        and "pos_embed.proj" in adapter.conv_targets
    ):
        # SD3's patch convolution (lycoris.kohya's LoCon there): at conv_rank / conv_alpha, in LoCon's Tucker
        # form (lora_mid) where the adapter's is
        if bool(module.mid) != adapter.tucker:
            held = "holds LoCon's Tucker core `lora_mid`" if module.mid else "has no `lora_mid`"
            return f"module `{module.name}` {held}; adapter.tucker is {str(adapter.tucker).lower()}"
        if module.rank != adapter.conv_rank:
            return f"tensor {tensor} has rank {module.rank}; adapter.conv_rank is {adapter.conv_rank}"
        if (
            _alphas_read(adapter)
            and module.alpha is not None
            and not math.isclose(module.alpha, adapter.conv_alpha, rel_tol=1e-3)
        ):
            conv_alpha = adapter.conv_alpha
            return f"tensor `{module.name}.alpha` is {module.alpha:g}; adapter.conv_alpha is {conv_alpha:g}"
        return ""
    if module.conv:
        return f"tensor {tensor} adapts a convolution; kohya's {family} LoRA adapts Linears only"
    if module.mid:
        return f"module `{module.name}` holds a Tucker core `lora_mid` on a Linear"
    rank, alpha = adapter.rank, adapter.alpha
    group = fused_layer_of(family, module.name)
    if group is None and adapter.blocks:
        return ""
    if group is None:
        if module.rank != rank:
            return (
                f"tensor {tensor} has rank {module.rank} (shape {list(module.down)}); adapter.rank is {rank}"
            )
        folded = module.name in FLOW_FOLDED and module.alpha == module.rank
        if (
            _alphas_read(adapter)
            and module.alpha is not None
            and not folded
            and not math.isclose(module.alpha, alpha, rel_tol=1e-3)
        ):
            return f"tensor `{module.name}.alpha` is {module.alpha:g}; adapter.alpha is {alpha:g}"
        return ""
    parts = len(group.parts)
    if adapter.blocks:  # the rank and alpha of the block's first adapted part (one for all, DBS507)
        from dbspec.compiler.fused import _rank

        index = module.name[: -len(group.kohya_name) - 1].rsplit("_", 1)[-1]
        found = [_rank(f"{group.blocks}.{index}.{p}", adapter) for p in group.parts]
        rank, alpha = next(((r, a) for r, a, *_ in found if r), (0, 0.0))
        if not rank:
            return (
                f"tensor {tensor} adapts the fused {group.kohya_name} of block {index}, none of whose "
                f"parts ({', '.join(group.parts)}) the adapter's targets and blocks adapt"
            )
    if module.rank == rank:  # one down shared by the parts (kohya without split_qkv)
        alphas = (alpha,)
    elif module.rank == rank * parts:  # split_qkv: the parts' downs stacked
        if adapter.fused_projections:
            return (
                f"tensor {tensor} stacks {parts} separate downs of rank {rank} (a split_qkv file: "
                f"{module.rank} rows), but adapter.fused_projections = true shares one down among the parts "
                f"of {group.kohya_name}; set adapter.fused_projections = false to start from it"
            )
        alphas = (alpha, alpha * parts)  # kohya's writer keeps the parts' alpha; dbspec's keeps alpha / rows
    else:
        return (
            f"tensor {tensor} of the fused {group.kohya_name} has {module.rank} rows; adapter.rank {rank} "
            f"needs {rank} (one shared down) or {rank * parts} ({parts} parts' downs, split_qkv)"
        )
    if not _alphas_read(adapter) or module.alpha is None:
        return ""
    if not any(math.isclose(module.alpha, a, rel_tol=1e-3) for a in alphas):
        return (
            f"tensor `{module.name}.alpha` is {module.alpha:g}; adapter.alpha {alpha:g} needs "
            + " or ".join(f"{a:g}" for a in alphas)
        )
    return ""


def _plan_kohya_oft(ctx: Context, family: str, adapter: DiagOftAdapter, components) -> tuple[str, int]:
    """kohya's networks.oft `--network_weights` (OFTNetwork.load_weights: load_state_dict(strict=False)):
    each `oft_unet_*` module of an adapted layer must hold the adapter's block count (a shape that differs
    fails in kohya too) and its alpha the adapter's constraint (kohya trains the network's constraint and
    saves the file's alpha); modules of layers the adapter does not adapt are ignored with init_partial."""
    from dbspec.compiler.oft_file import adapts, read_oft_file

    path = ctx.resolve(adapter.init_weights)
    spec = family_spec(family)
    flux = spec.kohya is not None and spec.kohya.oft_network == "networks.oft_flux"
    if not flux and (spec.fused_projections or spec.kohya is None or spec.kohya.network != "networks.lora"):
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: kohya's networks.oft starts from a file on SD 1.x/2.x/SDXL (networks.oft_flux's on "
            f"FLUX.1 and Chroma), not on {spec.title}",
            KEY,
            help='set adapter.init_weights = ""',
        )
        return "", 0
    file = read_file(ctx, path, read_oft_file, "OFT")
    if file is None:
        return "", 0
    denoiser = "unet" if flux else spec.denoiser  # the plan names the flow families' denoiser `unet`
    if denoiser not in {c.name for c in components if c.trainable == "lora"}:
        return tally(ctx, path, {spec.denoiser: len(file.modules)}, 0)
    if flux:  # kohya's Flux names: the run matches them to its layers when it loads the file
        return _plan_flux_oft(ctx, path, file, adapter)
    targets = [*adapter.denoiser_targets, *adapter.conv_targets]
    used, unadapted = 0, []
    for module in file.modules.values():
        name = module.name
        if not adapts(name, targets, spec.kohya.original_unet_names):
            if adapter.init_partial:
                unadapted.append(name)  # kohya's strict=False load ignores it
                continue
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: module `{name}` adapts a layer adapter.denoiser_targets "
                f"and conv_targets do not name ({', '.join(targets) or 'none'})",
                KEY,
                help="set adapter.init_partial = true to ignore it, as kohya's load_state_dict(strict=False)",
            )
            return "", 0
        problem = _oft_misfit(name, module, adapter)
        if problem:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: {problem}",
                KEY,
                help=_oft_help(
                    problem,
                    "make adapter.block_count and constraint the file's (kohya --dim_from_weights reads "
                    "them from the file), or start from another file",
                ),
            )
            return "", 0
        used += 1
    if unadapted:
        ctx.report(
            "DBS387",
            "warning",
            f"`{path}` holds {len(unadapted)} OFT module(s) of layers the adapter does not adapt (first "
            f"`{unadapted[0]}`): they are ignored, as kohya's load_state_dict(strict=False) ignores them "
            "(adapter.init_partial)",
            ("adapter", "init_partial"),
        )
    return tally(ctx, path, {}, used)


# adapters started from a lycoris.kohya file (Diag-OFT: its LyCORIS form; kohya's networks.oft is above)
_LYCORIS_FILES = (
    LohaAdapter,
    LokrAdapter,
    FullAdapter,
    Ia3Adapter,
    DiagOftAdapter,
    BoftAdapter,
    GloraAdapter,
    TloraAdapter,
)
# ... each of which builds one module per layer on SD 1.x/2.x and SDXL
_PER_LAYER = _LYCORIS_FILES
# OFT's 3-D / 4-D blocks (Diag-OFT, BOFT and GLoRA also on Flux / SD3's fused layers, BOFT there with
# fused_projections only: its butterfly stages span the parts' rows)
_OFT_BLOCKS = (DiagOftAdapter, BoftAdapter)
_PER_LAYER_ONLY = (BoftAdapter,)


def _plan_fused_lycoris(ctx: Context, family: str, adapter, components, layers=None) -> tuple[str, int]:
    """A LyCORIS LoKr / LoHa (full, IA3, Diag-OFT, BOFT, GLoRA) file on kohya's Flux / SD3 names
    (lycoris.kohya --network_weights with flux_train_network.py / sd3_train_network.py): one module per fused
    Linear, with `fused_projections` on that layout; every kind also on SD 1.x/2.x and SDXL
    (train_network.py / sdxl_train_network.py: one module per layer, kohya's names). Its modules' prefixes
    and kind are checked here; the factor shapes and alphas when the run loads it (runtime/lycoris_init.py,
    lycoris_whole_init.py)."""
    path = ctx.resolve(adapter.init_weights)
    spec = family_spec(family)
    # a run whose denoiser does not train (a lycoris.kohya preset reaching the text encoders alone: CLIP's
    # and T5-XXL's Linears, one module each) adapts no fused layer, whatever fused_projections says
    fused_layers = bool(spec.fused_projections) and any(
        c.name == "unet" and c.trainable == "lora" for c in components
    )
    # kohya's TLoraModule on a fused Linear starts from one SVD of the stacked weight: fused_projections
    if (
        isinstance(adapter, (*_PER_LAYER_ONLY, TloraAdapter))
        and fused_layers
        and not adapter.fused_projections
    ):
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: a {adapter.kind} starts from LyCORIS's file on SD 1.x/2.x and SDXL (train_network.py "
            f"/ sdxl_train_network.py), and on {spec.title} with adapter.fused_projections (one module per "
            "fused Linear, kohya's layout there)",
            KEY,
            help='set adapter.init_weights = ""',
        )
        return "", 0
    # full / IA^3 / Diag-OFT / BOFT on SD 1.x/2.x and SDXL: one module per layer
    sd_full = isinstance(adapter, _PER_LAYER) and not spec.fused_projections
    # IA^3's and full's parts hold their rows of the fused module's scales / copy either way (their
    # fused_projections: the dropout draws shared)
    fused = isinstance(adapter, (Ia3Adapter, FullAdapter)) or getattr(adapter, "fused_projections", True)
    if not sd_full and not ((fused or not fused_layers) and spec.fused_projections):
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: a {adapter.kind} starts from a file on kohya's fused Flux / SD3 layers only "
            "(lycoris.kohya's layout there)"
            + (", with adapter.fused_projections = true" if not fused else ""),
            KEY,
            help='set adapter.fused_projections = true on a Flux or SD3 model, or adapter.init_weights = ""'
            if not fused
            else 'start from it on a Flux or SD3 model, or set adapter.init_weights = ""',
        )
        return "", 0
    header = read_file(ctx, path, read_weights_header, adapter.kind)
    if header is None or _other_axis_dora(ctx, path, adapter, header, family, layers):
        return "", 0
    # LyCORIS's weight decomposition (dora_wd): each module's dora_scale too
    # (a block's own too: LyCORIS map entries' weight_decompose)
    decomposed = getattr(adapter, "dora", False) or block_dora(adapter)
    factors = FACTORS[adapter.kind] + (("dora_scale",) if decomposed else ())
    factors += ("w_norm", "b_norm") if has_norms(adapter) else ()  # train_norm's NormModules
    modules = {module_name(key, factors) for key in header} - {None}
    other = next((k for k in header if module_name(k, (*factors, "alpha")) is None), None)
    if other is not None:
        ctx.report(
            "DBS356",
            "error",
            f"`{path}`: tensor `{other}` is not LyCORIS {adapter.kind}'s ({', '.join(factors)})",
            KEY,
            help=f"start from a lycoris.kohya algo={adapter.kind} file",
        )
        return "", 0
    if isinstance(adapter, _OFT_BLOCKS):  # DiagOFTModule's 3-D blocks, ButterflyOFTModule's 4-D
        dims = 3 if adapter.kind == "diag-oft" else 4
        odd = next(
            (k for k in sorted(header) if k.endswith(".oft_blocks") and len(header[k].shape) != dims), None
        )
        if odd is not None:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}`: tensor `{odd}` has {len(header[odd].shape)} dimensions; LyCORIS's {adapter.kind} "
                f"holds {dims}-D `oft_blocks` ({'Diag-OFT' if dims == 3 else 'BOFT'}'s; the other is "
                f"{'BOFT' if dims == 3 else 'Diag-OFT'}'s)",
                KEY,
                help=f"start from a lycoris.kohya algo={adapter.kind} file",
            )
            return "", 0
    prefixes = (  # LyCORIS's numbering of the encoders (SD 1.x/2.x, SDXL: kohya's own)
        kohya_component_prefixes(family) if sd_full else flow_component_prefixes(family, lycoris=True)
    )
    return tally_modules(ctx, path, family, modules, prefixes, components)


def _oft_misfit(name: str, module, adapter: DiagOftAdapter) -> str:
    """Why a kohya OFT file's module does not fit the adapter (its block count, its alpha unless
    adapter.init_alpha is "ignore": OFTModule keeps the constraint it was built with), or ""."""
    if module.blocks is not None and module.blocks != adapter.block_count:
        return (
            f"`{name}.oft_blocks` holds {module.blocks} blocks; adapter.block_count is {adapter.block_count}"
        )
    if (
        _alphas_read(adapter)
        and module.alpha is not None
        and not math.isclose(module.alpha, adapter.constraint, rel_tol=1e-3)
    ):
        return (
            f"`{name}.alpha` is {module.alpha:g}; adapter.constraint is {adapter.constraint:g} (kohya trains "
            "the network's constraint and saves the file's alpha)"
        )
    return ""


def _oft_help(problem: str, first: str) -> str:
    """The DBS356 help for a kohya OFT file that does not fit: `first`, and for an alpha init_alpha's way."""
    if ".alpha`" not in problem:
        return first
    return (
        f'{first}; or set adapter.init_alpha = "ignore" to train the file\'s blocks at adapter.constraint, '
        "as kohya's networks.oft does with a --network_weights file saved at another alpha"
    )


def _plan_flux_oft(ctx: Context, path, file, adapter: DiagOftAdapter) -> tuple[str, int]:
    """kohya's networks.oft_flux file (`oft_unet_<Flux name>.oft_blocks.<part>`): every module's block count
    and alpha must be the adapter's (OFTNetwork is built with one dim and alpha); which layers its modules
    name is checked when the run loads it (runtime/init_weights.py: the names need the model)."""
    for module in file.modules.values():
        problem = _oft_misfit(module.name, module, adapter)
        if problem:
            ctx.report(
                "DBS356",
                "error",
                f"`{path}` does not fit the adapter: {problem}",
                KEY,
                help=_oft_help(
                    problem, "make adapter.block_count and constraint the file's, or start from another file"
                ),
            )
            return "", 0
    return tally(ctx, path, {}, sum(m.blocks is not None for m in file.modules.values()))
