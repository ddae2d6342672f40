"""lycoris.kohya `--dim_from_weights` on Flux / SD3 with a LyCORIS file mixing LoKr, LoHa, LoCon (`lora_down`
/ `lora_up`), full (`diff` / `diff_b`), Diag-OFT / BOFT and GLoRA modules, LoKr, LoHa or LoCon among them.
LyCORIS's create_network_from_weights (lycoris-lora 4.1.3, lycoris/kohya.py) builds each module by its own
keys, one per kohya Linear (a fused q/k/v or linear1 one module), at the values its
make_module_from_state_dict reads off the file, then train_network.py's load_weights loads the file into
them (a FullModule: built at W + diff, its load hook adds the diff again, W + 2 diff).

dbspec's equivalent: a run of several kinds with `fused_projections` (runtime/mixed_kinds.py). The adapter is
of the LoKr modules' kind when the file has some, else of the LoHa modules' (lycoris_flow_factor_file's
values, targets and blocks for them, text encoders and T5-XXL included), else LoRA (the LoCon modules' most
frequent rank and alpha, the others' as blocks; on the denoiser only); every other module is an
`[[adapter.blocks]]` entry of its kind over its diffusers parts (a fused Linear's all), at its rank and alpha
(a full block's rank only switches it on; a Diag-OFT / BOFT block's rank the block size of its `oft_blocks`,
its alpha the constraint, a `rescale` its `rescaled`, as lycoris_sd_rebuilt._oft reads them; a GLoRA block's
rank `a2`'s rows), placed first so that it takes its layers; the denoiser targets
span every module's parts; full modules make the adapter's `init_scale` 2. The run starts from the file
(runtime/mixed_init.py). Other kinds' CLIP modules (a LoCon-led file's CLIP LoCon ones too) are
[[adapter.text_encoder_blocks]] of their kind, the text-encoder targets every kind's CLIP Linears; a LoKr /
LoHa kind held on the text encoders alone still leads (its denoiser targets the other kinds' alone); Flux's
final layer of another kind is a block `^(proj_out)$` beside a rank-0 block for the single blocks' linear2
the file lacks; SD3's patch convolution of another kind is conv_targets `pos_embed.proj` with a block of that
kind there at its conv_rank / conv_alpha. T5-XXL's modules of other kinds (a LoCon-led file's T5 LoCon
ones too) are [[adapter.text_encoder_blocks]] of their kind over T5's Linears (`train.t5`, every kind's
blocks first, then a rank-0 block for the T5 Linears the file lacks; a `diff_b` there DBS402, as for a
full file's). Tucker tensors (`lora_mid`, `hada_t1` / `hada_t2`, `lokr_t2`) on a Linear are DBS402 (the
rebuilt module has no Tucker core there: AttributeError). On Chroma the denoiser's modules map as Flux's,
its final layer too (Chroma1-HD has Flux's single blocks; was DBS403), and its T5-XXL modules (kohya hands
LyCORIS [DummyCLIPL, T5-XXL]: `lora_te2_`) as Flux's T5 ones on Chroma's T5 (`text_encoder`).
Not expressed (why not returned): with --network_train_unet_only text-encoder modules of a kind the
denoiser lacks (kohya leaves them unused; dbspec starts from tensors of its run's kinds, DBS356), on
Chroma a CLIP-L module (`lora_te1_`: LyCORIS builds nothing on
DummyCLIPL, which has no Linear, and kohya's load skips it, while dbspec's start needs each file module's
model, DBS356). A `dora_scale` (was DBS403; make_module_from_state_dict builds its module with
weight_decompose, one magnitude per output row) is the adapter's `dora` where every module of its kind holds
one (else those modules' blocks' own), another kind's LoRA / LoHa module's its block's `dora = "on"` (`"off"`
without one beside a decomposed adapter: _dora_blocks), a fused Linear's split over its parts' rows when the
run starts (runtime/mixed_init.py). A file whose only LoKr / LoHa module is SD3's patch convolution (was
DBS403) is an adapter of that kind on it alone (lycoris_flow_factor_file._patch_options). A Tucker form
on SD3's patch convolution (`lora_mid`, `hada_t1` / `hada_t2`, `lokr_t2`; was DBS403) is its block's own
`tucker = "on"` (the block of the patch module's kind, the adapter's kind's a block of its own there), as
LyCORIS rebuilds that one module with use_tucker. Checked
against lycoris-lora in tests/runtime/test_lycoris_mixed_flow_file.py and test_lycoris_mixed_chroma.py."""

from __future__ import annotations

import re
from typing import Any

from dbspec.convert.kohya.file_ranks import _patterns, flow_paths
from dbspec.convert.kohya.lycoris_flow_factor_file import (
    _CLIPS,
    _T5,
    _T5_COMPONENT,
    clip_targets,
    factor_file_adapter,
    final_layer_block,
    t5_left_block,
    t5_path,
)
from dbspec.convert.kohya.lycoris_flow_rebuilt import _text_pattern
from dbspec.convert.kohya.lycoris_flow_weights import (
    LycorisModule,
    check_loha,
    diffusers_targets,
    own_blocks,
)
from dbspec.convert.kohya.lycoris_sd_rebuilt import _glora, _kind, _oft

# the file algos (lycoris_flow_weights._DETECT) this module maps beside the adapter's LoKr / LoHa modules
# (an `oft` module is Diag-OFT or BOFT by its blocks' shape: lycoris_sd_rebuilt._kind)
_OTHERS = {"locon": "lora", "loha": "loha", "full": "full", "oft": "diag-oft", "glora": "glora"}


def _dora_error(m: LycorisModule, rows: int, dims: int) -> str | None:
    """Why a module's `dora_scale` does not load into the module make_module_from_state_dict builds with
    weight_decompose (wd_on_out's default: one magnitude per output row, `(rows, 1)` on a Linear, `(rows, 1,
    1, 1)` on SD3's patch convolution): "invalid:..." (its copy_ raises); None when it fits or is absent."""
    got = m.shapes.get("dora_scale")
    want = (rows, *[1] * (dims - 1))
    if got is None or tuple(got) == want:
        return None
    return (
        f"invalid:`{m.name}.dora_scale` has shape {list(got)}, not LyCORIS's {list(want)} (one magnitude per "
        "output row, make_module_from_state_dict's wd_on_out): its copy_ raises"
    )


def is_flow_mixed(modules: dict[str, LycorisModule]) -> bool:
    """The file's modules (NormModules aside) are of several of LoKr, LoHa, LoCon, full, Diag-OFT / BOFT and
    GLoRA, LoKr, LoHa or LoCon among them."""
    algos = {m.algo for m in modules.values()} - {"norm"}
    return len(algos) > 1 and algos <= {"lokr", *_OTHERS} and bool(algos & {"lokr", "loha", "locon"})


def _locon_adapter(
    modules: dict[str, LycorisModule], family: str, unet_only: bool
) -> dict[str, object] | str:
    """A LoRA adapter's values for a file led by LoCon modules (no LoKr / LoHa): one LoConModule per kohya
    Linear (fused_projections), the rank and alpha most of them share, a module at its own an
    [[adapter.blocks]] entry over its diffusers parts; on the denoiser only."""
    from collections import Counter

    pairs, decomposed = {}, set()
    for name, m in sorted(modules.items()):
        if not name.startswith("lora_unet_"):
            continue
        values = _values(m)
        if isinstance(values, str):
            return values
        pairs[name] = (values["rank"], values["alpha"])
        if "dora" in values:
            decomposed.add(name)
    targets = diffusers_targets(sorted(pairs), family)
    if isinstance(targets, str):
        return targets
    (rank, alpha), _ = Counter(pairs.values()).most_common(1)[0]
    # `dora_scale` in every LoCon module: the adapter's dora; in some: their blocks' own (as a LoCon file's)
    every = decomposed == set(pairs)
    some = frozenset() if every else frozenset(decomposed)
    own = {name: pair for name, pair in pairs.items() if pair != (rank, alpha) or name in some}
    blocks = [*final_layer_block(targets, family), *own_blocks(own, rank, family, some)]
    return {
        "kind": "lora",
        "rank": rank,
        "alpha": alpha,
        **({"dora": True} if every else {}),
        "denoiser_targets": targets,
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
    }


def _values(m: LycorisModule, layer: str = "linear") -> dict[str, Any] | str:
    """Another kind's module as its block's kind, rank and alpha (`layer` "conv": SD3's 2x2 patch
    convolution); else why not ("invalid:..." where make_module_from_state_dict fails)."""
    s = m.shapes
    dims = 4 if layer == "conv" else 2
    what = "convolution" if layer == "conv" else "Linear"
    if m.algo == "oft":  # DiagOFTModule / ButterflyOFTModule at lora_dim = its block size s
        kind = _kind(m)
        found = _oft(m.name, m, kind)
        if isinstance(found, str):
            return found
        # a block's rank is its block-size hint, its alpha the constraint; a `rescale` its own row rescale
        rescaled = {"rescaled": "on"} if found["rescaled"] else {}
        return {"kind": kind, "rank": found["block_size"], "alpha": found["constraint"], **rescaled}
    if m.algo == "glora":  # GLoRAModule: rank a2's rows, alpha float(alpha) (0: the rank)
        found = _glora(m.name, m, layer)
        return found if isinstance(found, str) else {"kind": "glora", **found}
    if m.algo == "full":
        odd = sorted(k for k in s if k not in ("diff", "diff_b"))
        if odd:
            return f"`{m.name}.{odd[0]}` is no tensor LyCORIS's FullModule reads beside `diff` / `diff_b`"
        if len(s["diff"]) != dims:
            return (
                f"invalid:`{m.name}.diff` has {len(s['diff'])} dimensions, kohya's {what} {dims}: "
                "FullModule's copy_ raises"
            )
        return {"kind": "full", "rank": 1, "alpha": 1.0}
    tucker = next((k for k in sorted(s) if k in ("lora_mid.weight", "hada_t1", "hada_t2")), None)
    if tucker and layer == "linear":  # no Tucker core on a Linear: make_module_from_state_dict's copy_ fails
        cls = "LoConModule" if m.algo == "locon" else "LohaModule"
        return (
            f"invalid:`{m.name}.{tucker}` is LyCORIS's Tucker form on a Linear, where {cls} builds no Tucker "
            f"core (its make_module_from_state_dict raises AttributeError)"
        )
    tucker_form = {}  # LyCORIS's Tucker form on SD3's patch convolution: its block's own (was DBS403)
    if m.algo == "locon":
        read = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "dora_scale")
        odd = sorted(k for k in s if k not in read)
        if odd:
            return f"`{m.name}.{odd[0]}`: tensor {odd[0]} LoConModule does not read"
        if "lora_mid.weight" in s:  # LoConModule with use_tucker: 1x1 down, k x k mid, 1x1 up
            found = _locon_tucker(m)
            if found is not None:
                return found
            tucker_form = {"tucker": "on"}
        if "lora_down.weight" not in s:
            why = "LoConModule's make_module_from_state_dict fails"
            return f"invalid:`{m.name}` has no `lora_down.weight`: {why}"
        if len(s["lora_down.weight"]) != dims:
            return (
                f"invalid:`{m.name}.lora_down.weight` has {len(s['lora_down.weight'])} dimensions, kohya's "
                f"{what} {dims}: LoConModule's copy_ raises"
            )
        rank, rows = s["lora_down.weight"][0], s.get("lora_up.weight", (0,))[0]
    else:  # LoHa beside a LoKr adapter
        # the rows its factors span (LohaModule's Tucker form: `hada_w1_a`'s columns)
        rows = s["hada_w1_a"][1 if "hada_t1" in s else 0] if "hada_w1_a" in s else 0
        if "hada_t1" in s or "hada_t2" in s:  # on SD3's patch convolution (a Linear's: DBS402 above)
            from dbspec.convert.kohya.lycoris_flow_factor_file import _loha_patch

            if "hada_t1" not in s or "hada_t2" not in s:
                missing = "hada_t2" if "hada_t1" in s else "hada_t1"
                return f"invalid:module `{m.name}` lacks `{missing}`: LohaModule's copy_ of it fails"
            found = _loha_patch(m)
            if isinstance(found, str):
                return found
            rank, tucker_form = found["conv_rank"], {"tucker": "on"}
        else:
            checked = check_loha([m])
            if isinstance(checked, str):
                return checked
            rank = checked[0]
    if m.alpha is None:
        return f"invalid:module `{m.name}` has no alpha: make_module_from_state_dict's float(None) raises"
    if m.alpha < 0:
        return f"`{m.name}.alpha` is {m.alpha:g}: dbspec's alpha is at least 0"
    alpha = float(m.alpha or rank)  # 0: the dim
    # a `dora_scale`: make_module_from_state_dict's weight_decompose, its block's own `dora` (was DBS403)
    bad = _dora_error(m, rows, dims)
    if bad:
        return bad
    dora = {"dora": "on"} if "dora_scale" in s else {}
    return {"kind": _OTHERS[m.algo], "rank": int(rank), "alpha": alpha, **tucker_form, **dora}


def _locon_tucker(m: LycorisModule) -> str | None:
    """Why LoConModule's make_module_from_state_dict (use_tucker: `lora_mid` present) cannot take the patch
    convolution's tensors (its copy_ raises on other shapes): None when they chain."""
    s = m.shapes
    down, mid, up = s["lora_down.weight"], s["lora_mid.weight"], s.get("lora_up.weight")
    rank = down[0]
    if (
        up is None
        or len(down) != 4
        or down[2:] != (1, 1)
        or up[1:] != (rank, 1, 1)
        or mid[:2] != (rank, rank)
    ):
        return (
            f"invalid:`{m.name}`'s lora_down {down}, lora_mid {mid} and lora_up {up} are not LoConModule's "
            "Tucker form (1x1 down, k x k mid, 1x1 up at one rank): its copy_ raises"
        )
    return None


def _t5_pattern(names: list[str], family: str) -> str:
    """A text-encoder block's pattern naming exactly these T5-XXL modules' `<component>.<path>`s
    (lycoris_flow_factor_file.own_text_blocks' form)."""
    paths = sorted(re.escape(f"{_T5_COMPONENT[family]}.{t5_path(n, family)}") for n in names)
    return f"^(?:{'|'.join(paths)})$"


def flow_mixed_file(
    modules: dict[str, LycorisModule], family: str, unet_only: bool, t5_idle: str = ""
) -> dict[str, object] | str:
    """[adapter] values for a mixed file on `family` (flux, chroma, sd3; `t5_idle`: factor_file_adapter's);
    else why not ("invalid:..." where LyCORIS fails: DBS402; otherwise DBS403)."""
    text_names = sorted(n for n in modules if n.startswith("lora_te"))
    whole = modules
    if unet_only:  # apply_to drops the text encoders' modules with --network_train_unet_only
        modules = {n: m for n, m in modules.items() if n.startswith("lora_unet_")}
    algos = {m.algo for m in modules.values()}
    if len(algos) == 1:  # --network_train_unet_only: the other kinds were the text encoders' alone
        dropped = sorted({m.algo for m in (m for m in whole.values() if m.algo not in algos)})
        return (
            f"with --network_train_unet_only (apply_to drops the text encoders' modules) its denoiser holds "
            f"{next(iter(algos))} modules alone, and dbspec starts a run of one kind only from a file of "
            f"that kind (it holds {' and '.join(dropped)} modules too)"
        )
    # apply_to drops a text encoder's module, load_weights' strict=False load skips it; dbspec's start takes a
    # file's tensors of the run's kinds alone (DBS356)
    idle = next((n for n, m in sorted(whole.items()) if n not in modules and m.algo not in algos), None)
    if idle is not None:
        return (
            f"module `{idle}` is a text encoder's LyCORIS {whole[idle].algo} module, which kohya leaves "
            "untrained and unused with --network_train_unet_only (apply_to drops it, load_weights' "
            "strict=False load skips it), while dbspec starts only from a file whose tensors are of its "
            f"run's kinds ({', '.join(sorted(algos))} on the denoiser; DBS356)"
        )
    own = "lokr" if "lokr" in algos else "loha" if "loha" in algos else "locon"
    # the other kinds' modules, and a LoCon-led file's CLIP LoCon modules (blocks of kind lora there)
    others = {
        n: m for n, m in modules.items() if m.algo != own or (own == "locon" and n.startswith("lora_te"))
    }
    clip = next((n for n in sorted(whole) if family == "chroma" and n.startswith("lora_te1_")), None)
    if clip is not None:  # kohya ignores it; dbspec's init_weights names every file module's model (DBS356)
        return (
            f"module `{clip}` is CLIP-L's, which kohya's Chroma lacks: flux_train_network.py hands "
            "LyCORIS flux_utils.DummyCLIPL, without a Linear, so create_network_from_weights builds nothing "
            "for it and load_weights' strict=False load skips it, while dbspec starts a run only from a "
            "file whose modules each name a model of the run (DBS356)"
        )
    # T5-XXL's modules of the other kinds: text-encoder blocks of their kind over T5's Linears (train.t5)
    t5_others = {n: m for n, m in others.items() if family in _T5 and n.startswith(_T5[family])}
    if t5_others and t5_idle:
        return (
            f"module `{min(t5_others)}` is T5-XXL's, whose LyCORIS modules keep the file's weights untrained "
            f"where T5 encodes: {t5_idle} (dbspec's T5 adapter trains)"
        )
    t5_groups: dict[tuple, list[str]] = {}
    for name, m in sorted(t5_others.items()):
        if t5_path(name, family) is None:
            return f"module `{name}` is no T5-XXL attention / MLP Linear"
        if "diff_b" in m.shapes:
            return (
                f"invalid:module `{name}` holds a `diff_b`, but T5-XXL's Linears have no bias: "
                "make_module_from_state_dict makes it the layer's bias, and FullModule's custom_state_dict "
                "subtracts the original bias (None) when kohya saves the network: TypeError"
            )
        values = _values(m)
        if isinstance(values, str):
            return values
        t5_groups.setdefault(tuple(values.items()), []).append(name)
    apart = set(others)  # LyCORIS ignores Flux's lora_te3_ names: no encoder of that index
    clips = {n: m for n, m in others.items() if n.startswith(tuple(_CLIPS.get(family, ())))}
    text_groups: dict[tuple, list[str]] = {}
    if clips:
        placed = clip_targets(sorted(clips), family)
        if isinstance(placed, str):
            return placed
    for name, m in sorted(clips.items()):
        values = _values(m)
        if isinstance(values, str):
            return values
        text_groups.setdefault(tuple(values.items()), []).append(name)
    others = {n: m for n, m in others.items() if n.startswith("lora_unet_")}
    groups: dict[tuple, dict[str | None, dict[int | None, set[str]]]] = {}
    paths: list[str] = []
    patch: dict[str, Any] | None = None
    for name, m in sorted(others.items()):
        found = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)
        if found is None:
            return f"module `{name}` is no Linear of kohya's model dbspec places"
        blocks, index, parts = found
        values = _values(m, "conv" if parts == ("pos_embed.proj",) else "linear")
        if isinstance(values, str):
            return values
        if parts == ("pos_embed.proj",):  # SD3's patch convolution: conv_targets, its block's conv values
            patch = values
            continue
        key = tuple(values.items())
        groups.setdefault(key, {}).setdefault(blocks, {}).setdefault(index, set()).update(parts)
        paths.extend(f"{blocks}.{index}.{p}" if blocks else p for p in parts)
    mine = {n: m for n, m in modules.items() if n not in apart}
    if own == "locon":
        found = _locon_adapter(mine, family, unet_only)
    else:  # the LoKr / LoHa modules as a file of that kind alone
        found = factor_file_adapter(mine, family, unet_only, t5_idle, beside=bool(others))
    if isinstance(found, str):
        return found
    own_blocks = [*found.get("blocks", ()), *found.get("text_encoder_blocks", ())]
    if any("tucker" in b for b in own_blocks):
        return (
            f"its {own} modules hold LyCORIS's Tucker form on several layers beside modules of other kinds: "
            "dbspec gives it to SD3's patch convolution's block alone"
        )
    tucker_patch = bool(found.get("tucker"))  # the adapter's kind's module on SD3's patch convolution
    # its `dora_scale` where other modules of its kind have none (factor_file_adapter's _patch_block)
    patch_dora = any(b["pattern"] == r"^(pos_embed\.proj)$" and b.get("dora") == "on" for b in own_blocks)
    blocks_out = [
        {"pattern": pattern, **dict(key)}
        for key, lists in groups.items()
        for blocks, indices in lists.items()
        for pattern in _patterns(blocks, indices)
    ]
    out = dict(found)
    targets = [*found["denoiser_targets"], *(p for p in paths if p not in found["denoiser_targets"])]
    out["denoiser_targets"] = targets
    # Flux's final layer (target `proj_out`, every single block's linear2 a suffix too) of any kind: a rank-0
    # block for the linear2 the file lacks (the own kind's alone would leave the others' out)
    theirs = final_layer_block(found["denoiser_targets"], family)
    kept = [b for b in found.get("blocks", ()) if b not in theirs]
    out["blocks"] = [*blocks_out, *final_layer_block(targets, family), *kept]  # the other kinds' first
    if clips:  # the CLIP Linears of every kind's modules, the other kinds' blocks first
        held = [n for n in text_names if n in modules and n.startswith(tuple(_CLIPS[family]))]
        placed = clip_targets(held, family)
        assert not isinstance(placed, str)  # each kind's modules placed alone
        out["text_encoder_targets"], text_2 = placed
        out.pop("text_encoder_2_targets", None)
        if text_2 is not None:
            out["text_encoder_2_targets"] = text_2
        text_blocks = [
            {"pattern": _text_pattern(names, family), **dict(key)} for key, names in text_groups.items()
        ]
        out["text_encoder_blocks"] = [*text_blocks, *found.get("text_encoder_blocks", ())]
    if t5_groups:  # T5's other kinds first, then the adapter's (its own T5 modules' blocks, rank-0 left)
        t5_blocks = [{"pattern": _t5_pattern(names, family), **dict(key)} for key, names in t5_groups.items()]
        held = [n for n in modules if n.startswith(_T5[family])]
        mine_left = t5_left_block([n for n in held if n not in t5_others], family) if out.get("t5") else []
        kept = [b for b in out.get("text_encoder_blocks", ()) if b not in mine_left]
        out["text_encoder_blocks"] = [*t5_blocks, *t5_left_block(held, family), *kept]
        out["t5"] = True
    if patch is not None:  # the adapter's convolution values where it has none (it holds no other)
        pair = {"conv_rank": patch["rank"], "conv_alpha": patch["alpha"]}
        out = {**out, "conv_targets": ["pos_embed.proj"], **({} if "conv_rank" in out else pair)}
        block = {**patch, "rank": out["rank"], "alpha": out["alpha"], **pair}
        out["blocks"] = [{"pattern": r"^(pos_embed\.proj)$", **block}, *out["blocks"]]
    if tucker_patch:  # beside other kinds a Tucker form is a block's own (a run's `tucker`: DBS578)
        del out["tucker"]
        pair = {"conv_rank": out["conv_rank"], "conv_alpha": out["conv_alpha"]}
        block = {"rank": out["rank"], "alpha": out["alpha"], **pair, "tucker": "on"}
        block |= {"dora": "on"} if patch_dora else {}
        out["blocks"] = [{"pattern": r"^(pos_embed\.proj)$", **block}, *out["blocks"]]
    if any(
        v["kind"] == "full"
        for v in (*map(dict, (*groups, *text_groups, *t5_groups)), *([patch] if patch else []))
    ):
        # make_module_from_state_dict copies the diff into FullModule's weight, apply_to adds W, and
        # load_weights' prehook adds the file's diff again: W + 2 diff (lycoris-lora 4.1.3)
        out["init_scale"] = 2.0
    return _dora_blocks(out)


def _dora_blocks(out: dict[str, Any]) -> dict[str, Any]:
    """A run's weight decomposition as LyCORIS builds it from the file: each LoRA / LoHa / LoKr layer
    decomposes in its own kind's pass (runtime/mixed_kinds.py) where its module holds a `dora_scale`
    (make_module_from_state_dict's weight_decompose), so another kind's block holding none beside a
    decomposed adapter is `dora = "off"`; a LoRA adapter decomposing anywhere trains LoConModule's form
    (`dora_form = "lycoris"`, as lycoris_sd_mixed.py)."""
    blocks = [*out.get("blocks", ()), *out.get("text_encoder_blocks", ())]
    if out.get("dora"):
        for block in blocks:
            if block.get("kind") in ("lora", "loha", "lokr") and block.get("rank") and "dora" not in block:
                block["dora"] = "off"
    if out["kind"] == "lora" and (out.get("dora") or any(b.get("dora") == "on" for b in blocks)):
        out["dora_form"] = "lycoris"  # LoConModule's decomposition (the norm not detached)
    return out
