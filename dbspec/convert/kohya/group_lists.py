"""kohya lr_scheduler_args with one value per optimizer parameter group (torch's CyclicLR `base_lr=[...]`,
`max_lr=[...]`, OneCycleLR's `max_lr=[...]`): the list follows kohya's group order, which this module
derives per script, and becomes a table keyed by dbspec's group names (schedule.base_lr / max_lr).

kohya's groups, in order (its code is the ground truth):
- networks.lora (train_network.py, sdxl_train_network.py; `prepare_optimizer_params`): the text encoders'
  LoRA modules as one group (SDXL's two together) unless network_train_unet_only or their rate is 0, then its
  LoRA+ "plus" group (lora_up at rate x ratio); then the U-Net's, then its plus group. Groups at rate 0 are
  dropped. Block lr weights (down/mid/up_lr_weight) give one group per U-Net block instead (each followed
  by its plus group), in the order create_modules meets the blocks' modules; each maps onto dbspec's group
  of its weight (runtime/blocks.py: `denoiser`, `denoiser_x<weight>`, `denoiser_lora_up_x<weight>`).
- networks.dylora (networks/dylora.py `prepare_optimizer_params`): networks.lora's order and rules without
  block lr weights (it reads none): text encoders, their plus group (`lora_B`), U-Net, its plus group.
- networks.lora_fa (networks/lora_fa.py `prepare_optimizer_params`): [text encoders, U-Net], no plus group,
  a group at rate 0 kept: CyclicLR and OneCycleLR replace its rate with their own, so kohya trains it
  (lift_kept_rates gives it the schedule's peak as its rate, which the schedule replaces alike), unless
  the schedule holds it at 0 too (then it never moves: untrained in dbspec); Adafactor's relative step
  pops it and computes its own (relative_step_lift, as networks.oft's). With block lr weights on SD 1.x/2.x
  the U-Net's place holds networks.lora's block groups (no plus groups), which skip a rate of 0
  (lora_fa_blocks.py).
- networks.oft (networks/oft.py `prepare_optimizer_params`, l. 361-382): one group, the U-Net's blocks (the
  network adapts nothing else); kept at rate 0 too, lifted by CyclicLR / OneCycleLR as lora_fa's, or by
  Adafactor's relative step, which pops the rate and computes its own (relative_step_lift; else it never
  moves and the run trains nothing: oft.py refuses it, DBS403). The same for networks.oft_flux with
  flux_train_network.py (the transformer's blocks).
- lycoris.kohya (lycoris-lora 4.1.3 `prepare_optimizer_params`): the same order, a text-encoder group only
  where the network adapts a text-encoder layer; a plus group only for algo lora/locon (LoConModule's
  `lora_up`: LyCORIS's other modules have no parameter of that name, so their plus group is empty). With
  flux_train_network.py too: its text-encoder group holds CLIP-L's modules (LyCORIS builds none on T5-XXL)
  at text_encoder_lr's first value.
- networks.lora_flux / lora_sd3 (flux_train_network.py, sd3_train_network.py;
  `prepare_optimizer_params_with_multiple_te_lrs`): each text encoder in its own group at its
  text_encoder_lr value (Flux: [CLIP-L, T5-XXL]; SD3: [CLIP-L, CLIP-G, T5-XXL]; T5 only with train_t5xxl),
  each followed by its plus group, then the transformer's and its plus group. lora_flux's network_reg_lrs
  puts the transformer's modules each regex matches first in a group of their own (`reg_lr_<i>`, sorted as
  text, each followed by its plus group) before the rest; so does each text encoder's (CLIP-L's `lora_te1_`,
  T5-XXL's `lora_te3_` modules: `text_encoder_lr<rate>`, `text_encoder_2_lr<rate>`).
- train_db.py: the U-Net and the text encoder as one group without learning_rate_te, else [U-Net, text
  encoder]; the U-Net alone when the text encoder does not train (stop_text_encoder_training -1).
- sdxl_train.py: the U-Net (learning_rate != 0; block_lr: one group per block at a rate not 0, in block
  order: dbspec's `denoiser_block<i>`, [[optimizer.blocks]] entry i), then each text encoder that trains
  (train_text_encoder and its rate, learning_rate_te1/2 or learning_rate, not 0) as its own.

dbspec's groups are runtime/optim.py's (compiler/group_bounds.py names them): `denoiser`, `denoiser_lora_up`,
`text_encoder` (SDXL's second too unless its rate differs), `text_encoder_lora_up`, `text_encoder_2`,
`text_encoder_3` (SD3's T5-XXL at a rate of its own), each text encoder's `_lora_up`.
"""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.optimizers import adafactor_flags, parse_kohya_args
from dbspec.convert.kohya.blocks import SDXL_BLOCKS
from dbspec.convert.kohya.lora_fa_blocks import lora_fa_block_lr
from dbspec.convert.kohya.network import parse_network_args
from dbspec.convert.kohya.rate_zero import lora_fa_holds, lora_fa_kept, train_db_unet_trains

Args = dict[str, Legacy]
_BLOCK_WEIGHTS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")


def kohya_groups(
    a: Args, script: str, written: dict | None = None, facts: dict | None = None, split: bool = False
) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    """kohya's optimizer groups in order: (kohya's name for it, the dbspec groups its parameters train in;
    () where they do not train in dbspec). On failure ([], why dbspec cannot match them one to one).
    `written`: the spec values converted so far (Conversion.values: the adapter's, mapped before); `facts`:
    Conversion.facts (lora_flux.py's network_reg_lrs groups). `split`: each text encoder that kohya trains
    in a group of its own onto a dbspec group of its own (`text_encoder_2`, `text_encoder_3`), which a
    schedule table naming it creates at the encoder's rate, and each networks.lora U-Net block onto one of
    its own (`denoiser[_x<weight>]_unet_block<N>`, its [[adapter.blocks]] `group`, write_block_groups),
    where dbspec would share one at one rate."""
    written = written or {}
    if script == "train_db":
        return _train_db(a), ""
    if script == "sdxl_train":
        return _sdxl_train(a, split)
    lycoris_flow = script in ("flux_train_network", "sd3_train_network") and (
        a["network_module"].value == "lycoris.kohya"
    )
    if script == "flux_train_network" and a["network_module"].value == "networks.oft_flux":
        return [("unet", ("denoiser",))], ""  # OFTNetwork: the transformer's one group (oft_flux.py)
    if script in ("train_network", "sdxl_train_network") or lycoris_flow:  # LyCORIS's order on Flux, SD3 too
        return _networks_lora(a, written, script == "sdxl_train_network", split, facts or {})
    if script in ("flux_train_network", "sd3_train_network"):
        return _lora_flow(a, script, written, facts or {}, split)
    return [], f"kohya's optimizer groups for {script}.py are not derived here"


def _rate(a: Args, key: str, fallback: Any) -> Any:
    value = a[key].value if key in a else None
    return value if value is not None else fallback


def _train_db(a: Args) -> list[tuple[str, tuple[str, ...]]]:
    stop = a["stop_text_encoder_training"].value
    unet = ("denoiser",) if train_db_unet_trains(a) else ()  # else train.denoiser = false
    if stop is not None and stop < 0:
        return [("unet", unet)]
    text = ("text_encoder",) if stop is None or stop > 0 else ()  # 0: it never changes (dbspec: frozen)
    if a["learning_rate_te"].value is None:
        return [("unet + text encoder", (*unet, *text))]
    return [("unet", unet), ("text encoder", text)]


def _sdxl_train(a: Args, split: bool = False) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    lr = a["learning_rate"].value
    groups: list[tuple[str, tuple[str, ...]]] = []
    if lr:
        if a["block_lr"].value:
            blocks = _block_lr(str(a["block_lr"].value))
            if blocks is None:
                return [], "block_lr is not 23 numbers (kohya asserts; block_lr.py reports it)"
            groups += blocks
        else:
            groups.append(("unet", ("denoiser",)))
    if a["train_text_encoder"].value:
        rates = [_rate(a, key, lr) for key in ("learning_rate_te1", "learning_rate_te2")]
        # dbspec's text_encoder_2 group: at its own rate, or where a table names it (split)
        own = (split or rates[0] != rates[1]) and all(rates)
        if rates[0]:
            groups.append(("text encoder 1", ("text_encoder",)))
        if rates[1]:
            groups.append(("text encoder 2", ("text_encoder_2",) if own else ("text_encoder",)))
    return groups, ""


def _block_lr(value: str) -> list[tuple[str, tuple[str, ...]]] | None:
    """sdxl_train.py get_block_params_to_optimize: each of the 23 blocks whose rate is not 0, in index order;
    block_lr.py writes block i as [[optimizer.blocks]] entry i, the runtime's group `denoiser_block<i>`."""
    try:
        rates = [float(item) for item in value.split(",")]
    except ValueError:
        return None
    if len(rates) != SDXL_BLOCKS:
        return None
    return [(f"unet block {i}", (f"denoiser_block{i}",)) for i, rate in enumerate(rates) if rate != 0]


def _networks_lora(
    a: Args, written: dict, sdxl: bool, split: bool = False, facts: dict | None = None
) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    module = a["network_module"].value
    if module not in (
        "networks.lora",
        "lycoris.kohya",
        "networks.dylora",
        "networks.lora_fa",
        "networks.oft",
    ):
        return [], f"kohya's optimizer groups for network_module {module} are not derived here"
    if module == "networks.oft":  # OFTNetwork: the U-Net's one group (a rate 0 lifted, or refused by oft.py)
        return [("unet", ("denoiser",))], ""
    if module == "networks.lora_fa":
        return _lora_fa(a, sdxl, split)
    kwargs, _ = parse_network_args(a["network_args"].value or [])
    unet_ratio, text_ratio = _ratios(kwargs)
    text_layers = True
    if module == "networks.dylora":  # its create_network reads no block lr weights
        kwargs = {k: v for k, v in kwargs.items() if k not in _BLOCK_WEIGHTS}
    present = None  # the kohya blocks holding a module: create_network's (dims), or the file's
    if module == "networks.lora" and _from_weights(a):
        # create_network_from_weights reads only the block lr weights (no LoRA+), its modules the file's
        kwargs = dict((facts or {}).get("from_weights_block_lr", {}))
        unet_ratio = text_ratio = None
        present = set((facts or {}).get("kohya_file_block_entries", {}))
    if module == "lycoris.kohya":
        if kwargs.get("algo", "lora").lower() not in ("lora", "locon"):
            unet_ratio = text_ratio = None  # no `lora_up` parameter: the plus groups stay empty (skipped)
        text_layers = _value(written, ("adapter", "text_encoder_targets"), True) != []
        kwargs = {k: v for k, v in kwargs.items() if k not in _BLOCK_WEIGHTS}  # LyCORIS does not read them
    lr = a["learning_rate"].value
    te = a["text_encoder_lr"].value
    te_rate = (te[0] if te else None) if isinstance(te, list) else te
    te_rate = te_rate if te_rate is not None else lr
    unet_rate = _rate(a, "unet_lr", lr)
    groups: list[tuple[str, tuple[str, ...]]] = []
    if not a["network_train_unet_only"].value and te_rate and text_layers:
        groups.append(("textencoder", ("text_encoder",)))
        if text_ratio is not None:
            groups.append(("textencoder plus", ("text_encoder_lora_up",)))
    if not a["network_train_text_encoder_only"].value and unet_rate:
        if any(k in kwargs for k in _BLOCK_WEIGHTS):
            blocks, why = _weighted_blocks(a, kwargs, sdxl, present)
            if not blocks:
                return [], why
            for index, scale in blocks:
                suffix = "" if scale == 1.0 else f"_x{scale:g}"  # runtime/blocks.py block_param_groups
                # split: each block its own group (write_block_groups sets [[adapter.blocks]] group)
                suffix += f"_unet_block{index}" if split else ""
                groups.append((f"unet_block{index}", (f"denoiser{suffix}",)))
                if unet_ratio is not None:
                    groups.append((f"unet_block{index} plus", (f"denoiser_lora_up{suffix}",)))
            return groups, ""
        groups.append(("unet", ("denoiser",)))
        if unet_ratio is not None:
            groups.append(("unet plus", ("denoiser_lora_up",)))
    return groups, ""


def _lora_fa(a: Args, sdxl: bool, split: bool = False) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    """networks.lora_fa's prepare_optimizer_params (networks/lora_fa.py): [text encoder(s), U-Net], one group
    each (no LoRA+), each present whenever the network adapts that part (network_train_unet_only /
    text_encoder_only remove it), also at rate 0. A rate 0 that CyclicLR / OneCycleLR or Adafactor's
    relative step lift was replaced before (lift_kept_rates); one left is a group the schedule holds at 0
    too: the text encoders' trains at rate 0 in dbspec under a clip (train.py _lora_fa_text_held: its group,
    held), the U-Net's is untrained (no group). With block lr weights the U-Net's place holds one group per
    block as networks.lora's (its SD 1.x numbering; on SDXL every module is block -1, one group at weight 1),
    no plus groups, a U-Net at rate 0 refused (lora_fa_blocks.py)."""
    lr = a["learning_rate"].value
    te = a["text_encoder_lr"].value
    te_rate = (te[0] if te else None) if isinstance(te, list) else te
    te_rate = te_rate if te_rate is not None else lr
    groups: list[tuple[str, tuple[str, ...]]] = []
    for name, rate, skip, target in (
        ("textencoder", te_rate, "network_train_unet_only", "text_encoder"),
        ("unet", _rate(a, "unet_lr", lr), "network_train_text_encoder_only", "denoiser"),
    ):
        if a[skip].value:
            continue
        if name == "unet" and rate and lora_fa_block_lr(a) and not sdxl:
            kwargs, _ = parse_network_args(a["network_args"].value or [])
            blocks, why = _weighted_blocks(a, kwargs, False)
            if not blocks:
                return [], why
            for index, scale in blocks:
                suffix = ("" if scale == 1.0 else f"_x{scale:g}") + (f"_unet_block{index}" if split else "")
                groups.append((f"unet_block{index}", (f"denoiser{suffix}",)))
            continue
        held = target == "text_encoder" and _lora_fa_text_held(a)
        groups.append((name, (target,) if rate or held else ()))
    return groups, ""


def _lora_fa_text_held(a: Args) -> bool:
    """lora_fa's text encoders at rate 0 trained (held, or kept) at optimizer.text_encoder_lr = 0 under the
    clip (train.py _lora_fa_text_held), their group in dbspec's optimizer."""
    return bool(a["max_grad_norm"].value) and (lora_fa_holds(a) or bool(lora_fa_kept(a)))


# the networks whose prepare_optimizer_params keep a group at rate 0 in the optimizer
_KEEP_ZERO = ("networks.lora_fa", "networks.oft")


def schedule_lifts(a: Args) -> dict[str, tuple[float, str, str]]:
    """{rate key: (peak, group name, scheduler class)} for the groups at rate 0 that networks.lora_fa /
    networks.oft keep in the optimizer (lora_fa.py l. 1047-1079, oft.py l. 361-382) and that torch's
    CyclicLR / OneCycleLR replace with their own rate before the first step (CyclicLR's base_lr, OneCycleLR's
    max_lr / div_factor), so kohya trains them on the schedule: the peak is the group's `max_lr` (CyclicLR's
    `base_lr` where that is 0), which the schedule replaces alike. A group the schedule holds at 0 too is
    absent."""
    module, kind = a["network_module"].value, a["lr_scheduler_type"].value
    cls = str(kind or "").removeprefix("torch.optim.lr_scheduler.")
    if module not in _KEEP_ZERO or cls not in ("CyclicLR", "OneCycleLR"):
        return {}
    if str(a["optimizer_type"].value or "").lower().endswith("schedulefree"):
        return {}  # kohya's dummy scheduler: the rates stay
    kwargs = _literal_kwargs(a["lr_scheduler_args"])
    if kwargs is None:
        return {}  # reported where the schedule maps
    kept = _kept_groups(a)
    out = {}
    for index, (key, rate, name) in enumerate(kept):
        if rate:
            continue
        bounds = [_at(kwargs.get(k), index, len(kept)) for k in ("max_lr", "base_lr")]
        if None in bounds[: 2 if cls == "CyclicLR" else 1]:
            return {}  # a list of another length (DBS402 where the schedule maps) or a bound missing
        peak = bounds[0] or (bounds[1] if cls == "CyclicLR" else 0.0)
        if peak:  # else the schedule holds it at 0: it never moves
            out[key] = (float(peak), name, cls)
    return out


def _kept_groups(a: Args) -> list[tuple[str, float, str]]:
    """(rate key, rate, group name) of each optimizer group networks.lora_fa / networks.oft / oft_flux's
    prepare_optimizer_params keep whatever their rate, in kohya's order: lora_fa's text encoders (the first
    text_encoder_lr value, as train_network.py passes it) unless network_train_unet_only, then the U-Net's
    (OFT's one group) unless network_train_text_encoder_only."""
    lr = a["learning_rate"]
    te = a["text_encoder_lr"]
    te_values = te.value if isinstance(te.value, list) else [te.value] if te.value is not None else []
    te_rate = float(te_values[0]) if te_values else lr.value
    unet = a["unet_lr"] if a["unet_lr"].value is not None else lr
    denoiser = "transformer" if a["network_module"].value == "networks.oft_flux" else "U-Net"
    groups = [("unet_lr", unet.value, "network_train_text_encoder_only", denoiser)]
    if lora_fa_block_lr(a):  # its block groups skip a rate of 0 (lora_fa_blocks.py), as networks.lora's
        groups = []
    if a["network_module"].value == "networks.lora_fa":  # OFT has the U-Net's (transformer's) group alone
        groups.insert(0, ("text_encoder_lr", te_rate, "network_train_unet_only", "text encoder"))
    return [(key, rate, name) for key, rate, skip, name in groups if not a[skip].value]


def relative_step_lift(a: Args) -> dict[str, tuple[float, str]]:
    """{rate key: (rate, group name)} for the groups at rate 0 that networks.lora_fa / networks.oft /
    networks.oft_flux keep in the optimizer (_kept_groups) under kohya's Adafactor with relative_step (its
    default for Adafactor; warmup_init turns it on): train_util.get_optimizer pops every group's `lr` and
    Adafactor computes its own, min(1e-2, 1/sqrt(step)) (min(1e-6 x step, 1/sqrt(step)) with warmup_init),
    the same for every group, so kohya trains them whatever the rate. The rate dbspec writes, Adafactor's
    first step's (the plan's rate is then only the logged initial value). networks.lora, dylora and
    lycoris.kohya drop a group at rate 0 from the optimizer before get_optimizer ("NO LR skipping!"), so
    Adafactor never sees it: none of theirs is lifted (their rate-0 text encoder stays untrained)."""
    module = a["network_module"].value
    if module not in (*_KEEP_ZERO, "networks.oft_flux"):
        return {}
    if str(a["optimizer_type"].value or "").lower() != "adafactor":
        return {}
    kwargs, problems = parse_kohya_args(a["optimizer_args"].value or [])
    flags = {} if problems else adafactor_flags(kwargs)
    if not flags.get("relative_step"):
        return {}
    rate = 1e-6 if flags["warmup_init"] else 1e-2
    return {key: (rate, name) for key, value, name in _kept_groups(a) if value == 0}


def lift_kept_rates(a: Args, conv: Conversion) -> Args:
    """The rates of schedule_lifts' groups (networks.lora_fa, networks.oft): each the schedule's peak, which
    the schedule replaces alike, so dbspec trains the group on kohya's curve; a group the schedule holds at 0
    too keeps rate 0. Their groups at rate 0 under Adafactor's relative step (with networks.oft_flux's):
    relative_step_lift's."""
    relative = relative_step_lift(a)
    lifts = {key: (rate, name, "Adafactor's relative step") for key, (rate, name) in relative.items()}
    lifts = lifts or schedule_lifts(a)  # kohya's adafactor scheduler replaces a torch one (train.py)
    if not lifts:
        return a
    out = dict(a)
    for key, (peak, name, cls) in lifts.items():
        lr = a["learning_rate"]
        source = a[key].source if a[key].given else lr.source
        out[key] = Legacy(key=key, value=peak, source=source)
        how = (
            "pops that rate (train_util.get_optimizer) and computes its own, so kohya trains it: its rate "
            f"here is Adafactor's first step's, {peak:g}, only the logged initial value"
            if relative
            else "replaces that rate with its own bounds, so kohya trains it: its rate here is the "
            f"schedule's {peak:g}, which the schedule replaces alike"
        )
        conv.notes.append(
            f"kohya {a['network_module'].value} keeps its {name} group at rate 0 and {cls} {how}"
        )
    return out


def _at(value: Any, index: int, count: int) -> float | None:
    """A scheduler bound for kohya group `index` of `count`: a list's item (None: another length), or the one
    number every group gets."""
    if isinstance(value, (list, tuple)):
        return float(value[index]) if len(value) == count else None
    return None if value is None else float(value)


def _literal_kwargs(args: Legacy) -> dict | None:
    """kohya's parse of --lr_scheduler_args (`key=<Python literal>`); None where it fails."""
    import ast

    kwargs = {}
    for item in args.value or []:
        key, _, text = str(item).partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
    return kwargs


# kohya's U-Net blocks (get_block_index) and the target modules each holds: a Transformer2DModel (LoRA at
# the block's dim), a ResnetBlock2D (with conv: its Linear and 1x1 shortcut at the dim, 3x3 convolutions at
# the conv dim), a Downsample2D / Upsample2D (with conv: one 3x3 convolution at the conv dim)
_SD_LAYOUT = {
    **{1 + 3 * i + j: ("attn", "res") for i in range(3) for j in range(2)},
    **{3 + 3 * i: ("sampler",) for i in range(3)},
    10: ("res",),
    11: ("res",),
    12: ("attn", "res"),
    13: ("res",),
    14: ("res",),
    15: ("res", "sampler"),
    **{13 + 3 * i + j: ("attn", "res") for i in range(1, 4) for j in range(3)},
    **{15 + 3 * i: ("attn", "res", "sampler") for i in range(1, 3)},
}
_SDXL_LAYOUT = {
    2: ("res",),
    3: ("res",),
    4: ("sampler",),
    5: ("attn", "res"),
    6: ("attn", "res"),
    7: ("sampler",),
    8: ("attn", "res"),
    9: ("attn", "res"),
    10: ("res",),
    11: ("attn",),
    12: ("res",),
    **{13 + n: ("attn", "res") for n in range(6)},
    15: ("attn", "res", "sampler"),
    18: ("attn", "res", "sampler"),
    **{19 + n: ("res",) for n in range(3)},
}


def _weighted_blocks(
    a: Args, kwargs: dict[str, str], sdxl: bool, present: set[int] | None = None
) -> tuple[list[tuple[int, float]], str]:
    """networks.lora with down/mid/up_lr_weight: (block index, lr weight) of each kohya group, in kohya's
    order: `block_idx_to_lora` fills in the order create_modules meets the modules, named_modules of kohya's
    U-Net: SD 1.x/2.x (library/original_unet.py registers mid_block after up_blocks) the down blocks, the up
    blocks, then the mid block; SDXL (sdxl_original_unet.py) input, middle, output blocks. A block has a
    group where it holds a LoRA module: its weight not 0 (kohya removes the block's dims; built from a file,
    assemble_params skips the group at rate 0) and a target with a rank above 0, or (`present`, kohya
    --dim_from_weights) a module of the file."""
    from dbspec.convert.kohya.blocks import SD_BLOCKS, block_list, block_lr_weights

    rest = dict(kwargs)
    try:
        weights = block_lr_weights(rest, sdxl)
    except ValueError as exc:
        return [], str(exc)
    n = SDXL_BLOCKS if sdxl else SD_BLOCKS
    try:
        dims_text, conv_dims_text = rest.get("block_dims"), rest.get("conv_block_dims")
        dims = block_list(dims_text, int, n, "block_dims") if dims_text else [a["network_dim"].value or 4] * n
        conv = rest.get("conv_dim") or None
        conv_dims = (
            block_list(conv_dims_text, int, n, "conv_block_dims")
            if conv_dims_text
            else [int(conv) if conv else 0] * n
        )
    except ValueError:
        return [], "block_dims / conv_block_dims that kohya rejects (network.py reports them)"
    convs = conv is not None or "conv_block_dims" in rest
    layout = _SDXL_LAYOUT if sdxl else _SD_LAYOUT
    order = sorted(layout) if sdxl else [*[i for i in sorted(layout) if i != 12], 12]
    blocks = []
    for index in order:
        if not weights or not weights[index]:
            continue
        held = layout[index]
        dim, conv_dim = dims[index], conv_dims[index]
        has = ("attn" in held and dim > 0) or (
            convs and (("res" in held and (dim > 0 or conv_dim > 0)) or ("sampler" in held and conv_dim > 0))
        )
        if present is not None:
            has = index in present
        if has:
            blocks.append((index, weights[index]))
    return blocks, ""


def _lora_flow(
    a: Args, script: str, written: dict, facts: dict, split: bool = False
) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    """lora_flux / lora_sd3: [CLIP-L, (CLIP-G,) T5-XXL, transformer], each with its plus group. dbspec's
    groups: CLIP-L in `text_encoder`; Flux's T5 in `text_encoder_2` where the converter gave it its own rate
    (lora_flux.t5_trains); SD3's CLIP-G in `text_encoder_2` at a rate of its own (train._sd3_clip_g_lr), its
    T5 in `text_encoder_3` at its own (lora_flux._sd3_t5_trains), else in CLIP-G's group; with `split`
    each in its own whatever the rates."""
    kwargs, _ = parse_network_args(a["network_args"].value or [])
    reg = facts.get("kohya_flux_reg_groups") if script == "flux_train_network" else None
    if script == "flux_train_network" and "network_reg_lrs" in kwargs and reg is None:
        return [], "network_reg_lrs gives the modules its regexes match groups of their own"
    unet_ratio, text_ratio = _ratios(kwargs)
    te = a["text_encoder_lr"].value
    given = [float(v) for v in (te if isinstance(te, list) else [] if te is None else [te])]
    lr = float(a["learning_rate"].value)
    count = 3 if script == "sd3_train_network" else 2
    # kohya's padding: none -> learning_rate for each; one value -> each; SD3's two -> [a, b, b]
    rates = (given + given[-1:] * count)[:count] if given else [lr] * count
    encoders: list[tuple[str, float, str]] = [("textencoder 1", rates[0], "text_encoder", "lora_te1_")]
    if script == "sd3_train_network":
        g_own = (split or len(given) > 1) and rates[1] not in ((0,) if split else (rates[0], 0))
        second = "text_encoder_2" if g_own else "text_encoder"
        encoders.append(("textencoder 2 (CLIP-G)", rates[1], second, "lora_te2_"))
        t5 = "text_encoder_3" if split or ("optimizer", "text_encoder_3_lr") in written else second
    else:
        t5 = "text_encoder_2" if split or ("optimizer", "text_encoder_2_lr") in written else "text_encoder"
    if _value(written, ("train", "t5"), False):
        encoders.append(("textencoder (T5-XXL)", rates[-1], t5, "lora_te3_"))
    groups: list[tuple[str, tuple[str, ...]]] = []
    if not a["network_train_unet_only"].value:
        for name, rate, target, prefix in encoders:
            # network_reg_lrs on the encoder's modules: its regexes' groups first, as the denoiser's below
            # (runtime/blocks.py: `<group>_lr<rate>`), then the modules none matches
            # (at rate 0 only the regexes' groups: a lifted encoder, reg_dims.lifted_encoders)
            text = (reg or {}).get("text", {}).get(prefix)
            for unit, suffix in _reg_units(name, text, rate, split):
                groups.append((unit, (f"{target}{suffix}",)))
                if text_ratio is not None:
                    groups.append((f"{unit} plus", (f"{target}_lora_up{suffix}",)))
    if not a["network_train_text_encoder_only"].value:
        # network_reg_lrs: the groups of the regexes first, by their key `reg_lr_<i>` sorted as text, each
        # at its own rate (runtime/blocks.py: `denoiser_lr<rate>`), then the modules none matches; a group
        # at rate 0 is left out (assemble_params' `continue`; dbspec's blocks at lr_scale 0 have none)
        unet_rate = _rate(a, "unet_lr", lr)
        unet = reg if reg is not None and "network_reg_lrs" in kwargs else None
        for name, suffix in _reg_units("unet", unet, unet_rate, split):
            groups.append((name, (f"denoiser{suffix}",)))
            if unet_ratio is not None:
                groups.append((f"{name} plus", (f"denoiser_lora_up{suffix}",)))
    return groups, ""


def _reg_units(name: str, reg: dict | None, rate: float, split: bool = False) -> list[tuple[str, str]]:
    """assemble_params' groups of one component (kohya's description, dbspec's group suffix): with
    network_reg_lrs (`reg`: the regexes' rates by position, whether a built module matches none) each
    regex's `reg_lr_<i>` group, sorted as text, at its rate (`_lr<rate>`; none at rate 0), then the modules
    none matches at the component's `rate` (none at 0). `split`: a regex whose rate another of the
    component's shares trains in a group of its own, `_lr<rate>_reg_lr_<i>` (its blocks' `group`,
    write_block_groups), where dbspec would share one at that rate."""
    units: list[tuple[str, str]] = []
    if reg is not None:
        for index in sorted(reg["reg"], key=lambda i: f"reg_lr_{i}"):
            if reg["reg"][index]:
                own = f"_reg_lr_{index}" if split and _shared_rate(reg["reg"], index) else ""
                units.append((f"{name} reg_lr_{index}", f"_lr{reg['reg'][index]:g}{own}"))
        return units + ([(name, "")] if reg["default"] and rate else [])
    return [(name, "")] if rate else []


def _from_weights(a: Args) -> bool:
    """kohya --dim_from_weights: the network built from --network_weights (create_network_from_weights)."""
    return bool("dim_from_weights" in a and a["dim_from_weights"].value and a["network_weights"].value)


def _shared_rate(rates: dict[int, float], index: int) -> bool:
    """Whether another network_reg_lrs regex of the component trains at regex `index`'s rate (one dbspec
    group, `<name>_lr<rate>`, unless the blocks name their own)."""
    return any(i != index and rate == rates[index] for i, rate in rates.items())


def _value(written: dict, path: tuple[str, ...], default: Any) -> Any:
    return written[path][0] if path in written else default


def _ratios(kwargs: dict[str, str]) -> tuple[float | None, float | None]:
    """LoRA+'s (U-Net, text encoder) ratios as kohya's networks take them (`specific or general`), None where
    there is no plus group: a ratio 0 makes its rate 0, which assemble_params skips."""
    general = _ratio(kwargs, "loraplus_lr_ratio")
    unet = _ratio(kwargs, "loraplus_unet_lr_ratio") or general
    return unet or None, _ratio(kwargs, "loraplus_text_encoder_lr_ratio") or general or None


def _ratio(kwargs: dict[str, str], key: str) -> float | None:
    try:
        return float(kwargs[key]) if key in kwargs else None
    except ValueError:
        return None  # network.py reports it


def split_needed(a: Args, script: str, lists: list[list], conv: Conversion) -> bool:
    """Whether kohya's per-group lists give two kohya groups that dbspec trains as one (its text encoders at
    one rate) different values: then every list maps with kohya_groups' `split`, so that the tables all name
    the encoders' own groups."""
    groups, _ = kohya_groups(a, script, conv.values, conv.facts)
    for values in lists:
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
        if groups and len(numbers) == len(groups) and _table(groups, numbers)[1]:
            return True
    return False


def group_table(
    a: Args,
    script: str,
    cls: str,
    key: str,
    values: list,
    args: Legacy,
    conv: Conversion,
    split: bool = False,
) -> float | dict[str, float] | None:
    """kohya's per-group `key` list as dbspec's value: one number when every dbspec group gets the same, else
    a table by group name. None after reporting why not (torch's ValueError on a wrong length: DBS402).
    `split`: map onto each text encoder's own group (split_needed)."""
    groups, why = kohya_groups(a, script, conv.values, conv.facts, split=split)
    if not groups:
        conv.unsupported(args, f"one {key} per parameter group: {why}")
        return None
    if len(values) != len(groups):
        shown = ", ".join(name for name, _ in groups)
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"{key} has {len(values)} values, kohya's optimizer has {len(groups)} parameter group(s) "
            f"({shown}): torch's {cls} raises ValueError `{key} must have the same length as "
            "optimizer.param_groups`",
        )
        return None
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        conv.invalid(
            args.key, args.value, args.source, f"{key}={values!r} holds a value that is not a number"
        )
        return None
    table, clash = _table(groups, numbers)
    if clash:
        conv.unsupported(args, f"{key}: {clash}; dbspec trains them as one group")
        return None
    if not table:  # nothing trains in dbspec that the list concerns
        return numbers[0]
    return next(iter(table.values())) if len(set(table.values())) == 1 else table


def _table(groups: list[tuple[str, tuple[str, ...]]], numbers: list[float]) -> tuple[dict[str, float], str]:
    """The values by dbspec group, or ({}, why) where two kohya groups give one dbspec group two values."""
    table: dict[str, float] = {}
    for (name, targets), value in zip(groups, numbers, strict=True):
        for target in targets:
            if target in table and table[target] != value:
                return {}, f"kohya's groups give `{target}` {table[target]!r} and {value!r} ({name})"
            table[target] = value
    return table, ""


def write_block_groups(a: Args, script: str, conv: Conversion, note: str) -> None:
    """After lists mapped with kohya_groups' `split`: each networks.lora U-Net block that kohya trains in a
    group of its own (block lr weights) gets [[adapter.blocks]] `group = "unet_block<N>"`, the group the
    tables name; a block without an entry (the adapter's ranks and alphas, weight 1) gets one, its pattern
    disjoint from the others', so no module changes block."""
    from dbspec.convert.kohya.blocks import block_pattern

    if script == "flux_train_network":
        _write_reg_groups(conv, note)
        return
    if script not in ("train_network", "sdxl_train_network"):
        return
    module = a["network_module"].value
    if module not in (
        "networks.lora",
        "networks.lora_fa",
    ):
        return
    if module == "networks.lora_fa" and script == "sdxl_train_network":
        return  # lora_fa's SDXL U-Net is one block (-1): one group (lora_fa_blocks.py)
    kwargs, _ = parse_network_args(a["network_args"].value or [])
    if not any(k in kwargs for k in _BLOCK_WEIGHTS):
        return
    sdxl = script == "sdxl_train_network"
    if module == "networks.lora" and _from_weights(a):  # the file's blocks, each entry in its kohya block
        files = conv.facts.get("kohya_file_block_entries", {})
        for index, entries in sorted(files.items()):
            for entry in entries:  # a block at weight 0 is in no group (held, lr_scale 0)
                if conv.values.get(("adapter", "blocks", entry, "lr_scale"), (1.0, ""))[0]:
                    conv.put(("adapter", "blocks", entry, "group"), f"unet_block{index}", note)
        return
    blocks, _ = _weighted_blocks(a, kwargs, sdxl)
    entries = conv.facts.get("kohya_block_entries", {})
    count = sum(1 for path in conv.values if path[:2] == ("adapter", "blocks") and path[3:] == ("pattern",))
    adapter = {key: conv.values[("adapter", key)][0] for key in ("rank", "alpha", "conv_rank", "conv_alpha")
               if ("adapter", key) in conv.values}  # fmt: skip
    for index, _ in blocks:
        entry = entries.get(index)
        if entry is None:  # the adapter's own settings, written out for the block
            entry, count = count, count + 1
            conv.put(("adapter", "blocks", entry, "pattern"), block_pattern(index, sdxl), note)
            for key, value in adapter.items():
                conv.put(("adapter", "blocks", entry, key), value, note)
        conv.put(("adapter", "blocks", entry, "group"), f"unet_block{index}", note)


def _write_reg_groups(conv: Conversion, note: str) -> None:
    """After lists mapped with `split` on lora_flux: each network_reg_lrs block whose regex shares its rate
    with another of its component's gets `group = "reg_lr_<i>"`, its kohya group's own (_reg_units)."""
    groups = conv.facts.get("kohya_flux_reg_groups") or {}
    for (table, index), (component, position) in conv.facts.get("kohya_flux_reg_entries", {}).items():
        reg = groups.get("reg", {}) if component == "unet" else groups.get("text", {}).get(component, {})
        rates = reg.get("reg", {}) if component != "unet" else reg
        if position in rates and _shared_rate(rates, position):
            conv.put(("adapter", table, index, "group"), f"reg_lr_{position}", note)
