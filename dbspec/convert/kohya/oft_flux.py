"""kohya's own OFT network for Flux, `network_module = "networks.oft_flux"` (sd-scripts networks/oft_flux.py)
with flux_train_network.py: [adapter] kind "diag-oft" with `form = "kohya"` on diffusers' Flux.

What kohya does (networks/oft_flux.py):
- create_network: network_dim is the NUMBER of blocks (None: 4), network_alpha the constraint per output
  row (OFTModule: alpha x width; None: 1e-3, but train_network.py's --network_alpha defaults to 1); of
  network_args it reads `enable_all_linear` alone, as `bool(value)` of kohya's string (any non-empty text is
  true, "False" too); --network_dropout and the rest are never read.
- OFTNetwork: by default the Linears of every `SelfAttention` module: the double blocks' img_attn / txt_attn
  qkv and proj (the single blocks hold no SelfAttention); with enable_all_linear every Linear of
  DoubleStreamBlock and SingleStreamBlock (img_mod.lin, img_attn.qkv / proj, img_mlp.0 / .2 and the txt_
  ones; linear1, linear2, modulation.lin). No embedder, no final layer, no text encoder (apply_to asserts
  apply_unet; train_t5xxl False).
- OFTModule with `split_dims`: a fused Linear's rows are split into its parts, the double blocks' qkv into
  [3072] * 3 (q, k, v) and the single blocks' linear1 into [3072] * 3 + [12288] (q, k, v, the MLP input);
  each part has its own `dim` blocks of width / dim rows, its own constraint alpha x its width and its own
  norm clamp, and runs F.linear on its R^T W (fp32, cast to the input's dtype) with its own bias. Block
  boundaries never cross parts, so kohya's module is exactly kohya's networks.oft on each of diffusers'
  separate parts (attn.to_q, to_k, to_v, proj_mlp): Diag-OFT's kohya form per part, nothing shared. Every
  other Linear is one block list over all its rows (the modulation Linears' 6 x 3072 rows as diffusers'
  norm1.linear holds them, in the same order). Each width must split into `dim` blocks (it asserts): every
  targeted FLUX.1 width is a multiple of 3072, so dim must divide 3072.
- prepare_optimizer_params: one group of every block at unet_lr (or learning_rate); no
  apply_max_norm_regularization (train_network.py warns and drops --scale_weight_norms).
- save_weights: its state dict, `oft_unet_<kohya Flux name>.oft_blocks.<part>` and `.alpha`; dbspec's
  kohya_lora export writes it (runtime/flux_oft.py).
- load_weights (--network_weights, after apply_to): load_state_dict(strict=False): adapter.init_weights with
  init_partial, as networks.oft's (a file alpha that is not network_alpha: init_alpha "ignore", DBS404).
- create_network_from_weights (--dim_from_weights): the block count from the first tensor outside a qkv
  module, the constraint from the first alpha, enable_all_linear when a tensor's name holds `_mlp`.
--model_type chroma (library/chroma_models.py): OFTNetwork picks the same classes there (SelfAttention,
DoubleStreamBlock, SingleStreamBlock, imported or named as Flux's) in blocks without modulation Linears, at
Flux's width (3072, split_dims the same), so the targets are the family's kohya_lora_targets (no
norm1.linear / norm.linear) and the file the same names without mod_lin (a scratch run of kohya's
create_network on its full-size Chroma on the meta device built exactly these modules and splits)."""

from __future__ import annotations


from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lora_flux import NUM_DOUBLE
from dbspec.convert.kohya.lycoris_flux import _DOUBLE_ATTENTION, _lokr_targets
from dbspec.convert.kohya.network import parse_network_args
from dbspec.convert.kohya.oft import the_rest
from dbspec.families import family_spec

# FLUX.1's (and Chroma's) hidden width: every Linear oft_flux adapts is a multiple of it (its split_dims)
WIDTH = 3072
MODULE = "networks.oft_flux"


def map_kohya_oft_flux(a: dict[str, Legacy], conv: Conversion, family: str, paths=None) -> bool:
    """[adapter] for networks.oft_flux; False when kohya would stop or the run is not expressed (reported)."""
    module = a["network_module"]
    facts = family_spec(family)
    if facts.kohya is None or facts.kohya.oft_network != MODULE:  # the registry's FLUX.1 and Chroma
        conv.unsupported(
            module, f"{MODULE} with --model_type {family}: dbspec converts it for FLUX.1 and Chroma"
        )
        return False
    from_file = a["dim_from_weights"].value
    network = _from_weights(a, conv, paths) if from_file else _create_network(a, conv)
    if network is None:
        return False
    blocks, constraint, all_linear, ok = network
    where = a["dim_from_weights"] if from_file else a["network_dim"]
    if blocks < 1 or WIDTH % blocks:
        conv.invalid(
            where.key,
            where.value,
            where.source,
            f"{MODULE} asserts each layer's part ({WIDTH}-wide q, k, v ...) splits into {blocks} "
            "blocks: it does not",
            help=f"set network_dim to a divisor of {WIDTH} (4, 8, 16, 32, ...)",
        )
        ok = False
    if constraint < 0:
        conv.unsupported(
            where if from_file else a["network_alpha"],
            "a negative alpha makes OFTModule's clamp flip the skew blocks' sign",
        )
        ok = False
    targets = list(facts.kohya_lora_targets) if all_linear else None
    _put(
        a,
        conv,
        blocks,
        constraint,
        targets,
        f"kohya --dim_from_weights: from {a['network_weights'].value}" if from_file else "",
    )
    ok = the_rest(a, conv, MODULE) and ok
    if ok and a["network_weights"].value:
        ok = _load_weights(a, paths, conv, blocks, constraint)
    return ok


def _create_network(a: dict[str, Legacy], conv: Conversion) -> tuple[int, float, bool, bool]:
    """create_network: (network_dim blocks, network_alpha's constraint, enable_all_linear, no problem)."""
    dim, alpha, args = a["network_dim"], a["network_alpha"], a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:  # train_network.py's `key, value = net_arg.split("=", 1)` raises
        conv.invalid(args.key, args.value, args.source, problem)
    all_linear = bool(kwargs.pop("enable_all_linear", ""))  # create_network: bool() of kohya's string
    if args.value and not problems:
        conv.record(args, "mapped", "adapter.denoiser_targets")
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            f"{MODULE}'s create_network reads only enable_all_linear",
        )
    blocks = dim.value if dim.value is not None else 4
    return blocks, float(alpha.value), all_linear, not problems


def _from_weights(a: dict[str, Legacy], conv: Conversion, paths) -> tuple[int, float, bool, bool] | None:
    """create_network_from_weights (--dim_from_weights): the block count is the first dimension of the
    first tensor (load_file's sorted keys) that is no `.alpha` and no `qkv` module's, the constraint the
    first `.alpha`, enable_all_linear when such a tensor's name holds `_mlp`; network_dim, network_alpha and
    network_args unread. None when it cannot be built (reported)."""
    from dbspec.convert.kohya.oft import _weights_file

    weights, from_file, args = a["network_weights"], a["dim_from_weights"], a["network_args"]
    if not weights.value:
        conv.invalid(
            from_file.key, True, from_file.source, "--dim_from_weights reads --network_weights: not given"
        )
        return None
    file = _weights_file(weights, paths, conv, required=True)
    if file is False:
        return None
    first = next((k for k in file.keys if not k.endswith(".alpha") and "qkv" not in k), None)
    alpha_key = next((k for k in file.keys if k.endswith(".alpha")), None)
    if first is None or alpha_key is None:
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"`{weights.value}` has no {'alpha' if first else 'oft_blocks tensor outside a qkv module'}: "
            "create_network_from_weights builds OFTModules with None for it and they fail",
        )
        return None
    module = file.modules[first.split(".oft_blocks")[0]]
    all_linear = any("_mlp" in k for k in file.keys if not k.endswith(".alpha") and "qkv" not in k)
    for key in ("network_dim", "network_alpha"):
        if a[key].given:
            conv.inert(a[key], "--dim_from_weights takes the block count and constraint from the file")
    kwargs, _ = parse_network_args(args.value or [])
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            f"{MODULE}'s create_network_from_weights reads none of the network_args",
        )
    conv.record(from_file, "mapped", "adapter.block_count, adapter.constraint, adapter.denoiser_targets")
    return int(module.blocks or 0), float(file.alphas[alpha_key]), all_linear, True


def _load_weights(a: dict[str, Legacy], paths, conv: Conversion, blocks: int, constraint: float) -> bool:
    """OFTNetwork.load_weights (train_network.py, after apply_to): load_state_dict(strict=False) of the file
    -> adapter.init_weights with init_partial. Read when it is here (else the plan checks it): its modules
    must hold network_dim blocks (torch raises on another shape: DBS402); an alpha that is not the network's
    sets adapter.init_alpha = "ignore" (kohya trains the network's constraint, a float fixed when
    OFTModule is built, and saves the file's alpha: DBS404)."""
    from dbspec.convert.kohya.network import map_init_weights
    from dbspec.convert.kohya.file_alpha import map_oft_file_alphas
    from dbspec.convert.kohya.oft import _weights_file, file_module_fits

    weights = a["network_weights"]
    file = _weights_file(weights, paths, conv, required=False)
    if file is False:
        return False
    modules = list(file.modules.values()) if file is not None else []
    if not all(file_module_fits(m, blocks, constraint, weights, conv) for m in modules):
        return False
    map_oft_file_alphas(modules, constraint, weights, conv)
    map_init_weights(weights, paths, conv)
    return True


def _put(
    a: dict[str, Legacy],
    conv: Conversion,
    blocks: int,
    constraint: float,
    all_linear: list[str] | None,
    from_file: str = "",
) -> None:
    """[adapter] of OFTNetwork(dim=blocks, alpha=constraint, enable_all_linear: the family's block Linears,
    networks.lora_flux's set; None: the attention) on FLUX.1's diffusers names: full paths where a suffix
    would also name a layer kohya leaves alone (the single blocks' attention parts in the default set; the
    final layer's proj_out). `from_file`: --dim_from_weights's note (the values are the file's)."""
    module, dim, alpha, args = a["network_module"], a["network_dim"], a["network_alpha"], a["network_args"]
    conv.record(module, "mapped", "adapter.kind")
    why = "kohya's own OFT for Flux (networks/oft_flux.py)"
    conv.put(("adapter", "kind"), "diag-oft", conv.comment(module, why))
    parts = "each fused layer's parts rotated on their own"
    conv.put(("adapter", "form"), "kohya", conv.comment(module, parts))
    if from_file:
        conv.put(("adapter", "block_count"), blocks, from_file)
        conv.put(("adapter", "constraint"), constraint, from_file)
    else:
        default = "; defaults to 4" if dim.value is None else ""
        note = f"{MODULE}: the number of blocks per layer part{default}"
        conv.mapped(dim, ("adapter", "block_count"), blocks, comment=conv.comment(dim, note))
        note = f"{MODULE}: the constraint per output row (alpha x part width)"
        conv.mapped(alpha, ("adapter", "constraint"), constraint, comment=conv.comment(alpha, note))
    if all_linear is not None:
        targets = _lokr_targets(all_linear, "all")
        note = "enable_all_linear: every Linear of the double and single blocks"
    else:
        targets = _lokr_targets(list(_DOUBLE_ATTENTION), "attention")
        note = f"kohya's SelfAttention: the {NUM_DOUBLE} double blocks' img_attn / txt_attn qkv and proj"
    source = args if args.value and not from_file else module
    conv.put(("adapter", "denoiser_targets"), targets, from_file or conv.comment(source, note))
    why = "OFTNetwork adapts the transformer alone"
    conv.put(("adapter", "text_encoder_targets"), [], conv.comment(module, why))
