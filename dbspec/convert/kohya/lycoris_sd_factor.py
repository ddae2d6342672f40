"""lycoris.kohya `--dim_from_weights` with a LyCORIS LoKr or LoHa file on SD 1.x/2.x (train_network.py) and
SDXL (sdxl_train_network.py). LyCORIS's create_network_from_weights (lycoris-lora 4.1.3, lycoris/kohya.py)
reads no network_args: it matches each file module's name against the models' `named_modules()` (a name no
module has is skipped), picks the class whose detecting key the module holds (get_module: `hada_w1_a` a
LohaModule, `lokr_w1` / `lokr_w1_a` a LokrModule) and builds it with that class's make_module_from_state_dict
on the layer, then train_network.py's `load_weights` loads the same file into it:

- LokrModule: `lora_dim` the columns of `lokr_w1_a`, else of `lokr_w2_a` (a Tucker convolution's `lokr_w2_a`
  is (rank, rows): its rows are read as the rank), both factors full: `full_matrix` at dim 1 (scale 1);
  `decompose_both` when neither factor is full, `use_tucker` with a `lokr_t2`, the factor read back from the
  factors' shapes (-1 where the first factor is LyCORIS's split by -1 of the dimensions it multiplies out, a
  convolution's flattened `lokr_w2_b` columns counted in), alpha `float(alpha)` (scale alpha / dim, 0 the
  dim). The constructor then splits the layer by those options; factors it does not build as the file holds
  them make `copy_` raise (or the copy of a tensor it has no such parameter for: AttributeError).
- LohaModule: dim the rows of `hada_w1_b`, `use_tucker` with a `hada_t1`, alpha `float(alpha)`.
- A `dora_scale` (one magnitude per output row): the module built with weight_decompose, the file's
  magnitudes copied in; in every module dbspec's `dora = true`, in some only their blocks' `dora = "on"`.
- A module without `alpha`: float(None), TypeError.

dbspec's equivalent: a LoKr / LoHa over exactly the file's layers (the U-Net's 3x3 convolutions as
conv_targets at conv_rank / conv_alpha / tucker, its 1x1 convolutions and Linears at rank / alpha, SDXL's
original-layout names read onto diffusers' U-Net), with the values most modules share and
`[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` for the modules LyCORIS builds otherwise (each module
checked with LokrModule's / LohaModule's constructor rules: the factors' shapes and the scale), started from
the file (`init_weights`, `init_partial`). The numbers are checked against lycoris-lora in
tests/runtime/test_lycoris_sd_factor_dim_file.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dbspec.convert.kohya.lycoris_file import Row, _suffixes, _text_targets
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.convert.kohya.lycoris_maps import _pattern
from dbspec.convert.kohya.lycoris_sd_full import INVALID, sd_layers
from dbspec.plan.lokr import factorization

FACTOR_ALGOS = ("lokr", "loha")
_KEYS = {
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
}
Shapes = dict[str, tuple[int, ...]]
# (rank, factor, decompose_both, full_matrix, tucker): LokrModule's options (LoHa: factor 0, switches False
# but tucker)
Options = tuple[int, int, bool, bool, bool]


def lokr_shapes(out: int, inp: int, kernel: int, o: Options) -> Shapes:
    """The factors LokrModule's constructor builds on an out x in Linear (`kernel` 0) or k x k convolution."""
    rank, factor, both, full, use_tucker = o
    in_m, in_n = factorization(inp, factor)
    out_l, out_k = factorization(out, factor)
    shapes: Shapes = {}
    if both and rank < max(out_l, in_m) / 2 and not full:
        shapes["lokr_w1_a"], shapes["lokr_w1_b"] = (out_l, rank), (rank, in_m)
    else:
        shapes["lokr_w1"] = (out_l, in_m)
    k = (kernel, kernel) if kernel else ()
    if rank >= max(out_k, in_n) / 2 or full:
        shapes["lokr_w2"] = (out_k, in_n, *k)
    elif kernel and use_tucker and kernel != 1:
        shapes["lokr_t2"], shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (
            (rank, rank, *k),
            (rank, out_k),
            (rank, in_n),
        )
    else:
        shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (out_k, rank), (rank, in_n * max(kernel, 1) ** 2)
    return shapes


def loha_shapes(out: int, inp: int, kernel: int, o: Options) -> Shapes:
    """The factors LohaModule's constructor builds (Tucker only on a k x k convolution, k above 1)."""
    rank, use_tucker = o[0], o[4]
    if kernel > 1 and use_tucker:
        k = (kernel, kernel)
        return {
            "hada_t1": (rank, rank, *k),
            "hada_w1_a": (rank, out),
            "hada_w1_b": (rank, inp),
            "hada_t2": (rank, rank, *k),
            "hada_w2_a": (rank, out),
            "hada_w2_b": (rank, inp),
        }
    flat = inp * max(kernel, 1) ** 2
    return {
        "hada_w1_a": (out, rank),
        "hada_w1_b": (rank, flat),
        "hada_w2_a": (out, rank),
        "hada_w2_b": (rank, flat),
    }


def _lokr_rebuilt(s: Shapes) -> Options:
    """LokrModule.make_module_from_state_dict's options, read off the file's shapes as it reads them."""
    full = False
    if "lokr_w1_a" in s:
        rank = s["lokr_w1_a"][1]
    elif "lokr_w2_a" in s:
        rank = s["lokr_w2_a"][1]
    else:
        rank, full = 1, True
    w1 = s["lokr_w1"] if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
    w2 = s["lokr_w2"] if "lokr_w2" in s else (s["lokr_w2_a"][0], s["lokr_w2_b"][1])
    out, inp = w1[0] * w2[0], w1[1] * w2[1]
    if w1[0] == factorization(out, -1)[0] and w1[1] == factorization(inp, -1)[0]:
        factor = -1
    else:
        first, second = max(w1), max(w2)  # a full 4-D lokr_w2: its kernel counted, as LyCORIS's max does
        groups = ((w1[0], w2[0]), (w1[1], w2[1]))

        def fits(f: int) -> bool:
            return out % f == 0 and inp % f == 0 and f in groups[0] and f in groups[1]

        factor = first if fits(first) else second if fits(second) else min(first, second)
    both = "lokr_w1" not in s and "lokr_w2" not in s
    return int(rank), int(factor), both, full, "lokr_t2" in s


def _used(algo: str, s: Shapes) -> set[str]:
    """The tensors make_module_from_state_dict copies into the module it builds (a full factor in place of
    its halves; a Tucker core where the file holds one)."""
    if algo == "loha":
        return {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} | (
            {"hada_t1", "hada_t2"} if "hada_t1" in s else set()
        )
    used = {"lokr_w1"} if "lokr_w1" in s else {"lokr_w1_a", "lokr_w1_b"}
    used |= {"lokr_w2"} if "lokr_w2" in s else {"lokr_w2_a", "lokr_w2_b"}
    return used | ({"lokr_t2"} if "lokr_t2" in s else set())


def _dims(algo: str, s: Shapes, kernel: int) -> tuple[int, int] | None:
    """The layer's (out, in) the file's factors span (None where they do not multiply out)."""
    flat = max(kernel, 1) ** 2
    if algo == "loha":
        if "hada_t1" in s:
            return s["hada_w1_a"][1], s["hada_w1_b"][1]
        cols = s["hada_w1_b"][1]
        return (s["hada_w1_a"][0], cols // flat) if cols % flat == 0 else None
    w1 = s["lokr_w1"] if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
    if "lokr_w2" in s:
        out_k, in_n = s["lokr_w2"][:2]
    elif "lokr_t2" in s:
        out_k, in_n = s["lokr_w2_a"][1], s["lokr_w2_b"][1]
    else:
        if s["lokr_w2_b"][1] % flat:
            return None
        out_k, in_n = s["lokr_w2_a"][0], s["lokr_w2_b"][1] // flat
    return w1[0] * out_k, w1[1] * in_n


def _scale(algo: str, shapes: Shapes, rank: int, alpha: float) -> float:
    """The module's scale: alpha (0: the rank) / rank; a LoKr with both factors full 1."""
    if algo == "lokr" and "lokr_w1" in shapes and "lokr_w2" in shapes:
        return 1.0
    return (alpha or rank) / rank


def _module(name: str, m: LycorisModule, layer: str, path: str) -> dict[str, Any] | str:
    """A module's options, alpha, layer dims and kernel as LyCORIS rebuilds it; else why not."""
    algo = m.algo
    odd = sorted(k for k in m.shapes if k not in _KEYS[algo] and k != "dora_scale")
    if odd:
        return (
            f"`{name}.{odd[0]}` is no tensor LyCORIS's {algo} module reads (load_state_dict(strict=False) "
            "ignores it); dbspec starts only from a file whose every tensor it places"
        )
    kernel = {"linear": 0, "conv1": 1, "conv": 3}[layer]
    s = m.shapes
    if algo == "loha":
        missing = [k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if k not in s]
        if missing or ("hada_t1" in s and "hada_t2" not in s):
            lost = missing[0] if missing else "hada_t2"
            return f"{INVALID}`{name}` has no `{lost}`: LohaModule's make_module_from_state_dict fails"
        options: Options = (int(s["hada_w1_b"][0]), 0, False, False, "hada_t1" in s)
    else:
        pairs = (("lokr_w1", "lokr_w1_a", "lokr_w1_b"), ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))
        for whole, a, b in pairs:
            if whole not in s and (a not in s or b not in s):
                return f"{INVALID}`{name}` has neither `{whole}` nor both `{a}` / `{b}`: LokrModule fails"
        options = _lokr_rebuilt(s)
    dims = _dims(algo, s, kernel)
    if dims is None:
        return f"{INVALID}`{name}`'s factors span no {path} of kohya's model: LyCORIS's copy_ raises"
    out, inp = dims
    built = (lokr_shapes if algo == "lokr" else loha_shapes)(out, inp, kernel, options)
    held = {k: tuple(v) for k, v in s.items() if k in _used(algo, s)}
    if built != held:
        return (
            f"{INVALID}LyCORIS's {'LokrModule' if algo == 'lokr' else 'LohaModule'} rebuilt from `{name}` "
            f"(dim {options[0]}" + (f", factor {options[1]}" if algo == "lokr" else "") + f") on kohya's "
            f"`{path}` has factors {built}, not the file's {held}: its copy_ raises"
        )
    unread = sorted(k for k in s if k in _KEYS[algo] and k not in held)
    if unread:  # make_module_from_state_dict copies the others; load_state_dict(strict=False) ignores it
        return (
            f"`{name}.{unread[0]}` is a tensor LyCORIS's module rebuilt from `{name}` does not have (its "
            "load_state_dict(strict=False) ignores it); dbspec starts only from a file whose every tensor it "
            "places"
        )
    dora = m.shapes.get("dora_scale")
    want = (out, 1, 1, 1) if kernel else (out, 1)
    if dora is not None and tuple(dora) != want:  # weight_decompose: one magnitude per output row
        return (
            f"{INVALID}`{name}.dora_scale` has shape {list(dora)}, not LyCORIS's {list(want)} (one magnitude "
            "per output row of the layer): its copy_ raises"
        )
    if m.alpha is None:
        return f"{INVALID}`{name}` has no alpha: make_module_from_state_dict's float(None) raises TypeError"
    if m.alpha < 0:
        return f"`{name}.alpha` is {m.alpha:g}: dbspec's alpha is at least 0"
    return {
        "options": options,
        "alpha": float(m.alpha or options[0]),
        "scale": _scale(algo, s, options[0], m.alpha),
        "dims": dims,
        "kernel": kernel,
        "shapes": built,
        "dora": dora is not None,
    }


def _same(algo: str, v: dict[str, Any], options: Options, alpha: float) -> bool:
    """dbspec's layer at `options` / `alpha` has the module's factors and scale."""
    out, inp = v["dims"]
    shapes = (lokr_shapes if algo == "lokr" else loha_shapes)(out, inp, v["kernel"], options)
    return shapes == v["shapes"] and abs(_scale(algo, shapes, options[0], alpha) - v["scale"]) <= 1e-6 * abs(
        v["scale"]
    )


def _common(values: list[tuple]) -> tuple | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _switch(on: bool) -> str:
    return "on" if on else "off"


def _own_blocks(
    algo: str,
    found: dict[str, dict],
    rows: list[Row],
    linear: tuple[Options, float],
    conv: tuple[Options, float],
    dora: bool = False,
) -> list[dict[str, Any]]:
    """Blocks for the modules dbspec's adapter values (`linear`, `conv`: the options and alpha of its Linears
    and 1x1, and of its 3x3 convolutions) would not build as LyCORIS rebuilds them: one per set of options."""
    built = [row for row in rows if row[0] in found]
    groups: dict[tuple, set[str]] = {}
    for path, v in found.items():
        spatial = v["kernel"] == 3
        top, top_alpha = conv if spatial else linear
        own_dora = v["dora"] and not dora  # weight_decompose on the modules holding a dora_scale only
        if own_dora or not _same(algo, v, top, top_alpha):
            groups.setdefault((spatial, v["options"], v["alpha"], own_dora), set()).add(path)
    out = []
    for (spatial, options, alpha, own_dora), paths in groups.items():
        top, _ = conv if spatial else linear
        block: dict[str, Any] = {"pattern": _pattern(paths, built)}
        if spatial:
            block.update(rank=linear[0][0], alpha=linear[1], conv_rank=options[0], conv_alpha=alpha)
        else:
            block.update(rank=options[0], alpha=alpha)
        if algo == "lokr":
            if options[1] != top[1]:
                block["factor"] = options[1]
            if options[2] != top[2]:
                block["decompose_both"] = _switch(options[2])
            if options[3] != top[3]:
                block["full_matrix"] = _switch(options[3])
        if spatial and options[4] != top[4]:
            block["tucker"] = _switch(options[4])
        if own_dora:
            block["dora"] = "on"
        out.append(block)
    return out


def sd_factor_file(
    modules: dict[str, LycorisModule], family: str, unet_only: bool, beside: bool = False
) -> dict[str, object] | str:
    """[adapter] values (blocks and text_encoder_blocks as lists of tables) for the network
    create_network_from_weights builds from a LoKr or LoHa file on `family` (SD 1.x/2.x or SDXL); else why
    not ("invalid:..." where kohya fails, DBS402; otherwise DBS403). `beside`: these are a mixed file's
    modules of the adapter's kind (lycoris_sd_mixed.py), the U-Net's other kinds' blocks, so they may be
    the text encoders' alone, and their Tucker form (`lokr_t2` / `hada_t1`) is their blocks' `tucker`."""
    layers = sd_layers(family)
    unknown = layers.unknown(modules)
    if unknown:
        return unknown
    algos = sorted({m.algo or "none" for m in modules.values()})
    if len(algos) != 1:
        first = next(n for n, m in sorted(modules.items()) if (m.algo or "none") == algos[-1])
        return (
            f"module `{first}` is a LyCORIS {algos[-1]} module beside {algos[0]} ones; dbspec rebuilds one "
            "kind from a --dim_from_weights file"
        )
    (algo,) = algos
    unet: dict[str, dict] = {}  # diffusers path -> the module's values
    text: dict[str, dict] = {}  # <component>.<path> -> the same
    built_texts: list[list[str]] = [[] for _ in layers.texts]
    for name, module in sorted(modules.items()):
        slot, (path, cls, layer) = layers.lookup(name)
        if not layer:
            return (
                f"{INVALID}module `{name}` is kohya's {cls} `{path}`, which LyCORIS's {algo} module does not "
                "take (Linear and convolution layers only): ValueError"
            )
        values = _module(name, module, layer, path)
        if isinstance(values, str):
            return values
        if slot is None:
            unet[layers.unet_path(path)] = values
        elif not unet_only:  # apply_to drops the text-encoder modules with --network_train_unet_only
            built_texts[slot].append(path)
            text[f"{layers.components[slot]}.{path}"] = values
    if not unet and not (beside and text):
        return "it holds no module of the U-Net"
    every = [*unet.values(), *text.values()]
    pointwise = [(v["options"], v["alpha"]) for v in every if v["kernel"] != 3]
    spatial = [(v["options"], v["alpha"]) for v in every if v["kernel"] == 3]
    linear = _common(pointwise) or _common(spatial)
    conv = _common(spatial)
    (rank, factor, both, full, _), alpha = linear
    if conv is not None:  # the convolutions take the adapter's split: the linear one's
        # beside other kinds the adapter's Tucker form is off (DBS578): each Tucker module's block has its own
        conv = ((conv[0][0], factor, both, full, conv[0][4] and not beside), conv[1])
    rows, text_rows = layers.rows, layers.text_rows
    targets, targets_2 = _text_targets(layers.texts, built_texts)
    out: dict[str, object] = {
        "kind": algo,
        "rank": rank,
        "alpha": alpha,
        "denoiser_targets": _suffixes({p for p, v in unet.items() if v["kernel"] != 3}, rows),
        "text_encoder_targets": targets,
    }
    if algo == "lokr":
        out["factor"] = factor
        out.update({k: True for k, on in (("decompose_both", both), ("full_matrix", full)) if on})
    if conv is not None:
        convs = _suffixes({p for p, v in unet.items() if v["kernel"] == 3}, rows)
        out.update(conv_rank=conv[0][0], conv_alpha=conv[1], conv_targets=convs)
        if conv[0][4]:
            out["tucker"] = True
    if targets_2 is not None:
        out["text_encoder_2_targets"] = targets_2
    lin = ((rank, factor, both, full, False), alpha)
    cv = conv or lin
    dora = all(v["dora"] for v in every)  # make_module_from_state_dict: weight_decompose, per output row
    if dora:
        out["dora"] = True
    out["blocks"] = _own_blocks(algo, unet, rows, lin, cv, dora)
    out["text_encoder_blocks"] = _own_blocks(algo, text, text_rows, lin, cv, dora)
    return out
