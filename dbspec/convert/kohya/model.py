"""kohya's model flags, LoRA network and precision -> [model], [adapter] and [precision].

kohya decides the architecture from flags, not from the weights (`--v2`, the SDXL scripts) and the target from
`--v_parameterization`, so family and prediction are written explicitly: the plan then checks them against
the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from dbspec.convert.common.core import INVALID, Conversion, Legacy
from dbspec.diagnostics import error
from dbspec.convert.common.paths import PathMapper, model_path  # noqa: F401 - model_path re-exported
from dbspec.convert.kohya.alpha_zero import zero_alphas_to_ranks
from dbspec.convert.kohya.flow import FLOW_SCRIPTS, NETWORK_MODULES, is_weights_file, map_flow_model
from dbspec.convert.kohya.network import (
    builtin_network_on_fp8,
    lokr_rank_dropout,
    map_init_weights,
    map_network,
    map_network_weights,
    other_block_kinds,
    parse_network_args,
    put_text_blocks,
)
from dbspec.convert.kohya.train import text_outputs_cached
from dbspec.convert.kohya.idle_text import file_holds, idle_text_modules, put_lycoris_t5
from dbspec.convert.kohya.file_alpha import map_file_alphas
from dbspec.convert.kohya.lora_fa_blocks import lora_fa_block_lr
from dbspec.convert.kohya.lycoris_file_alpha import map_lycoris_file_alphas
from dbspec.convert.kohya.file_ranks import (
    common_pair,
    flow_blocks,
    flow_components,
    per_module_text_blocks,
)
from dbspec.compiler.lora_file import kohya_suffix, read_lora_file
from dbspec.convert.kohya.lycoris_flow_factor_file import _T5, factor_file_adapter, t5_path
from dbspec.convert.kohya.lycoris_flow_file import (
    _t5_idle,
    t5_fp8_prepared,
    t5_full_output_why,
    t5_wo_weight_read,
)
from dbspec.convert.kohya.lycoris_fp8 import (
    file_on_fp8,
    fp8_denoiser,
)
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule, locon_dora, read_lycoris_file
from dbspec.convert.kohya.weights_file import lycoris_builds_nothing, report_weights
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.families import T5_LORA_TARGETS, family_spec, flow_text_prefixes, lycoris_text_prefixes

Args = dict[str, Legacy]


def map_model(a: Args, script: str, paths: PathMapper, conv: Conversion) -> str | None:
    """[model]; returns the family."""
    base = a["pretrained_model_name_or_path"]
    if not base.value:  # e.g. only a dataset config converted: `--set model.base=...` supplies it
        conv.require(
            ("model", "base"),
            error(
                INVALID,
                "kohya needs the base model (--pretrained_model_name_or_path), and none "
                "of the inputs names it",
                path=base.key,
                help="give it in the kohya command or config file, or pass "
                "--set model.base=<hub id, diffusers folder or .safetensors> to dbspec convert",
            ),
        )
    elif not (script in FLOW_SCRIPTS and is_weights_file(base.value, paths)):  # a file: model.denoiser_file
        conv.mapped(base, ("model", "base"), model_path(base.value, paths))
    if base.value and base.value.lower().endswith((".ckpt", ".pt", ".pth")):
        conv.put(
            ("model", "allow_pickle"),
            True,
            conv.comment(base, "kohya loads pickle checkpoints without asking"),
        )
    if script in FLOW_SCRIPTS:
        return map_flow_model(a, script, conv, paths)
    family = _family(a, script, conv)
    if family is None:
        return None
    if base.value:
        _weights_match(base, family, script, paths, conv)
    vparam = a["v_parameterization"]
    conv.mapped(
        vparam,
        ("model", "prediction"),
        "v_prediction" if vparam.value else "epsilon",
        comment=conv.comment(vparam, "kohya trains the target its flags name"),
    )
    vae = a["vae"]
    if vae.value:
        conv.mapped(vae, ("model", "vae"), model_path(vae.value, paths))
    _clip(a, family, conv)
    return family


def _weights_match(base: Legacy, family: str, script: str, paths: PathMapper, conv: Conversion) -> None:
    """kohya builds the architecture its script and --v2 name and loads the weights into it: weights of
    another family fail to load (an SD 1.x script on SDXL weights). Read without torch, where the
    weights are here."""
    found = _weights_family(base.value, paths)
    if found is None or found == family:
        return
    names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    conv.invalid(
        base.key,
        base.value,
        base.source,
        f"{script}.py{' --v2' if family == 'sd2' else ''} builds an {names[family]} model and loads these "
        f"weights into it, but they are {names[found]} weights (kohya fails loading them)",
        help="sdxl_train.py / sdxl_train_network.py train SDXL; train_db.py / train_network.py train SD 1.x "
        "and, with --v2, SD 2.x",
    )


def _weights_family(value: str, paths: PathMapper) -> str | None:
    """The family of a well-known hub id, or of a model folder or .safetensors file on this machine."""
    from dbspec.compiler.modelinfo import ModelFileError, inspect_model
    from dbspec.families import hub_model

    known = hub_model(value)
    if known is not None:
        return known[0]
    local = paths.local(value)
    if local is None or not local.exists():
        return None
    try:
        facts = inspect_model(str(local), paths.cwd)
    except (ModelFileError, OSError, ValueError):
        return None  # the plan reports unreadable weights
    return facts.family if facts is not None and facts.family != "unknown" else None


def _family(a: Args, script: str, conv: Conversion) -> str | None:
    v2 = a["v2"]
    if script.startswith("sdxl"):
        if v2.value:
            conv.invalid(v2.key, True, v2.source, f"{script}.py does not support --v2 (it trains SDXL)")
            return None
        conv.put(("model", "family"), "sdxl", f"kohya {script}.py trains SDXL")
        conv.record(v2, "mapped", "model.family")
        return "sdxl"
    family = "sd2" if v2.value else "sd1"
    conv.mapped(
        v2, ("model", "family"), family, comment=conv.comment(v2, "SD 2.x" if v2.value else "no --v2: SD 1.x")
    )
    return family


def _clip(a: Args, family: str, conv: Conversion) -> None:
    clip = a["clip_skip"]
    if family == "sdxl":
        if clip.given:
            conv.inert(clip, "kohya ignores clip_skip for SDXL (it warns); SDXL uses the penultimate layer")
    elif clip.value is not None and clip.value > 1:
        conv.mapped(clip, ("model", "clip_skip"), clip.value)
    else:
        conv.record(clip, "mapped", "model.clip_skip")
    tokens = a["max_token_length"]
    if tokens.value in (150, 225):
        conv.mapped(tokens, ("model", "max_tokens"), tokens.value)
    elif tokens.given:
        conv.record(tokens, "mapped", "model.max_tokens")  # 75 from a config file: one window, the default
    if a["no_token_padding"].value if "no_token_padding" in a else False:
        # train_db.py calls disable_token_padding(), whose flag nothing reads any more (the use is commented
        # out)
        conv.ignored(a["no_token_padding"], "it sets a flag no code reads; prompts are padded to 77 tokens")


def map_adapter(
    a: Args, paths: PathMapper, conv: Conversion, family: str | None = None, script: str = ""
) -> bool:
    """[adapter] for the network scripts; False when kohya's network cannot be expressed."""
    module = a["network_module"]
    if script in NETWORK_MODULES:
        return _map_flow_adapter(a, script, paths, conv, family)
    if not module.value:
        conv.invalid(
            module.key, None, module.source, "train_network.py needs --network_module (networks.lora)"
        )
        return False
    if module.value == "networks.oft":  # kohya's own OFT: diag-oft's kohya form (convert/kohya/oft.py)
        from dbspec.convert.kohya.oft import map_kohya_oft

        original = bool(family) and family_spec(family).kohya.original_unet_names
        if not map_kohya_oft(a, conv, paths, bool(original)):
            return False
        map_base_weights(a, paths, conv)
        return True
    if module.value not in ("networks.lora", "networks.dylora", "networks.lora_fa", "lycoris.kohya"):
        conv.unsupported(
            module,
            "only kohya's networks.lora, networks.dylora, networks.lora_fa, networks.oft and LyCORIS's "
            "lycoris.kohya have a dbspec equivalent",
        )
        return False
    if _fp8_stops(a, False, paths, conv):
        return False
    if idle_text_modules(a, paths, conv, script):  # the file's text-encoder modules at text_encoder_lr 0
        return False
    if a["dim_from_weights"].value and a["network_weights"].value:
        if module.value == "networks.lora":
            a = _from_weights_args(a, conv)
        elif module.value == "lycoris.kohya":
            factors = _factor_file(a, paths)
            rebuilt = _rebuilt_file(a, paths)
            a = _lycoris_from_weights_args(a, conv)
            norms = _file_norm_values(a, paths, conv, family or "sd1")
            if norms is None:
                return False
            from dbspec.convert.kohya.lycoris_sd_mixed import is_mixed, sd_mixed_file

            found = factors if factors is not None else rebuilt
            if found is not None and is_mixed(found):  # LoCon, LoKr, LoHa, OFT, GLoRA modules together
                found = {n: m for n, m in found.items() if m.algo != "norm"}
                done = _lycoris_sd_rebuilt_file(a, paths, conv, family or "sd1", found, sd_mixed_file)
                return done and _put_file_norms(norms, a, paths, conv)
            if factors is not None and any(m.algo == "full" for m in factors.values()):
                factors = {n: m for n, m in factors.items() if m.algo != "norm"}
                done = _lycoris_sd_full_file(a, paths, conv, family or "sd1", factors)
                return done and _put_file_norms(norms, a, paths, conv)
            if rebuilt is not None:
                rebuilt = {n: m for n, m in rebuilt.items() if m.algo != "norm"}
                from dbspec.convert.kohya.lycoris_sd_rebuilt import sd_rebuilt_file

                done = _lycoris_sd_rebuilt_file(a, paths, conv, family or "sd1", rebuilt, sd_rebuilt_file)
                return done and _put_file_norms(norms, a, paths, conv)
            if factors is not None and any(m.algo in ("lokr", "loha") for m in factors.values()):
                factors = {n: m for n, m in factors.items() if m.algo != "norm"}
                from dbspec.convert.kohya.lycoris_sd_factor import sd_factor_file

                done = _lycoris_sd_rebuilt_file(a, paths, conv, family or "sd1", factors, sd_factor_file)
                return done and _put_file_norms(norms, a, paths, conv)
    dim, alpha = a["network_dim"], a["network_alpha"]
    rank = dim.value if dim.value is not None else 4
    original = bool(family) and family_spec(family).kohya.original_unet_names
    conv.mapped(
        dim,
        ("adapter", "rank"),
        rank,
        comment=conv.comment(dim, "networks.lora defaults to 4") if dim.value is None else "",
    )
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))  # LyCORIS's rs_lora may scale it below
    dropout = a["network_dropout"]
    lycoris = module.value == "lycoris.kohya"
    if module.value == "networks.dylora":
        return _map_kohya_dylora(a, paths, conv, rank, bool(original))
    kind = map_network(
        module,
        a["network_args"],
        rank,
        float(alpha.value),
        conv,
        original,
        dropout if lycoris else None,
        paths,
        family,
        applied=(not a["network_train_unet_only"].value, not a["network_train_text_encoder_only"].value),
        fp8=fp8_denoiser(a, flow=False),
    )
    put_kind = conv.values.get(("adapter", "kind"), (None,))[0]
    if kind is None:
        if put_kind in ("full", "ia3", "diag-oft", "boft"):  # refused after the kind was written: no rank
            for target in ("rank", "alpha"):  # or alpha on it (--allow-unsupported renders the rest)
                conv.values.pop(("adapter", target), None)
        return False
    zero_alphas_to_ranks(conv, module.value)
    if kind == "dylora" and dropout.value and ("adapter", "dropout") not in conv.values:  # else its entries'
        # (entry_args.host_bypass_dropout)
        conv.ignored(
            dropout, "LyCORIS's DyLoraModule takes the dropout train_network.py hands it and never reads it"
        )
    if kind in ("full", "ia3", "diag-oft", "boft"):  # LyCORIS's whole-layer algos have no rank or alpha
        for key, target in (("network_dim", "rank"), ("network_alpha", "alpha")):
            conv.values.pop(("adapter", target), None)
            conv.reports.pop(key, None)
            if kind in ("diag-oft", "boft") and key == "network_dim":  # its lora_dim: the block-size hint
                conv.record(a[key], "mapped", "adapter.block_size")
                continue
            conv.inert(a[key], f"LyCORIS's {kind} algo has no rank or alpha")
    if dropout.value and not lycoris:
        # LoRAModule.forward: torch's dropout on lora_down's output, before rank dropout (train_network.py
        # passes it as create_network's neuron_dropout)
        conv.mapped(dropout, ("adapter", "down_dropout"), float(dropout.value))
    if module.value == "networks.lora_fa":
        _map_lora_fa(a, conv)
    map_network_weights(a, paths, conv, bool(original))
    map_base_weights(a, paths, conv)
    map_scale_weight_norms(a, conv, lycoris=lycoris, kind=kind)
    if lycoris and a["dim_from_weights"].value and a["network_weights"].value:
        _put_file_norms(_file_norm_values(a, paths, conv, family or "sd1") or {}, a, paths, conv)
    return True


def _map_kohya_dylora(a: Args, paths: PathMapper, conv: Conversion, rank: int, original: bool) -> bool:
    """kohya's networks.dylora (convert/kohya/dylora.py): its create_network, or with --dim_from_weights its
    create_network_from_weights."""
    from dbspec.convert.kohya.dylora import kohya_dylora_from_weights

    module = a["network_module"]
    conv.record(module, "mapped", "adapter.kind")
    weights = a["network_weights"]
    from_file = a["dim_from_weights"]
    if weights.value and from_file.value:  # networks.dylora's create_network_from_weights
        if kohya_dylora_from_weights(a, paths, conv, original):
            map_init_weights(
                weights, paths, conv
            )  # DyLoRANetwork.load_weights: load_state_dict(strict=False)
    elif from_file.value:  # create_network_from_weights(1, None, ...): os.path.splitext(None) raises
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            "--dim_from_weights reads the ranks from --network_weights, which is not given",
        )
        return False
    elif not _kohya_dylora_network(a, paths, conv, rank):
        return False
    norms = a["scale_weight_norms"]
    if norms.value:  # train_network.py: without the network's apply_max_norm_regularization, a warning
        conv.ignored(
            norms,
            "networks.dylora has no apply_max_norm_regularization: train_network.py warns and sets "
            "scale_weight_norms = False",
        )
    base = a["base_weights"]
    if base.value:  # train_network.py merges each through the module's create_network_from_weights
        conv.invalid(
            base.key,
            base.value,
            base.source,
            "train_network.py merges it with networks.dylora's DyLoRANetwork.merge_to, which "
            "networks/dylora.py leaves commented out: AttributeError",
        )
        if a["base_weights_multiplier"].given:
            conv.inert(a["base_weights_multiplier"], "kohya stops at the --base_weights merge")
    return True


def _kohya_dylora_network(a: Args, paths: PathMapper, conv: Conversion, rank: int) -> bool:
    """networks.dylora's create_network (convert/kohya/dylora.py), then --network_weights loaded into it;
    --network_dropout reaches create_network as an argument it never reads."""
    from dbspec.convert.kohya.dylora import kohya_dylora

    alpha, args = a["network_alpha"], a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    if not kohya_dylora(args, kwargs, rank, float(alpha.value), conv):
        return False
    zero_alphas_to_ranks(conv, "networks.dylora")
    if a["network_dropout"].value:
        conv.ignored(a["network_dropout"], "networks.dylora's create_network never reads the dropout")
    weights = a["network_weights"]
    if weights.value:  # DyLoRANetwork.load_weights: load_state_dict(strict=False), the file's rows per rank
        map_init_weights(weights, paths, conv)
        map_file_alphas(a, paths, conv)  # DyLoRAModule keeps network_alpha's scale: init_alpha "ignore"
    return True


# networks/lora.py create_network_from_weights reads these of the **kwargs train_network.py passes
_FROM_WEIGHTS_READS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")


def _lycoris_from_weights_args(a: Args, conv: Conversion) -> Args:
    """lycoris.kohya with --dim_from_weights: LyCORIS's create_network_from_weights takes the network_args as
    **kwargs and reads none of them (algo, preset, conv_dim, the dropouts alike): each module's kind comes
    from the file's keys (`lora_up.weight`: a LoConModule at the file's rank and alpha, LyCORIS's defaults
    otherwise), and train_network.py passes --network_dropout only to create_network. So whatever the algo
    (dylora too), the network is the LoCon that algo=locon builds from the file (map_network_weights)."""
    args, dropout = a["network_args"], a["network_dropout"]
    if args.value:
        conv.ignored(
            args,
            "with --dim_from_weights LyCORIS's create_network_from_weights reads none of them: the file's "
            "keys decide each module (lora_down / lora_up: LoCon at the file's ranks and alphas)",
        )
    if dropout.value:
        conv.ignored(dropout, "with --dim_from_weights train_network.py passes it to no network")
    return {
        **a,
        "network_args": Legacy(key=args.key, value=None, source="default"),
        "network_dropout": Legacy(key=dropout.key, value=None, source="default"),
    }


def _from_weights_args(a: Args, conv: Conversion) -> Args:
    """networks.lora with --dim_from_weights: train_network.py hands network_args to
    create_network_from_weights, which reads only the block learning-rate weights (parse_block_lr_kwargs;
    kept in conv.facts for network.py, was DBS403), and passes --network_dropout only to create_network: the
    rest is ignored (DBS405)."""
    args, dropout = a["network_args"], a["network_dropout"]
    kwargs, _problems = parse_network_args(args.value or [])
    kept = [item for item in (args.value or []) if item.split("=", 1)[0].strip() in _FROM_WEIGHTS_READS]
    if args.value and not kept:
        conv.ignored(
            args,
            "with --dim_from_weights networks.lora's create_network_from_weights reads none of them (only "
            "the block learning-rate weights down/mid/up_lr_weight)",
        )
    for key, value in kwargs.items() if kept else ():
        if key not in _FROM_WEIGHTS_READS:
            conv.ignored(
                Legacy(key=f"{args.key} {key}", value=value, source=args.source),
                "with --dim_from_weights networks.lora's create_network_from_weights reads only the block "
                "learning-rate weights (down/mid/up_lr_weight)",
            )
    if kept:
        # set_block_lr_weight on the network built from the file: each file module's block trains at the rate
        # times its weight (network.py _from_weights_block_lr: [[adapter.blocks]] lr_scale per block)
        conv.facts["from_weights_block_lr"] = {k: v for k, v in kwargs.items() if k in _FROM_WEIGHTS_READS}
        conv.record(args, "mapped", "adapter.blocks lr_scale")
    out = {**a, "network_args": Legacy(key=args.key, value=None, source="default")}
    if dropout.value:
        conv.ignored(dropout, "with --dim_from_weights train_network.py passes it to no network")
        out["network_dropout"] = Legacy(key=dropout.key, value=None, source="default")
    return out


def _file_modules(a: Args, paths: PathMapper) -> set[str] | None:
    """The module names of the file --dim_from_weights builds the network from; None without one, or when it
    is unreadable (reported by the adapter mapping)."""
    weights = a["network_weights"]
    if not (a["dim_from_weights"].value and weights.value):
        return None
    local = paths.local(weights.value)
    try:
        file = read_lora_file(local) if local is not None else None
    except (ModelFileError, ValueError, OSError):
        try:  # a LyCORIS file (LoKr, LoHa): its module names as create_network_from_weights reads them
            return set(read_lycoris_file(local)) if local is not None else None
        except (ModelFileError, ValueError, OSError):
            return None
    return None if file is None else {m.name for m in file.modules.values()}


def file_has_text(a: Args, paths: PathMapper) -> bool:
    """False when --dim_from_weights builds the network from a file without text-encoder modules (kohya's
    create_network_from_weights then builds no text-encoder LoRA); True otherwise, or when it is unreadable
    (reported by the adapter mapping)."""
    names = _file_modules(a, paths)
    return names is None or any(n.startswith("lora_te") for n in names)


def file_has_first_text(a: Args, paths: PathMapper) -> bool:
    """False when --dim_from_weights builds the network from a file without a module of the first text
    encoder (CLIP-L: `lora_te1_`, SD 1.x's `lora_te_`); True otherwise, or when it is unreadable."""
    names = _file_modules(a, paths)
    return names is None or any(n.startswith(("lora_te_", "lora_te1_")) for n in names)


def file_has_second_text(a: Args, paths: PathMapper) -> bool:
    """False when --dim_from_weights builds the network from a file without a module of the second CLIP
    encoder (SDXL's and SD3's CLIP-G: `lora_te2_`); True otherwise, or when it is unreadable. Read for SDXL
    and SD3 alone (LyCORIS on Flux names T5-XXL's modules lora_te2_)."""
    names = _file_modules(a, paths)
    return names is None or any(n.startswith("lora_te2_") for n in names)


def map_file_text_encoders(
    a: Args, script: str, paths: PathMapper, conv: Conversion, trains: bool, idle: bool = False
) -> None:
    """--dim_from_weights with a file holding text-encoder modules of some CLIP encoders only: kohya's
    create_network_from_weights builds no LoRA on the others (SDXL's and SD3's second, or the first: Flux's
    and SD3's CLIP-L beside T5-XXL), so they do not train (train.text_encoder / train.text_encoder_2, the
    second training alone as with kohya's first rate 0). T5-XXL trains from its lora_te3 names (train.t5).
    `trains`: whether the file's CLIP encoders train (map_text_encoder: on SD3 lora_sd3 reads the rate of
    the encoder the file holds). `idle`: SDXL's and SD3's file modules at rate 0 kept idle
    (train.text_encoder_idle; file_idle): the encoder without modules gets no targets, so nothing is left
    idle there (_idle_targets)."""
    two_clip = script in ("sdxl_train_network", "sd3_train_network")
    if idle and not trains and two_clip and a["dim_from_weights"].value:
        _idle_targets(a, paths, conv)
    names = _file_modules(a, paths) if trains else None
    if not names or not any(n.startswith("lora_te") for n in names):
        return
    second = script in ("sdxl_train_network", "sd3_train_network")  # two CLIP encoders
    first_has = any(n.startswith(("lora_te_", "lora_te1_")) for n in names)
    second_has = any(n.startswith("lora_te2_") for n in names)
    note = (
        "kohya --dim_from_weights: the file has no module of {}, so create_network_from_weights builds no "
        "LoRA there"
    )
    if not first_has:
        conv.put(("train", "text_encoder"), False, note.format("the first text encoder (CLIP-L)"))
        if second and second_has:
            conv.put(("train", "text_encoder_2"), True, "kohya --dim_from_weights: the file's second encoder")
    elif second and not second_has:
        conv.put(("train", "text_encoder_2"), False, note.format("the second text encoder"))


def _idle_targets(a: Args, paths: PathMapper, conv: Conversion) -> None:
    """SDXL / SD3 --dim_from_weights with a file holding one CLIP encoder's modules, at its rate 0: kohya's
    network has modules on that encoder alone (create_network_from_weights), kept idle; the other's targets
    are written empty (the second's apart from the first's), so train.text_encoder_idle leaves it plain."""
    names = _file_modules(a, paths) or []
    first = any(n.startswith("lora_te1_") for n in names)
    second = any(n.startswith("lora_te2_") for n in names)
    targets = conv.values.get(("adapter", "text_encoder_targets"), (None, ""))[0]
    if first == second or targets is None:
        return
    note = (
        "kohya --dim_from_weights: the file has no module of the {} text encoder, so "
        "create_network_from_weights builds none there (nothing idle)"
    )
    if not second:
        conv.put(("adapter", "text_encoder_2_targets"), [], note.format("second"))
        return
    if ("adapter", "text_encoder_2_targets") not in conv.values:
        conv.put(
            ("adapter", "text_encoder_2_targets"), targets, "kohya --dim_from_weights: the file's modules"
        )
    conv.put(("adapter", "text_encoder_targets"), [], note.format("first"))


def map_base_weights(a: Args, paths: PathMapper, conv: Conversion) -> None:
    """--base_weights with --base_weights_multiplier -> [[model.merge_adapters]]: train_network.py merges each
    file into the base models before building the network, the i-th multiplier with the i-th file (1.0 when
    the list is shorter; extra multipliers are not read). Its merge goes through the network module's own
    create_network_from_weights: networks.lora's for SD 1.x/2.x/SDXL (runtime/merge_adapters.py),
    lora_flux's / lora_sd3's for Flux and SD3 (the fused layers' updates split onto diffusers' parts,
    runtime/flow_merge.py)."""
    files, multipliers = a["base_weights"], a["base_weights_multiplier"]
    if not files.value:
        if multipliers.given and multipliers.value:
            conv.inert(multipliers, "train_network.py reads it only with --base_weights")
        return
    given = list(multipliers.value or [])
    for index, path in enumerate(files.value):
        multiplier = float(given[index]) if index < len(given) else 1.0
        note = conv.comment(
            files, f"multiplier {multiplier:g}" + ("" if index < len(given) else " (default)")
        )
        conv.put(("model", "merge_adapters", index, "path"), paths.for_spec(str(path)), note)
        conv.put(("model", "merge_adapters", index, "multiplier"), multiplier, note)
    conv.record(files, "mapped", "model.merge_adapters")
    if multipliers.given and multipliers.value:
        extra = len(given) > len(files.value)
        conv.record(
            multipliers,
            "mapped",
            "model.merge_adapters",
            f"the multipliers past the {len(files.value)} file(s) are not read" if extra else "",
        )


def _map_lora_fa(a: Args, conv: Conversion) -> None:
    """networks.lora_fa (LoRA-FA): kohya's LoRA with the downs drawn from N(0, 2 / (in + rank)) and left out
    of the optimizer. Its network's requires_grad_(True) still gives them a gradient that only the clip reads
    (train_network.py clips over every network parameter; the optimizer never clears them)."""
    module = a["network_module"]
    conv.put(("adapter", "freeze_down"), True, conv.comment(module, "LoRA-FA: lora_down frozen at its init"))
    unet = a["unet_lr"] if a["unet_lr"].value is not None else a["learning_rate"]
    if lora_fa_block_lr(a) and unet.value == 0 and not a["network_train_text_encoder_only"].value:
        conv.unsupported(
            unet,
            "networks.lora_fa with block lr weights (down/mid/up_lr_weight) gives each U-Net block a "
            "group and skips a group at rate 0 (its plain U-Net group stays in the optimizer at rate 0): "
            "the U-Net's modules are built, computed and clipped, but out of the optimizer; not expressed",
        )
    clip = a["max_grad_norm"]
    if clip.value:
        conv.put(
            ("adapter", "frozen_down_grad"),
            "kohya",
            conv.comment(
                clip, "lora_fa's frozen downs keep a gradient that accumulates and counts in the clip"
            ),
        )


# LyCORIS algos whose modules keep the base class's apply_max_norm (returns None: never scaled, not counted)
_LYCORIS_NO_MAX_NORM = ("full", "ia3", "glora", "dylora")
# the block kinds whose LyCORIS modules have their own (LoConModule, LohaModule, LokrModule, DiagOFTModule,
# ButterflyOFTModule): a GLoRA / DyLoRA network's preset entries of these algos are scaled
# (runtime/max_norm.py)
_MAX_NORM_KINDS = ("lora", "loha", "lokr", "diag-oft", "boft")


def _block_kinds(conv: Conversion) -> set[str]:
    """The kinds the conversion's `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` give their layers
    (a LyCORIS preset file's map entries of other algos)."""
    return {
        value
        for key, (value, _) in conv.values.items()
        if key[0] == "adapter" and key[1] in ("blocks", "text_encoder_blocks") and key[-1] == "kind"
    }


def map_scale_weight_norms(
    a: Args,
    conv: Conversion,
    *,
    lycoris: bool = False,
    split: bool = False,
    kind: str = "lora",
    from_file: bool = False,
) -> None:
    """--scale_weight_norms -> adapter.max_norm: kohya's networks (lora, lora_fa, lora_flux, lora_sd3) rescale
    each module's lora_up and lora_down after every micro-batch (runtime/max_norm.py). None or 0 is off
    (train_network.py tests `if args.scale_weight_norms`). lycoris.kohya's network calls each module's own
    apply_max_norm: LoCon (algo lora / locon), LoHa, LoKr, Diag-OFT, BOFT and T-LoRA map to LyCORIS's form
    (max_norm_form "lycoris"; the OFT modules scale their blocks, T-LoRA its singular values); full, IA3,
    GLoRA and DyLoRA modules keep its base class's, which scales nothing. `from_file`: LyCORIS's
    create_network_from_weights built the modules, which never reads network_args (no LoKr rank dropout)."""
    norms = a["scale_weight_norms"]
    if not norms.value:
        if norms.given and norms.value is not None:
            conv.inert(norms, "0 turns kohya's max-norm regularisation off")
        return
    if lycoris and kind in _LYCORIS_NO_MAX_NORM and not _block_kinds(conv) & set(_MAX_NORM_KINDS):
        conv.inert(
            norms,
            f"LyCORIS's {kind} modules keep the base apply_max_norm, which scales nothing (0, 0, 0 logged)",
        )
        return
    if norms.value < 0:
        conv.invalid(
            norms.key,
            norms.value,
            norms.source,
            "a negative limit makes apply_max_norm_regularization's ratio negative and its square root NaN"
            if not lycoris
            else "a negative limit makes each LyCORIS module's ratio negative, flipping its update's sign",
        )
        return
    if split:
        conv.invalid(
            norms.key,
            norms.value,
            norms.source,
            "with split_qkv apply_max_norm_regularization reads a split module's `lora_down.N.weight` as its "
            "alpha: the update's shape mismatches it (RuntimeError), or at rank 1 it scales by the wrong "
            "numbers",
            help="drop --scale_weight_norms or split_qkv=True",
        )
        return
    if lycoris and kind == "lokr" and not from_file and lokr_rank_dropout(a["network_args"].value):
        conv.invalid(
            norms.key,
            norms.value,
            norms.source,
            "LyCORIS's LoKr apply_max_norm rebuilds the weight in training mode with its rank-dropout mask, "
            "drawn on the CPU and multiplied into the GPU weight: kohya stops at the first norm on a GPU "
            "(RuntimeError: tensors on two devices; LyCORIS issue #291), bypass_mode too",
            help="drop --scale_weight_norms or rank_dropout",
        )
        return
    conv.mapped(norms, ("adapter", "max_norm"), float(norms.value))
    if lycoris and kind == "lora":  # LoHa and LoKr have LyCORIS's form only
        conv.put(
            ("adapter", "max_norm_form"),
            "lycoris",
            conv.comment(
                norms, "lycoris.kohya: each module's own apply_max_norm (its scalar times the ratio)"
            ),
        )


def map_precision(a: Args, script: str, lora: bool, conv: Conversion) -> None:
    mixed = a["mixed_precision"]
    conv.mapped(mixed, ("precision", "mixed"), mixed.value)
    half_vae = "no_half_vae" in a and a["no_half_vae"].value
    vae_dtype = "fp32" if half_vae or mixed.value == "no" else mixed.value
    if vae_dtype != "fp32":
        conv.put(
            ("precision", "vae_dtype"),
            vae_dtype,
            "kohya encodes with the VAE in the mixed-precision dtype (no --no_half_vae)",
        )
    if "no_half_vae" in a:
        conv.record(a["no_half_vae"], "mapped", "precision.vae_dtype")
    grad = a["gradient_checkpointing"]
    if grad.value:
        conv.mapped(grad, ("precision", "gradient_checkpointing"), True)
    for key, needs in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if a[key].value and mixed.value != needs and not (key == "full_bf16" and script == "train_db"):
            conv.invalid(key, True, a[key].source, f"kohya asserts --{key} runs with mixed_precision {needs}")
        elif a[key].value and key == "full_bf16" and script == "train_db":
            conv.inert(a[key], "train_db.py ignores --full_bf16")
        elif a[key].value:
            _map_full_half(a, script, key, lora, conv)
    _map_fp8_base(a, script, lora, conv)


def _map_fp8_base(a: Args, script: str, lora: bool, conv: Conversion) -> None:
    """kohya's --fp8_base / --fp8_base_unet: the frozen U-Net (with --fp8_base alone, the text encoders too,
    their embeddings left alone) cast to float8_e4m3fn, upcast at each use under autocast: backend cast.
    Only train_network.py and its family scripts read them; train_db.py and sdxl_train.py take --fp8_base
    (train_util's common arguments) and never read it: ignored (was DBS403)."""
    given = [a[k] for k in ("fp8_base", "fp8_base_unet") if k in a and a[k].value]
    if not given:
        return
    if not lora:
        for legacy in given:
            conv.ignored(legacy, f"{script}.py never reads it (kohya's LoRA scripts alone cast the base)")
        return
    if a["mixed_precision"].value == "no":
        conv.invalid(
            given[0].key,
            True,
            given[0].source,
            "kohya asserts an fp8 base runs with mixed_precision fp16 or bf16",
        )
        return
    unet_only = "fp8_base_unet" in a and a["fp8_base_unet"].value
    for legacy in given:
        conv.mapped(legacy, ("precision", "quantize_denoiser"), "fp8")
    # kohya keeps the text encoders in the mixed dtype with --fp8_base_unet; sdxl_train_network.py's cached
    # text encoders wait on the CPU in fp32, which its fp8 cast skips
    # A text-encoder LoRA keeps its encoders on the GPU after caching (flux_train_network.py,
    # sd3_train_network.py): train_network.py casts them to fp8 then, after T5-XXL (back on the CPU) has
    # filled the cache un-cast; dbspec's quantize_text_encoder casts every text encoder, T5-XXL too.
    lora_te = "network_train_unet_only" in a and not a["network_train_unet_only"].value
    if not unet_only and text_outputs_cached(a) is None:
        conv.put(("precision", "quantize_text_encoder"), "fp8", conv.comment(a["fp8_base"]))
    elif not unet_only and lora_te:
        conv.differs(
            a["fp8_base"],
            "kohya casts the CLIP encoders it trains to fp8 after caching T5-XXL's outputs from the un-cast "
            "T5-XXL; dbspec's quantize_text_encoder casts T5-XXL too, before it fills its text cache",
            ("precision", "quantize_text_encoder"),
            "fp8",
        )
    conv.put(("precision", "quantize_backend"), "cast", conv.comment(given[0]))


def _map_full_half(a: Args, script: str, key: str, lora: bool, conv: Conversion) -> None:
    """kohya's full_bf16 / full_fp16: the trained weights themselves in half precision."""
    if key == "full_fp16":
        _map_full_fp16(a, script, lora, conv)
    elif _fused_adafactor(a, script):
        # sdxl_train.py's fused backward pass steps Adafactor per parameter in fp32 and copies the result
        # into the bf16 weight with stochastic rounding (library/adafactor_fused.py): dbspec's stochastic
        # rounding, its random bits from dbspec's seeded generator instead of torch's global one.
        conv.mapped(
            a[key],
            ("precision", "weights"),
            "bf16",
            note="with --fused_backward_pass kohya's Adafactor rounds each update stochastically: "
            'weights_rounding = "stochastic" (the default; its random bits come from a seeded generator)',
        )
    else:
        # kohya casts the trained models (train_network.py: the LoRA network; the frozen base is in the
        # mixed dtype already) to bf16 after building the optimizer, whose state is created at its first step
        # from the bf16 parameters, and steps them directly (accelerate adds autocast only).
        what = "the adapter weights" if lora else "the trained weights"
        conv.mapped(
            a[key],
            ("precision", "weights"),
            "bf16",
            note=f'{what} in bf16, weights_rounding = "nearest": the optimizer steps them as kohya\'s does',
        )
        conv.put(
            ("precision", "weights_rounding"),
            "nearest",
            conv.comment(a[key], "the optimizer steps the bf16 weights directly (round-to-nearest)"),
        )


def _map_full_fp16(a: Args, script: str, lora: bool, conv: Conversion) -> None:
    """kohya's full_fp16 (train_db, fine_tune, sdxl_train, train_network and the LoRA scripts on it, with
    mixed_precision fp16): the trained models (LoRA scripts: the network) cast to fp16 after building the
    optimizer, which steps them directly (its state created from the fp16 parameters), accelerate's grad
    scaler patched to unscale fp16 gradients (train_util.patch_accelerator_for_fp16_training)."""
    legacy = a["full_fp16"]
    what = "the adapter weights" if lora else "the trained weights"
    nearest = conv.comment(legacy, "the optimizer steps the fp16 weights directly (round-to-nearest)")
    if _fused_adafactor(a, script):
        # the fused Adafactor steps each parameter in its gradient hook, during backward: on the scaled fp16
        # gradient, before accelerate's grad scaler could unscale it, skip an overflowed step or update
        norm = a["max_grad_norm"]
        if norm.value:
            # the hook's clip calls accelerator.clip_grad_norm_, which unscales through the scaler: torch's
            # GradScaler allows one unscale_ per optimizer between update()s, and nothing calls update()
            conv.invalid(
                legacy.key,
                legacy.value,
                legacy.source,
                f"with --fused_backward_pass and max_grad_norm {norm.value:g} kohya's gradient hooks clip "
                "each parameter through accelerate's grad scaler, whose unscale_ raises at the second "
                "parameter of the first step (RuntimeError: unscale_() has already been called on this "
                "optimizer since the last update(); the fused step never calls update())",
                help="set max_grad_norm = 0 (kohya's hooks then step from the still-scaled fp16 gradients: "
                'precision.fp16_gradients = "scaled"), or remove full_fp16',
            )
            return
        conv.mapped(
            legacy,
            ("precision", "weights"),
            "fp16",
            note="with --fused_backward_pass (max_grad_norm 0) kohya's hooks step Adafactor from the fp16 "
            "gradients still multiplied by the grad scaler's initial scale, which never changes, and skip "
            'no step: precision.fp16_gradients = "scaled"',
        )
        conv.put(
            ("precision", "fp16_gradients"),
            "scaled",
            conv.comment(legacy, "the fused backward pass steps before the grad scaler unscales"),
        )
    elif script == "sdxl_train" and "fused_optimizer_groups" in a and a["fused_optimizer_groups"].value:
        # the groups' hooks: the first optimizer steps from the scaled fp16 gradients, the others through the
        # patched scaler one by one (fp16_gradients = "scaled_first", train.py _fused_clip_runs)
        conv.mapped(
            legacy,
            ("precision", "weights"),
            "fp16",
            note=f'{what} in fp16, weights_rounding = "nearest": each group\'s optimizer steps them directly '
            "(the first from the scaled fp16 gradients, the others unscaled by kohya's patched scaler)",
        )
    else:
        conv.mapped(
            legacy,
            ("precision", "weights"),
            "fp16",
            note=f'{what} in fp16, weights_rounding = "nearest": the optimizer steps them as kohya\'s does, '
            "fp16 gradients unscaled by the grad scaler as kohya's patched accelerate scaler does",
        )
    conv.put(("precision", "weights_rounding"), "nearest", nearest)


def _fused_adafactor(a: Args, script: str) -> bool:
    """sdxl_train.py --fused_backward_pass (kohya asserts Adafactor with it): the patched Adafactor step."""
    fused = script == "sdxl_train" and "fused_backward_pass" in a and a["fused_backward_pass"].value
    return bool(fused) and str(a["optimizer_type"].value).lower() == "adafactor"


def _flow_dim_from_weights(
    a: Args,
    wanted: str,
    paths: PathMapper,
    conv: Conversion,
    family: str | None = None,
    lycoris: bool = False,
) -> None:
    """--dim_from_weights with networks.lora_flux / lora_sd3: create_network_from_weights builds one LoRA per
    module of the file (among the network's own candidates) at the module's rank and alpha, split_qkv off, so
    a fused Linear's LoRA is one shared down (dbspec's fused_projections, which the network mapping set), and
    none where the file has no module. The ranks become [[adapter.blocks]] (file_ranks.py: one block per rank,
    alpha and group of modules, a last rank-0 block for the rest; a split_qkv file's fused layers at three or
    four times the rank); the text encoders' (CLIP-L, CLIP-G, T5-XXL) modules, when their ranks differ or
    some layer's are missing, [[adapter.text_encoder_blocks]] likewise. A module without alpha is kohya's
    KeyError (modules_alpha[lora_name]). On Chroma (`family`) kohya's network has Chroma's modules only: a
    file's modulation or approximator modules build nothing, and T5-XXL (lora_te3) is its only encoder.
    `lycoris`: LyCORIS's create_network_from_weights on `wanted`'s model (_lycoris_flow_from_weights)."""
    weights, from_file = a["network_weights"], a["dim_from_weights"]
    builder = "LyCORIS" if lycoris else wanted
    if not weights.value:
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            "--dim_from_weights reads the ranks from --network_weights, which is not given",
        )
        return
    if lycoris and lycoris_builds_nothing(weights, from_file, paths, conv):
        return
    local = paths.local(weights.value)
    try:
        if local is None:
            raise ValueError("a Windows path, not on this machine")
        # LyCORIS's NormModules beside the LoCon modules (train_norm's w_norm / b_norm): _put_file_norms
        file = read_lora_file(local, dora_scale=lycoris, lora_mid=lycoris, norms=lycoris)
        dora = locon_dora(local) if lycoris else False
    except (ModelFileError, ValueError, OSError) as exc:
        if not report_weights(weights, local, exc, "--dim_from_weights reads the ranks from this file", conv):
            conv.unsupported(from_file, f"the ranks come from `{weights.value}`, which cannot be used: {exc}")
        return
    if isinstance(dora, str):
        conv.unsupported(from_file, f"LyCORIS's create_network_from_weights with `{weights.value}`: {dora}")
        return
    some = dora if isinstance(dora, frozenset) else frozenset()  # the blocks' own dora (flow_blocks)
    bare = next((m.name for m in file.modules.values() if m.alpha is None), None)
    if bare is not None:
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"{builder}'s create_network_from_weights reads each module's alpha, and `{bare}` has none "
            + ("(float(None): TypeError)" if lycoris else "(kohya's KeyError)"),
        )
        return
    family = (family or "flux") if wanted == "networks.lora_flux" else "sd3"
    components = flow_components(family)
    patch = file.modules.get("lora_unet_x_embedder_proj") if lycoris and family == "sd3" else None
    cored = next((m.name for m in file.modules.values() if m.mid and m is not patch), None)
    if cored is not None:  # make_module_from_state_dict: use_tucker on a Linear builds no lora_mid to copy_
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"`{cored}.lora_mid.weight` is LoCon's Tucker core on a Linear of kohya's model: LyCORIS's "
            "LoConModule builds none there, and create_network_from_weights' copy_ into it raises",
        )
        return
    if patch is not None and patch.conv:  # LyCORIS's LoConModule on SD3's patch convolution
        file = attrs.evolve(file, modules={k: m for k, m in file.modules.items() if m is not patch})
    try:
        blocks, embedders = flow_blocks(file, family, lycoris, some)
    except ValueError as exc:
        conv.unsupported(
            from_file,
            f"{builder}'s create_network_from_weights builds each module of the file at its rank: {exc}",
        )
        return
    text_components = components
    if lycoris and not a["network_train_unet_only"].value:
        text_components = _lycoris_clip(file, family, components, conv, from_file, _t5_idle(a, file=True), a)
        if text_components is None:
            return
    pair = common_pair(file, prefixes=tuple(components)) or common_pair(file)
    if pair is None or len(blocks) == 1:
        conv.unsupported(from_file, f"`{weights.value}` holds no LoRA module of a Linear {wanted} adapts")
        return
    (rank, alpha), note = pair, f"kohya --dim_from_weights: from {paths.name_of(weights.value)}"
    map_init_weights(weights, paths, conv)
    t5 = [m.name for m in file.modules.values() if m.name.startswith("lora_te3_") and not lycoris]
    if t5:  # create_network_from_weights (lora_flux, lora_sd3): train_t5xxl = "lora_te3" in a module's name
        from dbspec.convert.kohya.lora_flux import t5_trains

        modules = Legacy(key=f"{weights.key} lora_te3", value=f"{len(t5)} modules", source=weights.source)
        script = "flux_train_network.py" if wanted == "networks.lora_flux" else "sd3_train_network.py"
        t5_trains(modules, a, conv, script, family, file=True)
    for key in ("network_dim", "network_alpha"):
        conv.reports.pop(key, None)  # mapped just before, from kohya's create_network call this flag skips
        conv.inert(a[key], "--dim_from_weights takes the ranks and alphas from the file")
    conv.put(("adapter", "rank"), rank, note)
    conv.put(("adapter", "alpha"), alpha, note)
    if (
        dora is True
    ):  # make_module_from_state_dict: weight_decompose, one magnitude per output row (flow_init.py)
        why = note + ": its dora_scale (LyCORIS's LoConModule with weight_decompose)"
        conv.put(("adapter", "dora"), True, why)
        conv.put(("adapter", "dora_form"), "lycoris", why)
    elif some:  # some modules only: those blocks' dora, in LyCORIS's form
        why = note + ": the dora_scale of some modules (LoConModule with weight_decompose there only)"
        conv.put(("adapter", "dora_form"), "lycoris", why)
    if patch is not None and patch.conv:
        why = note + ": LyCORIS's LoConModule on the patch convolution at its rank and alpha"
        pair = {"rank": patch.rank, "alpha": float(patch.alpha or patch.rank)}
        conv.put(("adapter", "conv_rank"), pair["rank"], why)
        conv.put(("adapter", "conv_alpha"), pair["alpha"], why)
        conv.put(("adapter", "conv_targets"), ["pos_embed.proj"], why)
        if patch.mid:  # LoConModule with use_tucker (make_module_from_state_dict: mid is not None)
            conv.put(("adapter", "tucker"), True, why + ", in LoCon's Tucker form (its lora_mid)")
        # its block (conv_rank / conv_alpha: a 2x2 convolution) before the last rank-0 block
        conv_pair = {"conv_rank": pair["rank"], "conv_alpha": pair["alpha"]}
        own = {"dora": "on"} if patch.name in some else {}
        blocks.insert(-1, {"pattern": r"^pos_embed\.proj$", **pair, **conv_pair, **own})
    targets = list(conv.values[("adapter", "denoiser_targets")][0])
    if embedders:
        extra = [e for e in dict.fromkeys(embedders) if e not in targets]
        conv.put(("adapter", "denoiser_targets"), [*targets, *extra], note + " (its embedders too)")
    first = 1 + max((k[2] for k in conv.values if k[:2] == ("adapter", "blocks")), default=-1)
    for index, block in enumerate(blocks, start=first):
        why = note + (": the modules it lacks get none" if block["rank"] == 0 else ": its modules' rank")
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, why)
    # text-encoder modules (CLIP-L, CLIP-G, T5-XXL) at several ranks, or not every layer's: kohya builds
    # none where the file has none
    text = per_module_text_blocks(file, text_components, some) if text_components else []
    put_text_blocks(text, note, conv)
    mapped = "adapter.rank, adapter.alpha, adapter.blocks" + (", adapter.text_encoder_blocks" if text else "")
    conv.record(from_file, "mapped", mapped)


def _lycoris_clip(
    file, family: str, components: dict[str, str], conv: Conversion, from_file: Legacy, t5_idle: str, a=None
) -> dict | None:
    """The text-encoder prefixes LyCORIS's create_network_from_weights builds the file's modules under: it
    numbers the encoder list kohya hands it (lora_te1 CLIP-L; SD3's lora_te2 CLIP-G; T5-XXL last: Flux's and
    Chroma's lora_te2, SD3's lora_te3), so a LoCon on a CLIP Linear is lora_flux's / lora_sd3's module there
    (one group at text_encoder_lr's first value: train.py). T5-XXL's modules train there too while T5
    encodes every step (train_t5xxl or not): train.t5 (its modules at their ranks in text-encoder blocks;
    at text_encoder_lr 0 train.t5_idle, put_lycoris_t5) with adapter.kohya_names "lycoris" where LyCORIS's
    T5 prefix is not lora_flux's (runtime/flow_init.py reads them under it). None (DBS403) for T5-XXL
    modules that would keep the file's weights where T5 never encodes (`t5_idle`: outputs cached), for a
    T5 module outside kohya's T5 targets and for a
    CLIP module no text target names (text_projection...). Flux's lora_te3_* name no module of LyCORIS's
    two encoders: ignored, as LyCORIS ignores them."""
    clip = {p: c for p, c in components.items() if p != "lora_te3_"}
    t5 = lycoris_text_prefixes(family)[-1]  # T5-XXL last: Flux's and Chroma's lora_te2_, SD3's lora_te3_
    t5_names = [m.name for m in file.modules.values() if m.name.startswith(t5)]
    targets = conv.values.get(("adapter", "text_encoder_targets"), ([], ""))[0]
    for module in file.modules.values():
        name = module.name
        if name.startswith(t5) and t5_idle:
            why = (
                f"a T5-XXL module, which would keep the file's weights untrained where T5 encodes: {t5_idle}"
            )
        elif name.startswith(t5) and not name.endswith(tuple(f"_{t}" for t in T5_LORA_TARGETS)):
            why = "a T5-XXL module outside kohya's T5 targets (its attention / gated-MLP Linears)"
        elif name.startswith(t5):
            continue
        elif name.startswith(tuple(clip)) and not any(name.endswith(kohya_suffix(t)) for t in targets):
            why = "a CLIP module outside kohya's CLIP targets (CLIPAttention / CLIPMLP Linears)"
        else:
            continue
        conv.unsupported(
            from_file,
            f"LyCORIS's create_network_from_weights builds `{name}`, {why}; dbspec does not express it",
            help="train with --network_train_unet_only (LyCORIS's apply_to then drops the text-encoder "
            "modules), or from a file without that module",
        )
        return None
    if not t5_names:
        return clip
    why = conv.comment(from_file, f"LyCORIS's LoCon modules on T5-XXL ({len(t5_names)}, `{t5}*`)")
    put_lycoris_t5(a, conv, why)  # train.t5, or at the text group's rate 0 train.t5_idle
    if t5 != flow_text_prefixes(family)[-1]:  # Flux / Chroma: LyCORIS's T5 prefix is not lora_flux's
        conv.put(("adapter", "kohya_names"), "lycoris", why)
    return {**clip, t5: family_spec(family).text_encoder_names[-1]}


def _map_lycoris_flow(a: Args, script: str, paths: PathMapper, conv: Conversion, family: str | None) -> bool:
    """lycoris.kohya with flux_train_network.py / sd3_train_network.py (lycoris_flux.py, the SD3 table in
    lycoris_sd3.py): algo=lora / locon as lora_flux's / lora_sd3's fused network over LyCORIS's preset
    targets, lokr / loha one update per fused layer. --network_weights: LyCORIS's load_weights
    (`load_state_dict(strict=False)`) of its file under kohya's Flux / SD3 names, one module per fused
    Linear: a LoCon's is lora_flux's / lora_sd3's layout, which runtime/flow_init.py splits onto the parts as
    it splits theirs; a LoKr's / LoHa's goes into the parts' shared factors (runtime/lycoris_init.py; SD3's
    last context modulation's rows swapped back); --scale_weight_norms of a LoCon: LyCORIS's form, one norm
    and scalar per fused Linear (runtime/max_norm.py joins its parts; the kohya writers fold the scalar); of
    a LoKr / LoHa: LyCORIS's form too, one norm of the fused layer's whole update, its shared factors (LoKr)
    or its one scalar (LoHa) scaled once; of a Diag-OFT / BOFT the fused module's blocks, one norm over its
    parts' (runtime/max_norm.py); of a full, IA^3, GLoRA or DyLoRA network inert (_no_max_norm), unless a
    preset gives a GLoRA / DyLoRA / full / IA^3 network LoCon / LoKr / LoHa entries: those modules' own, as
    above. A DyLoRA network's --network_weights: only the file's alphas load
    (lycoris_flow_dylora.flow_dylora_alphas). --dim_from_weights: _lycoris_flow_from_weights."""
    from dbspec.convert.kohya.lycoris_flux import FLUX, map_lycoris_flow
    from dbspec.convert.kohya.lycoris_sd3 import SD3

    layout = SD3 if script == "sd3_train_network" else FLUX
    if a["dim_from_weights"].value:
        return _lycoris_flow_from_weights(a, script, paths, conv, family)
    if not map_lycoris_flow(a, conv, layout, paths, family):
        return False
    zero_alphas_to_ranks(conv, "lycoris.kohya")
    kind = conv.values[("adapter", "kind")][0]
    # BOFT: ButterflyOFTModule's apply_max_norm scales the fused module's blocks, which its parts share
    # (runtime/lycoris_boft.py; runtime/max_norm.py takes them once); Diag-OFT: DiagOFTModule's, the norm of
    # every part's blocks stacked, each part's scaled by the one ratio (runtime/max_norm.py)
    # a GLoRA / DyLoRA / full / IA^3 network's preset entries of LoCon / LoKr / LoHa / Diag-OFT / BOFT: their
    # modules' own apply_max_norm, one per fused Linear of their kind (map_scale_weight_norms;
    # runtime/max_norm.py)
    if (
        a["scale_weight_norms"].value
        and kind
        not in ("lora", "lokr", "loha", "boft", "diag-oft", "glora", "dylora", "tlora", "full", "ia3")
        and not _no_max_norm(conv)
    ):
        conv.unsupported(
            a["scale_weight_norms"],
            f"LyCORIS's per-module max norm on kohya's fused {layout.title} Linears: dbspec expresses it for "
            f"a LoCon, LoKr, LoHa, Diag-OFT or BOFT there (a full / IA^3 / GLoRA / DyLoRA network of its "
            f"kind alone is inert), not a {kind} network with these entries",
        )
        return False
    # use_scalar: the file's factors hold each module's trained scalar folded in and the modules' load hook
    # sets every scalar to 1 (runtime/init_weights.py: a fused layer's one shared scalar too); dora_wd: the
    # file's dora_scale starts the magnitudes (runtime/flow_init.py, lycoris_init.py)
    weights = a["network_weights"]
    if kind in ("full", "ia3") and weights.value:
        # LyCORIS's load_weights into FullModule (W + diff) / IA3Module: runtime/lycoris_whole_init.py
        map_init_weights(weights, paths, conv)
        map_lycoris_file_alphas(weights, paths, conv)  # other kinds' LoCon / LoHa / LoKr blocks
    elif kind == "dylora" and weights.value and not other_block_kinds(conv):
        # only the file's alphas load, under kohya's fused names (with entries of other algos: a run of
        # several kinds, map_network_weights)
        from dbspec.convert.kohya.lycoris_flow_dylora import flow_dylora_alphas

        flow_dylora_alphas(weights, paths, conv, "sd3" if layout is SD3 else family or "flux")
    else:
        # a LoCon's file, or none given: records its fate; SD3's patch convolution's lora_mid is read;
        # Diag-OFT's `oft_blocks` / `rescale`, BOFT's blocks (shared) and rescale rows, GLoRA's pairs go
        # into the fused layers' parts (runtime/lycoris_whole_init.py)
        map_network_weights(a, paths, conv, flow=True)
    map_base_weights(a, paths, conv)
    map_scale_weight_norms(a, conv, lycoris=True, kind=kind)  # none given: records its fate
    return True


def _no_max_norm(conv: Conversion) -> bool:
    """Every module of a lycoris.kohya full, IA^3, GLoRA or DyLoRA network keeps LyCORIS's base
    apply_max_norm (returns None, None: nothing scaled, apply_max_norm_regularization skips it and logs 0,
    0, 0; FullModule, IA3Module, GLoRAModule, DyLoraModule and NormModule do not override it, lycoris-lora
    4.1.3): no preset-file entry of another algo (its LoCon / LoKr / LoHa / Diag-OFT / BOFT modules would
    scale)."""
    kind = conv.values[("adapter", "kind")][0]
    return kind in _LYCORIS_NO_MAX_NORM and _block_kinds(conv) <= {kind, "adapter"}


def _lycoris_flow_from_weights(
    a: Args, script: str, paths: PathMapper, conv: Conversion, family: str | None
) -> bool:
    """lycoris.kohya --dim_from_weights on Flux / Chroma / SD3: LyCORIS's create_network_from_weights matches
    the file's module names against every module of kohya's model (unet.named_modules(): its preset lists play
    no part, so the embedders and Flux's final layer build too, on Chroma its final layer and approximator; a
    name the model lacks builds nothing: on Chroma Flux's modulation Linears) and builds each module's kind
    from its keys, the network_args unread (_lycoris_from_weights_args). A LoCon file (lora_down / lora_up /
    alpha, what algo=lora / locon saves) is one LoConModule per fused Linear at
    the file's rank and alpha: lora_flux's / lora_sd3's fused network without split_qkv, the file's modules
    at their ranks (_flow_dim_from_weights), started from the file (load_state_dict after apply_to). A
    LoKr's / LoHa's keys (lokr_w1, hada_w1_a...): _lycoris_flow_factor_file (lycoris_flow_weights.py); a
    Diag-OFT's / GLoRA's (oft_blocks, a1.weight): _lycoris_flow_rebuilt_file (lycoris_flow_rebuilt.py); a
    LoCon's `lora_mid` on SD3's patch convolution is its Tucker form (tucker = true), on a Linear DBS402;
    `dora_scale` in every module dora = true (lycoris_flow_weights.locon_dora)."""
    from dbspec.convert.kohya.lora_flux import map_lora_flux
    from dbspec.convert.kohya.lycoris_flow_norms import flow_file_norms
    from dbspec.convert.kohya.lora_sd3 import map_lora_sd3

    module = a["network_module"]
    a = _lycoris_from_weights_args(a, conv)
    wanted = NETWORK_MODULES[script]
    flow = (family or "flux") if wanted == "networks.lora_flux" else "sd3"
    norms = _file_norm_values(a, paths, conv, flow, flow_file_norms)  # CLIP's NormModules (train_norm's)
    if norms is None:
        return False
    factors = _factor_file(a, paths)
    if factors is not None:
        factors = {n: m for n, m in factors.items() if m.algo != "norm"}
        done = _lycoris_flow_factor_file(a, paths, conv, flow, factors)
        return done and _put_file_norms(norms, a, paths, conv)
    rebuilt = _rebuilt_file(a, paths)  # Diag-OFT, BOFT, GLoRA (IA3: factors')
    if rebuilt is not None:
        from dbspec.convert.kohya.lycoris_flow_mixed import is_flow_mixed

        rebuilt = {n: m for n, m in rebuilt.items() if m.algo != "norm"}
        if is_flow_mixed(rebuilt):  # LoCon modules beside them: a run of several kinds (lycoris_flow_mixed)
            done = _lycoris_flow_factor_file(a, paths, conv, flow, rebuilt)
            return done and _put_file_norms(norms, a, paths, conv)
        done = _lycoris_flow_rebuilt_file(a, paths, conv, flow, rebuilt)
        return done and _put_file_norms(norms, a, paths, conv)
    if _norms_alone(a, paths):
        conv.unsupported(
            a["dim_from_weights"],
            f"LyCORIS's create_network_from_weights with `{a['network_weights'].value}`: it holds "
            "NormModules alone (no module of the denoiser); dbspec trains a network with denoiser modules",
        )
        return False
    conv.put(("adapter", "kind"), "lora", conv.comment(module))
    dim, alpha = a["network_dim"], a["network_alpha"]
    rank = dim.value if dim.value is not None else 4
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))
    conv.record(module, "mapped", "adapter")
    flux = wanted == "networks.lora_flux"
    built = (
        map_lora_flux(a, rank, float(alpha.value), conv, family=family or "flux")
        if flux
        else map_lora_sd3(a, rank, float(alpha.value), conv)
    )
    if not built:
        return False
    # lora_flux's rank-0 final-layer block goes: LyCORIS builds the final layer where the file has it (the
    # file's blocks end with a rank-0 block for every module it lacks)
    for key in [k for k in conv.values if k[:2] == ("adapter", "blocks")]:
        del conv.values[key]
    _flow_dim_from_weights(a, wanted, paths, conv, family, lycoris=True)
    map_base_weights(a, paths, conv)
    map_scale_weight_norms(a, conv, lycoris=True)  # a LoCon's: one norm per fused Linear (Flux, SD3)
    return _put_file_norms(norms, a, paths, conv)


def _norms_alone(a: Args, paths: PathMapper) -> bool:
    """The --network_weights file holds LyCORIS NormModules and no other module (False when unreadable)."""
    local = paths.local(a["network_weights"].value)
    try:
        modules = read_lycoris_file(local) if local is not None else {}
    except (ModelFileError, ValueError, OSError):
        return False
    return bool(modules) and all(m.algo == "norm" for m in modules.values())


def _rebuilt(found: dict | str, weights, from_file, conv: Conversion) -> dict | None:
    """The adapter values of the network LyCORIS's create_network_from_weights rebuilds from a file (a
    lycoris_sd_* / lycoris_flow_* finder's dict), or None once its message is reported: DBS402 where LyCORIS
    itself fails (the finder's INVALID prefix), DBS403 where dbspec cannot express that network."""
    from dbspec.convert.kohya.lycoris_sd_full import INVALID as FAILS

    if isinstance(found, str) and found.startswith(FAILS):
        message = f"LyCORIS's create_network_from_weights: {found.removeprefix(FAILS)}"
        conv.invalid(from_file.key, True, from_file.source, message)
        return None
    if isinstance(found, str):
        conv.unsupported(from_file, f"LyCORIS's create_network_from_weights with `{weights.value}`: {found}")
        return None
    return found


def _put_rebuilt(found: dict, a: Args, paths: PathMapper, conv: Conversion) -> str:
    """Write a rebuilt network (kind, adapter values, blocks of modules built with values of their own),
    started from the same file (load_weights: load_state_dict(strict=False)); returns its kind."""
    module, weights, from_file = a["network_module"], a["network_weights"], a["dim_from_weights"]
    kind = found["kind"]
    note = f"kohya --dim_from_weights: LyCORIS's {kind} modules of {paths.name_of(weights.value)}"
    conv.put(("adapter", "kind"), kind, conv.comment(module, note))
    tables = ("blocks", "text_encoder_blocks")
    twice = (  # lycoris-lora 4.1.3: make_module_from_state_dict + apply_to, then the load hook's W + diff
        "kohya --dim_from_weights: LyCORIS builds each FullModule at W + diff, then train_network.py's "
        "load_weights adds the file's diff again: W + 2 diff"
    )
    for key, value in found.items():
        if key not in ("kind", "t5") and key not in tables:
            conv.put(("adapter", key), value, twice if key == "init_scale" else note)
    if found.get("t5"):  # T5-XXL's modules in LyCORIS's text group: dbspec's T5 adapter of that kind
        put_lycoris_t5(a, conv, conv.comment(from_file, f"{note}: T5-XXL's"))  # trained, or idle at rate 0
    for table in tables:
        for index, block in enumerate(found.get(table, ())):
            for key, value in block.items():
                conv.put(("adapter", table, index, key), value, note + ": its modules' own values")
    map_init_weights(weights, paths, conv)
    for key in ("network_dim", "network_alpha"):
        conv.inert(a[key], "--dim_from_weights takes the layers and their values from the file")
    conv.record(module, "mapped", "adapter")
    conv.record(from_file, "mapped", "adapter")
    map_base_weights(a, paths, conv)
    return kind


def _lycoris_flow_rebuilt_file(
    a: Args, paths: PathMapper, conv: Conversion, family: str, modules: dict[str, LycorisModule]
) -> bool:
    """lycoris.kohya --dim_from_weights with a Diag-OFT, BOFT or GLoRA file on Flux / SD3
    (lycoris_flow_rebuilt.py): that kind with fused_projections over the file modules' diffusers parts at the
    values LyCORIS rebuilds them with (T5-XXL's modules: train.t5 of that kind), started from the file; what
    it cannot express is DBS403, what LyCORIS fails on DBS402."""
    from dbspec.convert.kohya.lycoris_flow_rebuilt import flow_rebuilt_file

    weights, from_file = a["network_weights"], a["dim_from_weights"]
    found = flow_rebuilt_file(
        modules, family, bool(a["network_train_unet_only"].value), _t5_idle(a, file=True)
    )
    found = _rebuilt(found, weights, from_file, conv)
    if found is None:
        return False
    kind = _put_rebuilt(found, a, paths, conv)
    # GLoRAModule's: inert; ButterflyOFTModule's and DiagOFTModule's scale the fused module's blocks
    # (runtime/max_norm.py: a fused Diag-OFT's parts' blocks stacked, one norm)
    if a["scale_weight_norms"].value and kind not in (*_LYCORIS_NO_MAX_NORM, "boft", "diag-oft"):
        conv.unsupported(a["scale_weight_norms"], f"LyCORIS's max norm of a fused {kind}: no dbspec form yet")
        return False
    map_scale_weight_norms(a, conv, lycoris=True, kind=kind)  # none given: records its fate
    return True


def _factor_file(a: Args, paths: PathMapper) -> dict[str, LycorisModule] | None:
    """The --network_weights file's modules when one is a LyCORIS LoKr / LoHa / IA3 / full (its keys decide);
    None otherwise, or when it is unreadable (the LoCon mapping reports it)."""
    local = paths.local(a["network_weights"].value)
    try:
        modules = read_lycoris_file(local) if local is not None else {}
    except (ModelFileError, ValueError, OSError):
        return None
    return modules if any(m.algo in ("lokr", "loha", "ia3", "full") for m in modules.values()) else None


def _file_norm_values(
    a: Args, paths: PathMapper, conv: Conversion, family: str, finder=None
) -> dict[str, object] | None:
    """lycoris.kohya --dim_from_weights: the [adapter] norms for the file's NormModules (`finder`: on SD
    1.x/2.x / SDXL lycoris_sd_rebuilt.sd_file_norms, on Flux / SD3 lycoris_flow_norms.flow_file_norms; {}
    without any, or when the file is unreadable); None where kohya fails (DBS402) or dbspec cannot express
    them (DBS403), reported."""
    from dbspec.convert.kohya.lycoris_sd_full import INVALID as FAILS
    from dbspec.convert.kohya.lycoris_sd_rebuilt import sd_file_norms

    local = paths.local(a["network_weights"].value)
    try:
        modules = read_lycoris_file(local) if local is not None else {}
    except (ModelFileError, ValueError, OSError):
        return {}
    found = (finder or sd_file_norms)(modules, family, bool(a["network_train_unet_only"].value))
    from_file = a["dim_from_weights"]
    if isinstance(found, str) and found.startswith(FAILS):
        message = f"LyCORIS's create_network_from_weights: {found.removeprefix(FAILS)}"
        conv.invalid(from_file.key, True, from_file.source, message)
        return None
    if isinstance(found, str):
        conv.unsupported(from_file, f"LyCORIS's create_network_from_weights: {found}")
        return None
    return found


def _put_file_norms(norms: dict[str, object], a: Args, paths: PathMapper, conv: Conversion) -> bool:
    """The file's NormModules as the adapter's norm offsets, started from the file's `w_norm` / `b_norm`
    (runtime/init_weights.py), beside any adapter kind (LyCORIS builds a NormModule whatever the others)."""
    if not norms:
        return True
    note = (
        f"kohya --dim_from_weights: LyCORIS's NormModules of {paths.name_of(a['network_weights'].value)} "
        "(train_norm's w_norm / b_norm), started from the file"
    )
    for key, value in norms.items():
        conv.put(("adapter", key), value, note)
    local = paths.local(a["network_weights"].value)
    modules = read_lycoris_file(local) if local is not None else {}  # read by _file_norm_values already
    if "text_encoder_norms" in norms and not any(
        n.startswith("lora_te") and m.algo != "norm" for n, m in modules.items()
    ):  # the text encoders' NormModules alone: no LoRA there (the LoCon mapping's default targets)
        why = note + ": the file has no other text-encoder module"
        conv.put(("adapter", "text_encoder_targets"), [], why)
        if ("adapter", "text_encoder_2_targets") in conv.values:
            conv.put(("adapter", "text_encoder_2_targets"), [], why)
    return True


def _rebuilt_file(a: Args, paths: PathMapper, norms: bool = False) -> dict[str, LycorisModule] | None:
    """The --network_weights file's modules when one is a LyCORIS Diag-OFT / BOFT, GLoRA or IA3 module
    (lycoris_sd_rebuilt.py; `norms`: or a NormModule); None otherwise, or when it is unreadable (the LoCon
    mapping reports it)."""
    from dbspec.convert.kohya.lycoris_sd_rebuilt import REBUILT

    local = paths.local(a["network_weights"].value)
    try:
        modules = read_lycoris_file(local) if local is not None else {}
    except (ModelFileError, ValueError, OSError):
        return None
    algos = (*REBUILT, "norm") if norms else REBUILT
    return modules if any(m.algo in algos for m in modules.values()) else None


def _lycoris_sd_rebuilt_file(
    a: Args,
    paths: PathMapper,
    conv: Conversion,
    family: str,
    modules: dict[str, LycorisModule],
    finder: Callable[[dict[str, LycorisModule], str, bool], dict | str],
) -> bool:
    """lycoris.kohya --dim_from_weights on SD 1.x/2.x / SDXL with a file `finder` reads: a Diag-OFT, BOFT or
    GLoRA file (lycoris_sd_rebuilt.sd_rebuilt_file; an IA3 file stops kohya, DBS402) or a LoKr / LoHa file
    (lycoris_sd_factor.sd_factor_file: each module at the rank, alpha, LoKr split and Tucker form LyCORIS's
    make_module_from_state_dict rebuilds it with). That kind over the file's layers, modules built otherwise
    than most as blocks, started from the file."""
    weights, from_file = a["network_weights"], a["dim_from_weights"]
    found = finder(modules, family, bool(a["network_train_unet_only"].value))
    found = _rebuilt(found, weights, from_file, conv)
    if found is None:
        return False
    kind = _put_rebuilt(found, a, paths, conv)
    map_scale_weight_norms(a, conv, lycoris=True, kind=kind)
    return True


def _lycoris_sd_full_file(
    a: Args, paths: PathMapper, conv: Conversion, family: str, modules: dict[str, LycorisModule]
) -> bool:
    """lycoris.kohya --dim_from_weights with a full file on SD 1.x/2.x / SDXL (lycoris_sd_full.py): kind full
    over the file's layers, from W + 2 diff (init_scale 2)."""
    from dbspec.convert.kohya.lycoris_sd_full import sd_full_file

    module, weights, from_file = a["network_module"], a["network_weights"], a["dim_from_weights"]
    found = sd_full_file(modules, family, bool(a["network_train_unet_only"].value))
    found = _rebuilt(found, weights, from_file, conv)
    if found is None:
        return False
    note = f"kohya --dim_from_weights: LyCORIS's full modules of {paths.name_of(weights.value)}"
    conv.put(("adapter", "kind"), "full", conv.comment(module, note))
    twice = (  # lycoris-lora 4.1.3: make_module_from_state_dict + apply_to, then the load hook's W + diff
        "kohya --dim_from_weights: LyCORIS builds each FullModule at W + diff, then train_network.py's "
        "load_weights adds the file's diff again: W + 2 diff"
    )
    for key, value in found.items():
        if key != "kind":
            conv.put(("adapter", key), value, twice if key == "init_scale" else note)
    map_init_weights(weights, paths, conv)
    for key in ("network_dim", "network_alpha"):
        conv.inert(
            a[key], "--dim_from_weights takes the layers from the file; LyCORIS's full algo has no rank"
        )
    conv.record(module, "mapped", "adapter")
    conv.record(from_file, "mapped", "adapter")
    map_base_weights(a, paths, conv)
    map_scale_weight_norms(a, conv, lycoris=True, kind="full")  # FullModule's apply_max_norm: inert
    return True


def _fp8_stops(a: Args, flow: bool, paths: PathMapper, conv: Conversion, family: str | None = None) -> bool:
    """DBS402 where kohya's --fp8_base stops a lycoris.kohya network from a built-in preset or a
    --dim_from_weights file (network.builtin_network_on_fp8, lycoris_fp8.file_on_fp8; `family`: T5-XXL's,
    on Flux / SD3 / Chroma)."""
    why = builtin_network_on_fp8(a, flow)
    if why:
        args = a["network_args"]
        conv.invalid(args.key, args.value, args.source, f"LyCORIS's create_network: {why}")
        return True
    weights, from_file = a["network_weights"].value, a["dim_from_weights"]
    if not (from_file.value and weights and a["network_module"].value == "lycoris.kohya"):
        return False
    prepared = family in _T5 and not a["network_train_unet_only"].value and t5_fp8_prepared(a)
    fp8 = "" if a["network_train_text_encoder_only"].value else fp8_denoiser(a, flow)
    local = paths.local(weights)
    if not (fp8 or prepared) or local is None:
        return False
    try:
        modules = read_lycoris_file(local)
    except (ModelFileError, ValueError, OSError):
        return False  # reported where the file is read
    t5 = [t5_path(n, family) for n, m in modules.items() if m.algo == "full"] if prepared else []
    why = file_on_fp8(modules, fp8, t5)
    if why:
        message = f"LyCORIS's create_network_from_weights with `{weights}`: {why}"
        conv.invalid(from_file.key, True, from_file.source, message)
    return bool(why)


def _file_t5_full_output(modules: dict[str, LycorisModule], family: str) -> list[str]:
    """The file's FullModules (a `diff`) on T5-XXL's gated-MLP output Linear `DenseReluDense.wo` (Flux's /
    Chroma's lora_te2_, SD3's lora_te3_): create_network_from_weights builds them and kohya stops at T5's
    first encoding after apply_to (lycoris_flow_file.t5_full_output_why)."""
    return sorted(
        n
        for n, m in modules.items()
        if m.algo == "full" and family in _T5 and (t5_path(n, family) or "").endswith(".DenseReluDense.wo")
    )


def _lycoris_flow_factor_file(
    a: Args, paths: PathMapper, conv: Conversion, family: str, modules: dict[str, LycorisModule]
) -> bool:
    """lycoris.kohya --dim_from_weights with a LoKr / LoHa file on Flux / SD3: LyCORIS's LokrModule /
    LohaModule per module of the file, one per fused Linear, as dbspec's fused LoKr / LoHa with the file's one
    rank, alpha (and LoKr split) over its modules' diffusers parts, started from the file
    (lycoris_flow_weights.py); a full file: FullModule's copies from W + 2 diff (init_scale 2); what that
    cannot express is DBS403, what LyCORIS fails on DBS402 (an IA3 file: lycoris-lora 4.1.3's IA3Module
    cannot be built from one)."""
    from dbspec.convert.kohya.lycoris_flow_mixed import flow_mixed_file, is_flow_mixed

    module, weights, from_file = a["network_module"], a["network_weights"], a["dim_from_weights"]
    unet_only = bool(a["network_train_unet_only"].value)
    wo = _file_t5_full_output(modules, family) if t5_wo_weight_read(a) else []
    if wo:  # T5 encodes after apply_to through them (cached: _t5_idle's DBS403; --fp8_base: no read)
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"LyCORIS's create_network_from_weights with `{weights.value}`: its `{wo[0]}.diff` gives "
            f"T5-XXL's {t5_path(wo[0], family)} {t5_full_output_why(len(wo))}",
        )
        return False
    if is_flow_mixed(modules):  # LoKr / LoHa / LoCon / full / OFT / GLoRA: a run of several kinds
        found = flow_mixed_file(modules, family, unet_only, _t5_idle(a, file=True))
    else:
        found = factor_file_adapter(modules, family, unet_only, _t5_idle(a, file=True))
    if isinstance(found, str) and found.startswith("invalid:"):
        conv.invalid(
            from_file.key, True, from_file.source, f"LyCORIS's create_network_from_weights: {found[8:]}"
        )
        return False
    if isinstance(found, str):
        conv.unsupported(from_file, f"LyCORIS's create_network_from_weights with `{weights.value}`: {found}")
        return False
    algo = found["kind"]
    note = f"kohya --dim_from_weights: LyCORIS's {algo} modules of {paths.name_of(weights.value)}"
    conv.put(("adapter", "kind"), algo, conv.comment(module, note))
    twice = (  # lycoris-lora 4.1.3: make_module_from_state_dict + apply_to, then the load hook's W + diff
        "kohya --dim_from_weights: LyCORIS builds each FullModule at W + diff, then train_network.py's "
        "load_weights adds the file's diff again: W + 2 diff"
    )
    for key, value in found.items():
        if key not in ("kind", "blocks", "text_encoder_blocks", "t5"):
            conv.put(("adapter", key), value, twice if key == "init_scale" else note)
    if found.get("t5"):  # T5-XXL's modules in LyCORIS's text group: dbspec's T5 adapter of that kind
        put_lycoris_t5(a, conv, conv.comment(from_file, f"{note}: T5-XXL's"))  # trained, or idle at rate 0
    for table in ("blocks", "text_encoder_blocks"):  # modules at a rank / alpha / LoKr split of their own
        first = 1 + max((k[2] for k in conv.values if k[:2] == ("adapter", table)), default=-1)
        for index, block in enumerate(found.get(table, ()), start=first):
            for key, value in block.items():
                conv.put(("adapter", table, index, key), value, note + ": its modules' own rank and alpha")
    map_init_weights(weights, paths, conv)
    for key in ("network_dim", "network_alpha"):
        conv.inert(a[key], "--dim_from_weights takes the ranks and alphas from the file")
    conv.record(module, "mapped", "adapter")
    conv.record(from_file, "mapped", "adapter")
    map_base_weights(a, paths, conv)
    # each module create_network_from_weights builds keeps its own apply_max_norm (LoConModule, LohaModule,
    # LokrModule, DiagOFTModule per fused Linear scale; FullModule, GLoRAModule skipped): LyCORIS's max norm
    # on the file's layers of those kinds, one module per fused Linear (runtime/max_norm.py; was DBS403 for
    # a file of several kinds); none given: records its fate; full alone: inert (no network_args are read)
    map_scale_weight_norms(a, conv, lycoris=True, kind=algo, from_file=True)
    return True


def _map_flow_adapter(a: Args, script: str, paths: PathMapper, conv: Conversion, family: str | None) -> bool:
    """networks.lora_flux / networks.lora_sd3 exactly (lora_flux.py, lora_sd3.py here): kohya's targets (every
    Linear of the double/single or joint blocks), its fused q/k/v layers and its network_args."""
    from dbspec.convert.kohya.lora_flux import map_lora_flux
    from dbspec.convert.kohya.lora_sd3 import map_lora_sd3

    module, wanted = a["network_module"], NETWORK_MODULES[script]
    if idle_text_modules(a, paths, conv, script):  # the file's text-encoder modules at text_encoder_lr 0
        return False
    if module.value == "lycoris.kohya" and script in ("flux_train_network", "sd3_train_network"):
        stops = _fp8_stops(
            a, True, paths, conv, family or ("sd3" if script == "sd3_train_network" else "flux")
        )
        return not stops and _map_lycoris_flow(a, script, paths, conv, family)
    if module.value == "networks.oft_flux" and script == "flux_train_network":
        from dbspec.convert.kohya.oft_flux import map_kohya_oft_flux  # diag-oft's kohya form per part

        if not map_kohya_oft_flux(a, conv, family or "flux", paths):
            return False
        map_base_weights(a, paths, conv)
        return True
    if module.value != wanted:
        flow = {
            "flux_train_network": ", networks.oft_flux and LyCORIS's lycoris.kohya",
            "sd3_train_network": " and LyCORIS's lycoris.kohya",
        }
        also = flow.get(script, "")
        conv.unsupported(module, f"{script}.py with dbspec converts kohya's {wanted} network{also} only")
        return False
    conv.put(("adapter", "kind"), "lora", conv.comment(module))
    dim, alpha = a["network_dim"], a["network_alpha"]
    rank = dim.value if dim.value is not None else 4
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))
    conv.record(module, "mapped", "adapter")
    if wanted == "networks.lora_flux":
        network = lambda *args: map_lora_flux(*args, family=family or "flux")  # noqa: E731 (Flux or Chroma)
    else:
        network = map_lora_sd3
    from_file = a["dim_from_weights"].value and a["network_weights"].value
    # create_network_from_weights takes **kwargs and reads none of them (split_qkv = False there), and
    # train_network.py passes --network_dropout only to create_network
    for key in ("network_args", "network_dropout") if from_file else ():
        if a[key].given and a[key].value:
            conv.ignored(a[key], f"with --dim_from_weights {wanted}'s create_network_from_weights reads none")
            a = {**a, key: Legacy(key=a[key].key, value=None, source="default")}
    if a["network_weights"].value and not from_file and file_holds(a, paths, "lora_te3_"):
        # create_network builds T5-XXL's modules (train_t5xxl=True) and load_weights puts the file's in them:
        # at T5's rate 0 they change its output without training (lora_flux.t5_trains: train.t5_idle)
        conv.facts["t5_file_modules"] = True
    if not network(a, rank, float(alpha.value), conv):
        return False
    zero_alphas_to_ranks(conv, wanted)
    # --network_weights: adapter.init_weights reads kohya's Flux / SD3 layout (runtime/flow_init.py), the
    # fused layers split onto diffusers' parts as the networks' load_state_dict splits them
    weights = a["network_weights"]
    if a["dim_from_weights"].value:
        _flow_dim_from_weights(a, wanted, paths, conv, family)
    elif weights.value:
        map_network_weights(a, paths, conv)
    map_base_weights(a, paths, conv)
    fused = conv.values.get(("adapter", "fused_projections"))
    map_scale_weight_norms(a, conv, split=fused is not None and not fused[0])  # fused false: split_qkv
    return True
