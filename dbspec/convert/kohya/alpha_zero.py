"""kohya's and LyCORIS's low-rank modules read an alpha of 0 as their rank: networks/lora.py's LoRAModule
(which networks.lora_fa's, lora_flux's and lora_sd3's copy), networks/dylora.py's DyLoRAModule and
lycoris-lora 4.1.3's LoConModule, LohaModule, LokrModule, GLoRAModule and DyLoraModule each start with `alpha
= lora_dim if alpha is None or alpha == 0 else alpha`, so such a module trains at scale 1 (LyCORIS's rs_lora:
lora_dim / sqrt(lora_dim), which network.py already folds into the alpha it writes) and saves its rank as its
alpha. Each module does it with its own dim: a kohya block (`block_dims`, `conv_block_dims`), a Flux / SD3
per-type or `network_reg_dims` rank or a LyCORIS preset entry at alpha 0 takes that block's rank, not the
network's.

dbspec's `adapter.alpha` must be above 0 and its `conv_alpha` 0 scales the convolutions to nothing (DBS260),
as a block's alpha 0 does: the converted alphas of 0 become their own rank, scale 1. LyCORIS's Diag-OFT and
BOFT read a block's alpha as their constraint (0: none), and full / IA^3 read none: those stay as converted.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion
from dbspec.spec.paths import KeyPath

# adapter and block kinds whose modules take alpha 0 as their rank
RANK_KINDS = frozenset({"lora", "loha", "lokr", "glora", "dylora"})
_TABLES = (("adapter", "blocks"), ("adapter", "text_encoder_blocks"))
_RANK_OF = {"alpha": "rank", "conv_alpha": "conv_rank"}
# conv.facts key: the alpha paths converted from 0 to their rank (LyCORIS's DyLoraModule then holds the int
# lora_dim in its alpha buffer, so a --network_weights file's alpha loads truncated: dylora.py)
ZEROED = "alphas_zeroed"


def zero_alphas_to_ranks(conv: Conversion, network: str) -> None:
    """Every converted alpha 0 (the adapter's `alpha` / `conv_alpha`, a block's) of a module `network` builds
    becomes that module's rank, with a comment saying why; call it once the network's alphas and blocks are
    put and before the `--network_weights` checks compare a file's alphas with them."""
    values = conv.values
    kind = values.get(("adapter", "kind"), ("lora", ""))[0]
    why = f"alpha 0: {network}'s modules take their rank (scale 1)"
    for path, (value, comment) in list(values.items()):
        rank_path = _rank_path(path)
        if rank_path is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value:
            continue
        own = values.get((*path[:3], "kind"), ("adapter", ""))[0] if len(path) == 4 else "adapter"
        rank = values.get(rank_path, (0, ""))[0]
        if (kind if own == "adapter" else own) in RANK_KINDS and rank:
            values[path] = (float(rank), f"{comment}; {why}")
            conv.facts.setdefault(ZEROED, set()).add(path)  # an int buffer in LyCORIS's DyLoraModule


def _rank_path(path: KeyPath) -> KeyPath | None:
    """The rank key of an alpha key (`adapter.alpha` -> `adapter.rank`, a block's alike), else None."""
    if path in (("adapter", "alpha"), ("adapter", "conv_alpha")):
        return ("adapter", _RANK_OF[path[1]])
    if len(path) == 4 and path[:2] in _TABLES and path[3] in _RANK_OF:
        return (*path[:3], _RANK_OF[path[3]])
    return None
