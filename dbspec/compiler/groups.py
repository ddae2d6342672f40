"""Dataset groups (kohya's [[datasets]]): each group's bucket settings, class balancing and bucket table.

A group is the datasets sharing a batch size and bucket settings. kohya builds one dataset object per group:
it balances the group's class (reg) images against the group's own instance images, cuts each bucket into
batches of the group's batch size, and concatenates the groups' batches into one epoch (a batch never mixes
groups). Datasets without `group` form the default group: [schedule] batch_size and [buckets].
"""

from __future__ import annotations

from collections import defaultdict

import attrs

from dbspec.compiler import schedule as sched
from dbspec.compiler.context import Context
from dbspec.compiler.rules import group_buckets
from dbspec.plan.model import BucketPlan, DatasetPlan, GroupPlan


@attrs.frozen
class BucketSettings:
    mode: str
    min_size: int
    max_size: int
    step: int
    no_upscale: bool


def bucket_settings(ctx: Context, group: str) -> BucketSettings:
    """The bucket settings of `group` ("" = [buckets]); a group's keys not written take [buckets]' values."""
    b = ctx.spec.buckets
    for index, g in enumerate(ctx.spec.groups):
        if group and g.name == group:
            return BucketSettings(*group_buckets(ctx.spec, ctx.raw.given, index))
    return BucketSettings(b.mode, b.min_size, b.max_size, b.step, b.no_upscale)


def batch_size_of(ctx: Context, group: str) -> int:
    """Images per batch for `group`: its own batch_size, or schedule.batch_size (default group, or 0)."""
    for g in ctx.spec.groups:
        if group and g.name == group and g.batch_size:
            return g.batch_size
    return ctx.spec.schedule.batch_size


def group_names(datasets: tuple[DatasetPlan, ...]) -> list[str]:
    """The groups in use, in order of first appearance, the default group ("") first."""
    return sorted(dict.fromkeys(d.group for d in datasets), key=lambda name: name != "")  # stable


def balance_groups(ctx: Context, datasets: tuple[DatasetPlan, ...]) -> tuple[DatasetPlan, ...]:
    """Per-image samples per epoch: instance images keep their repeats; each group's class images are balanced
    against that group's instance samples (kohya's DreamBoothDataset, one per [[datasets]]) unless
    schedule.balance_classes is false, when they keep their own repeats."""
    new_repeats: dict[tuple[int, int], int] = {}
    if ctx.spec.schedule.balance_classes:
        for group in group_names(datasets):
            members = [di for di, d in enumerate(datasets) if d.group == group]
            class_images = [
                (di, ii)
                for di in members
                if datasets[di].role == "class"
                for ii in range(len(datasets[di].images))
            ]
            target = sum(
                img.repeats
                for di in members
                if datasets[di].role == "instance"
                for img in datasets[di].images
            )
            counts = sched.balance_class_repeats(
                [datasets[di].images[ii].repeats for di, ii in class_images], target
            )
            new_repeats.update(zip(class_images, counts))
    out = []
    for di, d in enumerate(datasets):
        if d.role == "class" and ctx.spec.schedule.balance_classes:
            images = tuple(_with_repeats(img, new_repeats[(di, ii)]) for ii, img in enumerate(d.images))
            d = attrs.evolve(d, images=images)
        out.append(attrs.evolve(d, samples_per_epoch=sum(img.repeats for img in d.images)))
    return tuple(out)


def _with_repeats(img, repeats: int):
    """A balanced class image; one that never trains (0 repeats) has nothing to cache."""
    if repeats:
        return attrs.evolve(img, repeats=repeats)
    return attrs.evolve(img, repeats=0, latent_keys=(), text_key="")


def group_bucket_tables(ctx: Context, datasets: tuple[DatasetPlan, ...]) -> tuple[BucketPlan, ...]:
    """Every group's bucket rows, group by group (default first): batches never mix buckets or groups."""
    rows: list[BucketPlan] = []
    for group in group_names(datasets):
        samples: dict = defaultdict(lambda: [0, 0])
        for d in datasets:
            if d.group == group:
                for img in d.images:
                    samples[img.bucket][d.role == "class"] += img.repeats
        table = sched.bucket_table({size: tuple(v) for size, v in samples.items()}, batch_size_of(ctx, group))
        rows += [attrs.evolve(row, group=group) for row in table]
    return tuple(rows)


def plan_groups(
    ctx: Context, datasets: tuple[DatasetPlan, ...], buckets: tuple[BucketPlan, ...]
) -> tuple[GroupPlan, ...]:
    """One GroupPlan per group in use; () when the spec has no [[groups]] (the one group is the
    schedule's)."""
    if not ctx.spec.groups:
        return ()
    out = []
    for group in group_names(datasets):
        b = bucket_settings(ctx, group)
        rows = [row for row in buckets if row.group == group]
        out.append(
            GroupPlan(
                name=group,
                batch_size=batch_size_of(ctx, group),
                bucket_mode="square" if b.mode == "square" else "no_upscale" if b.no_upscale else "aspect",
                bucket_min_size=b.min_size,
                bucket_max_size=b.max_size,
                bucket_step=b.step,
                datasets=tuple(d.name for d in datasets if d.group == group),
                instance_samples=sum(row.instance_samples for row in rows),
                class_samples=sum(row.class_samples for row in rows),
                batches_per_epoch=sum(row.batches_per_epoch for row in rows),
            )
        )
    return tuple(out)
