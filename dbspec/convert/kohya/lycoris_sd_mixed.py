"""lycoris.kohya `--dim_from_weights` with a LyCORIS file mixing LoCon (`lora_down` / `lora_up`), LoKr
(`lokr_w1`...), LoHa (`hada_w1_a`...), Diag-OFT / BOFT (`oft_blocks`), GLoRA (`a1.weight`...) and full
(`diff` / `diff_b`) modules,
some LoCon, LoKr or LoHa among them, on SD 1.x/2.x (train_network.py) and SDXL (sdxl_train_network.py).
LyCORIS's create_network_from_weights (lycoris-lora 4.1.3, lycoris/kohya.py) builds each module by its own
keys (get_module), each at the values its make_module_from_state_dict reads off the file (LoConModule:
`lora_dim` the rows of `lora_down`, alpha `float(alpha)`, 0 the dim; LoKr / LoHa: lycoris_sd_factor.py;
Diag-OFT / BOFT / GLoRA: lycoris_sd_rebuilt.py), then `load_weights` loads the file into them.

dbspec's equivalent: a run of several kinds (runtime/mixed_kinds.py). The adapter is of the LoKr modules'
kind when the file has some (lycoris_sd_factor.sd_factor_file's values and blocks for them: a lokr adapter's
own LoKr layers may carry their own split; they may be the text encoders' alone), else of the LoHa
modules', else LoRA; the other modules are
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` with their `kind` at each module's rank and alpha
(an OFT's block-size hint and constraint), placed first so that their patterns (exact among the file's
layers) take their layers; the targets span every module's layer; the run starts from the file
(runtime/mixed_init.py); with full modules at `init_scale` 2 (make_module_from_state_dict copies the diff
into FullModule's weight, apply_to adds W, load_weights' prehook adds the diff again: W + 2 diff). A run of
several kinds decomposes each LoRA / LoHa / LoKr layer as its own kind does: a module's `dora_scale`
(make_module_from_state_dict builds it with weight_decompose, per output row) is the adapter's `dora` where
every module of the adapter's kind holds one, else its block's `dora = "on"` (another kind's block holding
none beside a decomposed adapter: `dora = "off"`); a LoCon's
`lora_mid`, a LoHa's `hada_t1` / `hada_t2` and a LoKr's `lokr_t2` (their module's Tucker form) are their
blocks' `tucker = "on"`; an OFT module's `rescale` is its block's `rescaled = "on"`. Checked
against lycoris-lora in tests/runtime/test_lycoris_mixed_file.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dbspec.convert.kohya.lycoris_file import Row, _suffixes, _text_targets
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.convert.kohya.lycoris_maps import _pattern
from dbspec.convert.kohya.lycoris_sd_factor import _module, sd_factor_file
from dbspec.convert.kohya.lycoris_sd_full import INVALID, diff_dims_error, sd_layers
from dbspec.convert.kohya.lycoris_sd_rebuilt import _glora, _oft
from dbspec.convert.kohya.lycoris_sd_rebuilt import _kind as _oft_kind

# the file algos (lycoris_flow_weights._DETECT) this module maps; LoCon, LoKr or LoHa among them
MIXED_ALGOS = ("locon", "lokr", "loha", "oft", "glora", "full")
_KIND = {"locon": "lora", "lokr": "lokr", "loha": "loha", "glora": "glora", "full": "full"}
_LOCON = ("lora_down.weight", "lora_up.weight")


def is_mixed(modules: dict[str, LycorisModule]) -> bool:
    """The file's modules (NormModules aside) are of several of LoCon, LoKr and LoHa, and of no other."""
    algos = {m.algo for m in modules.values()} - {"norm"}
    return len(algos) > 1 and algos <= set(MIXED_ALGOS) and bool(algos & {"locon", "lokr", "loha"})


def _locon(name: str, m: LycorisModule) -> dict[str, Any] | str:
    """A LoCon module's (rank, alpha) as LoConModule.make_module_from_state_dict builds it; else why not."""
    odd = sorted(k for k in m.shapes if k not in (*_LOCON, "lora_mid.weight", "dora_scale"))
    dora = m.shapes.get("dora_scale")
    up = m.shapes.get("lora_up.weight", ())
    want = (up[0], *[1] * (len(up) - 1)) if up else ()
    if dora is not None and tuple(dora) != want:  # weight_decompose: wd_on_out, one magnitude per output row
        return (
            f"{INVALID}`{name}.dora_scale` has shape {list(dora)}, not LyCORIS's {list(want)} (one magnitude "
            "per output row, make_module_from_state_dict's wd_on_out): load_state_dict raises"
        )
    mid = m.shapes.get("lora_mid.weight")
    if mid is not None and (len(mid) != 4 or len(m.shapes.get("lora_down.weight", ())) != 4):
        return f"{INVALID}`{name}.lora_mid.weight` on a Linear: LoConModule has no Tucker core there"
    if odd:
        return (
            f"`{name}.{odd[0]}` is no tensor LyCORIS's LoConModule reads (load_state_dict(strict=False) "
            "ignores it); dbspec starts only from a file whose every tensor it places"
        )
    if "lora_down.weight" not in m.shapes:
        return f"{INVALID}`{name}` has no `lora_down.weight`: LoConModule's make_module_from_state_dict fails"
    rank = m.shapes["lora_down.weight"][0]
    if m.alpha is None:
        return f"{INVALID}`{name}` has no alpha: make_module_from_state_dict's float(None) raises TypeError"
    if m.alpha < 0:
        return f"`{name}.alpha` is {m.alpha:g}: dbspec's alpha is at least 0"
    # LoConModule: alpha 0 is the dim; a `lora_mid` its Tucker form (make_module_from_state_dict's use_tucker)
    tucker = {"tucker": True} if mid is not None else {}
    return {"rank": rank, "alpha": float(m.alpha or rank), **tucker, "dora": dora is not None}


def _full(name: str, m: LycorisModule, layer: str, path: str) -> dict[str, Any] | str:
    """A full module's block values (its rank only switches the layer on); else why not."""
    odd = sorted(k for k in m.shapes if k not in ("diff", "diff_b"))
    if odd or "diff" not in m.shapes:
        return (
            f"`{name}.{odd[0] if odd else 'diff'}`: a full module of no tensors but `diff` / `diff_b` beside "
            "modules of other kinds; dbspec starts only from a file whose every tensor it places"
        )
    return diff_dims_error(name, m, path, conv=layer == "conv") or {"rank": 1, "alpha": 1.0}


def _values(name: str, m: LycorisModule, layer: str, path: str) -> dict[str, Any] | str:
    """A LoCon / LoHa / Diag-OFT / BOFT / GLoRA module's (kind, rank, alpha, spatial) in a run of several
    kinds (an OFT block's rank its block-size hint, its alpha the constraint); else why not."""
    kind = _KIND.get(m.algo) or _oft_kind(m)
    if m.algo == "full":
        found = _full(name, m, layer, path)
    elif m.algo == "locon":
        found = _locon(name, m)
    elif m.algo == "glora":
        found = _glora(name, m, layer)
    elif m.algo == "oft":
        found = _oft(name, m, kind)
        if isinstance(found, dict):  # a `rescale`: its block's own row rescale (spec block `rescaled`)
            found = {"rank": found["block_size"], "alpha": found["constraint"], "rescaled": found["rescaled"]}
    else:
        found = _module(name, m, layer, path)
        if isinstance(found, dict):
            # a `hada_t1` (k x k convolutions only: _module): LohaModule's Tucker form, its block's own
            tucker = {"tucker": True} if found["options"][4] else {}
            found = {"rank": found["options"][0], "alpha": found["alpha"], **tucker, "dora": found["dora"]}
    if isinstance(found, str):
        return found
    return {"kind": kind, "spatial": layer == "conv", **found}


def _kind_blocks(
    found: dict[str, dict], rows: list[Row], top: tuple[int, float], dora: bool = False
) -> list[dict[str, Any]]:
    """Blocks of their own kind for the other kinds' modules (one per kind, layer shape, rank, alpha and
    weight decomposition), each pattern matching exactly its modules among `rows` (every module's layer of
    the file); `dora`: the adapter's (a LoRA / LoHa block holding no dora_scale then "off")."""
    groups: dict[tuple, set[str]] = {}
    for path, v in found.items():
        key = (v["kind"], v["spatial"], v["rank"], v["alpha"], bool(v.get("rescaled")), bool(v.get("tucker")))
        groups.setdefault((*key, bool(v.get("dora"))), set()).add(path)
    out = []
    for (kind, spatial, rank, alpha, rescaled, tucker, decomposed), paths in groups.items():
        block: dict[str, Any] = {"pattern": _pattern(paths, rows), "kind": kind}
        if spatial:
            block.update(rank=top[0], alpha=top[1], conv_rank=rank, conv_alpha=alpha)
        else:
            block.update(rank=rank, alpha=alpha)
        if rescaled:  # an OFT module's `rescale`: make_module_from_state_dict builds it with rescaled
            block["rescaled"] = "on"
        if tucker:  # a LoCon convolution's `lora_mid` (runtime/locon_tucker.py), a LoHa's `hada_t1`
            block["tucker"] = "on"
        if decomposed != dora and kind in ("lora", "loha"):  # weight_decompose where the adapter's differs
            block["dora"] = "on" if decomposed else "off"
        out.append(block)
    return out


def sd_mixed_file(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict[str, object] | str:
    """[adapter] values (blocks and text_encoder_blocks as lists of tables) for the network
    create_network_from_weights builds from a file of LoCon, LoKr, LoHa, OFT and GLoRA modules on `family`
    (SD 1.x/2.x or SDXL); else why not ("invalid:..." where kohya fails, DBS402; otherwise DBS403)."""
    layers = sd_layers(family)
    unknown = layers.unknown(modules)
    if unknown:
        return unknown
    algos = {m.algo for m in modules.values()}
    own = "lokr" if "lokr" in algos else "loha" if "loha" in algos else "locon"
    if own == "locon":  # a LoRA adapter: its LoCon modules blocks of kind lora (the adapter's) too
        found = _locon_adapter(modules, layers)
    else:
        mine = {n: m for n, m in modules.items() if m.algo == own}
        found = sd_factor_file(mine, family, unet_only, beside=len(mine) < len(modules))
    if isinstance(found, str):
        return found
    # their Tucker form (lokr_t2 / hada_t1) is their blocks' own `tucker` (sd_factor_file's `beside`), their
    # dora_scale the adapter's `dora` (every one of them holds one) or their blocks' own
    dora = bool(found.get("dora"))
    split = _split(modules, layers, own, unet_only)
    if isinstance(split, str):
        return split
    own_unet, own_text, unet, text, built_texts = split
    everything = {p: v["layer"] for p, v in unet.items()}
    everything |= {p: k for p, _, k in layers.rows if p in own_unet}
    rows = [row for row in layers.rows if row[0] in everything]
    text_rows = [row for row in layers.text_rows if row[0] in own_text or row[0] in text]
    targets, targets_2 = _text_targets(layers.texts, built_texts)
    convs = {p for p, k in everything.items() if k == "conv"}
    out = {k: v for k, v in found.items() if k not in ("blocks", "text_encoder_blocks")}
    out["denoiser_targets"] = _suffixes(set(everything) - convs, layers.rows)
    out["text_encoder_targets"] = targets
    if targets_2 is not None:
        out["text_encoder_2_targets"] = targets_2
    conv_pairs = [(v["rank"], v["alpha"]) for v in unet.values() if v["spatial"]]
    if convs and "conv_rank" not in out:  # the adapter's convolutions are all another kind's: theirs
        out["conv_rank"], out["conv_alpha"] = Counter(conv_pairs).most_common(1)[0][0]
    if convs:
        out["conv_targets"] = _suffixes(convs, layers.rows)
    if any(v["kind"] == "full" for v in (*unet.values(), *text.values())):
        # make_module_from_state_dict copies the diff into FullModule's weight, apply_to adds W, and
        # load_weights' prehook adds the file's diff again: W + 2 diff (lycoris-lora 4.1.3)
        out["init_scale"] = 2.0
    top = (int(out["rank"]), float(out["alpha"]))
    # the other kinds' blocks first: each module takes the first block whose pattern it matches
    out["blocks"] = [*_kind_blocks(unet, rows, top, dora), *found["blocks"]]
    out["text_encoder_blocks"] = [*_kind_blocks(text, text_rows, top, dora), *found["text_encoder_blocks"]]
    if own == "locon" and any(b.get("dora") == "on" for b in (*out["blocks"], *out["text_encoder_blocks"])):
        out["dora_form"] = "lycoris"  # LoConModule's decomposition (the norm not detached)
    return out


def _split(modules: dict[str, LycorisModule], layers, own: str, unet_only: bool) -> tuple | str:
    """(the own kind's U-Net paths, its text paths, the other modules' values by U-Net path, by text path,
    each text encoder's built paths); else why not. The own kind's are lycoris_sd_factor's (a LoCon-led
    file's LoCon modules are blocks like the others)."""
    own_unet: set[str] = set()  # dbspec paths of the own kind's modules
    own_text: set[str] = set()
    unet: dict[str, dict] = {}  # the other kinds' modules: diffusers path -> values
    text: dict[str, dict] = {}
    built_texts: list[list[str]] = [[] for _ in layers.texts]
    for name, module in sorted(modules.items()):
        slot, (path, cls, layer) = layers.lookup(name)
        if slot is not None and unet_only:
            continue  # apply_to drops the text-encoder modules with --network_train_unet_only
        if slot is not None:
            built_texts[slot].append(path)
        key = layers.unet_path(path) if slot is None else f"{layers.components[slot]}.{path}"
        if module.algo == own and own != "locon":
            (own_unet if slot is None else own_text).add(key)
            continue
        if not layer:
            return (
                f"{INVALID}module `{name}` is kohya's {cls} `{path}`, which LyCORIS's {module.algo} module "
                "does not take (Linear and convolution layers only): ValueError"
            )
        values = _values(name, module, layer, path)
        if isinstance(values, str):
            return values
        (unet if slot is None else text)[key] = {**values, "layer": layer}
    return own_unet, own_text, unet, text, built_texts


def _locon_adapter(modules: dict[str, LycorisModule], layers) -> dict[str, object] | str:
    """A LoRA adapter's values for a file led by LoCon modules: the rank and alpha most of them share (its
    convolutions': conv_rank / conv_alpha), each module's own in its block of kind lora."""
    pairs: list[tuple[int, float]] = []
    convs: list[tuple[int, float]] = []
    for name, m in sorted(modules.items()):
        if m.algo != "locon":
            continue
        values = _locon(name, m)
        if isinstance(values, str):
            return values
        (convs if layers.lookup(name)[1][2] == "conv" else pairs).append((values["rank"], values["alpha"]))
    rank, alpha = Counter(pairs or convs).most_common(1)[0][0]
    out: dict[str, object] = {
        "kind": "lora",
        "rank": rank,
        "alpha": alpha,
        "blocks": [],
        "text_encoder_blocks": [],
    }
    if convs:
        out["conv_rank"], out["conv_alpha"] = Counter(convs).most_common(1)[0][0]
    return out
