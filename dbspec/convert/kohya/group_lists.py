"""kohya lr_scheduler_args with one value per optimizer parameter group (torch's CyclicLR `base_lr=[...]`,
`max_lr=[...]`, OneCycleLR's `max_lr=[...]`): the list follows kohya's group order, which this module
derives per script, and becomes a table keyed by dbspec's group names (schedule.base_lr / max_lr).

kohya's groups, in order (its code is the ground truth):
- networks.lora (train_network.py, sdxl_train_network.py; `prepare_optimizer_params`): the text encoders'
  LoRA modules as one group (SDXL's two together) unless network_train_unet_only or their rate is 0, then its
  LoRA+ "plus" group (lora_up at rate x ratio); then the U-Net's, then its plus group. Groups at rate 0 are
  dropped. Block lr weights (down/mid/up_lr_weight) give one group per U-Net block instead.
- train_db.py: the U-Net and the text encoder as one group without learning_rate_te, else [U-Net, text
  encoder]; the U-Net alone when the text encoder does not train (stop_text_encoder_training -1).
- sdxl_train.py: the U-Net (learning_rate != 0; block_lr: one group per block), then each text encoder
  that trains (train_text_encoder and its rate, learning_rate_te1/2 or learning_rate, not 0) as its own.

dbspec's groups are runtime/optim.py's (compiler/group_bounds.py names them): `denoiser`, `denoiser_lora_up`,
`text_encoder` (SDXL's second too unless its rate differs), `text_encoder_lora_up`, `text_encoder_2`.
"""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.network import parse_network_args

Args = dict[str, Legacy]
_BLOCK_WEIGHTS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")


def kohya_groups(a: Args, script: str) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    """kohya's optimizer groups in order: (kohya's name for it, the dbspec groups its parameters train in;
    () where they do not train in dbspec). On failure ([], why dbspec cannot match them one to one)."""
    if script == "train_db":
        return _train_db(a), ""
    if script == "sdxl_train":
        return _sdxl_train(a)
    if script in ("train_network", "sdxl_train_network"):
        return _networks_lora(a)
    return [], f"kohya's optimizer groups for {script}.py are not derived here"


def _rate(a: Args, key: str, fallback: Any) -> Any:
    value = a[key].value if key in a else None
    return value if value is not None else fallback


def _train_db(a: Args) -> list[tuple[str, tuple[str, ...]]]:
    stop = a["stop_text_encoder_training"].value
    unet = ("denoiser",) if a["learning_rate"].value else ()  # rate 0: train.denoiser = false
    if stop is not None and stop < 0:
        return [("unet", unet)]
    text = ("text_encoder",) if stop is None or stop > 0 else ()  # 0: it never changes (dbspec: frozen)
    if a["learning_rate_te"].value is None:
        return [("unet + text encoder", (*unet, *text))]
    return [("unet", unet), ("text encoder", text)]


def _sdxl_train(a: Args) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    lr = a["learning_rate"].value
    groups: list[tuple[str, tuple[str, ...]]] = []
    if lr:
        if a["block_lr"].value:
            return [], "sdxl_train.py's block_lr gives each U-Net block its own group; dbspec has one"
        groups.append(("unet", ("denoiser",)))
    if a["train_text_encoder"].value:
        rates = [_rate(a, key, lr) for key in ("learning_rate_te1", "learning_rate_te2")]
        own = rates[0] != rates[1] and all(rates)  # dbspec's text_encoder_2 group: only at its own rate
        if rates[0]:
            groups.append(("text encoder 1", ("text_encoder",)))
        if rates[1]:
            groups.append(("text encoder 2", ("text_encoder_2",) if own else ("text_encoder",)))
    return groups, ""


def _networks_lora(a: Args) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    module = a["network_module"].value
    if module != "networks.lora":
        return [], f"kohya's optimizer groups for network_module {module} are not derived here"
    kwargs, _ = parse_network_args(a["network_args"].value or [])
    general = _ratio(kwargs, "loraplus_lr_ratio")
    unet_ratio = _ratio(kwargs, "loraplus_unet_lr_ratio") or general
    text_ratio = _ratio(kwargs, "loraplus_text_encoder_lr_ratio") or general
    lr = a["learning_rate"].value
    te = a["text_encoder_lr"].value
    te_rate = (te[0] if te else None) if isinstance(te, list) else te
    te_rate = te_rate if te_rate is not None else lr
    unet_rate = _rate(a, "unet_lr", lr)
    groups: list[tuple[str, tuple[str, ...]]] = []
    if not a["network_train_unet_only"].value and te_rate:
        groups.append(("textencoder", ("text_encoder",)))
        if text_ratio is not None:
            groups.append(("textencoder plus", ("text_encoder_lora_up",)))
    if not a["network_train_text_encoder_only"].value and unet_rate:
        if any(k in kwargs for k in _BLOCK_WEIGHTS):
            return [], (
                "networks.lora's block lr weights give each U-Net block its own group (unet_block<N>); "
                "dbspec groups the blocks by their scale"
            )
        groups.append(("unet", ("denoiser",)))
        if unet_ratio is not None:
            groups.append(("unet plus", ("denoiser_lora_up",)))
    return groups, ""


def _ratio(kwargs: dict[str, str], key: str) -> float | None:
    try:
        return float(kwargs[key]) if key in kwargs else None
    except ValueError:
        return None  # network.py reports it


def group_table(
    a: Args, script: str, cls: str, key: str, values: list, args: Legacy, conv: Conversion
) -> float | dict[str, float] | None:
    """kohya's per-group `key` list as dbspec's value: one number when every dbspec group gets the same, else
    a table by group name. None after reporting why not (torch's ValueError on a wrong length: DBS402)."""
    groups, why = kohya_groups(a, script)
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
    table: dict[str, float] = {}
    for (name, targets), value in zip(groups, numbers, strict=True):
        for target in targets:
            if target in table and table[target] != value:
                conv.unsupported(
                    args,
                    f"{key}: kohya's groups give `{target}` {table[target]!r} and {value!r} ({name}); dbspec "
                    "trains them as one group",
                )
                return None
            table[target] = value
    if key == "max_lr" and 0.0 in table.values():
        conv.unsupported(args, "a max_lr of 0 (dbspec's max_lr 0 stands for the group's own lr)")
        return None
    if not table:  # nothing trains in dbspec that the list concerns
        return numbers[0]
    return next(iter(table.values())) if len(set(table.values())) == 1 else table
