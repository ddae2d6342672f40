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
the shared factors). SD3's patch convolution (`lora_unet_x_embedder_proj`) is `conv_targets` at the
rank, alpha and Tucker form (`lokr_t2`, `hada_t1` / `hada_t2`: tucker) LyCORIS rebuilds it with (its LoKr
split the adapter's; factors LyCORIS's copy_ rejects, e.g. a LoKr Tucker core without decompose_both, whose
rank it reads off `lokr_w2_a`'s columns: DBS402). Tucker tensors on a Linear (no Tucker core there:
AttributeError): DBS402. A `dora_scale` in every module is LyCORIS's weight decomposition (dora = true;
in some only, or on the patch convolution: DBS403). Flux's final layer (`proj_out`, a suffix of every
single block's) is the target with a first rank-0 block for the single blocks' the file lacks.
CLIP modules (`lora_te1_*`, SD3's `lora_te2_*` CLIP-G) are
`text_encoder_targets` (their full paths, one list for both encoders) at the adapter's rank, alpha and
split (a module at its own: DBS403); T5-XXL's (LyCORIS's train_t5xxl stays False): DBS403."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import attrs

from dbspec.compiler.lora_file import _scalar
from dbspec.compiler.safetensors_header import _read_raw_header
from dbspec.convert.kohya.file_ranks import _LAYOUTS, _patterns, flow_paths
from dbspec.convert.kohya.lycoris_flow_file import NUM_SINGLE
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
    header, data_bytes = _read_raw_header(path)
    header.pop("__metadata__", None)
    data_start = path.stat().st_size - data_bytes
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
            alpha=None if alpha is None else _scalar(path, f"{name}.alpha", alpha, data_start),
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


def own_blocks(own: Own, common: LokrOptions | int, family: str) -> list[dict]:
    """[[adapter.blocks]] for the modules at options of their own: one per set of options, its pattern the
    modules' diffusers parts (a fused Linear's all: one block covers it, compiler/fused.py)."""
    groups: dict[tuple, dict[str, dict[int | None, set[str]]]] = {}
    for name, (options, alpha) in own.items():
        found = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)
        assert found is not None  # diffusers_targets placed every module
        blocks, index, parts = found
        key = (options, alpha)
        groups.setdefault(key, {}).setdefault(blocks, {}).setdefault(index, set()).update(parts)
    out = []
    for (options, alpha), lists in groups.items():
        values: dict = {"rank": options, "alpha": alpha}
        if isinstance(options, LokrOptions):
            assert isinstance(common, LokrOptions)
            values = {"rank": options.rank, "alpha": alpha}
            if options.factor != common.factor:
                values["factor"] = options.factor
            for key in ("decompose_both", "full_matrix"):
                if getattr(options, key) != getattr(common, key):
                    values[key] = "on" if getattr(options, key) else "off"
        for blocks, indices in lists.items():
            out.extend({"pattern": pattern, **values} for pattern in _patterns(blocks, indices))
    return out


PATCH = "lora_unet_x_embedder_proj"  # SD3's patch convolution (PatchEmbed's 2x2, stride-2 Conv2d)
_KERNEL = (2, 2)


def lokr_conv_shapes(out: int, inp: int, o: LokrOptions, tucker: bool) -> dict[str, tuple[int, ...]]:
    """The factors LokrModule builds on an out x in 2x2 convolution (use_tucker: `lokr_t2`)."""
    in_m, in_n = factorization(inp, o.factor)
    out_l, out_k = factorization(out, o.factor)
    r, shapes = o.rank, {}
    if o.decompose_both and r < max(out_l, in_m) / 2 and not o.full_matrix:
        shapes["lokr_w1_a"], shapes["lokr_w1_b"] = (out_l, r), (r, in_m)
    else:
        shapes["lokr_w1"] = (out_l, in_m)
    if r >= max(out_k, in_n) / 2 or o.full_matrix:
        shapes["lokr_w2"] = (out_k, in_n, *_KERNEL)
    elif tucker:
        shapes["lokr_t2"], shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (r, r, *_KERNEL), (r, out_k), (r, in_n)
    else:
        shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (out_k, r), (r, in_n * math.prod(_KERNEL))
    return shapes


def _lokr_patch(m: LycorisModule, common: LokrOptions) -> dict | str:
    """conv_rank / conv_alpha / tucker building the patch convolution's LokrModule as LyCORIS rebuilds it
    from the file (make_module_from_state_dict's options on the convolution the factors span), with the
    adapter's factor and decompose_both; else why not ("invalid:..." where LyCORIS's copy_ fails)."""
    s, tucker = m.shapes, "lokr_t2" in m.shapes
    w1, _ = _factor_shapes(m)
    out_k, in_n = (
        s["lokr_w2"][:2]
        if "lokr_w2" in s
        else (s["lokr_w2_a"][1], s["lokr_w2_b"][1])
        if tucker
        else (s["lokr_w2_a"][0], s["lokr_w2_b"][1] // math.prod(_KERNEL))
    )
    out, inp = w1[0] * out_k, w1[1] * in_n
    theirs = lokr_rebuilt(m)[0]
    want = {k: tuple(v) for k, v in s.items() if k.startswith("lokr_")}
    if lokr_conv_shapes(out, inp, theirs, tucker) != want:
        return (
            f"invalid:LyCORIS's LokrModule rebuilt from `{m.name}` (rank {theirs.rank}, factor "
            f"{theirs.factor}) on the {out} x {inp} patch convolution has factors "
            f"{lokr_conv_shapes(out, inp, theirs, tucker)}, not the file's {want}: its copy_ raises"
        )
    full = "lokr_w1" in s and "lokr_w2" in s  # scale 1 (LyCORIS's alpha is the rank)
    rank = (
        max(*factorization(out, common.factor), *factorization(inp, common.factor)) if full else theirs.rank
    )
    ours = LokrOptions(
        rank=rank, factor=common.factor, decompose_both=common.decompose_both, full_matrix=common.full_matrix
    )
    if lokr_conv_shapes(out, inp, ours, tucker) != want:
        return (
            f"module `{m.name}` (the patch convolution) has a Kronecker split (factor {theirs.factor}, "
            f"decompose_both {theirs.decompose_both}) other than the adapter's (factor {common.factor}, "
            f"decompose_both {common.decompose_both}), which dbspec's LoKr gives its convolutions"
        )
    return {
        "conv_rank": rank,
        "conv_alpha": float(m.alpha or rank) if not full else float(rank),
        "tucker": tucker,
    }


def _loha_patch(m: LycorisModule) -> dict | str:
    """conv_rank / conv_alpha / tucker of the patch convolution's LohaModule (rank `hada_w1_b`'s rows,
    use_tucker with `hada_t1`); "invalid:..." when its factors are not the ones LohaModule builds."""
    s, tucker = m.shapes, "hada_t1" in m.shapes
    r = s["hada_w1_b"][0] if "hada_w1_b" in s else 0
    if tucker:
        out, inp = s["hada_w1_a"][1], s["hada_w1_b"][1]
        want = {"hada_t1": (r, r, *_KERNEL), "hada_t2": (r, r, *_KERNEL)}
        want |= {f"hada_w{i}_{x}": (r, out if x == "a" else inp) for i in (1, 2) for x in "ab"}
    else:
        out, inp = s["hada_w1_a"][0], s["hada_w1_b"][1]
        want = {f"hada_w{i}_{x}": (out, r) if x == "a" else (r, inp) for i in (1, 2) for x in "ab"}
    got = {k: tuple(v) for k, v in s.items() if k.startswith("hada_")}
    if got != want:
        return (
            f"invalid:module `{m.name}`'s LoHa factors {got} are not LohaModule's at rank {r}: copy_ raises"
        )
    return {"conv_rank": int(r), "conv_alpha": float(m.alpha or r), "tucker": tucker}


def final_layer_block(targets: list[str], family: str) -> list[dict]:
    """Flux's final layer (kohya's `final_layer.linear`, diffusers' top-level `proj_out`) among the targets:
    the target `proj_out` is a suffix of every single block's `proj_out` (kohya's linear2) too, so a first,
    rank-0 block keeps out those the file does not hold (peft's exclude_modules, runtime/blocks.py)."""
    if family != "flux" or "proj_out" not in targets:
        return []
    left = [str(i) for i in range(NUM_SINGLE) if f"single_transformer_blocks.{i}.proj_out" not in targets]
    if not left:
        return []
    pattern = rf"^single_transformer_blocks\.({'|'.join(left)})\.proj_out$"
    return [{"pattern": pattern, "rank": 0, "alpha": 1.0}]


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


# LyCORIS's numbering of the encoders kohya hands it: CLIP first (Flux: CLIP-L; SD3: CLIP-L, CLIP-G) and
# their layer counts in kohya's models, then T5-XXL; Flux's lora_te3_ names no module (LyCORIS ignores it)
_CLIPS = {"flux": {"lora_te1_": 12}, "sd3": {"lora_te1_": 12, "lora_te2_": 32}}
_T5 = {"flux": "lora_te2_", "sd3": "lora_te3_"}
_CLIP_LINEAR = re.compile(r"^text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")


def clip_targets(names: list[str], family: str) -> list[str] | str:
    """The CLIP Linears (full paths, one list for the encoders) of the file's text-encoder modules, which
    LyCORIS's create_network_from_weights builds by name on kohya's CLIP-L (SD3: and CLIP-G); else why not:
    a T5-XXL module (LyCORIS builds it while its network's train_t5xxl stays False), a CLIP module outside
    the attention / MLP Linears, or encoders whose layers differ (one target list: a path in one encoder's
    file modules names the same layer of the other)."""
    clips, t5 = _CLIPS[family], _T5[family]
    paths: dict[str, set[str]] = {}
    for name in names:
        if name.startswith(t5):
            return f"module `{name}` is T5-XXL's, which LyCORIS builds while its train_t5xxl stays False"
        prefix = next((p for p in clips if name.startswith(p)), None)
        if prefix is None:
            continue  # Flux's lora_te3_: no module of LyCORIS's encoders
        found = _CLIP_LINEAR.match(name.removeprefix(prefix))
        if found is None or int(found.group(1)) >= clips[prefix]:
            return f"module `{name}` is no CLIP attention / MLP Linear (kohya's CLIP targets)"
        inner = found.group(2).replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        # a path suffix of both CLIP layouts (transformers 5.6 drops CLIPTextModel's `text_model.`)
        paths.setdefault(prefix, set()).add(f"encoder.layers.{found.group(1)}.{inner}")
    union = set().union(*paths.values()) if paths else set()
    for prefix, own in paths.items():
        layers = {p for p in union if int(p.split(".")[2]) < clips[prefix]}
        if own != layers:
            return (
                f"its {prefix.rstrip('_')} modules are other layers than the other CLIP encoder's "
                f"(e.g. `{sorted(own ^ layers)[0]}`): dbspec's LoKr / LoHa has one CLIP target list"
            )
    return sorted(union, key=lambda p: (int(p.split(".")[2]), p))


def _dora(built: list[LycorisModule], patch: LycorisModule | None) -> bool | str:
    """Whether the file's modules hold LyCORIS's weight decomposition (`dora_scale`: the module is built with
    weight_decompose, one magnitude per output row of the fused Linear); why not when only some do (dbspec's
    `dora` is the adapter's), the patch convolution does, or a `dora_scale` is not (rows, 1)."""
    held = [m for m in built if "dora_scale" in m.shapes]
    if not held:
        return patch is not None and "dora_scale" in patch.shapes and "its patch convolution's `dora_scale`"
    if patch is not None and "dora_scale" in patch.shapes:
        return "its patch convolution's `dora_scale` (LyCORIS's weight decomposition of a convolution)"
    if len(held) != len(built):
        bare = next(m.name for m in built if "dora_scale" not in m.shapes)
        return f"`dora_scale` in some modules only (not `{bare}`): dbspec's dora is the whole adapter's"
    for m in held:
        s = m.shapes
        rows = s["hada_w1_a"][0] if "hada_w1_a" in s else _factor_shapes(m)[0][0] * _factor_shapes(m)[1][0]
        if tuple(s["dora_scale"]) != (rows, 1):
            return (
                f"invalid:`{m.name}.dora_scale` has shape {list(s['dora_scale'])}, not LyCORIS's [{rows}, 1] "
                "(one magnitude per output row): its copy_ raises"
            )
    return True


def factor_file_adapter(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict | str:
    """[adapter] values (kind, ranks, LoKr split, targets) for the modules create_network_from_weights
    builds from a LoKr / LoHa file; else why not: "invalid:..." where LyCORIS fails (an IA3 file too), else
    what dbspec cannot express."""
    algos = sorted({m.algo or "none" for m in modules.values()})
    denoiser = [m for m in modules.values() if m.name.startswith("lora_unet")]
    text = [m.name for m in modules.values() if m.name.startswith("lora_te")]
    algo = algos[0]
    if algo == "full":  # checked against lycoris-lora 4.1.3: a file diff of 1 trains from W + 2
        return (
            "LyCORIS builds each FullModule at W + diff, and train_network.py's load_weights then adds the "
            "file's diff again (its load hook): the run starts at W + 2 diff, which dbspec's full copies "
            "(started at W + diff from a file) do not express"
        )
    if len(algos) > 1:
        return f"its modules are LyCORIS {' and '.join(algos)} modules; dbspec's adapter is of one kind"
    if family == "chroma":
        return f"dbspec's {algo} on the fused layers is written in kohya's Flux / SD3 layouts, not Chroma's"
    text_targets = clip_targets(text, family) if text and not unet_only else []
    if isinstance(text_targets, str):
        return text_targets
    # the modules LyCORIS builds and apply_to keeps: the denoiser's and (not unet-only) the CLIP ones
    built = denoiser + [
        m for m in modules.values() if text_targets and m.name.startswith(tuple(_CLIPS[family]))
    ]
    patch = modules.get(PATCH) if family == "sd3" and algo in ("lokr", "loha") else None
    if patch is not None:
        denoiser = [m for m in denoiser if m is not patch]
        built = [m for m in built if m is not patch]
    extra = next((f"{m.name}.{k}" for m in built for k in m.shapes if k.endswith(("_t1", "_t2"))), None)
    bare = next((m.name for m in built if m.alpha is None), None)
    if not denoiser:
        return "it holds no module of the denoiser"
    dora = _dora(built, patch)
    if isinstance(dora, str):
        return dora
    if (
        extra
    ):  # LyCORIS's module on a Linear has no Tucker core: AttributeError in make_module_from_state_dict
        return f"invalid:LyCORIS's module on a Linear has no Tucker core for `{extra}`: AttributeError"
    bare = bare or (patch.name if patch is not None and patch.alpha is None else None)
    if bare and algo != "ia3":
        return f"invalid:module `{bare}` has no alpha: make_module_from_state_dict's float(None) raises"
    targets = diffusers_targets([m.name for m in denoiser], family)
    if isinstance(targets, str):
        return targets
    if algo == "ia3":  # get_module hands it (weight, on_input); it takes weight alone
        return (
            "invalid:LyCORIS's IA3Module.make_module_from_state_dict takes a module's `weight` alone, but "
            "get_module hands it `weight` and `on_input` (lycoris-lora 4.1.3): TypeError"
        )
    checked = (check_lokr if algo == "lokr" else check_loha)(built)
    if isinstance(checked, str):
        return checked
    options, alpha, own = checked
    apart = next((name for name in own if name.startswith("lora_te")), None)
    if apart is not None:  # dbspec's fused LoKr / LoHa: no [[adapter.text_encoder_blocks]]
        return (
            f"its CLIP module `{apart}` has a rank, alpha or Kronecker split of its own (dbspec's {algo} "
            "on the fused layers has one for every CLIP layer: no [[adapter.text_encoder_blocks]])"
        )
    if isinstance(options, int):  # LoHa's rank
        out: dict = {"kind": algo, "rank": options, "alpha": alpha}
    else:
        out = {"kind": algo, "rank": options.rank, "alpha": alpha, "factor": options.factor}
        out.update({k: True for k in ("decompose_both", "full_matrix") if getattr(options, k)})
    blocks = [*final_layer_block(targets, family), *own_blocks(own, options, family)]
    if dora:  # make_module_from_state_dict: weight_decompose with wd_on_out's default, one per output row
        out["dora"] = True
    if patch is not None:  # conv_targets at its own rank and alpha (tucker: the only k x k convolution)
        conv = _lokr_patch(patch, options) if isinstance(options, LokrOptions) else _loha_patch(patch)
        if isinstance(conv, str):
            return conv
        out.update(conv_targets=["pos_embed.proj"], **{k: v for k, v in conv.items() if v is not False})
    return {
        **out,
        "denoiser_targets": targets,
        **({"text_encoder_targets": text_targets} if text_targets else {}),
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
    }
