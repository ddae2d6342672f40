"""kohya's networks.lora_flux `network_reg_dims` / `network_reg_lrs` as [[adapter.blocks]], exactly.

create_network parses each as comma-separated `regex=value` items (each stripped, empty items skipped, an item
without `=` or with a value int() / float() rejects dropped with a warning, the text before the first `=`
the regex; a repeated regex keeps its first place and its last value: a dict). LoRANetwork.create_modules
gives a module the value of the first regex (in that order) that `re.search` finds in its kohya name
(`lora_unet_double_blocks_0_img_attn_qkv`): network_reg_dims' rank (0 builds none) with network_alpha, in
place of every other rank rule (network_dim, the per-type ranks, in_dims, train_double/single_block_indices);
only train_blocks (which modules it scans at all) and in_dims being given (the embedders are scanned only
then, each at its in_dims rank unless a regex matches) stay. A regex that does not compile stops kohya
(re.error) at the first module that reaches it. network_reg_lrs gives each built module of the first
matching regex its own optimizer group at that absolute rate (LoRA+'s up matrices at rate x ratio); there a
regex that does not compile is skipped. A rate is the block's own `lr` (the runtime's group rate, LoRA+'s up
group at lr x ratio as kohya computes it), so it is kohya's to the bit.

The text encoders' modules (CLIP-L's `lora_te1_`, T5-XXL's `lora_te3_` with train_t5xxl=True) take the regexes
alike: create_modules ranks them (network_dim unless a rank regex matches) and assemble_params gives each
encoder's modules the first matching regex's group, else the encoder's text_encoder_lr value; they become
[[adapter.text_encoder_blocks]] (text_reg_blocks) over `<component>.<transformers path>`.

Here every module kohya scans is enumerated by its kohya name, the user's regexes applied with Python's `re`
as kohya applies them, and the modules they decide become blocks placed before the others (the first block
matching a module wins), their anchored patterns naming the diffusers paths (a fused Linear's parts
together)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from dbspec.convert.kohya.file_ranks import _LAYOUTS, _patterns, flow_components

NUM_DOUBLE, NUM_SINGLE = 19, 38
# create_network's in_dims filters [img, time, vector, guidance, txt] over the embedders' kohya names
_IN_FILTERS = ("_img_in", "_time_in", "_vector_in", "_guidance_in", "_txt_in")
# networks/lora_flux.py create_network's per-type ranks, in its order, with the words its names must hold
_TYPE_WORDS = (
    ("img_attn_dim", ("img_attn",)),
    ("txt_attn_dim", ("txt_attn",)),
    ("img_mlp_dim", ("img_mlp",)),
    ("txt_mlp_dim", ("txt_mlp",)),
    ("img_mod_dim", ("img_mod",)),
    ("txt_mod_dim", ("txt_mod",)),
    ("single_dim", ("single_blocks", "linear")),
    ("single_mod_dim", ("modulation",)),
)
# the Linears create_modules builds in each layer of CLIP-L (lora_te1_, CLIPAttention and CLIPMLP: kohya's
# child name -> transformers') and each block of T5-XXL (lora_te3_, with train_t5xxl=True: T5Attention and
# T5DenseGatedActDense)
_CLIP_CHILDREN = {f"self_attn_{p}_proj": f"self_attn.{p}_proj" for p in ("k", "v", "q", "out")}
_CLIP_CHILDREN |= {"mlp_fc1": "mlp.fc1", "mlp_fc2": "mlp.fc2"}
_T5_CHILDREN = {f"layer_0_SelfAttention_{p}": f"layer.0.SelfAttention.{p}" for p in ("q", "k", "v", "o")}
_T5_CHILDREN |= {f"layer_1_DenseReluDense_{p}": f"layer.1.DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wo")}
# kohya's prefix -> (its layer list's path after the component, layers, children)
_TEXT_LAYOUT = {
    "lora_te1_": ("text_model.encoder.layers", 12, _CLIP_CHILDREN),
    "lora_te3_": ("encoder.block", 24, _T5_CHILDREN),
}


def text_modules(prefixes: tuple[str, ...], family: str) -> dict[str, tuple[str, int, str]]:
    """kohya name -> (the escaped path of its layer list in `<component>.<transformers path>`, the layer's
    index, its child's path) of each text-encoder Linear create_modules builds under `prefixes` (lora_te1_
    CLIP-L, lora_te3_ T5-XXL), as [[adapter.text_encoder_blocks]] patterns name it."""
    components = flow_components(family)
    out = {}
    for prefix in prefixes:
        layers, count, children = _TEXT_LAYOUT[prefix]
        head = re.escape(f"{components[prefix]}.{layers}")
        kohya_layers = layers.replace(".", "_")
        for i in range(count):
            for child, path in children.items():
                out[f"{prefix}{kohya_layers}_{i}_{child}"] = (head, i, path)
    return out


def parse_pairs(text: str, is_int: bool) -> tuple[dict[str, float], list[str]]:
    """create_network's parse_kv_pairs: the pairs and the items it drops with a warning."""
    pairs: dict[str, float] = {}
    dropped = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            dropped.append(f"`{item}` is not regex=value")
            continue
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            pairs[key] = int(value) if is_int else float(value)
        except ValueError:
            dropped.append(f"`{item}`: {value!r} is not {'an integer' if is_int else 'a number'}")
    return pairs, dropped


def first_match(pairs: dict[str, float], name: str, skip_bad: bool) -> tuple[str, float] | None:
    """The first regex `re.search` finds in `name`; a bad regex is skipped (reg_lrs) or ValueError."""
    for regex, value in pairs.items():
        try:
            if re.search(regex, name):
                return regex, value
        except re.error as exc:
            if not skip_bad:
                raise ValueError(
                    f"network_reg_dims regex `{regex}` does not compile ({exc}): re.error"
                ) from None
    return None


def flux_names(
    train: str | None, in_dims: list[int] | None, family: str
) -> dict[str, tuple[str, int | None, tuple[str, ...]]]:
    """kohya name -> (diffusers ModuleList or "", index, children) of each denoiser Linear create_modules
    scans on `family`'s model (Flux.1, or Chroma: no modulation Linears, of the embedders img_in and txt_in
    alone)."""
    lists, top = _LAYOUTS[family]
    out: dict[str, tuple[str, int | None, tuple[str, ...]]] = {}
    for kind, total, skip in (
        ("double_blocks", NUM_DOUBLE, "single"),
        ("single_blocks", NUM_SINGLE, "double"),
    ):
        if train == skip:
            continue
        prefix, table = lists[kind]
        for i in range(total):
            for child, parts in table.items():
                out[f"lora_unet_{kind}_{i}_{child}"] = (prefix, i, parts)
    if in_dims is not None:
        for name, path in top.items():
            out[f"lora_unet_{name}"] = ("", None, (path,))
    return out


def default_rank(
    name: str,
    dim: int,
    type_dims: dict[str, int],
    in_dims: list[int] | None,
    selected: dict[str, list[bool]],
) -> int:
    """The rank create_modules gives a module no network_reg_dims regex matches."""
    if in_dims is not None:
        for flt, rank in zip(_IN_FILTERS, in_dims):
            if flt in name and not name.startswith(("lora_unet_double", "lora_unet_single")):
                return rank
    for key, words in _TYPE_WORDS:
        if key in type_dims and all(w in name for w in words):
            dim = type_dims[key]
            break
    if dim:
        index = int(name.split("_")[4]) if ("double" in name or "single" in name) else None
        for kind in ("double", "single"):
            if index is not None and kind in name and kind in selected and not selected[kind][index]:
                return 0
    return dim


def flux_reg_blocks(
    kwargs: dict[str, str],
    *,
    dim: int,
    alpha: float,
    train: str | None,
    type_dims: dict[str, int],
    in_dims: list[int] | None,
    selected: dict[str, list[bool]],
    unet_lr: float | None,
    text_trains: bool,
    groups: dict[str, Any] | None = None,
    family: str,
    t5_trains: bool = False,
    text_rates: tuple[float, float] = (0.0, 0.0),
    text_blocks: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[str], bool]:
    """(blocks, extra denoiser targets, warnings, whether a double block's q/k/v LoRA is built) for
    network_reg_dims / network_reg_lrs (popped from kwargs);
    ValueError where kohya fails, NotImplementedError (its message) where dbspec cannot express the result.
    `groups` (filled when given): kohya's optimizer groups of the denoiser's LoRA modules,
    `reg`: {regex position in network_reg_lrs: its rate} for each regex that is the first to match a built
    module (assemble_params' `reg_lr_<i>` groups), `default`: whether a built module matches none.
    `text_trains`: CLIP-L's LoRA trains (never on Chroma: kohya's dummy CLIP-L has no Linear); `t5_trains`:
    T5-XXL's (train_t5xxl=True), whose modules the regexes reach too; `family`: whose denoiser modules kohya
    scans (flux, chroma); `text_rates`: CLIP-L's and T5-XXL's rates (text_encoder_lr's two values);
    `text_blocks` (filled): the text encoders' [[adapter.text_encoder_blocks]] (text_reg_blocks), and
    `groups["text"]` their groups as `groups` has the denoiser's, by kohya prefix."""
    dims, dropped = (
        parse_pairs(kwargs.pop("network_reg_dims"), True) if "network_reg_dims" in kwargs else (None, [])
    )
    lrs, dropped_lr = (
        parse_pairs(kwargs.pop("network_reg_lrs"), False) if "network_reg_lrs" in kwargs else (None, [])
    )
    warnings = [f"network_reg_dims: kohya drops {d}" for d in dropped]
    warnings += [f"network_reg_lrs: kohya drops {d}" for d in dropped_lr]
    prefixes = ("lora_te1_",) * text_trains + ("lora_te3_",) * t5_trains
    if prefixes:
        text = text_reg_blocks(
            dims, lrs, prefixes, family, alpha=alpha, dim=dim, rates=text_rates, groups=groups
        )
        if text_blocks is not None:
            text_blocks.extend(text)
    modules = flux_names(train, in_dims, family)
    decided: dict[
        tuple[int, float, float, float, tuple[str, int] | None], dict[str, dict[int | None, set[str]]]
    ] = defaultdict(lambda: defaultdict(dict))
    extra: list[str] = []
    qkv = False  # kohya builds a double block's q/k/v LoRA (split_qkv then fails)
    found = [
        (
            name,
            where,
            by_dim := first_match(dims, name, False) if dims else None,
            first_match(lrs, name, True) if lrs else None,
            int(by_dim[1]) if by_dim else default_rank(name, dim, type_dims, in_dims, selected),
        )
        for name, where in modules.items()
    ]
    # unet_lr 0: kohya leaves the default groups out of the optimizer; where a regex trains a built module
    # at a positive rate the denoiser trains, every other built module held in a block at lr_scale 0 (else
    # nothing of the denoiser trains: train.denoiser = false, map_learning_rates)
    hold = bool(unet_lr) or any(rank > 0 and by_lr and by_lr[1] > 0 for *_, by_lr, rank in found)
    for name, (blocks, index, children), by_dim, by_lr, rank in found:
        by_lr = by_lr if hold else None
        qkv = qkv or bool(rank and "double" in name and "attn_qkv" in name)
        if groups is not None and rank > 0:
            if by_lr is not None:
                groups.setdefault("reg", {})[list(lrs).index(by_lr[0])] = by_lr[1]
            else:
                groups["default"] = True
        if by_dim is None and by_lr is None and (unet_lr or not hold):
            continue
        if rank < 0:
            raise ValueError(
                f"network_reg_dims gives `{name}` rank {rank}: torch cannot build a negative rank"
            )
        own = _rate(name, by_lr, unet_lr if hold else 1.0) if rank else (0.0, 1.0)
        key = (rank, alpha if rank else 1.0, *own, _position(lrs, by_lr, own[0], "unet"))
        if by_dim is None and key[2:4] == (0.0, 1.0):
            continue  # the denoiser's rank and rate: no block
        decided[key][blocks].setdefault(index, set()).update(children)
        if not blocks and rank:
            extra.append(children[0].removeprefix("time_text_embed."))
    return _entries(decided), extra, warnings, qkv


def _rate(name: str, by_lr: tuple[str, float] | None, unet_lr: float | None) -> tuple[float, float]:
    """(own lr, lr_scale) of the built module `name`: a matched regex's rate as its own (rate 0: kohya's
    assemble_params leaves the `reg_lr_<i>` group out of the optimizer, lr_scale 0 holds it), else the
    denoiser's (unet_lr 0: its default group left out alike, held)."""
    rate = by_lr[1] if by_lr is not None else unet_lr
    if rate is not None and rate < 0:
        raise NotImplementedError(
            f"network_reg_lrs gives `{name}` rate {rate:g}, which dbspec's optimizer groups do not take "
            "(a rate is at least 0)"
        )
    if not rate:
        return 0.0, 0.0
    return (rate, 1.0) if by_lr is not None else (0.0, 1.0)


def text_reg_blocks(
    dims: dict[str, float] | None,
    lrs: dict[str, float] | None,
    prefixes: tuple[str, ...],
    family: str,
    *,
    alpha: float,
    dim: int,
    rates: tuple[float, float],
    groups: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """[[adapter.text_encoder_blocks]] for the text encoders' modules (kohya prefixes `prefixes`) the regexes
    decide, as create_modules and assemble_params decide them: a matched rank (0 builds none) at
    network_alpha, else network_dim; a built module's first matching rate its own `lr` (rate 0: kohya leaves
    its `reg_lr_<i>` group out of the optimizer, `lr_scale = 0` holds it); the others at their encoder's
    rate (`rates`: CLIP-L's, T5-XXL's). An encoder at rate 0 (its modules idle or untrained) takes the ranks
    alone, unless a regex trains one of its modules (lifted_encoders): then its other built modules are held
    (lr_scale 0), as kohya leaves its default group at 0 out (CLIP-L: train.text_encoder, T5-XXL:
    train.t5, lora_flux._t5_lifted). `groups["text_lifted"]`: those encoders' prefixes. `groups["text"]`
    (filled when `groups` is given): per prefix, `reg` {regex position: rate} of the regexes that are the
    first to match a built module, `default` whether a built module matches none."""
    decided: dict[
        tuple[int, float, float, float, tuple[str, int] | None], dict[str, dict[int | None, set[str]]]
    ] = defaultdict(lambda: defaultdict(dict))
    encoder_rate = {"lora_te1_": rates[0], "lora_te3_": rates[1]}
    modules = text_modules(prefixes, family)
    lifted = lifted_encoders(dims, lrs, modules, dim, encoder_rate)
    if groups is not None:
        groups["text_lifted"] = lifted
    for name, (head, index, child) in modules.items():
        by_dim = first_match(dims, name, False) if dims else None
        by_lr = first_match(lrs, name, True) if lrs else None
        rank = int(by_dim[1]) if by_dim else dim
        prefix = name[: len("lora_te1_")]
        if rank < 0:
            raise ValueError(
                f"network_reg_dims gives `{name}` rank {rank}: torch cannot build a negative rank"
            )
        if not encoder_rate[prefix] and prefix not in lifted:
            by_lr = None  # nothing of it trains: its modules idle or untrained (the ranks alone)
        elif not encoder_rate[prefix] and by_lr is None and rank:
            by_lr = ("", 0.0)  # kohya's default group at rate 0, left out: held (lr_scale 0)
        if groups is not None and rank > 0:
            mine = groups.setdefault("text", {}).setdefault(prefix, {"reg": {}, "default": False})
            if by_lr is not None and by_lr[0]:
                mine["reg"][list(lrs or {}).index(by_lr[0])] = by_lr[1]
            else:
                mine["default"] = True
        if by_dim is None and by_lr is None:
            continue
        if by_lr is not None and by_lr[1] < 0:
            raise NotImplementedError(
                f"network_reg_lrs gives `{name}` rate {by_lr[1]:g}, which dbspec's optimizer groups do not "
                "take (a rate is at least 0)"
            )
        own, scale = (by_lr[1], 1.0 if by_lr[1] else 0.0) if by_lr is not None and rank else (0.0, 1.0)
        key = (rank, alpha if rank else 1.0, own, scale, _position(lrs, by_lr, own, prefix))
        decided[key][head].setdefault(index, set()).add(child)
    return _entries(decided)


def lifted_encoders(
    dims: dict[str, float] | None,
    lrs: dict[str, float] | None,
    modules: dict[str, Any],
    dim: int,
    encoder_rate: dict[str, float],
) -> frozenset[str]:
    """The kohya prefixes of the text encoders at rate 0 that still train: a network_reg_lrs regex gives one
    of their built modules (rank above 0) a positive rate, so assemble_params puts it in its `reg_lr_<i>`
    group while the encoder's default group at rate 0 is left out ("NO LR skipping!"). dbspec trains that
    encoder with every other built module held in a block at lr_scale 0: out of the optimizer, its gradients
    adding up uncleared and counted by the clip, as kohya's."""
    lifted = set()
    for name in modules:
        prefix = name[: len("lora_te1_")]
        if encoder_rate[prefix] or prefix in lifted or not lrs:
            continue
        by_dim = first_match(dims, name, False) if dims else None
        by_lr = first_match(lrs, name, True)
        if by_lr and by_lr[1] > 0 and (int(by_dim[1]) if by_dim else dim) > 0:
            lifted.add(prefix)
    return frozenset(lifted)


def _position(
    lrs: dict[str, float] | None, by_lr: tuple[str, float] | None, own: float, component: str
) -> tuple[str, int] | None:
    """(`component`: "unet" or the text encoder's kohya prefix, the position in network_reg_lrs of the regex
    that gives a built module its own positive rate: its assemble_params group `reg_lr_<i>`), else None: two
    regexes at one rate are two kohya groups, which a per-group scheduler list may give different bounds
    (group_lists.write_block_groups)."""
    if by_lr is None or not by_lr[0] or not own:
        return None
    return component, list(lrs or {}).index(by_lr[0])


def _entries(decided) -> list[dict[str, Any]]:
    """The block tables of the decided modules: {(rank, alpha, own lr, lr_scale, (component, regex position)):
    {block head: {index: children}}} -> one entry per pattern, with `lr` where a regex gave its own rate (its
    component and position as `_reg`, for the converter alone) and `lr_scale = 0` where kohya leaves the
    module out of the optimizer."""
    out = []
    for (rank, a, rate, scale, position), lists in decided.items():
        for head, indices in lists.items():
            for pattern in _patterns(head, indices):
                entry: dict[str, Any] = {"pattern": pattern, "rank": rank, "alpha": a}
                if rate:
                    entry["lr"] = rate
                if not scale:
                    entry["lr_scale"] = 0.0
                if position is not None:
                    entry["_reg"] = position
                out.append(entry)
    return out
