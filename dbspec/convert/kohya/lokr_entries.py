"""LyCORIS's LoKr entries in a preset file on a network of another algorithm: the network's `factor`,
`decompose_both` and `unbalanced_factorization`, which lycoris-lora 4.1.3's create_single_module hands every
module and LokrModule alone reads, are those entries' blocks' (lycoris_maps._network_lokr writes them)."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

LOKR_ARGS = ("factor", "decompose_both", "unbalanced_factorization")


def entries_lokr_args(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """The network's LoKr split and switches beside LoKr entries (among `blocks`, the [[adapter.blocks]] /
    [[adapter.text_encoder_blocks]] lycoris_maps._blocks wrote, a `kind = "lokr"` block each; was DBS403):
    recorded as mapped there and popped; without such entries left to the caller. On SD 1.x/2.x / SDXL
    (network.py) and Flux / SD3 / Chroma (lycoris_flux.py, lycoris_flow_*.py) alike."""
    lokr = [b for b in blocks if b.get("kind") == "lokr"]
    if not lokr:
        return
    named = ", ".join(f"lokr block `{b['pattern']}`" for b in lokr[:3])
    why = f"LyCORIS hands it to the preset file's LoKr entries' modules (their blocks'): {named}"
    for key in LOKR_ARGS:
        if key in kwargs:
            item = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
            conv.record(item, "mapped", f"adapter.blocks.{key}", why)
