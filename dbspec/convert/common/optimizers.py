"""Legacy optimizer names and arguments -> [optimizer].

dbspec builds: adamw (torch AdamW), adamw8bit (bitsandbytes AdamW8bit), paged_adamw and paged_adamw8bit
(bitsandbytes PagedAdamW, PagedAdamW8bit), lion (lion_pytorch Lion), lion8bit, paged_lion and paged_lion8bit
(bitsandbytes Lion8bit, PagedLion, PagedLion8bit), sgd (torch
SGD, Nesterov when `nesterov`), adafactor (transformers Adafactor; relative_step, scale_parameter and
warmup_init as given), prodigy (prodigyopt Prodigy with d0, d_coef, growth_rate, decouple,
use_bias_correction, safeguard_warmup, beta3, slice_p, eps), dadapt_* (the dadaptation
package's D-Adaptation optimizers with d0, growth_rate, decouple, use_bias_correction, no_prox), came
(came_pytorch CAME with its eps pair, clip_threshold and three betas). Each legacy
optimizer is mapped with the defaults its legacy constructor would use, so weight decay and betas stay what
they were.
"""

from __future__ import annotations

import ast
import math
from typing import Any

import attrs

from dbspec.compiler.optimizers import PRODIGY_ARGS
from dbspec.plan.model import BNB_MIN_8BIT_SIZE
from dbspec.spec.model import ADEMAMIX_KINDS, BNB_8BIT_KINDS, BNB_LION_KINDS, CAME_EPS

# kind -> defaults of the constructor the legacy tool calls (weight_decay, betas, eps)
_DEFAULTS = {
    "adamw": {"weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8},  # torch.optim.AdamW, bnb AdamW8bit
    "adamw8bit": {"weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8},
    "paged_adamw": {"weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8},  # bnb PagedAdamW(32bit)
    "paged_adamw8bit": {"weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8},  # bnb PagedAdamW8bit
    "lion": {"weight_decay": 0.0, "betas": [0.9, 0.99]},  # lion_pytorch.Lion
    # bitsandbytes' Lion8bit, PagedLion (PagedLion32bit), PagedLion8bit
    **{kind: {"weight_decay": 0.0, "betas": [0.9, 0.99]} for kind in BNB_LION_KINDS},
    "sgd": {"weight_decay": 0.0, "momentum": 0.0},  # torch.optim.SGD
    "radam": {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},  # torch.optim.RAdam
    "adafactor": {"weight_decay": 0.0},  # transformers Adafactor
    "prodigy": {"weight_decay": 0.0, "betas": [0.9, 0.999]},  # prodigyopt.Prodigy
    # dadaptation's classes
    "dadapt_adam": {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
    "dadapt_adam_preprint": {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
    "dadapt_adagrad": {"weight_decay": 0.0, "momentum": 0.0, "eps": 1e-6},
    "dadapt_adan": {"weight_decay": 0.02, "betas": [0.98, 0.92, 0.99], "eps": 1e-8},
    "dadapt_adan_ip": {"weight_decay": 0.02, "betas": [0.98, 0.92, 0.99], "eps": 1e-8},
    "dadapt_lion": {"weight_decay": 0.0, "betas": [0.9, 0.99]},
    "dadapt_sgd": {"weight_decay": 0.0, "momentum": 0.0},
    # bitsandbytes' AdEMAMix classes
    **{
        kind: {"weight_decay": 0.01, "betas": [0.9, 0.999, 0.9999], "eps": 1e-8}
        for kind in ("ademamix", "ademamix8bit", "paged_ademamix", "paged_ademamix8bit")
    },
    # schedulefree's classes
    "adamw_schedulefree": {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
    "radam_schedulefree": {"weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
    "sgd_schedulefree": {"weight_decay": 0.0, "momentum": 0.9},
    # came_pytorch.CAME (its eps pair and clip_threshold defaults are dbspec's came_eps and clip_threshold's)
    "came": {"weight_decay": 0.0, "betas": [0.9, 0.999, 0.9999]},
    # pytorch_optimizer.CAME (4.1): the same defaults; its eps1, eps2 are came_eps (_pytorch_optimizer_eps)
    "pytorch_optimizer_came": {"weight_decay": 0.0, "betas": [0.9, 0.999, 0.9999]},
    # prodigyplus.ProdigyPlusScheduleFree (2.0.1; d0 1e-6 and d_coef 1 are dbspec's defaults too)
    "prodigy_plus_schedulefree": {"weight_decay": 0.0, "betas": [0.9, 0.99], "eps": 1e-8},
}
# Legacy keyword arguments that are dbspec [optimizer] keys of the same name, by kind (beyond _SETTABLE).
_OWN_KEYS = {
    "adafactor": ("relative_step", "scale_parameter", "warmup_init", "beta1", "clip_threshold", "decay_rate"),
    **{
        kind: ("alpha", "t_alpha", "t_beta3")
        for kind in ("ademamix", "ademamix8bit", "paged_ademamix", "paged_ademamix8bit")
    },
    "adamw_schedulefree": ("warmup_steps", "r", "weight_lr_power"),
    "sgd_schedulefree": ("warmup_steps", "r", "weight_lr_power"),
    "radam_schedulefree": ("r", "weight_lr_power", "silent_sgd_phase"),
    "dadapt_adam": ("d0", "growth_rate", "decouple", "use_bias_correction"),
    "dadapt_adam_preprint": ("d0", "growth_rate", "decouple"),
    "dadapt_adagrad": ("d0", "growth_rate"),
    "dadapt_adan": ("d0", "growth_rate", "no_prox"),
    "dadapt_adan_ip": ("d0", "growth_rate", "no_prox"),
    "dadapt_lion": ("d0",),
    "dadapt_sgd": ("d0", "growth_rate"),
    "came": ("clip_threshold",),
    "pytorch_optimizer_came": ("clip_threshold",),
    "prodigy_plus_schedulefree": ("d0", "d_coef", "beta3", "use_bias_correction"),
    "radam": ("decoupled_weight_decay",),  # torch.optim.RAdam's flag
    "prodigy": PRODIGY_ARGS,  # prodigyopt.Prodigy's, as the compiler passes them
    "adamw": ("amsgrad",),  # torch.optim.AdamW's
    "sgd": ("dampening",),  # torch.optim.SGD's
}
for _kind in BNB_8BIT_KINDS:  # bitsandbytes' 8-bit classes: smaller tensors keep 32-bit state
    _OWN_KEYS[_kind] = (*_OWN_KEYS.get(_kind, ()), "min_8bit_size")
_DADAPT_HARMLESS = {"log_every": 0, "fsdp_in_use": False}
# Keyword arguments of the legacy constructors that dbspec keeps exactly when they hold these values.
_HARMLESS = {
    # fsdp_in_use=False: prodigyopt still turns it on for FSDP's flattened parameters, as under dbspec's FSDP
    "prodigy": {"fsdp_in_use": False},
    "adamw": {"differentiable": False},
    "sgd": {"differentiable": False},
    "lion": {"decoupled_weight_decay": False},  # lion_pytorch.Lion (use_triton: _SAME_UPDATE)
    "radam": {"foreach": None, "maximize": False, "differentiable": False},
    "adamw8bit": {"amsgrad": False},
    "paged_adamw": {"amsgrad": False, "optim_bits": 32, "min_8bit_size": BNB_MIN_8BIT_SIZE},
    "paged_adamw8bit": {"amsgrad": False},
    # pytorch_optimizer's CAME at its defaults: decoupled decay scaled by the lr, no AMS bound; maximize=True
    # stays refused (below)
    "pytorch_optimizer_came": {
        "weight_decouple": True,
        "fixed_decay": False,
        "ams_bound": False,
        "maximize": False,
    },
    **{kind: _DADAPT_HARMLESS for kind in _OWN_KEYS if kind.startswith("dadapt_")},
    # ProdigyPlusScheduleFree's other options at its defaults (each group its own d, the factored second
    # moment, StableAdamW's RMS clipping, the schedule-free iterate; its experimental variants off)
    "prodigy_plus_schedulefree": {
        "weight_decay_by_lr": True,
        "d_limiter": True,
        "prodigy_steps": 0,
        "schedulefree_c": 0,
        "split_groups": True,
        "split_groups_mean": False,
        "factored": True,
        "use_stableadamw": True,
        "use_schedulefree": True,
        "use_speed": False,
        "fused_back_pass": False,
        "use_cautious": False,
        "use_grams": False,
        "use_adopt": False,
        "use_orthograd": False,
        "use_focus": False,
    },
}
_SCHEDULEFREE_HARMLESS = {"foreach": True}  # the foreach implementation computes the same update
_HARMLESS.update(
    {
        "ademamix": {"optim_bits": 32, "min_8bit_size": BNB_MIN_8BIT_SIZE, "is_paged": False},
        "ademamix8bit": {"is_paged": False},
        "paged_ademamix": {"optim_bits": 32, "min_8bit_size": BNB_MIN_8BIT_SIZE},
        "paged_lion": {"min_8bit_size": BNB_MIN_8BIT_SIZE},
        **{
            k: _SCHEDULEFREE_HARMLESS
            for k in ("adamw_schedulefree", "sgd_schedulefree", "radam_schedulefree")
        },
    }
)
# Keyword arguments whose every value computes the same update (how, not what: the kernel, autograd through
# it, where the step counter lives), so dbspec keeps the run exactly whatever they hold:
_SAME_UPDATE = {
    # torch.optim.RAdam (torch 2.13 radam.py): `capturable` keeps the step count and the bias corrections as
    # device tensors and picks the rectified update with torch.where instead of a Python `if` (the same
    # formula, to float rounding: tests/unit/test_optimizer_same_update.py; CUDA only: on the CPU torch
    # raises AssertionError, so kohya's run with it needs a GPU, where it computes that update).
    # (`differentiable=True` is no such option: kohya's run stops, _differentiable_problem)
    "radam": ("capturable",),
    # lion_pytorch.Lion(use_triton=True): one Triton kernel computing Lion's update_fn (decay, the sign of
    # beta1-interpolated momentum, the beta2 momentum), its terms rearranged as (exp_avg - grad) x beta + grad
    # (to float rounding; CUDA only: it asserts CUDA tensors, so kohya's run with it needs a GPU)
    "lion": ("use_triton",),
    # torch.optim.AdamW (torch 2.13 adam.py): `capturable` as RAdam's (the step count and bias corrections as
    # device tensors, the same formula to float rounding: tests/unit/test_optimizer_same_update.py; CUDA
    # only, torch raises AssertionError on the CPU). `foreach=False` (and None) is torch's per-tensor loop,
    # the same update as its foreach kernel; `foreach=True` and `fused=True` map to optimizer.implementation.
    "adamw": ("capturable",),
    # pytorch_optimizer's CAME (4.1): `foreach` False is its per-tensor loop, True and None its batched
    # kernel over the tensors of one shape class; the same operations in the same order, bit-equal on the CPU
    # (tests/runtime/test_pytorch_optimizer_came.py)
    "pytorch_optimizer_came": ("foreach",),
    # ProdigyPlusScheduleFree: `stochastic_rounding` and `factored_fp32` act on bf16 weights and gradients
    # only; dbspec runs it over fp32 weights (DBS620), where every value computes the same update
    "prodigy_plus_schedulefree": ("stochastic_rounding", "factored_fp32"),
}
# torch's AdamW and SGD: their kernel keywords, read by optimizer_settings into optimizer.implementation
_KERNEL_KINDS = ("adamw", "sgd")
# Arguments refused with a reason of their own (the rest: dbspec has no such option)
_REFUSED_WHY = {
    ("prodigy", "fsdp_in_use"): "prodigyopt then all-reduces its estimate of d over torch.distributed "
    "(a single-process run raises: no process group), which dbspec's runs do only under FSDP, where Prodigy "
    "detects the flattened parameters itself",
    ("prodigy_plus_schedulefree", "eps"): "None is ProdigyPlusScheduleFree's Adam-atan2 update, which dbspec "
    "does not run",
    **{
        ("pytorch_optimizer_came", key): "0 leaves that regulariser out, which pytorch_optimizer allows and "
        "dbspec's came_eps (two positive numbers) does not express"
        for key in ("eps1", "eps2")
    },
}
# maximize=True (torch's RAdam, AdamW, SGD) stays refused: it steps up the gradient, training to raise the
# loss, which no dbspec option does (nor should: a run of it learns nothing worth reproducing)
_SETTABLE = {"weight_decay", "betas", "eps", "momentum"}
# legacy keyword -> dbspec [optimizer] key where the names differ (schedulefree's, Adafactor's eps pair)
_RENAMED = {
    "adamw_schedulefree": {"warmup_steps": "schedulefree_warmup_steps", "r": "schedulefree_r"},
    "sgd_schedulefree": {"warmup_steps": "schedulefree_warmup_steps", "r": "schedulefree_r"},
    "radam_schedulefree": {"r": "schedulefree_r"},
    "adafactor": {"eps": "adafactor_eps"},
    "came": {"eps": "came_eps"},
}


@attrs.frozen(kw_only=True)
class KohyaName:
    kind: str | None  # None: no dbspec equivalent
    why: str = ""  # for None: why not; else a difference worth saying ("" when exact)
    nesterov: bool = False  # kohya's SGDNesterov(8bit): torch/bnb SGD with nesterov=True
    crashes: bool = False  # kohya's get_optimizer raises on this name (kind is None)
    dotted: bool = False  # a class path kohya imports as given (no kohya fix-ups of its arguments)


def kohya_optimizer(name: str) -> KohyaName:
    """kohya get_optimizer: case-insensitive names; other names are torch.optim classes or dotted paths."""
    lower = name.lower()
    exact = {
        "": "adamw",
        "adamw": "adamw",
        "adamw8bit": "adamw8bit",
        "lion": "lion",
        "adafactor": "adafactor",
        "prodigy": "prodigy",
        "sgd": "sgd",
    }
    if "." in name:
        return _dotted(name)
    if lower in exact and (lower != "sgd" or name == "SGD"):
        return KohyaName(kind=exact[lower])
    if lower == "radam":  # not one of kohya's names: getattr(torch.optim, name), case-sensitive
        return (
            KohyaName(kind="radam")
            if name == "RAdam"
            else KohyaName(
                kind=None,
                crashes=True,
                why=f"kohya looks {name} up in torch.optim as written and Python names are case-sensitive "
                "(AttributeError); did you mean RAdam?",
            )
        )
    if lower in _SCHEDULEFREE_NAMES:
        return KohyaName(kind=_SCHEDULEFREE_NAMES[lower])
    if lower.endswith("ademamix") or lower.endswith("ademamix8bit") or lower.endswith("ademamix32bit"):
        return KohyaName(
            kind=None,
            crashes=True,
            why=f"kohya's get_optimizer has no {name} branch and looks it up in torch.optim, which has no "
            "such class (AttributeError); kohya's help says to give the full path",
        )
    if lower == "came":
        return KohyaName(
            kind=None,
            crashes=True,
            why=f"kohya's get_optimizer has no {name} branch and looks it up in torch.optim, which has no "
            "such class (AttributeError); CAME is the class path came_pytorch.CAME",
        )
    # bitsandbytes' PagedAdamW32bit is its PagedAdamW with the (default) 32-bit state: one class, one kind
    paged = {
        "pagedadamw": "paged_adamw",
        "pagedadamw32bit": "paged_adamw",
        "pagedadamw8bit": "paged_adamw8bit",
    }
    if lower in paged:
        return KohyaName(kind=paged[lower])
    if lower in ("lion8bit", "pagedlion8bit"):  # bitsandbytes.optim.Lion8bit, PagedLion8bit
        return KohyaName(kind={"lion8bit": "lion8bit", "pagedlion8bit": "paged_lion8bit"}[lower])
    if lower in ("pagedlion", "pagedlion32bit"):
        return KohyaName(
            kind=None,
            crashes=True,
            why=f"kohya's get_optimizer has no {name} branch and looks it up in torch.optim, which has no "
            "such class (AttributeError); bitsandbytes' 32-bit paged Lion is the class path "
            "bitsandbytes.optim.PagedLion",
        )
    if lower in _DADAPT_NAMES:
        return KohyaName(kind=_DADAPT_NAMES[lower])
    if lower == "sgdnesterov":  # torch SGD(nesterov=True); momentum 0.9 unless optimizer_args give one
        return KohyaName(kind="sgd", nesterov=True)
    if lower == "sgdnesterov8bit":
        return KohyaName(
            kind="sgd",
            nesterov=True,
            why="bitsandbytes' 8-bit SGD keeps quantised momentum; dbspec's SGD keeps it in 32 bits "
            "(the same Nesterov update up to quantisation)",
        )
    return KohyaName(
        kind=None,
        why=f"dbspec has no {name} optimizer (it has AdamW, AdamW8bit, PagedAdamW, PagedAdamW8bit, Lion, "
        "Lion8bit, PagedLion8bit, RAdam, SGD, SGDNesterov, Adafactor, Prodigy, the DAdapt* and *ScheduleFree "
        "optimizers, and bitsandbytes.optim.AdEMAMix* and the other class paths of docs/converting.md)",
    )


_SCHEDULEFREE_NAMES = {
    "adamwschedulefree": "adamw_schedulefree",
    "sgdschedulefree": "sgd_schedulefree",
    "radamschedulefree": "radam_schedulefree",
}
# kohya's optimizer_type as a class path (importlib + getattr: case-sensitive) -> (dbspec kind, the
# _KOHYA_ACCEPTS key of its constructor)
DOTTED_OPTIMIZERS = {
    "torch.optim.AdamW": ("adamw", "adamw"),
    "torch.optim.SGD": ("sgd", "sgd"),
    "torch.optim.RAdam": ("radam", "radam"),
    "bitsandbytes.optim.AdamW8bit": ("adamw8bit", "adamw8bit"),
    "bitsandbytes.optim.AdEMAMix": ("ademamix", "bnb.ademamix"),
    "bitsandbytes.optim.AdEMAMix32bit": ("ademamix", "bnb.ademamix32bit"),
    "bitsandbytes.optim.AdEMAMix8bit": ("ademamix8bit", "bnb.ademamix8bit"),
    "bitsandbytes.optim.PagedAdEMAMix": ("paged_ademamix", "bnb.pagedademamix"),
    "bitsandbytes.optim.PagedAdEMAMix32bit": ("paged_ademamix", "bnb.pagedademamix8bit"),
    "bitsandbytes.optim.PagedAdEMAMix8bit": ("paged_ademamix8bit", "bnb.pagedademamix8bit"),
    "transformers.optimization.Adafactor": ("adafactor", "adafactor"),
    "transformers.Adafactor": ("adafactor", "adafactor"),
    "prodigyopt.Prodigy": ("prodigy", "prodigy"),
    "lion_pytorch.Lion": ("lion", "lion"),
    "bitsandbytes.optim.Lion8bit": ("lion8bit", "bnb.lion8bit"),
    "bitsandbytes.optim.PagedLion": ("paged_lion", "bnb.pagedlion"),
    "bitsandbytes.optim.PagedLion32bit": ("paged_lion", "bnb.pagedlion32bit"),
    "bitsandbytes.optim.PagedLion8bit": ("paged_lion8bit", "bnb.pagedlion8bit"),
    "schedulefree.AdamWScheduleFree": ("adamw_schedulefree", "adamwschedulefree"),
    "schedulefree.SGDScheduleFree": ("sgd_schedulefree", "sgdschedulefree"),
    "schedulefree.RAdamScheduleFree": ("radam_schedulefree", "radamschedulefree"),
    "came_pytorch.CAME": ("came", "came"),
    "pytorch_optimizer.CAME": ("pytorch_optimizer_came", "pytorch_optimizer.came"),
    "prodigyplus.ProdigyPlusScheduleFree": ("prodigy_plus_schedulefree", "prodigyplus"),
    "dadaptation.DAdaptAdam": ("dadapt_adam", "dadaptadam"),
    "dadaptation.DAdaptAdaGrad": ("dadapt_adagrad", "dadaptadagrad"),
    "dadaptation.DAdaptAdan": ("dadapt_adan", "dadaptadan"),
    "dadaptation.DAdaptLion": ("dadapt_lion", "dadaptlion"),
    "dadaptation.DAdaptSGD": ("dadapt_sgd", "dadaptsgd"),
    "dadaptation.experimental.DAdaptAdamPreprint": ("dadapt_adam_preprint", "dadaptadampreprint"),
    "dadaptation.experimental.DAdaptAdanIP": ("dadapt_adan_ip", "dadaptadanip"),
}


def _dotted(name: str) -> KohyaName:
    """kohya's `module.Class` optimizer_type: imported as written, built as `cls(params, lr=lr, **args)`."""
    if name in DOTTED_OPTIMIZERS:
        return KohyaName(kind=DOTTED_OPTIMIZERS[name][0], dotted=True)
    near = [path for path in DOTTED_OPTIMIZERS if path.lower() == name.lower()]
    if near:
        return KohyaName(
            kind=None,
            crashes=True,
            why="kohya imports the class path as written and Python names are case-sensitive "
            f"(AttributeError); did you mean {near[0]}?",
        )
    return KohyaName(
        kind=None,
        why=f"dbspec has no optimizer for the class {name} (it maps {', '.join(sorted(DOTTED_OPTIMIZERS))})",
    )


# kohya's get_optimizer: lower-cased optimizer_type -> the dadaptation class (DAdaptation is AdamPreprint)
_DADAPT_NAMES = {
    "dadaptation": "dadapt_adam_preprint",
    "dadaptadampreprint": "dadapt_adam_preprint",
    "dadaptadagrad": "dadapt_adagrad",
    "dadaptadam": "dadapt_adam",
    "dadaptadan": "dadapt_adan",
    "dadaptadanip": "dadapt_adan_ip",
    "dadaptlion": "dadapt_lion",
    "dadaptsgd": "dadapt_sgd",
}


def parse_kohya_args(items: list[str]) -> tuple[dict[str, Any], list[str]]:
    """kohya's `optimizer_args`: "key=value" with value = ast.literal_eval(value)
    ("betas=0.9,0.99" -> tuple)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for item in items:
        key, eq, text = str(item).partition("=")
        if not eq:
            problems.append(f"`{item}` is not key=value")
            continue
        try:
            values[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            problems.append(f"`{item}`: the value is not a Python literal (kohya uses ast.literal_eval)")
    return values, problems


# Keyword arguments of the constructors kohya's get_optimizer calls as `cls(params, lr=lr, **optimizer_args)`,
# by kohya's lower-cased optimizer_type; anything else (and a second `lr`) is a TypeError
# before the first step.
_ADAMW = (
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
)
# prodigyplus.ProdigyPlusScheduleFree 2.0.1's constructor keywords beyond params and lr
PRODIGY_PLUS_CONSTRUCTOR = (
    "betas",
    "beta3",
    "weight_decay",
    "weight_decay_by_lr",
    "d0",
    "d_coef",
    "d_limiter",
    "prodigy_steps",
    "schedulefree_c",
    "eps",
    "split_groups",
    "split_groups_mean",
    "factored",
    "factored_fp32",
    "use_bias_correction",
    "use_stableadamw",
    "use_schedulefree",
    "use_speed",
    "stochastic_rounding",
    "fused_back_pass",
    "use_cautious",
    "use_grams",
    "use_adopt",
    "use_orthograd",
    "use_focus",
)
_BNB = ("optim_bits", "args", "min_8bit_size", "is_paged")  # bitsandbytes 0.50's AdamW8bit
_SGD = ("momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable", "fused")
_KOHYA_ACCEPTS = {
    "": _ADAMW,  # torch.optim.AdamW
    "adamw": _ADAMW,
    "adamw8bit": ("betas", "eps", "weight_decay", "amsgrad", *_BNB),  # bitsandbytes.optim.AdamW8bit
    # bitsandbytes.optim.PagedAdamW, PagedAdamW32bit, PagedAdamW8bit (0.39 to 0.50)
    "pagedadamw": ("betas", "eps", "weight_decay", "amsgrad", "optim_bits", "args", "min_8bit_size"),
    "pagedadamw32bit": ("betas", "eps", "weight_decay", "amsgrad", "optim_bits", "args", "min_8bit_size"),
    "pagedadamw8bit": ("betas", "eps", "weight_decay", "amsgrad", "optim_bits", "args", "min_8bit_size"),
    "lion": ("betas", "weight_decay", "use_triton", "decoupled_weight_decay"),  # lion_pytorch.Lion
    "sgd": _SGD,  # torch.optim.SGD
    # torch.optim.RAdam (torch 2.13)
    "radam": (
        "betas",
        "eps",
        "weight_decay",
        "decoupled_weight_decay",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
    ),
    # kohya passes nesterov=True itself, so a second one is a TypeError
    "sgdnesterov": tuple(k for k in _SGD if k != "nesterov"),
    # bitsandbytes.optim.SGD8bit (0.50; kohya passes nesterov=True itself)
    "sgdnesterov8bit": ("momentum", "dampening", "weight_decay", "args", "min_8bit_size"),
    "adafactor": (  # transformers.optimization.Adafactor
        "eps",
        "clip_threshold",
        "decay_rate",
        "beta1",
        "weight_decay",
        "scale_parameter",
        "relative_step",
        "warmup_init",
    ),
    "prodigy": (  # prodigyopt.Prodigy
        "betas",
        "beta3",
        "eps",
        "weight_decay",
        "decouple",
        "use_bias_correction",
        "safeguard_warmup",
        "d0",
        "d_coef",
        "growth_rate",
        "fsdp_in_use",
        "slice_p",
    ),
}


_ADEMAMIX = ("betas", "alpha", "t_alpha", "t_beta3", "eps", "weight_decay", "min_8bit_size")
_SCHEDULEFREE = ("weight_decay", "r", "weight_lr_power", "foreach")
_KOHYA_ACCEPTS.update(
    {  # bitsandbytes' AdEMAMix classes (by class path) and schedulefree's
        "bnb.ademamix": (*_ADEMAMIX, "optim_bits", "is_paged"),
        "bnb.ademamix32bit": (*_ADEMAMIX, "is_paged"),
        "bnb.ademamix8bit": (*_ADEMAMIX, "is_paged"),
        "bnb.pagedademamix": (*_ADEMAMIX, "optim_bits"),
        "bnb.pagedademamix8bit": _ADEMAMIX,
        "adamwschedulefree": (*_SCHEDULEFREE, "betas", "eps", "warmup_steps"),
        "sgdschedulefree": (*_SCHEDULEFREE, "momentum", "warmup_steps"),
        "radamschedulefree": (*_SCHEDULEFREE, "betas", "eps", "silent_sgd_phase"),
        "came": ("eps", "clip_threshold", "betas", "weight_decay"),  # came_pytorch.CAME
        "prodigyplus": PRODIGY_PLUS_CONSTRUCTOR,
    }
)
# bitsandbytes' Lion classes (0.50): kohya's Lion8bit and PagedLion8bit names, and their class paths
_BNB_LION = ("betas", "weight_decay", "args", "min_8bit_size")
_KOHYA_ACCEPTS.update(
    {
        "lion8bit": (*_BNB_LION, "is_paged"),
        "pagedlion8bit": _BNB_LION,
        "bnb.lion8bit": (*_BNB_LION, "is_paged"),
        "bnb.pagedlion": (*_BNB_LION, "optim_bits"),
        "bnb.pagedlion32bit": _BNB_LION,
        "bnb.pagedlion8bit": _BNB_LION,
    }
)
_DADAPT_ADAM = ("betas", "eps", "weight_decay", "log_every", "decouple", "d0", "growth_rate", "fsdp_in_use")
_DADAPT_ADAN = ("betas", "eps", "weight_decay", "no_prox", "log_every", "d0", "growth_rate")
_KOHYA_ACCEPTS.update(
    {  # dadaptation's constructors
        "dadaptation": _DADAPT_ADAM,
        "dadaptadampreprint": _DADAPT_ADAM,
        "dadaptadam": (*_DADAPT_ADAM, "use_bias_correction"),
        "dadaptadagrad": ("momentum", "log_every", "weight_decay", "eps", "d0", "growth_rate"),
        "dadaptadan": _DADAPT_ADAN,
        "dadaptadanip": _DADAPT_ADAN,
        "dadaptlion": ("betas", "weight_decay", "log_every", "d0", "fsdp_in_use"),
        "dadaptsgd": ("momentum", "weight_decay", "log_every", "d0", "growth_rate", "fsdp_in_use"),
    }
)


def kohya_constructor_problems(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Optimizer arguments kohya would crash on: keywords the constructor does not take, and betas that are
    not a pair of numbers. Only for the optimizers whose constructor is known."""
    lower = DOTTED_OPTIMIZERS[name][1] if name in DOTTED_OPTIMIZERS else name.lower()
    accepted = (
        _KOHYA_ACCEPTS[lower]
        if lower in _KOHYA_ACCEPTS and (lower != "sgd" or name in ("SGD", "torch.optim.SGD"))
        else None
    )
    problems = []
    if accepted is not None:
        cls = name or "AdamW"
        for key in kwargs:
            if key == "lr":
                problems.append(
                    f"`lr`: kohya passes lr=learning_rate itself, so {cls} gets it twice (TypeError)"
                )
            elif key not in accepted:
                problems.append(f"`{key}`: {cls}'s constructor has no such argument (TypeError)")
    betas = kwargs["betas"] if "betas" in kwargs else None
    three = ("dadaptadan", "dadaptadanip", "came", "pytorch_optimizer.came")
    count = 3 if lower in three or "ademamix" in lower else 2
    if lower == "adafactor" and "eps" in kwargs and not _number_pair(kwargs["eps"]):
        problems.append(
            f"`eps={kwargs['eps']!r}`: transformers' Adafactor takes a pair such as eps=(1e-30,1e-3) and "
            "indexes it (TypeError)"
        )
    if lower == "came":
        problems += _came_problems(kwargs)
    if lower == "prodigyplus":
        problems += _prodigy_plus_problems(kwargs)
    if lower == "pytorch_optimizer.came":
        problems += _pytorch_optimizer_came_problems(kwargs)
    problems += _bnb_adamw_problems(lower, kwargs)
    problems += _differentiable_problem(lower, name or "AdamW", kwargs)
    problems += _kernel_problem(lower, name or "AdamW", kwargs)
    if lower == "prodigy":
        problems += _prodigy_problems(kwargs)
    if betas is not None and not (
        isinstance(betas, (tuple, list))
        and len(betas) == count
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
    ):
        three = "0.98,0.92,0.99" if lower in ("dadaptadan", "dadaptadanip") else "0.9,0.999,0.9999"
        expected = (
            f"three numbers such as betas={three}"
            if count == 3
            else "a pair of numbers such as betas=0.9,0.999"
        )
        problems.append(f"`betas={betas!r}`: expected {expected}")
    return problems


def _differentiable_problem(lower: str, cls: str, kwargs: dict[str, Any]) -> list[str]:
    """torch's RAdam, AdamW and SGD with `differentiable` true run step() with autograd on, and their
    in-place update of a trained parameter (a leaf that requires grad) raises RuntimeError at the first step
    (torch 2.13; tests/unit/test_optimizer_same_update.py runs it): kohya's run stops."""
    torch_classes = ("", "adamw", "radam", "sgd", "sgdnesterov")
    if lower not in torch_classes or "differentiable" not in kwargs or not kwargs["differentiable"]:
        return []
    return [
        f"`differentiable={kwargs['differentiable']!r}`: torch's {cls} then steps with autograd on and its "
        "in-place update of a trained parameter raises RuntimeError (a leaf Variable that requires grad is "
        "being used in an in-place operation) at the first step"
    ]


def _kernel_problem(lower: str, cls: str, kwargs: dict[str, Any]) -> list[str]:
    """torch's AdamW and SGD raise RuntimeError when `fused` and `foreach` are both true."""
    both = all(key in kwargs and kwargs[key] for key in ("fused", "foreach"))
    if lower not in ("", "adamw", "sgd", "sgdnesterov") or not both:
        return []
    return [f"`fused` and `foreach` both true: torch's {cls} raises RuntimeError (one kernel or the other)"]


def _prodigy_problems(kwargs: dict[str, Any]) -> list[str]:
    """prodigyopt's Prodigy raises ValueError on d0 or eps not above 0 when built, and slices each tensor
    with `[::slice_p]`, which takes a whole number of at least 1 (TypeError, ValueError at the first step)."""
    problems = []
    for key in ("d0", "eps"):
        value = kwargs[key] if key in kwargs else 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(f"`{key}={value!r}`: prodigyopt's Prodigy raises ValueError unless it is above 0")
    slice_p = kwargs["slice_p"] if "slice_p" in kwargs else 1
    if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
        problems.append(
            f"`slice_p={slice_p!r}`: prodigyopt slices each tensor with [::slice_p], which takes a whole "
            "number of at least 1 (it fails at the first step)"
        )
    return problems


def _bnb_adamw_problems(lower: str, kwargs: dict[str, Any]) -> list[str]:
    """bitsandbytes 0.50's AdamW8bit and PagedAdamW8bit raise ValueError on amsgrad=True and on an optim_bits
    other than 32 (their state is 8 bits whatever it says); PagedAdamW passes optim_bits on, and its state
    (Optimizer2State.init_state) raises NotImplementedError at the first step for anything but 8 or 32."""
    problems = []
    if lower in ("adamw8bit", "pagedadamw8bit"):
        cls = {"adamw8bit": "AdamW8bit", "pagedadamw8bit": "PagedAdamW8bit"}[lower]
        if "amsgrad" in kwargs and kwargs["amsgrad"]:
            problems.append(
                f"`amsgrad={kwargs['amsgrad']!r}`: bitsandbytes' {cls} does not support it (ValueError)"
            )
        if "optim_bits" in kwargs and kwargs["optim_bits"] != 32:
            problems.append(
                f"`optim_bits={kwargs['optim_bits']!r}`: bitsandbytes' {cls} only takes optim_bits=32, its "
                "default (ValueError); its state is 8-bit either way"
            )
    if lower == "pagedadamw" and "optim_bits" in kwargs and kwargs["optim_bits"] not in (8, 32):
        problems.append(
            f"`optim_bits={kwargs['optim_bits']!r}`: bitsandbytes keeps 8- or 32-bit state and raises "
            "NotImplementedError at the first step"
        )
    return problems


def _came_problems(kwargs: dict[str, Any]) -> list[str]:
    """came_pytorch's CAME asserts every beta is in [0, 1] and indexes eps[0] and eps[1] at its first step."""
    problems = []
    if "eps" in kwargs and not _number_pair(kwargs["eps"]):
        problems.append(
            f"`eps={kwargs['eps']!r}`: came_pytorch's CAME takes a pair such as eps=(1e-30,1e-16) and "
            "indexes it (TypeError)"
        )
    betas = kwargs.get("betas")
    if (
        isinstance(betas, (tuple, list))
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
        and not all(0 <= b <= 1 for b in betas)
    ):
        problems.append(f"`betas={betas!r}`: CAME asserts every beta is in [0, 1] (AssertionError)")
    return problems


def _prodigy_plus_problems(kwargs: dict[str, Any]) -> list[str]:
    """ProdigyPlusScheduleFree raises ValueError for d0 not above 0, a negative weight_decay, an eps not above
    0 (None is its Adam-atan2), betas or beta3 outside [0, 1)."""
    problems = []
    checks = {
        "d0": lambda v: v > 0,
        "weight_decay": lambda v: v >= 0,
        "eps": lambda v: v > 0,
        "beta3": lambda v: 0 <= v < 1,
    }
    for key, fine in checks.items():
        if key not in kwargs or kwargs[key] is None and key in ("eps", "beta3"):
            continue
        value = kwargs[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not fine(value):
            problems.append(f"`{key}={value!r}`: ProdigyPlusScheduleFree raises ValueError for it")
    betas = kwargs.get("betas")
    if (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
        and not all(0 <= b < 1 for b in betas)
    ):
        problems.append(
            f"`betas={betas!r}`: ProdigyPlusScheduleFree raises ValueError unless both are in [0, 1)"
        )
    return problems


# pytorch_optimizer 4.1's CAME constructor; it also takes **kwargs and never reads them (unread_arguments)
PYTORCH_OPTIMIZER_CAME_ARGS = (
    "betas",
    "weight_decay",
    "weight_decouple",
    "fixed_decay",
    "clip_threshold",
    "ams_bound",
    "eps1",
    "eps2",
    "maximize",
    "foreach",
)


def _pytorch_optimizer_came_problems(kwargs: dict[str, Any]) -> list[str]:
    """pytorch_optimizer's CAME raises ValueError for beta1 or beta2 outside [0, 1), beta3 outside [0, 1] and
    a negative weight_decay, eps1 or eps2; a second `lr` (kohya passes its own) is a TypeError. Other
    keywords it swallows (**kwargs): unread_arguments."""
    problems = []
    if "lr" in kwargs:
        problems.append(
            "`lr`: kohya passes lr=learning_rate itself, so pytorch_optimizer.CAME gets it twice (TypeError)"
        )
    betas = kwargs.get("betas")
    if (
        isinstance(betas, (tuple, list))
        and len(betas) == 3
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
        and not (0 <= betas[0] < 1 and 0 <= betas[1] < 1 and 0 <= betas[2] <= 1)
    ):
        problems.append(
            f"`betas={betas!r}`: pytorch_optimizer's CAME raises ValueError unless beta1 and beta2 are in "
            "[0, 1) and beta3 in [0, 1]"
        )
    for key in ("weight_decay", "eps1", "eps2"):
        value = kwargs.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"`{key}={value!r}`: pytorch_optimizer's CAME compares it with 0 (TypeError)")
        elif value < 0:
            problems.append(f"`{key}={value!r}`: pytorch_optimizer's CAME raises ValueError (must be >= 0)")
    return problems


def unread_arguments(name: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """Arguments a constructor that takes **kwargs swallows and never reads (pytorch_optimizer's CAME):
    key -> why. kohya passes them, and they change nothing."""
    if DOTTED_OPTIMIZERS.get(name, ("", ""))[1] != "pytorch_optimizer.came":
        return {}
    return {
        key: "pytorch_optimizer's CAME takes **kwargs and never reads this one"
        for key in kwargs
        if key not in PYTORCH_OPTIMIZER_CAME_ARGS and key != "lr"
    }


def _number_pair(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def ademamix_variant(kind: str, kwargs: dict[str, Any]) -> str:
    """bitsandbytes' AdEMAMix classes differ only in is_paged and optim_bits: `AdEMAMix(is_paged=True)` is
    PagedAdEMAMix, `optim_bits=8` is the 8-bit class. The kind those arguments make."""
    if kind not in ADEMAMIX_KINDS:
        return kind
    paged = kind.startswith("paged_") or kwargs.get("is_paged") is True
    eight = kind.endswith("8bit") or kwargs.get("optim_bits") == 8
    return ("paged_" if paged else "") + ("ademamix8bit" if eight else "ademamix")


def lion_variant(kind: str, kwargs: dict[str, Any]) -> str:
    """bitsandbytes' Lion classes differ only in is_paged and optim_bits: `Lion8bit(is_paged=True)` is
    PagedLion8bit, `PagedLion(optim_bits=8)` is PagedLion8bit. The kind those arguments make."""
    if kind not in BNB_LION_KINDS:
        return kind
    paged = kind.startswith("paged_") or kwargs.get("is_paged") is True
    eight = kind.endswith("8bit") or kwargs.get("optim_bits") == 8
    return ("paged_" if paged else "") + ("lion8bit" if eight else "lion")


def adamw_variant(name: str, kind: str, kwargs: dict[str, Any]) -> str:
    """bitsandbytes 0.50's AdamW classes are one Optimizer2State("adam", ...) with their bits and paging:
    `PagedAdamW(optim_bits=8)` and `AdamW8bit(is_paged=True)` build PagedAdamW8bit's exact optimizer (the same
    state, update and paging). PagedAdamW32bit hard-codes 32 bits (see bnb_ignored). The kind kohya's name
    `name` (optimizer_type) and its arguments make."""
    lower = DOTTED_OPTIMIZERS[name][1] if name in DOTTED_OPTIMIZERS else name.lower()
    if lower == "pagedadamw" and "optim_bits" in kwargs and kwargs["optim_bits"] == 8:
        return "paged_adamw8bit"
    if lower == "adamw8bit" and "is_paged" in kwargs and kwargs["is_paged"] is True:
        return "paged_adamw8bit"
    return kind


# bitsandbytes' classes with 32-bit state: min_8bit_size only ever sends a tensor to 32 bits
_BNB_32BIT_KINDS = ("paged_adamw", "paged_lion", "ademamix", "paged_ademamix")


def bnb_ignored(name: str, kind: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """Arguments bitsandbytes 0.50 takes and never reads for kohya's `name` built as `kind` (after the
    variants): key -> why. kohya passes them, and they change nothing."""
    lower = name.lower()
    ignored = {}
    if lower in ("pagedadamw", "pagedadamw32bit") and "amsgrad" in kwargs and kwargs["amsgrad"]:
        ignored["amsgrad"] = f"bitsandbytes' {name} never passes amsgrad on (plain AdamW)"
    if lower == "pagedadamw32bit" and "optim_bits" in kwargs and kwargs["optim_bits"] != 32:
        ignored["optim_bits"] = f"bitsandbytes' {name} hard-codes 32-bit state"
    size = kwargs["min_8bit_size"] if "min_8bit_size" in kwargs else BNB_MIN_8BIT_SIZE
    if kind in _BNB_32BIT_KINDS and size != BNB_MIN_8BIT_SIZE:
        ignored["min_8bit_size"] = "its state is 32-bit, so no tensor has 8-bit state to keep from"
    return ignored


def print_only(kind: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """Arguments that only print (no update reads them): dadaptation's `log_every`. key -> why."""
    if kind.startswith("dadapt_") and "log_every" in kwargs and kwargs["log_every"]:
        return {
            "log_every": "dadaptation only prints its estimate of d every that many steps (dbspec logs d*lr "
            "at logging.every)"
        }
    return {}


@attrs.frozen(kw_only=True)
class Settings:
    values: dict[str, Any]  # dbspec [optimizer] keys to write (weight_decay, betas, eps, momentum, ...)
    unsupported: dict[str, Any]  # legacy keyword arguments dbspec cannot express
    why: dict[str, str] = attrs.Factory(dict)  # for some of `unsupported`: why not
    given: frozenset[str] = frozenset()  # the dbspec keys the legacy arguments gave (the rest are defaults)


def optimizer_settings(kind: str, kwargs: dict[str, Any], nesterov: bool = False) -> Settings:
    """Legacy constructor kwargs over the constructor's defaults, split into dbspec keys and the rest.
    `nesterov`: kohya's SGDNesterov, which sets momentum=0.9 when the arguments give none."""
    own = _OWN_KEYS[kind] if kind in _OWN_KEYS else ()
    renamed = _RENAMED[kind] if kind in _RENAMED else {}
    merged = {
        **_DEFAULTS[kind],
        **{renamed.get(k, k): v for k, v in kwargs.items() if k in _SETTABLE or k in own},
    }
    if nesterov:
        merged["nesterov"] = True
        if "momentum" not in kwargs:
            merged["momentum"] = 0.9
    if "betas" in merged:
        merged["betas"] = [float(b) for b in merged["betas"]]
    if kind not in ("sgd", "dadapt_sgd", "dadapt_adagrad", "sgd_schedulefree"):
        merged.pop("momentum", None)
    harmless = _HARMLESS[kind] if kind in _HARMLESS else {}
    same = _SAME_UPDATE[kind] if kind in _SAME_UPDATE else ()
    rest = {
        k: v
        for k, v in kwargs.items()
        if k not in _SETTABLE and k not in own and not (k in harmless and harmless[k] == v) and k not in same
    }
    # the kind says them (ademamix_/lion_/adamw_variant); kohya_constructor_problems refused the others
    if kind in (*ADEMAMIX_KINDS, *BNB_LION_KINDS, "adamw8bit", "paged_adamw", "paged_adamw8bit"):
        rest = {k: v for k, v in rest.items() if not (k == "is_paged" and isinstance(v, bool))}
        rest = {k: v for k, v in rest.items() if not (k == "optim_bits" and v in (8, 32))}
    if "decoupled_weight_decay" in merged:  # torch tests it for truth
        merged["decoupled_weight_decay"] = bool(merged["decoupled_weight_decay"])
    if "min_8bit_size" in merged:
        size = _min_8bit_size(merged.pop("min_8bit_size"))
        if size is None:
            rest["min_8bit_size"] = kwargs["min_8bit_size"]
        else:
            merged["min_8bit_size"] = size
    for key in ("d0", "growth_rate"):  # TOML floats stay floats (d0=1 is an int literal)
        if key in merged:
            merged[key] = float(merged[key])
    if "growth_rate" in merged and merged["growth_rate"] == float("inf"):
        merged["growth_rate"] = 0.0  # dbspec's "unbounded"
    if kind == "adafactor":
        merged.update(adafactor_flags(kwargs))
    if kind in _KERNEL_KINDS:
        rest = {k: v for k, v in rest.items() if k not in ("fused", "foreach")}
        merged.update(_kernel(kwargs))
    if kind in ("prodigy", "prodigy_plus_schedulefree"):
        _prodigy_values(merged, rest)
    if kind == "prodigy_plus_schedulefree" and "eps" in merged and merged["eps"] is None:
        rest["eps"] = merged.pop("eps")  # its Adam-atan2 update
    if kind == "pytorch_optimizer_came":
        _pytorch_optimizer_eps(kwargs, merged, rest)
    for key in ("adafactor_eps", "came_eps"):  # TOML floats stay floats
        if key in merged:
            merged[key] = [float(e) for e in merged[key]]
    for key in ("beta1", "clip_threshold", "decay_rate", "alpha", "schedulefree_r", "weight_lr_power"):
        if key in merged:
            merged[key] = float(merged[key] or 0.0)  # Adafactor's beta1 None: dbspec's 0 (no first moment)
    for key in ("t_alpha", "t_beta3"):  # bitsandbytes' None: dbspec's 0 (no warm-up)
        if key in merged:
            merged[key] = int(merged[key] or 0)
    given = frozenset(renamed.get(k, k) for k in kwargs) | {"implementation"}
    if kind == "pytorch_optimizer_came" and ("eps1" in kwargs or "eps2" in kwargs):
        given |= {"came_eps"}
    why = {k: _REFUSED_WHY[(kind, k)] for k in rest if (kind, k) in _REFUSED_WHY}
    return Settings(values=merged, unsupported=rest, given=given, why=why)


def _pytorch_optimizer_eps(kwargs: dict[str, Any], merged: dict[str, Any], rest: dict[str, Any]) -> None:
    """pytorch_optimizer's CAME eps1 and eps2 (the regularisers of the squared gradient and of the
    instability) are dbspec's came_eps pair; 0, which it allows, stays unsupported (came_eps is positive)."""
    pair = [kwargs.get("eps1", CAME_EPS[0]), kwargs.get("eps2", CAME_EPS[1])]
    for key in ("eps1", "eps2"):
        rest.pop(key, None)
    if pair == CAME_EPS:
        return
    zero = [key for key, value in zip(("eps1", "eps2"), pair) if key in kwargs and not value > 0]
    if zero:
        rest.update({key: kwargs[key] for key in zero})
        return
    merged["came_eps"] = [float(e) for e in pair]


def _kernel(kwargs: dict[str, Any]) -> dict[str, str]:
    """torch AdamW's / SGD's `fused=True` or `foreach=True` as optimizer.implementation (the same kernel);
    False or None is torch's default choice, which computes the same update (kohya_constructor_problems
    refuses both true)."""
    for key in ("fused", "foreach"):
        if key in kwargs and kwargs[key]:
            return {"implementation": key}
    return {}


def _prodigy_values(merged: dict[str, Any], rest: dict[str, Any]) -> None:
    """prodigyopt's values as dbspec's: beta3 None is dbspec's derived default (the square root of betas[1]);
    a d_coef or beta3 dbspec's schema refuses (d_coef <= 0: d never grows; beta3 < 0) stays unsupported."""
    if "beta3" in merged and merged["beta3"] is None:
        del merged["beta3"]
    for key in ("d_coef", "beta3"):
        if key in merged:
            merged[key] = float(merged[key])
    if "d_coef" in merged and merged["d_coef"] <= 0:
        rest["d_coef"] = merged.pop("d_coef")
    if "beta3" in merged and merged["beta3"] < 0:
        rest["beta3"] = merged.pop("beta3")
    for key in ("decouple", "use_bias_correction", "safeguard_warmup"):  # prodigyopt tests them for truth
        if key in merged:
            merged[key] = bool(merged[key])


def lion_decoupled_decay(kwargs: dict[str, Any], learning_rate: float) -> dict[str, Any] | None:
    """lion_pytorch's Lion(decoupled_weight_decay=True) divides each group's weight_decay by the lr given to
    its constructor (kohya's learning_rate) at every step: the same Python division done once, as the
    plain weight_decay dbspec's Lion (not decoupled) applies. The arguments with that weight_decay and without
    the flag; None when the flag is off or there is no positive rate to divide by."""
    if "decoupled_weight_decay" not in kwargs or not kwargs["decoupled_weight_decay"] or learning_rate <= 0:
        return None
    rest = {k: v for k, v in kwargs.items() if k != "decoupled_weight_decay"}
    decay = kwargs["weight_decay"] if "weight_decay" in kwargs else _DEFAULTS["lion"]["weight_decay"]
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        return None
    return {**rest, "weight_decay": decay / learning_rate}


def _min_8bit_size(value: Any) -> int | None:
    """bitsandbytes keeps 32-bit state where `p.numel() < min_8bit_size`: for a whole number of elements
    that is numel < ceil(value), and a value below 0 sends no tensor there, as 0 does. None: not a finite
    number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return max(0, math.ceil(value))


def adafactor_flags(kwargs: dict[str, Any]) -> dict[str, bool]:
    """kohya's Adafactor: relative_step defaults to True (kohya sets it), warmup_init forces it on, and
    scale_parameter is transformers' default True unless given."""
    relative = bool(kwargs["relative_step"]) if "relative_step" in kwargs else True
    warmup_init = bool(kwargs["warmup_init"]) if "warmup_init" in kwargs else False
    scale = bool(kwargs["scale_parameter"]) if "scale_parameter" in kwargs else True
    return {"relative_step": relative or warmup_init, "scale_parameter": scale, "warmup_init": warmup_init}
