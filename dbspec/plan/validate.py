"""The values a plan must hold for the runtime to run it, checked when a plan file is read.

A plan from the compiler always passes; a hand-edited plan.json (hash recomputed) is checked as strictly as a
spec, so `batch_size = 0` fails here naming the field, not deep inside the loop (or, for `accumulation = 0`,
not by "finishing" a run that trained nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from dbspec.families import FAMILIES, reaches_patch_conv
from dbspec.plan.model import BYPASS_KINDS, Plan, own_bypass_fits

Check = tuple[str, Callable[[object], bool], str]  # dotted field, test, requirement


def _at_least(low: float) -> Callable[[object], bool]:
    return lambda v: _number(v) and v >= low


def _above(low: float) -> Callable[[object], bool]:
    return lambda v: _number(v) and v > low


def _fraction(v: object) -> bool:
    return _number(v) and 0 <= v <= 1


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_CHECKS: tuple[Check, ...] = (
    *(
        (key, _at_least(1), "an integer of at least 1")
        for key in (
            "schedule.total_steps",
            "schedule.epochs",
            "schedule.batch_size",
            "schedule.accumulation",
            "schedule.processes",
            "schedule.batches_per_epoch",
            "schedule.steps_per_epoch",
            "validation.inference_steps",
            "validation.images_per_prompt",
            "ema.update_every",
            "logging.every",
            "schedule.cycles",
        )
    ),
    *(
        (key, _at_least(0), "a number of at least 0")
        for key in (
            "schedule.warmup_steps",
            "schedule.text_encoder_stop_step",
            "schedule.seed",
            "validation.seed",
            "validation.guidance",
            "checkpoints.keep",
            "checkpoints.keep_state",
            "model.clip_skip",
            "optimizer.text_encoder_lr",
            "optimizer.weight_decay",
            "optimizer.eps",
            "optimizer.max_grad_norm",
            "loss.prior_weight",
            "loss.min_snr_gamma",
            "loss.noise_offset",
            "loss.huber_delta",
            "loss.v_pred_like_loss",
            "loss.noise.offset",
            "loss.noise.ip_gamma",
            "loss.noise.multires_iterations",
            "loss.noise.multires_discount",
        )
    ),
    ("optimizer.lr", _at_least(0), "a number of 0 or more"),  # 0: the denoiser held at rate 0 (DBS229)
    # 0: a text encoder held at rate 0 (DBS229), as the first's text_encoder_lr
    ("optimizer.text_encoder_2_lr", lambda v: v is None or _at_least(0)(v), "null or a number of 0 or more"),
    ("optimizer.text_encoder_3_lr", lambda v: v is None or _above(0)(v), "null or a number above 0"),
    ("optimizer.momentum", _fraction, "a number in [0, 1]"),
    ("optimizer.loraplus_denoiser_ratio", _at_least(0), "a number of 0 or more"),
    ("optimizer.loraplus_text_encoder_ratio", _at_least(0), "a number of 0 or more"),
    ("optimizer.split", _at_least(1), "an integer of 1 or more"),
    ("ema.decay", _fraction, "a number in [0, 1]"),
    ("adapter.dropout", _fraction, "a number in [0, 1]"),
    ("loss.pos_embed_random_crop_rate", _fraction, "a number in [0, 1]"),
)


def plan_problems(plan: Plan) -> list[str]:
    """`field must be ...; found value` for every value the runtime cannot run with."""
    found = [
        f"{key} must be {need}; found {_get(plan, key)!r}"
        for key, test, need in _CHECKS
        if not test(_get(plan, key))
    ]
    return found + list(_structure_problems(plan))


def _dylora_problems(a) -> Iterator[str]:
    """DyLoRA's blocks (DBS548 in specs) and form; other kinds carry neither, and their blocks of kind
    "dylora" (LyCORIS's DyLoraModule beside them, runtime/mixed_kinds.py) a unit of their own."""
    if a.kind != "dylora":
        if a.dylora_unit or a.dylora_form:
            yield f"adapter.dylora_unit / dylora_form are DyLoRA's; found them on kind {a.kind!r}"
        for b in (*a.blocks, *a.text_encoder_blocks):
            if b.kind == "dylora" and (b.unit < 1 or b.rank % b.unit or b.conv_rank % b.unit):
                yield (
                    f"a dylora block's rank {b.rank} and conv_rank {b.conv_rank} must be multiples of its "
                    f"unit {b.unit} (at least 1) on a {a.kind} adapter; found pattern {b.pattern!r}"
                )
        return
    if a.dylora_form not in ("kohya", "lycoris"):
        yield f'adapter.dylora_form must be "kohya" or "lycoris"; found {a.dylora_form!r}'
    if a.dylora_unit < 1 or a.rank % a.dylora_unit or a.conv_rank % a.dylora_unit:
        yield (
            f"adapter.rank {a.rank} and conv_rank {a.conv_rank} must be multiples of dylora_unit "
            f"{a.dylora_unit} (at least 1)"
        )


def _structure_problems(plan: Plan) -> Iterator[str]:
    a = plan.adapter
    # GLoRA's and T-LoRA's alphas may be below 0 (LyCORIS's GLoRAModule and TLoraModule keep the sign; 0 is
    # the rank, as they read it); LoRA's, LoHa's and LoKr's too (LoConModule, LohaModule, LokrModule and
    # kohya's LoRAModule keep it), and DyLoRA's (DyLoraModule, kohya's DyLoRAModule), but not 0
    signed = a.kind in ("glora", "tlora")
    nonzero = a.kind in ("lora", "loha", "lokr", "dylora")

    def fits(value) -> bool:
        if signed:
            return _number(value)
        return _number(value) and value != 0 if nonzero else _above(0)(value)

    if a.kind not in ("none", "full", "ia3", "diag-oft", "boft") and not (
        _at_least(1)(a.rank) and fits(a.alpha)
    ):
        need = "a number as alpha" if signed else "a number other than 0 as alpha" if nonzero else "alpha > 0"
        yield f"a {a.kind} adapter needs rank >= 1 and {need}; found rank {a.rank}, alpha {a.alpha}"
    if a.conv_rank and not (fits(a.conv_alpha) and a.conv_targets):
        yield (
            f"convolution adapters need conv_alpha > 0 and conv_targets; found conv_alpha {a.conv_alpha}, "
            f"conv_targets {list(a.conv_targets)}"
        )
    yield from _dylora_problems(a)
    if a.dora and a.kind not in ("lora", "loha", "lokr"):
        yield f"dora is a LoRA, LoHa or LoKr option; found adapter kind {a.kind!r}"
    if a.dora_axis not in ("output", "input"):
        yield f'adapter.dora_axis must be "output" or "input"; found {a.dora_axis!r}'
    if a.dora_form not in ("peft", "lycoris"):
        yield f'adapter.dora_form must be "peft" or "lycoris"; found {a.dora_form!r}'
    elif a.dora and a.dora_form == "peft" and (a.kind != "lora" or a.dora_axis == "input" or a.tucker):
        # DBS518 in specs: peft's DoRA is plain LoRA's, one magnitude per output row
        yield (
            f'adapter.dora_form "peft" trains plain LoRA per output row only; found kind {a.kind!r}, '
            f"dora_axis {a.dora_axis!r}, tucker {str(a.tucker).lower()}"
        )
    if any(b.dora == "on" for b in (*a.blocks, *a.text_encoder_blocks)) and a.dora_form != "lycoris":
        # DBS583 in specs: a block's own weight decomposition is LyCORIS's (runtime/lycoris_dora.py)
        yield f"a block's own dora is LyCORIS's weight decomposition; found dora_form \"{a.dora_form}\""
    if (
        any(b.dora_axis != "adapter" for b in (*a.blocks, *a.text_encoder_blocks))
        and a.dora_form != "lycoris"
    ):
        # DBS583 in specs: a block's own axis is LyCORIS's decomposition's (runtime/lycoris_dora.py)
        yield f"a block's own dora_axis is LyCORIS's; found dora_form \"{a.dora_form}\""
    if a.rank_dropout_scale and not (a.kind in ("loha", "lokr") and a.rank_dropout > 0):
        # DBS525 in specs: the rescale acts on LoHa / LoKr rank dropout only
        yield (
            f"adapter.rank_dropout_scale rescales LoHa / LoKr rank dropout; found kind {a.kind!r}, "
            f"rank_dropout {a.rank_dropout:g}"
        )
    elif a.rank_dropout_scale and a.rank_dropout >= 1:  # DBS526 in specs: the rescale would divide by 0
        yield f"adapter.rank_dropout_scale needs rank_dropout below 1; found {a.rank_dropout:g}"
    if (a.ggpo_sigma is None) != (a.ggpo_beta is None):  # kohya's GGPO runs with both shares or not at all
        yield f"adapter.ggpo_sigma and ggpo_beta are set together; found {a.ggpo_sigma} and {a.ggpo_beta}"
    elif a.ggpo_sigma is not None and (
        a.kind != "lora"
        or a.dora
        or plan.model.family not in FAMILIES
        or not FAMILIES[plan.model.family].kohya.ggpo
    ):
        # DBS566, DBS396 in specs: kohya's lora_flux perturbs plain LoRA modules on Flux only
        yield (
            f"adapter.ggpo_sigma is kohya lora_flux's plain-LoRA GGPO; found kind {a.kind!r}, dora "
            f"{str(a.dora).lower()}, family {plan.model.family!r}"
        )
    blocks = (*a.blocks, *a.text_encoder_blocks)
    others = [b for b in blocks if b.kind in BYPASS_KINDS and (b.rank or b.conv_rank)]
    own = [b for b in blocks if b.bypass is not None and b.bypass != a.bypass]
    # DBS592 in specs: a block's own bypass_mode acts on Diag-OFT, BOFT, DyLoRA and IA^3 layers only (a
    # LoRA / LoHa / LoKr / DyLoRA / GLoRA adapter's blocks of those kinds, a Diag-OFT / BOFT / DyLoRA
    # adapter's own blocks; a tlora adapter's own blocks: TLoraModule's bypass forward, set_tlora_bypass)
    fits = [b for b in own if own_bypass_fits(a.kind, b.kind)]  # (the spec rule's, rules.block_own_bypass)
    own = [b for b in own if b not in fits]
    if own:
        yield (
            f"a block's own bypass acts on Diag-OFT, BOFT, DyLoRA or IA^3 layers; found pattern "
            f"{own[0].pattern!r} of kind {own[0].kind!r} on a {a.kind} adapter"
        )
    several = [
        b
        for b in fits
        if b.kind == "dylora" and b.bypass and a.kind == "glora" and {b.rank, b.conv_rank} - {0, b.unit}
    ]
    if several:  # DBS549 in specs: LyCORIS's bypass forward runs with one block per layer only
        yield (
            f"bypass_mode on a dylora block of several blocks per layer; found pattern "
            f"{several[0].pattern!r}, rank {several[0].rank}, conv_rank {several[0].conv_rank}, unit "
            f"{several[0].unit}"
        )
    if a.kind in ("lora", "loha", "lokr") and others:  # LyCORIS bypass_mode: their blocks' (own or adapter's)
        several = [
            b
            for b in others
            if b.kind == "dylora"
            and (a.bypass if b.bypass is None else b.bypass)
            and {b.rank, b.conv_rank} - {0, b.unit}
        ]
        if several:  # DBS549 in specs: LyCORIS's bypass forward runs with one block per layer only
            yield (
                f"bypass_mode on a dylora block of several blocks per layer; found pattern "
                f"{several[0].pattern!r}, rank {several[0].rank}, conv_rank {several[0].conv_rank}, unit "
                f"{several[0].unit}"
            )
    elif a.bypass and a.kind not in (
        "glora",
        "diag-oft",
        "boft",
        "dylora",
        "ia3",
        "tlora",
    ):  # LyCORIS bypass_mode: these kinds' own forward
        yield (
            "adapter.bypass is a GLoRA, Diag-OFT, BOFT, DyLoRA, IA^3 or T-LoRA option (or of a LoRA / LoHa / "
            f"LoKr with blocks of those kinds); found adapter kind {a.kind!r}"
        )
    elif (
        a.bypass
        and a.kind == "dylora"
        and (a.dylora_form != "lycoris" or a.rank != a.dylora_unit or a.conv_rank not in (0, a.dylora_unit))
    ):  # DBS549 in specs: LyCORIS's bypass forward runs with one block per layer only
        yield (
            f'adapter.bypass on a DyLoRA needs dylora_form "lycoris" and rank (and conv_rank) equal to '
            f"dylora_unit; found {a.dylora_form!r}, rank {a.rank}, unit {a.dylora_unit}, conv_rank "
            f"{a.conv_rank}"
        )
    tlora_bypass = any(  # T-LoRA layers of a block whose own bypass is on
        b.bypass and b.kind == "adapter" for b in (*a.blocks, *a.text_encoder_blocks)
    )
    if (a.bypass_dropout or (a.kind == "glora" and a.rank_dropout)) and not (
        a.kind in ("glora", "tlora")
        and a.bypass
        or a.kind == "tlora"
        and (reaches_patch_conv(plan.model.family, a.denoiser_targets) or tlora_bypass)
    ):  # DBS556 / DBS603 in specs: GLoRA and T-LoRA apply them only in their bypass forward (T-LoRA's
        # patch convolution takes it in either mode, as do a block's layers in its own bypass_mode)
        yield (
            "adapter.bypass_dropout and GLoRA's rank_dropout act in GLoRA's or T-LoRA's bypass forward "
            f"only; found kind {a.kind!r}, bypass {str(a.bypass).lower()}"
        )
    if (
        plan.loss.prior == "base_model" and not plan.train_denoiser
    ):  # DBS226 in specs: nothing to compare with
        yield 'loss.prior "base_model" needs train_denoiser = true; found false'
    if any(d.preserve_output for d in plan.datasets) and a.kind == "none":
        # DBS299 in specs: the base prediction is the denoiser with its adapter off (a text-encoder-only
        # adapter's: the denoiser's own, DBS609)
        yield f"datasets[].preserve_output needs an adapter; found adapter {a.kind!r}"
    if not any(d.role == "instance" and d.images for d in plan.datasets):
        yield "datasets must hold an instance dataset with images; found none"
    for i, d in enumerate(plan.datasets):
        if any(not _at_least(0)(img.repeats) for img in d.images):
            yield f"datasets[{i}].images[].repeats must be at least 0"
        gen = d.generate
        if gen is not None and not (
            _at_least(1)(gen.steps) and _at_least(1)(gen.batch_size) and _at_least(0)(gen.guidance)
        ):
            yield (
                f"datasets[{i}].generate needs steps >= 1, batch_size >= 1 and guidance >= 0; found steps "
                f"{gen.steps}, batch_size {gen.batch_size}, guidance {gen.guidance}"
            )
    for i, d in enumerate(plan.datasets):
        yield from _caption_problems(i, d.caption_processing)
    for i, b in enumerate(plan.buckets):
        if not all(_at_least(8)(side) for side in b.size):
            yield f"buckets[{i}].size must be two sides of at least 8 pixels; found {b.size}"
    yield from _group_problems(plan)
    yield from _noise_problems(plan)
    yield from _start_problems(plan)
    yield from _optimizer_block_problems(plan)
    yield from _text_dropout_problems(plan)
    yield from _scaled_pos_problems(plan)
    yield from _eager_attention_problems(plan)
    yield from _output_problems(plan)


def _group_problems(plan: Plan) -> Iterator[str]:
    """Each dataset's group has a batch size the sampler can cut (the default group's is
    schedule.batch_size)."""
    names = {g.name for g in plan.groups}
    for i, g in enumerate(plan.groups):
        if not _at_least(1)(g.batch_size):
            yield f"groups[{i}].batch_size must be an integer of at least 1; found {g.batch_size!r}"
    for i, d in enumerate(plan.datasets):
        if d.group and d.group not in names:
            yield f"datasets[{i}].group must name one of groups[].name; found {d.group!r}"


def _noise_problems(plan: Plan) -> Iterator[str]:
    noise, huber = plan.loss.noise, plan.loss.huber
    low, high = noise.min_timestep, noise.max_timestep
    floored = plan.loss.flow is not None and plan.loss.flow.draw == "floored"  # takes them reversed too
    if not (_at_least(0)(low) and _at_least(1)(high) and high <= 1000 and low <= (999 if floored else high)):
        yield (
            "loss.noise needs 0 <= min_timestep <= max_timestep <= 1000 (min_timestep <= 999; above "
            f"max_timestep with the floored flow draw); found min_timestep {low}, max_timestep {high}"
        )
    if (huber is None) != (plan.loss.kind not in ("pseudo_huber", "smooth_l1")):
        yield (
            "loss.huber must be set exactly for kind pseudo_huber or smooth_l1; found "
            f"kind {plan.loss.kind!r}"
        )
    elif huber is not None and not (_above(0)(huber.c) and _above(0)(huber.scale)):
        yield f"loss.huber needs c > 0 and scale > 0; found c {huber.c}, scale {huber.scale}"


def _start_problems(plan: Plan) -> Iterator[str]:
    """schedule.start: a counter below the end, a data position inside its epoch."""
    s, st = plan.schedule, plan.schedule.start
    if st is None:
        return
    if not (0 <= st.step < st.end_step <= s.total_steps and st.lr_step >= 0):
        yield (
            "schedule.start needs 0 <= step < end_step <= total_steps and lr_step >= 0; found step "
            f"{st.step}, end_step {st.end_step}, total_steps {s.total_steps}, lr_step {st.lr_step}"
        )
    if not (st.epoch >= 0 and 0 <= st.position < s.batches_per_epoch):
        yield (
            f"schedule.start needs epoch >= 0 and 0 <= position < {s.batches_per_epoch} (batches per epoch); "
            f"found epoch {st.epoch}, position {st.position}"
        )


def _optimizer_block_problems(plan: Plan) -> Iterator[str]:
    """optimizer.blocks: compiling patterns and rates >= 0, on a fully trained denoiser."""
    for b in plan.optimizer.blocks:
        try:
            re.compile(b.pattern)
        except re.error:
            yield f"optimizer.blocks `{b.name}` needs a regular expression; found {b.pattern!r}"
        if not (_number(b.lr) and b.lr >= 0):
            yield f"optimizer.blocks `{b.name}` needs lr >= 0; found {b.lr!r}"
    if plan.optimizer.blocks and (plan.adapter.kind != "none" or plan.optimizer.split > 1):
        yield "optimizer.blocks need a full fine-tune with one optimizer (adapter none, split 1)"


def _eager_attention_problems(plan: Plan) -> Iterator[str]:
    """precision.attention = "eager" as DBS547 checks it in specs: the family names a plain attention."""
    family = FAMILIES.get(plan.model.family)
    if plan.precision.attention != "eager" or family is None:
        return
    if not (family.eager_attention_processor or family.eager_attention_backend):
        yield f'precision.attention = "eager" needs a family with a plain attention; found {family.name!r}'


def _text_dropout_problems(plan: Plan) -> Iterator[str]:
    """loss.text_encoder_dropout as DBS540-DBS542 check it in specs: rates in [0, 1], one per text encoder of
    a family whose runtime zeroes encoders."""
    family = FAMILIES.get(plan.model.family)
    if plan.loss.pos_embed_random_crop_rate and (family is None or not family.pos_embed_crop):
        yield (  # DBS543 in specs
            "loss.pos_embed_random_crop_rate needs a denoiser with a cropped position-embedding table (SD3); "
            f"found family {plan.model.family!r}"
        )
    rates = plan.loss.text_encoder_dropout
    if not rates:
        return
    if not all(_fraction(r) for r in rates):
        yield f"loss.text_encoder_dropout must hold numbers in [0, 1]; found {list(rates)}"
    if family is None or not family.text_encoder_dropout or len(rates) != len(family.text_encoders):
        yield (
            "loss.text_encoder_dropout must give one rate per text encoder of a family with per-encoder "
            f"dropout (SD3: 3); found {len(rates)} for family {plan.model.family!r}"
        )


def _scaled_pos_problems(plan: Plan) -> Iterator[str]:
    """model.scaled_pos_embed as DBS550 checks it in specs, and its sides as the compiler writes them."""
    sides = plan.model.scaled_pos_embed
    if not sides:
        return
    family = FAMILIES.get(plan.model.family)
    if family is None or not family.pos_embed_crop:
        yield (  # DBS550 in specs
            "model.scaled_pos_embed needs a denoiser with a cropped position-embedding table (SD3); "
            f"found family {plan.model.family!r}"
        )
    if any(s < 2 for s in sides) or list(sides) != sorted(set(sides)):
        yield (
            "model.scaled_pos_embed must hold distinct ascending latent sides of 2 or more; "
            f"found {list(sides)}"
        )


def _caption_problems(i: int, p) -> Iterator[str]:
    """The caption processing's bounds, as the spec's (a rate in [0, 1], counts at least 0)."""
    at = f"datasets[{i}].caption_processing"
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if not _fraction(getattr(p, key)):
            yield f"{at}.{key} must be a number in [0, 1]; found {getattr(p, key)!r}"
    for key in ("keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min", "token_warmup_step"):
        if not _at_least(0)(getattr(p, key)):
            yield f"{at}.{key} must be a number of at least 0; found {getattr(p, key)!r}"
    if p.caption_separator == "" and (p.shuffle_caption or p.caption_tag_dropout_rate or p.token_warmup_step):
        yield f'{at}.caption_separator must not be "" while captions are cut into tags'


def _output_problems(plan: Plan) -> Iterator[str]:
    """The output folder is the run's own (as DBS225 checks in specs): not `/`, not over
    or inside an input."""
    out = Path(plan.checkpoints.dir)
    if not out.is_absolute() or out.parent == out:
        yield f"checkpoints.dir must be an absolute folder path below a filesystem root; found {str(out)!r}"
        return
    inputs = [(f"datasets[{i}].path", d.path) for i, d in enumerate(plan.datasets)] + [
        ("cache.dir", plan.cache.dir)
    ]
    for key, folder in inputs:
        if out == Path(folder) or out in Path(folder).parents or Path(folder) in out.parents:
            yield f"checkpoints.dir {str(out)!r} must not overlap the input folder {key} {folder!r}"
    if out in Path(plan.spec_file).parents:
        yield f"checkpoints.dir {str(out)!r} must not contain the spec file {plan.spec_file!r}"


def _get(plan: Plan, key: str) -> object:
    value: object = plan
    for part in key.split("."):
        value = getattr(value, part)
    return value
