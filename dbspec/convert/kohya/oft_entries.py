"""LyCORIS's OFTs beside other algorithms in one preset file: the network's `constraint` and `rescaled`
beside Diag-OFT / BOFT entries on a network of another algorithm (lycoris-lora 4.1.3's create_network hands
them to every module through LycorisNetworkKohya's root kwargs; of the module classes only DiagOFTModule and
ButterflyOFTModule read them), and a Diag-OFT or BOFT network's LoCon / LoHa / LoKr / T-LoRA / full /
IA^3 / GLoRA entries (converted as those entries' network)."""

from __future__ import annotations

from dataclasses import replace

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.entry_args import take_entry_args
from dbspec.convert.kohya.network_reads import constraint_key

_OFT_KINDS = ("diag-oft", "boft")
_OFT_NAMES = "Diag-OFT / BOFT"


def entries_constraint(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """The network's `constraint` (its deprecated name `constrain` where given) beside Diag-OFT / BOFT
    entries, which took it as their blocks' alpha (an entry's own replaces it): entry_args.take_entry_args;
    without such entries left to the caller (ignored, DBS405: no module of the network reads it)."""
    keys = {constraint_key(kwargs): ("adapter.blocks.alpha", "blocks' alpha")}
    take_entry_args(kwargs, blocks, _OFT_KINDS, keys, _OFT_NAMES, args, conv)


def entries_rescaled(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> None:
    """The network's `rescaled` beside Diag-OFT / BOFT entries, which took it as their blocks' `rescaled`
    (create_network str_bools it, create_single_module hands it every module whose entry gives none of its
    own, and only DiagOFTModule and ButterflyOFTModule read it: `if rescaled`, a trained scale per output row
    from 1; lycoris_maps._blocks writes the blocks' "on"): entry_args.take_entry_args."""
    keys = {"rescaled": ("adapter.blocks.rescaled", "blocks' rescaled")}
    take_entry_args(kwargs, blocks, _OFT_KINDS, keys, _OFT_NAMES, args, conv)


# the algorithms a Diag-OFT / BOFT network's entries may give (its layers then the entries' network's OFT
# entries): the first present is the adapter's kind
_HOSTS = ("lora", "locon", "loha", "lokr", "tlora", "full", "ia3", "glora", "dylora", "diag-oft")


def oft_network_host(algo: str, found) -> tuple[str, object] | None:
    """A Diag-OFT or BOFT network whose preset file gives some layers LoCon / LoHa / LoKr / T-LoRA / full /
    IA^3 / GLoRA / DyLoRA (was DBS403: an OFT adapter's [[adapter.blocks]] hold a block size, not another
    kind's rank):
    (the entries' algorithm, the file's Targets with the network's own layers as entries of that network),
    else None. lycoris-lora 4.1.3's network algo only names the algorithm of the layers no map entry sets
    (create_modules's `algo = network_module`, LycorisNetworkKohya never reading it otherwise), and
    create_network hands every module the same root kwargs whatever it is, so algo=boft (or diag-oft) with
    LoCon entries builds what algo=locon builds with each of those BOFT (Diag-OFT) layers an entry of algo =
    "boft" ("diag-oft") at the network's dim, alpha and options: converted as that network (its adapter of the
    entries' kind, the OFT layers blocks of kind "boft" / "diag-oft"): network.py on SD 1.x/2.x / SDXL
    (tests/runtime/test_lycoris_boft_network_entries.py, test_lycoris_diag_oft_network_entries.py),
    lycoris_flow_file.py on Flux / SD3 / Chroma (test_lycoris_flow_mixed_rs_lora_boft.py,
    test_lycoris_flow_oft_network_entries.py); T-LoRA entries alike
    (test_lycoris_oft_network_tlora_entries.py), full / IA^3 / GLoRA entries too
    (test_lycoris_oft_network_whole_entries.py), DyLoRA entries (test_lycoris_oft_network_dylora_entries.py;
    the network's block_size theirs)."""
    if algo not in _OFT_KINDS:
        return None
    layers = [*found.unet.values(), *found.text.values()]
    given = {layer.algo.lower() for layer in layers if layer.source}
    # (a Diag-OFT network's BOFT entries: its own adapter's boft blocks, lycoris_maps._oft_blocks; a BOFT
    # network's Diag-OFT entries: a Diag-OFT adapter whose own layers are boft blocks)
    host = next((name for name in _HOSTS if name in given and name != algo), None)
    if host is None:
        return None
    source = f"network algo={algo}"  # the network's own layers: an entry's name in notes and messages

    def moved(table: dict) -> dict:
        return {
            path: replace(layer, source=source) if not layer.source and layer.algo == algo else layer
            for path, layer in table.items()
        }

    return host, found._replace(unet=moved(found.unet), text=moved(found.text))
