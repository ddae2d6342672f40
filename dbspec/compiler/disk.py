"""Disk pass: what a run writes (checkpoints, final weights, caches), against the target's free disk."""

from __future__ import annotations

from dbspec.plan.model import CachePlan, DatasetPlan, MemoryPlan, PrecisionPlan, SchedulePlan

SAVE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def disk_needed(*, precision: PrecisionPlan, memory: MemoryPlan, schedule: SchedulePlan, keep: int,
                save_precision: str, lora: bool, datasets: tuple[DatasetPlan, ...], cache: CachePlan) -> int:
    """Bytes the run will write at most: kept checkpoints (weights + training state), the final weights,
    and the missing latent cache entries. An estimate: safetensors headers and configs are not counted."""
    save = SAVE_BYTES[save_precision]
    trained = memory.gradients // 4 if memory.gradients else 0  # trainable parameter count (fp32 gradients)
    state = memory.gradients + memory.optimizer  # full-precision trainables + optimizer state in each checkpoint
    per_checkpoint = trained * save + state
    kept = min(keep or len(schedule.checkpoint_steps), len(schedule.checkpoint_steps))
    everything = sum(c.params for c in precision.components)
    final = trained * save if lora else everything * save
    latents = cache.latent_misses * _latent_bytes(datasets)
    return kept * per_checkpoint + final + latents


def _latent_bytes(datasets: tuple[DatasetPlan, ...]) -> int:
    """Mean and std of a 4-channel latent at the largest bucket, float32 (an upper bound per entry)."""
    sizes = [img.bucket for d in datasets for img in d.images] or [(512, 512)]
    w, h = max(sizes, key=lambda s: s[0] * s[1])
    return 2 * 4 * (w // 8) * (h // 8) * 4
