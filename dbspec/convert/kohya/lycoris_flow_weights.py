"""lycoris.kohya --dim_from_weights on Flux / SD3 with a LoKr or LoHa file (lycoris-lora 4.1.3
lycoris/kohya.py create_network_from_weights): each module of the file becomes the class whose detecting key
it holds (lycoris/modules/__init__.py get_module: LoCon `lora_up.weight` first, then LoHa `hada_w1_a`, IA3
`on_input`, LoKr `lokr_w1` / `lokr_w1_a`, ...), built by that class's make_module_from_state_dict on the
kohya module of that name and filled with the file's tensors.

LohaModule's: rank `hada_w1_b`'s rows, the file's alpha (0: the rank), scale alpha / rank. LokrModule's: the
rank a low-rank factor's columns (both factors full: `full_matrix`, scale 1), `decompose_both` when both
factors are low-rank, the factor read back from the first factor's shape (-1 when it is LyCORIS's
factorization of the dimensions by -1), the file's alpha; a factor shape its constructor does not rebuild
makes `copy_` raise (DBS402). dbspec's fused LoKr / LoHa (one module per fused Linear, as LyCORIS's) takes
the rank, alpha and LoKr split most modules share for the adapter, and a module whose rebuilt factor shapes
or scale those do not give (checked module by module with LyCORIS's constructor rules,
dbspec.plan.lokr.factorization) a [[adapter.blocks]] entry at its own (over all its diffusers parts); its
modules' diffusers parts are the full-path targets, the file `init_weights` (runtime/lycoris_init.py fills
the shared factors); lycoris_flow_factor_file.py maps the file to [adapter] values."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import attrs

from dbspec.compiler.lora_file import _scalar
from dbspec.compiler.weight_file import read_raw_weights
from dbspec.convert.kohya.file_ranks import _LAYOUTS, _patterns, flow_paths
from dbspec.plan.lokr import factorization

# LyCORIS's MODULE_LIST order and each class's weight_list_det (the first class a module matches builds it)
_DETECT = (
    ("locon", ("lora_up.weight",)),
    ("loha", ("hada_w1_a",)),
    ("ia3", ("on_input",)),
    ("lokr", ("lokr_w1", "lokr_w1_a")),
    ("full", ("diff",)),
    ("norm", ("w_norm",)),
    ("oft", ("oft_blocks",)),
    ("glora", ("a1.weight",)),
    ("tlora", ("lambda_layer",)),
)
_PREFIXES = ("lora_unet", "lora_te")  # LycorisNetworkKohya's LORA_PREFIX_UNET / _TEXT_ENCODER


@attrs.frozen(kw_only=True)
class LycorisModule:
    name: str  # kohya's module name, e.g. lora_unet_double_blocks_0_img_attn_qkv
    algo: str  # the class LyCORIS's get_module picks ("" for none)
    shapes: dict[str, tuple[int, ...]]  # tensor (after the module name and `.`) -> shape
    alpha: float | None


def read_lycoris_file(path: str | Path) -> dict[str, LycorisModule]:
    """The file's modules as create_network_from_weights groups them (the key up to its first `.`, under
    kohya's prefixes); ModelFileError when it is no safetensors file or an alpha is no number."""
    path = Path(path)
    raw = read_raw_weights(path)
    header = raw.header
    grouped: dict[str, dict[str, dict]] = {}
    for key, entry in header.items():
        if "." not in key:
            continue
        name, tensor = key.split(".", 1)
        if name.startswith(_PREFIXES):
            grouped.setdefault(name, {})[tensor] = entry
    out = {}
    for name, tensors in sorted(grouped.items()):
        algo = next((a for a, keys in _DETECT if any(k in tensors for k in keys)), "")
        alpha = tensors.get("alpha")
        out[name] = LycorisModule(
            name=name,
            algo=algo,
            shapes={k: tuple(v["shape"]) for k, v in tensors.items() if k != "alpha"},
            alpha=None if alpha is None else _scalar(path, f"{name}.alpha", alpha, raw),
        )
    return out


@attrs.frozen(kw_only=True)
class LokrOptions:
    rank: int
    factor: int
    decompose_both: bool
    full_matrix: bool


def lokr_shapes(out: int, inp: int, o: LokrOptions) -> dict[str, tuple[int, ...]]:
    """The factors LokrModule (lycoris/modules/lokr.py) builds on an out x in Linear."""
    in_m, in_n = factorization(inp, o.factor)
    out_l, out_k = factorization(out, o.factor)
    shapes: dict[str, tuple[int, ...]] = {}
    if o.decompose_both and o.rank < max(out_l, in_m) / 2 and not o.full_matrix:
        shapes["lokr_w1_a"], shapes["lokr_w1_b"] = (out_l, o.rank), (o.rank, in_m)
    else:
        shapes["lokr_w1"] = (out_l, in_m)
    if o.rank < max(out_k, in_n) / 2 and not o.full_matrix:
        shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (out_k, o.rank), (o.rank, in_n)
    else:
        shapes["lokr_w2"] = (out_k, in_n)
    return shapes


def _factor_shapes(m: LycorisModule) -> tuple[tuple[int, int], tuple[int, int]]:
    """(w1's, w2's) full shapes, from the full factor or its two halves."""
    s = m.shapes
    w1 = s["lokr_w1"] if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
    w2 = s["lokr_w2"] if "lokr_w2" in s else (s["lokr_w2_a"][0], s["lokr_w2_b"][1])
    return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1]))


def lokr_rebuilt(m: LycorisModule) -> tuple[LokrOptions, int, int]:
    """LokrModule.make_module_from_state_dict's options for the module, and the Linear's (out, in)."""
    s = m.shapes
    w1, w2 = _factor_shapes(m)
    if "lokr_w1_a" in s:
        rank, full = s["lokr_w1_a"][1], False
    elif "lokr_w2_a" in s:
        rank, full = s["lokr_w2_a"][1], False
    else:
        rank, full = 1, True
    out, inp = w1[0] * w2[0], w1[1] * w2[1]
    if w1[0] == factorization(out, -1)[0] and w1[1] == factorization(inp, -1)[0]:
        factor = -1
    else:
        group_1, group_2 = (w1[0], w2[0]), (w1[1], w2[1])
        # max(w1.shape) for a full w1, else max(w1a.size(0), w1b.size(1)): the same numbers
        first, second = max(w1), max(w2)

        def fits(f: int) -> bool:
            return out % f == 0 and inp % f == 0 and f in group_1 and f in group_2

        factor = first if fits(first) else second if fits(second) else min(first, second)
    both = "lokr_w1" not in s and "lokr_w2" not in s
    return LokrOptions(rank=int(rank), factor=factor, decompose_both=both, full_matrix=full), out, inp


def lokr_scale(shapes: dict[str, tuple[int, ...]], rank: int, alpha: float) -> float:
    """LokrModule's scale: 1 with both factors full, else alpha (0: the rank) / rank."""
    if "lokr_w1" in shapes and "lokr_w2" in shapes:
        return 1.0
    return (alpha or rank) / rank


Own = dict[str, tuple[LokrOptions | int, float]]  # module name -> its own (LoKr options or LoHa rank, alpha)


def check_lokr(modules: list[LycorisModule]) -> tuple[LokrOptions, float, Own] | str:
    """The dbspec LoKr options and alpha building most modules as LyCORIS rebuilds them from the file, and
    the other modules' own (their blocks'); else why not (a message naming the module)."""
    rebuilt = {m.name: lokr_rebuilt(m) for m in modules}
    for m in modules:
        options, out, inp = rebuilt[m.name]
        want = {k: v for k, v in m.shapes.items() if k.startswith("lokr_w")}
        if lokr_shapes(out, inp, options) != want:
            return (
                f"invalid:LyCORIS's LokrModule rebuilt from `{m.name}` (factor {options.factor}) has factors "
                f"{lokr_shapes(out, inp, options)}, not the file's {want}: its copy_ raises RuntimeError"
            )
    low = [m for m in modules if not rebuilt[m.name][0].full_matrix]
    if low:
        counted = Counter(
            (o.rank, float(m.alpha or o.rank), o.factor) for m in low for o in [rebuilt[m.name][0]]
        )
        (rank, alpha, factor), _ = counted.most_common(1)[0]
        # decompose_both splits the first factor only below half its larger side: one split one is enough
        both = any("lokr_w1_a" in m.shapes for m in low)
        common = LokrOptions(rank=rank, factor=factor, decompose_both=both, full_matrix=False)
    else:
        factor = Counter(rebuilt[m.name][0].factor for m in modules).most_common(1)[0][0]
        common, alpha = LokrOptions(rank=1, factor=factor, decompose_both=False, full_matrix=True), 1.0
    own: Own = {}
    for m in modules:
        options, out, inp = rebuilt[m.name]
        ours = lokr_shapes(out, inp, common)
        scale = lokr_scale(m.shapes, options.rank, float(m.alpha or 0))
        if ours != lokr_shapes(out, inp, options) or not math.isclose(
            lokr_scale(ours, common.rank, alpha), scale, rel_tol=1e-6
        ):  # a block of its own: LyCORIS's constructor options read off the file, at the file's alpha
            own[m.name] = (options, float(m.alpha or options.rank))
    return common, alpha, own


def check_loha(modules: list[LycorisModule]) -> tuple[int, float, Own] | str:
    """The (rank, alpha) of most LohaModules the file builds and the other modules' own; else why not."""
    pairs = {}
    for m in modules:
        s = m.shapes
        if not all(k in s for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
            return f"invalid:module `{m.name}` lacks one of hada_w1_b / hada_w2_a / hada_w2_b: LyCORIS fails"
        rank = s["hada_w1_b"][0]
        out, inp = s["hada_w1_a"][0], s["hada_w1_b"][1]
        if (s["hada_w1_a"], s["hada_w2_a"], s["hada_w2_b"]) != ((out, rank), (out, rank), (rank, inp)):
            return (
                f"invalid:module `{m.name}`'s LoHa factors do not chain at rank {rank} (LohaModule's copy_ "
                "raises RuntimeError)"
            )
        pairs[m.name] = (int(rank), float(m.alpha or rank))
    (rank, alpha), _ = Counter(pairs.values()).most_common(1)[0]
    return rank, alpha, {name: pair for name, pair in pairs.items() if pair != (rank, alpha)}


def own_blocks(
    own: Own, common: LokrOptions | int, family: str, dora: frozenset[str] = frozenset()
) -> list[dict]:
    """[[adapter.blocks]] for the modules at options of their own: one per set of options, its pattern the
    modules' diffusers parts (a fused Linear's all: one block covers it, compiler/fused.py). `dora`: the
    modules holding a `dora_scale` where others do not (make_module_from_state_dict builds those with
    weight_decompose): their blocks' dora "on"."""
    groups: dict[tuple, dict[str, dict[int | None, set[str]]]] = {}
    for name, (options, alpha) in own.items():
        found = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)
        assert found is not None  # diffusers_targets placed every module
        blocks, index, parts = found
        key = (options, alpha, name in dora)
        groups.setdefault(key, {}).setdefault(blocks, {}).setdefault(index, set()).update(parts)
    out = []
    for (options, alpha, on), lists in groups.items():
        values = own_values(options, alpha, common) | ({"dora": "on"} if on else {})
        for blocks, indices in lists.items():
            out.extend({"pattern": pattern, **values} for pattern in _patterns(blocks, indices))
    return out


def own_values(options: LokrOptions | int, alpha: float, common: LokrOptions | int) -> dict:
    """A block's rank and alpha for modules at options of their own, and LoKr's factor, decompose_both and
    full_matrix where they are not the adapter's (`common`)."""
    if not isinstance(options, LokrOptions):
        return {"rank": options, "alpha": alpha}
    assert isinstance(common, LokrOptions)
    values: dict = {"rank": options.rank, "alpha": alpha}
    if options.factor != common.factor:
        values["factor"] = options.factor
    for key in ("decompose_both", "full_matrix"):
        if getattr(options, key) != getattr(common, key):
            values[key] = "on" if getattr(options, key) else "off"
    return values


def diffusers_targets(names: list[str], family: str) -> list[str] | str:
    """The diffusers Linears (full paths) of the file's denoiser modules, a fused one's every part; else why
    not: a name dbspec does not place, SD3's patch convolution, or a top-level Linear whose name is the tail
    of a block's other than Flux's final-layer `proj_out` (final_layer_block keeps the single blocks' out)."""
    lists, _top = _LAYOUTS[family]
    children = {c for _blocks, table in lists.values() for parts in table.values() for c in parts}
    out: list[str] = []
    for name in names:
        found = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)
        if found is None:
            return f"module `{name}` is no Linear of kohya's model dbspec places"
        blocks, index, parts = found
        if not blocks and parts == ("pos_embed.proj",):
            return f"module `{name}` adapts a convolution (the patch embedding)"
        if not blocks and parts != ("proj_out",) and any(c.endswith("." + parts[0]) for c in children):
            return (
                f"module `{name}` is diffusers' top-level `{parts[0]}`, a name the blocks' Linears end in "
                "too (a target suffix would take them along)"
            )
        out.extend(f"{blocks}.{index}.{p}" if blocks else p for p in parts)
    return out


def locon_dora(local) -> bool | frozenset[str] | str:
    """Whether a LoCon file's modules hold LyCORIS's weight decomposition (`dora_scale`, one magnitude per
    output row of kohya's Linear, or of a convolution, (out, 1, 1, 1): LoConModule built with
    weight_decompose): True for every module, the names of those that do where only some modules do (their
    blocks' own dora, the denoiser's and the text encoders' alike); why not when one is per input."""
    modules = {n: m for n, m in read_lycoris_file(local).items() if m.algo != "norm"}  # train_norm's beside
    held = [m for m in modules.values() if "dora_scale" in m.shapes]
    if not held:
        return False
    bare = next((m.name for m in modules.values() if "dora_scale" not in m.shapes), None)
    for m in held:
        rows = m.shapes["lora_up.weight"][0]
        conv = len(m.shapes["lora_down.weight"]) == 4  # SD3's patch convolution: (out, 1, 1, 1)
        if tuple(m.shapes["dora_scale"]) != ((rows, 1, 1, 1) if conv else (rows, 1)):
            return f"`{m.name}.dora_scale` {list(m.shapes['dora_scale'])} (per input, not per output row)"
    return True if bare is None else frozenset(m.name for m in held)
