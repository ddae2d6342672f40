"""kohya's networks.lora_flux (flux_train_network.py) into [adapter], exactly: its target set, its fused
layers and the network_args dbspec can express, as networks/lora_flux.py's create_network reads them.

lora_flux puts a LoRA on every Linear of Black Forest Labs' double and single blocks (the family registry's
`kohya_lora_targets`, diffusers names; `proj_out` there names the single blocks' linear2, and a rank-0 block
keeps the final layer's Linear, which shares the name, out). On the fused Linears (double blocks' q/k/v per
stream, single blocks' q/k/v + MLP input) its LoRA has one down-projection shared by the parts:
`adapter.fused_projections = true`. With `split_qkv=True` each part has its own LoRA, dbspec's per-module
LoRAs (fused_projections false); kohya then fails building any double block's q/k/v LoRA (its
create_modules unpacks the three split widths into one name: ValueError), so only a run that trains no
double-block attention converts.

Mapped network_args: split_qkv, train_blocks, train_double_block_indices, train_single_block_indices, the
per-type ranks (img_attn_dim ... single_mod_dim), in_dims (the embedders), rank_dropout,
module_dropout, LoRA-GGPO (ggpo_sigma with ggpo_beta) and the LoRA+ ratios ([[adapter.blocks]] carry the
ranks: kohya's alpha is network_alpha everywhere). kohya parses booleans as the exact string "True"."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.idle_text import map_t5_idle
from dbspec.convert.kohya.network import KOHYA_TEXT_TARGETS, _loraplus, parse_network_args
from dbspec.convert.kohya.reg_dims import flux_reg_blocks
from dbspec.families import family_spec

_FINAL = "networks/lora_flux.py adapts no final layer (its Linear shares the name proj_out)"
NUM_DOUBLE, NUM_SINGLE = 19, 38  # networks/lora_flux.py NUM_DOUBLE_BLOCKS / NUM_SINGLE_BLOCKS
_DOUBLE, _SINGLE = r"^transformer_blocks\.", r"^single_transformer_blocks\."
# create_network's per-type ranks: kohya matches the words in its module names; here the diffusers paths
_TYPE_DIMS = {
    "img_attn_dim": _DOUBLE + r"\d+\.attn\.(to_q|to_k|to_v|to_out\.0)$",
    "txt_attn_dim": _DOUBLE + r"\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    "img_mlp_dim": _DOUBLE + r"\d+\.ff\.",
    "txt_mlp_dim": _DOUBLE + r"\d+\.ff_context\.",
    "img_mod_dim": _DOUBLE + r"\d+\.norm1\.linear$",
    "txt_mod_dim": _DOUBLE + r"\d+\.norm1_context\.linear$",
    "single_dim": _SINGLE + r"\d+\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp|proj_out)$",  # linear1, linear2
    "single_mod_dim": _SINGLE + r"\d+\.norm\.linear$",
}
# in_dims [img, time, vector, guidance, txt]: the original embedders' diffusers Linears and path patterns
_IN_DIMS = (
    (("x_embedder",), r"^x_embedder$"),
    (
        ("timestep_embedder.linear_1", "timestep_embedder.linear_2"),
        r"^time_text_embed\.timestep_embedder\.",
    ),
    (("text_embedder.linear_1", "text_embedder.linear_2"), r"^time_text_embed\.text_embedder\."),
    (
        ("guidance_embedder.linear_1", "guidance_embedder.linear_2"),
        r"^time_text_embed\.guidance_embedder\.",
    ),
    (("context_embedder",), r"^context_embedder$"),
)
# Chroma's (library/chroma_models.py): img_in and txt_in; it has no time_in, vector_in or guidance_in, and
# its approximator (distilled_guidance_layer.in_proj, layers.N.in_layer / out_layer, out_proj) holds none of
# the filters' words (`_guidance_layer_in_proj` is not `_guidance_in`), so those three ranks build nothing
_IN_DIMS_OF = {"flux": _IN_DIMS, "chroma": (_IN_DIMS[0], None, None, None, _IN_DIMS[4])}
_IN_NAMES = ("img", "time", "vector", "guidance", "txt")
_UNSUPPORTED: dict[str, str] = {}  # every network argument lora_flux reads has a dbspec equivalent


def true(value: str) -> bool:
    return value == "True"  # create_network: `True if x == "True" else False`


def selection(text: str, total: int) -> list[bool]:
    """networks/lora_flux.py's parse_block_selection: "all", "none"/"", or comma-separated indices and
    inclusive ranges; ValueError where kohya asserts."""
    if text == "all":
        return [True] * total
    if text in ("none", ""):
        return [False] * total
    picked = [False] * total
    for item in text.split(","):
        if "-" in item:
            start, end = (int(x.strip()) for x in item.split("-"))
            if not (0 <= start < total and 0 <= end < total and start <= end):
                raise ValueError(f"block range {item.strip()} is outside 0-{total - 1} or reversed")
            picked[start : end + 1] = [True] * (end - start + 1)
        else:
            index = int(item)
            if not 0 <= index < total:
                raise ValueError(f"block index {index} is outside 0-{total - 1}")
            picked[index] = True
    return picked


def _indices(flags: list[bool]) -> str:
    return "|".join(str(i) for i, on in enumerate(flags) if not on)


def map_lora_flux(
    a: dict[str, Legacy], dim: int, alpha: float, conv: Conversion, family: str = "flux"
) -> bool:
    """[adapter] for networks.lora_flux on `family` (Flux.1, or Chroma with --model_type chroma); False when
    its network_args cannot be expressed or kohya fails."""
    args = a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    try:
        if family == "chroma":
            _chroma_args(kwargs, args, conv)
        return _map(kwargs, args, dim, alpha, a, conv, family)
    except ValueError as exc:
        conv.invalid(args.key, args.value, args.source, f"kohya's lora_flux asserts on it ({exc})")
        return False


# Chroma's blocks (library/chroma_models.py) have no modulation Linears: lora_flux's mod ranks match nothing
_MOD_DIMS = ("img_mod_dim", "txt_mod_dim", "single_mod_dim")


def _chroma_args(kwargs: dict[str, str], args: Legacy, conv: Conversion) -> None:
    """network_args on Chroma: the modulation ranks are inert (no mod.lin Linears: its approximator
    modulates them); the rest map as on Flux.1, over Chroma's modules (in_dims: img_in and txt_in alone)."""
    for key in _MOD_DIMS:
        if key in kwargs:
            kwargs.pop(key)
            legacy = Legacy(key=f"{args.key} {key}", value=None, source=args.source)
            conv.inert(legacy, "Chroma's blocks have no modulation Linear (its approximator modulates them)")


def _map(
    kwargs: dict[str, str], args: Legacy, dim: int, alpha: float, a, conv: Conversion, family: str = "flux"
) -> bool:
    flux = family_spec(family)
    why = conv.comment(
        a["network_module"], "networks/lora_flux.py: every Linear of the double and single blocks"
    )
    targets = list(flux.kohya_lora_targets)
    blocks: list[dict[str, Any]] = [
        {"pattern": p, "rank": 0, "alpha": 1.0, "_why": _FINAL} for p in flux.kohya_lora_excluded
    ]
    train = kwargs.pop("train_blocks", None)
    if train is not None and train not in ("all", "single", "double"):
        raise ValueError(f"train_blocks={train} is not all, single or double")
    if train == "single":
        blocks.append({"pattern": _DOUBLE, "rank": 0, "alpha": 1.0, "_why": "train_blocks=single"})
    elif train == "double":
        blocks.append({"pattern": _SINGLE, "rank": 0, "alpha": 1.0, "_why": "train_blocks=double"})
    selected = {}
    for key, prefix, total in (
        ("train_double_block_indices", _DOUBLE, NUM_DOUBLE),
        ("train_single_block_indices", _SINGLE, NUM_SINGLE),
    ):
        if key in kwargs:
            flags = selection(kwargs.pop(key), total)
            selected[prefix] = flags
            if not any(flags):
                blocks.append({"pattern": prefix, "rank": 0, "alpha": 1.0, "_why": key})
            elif not all(flags):
                pattern = prefix + f"({_indices(flags)})\\."
                blocks.append({"pattern": pattern, "rank": 0, "alpha": 1.0, "_why": key})
    type_dims = {key: int(kwargs.pop(key)) for key in list(_TYPE_DIMS) if key in kwargs}
    in_dims = None
    if "in_dims" in kwargs:
        text = kwargs.pop("in_dims").strip().removeprefix("[").removesuffix("]")
        in_dims = [int(d) for d in text.split(",")]
        if len(in_dims) != 5:
            raise ValueError(f"in_dims has {len(in_dims)} numbers, not 5 (img, time, vector, guidance, txt)")
        for embedder, rank, what in zip(_IN_DIMS_OF[family], in_dims, _IN_NAMES):
            if rank and embedder is None:
                legacy = Legacy(key=f"{args.key} in_dims {what}", value=rank, source=args.source)
                conv.inert(legacy, f"Chroma has no {what}_in embedder (kohya's filter matches no Linear)")
            elif rank:
                names, pattern = embedder
                targets.extend(names)
                blocks.append({"pattern": pattern, "rank": rank, "alpha": alpha, "_why": "in_dims"})
    ok, reg = _reg_blocks(kwargs, args, a, blocks, targets, conv, dim=dim, alpha=alpha, train=train,
                      type_dims=type_dims, in_dims=in_dims, selected=selected, family=family)  # fmt: skip
    if not ok:
        return False
    for key, rank in type_dims.items():
        blocks.append({"pattern": _TYPE_DIMS[key], "rank": rank, "alpha": alpha, "_why": key})
    split = true(kwargs.pop("split_qkv", "False"))
    trained = _double_attention_trained(train, selected.get(_DOUBLE), type_dims) if reg is None else reg
    if split and trained:
        raise_split = (
            "split_qkv=True: kohya's create_modules fails on the double blocks' q/k/v (it unpacks the three "
            "split widths into one name: ValueError: too many values to unpack)"
        )
        conv.invalid(
            args.key,
            args.value,
            args.source,
            raise_split,
            help="kohya trains split_qkv only without double-block attention (train_blocks=single, "
            "img_attn_dim=0 and txt_attn_dim=0, or train_double_block_indices=none); drop split_qkv for "
            "the fused layers' shared down-projection",
        )
        return False
    conv.put(("adapter", "denoiser_targets"), targets, why)
    if family_spec(family).clip_text_encoders:  # Chroma has no CLIP-L
        conv.put(
            ("adapter", "text_encoder_targets"), list(KOHYA_TEXT_TARGETS), why + " (CLIPAttention, CLIPMLP)"
        )
    conv.put(
        ("adapter", "fused_projections"),
        not split,
        conv.comment(
            args,
            "split_qkv=True: one LoRA per part"
            if split
            else "one LoRA (one down-projection) per fused Linear",
        ),
    )
    for index, block in enumerate(blocks):
        source = a["network_module"] if block["_why"] == _FINAL else args
        note = conv.comment(source, block.pop("_why"))
        _reg_entry(conv, "blocks", index, block)
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, note)
    if not dropouts(kwargs, args, split, conv):
        return False
    put: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    _loraplus(kwargs, put, unsupported)
    for key, value in put.items():
        conv.put(("adapter", key), value, conv.comment(args))
    if not ggpo(kwargs, args, split, conv) or not train_t5(
        kwargs, args, a, conv, "flux_train_network.py", family
    ):
        return False
    rest(kwargs, args, unsupported, conv, "networks.lora_flux", _UNSUPPORTED)
    network_dropout(a["network_dropout"], split, conv)
    return True


def train_t5(
    kwargs: dict[str, str], args: Legacy, a, conv: Conversion, script: str, family: str = "flux"
) -> bool:
    """lora_flux's `train_t5xxl=True`: LoRA on T5-XXL's attention and gated-MLP Linears (`train.t5`; the
    plan's `adapter.t5_targets`) at the network's rank and alpha, in the T5 group at
    `text_encoder_lr`'s second value (one value: both encoders; none: learning_rate). kohya applies no
    text-encoder LoRA with network_train_unet_only, skips a group at rate 0, and raises ValueError when
    text-encoder outputs are cached. False when the run cannot start (DBS402)."""
    if "train_t5xxl" not in kwargs:
        return True
    value = kwargs.pop("train_t5xxl")
    legacy = Legacy(key=f"{args.key} train_t5xxl", value=value, source=args.source)
    if not true(value):
        conv.inert(legacy, "only the exact string True trains T5-XXL")
        return True
    return t5_trains(legacy, a, conv, script, family)


def t5_trains(
    legacy: Legacy, a, conv: Conversion, script: str, family: str = "flux", file: bool = False
) -> bool:
    """What turns kohya's T5-XXL LoRA on (`legacy`: train_t5xxl=True, or (`file`) a --dim_from_weights file
    with lora_te3 modules) mapped to `train.t5` and T5's rate, or at T5's rate 0 to `train.t5_idle`
    (map_t5_idle), or to `train.t5` where a network_reg_lrs regex trains some of its modules (_t5_lifted);
    False when kohya raises (DBS402). A --network_weights file's T5 modules without
    --dim_from_weights (conv.facts["t5_file_modules"]) are loaded into them as a --dim_from_weights file's."""
    from dbspec.convert.kohya.train import text_outputs_cached

    file = file or bool(conv.facts.get("t5_file_modules"))

    if a["network_train_unet_only"].value:
        conv.inert(
            legacy, "with network_train_unet_only kohya applies no text-encoder LoRA, T5-XXL's neither"
        )
        return True
    cached = text_outputs_cached(a)
    if cached is not None:
        conv.invalid(
            cached.key,
            True,
            cached.source,
            f"{script} raises ValueError when T5-XXL trains ({legacy.key}): its text-encoder outputs "
            "cannot be cached",
            help="drop cache_text_encoder_outputs (and _to_disk), or train_t5xxl",
        )
        return False
    te = a["text_encoder_lr"].value
    rates = [float(v) for v in (te if isinstance(te, list) else [te] if te is not None else [])]
    default = float(a["learning_rate"].value)
    if script.startswith("sd3"):
        return _sd3_t5_trains(legacy, rates or [default], a, conv, file)
    clip_lr, t5_lr = (rates + rates[-1:])[:2] if rates else (default, default)
    if t5_lr == 0 and _t5_lifted(legacy, conv):
        return True
    if t5_lr == 0:
        if not map_t5_idle(legacy, a, conv, file):  # exact: train.t5_idle keeps them
            conv.inert(
                legacy,
                "T5-XXL's text_encoder_lr is 0: kohya leaves its parameters out of the optimizer (fresh, "
                "they leave T5's output the base's, and max_grad_norm 0 reads no gradient)",
            )
        return True
    conv.mapped(legacy, ("train", "t5"), True, note="LoRA on T5Attention and T5DenseGatedActDense Linears")
    if family == "chroma":  # T5 is Chroma's only text encoder: optimizer.text_encoder_lr (train.py _t5_rate)
        return True
    if t5_lr != clip_lr:
        conv.put(
            ("optimizer", "text_encoder_2_lr"),
            t5_lr,
            conv.comment(a["text_encoder_lr"], "T5-XXL's rate: text_encoder_lr's second value"),
        )
    return True


def _t5_lifted(legacy: Legacy, conv: Conversion) -> bool:
    """T5-XXL at its rate 0 with a network_reg_lrs regex giving some of its built modules a positive rate
    (reg_dims.lifted_encoders; was DBS403): assemble_params puts those in their `reg_lr_<i>` groups and
    leaves T5's default group out ("NO LR skipping!"), so T5 trains: `train.t5`, every other built T5 module
    held in an [[adapter.text_encoder_blocks]] entry at lr_scale 0 (out of the optimizer, its gradients
    adding up uncleared and counted by the clip, as kohya's), as CLIP-L's at its rate 0
    (train.map_text_encoder). T5's own rate then reads no module: none is written (text_encoder_2_lr, or
    Chroma's text_encoder_lr: train.map_learning_rates). True when mapped so."""
    from dbspec.convert.kohya.train import REG_LIFTED

    if "lora_te3_" not in conv.facts.get(REG_LIFTED, ()):
        return False
    note = (
        "network_reg_lrs gives some of T5-XXL's modules their own rates at T5's text_encoder_lr 0: they "
        "train, the others are held (lr_scale 0, out of the optimizer, their gradients clipped)"
    )
    conv.mapped(legacy, ("train", "t5"), True, note=note)
    return True


def _sd3_t5_trains(legacy: Legacy, rates: list[float], a, conv: Conversion, file: bool = False) -> bool:
    """lora_sd3's T5-XXL (its third text encoder): prepare_optimizer_params_with_multiple_te_lrs pads
    text_encoder_lr to three values (one: all three; two: [a, b, b]) and trains T5 at the third, leaving its
    group out at 0. The spec's `optimizer.text_encoder_3_lr` derives from text_encoder_2_lr, which the
    converter writes for CLIP-G's own rate (train.py _sd3_clip_g_lr): written here only when T5's differs."""
    clip_l, clip_g, t5_lr = (rates + rates[-1:] * 2)[:3]
    if t5_lr == 0:
        if not map_t5_idle(legacy, a, conv, file):  # exact: train.t5_idle keeps them
            conv.inert(
                legacy,
                "T5-XXL's text_encoder_lr (its third value) is 0: kohya leaves its group out (fresh, its "
                "modules leave T5's output the base's, and max_grad_norm 0 reads no gradient)",
            )
        return True
    conv.mapped(legacy, ("train", "t5"), True, note="LoRA on T5Attention and T5DenseGatedActDense Linears")
    derived = clip_g if clip_g != 0 else clip_l  # text_encoder_2_lr as written (CLIP-G at 0: not written)
    if t5_lr != derived:
        conv.put(
            ("optimizer", "text_encoder_3_lr"),
            t5_lr,
            conv.comment(a["text_encoder_lr"], "T5-XXL's rate: text_encoder_lr's third value"),
        )
    return True


def _reg_blocks(
    kwargs, args: Legacy, a, blocks: list, targets: list, conv: Conversion, **known
) -> bool | None:
    """network_reg_dims / network_reg_lrs (reg_dims.py): their blocks first (after the final layer's), so they
    win over the other rank rules as kohya's regexes do; the text encoders' modules they decide as
    [[adapter.text_encoder_blocks]]. (False where dbspec cannot express them, whether
    kohya builds a double block's q/k/v LoRA: None without them.)"""
    if "network_reg_dims" not in kwargs and "network_reg_lrs" not in kwargs:
        return True, None
    lr = a["unet_lr"].value if "unet_lr" in a and a["unet_lr"].value is not None else a["learning_rate"].value
    unet_only = a["network_train_unet_only"].value if "network_train_unet_only" in a else False
    chosen = known.pop("selected")
    selected = {k: chosen[p] for k, p in (("double", _DOUBLE), ("single", _SINGLE)) if p in chosen}
    groups: dict = {"reg": {}, "default": False}
    family = known["family"]
    clip = not unet_only and bool(family_spec(family).clip_text_encoders)  # Chroma: kohya's dummy CLIP-L
    t5 = not unet_only and true(kwargs.get("train_t5xxl", "False"))  # the regexes reach T5's modules too
    te = a["text_encoder_lr"].value
    rates = [float(v) for v in (te if isinstance(te, list) else [te] if te is not None else [])]
    # prepare_optimizer_params_with_multiple_te_lrs: none -> learning_rate for both; one value -> both
    clip_lr, t5_lr = (rates + rates[-1:])[:2] if rates else (float(a["learning_rate"].value),) * 2
    text: list[dict] = []
    try:
        found, extra, warnings, qkv = flux_reg_blocks(
            kwargs, **known, selected=selected, unet_lr=lr, text_trains=clip, t5_trains=t5, groups=groups,
            text_rates=(clip_lr, t5_lr), text_blocks=text,
        )  # fmt: skip
    except NotImplementedError as exc:
        conv.unsupported(args, f"network_reg_dims / network_reg_lrs: {exc}")
        return False, None
    for warning in warnings:
        conv.ignored(
            Legacy(key=f"{args.key} {warning.split(':')[0]}", value=None, source=args.source), warning
        )
    if "network_train_text_encoder_only" in a and a["network_train_text_encoder_only"].value:
        found, extra = [], []  # train_network.py applies no denoiser LoRA: the regexes act on CLIP-L only
    conv.facts["kohya_flux_reg_groups"] = groups  # group_lists.py: the per-group scheduler lists
    conv.facts["kohya_flux_reg_text_lifted"] = groups.get("text_lifted", frozenset())  # train.REG_LIFTED
    if not lr and any(b.get("lr") for b in found):  # unet_lr 0: the regexes' own rates train the denoiser
        # train.map_learning_rates: the first regex block's rate (optimizer.lr at learning_rate 0)
        conv.facts["kohya_flux_reg_trains"] = next(float(b["lr"]) for b in found if b.get("lr"))
    first = len(family_spec(family).kohya_lora_excluded)
    why = "network_reg_dims / network_reg_lrs: the modules kohya's regexes match (first regex wins)"
    blocks[first:first] = [{**b, "_why": why} for b in found]
    targets.extend(t for t in extra if t not in targets)
    note = conv.comment(args, why.replace("modules", "text encoders' modules"))
    for index, block in enumerate(text):  # CLIP-L's (lora_te1_) and T5-XXL's (lora_te3_) modules
        _reg_entry(conv, "text_encoder_blocks", index, block)
        for key, value in block.items():
            conv.put(("adapter", "text_encoder_blocks", index, key), value, note)
    return True, qkv


def _reg_entry(conv: Conversion, table: str, index: int, block: dict[str, Any]) -> None:
    """A network_reg_lrs block's regex position (reg_dims `_reg`, popped) by its [adapter] table and entry:
    group_lists.write_block_groups names its kohya group `reg_lr_<i>` where a per-group list needs it."""
    if "_reg" in block:
        conv.facts.setdefault("kohya_flux_reg_entries", {})[(table, index)] = block.pop("_reg")


def network_dropout(dropout: Legacy, split: bool, conv: Conversion) -> None:
    """--network_dropout: torch's dropout on lora_down's output (LoRAModule.forward), adapter.down_dropout; on
    a fused layer one mask for all its parts (dbspec draws it once per fused layer, runtime/fused_dropout.py);
    split_qkv: one mask per part, drawn together in the fused layer's part order (adapter.fused_dropout)."""
    if dropout.value:
        conv.mapped(dropout, ("adapter", "down_dropout"), float(dropout.value))
        if split:
            _split_draws(dropout, conv)


def _split_draws(legacy: Legacy, conv: Conversion) -> None:
    conv.put(
        ("adapter", "fused_dropout"),
        True,
        conv.comment(legacy, "split_qkv: kohya draws a fused Linear's parts' dropouts together"),
    )


def _double_attention_trained(train, double: list[bool] | None, type_dims: dict[str, int]) -> bool:
    if train == "single" or (double is not None and not any(double)):
        return False
    return bool(type_dims.get("img_attn_dim", 1) or type_dims.get("txt_attn_dim", 1))


def dropouts(kwargs: dict[str, str], args: Legacy, split: bool, conv: Conversion) -> bool:
    """rank_dropout / module_dropout: kohya draws them once per LoRA module, a fused layer's once for all its
    parts, as dbspec does with fused_projections (runtime/fused_dropout.py). With split_qkv kohya's module on
    a fused Linear still skips its parts together (one module-dropout draw): adapter.fused_dropout draws the
    separate parts' dropouts together too. Its split forward fails on rank dropout (LoRAModule.forward reads
    `lx`, unbound on that path: UnboundLocalError at the first training step): False, refused."""
    for key in ("rank_dropout", "module_dropout"):
        if key not in kwargs:
            continue
        value = float(kwargs.pop(key))
        legacy = Legacy(key=f"{args.key} {key}", value=value, source=args.source)
        if value and split and key == "rank_dropout":
            conv.invalid(
                args.key,
                args.value,
                args.source,
                f"rank_dropout={value:g} with split_qkv=True: kohya's LoRAModule.forward fails on a split "
                "fused Linear at the first training step (its rank-dropout branch reads `lx`, unbound "
                "there: UnboundLocalError)",
                help="drop rank_dropout, or split_qkv for the fused layers' shared down-projection",
            )
            return False
        conv.mapped(legacy, ("adapter", key), value)
        if value and split and key == "module_dropout":
            _split_draws(legacy, conv)
    return True


def ggpo(kwargs: dict[str, str], args: Legacy, split: bool, conv: Conversion) -> bool:
    """LoRA-GGPO: kohya's create_network reads ggpo_beta and ggpo_sigma as floats and its modules perturb only
    when both are given (adapter.ggpo); one alone is inert. With split_qkv kohya's split modules fail in the
    first norm update (`lora_up` is a ModuleList: AttributeError), so that run is refused."""
    given = [key for key in ("ggpo_sigma", "ggpo_beta") if key in kwargs]
    if len(given) == 1:
        key = given[0]
        conv.inert(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            "GGPO runs only with both ggpo_beta and ggpo_sigma",
        )
        return True
    if not given:
        return True
    if split:
        conv.invalid(
            args.key,
            args.value,
            args.source,
            "ggpo_sigma and ggpo_beta with split_qkv=True: kohya's split LoRA modules fail in GGPO's first "
            "norm update (update_norms reads lora_up.weight of a ModuleList: AttributeError)",
            help="drop split_qkv (one LoRA per fused Linear), or the GGPO arguments",
        )
        return False
    for key in ("ggpo_sigma", "ggpo_beta"):
        value = float(kwargs.pop(key))
        conv.mapped(Legacy(key=f"{args.key} {key}", value=value, source=args.source), ("adapter", key), value)
    conv.put(("adapter", "ggpo"), True, conv.comment(args, "LoRA-GGPO: ggpo_sigma and ggpo_beta both given"))
    return True


def rest(
    kwargs: dict[str, str],
    args: Legacy,
    unsupported: dict[str, str],
    conv: Conversion,
    network: str,
    refused: dict[str, str],
) -> None:
    """The network_args left (train_t5xxl mapped before: train_t5): the inert ones, those with no dbspec form
    (`refused`), the rest ignored as kohya's create_network ignores them."""
    for key, value in kwargs.items():
        legacy = Legacy(key=f"{args.key} {key}", value=value, source=args.source)
        if key in ("conv_dim", "conv_alpha"):
            conv.inert(legacy, "the blocks have no convolutions for it to adapt")
        elif key == "verbose":
            conv.inert(legacy, "it only logs the modules")
        elif key in refused:
            unsupported[key] = f"{value} ({refused[key]})"
        else:
            conv.ignored(legacy, f"{network}'s create_network does not read it")
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(args, f"network arguments dbspec does not express: {rest}")
    elif args.given:
        conv.record(args, "mapped", "adapter")
