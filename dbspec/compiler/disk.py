"""Disk pass: what a run writes (checkpoints, final weights, caches), against the free disk where it goes.

The output folder and the cache folder may sit on different disks (a small fast SSD for the cache, a big
disk for checkpoints): each is measured at its own resolved folder (the nearest one that exists, since a
run creates them), and the two needs add up only when both folders are on one device (`st_dev`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from dbspec.plan.model import CachePlan, DatasetPlan, MemoryPlan, PrecisionPlan, SchedulePlan

SAVE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


class DiskNeed(NamedTuple):
    output: int  # kept checkpoints with their training state + final weights, under output.dir
    cache: int  # missing latent cache entries, under cache.dir


class FreeDisk(NamedTuple):
    folder: Path  # the nearest existing folder of the measured path, resolved
    device: int  # os.stat().st_dev: folders with equal devices share their free space
    free: int  # bytes


class Shortfall(NamedTuple):
    keys: tuple[str, ...]  # the spec keys whose folders lack room: ("output.dir",), ("cache.dir",) or both
    folder: Path
    needed: int
    free: int


def disk_needed(
    *,
    precision: PrecisionPlan,
    memory: MemoryPlan,
    schedule: SchedulePlan,
    keep: int,
    save_precision: str,
    keep_state: int = 0,
    lora: bool,
    datasets: tuple[DatasetPlan, ...],
    cache: CachePlan,
) -> DiskNeed:
    """Bytes the run will write at most, per folder. An estimate: safetensors headers and configs are not
    counted."""
    save = SAVE_BYTES[save_precision]
    trained = memory.gradients // 4 if memory.gradients else 0  # trainable parameter count (fp32 gradients)
    state = (
        memory.gradients + memory.optimizer
    )  # full-precision trainables + optimizer state in each checkpoint
    kept = min(keep or len(schedule.checkpoint_steps), len(schedule.checkpoint_steps))
    with_state = min(keep_state or kept, kept)  # older kept checkpoints hold their weights only
    everything = sum(c.params for c in precision.components)
    final = trained * save if lora else everything * save
    latents = cache.latent_misses * _latent_bytes(datasets)
    return DiskNeed(output=kept * trained * save + with_state * state + final, cache=latents)


def _latent_bytes(datasets: tuple[DatasetPlan, ...]) -> int:
    """Mean and std of a 4-channel latent at the largest bucket, float32 (an upper bound per entry)."""
    sizes = [img.bucket for d in datasets for img in d.images] or [(512, 512)]
    w, h = max(sizes, key=lambda s: s[0] * s[1])
    return 2 * 4 * (w // 8) * (h // 8) * 4


def free_disk(path: Path) -> FreeDisk | None:
    """Free space on the device that will hold `path` (a folder the run may still have to create); None when
    the operating system cannot say (no permission, a name too long): then nothing is compared."""
    folder = Path(path).absolute()
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        folder = folder.resolve()  # a symlinked folder writes to the device of its target
        return FreeDisk(folder=folder, device=os.stat(folder).st_dev, free=shutil.disk_usage(folder).free)
    except OSError:
        return None


def shortfalls(need: DiskNeed, output: FreeDisk | None, cache: FreeDisk | None) -> list[Shortfall]:
    """Each device that lacks room for what goes to it: one check when both folders share a device."""
    if output is not None and cache is not None and output.device == cache.device:
        checks = [(("output.dir", "cache.dir"), output, need.output + need.cache)]
    else:
        checks = [(("output.dir",), output, need.output), (("cache.dir",), cache, need.cache)]
    return [
        Shortfall(keys, measured.folder, needed, measured.free)
        for keys, measured, needed in checks
        if measured is not None and needed > measured.free
    ]
