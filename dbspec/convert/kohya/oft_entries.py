"""The network's Diag-OFT / BOFT options beside a LyCORIS preset file's Diag-OFT / BOFT entries on a
network of another algorithm (lycoris-lora 4.1.3's create_network hands its `constraint` to every module
through LycorisNetworkKohya's root kwargs; of the module classes only DiagOFTModule and ButterflyOFTModule
read it)."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

_OFT_KINDS = ("diag-oft", "boft")


def entries_constraint(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """The network's `constraint` on a network of another algorithm whose preset file's Diag-OFT / BOFT
    entries (among `blocks`, the [[adapter.blocks]] / [[adapter.text_encoder_blocks]] lycoris_maps._blocks
    wrote) took it as their blocks' alpha (an entry's own replaces it): recorded as mapped there and popped;
    without such entries left to the caller (ignored, DBS405: no module of the network reads it). On SD
    1.x/2.x / SDXL (network.py) and Flux / SD3 / Chroma (lycoris_flux.py, lycoris_flow_*.py) alike."""
    blocks = [b for b in blocks if b.get("kind") in _OFT_KINDS]
    if not (blocks and "constraint" in kwargs):
        return
    named = ", ".join(f"{b['kind']} block `{b['pattern']}`" for b in blocks[:3])
    why = f"LyCORIS hands it to the preset file's Diag-OFT / BOFT entries' modules (blocks' alpha): {named}"
    item = Legacy(key=f"{args.key} constraint", value=kwargs.pop("constraint"), source=args.source)
    conv.record(item, "mapped", "adapter.blocks.alpha", why)
