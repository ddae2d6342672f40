"""kohya's validation loss -> [evaluation] (the held-out images and their loss) and validation.every.

kohya (library/train_util.py `split_train_val`, train_network.py) splits each non-reg subset of a
dataset with `validation_split` > 0: the image list is shuffled (with `random.seed(validation_seed)`, else
the training seed's stream), training keeps the first ceil(n x (1 - split)) images, validation the last
round(n x split) (the two can share an image through rounding). The LoRA scripts score the validation
set at 4 fixed timesteps, linspace(min_timestep, max_timestep, 6)[1:-1], every `validate_every_n_steps`
steps and every `validate_every_n_epochs` epochs (every epoch by default), at most `max_validation_steps`
batches, with the training loss formula and a reseeded RNG. dbspec's `evaluation.holdout` is the number
of images kept out of training; its split and its timesteps are its own.
"""

from __future__ import annotations

import math

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
    """evaluation.holdout (and its dataset, seed, timesteps) and validation.every from kohya's validation
    settings; every kohya validation key gets its fate here."""
    a = {**{key: Legacy(key=key, value=None, source="default") for key in _SCRIPT_KEYS}, **a}
    interval_keys = _SCRIPT_KEYS
    split_parts = [] if layout is None else _split_parts(layout)
    _report_dataset_keys(layout, split_parts, conv)
    if not split_parts:
        for key in interval_keys:
            if a[key].given:
                conv.inert(a[key], "no validation_split: kohya has no validation images")
        return
    index, split, seed, images = split_parts[0]
    for _, other, _, _ in split_parts[1:]:
        conv.differs(other, "dbspec holds images out of one dataset only (the first split one)")
    if images is None:
        conv.depends(split.key, "the images could not be counted here, so the holdout could not be sized")
        conv.record(split, "differs", "evaluation.holdout")
        return
    n = len(images)
    held = n - math.ceil(n * (1 - split.value))  # the images kohya's training part leaves out
    if held == 0:
        conv.differs(
            split, f"kohya trains all {n} images (ceil({n} x {1 - split.value:g})); nothing is held out"
        )
        return
    note = (
        f"kohya trains ceil({n} x {1 - split.value:g}) = {n - held} of {n} images and scores round({n} x "
        f"{split.value:g}) = {round(n * split.value)}; dbspec's seeded split picks its own {held} image(s), "
        f"never trained, scored at {KOHYA_VALIDATION_TIMESTEPS} fixed timesteps of its own spacing"
    )
    conv.differs(
        split, note, ("evaluation", "holdout"), held, conv.comment(split, f"{n} images x {split.value:g}")
    )
    name = conv.values.get(("datasets", index, "name"), (None, ""))[0]
    if name:
        conv.put(("evaluation", "holdout_dataset"), name, f"{conv.tool} splits this subset's images")
    conv.put(
        ("evaluation", "timesteps"),
        KOHYA_VALIDATION_TIMESTEPS,
        f"{conv.tool} scores {KOHYA_VALIDATION_TIMESTEPS} fixed timesteps",
    )
    _seed(a, seed, conv)
    if script not in VALIDATING_SCRIPTS:
        conv.notes.append(
            f"differs: kohya {script}.py removes the validation_split images from training but never scores "
            "them; dbspec scores them (evaluation loss)"
        )
    _interval(a, per_epoch, conv)


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


def _seed(a: Args, seed, conv: Conversion) -> None:
    if seed.value is not None:
        conv.differs(
            seed,
            "kohya shuffles the images with random.seed(validation_seed); dbspec's split with this seed "
            "holds out other images",
            ("evaluation", "seed"),
            seed.value,
        )
    elif a["seed"].value is not None:
        conv.put(("evaluation", "seed"), a["seed"].value, f"{conv.tool} shuffles with the training seed")


def _interval(a: Args, per_epoch: int | None, conv: Conversion) -> None:
    steps, epochs, most = a["validate_every_n_steps"], a["validate_every_n_epochs"], a["max_validation_steps"]
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
    if most.value is not None:
        conv.differs(most, "dbspec scores every held-out image at each evaluation")
