"""SimpleTuner's `lora_type = "lycoris"`: its lycoris_config JSON -> [adapter] (kind lokr, loha, or lora with
convolution targets for LoCon).

SimpleTuner's trainer (helpers/training/trainer.py) reads the JSON, takes multiplier, linear_dim (default 4)
and linear_alpha (default 1) out of it, applies `apply_preset` when given and passes the rest to LyCORIS'
create_lycoris(unet, multiplier, linear_dim, linear_alpha, algo=..., **rest). Only the denoiser trains.
A preset that targets the module classes Attention and FeedForward adapts their linear layers: dbspec's
denoiser_targets by suffix. Without a preset LyCORIS' own default preset applies (every linear and
convolution of the UNet's transformer and ResNet blocks), which dbspec has no list for.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper
from dbspec.plan.lokr import factorization

KINDS = {"lokr": "lokr", "loha": "loha", "locon": "lora", "lora": "lora"}
# The nn.Linear layers inside diffusers' Attention and FeedForward modules of SD/SDXL UNets.
CLASS_TARGETS = {
    "Attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "FeedForward": ["ff.net.0.proj", "ff.net.2"],
}
# The same classes in SD3's and Flux's transformers: the joint attention's text projections too, and the text
# stream's feed-forward (Flux's single blocks hold their MLP as plain Linear layers, outside both classes).
FLOW_CLASS_TARGETS = {
    "Attention": [*CLASS_TARGETS["Attention"], "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
    "FeedForward": [*CLASS_TARGETS["FeedForward"], "ff_context.net.0.proj", "ff_context.net.2"],
}
# Settings of create_lycoris / the algorithm that dbspec sets; the value is the [adapter] key.
SETTINGS = {"factor": "factor", "decompose_both": "decompose_both"}
INERT = {"bypass_mode", "use_scalar", "dropout", "rank_dropout_scale", "train_norm", "use_tucker"}


def map_lycoris(
    kind: Legacy, config: Legacy, paths: PathMapper, conv: Conversion, flow: bool = False
) -> None:
    local = paths.local(str(config.value)) if config.value else None
    if local is None or not local.is_file():
        conv.unsupported(
            kind, f"its lycoris_config `{config.value}` is not here to read", help="convert next to it"
        )
        return
    try:
        settings = json.loads(local.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        conv.invalid(config.key, config.value, config.source, f"cannot read it: {exc}")
        return
    if not isinstance(settings, dict):
        conv.invalid(config.key, config.value, config.source, "must hold an object")
        return
    conv.record(config, "mapped", "adapter")
    src = f"lycoris_config ({local.name})"
    item = {k: Legacy(key=f"lycoris.{k}", value=v, source=src) for k, v in settings.items()}
    algo = str(settings.get("algo", "lora"))
    if algo not in KINDS or "algo" not in item:
        conv.unsupported(
            item.get("algo", kind),
            "dbspec trains LyCORIS lokr, loha and locon (dbspec lora with conv targets)",
        )
        return
    adapter = KINDS[algo]
    conv.put(("adapter", "kind"), adapter, conv.comment(item["algo"]))
    conv.record(item["algo"], "mapped", "adapter.kind")
    conv.record(kind, "mapped", "adapter.kind")
    if not _numbers(settings, item, conv):
        return
    rank = int(settings.get("linear_dim", 4))
    conv.put(("adapter", "rank"), rank, _say(conv, item, "linear_dim", "SimpleTuner's default 4"))
    _switches(adapter, settings, item, conv)
    conv.put(
        ("adapter", "alpha"),
        float(int(settings.get("linear_alpha", 1))),  # the trainer takes int(linear_alpha)
        _say(conv, item, "linear_alpha", "SimpleTuner's default 1"),
    )
    for key in ("linear_dim", "linear_alpha"):
        if key in item and item[key].key not in conv.reports:
            conv.record(item[key], "mapped", f"adapter.{'rank' if key == 'linear_dim' else 'alpha'}")
    _preset(adapter, settings, item, conv, FLOW_CLASS_TARGETS if flow else CLASS_TARGETS)
    _dora(adapter, item, conv)
    for key, legacy in item.items():
        if legacy.key in conv.reports:
            continue
        if key in SETTINGS and adapter == "lokr":
            conv.mapped(legacy, ("adapter", SETTINGS[key]), legacy.value)
        elif key == "unbalanced_factorization" and adapter == "lokr":  # create_lycoris reads it with str_bool
            conv.mapped(legacy, ("adapter", "unbalanced_factorization"), _lycoris_str_bool(legacy.value))
        elif key in ("conv_dim", "conv_alpha"):
            conv.inert(legacy, "the preset's Attention and FeedForward modules hold no convolution")
        elif key == "multiplier" and float(legacy.value) == 1.0:
            conv.record(legacy, "mapped", "adapter")
        elif (key in INERT or key == "full_matrix") and legacy.value in (False, None, 0, 0.0):
            conv.inert(legacy, "off")
        elif key == "full_matrix":  # LyCORIS reads it in its LoKr module only
            conv.inert(legacy, f"LyCORIS's LoKr switch; algo {algo} does not read it")
        else:
            conv.unsupported(legacy, "a LyCORIS setting dbspec does not set")


def _lycoris_str_bool(value: Any) -> bool:
    """LyCORIS's str_bool (create_lycoris reads dora_wd and wd_on_output with it): only "false" is false."""
    return str(value).lower() != "false"


def _dora(adapter: str, item: dict[str, Legacy], conv: Conversion) -> None:
    """LyCORIS's `dora_wd` (its weight decomposition, runtime/lycoris_dora.py) and `wd_on_output` (one
    magnitude per input column when false); wd_on_output without dora_wd changes nothing."""
    if "dora_wd" not in item:
        if "wd_on_output" in item:
            conv.inert(item["wd_on_output"], "LyCORIS reads it with dora_wd only")
        return
    dora = _lycoris_str_bool(item["dora_wd"].value)
    if not dora:
        conv.inert(item["dora_wd"], "off")
        if "wd_on_output" in item:
            conv.inert(item["wd_on_output"], "LyCORIS reads it with dora_wd only")
        return
    conv.mapped(item["dora_wd"], ("adapter", "dora"), True)
    if adapter == "lora":  # LyCORIS's LoConModule: the norm differentiated (peft's DoRA detaches it)
        conv.put(("adapter", "dora_form"), "lycoris", conv.comment(item["dora_wd"]))
    if "wd_on_output" in item:
        axis = "output" if _lycoris_str_bool(item["wd_on_output"].value) else "input"
        conv.mapped(item["wd_on_output"], ("adapter", "dora_axis"), axis)


def _switches(adapter: str, settings: dict, item: dict[str, Legacy], conv: Conversion) -> None:
    """LyCORIS's use_scalar (every algo) and LoKr's full_matrix (both factors full whatever the rank), when
    on: [adapter] scalar and full_matrix."""
    if settings.get("use_scalar"):
        conv.mapped(item["use_scalar"], ("adapter", "scalar"), True)
    if settings.get("full_matrix") and adapter == "lokr":
        conv.mapped(item["full_matrix"], ("adapter", "full_matrix"), True)


def _say(conv: Conversion, item: dict[str, Legacy], key: str, default: str) -> str:
    return conv.comment(item[key]) if key in item else f"{conv.tool} lycoris {default}"


def _numbers(settings: dict[str, Any], item: dict[str, Legacy], conv: Conversion) -> bool:
    for key in ("linear_dim", "linear_alpha", "factor", "conv_dim", "conv_alpha", "multiplier"):
        if key in settings:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                conv.invalid(item[key].key, value, item[key].source, "not a number")
                return False
    return True


def _preset(
    adapter: str, settings: dict, item: dict[str, Legacy], conv: Conversion, classes: dict[str, list[str]]
) -> None:
    preset = settings.get("apply_preset")
    if "apply_preset" not in item:
        conv.unsupported(
            item["algo"],
            "without apply_preset LyCORIS' default preset adapts every linear and convolution of the UNet's "
            "transformer and ResNet blocks; dbspec converts presets of Attention and FeedForward modules",
            help='add "apply_preset": {"target_module": ["Attention", "FeedForward"]} to say which modules',
        )
        return
    targets = preset.get("target_module") if isinstance(preset, dict) else None
    if not isinstance(targets, list) or not targets or any(t not in classes for t in targets):
        conv.unsupported(
            item["apply_preset"],
            f"dbspec converts presets whose target_module lists {' and '.join(classes)} (classes)",
        )
        return
    algo_map = preset.get("module_algo_map", {})
    own = {k: settings[k] for k in ("factor", "linear_dim", "linear_alpha") if k in settings}
    factors = _class_factors(algo_map, targets, settings)
    if not isinstance(algo_map, dict) or any(
        not isinstance(v, dict)
        or any(own.get(k, object()) != x for k, x in v.items() if not (k == "factor" and c in factors))
        for c, v in algo_map.items()
    ):
        conv.unsupported(
            item["apply_preset"],
            "module_algo_map gives modules their own settings; dbspec's adapter has one set for all, and "
            "[[adapter.blocks]] a factor of their own for a target class's layers",
            help="drop module_algo_map, or give its target classes only their own `factor`",
        )
        return
    if adapter == "lokr" and not _factor_blocks(factors, settings, item, conv, classes):
        return
    names = [name for t in targets for name in classes[t]]
    conv.mapped(item["apply_preset"], ("adapter", "denoiser_targets"), names)


# The widths of the Linears inside the Attention and FeedForward modules SimpleTuner's LyCORIS adapts (SD
# 1.x / 2.x and SDXL U-Nets, SD3 / SD3.5 and Flux transformers: channels, cross-attention contexts,
# feed-forward inner widths), which bound the LoKr dim from which both Kronecker factors are full.
_WIDTHS = (320, 640, 768, 1024, 1280, 1536, 2048, 2432, 3072, 4096, 5120, 6144, 9728, 10240, 12288)
_MAX_BLOCK_RANK = 1024  # spec AdapterBlock.rank's bound


def _class_factors(algo_map: Any, targets: list[str], settings: dict[str, Any]) -> dict[str, int]:
    """The `factor` (LokrModule's int(); 0 splits as 1, negatives as -1) of each target class whose
    module_algo_map entry gives one other than create_lycoris's (the top-level `factor`, default -1).
    create_single_module hands a class entry's keys to the modules of that class's layers, before the
    network's, so the entry's factor splits them."""
    if not isinstance(algo_map, dict):
        return {}
    network = int(settings.get("factor", -1))
    out = {}
    for cls in targets:
        value = algo_map.get(cls, {}).get("factor") if isinstance(algo_map.get(cls), dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if int(value) == network:
            continue
        factor = int(value)
        out[cls] = 1 if factor == 0 else -1 if factor < 0 or factor > 65536 else factor
    return out


def _factor_blocks(
    factors: dict[str, int], settings: dict, item: dict[str, Legacy], conv: Conversion, classes: dict
) -> bool:
    """A LoKr module_algo_map's per-class factors -> one [[adapter.blocks]] per class, its layers' suffixes,
    at the adapter's rank and alpha. A dim above the blocks' bound (SimpleTuner's `linear_dim` 10000): every
    layer is full in both Kronecker factors at scale 1 (LokrModule sets alpha to the dim), as it is at rank
    1024 with alpha 1024 where each width's larger split part is at most 2048 (or `full_matrix`). False when
    refused (DBS403)."""
    rank, alpha = int(settings.get("linear_dim", 4)), float(int(settings.get("linear_alpha", 1)))
    full = bool(settings.get("full_matrix"))  # what _switches hands [adapter] full_matrix
    why = conv.comment(item["apply_preset"])
    first = 1 + max((k[2] for k in conv.values if k[:2] == ("adapter", "blocks")), default=-1)
    for index, (cls, factor) in enumerate(factors.items(), start=first):
        block = {"rank": rank, "alpha": alpha}
        if rank > _MAX_BLOCK_RANK:
            need = max(-(-max(factorization(w, factor)) // 2) for w in _WIDTHS)
            if not full and need > _MAX_BLOCK_RANK:
                conv.unsupported(
                    item["apply_preset"],
                    f"module_algo_map.{cls} factor {factor} at linear_dim {rank}: a layer is full only from "
                    f"dim {need}, above [[adapter.blocks]]' {_MAX_BLOCK_RANK}",
                    help="a factor that splits the widths more evenly, or full_matrix",
                )
                return False
            block = {"rank": _MAX_BLOCK_RANK, "alpha": float(_MAX_BLOCK_RANK)}
        pattern = r"(?:^|\.)(?:" + "|".join(re.escape(n) for n in classes[cls]) + ")$"
        block = {"pattern": pattern, **block, "factor": factor}
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, f"{why}: module_algo_map.{cls} factor")
    return True
