"""lycoris.kohya `algo=full` / `algo=ia3` networks on Flux, SD3 and Chroma whose preset file's
`module_algo_map` / `name_algo_map` entries give some layers another algorithm (LoCon, LoHa, LoKr, Diag-OFT,
BOFT, GLoRA, DyLoRA; issue 12, was DBS403).

lycoris-lora 4.1.3's create_network builds each map entry's module on kohya's Linear, one per fused Linear
(q/k/v, linear1), as beside any other network; the network's FullModule / IA3Module take the rest. dbspec's
form: the full / IA^3 adapter's `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` of the entries'
`kind` at their rank and alpha (spec ScaleBlock / TextEncoderBlock, lycoris_maps._other_kind_blocks), with
`fused_projections` so that each kind's fused Linear is one module of that kind (runtime/mixed_kinds.py, as
beside a LoCon, GLoRA or DyLoRA network on these families). The network's `dora_wd` reaches the entries' LoCon
/ LoHa / LoKr modules alone (their blocks' `dora`); its `rank_dropout`, which those entries draw too, is the
adapter's (entries_rank_dropout; beside LoKr entries DBS402, network.lokr_entries_rank_dropout)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.network import _str_bool, rank_dropout_readers


def kind_blocks(blocks, text_blocks) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The blocks of another kind (a map entry's algorithm) among a full / IA^3 network's, and an IA^3
    network's own entries' blocks with their own bypass_mode or train_on_input (lycoris_maps._own_ia3: a
    `bypass`, an `on_input` (which the compiler refuses on these families, DBS618), no kind; the leading
    rank-0 blocks are its `exclude` patterns, lycoris_flux._full_excluded)."""

    def kept(block) -> bool:
        return "kind" in block or "bypass" in block or "on_input" in block

    return [b for b in blocks if kept(b)], [b for b in text_blocks if kept(b)]


def put_kind_blocks(conv: Conversion, module: Legacy, blocks, text_blocks) -> bool:
    """Writes the blocks of another kind (and an IA^3 network's own entries' with their own bypass_mode)
    into [[adapter.blocks]] / [[adapter.text_encoder_blocks]], each commented with why; True when some block
    is of another kind (the adapter needs `fused_projections`)."""
    unet, text = kind_blocks(blocks, text_blocks)
    for table, found in (("blocks", unet), ("text_encoder_blocks", text)):
        for index, block in enumerate(dict(b) for b in found):
            note = conv.comment(module, block.pop("_why"))
            for key, value in block.items():
                conv.put(("adapter", table, index, key), value, note)
    return any("kind" in b for b in (*unet, *text))


FUSED_WHY = (
    "one LyCORIS module per fused Linear: the preset file's entries of other algorithms on kohya's fused "
    "q/k/v and linear1 (each kind's parts tied, runtime/mixed_kinds.py)"
)


def entries_rank_dropout(kwargs: dict[str, str], file, args: Legacy, conv: Conversion, algo: str) -> bool:
    """The network's rank_dropout on a full / IA^3 network whose preset file gives some layers LoCon, LoHa,
    Diag-OFT or full modules (which draw it; FullModule draws it too, IA3Module never): the adapter's
    rank_dropout (was DBS403), each kind's one module per fused Linear drawing its mask as lycoris-lora
    4.1.3 does (compiler rules.lycoris_row_masks, runtime/mixed_kinds.py), an entry in its own bypass_mode
    none. Where LoKr entries draw it kohya stops (their CPU mask; DBS402, lycoris_flux.py). True when
    refused."""
    if algo not in ("full", "ia3") or not float(kwargs.get("rank_dropout") or 0):
        return False
    return map_entries_rank_dropout(kwargs, file, args, conv, algo)


def map_entries_rank_dropout(kwargs, file, args: Legacy, conv: Conversion, algo: str) -> bool:
    """The network's rank_dropout where the preset file's entries read it and the network's own modules
    draw it alike or never: the adapter's `rank_dropout`, entries in their own bypass_mode (Diag-OFT, BOFT,
    DyLoRA, IA^3: none read it there) drawing none (was DBS403); beside LoKr entries kohya stops first
    (network.lokr_entries_rank_dropout, DBS402) but in the network's bypass_mode, where LokrModule draws
    none (a T-LoRA network's: lycoris_maps._tlora_bypass_inert). True when refused."""
    blocks = (*file.blocks, *file.text_blocks)
    bypass = _str_bool(kwargs.get("bypass_mode", "false"))
    readers = rank_dropout_readers(blocks, algo, bypass)
    if not readers:
        return False
    if "lokr" in readers:  # (lycoris_flux.py refuses it first: DBS402)
        return refuse_entries_rank_dropout(kwargs, file, args, conv, algo)
    legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
    note = (
        f"LyCORIS hands every module the rate: the preset file's {' / '.join(readers)} entries draw it as "
        f"their modules do, each fused Linear one module's mask its parts share; the {algo} layers "
        + ("FullModule's mask" if algo == "full" else "none (never read outside bypass_mode)")
    )
    conv.mapped(legacy, ("adapter", "rank_dropout"), float(legacy.value), note)
    return False


def refuse_entries_rank_dropout(
    kwargs, file, args: Legacy, conv: Conversion, algo: str, also: str = ""
) -> bool:
    """DBS403 for the network's rank_dropout where the preset file's entries of other algorithms read it
    (LyCORIS hands every module the network's rank_dropout); `also` names what else would draw it. True when
    refused."""
    readers = rank_dropout_readers((*file.blocks, *file.text_blocks), algo)
    if not readers:
        return False
    conv.unsupported(
        Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source),
        f"the preset file's {' / '.join(readers)} entries on an algo={algo} network draw it (LyCORIS hands "
        "every module the network's rank_dropout): dbspec draws no rank dropout on [[adapter.blocks]] of "
        f"another kind than the adapter's{also}",
    )
    return True
