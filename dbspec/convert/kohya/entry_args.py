"""A network's arguments only some LyCORIS module classes read, beside a preset file's entries of those
algorithms on a network of another: lycoris-lora 4.1.3's create_single_module hands the root kwargs to every
module whose entry does not give its own, so they are those entries' blocks' (lycoris_maps._blocks writes
them): the network's `constraint` / `rescaled` for Diag-OFT / BOFT entries (oft_entries.py), its `factor`,
`decompose_both`, `unbalanced_factorization` and `full_matrix` for LoKr entries (LokrModule alone reads
them), a full / IA^3 / DyLoRA / T-LoRA network's `use_scalar` and `rs_lora` for LoCon / LoHa / LoKr / GLoRA
entries."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.plan.model import BYPASS_DROPOUT_KINDS

LOKR_ARGS = ("factor", "decompose_both", "unbalanced_factorization", "full_matrix")


def take_entry_args(
    kwargs: dict[str, str],
    blocks,
    kinds: tuple[str, ...],
    keys: dict[str, tuple[str, str]],
    what: str,
    args: Legacy,
    conv: Conversion,
) -> None:
    """Each network_args key of `keys` (-> the spec path it maps to, the blocks' field named in the note)
    beside entries of `kinds` (among `blocks`, the [[adapter.blocks]] / [[adapter.text_encoder_blocks]]
    lycoris_maps._blocks wrote, `what` naming their algorithms): recorded as mapped there and popped;
    without such entries left to the caller. On SD 1.x/2.x / SDXL (network.py) and Flux / SD3 / Chroma
    (lycoris_flux.py, lycoris_flow_*.py) alike."""
    entries = [b for b in blocks if b.get("kind") in kinds]
    if not entries:
        return
    named = ", ".join(f"{b['kind']} block `{b['pattern']}`" for b in entries[:3])
    for key, (target, field) in keys.items():
        if key in kwargs:
            item = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
            why = f"LyCORIS hands it to the preset file's {what} entries' modules ({field}): {named}"
            conv.record(item, "mapped", target, why)


def entries_lokr_args(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """The network's LoKr split and switches beside LoKr entries (lycoris_maps._network_lokr; was DBS403)."""
    keys = {key: (f"adapter.blocks.{key}", "their blocks'") for key in LOKR_ARGS}
    take_entry_args(kwargs, blocks, ("lokr",), keys, "LoKr", args, conv)


def entries_scalar_rs_lora(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """A full / IA^3 / DyLoRA / T-LoRA network's use_scalar and rs_lora (its own modules never read them)
    beside LoCon / LoHa / LoKr / GLoRA entries: their blocks' `scalar` (lycoris_maps._scalar_against,
    _blocks; was DBS403, a spec's DBS578), and their alpha x sqrt(dim) and a LoKr block's
    `rank_stabilized` (lycoris_maps._blocks; was DBS403)."""
    keys = {
        "use_scalar": ("adapter.blocks.scalar", "their blocks' `scalar`"),
        "rs_lora": ("adapter.blocks.alpha", "their blocks' alpha x sqrt(rank), LoKr's `rank_stabilized`"),
    }
    kinds = ("lora", "loha", "lokr", "glora")
    take_entry_args(kwargs, blocks, kinds, keys, "LoCon / LoHa / LoKr / GLoRA", args, conv)


def entries_block_size(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """A T-LoRA network's block_size (TLoraModule never reads it) beside DyLoRA entries: their blocks' `unit`
    where the entry gives none (lycoris_maps._blocks; was DBS403)."""
    keys = {"block_size": ("adapter.blocks.unit", "their blocks' `unit`")}
    take_entry_args(kwargs, blocks, ("dylora",), keys, "DyLoRA", args, conv)


def host_bypass_dropout(
    kwargs: dict[str, str],
    put: dict[str, Any],
    bypass: bool,
    args: Legacy,
    conv: Conversion,
    network_dropout: Legacy | None = None,
) -> bool:
    """An IA^3 / DyLoRA network's `dropout` (network_args', else --network_dropout, which train_network.py
    hands on), which IA3Module and DyLoraModule never read, in bypass_mode beside a preset file's LoCon /
    LoHa / LoKr / GLoRA / T-LoRA entries, whose bypass forward drops their update by it (was DBS403): the
    adapter's `dropout` (compiler rules.host_bypass_inert: their blocks' output_dropout; 0: inert). True when
    taken."""
    blocks = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
    if not bypass or not {b.get("kind") for b in blocks} & set(BYPASS_DROPOUT_KINDS):
        return False
    if "dropout" in kwargs:
        legacy = Legacy(key=f"{args.key} dropout", value=kwargs.pop("dropout"), source=args.source)
    elif network_dropout is not None and network_dropout.value:
        legacy = network_dropout
    else:
        return False
    rate = float(legacy.value or 0)
    if not 0 <= rate <= 1:  # nn.Dropout raises
        conv.invalid(legacy.key, legacy.value, legacy.source, f"torch's Dropout raises for p = {rate:g}")
        return True
    if rate:
        put["dropout"] = rate
        why = "the preset file's LoCon / LoHa / LoKr / GLoRA / T-LoRA entries' bypass forward drops by it"
        conv.record(legacy, "mapped", "adapter.dropout", why)
    else:
        conv.inert(legacy, "0 is off")
    return True
