"""kohya's own OFT network, `network_module = "networks.oft"` (sd-scripts networks/oft.py), for
train_network.py and sdxl_train_network.py: [adapter] kind "diag-oft" with `form = "kohya"`.

What kohya does (networks/oft.py at sd-scripts 48d368f):
- create_network (l. 155-195): network_dim is the NUMBER of blocks (None: 4); network_alpha the constraint
  per output row (OFTModule: `self.constraint = alpha * out_dim`; None: 1e-3, but train_network.py's
  --network_alpha defaults to 1); of network_args it reads `enable_all_linear` and `enable_conv` alone, each
  `bool(value)` of the string kohya hands it (any non-empty text is true, "False" too); --network_dropout
  and the rest are never read.
- OFTNetwork (l. 245-311): the U-Net alone. CrossAttention's Linears (to_q, to_k, to_v, to_out.0); with
  enable_all_linear every Linear and 1x1 convolution of Transformer2DModel (proj_in, proj_out, the
  attention and feed-forward layers); with enable_conv also every Linear and convolution of ResnetBlock2D,
  Downsample2D and Upsample2D (conv1, conv2, conv_shortcut, time_emb_proj, the samplers' conv).
  apply_to asserts apply_unet: --network_train_text_encoder_only crashes.
- OFTModule (l. 23-110): block size out // dim, so a width dim does not divide fails in einops' rearrange
  (the U-Nets' layers are 320, 640 or 1280 wide, GEGLU's 2560 to 10240: dim must divide 320).
- prepare_optimizer_params (l. 361-382): one group of every block at unet_lr (or learning_rate); the text
  encoder rate is never read. No apply_max_norm_regularization: train_network.py warns and drops
  --scale_weight_norms (l. 698-702).
- load_weights (l. 324-333; train_network.py l. 711-714, after apply_to): load_state_dict(strict=False) of
  --network_weights: adapter.init_weights with init_partial (a module the file lacks keeps its zero blocks,
  a file module the network lacks is ignored, a block count that differs fails). The `alpha` buffers load
  too: kohya then trains the network's constraint (a Python float from network_alpha, fixed when OFTModule
  is built; nothing reads the buffer again) and saves the file's alpha, so a file whose alpha is not
  network_alpha trains with adapter.init_alpha = "ignore" (DBS404: kohya's saved file carries the file's).
- create_network_from_weights (l. 198-242; train_network.py l. 671-672, --dim_from_weights): the network
  from the file, network_dim / network_alpha / network_args unread: the block count is the first
  non-alpha tensor's first dimension and the constraint the first `.alpha` (load_file's sorted keys),
  enable_all_linear when a key holds `_ff_`, enable_conv when one holds `in_layers_2` (the SDXL original
  layout's ResNet name: on SD 1.x / 2.x kohya's diffusers-style names never match, so a file's
  convolution modules are left out and ignored by the load). A file without an alpha or without blocks
  crashes OFTModule (None arithmetic): DBS402. Then load_weights as above: modules whose alpha is not the
  first train at the first's constraint (init_alpha "ignore", DBS404).
"""

from __future__ import annotations


from dbspec.compiler.oft_file import OftFile, adapts, read_oft_file
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.group_lists import relative_step_lift, schedule_lifts
from dbspec.convert.kohya.network import KOHYA_UNET_TARGETS, parse_network_args
from dbspec.spec.model import KOHYA_CONV_TARGETS

# CrossAttention's Linears; the Linear and 1x1 layers of the ResNets enable_conv adds
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
RESNET_LINEAR = ["time_emb_proj", "conv_shortcut"]
# every targeted width of the SD 1.x / 2.x / SDXL U-Nets is a multiple of 320
WIDTH = 320
READS = ("enable_all_linear", "enable_conv")


def map_kohya_oft(a, conv: Conversion, paths=None, original_names: bool = False) -> bool:
    """[adapter] for networks.oft; False when kohya would stop or the run is not expressed (reported).
    `paths` reads --network_weights; `original_names`: SDXL's kohya module names (the original layout)."""
    weights, from_file = a["network_weights"], a["dim_from_weights"]
    if from_file.value and not weights.value:  # create_network_from_weights(1, None, ...)
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            "--dim_from_weights reads the network from --network_weights, which is not given",
        )
        return False
    file = None
    if weights.value:
        file = _weights_file(weights, paths, conv, required=bool(from_file.value))
        if file is False:
            return False
    if from_file.value:
        ok = _from_weights(a, file, conv)
    else:
        ok = _create_network(a, conv)
    ok = the_rest(a, conv) and ok
    if ok and weights.value:
        ok = _load_weights(a, file, paths, conv, original_names)
    return ok


def _weights_file(weights: Legacy, paths, conv: Conversion, required: bool) -> OftFile | None | bool:
    """The --network_weights file read here; None where it is not on this machine and not `required` (the
    plan checks it); False when it cannot be used (reported)."""
    local = paths.local(weights.value) if paths is not None else None
    if local is None or not local.is_file():
        if not required:
            return None
        conv.unreadable(weights, "--dim_from_weights builds the network from this file, not on this machine")
        return False
    try:
        return read_oft_file(local)
    except (ModelFileError, OSError) as exc:
        conv.invalid(
            weights.key,
            weights.value,
            weights.source,
            f"networks.oft cannot load it: {getattr(exc, 'reason', exc)}",
        )
        return False


def _from_weights(a, file: OftFile, conv: Conversion) -> bool:
    """create_network_from_weights: the block count, constraint and target switches from the file."""
    weights, from_file = a["network_weights"], a["dim_from_weights"]
    first = next((k for k in file.keys if not k.endswith(".alpha")), None)
    alpha_key = next((k for k in file.keys if k.endswith(".alpha")), None)
    if first is None or alpha_key is None:
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"`{weights.value}` has no {'oft_blocks' if first is None else 'alpha'} tensor: "
            "create_network_from_weights builds OFTModules with None for it and they fail (TypeError)",
        )
        return False
    blocks = file.modules[first.rsplit(".", 1)[0]].blocks
    constraint = file.alphas[alpha_key]
    counts = sorted({m.blocks for m in file.modules.values() if m.blocks is not None})
    if len(counts) > 1:
        conv.invalid(
            weights.key,
            weights.value,
            weights.source,
            f"its modules hold {' and '.join(map(str, counts))} blocks; create_network_from_weights builds "
            f"every module with {blocks} and load_state_dict fails on the others' shapes",
        )
        return False
    for key in ("network_dim", "network_alpha"):
        if a[key].given:
            conv.inert(a[key], "--dim_from_weights takes the block count and constraint from the file")
    args = a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:  # train_network.py's split raises before the network is built
        conv.invalid(args.key, args.value, args.source, problem)
        return False
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            "networks.oft's create_network_from_weights reads none of the network_args",
        )
    all_linear = any("_ff_" in k for k in file.keys)
    convs = any("in_layers_2" in k for k in file.keys)
    note = f"kohya --dim_from_weights: from {weights.value}"
    conv.record(from_file, "mapped", "adapter.block_count, adapter.constraint")
    return _put_network(a, conv, blocks, constraint, all_linear, convs, note, from_file)


def _create_network(a, conv: Conversion) -> bool:
    """create_network: network_dim blocks, network_alpha's constraint, the network_args switches."""
    module, dim, alpha, args = a["network_module"], a["network_dim"], a["network_alpha"], a["network_args"]
    ok = True
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:  # train_network.py's `key, value = net_arg.split("=", 1)` raises
        conv.invalid(args.key, args.value, args.source, problem)
        ok = False
    blocks = dim.value if dim.value is not None else 4
    all_linear = bool(kwargs.pop("enable_all_linear", ""))  # create_network: bool() of kohya's string
    convs = bool(kwargs.pop("enable_conv", ""))
    note = conv.comment(args, "networks.oft's targets") if args.value else conv.comment(module, "its targets")
    ok = _put_network(a, conv, blocks, float(alpha.value), all_linear, convs, note) and ok
    if args.value and not problems:
        conv.record(args, "mapped", "adapter.denoiser_targets")
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            "networks.oft's create_network reads only enable_all_linear and enable_conv",
        )
    return ok


def _put_network(
    a,
    conv: Conversion,
    blocks: int,
    constraint: float,
    all_linear: bool,
    convs: bool,
    note: str,
    from_file: Legacy | None = None,
) -> bool:
    """[adapter] of OFTNetwork(dim=blocks, alpha=constraint, enable_all_linear, enable_conv); `from_file`:
    --dim_from_weights, whose file gave the values (else network_dim / network_alpha)."""
    module, dim, alpha = a["network_module"], a["network_dim"], a["network_alpha"]
    ok = True
    where = from_file or dim
    if blocks < 1 or WIDTH % blocks:
        conv.invalid(
            where.key,
            where.value if from_file is None else True,
            where.source,
            f"networks.oft splits each layer's rows into {blocks} blocks (einops rearrange): {blocks} "
            f"does not divide the U-Net's {WIDTH}-wide layers",
            help=f"set network_dim to a divisor of {WIDTH} (4, 8, 16, 32, ...)",
        )
        ok = False
    if constraint < 0:
        conv.unsupported(
            from_file or alpha,
            "a negative alpha makes OFTModule's clamp flip the skew blocks' sign: not expressed",
        )
        ok = False
    conv.record(module, "mapped", "adapter.kind")
    conv.put(("adapter", "kind"), "diag-oft", conv.comment(module, "kohya's own OFT (networks/oft.py)"))
    conv.put(("adapter", "form"), "kohya", conv.comment(module))
    if from_file is not None:
        conv.put(("adapter", "block_count"), blocks, note)
        conv.put(("adapter", "constraint"), constraint, note)
    else:
        conv.mapped(
            dim,
            ("adapter", "block_count"),
            blocks,
            comment=conv.comment(dim, "networks.oft: the number of blocks; defaults to 4")
            if dim.value is None
            else conv.comment(dim, "networks.oft: the number of blocks per layer"),
        )
        conv.mapped(
            alpha,
            ("adapter", "constraint"),
            constraint,
            comment=conv.comment(alpha, "networks.oft: the constraint per output row (alpha x width)"),
        )
    targets = list(KOHYA_UNET_TARGETS if all_linear else ATTENTION)
    if convs:
        targets += RESNET_LINEAR
    conv.put(("adapter", "denoiser_targets"), targets, note)
    conv.put(
        ("adapter", "text_encoder_targets"), [], conv.comment(module, "OFTNetwork adapts the U-Net alone")
    )
    if convs:
        conv.put(("adapter", "conv_targets"), list(KOHYA_CONV_TARGETS), note)
    return ok


def _load_weights(a, file: OftFile | None, paths, conv: Conversion, original_names: bool) -> bool:
    """OFTNetwork.load_weights: load_state_dict(strict=False) -> adapter.init_weights, init_partial. The
    file's modules of layers the network adapts must hold its block count (torch raises on a shape that
    differs: DBS402); an alpha that is not the network's sets adapter.init_alpha = "ignore" (kohya trains the
    constraint and saves the file's alpha: DBS404); read when the file is here (else the plan checks it)."""
    from dbspec.convert.kohya.file_alpha import map_oft_file_alphas
    from dbspec.convert.kohya.network import map_init_weights

    weights = a["network_weights"]
    if file is not None:
        blocks, constraint = (conv.values[("adapter", k)][0] for k in ("block_count", "constraint"))
        targets = [
            *conv.values[("adapter", "denoiser_targets")][0],
            *conv.values.get(("adapter", "conv_targets"), ([], ""))[0],
        ]
        loaded = [m for m in file.modules.values() if adapts(m.name, targets, original_names)]
        if not all(file_module_fits(m, blocks, constraint, weights, conv) for m in loaded):
            return False
        map_oft_file_alphas(loaded, constraint, weights, conv)
    map_init_weights(weights, paths, conv)
    return True


def file_module_fits(module, blocks: int, constraint: float, weights: Legacy, conv: Conversion) -> bool:
    """A --network_weights module OFTNetwork.load_weights takes: `blocks` blocks (torch raises on another
    shape: DBS402; its alpha, whatever it is, only fills a buffer: map_oft_file_alphas). False when
    reported."""
    if module.blocks is not None and module.blocks != blocks:
        conv.invalid(
            weights.key,
            weights.value,
            weights.source,
            f"`{module.name}.oft_blocks` holds {module.blocks} blocks, the network's layer {blocks}: "
            "load_state_dict raises on the shape",
        )
        return False
    return True


def the_rest(a, conv: Conversion, network: str = "networks.oft") -> bool:
    """The train_network.py options kohya's OFT `network` (networks.oft, networks.oft_flux) ignores (DBS405),
    crashes on (DBS402) or that dbspec does not express with it (DBS403)."""
    ok = True
    denoiser = "the transformer" if network.endswith("_flux") else "the U-Net"
    if a["network_dropout"].value:
        conv.ignored(a["network_dropout"], f"{network}'s create_network never reads the dropout")
    if a["scale_weight_norms"].value:
        conv.ignored(
            a["scale_weight_norms"],
            "OFTNetwork has no apply_max_norm_regularization: train_network.py warns and turns it off",
        )
    rate = a["unet_lr"] if a["unet_lr"].value is not None else a["learning_rate"]
    # a rate CyclicLR / OneCycleLR or Adafactor's relative step lift trains (group_lists.py)
    lifted = "unet_lr" in schedule_lifts(a) or "unet_lr" in relative_step_lift(a)
    if rate.value == 0 and not lifted:
        conv.unsupported(
            rate,
            f"{network} keeps its one group, {denoiser}'s blocks, in the optimizer at rate 0 and the step "
            "moves nothing (the blocks stay 0: R = I), so kohya's run trains nothing, a run dbspec refuses "
            "(DBS200: optimizer.lr = 0 holds a denoiser at rate 0 only beside a text encoder that trains)",
            help=f"give {network} a rate above 0 (--unet_lr or --learning_rate), or a CyclicLR / "
            "OneCycleLR schedule whose bounds lift it, as kohya's would",
        )
        ok = False
    te_only = a["network_train_text_encoder_only"]
    if te_only.value:
        conv.invalid(
            te_only.key,
            te_only.value,
            te_only.source,
            f"OFTNetwork.apply_to asserts apply_unet: {network} trains {denoiser} alone",
        )
        ok = False
    return ok
