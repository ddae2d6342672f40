"""lycoris.kohya --dim_from_weights on Flux / SD3 with a LoKr, LoHa or full file: the [adapter] values
(factor_file_adapter) for the modules LyCORIS's create_network_from_weights builds from it, as
lycoris_flow_weights.py reads and rebuilds them. SD3's patch convolution (`lora_unet_x_embedder_proj`) is
`conv_targets` at the rank, alpha and Tucker form (`lokr_t2`, `hada_t1` / `hada_t2`: tucker) LyCORIS
rebuilds it with (its LoKr split the adapter's; factors LyCORIS's copy_ rejects, e.g. a LoKr Tucker core
without decompose_both, whose rank it reads off `lokr_w2_a`'s columns: DBS402). Tucker tensors on a Linear
(no Tucker core there: AttributeError): DBS402. A `dora_scale` in every module is LyCORIS's weight
decomposition (dora = true, the patch convolution's too; in some only: those modules' blocks' dora "on",
the patch convolution's a block of its own). Flux's final layer
(`proj_out`, a suffix of every single block's) is the target with a first rank-0 block for the single
blocks' the file lacks. CLIP modules (`lora_te1_*`, SD3's `lora_te2_*` CLIP-G) are `text_encoder_targets`
(their full paths; SD3's CLIP-G layers `text_encoder_2_targets` where they are other than CLIP-L's) at the
adapter's rank, alpha and split, a module at its own in an [[adapter.text_encoder_blocks]] entry. T5-XXL's
(Flux's `lora_te2_*`, SD3's `lora_te3_*`: the index in the encoder list kohya hands LyCORIS) train with
CLIP's while T5 encodes every step, train_t5xxl or not (lycoris_flow_file.py): `train.t5` (dbspec's T5
LoKr / LoHa), the T5 Linears the file lacks at rank 0, its modules at options of their own in text-encoder
blocks; where they would never train (text-encoder outputs cached, text_encoder_lr 0) the file's modules
still change T5's outputs where it encodes: DBS403. A full file (`diff` / `diff_b`) is kind full over its
modules' layers, starting at W + 2 diff as kohya does (init_scale 2, _full_file; SD3's patch convolution's
4-D diff a full copy of it, conv_targets; Flux's final layer without some single block's linear2: those
`exclude`d; T5-XXL's: train.t5's full copies, T5's Linears the file lacks excluded, a `diff_b` there
DBS402)."""

from __future__ import annotations

import math
import re

from dbspec.convert.kohya.lycoris_flow_file import NUM_SINGLE, t5_encoder
from dbspec.convert.kohya.lycoris_maps import _pattern
from dbspec.convert.kohya.lycoris_flow_weights import (
    LokrOptions,
    Own,
    LycorisModule,
    _factor_shapes,
    check_loha,
    check_lokr,
    diffusers_targets,
    lokr_rebuilt,
    own_blocks,
    own_values,
)
from dbspec.plan.lokr import factorization


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


def _patch_options(m: LycorisModule) -> tuple[LokrOptions | int, float, Own]:
    """check_lokr's / check_loha's answer where SD3's patch convolution is the only module of its kind
    (beside other kinds' modules): the LoKr split (lokr_rebuilt) or LoHa rank LyCORIS rebuilds it with, at
    its alpha (0: the rank), no module of its own; its conv_rank / conv_alpha _lokr_patch / _loha_patch's."""
    if "hada_w1_b" in m.shapes:
        rank = int(m.shapes["hada_w1_b"][0])
        return rank, float(m.alpha or rank), {}
    options = lokr_rebuilt(m)[0]
    return options, float(m.alpha or options.rank), {}


def final_layer_block(targets: list[str], family: str) -> list[dict]:
    """Flux's (Chroma's) final layer (kohya's `final_layer.linear`, diffusers' top-level `proj_out`) among
    the targets: the target `proj_out` is a suffix of every single block's `proj_out` (kohya's linear2) too,
    so a first, rank-0 block keeps out those the file does not hold (peft's exclude_modules,
    runtime/blocks.py). Chroma1-HD has Flux's 38 single blocks."""
    if family not in ("flux", "chroma") or "proj_out" not in targets:
        return []
    left = [str(i) for i in range(NUM_SINGLE) if f"single_transformer_blocks.{i}.proj_out" not in targets]
    if not left:
        return []
    pattern = rf"^single_transformer_blocks\.({'|'.join(left)})\.proj_out$"
    return [{"pattern": pattern, "rank": 0, "alpha": 1.0}]


# LyCORIS's numbering of the encoders kohya hands it: CLIP first (Flux: CLIP-L; SD3: CLIP-L, CLIP-G) and
# their layer counts in kohya's models, then T5-XXL; Flux's lora_te3_ names no module (LyCORIS ignores it),
# nor Chroma's lora_te1_ (flux_train_network.py hands LyCORIS flux_utils.DummyCLIPL, which has no Linear;
# only the mixed-kind files of lycoris_flow_mixed.py read Chroma's entries)
_CLIPS = {"flux": {"lora_te1_": 12}, "sd3": {"lora_te1_": 12, "lora_te2_": 32}, "chroma": {}}
_T5 = {"flux": "lora_te2_", "sd3": "lora_te3_", "chroma": "lora_te2_"}
_CLIP_LINEAR = re.compile(r"^text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")


_COMPONENTS = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}  # kohya's CLIP-L, SD3's CLIP-G
# dbspec's T5-XXL (train.t5; Chroma loads it alone, its first text encoder)
_T5_COMPONENT = {"flux": "text_encoder_2", "sd3": "text_encoder_3", "chroma": "text_encoder"}
_T5_LINEAR = re.compile(
    r"^encoder_block_(\d+)_layer_(?:0_SelfAttention_([qkvo])|1_DenseReluDense_(wi_0|wi_1|wo))$"
)


def t5_path(name: str, family: str) -> str | None:
    """transformers' T5EncoderModel path of a T5-XXL attention / gated-MLP Linear module of the file (T5-XXL's
    24 blocks), or None."""
    found = _T5_LINEAR.match(name.removeprefix(_T5[family]))
    if found is None or int(found.group(1)) >= 24:
        return None
    if found.group(2):
        return f"encoder.block.{found.group(1)}.layer.0.SelfAttention.{found.group(2)}"
    return f"encoder.block.{found.group(1)}.layer.1.DenseReluDense.{found.group(3)}"


def t5_left_block(names: list[str], family: str) -> list[dict]:
    """A rank-0 text-encoder block for T5-XXL's Linears the file lacks (train.t5 adapts every one)."""
    component = _T5_COMPONENT[family]
    rows = [(f"{component}.{p}", cls, kind) for p, cls, kind in t5_encoder() if p]
    held = {f"{component}.{t5_path(n, family)}" for n in names}
    left = {p for p, _, kind in rows if kind and p not in held}
    return [{"pattern": _pattern(left, rows), "rank": 0, "alpha": 1.0}] if left else []


def _clip_path(name: str, family: str) -> tuple[str, str] | str | None:
    """(prefix, path suffix of both CLIP layouts) of a CLIP attention / MLP module of the file; None for a
    module of no encoder LyCORIS builds on (Flux's lora_te3_); else why not."""
    clips = _CLIPS[family]
    if name.startswith(_T5[family]):
        return None if t5_path(name, family) else f"module `{name}` is no T5-XXL attention / MLP Linear"
    prefix = next((p for p in clips if name.startswith(p)), None)
    if prefix is None:
        return None
    found = _CLIP_LINEAR.match(name.removeprefix(prefix))
    if found is None or int(found.group(1)) >= clips[prefix]:
        return f"module `{name}` is no CLIP attention / MLP Linear (kohya's CLIP targets)"
    inner = found.group(2).replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
    # a path suffix of both CLIP layouts (transformers 5.6 drops CLIPTextModel's `text_model.`)
    return prefix, f"encoder.layers.{found.group(1)}.{inner}"


def clip_targets(names: list[str], family: str) -> tuple[list[str], list[str] | None] | str:
    """The CLIP Linears (full paths) of the file's text-encoder modules, which LyCORIS's
    create_network_from_weights builds by name on kohya's CLIP-L (SD3: and CLIP-G): one list for the
    encoders, and None, or CLIP-L's and CLIP-G's own lists when the file adapts other layers in each (a path
    in one encoder's file modules names the same layer of the other); else why not: a T5-XXL module
    (LyCORIS builds it while its network's train_t5xxl stays False), or a CLIP module outside the attention /
    MLP Linears."""
    clips = _CLIPS[family]
    paths: dict[str, set[str]] = {}
    for name in names:
        found = _clip_path(name, family)
        if isinstance(found, str):
            return found
        if found is not None:
            paths.setdefault(found[0], set()).add(found[1])
    union = set().union(*paths.values()) if paths else set()
    order = lambda ps: sorted(ps, key=lambda p: (int(p.split(".")[2]), p))  # noqa: E731
    if any(own != {p for p in union if int(p.split(".")[2]) < clips[k]} for k, own in paths.items()):
        return order(paths["lora_te1_"]), order(paths["lora_te2_"])  # both held, or the sets would agree
    return order(union), None


def own_text_blocks(
    own: Own, common: LokrOptions | int, family: str, dora: frozenset[str] = frozenset()
) -> list[dict]:
    """[[adapter.text_encoder_blocks]] for the CLIP modules at options of their own: one per set of options,
    its pattern the modules' `<component>.text_model.<path>`s; `dora` as for own_blocks."""
    groups: dict[tuple, list[str]] = {}
    for name, (options, alpha) in own.items():
        key = (options, alpha, name in dora)
        if name.startswith(_T5[family]):  # T5-XXL's (train.t5)
            path = f"{_T5_COMPONENT[family]}.{t5_path(name, family)}"
            groups.setdefault(key, []).append(re.escape(path))
            continue
        found = _clip_path(name, family)
        assert isinstance(found, tuple)  # clip_targets placed every module
        path = f"{_COMPONENTS[found[0]]}.text_model.{found[1]}"
        groups.setdefault(key, []).append(re.escape(path))
    return [
        {
            "pattern": f"^(?:{'|'.join(sorted(paths))})$",
            **own_values(options, alpha, common),
            **({"dora": "on"} if on else {}),
        }
        for (options, alpha, on), paths in groups.items()
    ]


def _patch_rows(m: LycorisModule) -> int:
    """The output channels of the patch convolution the module's factors span (LohaModule's Tucker form
    holds them in `hada_w1_a`'s columns, LokrModule's in its two factors' rows)."""
    s = m.shapes
    if "hada_w1_a" in s:
        return s["hada_w1_a"][1] if "hada_t1" in s else s["hada_w1_a"][0]
    w1, _ = _factor_shapes(m)
    out_k = s["lokr_w2"][0] if "lokr_w2" in s else s["lokr_w2_a"][1 if "lokr_t2" in s else 0]
    return w1[0] * out_k


def _dora(built: list[LycorisModule], patch: LycorisModule | None) -> bool | frozenset[str] | str:
    """Whether the file's modules hold LyCORIS's weight decomposition (`dora_scale`: the module is built with
    weight_decompose, one magnitude per output row of the fused Linear, and of the patch convolution: (out,
    1, 1, 1)): True for every module, the names of those that do where only some do (their blocks' own
    dora, SD3's patch convolution's included: _patch_block); why not when a `dora_scale` is not of that
    shape."""
    modules = [*built, *([patch] if patch is not None else [])]
    held = [m for m in modules if "dora_scale" in m.shapes]
    if not held:
        return False
    for m in held:
        s = m.shapes
        if m is patch:
            want: tuple[int, ...] = (_patch_rows(m), 1, 1, 1)
        else:
            rows = (
                s["hada_w1_a"][0] if "hada_w1_a" in s else _factor_shapes(m)[0][0] * _factor_shapes(m)[1][0]
            )
            want = (rows, 1)
        if tuple(s["dora_scale"]) != want:
            return (
                f"invalid:`{m.name}.dora_scale` has shape {list(s['dora_scale'])}, not LyCORIS's "
                f"{list(want)} (one magnitude per output row): its copy_ raises"
            )
    if len(held) == len(modules):
        return True
    return frozenset(m.name for m in held)


def _patch_block(out: dict) -> dict:
    """The [[adapter.blocks]] entry giving SD3's patch convolution LyCORIS's weight decomposition alone
    (make_module_from_state_dict builds its module with weight_decompose where its `dora_scale` is, one
    magnitude per output channel): the adapter's rank, alpha and the convolution's conv_rank / conv_alpha
    (its LoKr split and Tucker form the adapter's), dora "on"."""
    return {
        "pattern": r"^(pos_embed\.proj)$",
        "rank": out["rank"],
        "alpha": out["alpha"],
        "conv_rank": out["conv_rank"],
        "conv_alpha": out["conv_alpha"],
        "dora": "on",
    }


def _full_file(
    denoiser: list[LycorisModule],
    text_targets: list[str],
    text_2: list[str] | None,
    family: str,
    t5: list[LycorisModule],
) -> dict | str:
    """[adapter] values for a full file (`diff` / `diff_b`): FullModule on each module's layer, which
    create_network_from_weights builds at W + diff and train_network.py's load_weights (its load hook adds
    the file's diff to the module's weight) moves to W + 2 diff: init_scale 2 (checked with lycoris-lora
    4.1.3). dbspec's full copies are per diffusers part, so a fused module's parts each take their rows.
    Flux's final layer (the target `proj_out`, a suffix of every single block's `proj_out`, kohya's
    linear2) without some linear2: those excluded (`exclude`). `t5`: T5-XXL's modules, which train in
    LyCORIS's text group while T5 encodes: train.t5 (full copies of T5's Linears), those the file lacks
    excluded; a `diff_b` on one (T5's Linears have no bias) is DBS402: make_module_from_state_dict makes it
    the layer's bias, and FullModule's custom_state_dict subtracts the original bias, None, when kohya saves
    (TypeError)."""
    if not denoiser:
        return "it holds no module of the denoiser"
    names = [m.name for m in denoiser if m.name != PATCH or family != "sd3"]
    if not names:
        return "it holds no Linear module of the denoiser"
    targets = diffusers_targets(names, family)
    if isinstance(targets, str):
        return targets
    # a target `proj_out` also takes every single block's: those the file lacks excluded
    exclude = [block["pattern"] for block in final_layer_block(targets, family)]
    if t5:
        bias = next((m.name for m in t5 if "diff_b" in m.shapes), None)
        if bias:
            return (
                f"invalid:module `{bias}` holds a `diff_b`, but T5-XXL's Linears have no bias: "
                "make_module_from_state_dict makes it the layer's bias, and FullModule's custom_state_dict "
                "subtracts the original bias (None) when kohya saves the network: TypeError"
            )
        component = _T5_COMPONENT[family]
        # T5's Linears the file lacks (train.t5 copies every one), anchored to T5's component
        exclude += [
            rf"^{re.escape(component)}(?:\..*)?" + block["pattern"]
            for block in t5_left_block([m.name for m in t5], family)
        ]
    patch = family == "sd3" and any(m.name == PATCH for m in denoiser)
    return {
        "kind": "full",
        "denoiser_targets": targets,
        # the patch convolution's FullModule: a full copy of the 2x2 convolution (lycoris_full.FullLayer)
        **({"conv_targets": ["pos_embed.proj"]} if patch else {}),
        **({"text_encoder_targets": text_targets} if text_targets else {}),
        **({"text_encoder_2_targets": text_2} if text_2 is not None else {}),
        **({"exclude": exclude} if exclude else {}),
        **({"t5": True} if t5 else {}),
        "init_scale": 2.0,
    }


def factor_file_adapter(
    modules: dict[str, LycorisModule], family: str, unet_only: bool, t5_idle: str = "", beside: bool = False
) -> dict | str:
    """[adapter] values (kind, ranks, LoKr split, targets; "t5": train.t5) for the modules
    create_network_from_weights builds from a LoKr, LoHa or full file; else why not: "invalid:..." where
    LyCORIS fails (an IA3 file too), else what dbspec cannot express. `t5_idle`: why T5-XXL's modules
    would never train (lycoris_flow_file._t5_idle), or "". `beside`: other kinds' modules hold the denoiser
    (lycoris_flow_mixed.py), so these may be the text encoders' alone."""
    algos = sorted({m.algo or "none" for m in modules.values()})
    denoiser = [m for m in modules.values() if m.name.startswith("lora_unet")]
    text = [m.name for m in modules.values() if m.name.startswith("lora_te")]
    algo = algos[0]
    if len(algos) > 1:  # LoKr / LoHa / LoCon / full together: lycoris_flow_mixed.py (model.py picks it)
        return f"its modules are LyCORIS {' and '.join(algos)} modules; dbspec's adapter is of one kind"
    if family == "chroma" and not beside:  # a Chroma run of several kinds starts from the file (mixed_init)
        return f"dbspec's {algo} on the fused layers is written in kohya's Flux / SD3 layouts, not Chroma's"
    clip = clip_targets(text, family) if text and not unet_only else ([], None)
    if isinstance(clip, str):
        return clip
    text_targets, text_2 = clip
    t5 = sorted(n for n in text if n.startswith(_T5[family]) and family in _T5_COMPONENT and not unet_only)
    if t5 and t5_idle:
        return (
            f"module `{t5[0]}` is T5-XXL's, whose LyCORIS modules keep the file's weights untrained where T5 "
            f"encodes: {t5_idle} (dbspec's T5 adapter trains)"
        )
    if algo == "full":
        return _full_file(denoiser, text_targets, text_2, family, [modules[n] for n in t5])
    # the modules LyCORIS builds and apply_to keeps: the denoiser's and (not unet-only) the CLIP and T5 ones
    built = denoiser + [
        m for m in modules.values() if text_targets and m.name.startswith(tuple(_CLIPS[family]))
    ]
    built += [modules[n] for n in t5]
    patch = modules.get(PATCH) if family == "sd3" and algo in ("lokr", "loha") else None
    if patch is not None:
        denoiser = [m for m in denoiser if m is not patch]
        built = [m for m in built if m is not patch]
    extra = next((f"{m.name}.{k}" for m in built for k in m.shapes if k.endswith(("_t1", "_t2"))), None)
    bare = next((m.name for m in built if m.alpha is None), None)
    if not denoiser and not (beside and (built or patch is not None)):
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
    if built:
        checked = (check_lokr if algo == "lokr" else check_loha)(built)
    else:  # beside other kinds, SD3's patch convolution its kind's only module: the adapter's values its own
        checked = _patch_options(patch)
    if isinstance(checked, str):
        return checked
    options, alpha, own = checked
    some = dora if isinstance(dora, frozenset) else frozenset()  # the blocks' own dora
    own = {**{name: (options, alpha) for name in sorted(some - {PATCH})}, **own}
    own_text = {name: value for name, value in own.items() if name.startswith("lora_te")}
    own = {name: value for name, value in own.items() if name not in own_text}
    if isinstance(options, int):  # LoHa's rank
        out: dict = {"kind": algo, "rank": options, "alpha": alpha}
    else:
        out = {"kind": algo, "rank": options.rank, "alpha": alpha, "factor": options.factor}
        out.update({k: True for k in ("decompose_both", "full_matrix") if getattr(options, k)})
    blocks = [*final_layer_block(targets, family), *own_blocks(own, options, family, some)]
    text_blocks = [
        *(t5_left_block(t5, family) if t5 else []),
        *(own_text_blocks(own_text, options, family, some) if own_text else []),
    ]
    if dora is True:  # make_module_from_state_dict: weight_decompose with wd_on_out's default, per output row
        out["dora"] = True
    if patch is not None:  # conv_targets at its own rank and alpha (tucker: the only k x k convolution)
        conv = _lokr_patch(patch, options) if isinstance(options, LokrOptions) else _loha_patch(patch)
        if isinstance(conv, str):
            return conv
        out.update(conv_targets=["pos_embed.proj"], **{k: v for k, v in conv.items() if v is not False})
        if PATCH in some:  # its dora_scale where some others have none: a block of its own, dora "on"
            blocks.append(_patch_block(out))
    return {
        **out,
        "denoiser_targets": targets,
        **({"text_encoder_targets": text_targets} if text_targets else {}),
        **({"text_encoder_2_targets": text_2} if text_2 is not None else {}),
        **({"text_encoder_blocks": text_blocks} if text_blocks else {}),
        **({"t5": True} if t5 else {}),
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
    }
