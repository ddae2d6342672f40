"""Which network_args kohya's create_network reads: networks/lora.py's, and lycoris-lora 4.1.3's
lycoris/kohya.py, which reads its **kwargs by name (after copying the deprecated names into their new ones)
and hands none of the rest on, so any other key (a typo, a network-level `weight_decompose`) changes nothing.
One rule for every family: SD 1.x / 2.x / SDXL (network.py) and Flux / SD3 (lycoris_flux.py,
lycoris_flow_args.py) report such a key as ignored (DBS405) and refuse only what create_network reads and
dbspec does not express (DBS403)."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

# networks/lora.py's create_network (kohya's LoRA on SD 1.x / 2.x / SDXL)
LORA_READS = {
    "conv_dim",
    "conv_alpha",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
    "rank_dropout",
    "module_dropout",
    "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
}
# lycoris/kohya.py's create_network, every algo (the algo-bound ones: KIND_ONLY)
LYCORIS_READS = {
    "algo",
    "conv_dim",
    "conv_alpha",
    "dropout",
    "rank_dropout",
    "module_dropout",
    "use_scalar",
    "train_norm",
    "dora_wd",
    "wd_on_output",
    "bypass_mode",
    "rs_lora",
    "preset",
    "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
}
# LyCORIS arguments that act only for some algos (block_size: DyLoRA; constraint and its deprecated name
# constrain, rescaled: Diag-OFT / BOFT; use_tucker and its deprecated names: LoCon's / LoHa's / LoKr's
# convolutions, GLoRAModule's test of it never passing; LoKr's factorisation switches) or models
# (train_t5xxl: Flux's T5; train_llm_adapter: Anima's LLMAdapterTransformerBlock, which no model dbspec
# converts has): what reads them, and the dbspec adapter kinds that do. A family's converter handles the key
# where a kind reads it (or where it acts there, as train_t5xxl on Flux) before asking unread_network_arg.
KIND_ONLY: dict[str, tuple[str, tuple[str, ...]]] = {
    "block_size": ("DyLoRA (lycoris/modules/dylora.py)", ("dylora",)),
    **{
        key: ("the k x k convolutions of LoCon, LoHa and LoKr", ("lora", "loha", "lokr"))
        for key in ("use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp")
    },
    "constraint": ("Diag-OFT / BOFT", ("diag-oft", "boft")),
    "constrain": ("Diag-OFT / BOFT", ("diag-oft", "boft")),
    "rescaled": ("Diag-OFT / BOFT", ("diag-oft", "boft")),
    "train_t5xxl": ("Flux's T5 text encoder", ()),
    "train_llm_adapter": ("Anima's LLM adapter blocks", ()),
    # LokrModule's split and switches: create_network hands them every module, the others never read them
    # (beside a preset file's LoKr entries they are those entries' blocks': entry_args.py)
    **{
        key: ("LoKr", ("lokr",))
        for key in ("factor", "decompose_both", "full_matrix", "unbalanced_factorization")
    },
}
# a key LyCORIS reads only in a preset file's entries (lycoris/config.py), whose network-level switch is named
# otherwise
_ENTRY_NAMES = {"weight_decompose": "dora_wd"}


def unread_network_arg(key: str, kind: str, algo: str, module: str) -> str | None:
    """Why `module`'s create_network never reads network_args' `key` with dbspec's adapter kind `kind` (the
    user's algo `algo`), or None when it reads it (a read key dbspec has not mapped by now is refused)."""
    lycoris = module == "lycoris.kohya"
    if lycoris and key in KIND_ONLY:
        what, kinds = KIND_ONLY[key]
        return None if kind in kinds else f"LyCORIS reads it for {what} only, not algo={algo}"
    if key in (LYCORIS_READS if lycoris else LORA_READS):
        return None
    hint = ""
    if lycoris and key in _ENTRY_NAMES:
        hint = f"; its network-wide switch is {_ENTRY_NAMES[key]}, {key} a preset file entry's key"
    return f"{module}'s create_network does not read it (it ignores arguments it does not know{hint})"


# LyCORIS's older name of constraint (lycoris/wrapper.py deprecated_arg_dict)
_OLD_CONSTRAINT = "constrain"


def constraint_key(kwargs: dict[str, str]) -> str:
    """The network_args key whose value lycoris-lora 4.1.3's create_network reads as `constraint`: its first
    loop copies each deprecated name's value into the new one (`kwargs["constraint"] = kwargs["constrain"]`)
    before `float(kwargs.get("constraint", None) or 0)`, so a given `constrain` is read, else `constraint`."""
    return _OLD_CONSTRAINT if _OLD_CONSTRAINT in kwargs else "constraint"


def shadowed_constraint(kwargs: dict[str, str], args: Legacy, conv: Conversion) -> None:
    """`constraint` beside its deprecated name `constrain`: create_network copies constrain's value over it
    whatever their order, so it is never read (DBS405; taken out of `kwargs`, constraint_key then names
    `constrain` for every reader)."""
    if _OLD_CONSTRAINT in kwargs and "constraint" in kwargs:
        item = Legacy(key=f"{args.key} constraint", value=kwargs.pop("constraint"), source=args.source)
        why = (
            f"LyCORIS's create_network copies the deprecated `constrain` ({kwargs[_OLD_CONSTRAINT]}) over it"
        )
        conv.ignored(item, why)
