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
- load_weights (l. 324-333): load_state_dict(strict=False) of --network_weights: not expressed here;
  --dim_from_weights (create_network_from_weights) neither.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.network import KOHYA_UNET_TARGETS, parse_network_args
from dbspec.spec.model import KOHYA_CONV_TARGETS

# CrossAttention's Linears; the Linear and 1x1 layers of the ResNets enable_conv adds
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
RESNET_LINEAR = ["time_emb_proj", "conv_shortcut"]
# every targeted width of the SD 1.x / 2.x / SDXL U-Nets is a multiple of 320
WIDTH = 320
READS = ("enable_all_linear", "enable_conv")


def map_kohya_oft(a, conv: Conversion) -> bool:
    """[adapter] for networks.oft; False when kohya would stop or the run is not expressed (reported)."""
    module, dim, alpha, args = a["network_module"], a["network_dim"], a["network_alpha"], a["network_args"]
    ok = True
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:  # train_network.py's `key, value = net_arg.split("=", 1)` raises
        conv.invalid(args.key, args.value, args.source, problem)
        ok = False
    blocks = dim.value if dim.value is not None else 4
    if blocks < 1 or WIDTH % blocks:
        conv.invalid(
            dim.key,
            dim.value,
            dim.source,
            f"networks.oft splits each layer's rows into network_dim blocks (einops rearrange): {blocks} "
            f"does not divide the U-Net's {WIDTH}-wide layers",
            help=f"set network_dim to a divisor of {WIDTH} (4, 8, 16, 32, ...)",
        )
        ok = False
    constraint = float(alpha.value)
    if constraint < 0:
        conv.unsupported(
            alpha, "a negative alpha makes OFTModule's clamp flip the skew blocks' sign: not expressed"
        )
        ok = False
    conv.record(module, "mapped", "adapter.kind")
    conv.put(("adapter", "kind"), "diag-oft", conv.comment(module, "kohya's own OFT (networks/oft.py)"))
    conv.put(("adapter", "form"), "kohya", conv.comment(module))
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
    all_linear = bool(kwargs.pop("enable_all_linear", ""))  # create_network: bool() of kohya's string
    convs = bool(kwargs.pop("enable_conv", ""))
    targets = list(KOHYA_UNET_TARGETS if all_linear else ATTENTION)
    if convs:
        targets += RESNET_LINEAR
    note = conv.comment(args, "networks.oft's targets") if args.value else conv.comment(module, "its targets")
    conv.put(("adapter", "denoiser_targets"), targets, note)
    conv.put(
        ("adapter", "text_encoder_targets"), [], conv.comment(module, "OFTNetwork adapts the U-Net alone")
    )
    if convs:
        conv.put(("adapter", "conv_targets"), list(KOHYA_CONV_TARGETS), note)
    if args.value and not problems:
        conv.record(args, "mapped", "adapter.denoiser_targets")
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            "networks.oft's create_network reads only enable_all_linear and enable_conv",
        )
    ok = _the_rest(a, conv) and ok
    return ok


def _the_rest(a, conv: Conversion) -> bool:
    """The train_network.py options networks.oft ignores (DBS405), crashes on (DBS402) or that dbspec does
    not express with it (DBS403)."""
    ok = True
    if a["network_dropout"].value:
        conv.ignored(a["network_dropout"], "networks.oft's create_network never reads the dropout")
    if a["scale_weight_norms"].value:
        conv.ignored(
            a["scale_weight_norms"],
            "OFTNetwork has no apply_max_norm_regularization: train_network.py warns and turns it off",
        )
    rate = a["unet_lr"] if a["unet_lr"].value is not None else a["learning_rate"]
    if rate.value == 0:
        conv.unsupported(
            rate,
            "networks.oft keeps its one group in the optimizer at rate 0 (networks.lora drops it): not "
            "expressed",
        )
        ok = False
    te_only = a["network_train_text_encoder_only"]
    if te_only.value:
        conv.invalid(
            te_only.key,
            te_only.value,
            te_only.source,
            "OFTNetwork.apply_to asserts apply_unet: networks.oft trains the U-Net alone",
        )
        ok = False
    for key in ("network_weights", "dim_from_weights"):
        if a[key].value:
            conv.unsupported(
                a[key],
                "starting networks.oft from a file (load_state_dict(strict=False) / "
                "create_network_from_weights) is not expressed",
            )
            ok = False
    return ok
