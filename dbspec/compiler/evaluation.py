"""The evaluation pass: the seeded holdout, fixed timesteps and bands, the subject words and CLIP-T prompts,
the metric models (resolved offline like a base model) and what evaluating costs. See docs/evaluation.md."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import attrs

from dbspec.builtin import BUILTIN_METRIC_MODELS
from dbspec.compiler.context import Context
from dbspec.compiler.modelinfo import hub_cache_dir
from dbspec.compiler.schedule import interval_steps
from dbspec.plan.kohya_loader import first_batches, loader_batches
from dbspec.plan.model import (
    DatasetPlan,
    EvaluationPlan,
    ImagePlan,
    MetricModelPlan,
    NoisePlan,
    SchedulePlan,
    StepRange,
)
from dbspec.spec.model import Spec
from dbspec.spec.paths import dotted

# Parameters of the default models (openai/clip-vit-base-patch32: 151 M; facebook/dino-vits16: 22 M), for
# the memory line of the cost estimate when a model is given by another id we count nothing we cannot read.
_KNOWN_PARAMS = {"openai/clip-vit-base-patch32": 151_277_313, "facebook/dino-vits16": 21_665_664}


@attrs.frozen
class Holdout:
    datasets: tuple[DatasetPlan, ...]  # the training datasets, held-out images removed
    images: tuple[ImagePlan, ...]
    dataset: int  # index into `datasets` (-1: no holdout)
    image_datasets: tuple[
        int, ...
    ] = ()  # kohya split: each held-out image's dataset (-1: a role = "eval" one)
    also_trained: tuple[bool, ...] = ()  # kohya split: each held-out image that still trains (rounding)
    fractions: tuple[float, ...] = ()  # kohya split: each training dataset's split fraction (0: unsplit)
    seeds: tuple[int, ...] = ()  # kohya split: each training dataset's split seed (-1: unsplit, the stream)


def hold_out(ctx: Context, datasets: tuple[DatasetPlan, ...]) -> Holdout:
    """Move `evaluation.holdout` images of the chosen instance dataset out of training: a split seeded by
    `evaluation.seed` (the same images on every machine). Held-out images carry no cache keys: they are never
    cached, the evaluation encodes them itself."""
    ev = ctx.spec.evaluation
    # role = "eval" datasets: every image is held out (the plan's datasets never hold them)
    evals = tuple(
        attrs.evolve(img, latent_keys=(), text_key="")
        for d in datasets
        if d.role == "eval"
        for img in d.images
    )
    datasets = tuple(d for d in datasets if d.role != "eval")
    if ev.split > 0:
        return kohya_split(ctx, datasets, evals)
    if ev.holdout == 0:
        return Holdout(datasets, evals, -1)
    index = _holdout_dataset(ctx, datasets)
    if index < 0:
        return Holdout(datasets, evals, -1)
    d = datasets[index]
    if ev.holdout >= len(d.images):
        ctx.report(
            "DBS364",
            "error",
            f"evaluation.holdout = {ev.holdout} leaves no image of dataset `{d.name}` to train "
            f"(it has {len(d.images)})",
            ("evaluation", "holdout"),
            help=f"hold out at most {max(len(d.images) - 1, 0)} image(s)",
        )
        return Holdout(datasets, evals, -1)
    picked = sorted(random.Random(ev.seed).sample(range(len(d.images)), ev.holdout))
    held = tuple(attrs.evolve(d.images[i], latent_keys=(), text_key="") for i in picked)
    kept = tuple(img for i, img in enumerate(d.images) if i not in set(picked))
    out = list(datasets)
    out[index] = attrs.evolve(d, images=kept, samples_per_epoch=sum(img.repeats for img in kept))
    return Holdout(tuple(out), held + evals, index)


def split_units(d: DatasetPlan) -> list[list[int]]:
    """The image lists kohya shuffles one by one in a dataset (indices into d.images, kohya's sorted file
    order): the dataset's, or each `N_class tokens` sub-folder's (sorted by name) of a kohya_folders one."""
    if not d.folders:
        return [list(range(len(d.images)))]
    units: dict[str, list[int]] = {}
    for i, img in enumerate(d.images):
        units.setdefault(img.rel.split("/", 1)[0], []).append(i)
    return [units[name] for name in sorted(units)]


def _draws(seed: int, draw: str, own: list[int]) -> list[random.Random]:
    """One generator per shuffle kohya makes, in its order (library/train_util.py split_train_val, called by
    its training datasets' subsets, then by its validation datasets' subsets), `own` holding each unit's own
    seed (-1: none): with one, random.seed(it) before the shuffle (kohya's validation_seed, which restores the
    global state after, so the stream does not move); else "reseed" - random.seed(seed) before each;
    "stream" - one random.seed(seed) that every unseeded shuffle draws on."""
    stream = random.Random(seed)
    return [
        random.Random(mine) if mine >= 0 else random.Random(seed) if draw == "reseed" else stream
        for mine in own + own
    ]


def _shuffled(n: int, rng: random.Random) -> list[int]:
    """random.shuffle of an n-item list (the permutation depends only on n and the draw)."""
    order = list(range(n))
    rng.shuffle(order)
    return order


def kohya_split(ctx: Context, datasets: tuple[DatasetPlan, ...], evals: tuple[ImagePlan, ...]) -> Holdout:
    """evaluation.split: kohya's validation split of every split instance dataset, drawn as kohya draws it.
    Training keeps the first ceil(n x (1 - split)) images of one shuffle, the evaluation scores the last
    round(n x split) of another (the same permutation when reseeded), so an image can do both."""
    ev = ctx.spec.evaluation
    names = set(ev.split_datasets)
    for name in sorted(names - {d.name for d in datasets if d.role == "instance"}):
        ctx.report(
            "DBS365",
            "error",
            f"evaluation.split_datasets names `{name}`, which is no instance dataset",
            ("evaluation", "split_datasets"),
            help="instance datasets: " + ", ".join(f"`{d.name}`" for d in datasets if d.role == "instance"),
        )
    chosen = [i for i, d in enumerate(datasets) if d.role == "instance" and (not names or d.name in names)]
    fractions = split_fractions(ctx.spec, datasets)
    seeds = split_seeds(ctx.spec, datasets)
    units = [(i, unit) for i in chosen for unit in split_units(datasets[i]) if unit]
    draws = _draws(ev.seed, ev.split_draw, [seeds[i] for i, _ in units])
    trained = [
        {unit[j] for j in _shuffled(len(unit), rng)[: math.ceil(len(unit) * (1 - fractions[i]))]}
        for (i, unit), rng in zip(units, draws)
    ]
    held, where, also = [], [], []
    for k, ((i, unit), rng) in enumerate(zip(units, draws[len(units) :])):
        for j in _shuffled(len(unit), rng)[len(unit) - round(len(unit) * fractions[i]) :]:
            held.append(attrs.evolve(datasets[i].images[unit[j]], latent_keys=(), text_key=""))
            where.append(i)
            also.append(unit[j] in trained[k])
    out = list(datasets)
    for i in chosen:
        d = datasets[i]
        keep = set().union(*(t for t, (di, _) in zip(trained, units) if di == i))
        kept = tuple(img for j, img in enumerate(d.images) if j in keep)
        if d.images and not kept:
            own = next(
                (k for k, sd in enumerate(ctx.spec.datasets) if sd.name == d.name and sd.eval_split), -1
            )
            key = ("datasets", own, "eval_split") if own >= 0 else ("evaluation", "split")
            ctx.report(
                "DBS364",
                "error",
                f"{dotted(key)} = {fractions[i]:g} leaves no image of dataset `{d.name}` to train "
                f"(it has {len(d.images)})",
                key,
                help=f"lower {dotted(key)}",
            )
        out[i] = attrs.evolve(d, images=kept, samples_per_epoch=sum(img.repeats for img in kept))
    return Holdout(
        tuple(out),
        tuple(held) + evals,
        where[0] if where else -1,
        tuple(where) + (-1,) * len(evals),
        tuple(also) + (False,) * len(evals),
        tuple(fractions[i] if i in chosen else 0.0 for i in range(len(datasets))),
        tuple(seeds[i] if i in chosen else -1 for i in range(len(datasets))),
    )


def split_fractions(spec: Spec, datasets: tuple[DatasetPlan, ...]) -> list[float]:
    """Each plan dataset's split fraction: its spec dataset's `eval_split`, else `evaluation.split` (kohya's
    validation_split, a parameter of each of its datasets)."""
    own = {d.name: d.eval_split for d in spec.datasets}
    return [own.get(d.name, 0.0) or spec.evaluation.split for d in datasets]


def split_seeds(spec: Spec, datasets: tuple[DatasetPlan, ...]) -> list[int]:
    """Each plan dataset's split seed: its spec dataset's `eval_seed`, else `evaluation.seed` when every
    shuffle is reseeded, else -1 (the stream). kohya's validation_seed is a parameter of each dataset."""
    own = {d.name: d.eval_seed for d in spec.datasets}
    ev = spec.evaluation
    default = ev.seed if ev.split_draw == "reseed" else -1
    return [own[d.name] if own.get(d.name, -1) >= 0 else default for d in datasets]


def _holdout_dataset(ctx: Context, datasets: tuple[DatasetPlan, ...]) -> int:
    name = ctx.spec.evaluation.holdout_dataset
    for i, d in enumerate(datasets):
        # by default the subject's: a preserve_output dataset trains towards the base model, not the subject
        if d.role == "instance" and (d.name == name or not (name or d.preserve_output)):
            return i
    if name:
        ctx.report(
            "DBS365",
            "error",
            f"evaluation.holdout_dataset `{name}` names no instance dataset",
            ("evaluation", "holdout_dataset"),
            help="instance datasets: " + ", ".join(f"`{d.name}`" for d in datasets if d.role == "instance"),
        )
    return -1


def fixed_timesteps(count: int, noise: NoisePlan, spacing: str = "midpoints") -> tuple[int, ...]:
    """`count` timesteps evenly spaced over the training window [min_timestep, max_timestep): the midpoints
    of `count` equal slices, so neither end of the schedule (no noise, pure noise) is over-weighted; or, with
    spacing "linspace", kohya's interior points of an integer linspace over the window."""
    if spacing == "linspace":
        return linspace_timesteps(count, noise.min_timestep, noise.max_timestep)
    low, high = sorted((noise.min_timestep, noise.max_timestep))  # the floored flow draw's reversed bounds
    high = max(high, low + 1)
    return tuple(sorted({low + int((2 * i + 1) * (high - low) // (2 * count)) for i in range(count)}))


def linspace_timesteps(count: int, low: int, high: int) -> tuple[int, ...]:
    """kohya's validation timesteps (train_network.py): numpy.linspace(low, high, count + 2, dtype=int)
    without its two ends, i.e. int(i x (high - low) / (count + 1) + low) for i = 1..count, in numpy's float
    arithmetic (the step first, then the multiple, then the offset; truncated toward zero). Repeats kept."""
    step = (high - low) / (count + 1)
    if step == 0:
        return tuple(int(i / (count + 1) * (high - low) + low) for i in range(1, count + 1))
    return tuple(int(i * step + low) for i in range(1, count + 1))


def band_starts(timesteps: int, bands: int) -> tuple[int, ...]:
    """The first index of each of `bands` contiguous, near-equal slices of `timesteps` fixed timesteps."""
    bands = min(bands, timesteps)
    return tuple(b * timesteps // bands for b in range(bands))


def subject_words(spec: Spec) -> tuple[str, str]:
    """(identifier, class word): the spec's, else derived from the instance and class prompts when that is
    unambiguous (one word only the instance prompt has; the class word: the word after it, if the class prompt
    has it too); "" where unknown."""
    ev = spec.evaluation
    identifier, class_word = ev.identifier, ev.class_word
    instance = [
        d.prompt for d in spec.datasets if d.role == "instance" and d.prompt and not d.preserve_output
    ]
    klass = [d.prompt for d in spec.datasets if d.role == "class" and d.prompt]
    if not instance or not klass:
        return identifier, class_word
    words = _words(instance[0])
    class_words = {w for p in klass for w in _words(p)}
    if not identifier:
        only = [w for w in dict.fromkeys(words) if w not in class_words and w not in _STOP]
        identifier = only[0] if len(only) == 1 else ""
    if identifier and not class_word and identifier in words:
        after = words.index(identifier) + 1
        if after < len(words) and words[after] in class_words:
            class_word = words[after]
    return identifier, class_word


_STOP = {"a", "an", "the", "of", "photo", "picture", "in", "on", "with"}


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def clip_t_prompt(prompt: str, identifier: str, class_word: str) -> str:
    """The prompt CLIP-T scores against: `identifier class_word` (or the identifier alone) becomes the class
    word, as the DreamBooth paper scores "a [V] dog" prompts against "a dog"."""
    if not identifier:
        return prompt
    tail = rf"(\s+{re.escape(class_word)}\b)?" if class_word else ""
    return re.sub(rf"\b{re.escape(identifier)}\b{tail}", class_word, prompt, flags=re.IGNORECASE).strip()


def mentions(prompt: str, word: str) -> bool:
    return bool(word) and re.search(rf"\b{re.escape(word)}\b", prompt, flags=re.IGNORECASE) is not None


def resolve_metric_model(ctx: Context, name: str, key: str) -> MetricModelPlan | None:
    """A metric model as transformers will load it: a built-in, a local folder, or a hub id already in the
    local Hugging Face cache (`dbspec plan --download` fetches it). None (and DBS366) when it is missing."""
    if name.startswith("builtin:"):
        if name in BUILTIN_METRIC_MODELS:
            return MetricModelPlan(id=name, source="builtin", path="")
        _missing(ctx, key, f"`{name}` is no built-in metric model ({', '.join(BUILTIN_METRIC_MODELS)})")
        return None
    local = ctx.resolve(name)
    if _is_model_folder(local):
        return MetricModelPlan(id=name, source="folder", path=str(local))
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        return MetricModelPlan(id=name, source="hub", path=str(snapshot))
    _missing(
        ctx,
        key,
        f"evaluation.{key} `{name}` is neither a model folder nor in the local Hugging Face cache",
        help="run `dbspec plan --download` to fetch it, or name a local folder (or builtin:tiny-clip / "
        "builtin:tiny-dino for tests)",
    )
    return None


def _missing(ctx: Context, key: str, message: str, help: str = "") -> None:
    ctx.report("DBS366", "error", message, ("evaluation", key), help=help)


def _is_model_folder(path: Path) -> bool:
    """A transformers model folder: its config and safetensors weights (what `plan --download` fetches)."""
    try:
        return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    except OSError:
        return False


def _hub_snapshot(repo_id: str) -> Path | None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        return None
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    commit = ref.read_text().strip() if ref.is_file() else ""
    snapshot = repo_dir / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and _is_model_folder(snapshot) else None


def plan_evaluation(
    ctx: Context,
    held: Holdout,
    datasets: tuple[DatasetPlan, ...],
    schedule: SchedulePlan,
    noise: NoisePlan,
    validation_prompts: int,
) -> EvaluationPlan:
    """The evaluation plan: which metrics run at which steps, on which images, with which models."""
    spec, ev = ctx.spec, ctx.spec.evaluation
    metrics = (("eval_loss",) if held.images and ev.score else ()) + tuple(
        m for m in ("clip_t", "clip_i", "dino") if m in ev.metrics
    )
    if not metrics and not held.images:
        return EvaluationPlan()
    identifier, class_word = subject_words(spec)
    prompts = tuple(spec.validation.prompts)
    clip = (
        resolve_metric_model(ctx, ev.clip_model, "clip_model")
        if {"clip_t", "clip_i"} & set(metrics)
        else None
    )
    dino = resolve_metric_model(ctx, ev.dino_model, "dino_model") if "dino" in metrics else None
    subject = [img for d in datasets if d.role == "instance" and not d.preserve_output for img in d.images]
    references = subject + list(held.images)
    scores = "eval_loss" in metrics
    timesteps = fixed_timesteps(ev.timesteps, noise, ev.timestep_spacing) if scores else ()
    steps = (
        interval_steps(spec.validation.every, schedule.total_steps) if metrics else StepRange(every=0, end=0)
    )
    plan = EvaluationPlan(
        metrics=metrics,
        steps=steps,
        dataset=held.dataset,
        holdout=held.images,
        seed=ev.seed,
        timesteps=timesteps,
        bands=band_starts(len(timesteps), ev.bands) if timesteps else (),
        identifier=identifier,
        class_word=class_word,
        clip_t_prompts=tuple(clip_t_prompt(p, identifier, class_word) for p in prompts)
        if "clip_t" in metrics
        else (),
        subject_prompts=tuple(i for i, p in enumerate(prompts) if mentions(p, identifier))
        if {"clip_i", "dino"} & set(metrics)
        else (),
        references=tuple(img.path for img in references) if {"clip_i", "dino"} & set(metrics) else (),
        reference_shas=tuple(img.sha for img in references) if {"clip_i", "dino"} & set(metrics) else (),
        clip_model=clip,
        dino_model=dino,
        selection="kohya_split" if ev.split > 0 else "sample",
        split=ev.split,
        split_draw=ev.split_draw if ev.split > 0 else "reseed",
        holdout_datasets=held.image_datasets,
        also_trained=held.also_trained,
        timestep_spacing=ev.timestep_spacing if scores else "midpoints",
        max_images=ev.max_images if scores and 0 < ev.max_images < len(held.images) else 0,
        scored=scores or not held.images,
        dataset_splits=held.fractions if ev.split > 0 else (),
        dataset_seeds=held.seeds if ev.split > 0 else (),
        log=ev.log if scores else "mean",
    )
    if scores and ev.split > 0 and ev.order == "kohya_loader":
        plan = attrs.evolve(
            plan,
            order="kohya_loader",
            max_batches=ev.max_batches,
            scored_order=loader_order(spec, held, datasets, ev.max_batches),
            max_images=0,
        )
    _check_selection(ctx, plan, schedule)
    return attrs.evolve(plan, cost=_cost(plan, validation_prompts * spec.validation.images_per_prompt))


def loader_order(spec: Spec, held: Holdout, datasets: tuple[DatasetPlan, ...], most: int) -> tuple[int, ...]:
    """evaluation.order = "kohya_loader": the held-out images kohya's first `most` validation batches hold
    (dbspec/plan/kohya_loader.py), one kohya dataset per group, its batch size the group's; every image of a
    role = "eval" dataset (no kohya batch) after them."""
    sizes = {g.name: g.batch_size or spec.schedule.batch_size for g in spec.groups}
    split = [i for i in held.image_datasets if i >= 0]
    groups = [datasets[i].group for i in split]
    batches = loader_batches(
        groups,
        [tuple(img.bucket) for img in held.images[: len(split)]],
        [img.repeats for img in held.images[: len(split)]],
        {g: sizes.get(g, spec.schedule.batch_size) for g in groups},
    )
    return first_batches(batches, most) + tuple(
        range(len(split), len(held.images))
    )  # then role = "eval" ones


SELECT_METRICS = ("eval_loss", "clip_t", "clip_i", "dino")  # the metrics select = "weighted" can weigh


def select_weights(c) -> tuple[tuple[str, float], ...]:
    """checkpoints.select = "weighted": its (metric, weight) pairs with a non-zero weight; () otherwise."""
    if c.select != "weighted":
        return ()
    pairs = ((m, float(getattr(c, f"select_weight_{m}"))) for m in SELECT_METRICS)
    return tuple((m, w) for m, w in pairs if w)


def _check_selection(ctx: Context, plan: EvaluationPlan, schedule: SchedulePlan) -> None:
    select = ctx.spec.checkpoints.select
    ranked = [m for m, _ in select_weights(ctx.spec.checkpoints)] if select == "weighted" else [select]
    if select == "none" or not ranked or any(m not in plan.metrics for m in ranked):
        return  # a metric that does not run is DBS275 (DBS291/DBS292 for the weighted rule), at check time
    shared = [step for step in schedule.checkpoint_steps if step in plan.steps]
    if len(shared) <= 1 < len(schedule.checkpoint_steps):
        ctx.report(
            "DBS367",
            "warning",
            f"checkpoints.select = {select!r}, but no checkpoint step before the end is an evaluation step "
            f"(checkpoints every {schedule.checkpoint_steps.every or 'end'}, evaluation every "
            f"{plan.steps.every or 'end'}): only the end can be chosen",
            ("checkpoints", "select"),
            help="make checkpoints.every a multiple of validation.every",
        )


def _cost(plan: EvaluationPlan, images: int) -> tuple[str, ...]:
    lines = []
    n = len(plan.steps)
    if "eval_loss" in plan.metrics:
        scored = (
            len(plan.scored_order) if plan.order == "kohya_loader" else plan.max_images or len(plan.holdout)
        )
        forwards = scored * len(plan.timesteps)
        encodes = len(set(plan.scored_order)) if plan.order == "kohya_loader" else scored
        lines.append(
            f"eval_loss: {forwards} denoiser forward(s) (no gradients) and {encodes} VAE encode(s) "
            f"per evaluation, {n} evaluation(s); memory: activations of one image, no optimizer state"
        )
    for model, names in ((plan.clip_model, ("clip_t", "clip_i")), (plan.dino_model, ("dino",))):
        if model is None:
            continue
        params = _KNOWN_PARAMS.get(model.id)
        memory = f"{params * 4 / 2**20:.0f} MiB fp32 weights" if params else "the model's weights"
        used = "/".join(m for m in names if m in plan.metrics)
        lines.append(
            f"{used}: {model.id} on {images} validation image(s) per evaluation plus "
            f"{len(plan.references)} reference image(s) once per run (cached); memory: {memory}, loaded only "
            "while evaluating"
        )
    return tuple(lines)
