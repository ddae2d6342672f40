"""kohya's validation loss -> [evaluation] (the held-out images and their loss) and validation.every.

kohya (library/train_util.py `split_train_val`, train_network.py) splits each non-reg subset of a
dataset with `validation_split` > 0: the image list is shuffled (with `random.seed(validation_seed)`, else
the training seed's stream), training keeps the first ceil(n x (1 - split)) images, validation the last
round(n x split) (the two can share an image through rounding). The LoRA scripts score the validation
set at 4 fixed timesteps, linspace(min_timestep, max_timestep, 6)[1:-1], every `validate_every_n_steps`
steps and every `validate_every_n_epochs` epochs (every epoch by default), at most `max_validation_steps`
batches, with the training loss formula and a reseeded RNG. dbspec's `evaluation.split` draws the same
split (`split_draw`: reseeded per subset, or one stream), `timestep_spacing = "linspace"` the same timesteps,
`order = "kohya_loader"` with `max_batches` the images of kohya's first validation batches (with
max_data_loader_n_workers = 0; else `max_images` caps the split order), `log = "kohya_running_mean"` the
number kohya logs (its validation loss recorder's running mean); the noise stays dbspec's.
`validation_split` and `validation_seed` are parameters of each kohya dataset: `evaluation.split`
and `seed` take the first split dataset's, a dataset whose fraction or seed differs gets its own `eval_split`
or `eval_seed`. train_db.py and sdxl_train.py split the same way but never score the split:
`evaluation.score = false` (held out of training, no evaluation work).
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.data import Args
from dbspec.convert.kohya.datasets import Layout

KOHYA_VALIDATION_TIMESTEPS = 4  # train_network.py NUM_VALIDATION_TIMESTEPS
VALIDATING_SCRIPTS = (
    "train_network",
    "sdxl_train_network",
    "flux_train_network",
    "sd3_train_network",
)  # the others split, and never score the split
# Options only the validating scripts have (elsewhere: not given, their defaults).
_SCRIPT_KEYS = ("validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps")


def map_validation(
    a: Args, script: str, layout: Layout | None, per_epoch: int | None, conv: Conversion
) -> None:
    """evaluation.split (and its datasets, draw, seed, timesteps, cap) and validation.every from kohya's
    validation settings; every kohya validation key gets its fate here."""
    a = {**{key: Legacy(key=key, value=None, source="default") for key in _SCRIPT_KEYS}, **a}
    split_parts = [] if layout is None else _split_parts(layout)
    _report_dataset_keys(layout, split_parts, conv)
    if not split_parts:
        for key in _SCRIPT_KEYS:
            if a[key].given:
                conv.inert(a[key], "no validation_split: kohya has no validation images")
        return
    _, split, seed, _ = split_parts[0]
    parts = split_parts
    seeded = all(s.value is not None for _, _, s, _ in parts)  # else: the training seed's stream
    if not _split(a, layout, parts, split, seeded, conv):
        return
    _own_fractions(split, parts, conv)
    _own_seeds(seed, seeded, parts, conv)
    if seeded:
        conv.mapped(seed, ("evaluation", "seed"), seed.value, note="random.seed(validation_seed) per subset")
    elif a["seed"].value is not None:
        conv.put(("evaluation", "seed"), a["seed"].value, f"{conv.tool} shuffles with the training seed")
    if script not in VALIDATING_SCRIPTS:
        # train_db.py / sdxl_train.py take the images out of training and never compute a validation loss
        conv.put(("evaluation", "score"), False, f"{conv.tool} {script}.py splits but never scores the split")
        return
    conv.put(
        ("evaluation", "timesteps"),
        KOHYA_VALIDATION_TIMESTEPS,
        f"{conv.tool} scores {KOHYA_VALIDATION_TIMESTEPS} fixed timesteps",
    )
    conv.put(("evaluation", "timestep_spacing"), "linspace", f"{conv.tool}: linspace(min, max, 6)[1:-1]")
    conv.put(
        ("evaluation", "log"),
        "kohya_running_mean",
        f"{conv.tool} logs its validation loss recorder's running mean",
    )
    conv.notes.append(
        "differs: kohya draws the validation noise from the global torch RNG reseeded with "
        "validation_seed (else seed) on the training device, batch by batch and timestep by timestep, "
        "and its latents are posterior samples (drawn when caching, else from that same stream); dbspec "
        "draws it from its own CPU generator seeded with evaluation.seed, one draw per held-out image for "
        "all its timesteps, on the posterior mean"
    )
    if layout is not None and layout.batch_size.value not in (None, 1):  # the largest of any dataset
        conv.notes.append(
            "differs: at batch size above 1 each entry of kohya's validation loss recorder is a batch's "
            'mean loss at one timestep; dbspec\'s evaluation.log = "kohya_running_mean" records each '
            "image's (the same mean when every validation batch is full, up to rounding)"
        )
    _interval(a, per_epoch, conv)
    _cap(a, layout, parts, conv)


def _split(a: Args, layout, parts: list, split, seeded: bool, conv: Conversion) -> bool:
    """evaluation.split, split_datasets and split_draw; False when nothing can be held out."""
    sizes = [None if images is None else len(images) for _, _, _, images in parts]
    if any(n is None for n in sizes):
        conv.depends(split.key, "the images could not be counted here; the split is drawn when planning")
    elif not any(round(n * own.value) for n, (_, own, _, _) in zip(sizes, parts)):
        conv.differs(
            split,
            "kohya scores round(n x split) = 0 images of every split subset "
            f"({', '.join(map(str, sizes))} images); nothing is scored",
        )
        return False
    note = "kohya's split_train_val: the same shuffle, rounding and images (an image can train and be scored)"
    if not seeded and a["seed"].value is None:
        conv.differs(
            split,
            "kohya shuffles with its training seed's stream and no seed is given (kohya draws one at "
            "random); dbspec's stream starts at evaluation.seed",
            ("evaluation", "split"),
            split.value,
        )
    elif not seeded and None in sizes:
        conv.differs(
            split,
            "the folders are read when planning: kohya's stream of shuffles follows the file system's "
            "order of sub-folders, dbspec's their sorted names",
            ("evaluation", "split"),
            split.value,
        )
    elif any(s.values["cache_info"].value for _, s, _ in layout.parts):
        conv.differs(
            split,
            "kohya shuffles the cache_info file's order, not the sorted files",
            ("evaluation", "split"),
            split.value,
        )
    else:
        conv.mapped(split, ("evaluation", "split"), split.value, note=note)
    if not seeded:
        conv.put(
            ("evaluation", "split_draw"),
            "stream",
            f"{conv.tool}: no validation_seed, the training seed's stream",
        )
    instance = [i for i, (_, s, _) in enumerate(layout.parts) if not s.values["is_reg"].value]
    chosen = [index for index, _, _, _ in parts]
    if chosen != instance:
        names = [conv.values.get(("datasets", i, "name"), (None, ""))[0] for i in chosen]
        conv.put(("evaluation", "split_datasets"), names, f"{conv.tool} splits these subsets' images")
    return True


def _own_fractions(split: Legacy, parts: list, conv: Conversion) -> None:
    """kohya's validation_split is a parameter of each of its datasets: a dataset whose fraction is not the
    first's (evaluation.split) splits with its own, datasets.eval_split."""
    for index, own, _, _ in parts:
        if own is split:
            continue
        if own.value == split.value:
            conv.record(own, "mapped", "evaluation.split")
        else:
            conv.mapped(
                own,
                ("datasets", index, "eval_split"),
                own.value,
                note="kohya splits each dataset with its own validation_split",
            )


def _own_seeds(seed: Legacy, seeded: bool, parts: list, conv: Conversion) -> None:
    """kohya's validation_seed is a parameter of each of its datasets: a dataset whose seed is not the one
    evaluation.seed reseeds with (the first's; none when some dataset shuffles on the training seed's stream)
    draws its split from its own, datasets.eval_seed (random.seed takes the absolute value of an int)."""
    for index, _, own, _ in parts:
        if own.value is None or (seeded and own.value == seed.value):
            if own.given and own is not seed and own.key not in conv.reports:
                conv.record(own, "mapped", "evaluation.seed")
            continue
        conv.mapped(
            own,
            ("datasets", index, "eval_seed"),
            abs(own.value),
            note="kohya draws each dataset's split from its own validation_seed",
        )


def _cap(a: Args, layout, parts: list, conv: Conversion) -> None:
    """max_validation_steps -> evaluation.order = "kohya_loader" and max_batches: the images kohya's first
    batches hold, exact with max_data_loader_n_workers = 0 (dbspec/plan/kohya_loader.py)."""
    most = a["max_validation_steps"]
    if most.value is None:
        return
    counts = [None if images is None else round(len(images) * split.value) for _, split, _, images in parts]
    if None not in counts and most.value >= sum(counts):
        conv.inert(most, f"covers every one of kohya's {sum(counts)} validation batch(es) at most")
        return
    workers = a["max_data_loader_n_workers"]
    if workers.value == 0:
        conv.put(
            ("evaluation", "order"),
            "kohya_loader",
            f"{conv.tool} scores its validation loader's batches (max_data_loader_n_workers = 0)",
        )
        if None in counts or (len(parts) > 1 and not parts[0][1].key.startswith("datasets[")):
            # train_data_dir: kohya makes a subset of each sub-folder in Path.iterdir order
            conv.differs(
                most,
                "kohya's validation loader holds the train_data_dir sub-folders' images in the file system's "
                "order of sub-folders (Path.iterdir), dbspec's in their sorted names",
                ("evaluation", "max_batches"),
                most.value,
            )
            return
        conv.mapped(
            most,
            ("evaluation", "max_batches"),
            most.value,
            note="the images of kohya's first batches: buckets, batches and their shuffle (random.seed(0))",
        )
        return
    batch = max(layout.batches.get(d.index, 1) for d, s, _ in (layout.parts[i] for i, _, _, _ in parts))
    conv.differs(
        most,
        f"dbspec scores the first {most.value} x {batch} held-out image(s) in kohya's split order; kohya the "
        f"first batches of its bucketed validation loader, which with max_data_loader_n_workers = "
        f"{workers.value} each worker's collator reshuffles (seed + epoch, the seed drawn from Python's "
        "global random when the datasets are made) after fetching its first batch; with "
        'max_data_loader_n_workers = 0 the order converts exactly (evaluation.order = "kohya_loader")',
        ("evaluation", "max_images"),
        most.value * batch,
    )


def _split_parts(layout: Layout) -> list[tuple[int, object, object, tuple | None]]:
    """(spec dataset index, validation_split, validation_seed, images) of each instance subset kohya
    splits."""
    out = []
    for index, (dataset, subset, images) in enumerate(layout.parts):
        split = dataset.values["validation_split"]
        if split.value and 0 < split.value <= 1 and not subset.values["is_reg"].value:
            out.append((index, split, dataset.values["validation_seed"], images))
    return out


def _report_dataset_keys(layout: Layout | None, split_parts: list, conv: Conversion) -> None:
    if layout is None:
        return
    used = {id(split) for _, split, _, _ in split_parts}
    for dataset, subset, _ in layout.parts:
        split, seed = dataset.values["validation_split"], dataset.values["validation_seed"]
        if split.value and not 0 < split.value <= 1:
            conv.inert(split, "kohya skips a validation_split outside 0..1 (with a warning)")
        elif split.given and id(split) not in used and split.key not in conv.reports:
            why = (
                "reg subsets are never split"
                if subset.values["is_reg"].value
                else "no effect with these settings"
            )
            conv.inert(split, why)
        if seed.given and not split.value and seed.key not in conv.reports:
            conv.inert(seed, "no validation_split")


def _interval(a: Args, per_epoch: int | None, conv: Conversion) -> None:
    steps, epochs = a["validate_every_n_steps"], a["validate_every_n_epochs"]
    sampling = conv.values.get(("validation", "every"), (None, ""))[0]
    wanted, legacy = None, None
    if steps.value:
        wanted, legacy = steps.value, steps
    elif per_epoch is not None:
        legacy = epochs if epochs.value else None
        wanted = (epochs.value or 1) * per_epoch
    if epochs.value and steps.value:
        conv.differs(
            epochs,
            f"kohya validates every {steps.value} steps and every {epochs.value} epochs; dbspec "
            "keeps the step interval",
        )
    if wanted is None:
        if epochs.given:
            conv.depends(epochs.key, "the images could not be counted here, so the interval could not be set")
            conv.record(epochs, "differs", "validation.every")
        return
    if sampling is not None and sampling != wanted:
        why = (
            f"dbspec evaluates at its validation steps (every {sampling}, kohya's sampling interval), not "
            f"every {wanted}"
        )
        if legacy is not None:
            conv.differs(legacy, why)
        else:
            conv.notes.append(f"differs: kohya validates every epoch ({wanted} steps); {why}")
    elif sampling is None:
        comment = (
            conv.comment(legacy) if legacy is not None else f"{conv.tool} validates every epoch by default"
        )
        if legacy is not None:
            conv.mapped(legacy, ("validation", "every"), wanted, comment=comment)
        else:
            conv.put(("validation", "every"), wanted, comment)
    elif legacy is not None:
        conv.record(legacy, "mapped", "validation.every")
