"""kohya's LoRA scripts at `unet_lr 0` (issue 12): networks.lora, networks.dylora and lycoris.kohya (and
lora_flux / lora_sd3) still build the U-Net's modules (apply_to reads no rate), leave their group out of
the optimizer ("NO LR skipping!") and run the U-Net under grad, as the text encoder trains through it.
`accelerator.clip_grad_norm_(network.get_trainable_params(), max_grad_norm)` counts every module's
gradients, the U-Net's included; optimizer.zero_grad clears only the optimizer's, so the U-Net modules'
gradients (lora_up's are non-zero from step 1) add up step to step and scale the text encoder's under the
clip. A --network_weights file's U-Net modules load into them and are held there: the U-Net predicts
through them.

dbspec's run of that: the denoiser carries the adapter with every module held at `lr_scale 0` (its blocks
at 0 and one block matching every path, `pattern = ""`, at the adapter's rank and alpha): kept out of the
optimizer, gradients computed, counted by the clip and never cleared (runtime/blocks.py, checkpointed by
runtime/optimizer_blocks.py held_gradients), the file loaded into them by adapter.init_weights. Without a
clip and without such a file the held modules change nothing: `train.denoiser = false` is the same run,
cheaper."""

from __future__ import annotations

import attrs

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.spec.model import ADAPTER_VARIANTS, ScaleBlock

Args = dict[str, Legacy]

# the network modules whose U-Net group at rate 0 kohya leaves out of the optimizer, its modules built
# (networks.lora_fa keeps the group in the optimizer at rate 0: rate_zero.py; networks.oft alike)
HELD_MODULES = (
    "networks.lora",
    "networks.dylora",
    "lycoris.kohya",
    "networks.lora_flux",
    "networks.lora_sd3",
)
_SCRIPTS = ("train_network", "sdxl_train_network", "flux_train_network", "sd3_train_network")
# the --network_weights keys of the U-Net's modules (kohya's LoRA prefix; LycorisNetworkKohya's alike)
UNET_PREFIX = "lora_unet_"
HELD_NOTE = (
    "kohya builds the U-Net's modules and leaves their group out of the optimizer: held at lr_scale 0, "
    "their gradients counted by the clip and never cleared"
)
# the catch-all block's fields: a rank-based kind's sizes (LoRA, LoHa, LoKr, DyLoRA, GLoRA) or an OFT's
# block size (Diag-OFT, BOFT: OftBlock's constraint -1 is the adapter's); full's and IA^3's ScaleBlock has
# its pattern alone
_BLOCK_KEYS = ("pattern", "rank", "alpha", "conv_rank", "conv_alpha")
_OFT_KEYS = ("pattern", "block_size")


def held_matters(a: Args, script: str, text_encoder: bool, unet_file: bool) -> bool:
    """Whether kohya's U-Net modules held at unet_lr 0 change the run: a text encoder trains through them
    and max_grad_norm clips their gradients with its, or a --network_weights file's U-Net modules
    (`unet_file`) start them where they change the U-Net's prediction. Not with
    network_train_text_encoder_only (kohya builds no U-Net module)."""
    module = str(a["network_module"].value or "") if "network_module" in a else ""
    if script not in _SCRIPTS or module not in HELD_MODULES or not text_encoder:
        return False
    if "network_train_text_encoder_only" in a and a["network_train_text_encoder_only"].value:
        return False
    return _clips(a) or unet_file


def holds_unet(a: Args, script: str, text_encoder: bool, unet_file: bool, conv: Conversion) -> bool:
    """Whether map_learning_rates converts kohya's U-Net modules at unet_lr 0 held (hold_unet): where they
    matter and the adapter's blocks take an lr_scale (every kind with [[adapter.blocks]], full's and IA^3's
    ScaleBlock too; unheld_difference says what a kind without them, T-LoRA, loses)."""
    return held_matters(a, script, text_encoder, unet_file) and _blocks_hold(conv)


def unheld_difference(unet_lr: Legacy, unet_file: bool, conv: Conversion) -> None:
    """`train.denoiser = false` where kohya's held U-Net modules matter but the adapter has no
    [[adapter.blocks]] to hold them (LyCORIS T-LoRA): a --network_weights file's U-Net modules, which kohya
    predicts through, are dropped (DBS403); fresh ones' gradients count in kohya's clip norm, dbspec's not
    (DBS404)."""
    kind = _kind(conv)
    if unet_file:
        why = (
            f"at unet_lr 0 kohya holds the --network_weights file's U-Net modules and predicts through "
            f"them; dbspec holds a denoiser adapter only by [[adapter.blocks]] lr_scale 0, which a {kind} "
            "adapter does not have, so the file's U-Net modules would be dropped"
        )
        conv.unsupported(unet_lr, why)
        return
    why = (
        "at unet_lr 0 kohya builds the U-Net's modules out of the optimizer and clips their gradients, "
        "added up uncleared, with the text encoder's (max_grad_norm): its clip norm counts them; dbspec's "
        f"denoiser is plain (a {kind} adapter has no [[adapter.blocks]] lr_scale to hold them)"
    )
    conv.differs(unet_lr, why, ("train", "denoiser"), False)


def _clips(a: Args) -> bool:
    clip = a["max_grad_norm"].value
    return bool(clip and float(clip) > 0)


def _kind(conv: Conversion) -> str:
    return conv.values[("adapter", "kind")][0] if ("adapter", "kind") in conv.values else "lora"


def _fields(conv: Conversion) -> dict[str, attrs.Attribute]:
    """The converted adapter kind's spec fields by name."""
    return {f.name: f for f in attrs.fields(ADAPTER_VARIANTS[_kind(conv)])}


def _block_type(conv: Conversion) -> type | None:
    """The attrs class of the converted adapter kind's [[adapter.blocks]] entries, None without them."""
    field = _fields(conv).get("blocks")
    return field.type.__args__[0] if field is not None else None


def _blocks_hold(conv: Conversion) -> bool:
    """Whether the adapter kind's [[adapter.blocks]] take an lr_scale (AdapterBlock's, DyloraBlock's,
    GloraBlock's, OftBlock's); runtime/blocks.py holds every kind's layers, a preset map's blocks of other
    kinds too."""
    block = _block_type(conv)
    return block is not None and "lr_scale" in attrs.fields_dict(block)


def hold_unet(unet_lr: Legacy, conv: Conversion) -> None:
    """The denoiser's adapter held whole: every block written so far at lr_scale 0 (its own lr and group
    dropped: a held block is in no group) and a last block matching every module path at the adapter's
    rank and alpha (conv_rank / conv_alpha alike), held too."""
    why, short = conv.comment(unet_lr, HELD_NOTE), conv.comment(unet_lr)
    indices = sorted({p[2] for p in conv.values if p[:2] == ("adapter", "blocks") and len(p) > 3})
    for index in indices:
        for key in ("lr", "group"):
            conv.values.pop(("adapter", "blocks", index, key), None)
        conv.put(("adapter", "blocks", index, "lr_scale"), 0.0, short)
    last = indices[-1] + 1 if indices else 0
    for key, value in _catch_all(conv).items():
        conv.put(("adapter", "blocks", last, key), value, why if key == "pattern" else short)
    conv.put(("adapter", "blocks", last, "lr_scale"), 0.0, short)
    conv.record(unet_lr, "mapped", "adapter.blocks", HELD_NOTE)


def _catch_all(conv: Conversion) -> dict:
    """The block over every module path at the adapter's sizes as the converted spec gives them (its kind's
    defaults where it leaves them out): rank, alpha and, with convolutions adapted, conv_rank and conv_alpha;
    an OFT's block size (its constraint and rescale the block's defaults, the adapter's)."""
    fields, own = _fields(conv), attrs.fields_dict(_block_type(conv))
    keys = _OFT_KEYS if "block_size" in own else _BLOCK_KEYS
    # a full / IA^3 ScaleBlock: its pattern alone (its sizes are those of its blocks of another `kind`)
    keys = ("pattern",) if _block_type(conv) is ScaleBlock else tuple(k for k in keys if k in own)
    out: dict = {"pattern": ""}
    for key in keys[1:]:
        if ("adapter", key) in conv.values:
            out[key] = conv.values[("adapter", key)][0]
            continue
        default = fields[key].default if key in fields else attrs.NOTHING
        if default is attrs.NOTHING:
            default = 0 if key == "conv_rank" else 1.0
        elif isinstance(default, attrs.Factory):  # GLoRA's alpha: its rank (conv_alpha: conv_rank)
            default = default.factory(_Sizes(out)) if default.takes_self else default.factory()
        out[key] = default
    if not out.get("conv_rank", 1):  # no convolution adapted: the block's conv_rank 0 is the adapter's
        del out["conv_rank"], out["conv_alpha"]
    return out


class _Sizes:
    """The catch-all block's sizes so far as an attrs Factory's `self` reads them."""

    def __init__(self, sizes: dict):
        self.__dict__.update(sizes)
