"""Diagnostic rules (DBS2xx, and the target checks): one small function each, registered with its phase.

A rule reads the structured Spec, asks `given(path)` whether the user wrote a key, and yields `Hit`s. Its
phase, declared with `@rule(...)` above it, says what else it needs and so when it runs, once:

- "spec": the Spec alone: `rule(spec, given)`; run by `dbspec check` (and so before every plan).
- "paths": the spec file's location: `rule(spec, spec_file)`; run by `dbspec check`. They compare folders,
  resolved as the compiler does.
- "plan": compiled facts (the run's step count): `rule(spec, given, total_steps)`. Run by `dbspec check` when
  the spec gives `schedule.steps` (the count is known), else by the compiler once it has counted the steps.
- "environment": the target: `rule(spec, env)`; run by the compiler.

Adding a rule is adding one function with its phase (and a case in tests/unit/test_rules.py).
"""

from __future__ import annotations

import difflib
import re

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from dbspec import codes
from dbspec.families import FAMILIES, family_spec
from dbspec.compiler.adapters import (
    BLOCK_SWITCHES,
    BYPASS_KINDS,
    bypass_blocks,
    lycoris_dora,
    rank_dropout_blocks,
    tlora_own_bypass,
)
from dbspec.compiler.init_file import has_norms
from dbspec.compiler.mixed_init_file import run_kinds
from dbspec.compiler.optimizers import MOMENTUM_KINDS, THREE_BETAS_KINDS, unused_args
from dbspec.compiler.precision import any_text_encoder_trains, text_encoder_trains
from dbspec.compiler.schedule import TORCH_SCHEDULES, WARMUP_SCHEDULES
from dbspec.compiler.zero_group import ORDER_DEPENDENT, schedule_lifts_zero, zero_group_moves
from dbspec.diagnostics import Diagnostic
from dbspec.plan.model import BNB_OPTIMIZER_KINDS, BYPASS_DROPOUT_KINDS, denoiser_held, own_bypass_fits
from dbspec.spec.check import anchor
from dbspec.spec.load import RawSpec
from dbspec.spec.model import (
    BNB_LION_KINDS,
    CAME_KINDS,
    DADAPT_KINDS,
    Dataset,
    SCHEDULEFREE_KINDS,
    DyloraAdapter,
    LoraAdapter,
    LowRankAdapter,
    Optimizer,
    Pivotal,
    Spec,
)
from dbspec.spec.paths import KeyPath, dotted

if TYPE_CHECKING:
    from dbspec.plan.model import TargetEnv

Given = Callable[[KeyPath], bool]
Phase = Literal["spec", "paths", "plan", "environment"]
PHASES: tuple[Phase, ...] = ("spec", "paths", "plan", "environment")
_BY_PHASE: dict[str, list[Callable[..., Iterator["Hit"]]]] = {phase: [] for phase in PHASES}
PHASE_OF: dict[str, Phase] = {}  # rule function name -> its phase


def rule(phase: Phase):
    """Register the decorated function as a rule of `phase` (rules of a phase run in the order declared)."""
    if phase not in _BY_PHASE:
        raise ValueError(f"unknown rule phase {phase!r}; one of {PHASES}")

    def register(fn):
        _BY_PHASE[phase].append(fn)
        PHASE_OF[fn.__name__] = phase
        return fn

    return register


def rules_of(*phases: Phase) -> tuple[Callable[..., Iterator["Hit"]], ...]:
    return tuple(fn for phase in phases for fn in _BY_PHASE[phase])


@attrs.frozen(kw_only=True)
class Hit:
    code: str
    severity: str
    path: KeyPath
    message: str
    help: str = ""


def _err(code, path, message, help=""):
    return Hit(code=code, severity="error", path=path, message=message, help=help)


def _warn(code, path, message, help=""):
    return Hit(code=code, severity="warning", path=path, message=message, help=help)


def _class_indices(spec: Spec) -> list[int]:
    return [i for i, d in enumerate(spec.datasets) if d.role == "class"]


@rule("spec")
def prior_without_class_data(spec: Spec, given: Given) -> Iterator[Hit]:
    if _class_indices(spec):
        return
    for key in ("prior_weight", "prior"):
        if given(("loss", key)):
            yield _warn(
                "DBS201",
                ("loss", key),
                f'loss.{key} is set but no dataset has role = "class"',
                "the prior-preservation term needs a class dataset; add one or remove this key",
            )


@rule("plan")
def text_encoder_stop_beyond_run(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    stop = spec.train.text_encoder_stop_step
    if stop and stop >= total_steps:
        yield _err(
            "DBS202",
            ("train", "text_encoder_stop_step"),
            f"train.text_encoder_stop_step ({stop}) is not below the run's {total_steps} steps",
            "use 0 to train the text encoder for the whole run, or a smaller step",
        )


@rule("spec")
def text_encoder_options_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    if any_text_encoder_trains(spec):  # the first text encoder, or SDXL's second alone
        return
    for path in (
        ("train", "text_encoder_stop_step"),
        ("optimizer", "text_encoder_lr"),
        ("optimizer", "text_encoder_2_lr"),
        ("train", "text_encoder_2"),
    ):
        if given(path):
            yield _warn(
                "DBS206",
                path,
                f"{'.'.join(path)} has no effect: train.text_encoder is false",
                "set train.text_encoder = true, or remove this key",
            )


@rule("spec")
def text_encoder_idle_needs_adapter(spec: Spec, given: Given) -> Iterator[Hit]:
    """train.text_encoder_idle = "kohya" puts the adapter on untrained CLIP encoders: a full fine-tune has
    none (DBS597)."""
    if spec.train.text_encoder_idle == "kohya" and spec.adapter.kind == "none":
        yield _err(
            "DBS597",
            ("train", "text_encoder_idle"),
            'train.text_encoder_idle = "kohya" puts the adapter on the text encoders that do not train, but '
            'adapter.kind is "none" (a full fine-tune has no adapter)',
            codes.help("DBS597"),
        )


def t5_adapter_fits(adapter) -> bool:
    """Whether train.t5 can put `adapter` (the spec's) on T5-XXL's Linears: kohya lora_flux's LoRA, and every
    LyCORIS kind lycoris.kohya builds there (LoKr, LoHa, full, GLoRA, DyLoRA, Diag-OFT, BOFT, IA^3); kohya's
    networks.oft and networks.dylora (form / dylora_form "kohya") have no T5 layer, a full fine-tune no
    adapter."""
    kohya = getattr(adapter, "form", "lycoris") == "kohya" or getattr(adapter, "dylora_form", "") == "kohya"
    return adapter.kind != "none" and not kohya


def _t5_kind(adapter) -> str:
    """The adapter's kind as DBS568 / DBS600 quote it (kohya's Diag-OFT / DyLoRA form named)."""
    form = {"diag-oft": ' (form "kohya": kohya\'s networks.oft)'}
    form["dylora"] = ' (dylora_form "kohya": kohya\'s networks.dylora)'
    return f'"{adapter.kind}"{form.get(adapter.kind, "")}'


@rule("spec")
def t5_needs_lora(spec: Spec, given: Given) -> Iterator[Hit]:
    """DBS568; kohya's networks.oft with train.t5 is DBS574's (kohya's OFT adapts the U-Net alone)."""
    if spec.train.t5 and not t5_adapter_fits(spec.adapter) and spec.adapter.kind != "diag-oft":
        yield _err(
            "DBS568",
            ("train", "t5"),
            "train.t5 trains an adapter on T5-XXL (kohya's LoRA or a LyCORIS kind), but adapter.kind is "
            f"{_t5_kind(spec.adapter)}",
            codes.help("DBS568"),
        )


@rule("spec")
def t5_idle_needs_t5_layers(spec: Spec, given: Given) -> Iterator[Hit]:
    """train.t5_idle = "kohya" puts train.t5's adapter on a T5-XXL that does not train: train.t5 trains it,
    and an adapter kind without T5 layers has none to put there (DBS600; the family: precision.py)."""
    if spec.train.t5_idle != "kohya":
        return
    if spec.train.t5:
        yield _err(
            "DBS600",
            ("train", "t5_idle"),
            'train.t5_idle = "kohya" holds T5-XXL\'s adapter untrained, but train.t5 = true trains it',
            "remove train.t5_idle (T5-XXL trains), or set train.t5 = false",
        )
    elif not t5_adapter_fits(spec.adapter):
        yield _err(
            "DBS600",
            ("train", "t5_idle"),
            "train.t5_idle = \"kohya\" puts T5-XXL's adapter layers on it (kohya's LoRA or a LyCORIS kind), "
            f"but adapter.kind is {_t5_kind(spec.adapter)}",
            'remove train.t5_idle, or set adapter.kind to "lora" or a LyCORIS kind (form / dylora_form '
            '"lycoris")',
        )


@rule("spec")
def third_text_encoder_lr_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    if not spec.train.t5 and given(("optimizer", "text_encoder_3_lr")):
        yield _warn(
            "DBS572",
            ("optimizer", "text_encoder_3_lr"),
            "optimizer.text_encoder_3_lr has no effect: train.t5 is false (SD3's T5-XXL is frozen)",
            "set train.t5 = true, or remove this key",
        )


@rule("spec")
def second_text_encoder_lr_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    if (
        spec.train.text_encoder
        and not spec.train.text_encoder_2
        and given(("optimizer", "text_encoder_2_lr"))
    ):
        yield _warn(
            "DBS264",
            ("optimizer", "text_encoder_2_lr"),
            "optimizer.text_encoder_2_lr has no effect: train.text_encoder_2 is false "
            "(the second text encoder is frozen)",
            "set train.text_encoder_2 = true, or remove this key",
        )


@rule("plan")
def interval_beyond_run(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    for table in ("checkpoints", "validation"):
        every = getattr(spec, table).every
        if every > total_steps:
            yield _warn(
                "DBS204",
                (table, "every"),
                f"{table}.every ({every}) is larger than the run ({total_steps} steps)",
                "only the end of the run will be saved/validated; lower it or use 0",
            )


@rule("spec")
def validation_without_prompts(spec: Spec, given: Given) -> Iterator[Hit]:
    v = spec.validation
    # The evaluation loss (evaluation.holdout) runs at the validation steps without any image to sample; an
    # img2img model (the SDXL refiner) validates by refining dataset images (validation.refine_images: the
    # plan checks the family).
    refines = given(("validation", "refine_images")) and v.refine_images > 0
    if (
        not v.prompts
        and not refines
        and not _evaluation_images(spec)
        and (v.every or given(("validation", "every")))
    ):
        yield _err(
            "DBS205",
            ("validation", "every"),
            "validation.every is set but validation.prompts is empty",
            'add prompts = ["a photo of ..."] to [validation]',
        )


@rule("spec")
def steps_or_epochs(spec: Spec, given: Given) -> Iterator[Hit]:
    s = spec.schedule
    if s.steps and s.epochs:
        yield _err(
            "DBS207",
            ("schedule", "epochs"),
            "set schedule.steps or schedule.epochs, not both",
            "remove one of them",
        )
    elif not s.steps and not s.epochs:
        yield _err(
            "DBS207",
            ("schedule",),
            "the run length is not set",
            "add steps = 800 (or epochs = 10) to [schedule]",
        )


@rule("spec")
def prompt_required(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        if d.prompt:
            continue
        if d.captions == "prompt" and d.layout != "kohya_folders" and not d.metadata:  # names/file give them
            yield _err(
                "DBS208",
                ("datasets", i),
                f'dataset `{d.name}` uses captions = "prompt" but has no prompt',
                'add prompt = "a photo of ...", or choose captions = "textfile" or "filename"',
            )
        elif d.generate:
            yield _err(
                "DBS208",
                ("datasets", i, "generate"),
                f"dataset `{d.name}` generates class images but has no prompt",
                'add prompt = "a photo of a dog" (the class prompt)',
            )


@rule("spec")
def kohya_folders_options(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        if d.layout != "kohya_folders":
            continue
        for key, on in (("generate", d.generate > 0), ("recursive", d.recursive)):
            if on:
                yield _err(
                    "DBS227",
                    ("datasets", i, key),
                    f'dataset `{d.name}` has layout = "kohya_folders", which reads kohya\'s `N_class tokens` '
                    f"sub-folders one level deep: `{key}` does not apply",
                    'remove it, or use layout = "folder"',
                )


@rule("spec")
def metadata_options(spec: Spec, given: Given) -> Iterator[Hit]:
    """A `metadata` dataset lists its images and captions in the file: the folder options do not apply."""
    for i, d in enumerate(spec.datasets):
        if not d.metadata:
            continue
        keys = ("layout", "captions", "caption_extension", "recursive", "generate")
        for key in keys:
            if given(("datasets", i, key)) and getattr(d, key) != attrs.fields_dict(Dataset)[key].default:
                yield _err(
                    "DBS227",
                    ("datasets", i, key),
                    f"dataset `{d.name}` reads its images and captions from the metadata file "
                    f"`{d.metadata}` (kohya's fine-tuning dataset): `{key}` does not apply",
                    "remove it, or remove `metadata` to read the folder",
                )


@rule("spec")
def unique_dataset_names(spec: Spec, given: Given) -> Iterator[Hit]:
    counts = Counter(d.name for d in spec.datasets)
    seen: set[str] = set()
    for i, d in enumerate(spec.datasets):
        if counts[d.name] > 1 and d.name in seen:
            yield _err(
                "DBS209",
                ("datasets", i, "name"),
                f"dataset name `{d.name}` is used more than once",
                "give every [[datasets]] a unique name",
            )
        seen.add(d.name)


@rule("spec")
def needs_instance_dataset(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.datasets and not any(d.role == "instance" for d in spec.datasets):
        yield _err(
            "DBS210",
            ("datasets",),
            'no dataset has role = "instance"',
            'DreamBooth needs images of the subject: add a [[datasets]] with role = "instance"',
        )


@rule("spec")
def warmup_with_constant(spec: Spec, given: Given) -> Iterator[Hit]:
    s = spec.schedule
    if s.warmup_steps and s.lr_schedule == "constant":
        yield _warn(
            "DBS211",
            ("schedule", "warmup_steps"),
            'warmup_steps has no effect with lr_schedule = "constant"',
            'use lr_schedule = "constant_with_warmup"',
        )


SIMPLETUNER_WAVES = ("simpletuner_cosine", "simpletuner_sine")


@rule("spec")
def warmup_with_simpletuner_cosine(spec: Spec, given: Given) -> Iterator[Hit]:
    s = spec.schedule
    if s.warmup_steps and s.lr_schedule in SIMPLETUNER_WAVES:
        yield _warn(
            "DBS290",
            ("schedule", "warmup_steps"),
            f"warmup_steps has no effect with lr_schedule = {s.lr_schedule!r} (it has no warm-up)",
            "remove it; schedule.t_max sets the cosine's period (SimpleTuner's lr_warmup_steps)",
        )


# --- kohya's schedule options (DBS255-DBS257) ---------------------------------------------------------------
_SCHEDULE_SETTING_USERS = {
    "power": ("polynomial", "polynomial_lr"),
    "min_lr_ratio": ("cosine_with_min_lr", "warmup_stable_decay"),
    "decay_steps": ("warmup_stable_decay",),
    "t_max": (
        "cosine_annealing",
        "cosine_annealing_warm_restarts",
        "one_cycle",
        "simpletuner_cosine",
        "simpletuner_sine",
    ),
    "eta_min": (
        "cosine_annealing",
        "cosine_annealing_warm_restarts",
        "simpletuner_cosine",
        "simpletuner_sine",
    ),
    "t_mult": ("cosine_annealing_warm_restarts",),
    "lr_end": ("polynomial",),
    "cosine_cycles": ("cosine",),  # kohya's lr_scheduler_args to named schedules
    "warmup_type": ("warmup_stable_decay",),
    "decay_type": ("warmup_stable_decay",),
}
_SCHEDULE_SETTING_USERS.update(
    {  # torch's other schedulers (kohya's lr_scheduler_type)
        "step_size": ("step",),
        "gamma": ("step", "multi_step", "exponential", "cyclic"),
        "milestones": ("multi_step",),
        "start_factor": ("linear_lr",),
        "end_factor": ("linear_lr",),
        "total_iters": ("linear_lr", "constant_lr", "polynomial_lr"),
        "factor": ("constant_lr",),
        **{
            key: ("one_cycle",)
            for key in ("pct_start", "anneal_strategy", "div_factor", "final_div_factor", "three_phase")
        },
        **{
            key: ("one_cycle", "cyclic")
            for key in ("max_lr", "max_lr_zero", "cycle_momentum", "base_momentum", "max_momentum")
        },
        **{key: ("cyclic",) for key in ("base_lr", "step_size_up", "step_size_down", "cyclic_mode")},
    }
)


@rule("spec")
def schedule_setting_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    name = spec.schedule.lr_schedule
    for key, users in _SCHEDULE_SETTING_USERS.items():
        if given(("schedule", key)) and name not in users:
            yield _warn(
                "DBS255",
                ("schedule", key),
                f"schedule.{key} has no effect with lr_schedule = {name!r}",
                f"it shapes {' and '.join(users)} only; remove it or choose one of them",
            )


@rule("plan")
def warmup_covers_run(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    """A warm-up at least as long as the run: the LR climbs the whole run and never reaches optimizer.lr
    (kohya and diffusers run it so); a warning with the highest LR reached."""
    s = spec.schedule
    if s.lr_schedule not in WARMUP_SCHEDULES:
        return
    if s.warmup_steps >= total_steps:
        peak = (total_steps - 1) / s.warmup_steps
        yield _warn(
            "DBS238",
            ("schedule", "warmup_steps"),
            f"schedule.warmup_steps ({s.warmup_steps}) is not below the run's {total_steps} steps: the LR "
            f"rises the whole run and its last step trains at {peak:.4g} x optimizer.lr, never at the peak",
            codes.help("DBS238"),
        )


@rule("plan")
def warmup_stable_decay_lengths(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    s = spec.schedule
    if s.lr_schedule != "warmup_stable_decay":
        return
    room = total_steps - s.warmup_steps
    if s.decay_steps > room and room > 0:  # a warm-up as long as the run never reaches the decay (DBS238)
        yield _err(
            "DBS256",
            ("schedule", "decay_steps"),
            f"warmup_stable_decay needs decay_steps <= steps - warmup_steps ({room}); "
            f"decay_steps is {s.decay_steps}",
            "set decay_steps to the length of the final decay (kohya's lr_decay_steps)",
        )


@rule("plan")
def one_cycle_lengths(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    s = spec.schedule
    if s.lr_schedule == "one_cycle" and s.t_max and s.t_max < total_steps:
        yield _err(
            "DBS273",
            ("schedule", "t_max"),
            f"one_cycle's total_steps (schedule.t_max) is {s.t_max}, below the run's {total_steps} steps: "
            "torch's OneCycleLR raises when stepped past it",
            "set t_max = 0 (the run's steps) or at least the run's steps",
        )


@rule("spec")
def one_cycle_momentum(spec: Spec, given: Given) -> Iterator[Hit]:
    s = spec.schedule
    if s.lr_schedule in ("one_cycle", "cyclic") and s.cycle_momentum and spec.optimizer.kind == "adafactor":
        torch_class = "OneCycleLR" if s.lr_schedule == "one_cycle" else "CyclicLR"
        yield _err(
            "DBS273",
            ("schedule", "cycle_momentum"),
            f"{s.lr_schedule} cycles the optimizer's momentum or beta1, and optimizer.kind = "
            f'"adafactor" has neither (torch\'s {torch_class} raises)',
            "set cycle_momentum = false",
        )


@rule("spec")
def torch_schedule_without_warmup(spec: Spec, given: Given) -> Iterator[Hit]:
    s = spec.schedule
    if s.lr_schedule in TORCH_SCHEDULES and s.warmup_steps:
        yield _err(
            "DBS257",
            ("schedule", "warmup_steps"),
            f"lr_schedule = {s.lr_schedule!r} is a torch scheduler without a warm-up; warmup_steps is "
            f"{s.warmup_steps} (kohya refuses it too)",
            "set warmup_steps = 0, or use cosine_with_min_lr for a warm-up followed by a cosine",
        )


@rule("spec")
def quantize_needs_frozen_base(spec: Spec, given: Given) -> Iterator[Hit]:
    if isinstance(spec.adapter, LowRankAdapter):
        return
    for key, what in (("quantize_denoiser", "denoiser"), ("quantize_text_encoder", "text encoder")):
        if getattr(spec.precision, key) != "none":
            yield _err(
                "DBS212",
                ("precision", key),
                f"quantising the {what} needs a LoRA run: only a frozen base can be quantised",
                'quantisation is for the frozen base of LoRA runs: set adapter.kind = "lora"',
            )


# --- quantisation backends (DBS247, DBS248): which formats each library makes ------------------------------
QUANTIZE_FORMATS = {
    "quanto": ("int8", "int4", "fp8"),
    "torchao": ("int8", "fp8"),  # weight-only; torchao's int4 weight-only kernels need CUDA (not offered)
    "bitsandbytes": ("nf4", "int8"),  # Linear4bit NF4 (QLoRA), Linear8bitLt (LLM.int8)
    "cast": ("fp8",),  # kohya's fp8_base: a plain float8_e4m3fn cast, upcast at each use
}


@rule("spec")
def quantize_format_of_backend(spec: Spec, given: Given) -> Iterator[Hit]:
    backend = spec.precision.quantize_backend
    formats = QUANTIZE_FORMATS[backend]
    for key in ("quantize_denoiser", "quantize_text_encoder"):
        kind = getattr(spec.precision, key)
        if kind != "none" and kind not in formats:
            makers = [b for b, f in QUANTIZE_FORMATS.items() if kind in f]
            yield _err(
                "DBS247",
                ("precision", key),
                f'precision.{key} = "{kind}" is not a format of quantize_backend = "{backend}" '
                f"(it makes {', '.join(formats)})",
                f"use one of {', '.join(formats)}, or quantize_backend = "
                + " / ".join(f'"{b}"' for b in makers),
            )


@rule("spec")
def quanto_deprecated(spec: Spec, given: Given) -> Iterator[Hit]:
    # Quanto by default (the backend not named): a spec that names quanto has chosen it knowingly.
    p = spec.precision
    if p.quantize_backend != "quanto" or p.quantize_denoiser == p.quantize_text_encoder == "none":
        return
    if given(("precision", "quantize_backend")):
        return
    key = "quantize_denoiser" if p.quantize_denoiser != "none" else "quantize_text_encoder"
    kind = getattr(p, key)
    yield _warn(
        "DBS248",
        ("precision", key),
        'optimum-quanto (quantize_backend = "quanto", the default) is in maintenance mode upstream and '
        "diffusers deprecated its QuantoConfig",
        'use quantize_backend = "torchao" (int8, fp8) or "bitsandbytes" (nf4, int8)'
        + (f' for "{kind}"' if kind != "int4" else '; for a 4-bit base: "bitsandbytes" with "nf4"'),
    )


@rule("spec")
def text_cache_while_training_te(spec: Spec, given: Given) -> Iterator[Hit]:
    if any_text_encoder_trains(spec) and spec.cache.text_embeddings and given(("cache", "text_embeddings")):
        yield _warn(
            "DBS213",
            ("cache", "text_embeddings"),
            "text embeddings cannot be cached while the text encoder trains",
            "captions are encoded at every step instead, also after "
            "train.text_encoder_stop_step; remove this key",
        )


@rule("spec")
def generate_only_for_class(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        if d.generate and d.role != "class":
            yield _err(
                "DBS214",
                ("datasets", i, "generate"),
                f"dataset `{d.name}` is an instance dataset; only class datasets generate images",
                'set role = "class", or remove generate',
            )


@rule("spec")
def lora_learning_rate(spec: Spec, given: Given) -> Iterator[Hit]:
    # LyCORIS's full algo trains whole weights: full fine-tune rates suit it
    if (
        isinstance(spec.adapter, LowRankAdapter)
        and spec.adapter.kind != "full"
        and 0 < spec.optimizer.lr < 1e-5
    ):
        lr = f"{spec.optimizer.lr:g}".replace("e-0", "e-")
        if given(("optimizer", "lr")):
            yield _warn(
                "DBS215",
                ("optimizer", "lr"),
                f"optimizer.lr is {lr}, very low for LoRA",
                "LoRA usually trains at 5e-5 to 2e-4, e.g. lr = 1e-4",
            )
        else:  # point at what made the default wrong
            yield _warn(
                "DBS215",
                ("adapter", "kind"),
                f"optimizer.lr defaults to {lr} (for full fine-tunes), very low for LoRA",
                "add lr = 1e-4 to [optimizer]; LoRA usually trains at 5e-5 to 2e-4",
            )


@rule("spec")
def inert_loss_options(spec: Spec, given: Given) -> Iterator[Hit]:
    if given(("loss", "huber_delta")) and spec.loss.kind != "huber":
        yield _warn(
            "DBS216", ("loss", "huber_delta"), 'loss.huber_delta has no effect unless loss.kind = "huber"'
        )
    if given(("optimizer", "momentum")) and spec.optimizer.kind not in MOMENTUM_KINDS:
        yield _warn(
            "DBS216",
            ("optimizer", "momentum"),
            f"optimizer.momentum is only used by kind = {' / '.join(MOMENTUM_KINDS)}",
        )
    if given(("optimizer", "nesterov")) and spec.optimizer.nesterov and spec.optimizer.kind != "sgd":
        yield _warn("DBS216", ("optimizer", "nesterov"), 'optimizer.nesterov is only used by kind = "sgd"')
    if given(("precision", "bf16_fallback")) and spec.precision.mixed != "bf16":
        yield _warn(
            "DBS216", ("precision", "bf16_fallback"), 'precision.bf16_fallback applies only to mixed = "bf16"'
        )


@rule("spec")
def nesterov_needs_momentum(spec: Spec, given: Given) -> Iterator[Hit]:
    o = spec.optimizer
    if o.kind == "sgd" and o.nesterov and o.momentum == 0:
        yield _err(
            "DBS262",
            ("optimizer", "nesterov"),
            "optimizer.nesterov = true needs momentum > 0, but optimizer.momentum is 0 "
            "(torch's SGD refuses Nesterov without momentum)",
            "set momentum = 0.9 in [optimizer] (kohya's SGDNesterov default)",
        )


@rule("spec")
def nesterov_without_dampening(spec: Spec, given: Given) -> Iterator[Hit]:
    o = spec.optimizer
    if o.kind == "sgd" and o.nesterov and o.dampening > 0:
        yield _err(
            "DBS612",
            ("optimizer", "dampening"),
            f"optimizer.nesterov = true needs dampening 0, but optimizer.dampening is {o.dampening:g} "
            "(torch's SGD refuses Nesterov momentum with dampening)",
            "set dampening = 0 in [optimizer], or nesterov = false",
        )


@rule("spec")
def something_trains(spec: Spec, given: Given) -> Iterator[Hit]:
    if not spec.train.denoiser and not any_text_encoder_trains(spec):
        yield _err(
            "DBS217",
            ("train",),
            "nothing trains: train.denoiser and train.text_encoder are both false",
            "set denoiser = true (or text_encoder = true) in [train]",
        )


@rule("spec")
def bucket_bounds(spec: Spec, given: Given) -> Iterator[Hit]:
    b = spec.buckets
    if b.min_size and b.max_size and b.min_size > b.max_size:
        yield _err(
            "DBS218",
            ("buckets", "min_size"),
            f"buckets.min_size ({b.min_size}) exceeds max_size ({b.max_size})",
        )
    if b.step % 8:
        yield _err(
            "DBS218",
            ("buckets", "step"),
            f"buckets.step ({b.step}) must be a multiple of 8",
            "the VAE downsamples by 8; use 64 (kohya's default) or 32",
        )
    if b.no_upscale and (given(("buckets", "min_size")) or given(("buckets", "max_size"))):
        yield _warn(
            "DBS218", ("buckets", "no_upscale"), "min_size/max_size are ignored with no_upscale = true"
        )
    for i, d in enumerate(spec.datasets):
        for key, side in (("resolution", d.resolution), ("resolution_height", d.resolution_height)):
            if side % 8 or 0 < side < 64:
                low, high = max(64, side // 8 * 8), max(72, side // 8 * 8 + 8)
                least = " of at least 64" if side < 64 else ""
                yield _err(
                    "DBS218",
                    ("datasets", i, key),
                    f"datasets[{i}].{key} ({side}) is not a multiple of 8{least}",
                    f"the VAE downsamples by 8; use {low} or {high}",
                )


def group_buckets(spec: Spec, given: Given, index: int) -> tuple[str, int, int, int, bool]:
    """Group `index`'s (mode, min_size, max_size, step, no_upscale): each key not written takes [buckets]'
    value."""
    g, b = spec.groups[index], spec.buckets

    def pick(key: str, own, default):
        return own if given(("groups", index, key)) else default

    return (
        pick("bucket_mode", g.bucket_mode, b.mode),
        pick("bucket_min_size", g.bucket_min_size, b.min_size),
        pick("bucket_max_size", g.bucket_max_size, b.max_size),
        pick("bucket_step", g.bucket_step, b.step),
        pick("bucket_no_upscale", g.bucket_no_upscale, b.no_upscale),
    )


@rule("spec")
def groups_defined(spec: Spec, given: Given) -> Iterator[Hit]:
    names = {g.name for g in spec.groups}
    for i, d in enumerate(spec.datasets):
        if d.group and d.group not in names:
            known = ", ".join(f"`{n}`" for n in sorted(names)) or "none"
            close = difflib.get_close_matches(d.group, sorted(names), n=1)
            yield _err(
                "DBS250",
                ("datasets", i, "group"),
                f"dataset `{d.name}` names group `{d.group}`, but no [[groups]] table has that name "
                f"(groups: {known})",
                f'did you mean "{close[0]}"?' if close else "",
            )


@rule("spec")
def unique_group_names(spec: Spec, given: Given) -> Iterator[Hit]:
    seen: set[str] = set()
    for i, g in enumerate(spec.groups):
        if not g.name or g.name in seen:
            problem = "is empty (the default group's name)" if not g.name else "is used more than once"
            yield _err("DBS251", ("groups", i, "name"), f"group name `{g.name}` {problem}")
        seen.add(g.name)


@rule("spec")
def unused_groups(spec: Spec, given: Given) -> Iterator[Hit]:
    used = {d.group for d in spec.datasets}
    for i, g in enumerate(spec.groups):
        if g.name and g.name not in used:
            yield _warn("DBS252", ("groups", i, "name"), f"no dataset uses group `{g.name}`")


@rule("spec")
def group_bucket_bounds(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, g in enumerate(spec.groups):
        _mode, lo, hi, step, no_upscale = group_buckets(spec, given, i)
        if lo and hi and lo > hi:
            yield _err(
                "DBS253",
                ("groups", i, "bucket_min_size"),
                f"group `{g.name}`: bucket_min_size ({lo}) exceeds bucket_max_size ({hi})",
            )
        if step % 8:
            yield _err(
                "DBS253",
                ("groups", i, "bucket_step"),
                f"group `{g.name}`: bucket_step ({step}) must be a multiple of 8",
                "the VAE downsamples by 8; use 64 (kohya's default) or 32",
            )
        sizes = given(("groups", i, "bucket_min_size")) or given(("groups", i, "bucket_max_size"))
        if no_upscale and sizes:
            yield _warn(
                "DBS253",
                ("groups", i, "bucket_no_upscale"),
                f"group `{g.name}`: bucket_min_size/bucket_max_size are ignored with no_upscale = true",
            )


@rule("spec")
def two_betas(spec: Spec, given: Given) -> Iterator[Hit]:
    betas, three = spec.optimizer.betas, spec.optimizer.kind in THREE_BETAS_KINDS
    if len(betas) != (3 if three else 2) or not all(0 <= b < 1 for b in betas):
        count = f"three numbers (kind {spec.optimizer.kind})" if three else "two numbers"
        yield _err(
            "DBS219", ("optimizer", "betas"), f"optimizer.betas must be {count} in [0, 1); found {betas}"
        )


@rule("spec")
def adafactor_eps_pair(spec: Spec, given: Given) -> Iterator[Hit]:
    eps = spec.optimizer.adafactor_eps
    if len(eps) != 2 or not all(e > 0 for e in eps):
        yield _err(
            "DBS220",
            ("optimizer", "adafactor_eps"),
            "optimizer.adafactor_eps must be two positive numbers (transformers' Adafactor eps); "
            f"found {eps}",
            "for example adafactor_eps = [1e-30, 1e-3] (transformers' default)",
        )


@rule("spec")
def came_eps_pair(spec: Spec, given: Given) -> Iterator[Hit]:
    came = spec.optimizer.came_eps
    if len(came) != 2 or not all(e > 0 for e in came):
        yield _err(
            "DBS220",
            ("optimizer", "came_eps"),
            f"optimizer.came_eps must be two positive numbers (came_pytorch's CAME eps); found {came}",
            "for example came_eps = [1e-30, 1e-16] (CAME's default)",
        )


@rule("spec")
def came_adam_eps(spec: Spec, given: Given) -> Iterator[Hit]:
    if given(("optimizer", "eps")) and spec.optimizer.kind in CAME_KINDS:
        yield _warn(
            "DBS216",
            ("optimizer", "eps"),
            f'optimizer.eps (Adam\'s epsilon) has no effect with kind = "{spec.optimizer.kind}"',
            "CAME's regularisers are the pair came_eps, e.g. came_eps = [1e-30, 1e-16] (its default)",
        )


@rule("spec")
def prodigy_plus_low_precision_weights(spec: Spec, given: Given) -> Iterator[Hit]:
    """ProdigyPlusScheduleFree rounds bf16 weights stochastically itself (torch's global generator, its
    stochastic_rounding default) and is not made for fp16 ones: dbspec runs it over fp32 weights only."""
    weights = spec.precision.weights
    if spec.optimizer.kind == "prodigy_plus_schedulefree" and weights != "fp32":
        yield _err(
            "DBS620",
            ("precision", "weights"),
            f'optimizer.kind = "prodigy_plus_schedulefree" steps fp32 weights only; precision.weights is '
            f'"{weights}"',
            codes.help("DBS620"),
        )


@rule("spec")
def schedulefree_without_schedule(spec: Spec, given: Given) -> Iterator[Hit]:
    kind, s = spec.optimizer.kind, spec.schedule
    if kind not in (*SCHEDULEFREE_KINDS, "prodigy_plus_schedulefree"):
        return
    if s.lr_schedule != "constant":
        yield _err(
            "DBS228",
            ("schedule", "lr_schedule"),
            f'optimizer.kind = "{kind}" averages its iterates instead of following an LR schedule (kohya '
            f'gives it a scheduler that never changes the LR); schedule.lr_schedule must be "constant", '
            f'found "{s.lr_schedule}"',
            codes.help("DBS228"),
        )
    if s.warmup_steps:
        yield _err(
            "DBS228",
            ("schedule", "warmup_steps"),
            f'optimizer.kind = "{kind}" has no LR schedule to warm up; found schedule.warmup_steps = '
            f"{s.warmup_steps}",
            "use optimizer.schedulefree_warmup_steps (adamw_schedulefree, sgd_schedulefree)",
        )


@rule("spec")
def one_mask_source(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        if d.masks and d.mask_from_alpha:
            yield _err(
                "DBS221",
                ("datasets", i, "mask_from_alpha"),
                f"dataset `{d.name}` sets both masks and mask_from_alpha",
                "choose one mask source",
            )


@rule("spec")
def mask_channel_without_mask_files(spec: Spec, given: Given) -> Iterator[Hit]:
    """`mask_channel` says how a `masks` file is read: inert with mask_from_alpha or without masks."""
    for i, d in enumerate(spec.datasets):
        if given(("datasets", i, "mask_channel")) and not d.masks:
            source = (
                "its masks come from the alpha channel" if d.mask_from_alpha else "it has no masks folder"
            )
            yield _warn(
                "DBS254",
                ("datasets", i, "mask_channel"),
                f'dataset `{d.name}`: mask_channel = "{d.mask_channel}" has no effect: {source}',
                "set the dataset's masks folder, or remove mask_channel",
            )


@rule("spec")
def mask_mean_without_masks(spec: Spec, given: Given) -> Iterator[Hit]:
    """`loss.mask_mean` only says how masked samples average their loss: inert when no dataset has masks."""
    if not given(("loss", "mask_mean")) or any(d.masks or d.mask_from_alpha for d in spec.datasets):
        return
    yield _warn(
        "DBS243",
        ("loss", "mask_mean"),
        f'loss.mask_mean = "{spec.loss.mask_mean}" has no effect: no dataset sets masks or mask_from_alpha',
        "add a dataset's masks (or mask_from_alpha = true), or remove loss.mask_mean",
    )


@rule("spec")
def one_holdout(spec: Spec, given: Given) -> Iterator[Hit]:
    """The evaluation holds images out one way: a seeded sample (holdout) or kohya's split (DBS244)."""
    ev = spec.evaluation
    if ev.holdout and ev.split:
        yield _err(
            "DBS244",
            ("evaluation", "split"),
            f"evaluation.holdout = {ev.holdout} and evaluation.split = {ev.split:g} are both set",
            codes.help("DBS244"),
        )
    elif ev.split and given(("evaluation", "holdout_dataset")):
        yield _err(
            "DBS244",
            ("evaluation", "holdout_dataset"),
            "evaluation.holdout_dataset chooses the dataset of a `holdout` sample; evaluation.split splits "
            "the datasets of `split_datasets`",
            "name the datasets in evaluation.split_datasets instead",
        )
    elif not ev.split:
        for key in ("split_datasets", "split_draw"):
            if given(("evaluation", key)):
                yield _err(
                    "DBS244",
                    ("evaluation", key),
                    f"evaluation.{key} is set but evaluation.split = 0: there is no kohya split to shape",
                    "set evaluation.split (kohya's validation_split), or remove evaluation." + key,
                )


@rule("spec")
def dataset_eval_split_applies(spec: Spec, given: Given) -> Iterator[Hit]:
    """A dataset's eval_split or eval_seed (kohya's per-dataset validation_split, validation_seed) needs a
    split that splits it (DBS570)."""
    ev = spec.evaluation
    for i, d in enumerate(spec.datasets):
        if not ev.split:
            why = "evaluation.split = 0: nothing is split"
        elif d.role != "instance":
            why = f'the dataset\'s role is "{d.role}" (only instance datasets are split)'
        elif ev.split_datasets and d.name not in ev.split_datasets:
            why = f"evaluation.split_datasets ({', '.join(ev.split_datasets)}) does not name it"
        else:
            continue
        for key, value, set_ in (
            ("eval_split", f"{d.eval_split:g}", d.eval_split),
            ("eval_seed", str(d.eval_seed), d.eval_seed >= 0),
        ):
            if set_:
                yield _err(
                    "DBS570",
                    ("datasets", i, key),
                    f"datasets[{i}] (`{d.name}`) sets {key} = {value}, but {why}",
                    codes.help("DBS570"),
                )


@rule("spec")
def loader_order_applies(spec: Spec, given: Given) -> Iterator[Hit]:
    """evaluation.order = "kohya_loader" orders kohya's split; max_batches caps that order (DBS216)."""
    ev = spec.evaluation
    if ev.order == "kohya_loader" and not ev.split:
        yield _warn(
            "DBS216",
            ("evaluation", "order"),
            'evaluation.order = "kohya_loader" has no effect without evaluation.split (kohya\'s validation '
            "split is what its loader batches)",
            "set evaluation.split, or remove evaluation.order",
        )
    if ev.max_batches and ev.order != "kohya_loader":
        yield _warn(
            "DBS216",
            ("evaluation", "max_batches"),
            'evaluation.max_batches has no effect unless evaluation.order = "kohya_loader" (max_images caps '
            "the split order)",
            'set evaluation.order = "kohya_loader", or use evaluation.max_images',
        )
    if ev.max_images and ev.order == "kohya_loader":
        yield _warn(
            "DBS216",
            ("evaluation", "max_images"),
            'evaluation.max_images has no effect with evaluation.order = "kohya_loader" (max_batches caps '
            "it)",
            "use evaluation.max_batches",
        )


@rule("spec")
def unscored_evaluation(spec: Spec, given: Given) -> Iterator[Hit]:
    """evaluation.score = false: something must be held out, and the loss's settings do nothing (DBS571)."""
    ev = spec.evaluation
    if ev.score:
        return
    if not (ev.holdout or ev.split):
        yield _warn(
            "DBS571",
            ("evaluation", "score"),
            "evaluation.score = false, but evaluation.holdout = 0 and evaluation.split = 0: no image is "
            "held out",
            "set evaluation.split or evaluation.holdout, or remove evaluation.score",
        )
    for key in ("timesteps", "timestep_spacing", "bands", "max_images", "log"):
        if given(("evaluation", key)):
            yield _warn(
                "DBS571",
                ("evaluation", key),
                f"evaluation.{key} shapes the evaluation loss, which evaluation.score = false turns off",
                f"remove evaluation.{key}, or set evaluation.score = true",
            )


@rule("spec")
def face_crop_range(spec: Spec, given: Given) -> Iterator[Hit]:
    """kohya's face crop: two positive numbers (DBS233; reversed, kohya's fixed scale with its shift: DBS616),
    and only where buckets are off (DBS234)."""
    for i, d in enumerate(spec.datasets):
        if not d.face_crop:
            continue
        path = ("datasets", i, "face_crop")
        if len(d.face_crop) != 2 or not (d.face_crop[0] > 0 and d.face_crop[1] > 0):
            yield _err(
                "DBS233",
                path,
                f"dataset `{d.name}`: face_crop must be two positive numbers [lo, hi]; found {d.face_crop}",
                codes.help("DBS233"),
            )
            continue
        if d.face_crop[0] > d.face_crop[1]:
            yield _face_crop_reversed(i, d)
        index = next((k for k, g in enumerate(spec.groups) if d.group and g.name == d.group), None)
        mode = spec.buckets.mode if index is None else group_buckets(spec, given, index)[0]
        if mode != "square":
            where = "buckets.mode" if index is None else f"group `{d.group}`'s bucket_mode"
            yield _err(
                "DBS234",
                path,
                f"dataset `{d.name}`: face_crop needs square buckets (kohya crops around faces only with "
                f'buckets off); {where} is "{mode}"',
                codes.help("DBS234"),
            )


def _face_crop_reversed(i: int, d) -> Hit:
    """DBS616: face_crop [lo, hi] with lo > hi, run as kohya's crop_target runs it (dbspec.plan.face_crop)."""
    lo, hi = d.face_crop
    return _warn(
        "DBS616",
        ("datasets", i, "face_crop"),
        f"dataset `{d.name}`: face_crop [{lo:g}, {hi:g}] is reversed: every face image is scaled by the one "
        f'scale of [{hi:g}, {hi:g}] (no scale draw), and, without crop = "random", its window shifted by '
        "kohya's small draw for a range whose ends differ",
        codes.help("DBS616"),
    )


@rule("spec")
def resize_none_square(spec: Spec, given: Given) -> Iterator[Hit]:
    """resize = "none" (kohya's crop without resizing) only where buckets are off (DBS245)."""
    for i, d in enumerate(spec.datasets):
        if d.resize != "none":
            continue
        index = next((k for k, g in enumerate(spec.groups) if d.group and g.name == d.group), None)
        mode = spec.buckets.mode if index is None else group_buckets(spec, given, index)[0]
        if mode != "square":
            where = "buckets.mode" if index is None else f"group `{d.group}`'s bucket_mode"
            yield _err(
                "DBS245",
                ("datasets", i, "resize"),
                f'dataset `{d.name}`: resize = "none" needs square buckets (kohya crops without resizing '
                f'only with buckets off); {where} is "{mode}"',
                codes.help("DBS245"),
            )


@rule("spec")
def exports_match_adapter(spec: Spec, given: Given) -> Iterator[Hit]:
    lora = isinstance(spec.adapter, LowRankAdapter)
    for fmt in spec.checkpoints.exports:
        if fmt == "single_file" and lora:
            yield _err(
                "DBS222",
                ("checkpoints", "exports"),
                "single_file exports full-model runs; this is a LoRA run",
                'use exports = ["kohya_lora"]',
            )
        if fmt == "kohya_lora" and not lora:
            yield _err(
                "DBS222",
                ("checkpoints", "exports"),
                "kohya_lora exports LoRA runs; this is a full fine-tune",
                'use exports = ["single_file"]',
            )


@rule("spec")
def export_format_has_exports(spec: Spec, given: Given) -> Iterator[Hit]:
    c = spec.checkpoints
    if c.export_format != "safetensors" and not c.exports:
        yield _warn(
            "DBS288",
            ("checkpoints", "export_format"),
            f'export_format is "{c.export_format}" but checkpoints.exports is empty: no file is written in '
            "that format (final/ and checkpoints hold diffusers safetensors weights)",
            'add the export it is for (exports = ["single_file"] or ["kohya_lora"]), or remove export_format',
        )


@rule("spec")
def adapter_options_fit(spec: Spec, given: Given) -> Iterator[Hit]:
    a = spec.adapter
    if not isinstance(a, LowRankAdapter) or a.kind in (
        "full",
        "ia3",
        "diag-oft",
        "boft",
        "tlora",  # no convolution rank, no option to combine
    ):  # lycoris_switches_fit
        return
    # alpha may be negative (LyCORIS keeps the sign), not 0 (unset it is the rank, whose own range is checked)
    if a.kind in ("lora", "loha", "lokr", "dylora") and not a.alpha and given(("adapter", "alpha")):
        yield _err(
            "DBS260",
            ("adapter", "alpha"),
            f"alpha is 0 on a {a.kind} adapter: its updates would be scaled to nothing",
            "set alpha to a number other than 0 (the same as rank gives scale 1.0; kohya's alpha 0 is the "
            "rank)",
        )
    if a.conv_rank and not a.conv_alpha:
        yield _err(
            "DBS260",
            ("adapter", "conv_alpha"),
            f"conv_alpha is 0 with conv_rank {a.conv_rank}: "
            "the convolution updates would be scaled to nothing",
            "set conv_alpha above 0 (kohya's default is 1.0; the same as conv_rank gives scale 1.0)",
        )
    if a.conv_rank and not a.conv_targets:
        yield _err(
            "DBS260",
            ("adapter", "conv_targets"),
            f"conv_rank is {a.conv_rank} but conv_targets is empty",
            "name the convolutions, or remove conv_targets for kohya's LoCon set",
        )
    both = sorted(set(a.denoiser_targets) & set(getattr(a, "conv_targets", ()))) if a.conv_rank else []
    if both:
        yield _err(
            "DBS260",
            ("adapter", "conv_targets"),
            f"{both[0]!r} is in both denoiser_targets and conv_targets: a module gets one rank",
            "keep each module name in one of the two lists",
        )
    # the cast backend's layers read an upcast float weight: peft's LoRA convolution wraps them as they are
    p = spec.precision
    if a.kind == "lora" and a.conv_rank and p.quantize_denoiser != "none" and p.quantize_backend != "cast":
        yield _err(
            "DBS260",
            ("precision", "quantize_denoiser"),
            f"LoRA on convolutions (conv_rank {a.conv_rank}) cannot wrap a quantised denoiser: peft's LoRA "
            "convolution calls the quantised layer's weight directly",
            'set quantize_denoiser = "none", conv_rank = 0, quantize_backend = "cast" (plain fp8 storage), '
            'or use kind = "loha" / "lokr" (they wrap quantised convolutions)',
        )
    if a.kind == "lokr" and a.factor == 0:
        yield _err(
            "DBS260",
            ("adapter", "factor"),
            "factor is 0; LoKr splits each width into factor x (width / factor)",
            "use -1 (split near the square root) or a factor of 1 or more",
        )
    if not a.conv_rank:
        for key in ("conv_alpha", "conv_targets", *(("tucker",) if a.kind == "lora" else ())):
            if given(("adapter", key)):
                yield _warn(
                    "DBS261",
                    ("adapter", key),
                    f"{key} has no effect with conv_rank = 0",
                    codes.help("DBS261"),
                )


@rule("spec")
def lycoris_switches_fit(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's use_scalar (adapter.scalar) and LoKr's full_matrix against the options they cannot join."""
    a = spec.adapter
    if not isinstance(a, LowRankAdapter):
        return
    # GLoRA: W a1 a2 needs the float weight too; T-LoRA its SVD
    if a.kind in ("full", "ia3", "diag-oft", "boft", "glora", "tlora"):
        yield from _lycoris_full_fits(spec, given)
        return
    if getattr(a, "scalar", False):
        for key, value, why in (
            (  # LyCORIS's weight decomposition takes the scaled update (lycoris_dora.py); peft's does not
                "dora",
                getattr(a, "dora", False) and not lycoris_dora(a),
                "peft's DoRA rebuilds the weight with no scalar "
                '(dora_form = "lycoris" takes it, as LyCORIS)',
            ),
        ):
            if value:
                yield _err(
                    "DBS520",
                    ("adapter", key),
                    f"adapter.{key} with adapter.scalar = true (LyCORIS use_scalar): {why}",
                    f"set adapter.scalar = false, or remove adapter.{key}",
                )
    if getattr(a, "full_matrix", False):
        for key in ("decompose_both", "tucker"):
            if given(("adapter", key)) and getattr(a, key):
                yield _warn(
                    "DBS521",
                    ("adapter", key),
                    f"adapter.{key} has no effect with adapter.full_matrix = true (both factors are full)",
                    codes.help("DBS521"),
                )


@rule("spec")
def oft_rank_dropout_not_in_bypass(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's DiagOFTModule draws rank_dropout in its default forward's make_weight only: its bypass
    forward never reads it (DBS589; the norm offsets still draw it, as NormModule does)."""
    a = spec.adapter
    if getattr(a, "kind", None) != "diag-oft" or not a.bypass or not a.rank_dropout:
        return
    norms = has_norms(a)
    yield _warn(
        "DBS589",
        ("adapter", "rank_dropout"),
        f'adapter.rank_dropout = {a.rank_dropout:g} with kind = "diag-oft" and bypass = true: the Diag-OFT '
        "layers draw no rank dropout (LyCORIS's bypass forward never reads it)"
        + ("; only the norm offsets draw it" if norms else ", and nothing else does: it changes nothing"),
        codes.help("DBS589"),
    )


@rule("spec")
def ia3_rank_dropout_needs_norms(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's IA3Module never reads rank_dropout; only the norm offsets (NormModule) and the layers of its
    blocks of kinds whose modules read it (lycoris_row_masks) draw it (DBS590)."""
    a = spec.adapter
    if getattr(a, "kind", None) != "ia3" or not a.rank_dropout:
        return
    if has_norms(a) or rank_dropout_blocks(a):
        return
    yield _warn(
        "DBS590",
        ("adapter", "rank_dropout"),
        f'adapter.rank_dropout = {a.rank_dropout:g} changes nothing with kind = "ia3" and no norm offsets '
        "(LyCORIS's IA3Module never reads it; only its NormModules draw it)",
        codes.help("DBS590"),
    )


# the adapters whose own modules never read rank_dropout, only their blocks of some kinds: code, LyCORIS class
_BLOCKS_DRAW_RANKS = {"dylora": ("DBS621", "DyLoraModule"), "tlora": ("DBS624", "TLoraModule")}


@rule("spec")
def rank_dropout_needs_blocks(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's DyLoraModule and TLoraModule never read rank_dropout; only a DyLoRA / T-LoRA adapter's blocks
    of kinds whose modules read it draw it (DBS621 / DBS624)."""
    a = spec.adapter
    kind = getattr(a, "kind", None)
    if kind not in _BLOCKS_DRAW_RANKS or not a.rank_dropout or rank_dropout_blocks(a):
        return
    code, module = _BLOCKS_DRAW_RANKS[kind]
    yield _warn(
        code,
        ("adapter", "rank_dropout"),
        f'adapter.rank_dropout = {a.rank_dropout:g} changes nothing with kind = "{kind}" and no blocks of '
        f"kind lora, loha, full or diag-oft (LyCORIS's {module} never reads it)",
        codes.help(code),
    )


@rule("spec")
def lokr_bypass_rank_dropout(spec: Spec, given: Given) -> Iterator[Hit]:
    """A lokr adapter's rank_dropout in LyCORIS's bypass form (LokrModule's bypass forward draws none; its
    LoCon / LoHa blocks draw theirs, rules.mixed_bypass_ranks, with or without the bypass dropout
    output_dropout): blocks of kind lora or loha to draw it (DBS630)."""
    a = spec.adapter
    if getattr(a, "kind", None) != "lokr" or a.rank_dropout_form != "lycoris_bypass" or not a.rank_dropout:
        return
    if not any(b.kind in ("lora", "loha") for b in (*a.blocks, *a.text_encoder_blocks)):
        yield _warn(
            "DBS630",
            ("adapter", "rank_dropout"),
            f'adapter.rank_dropout = {a.rank_dropout:g} changes nothing with kind = "lokr", '
            'rank_dropout_form = "lycoris_bypass" and no blocks of kind lora or loha (LyCORIS\'s LokrModule '
            "never reads it in bypass_mode)",
            codes.help("DBS630"),
        )


@rule("spec")
def loha_bypass_rank_dropout_form(spec: Spec, given: Given) -> Iterator[Hit]:
    """A loha adapter's rank_dropout_form "lycoris_bypass" picks its lora blocks' LyCORIS forward
    (LoConModule's bypass rank mask, rules.mixed_bypass_ranks); without rank_dropout or such blocks it
    changes nothing (DBS631): the LoHa layers draw LohaModule's row mask in either form."""
    a = spec.adapter
    if getattr(a, "kind", None) != "loha" or a.rank_dropout_form != "lycoris_bypass":
        return
    if not a.rank_dropout or not any(b.kind == "lora" for b in (*a.blocks, *a.text_encoder_blocks)):
        yield _warn(
            "DBS631",
            ("adapter", "rank_dropout_form"),
            'adapter.rank_dropout_form = "lycoris_bypass" changes nothing with kind = "loha", '
            f"adapter.rank_dropout = {a.rank_dropout:g} and "
            f"{sum(b.kind == 'lora' for b in (*a.blocks, *a.text_encoder_blocks))} blocks of kind lora "
            "(it picks those blocks' LyCORIS forward; the LoHa layers draw the same row mask in either)",
            codes.help("DBS631"),
        )


@rule("spec")
def glora_dropouts_need_bypass(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's GLoRAModule applies rank_dropout and dropout only in its bypass forward."""
    a = spec.adapter
    if getattr(a, "kind", None) != "glora" or a.bypass:
        return
    norms = has_norms(a)
    for key in ("rank_dropout", "dropout"):
        if not getattr(a, key) or (key == "rank_dropout" and rank_dropout_blocks(a)):  # its blocks draw it
            continue
        if key == "rank_dropout" and norms and a.norm_rank_dropout == a.rank_dropout:
            effect = "the GLoRA layers draw no rank dropout (only the norm offsets draw it)"
        else:
            effect = "changes nothing"
        yield _warn(
            "DBS556",
            ("adapter", key),
            f'adapter.{key} = {getattr(a, key):g} with kind = "glora" and bypass = false: {effect} '
            "(LyCORIS's GLoRA applies it only in its bypass forward)",
            codes.help("DBS556"),
        )


@rule("spec")
def host_dropout_unread(spec: Spec, given: Given) -> Iterator[Hit]:
    """An IA^3 / DyLoRA adapter's `dropout` (LyCORIS's network dropout, which IA3Module and DyLoraModule never
    read) acts on its blocks of kind lora, loha, lokr, glora and tlora in bypass_mode alone (DBS632
    elsewhere)."""
    a = spec.adapter
    if getattr(a, "kind", None) not in ("ia3", "dylora") or not getattr(a, "dropout", 0.0):
        return
    kinds = {b.kind for b in (*a.blocks, *a.text_encoder_blocks)}
    if a.bypass and kinds & set(BYPASS_DROPOUT_KINDS):
        return
    why = "no blocks of kind lora, loha, lokr, glora or tlora" if a.bypass else "bypass = false"
    module = "IA3Module" if a.kind == "ia3" else "DyLoraModule"
    yield _warn(
        "DBS632",
        ("adapter", "dropout"),
        f'adapter.dropout = {a.dropout:g} changes nothing with kind = "{a.kind}" and {why} (LyCORIS\'s '
        f"{module} never reads it; LoConModule, LohaModule, LokrModule, GLoRAModule and TLoraModule in "
        "their bypass forward alone)",
        codes.help("DBS632"),
    )


@rule("spec")
def norm_rank_dropout_needs_norms(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.norm_rank_dropout is drawn by the norm offsets alone: without them it changes nothing."""
    a = spec.adapter
    rate = getattr(a, "norm_rank_dropout", 0.0)
    if not rate or not given(("adapter", "norm_rank_dropout")):
        return
    if has_norms(a):
        return
    yield _warn(
        "DBS623",
        ("adapter", "norm_rank_dropout"),
        f"adapter.norm_rank_dropout = {rate:g} changes nothing: the adapter has no norm offsets "
        "(denoiser_norms, text_encoder_norms and text_encoder_2_norms are empty)",
        codes.help("DBS623"),
    )


@rule("spec")
def tlora_dropout_needs_bypass(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's TLoraModule applies its dropout only in its bypass forward (DBS603), which a patch
    convolution (SD3's) takes in either mode (families.reaches_patch_conv), as do the layers of a T-LoRA
    block whose own bypass is on (adapters.tlora_own_bypass)."""
    from dbspec.families import reaches_patch_conv

    a = spec.adapter
    if getattr(a, "kind", None) != "tlora" or reaches_patch_conv(spec.model.family, a.denoiser_targets):
        return
    if tlora_own_bypass(a):
        return
    if a.dropout and not a.bypass:
        yield _warn(
            "DBS603",
            ("adapter", "dropout"),
            f'adapter.dropout = {a.dropout:g} changes nothing with kind = "tlora" and bypass = false '
            "(LyCORIS's T-LoRA applies it only in its bypass forward)",
            codes.help("DBS603"),
        )


def _lycoris_full_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's full algo copies each targeted layer's float weight, IA^3 scales it: a quantised base has
    none (LyCORIS refuses it for full too), and a module named as a linear and a convolution target would
    get two; an IA^3 input target that is no target changes nothing."""
    a, p = spec.adapter, spec.precision
    what = {
        "full": "trains a copy of",
        "ia3": "scales",
        "diag-oft": "rotates",
        "boft": "rotates",
        "glora": "multiplies",
        "tlora": "starts from the SVD of",
    }[a.kind]
    text = [*a.text_encoder_targets, *a.text_encoder_2_targets]
    for key in ("quantize_denoiser", "quantize_text_encoder"):
        if key == "quantize_text_encoder" and not text:  # no layer of theirs adapted (kohya's OFT: the U-Net)
            continue
        if getattr(p, key) != "none" and not (
            _bypass_over_cast(a.kind, _all_bypassed(a), spec) or _kohya_oft_over_cast(a, spec)
        ):
            yield _err(
                "DBS522",
                ("precision", key),
                f'adapter.kind = "{a.kind}" (LyCORIS\'s {a.kind} algo) with precision.{key} = '
                f'"{getattr(p, key)}": it {what} each targeted layer\'s float weight, which a quantised '
                "layer has not",
                f'set precision.{key} = "none", or train another adapter kind',
            )
    targets = {
        *a.denoiser_targets,
        *a.text_encoder_targets,
        *a.text_encoder_2_targets,
        *getattr(a, "conv_targets", ()),
    }
    for name in getattr(a, "input_targets", ()):
        if name not in targets:
            yield _warn(
                "DBS523",
                ("adapter", "input_targets"),
                f"{name} is in input_targets but in none of denoiser_targets, text_encoder_targets and "
                "conv_targets: no layer of that name is scaled",
                codes.help("DBS523"),
            )
    both = sorted(set(a.denoiser_targets) & set(getattr(a, "conv_targets", ())))
    if both:
        yield _err(
            "DBS522",
            ("adapter", "conv_targets"),
            f"{', '.join(both)} named in both denoiser_targets and conv_targets",
            "keep each module name in one of the two lists",
        )


@rule("spec")
def zero_snr_needs_v(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.loss.zero_terminal_snr and spec.model.prediction == "epsilon":
        yield _warn(
            "DBS223",
            ("loss", "zero_terminal_snr"),
            "zero terminal SNR with epsilon prediction: the model cannot predict noise at the final step",
            'use model.prediction = "v_prediction"',
        )


def _rate_zero_moves_or_stops(o: Optimizer, built_at_zero: bool) -> str:
    """Why the optimizer cannot hold a parameter group at rate 0, or "" where it can (its step and its
    decoupled weight decay are scaled by the group's own rate, or a group at rate 0 keeps its averaging
    weight at 0, as the schedulefree classes do; D-Adaptation's and Prodigy's as zero_group_moves says).
    `built_at_zero`: the class is built with that rate 0 too (`lr=optimizer.lr`, the denoiser's, as kohya
    passes `lr=learning_rate`); a text encoder held at 0 beside a denoiser at a positive rate is not."""
    if o.kind == "dadapt_lion" and built_at_zero:
        return (
            "dadaptation's DAdaptLion accepts a group at rate 0 but steps every group by d x the largest "
            "group's rate: the part at rate 0 would train at the other's rate (that run is the two at one "
            "rate)"
        )
    if o.kind in DADAPT_KINDS and built_at_zero:
        return (
            "dadaptation's class raises ValueError for lr 0 when it is built (`lr=optimizer.lr`, as kohya "
            "passes `lr=learning_rate`): kohya's run stops there too"
        )
    if o.kind == "prodigy" and built_at_zero:
        return (
            "prodigyopt's Prodigy raises ValueError for lr 0 as kohya builds it (`lr=learning_rate`): "
            "kohya's run stops there too"
        )
    if o.kind == "prodigy_plus_schedulefree" and built_at_zero:
        return (
            "prodigy-plus-schedule-free's ProdigyPlusScheduleFree raises ValueError for lr 0 as kohya builds "
            "it (`lr=learning_rate`): kohya's run stops there too"
        )
    if o.kind in DADAPT_KINDS or o.kind == "prodigy":
        return zero_group_moves(o.kind, o.weight_decay, o.betas, o.decouple, o.momentum)
    if o.kind == "adafactor" and o.relative_step:
        return (
            "Adafactor with relative_step computes its own LR and ignores the groups' rates: the part at "
            "rate 0 would train (that run is a positive rate for it)"
        )
    if o.kind == "came" and built_at_zero:
        return "came_pytorch's CAME asserts lr > 0 when it is built (kohya's run would stop there too)"
    return ""


# The text encoders' rates as the spec gives them (the family is not known yet): the first at
# text_encoder_lr; SDXL's or SD3's second, or Flux's T5-XXL (train.t5), at text_encoder_2_lr (which defaults
# to text_encoder_lr); SD3's T5-XXL at text_encoder_3_lr (> 0 when given; it defaults to text_encoder_2_lr)
_TEXT_RATES = ("text_encoder_lr", "text_encoder_2_lr", "text_encoder_3_lr")


def _text_rates(spec: Spec, given: Given) -> list[tuple[str, float]]:
    """(optimizer key, rate) of each text-encoder group that may train: a key not given that takes its value
    from the one before is that group's (the same rate, one group)."""
    o, t = spec.optimizer, spec.train
    rates = [("text_encoder_lr", o.text_encoder_lr)] if t.text_encoder else []
    second = t.text_encoder_2 or t.t5 or (t.text_encoder and given(("optimizer", "text_encoder_2_lr")))
    if second and (given(("optimizer", "text_encoder_2_lr")) or not rates):
        rates.append(("text_encoder_2_lr", o.text_encoder_2_lr))
    if t.t5 and given(("optimizer", "text_encoder_3_lr")):
        rates.append(("text_encoder_3_lr", o.text_encoder_3_lr))
    return rates


def _rate_path(given: Given, name: str) -> KeyPath:
    """Where a text encoder's rate comes from: its key, else the first given key it derives from."""
    for key in _TEXT_RATES[: _TEXT_RATES.index(name) + 1][::-1]:
        if given(("optimizer", key)):
            return ("optimizer", key)
    return ("optimizer", "lr")


@rule("spec")
def held_at_rate_zero(spec: Spec, given: Given) -> Iterator[Hit]:
    """A trained part in the optimizer at rate 0 while another trains at a positive rate: the denoiser at
    optimizer.lr = 0 (kohya train_db.py's learning_rate 0 with learning_rate_te) or a text encoder at
    text_encoder_lr (text_encoder_2_lr) = 0 (kohya networks.lora_fa's text-encoder group at rate 0, which it
    keeps in the optimizer). DBS229 warns of the cost; DBS200 refuses it where that cannot hold, unless
    optimizer.denoiser_at_zero (text_encoder_at_zero) = "keep" lets the optimizer and schedule move it as
    kohya's do (DBS606 says how): both at rate 0 too (train_db.py's learning_rate 0 with learning_rate_te 0,
    or none: its groups at 0 under a schedule that lifts them), each part kept or held on its own."""
    o, t = spec.optimizer, spec.train
    texts = _text_rates(spec, given)
    held_texts = [name for name, rate in texts if rate == 0]
    if o.lr != 0 and not held_texts:
        return
    if o.lr == 0:
        for hit in _denoiser_at_zero_refused(spec, given, texts):
            yield hit
            return
    where = ("optimizer", "lr") if o.lr == 0 else _rate_path(given, held_texts[0])
    moving = (t.denoiser and o.lr > 0) or any(rate > 0 for _, rate in texts) or _kept_alone(spec)
    if not moving and not _lifted_at_zero(spec, given):
        yield _err(
            "DBS200",
            where,
            f"optimizer.{held_texts[0]} is 0 and nothing else trains at a positive rate (train.denoiser = "
            f"{str(t.denoiser).lower()}): a run that changes nothing",
            "give the text encoder a rate above 0, or train the denoiser",
        )
        return
    moved = _kept_moves(spec, given)
    if isinstance(moved, Hit):
        yield moved
        return
    denoiser_moved, text_moved = moved
    if o.lr == 0:
        yield (
            _kept_warning(
                ("optimizer", "lr"), "optimizer.lr", "the denoiser", "denoiser_at_zero", denoiser_moved
            )
            if denoiser_moved
            else _held_warning(spec, ("optimizer", "lr"), "the denoiser", "the text encoder's", "denoiser")
        )
    if held_texts:
        part = "the text encoders" if len(held_texts) > 1 else _HELD_TEXT[held_texts[0]]
        other = "the denoiser's" if t.denoiser else "the other text encoder's"
        flag = "text_encoder_2" if held_texts == ["text_encoder_2_lr"] else "text_encoder"
        path = _rate_path(given, held_texts[0])
        key = f"optimizer.{held_texts[0]}"
        yield (
            _kept_warning(path, key, part, "text_encoder_at_zero", text_moved)
            if text_moved
            else _held_warning(spec, path, part, other, flag)
        )


def _kept_moves(spec: Spec, given: Given) -> tuple[list[str], list[str]] | Hit:
    """Why the optimizer and schedule move each part held at rate 0 that optimizer.denoiser_at_zero
    (text_encoder_at_zero) = "keep" keeps: (the denoiser's at optimizer.lr = 0, the text encoders' at
    theirs), [] where they hold it still, or the first part's DBS200 refusal (_part_moves)."""
    o = spec.optimizer
    held = [name for name, rate in _text_rates(spec, given) if rate == 0]
    denoiser: list[str] | Hit = []
    if o.lr == 0:
        fix = "set optimizer.lr > 0, or train.denoiser = false with optimizer.text_encoder_lr"
        denoiser = _part_moves(
            spec, "denoiser_at_zero", "optimizer.lr", ["denoiser"], ("optimizer", "lr"), fix
        )
    if isinstance(denoiser, Hit):
        return denoiser
    text: list[str] | Hit = []
    if held:
        fix = f"set optimizer.{held[0]} > 0, or train.text_encoder = false"
        where = _rate_path(given, held[0])
        key, groups = f"optimizer.{held[0]}", _held_groups(spec, given)
        text = _part_moves(spec, "text_encoder_at_zero", key, groups, where, fix)
    if isinstance(text, Hit):
        return text
    return denoiser, text


def _part_moves(
    spec: Spec, option: str, key: str, groups: list[str], where: KeyPath, fix: str
) -> list[str] | Hit:
    """Why the optimizer and schedule move a part at rate 0 (`key`, its optimizer `groups`; `option`: the
    denoiser_at_zero or text_encoder_at_zero that keeps it), [] where they hold it still, or the DBS200
    refusal: they move it and it is not kept, the class stops at rate 0 (kohya's run stops too), or, for a
    text encoder beside a denoiser at a positive rate, dbspec's group order would change the run (kohya's
    networks.lora_fa puts the text encoder's group first; train_db.py, like dbspec, the U-Net's)."""
    o = spec.optimizer
    built_at_zero = o.lr == 0  # the class is built with lr=optimizer.lr (kohya's lr=learning_rate)
    denoiser = option == "denoiser_at_zero"
    keep = getattr(o, option) == "keep"
    text = "the denoiser" if denoiser else "the text encoder"
    moved = []
    own = _rate_zero_moves_or_stops(o, built_at_zero=built_at_zero)
    reordered = not built_at_zero and o.kind in ORDER_DEPENDENT and not _kept_in_kohya_order(o)
    if own and keep and not reordered and not _stops_at_zero(o, built_at_zero=built_at_zero):
        moved.append(own)
    elif own:
        order = (
            ' (text_encoder_at_zero = "keep" cannot reproduce it: the groups\' order changes that run, '
            "kohya's networks.lora_fa putting the text encoder's first, dbspec the denoiser's"
            + (
                ': optimizer.group_order = "text_encoders_first" is kohya\'s order)'
                if o.kind == "dadapt_lion"
                else ")"
            )
            if keep and reordered
            else ""
        )
        return _err("DBS200", where, f"{key} is 0 with kind = {o.kind!r}: {own}{order}", fix)
    lifted = schedule_lifts_zero(spec.schedule, groups)
    if lifted and keep:
        moved.append(lifted)
    elif lifted:
        return _err(
            "DBS200",
            where,
            f"{key} is 0 with {lifted}: {text} would move",
            f'{fix}, or optimizer.{option} = "keep" to let it move',
        )
    return moved


def _lifted_at_zero(spec: Spec, given: Given) -> bool:
    """The denoiser at optimizer.lr = 0 beside text encoders all at rate 0 (kohya train_db.py's groups at
    learning_rate 0, learning_rate_te 0 or none), and a schedule that lifts one of them off 0: something
    trains (on the schedule, where denoiser_at_zero / text_encoder_at_zero = "keep" let it, _kept_moves)."""
    return spec.optimizer.lr == 0 and bool(
        schedule_lifts_zero(spec.schedule, ["denoiser"])
        or schedule_lifts_zero(spec.schedule, _held_groups(spec, given))
    )


def kept_parts_move(spec: Spec, given: Given) -> tuple[bool, bool]:
    """Whether the optimizer or schedule moves the denoiser at rate 0, and the text encoders at theirs, that
    optimizer.denoiser_at_zero (text_encoder_at_zero) = "keep" keeps (DBS606): the plan records "keep" only
    then, a kept group nothing moves being a held one (DBS229)."""
    o = spec.optimizer
    if o.lr == 0 and not spec.train.denoiser:
        return False, False
    if o.lr != 0 and not any(rate == 0 for _, rate in _text_rates(spec, given)):
        return False, False
    moved = _kept_moves(spec, given)
    if isinstance(moved, Hit):
        return False, False
    return bool(moved[0]), bool(moved[1])


def _stops_at_zero(o: Optimizer, built_at_zero: bool) -> bool:
    """The class refuses the rate 0 it is built with (`lr=optimizer.lr`, as kohya passes `lr=learning_rate`):
    _rate_zero_moves_or_stops' reasons that no "keep" can run."""
    stops = (*(k for k in DADAPT_KINDS if k != "dadapt_lion"), "prodigy", "came", "prodigy_plus_schedulefree")
    return built_at_zero and o.kind in stops


# each text encoder's rate key and its optimizer group (runtime/optim.py param_groups)
_TEXT_GROUPS = {"text_encoder_lr": "text_encoder", "text_encoder_2_lr": "text_encoder_2"}
_TEXT_GROUPS["text_encoder_3_lr"] = "text_encoder_3"


def _held_groups(spec: Spec, given: Given) -> list[str]:
    """The optimizer groups of the text encoders at rate 0: each held key's, and those of the keys after it
    that take their value from it (the same rate 0; a group of their own where a schedule table names it)."""
    rates = dict(_text_rates(spec, given))
    groups, held = [], False
    for key, group in _TEXT_GROUPS.items():
        held = rates[key] == 0 if key in rates else held
        if held:
            groups.append(group)
    return groups


def _kept_warning(where: KeyPath, key: str, part: str, option: str, moved: list[str]) -> Hit:
    """DBS606: `part` kept in the optimizer at rate 0 (optimizer.`option` = "keep"), and what moves it."""
    return _warn(
        "DBS606",
        where,
        f'{key} is 0 with {option} = "keep": {part} stay in the optimizer as a group at rate 0 and move: '
        f"{'; '.join(moved)}",
        codes.help("DBS606"),
    )


def _kept_in_kohya_order(o: Optimizer) -> bool:
    """A text encoder kept at rate 0 under DAdaptLion with its groups ahead of the denoiser's (group_order),
    as kohya networks.lora_fa orders them: DAdaptLion steps every group by d x the largest rate and sums
    them into d in the groups' order, so that order makes it kohya's run (tests/runtime/
    test_optim_zero_group.py). The first-group-rate classes train nothing in that order: still refused."""
    return o.kind == "dadapt_lion" and o.group_order == "text_encoders_first"


@rule("spec")
def group_order_with_split(spec: Spec, given: Given) -> Iterator[Hit]:
    """optimizer.group_order = "text_encoders_first" with optimizer.split above 1: the split cuts the
    groups into chunks in dbspec's planned order (DBS602)."""
    o = spec.optimizer
    if o.group_order == "text_encoders_first" and o.split > 1:
        yield _err(
            "DBS602",
            ("optimizer", "group_order"),
            f'optimizer.group_order = "text_encoders_first" with optimizer.split = {o.split}: the split cuts '
            "the groups into its chunks in dbspec's own order (the denoiser's first), one optimizer each",
            codes.help("DBS602"),
        )


@rule("spec")
def at_zero_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    """optimizer.denoiser_at_zero given with the denoiser not held at optimizer.lr = 0 beside a text encoder
    at a positive rate, or optimizer.text_encoder_at_zero with no training text encoder at rate 0: it changes
    nothing (DBS608)."""
    o = spec.optimizer
    held_text = any(rate == 0 for _, rate in _text_rates(spec, given))
    held_denoiser = o.lr == 0 and spec.train.denoiser
    for option, held, why in (
        ("text_encoder_at_zero", held_text, "no training text encoder is at rate 0"),
        ("denoiser_at_zero", held_denoiser, "optimizer.lr is not 0" if o.lr else "train.denoiser is false"),
    ):
        if given(("optimizer", option)) and not held:
            yield _warn(
                "DBS608",
                ("optimizer", option),
                f"optimizer.{option} = {getattr(o, option)!r} changes nothing: {why}",
                codes.help("DBS608"),
            )


# what a text encoder's rate 0 holds (the first key: every text encoder that shares its group)
_HELD_TEXT = {"text_encoder_lr": "the text encoder(s)", "text_encoder_2_lr": "the second text encoder"}


def _denoiser_at_zero_refused(spec: Spec, given: Given, texts: list[tuple[str, float]]) -> Iterator[Hit]:
    """optimizer.lr = 0 with nothing of the denoiser to hold or nothing training at a positive rate."""
    t, where = spec.train, ("optimizer", "lr")
    if not t.denoiser:
        yield _err(
            "DBS200",
            where,
            "optimizer.lr is 0 with train.denoiser = false: there is no denoiser to hold at rate 0",
            "remove optimizer.lr and give the text encoder its rate with optimizer.text_encoder_lr",
        )
    elif _kept_alone(spec):
        return
    elif not any_text_encoder_trains(spec):
        lifted = schedule_lifts_zero(spec.schedule, ["denoiser"])
        yield _err(
            "DBS200",
            where,
            "optimizer.lr is 0 and no text encoder trains: "
            + (
                f"{lifted}, so the denoiser would move on the schedule alone, which "
                'optimizer.denoiser_at_zero = "keep" allows'
                if lifted
                else "a run that changes nothing"
            ),
            (
                'set optimizer.denoiser_at_zero = "keep" (kohya train_db.py\'s U-Net at learning_rate 0 on '
                "such a schedule), or optimizer.lr > 0"
                if lifted
                else "set optimizer.lr > 0, or train a text encoder at optimizer.text_encoder_lr"
            ),
        )
    elif not any(rate > 0 for _, rate in texts) and not _lifted_at_zero(spec, given):
        name = texts[0][0] if texts else "text_encoder_lr"
        yield _err(
            "DBS200",
            ("optimizer", name) if given(("optimizer", name)) else where,
            f"optimizer.lr is 0 and optimizer.{name} is 0"
            + ("" if given(("optimizer", name)) else " (it defaults to lr)")
            + ": the text encoder would not train either, and no schedule lifts either off rate 0",
            f"set optimizer.{name} > 0 (or, as kohya train_db.py's groups at learning_rate 0, a schedule "
            'that lifts them with optimizer.denoiser_at_zero and text_encoder_at_zero = "keep")',
        )


def _kept_alone(spec: Spec) -> bool:
    """The denoiser at optimizer.lr = 0 with no text encoder training, kept (denoiser_at_zero = "keep") and
    lifted off 0 by the schedule: it trains on the schedule alone (kohya train_db.py's U-Net at learning_rate
    0 without the text encoder, under an eta_min above 0 or CyclicLR / OneCycleLR bounds above 0). The
    optimizer's own moves (_kept_moves) still refuse a class that stops at rate 0."""
    o = spec.optimizer
    return (
        o.lr == 0
        and spec.train.denoiser
        and o.denoiser_at_zero == "keep"
        and not any_text_encoder_trains(spec)
        and bool(schedule_lifts_zero(spec.schedule, ["denoiser"]))
    )


def _held_warning(spec: Spec, where: KeyPath, part: str, other: str, flag: str) -> Hit:
    """DBS229: `part` in the optimizer at rate 0, its cost named."""
    o = spec.optimizer
    plural = part.endswith(("s", "(s)"))
    clip = (
        f"clipped together with {other} to max_grad_norm {o.max_grad_norm:g}"
        if o.max_grad_norm
        else f"not clipped (max_grad_norm = 0), so train.{flag} = false would give the same run, cheaper"
        + (
            " (unless adapter.init_weights gives it modules of its own, which only an adapted text encoder "
            "loads)"
            if flag != "denoiser" and getattr(spec.adapter, "init_weights", None)
            else ""
        )
    )
    averaged = (
        f" ({o.kind} gives the group at rate 0 an averaging weight of 0: it stays put in train and eval mode)"
        if o.kind in SCHEDULEFREE_KINDS
        else ""
    )
    its = "their" if plural else "its"
    source = "kohya train_db.py's" if flag == "denoiser" else "kohya networks.lora_fa's"
    return _warn(
        "DBS229",
        where,
        f"{part} {'train' if plural else 'trains'} at learning rate 0: {its} weights never move{averaged}, "
        f"but {its} gradients are computed every step (the memory and backward pass of training "
        f"{'them' if plural else 'it'}) and {clip}",
        f"train.{flag} = false is cheaper unless you want {source} joint clip norm",
    )


@rule("spec")
def prodigy_learning_rate(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.optimizer.kind == "prodigy" and spec.optimizer.lr < 0.1:
        yield _warn(
            "DBS224",
            ("optimizer", "lr"),
            f"Prodigy estimates its own step size; lr {spec.optimizer.lr:g} scales that estimate down",
            "use lr = 1.0 with prodigy",
        )


@rule("spec")
def optimizer_args_unused(spec: Spec, given: Given) -> Iterator[Hit]:
    """D-Adaptation and Adafactor options the chosen kind does not take."""
    kind = spec.optimizer.kind
    for name in unused_args(kind):
        if given(("optimizer", name)):
            yield _warn(
                "DBS270",
                ("optimizer", name),
                f'optimizer.{name} has no effect with kind = "{kind}"',
                "remove it, or pick a kind that uses it (see docs/spec-reference.md)",
            )


@rule("spec")
def dadapt_learning_rate(spec: Spec, given: Given) -> Iterator[Hit]:
    # kohya's get_optimizer warns at the same threshold (lr <= 0.1) for D-Adaptation and Prodigy
    if spec.optimizer.kind in DADAPT_KINDS and spec.optimizer.lr <= 0.1:
        yield _warn(
            "DBS271",
            ("optimizer", "lr"),
            f"D-Adaptation steps by d x lr with d estimated; lr {spec.optimizer.lr:g} scales that step down",
            "use lr = 1.0 with dadapt_* optimizers (kohya's advice)",
        )


# dadaptation's classes that raise on parameter groups with different rates; the others step every group at
# d x the first group's rate (kohya warns "only the first one will take effect")
_DADAPT_ONE_RATE = ("dadapt_adam", "dadapt_adam_preprint", "dadapt_lion", "dadapt_sgd")


def _group_rates(spec: Spec, given: Given) -> list[tuple[float, tuple]]:
    """The learning rates of the optimizer's parameter groups in the runtime's order (runtime/optim.py
    param_groups, then the blocks' and the pivotal tokens' groups; compiler/group_bounds.py
    optimizer_groups), each with the key path that sets it: the denoiser's with a full fine-tune's
    [[optimizer.blocks]], the text encoders' (_text_groups), each with its LoRA+ up matrices at the rate x
    the ratio and each adapter block's own `lr` or `lr_scale` (a block at lr_scale 0 is held, in no group; a
    denoiser held whole has none), then the pivotal tokens'."""
    o, t, a = spec.optimizer, spec.train, spec.adapter
    ratios = (0.0, 0.0)
    if isinstance(a, (LoraAdapter, DyloraAdapter)):
        ratios = (a.loraplus_denoiser_ratio, a.loraplus_text_encoder_ratio)

    def with_blocks(lr: float, where: tuple, blocks: str, ratio: float, ratio_key: str) -> list:
        own = [(lr, where)]
        for i, b in enumerate(getattr(a, blocks, ())):
            block_lr, scale = getattr(b, "lr", 0.0), getattr(b, "lr_scale", 1.0)
            if block_lr:
                own.append((block_lr, ("adapter", blocks, i, "lr")))
            elif scale not in (0.0, 1.0):
                own.append((lr * scale, ("adapter", blocks, i, "lr_scale")))
        if ratio:  # LoRA+'s up matrices of each group
            own += [(r * ratio, ("adapter", ratio_key)) for r, _ in own]
        return own

    denoiser: list[tuple[float, tuple]] = []
    if t.denoiser and not (a.kind != "none" and denoiser_held(getattr(a, "blocks", ()))):  # held: no group
        denoiser = with_blocks(o.lr, ("optimizer", "lr"), "blocks", ratios[0], "loraplus_denoiser_ratio")
        denoiser += [(b.lr, ("optimizer", "blocks", i, "lr")) for i, b in enumerate(o.blocks) if b.lr > 0]
    text = [
        group
        for lr, key in _text_groups(spec, given)
        for group in with_blocks(
            lr, ("optimizer", key), "text_encoder_blocks", ratios[1], "loraplus_text_encoder_ratio"
        )
    ]
    rates = text + denoiser if o.group_order == "text_encoders_first" else denoiser + text
    if spec.pivotal.tokens:
        rates.append((spec.pivotal.lr, ("pivotal", "lr")))
    return rates


def _text_groups(spec: Spec, given: Given) -> list[tuple[float, str]]:
    """(rate, optimizer key) of each text-encoder group, as runtime/optim.py param_groups builds them: the
    first encoder's group at text_encoder_lr, the second's own at text_encoder_2_lr where that differs
    (else it joins the first's), the third's (SD3's T5-XXL) own at text_encoder_3_lr where that differs from
    the second's group (else it joins it). The family decides which encoders there are and which trains
    (CLIP by train.text_encoder / text_encoder_2, T5-XXL by train.t5; an idle one, train.text_encoder_idle /
    t5_idle, is in no group). With family = "auto" (`dbspec check`; the compiler runs the rule again with
    the detected family) only what every family agrees on: CLIP's group at text_encoder_lr, and T5-XXL's
    (Chroma's first, Flux's second, SD3's third encoder) where neither text_encoder_2_lr nor
    text_encoder_3_lr is given, at text_encoder_lr too."""
    o, t = spec.optimizer, spec.train
    family = FAMILIES.get(spec.model.family)
    if family is None:
        other = given(("optimizer", "text_encoder_2_lr")) or given(("optimizer", "text_encoder_3_lr"))
        return [(o.text_encoder_lr, "text_encoder_lr")] if t.text_encoder or (t.t5 and not other) else []
    t5 = {e.component for e in family.text_encoders if e.tokenizer_class.startswith("T5")}
    trains = [
        (t.t5 and family.t5_lora)
        if e.component in t5
        else e.trainable and text_encoder_trains(spec, e.component)
        for e in family.text_encoders
    ]
    own = len(trains) > 1 and trains[1] and o.text_encoder_2_lr != o.text_encoder_lr
    shared = o.text_encoder_2_lr if own else o.text_encoder_lr
    third_own = len(trains) > 2 and trains[2] and o.text_encoder_3_lr != shared
    groups = []
    if (
        trains[0]
        or (len(trains) > 1 and trains[1] and not own)
        or (len(trains) > 2 and trains[2] and not (own or third_own))
    ):
        groups.append((o.text_encoder_lr, "text_encoder_lr"))
    if own:
        groups.append((o.text_encoder_2_lr, "text_encoder_2_lr"))
    if third_own:
        groups.append((o.text_encoder_3_lr, "text_encoder_3_lr"))
    return groups


def _odd_rate(rates: list[tuple[float, tuple]], given: Given) -> tuple[tuple, str]:
    """The key path of the first group whose positive rate differs from the first positive one, as the user
    wrote it (_written_rate), and a note naming the derived key it stands for ("" when it is the same)."""
    positive = [(r, w) for r, w in rates if r]
    odd = next((w for r, w in positive if r != positive[0][0]), ("optimizer", "text_encoder_lr"))
    written = _written_rate(odd, given)
    if written == odd:
        return odd, ""
    return written, f"; the odd rate is `{dotted(odd)}`, not set, which takes `{dotted(written)}`'s value"


_DERIVED_FROM = re.compile(r"same as `(\w+)`")


def _written_rate(path: tuple, given: Given) -> tuple:
    """The optimizer rate the user wrote for `path`: a rate not given takes the one its field's `derived`
    names (SD3's text_encoder_3_lr: text_encoder_2_lr, that one text_encoder_lr, that one lr), followed to
    the first given one (else the last of the chain)."""
    fields = attrs.fields_dict(Optimizer)
    while len(path) == 2 and path[0] == "optimizer" and path[1] in fields and not given(path):
        found = _DERIVED_FROM.match(fields[path[1]].metadata["derived"])
        if found is None:
            break
        path = ("optimizer", found.group(1))
    return path


@rule("spec")
def dadapt_group_rates(spec: Spec, given: Given) -> Iterator[Hit]:
    kind = spec.optimizer.kind
    pairs = _group_rates(spec, given)
    rates = [r for r, _ in pairs]
    if kind not in (*DADAPT_KINDS, "prodigy") or len(set(rates)) < 2 or spec.optimizer.split > 1:
        return  # optimizer.split: a new optimizer where the rate changes, each holds one rate (kohya alike)
    shown = ", ".join(f"{r:g}" for r in rates)
    odd, derived = _odd_rate(pairs, given)
    why = f"text encoder rates, LoRA+ ratio, a block's lr / lr_scale or pivotal.lr{derived}"
    if kind == "prodigy":
        if len({r for r in rates if r}) > 1:  # prodigyopt allows groups at rate 0 beside one common rate
            yield _err(
                "DBS274",
                odd,
                "prodigyopt's Prodigy refuses parameter groups with different learning rates (it raises "
                f"RuntimeError at the first step); the groups here have {shown} ({why})",
                "give the text encoder and the blocks the same lr, or set optimizer.split = 2 or more (one "
                "optimizer per rate, as kohya's fused_optimizer_groups)",
            )
        return
    if kind in _DADAPT_ONE_RATE and len({r for r in rates if r}) < 2:
        return  # dadaptation allows groups at rate 0 beside one common rate (optimizer.lr = 0: see DBS200)
    if kind in _DADAPT_ONE_RATE:
        yield _err(
            "DBS274",
            odd,
            f"{kind} refuses parameter groups with different learning rates (dadaptation raises at the first "
            f"step); the groups here have {shown} ({why})",
            "give the text encoder and the blocks the same lr and turn LoRA+ off, or use dadapt_adan / "
            "dadapt_adagrad",
        )
    else:
        yield _warn(
            "DBS274",
            odd,
            f"{kind} steps every parameter group at d x the first group's rate ({rates[0]:g}); the other "
            f"rates ({shown}) have no effect (kohya warns the same)",
            "give the text encoder and the blocks the same lr",
        )


@rule("spec")
def adafactor_relative_step_schedule(spec: Spec, given: Given) -> Iterator[Hit]:
    o, s = spec.optimizer, spec.schedule
    if o.kind != "adafactor":
        return
    if o.warmup_init and not o.relative_step:
        yield _err(
            "DBS272",
            ("optimizer", "warmup_init"),
            "optimizer.warmup_init = true needs relative_step = true (it warms up the relative step size); "
            "relative_step is false",
            "set relative_step = true (kohya turns it on for warmup_init)",
        )
    if o.relative_step and s.lr_schedule != "constant":
        yield _err(
            "DBS272",
            ("schedule", "lr_schedule"),
            "with optimizer.relative_step = true Adafactor computes the LR itself (kohya replaces the "
            'schedule by its adafactor scheduler); schedule.lr_schedule must be "constant", found '
            f'"{s.lr_schedule}"',
            "remove schedule.lr_schedule, or set relative_step = false",
        )
    if o.relative_step and s.warmup_steps:
        yield _err(
            "DBS272",
            ("schedule", "warmup_steps"),
            "with optimizer.relative_step = true there is no LR schedule to warm up (kohya raises "
            f"`adafactor does not require num_warmup_steps`); found warmup_steps = {s.warmup_steps}",
            "remove warmup_steps, or use warmup_init = true for Adafactor's own warm-up",
        )


@rule("spec")
def base_prior_needs_denoiser(spec: Spec, given: Given) -> Iterator[Hit]:
    # The base-model prior compares the trained denoiser with its base (adapters off, or a frozen copy). With
    # a frozen denoiser only the text encoder moves, and its base would have to be kept: not supported.
    if spec.loss.prior == "base_model" and not spec.train.denoiser and any_text_encoder_trains(spec):
        yield _err(
            "DBS226",
            ("loss", "prior"),
            'loss.prior = "base_model" needs train.denoiser = true; found '
            "train.denoiser = false with train.text_encoder = true",
            codes.help("DBS226"),
        )


@rule("spec")
def preserve_output_needs_denoiser_adapter(spec: Spec, given: Given) -> Iterator[Hit]:
    """A dataset's output preservation targets the base model's prediction with the adapter switched off: it
    needs an adapter to switch off, and a dataset that trains; with the adapter on the text encoder only the
    target is the prediction itself (DBS609: zero loss counted in the batch mean, kohya's with
    --network_train_text_encoder_only)."""
    if not any(d.preserve_output for d in spec.datasets):
        return
    adapter = isinstance(spec.adapter, LowRankAdapter)
    lacks = "" if adapter else "no [adapter] (a full fine-tune has no adapter to switch off)"
    for i, d in enumerate(spec.datasets):
        if not d.preserve_output:
            continue
        path = ("datasets", i, "preserve_output")
        if adapter and not spec.train.denoiser and d.role != "eval":
            # kohya's diff_output_preservation with --network_train_text_encoder_only (runtime/step.py)
            yield _warn(
                "DBS609",
                path,
                f"dataset `{d.name}`: preserve_output = true with train.denoiser = false (the adapter is on "
                "the text encoder only): its target is the denoiser's own prediction on the same captions, "
                "so its samples add zero loss and gradient but count in the batch mean",
                codes.help("DBS609"),
            )
        if lacks:
            yield _err(
                "DBS299",
                path,
                f"dataset `{d.name}`: preserve_output = true needs an [adapter] that trains the denoiser; "
                f"found {lacks}",
                codes.help("DBS299"),
            )
        elif d.role == "eval":
            yield _err(
                "DBS299",
                path,
                f'dataset `{d.name}`: preserve_output = true on a role = "eval" dataset, which never trains',
                'remove preserve_output, or give the dataset role = "instance"',
            )


# --- kohya's noise and loss options -------------------------------------------------------------------------
@rule("spec")
def loss_weights_fit_prediction(spec: Spec, given: Given) -> Iterator[Hit]:
    """Loss weights that the model's prediction type makes meaningless (kohya refuses the first two). Silent
    for prediction = "auto": the compiler runs it again on the spec with the detected prediction."""
    loss, prediction = spec.loss, spec.model.prediction
    if prediction in ("auto", "flow_matching"):  # flow matching: loss_fits_objective
        return
    if loss.scale_v_pred_loss_like_noise_pred and prediction != "v_prediction":
        yield _err(
            "DBS235",
            ("loss", "scale_v_pred_loss_like_noise_pred"),
            "loss.scale_v_pred_loss_like_noise_pred needs a v_prediction model; the model "
            f"predicts {prediction}",
            "remove it: an epsilon loss already has this scale",
        )
    if loss.v_pred_like_loss > 0 and prediction == "v_prediction":
        yield _err(
            "DBS235",
            ("loss", "v_pred_like_loss"),
            f"loss.v_pred_like_loss ({loss.v_pred_like_loss:g}) is for epsilon models; the model predicts "
            "v_prediction",
            "remove it: the loss already is a v-prediction loss",
        )
    if prediction == "epsilon" and loss.zero_terminal_snr and loss.max_timestep == 1000:
        for key, on in (
            ("debiased_estimation", loss.debiased_estimation),
            ("v_pred_like_loss", loss.v_pred_like_loss),
        ):
            if on:
                yield _err(
                    "DBS236",
                    ("loss", key),
                    f"loss.{key} divides by the SNR, which is 0 at the last timestep with zero_terminal_snr "
                    "on an epsilon model (an infinite loss)",
                    "use a v_prediction model, or loss.max_timestep = 999",
                )


# --- flow matching (SD3) ------------------------------------------------------------------------------------
_DDPM_ONLY = (  # (loss option, whether the spec turns it on)
    ("min_snr_gamma", lambda loss: loss.min_snr_gamma > 0),
    ("zero_terminal_snr", lambda loss: loss.zero_terminal_snr),
    ("debiased_estimation", lambda loss: loss.debiased_estimation),
    ("scale_v_pred_loss_like_noise_pred", lambda loss: loss.scale_v_pred_loss_like_noise_pred),
    ("v_pred_like_loss", lambda loss: loss.v_pred_like_loss > 0),
    ("noise_offset", lambda loss: loss.noise_offset > 0),
    ("min_timestep", lambda loss: loss.min_timestep != 0),
    ("max_timestep", lambda loss: loss.max_timestep != 1000),
    ("kind", lambda loss: loss.kind in ("pseudo_huber", "smooth_l1")),
)
FLOW_OPTIONS = (
    "flow_timesteps",
    "flow_logit_mean",
    "flow_logit_std",
    "flow_mode_scale",
    "flow_weighting",
    "flow_shift",
    "flow_guidance",
    "flow_prediction",
    "flow_dynamic_shift",
    "flow_draw",
)


@rule("spec")
def loss_fits_objective(spec: Spec, given: Given) -> Iterator[Hit]:
    """DDPM-only options on a flow-matching model (errors), flow options on a DDPM model (inert: warnings).
    Silent for prediction = "auto": the compiler runs it again with the detected prediction."""
    loss, prediction = spec.loss, spec.model.prediction
    if prediction == "auto":
        return
    if prediction == "flow_matching":
        bounded = loss.flow_draw == "floored"  # the floored draw reads min_timestep / max_timestep
        for key, on in _DDPM_ONLY:
            if on(loss) and not (bounded and key in ("min_timestep", "max_timestep")):
                yield _err(
                    "DBS230",
                    ("loss", key),
                    f"loss.{key} = {_shown(getattr(loss, key))} reads the DDPM noise schedule; the model is "
                    "trained by flow matching",
                    codes.help("DBS230"),
                )
        rollout = spec.scheduled_sampling
        if rollout.max_step_offset and rollout.probability:
            yield _err(
                "DBS230",
                ("scheduled_sampling", "max_step_offset"),
                f"scheduled_sampling.max_step_offset = {rollout.max_step_offset} rolls out with the DDPM "
                "samplers and targets; the model is trained by flow matching",
                "set scheduled_sampling.max_step_offset = 0",
            )
        return
    for key in FLOW_OPTIONS:
        if given(("loss", key)):
            yield _warn(
                "DBS231",
                ("loss", key),
                f"loss.{key} only applies to flow-matching models; this one predicts {prediction}",
                codes.help("DBS231"),
            )


@rule("spec")
def flow_guidance_without_embedding(spec: Spec, given: Given) -> Iterator[Hit]:
    """loss.flow_guidance on a flow-matching family without a guidance embedding (SD3): inert. Families
    spelled out only; with family = "auto" the plan shows the guidance settled to 0."""
    family = spec.model.family
    if (
        not given(("loss", "flow_guidance"))
        or family == "auto"
        or spec.model.prediction
        not in (
            "flow_matching",
            "auto",
        )
    ):
        return
    fs = family_spec(family)
    if fs.objective == "flow" and not fs.train_guidance and not fs.approximator_guidance:
        yield _warn(
            "DBS232",
            ("loss", "flow_guidance"),
            f"loss.flow_guidance = {spec.loss.flow_guidance:g} is inert: {family_spec(family).title} has no "
            "guidance embedding (only guidance-distilled models such as Flux.1 dev read it)",
            codes.help("DBS232"),
        )


@rule("spec")
def flow_shift_once(spec: Spec, given: Given) -> Iterator[Hit]:
    """loss.flow_dynamic_shift shifts σ by the image size; a fixed loss.flow_shift beside it would shift
    twice, and its continuous draw is not the floored one (DBS239)."""
    loss = spec.loss
    if loss.flow_dynamic_shift and loss.flow_shift:
        yield _err(
            "DBS239",
            ("loss", "flow_shift"),
            f"loss.flow_shift = {loss.flow_shift:g} and loss.flow_dynamic_shift = true both shift σ (a fixed "
            "shift and the image-size shift); one applies",
            codes.help("DBS239"),
        )
    if loss.flow_dynamic_shift and loss.flow_draw == "floored":
        yield _err(
            "DBS239",
            ("loss", "flow_draw"),
            'loss.flow_draw = "floored" with loss.flow_dynamic_shift = true: the image-size shift draws σ '
            "continuously, the floored draw takes integer timesteps of a fixed shift",
            "remove loss.flow_draw (or set loss.flow_dynamic_shift = false for the floored draw)",
        )


@rule("spec")
def flow_floored_weight_finite(spec: Spec, given: Given) -> Iterator[Hit]:
    """loss.flow_draw = "floored" can draw timestep 0 (σ = 0) unless loss.min_timestep > 0 (reversed bounds
    stop above max_timestep, at least 1); the sigma_sqrt weight σ⁻² is infinite there (DBS236; kohya's
    sd3_train_network.py gets a NaN loss then)."""
    loss = spec.loss
    if loss.flow_draw == "floored" and loss.flow_weighting == "sigma_sqrt" and loss.min_timestep == 0:
        yield _err(
            "DBS236",
            ("loss", "flow_weighting"),
            'loss.flow_weighting = "sigma_sqrt" weights by σ⁻², infinite at timestep 0 (σ = 0), which '
            'loss.flow_draw = "floored" draws while loss.min_timestep is 0',
            'set loss.min_timestep = 1; with flow_prediction "preconditioned" and the mse loss, '
            'flow_prediction = "raw" with flow_weighting = "none" is the same loss',
        )


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else f"{value:g}"


@rule("spec")
def noise_options_fit(spec: Spec, given: Given) -> Iterator[Hit]:
    loss = spec.loss
    if loss.adaptive_noise_scale and loss.noise_offset == 0:
        yield _err(
            "DBS237",
            ("loss", "adaptive_noise_scale"),
            f"loss.adaptive_noise_scale ({loss.adaptive_noise_scale:g}) adds to the noise offset, but "
            "loss.noise_offset is 0",
            "set loss.noise_offset (0.05-0.1 typical), or remove adaptive_noise_scale",
        )
    # the floored draw takes reversed bounds as kohya's SD3 draw does: t = floor(shift(u) (max - min) + min)
    if loss.min_timestep > loss.max_timestep and loss.flow_draw != "floored":
        yield _err(
            "DBS237",
            ("loss", "min_timestep"),
            f"loss.min_timestep ({loss.min_timestep}) is above loss.max_timestep ({loss.max_timestep})",
            "min_timestep must be at most max_timestep (equal trains one timestep; a flow model's "
            'flow_draw = "floored" takes them reversed)',
        )


_SWITCHED = (  # (option, what turns it on, the condition in words)
    (
        "huber_schedule",
        lambda loss: loss.kind in ("pseudo_huber", "smooth_l1"),
        'loss.kind is "pseudo_huber" or "smooth_l1"',
    ),
    (
        "huber_c",
        lambda loss: loss.kind in ("pseudo_huber", "smooth_l1"),
        'loss.kind is "pseudo_huber" or "smooth_l1"',
    ),
    (
        "huber_scale",
        lambda loss: loss.kind in ("pseudo_huber", "smooth_l1") and loss.huber_schedule != "snr",
        'loss.kind is "pseudo_huber" or "smooth_l1" with huber_schedule "constant" or "exponential"',
    ),
    ("noise_offset_random_strength", lambda loss: loss.noise_offset > 0, "loss.noise_offset is above 0"),
    (
        "multires_noise_discount",
        lambda loss: loss.multires_noise_iterations > 0,
        "loss.multires_noise_iterations is above 0",
    ),
    (
        "ip_noise_gamma_random_strength",
        lambda loss: loss.ip_noise_gamma > 0,
        "loss.ip_noise_gamma is above 0",
    ),
)


@rule("spec")
def inert_noise_options(spec: Spec, given: Given) -> Iterator[Hit]:
    for key, active, condition in _SWITCHED:
        if given(("loss", key)) and not active(spec.loss):
            yield _warn("DBS216", ("loss", key), f"loss.{key} has no effect unless {condition}")
    if given(("loss", "prior_reduction")) and not _class_indices(spec):
        yield _warn(
            "DBS216",
            ("loss", "prior_reduction"),
            'loss.prior_reduction has no effect without a dataset with role = "class"',
        )


# --- path rules: they also need the spec file's location ----------------------------------------------------
# Caption processing: kohya cuts a caption into tags only for these three options.
def _cuts_tags(d) -> bool:
    return d.shuffle_caption or d.caption_tag_dropout_rate > 0 or d.token_warmup_step > 0


@rule("spec")
def caption_separator_usable(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        if d.caption_separator == "" and _cuts_tags(d):
            yield _err(
                "DBS240",
                ("datasets", i, "caption_separator"),
                f'datasets[{i}].caption_separator is "": dataset `{d.name}` cuts captions into tags '
                "(shuffle_caption, caption_tag_dropout_rate or token_warmup_step) and needs a separator",
                codes.help("DBS240"),
            )


@rule("spec")
def caption_options_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    for i, d in enumerate(spec.datasets):
        at = ("datasets", i)
        if not _cuts_tags(d):
            if d.keep_tokens_separator:
                yield _warn(
                    "DBS241",
                    (*at, "keep_tokens_separator"),
                    f'dataset `{d.name}`: keep_tokens_separator "{d.keep_tokens_separator}" stays in the '
                    "caption text: nothing shuffles, drops or warms up tags",
                    codes.help("DBS241"),
                )
            for key in ("keep_tokens", "caption_separator"):
                # with `metadata` the separator also joins each caption and its tags
                joins = d.secondary_separator or d.metadata
                if given((*at, key)) and not (key == "caption_separator" and joins):
                    yield _warn(
                        "DBS216",
                        (*at, key),
                        f"datasets[{i}].{key} has no effect: dataset `{d.name}` does not cut captions into "
                        "tags (shuffle_caption, caption_tag_dropout_rate and token_warmup_step are off)",
                    )
        if given((*at, "token_warmup_min")) and d.token_warmup_step == 0:
            yield _warn(
                "DBS216",
                (*at, "token_warmup_min"),
                f"datasets[{i}].token_warmup_min has no effect while token_warmup_step is 0",
            )
        for key in ("caption_dropout_rate", "caption_dropout_every_n_epochs"):
            if getattr(d, key) == 1:
                yield _warn(
                    "DBS242",
                    (*at, key),
                    f"dataset `{d.name}`: {key} = 1 trains every sample with an empty caption",
                    "lower it (0.05-0.1 is common for caption_dropout_rate)",
                )


@rule("spec")
def missing_captions_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    """datasets.missing_captions where no caption file can be missing: the captions come from `prompt` or
    the file names, from the metadata file, or `prompt` stands in for every missing caption file
    (compiler/datasets.py _read_caption; kohya_folders: a sub-folder's class tokens may be empty, so it
    can apply there)."""
    for i, d in enumerate(spec.datasets):
        if not given(("datasets", i, "missing_captions")):
            continue
        why = ""
        if d.metadata:
            why = f"its captions come from the metadata file `{d.metadata}`"
        elif d.captions != "textfile":
            why = f'captions = "{d.captions}" reads no caption file'
        elif d.prompt and d.layout == "folder":
            why = f'`prompt` ("{d.prompt}") is the caption of every image without a caption file'
        if why:
            yield _warn(
                "DBS614",
                ("datasets", i, "missing_captions"),
                f'datasets[{i}].missing_captions = "{d.missing_captions}" has no effect in dataset '
                f"`{d.name}`: {why}",
                codes.help("DBS614"),
            )


@rule("paths")
def output_overlaps_inputs(spec: Spec, spec_file: Path) -> Iterator[Hit]:
    """output.dir is a folder of its own: it neither holds nor sits inside a dataset, mask or cache folder,
    nor holds the spec. The run writes there and --overwrite moves the whole folder aside, inputs included."""
    base = spec_file.resolve().parent
    out = _resolved(base, spec.output.dir)
    overlaps = [
        f'{_relation(out, _resolved(base, value))} {key} "{value}"'
        for key, value in _input_folders(spec)
        if _overlap(out, _resolved(base, value))
    ]
    if out in spec_file.resolve().parents:
        overlaps.insert(0, f"contains the spec file {spec_file.name}")
    if overlaps:
        yield _err(
            "DBS225",
            ("output", "dir"),
            f'output.dir "{spec.output.dir}" overlaps the run\'s inputs: it ' + ", ".join(overlaps),
            "dbspec writes checkpoints, samples and logs there and --overwrite moves the whole folder aside; "
            'use a folder of its own, e.g. dir = "output" beside the spec',
        )


def _input_folders(spec: Spec) -> Iterator[tuple[str, str]]:
    for i, d in enumerate(spec.datasets):
        yield f"datasets[{i}].path", d.path
        if d.masks:
            yield f"datasets[{i}].masks", d.masks
        if d.metadata:  # a file: the output folder must not hold it
            yield f"datasets[{i}].metadata", d.metadata
    yield "cache.dir", spec.cache.dir


def _resolved(base: Path, value: str) -> Path:
    """Like the compiler's Context.resolve, with symlinks followed so that two spellings of a folder match."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # `~user` of an unknown user: compared as written
        path = Path(value)
    path = path if path.is_absolute() else base / path
    try:
        return path.resolve()
    except (
        OSError,
        ValueError,
    ):  # a NUL byte, a loop of links: other checks name the path; compare its spelling
        return Path(os.path.normpath(path))


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _relation(out: Path, other: Path) -> str:
    return "is" if out == other else "contains" if out in other.parents else "is inside"


@rule("spec")
def scheduled_sampling_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    """Rollout options without rollout: max_step_offset 0 (or probability 0) turns scheduled sampling off."""
    s = spec.scheduled_sampling
    if s.max_step_offset and s.probability:
        return
    why = "max_step_offset is 0" if not s.max_step_offset else "probability is 0"
    for key in ("probability", "ramp_steps", "sampler"):
        if given(("scheduled_sampling", key)) and not (key == "probability" and not s.probability):
            yield _warn(
                "DBS297",
                ("scheduled_sampling", key),
                f"scheduled_sampling.{key} has no effect: scheduled_sampling.{why} (rollout is off)",
                "set scheduled_sampling.max_step_offset (5-10 is common) and probability above 0, "
                "or remove this key",
            )


@rule("plan")
def scheduled_sampling_ramp_beyond_run(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    s = spec.scheduled_sampling
    if s.max_step_offset and s.probability and s.ramp_steps >= total_steps:
        yield _warn(
            "DBS298",
            ("scheduled_sampling", "ramp_steps"),
            f"scheduled_sampling.ramp_steps ({s.ramp_steps}) is not below the run's {total_steps} steps: "
            f"the rollout probability never reaches {s.probability:g}",
            "use a ramp shorter than the run (a tenth to a half of it), or 0 for no ramp",
        )


MANY_TOKENS = 3  # an identifier of this many tokens or more is several rare words to the text encoder


@rule("paths")
def identifier_tokens(spec: Spec, spec_file: Path) -> Iterator[Hit]:
    """An instance prompt's identifier (compiler/identifier.py) that many tokens spell, or that the model
    already knows well (a common word, or a known strong prior like `sks`). The token count is not checked
    for built-in tiny models: their toy vocabulary (30 merges) spells every real identifier in pieces."""
    from dbspec.builtin import is_builtin
    from dbspec.compiler.common_words import COMMON_WORDS, STRONG_PRIORS
    from dbspec.compiler.identifier import instance_identifiers
    from dbspec.compiler.tokens import TokenizerError, model_tokenizers

    # One source of truth: `[evaluation] identifier` when given, and a trained pivotal token is no prior to
    # warn about (its embedding is new and learns the subject).
    found = [
        (i, w) for i, w in instance_identifiers(spec, spec.evaluation.identifier) if not _pivotal(spec, w)
    ]
    if not found:
        return
    try:
        tokenizers = model_tokenizers(
            spec.model.base, spec_file.resolve().parent, revision=spec.model.revision
        )
    except TokenizerError:  # no tokenizer files to read here; the model pass reports what is missing
        return
    for i, word in found:
        at, base = ("datasets", i, "prompt"), spec.model.base
        split = {t.name: [token.removesuffix("</w>") for token in t.word_tokens(word)] for t in tokenizers}
        most = max((len(tokens) for tokens in split.values()), default=0)  # Chroma: no CLIP tokenizer
        if most >= MANY_TOKENS and not is_builtin(base):
            shown = "; ".join(f"{name}: {' + '.join(tokens)}" for name, tokens in split.items())
            yield _warn(
                "DBS295",
                at,
                f'dataset `{spec.datasets[i].name}`: identifier "{word}" is {most} tokens for {base} '
                f"({shown})",
                f"`dbspec tokens {base}` lists rare words that are one token in every tokenizer of the model",
            )
        if word.lower() in STRONG_PRIORS or word.lower() in COMMON_WORDS:
            meaning = STRONG_PRIORS.get(word.lower(), "a common word the model already knows")
            yield _warn(
                "DBS296",
                at,
                f'dataset `{spec.datasets[i].name}`: identifier "{word}" has a strong prior: {meaning}',
                f"pick a rare token (`dbspec tokens {base}`), or a descriptive word on purpose",
            )


def _pivotal(spec: Spec, word: str) -> bool:
    """Whether an identifier word is (part of) a pivotal token the run adds and trains."""
    from dbspec.compiler.identifier import words

    return any(word.lower() == t.lower() or word.lower() in words(t) for t in spec.pivotal.tokens)


# --- pivotal tuning (DBS280-DBS284) -------------------------------------------------------------------------
@rule("spec")
def pivotal_with_text_encoder(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.pivotal.tokens and any_text_encoder_trains(spec):
        key = "text_encoder" if spec.train.text_encoder else "text_encoder_2"
        yield _err(
            "DBS280",
            ("train", key),
            f"train.{key} trains the text encoder while pivotal.tokens {list(spec.pivotal.tokens)} train new "
            "rows of its embedding matrix",
            codes.help("DBS280"),
        )


@rule("spec")
def pivotal_tokens_valid(spec: Spec, given: Given) -> Iterator[Hit]:
    from dbspec.compiler.pivotal import added_tokens

    vectors = spec.pivotal.vectors
    if vectors > attrs.fields(Pivotal).vectors.metadata["maximum"]:
        return  # out of range (DBS105 says so): naming that many vectors per token could exhaust memory
    seen: set[str] = set()
    for i, token in enumerate(spec.pivotal.tokens):
        why = ""
        if not token.strip():
            why = "is empty"
        elif any(c.isspace() for c in token):
            why = "holds whitespace"
        elif seen & set(added_tokens(token, vectors)):
            why = "repeats another token (or one of its `_N` vector names)"
        seen.update(added_tokens(token, vectors))
        if why:
            yield _err(
                "DBS281",
                ("pivotal", "tokens", i),
                f"pivotal.tokens[{i}] {token!r} {why}",
                'write each new token once, as one word, e.g. "<ohwx>"',
            )


@rule("spec")
def pivotal_token_unused(spec: Spec, given: Given) -> Iterator[Hit]:
    from dbspec.compiler.pivotal import mentions_token

    prompts = [d.prompt for d in spec.datasets if d.role == "instance"]
    if not prompts or not all(prompts):
        return  # captions from files: not known before the datasets are read
    for i, token in enumerate(spec.pivotal.tokens):
        if token.strip() and not any(mentions_token(p, [token]) for p in prompts):
            yield _warn(
                "DBS282",
                ("pivotal", "tokens", i),
                f"pivotal token {token!r} is in no instance prompt ({prompts[0]!r}): its embedding never "
                "trains",
                f'write it in the instance prompts, e.g. "a photo of {token} dog"',
            )


@rule("spec")
def pivotal_options_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.pivotal.tokens:
        return
    for key in ("vectors", "init_word", "lr", "stop_step"):
        if given(("pivotal", key)):
            yield _warn(
                "DBS284",
                ("pivotal", key),
                f"pivotal.{key} has no effect: pivotal.tokens is empty (pivotal tuning is off)",
                codes.help("DBS284"),
            )


@rule("plan")
def pivotal_stop_beyond_run(spec: Spec, given: Given, total_steps: int) -> Iterator[Hit]:
    p = spec.pivotal
    if p.tokens and p.stop_step and p.stop_step >= total_steps:
        yield _warn(
            "DBS283",
            ("pivotal", "stop_step"),
            f"pivotal.stop_step ({p.stop_step}) is not below the run's {total_steps} steps: the embeddings "
            "train the whole run",
            codes.help("DBS283"),
        )


# --- environment rules: they need the target ----------------------------------------------------------------
@rule("environment")
def adamw8bit_needs_cuda(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    # bitsandbytes >= 0.45 has a CPU backend: AdamW8bit runs there (tests/runtime/test_quantize_backends.py),
    # and the paged ones too, unpaged (tests/runtime/test_paged_optimizers.py).
    kind = spec.optimizer.kind
    if kind in BNB_OPTIMIZER_KINDS and env.device not in ("cuda", "cpu"):
        yield _err(
            "DBS343",
            ("optimizer", "kind"),
            f'optimizer.kind = "{kind}" needs CUDA or the CPU (bitsandbytes); the target is {env.device}',
            'use "adamw" here, or plan for a GPU with --target cuda:24GB',
        )


@rule("environment")
def paged_optimizer_off_cuda(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    # bitsandbytes 0.50 on the CPU: "Paged optimizers are not supported on CPU. Falling back to non-paged
    # optimizer behavior." (its Optimizer8bit.get_state_buffer); the updates equal the unpaged class's bit for
    # bit (tests/runtime/test_paged_optimizers.py).
    kind = spec.optimizer.kind
    if kind.startswith("paged_") and env.device == "cpu":
        unpaged = {
            "paged_adamw": "AdamW (32-bit state)",
            "paged_adamw8bit": "AdamW8bit",
            "paged_ademamix": "AdEMAMix (32-bit state)",
            "paged_ademamix8bit": "AdEMAMix8bit",
            "paged_lion": "Lion (32-bit state)",
            "paged_lion8bit": "Lion8bit",
        }[kind]
        yield _warn(
            "DBS314",
            ("optimizer", "kind"),
            f'optimizer.kind = "{kind}" pages its state only on CUDA: on the CPU bitsandbytes runs its '
            f"unpaged {unpaged}, the same updates with the state kept in memory",
            codes.help("DBS314"),
        )


# --- low-precision trained weights, kohya's full_bf16 / full_fp16 (DBS246, DBS249, DBS259, DBS355) ----------
# Optimizers whose update of one parameter reads no other parameter: the stochastic-rounding step runs them
# one
# parameter at a time (an fp32 copy of that tensor alone). Prodigy's step size is estimated across all of
# them.
PER_PARAMETER_OPTIMIZERS = (
    "adamw",
    "adamw8bit",
    "paged_adamw",
    "paged_adamw8bit",
    "adafactor",
    "sgd",
    "radam",
    "lion",
    "lion8bit",
    "paged_lion",
    "paged_lion8bit",
    "came",
)


@rule("spec")
def low_precision_weights_settings(spec: Spec, given: Given) -> Iterator[Hit]:
    p = spec.precision
    if p.weights == "fp16" and p.mixed in ("no", "bf16"):
        yield _err(
            "DBS259",
            ("precision", "mixed"),
            f'precision.weights = "fp16" needs mixed = "fp16" (or "auto"); mixed is "{p.mixed}"',
            'set mixed = "fp16" (kohya requires mixed_precision fp16 with full_fp16 too): fp16 gradients '
            "need its grad scaler",
        )
    if p.weights == "fp16" and p.weights_rounding != "nearest":
        yield _err(
            "DBS259",
            ("precision", "weights_rounding"),
            f'precision.weights = "fp16" is stepped by the optimizer directly (round-to-nearest, kohya\'s '
            f'full_fp16); weights_rounding is "{p.weights_rounding}"'
            + ("" if given(("precision", "weights_rounding")) else " (the default, for bf16 weights)"),
            'set weights_rounding = "nearest" (stochastic rounding is for bf16 weights only), or use '
            'weights = "bf16" with stochastic rounding to keep small updates',
        )
    if p.weights == "bf16" and p.mixed in ("no", "fp16"):
        yield _err(
            "DBS259",
            ("precision", "mixed"),
            f'precision.weights = "bf16" needs mixed = "bf16" (or "auto"); mixed is "{p.mixed}"',
            'set mixed = "bf16" (kohya requires mixed_precision bf16 with full_bf16 too)',
        )
    stochastic = p.weights_rounding == "stochastic"
    if p.weights == "bf16" and stochastic and spec.optimizer.kind not in PER_PARAMETER_OPTIMIZERS:
        yield _err(
            "DBS259",
            ("optimizer", "kind"),
            f'precision.weights = "bf16" steps each parameter on its own (stochastic rounding); '
            f'optimizer.kind "{spec.optimizer.kind}" estimates its step across all parameters',
            f'use one of {", ".join(PER_PARAMETER_OPTIMIZERS)}, weights_rounding = "nearest" (kohya\'s '
            "full_bf16: the optimizer steps the bf16 weights itself), or fp32 weights",
        )


# torch's AdamW, schedule-free AdamW and pytorch_optimizer's CAME create fp16 moments for fp16 parameters: a
# second moment under fp16's smallest value (6e-8, a gradient under ~8e-3) is 0 and eps (1e-8; CAME's eps1
# 1e-30) rounds to 0, so the update divides by 0 (CAME: inf/NaN weights within 5 steps of gradients ~1e-3).
FP16_STATE_BREAKS = ("adamw", "adamw_schedulefree", "pytorch_optimizer_came")


@rule("spec")
def fp16_weights_optimizer(spec: Spec, given: Given) -> Iterator[Hit]:
    kind = spec.optimizer.kind
    if spec.precision.weights == "fp16" and kind in FP16_STATE_BREAKS:
        yield _err(
            "DBS249",
            ("optimizer", "kind"),
            f'precision.weights = "fp16" with optimizer.kind "{kind}": it keeps its moments in fp16, where '
            "the second moment of a gradient under ~8e-3 and eps (1e-8) are 0, so the weights turn inf/NaN "
            "in a step" + (" (CAME's eps1, 1e-30, likewise)" if kind == "pytorch_optimizer_came" else ""),
            'use kind = "adamw8bit" (kohya\'s usual choice with full_fp16), "paged_adamw", "adafactor" or '
            '"came" (fp32 or 8-bit state), or weights = "bf16"',
        )


@rule("spec")
def weights_rounding_without_bf16_weights(spec: Spec, given: Given) -> Iterator[Hit]:
    """precision.weights_rounding says how bf16 or fp16 weights are updated; fp32 ones it leaves alone."""
    if given(("precision", "weights_rounding")) and spec.precision.weights == "fp32":
        yield _warn(
            "DBS246",
            ("precision", "weights_rounding"),
            f'precision.weights_rounding = "{spec.precision.weights_rounding}" has no effect: the trained '
            f"weights are {spec.precision.weights} (precision.weights), not bf16 or fp16",
            'remove weights_rounding, or set precision.weights = "bf16" (or "fp16")',
        )


@rule("environment")
def bf16_weights_need_bf16(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    if spec.precision.weights == "bf16" and not env.bf16:
        yield _err(
            "DBS355",
            ("precision", "weights"),
            f'precision.weights = "bf16" but the target ({env.description or env.device}) does not support '
            "bf16",
            'use weights = "fp32" (and LoRA or gradient checkpointing to save memory)',
        )


# --- evaluation metrics and the best checkpoint (DBS275-DBS279) -------------------------------------------
_SAMPLED_METRICS = ("clip_t", "clip_i", "dino")


def _evaluation_images(spec: Spec) -> bool:
    """The evaluation loss has images: a holdout, or a role = "eval" dataset."""
    ev = spec.evaluation
    held = bool(ev.holdout or ev.split) or any(d.role == "eval" for d in spec.datasets)
    return held and ev.score  # evaluation.score = false: held out, never scored


@rule("spec")
def best_checkpoint_metric_runs(spec: Spec, given: Given) -> Iterator[Hit]:
    select, ev = spec.checkpoints.select, spec.evaluation
    if select == "eval_loss" and not _evaluation_images(spec):
        yield _err(
            "DBS275",
            ("checkpoints", "select"),
            'checkpoints.select = "eval_loss" but no evaluation loss runs (evaluation.holdout = 0 and no '
            'dataset has role = "eval")',
            "set evaluation.holdout to the number of instance images to hold out of training, or add a "
            'dataset with role = "eval"',
        )
    elif select in _SAMPLED_METRICS and select not in ev.metrics:
        yield _err(
            "DBS275",
            ("checkpoints", "select"),
            f"checkpoints.select = {select!r} but evaluation.metrics does not list it ({list(ev.metrics)})",
            f'add "{select}" to evaluation.metrics',
        )


@rule("spec")
def weighted_checkpoint_selection(spec: Spec, given: Given) -> Iterator[Hit]:
    """select = "weighted": some weight (DBS291), every weighted metric runs (DBS292); weights without the
    weighted rule do nothing (DBS293)."""
    c, ev = spec.checkpoints, spec.evaluation
    metrics = ("eval_loss", "clip_t", "clip_i", "dino")
    weighted = [m for m in metrics if getattr(c, f"select_weight_{m}")]
    if c.select != "weighted":
        for m in (m for m in metrics if given(("checkpoints", f"select_weight_{m}"))):
            yield _warn(
                "DBS293",
                ("checkpoints", f"select_weight_{m}"),
                f"checkpoints.select_weight_{m} does nothing: checkpoints.select is {c.select!r}, "
                'not "weighted"',
                'set checkpoints.select = "weighted", or remove the weight',
            )
        return
    if not weighted:
        yield _err(
            "DBS291",
            ("checkpoints", "select"),
            'checkpoints.select = "weighted" but every checkpoints.select_weight_* is 0',
            "give a weight to at least one metric, e.g. checkpoints.select_weight_dino = 1.0",
        )
    for m in weighted:
        runs = _evaluation_images(spec) if m == "eval_loss" else m in ev.metrics
        if not runs:
            needs = (
                'evaluation.holdout = 0 and no dataset has role = "eval"'
                if m == "eval_loss"
                else f"evaluation.metrics does not list it ({list(ev.metrics)})"
            )
            yield _err(
                "DBS292",
                ("checkpoints", f"select_weight_{m}"),
                f"checkpoints.select_weight_{m} weighs {m}, which no evaluation computes: {needs}",
                'set evaluation.holdout (or add a role = "eval" dataset)'
                if m == "eval_loss"
                else f'add "{m}" to evaluation.metrics',
            )


@rule("spec")
def evaluation_subject_words(spec: Spec, given: Given) -> Iterator[Hit]:
    from dbspec.compiler.evaluation import subject_words

    metrics = set(spec.evaluation.metrics)
    if not metrics:
        return
    identifier, class_word = subject_words(spec)
    if not identifier:
        yield _err(
            "DBS276",
            ("evaluation", "identifier"),
            f"evaluation.metrics {sorted(metrics)} need the subject's identifier word, and the dataset "
            "prompts do not settle it",
            'set evaluation.identifier (e.g. "ohwx") and evaluation.class_word (e.g. "dog")',
        )
    elif "clip_t" in metrics and not class_word:
        yield _err(
            "DBS276",
            ("evaluation", "class_word"),
            f"clip_t replaces the identifier `{identifier}` by the class word, and the dataset prompts do "
            "not settle it",
            'set evaluation.class_word (e.g. "dog")',
        )
    elif metrics & {"clip_i", "dino"} and spec.validation.prompts:
        from dbspec.compiler.evaluation import mentions

        if not any(mentions(p, identifier) for p in spec.validation.prompts):
            yield _warn(
                "DBS279",
                ("validation", "prompts"),
                f"no validation prompt contains the identifier `{identifier}`: clip_i and dino have no image "
                "of the subject to score",
                f'add a prompt such as "a photo of {identifier} {class_word or "..."}"',
            )


@rule("spec")
def evaluation_needs_prompts(spec: Spec, given: Given) -> Iterator[Hit]:
    if spec.evaluation.metrics and not spec.validation.prompts:
        yield _err(
            "DBS277",
            ("evaluation", "metrics"),
            f"evaluation.metrics {list(spec.evaluation.metrics)} score validation images, but "
            "validation.prompts is empty",
            "add validation prompts, or leave evaluation.metrics empty",
        )


@rule("spec")
def evaluation_bands_fit(spec: Spec, given: Given) -> Iterator[Hit]:
    ev = spec.evaluation
    if ev.bands > ev.timesteps:
        yield _err(
            "DBS278",
            ("evaluation", "bands"),
            f"evaluation.bands = {ev.bands} exceeds evaluation.timesteps = {ev.timesteps}",
            f"use at most {ev.timesteps} bands",
        )


# --- the runners: each runs exactly the rules of its phase --------------------------------------------------
def run_spec_rules(spec: Spec, given: Given) -> list[Hit]:
    return [hit for fn in rules_of("spec") for hit in fn(spec, given)]


def run_path_rules(spec: Spec, spec_file: Path) -> list[Hit]:
    return [hit for fn in rules_of("paths") for hit in fn(spec, spec_file)]


def run_plan_rules(spec: Spec, given: Given, total_steps: int) -> list[Hit]:
    return [hit for fn in rules_of("plan") for hit in fn(spec, given, total_steps)]


def run_environment_rules(spec: Spec, env: TargetEnv) -> list[Hit]:
    return [hit for fn in rules_of("environment") for hit in fn(spec, env)]


def steps_known(spec: Spec) -> int | None:
    """The run's step count when the spec gives it: the "plan" rules then run at check time,
    not at plan time."""
    return spec.schedule.steps or None


def check_rules(spec: Spec, given: Given, spec_file: Path) -> list[Hit]:
    """The rules `dbspec check` runs: "spec", "paths", and "plan" when the step count is already known."""
    total_steps = steps_known(spec)
    plan = run_plan_rules(spec, given, total_steps) if total_steps else []
    return run_spec_rules(spec, given) + plan + run_path_rules(spec, spec_file)


def hit_to_diagnostic(raw: RawSpec, hit: Hit) -> Diagnostic:
    """A Hit placed on the spec text: the value when the user wrote the key, else the key (or its table)."""
    span = raw.value_span(hit.path) if raw.given(hit.path) else raw.key_span(hit.path)
    return Diagnostic(
        code=hit.code,
        severity=hit.severity,
        message=hit.message,
        path=dotted(hit.path),
        span=anchor(raw, span),
        help=hit.help,
    )


# --- per-block adapters (kohya block_dims, block lr weights) -------------------------------------------
@rule("spec")
def adapter_block_patterns(spec: Spec, given: Given) -> Iterator[Hit]:
    """Each [[adapter.blocks]] (and [[adapter.text_encoder_blocks]]) pattern is a Python regular expression;
    a convolution rank in a block needs the adapter's convolutions (conv_rank > 0)."""
    import re

    adapter = spec.adapter
    for i, block in enumerate(getattr(adapter, "blocks", ())):
        try:
            re.compile(block.pattern)
        except re.error as exc:
            yield _err(
                "DBS265",
                ("adapter", "blocks", i, "pattern"),
                f"adapter.blocks[{i}].pattern `{block.pattern}` is not a regular expression: {exc}",
                "write a Python regular expression, e.g. `^down_blocks\\.0\\.`",
            )
        # Diag-OFT's: block sizes only; a full / IA^3 adapter (no conv_rank) adapts its conv_targets
        if getattr(block, "conv_rank", 0) and not getattr(adapter, "conv_rank", adapter.conv_targets):
            yield _warn(
                "DBS266",
                ("adapter", "blocks", i, "conv_rank"),
                f"adapter.blocks[{i}].conv_rank has no effect: adapter.conv_rank is 0 (no convolution "
                "adapters)",
                "set adapter.conv_rank above 0 to adapt the convolutions, or remove this key",
            )
    for i, block in enumerate(getattr(adapter, "text_encoder_blocks", ())):
        try:
            re.compile(block.pattern)
        except re.error as exc:
            yield _err(
                "DBS265",
                ("adapter", "text_encoder_blocks", i, "pattern"),
                f"adapter.text_encoder_blocks[{i}].pattern `{block.pattern}` is not a regular expression: "
                f"{exc}",
                "write a Python regular expression, e.g. `^text_encoder\\.text_model\\.encoder\\.`",
            )
    for i, pattern in enumerate(getattr(adapter, "exclude", ())):  # full's / OFT's excluded layers
        try:
            re.compile(pattern)
        except re.error as exc:
            yield _err(
                "DBS265",
                ("adapter", "exclude", i),
                f"adapter.exclude[{i}] `{pattern}` is not a regular expression: {exc}",
                "write a Python regular expression, e.g. `^single_transformer_blocks\\.3\\.proj_out$`",
            )


@rule("spec")
def lycoris_rank_dropout_unfused(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS LoCon's rank dropout (runtime/lora_dropout.py) acts on each LoRA layer alone (DBS573); on
    fused projections both forms are LoConModule's on kohya's fused Flux / SD3 Linear (lycoris.kohya on
    flux_train_network.py): one row mask over the whole fused layer, or in bypass mode one rank mask over
    its shared down-projection (runtime/fused_dropout.py)."""
    a = spec.adapter
    if isinstance(a, LoraAdapter) and a.output_dropout and a.fused_dropout:
        yield _err(
            "DBS573",
            ("adapter", "output_dropout"),
            "adapter.output_dropout with adapter.fused_dropout = true: LyCORIS's network has no fused layer "
            "whose parts share kohya's split draws",
            codes.help("DBS573"),
        )
    if not isinstance(a, LoraAdapter) or a.rank_dropout_form == "kohya" or not a.rank_dropout:
        return
    for key in ("fused_projections", "fused_dropout"):
        if key == "fused_projections":
            continue  # LoConModule on the fused Linear: one draw over its rows or its ranks
        if getattr(a, key):
            yield _err(
                "DBS573",
                ("adapter", "rank_dropout_form"),
                f'adapter.rank_dropout_form = "{a.rank_dropout_form}" with adapter.{key} = true: LyCORIS\'s '
                "network has no fused layer whose parts share a draw",
                codes.help("DBS573"),
            )


def _own_tucker(adapter, table: str, block) -> bool:
    """A block's Tucker form another rule than DBS576 weighs: a LoRA / LoHa adapter's (DBS579), or a full /
    IA^3 / DyLoRA / GLoRA / T-LoRA adapter's denoiser block of kind lora, loha or lokr (its kind's layers
    built alone, mixed_kinds.kind_adapter; a T-LoRA adapter's on its conv_targets)."""
    if adapter.kind in ("lora", "loha"):
        return True
    others = ("full", "ia3", "dylora", "glora", "tlora")
    return adapter.kind in others and table == "blocks" and block.kind in _TUCKER_KINDS


@rule("spec")
def block_factor_lokr(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own LoKr `factor` (runtime/lokr_factor.py) and decompose_both / full_matrix / tucker shape
    LoKr layers (DBS576); on fused projections each fused layer's one product (runtime/fused_lokr.py, whose
    parts one block covers: compiler/fused.py)."""
    a = spec.adapter
    if a.kind == "lokr":
        return
    why = f'kind = "{a.kind}"'
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):  # DyLoRA's blocks have none of them
            given_keys = [("factor", block.factor)] if getattr(block, "factor", 0) else []
            given_keys += [
                (key, value)
                for key in BLOCK_SWITCHES
                if (value := getattr(block, key, "adapter")) != "adapter"
                and not (key == "tucker" and _own_tucker(a, table, block))  # DBS579
            ]
            if getattr(block, "kind", "adapter") == "lokr":  # a LoKr block beside another kind: its own
                given_keys = []  # split and switches (mixed_kinds.kind_adapter; DBS578 on fused families)
            for key, value in given_keys:
                shown = f'"{value}"' if isinstance(value, str) else value
                yield _err(
                    "DBS576",
                    ("adapter", table, i, key),
                    f"adapter.{table}[{i}].{key} = {shown} with adapter.{why}: a block's {key} shapes the "
                    'Kronecker factors of each LoKr layer it matches, which only kind = "lokr" without '
                    "fused_projections builds",
                    codes.help("DBS576"),
                )


@rule("spec")
def block_unit_dylora(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own DyLoRA unit (runtime/dylora.py per layer) on layers of another kind, or a block of kind
    "dylora" beside another adapter kind without one (DBS584)."""
    a = spec.adapter
    dylora = ("adapter", "dylora") if a.kind == "dylora" else ("dylora",)  # the kinds of DyLoRA layers
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            unit, kind = getattr(block, "unit", 0), getattr(block, "kind", "adapter")
            if unit and kind not in dylora:
                yield _err(
                    "DBS584",
                    ("adapter", table, i, "unit"),
                    f'adapter.{table}[{i}].unit = {unit} with adapter.kind = "{a.kind}" and the block\'s '
                    f"kind = \"{kind}\": a block's unit cuts DyLoRA layers' ranks into blocks, which no "
                    "other kind trains",
                    codes.help("DBS584"),
                )
            elif kind == "dylora" != a.kind and not unit and block.rank + getattr(block, "conv_rank", 0):
                yield _err(
                    "DBS584",
                    ("adapter", table, i, "unit"),
                    f'adapter.{table}[{i}].kind = "dylora" on a {a.kind} adapter needs its own unit (ranks '
                    "per DyLoRA block, a LyCORIS entry's block_size, 4 unless given); found 0",
                    codes.help("DBS584"),
                )


# the kinds whose LyCORIS module keeps a negative alpha's sign (scale alpha / rank), whose layers dbspec
# trains at it: GLoRAModule's and TLoraModule's (runtime/lycoris_glora.py, lycoris_tlora.py), LoConModule's,
# LohaModule's and LokrModule's (peft's LoRA / LoHa / LoKr layers, scaling alpha / rank with its sign),
# DyLoraModule's and kohya's DyLoRAModule (runtime/dylora.py: alpha / (b + 1), alpha / rank, signed)
SIGNED_ALPHA_KINDS = ("glora", "tlora", "lora", "loha", "lokr", "dylora")


@rule("spec")
def negative_block_alpha(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block whose layers are of a kind that takes no negative alpha with an alpha below 0 (DBS581): only
    the layers of SIGNED_ALPHA_KINDS keep its sign in dbspec (GLoRA, T-LoRA, LoRA/LoCon, LoHa, LoKr and
    DyLoRA blocks, the adapter's own or another kind's: a LyCORIS preset file's entries' own negative
    alpha); a Diag-OFT / BOFT block's (its constraint), a full or IA^3 one's stay at 0 or more."""
    a = spec.adapter
    tables = ("blocks", "text_encoder_blocks")
    for table, i, block in ((t, i, b) for t in tables for i, b in enumerate(getattr(a, t, ()))):
        own = getattr(block, "kind", "adapter")  # an OftBlock has none (its constraint no alpha)
        kind = a.kind if own == "adapter" else own
        if kind in SIGNED_ALPHA_KINDS:
            continue
        for key in ("alpha", "conv_alpha"):
            if getattr(block, key, 0.0) < 0:
                yield _err(
                    "DBS581",
                    ("adapter", table, i, key),
                    f"adapter.{table}[{i}].{key} = {getattr(block, key):g} on a block of "
                    f'kind = "{own}" ({kind} layers): only GLoRA, T-LoRA, LoRA, LoHa, LoKr and DyLoRA '
                    "layers take an alpha below 0",
                    codes.help("DBS581"),
                )


# The adapter options a run with several kinds leaves at these values (runtime/adapters.py builds each
# kind's layers with the adapter's rank, alpha, targets, LoKr factor and decompose_both alone): DBS578.
# module_dropout each kind's layers draw as their LyCORIS class does (runtime/mixed_kinds.py
# add_module_dropout), once per fused Linear on Flux / SD3 / Chroma (mixed_kinds_family: not GLoRA, BOFT)
_MIXED_OFF = {
    "dropout": 0.0,
    "rank_dropout": 0.0,
    "down_dropout": 0.0,
    "output_dropout": 0.0,
    "multiplier": 1.0,
    "max_norm": 0.0,
    "freeze_down": False,
    "dora": False,
    "tucker": False,
    "scalar": False,
    "full_matrix": False,
    "rank_stabilized": False,
    "ggpo": False,
    "fused_projections": False,
    "fused_dropout": False,
}


# the adapters whose blocks may give their layers another kind on every family that has them (full / IA^3's
# ScaleBlock `kind` too)
_MIXED_ADAPTERS = ("lora", "loha", "lokr", "dylora", "glora")
_LOKR_OWN = ("factor", "decompose_both", "full_matrix", "tucker", "unbalanced_factorization")
# a block's own options no run of several kinds builds (runtime/mixed_kinds.py: each kind the adapter's)
_NEVER_MIXED = ("scalar", "tucker", "rank_stabilized", "rank_dropout_scale")
# the kinds whose blocks carry their own Tucker form in a run of several kinds (LyCORIS's LoConModule,
# LohaModule, LokrModule with a map entry's use_tucker; the denoiser's blocks)
_TUCKER_KINDS = ("lora", "loha", "lokr")


def _built_alone(kind: str, key: str) -> bool:
    """A block's own option that its kind's layers take in a run of several kinds, each kind built alone
    (mixed_kinds.kind_adapter: the block's own over the adapter's, whose are off there; on Flux / SD3 /
    Chroma each fused Linear one module of the kind, runtime/fused_lokr.py): a LoRA, LoHa or LoKr block's
    `scalar` (LyCORIS's use_scalar), a LoKr block's `rank_stabilized` (rs_lora), split and switches (a
    LyCORIS map entry's own factor, decompose_both, full_matrix, unbalanced_factorization)."""
    if key == "scalar":  # a GLoRA block's too (its layers' GLoRAModule use_scalar, each layer its block's)
        return kind in (*_TUCKER_KINDS, "glora")
    return kind == "lokr" and key in ("rank_stabilized", *_LOKR_OWN)


def _own_block_options(adapter, own: str):
    """(table, index, option) of the block options a run of several kinds does not build: a scalar, Tucker
    form or LoKr rs_lora of a block's own (runtime/mixed_kinds.py builds each kind with the adapter's), and
    LoKr's own split or switches on layers that are not a lokr adapter's own LoKr layers."""
    for table in ("blocks", "text_encoder_blocks"):
        for index, b in enumerate(getattr(adapter, table, ())):
            kind = own if getattr(b, "kind", "adapter") == "adapter" else b.kind
            lokr_own = kind == "lokr" and own == "lokr"
            for key in ("scalar", "rank_stabilized", "rank_dropout_scale", *_LOKR_OWN):
                value = getattr(b, key, "adapter")
                # a LoCon, LoHa or LoKr block's own Tucker form: its kind's layers built alone
                # (mixed_kinds.kind_adapter; adapters.add_lora's block_tuckers, loha_tucker_layers,
                # block_switches), on the denoiser's k x k convolutions
                own_tucker = key == "tucker" and kind in _TUCKER_KINDS and table == "blocks"
                if own_tucker or _built_alone(kind, key):
                    continue
                if value not in ("adapter", 0) and (key in _NEVER_MIXED or not lokr_own):
                    yield table, index, key


@rule("spec")
def block_rank_dropout_scale(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own rank-dropout rescale (a LyCORIS map entry's rank_dropout_scale) acts on LoHa / LoKr
    layers, each drawing its own rows (runtime/loha_weight.py, peft's LoKr per layer; a fused layer's one
    draw, runtime/fused_lycoris_dropout.py, with its block's rescale), and on LoRA layers with LyCORIS
    LoConModule's rank-dropout forms (runtime/lora_dropout.py, fused_dropout.py): DBS580 elsewhere."""
    a = spec.adapter
    kind = getattr(a, "kind", "none")
    lycoris_masks = getattr(a, "rank_dropout_form", "kohya") != "kohya"  # LoConModule's (lora_dropout.py)
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            value = getattr(block, "rank_dropout_scale", "adapter")
            if value == "adapter" or kind in ("loha", "lokr") or (kind == "lora" and lycoris_masks):
                continue
            why = f'adapter.kind = "{kind}"'
            why += ' and rank_dropout_form = "kohya"' if kind == "lora" else ""
            yield _err(
                "DBS580",
                ("adapter", table, i, "rank_dropout_scale"),
                f'adapter.{table}[{i}].rank_dropout_scale = "{value}" with {why}: a block\'s own rescale '
                "acts on LoHa / LoKr layers' rank-dropout rows and LoRA's in LyCORIS's forms",
                codes.help("DBS580"),
            )


@rule("spec")
def block_oft_rescaled(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own row rescale (`rescaled`, a LyCORIS map entry's) acts on the Diag-OFT / BOFT layers of a
    block of that kind beside a lora / loha / lokr / dylora / glora / tlora / full / IA^3 adapter's
    (runtime/blocks.py block_rescaled): DBS591 on a block of another kind."""
    a = spec.adapter
    if getattr(a, "kind", "none") not in ("lora", "loha", "lokr", "dylora", "glora", "tlora", "full", "ia3"):
        return  # OFT adapters' blocks (OftBlock) carry their own
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            value = getattr(block, "rescaled", "adapter")
            if value == "adapter" or getattr(block, "kind", "adapter") in ("diag-oft", "boft"):
                continue
            yield _err(
                "DBS591",
                ("adapter", table, i, "rescaled"),
                f'adapter.{table}[{i}].rescaled = "{value}" on a block of kind "{block.kind}": a row rescale '
                'of its own acts on kind "diag-oft" / "boft" blocks only',
                codes.help("DBS591"),
            )


@rule("spec")
def block_scalar_kind(spec: Spec, given: Given) -> Iterator[Hit]:
    """A DyLoRA, full, IA^3 or T-LoRA adapter's block's own scalar (a LyCORIS map entry's use_scalar) acts on
    the LoRA / LoHa / LoKr / GLoRA layers of a block of that kind (compiler/adapters.py _other_kind_options,
    runtime/mixed_kinds.py kind_adapter; a GLoRA adapter's own blocks too, each GLoRA layer its block's):
    DBS625 on a block of the adapter's own layers or another kind (in a run of several kinds DBS578 names
    it)."""
    a = spec.adapter
    if getattr(a, "kind", "none") not in ("dylora", "full", "ia3", "tlora") or len(run_kinds(a)) > 1:
        return
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            value = getattr(block, "scalar", "adapter")
            # "off" on an adapter without a scalar (full, IA^3, DyLoRA: none) changes nothing
            if value == "adapter" or (value == "on") == getattr(a, "scalar", False):
                continue
            yield _err(
                "DBS625",
                ("adapter", table, i, "scalar"),
                f'adapter.{table}[{i}].scalar = "{value}" on a {a.kind} adapter\'s own layers: a scalar of '
                'a block\'s own acts on blocks of kind "lora", "loha", "lokr" or "glora"',
                codes.help("DBS625"),
            )


def _own_bypass(a) -> Iterator[tuple[str, int, object]]:
    """(table, index, block) of the adapter's blocks that set their own `bypass` (LyCORIS map entries')."""
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            if getattr(block, "bypass", "adapter") != "adapter":
                yield table, i, block


@rule("spec")
def tlora_block_alpha(spec: Spec, given: Given) -> Iterator[Hit]:
    """A T-LoRA adapter's block at alpha 0: the constraint 0 of a Diag-OFT / BOFT block's layers, scale 0 on
    the others', which LyCORIS never builds (its modules read alpha 0 as the rank): DBS611."""
    a = spec.adapter
    if getattr(a, "kind", "") != "tlora":
        return
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table)):
            if block.alpha == 0 and block.kind not in ("diag-oft", "boft"):
                yield _err(
                    "DBS611",
                    ("adapter", table, i, "alpha"),
                    f'adapter.{table}[{i}].alpha = 0 on a block of kind "{block.kind}" of a tlora adapter: '
                    "its layers' scale alpha / rank must be above 0 (only a diag-oft or boft block's alpha, "
                    "their constraint, may be 0)",
                    codes.help("DBS611"),
                )


@rule("spec")
def tlora_block_conv(spec: Spec, given: Given) -> Iterator[Hit]:
    """A T-LoRA adapter's k x k convolutions (its `conv_targets`, its blocks' `conv_rank`) are its blocks of
    other kinds' alone, on a U-Net (runtime/mixed_kinds.py kind_adapter): DBS633 for a block of T-LoRA layers
    with a conv_rank (TLoraModule cannot run a k x k convolution) and for conv_targets on a transformer
    family (silent for family = "auto": the compiler runs it again with the detected family)."""
    a = spec.adapter
    if getattr(a, "kind", "") != "tlora":
        return
    for i, block in enumerate(a.blocks):
        if block.conv_rank and block.kind in ("adapter", "tlora"):
            yield _err(
                "DBS633",
                ("adapter", "blocks", i, "conv_rank"),
                f"adapter.blocks[{i}].conv_rank = {block.conv_rank} on T-LoRA layers: a k x k convolution "
                "takes a block of another kind on a tlora adapter (LyCORIS's TLoraModule cannot run one)",
                codes.help("DBS633"),
            )
    family = FAMILIES.get(spec.model.family)
    if a.conv_targets and family is not None and family.denoiser != "unet":
        yield _err(
            "DBS633",
            ("adapter", "conv_targets"),
            f"adapter.conv_targets = {a.conv_targets} on a tlora adapter on {family.title}: its blocks of "
            "other kinds adapt k x k convolutions on a U-Net (SD 1.x/2.x, SDXL) only",
            codes.help("DBS633"),
        )


# a T-LoRA block's own start (LyCORIS map entries' sig_type / use_data_init): the value that starts nothing
# of its own (TLoraModule's defaults), and what the block's starts instead
_TLORA_STARTS = {"data_init": (True, "random SVD start"), "sig_type": ("principal", "SVD start of its own")}
# the adapters besides lora / loha / lokr whose T-LoRA blocks start their own way, on every family (tests/
# runtime/test_lycoris_tlora_entry_hosts.py, test_lycoris_tlora_entry_flux_hosts.py): the keys each admits
_TLORA_START_HOSTS = {
    "full": ("data_init", "sig_type"),
    "glora": ("data_init", "sig_type"),
    "ia3": ("data_init", "sig_type"),
    "dylora": ("data_init", "sig_type"),
}


@rule("spec")
def tlora_block_start(spec: Spec, given: Given) -> Iterator[Hit]:
    """A T-LoRA block's own start (`data_init = false`: a random SVD start, LyCORIS's use_data_init;
    `sig_type` other than principal: other singular triplets) on layers of another kind, which never read it:
    DBS622 (with `fused_projections` one SVD per fused Linear over its stacked rows, runtime/lycoris_tlora.py
    fit_fused_tlora). Beside a lora / loha / lokr adapter's layers a block of kind tlora starts its own way
    (its T-LoRA pass, runtime/mixed_kinds.py; with fused_projections fit_fused_tlora's one SVD per fused
    Linear); checked against lycoris-lora's network on SD 1.x beside LoCon / LoHa / LoKr and on Flux's fused
    Linears beside LoCon / LoHa / LoKr (SD3's and Chroma's beside LoCon); beside a full, ia3, glora or
    dylora adapter's layers too, on SD 1.x and on Flux's, SD3's and Chroma's fused Linears
    (_TLORA_START_HOSTS)."""
    a = spec.adapter
    own = getattr(a, "kind", "")
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            for key, (plain, what) in _TLORA_STARTS.items():
                value = getattr(block, key, plain)
                if value == plain:
                    continue
                if own == "tlora" and block.kind in ("adapter", "tlora"):
                    continue
                if block.kind != "tlora":
                    why = f'of kind "{block.kind}", whose layers are not T-LoRA ones'
                elif own not in ("lora", "loha", "lokr") and key not in _TLORA_START_HOSTS.get(own, ()):
                    why = (
                        f'of kind "tlora" beside a {own} adapter\'s layers (built beside lora / loha / lokr '
                        "/ full / ia3 / glora / dylora ones)"
                    )
                else:
                    continue
                shown = "false" if value is False else repr(value)
                yield _err(
                    "DBS622",
                    ("adapter", table, i, key),
                    f"adapter.{table}[{i}].{key} = {shown} on a block {why}: dbspec builds no {what} there",
                    codes.help("DBS622"),
                )


# the adapters whose IA^3 layers (blocks of kind ia3; an ia3 adapter's own) may take an input side (DBS618)
_INPUT_SIDE_HOSTS = ("lora", "loha", "lokr", "dylora", "glora", "full", "tlora", "ia3")


@rule("spec")
def ia3_block_on_input(spec: Spec, given: Given) -> Iterator[Hit]:
    """An IA^3 block's input side (`on_input`, LyCORIS's train_on_input) acts on a block of kind ia3 beside a
    lora / loha / lokr / dylora / glora / full / tlora adapter's layers, or on an ia3 adapter's own block
    (runtime/blocks.py: peft's rank INPUT_SIDE_RANK, runtime/mixed_kinds.py kind_adapter handing the block
    on; with `fused_projections` a fused Linear's parts sharing one scale, runtime/lycoris_ia3.py
    tie_fused_ia3_inputs from runtime/prepare.py, which an ia3 adapter's own blocks need on a family with
    fused layers): DBS618 elsewhere (silent about the family for family = "auto": the compiler runs it again
    with the detected family)."""
    a = spec.adapter
    own = getattr(a, "kind", "")
    family = FAMILIES.get(spec.model.family)
    fused = getattr(a, "fused_projections", False)
    transformer = family is not None and bool(family.fused_projections)
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            if not getattr(block, "on_input", False):
                continue
            ia3 = block.kind == "ia3" or (own == "ia3" and block.kind == "adapter")
            if not ia3:
                why = f'of kind "{block.kind}", whose layers are not IA^3 ones'
            elif own not in _INPUT_SIDE_HOSTS:
                why = f"on the {own} adapter (beside lora, loha, lokr, dylora, glora, full or tlora layers)"
            elif own == "ia3" and table == "blocks" and transformer and not fused:
                why = (
                    f"of the ia3 adapter's own on {family.title} without adapter.fused_projections "
                    "(LyCORIS's one IA3Module per fused Linear: one input-side scale its parts share, which "
                    "dbspec ties with fused_projections)"
                )
            else:
                continue
            yield _err(
                "DBS618",
                ("adapter", table, i, "on_input"),
                f"adapter.{table}[{i}].on_input = true on a block {why}: dbspec builds no input-side IA^3 "
                "scale there",
                codes.help("DBS618"),
            )


@rule("spec")
def block_own_bypass(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own `bypass` (a LyCORIS map entry's bypass_mode) acts on the Diag-OFT, BOFT, DyLoRA and IA^3
    layers of a block of that kind on an adapter of any other kind, or a diag-oft / boft / dylora / ia3
    adapter's own (runtime/mixed_kinds.py set_block_bypass; on Flux, SD3 and Chroma's fused Linears each part
    of the one LyCORIS module in its block's forward), and a tlora adapter's own (plan.model.own_bypass_fits):
    DBS592 elsewhere (a full adapter's own layers too)."""
    a = spec.adapter
    own = getattr(a, "kind", "none")
    for table, i, block in _own_bypass(a):
        kind = getattr(block, "kind", "adapter")  # a Diag-OFT / BOFT adapter's blocks: its own kind
        if own_bypass_fits(own, kind):
            continue
        kind = own if kind in ("adapter", own) else kind
        yield _err(
            "DBS592",
            ("adapter", table, i, "bypass"),
            f'adapter.{table}[{i}].bypass = "{block.bypass}" on layers of kind "{kind}" ({own} adapter): a '
            'block\'s own bypass acts on layers of kind "diag-oft", "boft", "dylora" or "ia3" only'
            + (" (a full adapter's own layers have no bypass forward)" if own == "full" else ""),
            codes.help("DBS592"),
        )


@rule("spec")
def mixed_kinds_family(spec: Spec, given: Given) -> Iterator[Hit]:
    """DBS578 for blocks of another kind on a family whose runs of several kinds dbspec does not build (a
    transformer family without FamilySpec.mixed_fused_kinds; Flux, SD3 and Chroma have it), BOFT there,
    LyCORIS's full / IA^3 / Diag-OFT / GLoRA / DyLoRA kinds (or a DyLoRA adapter's run of several) there
    without fused_projections, and fused_projections with them outside those; silent for family = "auto"
    (the compiler runs it again with the detected family)."""
    a = spec.adapter
    own = getattr(a, "kind", "none")
    other = [
        (table, i, b)
        for table in ("blocks", "text_encoder_blocks")
        for i, b in enumerate(getattr(a, table, ()))
        if getattr(b, "kind", "adapter") not in ("adapter", own)
    ]
    family = FAMILIES.get(spec.model.family)
    if not other or family is None or own not in (*_MIXED_ADAPTERS, "full", "ia3"):
        return
    table, i, block = other[0]
    if family.denoiser != "unet" and not family.mixed_fused_kinds:
        yield _err(
            "DBS578",
            ("adapter", table, i, "kind"),
            f'adapter.{table}[{i}].kind = "{block.kind}" on a {own} adapter on {family.title}: dbspec trains '
            "several adapter kinds in one run on SD 1.x/2.x, SDXL, Flux, SD3 and Chroma, whose LyCORIS "
            "exports and reloads it checks",
            codes.help("DBS578"),
        )
    # full / IA^3 / Diag-OFT / BOFT / GLoRA / DyLoRA on a fused Linear are their parts' own or tied (a copy of
    # each part's rows, a scale per each part's output row, blocks within a part, BOFT's blocks, GLoRA's pairs
    # and DyLoRA's down blocks and draw shared: runtime/prepare.py): the denoiser's (the text encoders have no
    # fused layers); a DyLoRA adapter's own layers too
    whole = [
        (t, j, b.kind)
        for t, j, b in other
        if t == "blocks" and b.kind in ("full", "ia3", "diag-oft", "boft", "glora", "dylora")
    ]
    if own in ("dylora", "glora") and not whole:  # a GLoRA adapter's own layers: one GLoRAModule per fused
        whole = [(table, i, block.kind)]
    if own in ("full", "ia3") and not whole:  # a full / IA^3 adapter's denoiser blocks of other kinds: one
        whole = [(t, j, b.kind) for t, j, b in other if t == "blocks"][:1]  # module of the kind per fused
    if whole and family.mixed_fused_kinds and not getattr(a, "fused_projections", False):
        # their export writes kohya's fused Linears, where the other kinds' parts must be one module too
        yield _err(
            "DBS578",
            ("adapter", whole[0][0], whole[0][1], "kind"),
            f'adapter.{whole[0][0]}[{whole[0][1]}].kind = "{whole[0][2]}" on a {own} adapter on '
            f"{family.title} without adapter.fused_projections: dbspec trains LyCORIS's full, IA^3, "
            "Diag-OFT, BOFT, GLoRA and DyLoRA beside other kinds there as kohya's network does, one LyCORIS "
            "module per fused Linear (fused_projections = true)",
            codes.help("DBS578"),
        )
    if getattr(a, "fused_projections", False) and not family.mixed_fused_kinds:
        yield _err(
            "DBS578",
            ("adapter", "fused_projections"),
            f'adapter.fused_projections with adapter.{table}[{i}].kind = "{block.kind}" on {family.title}: '
            "dbspec trains several kinds on fused layers on Flux, SD3 and Chroma (one LyCORIS module of one "
            "kind per fused Linear)",
            codes.help("DBS578"),
        )
    tucker = [(j, b) for t, j, b in other if t == "blocks" and getattr(b, "tucker", "adapter") != "adapter"]
    others = ("full", "ia3", "dylora", "glora")
    if own in others and tucker and family.denoiser != "unet" and not family.kohya_conv_targets:
        # a full / IA^3 / DyLoRA / GLoRA adapter's blocks' own Tucker form: on the U-Net families' k x k
        # convolutions and SD3's patch convolution (kohya_conv_targets), checked against LyCORIS
        # (test_lycoris_whole_main_tucker.py, test_lycoris_own_opts_networks.py,
        # test_lycoris_own_opts_sd3_chroma.py); Flux / Chroma have none
        j, b = tucker[0]
        yield _err(
            "DBS578",
            ("adapter", "blocks", j, "tucker"),
            f'adapter.blocks[{j}].tucker = "{b.tucker}" on a {own} adapter on {family.title}: a full / '
            "IA^3 / DyLoRA / GLoRA adapter's blocks of another kind take a Tucker form of their own on SD "
            "1.x/2.x, SDXL and SD3's patch convolution",
            codes.help("DBS578"),
        )


def lycoris_row_masks(a) -> bool:
    """A LoRA adapter whose rank_dropout is LyCORIS's (rank_dropout_form "lycoris"), or a LoHa adapter (whose
    rank_dropout is LohaModule's) outside bypass_mode and without rank_dropout_scale, on layers that are all
    LoRA/LoCon or LoHa (and the kinds below): each layer draws its own row mask in its forward as
    LoConModule / LohaModule do (runtime/lora_dropout.py's lycoris form, runtime/loha_weight.py; a LoHa
    adapter's LoCon layers through the plan's rank_dropout_form "lycoris", compiler/adapters.py), decomposed
    (runtime/lycoris_dora.py) or not, beside each other (checked against lycoris-lora 4.1.3's network on SD
    1.x, tests/runtime/test_lycoris_block_dora_rank_dropout.py, test_lycoris_mixed_rank_dropout.py,
    test_lycoris_loha_locon_rank_dropout.py; with fused_projections undecomposed, each fused Linear one
    module's draw). Blocks of LyCORIS's other kinds may sit beside them: FullModule
    draws its own row mask over its copy's update (runtime/lycoris_full.py), DiagOFTModule its rotations'
    dropout (runtime/lycoris_oft.py), and IA3Module, ButterflyOFTModule, DyLoraModule and GLoRAModule outside
    bypass_mode never read rank_dropout (built without it, as LyCORIS builds them; checked against
    lycoris-lora 4.1.3's network, test_lycoris_rank_dropout_kinds.py), TLoraModule in either mode
    (test_lycoris_tlora_rank_dropout.py)."""
    loha = (  # a full / IA^3 / GLoRA adapter's blocks alike (full layers FullModule's mask, IA^3's none,
        # GLoRA's none outside bypass); a block in its own bypass_mode is of BYPASS_KINDS, whose bypass
        # forwards draw none (runtime/lycoris_oft.py add_oft_rank_dropout skips a bypass Diag-OFT layer;
        # test_lycoris_flow_rank_dropout_layers.py)
        a.kind in ("loha", "full", "ia3", "glora", "dylora", "tlora")
        and not getattr(a, "bypass", False)
        and not getattr(a, "rank_dropout_scale", False)
        and all(
            getattr(b, "bypass", "adapter") != "on"
            or (a.kind if getattr(b, "kind", "adapter") == "adapter" else b.kind) in BYPASS_KINDS
            for b in (*a.blocks, *getattr(a, "text_encoder_blocks", ()))
        )
    )
    # on Flux / SD3 / Chroma's fused Linears (fused_projections) each kind's one LyCORIS module draws one mask
    # its parts share (runtime/mixed_kinds.py; checked against lycoris-lora 4.1.3's modules on kohya's fused
    # Linears, test_lycoris_mixed_flow_rank_dropout.py), decomposed per output row (each part its rows of the
    # masked update) or per input column (the parts' one shared magnitude, renormalised by the column norms of
    # every part's masked rows) too (test_lycoris_flow_rank_dropout_layers.py, magnitudes' gradients included)
    return (loha or (a.kind == "lora" and getattr(a, "rank_dropout_form", "kohya") == "lycoris")) and all(
        getattr(b, "kind", "adapter") in ("adapter", "lora", "loha", *_ROW_MASK_BESIDE)
        for b in (*a.blocks, *getattr(a, "text_encoder_blocks", ()))
    )


# the kinds whose layers take the network's rank_dropout as their LyCORIS module does beside LoCon / LoHa
# layers drawing their row masks (lycoris_row_masks; TLoraModule never reads it)
_ROW_MASK_BESIDE = ("full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora")


def mixed_bypass_ranks(a) -> bool:
    """Whether a lora, loha or lokr adapter's rank_dropout in LyCORIS's bypass form (rank_dropout_form
    "lycoris_bypass", with or without its `output_dropout`; a loha adapter's `output_dropout` implies it)
    reaches blocks of kind lora / loha /
    lokr as their LyCORIS modules' bypass forward reads it: LoConModule's bypass_forward_diff masks the
    down's ranks (`torch.rand(rank)`), LohaModule's rebuilds its update with get_weight's row mask
    (`torch.rand(out)`, the CPU's), LokrModule's draws none; each after the module dropout draw and before
    the Dropout of the update (runtime/prepare.py: lora_dropout.py's LoRA layers, fused_lycoris_dropout.py
    add_lycoris_layer_dropout's LoHa / LoKr ones).
    With fused_projections (Flux, SD3, Chroma) each fused Linear one module's draw its parts share
    (fused_dropout.py, fused_lycoris_dropout.py add_fused_lycoris_dropout). Without rank_dropout_scale
    (create_network never passes it on) or a dora."""
    kind = getattr(a, "kind", "none")
    return (
        # a loha adapter's LoCon blocks take the bypass form (compiler/adapters.py)
        # a lokr adapter's in its bypass form: its LoKr layers draw none, its LoCon / LoHa blocks theirs
        (
            kind == "loha"
            or (kind in ("lora", "lokr") and getattr(a, "rank_dropout_form", "") == "lycoris_bypass")
        )
        # a loha adapter's LoCon blocks take the bypass form from its rank_dropout_form or its output_dropout
        # (which implies it); a lora / lokr adapter's form is its own; the rank mask is drawn whether or not
        # a Dropout follows (LyCORIS's `drop` is nn.Identity at 0)
        and (
            kind != "loha"
            or bool(getattr(a, "output_dropout", 0.0))
            or getattr(a, "rank_dropout_form", "") == "lycoris_bypass"
            # beside no LoCon block the form reaches no layer (LohaModule's bypass forward draws its row
            # mask as its default one; LoKr, IA^3, BOFT, DyLoRA, Diag-OFT blocks none there)
            or not any(
                getattr(b, "kind", "adapter") == "lora"
                for t in ("blocks", "text_encoder_blocks")
                for b in getattr(a, t, ())
            )
        )
        and not getattr(a, "rank_dropout_scale", False)
        and mixed_output_dropout(a, ranks=True)
    )


def mixed_output_dropout(a, ranks: bool = False) -> bool:
    """Whether a run of several kinds takes the adapter's `output_dropout` (LyCORIS's `dropout` in
    bypass_mode) on every layer: a lora, loha or lokr adapter whose blocks are of those kinds, without
    rank_dropout or a dora. LoConModule's, LohaModule's and LokrModule's bypass forward each drop their own
    update after their module dropout draw (runtime/prepare.py: lora_dropout.py's LoRA layers,
    fused_lycoris_dropout.py add_lycoris_layer_dropout's LoHa / LoKr ones; with fused_projections each
    fused Linear one module's mask over its stacked output, its parts sharing it: fused_dropout.py,
    fused_lycoris_dropout.py add_fused_lycoris_dropout)."""
    blocks = [b for t in ("blocks", "text_encoder_blocks") for b in getattr(a, t, ())]
    # IA^3, BOFT and DyLoRA blocks' layers read neither (IA3Module's, ButterflyOFTModule's and DyLoraModule's
    # bypass forward: their module dropout draw alone), Diag-OFT's no rank_dropout (its bypass Dropout raises:
    # not beside an output_dropout)
    inert = {"ia3", "boft", "dylora", *(() if getattr(a, "output_dropout", 0.0) else ("diag-oft",))}
    # GLoRA / T-LoRA blocks drop in their bypass forward too (runtime/mixed_kinds.py kind_adapter hands them
    # the output_dropout), GLoRA's masking its pairs' ranks, T-LoRA's none
    readers = set(BYPASS_DROPOUT_KINDS)
    return (
        getattr(a, "kind", "none") in ("lora", "loha", "lokr")
        and {getattr(b, "kind", "adapter") for b in blocks} - {"adapter"} <= {*readers, *inert}
        and (ranks or not getattr(a, "rank_dropout", 0.0))  # `ranks`: mixed_bypass_ranks's
        and not getattr(a, "dora", False)  # LyCORIS's bypass forward never decomposes (BYPASS_DORA)
        and all(getattr(b, "dora", "adapter") != "on" for b in blocks)
    )


def host_bypass_inert(a) -> bool:
    """Whether an ia3 or dylora adapter's `bypass` (LyCORIS's network bypass_mode, which every module reads)
    takes its `dropout` and `rank_dropout` to its blocks of other kinds as LyCORIS's modules read them:
    blocks of kind lora, loha and lokr (none decomposed) drop their update x scalar (the plan's
    output_dropout) and mask as their class does (LoCon's ranks, LoHa's rows, LoKr's none:
    rank_dropout_form "lycoris_bypass"), blocks of kind ia3, boft, dylora and diag-oft read neither
    (DiagOFTModule's Dropout raises: not beside the dropout), IA3Module and DyLoraModule never read either;
    each after its module_dropout draw (tests/runtime/test_lycoris_network_dropouts_entries.py)."""
    blocks = [b for t in ("blocks", "text_encoder_blocks") for b in getattr(a, t, ())]
    kinds = {getattr(b, "kind", "adapter") for b in blocks} - {"adapter"}
    return (
        getattr(a, "kind", "none") in ("ia3", "dylora")
        and getattr(a, "bypass", False)
        and kinds <= {"lora", "loha", "lokr", "ia3", "boft", "dylora", "diag-oft", "glora", "tlora"}
        and all(getattr(b, "dora", "adapter") != "on" for b in blocks)
    )


def tlora_bypass_inert(a) -> bool:
    """Whether a tlora adapter's `bypass` (LyCORIS's network bypass_mode, which every module reads) reaches
    its blocks of other kinds as LyCORIS's, as a glora adapter's does (glora_bypass_inert): blocks of kind
    lora, loha and lokr, none decomposed, each LoConModule's / LohaModule's / LokrModule's bypass forward
    computing its default one after the same module_dropout draw, then dropping it by the adapter's
    `dropout` (the plan's output_dropout; TLoraModule its own update, bypass_dropout), the adapter's
    rank_dropout each class's bypass mask (LoCon's ranks, LoHa's rows, LoKr's none: the plan's
    rank_dropout_form "lycoris_bypass"), TLoraModule reading none of it; blocks of kind ia3, diag-oft and
    boft in their bypass forward (the block's settled `bypass`), reading no rank_dropout, IA3Module and
    ButterflyOFTModule no dropout (DiagOFTModule's raises: mixed_block_kinds keeps the adapter's dropout off
    beside them). tests/runtime/test_lycoris_tlora_bypass_entries.py, test_lycoris_tlora_mixed_opts.py (SD
    1.x); with fused_projections each fused module's one mask its parts share
    (test_lycoris_flow_tlora_mixed_opts.py on Flux)."""
    blocks = [b for t in ("blocks", "text_encoder_blocks") for b in getattr(a, t, ())]
    return (
        getattr(a, "kind", "none") == "tlora"
        and {getattr(b, "kind", "adapter") for b in blocks} - {"adapter", "tlora"}
        <= {"lora", "loha", "lokr", "ia3", "diag-oft", "boft", "glora", "dylora"}
        and all(getattr(b, "dora", "adapter") != "on" for b in blocks)
    )


def glora_bypass_inert(a) -> bool:
    """Whether a glora adapter's `bypass` (LyCORIS's network bypass_mode, which every module reads) reaches
    its blocks of other kinds as their default forward: blocks of kind lora, loha and lokr alone, none
    decomposed. LoConModule's, LohaModule's and LokrModule's bypass forward then computes their default
    one after the same module_dropout draw (runtime/mixed_kinds.py kind_adapter hands them the adapter's
    `bypass`, inert on those kinds; tests/runtime/test_lycoris_glora_bypass_entries.py), then drops it by the
    adapter's `dropout` (LyCORIS's one `dropout`, which GLoRAModule applies to its pairs' outputs and those
    modules to their update x scalar: the plan's output_dropout on those layers, compiler/adapters.py
    _glora_plan; tests/runtime/test_lycoris_glora_bypass_dropout_entries.py). The adapter's `rank_dropout`
    there too (was DBS578): each class's own mask form, settled per block kind in the plan (compiler/
    adapters.py _lycoris_rank_dropout_form, rank_dropout_form "lycoris_bypass"): the GLoRA layers keep the
    ranks whose `torch.rand(rank)` draw is below the rate (one draw for a2 x, one for b2 x), the LoCon ones
    those whose draw is above it, the LoHa ones LohaModule's row mask, the LoKr ones none
    (tests/runtime/test_lycoris_glora_bypass_rank_dropout_entries.py). Blocks of kind ia3 too (was DBS578):
    IA3Module in bypass_mode scales the output, bias included (the input with `on_input`), the block's
    settled `bypass` (runtime/mixed_kinds.py kind_adapter), and reads neither `dropout` nor `rank_dropout`
    (its module_dropout draw alone; tests/runtime/test_lycoris_glora_bypass_ia3_entries.py). Blocks of kind
    diag-oft and boft too (was DBS578): their bypass forward rotates the output and reads no rank_dropout,
    ButterflyOFTModule no dropout either (DiagOFTModule's raises on it: mixed_block_kinds keeps the adapter's
    dropout off beside them; tests/runtime/test_lycoris_glora_bypass_oft_entries.py). Blocks of kind dylora
    too (was DBS578): DyLoraModule's bypass forward adds its one block unscaled (dylora_bypass_runs: one block
    per layer, DBS549) and reads no dropout (tests/runtime/test_lycoris_glora_bypass_dylora_entries.py)."""
    blocks = [b for t in ("blocks", "text_encoder_blocks") for b in getattr(a, t, ())]
    return (
        getattr(a, "kind", "none") == "glora"
        and {getattr(b, "kind", "adapter") for b in blocks} - {"adapter"}
        <= {"lora", "loha", "lokr", "ia3", "diag-oft", "boft", "dylora", "tlora"}
        and all(getattr(b, "dora", "adapter") != "on" for b in blocks)
    )


@rule("spec")
def mixed_block_kinds(spec: Spec, given: Given) -> Iterator[Hit]:
    """[[adapter.blocks]] of another `kind` (LyCORIS preset maps' `algo`) train that kind's layers beside
    the adapter's (runtime/adapters.py, one peft config per kind under one adapter name): only with the
    options every kind builds alike (DBS578)."""
    a = spec.adapter
    own = getattr(a, "kind", "none")
    other = [
        (f"{table}[{i}]", b)
        for table in ("blocks", "text_encoder_blocks")
        for i, b in enumerate(getattr(a, table, ()))  # DyLoRA's have no kind
        if getattr(b, "kind", "adapter") not in ("adapter", own)
    ]
    if not other:
        return
    i, block = other[0]
    # a Diag-OFT adapter's BOFT blocks (LyCORIS's two OFTs in one network; the adapter of LyCORIS's form)
    oft_pair = own == "diag-oft" and {b.kind for _, b in other} <= {"boft"} and a.form == "lycoris"
    if own not in (*_MIXED_ADAPTERS, "tlora", "full", "ia3") and not oft_pair:
        yield _err(
            "DBS578",
            ("adapter", i.split("[")[0], int(i.split("[")[1].rstrip("]")), "kind"),
            f'adapter.{i}.kind = "{block.kind}" on a {own} adapter: dbspec trains several adapter kinds in '
            "one run on adapters of kind lora, loha, lokr, dylora, glora, full, ia3 or tlora (and a "
            "diag-oft adapter of LyCORIS's form beside boft blocks)",
            codes.help("DBS578"),
        )
        return
    for table, index, b in _own_block_options(a, own):
        yield _err(
            "DBS578",
            ("adapter", table, index, b),
            f'adapter.{table}[{index}].{b} with adapter.{i}.kind = "{block.kind}": in a run of several kinds '
            "a block carries its own LoKr split, switches and rank_stabilized only on LoKr layers, a scalar "
            "only on LoRA, LoHa or LoKr layers, a Tucker form only on a LoRA, LoHa or LoKr block's on the "
            "denoiser, and no rank_dropout_scale of its own",
            codes.help("DBS578"),
        )
    # fused_projections: mixed_kinds_family (Flux / SD3: LyCORIS's one module per fused Linear, each kind's)
    # a lokr adapter's full_matrix and rank_stabilized (LyCORIS's rs_lora on full factors) act on its own LoKr
    # layers alone (mixed_kinds.kind_adapter hands the other kinds the adapter, whose LoRA / LoHa / ... layers
    # never read them; tests/runtime/test_lycoris_mixed_rs_lora.py)
    kept = (
        ("fused_projections", "full_matrix", "rank_stabilized") if own == "lokr" else ("fused_projections",)
    )
    # the adapter's dora (LyCORIS's dora_wd) on every LoRA / LoHa / LoKr layer, the other kinds' modules
    # never decomposing (runtime/mixed_kinds.py kind_adapter): on Flux / SD3 / Chroma each kind's fused
    # Linears whole, as that kind's one LyCORIS module on kohya's fused Linear (runtime/lycoris_dora.py)
    kept += ("dora",)
    # the adapter's use_scalar and Tucker form on every LoRA / LoHa / LoKr layer (a GLoRA adapter's scalar on
    # its GLoRA layers too) but where a block gives its own, as LyCORIS hands the network's use_scalar /
    # use_tucker to every module and the other kinds' never read them (mixed_kinds.kind_adapter settles each
    # kind's blocks; tests/runtime/test_lycoris_network_switches_entries.py)
    kept += ("scalar", "tucker") if own in ("lora", "loha", "lokr") else ("scalar",) if own == "glora" else ()
    # max_norm: LyCORIS's, each kind's layers scaled by their own module's apply_max_norm (runtime/max_norm.py
    # finds them by class); a lora adapter's only in LyCORIS's form (kohya's networks.lora has no other kinds)
    # a tlora adapter's beside Diag-OFT / BOFT blocks alone: TLoraModule's twice-scaled norm of its update
    # (its trained singular values scaled), DiagOFTModule's / ButterflyOFTModule's of their blocks, each
    # module in lycoris.kohya's order (tests/runtime/test_lycoris_tlora_mixed_opts.py, SD 1.x); with
    # fused_projections one norm per fused module (test_lycoris_flow_tlora_mixed_opts.py, Flux)
    tlora_oft = own == "tlora" and {b.kind for _, b in other} <= {"diag-oft", "boft"}
    if (own != "lora" or getattr(a, "max_norm_form", "kohya") == "lycoris") and own != "tlora" or tlora_oft:
        kept += ("max_norm",)
    # and its dropout outside bypass (the T-LoRA layers' in their own bypass forward alone): every other
    # kind's module reads it in its bypass forward alone or never, DiagOFTModule where it raises (the
    # converter refuses it), so blocks of other kinds outside theirs (a BOFT one's own: it never reads it)
    oft_off = all(b.kind == "boft" or getattr(b, "bypass", "adapter") != "on" for _, b in other)
    if own == "tlora" and oft_off and not getattr(a, "bypass", False):
        kept += ("dropout",)
    if lycoris_row_masks(a):  # each LoCon / LoHa layer's own row mask, as LoConModule / LohaModule draw it
        kept += ("rank_dropout",)
    if oft_pair and own == "diag-oft":  # its Diag-OFT layers' rotations' dropout, the BOFT blocks' none
        kept += ("rank_dropout",)  # (runtime/lycoris_oft.py add_oft_rank_dropout)
    if mixed_output_dropout(a):  # each LoRA / LoHa / LoKr layer's bypass dropout of its own update
        kept += ("output_dropout",)
    if mixed_bypass_ranks(a):  # and its bypass forward's rank mask: LoCon's ranks, LoHa's rows, LoKr's none
        kept += ("rank_dropout", "output_dropout")
    # a GLoRA adapter's bypass forward acts on its GLoRA layers alone (its blocks of other kinds are built
    # from the adapter's rank and alpha only): not expressed beside other kinds; its module_dropout every
    # kind's layers draw as their LyCORIS class does (runtime/mixed_kinds.py add_module_dropout)
    # a T-LoRA adapter's bypass acts on its own layers alone (its blocks of other kinds are built from their
    # kind's defaults): not expressed beside other kinds; its max norm beside Diag-OFT / BOFT blocks alone.
    # An IA^3 adapter's bypass is LyCORIS's network bypass_mode, which every module reads: its blocks' layers
    # are built in it too (mixed_kinds.py kind_adapter; Diag-OFT / BOFT / DyLoRA in their bypass forward, the
    # others' computing their default one)
    # A GLoRA adapter's bypass beside LoRA / LoHa / LoKr blocks alone without its dropouts or a decomposed
    # block (glora_bypass_inert): LyCORIS's network bypass_mode, their bypass forward their default one
    # A tlora adapter's bypass likewise (tlora_bypass_inert): LyCORIS's network bypass_mode, every kind's
    # module in its bypass forward, its dropout and rank_dropout each class's
    closed = (own == "tlora" and not tlora_bypass_inert(a)) or (own == "glora" and not glora_bypass_inert(a))
    if own in ("glora", "tlora") and getattr(a, "bypass", False) and not closed:  # every module's bypass
        kept += ("rank_dropout",)  # Dropout, and its rank mask: each class's own form (the OFTs' none)
        if all(b.kind != "diag-oft" for _, b in other):  # DiagOFTModule's bypass Dropout raises (LyCORIS)
            kept += ("dropout",)
    # an IA^3 / DyLoRA adapter's likewise (host_bypass_inert); its dropout outside bypass_mode reaches no
    # layer (host_dropout_unread warns) but a Diag-OFT block's in its own bypass forward (where it raises)
    if host_bypass_inert(a):
        kept += ("rank_dropout",) + (("dropout",) if all(b.kind != "diag-oft" for _, b in other) else ())
    if own in ("ia3", "dylora") and not getattr(a, "bypass", False):
        unread = all(b.kind != "diag-oft" or getattr(b, "bypass", "adapter") != "on" for _, b in other)
        kept += ("dropout",) if unread else ()
    defaults = {**_MIXED_OFF, **({"bypass": False} if closed else {})}
    set_ = [key for key, off in defaults.items() if getattr(a, key, off) != off and key not in kept]
    for key in set_:
        yield _err(
            "DBS578",
            ("adapter", key),
            f'adapter.{key} with adapter.{i}.kind = "{block.kind}" on a {own} adapter: dbspec trains '
            "several kinds in one run with the options every kind builds alike (rank, alpha, targets, "
            f"LoKr's factor and decompose_both), not adapter.{key}",
            codes.help("DBS578"),
        )


_FLOAT_KINDS = {"full": "trains a copy of", "ia3": "scales", "diag-oft": "rotates", "boft": "rotates"}
_FLOAT_KINDS["glora"] = "multiplies"
_FLOAT_KINDS["tlora"] = "starts from the SVD of"


def _all_bypassed(a) -> bool:
    """The adapter's own layers all run LyCORIS's bypass forward: its `bypass`, no block of its kind (the
    adapter's) turning it off."""
    own = ("adapter", a.kind)
    blocks = (*getattr(a, "blocks", ()), *getattr(a, "text_encoder_blocks", ()))
    return getattr(a, "bypass", False) and not any(
        getattr(b, "kind", "adapter") in own and getattr(b, "bypass", "adapter") == "off" for b in blocks
    )


def _bypass_over_cast(kind: str, bypass: bool, spec: Spec) -> bool:
    """IA^3, Diag-OFT and BOFT layers in LyCORIS's bypass forward over the cast backend (kohya's --fp8_base):
    the forward reads the layer's output, which the cast base computes from its weight upcast per use as
    kohya's float8 layer computes under autocast (tests/runtime/test_lycoris_bypass_fp8_base.py, Linear and
    convolution layers); not over fused projections (Flux's / SD3's parts: unchecked there)."""
    fused = getattr(spec.adapter, "fused_projections", False)
    cast = spec.precision.quantize_backend == "cast"
    return bypass and cast and not fused and kind in ("ia3", "diag-oft", "boft")


def _kohya_oft_over_cast(adapter, spec: Spec) -> bool:
    """kohya's own OFT (`form = "kohya"`: networks.oft, oft_flux) over the cast backend (kohya's
    --fp8_base): kohya's OFTModule rotates `org_module.weight.to(torch.float32)`, the float8 weight upcast
    exactly, which is what the cast base's weight reads as (tests/runtime/test_kohya_oft_fp8_base.py)."""
    return (
        adapter.kind == "diag-oft"
        and getattr(adapter, "form", "") == "kohya"
        and spec.precision.quantize_backend == "cast"
    )


@rule("spec")
def block_kinds_quantized(spec: Spec, given: Given) -> Iterator[Hit]:
    """Blocks of LyCORIS's full, IA^3, Diag-OFT, BOFT or GLoRA kind (a preset file's entries beside a
    LoRA/LoHa/LoKr network) use each matched layer's float weight, as the adapter of that kind does
    (_lycoris_full_fits): DBS522 with the component quantised. Not the denoiser's full blocks under the cast
    backend (kohya's --fp8_base): it leaves their layers float, as kohya's cast after LyCORIS's apply_to
    passes FullModule's layers by (runtime/blocks.py full_layer_paths); nor IA^3 / Diag-OFT / BOFT blocks in
    bypass_mode under it (_bypass_over_cast)."""
    p = spec.precision
    for table, key in (("blocks", "quantize_denoiser"), ("text_encoder_blocks", "quantize_text_encoder")):
        if getattr(p, key) == "none":
            continue
        for i, block in enumerate(getattr(spec.adapter, table, ())):
            kind = getattr(block, "kind", "adapter")
            if kind == "full" and table == "blocks" and p.quantize_backend == "cast":
                continue
            own = getattr(block, "bypass", "adapter")
            bypass = own == "on" or (own == "adapter" and getattr(spec.adapter, "bypass", False))
            if _bypass_over_cast(kind, bypass, spec):
                continue
            if kind in _FLOAT_KINDS:
                yield _err(
                    "DBS522",
                    ("adapter", table, i, "kind"),
                    f'adapter.{table}[{i}].kind = "{kind}" (LyCORIS\'s {kind} algo) with precision.{key} = '
                    f'"{getattr(p, key)}": it {_FLOAT_KINDS[kind]} each matched layer\'s float weight, which '
                    "a quantised layer has not",
                    f'set precision.{key} = "none", or give those layers another kind',
                )
                break


@rule("spec")
def norms_without_clip_training(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS train_norm's CLIP LayerNorm offsets (runtime/norm_offsets.py) are added to the CLIP encoders
    that train: with none, DBS585."""
    norms = getattr(spec.adapter, "text_encoder_norms", ())
    norms = norms or getattr(spec.adapter, "text_encoder_2_norms", ())
    idle = spec.train.text_encoder_idle == "kohya"  # the untrained CLIP encoders carry the adapter
    if norms and not (spec.train.text_encoder or spec.train.text_encoder_2 or idle):
        yield _warn(
            "DBS585",
            ("adapter", "text_encoder_norms"),
            f"adapter.text_encoder_norms = {list(norms)} but no CLIP text encoder trains (train.text_encoder "
            "and train.text_encoder_2 are false): the offsets are never added",
            codes.help("DBS585"),
        )


@rule("spec")
def norms_without_denoiser_training(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS train_norm's U-Net norm offsets (runtime/norm_offsets.py) are added to the U-Net when it
    trains: with train.denoiser false, DBS586."""
    norms = getattr(spec.adapter, "denoiser_norms", ())
    if norms and not spec.train.denoiser:
        yield _warn(
            "DBS586",
            ("adapter", "denoiser_norms"),
            f"adapter.denoiser_norms = {list(norms)} but train.denoiser = false: the offsets are never added",
            codes.help("DBS586"),
        )


@rule("spec")
def denoiser_norms_need_a_unet(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS train_norm's norm offsets (runtime/norm_offsets.py) exist on the SD 1.x / 2.x / SDXL U-Net
    only: on a transformer family, DBS587 (silent for family = "auto": the compiler runs it again with the
    detected family)."""
    norms = getattr(spec.adapter, "denoiser_norms", ())
    family = FAMILIES.get(spec.model.family)
    if norms and family is not None and family.denoiser != "unet":
        yield _err(
            "DBS587",
            ("adapter", "denoiser_norms"),
            f"adapter.denoiser_norms = {list(norms)} on {family.title}: dbspec offsets the norms of the "
            "SD 1.x/2.x and SDXL U-Net only, and this family's denoiser is a transformer",
            codes.help("DBS587"),
        )


def _mixed_factor_block(adapter, block) -> bool:
    """A block of LoHa or LoKr layers (its kind's, or the adapter's) in a run of several kinds: its kind's
    layers built in a pass of their own (runtime/mixed_kinds.py kind_adapter)."""
    kind = adapter.kind if block.kind == "adapter" else block.kind
    # a LoCon block of another kind's adapter too (a full / IA^3 adapter's on SD3's patch convolution)
    return (kind in ("loha", "lokr") or kind != adapter.kind) and len(run_kinds(adapter)) > 1


@rule("spec")
def block_scalar_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own LyCORIS scalar (runtime/lycoris_switches.py, per layer) or LoCon Tucker form
    (runtime/locon_tucker.py, per layer) against the options that need one setting on every layer (DBS579)."""
    a = spec.adapter
    own = [
        (table, i, "scalar", block.scalar)
        for table in ("blocks", "text_encoder_blocks")
        for i, block in enumerate(getattr(a, table, ()))
        # differing from the adapter's: "off" on an adapter without scalar changes nothing
        if getattr(block, "scalar", "adapter") != "adapter"
        and (block.scalar == "on") != getattr(a, "scalar", False)  # a full / IA^3 adapter's: none
    ]
    if getattr(a, "kind", "") in ("lora", "loha"):
        own += [
            ("blocks", i, "tucker", block.tucker)
            for i, block in enumerate(a.blocks)
            if block.tucker != "adapter" and (block.tucker == "on") != a.tucker
        ]
    if not own:
        return
    tucker = any(key == "tucker" for _, _, key, _ in own)
    # a LoHa / LoKr block's own Tucker form beside other kinds (SD3's patch convolution, its one k x k
    # convolution): its kind's layers built alone (mixed_kinds.kind_adapter), never a fused Linear's part
    fused_tucker = any(
        key == "tucker" and not _mixed_factor_block(a, a.blocks[i]) for table, i, key, _ in own
    )
    # LyCORIS's max norm (runtime/max_norm.py) puts a fixed scalar at 1 on the layers without one and
    # multiplies a block's own trained one in place, as LoConModule / LohaModule.apply_max_norm multiply
    # their buffer or use_scalar's Parameter (LoKr's its factors; tests/runtime/
    # test_lycoris_block_scalar_max_norm.py); a block's Tucker layers it takes as LoConModule / LohaModule /
    # LokrModule.apply_max_norm do (the Tucker update, decomposed or not: tests/runtime/
    # test_lycoris_block_dora_max_norm.py); both in LyCORIS's form alone (kohya's reads lora_up / lora_down)
    norm = getattr(a, "max_norm", 0.0)
    kohya_norm = norm and getattr(a, "max_norm_form", "lycoris") != "lycoris"
    others = [
        f"adapter.{key}"
        for key, on in (
            ("dora", getattr(a, "dora", False) and not lycoris_dora(a)),
            # a file's start sets every scalar to 1 (runtime/init_weights.py), blocks' own too; the Tucker
            # layers' lora_mid loads for the adapter's form alone, but in a run of several kinds, whose file
            # places each layer's own tensors (runtime/mixed_init.py: a LoCon Tucker layer's lora_mid, a
            # LoHa's hada_t1 / hada_t2)
            ("init_weights", tucker and getattr(a, "init_weights", "") and len(run_kinds(a)) == 1),
            ("max_norm", kohya_norm),
            ("freeze_down", getattr(a, "freeze_down", False)),
            # a fused layer's parts share one scalar (runtime/fused.py; compiler/fused.py checks its blocks)
            ("fused_projections", fused_tucker and getattr(a, "fused_projections", False)),
            # LoCon's Tucker layers: no dropouts beside the module's; LyCORIS's weight decomposition they
            # take (runtime/lycoris_dora.py on TuckerConv2d / a LoHa's Tucker form), peft's DoRA not (above);
            # LyCORIS's module and rank dropout they draw as the adapter's Tucker layers do (lora_dropout.py
            # on lora_mid's chain, loha_weight.py's row mask on the Tucker product), LoConModule's and
            # LohaModule's draws (tests/runtime/test_lycoris_block_tucker_dropout.py)
            *((key, tucker and bool(getattr(a, key, False))) for key in ("down_dropout", "output_dropout")),
        )
        if on
    ]
    if not others:
        return
    for table, i, key, value in own:
        what = "LyCORIS's scalar" if key == "scalar" else "the Tucker form"
        yield _err(
            "DBS579",
            ("adapter", table, i, key),
            f'adapter.{table}[{i}].{key} = "{value}" with {" and ".join(dict.fromkeys(others))}: some layers '
            f"would train {what} and others not, which those options do not take",
            codes.help("DBS579"),
        )


@rule("spec")
def block_dora_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's own LyCORIS weight decomposition (runtime/lycoris_dora.py on its layers alone), or its own
    axis on layers that decompose (a LyCORIS map entry's wd_on_out): LyCORIS's form (dora_form "lycoris" on
    LoRA), on LoRA / LoHa / LoKr layers (beside blocks of other kinds each kind's layers decomposed in their
    own pass, runtime/mixed_kinds.py; Flux / SD3 / Chroma's fused Linears whole), without the options that
    need one setting on every layer (DBS583; module_dropout only beside decomposed LoRA layers)."""
    a = spec.adapter
    own = [
        (table, i, "dora", block.dora)
        for table in ("blocks", "text_encoder_blocks")
        for i, block in enumerate(getattr(a, table, ()))
        if getattr(block, "dora", "adapter") != "adapter"
        and (block.dora == "on") != getattr(a, "dora", False)  # GLoRA / DyLoRA adapters: none
    ]
    axes = [
        (table, i, "dora_axis", block.dora_axis)
        for table in ("blocks", "text_encoder_blocks")
        for i, block in enumerate(getattr(a, table, ()))
        if getattr(block, "dora_axis", "adapter") not in ("adapter", getattr(a, "dora_axis", "output"))
        # only where the layers decompose
        and (getattr(a, "dora", False) if block.dora == "adapter" else block.dora == "on")
    ]
    own += axes
    if not own:
        return
    p = spec.precision
    lycoris_norm = getattr(a, "max_norm_form", "lycoris") == "lycoris"  # LoHa / LoKr / GLoRA ...: theirs
    # LoConModule's / LohaModule's row mask on every LoCon / LoHa layer of a LoCon network, decomposed or not,
    # in forward order (runtime/lycoris_dora.py's on decomposed layers, lora_dropout.py's lycoris form and
    # peft's LoHa on the others; checked against lycoris-lora's network on SD 1.x); beside other kinds or on
    # fused layers not checked
    locon_rows = lycoris_row_masks(a)
    others = [
        text
        for text, on in (
            ('dora_form = "peft"', a.kind == "lora" and getattr(a, "dora_form", "peft") != "lycoris"),
            # a file starts each layer with or without its dora_scale (runtime/init_weights.py: LoCon on
            # SD 1.x/2.x / SDXL; lycoris_init.py: LoHa / LoKr; flow_init.py: a fused LoCon)
            # LyCORIS's max norm takes each layer's update before its decomposition, whether it decomposes or
            # not (runtime/max_norm.py, as LoConModule / LohaModule / LokrModule.apply_max_norm), on fused
            # layers one module per fused Linear (its parts' rows, shared factors, one scalar) and Tucker
            # layers' whole update too (tests/runtime/test_lycoris_block_dora_max_norm.py); kohya's form has
            # no weight decomposition to take it from (networks.lora has none; adapter.dora with it: DBS558)
            ("max_norm", getattr(a, "max_norm", 0.0) and lycoris_norm is False),
            ("freeze_down", getattr(a, "freeze_down", False)),
            ("ggpo", getattr(a, "ggpo", False)),
            ("multiplier", getattr(a, "multiplier", 1.0) != 1.0),
            *((key, bool(getattr(a, key, 0.0))) for key in ("dropout", "down_dropout", "output_dropout")),
            ("rank_dropout", bool(getattr(a, "rank_dropout", 0.0)) and not locon_rows),
            (
                "a quantised base (precision.quantize_*)",
                p.quantize_backend != "cast"
                and (p.quantize_denoiser != "none" or p.quantize_text_encoder != "none"),
            ),
        )
        if on
    ]
    # a block's own axis on fused layers: per input column its fused layers' parts share one (1, in)
    # magnitude and the whole merged weight's column norms (runtime/lycoris_dora.py tie_fused_doras), and
    # module_dropout's one draw per fused layer (fused_lycoris_dropout.py); a file's start loads each layer's
    # dora_scale in its block's axis shape (runtime/init_weights.py, lycoris_init.py check each tensor's shape
    # against its layer, as LyCORIS's load_state_dict does)
    for table, i, key, value in own:
        found = list(others)
        kind = getattr(getattr(a, table)[i], "kind", "adapter")
        kind = a.kind if kind == "adapter" else kind
        # LyCORIS's other modules never decompose (a GLoRA / DyLoRA adapter's own layers either)
        if kind not in ("lora", "loha", "lokr"):
            found.append(f'a block of kind "{kind}"')
        # module dropout skips a decomposed layer's whole update as LohaModule / LokrModule / LoConModule do
        # (lycoris_dora.py's forward; on fused Linears one draw per module, fused_lycoris_dropout.py: LoHa /
        # LoKr parts', and a decomposed LoRA's through add_fused_locon_dora_dropout)
        if getattr(a, "module_dropout", 0.0) and kind not in ("loha", "lokr", "lora"):
            found.append("module_dropout")
        if not found:
            continue
        what = "and others not" if key == "dora" else "on another axis than others"
        yield _err(
            "DBS583",
            ("adapter", table, i, key),
            f'adapter.{table}[{i}].{key} = "{value}" with {", ".join(found)}: some layers would train '
            f"LyCORIS's weight decomposition {what}, which those options do not take",
            codes.help("DBS583"),
        )


@rule("spec")
def lora_dropouts_without_dora(spec: Spec, given: Given) -> Iterator[Hit]:
    """kohya networks.lora's down-projection, rank and module dropout act on plain LoRA layers; DoRA's are not
    wrapped. LyCORIS's weight decomposition (dora_form "lycoris") takes LoConModule's module dropout and its
    row mask (rank_dropout_form "lycoris") in its own forward (runtime/lycoris_dora.py); on fused layers
    the parts share one draw (runtime/fused_lycoris_dropout.py), per input column their one norm spanning
    every part's rows of the masked update."""
    adapter = spec.adapter
    if getattr(adapter, "kind", "") != "lora" or not adapter.dora:
        return
    locon = lycoris_dora(adapter)
    for key, off in (
        ("down_dropout", 0.0),
        ("output_dropout", 0.0),
        ("rank_dropout", 0.0),
        ("module_dropout", 0.0),
        ("multiplier", 1.0),
    ):
        if getattr(adapter, key) == off:
            continue
        if locon and key == "module_dropout":
            continue
        if locon and key == "rank_dropout" and adapter.rank_dropout_form == "lycoris":
            continue
        yield _err(
            "DBS267",
            ("adapter", key),
            f"adapter.{key} works on plain LoRA layers; adapter.dora is true" + _locon_dora_why(adapter, key),
            f"set adapter.dora = false, or remove adapter.{key}",
        )


def _locon_dora_why(adapter, key: str) -> str:
    """What LyCORIS's weight decomposition would need for `key` (DBS267), "" where it never takes it."""
    if key not in ("module_dropout", "rank_dropout"):
        return ""
    if not lycoris_dora(adapter):
        return " in peft's form (LyCORIS's, dora_form = \"lycoris\", takes module and rank dropout)"
    return (
        f' and adapter.rank_dropout_form = "{adapter.rank_dropout_form}" (LyCORIS\'s weight decomposition '
        'masks the rebuilt update\'s output rows: rank_dropout_form = "lycoris")'
    )


# --- LyCORIS's weight decomposition (DoRA on LoHa/LoKr, per input column, with LoCon's Tucker form) ---------
@rule("spec")
def lycoris_dora_options(spec: Spec, given: Given) -> Iterator[Hit]:
    """LyCORIS's DoRA layers renormalise the merged weight: peft's input dropout has no place there (LyCORIS
    ignores network_dropout with dora_wd), and a quantised base weight cannot be renormalised."""
    a = spec.adapter
    if not lycoris_dora(a):
        return
    if a.kind == "lora" and a.dropout:
        yield _err(
            "DBS515",
            ("adapter", "dropout"),
            f"adapter.dropout = {a.dropout:g} with LyCORIS's weight decomposition (dora = true with "
            f'dora_axis = "{a.dora_axis}"{", tucker = true" if a.tucker else ""}, dora_form "lycoris"): the '
            "update is a weight renormalised as a whole, with no input to drop out (LyCORIS ignores dropout "
            "with dora_wd)",
            'remove adapter.dropout (peft\'s DoRA, dora_form = "peft" per output row, takes it)',
        )
    p = spec.precision
    for key in ("quantize_denoiser", "quantize_text_encoder"):
        value = getattr(p, key)
        if value != "none" and p.quantize_backend != "cast":
            yield _err(
                "DBS516",
                ("precision", key),
                f'precision.{key} = "{value}" (backend "{p.quantize_backend}") with DoRA on '
                f"{a.kind} (LyCORIS's weight decomposition): it renormalises the base weight plus the "
                "update, "
                "which a quantised layer does not hold as a float tensor",
                f'set precision.{key} = "none" or quantize_backend = "cast", or adapter.dora = false',
            )


@rule("spec")
def dora_axis_without_dora(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.dora_axis / dora_form given where no layer decomposes: neither the adapter's `dora` nor a
    block's own (`dora = "on"`, which takes the adapter's form and axis)."""
    a = spec.adapter
    blocks = [*getattr(a, "blocks", ()), *getattr(a, "text_encoder_blocks", ())]
    if any(getattr(b, "dora", "adapter") == "on" for b in blocks):
        return
    for key in ("dora_axis", "dora_form"):
        if given(("adapter", key)) and hasattr(a, key) and not getattr(a, "dora", False):
            yield _warn(
                "DBS517",
                ("adapter", key),
                f'adapter.{key} = "{getattr(a, key)}" has no effect: adapter.dora is false',
                codes.help("DBS517"),
            )


@rule("spec")
def peft_dora_form_it_cannot_train(spec: Spec, given: Given) -> Iterator[Hit]:
    """peft's DoRA keeps one magnitude per output row and has no Tucker layers."""
    a = spec.adapter
    if not (getattr(a, "dora", False) and a.kind == "lora" and given(("adapter", "dora_form"))):
        return
    if a.dora_form != "peft":
        return
    why = (
        'dora_axis = "input"'
        if a.dora_axis == "input"
        else "tucker = true"
        if a.tucker and a.conv_rank
        else ""
    )
    if why:
        yield _err(
            "DBS518",
            ("adapter", "dora_form"),
            f'adapter.dora_form = "peft" with {why}: peft\'s DoRA keeps one magnitude per output row of '
            "plain LoRA layers; only LyCORIS's weight decomposition trains this",
            'set adapter.dora_form = "lycoris" (or remove it)',
        )


@rule("spec")
def rank_dropout_scale_without_rank_dropout(spec: Spec, given: Given) -> Iterator[Hit]:
    a = spec.adapter
    if (
        given(("adapter", "rank_dropout_scale"))
        and getattr(a, "rank_dropout_scale", False)
        and not a.rank_dropout
    ):
        yield _warn(
            "DBS525",
            ("adapter", "rank_dropout_scale"),
            "adapter.rank_dropout_scale = true has no effect: adapter.rank_dropout is 0",
            codes.help("DBS525"),
        )


@rule("spec")
def rank_dropout_scale_divides_by_zero(spec: Spec, given: Given) -> Iterator[Hit]:
    a = spec.adapter
    if getattr(a, "rank_dropout_scale", False) and a.rank_dropout >= 1:
        yield _err(
            "DBS526",
            ("adapter", "rank_dropout"),
            "adapter.rank_dropout = 1 with rank_dropout_scale = true: every row is dropped and the rescale "
            "divides by the share kept, 0 (every adapted output NaN)",
            "set adapter.rank_dropout below 1 (e.g. 0.1), or remove adapter.rank_dropout_scale",
        )


# --- live validation previews (DBS285, DBS286) --------------------------------------------------------------
_PREVIEW_KEYS = ("preview_model", "webhook", "webhook_timeout")


@rule("spec")
def preview_options_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    """Preview keys that cannot act: validation is off, or previews are off (`preview_every = 0`), or a
    preview would come after the last sampling step."""
    v = spec.validation
    if not v.prompts:
        reason = "validation.prompts is empty (validation is off)"
        keys = ("preview_every", *_PREVIEW_KEYS)
    elif v.preview_every == 0:
        reason = "validation.preview_every is 0 (previews are off)"
        keys = _PREVIEW_KEYS
    elif v.preview_every > v.steps:
        yield _warn(
            "DBS285",
            ("validation", "preview_every"),
            f"validation.preview_every ({v.preview_every}) is above validation.steps ({v.steps}): "
            "no preview would be decoded",
            f"use a value from 1 to {v.steps}",
        )
        return
    else:
        return
    for key in keys:
        if given(("validation", key)):
            yield _warn(
                "DBS285",
                ("validation", key),
                f"validation.{key} has no effect: {reason}",
                codes.help("DBS285"),
            )


@rule("spec")
def webhook_not_http(spec: Spec, given: Given) -> Iterator[Hit]:
    from urllib.parse import urlsplit

    url = spec.validation.webhook
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        yield _err(
            "DBS286",
            ("validation", "webhook"),
            f"validation.webhook must be an http:// or https:// URL with a host, found {url!r}",
            'e.g. "http://127.0.0.1:8000/preview"',
        )


# --- [distributed]: FSDP and DeepSpeed ZeRO (DBS268, DBS269, DBS319, DBS328, DBS329) ------------------------
_STRATEGY_KEYS = {
    "fsdp": ("fsdp_sharding", "fsdp_cpu_offload"),
    "deepspeed": ("zero_stage", "zero_offload_optimizer", "zero_offload_params"),
}


@rule("spec")
def distributed_setting_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    strategy = spec.distributed.strategy
    for owner, keys in _STRATEGY_KEYS.items():
        for key in keys:
            if owner != strategy and given(("distributed", key)):
                yield _warn(
                    "DBS269",
                    ("distributed", key),
                    f'distributed.{key} has no effect with strategy = "{strategy}"',
                    f'it configures strategy = "{owner}" only; remove it or set that strategy',
                )
    if strategy == "deepspeed" and spec.distributed.zero_stage == 2 and spec.distributed.zero_offload_params:
        yield _err(
            "DBS268",
            ("distributed", "zero_offload_params"),
            "distributed.zero_offload_params needs zero_stage = 3: ZeRO-2 keeps every weight whole on each "
            "process, so there is no weight shard to offload",
            "set zero_stage = 3, or offload the optimizer state alone (zero_offload_optimizer = true)",
        )


def _bnb_sharded(spec: Spec) -> Iterator[Hit]:
    """bitsandbytes' optimizer kernels (optimizer_update_32bit, optimizer_update_8bit_blockwise) take whole
    tensors: under FSDP2 every bitsandbytes optimizer's step raises on the sharded DTensors (bitsandbytes
    0.50, each kind checked on the CPU), and ZeRO-Offload steps the 8-bit ones on flattened CPU partitions."""
    d, kind = spec.distributed, spec.optimizer.kind
    offloaded = d.zero_offload_optimizer and kind.endswith("8bit")
    if kind in BNB_OPTIMIZER_KINDS and (d.strategy == "fsdp" or offloaded):
        where = "FSDP hands it sharded DTensors" if d.strategy == "fsdp" else "ZeRO-Offload steps on the CPU"
        instead, library = ("lion", "lion_pytorch") if kind in BNB_LION_KINDS else ("adamw", "torch")
        yield _err(
            "DBS268",
            ("optimizer", "kind"),
            f'optimizer.kind = "{kind}" (bitsandbytes) cannot step here: {where}, and its kernels take whole '
            "tensors",
            f'use kind = "{instead}" ({library}; sharding already divides its state by the process count)',
        )


def _sharding_blockers(spec: Spec) -> Iterator[tuple[tuple, str, str]]:
    """(key path, what, why) for each part of the spec dbspec does not run on sharded models yet."""
    family = FAMILIES.get(spec.model.family)  # "auto": a detected refiner is refused by the runtime
    refiner = family is not None and family.refines_images and spec.validation.refine_images
    if spec.validation.prompts or refiner:
        yield ("validation", "prompts"), "validation images", "sampling runs on the first process alone"
    if spec.evaluation.metrics:
        yield ("evaluation", "metrics"), "evaluation metrics", "they run on the first process alone"
    if spec.ema.enabled:
        yield ("ema", "enabled"), "EMA", "its copy would follow the unsharded parameters"
    if spec.pivotal.tokens:
        yield ("pivotal", "tokens"), "pivotal tuning", "its embedding rows are restored outside the shards"
    if spec.precision.weights != "fp32":
        yield ("precision", "weights"), f"{spec.precision.weights} weights", "FSDP2 keeps fp32 master weights"
    for key in ("quantize_denoiser", "quantize_text_encoder"):
        if getattr(spec.precision, key) != "none":
            yield ("precision", key), "a quantised base", "quantised tensors cannot be sharded"
    if spec.optimizer.split > 1:
        yield (
            ("optimizer", "split"),
            f"optimizer.split = {spec.optimizer.split}",
            "dbspec gathers and restores one optimizer's sharded state",
        )
    if spec.optimizer.clip_mode != "norm" and spec.optimizer.max_grad_norm > 0:
        yield (
            ("optimizer", "clip_mode"),
            f"clip_mode = {spec.optimizer.clip_mode}",
            "dbspec clips sharded gradients by their total norm only",
        )


@rule("spec")
def distributed_combinations(spec: Spec, given: Given) -> Iterator[Hit]:
    """Options that cannot run under strategy fsdp or deepspeed (all gathered, one error each)."""
    d = spec.distributed
    if d.strategy == "ddp":
        return
    for path, what, why in _sharding_blockers(spec):
        yield _err(
            "DBS268",
            path,
            f'{what}: not supported yet under distributed.strategy = "{d.strategy}" ({why})',
            'use strategy = "ddp" for this run, or turn it off',
        )
    yield from _bnb_sharded(spec)
    if d.strategy == "deepspeed" and spec.schedule.accumulation > 1:
        yield _err(
            "DBS268",
            ("schedule", "accumulation"),
            f"schedule.accumulation = {spec.schedule.accumulation} under DeepSpeed: its engine counts "
            "accumulation itself (dbspec's loop does too)",
            "use accumulation = 1 with more processes or a larger batch_size",
        )
    if any_text_encoder_trains(spec):
        yield _err(
            "DBS268",
            ("train", "text_encoder_2" if not spec.train.text_encoder else "text_encoder"),
            f'a trained text encoder under distributed.strategy = "{d.strategy}": accelerate prepares one '
            "model for FSDP2 and DeepSpeed, and the denoiser is one already",
            'train the denoiser alone, or use strategy = "ddp"',
        )


@rule("spec")
def split_group_bounds(spec: Spec, given: Given) -> Iterator[Hit]:
    """optimizer.split gives each chunk's optimizer its own schedule over its own groups: per-group bound
    tables (which name the groups of one optimizer) cannot apply."""
    split, s = spec.optimizer.split, spec.schedule
    if split <= 1 or s.lr_schedule not in ("cyclic", "one_cycle"):
        return
    for key in ("base_lr", "max_lr", "base_momentum", "max_momentum"):
        if isinstance(getattr(s, key), dict):
            yield _err(
                "DBS510",
                ("schedule", key),
                f"schedule.{key} gives per-group values with optimizer.split = {split}: each chunk's "
                "optimizer has its own schedule over the groups (or the part of a group) it holds",
                f"give schedule.{key} one number, or use optimizer.split = 1",
            )


@rule("spec")
def split_chunk_options(spec: Spec, given: Given) -> Iterator[Hit]:
    """optimizer.split_train and split_first_step shape the chunks of optimizer.split: they need several."""
    o = spec.optimizer
    if o.split > 1:
        return
    for key, value, default in (
        ("split_train", o.split_train, "all"),
        ("split_first_step", o.split_first_step, "step"),
    ):
        if value != default:
            yield _err(
                "DBS554",
                ("optimizer", key),
                f'optimizer.{key} = "{value}" with optimizer.split = {o.split}: one optimizer holds every '
                "trained tensor, there are no chunks to shape",
                "set optimizer.split to 2 or more (kohya's fused_optimizer_groups), or remove optimizer."
                + key,
            )


@rule("spec")
def scaled_fp16_gradients(spec: Spec, given: Given) -> Iterator[Hit]:
    """precision.fp16_gradients = "scaled" / "scaled_first" step from still-scaled gradients: fp16 or fp32
    weights (not bf16, which fp16 mixed precision does not hold), no clipping; "scaled_first" over the chunks
    of optimizer.split, all of them stepping. (fp16 mixed precision itself: compiler/precision.py.)"""
    p, o = spec.precision, spec.optimizer
    if p.fp16_gradients == "unscaled":
        return
    value = p.fp16_gradients
    if p.weights == "bf16":
        yield _err(
            "DBS555",
            ("precision", "fp16_gradients"),
            f'precision.fp16_gradients = "{value}" with precision.weights = "bf16": only fp16 or fp32 '
            "trained weights step under fp16 mixed precision's grad scaler",
            'set precision.weights = "fp16" (kohya\'s full_fp16) or "fp32", or remove '
            "precision.fp16_gradients",
        )
    if o.max_grad_norm > 0:
        yield _err(
            "DBS555",
            ("optimizer", "max_grad_norm"),
            f'optimizer.max_grad_norm = {o.max_grad_norm:g} with precision.fp16_gradients = "{value}": the '
            "gradients are still multiplied by the grad scaler's scale, so a clip would bound the scaled "
            "norm",
            'set optimizer.max_grad_norm = 0, or remove precision.fp16_gradients ("unscaled" clips unscaled '
            "gradients)",
        )
    if value == "scaled_first" and (o.split <= 1 or o.split_train == "first"):
        what = f"optimizer.split = {o.split}" if o.split <= 1 else 'optimizer.split_train = "first"'
        yield _err(
            "DBS555",
            ("precision", "fp16_gradients"),
            f'precision.fp16_gradients = "scaled_first" with {what}: it steps the first chunk of '
            "optimizer.split from the scaled gradients and the later ones through the grad scaler, and "
            "there are no later chunks that step",
            'set optimizer.split to 2 or more with split_train = "all" (kohya\'s fused_optimizer_groups), or '
            'use fp16_gradients = "scaled"',
        )


@rule("spec")
def optimizer_implementation_kind(spec: Spec, given: Given) -> Iterator[Hit]:
    """torch's foreach and fused kernels exist for torch's own optimizers only."""
    o = spec.optimizer
    if o.implementation != "default" and o.kind not in ("adamw", "sgd"):
        yield Hit(
            code="DBS287",
            severity="error",
            path=("optimizer", "implementation"),
            message=f'optimizer.implementation = "{o.implementation}" needs kind = "adamw" or "sgd" '
            f'(torch\'s own optimizers); kind is "{o.kind}"',
            help='remove optimizer.implementation, or use kind = "adamw"',
        )


@rule("environment")
def distributed_on_target(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    d = spec.distributed
    if d.strategy == "ddp":
        return
    if d.strategy == "deepspeed" and env.device != "cuda":
        yield _err(
            "DBS328",
            ("distributed", "strategy"),
            'distributed.strategy = "deepspeed" needs CUDA GPUs; the target is '
            f"{env.description or env.device}",
            'use strategy = "fsdp" (it runs on the CPU too) or plan for GPUs with --target cuda:80GB:x8',
        )
        return
    if d.strategy == "fsdp" and env.device == "mps":
        yield _err(
            "DBS328",
            ("distributed", "strategy"),
            'distributed.strategy = "fsdp" needs CUDA GPUs or the CPU: torch has no process-group backend '
            "for MPS",
            'use strategy = "ddp" (one process)',
        )
        return
    if env.processes == 1:
        yield _warn(
            "DBS319",
            ("distributed", "strategy"),
            f'distributed.strategy = "{d.strategy}" with one process: nothing is sharded, and the run trains '
            "as one process does",
            "launch several processes (accelerate launch --num_processes N, or torchrun), or plan for them "
            "with --target cuda:80GB:x4",
        )
    if d.fsdp_cpu_offload and d.strategy == "fsdp" and env.device == "cpu":
        yield _warn(
            "DBS329",
            ("distributed", "fsdp_cpu_offload"),
            "CPU offload on a CPU target moves nothing: the state is in CPU memory already",
            "remove it (it helps on GPUs, where it frees device memory)",
        )


@rule("environment")
def compile_not_on_the_cpu(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    """inductor's CPU backward of the UNet was measured wrong (torch 2.13; tests/runtime/test_compile.py)."""
    if spec.precision.compile and env.device == "cpu":
        yield _err(
            "DBS336",
            ("precision", "compile"),
            "precision.compile on the CPU: torch's inductor computes wrong UNet gradients there (measured "
            "with torch 2.13: 59% gradient error on the tiny SD1 UNet, docs/performance.md)",
            "remove precision.compile, or plan for a GPU with --target cuda:24GB",
        )


# --- Weights & Biases logging (DBS379) ---------------------------------------------------------------------
@rule("paths")
def wandb_installed(spec: Spec, spec_file: Path) -> Iterator[Hit]:
    """`logging.wandb` needs the wandb package where dbspec runs (looked up, not imported: ~0.6 s)."""
    import importlib.util

    if spec.logging.wandb and importlib.util.find_spec("wandb") is None:
        yield _err(
            "DBS379",
            ("logging", "wandb"),
            "logging.wandb = true but the wandb package is not installed, so the run cannot log to Weights & "
            "Biases",
            codes.help("DBS379"),
        )


@rule("spec")
def fused_projection_dropout(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.fused_projections with peft's input dropout: drawn per part (DBS508); kohya's LoRA has none.
    down_dropout, rank_dropout and module_dropout are drawn once per fused layer (runtime/fused_dropout.py).
    """
    a = spec.adapter
    if not isinstance(a, LoraAdapter) or not a.fused_projections or not a.dropout:
        return
    yield _warn(
        "DBS508",
        ("adapter", "dropout"),
        f"adapter.dropout = {a.dropout:g} with fused_projections: each part of a fused layer drops its own "
        "copy of the layer's input, where one fused Linear would drop it once",
        codes.help("DBS508"),
    )


@rule("spec")
def text_encoder_dropout_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """loss.text_encoder_dropout: each rate in [0, 1] (DBS541); on a family whose runtime zeroes encoders
    (DBS542), one rate per text encoder (DBS540). Families spelled out only; with family = "auto" the loss
    pass runs this again on the detected family."""
    rates, path = spec.loss.text_encoder_dropout, ("loss", "text_encoder_dropout")
    if not rates:
        return
    for i, rate in enumerate(rates):
        if not 0 <= rate <= 1:  # nan fails too
            yield _err(
                "DBS541",
                (*path, i),
                f"loss.text_encoder_dropout[{i}] must be >= 0 and <= 1; found {rate:g}",
                codes.help("DBS541"),
            )
    if spec.model.family == "auto":
        return
    family = family_spec(spec.model.family)
    if not family.text_encoder_dropout:
        yield _err(
            "DBS542",
            path,
            f"loss.text_encoder_dropout is set, but per-encoder dropout is not available for {family.title} "
            "models (SD3 only)",
            codes.help("DBS542"),
        )
    elif len(rates) != len(family.text_encoders):
        names = ", ".join(f"{e.component} ({e.model_class})" for e in family.text_encoders)
        yield _err(
            "DBS540",
            path,
            f"loss.text_encoder_dropout has {len(rates)} rate(s), but {family.title} models have "
            f"{len(family.text_encoders)} text encoders ({names}); found {list(rates)}",
            codes.help("DBS540"),
        )


@rule("spec")
def pos_embed_crop_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """loss.pos_embed_random_crop_rate: a family whose denoiser crops a stored position-embedding table
    (DBS543; families spelled out only, the loss pass checks a detected one), never compiled (DBS544)."""
    path = ("loss", "pos_embed_random_crop_rate")
    rate = spec.loss.pos_embed_random_crop_rate
    if not rate:
        return
    if spec.model.family != "auto" and not family_spec(spec.model.family).pos_embed_crop:
        yield _err(
            "DBS543",
            path,
            f"loss.pos_embed_random_crop_rate = {rate:g}, but {family_spec(spec.model.family).title} "
            "denoisers have no cropped position-embedding table (SD3 only)",
            codes.help("DBS543"),
        )
    if spec.precision.compile:
        yield _err(
            "DBS544",
            path,
            f"loss.pos_embed_random_crop_rate = {rate:g} draws a window per forward, which a compiled "
            "denoiser (precision.compile = true) cannot follow",
            codes.help("DBS544"),
        )


@rule("spec")
def scaled_pos_embed_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """model.scaled_pos_embed: a family whose denoiser crops a stored position-embedding table (DBS550;
    families spelled out only, the compiler checks a detected one), never compiled (DBS551)."""
    path = ("model", "scaled_pos_embed")
    if not spec.model.scaled_pos_embed:
        return
    if spec.model.family != "auto" and not family_spec(spec.model.family).pos_embed_crop:
        yield _err(
            "DBS550",
            path,
            f"model.scaled_pos_embed is true, but {family_spec(spec.model.family).title} denoisers have no "
            "cropped position-embedding table to replace (SD3 only)",
            codes.help("DBS550"),
        )
    if spec.precision.compile:
        yield _err(
            "DBS551",
            path,
            "model.scaled_pos_embed picks each forward's table from tables that grow during the run, which a "
            "compiled denoiser (precision.compile = true) cannot follow",
            codes.help("DBS551"),
        )


@rule("spec")
def eager_attention_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """precision.attention = "eager" needs a plain attention the family's registry names (DBS547; families
    spelled out only, the precision pass checks a detected one)."""
    if spec.precision.attention != "eager" or spec.model.family == "auto":
        return
    family = family_spec(spec.model.family)
    if not (family.eager_attention_processor or family.eager_attention_backend):
        yield _err(
            "DBS547",
            ("precision", "attention"),
            f'precision.attention = "eager", but {family.title} denoisers have no plain attention dbspec can '
            "set (their attention processors call SDPA directly)",
            codes.help("DBS547"),
        )


@rule("spec")
def dylora_blocks_fit(spec: Spec, given: Given) -> Iterator[Hit]:
    """DyLoRA's rank and conv_rank, and its blocks' ranks, are whole blocks of adapter.unit, or of a block's
    own unit (DBS548; kohya and LyCORIS assert it)."""
    a = spec.adapter
    if a.kind != "dylora":
        yield from _dylora_kind_blocks_fit(a)
        return
    unit = ("adapter.unit", a.unit)
    found = [(("adapter", key), f"adapter.{key}", getattr(a, key), unit) for key in ("rank", "conv_rank")]
    for table in ("blocks", "text_encoder_blocks"):  # each module's own rank, in its own unit if it has one
        for i, block in enumerate(getattr(a, table)):
            if getattr(block, "kind", "adapter") not in ("adapter", "dylora"):
                continue  # another kind's layers (LyCORIS map entries): not cut into blocks
            own_unit = getattr(block, "unit", 0)  # DyloraBlock; text-encoder blocks: the adapter's
            own = (f"adapter.{table}[{i}].unit", own_unit) if own_unit else unit
            for key in ("rank", "conv_rank") if table == "blocks" else ("rank",):
                path = ("adapter", table, i, key)
                found.append((path, f"adapter.{table}[{i}].{key}", getattr(block, key), own))
    for path, name, value, (what, size) in found:
        if value % size:
            yield _err(
                "DBS548",
                path,
                f"{name} = {value} is not a multiple of {what} = {size} (DyLoRA trains one block of "
                "unit ranks per step)",
                codes.help("DBS548"),
            )


def _dylora_kind_blocks_fit(a) -> Iterator[Hit]:
    """Blocks of kind "dylora" beside another adapter kind: their ranks whole blocks of their unit (DBS548;
    a missing unit is DBS584)."""
    for table in ("blocks", "text_encoder_blocks"):
        for i, block in enumerate(getattr(a, table, ())):
            if getattr(block, "kind", "adapter") != "dylora" or not getattr(
                block, "unit", 0
            ):  # GLoRA's: none
                continue
            for key in ("rank", "conv_rank") if table == "blocks" else ("rank",):
                if getattr(block, key, 0) % block.unit:  # a T-LoRA adapter's blocks: no conv_rank
                    yield _err(
                        "DBS548",
                        ("adapter", table, i, key),
                        f"adapter.{table}[{i}].{key} = {getattr(block, key)} is not a multiple of "
                        f"adapter.{table}[{i}].unit = {block.unit} (DyLoRA trains one block of unit ranks "
                        "per step; LyCORIS's DyLoraModule asserts it)",
                        codes.help("DBS548"),
                    )


@rule("spec")
def kohya_oft_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """Diag-OFT's kohya form (kohya's networks.oft): a block count, none of LyCORIS's rescale, bypass, max
    norm, module or rank dropout, no text encoder (kohya's OFT network adapts the U-Net alone); `block_count`
    only with it (DBS574)."""
    a = spec.adapter
    if a.kind != "diag-oft":
        return
    if a.form == "lycoris":
        if a.block_count:
            yield _err(
                "DBS574",
                ("adapter", "block_count"),
                "adapter.block_count is kohya's block count (form = \"kohya\"); LyCORIS's form reads "
                "block_size",
                codes.help("DBS574"),
            )
        return  # init_weights: LyCORIS's file on SD 1.x/2.x / SDXL (checked at plan time, init_weights.py)
    found = [
        (
            ("adapter", "block_count"),
            "adapter.block_count = 0: kohya's OFT needs a block count of at least 1",
            not a.block_count,
        ),
        (("adapter", "rescaled"), "adapter.rescaled: kohya's OFTModule has no row rescale", a.rescaled),
        (("adapter", "bypass"), "adapter.bypass: kohya's OFTModule has no bypass forward", a.bypass),
        (("adapter", "max_norm"), "adapter.max_norm: kohya's OFT network has no max-norm", bool(a.max_norm)),
        (
            ("adapter", "module_dropout"),
            "adapter.module_dropout: kohya's OFTModule has no module dropout",
            bool(a.module_dropout),
        ),
        (
            ("adapter", "rank_dropout"),
            "adapter.rank_dropout: kohya's OFTModule has no rank dropout",
            bool(a.rank_dropout),
        ),
        (("adapter", "blocks"), "adapter.blocks: LyCORIS's per-layer block sizes", bool(a.blocks)),
        (("adapter", "exclude"), "adapter.exclude: LyCORIS's layers without a module", bool(a.exclude)),
        *[
            (("train", key), f"train.{key}: kohya's OFT network adapts the U-Net alone", True)
            for key in ("text_encoder", "text_encoder_2", "t5")
            if getattr(spec.train, key)
        ][:1],
    ]
    for path, message, hit in found:
        if hit:
            yield _err("DBS574", path, f'adapter.form = "kohya" with {message}', codes.help("DBS574"))


@rule("spec")
def dylora_bypass_runs(spec: Spec, given: Given) -> Iterator[Hit]:
    """DyLoRA's `bypass` (LyCORIS bypass_mode): LyCORIS's form with one block per layer, the only case
    LyCORIS's bypass forward runs (DBS549)."""
    a = spec.adapter
    if a.kind in ("lora", "loha", "lokr") and (a.bypass or any(_own_bypass(a))):
        yield from _blocks_bypass(a)
        return
    if a.kind == "glora":  # its DyLoRA blocks' own bypass, or the adapter's (glora_bypass_inert)
        found = [(t, i) for t, i, b in _own_bypass(a) if b.bypass == "on"]
        if a.bypass and glora_bypass_inert(a):
            found += [
                (t, i)
                for t in ("blocks", "text_encoder_blocks")
                for i, b in enumerate(getattr(a, t))
                if b.kind == "dylora" and b.bypass == "adapter"
            ]
        yield from _several_blocks_bypass(a, found)
    if a.kind == "dylora":
        yield from _dylora_adapter_bypass(a)


def _dylora_adapter_bypass(a) -> Iterator[Hit]:
    """DBS549 for a DyLoRA adapter's layers that run LyCORIS's bypass forward: with the adapter's `bypass`
    those no block of its own kind turns off (a LyCORIS map entry's own bypass_mode = false builds its
    modules in the default forward, any block count), and its own-kind blocks whose `bypass` is "on"."""
    own = [
        (table, i, block)
        for table in ("blocks", "text_encoder_blocks")
        for i, block in enumerate(getattr(a, table))
        if getattr(block, "kind", "adapter") in ("adapter", "dylora")  # others: not cut into blocks
    ]
    on = [(t, i, b) for t, i, b in own if b.bypass == "on" and not a.bypass]  # the blocks' own alone
    if not a.bypass and not on:
        return
    why = []
    if a.dylora_form != "lycoris":
        why.append(f'adapter.dylora_form = "{a.dylora_form}" (bypass is LyCORIS\'s forward)')
    if a.bypass and a.rank != a.unit:
        why.append(
            f"adapter.rank = {a.rank} is {a.rank // max(a.unit, 1)} blocks of {a.unit} (LyCORIS's bypass "
            "forward reshapes the drawn blocks to the whole rank and fails unless the last block is drawn)"
        )
    if a.bypass and a.conv_rank and a.conv_rank != a.unit:
        why.append(f"adapter.conv_rank = {a.conv_rank} is {a.conv_rank // max(a.unit, 1)} blocks of {a.unit}")
    for table, i, block in own:  # per-module ranks: one block each too (0: no layer)
        if block.bypass == "off" or (block.bypass == "adapter" and not a.bypass):
            continue
        ranks = [block.rank, getattr(block, "conv_rank", 0) if a.conv_rank else 0]
        size = getattr(block, "unit", 0) or a.unit
        if any(r and r != size for r in ranks):
            why.append(f"adapter.{table}[{i}] gives rank {max(ranks)}, {max(ranks) // size} blocks")
    if why:
        path = ("adapter", "bypass") if a.bypass else ("adapter", on[0][0], on[0][1], "bypass")
        key = "adapter.bypass" if a.bypass else f"adapter.{on[0][0]}[{on[0][1]}].bypass"
        yield _err(
            "DBS549",
            path,
            f"{key} cannot run: " + "; ".join(why),
            codes.help("DBS549"),
        )


def _blocks_bypass(a) -> Iterator[Hit]:
    """A LoRA / LoHa / LoKr adapter's `bypass`: LyCORIS bypass_mode for its Diag-OFT, BOFT, DyLoRA and IA^3
    blocks (runtime/mixed_kinds.py); without them it changes nothing (DBS216); a DyLoRA block of several
    blocks per layer cannot run it (DBS549). With fused_projections (Flux / SD3 / Chroma) each block's parts
    compute their own rows of LyCORIS's one module's bypass forward on the fused Linear: a Diag-OFT block's
    parts share its blocks where one spans two parts (runtime/fused_oft.py), BOFT's and DyLoRA's parts are
    tied (the butterfly over the stacked output, one down and draw), IA^3 scales rows
    (tests/runtime/test_lycoris_mixed_flow_bypass.py)."""
    found = bypass_blocks(a)
    # the blocks the adapter's `bypass` reaches (no own `bypass`), and those whose layers run it (their own
    # "on", else the adapter's)
    taken = [(t, i) for t, i in found if getattr(a, t)[i].bypass == "adapter"]
    found = [(t, i) for t, i in found if getattr(a, t)[i].bypass == "on" or (a.bypass and (t, i) in taken)]
    # GLoRA / T-LoRA blocks' bypass forward takes the adapter's output_dropout and rank_dropout (GLoRA's
    # pairs' masks: runtime/mixed_kinds.py kind_adapter)
    dropping = (getattr(a, "output_dropout", 0.0) or a.rank_dropout) and any(
        b.kind in ("glora", "tlora") for b in (*a.blocks, *a.text_encoder_blocks)
    )
    if a.bypass and not taken and not dropping:
        yield _warn(
            "DBS216",
            ("adapter", "bypass"),
            f'adapter.bypass has no effect with kind = "{a.kind}" and no blocks of kind "diag-oft", "boft", '
            '"dylora", "ia3", "glora" or "tlora" without a bypass of their own (LyCORIS\'s bypass forward of '
            "its other layers is the same update)",
            'remove adapter.bypass, or give blocks kind = "diag-oft", "boft", "dylora" or "ia3"',
        )
    yield from _several_blocks_bypass(a, found)


def _several_blocks_bypass(a, found: list[tuple[str, int]]) -> Iterator[Hit]:
    """DBS549 for the DyLoRA blocks among `found` ((table, index) of blocks whose layers run LyCORIS's bypass
    forward) of several blocks per layer."""
    for table, i in found:
        block = getattr(a, table)[i]
        ranks = [block.rank, getattr(block, "conv_rank", 0) if a.conv_rank else 0]
        whose = f"adapter.{table}[{i}].bypass" if block.bypass == "on" else "adapter.bypass"
        if block.kind == "dylora" and any(r and r != block.unit for r in ranks):
            yield _err(
                "DBS549",
                ("adapter", table, i, "rank"),
                f'{whose} with adapter.{table}[{i}].kind = "dylora" at rank {max(ranks)} in blocks of '
                f"{block.unit}: LyCORIS's DyLoRA bypass forward runs with one block per layer only",
                codes.help("DBS549"),
            )


@rule("environment")
def dylora_one_process(spec: Spec, env: TargetEnv) -> Iterator[Hit]:
    """DyLoRA leaves the blocks it did not draw without a gradient: several processes refused (DBS384)."""
    if spec.adapter.kind == "dylora" and env.processes > 1:
        yield _err(
            "DBS384",
            ("adapter", "kind"),
            f'adapter.kind = "dylora" with {env.processes} processes: each would draw its own blocks, and '
            "DDP expects the same parameters to have gradients on every process",
            codes.help("DBS384"),
        )


@rule("spec")
def fused_dropout_draws(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.fused_dropout draws the dropouts of a fused layer's split parts together: inert without one
    (DBS553)."""
    a = spec.adapter
    if not isinstance(a, LoraAdapter) or not a.fused_dropout or a.fused_projections:
        return  # fused_projections = true: the compiler refuses it
    if not (a.module_dropout or a.down_dropout or a.rank_dropout):
        yield _warn(
            "DBS553",
            ("adapter", "fused_dropout"),
            "adapter.fused_dropout = true has no effect: module_dropout, down_dropout and rank_dropout are "
            "0, so there is no draw to share",
            codes.help("DBS553"),
        )


@rule("spec")
def start_given_twice(spec: Spec, given: Given) -> Iterator[Hit]:
    """schedule.start_step and start_epoch both set (DBS561)."""
    s = spec.schedule
    if s.start_step and s.start_epoch:
        yield _err(
            "DBS561",
            ("schedule", "start_epoch"),
            f"schedule.start_step = {s.start_step} and schedule.start_epoch = {s.start_epoch} both set where "
            "the run starts",
            codes.help("DBS561"),
        )


@rule("spec")
def start_settings_inert(spec: Spec, given: Given) -> Iterator[Hit]:
    """schedule.skip_data / start_lr without a later start (DBS562)."""
    s = spec.schedule
    if s.start_step or s.start_epoch > 1:
        return
    for key in ("skip_data", "start_lr"):
        if given(("schedule", key)):
            yield _warn(
                "DBS562",
                ("schedule", key),
                f"schedule.{key} is set, but the run starts at its beginning (no schedule.start_step, "
                f"schedule.start_epoch = {s.start_epoch})",
                codes.help("DBS562"),
            )


@rule("spec")
def optimizer_blocks_apply(spec: Spec, given: Given) -> Iterator[Hit]:
    """[[optimizer.blocks]] need a full fine-tune of the denoiser and patterns that compile (DBS563); with
    optimizer.split the block groups are cut into its chunks as kohya cuts them."""
    blocks = spec.optimizer.blocks
    if not blocks:
        return
    why = ""
    if spec.adapter.kind != "none":
        why = (
            f'adapter.kind is "{spec.adapter.kind}": an adapter\'s blocks take `[[adapter.blocks]]` lr_scale'
        )
    elif not spec.train.denoiser:
        why = "train.denoiser is false: no denoiser parameter trains"
    if why:
        yield Hit(
            code="DBS563",
            severity="error",
            path=("optimizer", "blocks"),
            message=f"[[optimizer.blocks]] cannot apply: {why}",
            help=codes.help("DBS563"),
        )
        return
    for i, b in enumerate(blocks):
        try:
            re.compile(b.pattern)
        except re.error as exc:
            yield Hit(
                code="DBS563",
                severity="error",
                path=("optimizer", "blocks", i, "pattern"),
                message=f"optimizer.blocks[{i}].pattern `{b.pattern}` is no regular expression: {exc}",
                help=codes.help("DBS563"),
            )


# --- kohya's max-norm regularisation (adapter.max_norm, --scale_weight_norms): DBS558, DBS559 ---------------
@rule("spec")
def max_norm_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.max_norm scales kohya's plain LoRA factors, or in max_norm_form "lycoris" LyCORIS's modules
    (runtime/max_norm.py): each on the forms it covers (DBS558), not weights sharded or held by DeepSpeed's
    optimizer (DBS559)."""
    a = spec.adapter
    norm = getattr(a, "max_norm", 0.0)
    if not norm:
        return
    path = ("adapter", "max_norm")
    form = getattr(a, "max_norm_form", "lycoris")  # LoHa and LoKr: LyCORIS's only
    if form == "lycoris":
        yield from _lycoris_max_norm_fits(a, norm, path)
        forms = []
    else:
        forms = [
            key
            for key, on in (
                ("dora", a.dora),
                ("scalar", a.scalar),
                ("tucker", a.tucker and a.conv_rank > 0),
            )
            if on
        ]
    if forms:
        yield _err(
            "DBS558",
            path,
            f"adapter.max_norm = {norm:g} with adapter.{' and adapter.'.join(forms)} = true: that is "
            "LyCORIS's form, whose max-norm regularisation scales a per-module scalar instead of lora_up "
            'and lora_down (adapter.max_norm_form = "lycoris" runs LyCORIS\'s)',
            codes.help("DBS558"),
        )
    strategy = spec.distributed.strategy
    if strategy != "ddp":
        yield _err(
            "DBS559",
            path,
            f'adapter.max_norm = {norm:g} with distributed.strategy = "{strategy}": '
            + (
                "each process holds a shard of every weight, and a layer's norm needs all of it"
                if strategy == "fsdp"
                else "DeepSpeed's optimizer keeps its own copy of the weights and would undo the scaling"
            ),
            codes.help("DBS559"),
        )


# the block kinds whose LyCORIS module has its own apply_max_norm (LoConModule, LohaModule, LokrModule,
# DiagOFTModule, ButterflyOFTModule); FullModule, IA3Module, GLoRAModule and DyLoraModule keep the base one
_MAX_NORM_KINDS = ("lora", "loha", "lokr", "diag-oft", "boft")


@rule("spec")
def blocks_max_norm_scales_something(spec: Spec, given: Given) -> Iterator[Hit]:
    """A GLoRA / DyLoRA / full / IA^3 adapter's max_norm scales only its blocks of kinds with LyCORIS's
    apply_max_norm (runtime/max_norm.py): with none training a layer, DBS610."""
    a = spec.adapter
    norm = getattr(a, "max_norm", 0.0)
    if a.kind not in ("glora", "dylora", "full", "ia3") or not norm:
        return
    blocks = (*a.blocks, *a.text_encoder_blocks)
    if any(b.kind in _MAX_NORM_KINDS and (b.rank or getattr(b, "conv_rank", 0)) for b in blocks):
        return
    yield _warn(
        "DBS610",
        ("adapter", "max_norm"),
        f"adapter.max_norm = {norm:g} on a {a.kind} adapter with no [[adapter.blocks]] of kind "
        f"{', '.join(_MAX_NORM_KINDS)} training a layer: LyCORIS's {a.kind} layers keep the base "
        "apply_max_norm, so nothing is scaled",
        codes.help("DBS610"),
    )


def _lycoris_max_norm_fits(a, norm: float, path: tuple[str, ...]) -> Iterator[Hit]:
    """LyCORIS's max norm (runtime/max_norm.py) on what lycoris.kohya's modules take it from (DBS558)."""
    why = []  # rank_dropout: LoCon's, LoHa's and LoKr's mask is drawn inside the norm as LyCORIS draws it
    if getattr(a, "dora", False) and not lycoris_dora(
        a
    ):  # peft's DoRA: LyCORIS's weight decomposition is dora_form "lycoris"
        why.append(
            "adapter.dora = true in peft's form (LyCORIS's weight decomposition: dora_form = \"lycoris\")"
        )
    if getattr(a, "freeze_down", False):
        why.append("adapter.freeze_down = true: kohya's LoRA-FA, which lycoris.kohya has not")
    for reason in why:
        yield _err(
            "DBS558",
            path,
            f'adapter.max_norm = {norm:g} in LyCORIS\'s form (max_norm_form = "lycoris") with {reason}',
            codes.help("DBS558"),
        )


# --- LoRA-FA (adapter.freeze_down, kohya networks.lora_fa): DBS560 ------------------------------------------
@rule("spec")
def freeze_down_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.freeze_down freezes plain LoRA's down projections, not LyCORIS's forms (DBS560)."""
    a = spec.adapter
    if not getattr(a, "freeze_down", False):
        return
    forms = [
        k for k, on in (("dora", a.dora), ("scalar", a.scalar), ("tucker", a.tucker and a.conv_rank)) if on
    ]
    if forms:
        yield _err(
            "DBS560",
            ("adapter", "freeze_down"),
            f"adapter.freeze_down = true with adapter.{' and adapter.'.join(forms)} = true: LoRA-FA freezes "
            "plain LoRA's down projections, and LyCORIS's forms build their weights otherwise",
            codes.help("DBS560"),
        )


@rule("spec")
def ggpo_fits(spec: Spec, given: Given) -> Iterator[Hit]:
    """adapter.ggpo with DoRA, split fused parts or a sharding strategy (DBS566); its shares set without it
    (DBS567). The family
    is checked at plan time (compiler/ggpo.py), once "auto" is resolved."""
    a = spec.adapter
    if not isinstance(a, LoraAdapter):
        return
    if a.ggpo:
        for key, on, why in (
            ("dora", a.dora, "kohya's lora_flux has no DoRA"),
            ("fused_dropout", a.fused_dropout, "kohya's split_qkv modules fail in GGPO's norm update"),
        ):
            if on:
                yield _err(
                    "DBS566",
                    ("adapter", "ggpo"),
                    f"adapter.ggpo = true with adapter.{key} = true: {why}",
                    codes.help("DBS566"),
                )
        strategy = spec.distributed.strategy
        if strategy != "ddp":
            yield _err(
                "DBS566",
                ("adapter", "ggpo"),
                f'adapter.ggpo = true with distributed.strategy = "{strategy}": GGPO\'s norm update reads '
                "every LoRA's whole weights and gradients, which this strategy shards",
                codes.help("DBS566"),
            )
        return
    for key in ("ggpo_sigma", "ggpo_beta"):
        if given(("adapter", key)):
            yield _warn(
                "DBS567",
                ("adapter", key),
                f"adapter.{key} = {getattr(a, key):g} with adapter.ggpo = false: nothing is perturbed",
                codes.help("DBS567"),
            )


@rule("spec")
def adapter_block_rates(spec: Spec, given: Given) -> Iterator[Hit]:
    """An [[adapter.blocks]] entry's own `lr` excludes its `lr_scale` and needs a training denoiser
    (DBS564)."""
    for i, b in enumerate(getattr(spec.adapter, "blocks", ()) or ()):
        if not getattr(b, "lr", 0):  # a DyLoRA's blocks have no rates
            continue
        why = ""
        if b.lr_scale != 1.0:
            why = f"it also gives lr_scale {b.lr_scale:g}"
        elif not spec.train.denoiser:
            why = "train.denoiser is false: no denoiser adapter trains"
        if why:
            yield Hit(
                code="DBS564",
                severity="error",
                path=("adapter", "blocks", i, "lr"),
                message=f"adapter.blocks[{i}] (pattern `{b.pattern}`) gives lr {b.lr:g}, but {why}",
                help=codes.help("DBS564"),
            )


@rule("spec")
def text_encoder_block_rates(spec: Spec, given: Given) -> Iterator[Hit]:
    """An [[adapter.text_encoder_blocks]] entry's rate (`lr`, `lr_scale`): its own `lr` excludes its
    `lr_scale`, a rate needs a text encoder that trains and a lora, loha or lokr adapter and block (the
    other kinds' text-encoder blocks carry no rate into the plan) (DBS599)."""
    a = spec.adapter
    t = spec.train
    trains = t.text_encoder or getattr(t, "text_encoder_2", False) or getattr(t, "t5", False)
    for i, b in enumerate(getattr(a, "text_encoder_blocks", ()) or ()):
        lr, scale = getattr(b, "lr", 0.0), getattr(b, "lr_scale", 1.0)
        if not lr and scale == 1.0:
            continue
        kind = a.kind if b.kind == "adapter" else b.kind
        key, what = ("lr", f"lr {lr:g}") if lr else ("lr_scale", f"lr_scale {scale:g}")
        why = ""
        if lr and scale != 1.0:
            why = f"it also gives lr_scale {scale:g}"
        elif kind not in ("lora", "loha", "lokr") or a.kind not in ("lora", "loha", "lokr"):
            why = (
                f"its layers are of kind {kind!r}, whose text-encoder blocks take no rate (the denoiser's do)"
            )
        elif not trains:
            why = "no text encoder trains (train.text_encoder, train.text_encoder_2, train.t5)"
        if why:
            yield Hit(
                code="DBS599",
                severity="error",
                path=("adapter", "text_encoder_blocks", i, key),
                message=f"adapter.text_encoder_blocks[{i}] (pattern `{b.pattern}`) gives {what}, but {why}",
                help=codes.help("DBS599"),
            )


@rule("spec")
def zero_scale_blocks(spec: Spec, given: Given) -> Iterator[Hit]:
    """A block's `zero_scale` (the update scaled by 0) acts on a DyLoRA adapter's own layers only, in a run
    of that one kind (DBS617)."""
    a = spec.adapter
    for table in ("blocks", "text_encoder_blocks"):
        for i, b in enumerate(getattr(a, table, ()) or ()):
            if not getattr(b, "zero_scale", False):
                continue
            kind = a.kind if b.kind in ("adapter", a.kind) else b.kind
            mixed = any(
                o.kind not in ("adapter", a.kind)
                for t in ("blocks", "text_encoder_blocks")
                for o in getattr(a, t)
            )
            if a.kind == "dylora" and kind == "dylora" and not mixed:  # a run of one kind (runtime/dylora.py)
                continue
            yield _err(
                "DBS617",
                ("adapter", table, i, "zero_scale"),
                f'adapter.{table}[{i}].zero_scale = true on {kind} layers (adapter.kind = "{a.kind}"): only '
                "a DyLoRA adapter's own layers scale their update by 0",
                codes.help("DBS617"),
            )


@rule("spec")
def held_adapter_blocks(spec: Spec, given: Given) -> Iterator[Hit]:
    """An [[adapter.blocks]] entry at lr_scale 0 (held, no optimizer group: runtime/blocks.py, which holds
    every kind's layers alike) with a group of its own (DBS593)."""
    a = spec.adapter
    for i, b in enumerate(getattr(a, "blocks", ()) or ()):
        if getattr(b, "lr_scale", 1.0) or getattr(b, "lr", 0):  # DBS564 refuses lr with lr_scale 0
            continue
        why = ""
        if getattr(b, "group", ""):
            why = f"names group `{b.group}`, which a held block does not have"
        if why:
            yield Hit(
                code="DBS593",
                severity="error",
                path=("adapter", "blocks", i, "lr_scale"),
                message=f"adapter.blocks[{i}] (pattern `{b.pattern}`) holds its layers at lr_scale 0 but "
                + why,
                help=codes.help("DBS593"),
            )


@rule("spec")
def init_scale_without_full_blocks(spec: Spec, given: Given) -> Iterator[Hit]:
    """A lora / loha / lokr adapter's init_scale scales its full blocks' start from init_weights only
    (runtime/mixed_init.py): DBS588 where no layer reads it."""
    a = spec.adapter
    if a.kind not in ("lora", "loha", "lokr") or getattr(a, "init_scale", 1.0) == 1.0:
        return
    full = any(getattr(b, "kind", "adapter") == "full" for b in (*a.blocks, *a.text_encoder_blocks))
    if full and a.init_weights:
        return
    missing = "init_weights" if full else 'blocks of kind = "full"'
    yield _warn(
        "DBS588",
        ("adapter", "init_scale"),
        f"adapter.init_scale = {a.init_scale:g} on a {a.kind} adapter without {missing}: it scales only the "
        "starting file's diff of full blocks, so no layer reads it",
        codes.help("DBS588"),
    )
