"""A LyCORIS preset map entry's own module options (`module_algo_map` / `name_algo_map` keys other than
`algo`, `dim`, `alpha`), each as lycoris-lora 4.1.3's module classes read it for the layers the entry reaches.

create_single_module hands an entry's keys to the module class raw (no str_bool: a string such as "false" is
true), over the network's. For each option whose value differs from the network's this module says whether a
block expresses it (`rs_lora` on LoRA/LoCon, LoHa and LoKr: their module classes scale by alpha / sqrt(dim),
the plain scale of alpha x sqrt(dim), which the block's alpha carries, and LokrModule a layer whose two
factors are full by sqrt(dim) in place of 1, the LoKr block's `rank_stabilized`; `use_scalar` on those: the
block's `scalar`; `weight_decompose` / `wd_on_out` on those: the block's `dora` / `dora_axis`;
`rank_dropout_scale` on LoRA/LoCon, LoHa and LoKr with the network's rank dropout (LoKr outside bypass_mode):
the block's `rank_dropout_scale`; `use_tucker` on LoRA/LoCon and LoHa k x k convolutions: the block's
`tucker`), whether it changes nothing on that layer (inert, with why), or neither (dbspec does not express it:
the caller's PresetError names it)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.kohya.lycoris_file import PresetError

# the algorithms whose rs_lora a block carries: its alpha x sqrt(dim) (LoKr's full layers: rank_stabilized)
_BLOCK_ALPHA = ("lora", "loha", "lokr")
# the algorithms whose module classes scale by alpha / sqrt(dim) with the network's rs_lora (GLoRAModule too)
_RS_READERS = (*_BLOCK_ALPHA, "glora")
# the algorithms whose blocks carry LyCORIS's use_scalar (a block's `scalar`)
_BLOCK_SCALAR = ("lora", "loha", "lokr")
# and GLoRA's beside another network's layers (one setting for all its GLoRA blocks: lycoris_maps._blocks)
_SCALAR_ENTRIES = (*_BLOCK_SCALAR, "glora")


def own_tucker(algo: str, options: tuple[tuple[str, Any], ...], network: bool, convs: bool) -> dict[str, str]:
    """{"tucker": "on" / "off"} of a LoRA/LoCon or LoHa entry whose use_tucker (LoConModule's, LohaModule's
    truth test) differs from the network's and whose layers include k x k convolutions (`convs`: the only
    ones it shapes)."""
    own = dict(options)
    if (
        algo not in ("lora", "loha")
        or not convs
        or "use_tucker" not in own
        or bool(own["use_tucker"]) == network
    ):
        return {}
    return {"tucker": "on" if own["use_tucker"] else "off"}


def own_scalar(algo: str, options: tuple[tuple[str, Any], ...], network: bool) -> dict[str, str]:
    """{"scalar": "on" / "off"} of a layer of `algo` whose entry gives use_scalar a truth other than the
    network's (LoConModule's, LohaModule's, LokrModule's, GLoRAModule's `if use_scalar`), else {}."""
    own = dict(options)
    if algo not in _SCALAR_ENTRIES or "use_scalar" not in own or bool(own["use_scalar"]) == network:
        return {}
    return {"scalar": "on" if own["use_scalar"] else "off"}


def own_dora(algo: str, options: tuple[tuple[str, Any], ...], network: dict[str, Any]) -> dict[str, str]:
    """{"dora": "on" / "off"} of a LoRA/LoCon, LoHa or LoKr layer whose entry gives weight_decompose a truth
    other than the network's dora_wd (LoConModule's, LohaModule's, LokrModule's `self.wd = weight_decompose`,
    tested for truth: a `dora_scale` at the base weight's norms, on the network's wd_on_out axis), else {}."""
    own = dict(options)
    if algo not in _BLOCK_SCALAR or "weight_decompose" not in own:
        return {}
    if bool(own["weight_decompose"]) == network["weight_decompose"]:
        return {}
    return {"dora": "on" if own["weight_decompose"] else "off"}


def own_dora_axis(algo: str, options: tuple[tuple[str, Any], ...], network: dict[str, Any]) -> dict[str, str]:
    """{"dora_axis": "output" / "input"} of a LoRA/LoCon, LoHa or LoKr layer that decomposes (its entry's
    weight_decompose, else the network's dora_wd) and whose entry gives wd_on_out a truth other than the
    network's wd_on_output (LoConModule's, LohaModule's, LokrModule's `if self.wd_on_out`: a dora_scale per
    output row, else per input column), else {}."""
    own = dict(options)
    if algo not in _BLOCK_SCALAR or "wd_on_out" not in own or not decomposed(own, network):
        return {}
    if bool(own["wd_on_out"]) == network["wd_on_out"]:
        return {}
    return {"dora_axis": "output" if own["wd_on_out"] else "input"}


def own_rank_dropout_scale(algo: str, options: tuple[tuple[str, Any], ...], network: dict) -> dict[str, str]:
    """{"rank_dropout_scale": "on" / "off"} of a LoRA/LoCon, LoHa or LoKr layer whose entry gives
    rank_dropout_scale a truth other than the network's (LoConModule's, LohaModule's, LokrModule's `if
    self.rank_dropout_scale`: the kept rank-dropout rows, or LoCon's bypass ranks, divided by their share),
    where the layer draws them (_rescales), else {}."""
    own = dict(options)
    if not _rescales(algo, own, network) or bool(own["rank_dropout_scale"]) == network["rank_dropout_scale"]:
        return {}
    return {"rank_dropout_scale": "on" if own["rank_dropout_scale"] else "off"}


def _rescales(algo: str, own: dict[str, Any], network: dict) -> bool:
    """A block expresses the entry's rank_dropout_scale on a layer of `algo` drawing rank dropout (the
    network's rank_dropout above 0): LoRA/LoCon in either forward (LoConModule's make_weight row mask and
    bypass rank mask, runtime/lora_dropout.py, fused_dropout.py), LoHa in either (LohaModule's get_weight,
    runtime/loha_weight.py, fused_lycoris_dropout.py), LoKr outside bypass_mode (peft's LoKr per layer; in
    bypass_mode LokrModule draws none: _inert). An entry's own bypass_mode other than the network's is not
    expressed (split_options)."""
    if "rank_dropout_scale" not in own or not network["rank_dropout"]:
        return False
    return algo in ("lora", "loha") or (algo == "lokr" and not network["bypass_mode"])


def own_rank_stabilized(
    algo: str, options: tuple[tuple[str, Any], ...], network: bool, planned: bool
) -> dict[str, str]:
    """{"rank_stabilized": "on" / "off"} of a LoKr layer whose rs_lora (its entry's, tested for truth, else
    the network's: LokrModule's `if self.rs_lora`, a layer with both factors full scaling by dim / sqrt(dim))
    is not what its block plans without one (`planned`: a lokr adapter's own blocks the adapter's
    rank_stabilized, the network's rs_lora; a block of kind lokr on another kind's adapter off), else {}."""
    if algo != "lokr" or own_rs_lora(algo, options, network) == planned:
        return {}
    return {"rank_stabilized": "on" if own_rs_lora(algo, options, network) else "off"}


def mixed_rank_stabilized(blocks: list[dict[str, Any]], rank_stabilized: bool = False) -> None:
    """PresetError for a LoKr entry's own rs_lora (a block's `rank_stabilized`, unless `rank_stabilized`: a
    LoKr network's own blocks, which its LoKr pass builds) or a LoHa / LoKr entry's own rank_dropout_scale in
    a network of several algorithms (blocks with a `kind`: DBS578, each kind built with the adapter's
    options)."""
    keys = ("rank_dropout_scale",) if rank_stabilized else ("rank_stabilized", "rank_dropout_scale")
    own = next((b for b in blocks if any(key in b for key in keys)), None)
    if own is not None and any("kind" in b for b in blocks):
        key = "rank_dropout_scale" if "rank_dropout_scale" in own else "rs_lora"
        raise PresetError(
            f"`{own['_why'].split('`')[1]}` gives its layers their own {key} in a network of several "
            f"algorithms: dbspec builds each algorithm's layers there with the network's {key} (DBS578)",
            False,
        )


def own_rs_lora(algo: str, options: tuple[tuple[str, Any], ...], network: bool) -> bool:
    """Whether a layer of `algo` (lycoris' class name: "lora" for LoRA/LoCon) trains with rs_lora: its entry's
    value tested for truth (LoConModule's / LohaModule's / LokrModule's / GLoRAModule's `if self.rs_lora`),
    else the network's where its class reads it; DyLoraModule, TLoraModule and the classes
    without an alpha (full, IA^3, Diag-OFT, BOFT) never read it."""
    own = dict(options)
    if algo in _RS_READERS and "rs_lora" in own:  # (GLoRAModule's `if self.rs_lora` too)
        return bool(own["rs_lora"])
    return network and algo in _RS_READERS


def decomposed(options: dict[str, Any], network: dict[str, Any]) -> bool:
    """The layer's weight_decompose: its entry's (truth), else the network's dora_wd."""
    return bool(options["weight_decompose"]) if "weight_decompose" in options else network["weight_decompose"]


def split_options(
    algo: str,
    kind: str,
    options: tuple[tuple[str, Any], ...],
    read: list[tuple[str, Any]],
    network: dict,
    source: str = "",
) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """(the entry options of `read` dbspec does not express, (key, why) of those that change nothing) for one
    layer of `algo` (a map entry's `options`, `read`: those its class reads with a value other than the
    network's; `kind`: the layer's "linear", "conv1" (1x1) or "conv" (k x k); `network`: the values
    create_network hands every module, with the `dropout` and `rank_dropout` rates; `source`: the entry).
    The rest a block expresses; PresetError (DBS402) for bypass_mode with weight decomposition."""
    own = dict(options)
    _bypass_decomposed(algo, own, network, source)
    rest: list[tuple[str, Any]] = []
    inert: list[tuple[str, str]] = []
    for key, value in read:
        why = inert_option(algo, kind, key, own, network)
        if why:
            inert.append((key, why))
        elif not _block_keeps(algo, key) and not (
            key == "rank_dropout_scale" and _rescales(algo, own, network)
        ):
            rest.append((key, value))
    return rest, inert


def _bypass_decomposed(algo: str, own: dict[str, Any], network: dict[str, Any], source: str) -> None:
    """PresetError (kohya's run differs from its file: DBS402) for layers an entry gives bypass_mode and
    weight decomposition together, one of them its own: LoConModule's, LohaModule's and LokrModule's forward
    take the bypass path before the decomposition, so dora_scale never trains, yet the saved file carries it
    and its loaders decompose with it (the network's own pair: network.py's BYPASS_DORA)."""
    if algo not in ("lora", "loha", "lokr") or not ({"bypass_mode", "weight_decompose"} & own.keys()):
        return
    bypass = bool(own["bypass_mode"]) if "bypass_mode" in own else network["bypass_mode"]
    if bypass and decomposed(own, network) and not (network["bypass_mode"] and network["weight_decompose"]):
        raise PresetError(
            f"`{source}` gives its layers bypass_mode and weight_decompose (one of them its own): with "
            "bypass_mode LyCORIS's forward never applies the weight decomposition, so dora_scale gets no "
            "gradient, yet the saved file carries it and its loaders decompose with it: the file does not "
            "compute what kohya trained",
            True,
        )


def _block_keeps(algo: str, key: str) -> bool:
    """A block expresses the entry's `key` on a layer of `algo` (its alpha, scalar, or LoCon's tucker on its
    k x k convolutions: inert_option already took its other layers)."""
    return (
        (key == "rs_lora" and algo in _RS_READERS)  # (GLoRA's: its block's alpha too)
        or (key == "use_scalar" and algo in _SCALAR_ENTRIES)
        or (key == "weight_decompose" and algo in _BLOCK_SCALAR)  # the block's `dora`
        or (key == "wd_on_out" and algo in _BLOCK_SCALAR)  # the block's `dora_axis` (decomposed: _inert)
        or (key == "use_tucker" and algo in ("lora", "loha"))
    )


def inert_option(algo: str, kind: str, key: str, own: dict[str, Any], network: dict[str, Any]) -> str:
    """Why the entry's `key` changes nothing on a layer (module classes of lycoris-lora 4.1.3), else ""."""
    if key == "use_tucker" and algo in ("lora", "loha", "lokr") and kind != "conv":
        return (
            "LoConModule, LohaModule and LokrModule build their Tucker form only on k x k convolutions; the "
            "entry reaches linear or 1x1 layers"
        )
    if key == "wd_on_out" and not decomposed(own, network):
        return "LyCORIS's modules read it only with weight_decompose, off on the entry's layers"
    # FullModule's row mask and GLoRAModule's pairs' masks (its bypass forward) rescale alike; T-LoRA's and
    # GLoRA's bypass forward without a dropout or rank_dropout is their default one (no decomposition)
    quiet = not (network["dropout"] or network["rank_dropout"])
    if key == "rank_dropout_scale" and algo in ("full", "glora") and not network["rank_dropout"]:
        return (
            "LyCORIS's module reads it only when it draws a rank-dropout mask; the network's rank_dropout: 0"
        )
    if key == "bypass_mode" and algo in ("glora", "tlora") and quiet:
        return (
            "its bypass forward computes the default one's update when nothing drops (the network's dropout "
            "and rank_dropout 0)"
        )
    if algo not in ("lora", "loha", "lokr"):
        return ""
    if key == "rank_dropout_scale" and not network["rank_dropout"]:
        return (
            "LyCORIS's modules read it only when they draw a rank-dropout mask; the network's rank_dropout "
            "is 0"
        )
    if key == "rank_dropout_scale" and algo == "lokr" and network["bypass_mode"]:
        return "LokrModule's bypass forward draws no rank-dropout mask"
    if key == "bypass_mode" and not (
        network["dropout"] or network["rank_dropout"] or decomposed(own, network)
    ):
        return (
            "its bypass forward adds ΔW x to W x, the update dbspec's adapters compute on every layer; with "
            "no dropout, rank_dropout or weight_decompose the two forwards are the same"
        )
    return ""
