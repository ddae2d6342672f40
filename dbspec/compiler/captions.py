"""Caption-processing pass: each dataset's kohya caption options as a CaptionPlan, and what they cost.

Captions that never change between steps keep their text-embedding cache entry (computed over the text they
always become, `fixed_caption`); whole-caption dropout adds one entry for the empty caption. Captions that
change per step (shuffled or dropped tags, wildcards, token warm-up) have none: the text encoder runs forward
for each of their samples, every step. The plan says so here, instead of the runtime deciding.
"""

from __future__ import annotations

import math

import attrs

from dbspec.plan.captions import fixed_caption
from dbspec.plan.model import CaptionPlan, DatasetPlan
from dbspec.spec.model import Dataset

OPTIONS = tuple(
    f.name
    for f in attrs.fields(CaptionPlan)
    if f.name not in ("varying_images", "varying_samples_per_epoch", "empty_text_key")
)


def caption_plan(d: Dataset) -> CaptionPlan:
    """The dataset's options, token warm-up not yet resolved (a fraction needs the run's step count)."""
    return CaptionPlan(**{name: getattr(d, name) for name in OPTIONS})


def settle(
    datasets: tuple[DatasetPlan, ...], total_steps: int, empty_key: str
) -> tuple[tuple[DatasetPlan, ...], tuple[str, ...]]:
    """Datasets with their CaptionPlan settled (warm-up resolved, varying images counted, the empty caption's
    cache key where captions are dropped), and the notes the cache plan shows."""
    out, notes = [], []
    for d in datasets:
        p = d.caption_processing
        warmup = p.token_warmup_step
        if 0 < warmup < 1:  # kohya: a fraction of max_train_steps, floored
            warmup = float(math.floor(warmup * total_steps))
        varying = [img for img in d.images if img.repeats and fixed_caption(img.caption, p) is None]
        settled = attrs.evolve(
            p,
            token_warmup_step=float(warmup),
            varying_images=len(varying),
            varying_samples_per_epoch=sum(img.repeats for img in varying),
            empty_text_key=empty_key if p.dropout else "",
        )
        out.append(attrs.evolve(d, caption_processing=settled))
        notes += _notes(d.name, settled, len(d.images), bool(empty_key))
    return tuple(out), tuple(notes)


def _notes(name: str, p: CaptionPlan, images: int, text_cache: bool) -> list[str]:
    notes = []
    if p.varying_images:
        what = "are" if p.varying_images == images else f"of {images} are"
        notes.append(
            f"dataset `{name}`: captions change every step ({', '.join(varying_reasons(p))}); "
            f"{p.varying_images} image(s) {what} not text-cached: the text encoder runs forward for "
            f"{p.varying_samples_per_epoch} sample(s) per epoch"
        )
    if p.dropout and text_cache:
        notes.append(f"dataset `{name}`: dropped captions use one cached entry for the empty caption")
    return notes


def varying_reasons(p: CaptionPlan) -> list[str]:
    reasons = [
        label
        for on, label in (
            (p.shuffle_caption, "shuffled tags"),
            (p.caption_tag_dropout_rate > 0, "tag dropout"),
            (p.enable_wildcard, "wildcards"),
            (p.token_warmup_step > 0, "token warm-up"),
        )
        if on
    ]
    return reasons or ["caption processing"]
